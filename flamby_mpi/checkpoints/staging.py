"""A rank's part of a cut written off the round's critical path: staged, then written by a thread.

`stage(tensors, data)` takes a consistent copy of exactly the state after the round: every tensor's
storage copied once into CPU memory the stage owns (tensors that shared a storage share the copy,
at the same offsets and strides, so torch.save writes the very bytes it would have written from the
originals), the JSON state serialised. Training may then change the originals in place.

`CutWriter` writes one staged cut at a time in a thread of its own while the next round trains;
`wait()` hands back the files' entries (or raises what the write raised: a full disk's
StorageError, a link's UnsafePathError, any bug) in the round loop, so that nothing of a failure
is lost and every message still goes out from the round loop alone. The thread touches no MPI,
draws no random number and runs no training arithmetic: it pickles copies (or a live part, below)
and writes files.

A part saved `live` is not copied: the writer reads the tensors themselves, and the caller
promises to collect the write before it changes any of them. Rank 0 saves its part that way: its
model and strategy state change only when it aggregates, and it collects its write first
(ServerRun._settle_checkpoints). That saves the round a copy of the global model (for a 100 MB
model, 15-45 ms on the round's path and 100 MB of memory). A client stages: it trains on its
tensors before its next reply collects the write. (A rank's tensors outside CPU memory are
staged all the same: the copy is what brings them to the CPU.)

Memory: one cut's copies per rank, kept once written for the next cut to copy into (no fresh pages
to fault in every round), and bounded by PartSaver's limit (common_args.checkpoint_staging_mb).
The files are those checkpoint.write_rank_state writes from the live state (the synchronous
path, when a cut is too big to stage): the same bytes, synced before their entries are handed back.
"""
from __future__ import annotations

import copy
import logging
import queue
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Dict, Optional

from . import checkpoint

MB = 1024 * 1024
log = logging.getLogger("flamby_mpi.checkpoints")


@dataclass
class StagedCut:
    """One rank's part of cut `round_idx`: tensors in memory of its own and the JSON state's bytes."""
    round_idx: int
    rank: int
    tensors: dict
    json_bytes: bytes
    nbytes: int  # the tensors' storages, counted once each
    stage_s: float
    storages: list  # the copies, in the order staged: the next cut's spare once this one is written


def storage_bytes(tree) -> int:
    """Bytes of the distinct storages of the tensors in a nested dict/list/tuple: what staging copies."""
    seen: Dict[tuple, int] = {}
    _walk(tree, lambda t: seen.setdefault(_storage_key(t), t.untyped_storage().nbytes()))
    return sum(seen.values())


def _storage_key(tensor) -> tuple:
    return tensor.device.type, tensor.device.index, tensor.untyped_storage().data_ptr()


def _walk(tree, visit):
    import torch

    if isinstance(tree, torch.Tensor):
        visit(tree)
    elif isinstance(tree, dict):
        for value in tree.values():
            _walk(value, visit)
    elif isinstance(tree, (list, tuple)):
        for value in tree:
            _walk(value, visit)


def _copied(tree, storages: dict, spare: list):
    """tree with every tensor a view of a CPU copy of its storage (one copy per storage). spare: the
    previous cut's copies, written and let go, reused in turn where the size matches (no fresh
    memory to fault in every round)."""
    import torch

    if isinstance(tree, torch.Tensor):
        key = _storage_key(tree)
        if key not in storages:
            source = tree.untyped_storage()
            reuse = spare.pop(0) if spare and spare[0].nbytes() == source.nbytes() else None
            if reuse is not None:
                storages[key] = reuse.copy_(source)
            else:
                spare.clear()  # another layout: the rest is not reused either
                storages[key] = source.cpu().clone() if source.device.type == "cpu" else source.cpu()
        view = torch.empty(0, dtype=tree.dtype)
        view.set_(storages[key], tree.storage_offset(), tree.size(), tree.stride())
        return view
    if isinstance(tree, dict):
        copied = type(tree)() if type(tree) is not dict else {}
        for key, value in tree.items():
            copied[key] = _copied(value, storages, spare)
        # Attributes pickle with the dict: a state_dict's OrderedDict carries its modules' versions.
        if getattr(tree, "__dict__", None):
            copied.__dict__.update(copy.deepcopy(tree.__dict__))
        return copied
    if isinstance(tree, list):
        return [_copied(value, storages, spare) for value in tree]
    if isinstance(tree, tuple):
        return tuple(_copied(value, storages, spare) for value in tree)
    if tree is None or isinstance(tree, (bool, int, float, str, bytes)):  # immutable: shared, not copied
        return tree
    return copy.deepcopy(tree)


def on_cpu(tree) -> bool:
    """Every tensor of a nested dict/list/tuple is in CPU memory (what a live write may read from
    the writer's thread)."""
    devices = set()
    _walk(tree, lambda t: devices.add(t.device.type))
    return devices <= {"cpu"}


def unstaged(round_idx: int, rank: int, tensors: dict, data: dict, nbytes: int) -> StagedCut:
    """A part whose tensors are the caller's own, not copies (its JSON state, which changes every
    round, is serialised now): the caller collects the write before it changes any of them."""
    tick = time.perf_counter()
    return StagedCut(round_idx, rank, tensors, checkpoint.state_json(data), nbytes, time.perf_counter() - tick,
                     storages=[])


def stage(round_idx: int, rank: int, tensors: dict, data: dict, spare: Optional[list] = None) -> StagedCut:
    tick = time.perf_counter()
    storages: dict = {}
    staged = _copied(tensors, storages, list(spare or []))
    nbytes = sum(s.nbytes() for s in storages.values())
    return StagedCut(round_idx, rank, staged, checkpoint.state_json(data), nbytes, time.perf_counter() - tick,
                     list(storages.values()))


class BackgroundJob:
    """One function at a time run in a worker thread of its own (a rank's part of a cut, rank 0's
    manifests): wait() hands back, in the round loop, its return value, or raises what it raised.

    The worker starts with the first job and serves the next ones: a thread started per job cost
    the round loop up to 4-8 ms on an oversubscribed host, where Thread.start() waits until the
    new thread has been scheduled. close() ends it (drain() too), so that a rank that is done has
    its main thread alone again (fast_exit's C exit path); a job submitted after that starts a
    worker again."""

    def __init__(self, name: str):
        self.name = name
        self._worker: Optional[threading.Thread] = None
        self._jobs: queue.SimpleQueue = queue.SimpleQueue()
        self._done = threading.Event()
        self._pending = False
        self._outcome: Optional[tuple] = None

    @property
    def pending(self) -> bool:
        """A job submitted and not yet collected by wait() or drain()."""
        return self._pending

    def submit(self, function, *args):
        if self._pending:
            raise RuntimeError(f"{self.name}: submitted while the previous job is not collected")
        if self._worker is None:
            self._worker = threading.Thread(target=self._serve, name=self.name, daemon=True)
            self._worker.start()
        self._outcome = None
        self._done.clear()
        self._pending = True
        self._jobs.put((function, args))

    def _serve(self):
        while True:
            job = self._jobs.get()
            if job is None:  # close()
                return
            function, args = job
            try:
                outcome = (function(*args), None)
            except BaseException as error:  # noqa: BLE001 - handed to the round loop by wait(), never lost
                outcome = (None, error)
            self._outcome = outcome
            self._done.set()

    def wait(self) -> tuple:
        """(the job's return value, seconds waited for it); raises what the job raised."""
        if not self._pending:
            raise RuntimeError(f"{self.name}: no job to wait for")
        tick = time.perf_counter()
        self._done.wait()
        waited = time.perf_counter() - tick
        (value, error), self._outcome, self._pending = self._outcome, None, False
        if error is not None:
            raise error
        return value, waited

    def drain(self):
        """Waits for the job in flight (no temporary file of ours left), drops its outcome and
        ends the worker."""
        if self._pending:
            self._done.wait()
        self._outcome, self._pending = None, False
        self.close()

    def close(self):
        """Ends the worker once the job in flight, if any, is done (its outcome stays for wait())."""
        if self._worker is not None:
            self._jobs.put(None)
            self._worker.join()
            self._worker = None


class CutWriter:
    """At most one staged cut of one rank being written, in a background thread (a BackgroundJob)."""

    def __init__(self, output_dir: Optional[Path], rank: int):
        self.output_dir = output_dir
        self._job = BackgroundJob(f"checkpoint-writer-{rank}")
        self._staged: Optional[StagedCut] = None
        self.spare: list = []  # the copies of the last cut written, for the next stage to reuse

    @property
    def pending(self) -> Optional[int]:
        """The cut being written (or written and not yet collected by wait()), else None."""
        return self._staged.round_idx if self._staged is not None else None

    def submit(self, staged: StagedCut, after: Optional[Callable[[], None]] = None):
        """Writes staged in the thread, then runs after (if any) there: a chore that has to wait
        for nothing, such as deleting the files of cuts past keep_checkpoints."""
        if self._staged is not None:
            raise RuntimeError(f"cut {staged.round_idx} staged while cut {self._staged.round_idx} is not collected")
        self._staged = staged
        self._job.submit(self._write, staged, after)

    def _write(self, staged: StagedCut, after: Optional[Callable[[], None]]) -> dict:
        tick = time.perf_counter()
        try:
            files = checkpoint.write_rank_state(self.output_dir, staged.round_idx, staged.rank, staged.tensors,
                                                staged.json_bytes, staged.nbytes)
        finally:
            staged.tensors = None  # its storages stay, for the next cut to copy into (CutWriter.spare)
        write_s = time.perf_counter() - tick
        if after is not None:
            after()
        return {"round": staged.round_idx, "files": files, "write_s": write_s}

    def wait(self) -> dict:
        """Blocks until the pending write ends; returns {"round", "files", "write_s", "wait_s",
        "stage_s", "staged_bytes"} or raises what the write raised. Collects it: nothing is pending after."""
        staged = self._staged
        if staged is None:
            raise RuntimeError("no checkpoint write pending")
        try:
            result, wait_s = self._job.wait()
        finally:  # the write has ended either way: its storages are free for the next cut
            self._staged = None
            self.spare, staged.storages = staged.storages, []
        return {**result, "wait_s": wait_s, "stage_s": staged.stage_s, "staged_bytes": staged.nbytes}

    def drain(self):
        """Waits for a pending write and drops its outcome: the job is ending on another error
        (reported instead), and no temporary file of ours is left behind by this rank."""
        self._job.drain()
        self._staged = None

    def close(self):
        """Ends the writer's thread (after a write in flight, still to be collected by wait())."""
        self._job.close()


class PartSaver:
    """One rank's parts of the cuts: staged and written in the background, or, for a part bigger
    than common_args.checkpoint_staging_mb (or when the job is stopping), written at once from the
    live state. collect() hands back, in the round loop, every part written since the last call:
    {"round", "files", "write_s", "wait_s", "critical_s", ...}, critical_s being what the part cost
    the round itself (staging and waiting; the whole write when synchronous)."""

    def __init__(self, output_dir: Optional[Path], rank: int, staging_mb: int):
        self.output_dir, self.rank = output_dir, rank  # None: a plan without its run id saves nothing
        self.limit = staging_mb * MB
        self.writer = CutWriter(output_dir, rank)
        self._done: list = []  # parts written synchronously, not yet collected
        self._said_why = False

    @property
    def pending(self) -> Optional[int]:
        return self.writer.pending

    def save(self, round_idx: int, tensors: dict, data: dict, synchronous: bool = False,
             after: Optional[Callable[[], None]] = None, live: bool = False):
        """Saves this rank's part of cut round_idx; a part still being written is waited for first
        (at most one staged cut per rank), and kept for collect(). after: run once the part is
        written, in the writer's thread (or here, when the part is written at once). live: the
        caller collects this part before it changes any of its tensors, so the writer reads them
        as they are instead of a copy (when they are all in CPU memory)."""
        if self.writer.pending is not None:
            self._done.append(self._collected(self.writer.wait()))
        nbytes = storage_bytes(tensors)
        if not synchronous and nbytes > self.limit and not self._said_why:
            self._said_why = True
            # Rank 0's console says it for the job; every rank's log says it for itself.
            say = log.warning if self.rank == 0 else log.info
            say("rank %d: its part of a checkpoint holds %.0f MiB of tensors, more than "
                "common_args.checkpoint_staging_mb (%d MiB) lets it copy aside: it is written at the end of its "
                "round instead of while the next one trains", self.rank, nbytes / MB, self.limit // MB)
        if synchronous or nbytes > self.limit:
            tick = time.perf_counter()
            files = checkpoint.write_rank_state(self.output_dir, round_idx, self.rank, tensors, data, nbytes)
            seconds = time.perf_counter() - tick
            self._done.append({"round": round_idx, "files": files, "write_s": seconds, "wait_s": 0.0,
                               "critical_s": seconds, "staged_bytes": 0})
            if after is not None:
                after()
            return
        if live and on_cpu(tensors):
            self.writer.submit(unstaged(round_idx, self.rank, tensors, data, nbytes), after)
            return
        spare, self.writer.spare = self.writer.spare, []
        self.writer.submit(stage(round_idx, self.rank, tensors, data, spare), after)

    def collect(self, wait: bool = True) -> list:
        """Every part written since the last call, the one being written waited for (unless not
        wait); raises what a write raised (a full disk's StorageError...)."""
        done, self._done = self._done, []
        if wait and self.writer.pending is not None:
            done.append(self._collected(self.writer.wait()))
        return done

    def _collected(self, result: dict) -> dict:
        if result["wait_s"] >= 0.001:
            log.info("rank %d: waited %.3f s for its part of the checkpoint of round %d to be written",
                     self.rank, result["wait_s"], result["round"])
        return {**result, "critical_s": result["stage_s"] + result["wait_s"]}

    def drain(self):
        """The job is ending on another error: the write in flight ends (no temporary file left)
        and its outcome is dropped."""
        self.writer.drain()
        self._done = []

    def close(self):
        """This rank saves no more parts: the writer's thread ends (a part in flight is written first)."""
        self.writer.close()
