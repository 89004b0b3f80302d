"""`python -m flamby_mpi check --cf CONFIG [--set section.key=value ...]`: is this run ready to queue?

Run on a login node (with the job's Python environment) before a job waits in a queue for hours and
then fails on its compute nodes, which are often offline. It checks, in the order a run needs them:
1. the config and the plan, as every rank will make it (FLamby and the dataset's extras import:
   the dataset module and everything it imports);
2. every listed centre's data: FLamby's FedClass built for its train and test sets, one sample read
   from each (a missing download or preprocessing step names FLamby's commands for it);
3. the model: the dataset's Baseline built, and one training step (forward, backward, optimizer
   step) on one batch of the first listed centre, measuring memory.

Memory per rank is measured, not guessed: this process's peak resident set size (Linux VmHWM,
reset just before the step through /proc/self/clear_refs) once it has imported torch and FLamby,
loaded one centre and taken one step is what a client rank holds, besides FedML's and MPI's own.
The server holds the imports, the global model and one received copy per client: its estimate is
the resident size before any data was loaded plus the model's bytes times (clients + 2). Where the
peak cannot be reset (not Linux), torch's count replaces the step's peak: the parameters, their
gradients, the optimizer's state and every module's output in the forward pass.

Prints one table and exits 0 when everything is ready, 2 otherwise (or on a user mistake).
scripts/submit.py runs it before sbatch/qsub (--skip-check to leave it out).
"""
from __future__ import annotations

import argparse
import socket
import sys
import time
from dataclasses import dataclass
from typing import List, Optional, Tuple

from .config import load_config, require_resume_target
from .exit.errors import UserError
from .exit.failures import by_text, fail
from .runtime import memory_fit

MIB = 1024 * 1024


@dataclass
class CentreCheck:
    centre: int
    train: Optional[int] = None  # samples, once built
    test: Optional[int] = None
    sample: str = ""  # the first training sample's shapes
    problem: Optional[str] = None
    seconds: float = 0.0


@dataclass
class MemoryEstimate:
    """Bytes one rank of this run needs, and how that was found."""
    client_bytes: int
    server_bytes: int
    model_bytes: int
    step_bytes: int  # the training step's own peak over what the process held before it
    method: str  # "peak RSS" or "torch's count"
    batch: int
    centre: int
    # What the run's memory check (runtime/memory_fit.py) sums per host: each rank's private part,
    # the libraries' shared pages once, and on a GPU torch's count of the step's tensors.
    fit: Optional[memory_fit.Estimate] = None


def _status_kib(field: str) -> Optional[int]:
    try:
        with open("/proc/self/status") as status:
            for line in status:
                if line.startswith(field + ":"):
                    return int(line.split()[1])
    except OSError:
        pass
    return None


def _reset_peak() -> bool:
    """Resets this process's peak RSS (VmHWM) to its current RSS; False where that cannot be done."""
    try:
        with open("/proc/self/clear_refs", "w") as clear:
            clear.write("5")
        return _status_kib("VmHWM") is not None
    except OSError:
        return False


def _rss_bytes() -> int:
    kib = _status_kib("VmRSS")
    if kib is not None:
        return kib * 1024
    import resource  # no /proc: the peak so far is the best figure there is

    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak if sys.platform == "darwin" else peak * 1024


def _tensor_bytes(tensors) -> int:
    return sum(t.numel() * t.element_size() for t in tensors)


def _sample_shapes(sample) -> str:
    parts = sample if isinstance(sample, (tuple, list)) else (sample,)
    shapes = []
    for part in parts[:2]:
        shape = getattr(part, "shape", None)
        if shape is None:
            shapes.append(type(part).__name__)
        else:  # a 0-d tensor (Fed-Camelyon16's label) has no dimension to show
            shapes.append("x".join(map(str, shape)) or "scalar")
    return " / ".join(shapes)


def check_centre(plan, centre: int) -> CentreCheck:
    """FLamby's train and test sets of one centre built, and one sample of each read."""
    result = CentreCheck(centre)
    tick = time.perf_counter()
    try:
        train = plan.dataset.center_dataset(centre, train=True)
        result.train = len(train)
        test = plan.dataset.center_dataset(centre, train=False)
        result.test = len(test)
        if result.train == 0:
            result.problem = "no training samples"
        else:
            result.sample = _sample_shapes(train[0])
            if result.test:
                test[0]
    except UserError as error:  # FLamby's data missing: what, where, and the commands (the guard's)
        result.problem = str(error)  # with its HINT line
    except Exception as exc:  # noqa: BLE001 - reported in the table, the check goes on with the next
        result.problem = f"{type(exc).__name__}: {exc}"
    result.seconds = time.perf_counter() - tick
    return result


def estimate_memory(plan, centre: int) -> MemoryEstimate:
    """One client's memory, measured by one training step on one batch of `centre` (see the module)."""
    import torch

    from .federation.training import LocalLearner, make_loader
    from .runtime import optim_without_dynamo

    optim_without_dynamo.install()  # as the driver does
    before_data = _rss_bytes()
    anon_kib = _status_kib("RssAnon")  # the private part of it (the libraries' pages are shared)
    before_data_private = before_data if anon_kib is None else anon_kib * 1024
    train = plan.dataset.center_dataset(centre, train=True)
    batch = min(plan.batch_size, len(train))
    # The dataset's collate_fn, as the clients' loaders (Fed-Camelyon16 pads its bags of tiles there).
    loader = make_loader(train, batch, shuffle=False, num_workers=0, collate_fn=plan.dataset.collate_fn)
    torch.manual_seed(plan.seed)
    model = plan.dataset.baseline()
    model_bytes = _tensor_bytes(model.state_dict().values())
    learner = LocalLearner(model, plan.optimizer_class, plan.learning_rate, plan.dataset.baseline_loss(), loader,
                           torch.device("cpu"), None, optimizer_kwargs=plan.optimizer_kwargs())
    activations: List[int] = []

    def count(module, inputs, output):
        if not list(module.children()):  # leaf modules: their outputs are the activations kept
            outputs = output if isinstance(output, (tuple, list)) else (output,)
            activations.append(_tensor_bytes(o for o in outputs if isinstance(o, torch.Tensor)))

    hook = torch.nn.modules.module.register_module_forward_hook(count)
    held = _rss_bytes()
    measured = _reset_peak()
    try:
        learner.train_steps(1)
    finally:
        hook.remove()
    state = learner.optimizer.state.values()
    optimizer_bytes = _tensor_bytes(v for s in state for v in s.values() if isinstance(v, torch.Tensor))
    counted = 2 * model_bytes + optimizer_bytes + sum(activations)  # torch's count of the step's tensors
    peak_kib = _status_kib("VmHWM") if measured else None
    if peak_kib is not None:
        client, method = peak_kib * 1024, "peak RSS"
        step = max(0, client - held)
    else:
        step = counted
        client, method = held + step, "torch's count"
    server = before_data + model_bytes * (plan.num_clients + 2)
    # Libraries' pages (file-backed) are shared by the ranks of a host; what is left is each rank's own.
    file_kib, shmem_kib = _status_kib("RssFile"), _status_kib("RssShmem")
    shared = (file_kib + (shmem_kib or 0)) * 1024 if file_kib is not None else 0
    fit = memory_fit.Estimate(client_bytes=max(0, client - shared), imports_bytes=before_data_private,
                              shared_bytes=shared, model_bytes=model_bytes, gpu_bytes=counted,
                              source=f"this check ({method}, centre {centre}, batch size {batch})")
    return MemoryEstimate(client, server, model_bytes, step, method, batch, centre, fit)


def _mib(n: int) -> str:
    """A size as people read it: MiB, or KiB and bytes for small models."""
    if n >= MIB:
        return f"{n / MIB:,.1f} MiB"
    return f"{n / 1024:,.1f} KiB" if n >= 1024 else f"{n} bytes"


def table(plan, centres: List[CentreCheck], memory: Optional[MemoryEstimate], memory_problem: Optional[str],
          ranks_per_host: Optional[int] = None, recorded: str = "") -> str:
    lines = [f"flamby-mpi check: {plan.dataset.name}, centres {', '.join(map(str, plan.centres))} "
             f"(mpirun -np {plan.world_size}), batch size {plan.batch_size}"]
    rows = [("centre", "train", "test", "first sample", "status")]
    for c in centres:
        status = "ok" if c.problem is None else "FAILED"
        rows.append((str(c.centre), "-" if c.train is None else str(c.train), "-" if c.test is None else str(c.test),
                     c.sample or "-", status))
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    for i, row in enumerate(rows):
        lines.append("  ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True)).rstrip())
        if i == 0:
            lines.append("  ".join("-" * w for w in widths))
    # FLamby's data missing is one problem for every centre: said once
    for problem, numbers in by_text((c.centre, c.problem) for c in centres if c.problem is not None).items():
        lines.append(f"{'centre' if len(numbers) == 1 else 'centres'} {', '.join(map(str, numbers))}: {problem}")
    if memory is not None:
        lines.append(f"memory per rank ({memory.method}, one training step on {memory.batch} samples of centre "
                     f"{memory.centre}; FedML's and MPI's own memory not counted):")
        lines.append(f"  client rank  {_mib(memory.client_bytes)} (the step itself: {_mib(memory.step_bytes)})")
        lines.append(f"  server rank  {_mib(memory.server_bytes)} (imports, and the model's "
                     f"{_mib(memory.model_bytes)} times {plan.num_clients} clients + 2)")
        fit = memory.fit
        if fit is not None:
            clients = plan.num_clients
            lines.append(f"  what the run's memory check counts per host: each rank's private memory (server "
                         f"{_mib(fit.rank_bytes(0, clients))}, client {_mib(fit.rank_bytes(1, clients))}, "
                         f"MPI and FedML included), the libraries' {_mib(fit.shared_bytes)} once, plus at most "
                         f"{memory_fit.MARGIN:.0%} (none on what the ranks hold when they check); "
                         f"a client on a GPU: {_mib(fit.gpu_bytes)} of tensors + "
                         f"{_mib(memory_fit.CUDA_CONTEXT_BYTES)} for CUDA")
            every = fit.host_bytes([(0,)] + [(r,) for r in range(1, clients + 1)], clients)
            lines.append(f"  one host running every rank: {_mib(every)}")
            if ranks_per_host:
                first = fit.host_bytes([(r,) for r in range(min(ranks_per_host, plan.world_size))], clients)
                only_clients = fit.host_bytes([(1,)] * min(ranks_per_host, clients), clients)  # the job has no more
                lines.append(f"  a host running {ranks_per_host} rank(s): {_mib(first)} with the server, "
                             f"{_mib(only_clients)} with clients only")
        if recorded:
            lines.append(f"  {recorded}")
    elif memory_problem is not None:
        lines.append(f"model: {memory_problem}")
    return "\n".join(lines)


def record(plan, memory: MemoryEstimate) -> str:
    """Writes this check's estimate where the run's memory check reads it; says where (or why not)."""
    path = memory_fit.estimates_file(plan.devices.memory_estimates_file)
    try:
        memory_fit.record_estimate(path, memory_fit.estimate_key(plan), memory.fit, centre=memory.centre,
                                   method=memory.method, host=socket.gethostname())
    except (OSError, UserError) as exc:
        return (f"not recorded for the run's memory check: {path}: {exc} (set device_args.memory_estimates_file "
                "to a writable file the compute nodes read)")
    return f"recorded for the run's memory check in {path}"


def output_directory_line(directory, resume: bool, overwrite: bool) -> Tuple[bool, str]:
    """(ready, the table's line) for the run's output directory, when the config or --run_id names
    it: what taking it would refuse (an earlier run there without --resume or --overwrite, --resume
    where no run is, files of a run's names that no run left), looked at without making anything."""
    from .storage import run_directory

    if directory is None:
        return True, "output directory: runs/<run id>, the run id not known yet (no --run_id): not looked at"
    problem = run_directory.refusal_ahead(directory, resume, overwrite)
    if problem is None:
        return True, f"output directory: {directory}: ok"
    return False, f"output directory: {problem}"


def _needs_a_gpu_this_host_lacks(plan) -> bool:
    """A dataset whose FLamby code calls .cuda() (Fed-LIDC-IDRI), checked on a host without a GPU."""
    if not plan.dataset.needs_cuda:
        return False
    import torch

    return not torch.cuda.is_available()


def run_check(config_path: str, overrides: List[str], ranks_per_host: Optional[int] = None,
              run_id: Optional[str] = None, resume: bool = False, overwrite: bool = False) -> Tuple[int, str]:
    """(exit code, the table) for this config and these --set values (and the launcher's --run_id,
    --resume, --overwrite, for the output directory). Raises UserError for a config or plan the
    ranks would refuse."""
    config = load_config(config_path, overrides)
    require_resume_target(config, run_id, resume)  # as the launcher refuses it, before the queue wait
    try:
        from .plan import make_plan  # torch, and the dataset's module (FLamby and its extras)
    except ImportError as exc:
        raise UserError(f"the check needs the job's Python environment (torch, FLamby): {exc}",
                        hint="activate the environment the job runs in (. .venv/bin/activate), or "
                             "skip the check (scripts/submit.py --skip-check)") from None
    plan = make_plan(config)
    run_id = run_id or config.common_args.run_id
    if run_id is not None:
        plan = plan.with_run_id(run_id)
    directory = plan.output_dir if plan.output_dir is not None else plan.configured_output_dir
    directory_ready, directory_line = output_directory_line(directory, resume, overwrite)
    memory, memory_problem, gpu_elsewhere = None, None, _needs_a_gpu_this_host_lacks(plan)
    first = plan.centres[0]
    if gpu_elsewhere:  # a login node without a GPU: the data can still be checked, the step cannot run
        memory_problem = (f"memory per rank not measured: one training step needs a GPU, which this host does "
                          f"not have ({plan.dataset.needs_cuda}); the run checks that every client rank has one "
                          f"before it starts")
    else:
        try:
            memory = estimate_memory(plan, first)
        except UserError:
            pass  # the first centre's data: its row says what is missing
        except Exception as exc:  # noqa: BLE001 - a model that cannot take a step is a finding
            memory_problem = f"one training step failed: {type(exc).__name__}: {exc}"
    recorded = record(plan, memory) if memory is not None and memory.fit is not None else ""
    centres = [check_centre(plan, c) for c in plan.centres]
    ready = ((memory is not None or gpu_elsewhere) and all(c.problem is None for c in centres)
             and directory_ready)
    text = table(plan, centres, memory, memory_problem, ranks_per_host, recorded) + "\n" + directory_line
    return (0 if ready else 2), text


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m flamby_mpi check",
        allow_abbrev=False,  # --rank (a launcher option) was taken for --ranks-per-host
        description="Check on a login node that a run is ready to queue: every listed centre's data "
                    "readable, the dataset's extras installed, and memory per rank from one training "
                    "step on one batch. Exit 0: ready; 2: not (the table says what).")
    parser.add_argument("--cf", required=True, metavar="CONFIG", help="the run's YAML config")
    parser.add_argument("--set", action="append", default=[], metavar="SECTION.KEY=VALUE",
                        help="override one config key, as launch_client.py does; repeatable")
    parser.add_argument("--run_id", default=None, metavar="ID",
                        help="the run's id, as given to launch_client.py: its output directory is looked at too")
    ways = parser.add_mutually_exclusive_group()
    ways.add_argument("--resume", action="store_true", help="as launch_client.py's: the run continues a run there")
    ways.add_argument("--overwrite", action="store_true",
                      help="as launch_client.py's: the run replaces an earlier run there")
    parser.add_argument("--ranks-per-host", type=int, default=None, metavar="K",
                        help="also print what a host running K ranks of the job needs (scripts/submit.py "
                             "passes the ranks per node it knows)")
    return parser


def main(argv: Optional[List[str]] = None) -> int:
    parser = build_parser()
    args = parser.parse_args(list(sys.argv[1:] if argv is None else argv))
    if args.ranks_per_host is not None and args.ranks_per_host < 1:
        parser.error("--ranks-per-host must be at least 1")
    try:
        code, text = run_check(args.cf, args.set, args.ranks_per_host, args.run_id, args.resume, args.overwrite)
    except UserError as error:
        return fail(str(error), error.exit_code)
    print(text, flush=True)
    return code


if __name__ == "__main__":
    sys.exit(main())
