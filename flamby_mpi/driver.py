"""The one driver of a run, whatever carries its messages.

`run(plan, transport)` does the same steps for every backend:
1. agree on the run id (rank 0's timestamp when none was given) and complete the plan; refuse,
   before anything is made, what cannot run (the memory check; a GPU-only dataset's clients
   without a GPU); take the output directory (flamby_mpi.storage.run_directory: its lock, no
   other run's files in it);
2. set up this rank's logging, torch threads and device; rank 0 shows the plan and
   writes config.yaml;
3. preflight: build the roles this process plays (the ServerRun on rank 0, a
   ClientRun per client rank) and compare notes with every rank, so that a missing
   file on any centre ends every rank with one message before training starts;
4. hand the roles to the transport for the exchanges (flamby_mpi.federation.protocol);
5. rank 0 prints the final metrics, then writes the results and report.png.
The transport is FedMLTransport (FedML's cross-silo managers over MPI, one rank per
process) or InProcessTransport (every rank in this process, no MPI). Any failure
goes through flamby_mpi.exit.failures: one message, and the whole job ends; a full disk
(safe_files.StorageError) ends it with exit 74 and the command that resumes the run.
"""
from __future__ import annotations

import logging
import os
import secrets
import shlex
import signal
import sys
import time
import traceback
from datetime import datetime
from pathlib import Path
from typing import List, Optional, Tuple

from .checkpoints import checkpoint
from .config import run_id_problem
from .exit import failures
from .exit.errors import UserError
from .exit.preemption import StopRequest, exit_code, signal_name
from .outputs.logs import SHOWN_WHEN_QUIET
from .plan import RunPlan
from .runtime import memory_fit, startup
from .storage import run_directory, safe_files


def new_run_id() -> str:
    """A timestamp and a random suffix: two runs started in the same second get two directories."""
    return f"{datetime.now().strftime('%Y%m%d-%H%M%S')}-{secrets.token_hex(2)}"


def torch_threads(plan: RunPlan) -> int:
    """Torch threads per rank: the configured number, else this host's cores shared by the ranks."""
    return plan.cpu_threads or max(1, (os.cpu_count() or 1) // plan.world_size)


def run(plan: RunPlan, transport) -> int:
    """Runs this process's part of the job. Returns its exit code; on MPI a failure aborts the job."""
    at = failures.where(transport.rank, transport.host)
    completed = [plan]  # the plan once it has its run id: a full disk's message names the resume command
    try:
        code = _run(plan, transport, at, completed)
        transport.finish()
        return code
    except UserError as error:
        # A full disk (safe_files.StorageError, exit 74) says how to go on from here; an error a
        # client sent in its reply (server.PeerError) names that client's rank, not this one.
        if error.exit_code == safe_files.EXIT_STORAGE and completed[0].run_id is not None:
            error.hint = storage_hint(completed[0])
        return failures.fail(str(error), error.exit_code, getattr(error, "at", None) or at, end=transport.abort)
    except KeyboardInterrupt:  # Ctrl-C in a run in process (the entry point ends a rank itself)
        return failures.fail("interrupted; ending the whole job", exit_code(signal.SIGINT), at,
                             end=transport.abort)
    except BaseException:  # noqa: BLE001 - any failure must end every rank, not hang them
        return failures.fail(failures.bug("failed"), failures.EXIT_FAILURE, at, end=transport.abort)
    finally:
        # The process's end would release the directory's lock too; a run in process (tests, a
        # notebook) may be followed by another in the same process.
        run_directory.release_all()


def _clients_without_a_gpu(plan: RunPlan, transport) -> int:
    """Every rank, before the output directory is taken: a dataset that trains only on a GPU (FLamby
    code that calls .cuda()) with a client rank on a host without one ends every rank with exit 2,
    rank 0 naming those ranks once, and nothing is made (the client's own check came after the
    directory was made, which then refused the corrected command as an interrupted run). One
    collective, taken by every rank or none (every rank has the same plan)."""
    if not plan.dataset.needs_cuda:
        return 0
    import torch

    lacking = [] if torch.cuda.is_available() else [rank for rank in transport.local_ranks if rank != 0]
    lacking = sorted(rank for found in transport.allgather(lacking) for rank in found)
    if not lacking:
        return 0
    if transport.rank == 0:
        problem = UserError(f"rank(s) {', '.join(map(str, lacking))} have no GPU: {plan.dataset.needs_cuda}",
                            hint="run on nodes with a GPU visible to every client rank (nvidia-smi)")
        failures.report(failures.message(str(problem), "every rank"))
    return failures.EXIT_USER_ERROR


def _run(plan: RunPlan, transport, at: str, completed: List[RunPlan]) -> int:
    import torch

    from .runtime import optim_without_dynamo

    optim_without_dynamo.install()  # torch.optim without torch._dynamo's import, which no rank uses

    from .outputs.logs import console_logger, setup_rank_logging

    if plan.run_id is None:  # every rank has the same config, so every rank takes this branch
        plan = plan.with_run_id(transport.agree(_first_run_id(plan) if transport.rank == 0 else None))
    completed[0] = plan
    # Before any data is loaded, and before the output directory is taken (a refused job leaves nothing).
    code = memory_fit.at_startup(plan, transport, _warning)
    if code:
        return code
    code = _clients_without_a_gpu(plan, transport)
    if code:
        return code
    claim = run_directory.claim(plan, transport)  # before any rank writes in the output directory
    if claim.code:
        return claim.code
    setup_rank_logging(plan.output_dir, transport.rank, plan.log_level, quiet=plan.quiet)
    console = console_logger()
    torch.set_num_threads(torch_threads(plan))  # in-process too: the same arithmetic, the same results
    device = transport.device(plan, console_logger().warning)
    if transport.rank == 0:
        console.info("run %s%s: %s", plan.run_id,
                     f" (in-process, {plan.num_clients} clients)" if plan.backend == "inprocess" else "",
                     ", ".join(f"{k}={v}" for k, v in plan.summary().items()))
        console.info("outputs in %s", plan.output_dir)
        safe_files.write_atomic(plan.output_dir, "config.yaml", plan.config_yaml().encode())  # the only writer
        logging.getLogger("flamby_mpi").info("resolved config:\n%s", plan.config_yaml())
    for note in claim.notes:
        console.warning("%s", note)

    transport.begin(plan, lambda reason: failures.fail(f"{reason}; ending the whole job",
                                                       failures.EXIT_FAILURE, at, end=transport.abort))
    server_run, client_runs, code = _preflight(plan, transport, device, console)
    if not code:
        code = _resume_or_start_afresh(plan, transport, server_run, client_runs, console)
    if code:
        transport.stop_watching()
        return code
    if server_run is not None:
        server_run.begin_telemetry()
    stop_request = _stop_on_signals(plan, transport, server_run, at)
    for role in [server_run, *client_runs]:
        if role is not None:
            role.stop_request = stop_request

    def first_round():
        server_run.start_first_round()
        startup.mark("first_message", server_run.first_round_at)
        ready = "ready in this process" if plan.backend == "inprocess" else "joined"
        if server_run.start_round >= plan.rounds:  # a finished run resumed: its final evaluation again
            console.info("all %d clients %s; all %d rounds were done, evaluating the final model",
                         plan.num_clients, ready, plan.rounds)
            return
        console.info("all %d clients %s; time to first round %.1f s", plan.num_clients, ready,
                     server_run.first_round_at - startup.process_start())

    transport.exchange(plan, server_run, client_runs, first_round, device)
    # Every rank that ran the exchanges, stopped early or not, takes part in this one collective.
    ranks = startup.gathered(transport.allgather(startup.rank_figures(transport.local_ranks, transport.host)))
    startup.dump_modules_if_asked(transport.rank)
    for client_run in client_runs:  # every rank is past the exchanges: the last cut is complete
        client_run.finish_checkpoints()
    stop_request.uninstall()
    stopped_by = next((role.stopped_by for role in [server_run, *client_runs] if role is not None), None)
    if stopped_by is not None:
        if server_run is not None:
            server_run.progress.end_line()
            console.warning("stopped by %s after round %d; checkpoint in %s. To continue: %s",
                            signal_name(stopped_by), server_run.rounds_completed,
                            checkpoint.round_dir(plan.output_dir, server_run.rounds_completed),
                            resume_command(plan), extra=SHOWN_WHEN_QUIET)
        return exit_code(stopped_by)
    if server_run is not None:
        _write_and_report(plan, server_run, transport.world_size, console, ranks)
    return 0


def _warning(text: str):
    print(f"flamby-mpi: warning: {text}", file=sys.stderr, flush=True)


def _first_run_id(plan: RunPlan) -> str:
    """Rank 0's run id when none was given: with --resume into common_args.output_dir, the id
    the checkpoint recorded; else a new timestamp."""
    output_dir = plan.configured_output_dir
    if plan.resume and output_dir:
        recorded = checkpoint.latest_recorded_run_id(Path(output_dir))
        if recorded is not None and run_id_problem(recorded) is None:
            return recorded
    return new_run_id()


def _resume_or_start_afresh(plan: RunPlan, transport, server_run, client_runs, console) -> int:
    """--resume: restore the roles from the newest checkpoint intact on every rank (0), or say
    why not, once, from rank 0 (exit code 2 on every rank). A fresh start has nothing to clear:
    run_directory.claim refused an earlier run's files or, with --overwrite, deleted them."""
    from .checkpoints import resume

    if not plan.resume:
        return 0
    try:
        resume.agree_and_restore(plan, transport, server_run, client_runs, console)
        if server_run is not None:
            # Before any training: from here on results.json can only be this run's own. Not earlier,
            # so that a refused --resume leaves a finished run's results as they were.
            run_directory.discard_final_outputs(plan.output_dir)
        return 0
    except UserError as error:
        if transport.rank == 0:
            failures.report(failures.message(str(error), "rank 0"))
        return failures.EXIT_USER_ERROR


def resume_command(plan: RunPlan) -> str:
    """What to run to continue this run: this command with --resume (and the run id it got)."""
    return _command_again(plan, "--resume")


def _program() -> List[str]:
    """How this process was started, as the user typed it (so that the command printed runs as
    printed from the same directory): launch_client.py by the path given, `python -m flamby_mpi`,
    or the flamby-mpi command; `python launch_client.py` for a run in process (tests, a notebook)."""
    first = sys.argv[0] if sys.argv else ""
    name = os.path.basename(first)
    if name == "launch_client.py":
        return ["python", first]
    if name == "__main__.py" and os.path.basename(os.path.dirname(first)) == "flamby_mpi":
        return ["python", "-m", "flamby_mpi"]
    if name == "flamby-mpi":
        return ["flamby-mpi"]
    return ["python", "launch_client.py"]


def _command_again(plan: RunPlan, flag: str) -> str:
    """This run's command again with flag (--resume or --overwrite) and the run id it got."""
    args = [a for a in sys.argv[1:] if a not in ("--resume", "--overwrite")]
    if "--run_id" not in args and not any(a.startswith("--run_id=") for a in args):
        args += ["--run_id", plan.run_id]
    command = " ".join(shlex.quote(a) for a in [*_program(), *args, flag])
    if plan.backend == "inprocess":
        return command
    if "--rank" in args:
        return f"every rank's own command with {flag}, e.g. {command}"
    command = f"mpirun -np {plan.world_size} {command}"
    job = os.environ.get("SLURM_JOB_ID") or os.environ.get("PBS_JOBID")
    if job:  # the job scripts resume (or start over) by themselves when the scheduler restarts the job
        return f"requeue job {job} (scripts/slurm_job.sh and pbs_job.sh go on by themselves), or run {command}"
    return command


def storage_hint(plan: RunPlan) -> str:
    """What to do after a full disk (or quota, read-only mount, rights) stopped the run: resume
    from the last complete checkpoint this rank sees, else start over with --overwrite."""
    first = "free space on that file system (or fix its quota, mount or permissions), then "
    try:
        resumable = run_directory.newest_checkpoint(plan.output_dir) is not None
    except Exception:  # noqa: BLE001 - a hint must not keep the failure from every rank; resume says if it cannot
        resumable = True
    if resumable:
        return first + f"continue the run from its last checkpoint: {resume_command(plan)}"
    # The directory now holds an interrupted run: a plain re-run is refused, --overwrite starts over.
    why = ("checkpoints are off (common_args.checkpoint_every: 0), so there is nothing to resume from"
           if plan.checkpoint_every == 0 else "no checkpoint of it was complete yet")
    return first + f"start it over ({why}): {_command_again(plan, '--overwrite')}"


def _stop_on_signals(plan: RunPlan, transport, server_run, at: str) -> StopRequest:
    """SIGTERM/SIGINT from here on: stop at the next round boundary with a checkpoint."""
    def said(signum: int):
        if server_run is not None:
            server_run.console(f"{signal_name(signum)} received: stopping at the next round boundary with a "
                               f"checkpoint (at most {plan.preemption_grace_s:g} s)")

    def expired(signum: int):
        kept = server_run.written_cuts[-1] if server_run is not None and server_run.written_cuts else None
        failures.fail(f"{signal_name(signum)}: the job could not stop at a round boundary within "
                      f"{plan.preemption_grace_s:g} s (common_args.preemption_grace_s); "
                      + (f"the last complete checkpoint, round {kept}, is kept"
                         if kept is not None else "the last complete checkpoint is kept")
                      + f". To continue: {resume_command(plan)}", exit_code(signum), at, end=transport.abort)
        os._exit(exit_code(signum))

    return StopRequest().install(plan.preemption_grace_s, said, expired)


def _preflight(plan: RunPlan, transport, device, console) -> Tuple[Optional[object], List, int]:
    """Builds the ServerRun/ClientRuns this process plays, then all ranks compare notes (one
    allgather). Returns (server run or None, client runs, 0) when every rank is ready, else
    (None, [], exit code) on every rank."""
    from .federation.client import ClientRun
    from .federation.server import ServerRun
    from .outputs.progress import Progress

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
        except Exception:  # noqa: BLE001 - every rank must hear of it (allgather below), with its traceback once
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
        for text, ranks in failures.by_text(user_problems).items():
            at = "every rank" if len(ranks) == plan.world_size else "rank " + ", ".join(map(str, ranks))
            failures.report(failures.message(text, at))
    bugs = len(user_problems) < len(problems)
    return None, [], failures.EXIT_FAILURE if bugs else failures.EXIT_USER_ERROR


def _telemetry_sinks(plan: RunPlan) -> list:
    if not plan.tensorboard:
        return []
    from .outputs.telemetry import TensorBoardSink

    return [TensorBoardSink(plan.output_dir / "tensorboard", plan.summary())]


def _write_and_report(plan: RunPlan, server_run, world_size: int, console, ranks):
    from .outputs.report import write_report
    from .outputs.results import format_table, write_results

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
    # The numbers first: a disk that fills while the files below are written loses none of them.
    server_run.progress.end_line()
    rounds = server_run.rounds_completed
    console.info("final metrics (%s, %s, %d round%s):\n%s", plan.dataset.name, plan.strategy, rounds,
                 "" if rounds == 1 else "s", format_table(server_run.final_metrics or {}), extra=SHOWN_WHEN_QUIET)
    checkpoints = server_run.checkpoint_summary()
    write_results(plan, server_run, timing, world_size,
                  extra={"backend": plan.backend, "checkpoints": checkpoints,
                         "resumed_from": server_run.resumed_from, "ranks": ranks})
    write_report(plan.output_dir)  # report.png; never fails the run (a warning at worst)
    console.info("done in %.1f s (startup %.1f s, training %.1f s); results in %s",
                 timing["total_s"], timing["startup_s"], timing["train_s"], plan.output_dir / "results.json")
