"""Python's cyclic garbage collector held off while a rank imports its libraries.

A rank's start-up imports torch and its FLamby dataset module (pandas, scikit-learn): about 290,000
objects the collector tracks, next to none of them garbage. While they are made, its full passes
walk all of them again and again (five passes of 20-120 ms each): 0.32 s of the 2.9 s of CPU a
Fed-Heart-Disease client spends in its whole run on this machine, paid by every rank at once on
the same cores (docs/performance.md).

`pause()` (the entry point, before any import) turns the collector off; `resume()` (once the
rank's plan is made, before it imports mpi4py and FedML and first waits on another process; or
before a dataset module of the user's is imported, which may make garbage of its own) moves every
object alive into the permanent generation with `gc.freeze()`, where later passes never walk
them, and turns the collector back on. Reference counting frees memory all along; only objects
in reference cycles wait for the collector, and the few of them the imports leave (about 3,500
objects for heart) stay frozen: collecting them first would cost a full pass of 0.27 s, most of
what is saved.

Only a process that paused the collector resumes it, and one whose collector was already off
(`PYTHONGC`-style embedding, or a caller's own `gc.disable()`) keeps it as it was: a test or a
library user calling `flamby_mpi.cli.main` in a long-lived process never has its objects frozen.
"""
from __future__ import annotations

import gc
from typing import Dict, Optional

_paused = False
_full_passes_while_paused: Optional[int] = None  # None: this process never paused it


def pause() -> None:
    """Turns the collector off until `resume()`, if it is on."""
    global _paused, _full_passes_while_paused
    if gc.isenabled():
        gc.disable()
        _paused = True
        _full_passes_while_paused = -_full_passes()


def resume() -> None:
    """Freezes what the imports made and turns the collector back on, if `pause()` turned it off;
    later calls do nothing."""
    global _paused, _full_passes_while_paused
    if _paused:
        _paused = False
        _full_passes_while_paused += _full_passes()
        gc.freeze()
        gc.enable()


def paused() -> bool:
    return _paused


def _full_passes() -> int:
    return gc.get_stats()[2]["collections"]


def state() -> Dict:
    """For the start-up record (FLAMBY_MPI_DEBUG_MODULES): the collector now, and the full passes
    it made while held off (none, unless something called gc.collect())."""
    return {"enabled": gc.isenabled(), "frozen": gc.get_freeze_count(),
            "full_passes_while_paused": _full_passes_while_paused}
