"""Disturbances of the rendezvous, each met by real separately started ranks: one named message, exit 2,
no traceback, and the server never left waiting for its join timeout for a client that gave up."""
import json
import os
import shutil
import socket
import subprocess
import sys

import pytest

from support import mpi as mpi_support
from support.mpi import DEFAULT_CONFIG, kill_group
from support.separate import SeparateRanks

pytestmark = pytest.mark.mpi

JOIN_TIMEOUT_S = 60
WAITING = "clients (rendezvous"
NOBODY = 65534
# Root without the capabilities that let it read or remove other users' files: as an ordinary user.
AS_ORDINARY_USER = ["setpriv", "--bounding-set=-dac_override,-dac_read_search,-fowner",
                    "--inh-caps=-dac_override,-dac_read_search,-fowner"]
needs_root = pytest.mark.skipif(os.geteuid() != 0 or shutil.which("setpriv") is None,
                                reason="files of another user and a process without root's file rights need "
                                       "root and setpriv")


def _ranks(workdir, rdv):
    cwd, home, marker = workdir
    return SeparateRanks(cwd, home, DEFAULT_CONFIG, marker,
                         ["--set", "data_args.synthetic_num_centers=1", "--set", "train_args.comm_round=2",
                          "--set", "train_args.num_updates=5", "--set", f"comm_args.rendezvous_dir={rdv}",
                          "--set", f"comm_args.join_timeout_s={JOIN_TIMEOUT_S}"])


def _the_message(log: str, *needles: str) -> str:
    """The one error message of a rank's output (its line and HINT line), holding every needle."""
    assert "Traceback" not in log, log
    errors = [line for line in log.splitlines() if line.startswith("flamby-mpi: error")]
    assert len(errors) == 1, log
    for needle in needles:
        assert needle in errors[0], (needle, log)
    assert "HINT: " in log.split(errors[0], 1)[1].splitlines()[1], log  # what to do, on the next line
    return errors[0]


def _dead_pid() -> int:
    proc = subprocess.Popen(["true"])
    proc.wait()
    return proc.pid


def _shared_directory(path):
    """A directory like /tmp: anyone may create files, only their owner (or the directory's) remove them."""
    path.mkdir()
    os.chown(path, NOBODY, NOBODY)
    os.chmod(path, 0o1777)
    return path


@pytest.mark.parametrize("kind", ["directory", "fifo", "symlink"])
def test_a_connecting_entry_that_is_no_file_is_named_and_the_server_stops_waiting(workdir, kind):
    cwd, home, marker = workdir
    rdv = cwd / "rdv"
    rdv.mkdir(mode=0o700)
    turn = rdv / f"{marker}.connecting"
    outside = cwd / "outside.txt"
    outside.write_text("not the run's")
    {"directory": turn.mkdir, "fifo": lambda: os.mkfifo(turn),
     "symlink": lambda: turn.symlink_to(outside)}[kind]()
    r = _ranks(workdir, rdv)
    try:
        r.start(0)
        r.wait_for_line("rank0", WAITING)
        r.start(1)
        codes = r.wait(JOIN_TIMEOUT_S)
    finally:
        r.kill_all()
    assert codes == {"rank0": 2, "rank1": 2}, r.all_logs()
    what = {"directory": "is a directory", "fifo": "is a FIFO", "symlink": "is a symbolic link"}[kind]
    _the_message(r.log("rank1"), str(turn), what, "not a file flamby-mpi writes")
    _the_message(r.log("rank0"), "rank 1 (host", "gave up joining", what)
    # The server heard of it at once, far from its join timeout.
    assert r.ended_at["rank0"] - r.ended_at["rank1"] < 10, (r.ended_at, r.all_logs())
    assert r.seconds("rank0") < JOIN_TIMEOUT_S - 15, r.all_logs()
    # Named, not touched; nothing written through the link; the run's own files removed.
    assert os.path.lexists(turn) and outside.read_text() == "not the run's"
    assert sorted(p.name for p in rdv.iterdir()) == [turn.name]


@needs_root
@pytest.mark.parametrize("left", ["json", "unreadable json", "secret"])
def test_a_stale_file_of_another_user_that_cannot_be_replaced_is_named(workdir, left):
    cwd, home, marker = workdir
    rdv = _shared_directory(cwd / "shared")
    stale = rdv / f"{marker}.{'secret' if left == 'secret' else 'json'}"
    content = json.dumps({"run_id": marker, "port": "tag#0$port#1$", "host": socket.gethostname(),
                          "pid": _dead_pid(), "beat": 3}) if left != "secret" else "0123456789abcdef" * 4
    stale.write_text(content)
    os.chown(stale, NOBODY, NOBODY)
    os.chmod(stale, 0o600 if left != "json" else 0o644)
    r = _ranks(workdir, rdv)
    try:
        r.start(0, prefix=AS_ORDINARY_USER)
        codes = r.wait(JOIN_TIMEOUT_S)
    finally:
        r.kill_all()
    assert codes == {"rank0": 2}, r.all_logs()
    what = "cannot be read" if left == "unreadable json" else \
        "is left by an earlier run and this directory does not let you remove it"
    _the_message(r.log("rank0"), str(stale), what, f"belongs to uid {NOBODY}")
    assert r.seconds("rank0") < 30, r.all_logs()
    assert stale.read_text() == content and stale.stat().st_uid == NOBODY


@needs_root
def test_a_turn_of_another_user_that_cannot_be_replaced_ends_client_and_server_at_once(workdir):
    """The server takes the unknown turn for a connecting process and waits inside MPI's Accept;
    the client that cannot remove the turn says so, and the server, told, ends from there."""
    cwd, home, marker = workdir
    rdv = _shared_directory(cwd / "shared")
    turn = rdv / f"{marker}.connecting"
    turn.write_text('{"nonce": "left by someone else"}')
    os.chown(turn, NOBODY, NOBODY)
    r = _ranks(workdir, rdv)
    try:
        r.start(0)
        r.wait_for_line("rank0", WAITING)
        r.start(1, prefix=AS_ORDINARY_USER)
        codes = r.wait(JOIN_TIMEOUT_S)
    finally:
        r.kill_all()
    assert codes == {"rank0": 2, "rank1": 2}, r.all_logs()
    _the_message(r.log("rank1"), str(turn), "does not let you remove it", f"belongs to uid {NOBODY}")
    _the_message(r.log("rank0"), "rank 1 (host", "gave up joining")
    assert r.ended_at["rank0"] - r.ended_at["rank1"] < 10, (r.ended_at, r.all_logs())
    assert r.seconds("rank0") < JOIN_TIMEOUT_S - 15, r.all_logs()
    assert turn.stat().st_uid == NOBODY


def test_the_secret_removed_while_the_server_waits_ends_the_server_at_once(workdir):
    cwd, home, marker = workdir
    rdv = cwd / "rdv"
    r = _ranks(workdir, rdv)
    try:
        r.start(0)
        r.wait_for_line("rank0", WAITING)
        (rdv / f"{marker}.secret").unlink()
        codes = r.wait(JOIN_TIMEOUT_S)
    finally:
        r.kill_all()
    assert codes == {"rank0": 2}, r.all_logs()
    _the_message(r.log("rank0"), f"{marker}.secret was removed by another process", "waited for its clients")
    assert r.seconds("rank0") < JOIN_TIMEOUT_S - 15, r.all_logs()
    assert list(rdv.iterdir()) == []


def test_a_client_whose_live_server_has_no_secret_file_any_more_says_so(workdir):
    cwd, home, marker = workdir
    rdv = cwd / "rdv"
    publisher = subprocess.Popen([sys.executable, "-m", "support.publisher", "beat-only", str(rdv), marker],
                                 cwd=cwd, env=mpi_support.test_env(home), stdout=subprocess.DEVNULL,
                                 start_new_session=True)
    r = _ranks(workdir, rdv)
    try:
        r.start(1)
        codes = r.wait(JOIN_TIMEOUT_S)
    finally:
        r.kill_all()
        kill_group(publisher)
    assert codes == {"rank1": 2}, r.all_logs()
    _the_message(r.log("rank1"), f"{marker}.secret", "disappeared while this client was joining")
    assert r.seconds("rank1") < JOIN_TIMEOUT_S - 15, r.all_logs()
