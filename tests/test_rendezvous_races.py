"""Publishing a server's rendezvous: atomic between servers started together, judged on the reader's
own clock (never by comparing two hosts' wall clocks). Real processes, real files."""
import hashlib
import json
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from support import mpi as mpi_support
from support.mpi import DEFAULT_CONFIG, REPO, TESTS_DIR, kill_group
from support.separate import SeparateRanks

TRIALS = 40
AT_ONCE = 5  # trials run side by side (each its own run id); each one is two contenders

SKEWED_CLOCK = TESTS_DIR / "support" / "skewed_clock"


def _sha(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()


def _race_batch(cwd: Path, home: Path, rdv: Path, first: int, count: int):
    env = mpi_support.test_env(home)
    start_at = time.time() + 2.0  # both contenders of a trial have imported everything by then
    trials = []
    for trial in range(first, first + count):
        run_id = f"race{trial}"
        stop = cwd / f"{run_id}.stop"
        procs = []
        for side in "ab":
            log = open(cwd / f"{run_id}.{side}.log", "w")
            procs.append(subprocess.Popen(
                [sys.executable, "-m", "support.publisher", "race", str(rdv), run_id, repr(start_at), str(stop)],
                cwd=cwd, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True))
        trials.append((run_id, stop, procs))
    try:
        for run_id, stop, procs in trials:
            logs = [cwd / f"{run_id}.{side}.log" for side in "ab"]
            # The loser ends by itself (it watches the winner's heartbeat change: about a second).
            end = time.monotonic() + 60
            while sum(p.poll() is not None for p in procs) < 1 and time.monotonic() < end:
                time.sleep(0.05)
            texts = [log.read_text() for log in logs]
            published = [i for i, text in enumerate(texts) if "PUBLISHED" in text]
            assert len(published) == 1, f"{run_id}: {len(published)} published:\n" + "\n---\n".join(texts)
            winner, loser = published[0], 1 - published[0]
            assert procs[loser].wait(timeout=30) == 2, texts[loser]
            # The two really called publish at the same moment (a spin until start_at in each).
            called = [float(log.read_text().split("CALLED ")[1].split()[0]) for log in logs]
            assert abs(called[0] - called[1]) < 0.25, called
            lost = logs[loser].read_text()
            pid, secret_sha = logs[winner].read_text().split("PUBLISHED ")[1].split()[:2]
            assert "already running" in lost and f"pid {pid} on {socket.gethostname()}" in lost, lost
            assert "Traceback" not in lost and lost.count("flamby-mpi: error") == 1, lost
            # The files are the winner's: its secret, its port.
            assert _sha((rdv / f"{run_id}.secret").read_text().strip()) == secret_sha
            assert json.loads((rdv / f"{run_id}.json").read_text())["pid"] == int(pid)
            stop.touch()
            assert procs[winner].wait(timeout=30) == 0, logs[winner].read_text()
            assert not any(rdv.glob(f"{run_id}.*")), sorted(p.name for p in rdv.glob(f"{run_id}.*"))
    finally:
        for _, _, procs in trials:
            for proc in procs:
                kill_group(proc)


@pytest.mark.mpi
def test_of_two_servers_started_together_exactly_one_publishes_40_times(workdir):
    cwd, home, _ = workdir
    rdv = cwd / "rdv"
    for first in range(0, TRIALS, AT_ONCE):
        _race_batch(cwd, home, rdv, first, AT_ONCE)


def test_the_skewed_clock_helper_shifts_only_the_wall_clock(workdir):
    """The mechanism the next test relies on: a process with it on PYTHONPATH is 60 s ahead."""
    cwd, home, _ = workdir
    env = mpi_support.test_env(home, {"PYTHONPATH": os.pathsep.join([str(SKEWED_CLOCK), str(REPO), str(TESTS_DIR)]),
                          "FAKE_CLOCK_SKEW_S": "60"})
    out = subprocess.run([sys.executable, "-c", "import time; print(time.time())"], env=env, cwd=cwd,
                         capture_output=True, text=True, timeout=60)
    assert abs(float(out.stdout) - time.time() - 60) < 5, out


@pytest.mark.mpi
def test_hosts_whose_clocks_are_60s_ahead_neither_see_a_live_server_as_stale_nor_replace_it(workdir):
    """A second server and a client, each with a wall clock 60 s ahead of the running server's: the
    server is refused as already running (its secret and publication untouched), the client joins
    and the run finishes. Judged by wall clocks (heartbeat time against the reader's time), both
    would have called the live server stale."""
    cwd, home, marker = workdir
    rdv = cwd / "rdv"
    skewed = {"PYTHONPATH": os.pathsep.join([str(SKEWED_CLOCK), str(REPO), str(TESTS_DIR)]),
              "FAKE_CLOCK_SKEW_S": "60"}
    r = SeparateRanks(cwd, home, DEFAULT_CONFIG, marker,
                      ["--set", "data_args.synthetic_num_centers=1", "--set", "train_args.comm_round=2",
                       "--set", "train_args.num_updates=5", "--set", f"comm_args.rendezvous_dir={rdv}",
                       "--set", "comm_args.join_timeout_s=90"])
    try:
        r.start(0)
        r.wait_for_line("rank0", "clients (rendezvous")
        secret = (rdv / f"{marker}.secret").read_bytes()
        server_pid = json.loads((rdv / f"{marker}.json").read_text())["pid"]
        r.start(0, name="skewed-server", env=skewed)
        assert r.wait(90, names=["skewed-server"]) == {"skewed-server": 2}, r.all_logs()
        refused = r.log("skewed-server")
        assert "already running" in refused and f"pid {server_pid} on" in refused, refused
        assert (rdv / f"{marker}.secret").read_bytes() == secret
        assert json.loads((rdv / f"{marker}.json").read_text())["pid"] == server_pid
        r.start(1, name="skewed-client", env=skewed)
        codes = r.wait(150, names=["rank0", "skewed-client"])
    finally:
        r.kill_all()
    assert codes == {"rank0": 0, "skewed-client": 0}, r.all_logs()
    assert json.loads((cwd / "runs" / marker / "results.json").read_text())["rounds_completed"] == 2
    assert "rank 1 joined" in r.log("rank0")
