"""Many runs of the real entry point in one process: `[mpiexec -n N] python -m support.many_runs PLAN`.

Starting a rank (Python, torch, FedML) costs far more than a short test run, so a test that needs
many short runs can start its ranks once and run them all here, one after another. Each run is
`flamby_mpi.cli.main(argv)`, exactly what `python launch_client.py ARGV` runs, so this driver knows
nothing of the CLI's internals.

PLAN is a JSON file: {"runs": [{"name": NAME, "argv": [...], "cwd": DIR}, ...], "report": PATH}
("cwd", optional: the working directory of that run on every rank, as a separate job's). Rank 0 (the
only process when started without mpiexec) rewrites PATH after every run:
{"runs": [{"name": NAME, "codes": [exit code of rank 0, 1, ...], "seconds": S, "problems": [...]}]}.

Between two runs under MPI every rank checks that the run left nothing behind that could reach into
the next one: no FedML receive thread or watchdog still alive, and no point-to-point message still
waiting to be received (it would be taken by the next run's receive thread). The ranks then agree on
what they found; a run with a problem, or whose ranks did not all exit 0, ends the sequence (exit 1).
A run that fails inside FedML's loop aborts the whole MPI job, as it does under launch_client.py.
"""
from __future__ import annotations

import json
import os
import sys
import threading
import time
from pathlib import Path

from flamby_mpi.cli import main as launch

# Threads a run starts that must be gone when main() returns: FedML's MPI receive thread (or a
# subclass of it) would take the next run's messages, and a run's watchdog could end a later run.
_RUN_THREAD_CLASSES = {"MPIReceiveThread"}
_RUN_THREAD_NAMES = {"ServerReceiveThread", "ClientReceiveThread", "flamby-mpi-watchdog", "checkpoint-manifests"}
_RUN_THREAD_PREFIXES = ("checkpoint-writer-",)  # a rank's checkpoint worker (flamby_mpi/checkpoints/staging.py)
_THREAD_GRACE_S = 3.0
_PROBE_S = 0.2


def _belongs_to_a_run(thread: threading.Thread) -> bool:
    return (thread.name in _RUN_THREAD_NAMES or thread.name.startswith(_RUN_THREAD_PREFIXES)
            or any(c.__name__ in _RUN_THREAD_CLASSES for c in type(thread).__mro__))


def _threads_left() -> list:
    end = time.monotonic() + _THREAD_GRACE_S
    while True:
        left = [f"{type(t).__name__} {t.name!r}" for t in threading.enumerate()
                if t.is_alive() and _belongs_to_a_run(t)]
        if not left or time.monotonic() > end:
            return [f"thread still running after main() returned: {t}" for t in left]
        time.sleep(0.05)


def _mpi():
    """mpi4py's MPI module when a run initialised MPI (and nothing finalised it), else None."""
    module = sys.modules.get("mpi4py.MPI")
    if module is None or not module.Is_initialized() or module.Is_finalized():
        return None
    return module


def _stray_messages(MPI) -> list:
    """Point-to-point messages sent to this rank during the run and never received."""
    comm = MPI.COMM_WORLD
    comm.Barrier()  # every rank has returned from main(): nothing of this run is still being sent
    found = []
    end = time.monotonic() + _PROBE_S
    while time.monotonic() < end:
        status = MPI.Status()
        if comm.Iprobe(source=MPI.ANY_SOURCE, tag=MPI.ANY_TAG, status=status):
            found.append(f"message from rank {status.Get_source()} (tag {status.Get_tag()}) never received")
            comm.recv(source=status.Get_source(), tag=status.Get_tag())  # report each one once
        else:
            time.sleep(0.01)
    return found


def _run_one(argv) -> tuple:
    start = time.monotonic()
    try:
        code = launch(argv)
    except SystemExit as exc:  # argparse errors
        code = exc.code if isinstance(exc.code, int) else 1
    seconds = time.monotonic() - start
    problems = _threads_left()
    MPI = _mpi()
    if MPI is None:
        return [code], seconds, problems
    rank = MPI.COMM_WORLD.Get_rank()
    problems += _stray_messages(MPI)
    gathered = MPI.COMM_WORLD.allgather((code, [f"rank {rank}: {p}" for p in problems]))
    return [c for c, _ in gathered], seconds, [p for _, ps in gathered for p in ps]


def main(args=None) -> int:
    args = sys.argv[1:] if args is None else args
    if len(args) != 1:
        print("usage: [mpiexec -n N] python -m support.many_runs PLAN.json", file=sys.stderr)
        return 2
    plan = json.loads(Path(args[0]).read_text())
    report = {"runs": []}
    for run in plan["runs"]:
        if "cwd" in run:
            os.chdir(run["cwd"])
        codes, seconds, problems = _run_one(run["argv"])
        MPI = _mpi()
        if MPI is None or MPI.COMM_WORLD.Get_rank() == 0:
            report["runs"].append({"name": run["name"], "codes": codes, "seconds": round(seconds, 2),
                                   "problems": problems})
            Path(plan["report"]).write_text(json.dumps(report, indent=1))
            print(f"[many_runs] {run['name']}: exit codes {codes}, {seconds:.1f} s"
                  + "".join(f"\n[many_runs]   {p}" for p in problems), flush=True)
        if problems or any(code != 0 for code in codes):
            return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
