"""SIGTERM and SIGINT: stop at the next round boundary with a checkpoint, not in the middle.

A scheduler preempting or requeueing a job (SLURM's --signal and scancel, PBS), or Ctrl-C on
mpirun, signals the ranks (MPICH's and Open MPI's mpiexec pass SIGTERM and SIGINT on to
every rank). The handler only notes the signal; the round protocol does the rest
(flamby_mpi.federation.protocol): a client tells the server in its next reply, the server sends every
client a stop message at the next round boundary, every rank saves the cut and the job
exits with 128 + the signal number. If that takes longer than the grace time, the process
ends at once and the last complete checkpoint is what a resume starts from. A second signal
does not wait for the grace time, unless it is the same signal within a second of the first:
SLURM's scancel and scontrol requeue signal every process of the job, and the launcher
(MPICH's Hydra proxies, srun) passes the signal on as well, so every rank receives the one
request two or three times within milliseconds (measured on SLURM 22.05 with MPICH's mpiexec).
"""
from __future__ import annotations

import signal
import threading
import time
from typing import Callable, Optional

from .fast_exit import end_thread, flush_standard_streams

SIGNALS = (signal.SIGTERM, signal.SIGINT)
# The same signal again within this many seconds is the first one delivered twice, not a user
# who does not want to wait (a person pressing Ctrl-C twice takes longer).
REPEAT_WINDOW_S = 1.0


def exit_code(signum: int) -> int:
    """The shell's convention for a process ended by a signal: 143 for SIGTERM, 130 for SIGINT."""
    return 128 + signum


def signal_name(signum: int) -> str:
    try:
        return signal.Signals(signum).name
    except ValueError:
        return f"signal {signum}"


def _soon(action: Callable[[int], None], signum: int):
    """Runs action outside the signal handler: the handler may have interrupted a print or a
    log record in the main thread, and writing to the same stream from it could fail."""
    threading.Thread(target=action, args=(signum,), name="flamby-mpi-stop", daemon=True).start()


class StopRequest:
    """This process's pending stop: the first SIGTERM/SIGINT it received, if any."""

    def __init__(self):
        self.signum: Optional[int] = None
        self._received_at = 0.0
        self._timer: Optional[threading.Timer] = None
        self._previous = {}

    def install(self, grace_s: float, on_signal: Callable[[int], None],
                on_grace_expired: Callable[[int], None]) -> "StopRequest":
        """From now on SIGTERM/SIGINT ask for a stop at the next round boundary. on_signal(signum)
        says so (on the signal's own thread: keep it short); on_grace_expired(signum) runs if
        the stop has not completed grace_s later (or at a second signal), and must end the process."""
        if threading.current_thread() is not threading.main_thread():
            return self  # Python delivers signals to the main thread only; a test harness thread

        def handle(signum, _frame):
            # Read first: Python runs a handler between bytecodes of the main thread, this one's
            # included, so a repeat may interrupt the first delivery's handler; the request must
            # never be seen without the time it was received (a repeat would then count as a second
            # signal and end the process at once).
            now = time.monotonic()
            if self.signum is not None:
                if signum == self.signum and now - self._received_at < REPEAT_WINDOW_S:
                    return  # the same request passed on by another process of the launcher
                _soon(on_grace_expired, self.signum)  # a second signal: the user does not want to wait
                return
            self._received_at = now
            self.signum = signum
            _soon(on_signal, signum)
            self._timer = threading.Timer(grace_s, on_grace_expired, args=(signum,))
            self._timer.daemon = True
            self._timer.start()

        for signum in SIGNALS:
            self._previous[signum] = signal.signal(signum, handle)
        global _round_loop_seen
        _round_loop_seen = True
        return self

    def uninstall(self):
        """The run is over (finished or stopped): the default handlers and no pending timer, its
        thread ended too. A thread still alive at the exit makes fast_exit end the process with
        os._exit, which skips MPICH's C exit handlers, PMI's finalize among them; MPICH's process
        manager then takes the rank for one that died and SIGKILLs every rank still exiting (a
        stopped job's mpirun returned 9 instead of 130, about one run in twenty)."""
        if self._timer is not None:
            self._timer.cancel()
            end_thread(self._timer)  # cancelled: it ends at once
        for signum, previous in self._previous.items():
            signal.signal(signum, previous)
        self._previous = {}


# ---- outside the round loop ------------------------------------------------------------------
# From the entry point until StopRequest.install, a rank imports torch, makes its plan, joins MPI
# and loads its data: there is no cut to save yet. Left to Python's defaults, Ctrl-C there raised
# KeyboardInterrupt into torch's import (a traceback per rank, then a crash in the half-imported
# torch's teardown: mpiexec returned 11) and SIGTERM killed the process outright (mpiexec
# returned 15, not the 143 the cluster scripts and the docs expect). The handler ends the rank
# itself rather than raising: an exception raised into an import can land in one of importlib's
# callbacks, which ignores it and leaves the import lock held (a rank then spun for ever).
_round_loop_seen = False
_speaks = True  # rank 0, or a process no launcher started: says the one line
ABORT_DELAY_S = 1.0


def _end_outside_round_loop(signum, _frame):
    import os
    import sys

    code = exit_code(signum)
    if _speaks:
        if _round_loop_seen:
            what = ("after the last round: the last complete checkpoint is kept; to finish the run, run the "
                    "same command with --resume")
        else:
            what = ("during start-up, before the first round: nothing was trained. To start again, run the "
                    "same command (with --overwrite if it says the output directory holds an interrupted run)")
        os.write(2, f"flamby-mpi: {signal_name(signum)} {what}\n".encode())
    flush_standard_streams()
    mpi = sys.modules.get("mpi4py.MPI")
    if mpi is not None and mpi.Is_initialized() and not mpi.Is_finalized():
        if mpi.COMM_WORLD.Get_rank() != 0:
            time.sleep(ABORT_DELAY_S)  # rank 0, signalled too, aborts first with its line said
        mpi.COMM_WORLD.Abort(code)  # mpiexec returns code, and ends every rank
    os._exit(code)  # no interpreter teardown: a half-imported torch may crash in it


def stop_outside_round_loop(speaks: bool):
    """SIGTERM and SIGINT end the rank at once with 128 + the signal until StopRequest.install
    takes them over (and again after its uninstall, which puts this handler back). speaks: this
    rank says the one line (rank 0, or a process no launcher started)."""
    global _speaks
    _speaks = speaks
    for signum in SIGNALS:
        signal.signal(signum, _end_outside_round_loop)
