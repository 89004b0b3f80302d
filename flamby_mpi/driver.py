"""The one driver of a run, whatever carries its messages.

`run(plan, transport)` does the same steps for every backend:
1. agree on the run id (rank 0's timestamp when none was given) and complete the plan;
2. set up this rank's logging, torch threads and device; rank 0 shows the plan and
   writes config.yaml;
3. preflight: build the roles this process plays (the ServerRun on rank 0, a
   ClientRun per client rank) and compare notes with every rank, so that a missing
   file on any centre ends every rank with one message before training starts;
4. hand the roles to the transport for the exchanges (flamby_mpi.protocol);
5. rank 0 writes the results and report.png.
The transport is FedMLTransport (FedML's cross-silo managers over MPI, one rank per
process) or InProcessTransport (every rank in this process, no MPI). Any failure
goes through flamby_mpi.failures: one message, and the whole job ends.
"""
from __future__ import annotations

import logging
import os
import time
import traceback
from datetime import datetime
from typing import List, Optional, Tuple

from . import failures, startup
from .errors import UserError
from .plan import RunPlan


def new_run_id() -> str:
    return datetime.now().strftime("%Y%m%d-%H%M%S")


def torch_threads(plan: RunPlan) -> int:
    """Torch threads per rank: the configured number, else this host's cores shared by the ranks."""
    return plan.cpu_threads or max(1, (os.cpu_count() or 1) // plan.world_size)


def run(plan: RunPlan, transport) -> int:
    """Runs this process's part of the job. Returns its exit code; on MPI a failure aborts the job."""
    at = failures.where(transport.rank, transport.host)
    try:
        code = _run(plan, transport, at)
        transport.finish()
        return code
    except UserError as error:
        return failures.fail(str(error), failures.EXIT_USER_ERROR, at, end=transport.abort)
    except KeyboardInterrupt:
        return failures.fail("interrupted; ending the whole job", failures.EXIT_INTERRUPTED, at,
                             end=transport.abort)
    except BaseException:  # noqa: B902 - any failure must end every rank, not hang them
        return failures.fail(failures.bug("failed"), failures.EXIT_FAILURE, at, end=transport.abort)


def _run(plan: RunPlan, transport, at: str) -> int:
    import torch

    from . import optim_without_dynamo

    optim_without_dynamo.install()  # torch.optim without torch._dynamo's import (2 s, 80 MB a rank)

    from .logs import console_logger, setup_rank_logging
    from .results import atomic_write

    if plan.run_id is None:  # every rank has the same config, so every rank takes this branch
        plan = plan.with_run_id(transport.agree(new_run_id() if transport.rank == 0 else None))
    setup_rank_logging(plan.output_dir, transport.rank, plan.log_level, quiet=plan.quiet)
    console = console_logger()
    torch.set_num_threads(torch_threads(plan))  # in-process too: the same arithmetic, the same results
    device = transport.device(plan, console_logger().warning)
    if transport.rank == 0:
        console.info("run %s%s: %s", plan.run_id,
                     f" (in-process, {plan.num_clients} clients)" if plan.backend == "inprocess" else "",
                     ", ".join(f"{k}={v}" for k, v in plan.summary().items()))
        console.info("outputs in %s", plan.output_dir)
        atomic_write(plan.output_dir / "config.yaml", plan.config_yaml().encode())  # the only writer
        logging.getLogger("flamby_mpi").info("resolved config:\n%s", plan.config_yaml())

    transport.begin(plan, lambda reason: failures.fail(f"{reason}; ending the whole job",
                                                       failures.EXIT_FAILURE, at, end=transport.abort))
    server_run, client_runs, code = _preflight(plan, transport, device, console)
    if code:
        transport.stop_watching()
        return code

    def first_round():
        server_run.start_first_round()
        startup.mark("first_message", server_run.first_round_at)
        console.info("all %d clients %s; time to first round %.1f s", plan.num_clients,
                     "ready in this process" if plan.backend == "inprocess" else "joined",
                     server_run.first_round_at - startup.process_start())

    transport.exchange(plan, server_run, client_runs, first_round, device)
    ranks = startup.gathered(transport.allgather(startup.rank_figures(transport.local_ranks, transport.host)))
    startup.dump_modules_if_asked(transport.rank)
    if server_run is not None:
        _write_and_report(plan, server_run, transport.world_size, console, ranks)
    return 0


def _preflight(plan: RunPlan, transport, device, console) -> Tuple[Optional[object], List, int]:
    """Builds the ServerRun/ClientRuns this process plays, then all ranks compare notes (one
    allgather). Returns (server run or None, client runs, 0) when every rank is ready, else
    (None, [], exit code) on every rank."""
    from .client import ClientRun
    from .progress import Progress
    from .server import ServerRun

    server_run, client_runs, problem = None, [], None
    for rank in transport.local_ranks:
        try:
            if rank == 0:
                server_run = ServerRun(plan, console.info, Progress(plan.rounds, quiet=plan.quiet),
                                       _telemetry_sinks(plan))
                server_run.check_pooled_test_data()
            else:
                client_runs.append(ClientRun(plan, rank, device))
        except UserError as error:
            problem = (rank, True, str(error))
            break
        except Exception:  # noqa: B902 - reported below with its traceback, once
            problem = (rank, False, traceback.format_exc())
            break
    startup.mark("data")  # this rank's own loading, before it waits for the others
    problems = [p for p in transport.allgather(problem) if p is not None]
    if not problems:
        return server_run, client_runs, 0
    # A bug: the rank that hit it shows its traceback, once. User mistakes: rank 0 says each once,
    # naming the ranks it concerns (also when another rank hit a bug meanwhile).
    if problem is not None and not problem[1]:
        rank, _, text = problem
        failures.report(failures.message(f"failed while loading its data and model; ending the whole job. "
                                         f"Original error:\n{text}", failures.where(rank, transport.host)))
    user_problems = [(rank, text) for rank, is_user, text in problems if is_user]
    if transport.rank == 0:
        by_message = {}
        for rank, text in user_problems:
            by_message.setdefault(text, []).append(rank)
        for text, ranks in by_message.items():
            at = "every rank" if len(ranks) == plan.world_size else "rank " + ", ".join(map(str, ranks))
            failures.report(failures.message(text, at))
    bugs = len(user_problems) < len(problems)
    return None, [], failures.EXIT_FAILURE if bugs else failures.EXIT_USER_ERROR


def _telemetry_sinks(plan: RunPlan) -> list:
    if not plan.tensorboard:
        return []
    from .telemetry import TensorBoardSink

    return [TensorBoardSink(plan.output_dir / "tensorboard", plan.summary())]


def _write_and_report(plan: RunPlan, server_run, world_size: int, console, ranks):
    from .logs import SHOWN_WHEN_QUIET
    from .report import write_report
    from .results import format_table, write_results

    end = time.time()
    first = server_run.first_round_at or end
    started = startup.process_start()  # rank 0's process, as the OS started it
    timing = {"startup_s": first - started,
              "train_s": (server_run.last_round_at or end) - first,
              "total_s": end - started,
              "first_round_unix": first,
              "end_unix": end}
    for sink in server_run.sinks:
        sink.close()
    results = write_results(plan, server_run, timing, world_size, extra={"backend": plan.backend, "ranks": ranks})
    write_report(plan.output_dir)  # report.png; never fails the run (a warning at worst)
    server_run.progress.end_line()
    console.info("final metrics (%s, %s, %d rounds):\n%s", plan.dataset.name, results["strategy"],
                 server_run.rounds_completed, format_table(results["metrics"]), extra=SHOWN_WHEN_QUIET)
    console.info("done in %.1f s (startup %.1f s, training %.1f s); results in %s",
                 timing["total_s"], timing["startup_s"], timing["train_s"], plan.output_dir / "results.json")
