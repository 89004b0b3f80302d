"""What a rank's start-up cost, counted from the moment the OS started its process.

Each process marks when its imports were done, when its data and model were loaded, and when
the first round message arrived (the server: when it sent it). The times count from the
process's start as the kernel recorded it (/proc/self/stat), so the interpreter's own start,
mpiexec's spawn and `import torch` are included: that is what a user waits for. The driver
gathers every rank's figures to rank 0 for results.json (`ranks`).

`FLAMBY_MPI_DEBUG_MODULES=DIR` makes every rank write `DIR/rank<k>.json` at the end of its run:
the modules it imported, its private memory and its garbage collector's state (tests check that
no rank imports what it does not use).
"""
from __future__ import annotations

import json
import os
import resource
import sys
import time
from pathlib import Path
from typing import Dict, List, Optional

from .. import PROCESS_START, not_run_yet

DEBUG_MODULES_ENV = "FLAMBY_MPI_DEBUG_MODULES"
MARKS = ("imports", "data", "first_message")
_marks: Dict[str, float] = {}


def _os_process_start() -> Optional[float]:
    """Epoch seconds when the kernel started this process; None where /proc does not say."""
    try:
        stat = Path("/proc/self/stat").read_text()
        # Fields after the command name, which may hold spaces and parentheses; starttime is field 22.
        start_ticks = int(stat[stat.rindex(")") + 2:].split()[19])
        since_boot = start_ticks / os.sysconf("SC_CLK_TCK")
        return time.time() - (time.clock_gettime(time.CLOCK_BOOTTIME) - since_boot)
    except (OSError, ValueError, IndexError, AttributeError):
        return None


_PROCESS_START_UNIX = _os_process_start()


def process_start() -> float:
    """Epoch seconds this process started: the OS's record, else when flamby_mpi was first imported."""
    if _PROCESS_START_UNIX is None or _PROCESS_START_UNIX > PROCESS_START:
        return PROCESS_START
    return _PROCESS_START_UNIX


def mark(name: str, at: Optional[float] = None):
    """Records the first time `name` happened in this process (later calls change nothing)."""
    if name not in MARKS:
        raise ValueError(f"unknown start-up mark {name!r}")
    _marks.setdefault(name, time.time() if at is None else at)


def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux reports KiB


def private_mb() -> Optional[float]:
    """Memory only this process holds now (private clean + dirty pages), where /proc says it."""
    try:
        fields = dict(line.split(":", 1) for line in Path("/proc/self/smaps_rollup").read_text().splitlines()[1:])
        return sum(int(fields[k].split()[0]) for k in ("Private_Clean", "Private_Dirty")) / 1024
    except (OSError, KeyError, ValueError):
        return None


def rank_figures(ranks: List[int], host: str) -> List[Dict]:
    """This process's figures, one dict per rank it plays (the in-process backend plays all)."""
    start = process_start()

    def since_start(name):
        return round(_marks[name] - start, 3) if name in _marks else None

    common = {"host": host, **{f"{m}_s": since_start(m) for m in MARKS}, "peak_rss_mb": round(peak_rss_mb(), 1)}
    return [{"rank": r, "role": "server" if r == 0 else "client", **common} for r in ranks]


def gathered(per_process: List[List[Dict]]) -> List[Dict]:
    """Every process's figures (transport.allgather's result) as one list in rank order."""
    return sorted((f for figures in per_process for f in figures), key=lambda f: f["rank"])


def loaded_modules() -> List[str]:
    """Modules whose code ran: not the stand-ins of flamby_mpi/transport/fedml_imports.py and
    optim_without_dynamo.py, which only hold the place of modules never loaded, nor the modules
    and packages flamby_mpi/datasets/deferred_imports.py defers that nothing has used yet."""
    return sorted(name for name, module in list(sys.modules.items())
                  if module is not None and not not_run_yet(module))


def dump_modules_if_asked(rank: int):
    directory = os.environ.get(DEBUG_MODULES_ENV)
    if not directory:
        return
    from ..storage import safe_files
    from . import import_gc

    record = {"rank": rank, "modules": loaded_modules(), "private_mb": private_mb(),
              "peak_rss_mb": peak_rss_mb(), "gc": import_gc.state()}
    safe_files.write_atomic(directory, f"rank{rank}.json", json.dumps(record).encode())
