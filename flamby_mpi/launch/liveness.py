"""Lost peers of separately started ranks: a heartbeat file per rank beside the rendezvous files.

Under mpirun the launcher ends the whole job when one rank dies. Ranks started one per terminal
each have their own `mpiexec -n 1`, and MPICH does not tell the survivors that a process of a
world joined by dynamic process management died: measured with MPICH 5.0.2 (ch4), Iprobe keeps
returning false and a small Send to the dead rank returns, with MPI_ERRORS_RETURN set or not, so
every other rank would wait for comm_args.round_timeout_s. An MPI_Abort from a survivor still
ends every other process of the joined world, dead member or not.

So each rank rewrites `<rendezvous_dir>/<run_id>.alive.<rank>` every BEAT_S seconds from a thread
of its own, from the moment the world is formed until its final Disconnect has returned: a
counter, its host and pid, and an HMAC under the run's secret of those and of the server's MPI
port (which differs for every run, so a file left by an earlier run never counts). A file is read
as at most 16 KiB of JSON, never unpickled, and only a proven counter larger than the last one
seen counts as a sign of life: a file written by anyone without the secret, or an old one
replayed, is no sign of life. Freshness is judged on the reader's own monotonic clock, so clocks
of different hosts need not agree.

Rank 0 watches every client and each client watches rank 0 (one file read per second on a
client, N on the server). A peer with no sign of life for LOST_AFTER_S seconds is lost:
- a client lost: rank 0 writes the lost rank into its own heartbeat, says so, waits up to
  RELAY_S for the clients to read it and end (each says which rank was lost, and removes its
  file), then aborts the job, ending any client left;
- rank 0 lost: every client says so and ends.
Every process thus ends within LOST_AFTER_S + a few seconds, non-zero, naming the lost rank.
"""
from __future__ import annotations

import json
import logging
import os
import socket
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Dict, List, Optional, Sequence, Tuple

from ..exit.fast_exit import end_thread
from . import handshake
from .rendezvous import RendezvousFiles, read_json, write_private

log = logging.getLogger("flamby_mpi.liveness")

BEAT_S = 1.0
# Far above any pause of a live process's heartbeat thread, far below the 30 s in which a job with a
# lost rank must end.
LOST_AFTER_S = 15.0
# How long rank 0 gives the clients to read which rank was lost before it aborts the job.
RELAY_S = 5.0


@dataclass(frozen=True)
class Beat:
    rank: int
    count: int
    host: str
    pid: int
    lost: Tuple[Tuple[int, str], ...]  # set by rank 0 only: (rank, description) of lost clients


@dataclass(frozen=True)
class Loss:
    """Which ranks were lost, as this process learnt it."""
    ranks: Tuple[Tuple[int, str], ...]
    relayed: bool  # False: seen by this process itself; True: rank 0 reported it

    def text(self) -> str:
        names = ", ".join(f"rank {rank} ({description})" for rank, description in self.ranks)
        how = "rank 0 reports that it stopped" if self.relayed else "it stopped"
        return (f"lost {names}: {how} giving signs of life for {LOST_AFTER_S:g} s (killed, crashed, or its "
                f"host or the rendezvous filesystem stopped answering); ending the whole job")


class Liveness:
    """This rank's heartbeat and its view of the peers it watches. `check()` is one look, without
    threads (the unit tests drive it with their own clock); `start()` runs beat + check every BEAT_S."""

    def __init__(self, files: RendezvousFiles, secret: str, port: str, rank: int, size: int,
                 clock: Callable[[], float] = time.monotonic):
        self.files, self.secret, self.port, self.rank = files, secret, port, rank
        self.watched: List[int] = list(range(1, size)) if rank == 0 else [0]
        self.clock = clock
        self._count = 0
        started = clock()
        self._last_count: Dict[int, int] = {peer: 0 for peer in self.watched}
        self._last_seen: Dict[int, float] = {peer: started for peer in self.watched}
        self._last_beat: Dict[int, Beat] = {}
        self._lost: Tuple[Tuple[int, str], ...] = ()
        self._stop = threading.Event()
        self._thread: Optional[threading.Thread] = None

    def path(self, rank: int) -> Path:
        return self.files.directory / f"{self.files.run_id}.alive.{rank}"

    def _proof(self, rank: int, count: int, host: str, pid: int, lost) -> str:
        return handshake.proof(self.secret, "alive", self.files.run_id, self.port, rank, count, host, pid,
                               [list(item) for item in lost])

    def beat(self):
        self._count += 1
        host, pid = socket.gethostname(), os.getpid()
        lost = [list(item) for item in self._lost]
        write_private(self.path(self.rank), json.dumps(
            {"rank": self.rank, "count": self._count, "host": host, "pid": pid, "lost": lost,
             "proof": self._proof(self.rank, self._count, host, pid, self._lost)}))

    def read(self, rank: int) -> Optional[Beat]:
        """The peer's last heartbeat if this run's secret proves it; None otherwise (absent, torn, forged)."""
        document = read_json(self.path(rank))
        if not isinstance(document, dict):
            return None
        try:
            count, host, pid = document["count"], document["host"], document["pid"]
            lost = tuple((int(r), str(d)) for r, d in document.get("lost", []))
            if not (isinstance(count, int) and isinstance(host, str) and isinstance(pid, int)
                    and document.get("rank") == rank):
                return None
        except (KeyError, TypeError, ValueError):
            return None
        if not handshake.proof_matches(self.secret, document.get("proof"), "alive", self.files.run_id,
                                       self.port, rank, count, host, pid, [list(item) for item in lost]):
            return None
        return Beat(rank=rank, count=count, host=host, pid=pid, lost=lost)

    def describe(self, rank: int) -> str:
        role = "server" if rank == 0 else "client"
        beat = self._last_beat.get(rank)
        return f"{role}, host {beat.host}, pid {beat.pid}" if beat else f"{role}, never heard from"

    def check(self) -> Optional[Loss]:
        """Reads the watched peers' heartbeats once; the loss, if any peer is lost."""
        now = self.clock()
        for peer in self.watched:
            beat = self.read(peer)
            if beat is not None and beat.count > self._last_count[peer]:
                self._last_count[peer], self._last_seen[peer], self._last_beat[peer] = beat.count, now, beat
                if peer == 0 and beat.lost:
                    return Loss(ranks=beat.lost, relayed=True)
        lost = tuple((peer, self.describe(peer)) for peer in self.watched
                     if now - self._last_seen[peer] > LOST_AFTER_S)
        return Loss(ranks=lost, relayed=False) if lost else None

    def relay(self, loss: Loss):
        """Rank 0: tells the clients, through its own heartbeat, which ranks were lost."""
        self._lost = loss.ranks
        self.beat()

    def clients_gone(self, loss: Loss) -> bool:
        """Rank 0: whether every client not lost has ended (removed its heartbeat file)."""
        lost = {rank for rank, _ in loss.ranks}
        return all(not self.path(peer).exists() for peer in self.watched if peer not in lost)

    def start(self, on_lost: Callable[[Loss], None]) -> "Liveness":
        self.beat()  # before the thread starts: the peers see this rank at once

        def run():
            while not self._stop.wait(BEAT_S):
                try:
                    self.beat()
                except OSError as exc:  # a shared filesystem hiccup: the peers tolerate LOST_AFTER_S of it
                    log.warning("could not refresh %s: %s", self.path(self.rank), exc)
                loss = self.check()
                if loss is not None and not self._stop.is_set():
                    on_lost(loss)
                    return

        self._thread = threading.Thread(target=run, name="flamby-mpi-liveness", daemon=True)
        self._thread.start()
        return self

    def close(self):
        """Stops beating and removes this rank's file; the thread has ended when this returns,
        unless called from it (on_lost): a thread alive at the exit skips MPICH's PMI finalize
        (flamby_mpi/exit/fast_exit.py)."""
        self._stop.set()
        end_thread(getattr(self, "_thread", None), timeout=10)  # at most one heartbeat write under way
        self.files.remove(self.path(self.rank))


def watch(world, files: RendezvousFiles, secret: str, port: str,
          report: Callable[[str], None], exit_process: Callable[[int], None] = os._exit) -> Liveness:
    """Starts the heartbeat of this rank of a separately joined world; a lost peer ends this process
    (and, from rank 0, the job) with `report(text)` naming the lost rank. Stops at world.finish()."""
    from ..exit.failures import EXIT_FAILURE

    liveness = Liveness(files, secret, port, world.rank, world.size)

    def on_lost(loss: Loss):
        if world.is_server:
            liveness.relay(loss)
            report(loss.text())
            end = time.monotonic() + RELAY_S
            while not liveness.clients_gone(loss) and time.monotonic() < end:
                time.sleep(0.1)
            world.abort(EXIT_FAILURE)  # ends any client still running
        else:
            report(loss.text())
            world.finish(success=False)  # removes this rank's file: rank 0 sees that it ended
            exit_process(EXIT_FAILURE)

    world.cleanups.insert(0, liveness.close)
    return liveness.start(on_lost)


__all__: Sequence[str] = ["Liveness", "Loss", "Beat", "watch", "BEAT_S", "LOST_AFTER_S", "RELAY_S"]
