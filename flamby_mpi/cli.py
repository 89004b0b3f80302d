"""Command line: `mpirun -np N+1 python launch_client.py --cf CONFIG [--run_id ID] [--set s.k=v ...]`.

Order of work on every rank, so that mistakes end the job before anything waits:
1. parse the command line and validate the config (exit 2 on any problem);
2. resolve the dataset and the run plan, and check the MPI world size and
   --rank/--role against it, without any MPI communication (exit 2);
3. agree on the run id, import FedML, build this rank's server or client;
4. run FedML's cross-silo loop. From here a failure on any rank aborts the
   whole MPI job: the failing rank prints its traceback once, naming itself.
"""
from __future__ import annotations

import argparse
import os
import sys
import time
import traceback
from datetime import datetime
from pathlib import Path
from typing import List, Optional

PROCESS_START = time.time()

from . import __version__  # noqa: E402
from .config import describe_options, load_config  # noqa: E402
from .errors import RankMismatchError, UserError  # noqa: E402
from .launch import CLIENT, SERVER, World, check_world, mpi_world, rank_from_environment, singleton_world  # noqa: E402
from .launch.separate import join_world, reexec_under_mpiexec, should_reexec  # noqa: E402
from .launch.environment import warn_if_foreign_launcher  # noqa: E402

EXIT_USER_ERROR = 2
EXIT_FAILURE = 1
EXIT_INTERRUPTED = 130


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="launch_client.py",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        description="Run a FLamby cross-silo benchmark as a distributed job: rank 0 is a FedML "
                    "cross-silo server, rank k (1..N) trains FLamby centre k-1; they exchange "
                    "models over FedML's MPI communication manager.",
        epilog="examples:\n"
               "  mpirun -np 5 python launch_client.py --cf config/fedml_config.yaml\n"
               "  python launch_client.py --cf config/fedml_config.yaml --run_id r1 --rank 0 --role server\n"
               "  python launch_client.py --cf config/fedml_config.yaml --run_id r1 --rank 1 --role client"
               "  # ... to 4\n"
               "  mpirun -np 5 python launch_client.py --cf config/fed_heart_disease.yaml \\\n"
               "      --set data_args.data_path=/data/heart --set common_args.random_seed=42\n\n"
               "config keys (section.key), settable in the YAML file or with --set:\n"
               + describe_options(),
    )
    parser.add_argument("--cf", required=True, metavar="CONFIG",
                        help="YAML config in FedML's section layout (see config/)")
    parser.add_argument("--run_id", default=None,
                        help="name of this run (default: common_args.run_id, else a timestamp); "
                             "outputs go to runs/<run_id> unless common_args.output_dir is set")
    parser.add_argument("--set", action="append", default=[], metavar="SECTION.KEY=VALUE",
                        help="override one config key (value parsed as YAML); repeatable")
    parser.add_argument("--rank", type=int, default=None,
                        help="this process's rank. Without mpirun, start each rank in its own terminal "
                             "with the same --cf and --run_id: they meet through comm_args.rendezvous_dir. "
                             "Under mpirun it must equal the MPI rank")
    parser.add_argument("--role", choices=(SERVER, CLIENT), default=None,
                        help="server for rank 0, client for ranks 1..N (give with --rank)")
    parser.add_argument("--version", action="version", version=f"flamby-mpi {__version__}")
    return parser


def _print_user_error(error: UserError, rank: Optional[int]):
    # Under mpirun every rank finds the same problem: say it once, from rank 0,
    # unless the problem is this rank's own.
    if rank in (None, 0) or isinstance(error, RankMismatchError):
        print(f"flamby-mpi: error: {error}", file=sys.stderr, flush=True)


def main(argv: Optional[List[str]] = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    args = build_parser().parse_args(argv)
    if args.rank is not None and args.rank < 0:
        build_parser().error("--rank must be >= 0")
    announced_rank = rank_from_environment()
    try:
        overrides = list(args.set)
        if args.run_id is not None:
            overrides.append(f"common_args.run_id={_yaml_string(args.run_id)}")
        config = load_config(args.cf, overrides)
        from .plan import make_plan  # imports torch: after the cheap checks

        plan = make_plan(config)
        if config.comm_args.backend == "inprocess":
            if args.rank is not None or announced_rank not in (None, 0):
                raise UserError("comm_args.backend=inprocess runs every rank in this one process",
                                hint="start it once, without mpirun and without --rank/--role")
            return _run_inprocess(plan)
        if should_reexec(args.rank):
            # Started by hand in its own terminal: check what can be checked, then rerun
            # this same command under `mpiexec -n 1` so that MPI can connect the ranks.
            check_world(singleton_world(), plan.world_size, plan.dataset.name, args.rank, args.role)
            _require_run_id(config)
            reexec_under_mpiexec(argv)
        warn_if_foreign_launcher()  # before MPI_Init, which a foreign launcher breaks
        world = mpi_world()
        check_world(world, plan.world_size, plan.dataset.name, args.rank, args.role)
        if world.size == 1 and plan.world_size > 1:  # one process per terminal
            _require_run_id(config)
            world = join_world(plan, args.rank, config.common_args.run_id, _rendezvous_dir(config))
    except UserError as error:
        _print_user_error(error, announced_rank)
        return error.exit_code
    return _run(world, plan)


def _require_run_id(config):
    if config.common_args.run_id is None:
        raise UserError("--run_id is required when each rank is started on its own",
                        hint="give every rank the same --run_id, e.g. --run_id heart_disease")


def _output_dir(config) -> Path:
    return Path(config.common_args.output_dir or os.path.join("runs", config.common_args.run_id))


def _rendezvous_dir(config) -> Path:
    return Path(config.comm_args.rendezvous_dir or _output_dir(config) / "rendezvous")


def _yaml_string(text: str) -> str:
    import json

    return json.dumps(text)  # a JSON string is a YAML string: keeps ids like 001 or true as text


def _run(world: World, plan) -> int:
    """Steps 3-4. Returns 0 on success; on failure aborts the MPI job (never returns)."""
    try:
        code = _run_role(world, plan)
        world.finish()
        return code
    except UserError as error:
        _report_failure(f"flamby-mpi: error on rank {world.rank} ({world.role}, host {world.host}): {error}")
        world.abort(EXIT_USER_ERROR)
    except KeyboardInterrupt:
        if world.is_server:
            _report_failure("flamby-mpi: interrupted; ending the whole job")
        world.abort(EXIT_INTERRUPTED)
    except BaseException:  # noqa: B902 - any failure must end every rank, not hang them
        _report_failure(f"flamby-mpi: rank {world.rank} ({world.role}, host {world.host}) failed; "
                        f"ending the whole job. Original error:\n{traceback.format_exc()}")
        world.abort(EXIT_FAILURE)
    return EXIT_FAILURE  # not reached: Abort ends the process


def _report_failure(text: str):
    """Shown once on the console (stderr) and kept in the rank's log file."""
    import logging

    print(text, file=sys.stderr, flush=True)
    for handler in logging.getLogger().handlers:  # the rank's log file, once set up
        handler.handle(logging.makeLogRecord({"msg": text, "levelno": logging.ERROR,
                                              "levelname": "ERROR", "name": "flamby_mpi"}))


def _new_run_id() -> str:
    return datetime.now().strftime("%Y%m%d-%H%M%S")


def _torch_threads(plan) -> int:
    """Torch threads per rank: the configured number, else this host's cores shared by the ranks."""
    return plan.config.device_args.cpu_threads or max(1, (os.cpu_count() or 1) // plan.world_size)


def _agree_run_id(world: World, configured: Optional[str]) -> str:
    run_id = configured
    if run_id is None and world.is_server:
        run_id = _new_run_id()
    if configured is None:
        run_id = world.comm.bcast(run_id, root=0)
    return run_id


def _pick_device(plan, world: World):
    from .devices import pick_device
    from .logs import console_logger

    return pick_device(plan.config.device_args, world, console_logger().warning)


def _run_role(world: World, plan) -> int:
    import torch

    from . import fedml_bridge
    from .logs import console_logger, setup_rank_logging
    from .watchdog import Watchdog

    config = plan.config
    run_id = _agree_run_id(world, config.common_args.run_id)
    config.common_args.run_id = run_id
    output_dir = _output_dir(config)
    setup_rank_logging(output_dir, world.rank, config.tracking_args.log_level)
    console = console_logger()
    torch.set_num_threads(_torch_threads(plan))
    device = _pick_device(plan, world)
    if world.is_server:
        console.info("run %s: %s", run_id, ", ".join(f"{k}={v}" for k, v in plan.summary().items()))
        console.info("outputs in %s", output_dir)
        (output_dir / "config.yaml").write_text(config.to_yaml())
        import logging

        logging.getLogger("flamby_mpi").info("resolved config:\n%s", config.to_yaml())

    def expire(reason: str):
        _report_failure(f"flamby-mpi: rank {world.rank} ({world.role}, host {world.host}): {reason}; "
                        "ending the whole job")
        world.abort(EXIT_FAILURE)

    watchdog = Watchdog(config.comm_args.round_timeout_s, expire).start()
    # Each rank loads what it owns (data, model) before FedML is imported, and the
    # ranks compare notes: a missing file on any centre ends every rank in seconds
    # with one message, instead of after FedML's start-up with N copies of it.
    role_run, exit_code = _preflight(world, plan, device, console)
    if role_run is None:
        watchdog.stop()
        return exit_code
    fedml_bridge.import_fedml()
    fedml_args = fedml_bridge.fedml_args(plan, world, run_id, device)
    if world.is_server:
        return _serve(world, plan, role_run, fedml_args, output_dir, watchdog, console)
    _train(world, role_run, fedml_args, watchdog)
    return 0


def _preflight(world: World, plan, device, console):
    """Builds this rank's ServerRun/ClientRun, then all ranks compare notes (one allgather).

    Returns (role_run, 0) when every rank is ready, else (None, exit code) on every rank.
    """
    from .client import ClientRun
    from .server import ServerRun

    problem = None
    role_run = None
    try:
        if world.is_server:
            role_run = ServerRun(plan, console.info)
            role_run.check_pooled_test_data()
        else:
            role_run = ClientRun(plan, world.rank, device)
    except UserError as error:
        problem = (True, str(error))
    except Exception:  # noqa: B902 - reported below with its traceback, once
        problem = (False, traceback.format_exc())
    problems = world.comm.allgather(problem)
    if not any(problems):
        return role_run, 0
    failed = [(rank, p) for rank, p in enumerate(problems) if p]
    if not all(is_user for _, (is_user, _) in failed):
        # A bug, not a user mistake: each failing rank shows its own traceback once.
        if problem is not None and not problem[0]:
            _report_failure(f"flamby-mpi: rank {world.rank} ({world.role}, host {world.host}) failed "
                            f"while loading its data and model. Original error:\n{problem[1]}")
        return None, EXIT_FAILURE
    if world.is_server:
        by_message = {}
        for rank, (_, message) in failed:
            by_message.setdefault(message, []).append(rank)
        for message, ranks in by_message.items():
            where = "rank " + ", ".join(map(str, ranks)) if len(ranks) < world.size else "every rank"
            _report_failure(f"flamby-mpi: error on {where}: {message}")
    return None, EXIT_USER_ERROR


def _serve(world, plan, server_run, fedml_args, output_dir: Path, watchdog, console) -> int:
    from . import fedml_bridge
    from .server import make_aggregator

    aggregator = make_aggregator(server_run, fedml_args)

    def first_round():
        server_run.start_first_round()
        console.info("all %d clients joined; time to first round %.1f s",
                     plan.num_clients, server_run.first_round_at - PROCESS_START)

    fedml_bridge.run_server(fedml_args, world, aggregator, first_round, watchdog)
    _write_and_report(plan, server_run, output_dir, world.size, console)
    return 0


def _write_and_report(plan, server_run, output_dir: Path, world_size: int, console):
    from .results import format_table, write_results

    end = time.time()
    first = server_run.first_round_at or end
    timing = {"startup_s": first - PROCESS_START,
              "train_s": (server_run.last_round_at or end) - first,
              "total_s": end - PROCESS_START}
    results = write_results(output_dir, plan, server_run, plan.config.common_args.run_id, timing, world_size,
                            extra={"backend": plan.config.comm_args.backend})
    console.info("final metrics (%s, %s, %d rounds):\n%s", plan.dataset.name, results["strategy"],
                 server_run.rounds_completed, format_table(results["metrics"]))
    console.info("done in %.1f s (startup %.1f s, training %.1f s); results in %s",
                 timing["total_s"], timing["startup_s"], timing["train_s"], output_dir / "results.json")


def _run_inprocess(plan) -> int:
    """comm_args.backend=inprocess: server and clients in this process (see inprocess.py)."""
    import torch

    from .client import ClientRun
    from .inprocess import run_rounds
    from .logs import console_logger, setup_rank_logging
    from .server import ServerRun

    config = plan.config
    if config.common_args.run_id is None:
        config.common_args.run_id = _new_run_id()
    output_dir = _output_dir(config)
    setup_rank_logging(output_dir, 0, config.tracking_args.log_level)
    console = console_logger()
    torch.set_num_threads(_torch_threads(plan))  # what an MPI rank uses: same arithmetic, same results
    console.info("run %s (in-process, %d clients): %s", config.common_args.run_id, plan.num_clients,
                 ", ".join(f"{k}={v}" for k, v in plan.summary().items()))
    (output_dir / "config.yaml").write_text(config.to_yaml())
    try:
        server_run = ServerRun(plan, console.info)
        server_run.check_pooled_test_data()
        clients = [ClientRun(plan, rank, torch.device("cpu")) for rank in range(1, plan.world_size)]
    except UserError as error:
        print(f"flamby-mpi: error: {error}", file=sys.stderr, flush=True)
        return EXIT_USER_ERROR
    run_rounds(server_run, clients)
    _write_and_report(plan, server_run, output_dir, 1, console)
    return 0


def _train(world, client_run, fedml_args, watchdog):
    from . import fedml_bridge
    from .client import make_trainer

    trainer = make_trainer(client_run, fedml_args)
    fedml_bridge.run_client(fedml_args, world, trainer, client_run.center,
                            client_run.learner.num_train_samples, watchdog)
