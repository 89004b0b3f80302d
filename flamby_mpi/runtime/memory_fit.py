"""Whether a job's ranks fit the memory of the hosts (and GPUs) they run on, decided at start-up.

Before any dataset is loaded, every process says where it runs and what it sees: host name, the
ranks it plays, /proc/meminfo's MemAvailable, its own resident size now, and, for a client that
will train on a GPU, that GPU and its free memory (torch.cuda.mem_get_info). One allgather shares
these; every process then computes the same verdict from the same list (`decide`, a pure function),
so a job that does not fit ends on every rank with exit 2 at once, rank 0 saying why once.

What a rank needs comes from an `Estimate` (`find_estimate`):
1. the estimates file: `device_args.memory_estimates_file`, else the user's cache
   (`$XDG_CACHE_HOME/flamby-mpi/memory_estimates.json`, `~/.cache/...` without XDG_CACHE_HOME),
   where `python -m flamby_mpi check` records what it measured, keyed by dataset, model, batch size
   and optimizer. The cache is per user and outside any run directory: the check runs on a login
   node before the run has an id or a directory, and home directories are what clusters share
   between login and compute nodes (FLamby's dataset records and torch hub's cache live there too);
2. else the built-in figure of a FLamby dataset (BUILTIN_MIB, measured by the check on stand-in data
   at FLamby's batch size: docs/benchmarks/memory_estimates.md), its step scaled to the batch size;
3. else (a dataset of the user's own, never checked) nothing is refused.

The rule, per host: the processes there need their estimates (a process playing several ranks, as
the in-process backend does, holds its imports once) plus an allowance per process for MPI and
FedML, what they do not hold yet times 1 + MARGIN (what they hold is measured, the rest
estimated); they may use the host's MemAvailable plus what the job's own processes
there hold already (they have imported torch by now, which MemAvailable no longer counts; the
smallest reading of the host's processes is taken). Per GPU shared by client ranks: their GPU
estimates plus a CUDA context each, times 1 + MARGIN, against the largest free memory one of them
read. `device_args.memory_check: false` skips the check.
"""
from __future__ import annotations

import json
import math
import os
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Tuple

from ..exit.errors import plain

MIB = 1024 * 1024
GIB = 1024 * MIB
# The estimate is one training step's peak; data loaders, evaluation batches and the allocator's
# own slack vary around it.
MARGIN = 0.10
# Per process, not measured by the check: MPI's library and buffers, FedML's managers and threads.
MPI_AND_FEDML_BYTES = 32 * MIB
# Per client rank on a GPU: the CUDA context and torch's kernels, which the check (on CPU) cannot see.
CUDA_CONTEXT_BYTES = 512 * MIB
ESTIMATES_FORMAT = "flamby-mpi memory estimates 1"
ESTIMATES_FILE_CAP = 4 * MIB
OVERRIDE_KEY = "device_args.memory_check=false"


@dataclass(frozen=True)
class Estimate:
    """What one rank of a run needs, in bytes, and where the figures come from.

    Private memory (anonymous pages: tensors, the heap, Python objects) is each process's own; the
    libraries' pages (torch's, FLamby's: file-backed) are shared by every process of a host that maps
    them, so they count once per host."""
    client_bytes: int  # a client's private peak: imports, its centre's data, one training step
    imports_bytes: int  # a rank's private memory before any data was loaded (torch, FLamby imported)
    shared_bytes: int  # the libraries' resident pages, once per host
    model_bytes: int  # the model's parameters and buffers
    gpu_bytes: int  # a client's tensors on its GPU: parameters, gradients, optimizer state, activations
    source: str = ""  # for messages: which check measured it, or which built-in figure

    def server_bytes(self, num_clients: int) -> int:
        """The server: its imports, the global model and one received copy per client (+ 1 spare)."""
        return self.imports_bytes + self.model_bytes * (num_clients + 2)

    def rank_bytes(self, rank: int, num_clients: int) -> int:
        """One rank alone in its process, MPI and FedML included (a client also holds the message
        it received)."""
        need = self.server_bytes(num_clients) if rank == 0 else self.client_bytes + self.model_bytes
        return need + MPI_AND_FEDML_BYTES

    def process_bytes(self, ranks: Sequence[int], num_clients: int) -> int:
        """A process playing `ranks` (several in process): the imports once, each rank's own part."""
        if len(ranks) == 1:
            return self.rank_bytes(ranks[0], num_clients)
        own = sum(self.rank_bytes(r, num_clients) - self.imports_bytes - MPI_AND_FEDML_BYTES for r in ranks)
        return self.imports_bytes + own + MPI_AND_FEDML_BYTES

    def host_bytes(self, processes: Sequence[Sequence[int]], num_clients: int, held: int = 0) -> int:
        """What a host running these processes (each a tuple of ranks) needs, the margin included.
        `held`: what the processes hold already (measured, so no margin on it): the margin is for
        what they will still take, which is estimated."""
        need = self.shared_bytes + sum(self.process_bytes(p, num_clients) for p in processes)
        return held + int(math.ceil(max(0, need - held) * (1 + MARGIN)))


@dataclass(frozen=True)
class ProcessState:
    """What one process reports at start-up (allgathered)."""
    ranks: Tuple[int, ...]
    host: str
    available_bytes: Optional[int]  # MemAvailable; None where /proc/meminfo does not say
    held_bytes: int  # this process's private (anonymous) resident memory now
    gpu: Optional[str] = None  # the GPU it trains on (its UUID where CUDA gives one); None: CPU
    gpu_name: str = ""  # as the rank names it, e.g. cuda:0
    gpu_free_bytes: Optional[int] = None


@dataclass
class Verdict:
    refusal: Optional[str] = None  # the message when the job does not fit
    notes: List[str] = field(default_factory=list)  # hosts that could not be checked

    @property
    def fits(self) -> bool:
        return self.refusal is None


def size_text(n: float) -> str:
    return f"{n / GIB:,.1f} GiB" if n >= GIB else f"{n / MIB:,.0f} MiB"


def _ranks_text(ranks: Sequence[int]) -> str:
    return ("rank " if len(ranks) == 1 else "ranks ") + ", ".join(map(str, sorted(ranks)))


def _with_margin(n: int) -> int:
    return int(math.ceil(n * (1 + MARGIN)))  # as Estimate.host_bytes


def _what_to_do(gpu: bool) -> str:
    where = ("fewer client ranks per GPU (device_args.gpu_mapping_file, more GPUs visible) or "
             if gpu else "")
    return (f"run {where}fewer ranks per host (fewer slots for that host in the host file, or fewer "
            "centres in data_args.centers), a smaller train_args.batch_size, or spread the job over more "
            "hosts; the estimate comes from `python -m flamby_mpi check` (run it again after a change), "
            f"and --set {OVERRIDE_KEY} runs the job anyway")


def decide(states: Sequence[ProcessState], estimate: Estimate, num_clients: int) -> Verdict:
    """The verdict on every host and GPU of the job: pure, the same on every rank."""
    verdict = Verdict()
    problems: List[str] = []
    hosts: Dict[str, List[ProcessState]] = {}
    for state in states:
        hosts.setdefault(state.host, []).append(state)
    for host, here in hosts.items():
        readings = [s.available_bytes for s in here if s.available_bytes is not None]
        if not readings:
            verdict.notes.append(f"host {plain(host)}: available memory unknown (no /proc/meminfo); "
                                 "not checked")
            continue
        ranks = sorted(r for s in here for r in s.ranks)
        held = sum(s.held_bytes for s in here)
        need = estimate.host_bytes([s.ranks for s in here], num_clients, held)
        room = min(readings) + held
        if need > room:
            clients = [r for r in ranks if r != 0]
            parts = ([f"the server {size_text(estimate.rank_bytes(0, num_clients))}"] if 0 in ranks else []) \
                + ([f"{len(clients)} client(s) {size_text(estimate.rank_bytes(1, num_clients))} each"]
                   if clients else []) + [f"libraries {size_text(estimate.shared_bytes)} once"]
            shared = " (one process: the imports counted once)" if any(len(s.ranks) > 1 for s in here) else ""
            problems.append(
                f"host {plain(host)} runs {_ranks_text(ranks)}, which need about {size_text(need)} "
                f"({' + '.join(parts)}{shared}, plus {MARGIN:.0%} of what they do not hold yet), "
                f"but it has {size_text(room)} available "
                f"(MemAvailable {size_text(min(readings))} + {size_text(held)} the job's processes there "
                "hold already)")
    gpus: Dict[Tuple[str, str], List[ProcessState]] = {}
    for state in states:
        if state.gpu is not None:
            gpus.setdefault((state.host, state.gpu), []).append(state)
    gpu_problem = False
    for (host, _), here in gpus.items():
        readings = [s.gpu_free_bytes for s in here if s.gpu_free_bytes is not None]
        if not readings:
            continue
        ranks = sorted(r for s in here for r in s.ranks)
        need = len(ranks) * (estimate.gpu_bytes + CUDA_CONTEXT_BYTES)
        room = max(readings)
        if _with_margin(need) > room:
            gpu_problem = True
            problems.append(
                f"GPU {plain(here[0].gpu_name)} of host {plain(host)} trains {_ranks_text(ranks)}, which need "
                f"about {size_text(_with_margin(need))} of GPU memory ({size_text(estimate.gpu_bytes)} each "
                f"+ {size_text(CUDA_CONTEXT_BYTES)} for its CUDA context, plus {MARGIN:.0%}), but it has "
                f"{size_text(room)} free")
    if problems:
        verdict.refusal = (
            "the job does not fit in memory: " + "; ".join(problems)
            + f". Estimate per rank: server {size_text(estimate.rank_bytes(0, num_clients))}, client "
            f"{size_text(estimate.rank_bytes(1, num_clients))}"
            + (f" (GPU {size_text(estimate.gpu_bytes)})" if gpu_problem else "")
            + f", MPI and FedML included; from {estimate.source}.\nHINT: " + _what_to_do(gpu_problem))
    return verdict


# ---- estimates: the check's file, the built-in figures ----------------------------------------

def default_estimates_file() -> Path:
    """The user's cache: $XDG_CACHE_HOME/flamby-mpi/memory_estimates.json, else ~/.cache/..."""
    cache = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(cache) / "flamby-mpi" / "memory_estimates.json"


def estimates_file(configured: Optional[str]) -> Path:
    return Path(os.path.expanduser(configured)) if configured else default_estimates_file()


def _qualified(thing) -> str:
    target = getattr(thing, "func", thing)  # a functools.partial names its function
    return f"{getattr(target, '__module__', '?')}.{getattr(target, '__qualname__', type(target).__name__)}"


def estimate_key(plan) -> str:
    """What decides a rank's memory, as the check and the run both spell it."""
    return (f"{plan.dataset.name}|model {_qualified(plan.dataset.baseline)}|batch {plan.batch_size}"
            f"|optimizer {plan.optimizer_name}")


_FIELDS = ("client_bytes", "imports_bytes", "shared_bytes", "model_bytes", "gpu_bytes")


def _entry_estimate(entry, path: Path) -> Optional[Estimate]:
    if not isinstance(entry, dict) or not all(
            isinstance(entry.get(k), int) and not isinstance(entry.get(k), bool) and 0 <= entry[k] < 2**62
            for k in _FIELDS):
        return None
    when = entry.get("measured_unix")
    stamp = time.strftime("%Y-%m-%d %H:%M", time.localtime(when)) if isinstance(when, (int, float)) else "?"
    return Estimate(**{k: entry[k] for k in _FIELDS},
                    source=f"python -m flamby_mpi check of {stamp} (recorded in {plain(path)})")


def read_estimates(path: Path) -> Tuple[Dict[str, dict], Optional[str]]:
    """(the file's entries, None), ({}, None) when it does not exist, ({}, why) when it cannot be used."""
    from ..storage import safe_files

    try:
        data = safe_files.load_json(safe_files.read_bounded(path, ESTIMATES_FILE_CAP), max_depth=4)
    except FileNotFoundError:
        return {}, None
    except (OSError, ValueError, safe_files.UnsafePathError) as exc:
        return {}, f"memory estimates file {plain(path)} unreadable ({exc}); it is ignored"
    if not isinstance(data, dict) or data.get("format") != ESTIMATES_FORMAT \
            or not isinstance(data.get("estimates"), dict):
        return {}, f"memory estimates file {plain(path)} is not one `python -m flamby_mpi check` writes; it is ignored"
    return data["estimates"], None


def record_estimate(path: Path, key: str, estimate: Estimate, **details) -> None:
    """Adds (or replaces) the check's estimate for `key` in the estimates file, atomically."""
    from ..storage import safe_files

    entries, _ = read_estimates(path)
    entries = dict(entries)
    entries[key] = {**{k: getattr(estimate, k) for k in _FIELDS}, "measured_unix": time.time(), **details}
    text = json.dumps({"format": ESTIMATES_FORMAT, "estimates": entries}, indent=1, sort_keys=True)
    safe_files.write_atomic(path.parent, path.name, text.encode())


# Measured by `python -m flamby_mpi check` on stand-in data (scripts/standin_data.py) at FLamby's batch
# size where the stand-in has that many samples (else at the batch given first, scaled up by
# builtin_estimate), the client, GPU and step figures a quarter up, the rest rounded up to 16 MiB;
# synthetic as measured (its data is generated, its size known). docs/benchmarks/memory_estimates.md
# has the commands and the measured figures.
# dataset -> (batch size measured at, client, imports, shared, model, GPU, one step), sizes in MiB.
BUILTIN_MIB: Dict[str, Tuple[int, int, int, int, int, int, int]] = {
    "synthetic": (16, 288, 288, 256, 1, 16, 16),
    "fed_heart_disease": (4, 464, 368, 288, 1, 16, 16),
    "fed_tcga_brca": (8, 464, 368, 288, 1, 16, 16),
    "fed_ixi": (2, 1232, 544, 400, 2, 336, 608),
    "fed_isic2019": (64, 6576, 384, 336, 16, 4960, 6096),
    "fed_camelyon16": (2, 784, 368, 288, 2, 80, 352),  # the stand-in's centres have 2 training slides
    "fed_kits19": (2, 912, 336, 288, 118, 480, 368),
    "fed_lidc_idri": (1, 8144, 352, 288, 174, 8048, 7456),
}


def builtin_estimate(name: str, batch_size: int) -> Optional[Estimate]:
    """The built-in figure of a dataset for this batch size: the step's part (activations, which
    grow with the batch) scaled from the batch measured; on a GPU never below the parameters, their
    gradients and two optimizer moments."""
    if name not in BUILTIN_MIB:
        return None
    batch, client, imports, shared, model, gpu, step = BUILTIN_MIB[name]
    scale = batch_size / batch
    scaled = f", its step scaled to batch size {batch_size}" if batch_size != batch else ""
    return Estimate(client_bytes=int((client + step * (scale - 1)) * MIB), imports_bytes=imports * MIB,
                    shared_bytes=shared * MIB, model_bytes=model * MIB,
                    gpu_bytes=int(max(gpu * scale, 4 * model) * MIB),
                    source=f"the built-in figure for {name} (measured at batch size {batch}{scaled}; "
                           "`python -m flamby_mpi check` measures this run's own)")


def find_estimate(plan, configured_file: Optional[str]) -> Tuple[Optional[Estimate], Optional[str]]:
    """(the estimate for this plan, a note about the estimates file or None)."""
    path = estimates_file(configured_file)
    entries, note = read_estimates(path)
    recorded = _entry_estimate(entries.get(estimate_key(plan)), path)
    if recorded is not None:
        return recorded, note
    return builtin_estimate(plan.dataset.name, plan.largest_batch), note


# ---- what this process sees ---------------------------------------------------------------------

def mem_available_bytes(meminfo: str = "/proc/meminfo") -> Optional[int]:
    try:
        with open(meminfo) as lines:
            for line in lines:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    return None


def status_bytes(field: str, status: str = "/proc/self/status") -> Optional[int]:
    """A size field of /proc/self/status (VmRSS, VmHWM, RssAnon, RssFile, RssShmem) in bytes."""
    try:
        with open(status) as lines:
            for line in lines:
                if line.startswith(field + ":"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    return None


def private_bytes() -> int:
    """This process's anonymous resident memory (its own), else its whole resident size."""
    anon = status_bytes("RssAnon")
    return anon if anon is not None else status_bytes("VmRSS") or 0


def gpu_reading(device) -> Tuple[Optional[str], str, Optional[int]]:
    """(an identity of the GPU `device` that is the same for every process on the host whatever its
    CUDA_VISIBLE_DEVICES, its name for messages, its free bytes); (None, "", None) for a CPU."""
    if getattr(device, "type", "cpu") != "cuda":
        return None, "", None
    import torch

    index = device.index or 0
    free, _total = torch.cuda.mem_get_info(index)
    uuid = getattr(torch.cuda.get_device_properties(index), "uuid", None)
    visible = os.environ.get("CUDA_VISIBLE_DEVICES")
    identity = str(uuid) if uuid is not None else f"{visible}:{index}" if visible is not None else f"cuda:{index}"
    return identity, f"cuda:{index}", int(free)


def process_state(ranks: Sequence[int], host: str, device=None) -> ProcessState:
    gpu, name, free = gpu_reading(device) if device is not None else (None, "", None)
    return ProcessState(tuple(ranks), host, mem_available_bytes(), private_bytes(), gpu, name, free)


def as_record(state: ProcessState) -> dict:
    return asdict(state)


def from_record(record: dict) -> ProcessState:
    return ProcessState(**{**record, "ranks": tuple(record["ranks"])})


# ---- the start-up hook ----------------------------------------------------------------------------

def at_startup(plan, transport, say) -> int:
    """Every rank, before any data is loaded and before the output directory is taken: 0 when the
    job fits (or device_args.memory_check is false, or no estimate exists), else 2 on every rank,
    rank 0 having said why once. Two collectives, reached by every rank: the states are gathered,
    then rank 0's verdict (its estimate, its reading of the file) is broadcast, so that hosts that
    see different estimates files still agree. `say(text)` shows a note (rank 0 only)."""
    from ..exit import failures

    if not plan.devices.memory_check:
        return 0
    device = None
    if plan.devices.using_gpu and transport.rank != 0:
        device = transport.device(plan, lambda text: None)  # the device's own warning comes later, once
    state = process_state(transport.local_ranks, transport.host, device)
    records = transport.allgather(as_record(state))
    verdict = None
    if transport.rank == 0:
        states = [from_record(r) for r in records]
        estimate, note = find_estimate(plan, plan.devices.memory_estimates_file)
        if plan.dataset.needs_cuda and any(s.gpu is None for s in states if any(r != 0 for r in s.ranks)):
            # A client without a GPU cannot train this dataset at all: that is the message it gives
            # next (its device check), not a memory figure for a CPU run that cannot happen.
            estimate = None
        if note:
            say(note)
        decided = decide(states, estimate, plan.num_clients) if estimate is not None else Verdict()
        for text in decided.notes:
            say(text)
        verdict = decided.refusal
    refusal = transport.agree(verdict)
    if refusal is None:
        return 0
    if transport.rank == 0:
        failures.report(failures.message(refusal, "every rank"))
    return failures.EXIT_USER_ERROR
