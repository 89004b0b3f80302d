"""A stop request delivered more than once: SLURM's scancel and scontrol requeue signal every
process of the job and the launcher passes the signal on too, so each rank gets the same
SIGTERM two or three times within milliseconds (tests/test_cluster_slurm_requeue.py sees it
on a real SLURM). That must stay one request; a later or a different signal must not wait."""
import os
import signal
import time

import pytest

from flamby_mpi.exit.preemption import REPEAT_WINDOW_S, StopRequest


@pytest.fixture
def stop_request():
    seen = {"signals": [], "expired": []}
    request = StopRequest().install(60.0, seen["signals"].append, seen["expired"].append)
    yield request, seen
    request.uninstall()


def _deliver(signum):
    os.kill(os.getpid(), signum)
    time.sleep(0.05)  # Python runs the handler between bytecodes of the main thread


def test_the_same_signal_again_at_once_is_the_same_request(stop_request):
    request, seen = stop_request
    for _ in range(3):
        _deliver(signal.SIGTERM)
    assert request.signum == signal.SIGTERM
    assert seen == {"signals": [signal.SIGTERM], "expired": []}


def test_the_same_signal_after_the_window_does_not_wait(stop_request):
    request, seen = stop_request
    _deliver(signal.SIGINT)
    time.sleep(REPEAT_WINDOW_S + 0.1)
    _deliver(signal.SIGINT)
    assert seen == {"signals": [signal.SIGINT], "expired": [signal.SIGINT]}


def test_another_signal_at_once_does_not_wait(stop_request):
    request, seen = stop_request
    _deliver(signal.SIGTERM)
    _deliver(signal.SIGINT)
    assert seen == {"signals": [signal.SIGTERM], "expired": [signal.SIGTERM]}


def test_a_repeat_that_interrupts_the_first_handler_is_the_same_request(stop_request, monkeypatch):
    """The repeat lands while the first delivery's handler is still running (Python runs handlers
    between bytecodes, a handler's own included): seen on a real SLURM requeue, where it ended a
    rank at once as if it were a second signal."""
    import types

    from flamby_mpi.exit import preemption

    request, seen = stop_request
    calls = []

    def monotonic():  # the handler reads the clock: the repeat arrives right there
        calls.append(None)
        if len(calls) == 1:
            signal.raise_signal(signal.SIGTERM)
        return time.monotonic()

    monkeypatch.setattr(preemption, "time", types.SimpleNamespace(monotonic=monotonic))
    _deliver(signal.SIGTERM)
    assert len(calls) == 2  # the repeat's handler did run inside the first one's
    assert request.signum == signal.SIGTERM
    assert seen == {"signals": [signal.SIGTERM], "expired": []}


def test_uninstall_ends_the_grace_timers_thread():
    """A thread left at the exit makes fast_exit use os._exit, skipping MPICH's PMI finalize: its
    process manager then SIGKILLs the ranks still exiting (mpirun returned 9 after a clean stop)."""
    import threading

    before = set(threading.enumerate())
    request = StopRequest().install(60.0, lambda signum: None, lambda signum: None)
    _deliver(signal.SIGINT)
    assert request.signum == signal.SIGINT and len(set(threading.enumerate()) - before) >= 1  # the timer
    request.uninstall()
    assert set(threading.enumerate()) - before == set()
