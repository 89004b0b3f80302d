"""A run owns its output directory (flamby_mpi/storage/run_directory.py), with real mpiexec jobs:
- the exact command of a finished run, run again, exits 2 and changes no byte of the run;
- a second job on a running job's directory exits 2 naming it (host, pid, start time), and the
  first ends with its own 300 rounds;
- two runs started together without --run_id get two directories;
- --resume over a finished run, killed: no results.json is left, and restart says resume;
- --overwrite over a finished run: the old results.json is gone before training, and no file of
  the old run survives the new one.
"""
import hashlib
import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from flamby_mpi import restart
from support.mpi import (
    DEFAULT_CONFIG,
    LAUNCHER,
    kill_group,
    mpiexec,
    rank_pid,
    run_job,
    wait_until_gone,
)
from support.mpi import test_env as job_env

pytestmark = [pytest.mark.mpi, pytest.mark.timeout(600)]

SMALL = ["--set", "data_args.synthetic_num_centers=2", "--set", "data_args.synthetic_samples_per_center=40",
         "--set", "train_args.num_updates=2", "--set", "validation_args.frequency_of_the_test=1", "--quiet"]
DEADLINE_S = 240


def _command(marker, out, rounds, *extra, run_id=True):
    return [mpiexec(), "-n", "3", sys.executable, str(LAUNCHER), "--cf", str(DEFAULT_CONFIG), *SMALL,
            "--set", f"train_args.comm_round={rounds}",
            *(["--run_id", marker] if run_id else []),
            *(["--set", f"common_args.output_dir={out}"] if out is not None else []), *extra]


def _start(command, cwd, home):
    return subprocess.Popen(command, cwd=cwd, env=job_env(home), stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True, start_new_session=True)


def _tree(folder: Path):
    """Every file below folder (hidden ones, logs and the lock file included) -> its sha256."""
    return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file()}


def _wait_for(path: Path, job, deadline_s=DEADLINE_S):
    end = time.monotonic() + deadline_s
    while not path.exists():
        assert job.poll() is None, f"the job ended before {path} appeared:\n" + "".join(job.communicate())
        assert time.monotonic() < end, f"{path} did not appear within {deadline_s} s"
        time.sleep(0.02)


def _finished_run(workdir, out, rounds=2, *extra):
    cwd, home, marker = workdir
    job = run_job(_command(marker, out, rounds, *extra), cwd, job_env(home), DEADLINE_S, marker=marker)
    assert job.returncode == 0, job.output
    assert json.loads((out / "results.json").read_text())["rounds_completed"] == rounds
    return job


def _identities(folder: Path):
    """Every file below folder -> (sha256, inode, mtime in ns): a file deleted and written again,
    even with the same bytes (an empty log), is not the same file."""
    found = {}
    for name, digest in _tree(folder).items():
        info = os.stat(folder / name)
        found[name] = (digest, info.st_ino, info.st_mtime_ns)
    return found


def _decision(out: Path) -> str:
    return restart.decide(out)


def test_the_exact_command_of_a_finished_run_again_exits_2_and_changes_nothing(workdir):
    cwd, home, marker = workdir
    out = cwd / "out"
    _finished_run(workdir, out)
    before = _tree(out)
    assert ".flamby-mpi.lock" in before and "logs/rank0.log" in before and "global_model.pt" in before
    again = run_job(_command(marker, out, 2), cwd, job_env(home), DEADLINE_S, marker=marker)
    assert again.returncode == 2, again.output
    assert "holds a finished run (results.json of " in again.stderr and "2 rounds)" in again.stderr
    assert "--resume" in again.stderr and "--overwrite" in again.stderr
    assert again.stderr.count("flamby-mpi: error") == 1 and "Traceback" not in again.output
    assert _tree(out) == before  # every file byte for byte, logs and lock file included, nothing added


def test_a_second_job_on_a_running_jobs_directory_is_refused_and_the_first_finishes(workdir):
    cwd, home, marker = workdir
    out = cwd / "out"
    # 300 short rounds (about 8 s of training here): long enough for a second job to start meanwhile.
    first = _start(_command(marker, out, 300, "--set", "train_args.num_updates=10",
                            "--set", "validation_args.frequency_of_the_test=100"), cwd, home)
    try:
        _wait_for(out / "config.yaml", first)  # the first job holds the directory
        server_pid = rank_pid(marker, 0)
        assert server_pid is not None
        second_marker = marker + "b"
        second = run_job(_command(second_marker, out, 300, "--set", "common_args.random_seed=7"), cwd,
                         job_env(home), DEADLINE_S, marker=second_marker)
        assert first.poll() is None, "the first job ended before the second was refused: the test proves nothing"
        assert second.returncode == 2, second.output
        assert f"in use by another job (run {marker} on host {socket.gethostname()}, pid {server_pid}, " \
               f"started " in second.stderr, second.stderr
        assert second.stderr.count("flamby-mpi: error") == 1 and "Traceback" not in second.output
        out_text, err_text = first.communicate(timeout=DEADLINE_S)
        assert first.returncode == 0, out_text + err_text
        assert wait_until_gone(marker) == []
    finally:
        kill_group(first)
    results = json.loads((out / "results.json").read_text())
    assert results["rounds_completed"] == 300 and results["run_id"] == marker and results["seed"] == 0
    assert "random_seed: 0" in (out / "config.yaml").read_text()
    assert sorted(p.name for p in (out / "checkpoints").iterdir()) == ["round_299", "round_300"]


def test_two_runs_started_together_without_run_id_get_two_directories(workdir):
    cwd, home, marker = workdir
    jobs = [_start(_command(marker, None, 1, run_id=False), cwd, home) for _ in range(2)]
    try:
        outputs = [job.communicate(timeout=DEADLINE_S) for job in jobs]
    finally:
        for job in jobs:
            kill_group(job)
    assert [job.returncode for job in jobs] == [0, 0], outputs
    runs = sorted((cwd / "runs").iterdir())
    assert len(runs) == 2, runs
    ids = [json.loads((run / "results.json").read_text())["run_id"] for run in runs]
    assert ids == [run.name for run in runs]


def _kill_after(path: Path, job, marker):
    _wait_for(path, job)
    kill_group(job)  # SIGKILL to mpiexec and every rank at once
    job.communicate(timeout=60)
    assert wait_until_gone(marker) == []


def test_a_killed_resume_of_a_finished_run_leaves_no_results_and_restart_says_resume(workdir):
    cwd, home, marker = workdir
    out = cwd / "out"
    _finished_run(workdir, out, 2)
    assert _decision(out) == "finished"
    resumed = _start(_command(marker, out, 300, "--resume"), cwd, home)
    try:
        _kill_after(out / "checkpoints" / "round_4" / "manifest.json", resumed, marker)
    finally:
        kill_group(resumed)
    assert not (out / "results.json").exists() and not (out / "global_model.pt").exists()
    done = subprocess.run([sys.executable, "-m", "flamby_mpi.restart", "runs/x", str(DEFAULT_CONFIG),
                           "--set", f"common_args.output_dir={out}"], cwd=cwd, env=job_env(home),
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 0 and done.stdout.split() == ["resume", str(out)], done.stdout + done.stderr


def test_overwrite_deletes_the_old_run_before_training_and_leaves_nothing_of_it(workdir):
    cwd, home, marker = workdir
    out = cwd / "out"
    _finished_run(workdir, out, 3, "--set", "common_args.keep_checkpoints=1")
    old = _identities(out)
    old.pop(".flamby-mpi.lock")  # the directory's lock file stays: it is no run's
    assert "checkpoints/round_3/manifest.json" in old
    # Killed right after its first round: the old results.json was gone before training.
    killed = _start(_command(marker, out, 300, "--overwrite", "--set", "common_args.random_seed=1"), cwd, home)
    try:
        _kill_after(out / "checkpoints" / "round_1" / "manifest.json", killed, marker)
    finally:
        kill_group(killed)
    assert not (out / "results.json").exists()
    survivors = {name for name, same in _identities(out).items() if old.get(name) == same}
    assert survivors == set(), survivors
    assert _decision(out) == "resume"
    # Run to its end: the new run's files only.
    job = run_job(_command(marker, out, 2, "--overwrite", "--set", "common_args.random_seed=1"), cwd,
                  job_env(home), DEADLINE_S, marker=marker)
    assert job.returncode == 0, job.output
    assert "--overwrite: the earlier run in" in job.stdout + job.stderr
    results = json.loads((out / "results.json").read_text())
    assert results["seed"] == 1 and results["rounds_completed"] == 2
    survivors = {name for name, same in _identities(out).items() if old.get(name) == same}
    assert survivors == set(), survivors
    assert not (out / "checkpoints" / "round_3").exists()
    assert os.path.exists(out / ".flamby-mpi.lock")


def test_sigkill_is_not_needed_to_free_the_directory(workdir):
    """The lock goes with the process: after a job killed by SIGKILL, --resume takes the directory."""
    cwd, home, marker = workdir
    out = cwd / "out"
    job = _start(_command(marker, out, 300), cwd, home)
    try:
        _wait_for(out / "checkpoints" / "round_2" / "manifest.json", job)
        os.kill(rank_pid(marker, 0), signal.SIGKILL)
        job.communicate(timeout=60)
    finally:
        kill_group(job)
    assert wait_until_gone(marker) == []
    again = run_job(_command(marker, out, 300, "--resume"), cwd, job_env(home), DEADLINE_S, marker=marker)
    assert again.returncode == 0, again.output
    assert json.loads((out / "results.json").read_text())["rounds_completed"] == 300
