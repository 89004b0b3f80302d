"""flamby_mpi.storage.run_directory: the lock, the state of a directory, --overwrite and --resume's clearing,
and the rule for a rank on another host than rank 0, with real files and real processes (each
pretend host a process of its own: tests/support/ownership_rank.py). The mpiexec runs are in
tests/test_run_ownership.py."""
import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from flamby_mpi import cli, driver
from flamby_mpi.config import run_id_problem
from flamby_mpi.exit.errors import UserError
from flamby_mpi.storage import run_directory
from flamby_mpi.storage.safe_files import UnsafePathError
from support.mpi import DEFAULT_CONFIG, kill_group
from support.mpi import test_env as job_env

pytestmark = pytest.mark.timeout(300)
TOKEN = "a" * 32


class Rank:
    """One rank's claim in its own process (support/ownership_rank.py), holding what it took until stop()."""

    def __init__(self, tmp_path, output_dir, rank, host, rank0_host="host-a", token=TOKEN, *flags):
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "support.ownership_rank", str(output_dir), str(rank), host, rank0_host, token,
             *flags], cwd=tmp_path, env=job_env(tmp_path), stdin=subprocess.PIPE, stdout=subprocess.PIPE,
            stderr=subprocess.PIPE, text=True, start_new_session=True)
        line = self.proc.stdout.readline()
        assert line, self.proc.communicate(timeout=30)
        self.outcome = json.loads(line)

    def stop(self) -> str:
        try:
            _, err = self.proc.communicate("", timeout=30)
            return err
        finally:
            kill_group(self.proc)


@pytest.fixture
def ranks():
    started = []
    yield started
    for rank in started:
        kill_group(rank.proc)


def _run_files(out: Path, finished=True, checkpoint=3):
    (out / "logs").mkdir(parents=True)
    (out / "logs" / "rank0.log").write_text("old log\n")
    (out / "config.yaml").write_text("common_args: {}\n")
    if checkpoint is not None:
        (out / "checkpoints" / f"round_{checkpoint}").mkdir(parents=True)
        (out / "checkpoints" / f"round_{checkpoint}" / "manifest.json").write_text("{}")
    if finished:
        for name in ("global_model.pt", "results.csv", "metrics.csv", "rounds.csv", "report.png"):
            (out / name).write_text("old")
        (out / "results.json").write_text(json.dumps({"rounds_completed": 15}))


# ---- the state of a directory ------------------------------------------------------------------

def test_the_state_of_a_directory(tmp_path):
    out = tmp_path / "out"
    assert run_directory.inspect(out).kind == "empty"  # absent
    (out / "rendezvous").mkdir(parents=True)  # the one-terminal-per-rank join made it first
    (out / "terminals").mkdir()
    (out / "rendezvous" / "r1.json").write_text("{}")
    (out / run_directory.LOCK_NAME).write_text("")
    (out / "notes.txt").write_text("the user's own")
    assert run_directory.inspect(out).kind == "empty"
    (out / ".config.yaml.0123456789abcdef.tmp").write_text("half")  # a kill during a write
    state = run_directory.inspect(out)
    assert state.kind == "interrupted" and "without a complete checkpoint" in state.what
    (out / "checkpoints" / "round_7").mkdir(parents=True)
    assert run_directory.inspect(out).newest_checkpoint is None  # no manifest: not a checkpoint
    (out / "checkpoints" / "round_7" / "manifest.json").write_text("{}")
    (out / "checkpoints" / "round_12").symlink_to(out / "checkpoints" / "round_7")  # a link is none of ours
    state = run_directory.inspect(out)
    assert (state.kind, state.newest_checkpoint, state.what) == (
        "interrupted", 7, "an interrupted run (checkpoint of round 7)")
    (out / "results.json").write_text(json.dumps({"rounds_completed": 15}))
    os.utime(out / "results.json", (0, time.mktime((2026, 12, 5, 14, 2, 0, 0, 0, -1))))
    state = run_directory.inspect(out)
    assert state.kind == "finished" and state.entries[0] == "results.json"
    assert state.what == "a finished run (results.json of 2026-12-05 14:02:00, 15 rounds)"


def test_overwrite_clears_a_runs_files_never_through_a_link_and_nothing_else(tmp_path):
    out, other = tmp_path / "out", tmp_path / "other-run"
    _run_files(out)
    _run_files(other)
    (out / "checkpoints" / "round_4").symlink_to(other / "checkpoints" / "round_3")
    (out / "tensorboard").symlink_to(other / "logs")
    (out / "rendezvous").mkdir()
    (out / "notes.txt").write_text("mine")
    before_other = {p: p.read_bytes() for p in other.rglob("*") if p.is_file()}
    run_directory.clear_run(out, run_directory.inspect(out))
    assert sorted(p.name for p in out.iterdir()) == ["notes.txt", "rendezvous"]
    assert {p: p.read_bytes() for p in other.rglob("*") if p.is_file()} == before_other


def test_a_resume_discards_the_final_outputs_results_json_first(tmp_path):
    out = tmp_path / "out"
    _run_files(out)
    assert run_directory.discard_final_outputs(out) == list(run_directory.FINAL_OUTPUTS)
    assert sorted(p.name for p in out.iterdir()) == ["checkpoints", "config.yaml", "logs"]
    assert run_directory.inspect(out).kind == "interrupted"


def _users_own_files(out):
    """A directory no run was ever in, holding files of the names a run writes (a user's project)."""
    (out / "logs").mkdir(parents=True)
    (out / "logs" / "train_2024.log").write_text("important")
    (out / "tensorboard").mkdir()
    (out / "tensorboard" / "events.out.tfevents.1").write_text("mine")
    (out / "config.yaml").write_text("mine: 1\n")
    (out / "results.csv").write_text("a,b\n")
    return {p: p.read_bytes() for p in out.rglob("*") if p.is_file()}


@pytest.mark.parametrize("resume, overwrite", [(False, False), (False, True), (True, False)])
def test_files_named_as_a_runs_in_a_directory_no_run_was_in_are_refused_and_left_as_they_were(
        tmp_path, resume, overwrite):
    """They used to be "an interrupted run" whose hint said to add --overwrite, which deleted them."""
    out = tmp_path / "project"
    before = _users_own_files(out)
    holder = run_directory.Holder("host-a", os.getpid(), time.time(), TOKEN, "r1")
    with pytest.raises(run_directory.UserError) as refused:
        run_directory._take_and_check(out, holder, resume, overwrite)
    message = str(refused.value)
    assert "holds files named as a run's files are (config.yaml, logs, results.csv, tensorboard) but no " \
           "flamby-mpi run" in message, message
    assert "add --overwrite" not in message and "it does not apply" in message, message
    assert {p: p.read_bytes() for p in out.rglob("*") if p.is_file()} == before  # no lock file left either
    assert run_directory.inspect(out).kind == "foreign"
    from flamby_mpi import restart

    assert restart.decide(out) == "afresh"  # a requeued job starts, and is refused as above


def test_a_run_that_left_its_lock_file_is_still_a_run_and_a_refused_start_keeps_the_lock_it_found(tmp_path):
    out = tmp_path / "out"
    _users_own_files(out)
    (out / run_directory.LOCK_NAME).write_text("")  # a run was here: it takes these names for its own
    holder = run_directory.Holder("host-a", os.getpid(), time.time(), TOKEN, "r1")
    with pytest.raises(run_directory.UserError, match="holds an interrupted run without a complete checkpoint"):
        run_directory._take_and_check(out, holder, False, False)
    assert (out / run_directory.LOCK_NAME).exists()
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(run_directory.UserError, match="holds no run"):
        run_directory._take_and_check(empty, holder, True, False)  # --resume where nothing is
    assert list(empty.iterdir()) == []  # the lock file this refused job made is gone


def test_a_finished_run_is_said_to_be_continuable_only_when_it_has_a_checkpoint(tmp_path):
    out = tmp_path / "out"
    _run_files(out)  # finished, with the checkpoint of round 3
    (out / run_directory.LOCK_NAME).write_text("")  # every run leaves it
    with_checkpoint = str(run_directory.refusal(out, run_directory.inspect(out)))
    assert "--overwrite" in with_checkpoint and "--resume with a larger train_args.comm_round" in with_checkpoint
    run_directory.safe_files.remove_tree(out, "checkpoints")  # a run with common_args.checkpoint_every: 0
    without = str(run_directory.refusal(out, run_directory.inspect(out)))
    assert "holds a finished run" in without and "add --overwrite" in without and "--resume" not in without, without


# ---- the lock ----------------------------------------------------------------------------------

def test_a_second_job_is_refused_naming_the_first_until_the_first_ends(tmp_path, ranks, capsys):
    out = tmp_path / "out"
    first = Rank(tmp_path, out, 0, "host-a")
    ranks.append(first)
    assert first.outcome["code"] == 0
    second = Rank(tmp_path, out, 0, "host-c", "host-c", "b" * 32)
    ranks.append(second)
    assert second.outcome["code"] == 2
    err = second.stop()
    started = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(json.loads(
        (out / run_directory.LOCK_NAME).read_text())["started"]))
    assert f"in use by another job (run r1 on host host-a, pid {first.outcome['pid']}, started {started})" in err
    assert err.count("flamby-mpi: error") == 1 and "HINT: wait for that job to end" in err
    os.kill(first.proc.pid, signal.SIGKILL)  # however it ends, the kernel releases its lock
    first.proc.wait(timeout=30)
    third = Rank(tmp_path, out, 0, "host-c", "host-c", "c" * 32)
    ranks.append(third)
    assert third.outcome["code"] == 0
    assert json.loads((out / run_directory.LOCK_NAME).read_text())["host"] == "host-c"


@pytest.mark.parametrize("plant", ["link to a file", "dangling link", "fifo", "directory"])
def test_a_planted_lock_file_is_refused_without_touching_what_it_points_to(tmp_path, plant):
    out, victim = tmp_path / "out", tmp_path / "victim"
    out.mkdir()
    victim.write_text("precious")
    lock = out / run_directory.LOCK_NAME
    if plant == "link to a file":
        lock.symlink_to(victim)
    elif plant == "dangling link":
        lock.symlink_to(tmp_path / "made-through-the-link")
    elif plant == "fifo":
        os.mkfifo(lock)
    else:
        lock.mkdir()
    with pytest.raises(UnsafePathError):
        run_directory.DirectoryLock.take(out)
    assert victim.read_text() == "precious" and not (tmp_path / "made-through-the-link").exists()


def test_an_output_directory_that_is_a_file_is_named(tmp_path):
    (tmp_path / "out").write_text("a file")
    with pytest.raises(run_directory.UserError, match="is a file"):
        run_directory.DirectoryLock.take(tmp_path / "out")
    assert (tmp_path / "out").read_text() == "a file"


def test_a_refused_run_reports_every_other_ranks_problem_once(capsys):
    class Peers:
        rank, host = 0, "host-a"

        def agree(self, value):
            return value

        def allgather(self, mine):
            return [mine, (2, "out (host b's copy) holds x", 2), (3, "out (host b's copy) holds x", 2)]

    class Plan:
        output_dir, resume, overwrite, run_id = None, False, False, "r"

    import tempfile
    with tempfile.TemporaryDirectory() as folder:
        Plan.output_dir = Path(folder)
        assert run_directory.claim(Plan, Peers()).code == 2
        run_directory.release_all()
    err = capsys.readouterr().err
    assert err.count("flamby-mpi: error on rank 2, 3: out (host b's copy) holds x") == 1


# ---- a rank on another host than rank 0 --------------------------------------------------------

def test_another_host_on_a_shared_file_system_goes_on_under_its_own_jobs_lock(tmp_path, ranks, monkeypatch):
    out = tmp_path / "shared"
    ranks.append(Rank(tmp_path, out, 0, "host-a"))
    assert ranks[0].outcome["code"] == 0
    mine = Rank(tmp_path, out, 1, "host-b")
    ranks.append(mine)
    assert mine.outcome == {**mine.outcome, "code": 0, "notes": []}
    record = json.loads((out / run_directory.LOCK_NAME).read_text())
    assert (record["host"], record["pid"]) == ("host-a", ranks[0].outcome["pid"])  # rank 0's, not rewritten


def test_another_host_refuses_a_lock_held_by_another_job(tmp_path, ranks, monkeypatch):
    out = tmp_path / "shared"
    ranks.append(Rank(tmp_path, out, 0, "host-a", "host-a", "f" * 32))  # another job's rank 0
    started = time.monotonic()
    monkeypatch.setattr(run_directory, "RECORD_WAIT_S", 0.5)
    holder = run_directory.Holder("host-b", os.getpid(), time.time(), TOKEN, "r1")
    with pytest.raises(run_directory.DirectoryBusy) as refused:
        run_directory._take_and_check(out, holder, False, False, on=" (host host-b's copy)")
    assert time.monotonic() - started < 30
    assert f"(host host-b's copy) is in use by another job (run r1 on host host-a, pid {ranks[0].outcome['pid']}" \
        in str(refused.value)
    # The same through a whole rank: exit 2.
    other = Rank(tmp_path, out, 1, "host-b")
    ranks.append(other)
    assert other.outcome["code"] == 2


def test_another_host_with_its_own_disk_takes_its_copy_and_a_rank_beside_it_follows(tmp_path, ranks):
    shared, own = tmp_path / "host-a-disk" / "out", tmp_path / "host-b-disk" / "out"
    ranks.append(Rank(tmp_path, shared, 0, "host-a"))
    first = Rank(tmp_path, own, 1, "host-b")
    ranks.append(first)
    assert first.outcome["code"] == 0
    record = json.loads((own / run_directory.LOCK_NAME).read_text())
    assert (record["host"], record["pid"], record["token"]) == ("host-b", first.outcome["pid"], TOKEN)
    beside = Rank(tmp_path, own, 2, "host-b")  # the same job's other rank on host-b
    ranks.append(beside)
    assert beside.outcome["code"] == 0
    intruder = Rank(tmp_path, own, 1, "host-b", "host-a", "d" * 32)  # another job's rank on host-b
    ranks.append(intruder)
    assert intruder.outcome["code"] == 2


def test_another_hosts_copy_holding_an_earlier_run_is_refused_or_overwritten(tmp_path, ranks):
    shared, own = tmp_path / "host-a-disk" / "out", tmp_path / "host-b-disk" / "out"
    _run_files(own, finished=False)
    ranks.append(Rank(tmp_path, shared, 0, "host-a"))
    refused = Rank(tmp_path, own, 1, "host-b")
    ranks.append(refused)
    assert refused.outcome["code"] == 2
    refused.stop()
    holder = run_directory.Holder("host-b", os.getpid(), time.time(), TOKEN, "r1")
    with pytest.raises(run_directory.UserError, match=r"\(host host-b's copy\) holds an interrupted run "
                                                      r"\(checkpoint of round 3\)"):
        run_directory._take_and_check(own, holder, False, False, on=" (host host-b's copy)")
    resumed = Rank(tmp_path, own, 1, "host-b", "host-a", "9" * 32, "--resume")  # a later job
    ranks.append(resumed)
    assert resumed.outcome["code"] == 0 and (own / "checkpoints").exists()
    resumed.stop()
    overwritten = Rank(tmp_path, own, 1, "host-b", "host-a", "e" * 32, "--overwrite")  # a later job
    ranks.append(overwritten)
    assert overwritten.outcome["code"] == 0
    assert "was deleted: an interrupted run (checkpoint of round 3)" in overwritten.outcome["notes"][0]
    assert sorted(p.name for p in own.iterdir()) == [run_directory.LOCK_NAME]


# ---- run ids and the command line --------------------------------------------------------------

def test_default_run_ids_differ_within_one_second():
    ids = [driver.new_run_id() for _ in range(200)]
    assert all(re.fullmatch(r"[0-9]{8}-[0-9]{6}-[0-9a-f]{4}", i) and run_id_problem(i) is None for i in ids)
    assert len(set(ids)) >= 195  # 65536 suffixes: a repeat among 200 is possible, rare


def test_resume_and_overwrite_exclude_each_other(capsys):
    with pytest.raises(SystemExit) as exited:
        cli.build_parser().parse_args(["--cf", "x", "--resume", "--overwrite"])
    assert exited.value.code == 2 and "not allowed with argument" in capsys.readouterr().err


def test_a_refused_resume_leaves_a_finished_runs_results(tmp_path, monkeypatch, capsys):
    """In process: results.json goes only once the resume is agreed, before training."""
    monkeypatch.chdir(tmp_path)
    out = tmp_path / "out"
    argv = ["--cf", str(DEFAULT_CONFIG), "--set", "comm_args.backend=inprocess", "--set", "train_args.comm_round=2",
            "--set", "train_args.num_updates=2", "--set", "tracking_args.tensorboard=false",
            "--set", f"common_args.output_dir={out}", "--quiet"]
    assert cli.main(argv) == 0
    results = (out / "results.json").read_bytes()
    assert cli.main(argv + ["--resume", "--set", "common_args.random_seed=9"]) == 2  # another seed: refused
    assert (out / "results.json").read_bytes() == results
    assert cli.main(argv) == 2  # the same command again: refused, naming the run
    assert "holds a finished run" in capsys.readouterr().err
    assert cli.main(argv + ["--resume", "--set", "train_args.comm_round=3"]) == 0
    assert json.loads((out / "results.json").read_text())["rounds_completed"] == 3


def test_an_output_directory_that_cannot_be_made_is_a_user_error_not_a_traceback(tmp_path):
    """The plan's checks ask access(2), which /proc (for root), an NFS root squash or an ACL can
    answer wrongly: mkdir's own failure is then said plainly (exit 2, or 74 for a storage errno)."""
    target = Path("/proc/flamby-mpi-test") if os.geteuid() == 0 else Path("/proc/1/flamby-mpi-test")
    with pytest.raises(UserError) as info:
        run_directory.DirectoryLock.take(target)
    assert str(target) in str(info.value) and info.value.exit_code in (2, 74)
