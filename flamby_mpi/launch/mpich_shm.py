"""MPICH's shared-memory segment of a host, unlinked once every rank there has it mapped.

MPICH makes one named segment per host when MPI starts (`/dev/shm/mpich_shm_<hex>_0`, about
1 MB with a few ranks) and removes the name only in a clean MPI_Finalize. A job that ends by
MPI_Abort (any failure), or whose ranks are killed (SIGKILL, out of memory, a test's deadline),
left it behind: hundreds of them after a day of failed jobs. Once every rank of the job has
started MPI (the world's first collective) each process's mapping is all MPICH uses, so the name
can go, as with an open file: the memory stays until the last rank unmaps it, however the job
ends, and MPICH's own removal at MPI_Finalize tolerates the name being gone (MPICH 4.x and 5.x;
tests/test_mpi_runs.py checks that neither a finished nor an aborted job leaves one).

Only names this process has mapped are touched, never another job's; elsewhere than Linux (no
/proc/self/maps), or with another MPI (Open MPI names its segments otherwise), nothing is done.
"""
from __future__ import annotations

import os
from typing import List

SEGMENT_PREFIX = "/dev/shm/mpich_shm_"


def mapped_segments(maps: str = "/proc/self/maps") -> List[str]:
    """The MPICH segments this process maps whose names still exist."""
    try:
        with open(maps) as lines:
            paths = {line.split(None, 5)[5].rstrip("\n") for line in lines if SEGMENT_PREFIX in line}
    except (OSError, IndexError):
        return []
    return sorted(p for p in paths if p.startswith(SEGMENT_PREFIX) and not p.endswith(" (deleted)"))


def unlink_mapped_segments():
    """Every rank, after a collective of the whole job: the first rank of a host to get here
    removes the name, the others find it gone."""
    for path in mapped_segments():
        try:
            os.unlink(path)
        except OSError:  # gone already (another rank of the host), or not ours to remove: left as it is
            pass
