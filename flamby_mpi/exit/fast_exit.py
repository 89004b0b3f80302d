"""Ending a rank's process without Python's interpreter teardown.

A process that has imported torch (and FLamby's datasets, pandas, sklearn) spends a noticeable
time after its last line on freeing every module and object one by one, and C++ static
destructors (figures in docs/benchmarks/). Five ranks on two cores pay that together, after the
results are written, while the user waits for mpirun to return. Nothing is lost by skipping it:
the registered exit handlers
still run (logging's flush, multiprocessing's cleanup of DataLoader workers, anything a library
registered), MPI is finalized as mpi4py would have done, the standard streams are flushed, and
the process ends with the C library's exit(), as after a teardown (its C-level handlers run).
Only the launcher's normal return path ends this way; errors and aborts keep their own paths.
"""
from __future__ import annotations

import atexit
import os
import sys
import threading
from typing import Optional


def exit_now(code) -> None:
    """sys.exit(code), minus the interpreter's teardown."""
    code = 0 if code is None else code
    if not isinstance(code, int):  # sys.exit's other forms: print the message, exit 1
        print(code, file=sys.stderr)
        code = 1
    try:
        atexit._run_exitfuncs()  # what the interpreter would run first (logging.shutdown, ...)
        mpi = sys.modules.get("mpi4py.MPI")
        if mpi is not None and mpi.Is_initialized() and not mpi.Is_finalized():
            mpi.Finalize()
    finally:
        flush_standard_streams()
        _c_exit(code)


def flush_standard_streams() -> None:
    """sys.stdout and sys.stderr flushed, as the interpreter's teardown would (skipped here)."""
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except (OSError, ValueError, AttributeError):
            pass  # a closed or missing stream: nothing to flush


def _c_exit(code: int) -> None:
    """The C library's exit(): what ends a process after the interpreter's teardown, so the C-level
    exit handlers of the libraries loaded (MPI's among them) and the C streams' flush still run,
    as at a normal exit. os._exit only if it cannot be reached, or if another thread still runs
    (C++ static destructors must not pull state from under it). That fallback costs an MPI rank
    dearly: MPICH sends PMI's finalize from a C exit handler, and without it its process manager
    takes the rank for one that died and SIGKILLs the ranks still exiting (mpirun then returns 9).
    So every thread a rank starts ends before the rank exits (the checkpoint writers close with the
    exchanges; the stop request's grace timer, the watchdog, the liveness heartbeat and the
    rendezvous publication are waited for with `end_thread` when stopped)."""
    if threading.active_count() == 1:
        try:
            import ctypes

            ctypes.CDLL(None).exit(code)
        except (OSError, AttributeError):
            pass
    os._exit(code)


def end_thread(thread: Optional[threading.Thread], timeout: Optional[float] = None) -> None:
    """Waits for a thread already told to stop to end (see _c_exit: none may outlive its rank's
    exit). Nothing to wait for when it never started or has ended, nor when the caller is that
    thread itself (a stop from inside it); timeout: at most this long (None: until it ends)."""
    if thread is not None and thread.is_alive() and thread is not threading.current_thread():
        thread.join(timeout)
