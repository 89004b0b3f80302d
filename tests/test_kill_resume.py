"""Killed, interrupted, then resumed with real processes: the issue's acceptance runs.

- mpirun, FedAdam: SIGKILL of client rank 2 after round 3 ends the job within 30 s; the same
  command with --resume ends with the uninterrupted run's global_model.pt, bit for bit;
- mpirun, Scaffold: the same with the server (rank 0) killed after round 5;
- Ctrl-C on mpirun (SIGINT to mpiexec): a checkpoint, the resume command, exit 130; resume works;
- one terminal per rank: a client killed after round 3, every other process ends within 30 s
  (launch/liveness.py); the five commands again with --resume finish with the same model.
The uninterrupted reference is the in-process twin, bitwise equal to MPI (test_strategies_mpi.py).
"""
import hashlib
import os
import signal
import subprocess
import sys
import time

import pytest

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
from support.separate import SeparateRanks

pytestmark = [pytest.mark.mpi, pytest.mark.timeout(900)]

RUN = ["--set", "train_args.comm_round=12", "--set", "train_args.num_updates=40",
       "--set", "validation_args.frequency_of_the_test=4", "--set", "tracking_args.tensorboard=false",
       "--set", "common_args.random_seed=3"]
STRATEGY = {"FedAdam": ["--set", "train_args.federated_optimizer=FedAdam",
                        "--set", "train_args.server_learning_rate=0.05"],
            "Scaffold": ["--set", "train_args.federated_optimizer=Scaffold"],
            "FedAvg": []}
ENDS_WITHIN_S = 30
START_DEADLINE_S = 400  # start-up of 5 ranks on a loaded 2-core machine, then 12 short rounds


def _sha(path):
    return hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    """reference(strategy): global_model.pt's sha256 of the uninterrupted run, in process; each
    strategy's run once per module (two tests resume FedAdam)."""
    root = tmp_path_factory.mktemp("references")
    (root / "home").mkdir()
    done = {}

    def sha(strategy):
        if strategy not in done:
            out = root / f"reference-{strategy}"
            job = run_job([sys.executable, str(LAUNCHER), "--cf", str(DEFAULT_CONFIG), *RUN, *STRATEGY[strategy],
                           "--run_id", f"reference-{strategy}", "--set", f"common_args.output_dir={out}",
                           "--set", "comm_args.backend=inprocess", "--quiet"], root, job_env(root / "home"),
                          START_DEADLINE_S)
            assert job.returncode == 0, job.output
            done[strategy] = _sha(out / "global_model.pt")
        return done[strategy]
    return sha


def _wait_for_checkpoint(out, round_no, alive, deadline_s=START_DEADLINE_S):
    manifest = out / "checkpoints" / f"round_{round_no}" / "manifest.json"
    end = time.monotonic() + deadline_s
    while not manifest.exists():
        assert alive(), f"the job ended before round {round_no}"
        assert time.monotonic() < end, f"no checkpoint of round {round_no} within {deadline_s} s"
        time.sleep(0.05)


def _mpirun(marker, out, strategy, extra=()):
    return [mpiexec(), "-n", "5", sys.executable, str(LAUNCHER), "--cf", str(DEFAULT_CONFIG), *RUN,
            *STRATEGY[strategy], "--run_id", marker, "--set", f"common_args.output_dir={out}", *extra]


def _interrupt_mpirun(workdir, strategy, after_round, how):
    """Starts the mpirun job, lets it reach the checkpoint of after_round, then how(job, marker);
    returns (exit code, seconds from the interruption to the end, output)."""
    cwd, home, marker = workdir
    out = cwd / "out"
    job = subprocess.Popen(_mpirun(marker, out, strategy), cwd=cwd, env=job_env(home), stdout=subprocess.PIPE,
                           stderr=subprocess.STDOUT, text=True, start_new_session=True)
    try:
        _wait_for_checkpoint(out, after_round, alive=lambda: job.poll() is None)
        at = time.monotonic()
        how(job, marker)
        output, _ = job.communicate(timeout=ENDS_WITHIN_S + 30)
        ended_in = time.monotonic() - at
        assert wait_until_gone(marker) == []
        return job.returncode, ended_in, output
    finally:
        kill_group(job)


def _resume_mpirun(workdir, strategy):
    cwd, home, marker = workdir
    job = run_job(_mpirun(marker, cwd / "out", strategy, ["--resume"]), cwd, job_env(home), START_DEADLINE_S,
                  marker=marker)
    assert job.returncode == 0, job.output
    assert "resumed from round" in job.output
    return _sha(cwd / "out" / "global_model.pt")


def _sigkill_rank(rank):
    def how(job, marker):
        pid = rank_pid(marker, rank)
        assert pid is not None, f"no process for rank {rank}"
        os.kill(pid, signal.SIGKILL)
    return how


def test_mpirun_client_killed_after_round_3_then_resumed_fedadam(workdir, reference):
    code, ended_in, output = _interrupt_mpirun(workdir, "FedAdam", 3, _sigkill_rank(2))
    assert code != 0 and ended_in < ENDS_WITHIN_S, (code, ended_in, output)
    assert _resume_mpirun(workdir, "FedAdam") == reference("FedAdam")


def test_mpirun_server_killed_after_round_5_then_resumed_scaffold(workdir, reference):
    code, ended_in, output = _interrupt_mpirun(workdir, "Scaffold", 5, _sigkill_rank(0))
    assert code != 0 and ended_in < ENDS_WITHIN_S, (code, ended_in, output)
    assert _resume_mpirun(workdir, "Scaffold") == reference("Scaffold")


def test_ctrl_c_on_mpirun_checkpoints_says_how_to_resume_and_resume_works(workdir, reference):
    _, _, marker = workdir
    code, ended_in, output = _interrupt_mpirun(workdir, "FedAvg", 2,
                                               lambda job, _: os.kill(job.pid, signal.SIGINT))
    assert code == 130, (code, output)  # 128 + SIGINT, passed on by mpiexec
    assert ended_in < ENDS_WITHIN_S
    assert "stopped by SIGINT after round" in output and f"--run_id {marker}" in output
    assert "--resume" in output and "Traceback" not in output
    assert _resume_mpirun(workdir, "FedAvg") == reference("FedAvg")


def test_separate_ranks_client_killed_then_the_five_commands_resume(workdir, reference):
    cwd, home, marker = workdir
    common = [*RUN, *STRATEGY["FedAdam"]]
    out = cwd / "runs" / marker
    first = SeparateRanks(cwd, home, DEFAULT_CONFIG, marker, common)
    try:
        for k in range(5):
            first.start(k)
        _wait_for_checkpoint(out, 3, alive=lambda: all(p.poll() is None for p in first.procs.values()))
        os.kill(rank_pid(marker, 2), signal.SIGKILL)
        killed_at = time.monotonic()
        others = [f"rank{k}" for k in range(5) if k != 2]
        codes = first.wait(ENDS_WITHIN_S + 5, names=others)
        assert time.monotonic() - killed_at < ENDS_WITHIN_S
        assert all(code != 0 for code in codes.values()), codes
        assert "lost rank 2 (" in first.log("rank0")
    finally:
        first.kill_all()
    again = SeparateRanks(cwd, home, DEFAULT_CONFIG, marker, common + ["--resume"])
    try:
        for k in range(5):
            again.start(k, name=f"again{k}")
        codes = again.wait(START_DEADLINE_S)
        assert set(codes.values()) == {0}, again.all_logs()
        assert "resumed from round" in again.log("again0")
        assert again.leftovers() == []
    finally:
        again.kill_all()
    assert _sha(out / "global_model.pt") == reference("FedAdam")
