"""The MPI world a rank runs in, and the rank -> role rule.

Rank 0 is the FedML cross-silo server (aggregator); rank k >= 1 is the client
trainer of the plan's k-th centre (FLamby centre k-1 unless data_args.centers
lists others: plan.centre_of). Sizes and roles are checked before any other
collective call, so a wrong `-np` or `--rank/--role` ends every rank at once.
The one collective before them forms the world (`form_world`): every rank of
the communicator reaches it unconditionally, right after MPI starts or after
the last separately started rank has joined.

The local rank (a rank's index among the job's processes on its host, which
picks its GPU) is counted from every rank's host name, gathered once when the
world is formed: the same way under mpirun, srun or for separately started
processes, and right across hosts whatever the launcher announced.
"""
from __future__ import annotations

import socket
import sys
import time
from dataclasses import dataclass, field
from typing import Callable, FrozenSet, List, Optional, Sequence, Tuple

from ..exit.errors import RankMismatchError, UserError, WorldSizeError

# rank -> role, written once in the registry; CLIENT and SERVER are re-exported by flamby_mpi.launch
from ..registry import CLIENT, SERVER, role_of  # noqa: F401
from . import mpich_shm

ABORT_GRACE_S = 0.5


@dataclass
class World:
    comm: object  # an mpi4py intracommunicator
    rank: int
    size: int
    host: str
    # This rank's index among the world's ranks on `host` (local_rank_from_hosts).
    local_rank: int
    # Run at the end of the job and before an abort (e.g. removing rendezvous files).
    cleanups: List[Callable[[], None]] = field(default_factory=list)
    # Whether the ranks were connected one by one (separate processes) rather than started together.
    joined_separately: bool = False
    # Every rank's host name, in rank order (form_world's allgather); empty when not known.
    hosts: Tuple[str, ...] = ()

    def finish(self, success: bool = True):
        if success and self.joined_separately:
            # Processes connected by MPI_Comm_connect/accept finalize collectively and can
            # hang in MPI_Finalize; disconnecting first (collective, all ranks reach it at
            # the end of a successful run) leaves each process free to exit on its own.
            self.comm.Disconnect()
        for cleanup in self.cleanups:
            cleanup()

    @property
    def role(self) -> str:
        return role_of(self.rank)

    @property
    def is_server(self) -> bool:
        return self.rank == 0

    def ranks_on_this_host(self) -> FrozenSet[int]:
        """The ranks whose host name is this rank's (itself included; itself alone when not known)."""
        return frozenset(r for r, host in enumerate(self.hosts) if host == self.host) | {self.rank}

    def abort(self, code: int):
        """Ends every rank of the job (mpiexec kills the others)."""
        try:
            self.finish(success=False)
        finally:
            sys.stdout.flush()
            sys.stderr.flush()
        # Give the launcher a moment to forward what this rank just printed:
        # Abort makes it kill every process, and unforwarded output is lost.
        time.sleep(ABORT_GRACE_S)
        self.comm.Abort(code)


def local_rank_from_hosts(hosts: Sequence[str], rank: int) -> int:
    """The index of `rank` among the ranks on its host, given every rank's host name in rank order.

    Ranks on one host are numbered in rank order (the order gpu_mapping_file counts them in).
    """
    return list(hosts[:rank]).count(hosts[rank])


# A rank that reaches a blocking collective before the others waits inside MPI, and MPICH waits by
# polling: each early rank takes a share of a core from the ranks that are still importing or loading
# their data, which on a few cores is exactly when they need it (figures in docs/benchmarks/). So a
# collective of the run first meets in a non-blocking barrier that a waiting rank polls between
# sleeps (growing from _FIRST_PAUSE_S to _LONGEST_PAUSE_S: a rank that has waited long anyway pays a
# few ms of latency, a rank that arrives with the others none); the collective itself then finds
# every rank there.
_FIRST_PAUSE_S, _LONGEST_PAUSE_S = 0.0001, 0.01


def wait_for_all(comm):
    """A barrier of `comm` that waits asleep."""
    request = comm.Ibarrier()
    pause = _FIRST_PAUSE_S
    while not request.Test():
        time.sleep(pause)
        pause = min(2 * pause, _LONGEST_PAUSE_S)


def allgather(comm, value) -> list:
    """comm.allgather(value), waiting asleep for the ranks not there yet."""
    wait_for_all(comm)
    return comm.allgather(value)


def bcast(comm, value, root: int = 0):
    """comm.bcast(value, root), waiting asleep for the ranks not there yet."""
    wait_for_all(comm)
    return comm.bcast(value, root=root)


def form_world(comm, **fields) -> World:
    """The World of `comm` once every rank is in it, with this rank's local rank.

    Collective (one allgather of the host names): every rank of `comm` calls it at the same point.
    """
    host = socket.gethostname()
    rank = comm.Get_rank()
    hosts = allgather(comm, host)
    mpich_shm.unlink_mapped_segments()  # every rank has started MPI: a killed job leaves no segment
    return World(comm=comm, rank=rank, size=comm.Get_size(), host=host,
                 local_rank=local_rank_from_hosts(hosts, rank), hosts=tuple(hosts), **fields)


def singleton_world() -> World:
    """The world of a process started by hand, before MPI is initialised: itself alone."""
    return World(comm=None, rank=0, size=1, host=socket.gethostname(), local_rank=0)


def mpi_world() -> World:
    """The world started by mpirun/mpiexec/srun (COMM_WORLD)."""
    from mpi4py import MPI  # initialises MPI (MPI_THREAD_MULTIPLE, which FedML's two threads need)

    if MPI.Query_thread() < MPI.THREAD_MULTIPLE:
        raise UserError("this MPI library does not provide MPI_THREAD_MULTIPLE, which FedML's "
                        "communication threads need",
                        hint="use MPICH or Open MPI built with thread support (pip install mpich)")
    return form_world(MPI.COMM_WORLD)


def check_rank_role(cli_rank: Optional[int], cli_role: Optional[str]):
    """Raises a UserError when --rank and --role contradict each other (the command line alone)."""
    if (cli_rank is None) != (cli_role is None):
        raise UserError("--rank and --role go together",
                        hint="give both (e.g. --rank 0 --role server) or neither")
    if cli_rank is not None and role_of(cli_rank) != cli_role:
        expected = "--role server" if cli_rank == 0 else "--role client"
        raise UserError(f"--rank {cli_rank} --role {cli_role}: rank 0 is the server and "
                        f"ranks 1..N are clients", hint=f"use --rank {cli_rank} {expected}")


def check_world(world: World, expected_size: int, dataset_name: str,
                cli_rank: Optional[int], cli_role: Optional[str]):
    """Raises a UserError when the world cannot run this plan; no MPI call is made."""
    check_rank_role(cli_rank, cli_role)
    if cli_rank is not None:
        if world.size > 1 and cli_rank != world.rank:
            raise RankMismatchError(f"--rank {cli_rank} disagrees with the MPI rank {world.rank} that "
                            "mpirun gave this process",
                            hint="under mpirun leave --rank/--role out (each process gets its rank from MPI)")
    if world.size == 1 and expected_size > 1:
        if cli_rank is not None:  # one process per terminal: the ranks meet through the rendezvous
            if cli_rank >= expected_size:
                raise UserError(f"--rank {cli_rank} is out of range: {dataset_name} has "
                                f"{expected_size - 1} centres, so ranks are 0 (server) and "
                                f"1..{expected_size - 1} (clients)",
                                hint=f"use --rank 0..{expected_size - 1}")
            return
        raise WorldSizeError(
            f"only 1 MPI process is running, but {dataset_name} needs {expected_size} "
            f"(1 server + {expected_size - 1} clients)",
            hint=f"run: mpirun -np {expected_size} python launch_client.py --cf <config>")
    if world.size != expected_size:
        raise WorldSizeError(
            f"{world.size} MPI processes were started, but {dataset_name} has {expected_size - 1} "
            f"centres: this run needs 1 server + {expected_size - 1} clients = {expected_size} processes",
            hint=f"use mpirun -np {expected_size}")
