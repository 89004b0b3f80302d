"""Unit tests of the rendezvous files: freshness on the reader's clock, bounded reads of what is
planted there, the publishing lock, the gave-up file. Real files; the clock is faked where time matters."""
import json
import os
import socket
import threading
import time

import pytest

from flamby_mpi.exit.errors import UserError
from flamby_mpi.launch import rendezvous
from flamby_mpi.launch.rendezvous import STALE_AFTER_S, Freshness, RendezvousFiles

SECRET, PORT = "s" * 32, "tag#0$port#1234$"


class Clock:
    def __init__(self):
        self.now = 500.0

    def __call__(self):
        return self.now


def _info(beat, host="elsewhere", pid=1, run_id="r1"):
    return {"run_id": run_id, "port": PORT, "host": host, "pid": pid, "beat": beat}


def test_a_publication_is_live_once_its_counter_changes_and_stale_once_it_stops():
    clock = Clock()
    seen = Freshness(clock)
    seen.see(_info(3))
    assert not seen.live() and not seen.stale()  # one look says nothing either way
    clock.now += 1
    seen.see(_info(4))
    assert seen.live()
    clock.now += STALE_AFTER_S - 0.5
    seen.see(_info(4))
    assert seen.live() and not seen.stale()
    clock.now += 1
    seen.see(_info(4))
    assert not seen.live() and seen.stale()


def test_a_counter_that_never_changes_is_never_live_whatever_it_claims():
    clock = Clock()
    seen = Freshness(clock)
    claim = time.time() + 3600
    for _ in range(30):
        seen.see(dict(_info(10 ** 9), heartbeat=claim))  # a wall-clock claim counts for nothing
        clock.now += 1
        assert not seen.live()
    assert seen.stale()


def test_a_file_that_appears_or_vanishes_is_no_heartbeat():
    clock = Clock()
    seen = Freshness(clock)
    seen.see(None)
    seen.see(_info(1))
    assert not seen.live()
    clock.now += 1
    seen.see(None)
    seen.see(_info(1))
    assert not seen.live()


def _beating(files, stop):
    count = 0
    while True:
        rendezvous.write_private(files.info, json.dumps(_info(count, host=socket.gethostname(), pid=os.getpid())))
        count += 1
        if stop.wait(0.2):
            return


def test_a_live_server_is_refused_whatever_this_process_wall_clock_says(tmp_path, monkeypatch):
    files = RendezvousFiles(tmp_path, "r1")
    files.secret.write_text("the live server's secret")
    stop = threading.Event()
    thread = threading.Thread(target=_beating, args=(files, stop), daemon=True)
    thread.start()
    while not files.info.exists():
        time.sleep(0.01)
    try:
        real = time.time
        monkeypatch.setattr(time, "time", lambda: real() + 3600)  # this "host" is an hour ahead
        with pytest.raises(UserError, match="already running") as info:
            rendezvous.publish(files, "port-2", None, print)
        assert f"pid {os.getpid()} on {socket.gethostname()}" in str(info.value)
        assert files.secret.read_text() == "the live server's secret"
        assert not files.lock.exists()
    finally:
        stop.set()
        thread.join()


def test_a_publication_of_a_process_gone_from_this_host_is_replaced_at_once(tmp_path):
    import subprocess

    dead = subprocess.Popen(["true"])
    dead.wait()
    files = RendezvousFiles(tmp_path, "r1")
    files.info.write_text(json.dumps(_info(5, host=socket.gethostname(), pid=dead.pid)))
    files.secret.write_text("old")
    start = time.monotonic()
    publication = rendezvous.publish(files, "port-2", None, print)
    try:
        assert time.monotonic() - start < STALE_AFTER_S / 2
        assert files.read_info()["port"] == "port-2" and files.secret.read_text().strip() == publication.secret
    finally:
        publication.close()
    assert sorted(os.listdir(tmp_path)) == []


@pytest.mark.parametrize("kind", ["directory", "fifo", "symlink to /dev/zero", "dangling symlink"])
def test_something_planted_where_the_server_publishes_is_named_without_hanging(tmp_path, kind):
    files = RendezvousFiles(tmp_path, "r1")
    if kind == "directory":
        files.info.mkdir()
    elif kind == "fifo":
        os.mkfifo(files.info)
    elif kind == "symlink to /dev/zero":
        files.info.symlink_to("/dev/zero")
    else:
        files.info.symlink_to(tmp_path / "nowhere")
    start = time.monotonic()
    for attempt in (files.look, lambda: rendezvous.publish(files, "p", None, print),
                    lambda: rendezvous.wait_for_server(files, time.monotonic() + 5)):
        with pytest.raises(UserError, match=r"r1\.json is a (directory|FIFO|symbolic link), not a file flamby-mpi"):
            attempt()
    assert time.monotonic() - start < 20  # never a wait for a server: milliseconds, generous under load
    assert not files.secret.exists() and not files.lock.exists()
    assert files.read_info() is None  # the lenient reader, used by liveness: nothing, no exception


@pytest.mark.parametrize("kind", ["directory", "fifo", "symlink"])
def test_a_turn_entry_that_is_no_file_ends_the_client_at_once(tmp_path, kind):
    files = RendezvousFiles(tmp_path, "r1")
    target = tmp_path / "target"
    target.write_text("keep")
    {"directory": files.turn.mkdir, "fifo": lambda: os.mkfifo(files.turn),
     "symlink": lambda: files.turn.symlink_to(target)}[kind]()
    start = time.monotonic()
    with pytest.raises(rendezvous.GaveUp, match=r"r1\.connecting is a (directory|FIFO|symbolic link)"):
        with rendezvous.connect_turn(files, SECRET, PORT, time.monotonic() + 30):
            pass
    assert time.monotonic() - start < 2 and target.read_text() == "keep"
    assert sorted(os.listdir(tmp_path)) == sorted(["target", files.turn.name])  # no temporary file left


def test_the_gave_up_file_counts_only_under_this_run_secret_and_port(tmp_path):
    files = RendezvousFiles(tmp_path, "r1")
    rendezvous.leave_gave_up(files, SECRET, PORT, 2, "something is wrong\nHINT: do this")
    said = rendezvous.read_gave_up(files, SECRET, PORT)
    assert said.startswith("rank 2 (host ") and said.endswith("gave up joining: something is wrong")
    assert rendezvous.read_gave_up(files, "t" * 32, PORT) is None  # another secret
    assert rendezvous.read_gave_up(files, SECRET, "another-port") is None  # an earlier run's file
    document = json.loads(files.gave_up.read_text())
    document["rank"] = 3
    files.gave_up.write_text(json.dumps(document))
    assert rendezvous.read_gave_up(files, SECRET, PORT) is None  # altered


def test_the_publishing_lock_admits_one_holder_and_leaves_no_file(tmp_path):
    files = RendezvousFiles(tmp_path, "r1")
    with rendezvous.publishing_lock(files):
        start = time.monotonic()
        with pytest.raises(UserError, match="has been publishing for 0.5 s"):
            with rendezvous.publishing_lock(files, wait_s=0.5):
                pass
        assert time.monotonic() - start < 3
    assert not files.lock.exists()
    os.mkfifo(files.lock)
    with pytest.raises(UserError, match=r"r1\.lock is a FIFO"):
        with rendezvous.publishing_lock(files):
            pass


def test_a_server_whose_secret_file_is_removed_says_so_and_keeps_no_foreign_file(tmp_path):
    files = RendezvousFiles(tmp_path, "r1")
    publication = rendezvous.publish(files, "port-1", None, print)
    try:
        files.secret.unlink()
        files.secret.write_text("someone else's")
        end = time.monotonic() + 30  # the heartbeat thread checks every second; generous on a loaded machine
        while publication.displaced is None and time.monotonic() < end:
            time.sleep(0.05)
        assert publication.displaced and "r1.secret was replaced by another process" in publication.displaced
    finally:
        publication.close()
    assert files.secret.read_text() == "someone else's"  # not ours any more: left alone
    assert not files.info.exists()
