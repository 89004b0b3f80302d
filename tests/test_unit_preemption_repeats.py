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
