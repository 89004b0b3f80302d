"""A deadline on every wait inside FedML's message loop.

FedML's MPI manager has no timeouts: a rank whose receive thread dies, or that
never hears from its peers again, waits forever. The watchdog ends the job
instead: when no message has arrived for `timeout_s` (comm_args.round_timeout_s),
or when the thread that receives messages has died, it calls `on_expire` with
the reason (which aborts the MPI job).
"""
from __future__ import annotations

import threading
import time
from typing import Callable, Optional

from ..exit.fast_exit import end_thread


class Watchdog:
    def __init__(self, timeout_s: float, on_expire: Callable[[str], None], poll_s: float = 0.5):
        self.timeout_s = timeout_s
        self._on_expire = on_expire
        self._poll_s = poll_s
        self._last_kick = time.monotonic()
        self._watched: Optional[threading.Thread] = None
        self._stopped = threading.Event()
        self._thread = threading.Thread(target=self._run, name="flamby-mpi-watchdog", daemon=True)

    def start(self) -> "Watchdog":
        self._thread.start()
        return self

    def kick(self):
        self._last_kick = time.monotonic()

    def watch(self, thread: Optional[threading.Thread]):
        """Also expire as soon as `thread` (FedML's receive thread) dies."""
        self._watched = thread
        self.kick()

    def stop(self):
        """No more expiry; the thread has ended when this returns (unless called from it). A thread
        still alive when the rank exits makes fast_exit end it with os._exit, past MPICH's PMI
        finalize: mpiexec then SIGKILLs the other ranks and returns 9 (seen after a refused start,
        every rank exiting 2)."""
        self._stopped.set()
        end_thread(self._thread, timeout=10)  # an expiry already under way ends the job meanwhile

    def _run(self):
        while not self._stopped.wait(self._poll_s):
            watched = self._watched
            if watched is not None and not watched.is_alive() and not self._stopped.is_set():
                self._expire("the MPI receive thread died (see the error above)")
                return
            idle = time.monotonic() - self._last_kick
            if idle > self.timeout_s:
                self._expire(f"no message for {idle:.0f} s (comm_args.round_timeout_s = {self.timeout_s:g})")
                return

    def _expire(self, reason: str):
        if not self._stopped.is_set():
            self._on_expire(reason)
