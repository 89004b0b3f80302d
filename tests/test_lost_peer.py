"""A rank killed with SIGKILL mid-run ends the whole job within 30 s, in every launch mode.

Under mpirun the launcher does it; with one terminal per rank every rank has its own mpiexec, and
the ranks watch each other's heartbeats (flamby_mpi/launch/liveness.py). The kills come after round
3 of a run far too long to end by itself meanwhile."""
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
    mpich_segments,
    mpiexec,
    rank_pid,
    wait_until_gone,
)
from support.mpi import test_env as job_env
from support.separate import SeparateRanks

pytestmark = pytest.mark.mpi

LONG = ["--set", "train_args.comm_round=1000", "--set", "train_args.num_updates=5",
        "--set", "validation_args.frequency_of_the_test=1000"]
ENDS_WITHIN_S = 30


def _wait_for_round(log_path, round_no: int, alive, deadline_s: float = 180):
    """Waits until rank 0's log says round `round_no` is done; fails if alive() turns false."""
    text = f"round {round_no}/"
    end = time.monotonic() + deadline_s
    while True:
        if log_path.exists() and text in log_path.read_text():
            return
        assert alive(), "the job ended before the kill"
        assert time.monotonic() < end, f"no {text!r} in {log_path} within {deadline_s:.0f} s"
        time.sleep(0.2)


def _kill(marker, rank):
    pid = rank_pid(marker, rank)
    assert pid is not None, f"no process for rank {rank}"
    os.kill(pid, signal.SIGKILL)
    return time.monotonic()


@pytest.fixture
def separate(workdir):
    cwd, home, marker = workdir
    r = SeparateRanks(cwd, home, DEFAULT_CONFIG, marker, LONG)
    yield r
    r.kill_all()


def _kill_one_of_separate_ranks(workdir, r, victim):
    cwd, home, marker = workdir
    for k in range(5):
        r.start(k)
    _wait_for_round(cwd / "runs" / marker / "logs" / "rank0.log", 3,
                    alive=lambda: all(p.poll() is None for p in r.procs.values()))
    killed_at = _kill(marker, victim)
    others = [f"rank{k}" for k in range(5) if k != victim]
    codes = r.wait(ENDS_WITHIN_S + 5, names=others)  # fails with every log if one outlives it
    ended_in = time.monotonic() - killed_at
    assert ended_in < ENDS_WITHIN_S, f"the others ended {ended_in:.1f} s after the kill"
    assert all(code != 0 for code in codes.values()), codes
    for name in others:  # each one says, in the failure template, which rank was lost
        assert f"error on rank {name[4:]} (" in r.log(name) and f"lost rank {victim} (" in r.log(name), \
            r.all_logs()
    assert r.leftovers() == []
    return r


def test_client_killed_after_round_3_ends_every_separate_process(workdir, separate):
    r = _kill_one_of_separate_ranks(workdir, separate, victim=2)
    assert "lost rank 2 (client, host" in r.log("rank0")
    assert "rank 0 reports that it stopped" in r.log("rank1")


def test_server_killed_after_round_3_ends_every_separate_client(workdir, separate):
    r = _kill_one_of_separate_ranks(workdir, separate, victim=0)
    assert "lost rank 0 (server, host" in r.log("rank3")


def test_client_killed_under_mpirun_ends_the_job(workdir):
    cwd, home, marker = workdir
    out = cwd / "out"
    cmd = [mpiexec(), "-n", "5", sys.executable, str(LAUNCHER), "--cf", str(DEFAULT_CONFIG), "--run_id", marker,
           "--set", f"common_args.output_dir={out}", *LONG]
    segments = mpich_segments()
    job = subprocess.Popen(cmd, cwd=cwd, env=job_env(home), stdout=subprocess.DEVNULL,
                           stderr=subprocess.DEVNULL, start_new_session=True)
    try:
        _wait_for_round(out / "logs" / "rank0.log", 3, alive=lambda: job.poll() is None)
        killed_at = _kill(marker, 2)
        code = job.wait(timeout=ENDS_WITHIN_S)
        assert time.monotonic() - killed_at < ENDS_WITHIN_S
        assert code != 0
        assert wait_until_gone(marker) == []
        assert mpich_segments() <= segments  # the killed job's /dev/shm segment is gone with it
    finally:
        kill_group(job)
