"""Checkpoints written in the background (flamby_mpi/checkpoints/staging.py), attacked where the
background makes a difference: real `mpiexec -n 3` jobs, real files, real signals.

- a rank's part staged and written while the next round trains is the same file, bit for bit, as
  the part written at once from the live state (common_args.checkpoint_staging_mb: 0, the
  synchronous path, which says once in the log why);
- SIGKILL of the whole job while a background write is in flight (its temporary file seen in the
  round's directory): the previous complete cut is usable, and --resume ends with the
  uninterrupted run's model, bitwise;
- SIGTERM while a background write is in flight: the write is finished and confirmed, the stop cut
  completed (manifest last), exit 143, and --resume gives the uninterrupted model.
A full disk during a background write (exit 74, then --resume bitwise) is tests/test_run_dir_writes.py:
every write there is a background one since checkpoints are staged by default.
The model carries 24 MB of unused weights (tests/support/heavy_model_dataset.py), so that a part
takes long enough to write to be caught in flight.
"""
import hashlib
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from support.mpi import DEFAULT_CONFIG, LAUNCHER, kill_group, mpiexec, run_job, wait_until_gone
from support.mpi import test_env as job_env
from support.tmpfs import resize, temporary_files, tmpfs

pytestmark = [pytest.mark.mpi, pytest.mark.timeout(600)]

ROUNDS = 6
HEAVY = {"HEAVY_MODEL_CENTRES": "2", "HEAVY_MODEL_BYTES": "24000000"}
ARGS = ["--cf", str(DEFAULT_CONFIG), "--set", "data_args.dataset=support.heavy_model_dataset",
        "--set", f"train_args.comm_round={ROUNDS}", "--set", "train_args.num_updates=3",
        "--set", "validation_args.frequency_of_the_test=3", "--set", "common_args.random_seed=7",
        "--set", "tracking_args.tensorboard=false", "--set", "train_args.federated_optimizer=FedAdam",
        "--set", "train_args.server_learning_rate=0.05"]
DEADLINE_S = 300


def _sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _inprocess(cwd: Path, home: Path, out: Path, extra=()):
    job = run_job([sys.executable, str(LAUNCHER), *ARGS, "--run_id", out.name, "--set",
                   f"common_args.output_dir={out}", "--set", "comm_args.backend=inprocess", *extra],
                  cwd, job_env(home, HEAVY), DEADLINE_S)
    assert job.returncode == 0, job.output
    return job


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    """The uninterrupted run, in process (bitwise the MPI run: test_strategies_mpi.py)."""
    root = tmp_path_factory.mktemp("reference")
    (root / "home").mkdir()
    out = root / "reference"
    _inprocess(root, root / "home", out)
    return out


def test_a_staged_part_is_the_same_file_as_one_written_at_once(workdir, reference):
    cwd, home, _ = workdir
    out = cwd / "synchronous"
    _inprocess(cwd, home, out, ["--set", "common_args.checkpoint_staging_mb=0"])
    assert _sha(out / "global_model.pt") == _sha(reference / "global_model.pt")
    for cut in (ROUNDS - 1, ROUNDS):
        staged, written = reference / "checkpoints" / f"round_{cut}", out / "checkpoints" / f"round_{cut}"
        names = sorted(p.name for p in staged.iterdir())
        assert names == sorted(p.name for p in written.iterdir()) == sorted(
            ["manifest.json"] + [f"rank_{k}.{e}" for k in range(3) for e in ("pt", "json")])
        # rank_0.json holds the run's timings; everything else is the same bytes
        for name in [n for n in names if n.endswith(".pt")] + ["rank_1.json", "rank_2.json"]:
            assert (staged / name).read_bytes() == (written / name).read_bytes(), (cut, name)
    log = (out / "logs" / "rank0.log").read_text()  # in process, every rank logs here: each says it once
    for rank in range(3):
        assert log.count(f"rank {rank}: its part of a checkpoint holds") == 1, log
    assert log.count("more than common_args.checkpoint_staging_mb (0 MiB)") == 3, log
    assert "written at the end of its round instead of while the next one trains" in log
    assert "its part of a checkpoint holds" not in (reference / "logs" / "rank0.log").read_text()


def _mpirun(marker: str, out: Path, extra=()):
    return [mpiexec(), "-n", "3", sys.executable, str(LAUNCHER), *ARGS, "--run_id", marker,
            "--set", f"common_args.output_dir={out}", *extra]


def _write_in_flight(out: Path, job, after_round: int = 1, deadline_s: float = DEADLINE_S) -> int:
    """Waits, once the checkpoint of after_round is complete, until a rank's part of a later cut is
    being written (its temporary file is in the round's directory); returns that cut."""
    end = time.monotonic() + deadline_s
    while not (out / "checkpoints" / f"round_{after_round}" / "manifest.json").exists():
        assert job.poll() is None and time.monotonic() < end, "no first checkpoint"
        time.sleep(0.01)
    while True:
        assert job.poll() is None and time.monotonic() < end, "no background write caught in flight"
        for directory in (out / "checkpoints").glob("round_*"):
            cut = int(directory.name.split("_")[1])
            try:
                names = os.listdir(directory)
            except FileNotFoundError:
                continue
            if cut > after_round and any(n.startswith(".rank_") and n.endswith(".tmp") for n in names) \
                    and "manifest.json" not in names:
                return cut
        time.sleep(0.002)


def _resume(workdir, out: Path) -> str:
    cwd, home, marker = workdir
    job = run_job(_mpirun(marker, out, ["--resume"]), cwd, job_env(home, HEAVY), DEADLINE_S, marker=marker)
    assert job.returncode == 0, job.output
    assert "resumed from round" in job.output
    return _sha(out / "global_model.pt")


def _complete_cuts(out: Path) -> list:
    return sorted(int(p.parent.name.split("_")[1]) for p in (out / "checkpoints").glob("round_*/manifest.json"))


def _start_in_its_own_group(marker, out: Path, cwd: Path, home: Path) -> subprocess.Popen:
    """The job under test, in a session of its own so that a test can signal or kill all of it."""
    return subprocess.Popen(_mpirun(marker, out), cwd=cwd, env=job_env(home, HEAVY), stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True, start_new_session=True)


def test_sigkill_while_a_part_is_written_in_the_background_leaves_the_previous_cut_usable(workdir, reference):
    cwd, home, marker = workdir
    out = cwd / "out"
    job = _start_in_its_own_group(marker, out, cwd, home)
    try:
        in_flight = _write_in_flight(out, job)
        os.killpg(job.pid, signal.SIGKILL)  # every rank at once, mid-write
        job.communicate(timeout=60)
        assert wait_until_gone(marker) == []
    finally:
        kill_group(job)
    complete = _complete_cuts(out)
    assert complete and max(complete) < in_flight, (complete, in_flight)
    assert not (out / "results.json").exists()
    left = [p for p in (out / "checkpoints").glob(f"round_{in_flight}/.rank_*.tmp")]
    assert _resume(workdir, out) == _sha(reference / "global_model.pt")
    assert (out / "metrics.csv").read_text() == (reference / "metrics.csv").read_text()
    # what the kill left half written is gone, and only the kept cuts remain
    assert all(not p.exists() for p in left) and temporary_files(out) == []
    assert sorted(p.name for p in (out / "checkpoints").iterdir()) == [f"round_{ROUNDS - 1}", f"round_{ROUNDS}"]


def test_sigterm_while_a_part_is_written_in_the_background_completes_the_cut(workdir, reference):
    cwd, home, marker = workdir
    out = cwd / "out"
    job = _start_in_its_own_group(marker, out, cwd, home)
    try:
        in_flight = _write_in_flight(out, job)
        os.kill(job.pid, signal.SIGTERM)  # mpiexec passes it on to every rank
        output, _ = job.communicate(timeout=90)
        assert wait_until_gone(marker) == []
    finally:
        kill_group(job)
    assert job.returncode == 143, output
    assert "stopped by SIGTERM after round" in output and "Traceback" not in output
    stopped_after = int(output.split("stopped by SIGTERM after round ")[1].split(";")[0])
    assert stopped_after >= in_flight  # the cut being written when the signal came was finished
    assert max(_complete_cuts(out)) == stopped_after
    directory = out / "checkpoints" / f"round_{stopped_after}"
    assert sorted(p.name for p in directory.iterdir()) == sorted(
        ["manifest.json"] + [f"rank_{k}.{e}" for k in range(3) for e in ("pt", "json")])
    assert _resume(workdir, out) == _sha(reference / "global_model.pt")


def test_a_disk_that_fills_during_a_background_write_ends_the_job_with_74_and_resume_works(workdir, reference):
    cwd, home, marker = workdir
    sizes = [-(-p.stat().st_size // 4096) * 4 for p in (reference / "checkpoints" / f"round_{ROUNDS}").iterdir()]
    # Two cuts, config.yaml and the logs fit; the third cut's biggest part does not (a part, not a
    # manifest: the part's write is the background one).
    with tmpfs(cwd / "disk", 2 * sum(sizes) + 64 + max(sizes) // 2) as disk:
        out = disk / "run"
        job = run_job(_mpirun(marker, out), cwd, job_env(home, HEAVY), DEADLINE_S, marker=marker)
        assert job.returncode == 74, job.output
        assert "Traceback" not in job.output and "--- Logging error ---" not in job.output, job.output
        errors = [line for line in job.stderr.splitlines() if line.startswith("flamby-mpi: error")]
        assert len(errors) == 1, job.stderr
        assert "no space left on the device" in errors[0] and "/rank_" in errors[0], errors[0]
        assert temporary_files(out) == [] and not (out / "results.json").exists()
        complete = _complete_cuts(out)
        assert complete and max(complete) < ROUNDS, complete
        for cut in complete:  # every cut the manifests name is whole: its parts were confirmed on disk
            assert sorted(p.name for p in (out / "checkpoints" / f"round_{cut}").iterdir()) == sorted(
                ["manifest.json"] + [f"rank_{k}.{e}" for k in range(3) for e in ("pt", "json")])
        resize(disk, 1024 * 1024)
        assert _resume(workdir, out) == _sha(reference / "global_model.pt")
        assert temporary_files(out) == []


# ---- the writer itself, on real files ------------------------------------------------------------

def test_a_staged_part_holds_the_state_it_was_staged_from_and_a_writers_error_surfaces(tmp_path):
    import torch

    from flamby_mpi.checkpoints import checkpoint, staging
    from flamby_mpi.storage.safe_files import UnsafePathError

    saver = staging.PartSaver(tmp_path, 1, staging_mb=1024)
    weights = torch.zeros(8_000_000)
    saver.save(1, {"w": weights, "view": weights[:3]}, {"n": 1})
    weights.add_(1.0)  # the next round trains in place while the part is written
    (part,) = saver.collect()
    tensors, data = checkpoint.read_rank_state(tmp_path, 1, 1, part["files"])
    assert float(tensors["w"].abs().max()) == 0.0 and data == {"n": 1}
    assert tensors["view"].untyped_storage().data_ptr() == tensors["w"].untyped_storage().data_ptr()
    assert part["staged_bytes"] == 32_000_000 and saver.pending is None
    # The next cut is copied into the same memory (written and let go), and holds its own state
    reused = saver.writer.spare[0].data_ptr()
    saver.save(4, {"w": weights, "view": weights[:3]}, {"n": 4})
    weights.add_(1.0)
    (part,) = saver.collect()
    tensors, _ = checkpoint.read_rank_state(tmp_path, 4, 1, part["files"])
    assert float(tensors["w"].min()) == float(tensors["w"].max()) == 1.0
    assert saver.writer.spare[0].data_ptr() == reused
    # A round directory that is a link: the thread's error is raised where the rank collects
    (tmp_path / "elsewhere").mkdir()
    (tmp_path / "checkpoints" / "round_2").symlink_to(tmp_path / "elsewhere")
    saver.save(2, {"w": weights}, {"n": 2})
    with pytest.raises(UnsafePathError, match="round_2 is a link"):
        saver.collect()
    assert list((tmp_path / "elsewhere").iterdir()) == []
    # Anything else the thread raises (here torch.save refusing an object) surfaces the same way
    saver.save(3, {"w": weights, "not a tensor": lambda: None}, {"n": 3})
    with pytest.raises(Exception, match="pickle"):
        saver.collect()
    assert saver.pending is None and temporary_files(tmp_path) == []
    saver.close()


def test_old_cuts_are_deleted_in_the_writers_thread_after_the_new_part_is_on_disk(tmp_path):
    """A client's pruning runs as the `after` of its next part (off the reply's path): in the
    writer's thread, once that part's files are written; a part written at once runs it in place."""
    import threading

    import torch

    from flamby_mpi.checkpoints import checkpoint, staging

    saver = staging.PartSaver(tmp_path, 1, staging_mb=1024)
    saver.save(1, {"w": torch.ones(10)}, {"n": 1})
    saver.collect()
    seen = {}

    def prune():
        seen["thread"] = threading.current_thread()
        seen["new part on disk"] = all((tmp_path / "checkpoints" / "round_2" / name).is_file()
                                       for name in checkpoint.rank_file_names(1))
        checkpoint.remove_rank_files(tmp_path, 1, 1)

    saver.save(2, {"w": torch.ones(10)}, {"n": 2}, after=prune)
    (part,) = saver.collect()
    assert part["round"] == 2 and seen["new part on disk"]
    writer = seen["thread"]
    assert writer.name == "checkpoint-writer-1" and writer is not threading.current_thread()
    assert not (tmp_path / "checkpoints" / "round_1").exists()
    saver.save(3, {"w": torch.ones(10)}, {"n": 3}, synchronous=True,
               after=lambda: seen.update(thread=threading.current_thread()))
    assert seen["thread"] is threading.current_thread()
    saver.close()
    assert not writer.is_alive()
