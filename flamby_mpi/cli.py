"""Command line: `mpirun -np N+1 python launch_client.py --cf CONFIG [--run_id ID] [--set s.k=v ...]`.

Order of work on every rank, so that mistakes end the job before anything waits:
1. parse the command line and validate the config (exit 2 on any problem);
2. resolve the dataset and the run plan, and check the MPI world size and
   --rank/--role against it, without any MPI communication (exit 2);
3. form the world: mpirun's, or separately started ranks joining (launch/);
4. hand the plan and a transport to the driver (driver.py), which runs the job.
   From there a failure on any rank aborts the whole MPI job: the failing rank
   prints its traceback once, naming itself.
"""
from __future__ import annotations

import argparse
import os
import sys
from typing import List, Optional

from . import __version__
from .config import (
    IGNORED_KEY_PREFIXES,
    IGNORED_KEYS,
    describe_options,
    ignored_keys_warning,
    load_config,
    require_resume_target,
    run_id_problem,
)
from .exit.errors import PeerRefusalError, RankMismatchError, UserError
from .exit.failures import fail, where
from .exit.failures import reported as failures_reported
from .launch import (
    CLIENT,
    SERVER,
    check_rank_role,
    check_world,
    mpi_world,
    rank_from_environment,
    singleton_world,
)
from .launch.environment import detect_launcher, warn_if_foreign_launcher
from .launch.separate import join_world, reexec_under_mpiexec, should_reexec
from .launch.world import allgather as world_allgather
from .runtime import import_gc


def program_name() -> str:
    """The command as the user typed it, for --help and argparse's errors: launch_client.py,
    flamby-mpi (the console script) or python -m flamby_mpi; launch_client.py for any other
    program that parses a launch command line (scripts/submit.py, flamby_mpi.restart)."""
    name = os.path.basename(sys.argv[0]) if sys.argv and sys.argv[0] else ""
    if name == "__main__.py" and os.path.basename(os.path.dirname(sys.argv[0])) == "flamby_mpi":
        return "python -m flamby_mpi"
    return name if name == "flamby-mpi" else "launch_client.py"


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog=program_name(),
        formatter_class=argparse.RawDescriptionHelpFormatter,
        description="Run a FLamby cross-silo benchmark as a distributed job: rank 0 is a FedML "
                    "cross-silo server, rank k (1..N) trains FLamby centre k-1 (or the k-th centre "
                    "listed in data_args.centers); they exchange "
                    "models over FedML's MPI communication manager.",
        epilog="examples:\n"
               "  mpirun -np 5 python launch_client.py --cf config/fedml_config.yaml\n"
               "  python launch_client.py --cf config/fedml_config.yaml --run_id r1 --rank 0 --role server\n"
               "  python launch_client.py --cf config/fedml_config.yaml --run_id r1 --rank 1 --role client"
               "  # ... to 4\n"
               "  mpirun -np 5 python launch_client.py --cf config/fed_heart_disease.yaml \\\n"
               "      --set data_args.data_path=/data/heart --set common_args.random_seed=42\n"
               "  mpirun -np 3 python launch_client.py --cf config/fed_heart_disease.yaml \\\n"
               "      --set data_args.data_path=/data/heart --set 'data_args.centers=[0,2]'  # centres 0 and 2\n"
               "  python -m flamby_mpi check --cf config/fed_heart_disease.yaml --set data_args.data_path=/data/heart"
               "  # ready to queue?\n\n"
               "config keys (section.key), settable in the YAML file or with --set:\n"
               + describe_options() + "\n\n"
               "keys of FedML's and FLamby's example configs that have no effect here are ignored "
               "with one warning:\n  "
               + ", ".join(IGNORED_KEYS + tuple(p + "*" for p in IGNORED_KEY_PREFIXES)),
    )
    parser.add_argument("--cf", required=True, metavar="CONFIG",
                        help="YAML config in FedML's section layout (see config/)")
    parser.add_argument("--run_id", default=None,
                        help="name of this run (default: common_args.run_id, else a timestamp and a random "
                             "suffix, e.g. 20261206-001500-3fa2); "
                             "outputs go to runs/<run_id> unless common_args.output_dir is set")
    parser.add_argument("--set", action="append", default=[], metavar="SECTION.KEY=VALUE",
                        help="override one config key (value parsed as YAML); repeatable")
    parser.add_argument("--rank", type=int, default=None,
                        help="this process's rank. Without mpirun, start each rank in its own terminal "
                             "with the same --cf and --run_id: they meet through comm_args.rendezvous_dir. "
                             "Under mpirun it must equal the MPI rank")
    parser.add_argument("--role", choices=(SERVER, CLIENT), default=None,
                        help="server for rank 0, client for ranks 1..N (give with --rank)")
    again = parser.add_mutually_exclusive_group()
    again.add_argument("--resume", action="store_true",
                       help="continue this run (the output directory that --run_id or "
                            "common_args.output_dir names) from its latest complete checkpoint; "
                            "the config must be the same (comm_round may grow)")
    again.add_argument("--overwrite", action="store_true",
                       help="start afresh in an output directory that holds an earlier run (finished or "
                            "interrupted): its files are deleted once this run holds the directory. "
                            "Without --resume or --overwrite such a directory is refused (exit 2)")
    parser.add_argument("--quiet", action="store_true",
                        help="show only warnings, errors, what --resume or --overwrite did, and the final "
                             "table (no progress line)")
    parser.add_argument("--version", action="version", version=f"flamby-mpi {__version__}")
    return parser


def main(argv: Optional[List[str]] = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    args = build_parser().parse_args(argv)
    if args.rank is not None and args.rank < 0:
        build_parser().error("--rank must be >= 0")
    announced_rank = rank_from_environment()
    try:
        if args.run_id is not None and run_id_problem(args.run_id):
            raise UserError(f"--run_id: {run_id_problem(args.run_id)}")
        check_rank_role(args.rank, args.role)  # before the config, and before MPI starts
        config = load_config(args.cf, args.set)
        _warn_ignored_keys(config, args, announced_rank)
        from .plan import make_plan  # imports torch: after the cheap checks

        require_resume_target(config, args.run_id, args.resume)
        plan = make_plan(config, run_id=args.run_id, quiet=args.quiet, resume=args.resume,
                         overwrite=args.overwrite)
        import_gc.resume()  # the imports are done; before this rank waits on any other
        transport = _transport(plan, args, argv, announced_rank)
    except UserError as error:
        # Under mpirun every rank finds the same problem: say it once, from rank 0,
        # unless the problem is this rank's own.
        if announced_rank in (None, 0) or isinstance(error, RankMismatchError):
            fail(str(error), error.exit_code)
        return error.exit_code
    from .driver import run

    code = run(plan, transport)
    _point_to_the_server_if_silent(transport, code)
    return code


def _point_to_the_server_if_silent(transport, code: int):
    """A refusal found after the join (the data missing, the output directory taken) is said once,
    by rank 0: under mpirun on the one console, but with one terminal per rank the clients' own
    terminals showed only 'joined' and an exit code. Each says where the reason is."""
    world = getattr(transport, "world", None)
    if code in (0, 130, 143) or world is None or not world.joined_separately or world.rank == 0:
        return
    if not failures_reported():
        fail(f"the run ended with exit code {code}; the server's terminal (rank 0) says why",
             code, where(world.rank, world.host))


def _warn_ignored_keys(config, args, announced_rank: Optional[int]):
    """One warning per job: from rank 0 under a launcher, the in-process run, or the server
    started on its own (after its re-exec under mpiexec, not before it as well)."""
    warning = ignored_keys_warning(config)
    speaks = announced_rank in (None, 0) and args.rank in (None, 0)
    if warning and speaks and not should_reexec(args.rank):
        print(warning, file=sys.stderr, flush=True)


def _transport(plan, args, argv: List[str], announced_rank: Optional[int]):
    """What carries this run's messages: the in-process loop, or FedML over this process's MPI world."""
    if plan.backend == "inprocess":
        launcher = detect_launcher()
        # Under `mpiexec -n 2` rank 0 used to run the whole job while rank 1 exited 2 unheard.
        several = launcher is not None and (launcher.world_size or 1) > 1
        if args.rank is not None or announced_rank not in (None, 0) or several:
            raise UserError("comm_args.backend=inprocess runs every rank in this one process",
                            hint="start it once, without mpirun and without --rank/--role")
        from .transport.inprocess import InProcessTransport

        return InProcessTransport(plan)
    if should_reexec(args.rank):
        # Started by hand in its own terminal: check what can be checked, then rerun
        # this same command under `mpiexec -n 1` so that MPI can connect the ranks.
        check_world(singleton_world(), plan.world_size, plan.clients_label, args.rank, args.role)
        _require_run_id(plan)
        reexec_under_mpiexec(argv)
    warn_if_foreign_launcher()  # before MPI_Init, which a foreign launcher breaks
    world = mpi_world()
    _check_world_together(world, plan, args)
    if world.size == 1 and plan.world_size > 1:  # one process per terminal
        _require_run_id(plan)
        world = join_world(plan, args.rank)
    from .transport.fedml_bridge import FedMLTransport

    return FedMLTransport(world)


def _check_world_together(world, plan, args):
    """check_world on every rank, and the ranks agree on it before any goes on: --rank can be
    wrong on some ranks only (`mpiexec -n 5 ... --rank 1`, or one wrong rank of an MPMD command
    line), and a rank that went on alone would wait forever in the run's first collective for
    ranks that are exiting. Each refused rank says why; rank 0 names them; every rank exits with
    the refusal's code. Only exit codes travel (ints), nothing a peer says is printed."""
    if world.size == 1:  # one process per terminal: no other rank to agree with yet
        check_world(world, plan.world_size, plan.clients_label, args.rank, args.role)
        return
    try:
        check_world(world, plan.world_size, plan.clients_label, args.rank, args.role)
        own_code = 0
    except UserError as error:
        own_code, refusal = error.exit_code, error
    codes = world_allgather(world.comm, int(own_code))  # a small int each: pickled by mpi4py, as form_world's names
    if own_code:
        raise refusal
    refused = [rank for rank, code in enumerate(codes) if code]
    if refused:
        raise PeerRefusalError(
            f"rank{'s' if len(refused) > 1 else ''} {', '.join(map(str, refused))} of this job "
            "refused to start (each said why above)",
            hint="under mpirun leave --rank/--role out: each process gets its rank from MPI")


def _require_run_id(plan):
    if plan.run_id is None:
        raise UserError("--run_id is required when each rank is started on its own",
                        hint="give every rank the same --run_id, e.g. --run_id heart_disease")
