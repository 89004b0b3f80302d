"""One process per terminal: ranks started separately (no mpirun) meet through the rendezvous."""
import hashlib
import json
import os
import signal
import sys

import pytest

from support.mpi import DEFAULT_CONFIG, run_mpi
from support.separate import SeparateRanks

pytestmark = pytest.mark.mpi

FAST = ["--set", "train_args.comm_round=3", "--set", "train_args.num_updates=10"]
# What a client prints when it starts looking for the server, and a server once it has published.
LOOKING = "looking for the server in"
WAITING = "clients (rendezvous"


@pytest.fixture
def ranks(workdir):
    cwd, home, marker = workdir
    started = []

    def make(run_id=marker, common=FAST, env=None):
        r = SeparateRanks(cwd, home, DEFAULT_CONFIG, run_id, common, env)
        started.append(r)
        return r

    yield make
    for r in started:
        r.kill_all()


def _sha(path):
    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_clients_first_server_last_matches_mpirun_bitwise(workdir, ranks):
    """Also: Ctrl-C in the terminal of a client still waiting for the server ends that client alone
    (130, one line, no traceback), and the same command started again joins the run."""
    cwd, home, marker = workdir
    r = ranks()
    for k in (3, 1, 4, 2):
        r.start(k)
    for k in (3, 1, 4, 2):  # every client is waiting before the server starts
        r.wait_for_line(f"rank{k}", LOOKING)
    os.killpg(r.procs["rank2"].pid, signal.SIGINT)  # a terminal's Ctrl-C: the whole foreground group
    assert r.wait(30, names=["rank2"]) == {"rank2": 130}, r.all_logs()
    assert "SIGINT during start-up, before the first round" in r.log("rank2"), r.log("rank2")
    assert "Traceback" not in r.log("rank2"), r.log("rank2")
    r.start(2, name="rank2-again")
    r.wait_for_line("rank2-again", LOOKING)
    r.start(0)
    codes = r.wait(150)
    assert codes == {**{f"rank{k}": 0 for k in (3, 1, 4, 0)}, "rank2": 130, "rank2-again": 0}, r.all_logs()
    out = cwd / "runs" / marker
    results = json.loads((out / "results.json").read_text())
    assert results["rounds_completed"] == 3 and results["world_size"] == 5
    assert "rank 4 joined" in r.log("rank0") and "all 4 clients joined" in r.log("rank0")
    assert "joined run" in r.log("rank2-again")
    # The rendezvous files are gone after a clean run.
    assert list((out / "rendezvous").iterdir()) == []
    assert r.leftovers() == []

    # The same config and seed under mpirun gives the identical final model.
    mpi_out = cwd / "mpirun-out"
    job = run_mpi(5, ["--cf", str(DEFAULT_CONFIG), "--run_id", marker + "m",
                      "--set", f"common_args.output_dir={mpi_out}", *FAST], cwd, home, 120)
    assert job.returncode == 0, job.output
    assert _sha(out / "global_model.pt") == _sha(mpi_out / "global_model.pt")


def test_server_first_and_two_runs_share_a_rendezvous_directory(workdir, ranks):
    cwd, home, marker = workdir
    shared = ["--set", f"comm_args.rendezvous_dir={cwd / 'rdv'}"]
    a = ranks(run_id=marker + "a", common=FAST + shared)
    b = ranks(run_id=marker + "b", common=FAST + shared + ["--set", "common_args.random_seed=3"])
    a.start(0)
    b.start(0)
    a.wait_for_line("rank0", WAITING)  # both servers have published and wait for their clients
    b.wait_for_line("rank0", WAITING)
    for k in (1, 2, 3, 4):
        a.start(k)
        b.start(k)
    assert a.wait(200) == {f"rank{k}": 0 for k in range(5)}, a.all_logs()
    assert b.wait(60) == {f"rank{k}": 0 for k in range(5)}, b.all_logs()
    ra = json.loads((cwd / "runs" / (marker + "a") / "results.json").read_text())
    rb = json.loads((cwd / "runs" / (marker + "b") / "results.json").read_text())
    assert (ra["seed"], rb["seed"]) == (0, 3)
    assert ra["metrics"] != rb["metrics"]
    assert list((cwd / "rdv").iterdir()) == []


def test_missing_client_times_out_naming_it(workdir, ranks):
    r = ranks(common=FAST + ["--set", "comm_args.join_timeout_s=8"])
    r.start(0)
    for k in (1, 2, 4):
        r.start(k)
    codes = r.wait(90)
    assert codes["rank0"] != 0
    assert "rank(s) 3 did not join within comm_args.join_timeout_s = 8 s" in r.log("rank0")
    # The clients that did join end too, instead of waiting forever.
    assert all(codes[f"rank{k}"] != 0 for k in (1, 2, 4)), codes
    assert r.leftovers() == []


def test_client_without_server_times_out_naming_run_and_place(workdir, ranks):
    cwd, home, marker = workdir
    r = ranks(common=FAST + ["--set", "comm_args.join_timeout_s=3"])
    r.start(2)
    codes = r.wait(60)
    assert codes["rank2"] == 2
    log = r.log("rank2")
    assert f"no server for run_id '{marker}' appeared" in log
    assert str(cwd / "runs" / marker / "rendezvous" / f"{marker}.json") in log or \
        f"runs/{marker}/rendezvous/{marker}.json" in log


def test_duplicate_rank_and_second_server_are_refused(workdir, ranks):
    r = ranks(common=FAST + ["--set", "comm_args.join_timeout_s=40"])
    r.start(0)
    r.start(2)
    r.wait_for_line("rank0", "rank 2 joined")  # the duplicates come after the real rank 2 is in
    r.start(2, name="rank2-again")
    r.start(0, name="server-again")
    codes = r.wait(60, names=["rank2-again", "server-again"])
    assert codes == {"rank2-again": 2, "server-again": 2}
    assert "the server refused rank 2: rank 2 has already joined" in r.log("rank2-again")
    assert "a server for run_id" in r.log("server-again") and "already running" in r.log("server-again")
    for k in (1, 3, 4):
        r.start(k)
    codes = r.wait(150, names=["rank0", "rank1", "rank2", "rank3", "rank4"])
    assert set(codes.values()) == {0}, r.all_logs()
    assert "refused a process" in r.log("rank0")


def test_stale_rendezvous_file_is_replaced_not_trusted(workdir, ranks):
    cwd, home, marker = workdir
    rdv = cwd / "runs" / marker / "rendezvous"
    rdv.mkdir(parents=True)
    # Left by a server on another host: no pid to look at there, so its counter must be seen unchanged
    # for the stale timeout, on the new server's own clock, before the file is replaced.
    (rdv / f"{marker}.json").write_text(json.dumps(
        {"run_id": marker, "port": "tag#0$description#nowhere$port#1$", "host": "elsewhere",
         "pid": 1, "beat": 7}))
    (rdv / f"{marker}.secret").write_text("old")
    r = ranks()
    r.start(1)
    r.wait_for_line("rank1", LOOKING)  # the client sees only the stale file and keeps waiting
    r.start(0)
    for k in (2, 3, 4):
        r.start(k)
    assert set(r.wait(150).values()) == {0}, r.all_logs()
    assert "watching its heartbeat for up to 10 s" in r.log("rank0")
    assert "replacing a stale rendezvous file" in r.log("rank0")


def test_client_failing_after_joining_ends_every_process(workdir, ranks):
    r = ranks(common=FAST + ["--set", "data_args.dataset=support.faulty_dataset"],
              env={"FAULT_CENTER": "1", "FAULT_AFTER_ITEMS": str(10 * 16 + 5)})
    for k in range(5):
        r.start(k)
    codes = r.wait(120)
    assert all(code != 0 for code in codes.values()), codes
    assert "rank 2 (client" in r.log("rank2") and "injected failure" in r.log("rank2")
    assert r.leftovers() == []


def test_a_refusal_after_the_join_is_pointed_at_on_every_client_terminal(workdir, ranks):
    """Centre 1's data missing is found after the join and said once, by rank 0 (the one console
    of mpirun). With one terminal per rank the clients showed 'joined' and exited 2 unexplained."""
    r = ranks(common=FAST + ["--set", "data_args.dataset=support.faulty_dataset"], env={"FAULT_MISSING_CENTER": "1"})
    for k in range(5):
        r.start(k)
    assert r.wait(120) == {f"rank{k}": 2 for k in range(5)}, r.all_logs()
    assert "the data of centre 1 is missing (injected)" in r.log("rank0")
    for k in range(1, 5):
        assert f"error on rank {k} (client" in r.log(f"rank{k}") and "rank 0) says why" in r.log(f"rank{k}")
        assert "Traceback" not in r.log(f"rank{k}")
    assert r.leftovers() == []


def test_a_client_with_another_config_is_told_which_keys_differ_and_its_own_log_level_may(workdir, ranks):
    """A refused client heard only 'its configuration differs'. Now the keys are named; a rank's own
    log level (and waits) may differ. The run then completes with the corrected client."""
    r = ranks(common=FAST + ["--set", "comm_args.join_timeout_s=120"])
    r.start(0)
    r.start(1, name="other-rounds", extra=["--set", "train_args.comm_round=4"])
    assert r.wait(60, names=["other-rounds"]) == {"other-rounds": 2}, r.all_logs()
    assert "configuration differs from the server's in train_args.comm_round (" in r.log("other-rounds")
    r.start(1, extra=["--set", "tracking_args.log_level=info"])
    for k in (2, 3, 4):
        r.start(k)
    assert r.wait(150, names=[f"rank{k}" for k in range(5)]) == {f"rank{k}": 0 for k in range(5)}, r.all_logs()
    assert r.leftovers() == []


def test_rank_role_mistakes_are_explained(workdir, ranks):
    r = ranks()
    r.start(0, role="client", name="bad-role")
    r.start(9, role="client", name="bad-rank")
    codes = r.wait(60)
    assert codes == {"bad-role": 2, "bad-rank": 2}
    assert "rank 0 is the server" in r.log("bad-role")
    assert "--rank 9 is out of range" in r.log("bad-rank")


def test_start_local_script_runs_every_rank_in_the_background(workdir):
    from support.mpi import REPO, run_job, test_env

    cwd, home, marker = workdir
    env = test_env(home, {"FLAMBY_MPI_NO_TMUX": "1", "FLAMBY_MPI_PYTHON": sys.executable})
    job = run_job(["bash", str(REPO / "scripts" / "start_local.sh"), str(DEFAULT_CONFIG), marker, "--", *FAST],
                  cwd, env, 180, marker=marker)
    assert job.returncode == 0, job.output
    assert "1 server + 4 clients" in job.stdout
    assert json.loads((cwd / "runs" / marker / "results.json").read_text())["rounds_completed"] == 3
    logs = sorted(p.name for p in (cwd / "runs" / marker / "terminals").iterdir())
    assert logs == [f"rank{k}.log" for k in range(5)]
    assert job.leftovers == []


def test_a_server_started_alone_says_at_once_that_its_directory_holds_a_finished_run(workdir, ranks):
    """It used to wait for every client (comm_args.join_timeout_s) before saying so."""
    cwd, home, marker = workdir
    out = cwd / "runs" / marker
    out.mkdir(parents=True)
    (out / ".flamby-mpi.lock").write_text("")
    (out / "results.json").write_text(json.dumps({"rounds_completed": 3}))
    r = ranks(common=FAST + ["--set", "comm_args.join_timeout_s=120"])
    r.start(0)
    assert r.wait(60) == {"rank0": 2}, r.all_logs()
    assert r.seconds("rank0") < 50 and "holds a finished run" in r.log("rank0"), r.all_logs()
    assert WAITING not in r.log("rank0") and "Traceback" not in r.log("rank0")
    assert not (out / "rendezvous").exists() or list((out / "rendezvous").iterdir()) == []
