"""The helper scripts run on one machine, as a user types them, without MPI: scripts/start_local.sh
(its ranks replaced by a stand-in python that records them; tests/test_separate_processes.py runs
the real ones) and scripts/standin_data.py's command-line mistakes (FLamby is not needed for them).
A mistake is one line and exit 2, and leaves nothing made behind."""
import shlex
import subprocess
import sys
import types

import pytest

from support.mpi import DEFAULT_CONFIG, REPO
from support.mpi import test_env as job_env  # aliased: pytest would collect test_env
from support.scripts import load_script

START_LOCAL = REPO / "scripts" / "start_local.sh"


def _start_local(tmp_path, *args, server_exit=0, client_sleep_s=0):
    """Runs start_local.sh in tmp_path/cwd with background ranks whose python only records its
    command line (start_local.sh's own checks run the real one), the server then exiting with
    server_exit and each client sleeping client_sleep_s; (done, recorded rank commands)."""
    cwd, bin_dir, calls = tmp_path / "cwd", tmp_path / "bin", tmp_path / "ranks.txt"
    cwd.mkdir(exist_ok=True)
    bin_dir.mkdir(exist_ok=True)
    python = bin_dir / "python"
    python.write_text(f'#!/bin/bash\n[ "$1" = - ] && exec {shlex.quote(sys.executable)} "$@"\n'
                      f'echo "$*" >> {shlex.quote(str(calls))}\n'
                      f'case "$*" in *"--role server"*) exit {server_exit} ;; esac\n'
                      f'exec sleep {client_sleep_s}\n')
    python.chmod(0o755)
    env = job_env(tmp_path, {"FLAMBY_MPI_NO_TMUX": "1", "FLAMBY_MPI_PYTHON": str(python)})
    done = subprocess.run(["bash", str(START_LOCAL), *args], cwd=cwd, env=env, capture_output=True,
                          text=True, timeout=300)
    return done, calls.read_text().splitlines() if calls.exists() else []


@pytest.mark.parametrize("output_dir", [None, "elsewhere/results dir"])
def test_start_local_names_the_results_where_the_ranks_write_them(output_dir, tmp_path):
    """With common_args.output_dir it used to name runs/<RUN_ID>/results.json all the same."""
    extra = ["--", "--set", f"common_args.output_dir={output_dir}"] if output_dir else []
    done, ranks = _start_local(tmp_path, str(DEFAULT_CONFIG), "r1", *extra)
    assert done.returncode == 0, done.stdout + done.stderr
    assert len(ranks) == 5 and all("--run_id r1" in rank for rank in ranks), ranks
    results = f"{output_dir or 'runs/r1'}/results.json"
    assert done.stdout.splitlines()[-1] == f"run r1 finished: {results}", done.stdout
    # The rank logs are the run's, in its own directory: they used to go to runs/<RUN_ID> whatever
    # output_dir said.
    terminals = tmp_path / "cwd" / (output_dir or "runs/r1") / "terminals"
    assert sorted(p.name for p in terminals.iterdir()) == [f"rank{k}.log" for k in range(5)]
    assert output_dir is None or not (tmp_path / "cwd" / "runs").exists()


def _finished_run(tmp_path, run_id):
    """runs/<run_id> as a finished run leaves it, with start_local.sh's logs of that run."""
    out = tmp_path / "cwd" / "runs" / run_id
    (out / "terminals").mkdir(parents=True)
    (out / ".flamby-mpi.lock").write_text("")
    (out / "results.json").write_text('{"rounds_completed": 3}')
    for k in range(5):
        (out / "terminals" / f"rank{k}.log").write_text(f"the finished run's rank {k}\n")
    return out


def test_start_local_refuses_a_finished_run_before_starting_a_rank(tmp_path):
    """The server refused it at once, but its clients waited for it up to join_timeout_s (300 s),
    and the finished run's rank logs had been overwritten."""
    out = _finished_run(tmp_path, "r1")
    done, ranks = _start_local(tmp_path, str(DEFAULT_CONFIG), "r1")
    assert done.returncode == 2 and ranks == [], done.stdout + done.stderr
    assert done.stderr.startswith("start_local.sh: ") and "holds a finished run" in done.stderr, done.stderr
    assert "--overwrite" in done.stderr and "Traceback" not in done.stderr
    assert [(out / "terminals" / f"rank{k}.log").read_text() for k in range(5)] == [
        f"the finished run's rank {k}\n" for k in range(5)]


def test_start_local_resuming_keeps_the_earlier_sessions_logs(tmp_path):
    out = _finished_run(tmp_path, "r1")
    done, ranks = _start_local(tmp_path, str(DEFAULT_CONFIG), "r1", "--", "--resume")
    assert done.returncode == 0 and len(ranks) == 5, done.stdout + done.stderr
    for k in range(5):
        log = (out / "terminals" / f"rank{k}.log").read_text().splitlines()
        assert log[0] == f"the finished run's rank {k}" and log[1].startswith("=== start_local.sh, run r1, rank")


@pytest.mark.parametrize("flag", ["--overwrite", "--overw"])  # the ranks' parser takes the abbreviation too
def test_start_local_overwriting_starts_the_logs_afresh(flag, tmp_path):
    out = _finished_run(tmp_path, "r1")
    done, ranks = _start_local(tmp_path, str(DEFAULT_CONFIG), "r1", "--", flag)
    assert done.returncode == 0 and len(ranks) == 5, done.stdout + done.stderr
    for k in range(5):
        log = (out / "terminals" / f"rank{k}.log").read_text().splitlines()
        assert log[0].startswith(f"=== start_local.sh, run r1, rank {k} "), log


def test_start_local_stops_the_clients_once_the_server_failed(tmp_path):
    """A client waits for its server up to comm_args.join_timeout_s: a server that failed before they
    joined left them waiting that long."""
    done, ranks = _start_local(tmp_path, str(DEFAULT_CONFIG), "r1", server_exit=3, client_sleep_s=240)
    assert done.returncode == 1 and len(ranks) == 5, done.stdout + done.stderr
    assert "rank 0 failed with exit code 3" in done.stderr
    assert "the server failed; clients still running in 10 s are stopped" in done.stderr
    assert "rank 1 failed with exit code 143" in done.stderr  # SIGTERM
    assert "finished" not in done.stdout


@pytest.mark.parametrize("run_id", ["../evil", ".hidden", "a/b"])
def test_start_local_refuses_a_run_id_before_making_anything(run_id, tmp_path):
    """`../evil` used to make runs/../evil/terminals before the ranks refused the id."""
    done, ranks = _start_local(tmp_path, str(DEFAULT_CONFIG), run_id)
    assert done.returncode == 2, done.stdout + done.stderr
    assert done.stderr.splitlines() == [f"start_local.sh: RUN_ID: run id {run_id!r} cannot name files: it must "
                                        "be 1 to 200 printable characters, without '/', '\\' or '..' and not "
                                        "starting with '.' (for example heart_fedavg_1)"], done.stderr
    assert ranks == [] and list((tmp_path / "cwd").iterdir()) == [] and not (tmp_path / "evil").exists()


@pytest.mark.parametrize("args", [[], ["--help"]])
def test_start_local_usage_is_its_header_comment(args, tmp_path):
    """It used to end with the script's first command, `set -euo pipefail`."""
    done, _ = _start_local(tmp_path, *args)
    assert done.returncode == (0 if args else 2)
    lines = done.stdout.splitlines()
    assert lines[0].startswith("Start the server and N clients")
    assert "usage: scripts/start_local.sh CONFIG" in done.stdout
    assert not any("set -euo" in line or line.startswith("#") for line in lines), done.stdout


# --- scripts/standin_data.py ---------------------------------------------------------------------

STANDIN_DATA = REPO / "scripts" / "standin_data.py"


def _standin_data(tmp_path, *args):
    return subprocess.run([sys.executable, str(STANDIN_DATA), *args], cwd=tmp_path, env=job_env(tmp_path),
                          capture_output=True, text=True, timeout=120)


def _load_standin_data():
    return load_script("standin_data")


@pytest.mark.parametrize("directory, message", [
    ("a file", "standin_data.py: {} is not a directory; give a new or empty directory"),
    ("a file/data", "standin_data.py: cannot make {}: Not a directory"),
    ("/proc/standin", "standin_data.py: cannot make {}: No such file or directory"),
])
def test_standin_data_says_why_a_directory_cannot_take_it(directory, message, tmp_path):
    """Each used to end in a traceback (NotADirectoryError, FileNotFoundError)."""
    (tmp_path / "a file").write_text("mine\n")
    path = tmp_path / directory
    done = _standin_data(tmp_path, "fed_ixi", str(path))
    assert done.returncode == 2, done.stderr
    assert done.stderr.splitlines() == [message.format(path)] and done.stdout == ""
    assert (tmp_path / "a file").read_text() == "mine\n"


@pytest.mark.parametrize("value, reason", [
    ("-3", "argument --seed: -3 is outside 0 to 2**63 - 1"),
    (str(2**63), f"argument --seed: {2**63} is outside 0 to 2**63 - 1"),
    ("x", "argument --seed: invalid int value: 'x'"),
])
def test_standin_data_refuses_a_seed_numpy_would_not_take(value, reason, tmp_path):
    """--seed -3 used to fail in numpy with a traceback, after making DIR."""
    done = _standin_data(tmp_path, "fed_ixi", str(tmp_path / "data"), "--seed", value)
    assert done.returncode == 2 and "Traceback" not in done.stderr, done.stderr
    assert done.stderr.splitlines()[-1] == f"standin_data.py: error: {reason}"
    assert not (tmp_path / "data").exists()


def test_a_failed_standin_leaves_no_directory_it_made_empty(tmp_path, monkeypatch):
    """Only what the script made, and only while empty: the user's empty directory stays, and so does
    a directory the writer had begun to fill."""
    standin_data = _load_standin_data()
    written = []

    def failing(directory, seed):
        for name in written:
            (directory / name).write_text("part")
        raise SystemExit(2)  # as a writer ends when FLamby is missing

    monkeypatch.setitem(sys.modules, "standin.fed_ixi", types.SimpleNamespace(write=failing))
    for directory in (tmp_path / "new" / "deeper" / "data", tmp_path / "user's"):
        if directory.name == "user's":
            directory.mkdir()
        with pytest.raises(SystemExit):
            standin_data.main(["fed_ixi", str(directory)])
    assert sorted(p.name for p in tmp_path.iterdir()) == ["user's"]
    written.append("begun.txt")
    with pytest.raises(SystemExit):
        standin_data.main(["fed_ixi", str(tmp_path / "new" / "data")])
    assert (tmp_path / "new" / "data" / "begun.txt").exists()
