"""Checkpoint reads are bounded: hostile files planted in a checkpoint are refused, never read without end.

A real checkpoint of 3 ranks and two rounds is written with the project's own writer, then one of
its files is replaced by a FIFO, a link to /dev/zero, a huge file, a deeply nested JSON, a link to a
valid copy elsewhere. Each read runs in a child process with a deadline and an address-space limit
of a few hundred MB over what it had mapped once imported: a read that blocks or grows without
bound fails the test (deadline, MemoryError) instead of hanging it or filling the machine.
Then the file checked must be the file loaded, and a file torch refuses is named in our words.
Whole resumes with such files: test_resume_hostile_files.py.
"""
import hashlib
import json
import os
import pickle
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from flamby_mpi.checkpoints import checkpoint
from support.files import HUGE, plant_hostile
from support.mpi import REPO, TESTS_DIR

pytestmark = pytest.mark.timeout(300)

WORLD = 3
DEADLINE_S = 20
HEADROOM = 300 * 1024 * 1024  # address space the child may map beyond what its imports took


def _tensors(rank: int, round_idx: int) -> dict:
    return {"model": {"w": torch.full((4, 4), float(10 * round_idx + rank))}, "rng": torch.arange(3)}


@pytest.fixture
def out(tmp_path):
    """An output directory with the complete checkpoints of rounds 1 and 2 of a 3-rank run."""
    output_dir = tmp_path / "run"
    for round_idx in (1, 2):
        files = {rank: checkpoint.write_rank_state(output_dir, round_idx, rank, _tensors(rank, round_idx),
                                                   {"rank": rank, "round": round_idx})
                 for rank in range(WORLD)}
        checkpoint.write_manifest(output_dir, round_idx, "r", "0", {"common_args": {"random_seed": 1}}, files)
    return output_dir


_CHILD = r"""
import json, resource, sys, time
from pathlib import Path
from flamby_mpi.checkpoints import checkpoint
jobs = json.loads(sys.argv[1])
if any(job["call"] != "read_manifest" for job in jobs):
    import torch  # before the limit: its libraries are mapped once, then the read is what could grow

def mapped():
    for line in open("/proc/self/status"):
        if line.startswith("VmSize:"):
            return int(line.split()[1]) * 1024
limit = mapped() + int(sys.argv[2])
resource.setrlimit(resource.RLIMIT_AS, (limit, limit))
for job in jobs:
    out, round_idx = Path(job["out"]), job["round"]
    peak_before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    tick = time.monotonic()
    try:
        if job["call"] == "read_manifest":
            result = sorted(checkpoint.read_manifest(out, round_idx))
        elif job["call"] == "check_rank_files":
            with checkpoint.check_rank_files(out, round_idx, job["rank"], job["entries"]):
                result = "intact"
        else:
            tensors, data = checkpoint.read_rank_state(out, round_idx, job["rank"], job["entries"])
            result = data
        report = {"result": result}
    except checkpoint.CheckpointError as error:
        report = {"error": str(error)}
    report["seconds"] = time.monotonic() - tick
    report["rss_growth_kb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - peak_before
    print(json.dumps(report), flush=True)
"""


def _job(call: str, out: Path, round_idx: int, rank: int = 0, entries=None) -> dict:
    return {"call": call, "out": str(out), "round": round_idx, "rank": rank, "entries": entries}


def _in_child(*jobs: dict) -> list:
    """Runs checkpoint reads in one child with a deadline and an address-space limit; their reports."""
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO), str(TESTS_DIR)])}
    try:
        done = subprocess.run([sys.executable, "-c", _CHILD, json.dumps(jobs), str(HEADROOM)],
                              capture_output=True, text=True, timeout=DEADLINE_S + 30, env=env)  # + imports
    except subprocess.TimeoutExpired as expired:
        raise AssertionError(f"a read blocked or ran on: {jobs}\n{expired.stdout}") from None
    assert done.returncode == 0, f"the reads crashed (exit {done.returncode}):\n{done.stderr[-3000:]}"
    reports = [json.loads(line) for line in done.stdout.strip().splitlines()]
    assert len(reports) == len(jobs), done.stdout
    for report in reports:
        assert report["seconds"] < DEADLINE_S, report
        # The child's peak resident memory grew by far less than the hostile file's size
        assert report["rss_growth_kb"] * 1024 < HUGE // 3, report
    return reports


def _entries(out: Path, round_idx: int, rank: int) -> dict:
    return checkpoint.read_manifest(out, round_idx)["files"][str(rank)]


# ---- the manifest ---------------------------------------------------------------------------------

MANIFEST_CASES = {
    "fifo": "is not a regular file",
    "dev-zero-link": "is a link",
    "huge": f"larger than the {checkpoint.MAX_MANIFEST_BYTES} bytes a checkpoint manifest can be",
    "sparse-10GB": "larger than the",
    "deep": f"nested more than {checkpoint.MAX_MANIFEST_DEPTH} deep",
    "link-to-valid-copy": "is a link",
    "directory": "is not a regular file",
}


@pytest.mark.parametrize("kind", list(MANIFEST_CASES))
def test_a_hostile_manifest_is_refused_quickly_naming_it_and_the_older_one_still_reads(kind, out, tmp_path):
    victim = checkpoint.round_dir(out, 2) / checkpoint.MANIFEST
    plant_hostile(victim, kind, tmp_path / "elsewhere.json")
    hostile, older = _in_child(_job("read_manifest", out, 2), _job("read_manifest", out, 1))
    assert "error" in hostile, hostile
    assert str(victim) in hostile["error"] and MANIFEST_CASES[kind] in hostile["error"], hostile
    assert older["result"] == sorted(checkpoint.read_manifest(out, 1))


def test_the_run_id_for_resume_comes_from_the_newest_readable_manifest(out, tmp_path):
    plant_hostile(checkpoint.round_dir(out, 2) / checkpoint.MANIFEST, "fifo", tmp_path / "x")
    assert checkpoint.latest_recorded_run_id(out) == "r"


def test_a_link_where_a_round_directory_should_be_is_never_followed(out, tmp_path):
    """round_2 replaced by a link to a valid round directory elsewhere: refused, not read through."""
    elsewhere = tmp_path / "elsewhere"
    checkpoint.round_dir(out, 2).rename(elsewhere)
    checkpoint.round_dir(out, 2).symlink_to(elsewhere, target_is_directory=True)
    report, = _in_child(_job("read_manifest", out, 2))
    assert "round_2 is a link or not a directory" in report.get("error", ""), report


def test_manifest_entries_must_be_a_size_and_a_sha256(out):
    path = checkpoint.round_dir(out, 2) / checkpoint.MANIFEST
    good = json.loads(path.read_text())
    for bad in ({"sha256": "0" * 64, "bytes": True}, {"sha256": "0" * 64, "bytes": -1},
                {"sha256": "not hex", "bytes": 10}, {"sha256": "A" * 64, "bytes": 10}):
        manifest = json.loads(json.dumps(good))
        manifest["files"]["1"]["rank_1.pt"] = bad
        path.write_text(json.dumps(manifest))
        with pytest.raises(checkpoint.CheckpointError, match="wrong type"):
            checkpoint.read_manifest(out, 2)


# ---- a rank's files -------------------------------------------------------------------------------

RANK_FILE_CASES = {
    "fifo": "is not a regular file",
    "dev-zero-link": "is a link",
    "huge": "larger than the",
    "sparse-10GB": "larger than the",
    "link-to-valid-copy": "is a link",
    "directory": "is not a regular file",
}


@pytest.mark.parametrize("suffix", ["pt", "json"])
@pytest.mark.parametrize("kind", list(RANK_FILE_CASES))
def test_a_hostile_rank_file_fails_the_check_quickly_naming_it(kind, suffix, out, tmp_path):
    entries = _entries(out, 2, 1)
    victim = checkpoint.round_dir(out, 2) / f"rank_1.{suffix}"
    plant_hostile(victim, kind, tmp_path / f"elsewhere.{suffix}")
    *hostile, older = _in_child(_job("check_rank_files", out, 2, 1, entries),
                                _job("read_rank_state", out, 2, 1, entries),
                                _job("read_rank_state", out, 1, 1, _entries(out, 1, 1)))
    for report in hostile:
        assert "error" in report, report
        assert str(victim) in report["error"] and RANK_FILE_CASES[kind] in report["error"], report
    assert older["result"] == {"rank": 1, "round": 1}


def test_a_rank_state_the_manifest_says_is_huge_is_refused_before_it_is_read(out):
    entries = _entries(out, 2, 1)
    entries["rank_1.json"] = {**entries["rank_1.json"], "bytes": checkpoint.MAX_STATE_BYTES + 1}
    with pytest.raises(checkpoint.CheckpointError, match="more than a rank's state can be"):
        checkpoint.check_rank_files(out, 2, 1, entries)


def test_a_deeply_nested_rank_state_matching_its_manifest_is_refused(out):
    """Even with its size and sha256 forged into the manifest, a JSON nested 200000 deep is refused
    before the parser recurses into it."""
    blob = b"[" * 200_000 + b"]" * 200_000
    (checkpoint.round_dir(out, 2) / "rank_1.json").write_bytes(blob)
    entries = _entries(out, 2, 1)
    entries["rank_1.json"] = {"sha256": hashlib.sha256(blob).hexdigest(), "bytes": len(blob)}
    with pytest.raises(checkpoint.CheckpointError, match=f"nested more than {checkpoint.MAX_STATE_DEPTH} deep"):
        checkpoint.read_rank_state(out, 2, 1, entries)


def test_a_rank_file_that_grew_after_the_manifest_is_refused_not_read_past_its_size(out):
    victim = checkpoint.round_dir(out, 2) / "rank_1.pt"
    with open(victim, "ab") as handle:
        handle.write(b"\0" * 1000)
    with pytest.raises(checkpoint.CheckpointError, match=r"larger than the \d+ bytes the manifest says"):
        checkpoint.check_rank_files(out, 2, 1, _entries(out, 2, 1))


def test_the_file_checked_is_the_file_loaded(out):
    """Once checked, the rank's .pt and .json are renamed over by another valid pair (round 1's):
    what loads is what was checked, not what the names now hold."""
    entries = _entries(out, 2, 1)
    with checkpoint.check_rank_files(out, 2, 1, entries) as checked:
        for suffix in ("pt", "json"):
            os.replace(checkpoint.round_dir(out, 1) / f"rank_1.{suffix}",
                       checkpoint.round_dir(out, 2) / f"rank_1.{suffix}")
        tensors, data = checked.load()
    assert data == {"rank": 1, "round": 2}
    assert torch.equal(tensors["model"]["w"], _tensors(1, 2)["model"]["w"])
    with pytest.raises(checkpoint.CheckpointError, match="sha256 differs"):
        checkpoint.check_rank_files(out, 2, 1, entries)  # opened again, it is another file now


def test_a_pickle_torch_refuses_is_named_in_our_words_not_torchs(out, tmp_path):
    """A .pt that is a pickle of an arbitrary object, its size and sha256 forged into the entries so
    that torch.load is reached: refused, the message never repeats torch's advice to retry with
    weights_only=False, and nothing in it runs."""
    marker = tmp_path / "ran"

    class Payload:
        def __reduce__(self):
            return (open, (str(marker), "w"))

    blob = pickle.dumps({"model": Payload()})
    (checkpoint.round_dir(out, 2) / "rank_1.pt").write_bytes(blob)
    entries = _entries(out, 2, 1)
    entries["rank_1.pt"] = {"sha256": hashlib.sha256(blob).hexdigest(), "bytes": len(blob)}
    with pytest.raises(checkpoint.CheckpointError) as refused:
        checkpoint.read_rank_state(out, 2, 1, entries)
    message = str(refused.value)
    assert "not a tensor checkpoint written by flamby-mpi" in message and "rank_1.pt" in message
    assert "weights_only" not in message and "Weights only" not in message
    assert not marker.exists()
