"""Unit tests of flamby_mpi.transport.watchdog with short timeouts."""
import threading
import time

from flamby_mpi.transport.watchdog import Watchdog


class _Recorder:
    def __init__(self):
        self.reasons = []
        self.fired = threading.Event()

    def __call__(self, reason):
        self.reasons.append(reason)
        self.fired.set()


def test_expires_when_not_kicked():
    rec = _Recorder()
    start = time.monotonic()
    dog = Watchdog(0.3, rec, poll_s=0.05).start()
    try:
        assert rec.fired.wait(2.0)
        elapsed = time.monotonic() - start
    finally:
        dog.stop()
    assert 0.3 <= elapsed < 1.5
    assert len(rec.reasons) == 1
    assert "comm_args.round_timeout_s = 0.3" in rec.reasons[0]
    assert rec.reasons[0].startswith("no message for")
    time.sleep(0.15)
    assert len(rec.reasons) == 1  # fires once


def test_kicking_prevents_expiry():
    rec = _Recorder()
    dog = Watchdog(0.3, rec, poll_s=0.05).start()
    try:
        deadline = time.monotonic() + 0.9
        while time.monotonic() < deadline:
            dog.kick()
            time.sleep(0.05)
        assert not rec.fired.is_set()
        # Once the kicks stop, it expires.
        assert rec.fired.wait(2.0)
    finally:
        dog.stop()
    assert "round_timeout_s" in rec.reasons[0]


def test_dead_watched_thread_expires_quickly():
    rec = _Recorder()
    receiver = threading.Thread(target=lambda: None)
    receiver.start()
    receiver.join()
    dog = Watchdog(60.0, rec, poll_s=0.05)
    dog.watch(receiver)
    start = time.monotonic()
    dog.start()
    try:
        assert rec.fired.wait(1.0)
    finally:
        dog.stop()
    assert time.monotonic() - start < 0.5
    assert "receive thread died" in rec.reasons[0]


def test_live_watched_thread_does_not_expire():
    rec = _Recorder()
    release = threading.Event()
    receiver = threading.Thread(target=release.wait)
    receiver.start()
    dog = Watchdog(60.0, rec, poll_s=0.05).start()
    dog.watch(receiver)
    try:
        time.sleep(0.3)
        assert not rec.fired.is_set()
        release.set()
        assert rec.fired.wait(1.0)  # and expires once it ends
    finally:
        dog.stop()
        release.set()
    assert "receive thread died" in rec.reasons[0]


def test_stop_prevents_expiry():
    rec = _Recorder()
    dog = Watchdog(0.1, rec, poll_s=0.05).start()
    dog.stop()
    time.sleep(0.4)
    assert not rec.fired.is_set()
    dog._thread.join(1.0)
    assert not dog._thread.is_alive()


def test_its_thread_has_ended_when_stop_returns():
    # A thread alive at a rank's exit makes fast_exit skip MPICH's PMI finalize, and mpiexec then
    # SIGKILLs the other ranks (exit 9 instead of 2 after a refused start, seen in a CI-like run).
    dog = Watchdog(60, _Recorder(), poll_s=30).start()
    dog.stop()
    assert not dog._thread.is_alive()
    assert "flamby-mpi-watchdog" not in [t.name for t in threading.enumerate()]
