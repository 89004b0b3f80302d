"""flamby_mpi.storage.safe_files attacked with real files: links at every component and at the target, links
planted at temporary names, a directory swapped for a link in the middle of a write, FIFOs,
/dev/zero, a file that keeps growing, and a real full disk (a tiny tmpfs, as root)."""
import errno
import fcntl
import hashlib
import os
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from flamby_mpi.exit.errors import UserError
from flamby_mpi.storage import safe_files
from flamby_mpi.storage.safe_files import StorageError, UnsafePathError
from support.files import snapshot
from support.tmpfs import temporary_files, tmpfs

pytestmark = pytest.mark.timeout(60)


@pytest.fixture
def run_and_outside(tmp_path):
    """A run's directory and, beside it, a directory of the user's that a link could point into."""
    run, outside = tmp_path / "run", tmp_path / "outside"
    run.mkdir()
    outside.mkdir()
    (outside / "victim").write_bytes(b"the user's own file\n")
    return run, outside


# ---- write_atomic -----------------------------------------------------------------------------

def test_write_atomic_writes_whole_files_and_returns_their_hash(run_and_outside):
    run, _ = run_and_outside
    entry = safe_files.write_atomic(run, "a/b/c.bin", b"x" * 1000)
    assert (run / "a" / "b" / "c.bin").read_bytes() == b"x" * 1000
    assert entry == {"sha256": hashlib.sha256(b"x" * 1000).hexdigest(), "bytes": 1000}
    streamed = safe_files.write_atomic(run, "a/streamed", lambda f: [f.write(b"ab") for _ in range(3)],
                                       durable=True)
    assert (run / "a" / "streamed").read_bytes() == b"ababab"
    assert streamed == {"sha256": hashlib.sha256(b"ababab").hexdigest(), "bytes": 6}
    safe_files.write_atomic(run, "a/b/c.bin", b"second")  # replaced whole
    assert (run / "a" / "b" / "c.bin").read_bytes() == b"second"
    assert temporary_files(run) == []


def test_torch_save_streams_through_the_hash(run_and_outside):
    torch = pytest.importorskip("torch")
    run, _ = run_and_outside
    tensors = {"w": torch.arange(100000, dtype=torch.float32)}
    entry = safe_files.write_atomic(run, "m.pt", lambda f: torch.save(tensors, f), durable=True)
    data = (run / "m.pt").read_bytes()
    assert entry == {"sha256": hashlib.sha256(data).hexdigest(), "bytes": len(data)}
    assert torch.equal(torch.load(run / "m.pt", weights_only=True)["w"], tensors["w"])


def _direct_io_refused(directory: Path) -> str:
    """Why directory's file system cannot take O_DIRECT here ("" when it can)."""
    if not hasattr(os, "O_DIRECT"):
        return "no O_DIRECT on this system"
    probe = directory / ".probe"
    fd = os.open(probe, os.O_WRONLY | os.O_CREAT)
    try:
        return "" if safe_files._set_flag(fd, os.O_DIRECT, True) else f"{directory}'s file system refuses O_DIRECT"
    finally:
        os.close(fd)
        probe.unlink()


def _pieces(size: int, seed: int):
    """size pseudo-random bytes in pieces of odd sizes (as torch.save hands them: headers, records)."""
    data = hashlib.shake_256(str(seed).encode()).digest(size) if size else b""
    cuts = sorted({0, size, *[(i * 7919 * (seed + 1)) % (size + 1) for i in range(1, 12)]})
    return data, [data[a:b] for a, b in zip(cuts[:-1], cuts[1:], strict=True)]


CHUNK, ALIGN = safe_files._DIRECT_CHUNK, safe_files._DIRECT_ALIGN


@pytest.mark.parametrize("size", [0, 1, ALIGN - 1, ALIGN, CHUNK - 1, CHUNK, CHUNK + 1, 2 * CHUNK + ALIGN + 3,
                                  3 * CHUNK])
def test_a_direct_write_gives_the_bytes_and_hash_of_a_buffered_one(run_and_outside, size):
    run, _ = run_and_outside
    data, pieces = _pieces(size, size)
    entries = [safe_files.write_atomic(run, f"{kind}.bin", lambda f: [f.write(p) for p in pieces], durable=True,
                                       direct=kind == "direct") for kind in ("direct", "buffered")]
    assert (run / "direct.bin").read_bytes() == (run / "buffered.bin").read_bytes() == data
    assert entries[0] == entries[1] == {"sha256": hashlib.sha256(data).hexdigest(), "bytes": size}
    assert temporary_files(run) == []


def test_a_file_of_several_chunks_goes_past_the_page_cache_a_small_one_does_not(run_and_outside):
    run, _ = run_and_outside
    refused = _direct_io_refused(run)
    if refused:
        pytest.skip(refused)
    data, pieces = _pieces(2 * CHUNK + 5, 1)
    fd = os.open(run / "big", os.O_WRONLY | os.O_CREAT)
    with safe_files._DirectFile(fd) as handle:
        for piece in pieces:
            handle.write(piece)
        assert handle.direct is True and fcntl.fcntl(fd, fcntl.F_GETFL) & os.O_DIRECT
        handle.flush()  # the tail, unaligned, without O_DIRECT
        assert not fcntl.fcntl(fd, fcntl.F_GETFL) & os.O_DIRECT
    assert (run / "big").read_bytes() == data
    fd = os.open(run / "small", os.O_WRONLY | os.O_CREAT)
    with safe_files._DirectFile(fd) as handle:
        handle.write(b"x" * (CHUNK - 1))
        handle.flush()
        assert handle.direct is None and not fcntl.fcntl(fd, fcntl.F_GETFL) & os.O_DIRECT
    assert (run / "small").read_bytes() == b"x" * (CHUNK - 1)


def test_a_file_system_refusing_direct_io_at_the_switch_or_at_a_write_still_gets_the_bytes(run_and_outside,
                                                                                           monkeypatch):
    run, _ = run_and_outside
    data, pieces = _pieces(3 * CHUNK + 17, 2)
    # Refused when the flag is set (FUSE, older tmpfs): the file goes through the page cache.
    with monkeypatch.context() as patch:
        patch.setattr(safe_files, "_set_flag", lambda fd, flag, on: not on and flag == os.O_DIRECT)
        entry = safe_files.write_atomic(run, "refused.bin", lambda f: [f.write(p) for p in pieces], direct=True)
    assert (run / "refused.bin").read_bytes() == data and entry["sha256"] == hashlib.sha256(data).hexdigest()
    # Accepted by the switch, refused by the second write (EINVAL): the rest goes through the page cache.
    real_write, calls = os.write, []

    def write(fd, buffer):
        calls.append(fcntl.fcntl(fd, fcntl.F_GETFL) & getattr(os, "O_DIRECT", 0))
        if len(calls) == 2 and calls[-1]:
            raise OSError(errno.EINVAL, "Invalid argument")
        return real_write(fd, buffer)
    with monkeypatch.context() as patch:
        patch.setattr(safe_files.os, "write", write)
        entry = safe_files.write_atomic(run, "einval.bin", lambda f: [f.write(p) for p in pieces], direct=True)
    assert (run / "einval.bin").read_bytes() == data and entry["bytes"] == len(data)
    assert temporary_files(run) == []


def test_a_directory_writes_several_files_through_one_descriptor_and_refuses_paths_as_names(run_and_outside):
    run, outside = run_and_outside
    with safe_files.Directory(run, "checkpoints/round_1", create=True) as directory:
        first = directory.write_atomic("rank_1.pt", b"tensors", durable=True)
        second = directory.write_atomic("rank_1.json", lambda f: f.write(b"{}"), durable=True)
        directory.sync()
        for name in ("../escape", "a/b", "..", "", "."):
            with pytest.raises(ValueError):
                directory.write_atomic(name, b"x")
    assert (run / "checkpoints/round_1/rank_1.pt").read_bytes() == b"tensors"
    assert first == {"sha256": hashlib.sha256(b"tensors").hexdigest(), "bytes": 7}
    assert second["bytes"] == 2 and temporary_files(run) == [] and not (run / "escape").exists()
    # A round directory that is a link is refused when it is entered, before anything is written.
    (run / "checkpoints" / "round_2").symlink_to(outside)
    with pytest.raises(UnsafePathError, match="round_2 is a link"):
        safe_files.Directory(run, "checkpoints/round_2", create=True)
    assert sorted(p.name for p in outside.iterdir()) == ["victim"]


def test_a_link_at_the_target_name_is_replaced_never_written_through(run_and_outside):
    run, outside = run_and_outside
    (run / "results.json").symlink_to(outside / "victim")
    safe_files.write_atomic(run, "results.json", b"{}")
    assert not (run / "results.json").is_symlink() and (run / "results.json").read_bytes() == b"{}"
    assert (outside / "victim").read_bytes() == b"the user's own file\n"


@pytest.mark.parametrize("component", ["checkpoints", "checkpoints/round_1"])
def test_a_link_at_any_directory_below_the_root_is_refused(run_and_outside, component):
    run, outside = run_and_outside
    before = snapshot(outside)
    parent = run / component
    parent.parent.mkdir(parents=True, exist_ok=True)
    parent.symlink_to(outside, target_is_directory=True)
    with pytest.raises(UnsafePathError) as refused:
        safe_files.write_atomic(run, "checkpoints/round_1/rank_1.pt", b"data")
    assert str(parent) in str(refused.value) and refused.value.exit_code == 2
    assert snapshot(outside) == before  # nothing written, nothing made there


def test_a_file_where_a_directory_should_be_is_refused(run_and_outside):
    run, _ = run_and_outside
    (run / "logs").write_bytes(b"not a directory")
    with pytest.raises(UnsafePathError):
        safe_files.write_atomic(run, "logs/x", b"data")
    with pytest.raises(UnsafePathError):
        safe_files.open_append(run, "logs/rank0.log")


def test_paths_that_leave_the_root_are_not_accepted(run_and_outside):
    run, _ = run_and_outside
    for bad in ("../x", "a/../../x", "/etc/passwd", "", "."):
        with pytest.raises(ValueError):
            safe_files.write_atomic(run, bad, b"data")


def test_links_planted_at_the_old_predictable_and_at_the_next_temporary_names_are_never_used(
        run_and_outside, monkeypatch):
    run, outside = run_and_outside
    # The old writers used .<name>.tmp<pid>: every such name for this process is a link outside.
    for name in ("config.yaml", "results.json"):
        (run / f".{name}.tmp{os.getpid()}").symlink_to(outside / f"planted-{name}")
    # The temporary name the new writer will draw first is planted too (as if guessed): it is
    # skipped (O_EXCL|O_NOFOLLOW), the next name drawn is used.
    draws = iter(["guessed", "fresh"])
    monkeypatch.setattr(safe_files.secrets, "token_hex", lambda n: next(draws))
    (run / ".config.yaml.guessed.tmp").symlink_to(outside / "victim")
    safe_files.write_atomic(run, "config.yaml", b"seed: 1\n")
    monkeypatch.undo()
    safe_files.write_atomic(run, "results.json", b"{}")
    assert (run / "config.yaml").read_bytes() == b"seed: 1\n"
    assert (outside / "victim").read_bytes() == b"the user's own file\n"
    assert sorted(p.name for p in outside.iterdir()) == ["victim"]
    assert os.readlink(run / ".config.yaml.guessed.tmp") == str(outside / "victim")  # left as it was


def test_temporary_names_are_not_predictable(run_and_outside):
    run, _ = run_and_outside
    seen = []
    for _ in range(5):
        safe_files.write_atomic(run, "x", lambda f: seen.append(
            [p.name for p in run.iterdir() if p.name.endswith(".tmp")]))
    names = [n for names in seen for n in names]
    assert len(names) == 5 and len(set(names)) == 5 and not any(str(os.getpid()) in n for n in names)


def test_a_directory_swapped_for_a_link_during_the_write_still_gets_nothing_outside(run_and_outside):
    run, outside = run_and_outside
    (run / "checkpoints" / "round_1").mkdir(parents=True)
    before = snapshot(outside)

    def swap_then_write(handle):
        # The round directory moves away and a link to the outside takes its name mid-write.
        (run / "checkpoints" / "round_1").rename(run / "checkpoints" / "moved")
        (run / "checkpoints" / "round_1").symlink_to(outside, target_is_directory=True)
        handle.write(b"state")

    safe_files.write_atomic(run, "checkpoints/round_1/rank_1.pt", swap_then_write)
    assert snapshot(outside) == before
    assert (run / "checkpoints" / "moved" / "rank_1.pt").read_bytes() == b"state"  # the directory opened


def test_a_failing_writer_leaves_no_temporary_file_and_keeps_the_old_file(run_and_outside):
    run, _ = run_and_outside
    safe_files.write_atomic(run, "global_model.pt", b"old")

    def broken(handle):
        handle.write(b"half")
        raise RuntimeError("a bug in the writer")

    with pytest.raises(RuntimeError, match="a bug in the writer"):  # a bug stays a bug
        safe_files.write_atomic(run, "global_model.pt", broken)
    assert (run / "global_model.pt").read_bytes() == b"old" and temporary_files(run) == []


# ---- a real full disk --------------------------------------------------------------------------

def test_a_full_disk_is_a_storage_error_naming_the_file_with_no_partial_file(tmp_path):
    with tmpfs(tmp_path / "small", 64) as small:
        safe_files.write_atomic(small, "results.json", b"old")
        with pytest.raises(StorageError) as full:
            safe_files.write_atomic(small, "results.json", b"x" * (200 * 1024))
        error = full.value
        assert error.exit_code == safe_files.EXIT_STORAGE == 74 and isinstance(error, UserError)
        assert error.errno == errno.ENOSPC and error.path == small / "results.json"
        assert f"writing {small / 'results.json'} failed: no space left on the device" in str(error)
        assert "--resume" in str(error)
        assert (small / "results.json").read_bytes() == b"old" and temporary_files(small) == []
        # The space is free again: the same write works once the disk is bigger.
        safe_files.write_atomic(small, "results.json", b"new")
        assert (small / "results.json").read_bytes() == b"new"


def test_a_full_disk_under_torch_save_is_a_storage_error_not_torchs_runtime_error(tmp_path):
    torch = pytest.importorskip("torch")
    with tmpfs(tmp_path / "small", 64) as small:
        # torch.save itself turns the ENOSPC of a write into "RuntimeError: ... unexpected pos".
        with pytest.raises(StorageError) as full:
            safe_files.write_atomic(small, "checkpoints/round_1/rank_1.pt",
                                    lambda f: torch.save({"w": torch.zeros(100000)}, f), durable=True)
        assert full.value.errno == errno.ENOSPC and full.value.path.name == "rank_1.pt"
        assert temporary_files(small) == []


def test_a_full_disk_under_a_direct_write_is_a_storage_error_with_no_partial_file(tmp_path):
    with tmpfs(tmp_path / "small", 3 * CHUNK // 1024) as small:
        refused = _direct_io_refused(small)
        if refused:
            pytest.skip(refused)
        data, pieces = _pieces(5 * CHUNK, 3)
        with pytest.raises(StorageError) as full:
            safe_files.write_atomic(small, "checkpoints/round_1/rank_1.pt", lambda f: [f.write(p) for p in pieces],
                                    durable=True, direct=True)
        assert full.value.errno == errno.ENOSPC and full.value.path.name == "rank_1.pt"
        assert temporary_files(small) == []
        # The space is free again: a part that fits is written whole.
        safe_files.write_atomic(small, "checkpoints/round_1/rank_1.pt", lambda f: f.write(data[:CHUNK + 9]),
                                direct=True)
        assert (small / "checkpoints" / "round_1" / "rank_1.pt").read_bytes() == data[:CHUNK + 9]


_LOG_UNTIL_FULL = """
import logging, sys
from flamby_mpi.exit import failures
from flamby_mpi.outputs import logs
logs.setup_rank_logging(__import__("pathlib").Path(sys.argv[1]), 1, "info")
for k in range(3000):
    logging.getLogger("flamby_mpi.client").info("record %d %s", k, "x" * 100)
failures.report(failures.message("the job's own end", "rank 1"))
logging.getLogger("flamby_mpi.client").warning("still shown on the console")
print("carried on", flush=True)
"""


def test_a_log_on_a_full_disk_says_so_once_and_the_process_carries_on(tmp_path):
    from support.mpi import REPO

    with tmpfs(tmp_path / "small", 16) as small:
        done = subprocess.run([sys.executable, "-c", _LOG_UNTIL_FULL, str(small)], capture_output=True,
                              text=True, timeout=60, cwd=REPO, env={**os.environ, "PYTHONPATH": str(REPO)})
        assert done.returncode == 0 and "carried on" in done.stdout, done.stderr
        assert "--- Logging error ---" not in done.stderr and "Traceback" not in done.stderr
        said = [line for line in done.stderr.splitlines() if "no space left" in line]
        assert len(said) == 1 and str(small / "logs" / "rank1.log") in said[0], done.stderr
        assert "the job's own end" in done.stderr and "still shown on the console" in done.stderr
        kept = (small / "logs" / "rank1.log").read_text()
        assert "record 0 " in kept and "record 2999 " not in kept  # what fitted is kept; then it was full


# ---- open_append -------------------------------------------------------------------------------

def test_open_append_never_truncates(run_and_outside):
    run, _ = run_and_outside
    with safe_files.open_append(run, "logs/rank1.log") as log:
        log.write(b"attempt 1 crashed here\n")
    with safe_files.open_append(run, "logs/rank1.log") as log:
        log.write(b"attempt 2\n")
    assert (run / "logs" / "rank1.log").read_bytes() == b"attempt 1 crashed here\nattempt 2\n"


@pytest.mark.parametrize("target", ["outside", "/dev/zero", "/dev/null", "dangling"])
def test_open_append_refuses_a_link(run_and_outside, target):
    run, outside = run_and_outside
    (run / "logs").mkdir()
    link_to = {"outside": outside / "victim", "dangling": outside / "absent"}.get(target, Path(target))
    (run / "logs" / "rank0.log").symlink_to(link_to)
    with pytest.raises(UnsafePathError, match="is a link"):
        safe_files.open_append(run, "logs/rank0.log")
    assert (outside / "victim").read_bytes() == b"the user's own file\n"
    assert not (outside / "absent").exists()


def test_open_append_refuses_a_fifo_at_once_and_a_directory(run_and_outside):
    run, _ = run_and_outside
    (run / "logs").mkdir()
    os.mkfifo(run / "logs" / "rank0.log")
    start = time.monotonic()
    with pytest.raises(UnsafePathError, match="not a regular file"):
        safe_files.open_append(run, "logs/rank0.log")
    assert time.monotonic() - start < 5  # no reader needed, no wait for one
    (run / "logs" / "rank1.log").mkdir()
    with pytest.raises(UnsafePathError):
        safe_files.open_append(run, "logs/rank1.log")


def test_open_append_through_a_linked_directory_is_refused(run_and_outside):
    run, outside = run_and_outside
    (run / "tensorboard").symlink_to(outside, target_is_directory=True)
    with pytest.raises(UnsafePathError):
        safe_files.open_append(run, "tensorboard/events.out.tfevents.1")
    assert sorted(p.name for p in outside.iterdir()) == ["victim"]


# ---- bounded reads -----------------------------------------------------------------------------

def test_read_bounded_refuses_fifos_links_devices_and_big_files(run_and_outside):
    run, outside = run_and_outside
    os.mkfifo(run / "fifo")
    (run / "zero").symlink_to("/dev/zero")
    (run / "big").write_bytes(b"z" * 2000)
    (run / "ok").write_bytes(b"{}")
    start = time.monotonic()
    with pytest.raises(UnsafePathError):
        safe_files.read_bounded("fifo", 100, root=run)
    with pytest.raises(UnsafePathError, match="is a link"):
        safe_files.read_bounded("zero", 100, root=run)
    with pytest.raises(UnsafePathError, match="not a regular file"):
        safe_files.read_bounded("/dev/zero", 100)  # given directly: still no endless read
    with pytest.raises(ValueError):
        safe_files.read_bounded("big", 1000, root=run)
    assert time.monotonic() - start < 5
    assert safe_files.read_bounded("ok", 100, root=run) == b"{}"


def test_read_bounded_stops_at_the_cap_on_a_file_that_keeps_growing(run_and_outside):
    run, _ = run_and_outside
    growing = run / "growing"
    growing.write_bytes(b"")
    writer = subprocess.Popen([sys.executable, "-c",
                               "import sys\nwith open(sys.argv[1], 'ab', buffering=0) as f:\n"
                               "    while True: f.write(b'g' * 65536)", str(growing)])
    try:
        while growing.stat().st_size == 0:
            time.sleep(0.01)
        for _ in range(5):  # open when under the cap or not: never more than cap + 1 bytes read
            with pytest.raises(ValueError):
                safe_files.read_bounded("growing", 1 << 20, root=run)
    finally:
        writer.kill()
        writer.wait()


def test_load_json_bounds_nesting():
    assert safe_files.load_json(b'{"a": [1, {"b": "[[[["}]}') == {"a": [1, {"b": "[[[["}]}
    with pytest.raises(ValueError, match="nested"):
        safe_files.load_json(b"[" * 100 + b"]" * 100)


# ---- walking and pruning without following links -----------------------------------------------

def test_entries_reports_links_as_not_directories(run_and_outside):
    run, outside = run_and_outside
    (run / "checkpoints" / "round_1").mkdir(parents=True)
    (run / "checkpoints" / "round_2").symlink_to(outside, target_is_directory=True)
    assert sorted(safe_files.entries(run, "checkpoints")) == [("round_1", True), ("round_2", False)]
    assert list(safe_files.entries(run, "absent")) == []
    (run / "linked").symlink_to(outside, target_is_directory=True)
    with pytest.raises(UnsafePathError):
        list(safe_files.entries(run, "linked"))


def test_remove_never_reaches_through_a_link(run_and_outside):
    run, outside = run_and_outside
    other_round = outside / "other-run" / "checkpoints" / "round_3"
    other_round.mkdir(parents=True)
    (other_round / "manifest.json").write_bytes(b'{"other": "run"}')
    (run / "checkpoints").mkdir()
    (run / "checkpoints" / "round_3").symlink_to(other_round, target_is_directory=True)
    before = snapshot(outside)
    assert not safe_files.remove(run, "checkpoints/round_3/manifest.json")
    assert safe_files.remove_files(run, "checkpoints/round_3", ["manifest.json"], also=lambda name: True) == []
    safe_files.remove_tree(run, "checkpoints/round_3/x")
    assert snapshot(outside) == before and (run / "checkpoints" / "round_3").is_symlink()
    # A link itself is removed as a link, its target left alone.
    (run / "log-link").symlink_to(outside / "victim")
    assert safe_files.remove(run, "log-link")
    assert (outside / "victim").read_bytes() == b"the user's own file\n"


def test_remove_tree_removes_links_inside_as_links(run_and_outside):
    run, outside = run_and_outside
    (run / "old" / "deep").mkdir(parents=True)
    (run / "old" / "deep" / "f").write_bytes(b"f")
    (run / "old" / "to-outside").symlink_to(outside, target_is_directory=True)
    before = snapshot(outside)
    safe_files.remove_tree(run, "old")
    assert not (run / "old").exists() and snapshot(outside) == before


def test_remove_files_keeps_a_directory_with_files(run_and_outside):
    run, _ = run_and_outside
    (run / "round_1").mkdir()
    (run / "round_1" / "rank_2.pt").write_bytes(b"another rank's")
    assert safe_files.remove_files(run, "round_1", ["rank_1.pt"]) == [] and (run / "round_1" / "rank_2.pt").exists()
    assert safe_files.remove_files(run, "round_1", ["rank_2.pt"]) == ["rank_2.pt"] and not (run / "round_1").exists()


def test_remove_files_removes_only_what_it_is_given_and_never_through_a_link(run_and_outside):
    """A cut's files pruned in one directory: names that are links go as links, a directory under
    a file's name stays, leftovers go only where the filter accepts them, the directory goes once
    empty, and a round directory that is a link is not entered at all."""
    run, outside = run_and_outside
    round_1 = run / "checkpoints" / "round_1"
    round_1.mkdir(parents=True)
    (round_1 / "rank_1.pt").write_bytes(b"pt")
    (round_1 / "rank_1.json").symlink_to(outside / "victim")
    (round_1 / ".rank_1.pt.0123456789abcdef.tmp").write_bytes(b"left by a kill")
    (round_1 / ".rank_1.pt.fedcba9876543210.tmp").mkdir()  # a directory under a leftover's name: kept
    (round_1 / "rank_2.pt").write_bytes(b"another rank's")
    before = snapshot(outside)
    removed = safe_files.remove_files(run, "checkpoints/round_1", ["rank_1.pt", "rank_1.json", "manifest.json"],
                                      also=lambda name: name.startswith(".rank_1.pt."))
    assert sorted(removed) == [".rank_1.pt.0123456789abcdef.tmp", "rank_1.json", "rank_1.pt"]
    assert sorted(p.name for p in round_1.iterdir()) == [".rank_1.pt.fedcba9876543210.tmp", "rank_2.pt"]
    assert snapshot(outside) == before
    (round_1 / ".rank_1.pt.fedcba9876543210.tmp").rmdir()
    assert safe_files.remove_files(run, "checkpoints/round_1", ["rank_2.pt"]) == ["rank_2.pt"]
    assert not round_1.exists()
    assert safe_files.remove_files(run, "checkpoints/round_1", ["rank_2.pt"]) == []  # gone: nothing to do
    # A round directory that is a link: nothing in it or of it is removed.
    (outside / "round_2").mkdir()
    (outside / "round_2" / "rank_1.pt").write_bytes(b"not ours")
    (run / "checkpoints" / "round_2").symlink_to(outside / "round_2", target_is_directory=True)
    before = snapshot(outside)
    assert safe_files.remove_files(run, "checkpoints/round_2", ["rank_1.pt"], also=lambda name: True) == []
    assert snapshot(outside) == before and (run / "checkpoints" / "round_2").is_symlink()
    # A bad name among good ones: refused before anything is removed.
    (run / "checkpoints" / "keep").write_bytes(b"kept")
    for name in ("../victim", "a/b", ".."):
        with pytest.raises(ValueError):
            safe_files.remove_files(run, "checkpoints", ["keep", name])
    assert (run / "checkpoints" / "keep").read_bytes() == b"kept"


def test_file_exists_does_not_follow_links(run_and_outside):
    run, outside = run_and_outside
    (run / "results.json").symlink_to(outside / "victim")
    (run / "real").write_bytes(b"")
    assert not safe_files.file_exists(run, "results.json") and safe_files.file_exists(run, "real")


def test_writes_from_threads_at_once_each_land_whole(run_and_outside):
    run, _ = run_and_outside
    errors = []

    def write(k):
        try:
            for _ in range(20):
                safe_files.write_atomic(run, "checkpoints/round_1/shared", bytes([k]) * 10000)
        except Exception as exc:  # noqa: BLE001 - a thread's error is lost unless collected for the assert
            errors.append(exc)

    threads = [threading.Thread(target=write, args=(k,)) for k in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    data = (run / "checkpoints" / "round_1" / "shared").read_bytes()
    assert not errors and len(data) == 10000 and len(set(data)) == 1 and temporary_files(run) == []


def test_a_directory_removed_while_a_file_is_written_in_it_is_said_in_words(tmp_path):
    """rm -rf of a running job's output directory used to end a rank with a FileNotFoundError traceback."""
    import shutil

    (tmp_path / "run" / "checkpoints" / "round_3").mkdir(parents=True)
    with safe_files.Directory(tmp_path / "run", "checkpoints/round_3") as directory:
        shutil.rmtree(tmp_path / "run")
        with pytest.raises(safe_files.DirectoryRemoved) as removed:
            directory.write_atomic("rank_1.pt", b"x" * 100, durable=True)
    assert removed.value.exit_code == 1
    assert str(removed.value).startswith(f"{tmp_path / 'run' / 'checkpoints' / 'round_3'} was removed while "
                                         "rank_1.pt was being written in it")
    assert not (tmp_path / "run").exists()  # nothing made again


@pytest.mark.parametrize("run_directory_set", [False, True])
def test_a_directory_removed_while_a_round_directory_is_made_in_it_is_said_in_words(tmp_path, monkeypatch,
                                                                                       run_directory_set):
    """rm -rf of a running job's output directory between entering `checkpoints` and making
    `round_3` in it (mkdir in a removed directory: ENOENT) ended a client with a traceback
    (CI, test_run_dir_writes). The race is staged for real: the tree goes when round_3 is found
    missing, just before the mkdir."""
    import shutil

    run = tmp_path / "run"
    (run / "checkpoints").mkdir(parents=True)
    real_open = os.open

    def open_then_lose_the_tree(path, flags, *args, **kwargs):
        if path == "round_3" and not (run / "checkpoints" / "round_3").exists() and run.exists():
            shutil.rmtree(run)
        return real_open(path, flags, *args, **kwargs)

    monkeypatch.setattr(safe_files.os, "open", open_then_lose_the_tree)
    if run_directory_set:
        safe_files.set_run_directory(run)
    try:
        with pytest.raises(safe_files.DirectoryRemoved) as removed:
            safe_files.Directory(run, "checkpoints/round_3", create=True)
    finally:
        safe_files.set_run_directory(None)
    assert removed.value.exit_code == 1
    if run_directory_set:
        assert str(removed.value).startswith(f"the run's output directory {run} was removed while the run was going")
    else:
        assert str(removed.value).startswith(f"{run / 'checkpoints'} was removed while round_3 was being written")
    assert not run.exists()  # nothing made again
