"""What a run writes stays inside its directory, and a full disk is a clear, resumable stop: real
`mpiexec -n 3` jobs, real files, a real tmpfs that fills (as root; skipped with the reason otherwise).

- a disk that fills mid-run (checkpoints every round): exit 74, one message naming the file and the
  full disk, no traceback and no "--- Logging error ---", no temporary file left; the disk made
  bigger, the printed --resume command ends with the uninterrupted run's global_model.pt, bitwise;
- a disk that fills while the final results are written (checkpoints off): the final table was
  printed first, with the uninterrupted run's numbers; the same clean stop;
- links planted in a run's directory after its first round (a fresh start there is refused
  anyway): a round linking to another run's round, a round linking outside, a log linking
  outside, links at every temporary name the old writers used: nothing outside the run changes,
  whatever --resume or --overwrite then does.
The model carries 200 kB of unused weights (tests/support/heavy_model_dataset.py, the synthetic
dataset's data and model otherwise) so that one checkpoint cut is about 650 kB: the tmpfs is sized
from the cut a reference run measured, so that it fills in the third round of six.
"""
import hashlib
import json
import shlex
import sys
from pathlib import Path

import pytest

from support.files import snapshot
from support.mpi import DEFAULT_CONFIG, LAUNCHER, mpiexec, run_job, run_mpi
from support.mpi import test_env as job_env
from support.tmpfs import resize, temporary_files, tmpfs

pytestmark = [pytest.mark.mpi, pytest.mark.timeout(900)]

ROUNDS = 6
HEAVY = {"HEAVY_MODEL_CENTRES": "2", "HEAVY_MODEL_BYTES": "200000"}
ARGS = ["--cf", str(DEFAULT_CONFIG), "--set", "data_args.dataset=support.heavy_model_dataset",
        "--set", f"train_args.comm_round={ROUNDS}", "--set", "train_args.num_updates=3",
        "--set", "validation_args.frequency_of_the_test=3", "--set", "common_args.random_seed=4"]
DEADLINE_S = 300
PAGE = 4096


def _sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _errors(job) -> list:
    return [line for line in job.stderr.splitlines() if line.startswith("flamby-mpi: error")]


def _clean(job):
    assert "Traceback" not in job.output and "--- Logging error ---" not in job.output, job.output


def _mpirun(workdir, out, extra=(), **kwargs):
    cwd, home, marker = workdir
    return run_mpi(3, [*ARGS, "--run_id", marker, "--set", f"common_args.output_dir={out}", *extra], cwd, home,
                   deadline_s=DEADLINE_S, env_extra=HEAVY, marker=marker, **kwargs)


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    """The uninterrupted run (in process: bitwise the MPI run, test_strategies_mpi.py), finished."""
    root = tmp_path_factory.mktemp("reference")
    (root / "home").mkdir()
    out = root / "reference"
    job = run_job([sys.executable, str(LAUNCHER), *ARGS, "--run_id", "reference", "--set",
                   f"common_args.output_dir={out}", "--set", "comm_args.backend=inprocess", "--quiet"],
                  root, job_env(root / "home", HEAVY), DEADLINE_S)
    assert job.returncode == 0, job.output
    return out


def _cut_kib(round_dir: Path):
    """What one checkpoint cut and its biggest file take on a tmpfs, in KiB (files in whole pages)."""
    sizes = [-(-p.stat().st_size // PAGE) * PAGE // 1024 for p in round_dir.iterdir()]
    return sum(sizes), max(sizes)


def _printed_resume_command(stderr: str) -> list:
    """The command the message says continues the run, made runnable here (this Python, this
    mpiexec). It names the launcher by the path the job was started with."""
    said = stderr.split("continue the run from its last checkpoint: ", 1)[1].splitlines()[0]
    command = shlex.split(said)
    assert command[:4] == ["mpirun", "-np", "3", "python"] and command[4] == str(LAUNCHER), said
    return [mpiexec(), "-n", "3", sys.executable, str(LAUNCHER), *command[5:]]


# ---- a full disk -------------------------------------------------------------------------------

def test_a_disk_that_fills_mid_run_stops_cleanly_and_resume_gives_the_uninterrupted_model(workdir, reference):
    cwd, home, marker = workdir
    cut, biggest = _cut_kib(reference / "checkpoints" / f"round_{ROUNDS}")
    # Two cuts fit, and config.yaml, logs and TensorBoard in 64 KiB; in round 3 a client writes its
    # part of the third cut before it prunes its part of the first: half a file more does not fit.
    with tmpfs(cwd / "disk", 2 * cut + 64 + biggest // 2) as disk:
        out = disk / "run"
        job = _mpirun(workdir, out)
        assert job.returncode == 74, job.output
        _clean(job)
        errors = _errors(job)
        assert len(errors) == 1, job.stderr
        assert "no space left on the device (errno ENOSPC)" in errors[0] and f"{out}/checkpoints/round_" in errors[0]
        assert "free space" in job.stderr
        assert temporary_files(out) == []  # the partial file was removed: no space kept taken
        assert not (out / "results.json").exists() and not (out / "global_model.pt").exists()
        complete = sorted(p.parent.name for p in (out / "checkpoints").glob("round_*/manifest.json"))
        assert complete and f"round_{ROUNDS}" not in complete, complete  # stopped mid-run, a cut kept

        resize(disk, 64 * 1024)
        resumed = run_job(_printed_resume_command(job.stderr), cwd, job_env(home, HEAVY), DEADLINE_S, marker=marker)
        assert resumed.returncode == 0, resumed.output
        assert "resumed from round" in resumed.output
        assert _sha(out / "global_model.pt") == _sha(reference / "global_model.pt")
        assert (out / "metrics.csv").read_text() == (reference / "metrics.csv").read_text()
        # The log of the attempt that stopped is kept: --resume appends to it.
        log = (out / "logs" / "rank0.log").read_text()
        assert log.count(f"run {marker}:") == 2 and "resumed from round" in log
        assert temporary_files(out) == []


def test_a_disk_that_fills_while_the_results_are_written_loses_no_number(workdir, reference):
    cwd, _, _ = workdir
    expected = json.loads((reference / "results.json").read_text())["metrics"]
    # Enough for config.yaml and the logs, not for global_model.pt (200 kB); no checkpoint on the way.
    with tmpfs(cwd / "disk", 160) as disk:
        out = disk / "run"
        job = _mpirun(workdir, out, ["--set", "common_args.checkpoint_every=0",
                                     "--set", "tracking_args.tensorboard=false"])
        assert job.returncode == 74, job.output
        _clean(job)
        assert "final metrics" in job.stdout
        for name, value in expected.items():  # the table on stdout holds every number of the run
            assert f"{name}  " in job.stdout and f"{value:.4f}" in job.stdout, (name, value, job.stdout)
        errors = _errors(job)
        assert len(errors) == 1, job.stderr
        assert f"writing {out / 'global_model.pt'} failed: no space left on the device" in errors[0]
        assert "checkpoints are off" in job.stderr
        assert temporary_files(out) == [] and not (out / "results.json").exists()


# ---- planted links -----------------------------------------------------------------------------

def _first_round(workdir, out):
    """A run of one round, finished: its directory holds round_1's cut. Links are planted after it,
    as a neighbour would in a directory the run owns: a fresh start there is refused anyway
    (tests/test_run_ownership.py), so they meet the writers on --resume."""
    job = _mpirun(workdir, out, ["--set", "train_args.comm_round=1"])
    assert job.returncode == 0, job.output
    assert (out / "checkpoints" / "round_1" / "manifest.json").is_file()


def test_a_round_linking_to_another_runs_round_is_never_written_read_or_pruned(workdir, reference):
    cwd, home, marker = workdir
    before = snapshot(reference)
    out = cwd / "run"
    _first_round(workdir, out)
    # round_2 is written by the resumed run; round_9 never is (6 rounds), but resume lists the rounds
    # on disk and prunes those past keep_checkpoints.
    (out / "checkpoints" / "round_2").symlink_to(reference / "checkpoints" / f"round_{ROUNDS}")
    (out / "checkpoints" / "round_9").symlink_to(reference / "checkpoints" / f"round_{ROUNDS - 1}")
    job = _mpirun(workdir, out, ["--resume"])
    assert job.returncode == 2, job.output
    _clean(job)
    errors = _errors(job)
    assert len(errors) == 1 and f"{out / 'checkpoints' / 'round_2'} is a link" in errors[0], job.stderr
    assert snapshot(reference) == before
    # The link removed, --resume continues from round 1; round_9 is not a round of this run: not
    # resumed from, not pruned through while the run keeps two cuts.
    (out / "checkpoints" / "round_2").unlink()
    resumed = _mpirun(workdir, out, ["--resume"])
    assert resumed.returncode == 0, resumed.output
    assert "resumed from round 1" in resumed.output
    assert _sha(out / "global_model.pt") == _sha(reference / "global_model.pt")
    assert snapshot(reference) == before
    assert (out / "checkpoints" / "round_9").is_symlink()


def test_a_round_linking_outside_gets_nothing_written_or_deleted_there(workdir):
    cwd, _, _ = workdir
    outside = cwd / "outside"
    outside.mkdir()
    (outside / "manifest.json").write_text('{"someone": "else"}\n')
    (outside / "rank_0.pt").write_bytes(b"not ours")
    before = snapshot(outside)
    out = cwd / "run"
    _first_round(workdir, out)
    (out / "checkpoints" / "round_2").symlink_to(outside, target_is_directory=True)
    job = _mpirun(workdir, out, ["--resume"])
    assert job.returncode == 2, job.output
    _clean(job)
    errors = _errors(job)
    assert len(errors) == 1 and f"{out / 'checkpoints' / 'round_2'} is a link" in errors[0], job.stderr
    assert "nothing was written there" in job.stderr
    assert snapshot(outside) == before


@pytest.mark.parametrize("rank", [0, 2])
def test_a_log_linking_outside_is_refused_not_followed(workdir, rank):
    cwd, _, _ = workdir
    victim = cwd / "victim.txt"
    victim.write_text("a file of the user's, not a log\n")
    out = cwd / "run"
    _first_round(workdir, out)
    log = out / "logs" / f"rank{rank}.log"
    log.unlink()
    log.symlink_to(victim)
    job = _mpirun(workdir, out, ["--resume"])
    assert job.returncode == 2, job.output
    _clean(job)
    errors = _errors(job)
    assert len(errors) == 1 and f"{log} is a link" in errors[0], job.stderr
    assert victim.read_text() == "a file of the user's, not a log\n"
    # --overwrite deletes the old run's files, the link as a link: the victim stays as it was.
    job = _mpirun(workdir, out, ["--overwrite"])
    assert job.returncode == 0, job.output
    assert victim.read_text() == "a file of the user's, not a log\n"
    assert log.is_file() and not log.is_symlink()


def _next_pids(count: int) -> range:
    try:
        last = int(Path("/proc/sys/kernel/ns_last_pid").read_text())
    except (OSError, ValueError):
        pytest.skip("no /proc/sys/kernel/ns_last_pid to guess the next process ids from")
    return range(last + 1, last + 1 + count)


def test_links_at_every_temporary_name_the_old_writers_used_change_nothing_outside(workdir, reference):
    cwd, _, _ = workdir
    outside = cwd / "outside"
    outside.mkdir()
    (outside / "victim").write_text("the user's own file\n")
    before = snapshot(outside)
    out = cwd / "run"
    _first_round(workdir, out)
    round_1 = out / "checkpoints" / "round_1"
    top = ["config.yaml", "results.json", "results.csv", "metrics.csv", "rounds.csv", "global_model.pt",
           "report.png"]
    in_round = ["manifest.json"] + [f"rank_{k}.{e}" for k in range(3) for e in ("pt", "json")]
    # The old writers named their temporary file .<name>.tmp<pid>: the ranks' pids are among the
    # next ones the kernel hands out. Half of the links point at an existing file, half nowhere.
    for pid in _next_pids(1500):
        for directory, names in ((out, top), (round_1, in_round)):
            for name in names:
                target = outside / "victim" if pid % 2 else outside / f"{name}-{pid}"
                (directory / f".{name}.tmp{pid}").symlink_to(target)
    job = _mpirun(workdir, out, ["--resume"])
    assert job.returncode == 0, job.output
    _clean(job)
    assert snapshot(outside) == before
    assert _sha(out / "global_model.pt") == _sha(reference / "global_model.pt")
    assert json.loads((out / "results.json").read_text())["rounds_completed"] == ROUNDS


# ---- the output directory removed under a running job --------------------------------------------

def _remove_when(path: Path, trigger: Path, stop):
    import shutil
    import time

    while not stop.is_set() and not trigger.exists():
        time.sleep(0.002)
    while not stop.is_set() and path.exists():  # ranks may still be writing in it: until it is gone
        shutil.rmtree(path, ignore_errors=True)
        time.sleep(0.01)


def test_an_output_directory_removed_mid_run_ends_the_job_and_is_not_made_again(workdir):
    """rm -rf of a running job's directory: the next write made it again, and the run went on
    there without its lock file, config or checkpoints (another job could take it meanwhile, a
    --resume found nothing). Now the job ends with exit 1 and one message, and the directory
    stays gone."""
    import threading

    cwd, _, _ = workdir
    out = cwd / "run"
    stop = threading.Event()
    remover = threading.Thread(target=_remove_when,
                               args=(out, out / "checkpoints" / "round_1" / "manifest.json", stop), daemon=True)
    remover.start()
    try:
        job = _mpirun(workdir, out, ["--set", "train_args.comm_round=200", "--set", "common_args.checkpoint_every=1"])
    finally:
        stop.set()
        remover.join()
    assert job.returncode == 1, job.output
    _clean(job)
    assert "was removed while" in job.stderr and "start the run again" in job.stderr, job.stderr
    assert not out.exists(), sorted(str(p) for p in out.rglob("*"))
