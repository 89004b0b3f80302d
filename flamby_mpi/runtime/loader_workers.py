"""DataLoader worker processes inside an MPI rank (`data_args.num_workers` > 0).

Started by a fork server, never forked from the rank. A rank has called MPI_Init and runs FedML's
threads; a child forked from it inherits MPI's file descriptors and shared memory (MPICH's and
Open MPI's both say fork after MPI_Init is unsupported) and locks held by other threads at the
fork. multiprocessing's "forkserver" start method runs a fresh interpreter (exec'd, so nothing of
MPI is inherited) that never imports mpi4py, and forks each worker from it. "spawn" is as safe but
starts a fresh interpreter per worker, which re-imports torch and the dataset's modules every time
a loader starts its workers (each epoch, each evaluation); the fork server imports them once
(preload below) and a worker is then a fork of it, cheaper than a fork of the whole rank
(docs/benchmarks/loader_workers.md has the measurement).

A worker's random streams are torch's: seeded from a base seed the loader draws from its own
generator when it starts an epoch (the client's seeded, checkpointed generator for the training
loader; the client's own torch stream for its test loader), so they are a function of the
client's streams and a resumed run draws what an uninterrupted one does. Workers are not
persistent: a persistent loader draws that base seed once, not per epoch, so its second epoch's
order would differ from 0 workers', and its workers' streams would run on across epochs where a
resume restarts them.

A worker computes with as many torch threads as the rank that starts it (torch gives a worker one):
a reduction split over another number of threads sums in another order, and Fed-IXI's intensity
normalisation then differs in its last bits from what the rank computes with 0 workers.

A worker that dies (the kernel's out-of-memory killer, a signal) is a `DataWorkerDied`, raised
where the rank draws a batch, naming the data and the worker. torch would instead raise a bare
RuntimeError from its SIGCHLD handler at whatever line the rank's main thread is running
(inside FedML's receive loop, a checkpoint write): `start_iterator` puts back the handler that
was there before torch's, and torch's own check finds the dead worker at the next batch.
"""
from __future__ import annotations

import contextlib
import functools
import multiprocessing
import multiprocessing.connection
import signal
import threading
from typing import Iterator, List, Optional

import torch

from ..exit.errors import UserError

START_METHOD = "forkserver"
# Imported by the fork server before it forks any worker: what every worker needs to unpickle a
# dataset and return tensors. Never anything that imports mpi4py (a worker must not touch MPI).
_ALWAYS_PRELOADED = ("__main__", "torch", "numpy", __name__)


# How long an error while drawing a batch waits for a worker's end to be known before it is taken
# for the dataset's own error.
_WORKER_END_WAIT_S = 2.0


class DataWorkerDied(UserError):
    """A DataLoader worker process of this rank died; the rank cannot go on with its data."""

    exit_code = 1


def _dataset_modules(dataset) -> List[str]:
    """Modules of the classes a worker unpickles for this dataset (ConcatDataset's and Subset's parts too)."""
    found, stack = [], [dataset]
    while stack:
        item = stack.pop()
        module = type(item).__module__
        if module and module not in found and not module.startswith("__"):
            found.append(module)
        stack.extend(getattr(item, "datasets", []) or [])
        inner = getattr(item, "dataset", None)
        if isinstance(inner, torch.utils.data.Dataset):
            stack.append(inner)
    return found


def worker_context(dataset, collate_fn=None):
    """The multiprocessing context a loader's workers start from (see the module docstring).

    The fork server is started by the first loader that starts workers in this process; what it
    preloads is set here before that (later calls change nothing once it runs)."""
    context = multiprocessing.get_context(START_METHOD)
    preload = list(_ALWAYS_PRELOADED) + _dataset_modules(dataset)
    collate_module = getattr(collate_fn, "__module__", None)
    if collate_module and collate_module not in preload and not collate_module.startswith("__"):
        preload.append(collate_module)
    context.set_forkserver_preload(preload)
    return context


@contextlib.contextmanager
def sigchld_kept() -> Iterator[None]:
    """Puts back, on leaving, the SIGCHLD handler there was on entering: torch's, installed when a
    loader first starts workers in this process, raises from anywhere (see the module docstring)."""
    if threading.current_thread() is not threading.main_thread():
        yield  # only the main thread can install handlers, torch's included
        return
    before = signal.getsignal(signal.SIGCHLD)
    try:
        yield
    finally:
        if signal.getsignal(signal.SIGCHLD) is not before:
            signal.signal(signal.SIGCHLD, before if before is not None else signal.SIG_DFL)


def worker_start(torch_threads: int, worker_id: int):
    """A worker's worker_init_fn: the rank's number of torch threads (see the module docstring)."""
    torch.set_num_threads(torch_threads)


def worker_init(torch_threads: Optional[int] = None):
    """The worker_init_fn for a loader started now: picklable, for the fork server to hand over."""
    return functools.partial(worker_start, torch_threads or torch.get_num_threads())


@contextlib.contextmanager
def tensors_shared_by_name() -> Iterator[None]:
    """While a loader starts its workers, the tensors its dataset holds go to the fork server by the
    name of their shared memory, not as file descriptors: the dataset travels pickled in one message
    to the fork server, which takes at most 252 descriptors (multiprocessing refuses more: "too
    many fds"), and a dataset of one tensor per sample holds more (Fed-Heart-Disease's pooled test
    set, 254). The tensors' bytes are the same either way; torch's own setting is put back."""
    import torch.multiprocessing

    before = torch.multiprocessing.get_sharing_strategy()
    torch.multiprocessing.set_sharing_strategy("file_system")
    try:
        yield
    finally:
        torch.multiprocessing.set_sharing_strategy(before)


@contextlib.contextmanager
def starting_workers() -> Iterator[None]:
    """Around whatever starts a loader's workers in this process (iter(loader), or FLamby's own
    evaluation function): this process's SIGCHLD handler kept, the dataset's tensors sent by name."""
    with sigchld_kept(), tensors_shared_by_name():
        yield


def start_iterator(loader: torch.utils.data.DataLoader) -> Iterator:
    """iter(loader), its workers started as starting_workers says."""
    if loader.num_workers == 0:
        return iter(loader)
    with starting_workers():
        return iter(loader)


def dead_worker(iterator, role: str, wait_s: float = 0.0) -> Optional[DataWorkerDied]:
    """The error naming a dead worker of this iterator, or None when every worker is alive after
    waiting up to wait_s for one to end (or it has none)."""
    workers = getattr(iterator, "_workers", None) or []
    if wait_s > 0 and workers:
        # A worker's end reaches this process through the fork server, a moment after it died.
        multiprocessing.connection.wait([w.sentinel for w in workers], timeout=wait_s)
    for worker in workers:
        code = worker.exitcode
        if code is None or code == 0:
            continue
        if code < 0:
            try:
                how = f"killed by signal {signal.Signals(-code).name}"
            except ValueError:
                how = f"killed by signal {-code}"
        else:
            how = f"exited with code {code}"
        return DataWorkerDied(
            f"{role}: its data-loading worker (DataLoader worker process, pid {worker.pid}) died, {how}; "
            "ending the whole job",
            hint="SIGKILL is most often the kernel's out-of-memory killer (see `dmesg` on that host): "
                 "lower data_args.num_workers (0 loads the data in the rank itself) or the batch size, "
                 "then start again, or continue with --resume")
    return None


def next_batch(iterator, role: str):
    """next(iterator), a dead worker named (StopIteration passes through). torch says "exited
    unexpectedly" once it notices; a worker killed while its batch's tensors are being handed over
    shows first as the hand-over failing (ConnectionResetError, EOFError...), so any error is
    checked against the workers' ends before it is passed on."""
    try:
        return next(iterator)
    except StopIteration:
        raise
    except Exception as error:
        died = dead_worker(iterator, role, wait_s=_WORKER_END_WAIT_S)
        if died is None:
            raise
        raise died from error
