#!/usr/bin/env python3
"""Submit flamby-mpi to SLURM or PBS with as many ranks as the config's dataset needs (centres + 1).

    python scripts/submit.py CONFIG [--set section.key=value ...] [other launch_client.py flags]
    python scripts/submit.py config/fed_ixi.yaml --scheduler pbs --dry-run

    python scripts/submit.py --requeue CONFIG --option=--time=04:00:00

submit.py's own options (--scheduler, --option, --requeue, --stop-before, --skip-check, --dry-run,
--help) are
recognised anywhere on the line (up to a `--`, after which everything is the
job's); the first other argument is CONFIG and the rest go to launch_client.py.
Options for sbatch/qsub go one per --option (repeatable), written with "=" or
as the next argument; an option and its argument in one value are passed apart:
    python scripts/submit.py CONFIG --option=--time=04:00:00 --option --partition=gpu
    python scripts/submit.py CONFIG --scheduler pbs --option='-l walltime=4:00:00'   (qsub -l walltime=...)
Before anything is submitted, the job's whole launch_client.py command line is
checked here with launch_client.py's own parser and config code: an unknown
flag, a bad --set or config key, --rank/--role (the scheduler starts every
rank) or client counts that contradict the dataset are errors at the prompt,
not on every rank after a queue wait. The number of centres comes from the
dataset (FLamby's NUM_CLIENTS); for FLamby's datasets and synthetic it is known
without importing torch or FLamby (flamby_mpi.world_size), so this runs on a
login node that has only pyyaml.

Then, before sbatch/qsub (and with --dry-run), the readiness check runs in a child process
with this Python (`python -m flamby_mpi check`, flamby_mpi/check.py): every listed centre's data
readable, the dataset's extras installed, memory per rank from one training step, and what one
node needs when the ranks per node are known (PBS: one node; SLURM: --ntasks-per-node or --nodes
among the --option values). Its table is printed; a run that is not ready is not submitted
(exit 2). The check needs the job's environment
(torch, FLamby); --skip-check leaves it out (e.g. on a login node with only pyyaml).
"""
from __future__ import annotations

import argparse
import math
import os
import re
import shlex
import subprocess
import sys
from pathlib import Path
from typing import List, Optional, Tuple

SCRIPTS = Path(__file__).resolve().parent
sys.path.insert(0, str(SCRIPTS.parent))

# All torch-, FedML- and MPI-free (tests/test_cluster_scripts.py checks it).
from flamby_mpi.cli import build_parser as launch_parser  # noqa: E402
from flamby_mpi.config import ignored_keys_warning, load_config, parse_override, run_id_problem  # noqa: E402
from flamby_mpi.exit.errors import UserError  # noqa: E402
from flamby_mpi.world_size import set_overrides, world_size_for  # noqa: E402

# submit.py's own options, recognised anywhere on the line: name -> takes a value.
OWN_OPTIONS = {"--scheduler": True, "--option": True, "--requeue": False, "--stop-before": True,
               "--skip-check": False, "--dry-run": False, "--help": False, "-h": False}
# What the job scripts put before the user's flags (their run id is the job's).
JOB_RUN_ID = "job-id"


# --requeue: SLURM's warning signal before the time limit comes this long before it at least.
# The job needs common_args.preemption_grace_s to stop at a round boundary with a checkpoint,
# plus time for every process to exit and for the job to requeue itself (slow on a busy node).
STOP_MARGIN_S = 30
MIN_STOP_BEFORE_S = 60


def stop_before_s(preemption_grace_s: float) -> int:
    """Seconds before the time limit at which SLURM signals a --requeue job (--signal=B:TERM@s)."""
    return max(MIN_STOP_BEFORE_S, least_stop_before_s(preemption_grace_s))


def least_stop_before_s(preemption_grace_s: float) -> int:
    """The shortest --stop-before that leaves the job its grace to stop at a round boundary with a
    checkpoint and the margin to exit and requeue itself: sooner, the time limit can end it first."""
    return math.ceil(preemption_grace_s) + STOP_MARGIN_S


def chosen_stop_before(given: Optional[int], preemption_grace_s: float) -> int:
    """--stop-before, or its default; raises UserError for a value under the least."""
    if given is None:
        return stop_before_s(preemption_grace_s)
    least = least_stop_before_s(preemption_grace_s)
    if given < least:
        raise UserError(f"--stop-before {given}: give the seconds before the time limit, at least "
                        f"common_args.preemption_grace_s + {STOP_MARGIN_S} = {least}")
    return given


def slurm_command(ranks: int, config: str, launch_args: List[str], options: List[str],
                  stop_before: Optional[int] = None) -> List[str]:
    """stop_before (seconds): a requeueable job, signalled that long before its time limit."""
    requeue = [] if stop_before is None else ["--requeue", f"--signal=B:TERM@{stop_before}"]
    return (["sbatch", f"--ntasks={ranks}"] + requeue + options
            + [str(SCRIPTS / "slurm_job.sh"), config] + launch_args)


def pbs_command(ranks: int, config: str, launch_args: List[str], options: List[str],
                torque: bool = False, rerunnable: bool = False) -> List[str]:
    for arg in [config] + launch_args:
        if any(c.isspace() for c in arg) or "," in arg:
            raise UserError(f"{arg!r}: arguments travel to the PBS job in one variable, split on "
                            "spaces, so they cannot contain spaces or commas",
                            hint="put such values in the config file instead")
    job_args = " ".join([config] + launch_args)
    resources = f"nodes=1:ppn={ranks}" if torque else f"select=1:ncpus={ranks}:mpiprocs={ranks}"
    passing = ["-F", job_args] if torque else ["-v", f"FLAMBY_MPI_ARGS={job_args}"]
    rerun = ["-r", "y"] if rerunnable else []
    return ["qsub", "-l", resources] + passing + rerun + options + [str(SCRIPTS / "pbs_job.sh")]


def build_parser() -> argparse.ArgumentParser:
    """submit.py's own options (CONFIG and the launch flags are split off by split_arguments)."""
    parser = argparse.ArgumentParser(
        prog="submit.py", usage="%(prog)s [submit.py options] CONFIG [launch_client.py flags]",
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="examples:\n"
               "  python scripts/submit.py config/fed_heart_disease.yaml --set data_args.data_path=/data/heart\n"
               "  python scripts/submit.py config/fed_ixi.yaml --option=--time=02:00:00 "
               "--option=--gpus-per-task=1\n"
               "  python scripts/submit.py config/fedml_config.yaml --scheduler pbs --dry-run")
    parser.add_argument("--scheduler", choices=("slurm", "pbs", "torque"), default="slurm",
                        help="slurm (sbatch, default), pbs (PBS Pro qsub) or torque (Torque qsub)")
    parser.add_argument("--option", action="append", default=[], metavar="OPTION",
                        help="one option for sbatch/qsub, e.g. --option=--time=04:00:00 "
                             "(or --option='-l walltime=4:00:00'); repeatable")
    parser.add_argument("--requeue", action="store_true",
                        help="a job that the scheduler may restart and that then resumes from its "
                             "newest checkpoint. SLURM: sbatch --requeue --signal=B:TERM@<s>, which "
                             "stops the job with a checkpoint s seconds before its time limit and "
                             "requeues it; PBS: qsub -r y (rerunnable)")
    parser.add_argument("--stop-before", type=int, default=None, metavar="SECONDS",
                        help="with --requeue on SLURM: how long before the time limit the job is told "
                             f"to stop, at least common_args.preemption_grace_s + {STOP_MARGIN_S} "
                             f"(default: that, and at least {MIN_STOP_BEFORE_S})")
    parser.add_argument("--skip-check", action="store_true",
                        help="do not run the readiness check (python -m flamby_mpi check: data, extras, "
                             "memory per rank) before submitting")
    parser.add_argument("--dry-run", action="store_true",
                        help="check and print the command, submit nothing")
    return parser


# An --option value that is an option and its argument apart: `-l walltime=4:00:00`, `-t 10`, `--time 10`.
_OPTION_AND_ARGUMENT = re.compile(r"(-[^\s=]+)\s+(\S.*)", re.DOTALL)


def scheduler_words(options: List[str]) -> List[str]:
    """The --option values as sbatch/qsub arguments. A value that holds an option and its argument
    apart is two arguments, as a shell would pass them: getopt reads the one argument `-t 10` as
    -t with " 10" (sbatch: "Invalid --time specification") and `--time 10` as an unknown option.
    Spaces after the option's "=" or within its argument stay (`--comment=a b`; `-J my job` is
    -J and "my job")."""
    words: List[str] = []
    for option in options:
        apart = _OPTION_AND_ARGUMENT.fullmatch(option)
        words += list(apart.groups()) if apart else [option]
    return words


def _slurm_value(words: List[str], long: str, short: Optional[str] = None) -> Optional[str]:
    """The last value of an sbatch option among its arguments (scheduler_words): `--nodes=2`,
    `--nodes 2`, `-N 2`, `-N2`."""
    found = None
    for i, word in enumerate(words):
        head, eq, value = word.partition("=")
        following = words[i + 1] if i + 1 < len(words) else None
        if head == long:
            found = value if eq else following
        elif short and word == short:
            found = following
        elif short and word.startswith(short):
            found = word[len(short):]
    return found


def ranks_per_node(scheduler: str, ranks: int, words: List[str]) -> Optional[int]:
    """The most ranks one node runs, where submit.py's arguments say it: the PBS/Torque jobs it
    writes ask for one node; SLURM's --ntasks-per-node, or --nodes (filled in block order, so the
    first node gets the most). None when SLURM is left to choose."""
    if scheduler != "slurm":
        return ranks
    per_node = _slurm_value(words, "--ntasks-per-node")
    if per_node is not None and per_node.isdigit() and int(per_node) > 0:
        return min(int(per_node), ranks)
    nodes = _slurm_value(words, "--nodes", "-N")
    if nodes is not None:
        fewest = nodes.split("-")[0]  # a range min-max: with the fewest nodes, the most ranks per node
        if fewest.isdigit() and int(fewest) > 0:
            return math.ceil(ranks / int(fewest))
    return None


def readiness_check(config: str, launch_args: List[str], per_node: Optional[int] = None) -> int:
    """Runs `python -m flamby_mpi check` on the job's config and --set values in a child process
    with this Python (torch and FLamby stay out of this one); its table goes to stderr, with what a
    node running `per_node` ranks needs when that is known. Returns its exit code: 0 ready, 2 not
    (said by the check), anything else a failure of the check itself."""
    command = [sys.executable, "-m", "flamby_mpi", "check", "--cf", config]
    for text in set_overrides(launch_args):
        command += ["--set", text]
    # The job's own run id, --resume and --overwrite: the check looks at the output directory they name.
    given, _ = launch_parser().parse_known_args(["--cf", config, *launch_args])
    command += ["--run_id", given.run_id] if given.run_id else []
    command += [flag for flag, on in (("--resume", given.resume), ("--overwrite", given.overwrite)) if on]
    if per_node is not None:
        command += ["--ranks-per-host", str(per_node)]
    print(f"# readiness check: {shlex.join(command)}", file=sys.stderr, flush=True)
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(SCRIPTS.parent)] + ([env["PYTHONPATH"]] if env.get("PYTHONPATH") else []))
    done = subprocess.run(command, env=env, stdout=subprocess.PIPE, text=True)
    sys.stderr.write(done.stdout)
    return done.returncode


def split_arguments(argv: List[str]) -> Tuple[List[str], List[str]]:
    """(submit.py's own options, everything else in its order): own options are taken from
    anywhere on the line; an option's value may follow it (`--option --time=1:00:00`) and is
    joined to it with "=" so that a value starting with "-" stays a value. After `--` nothing
    is submit.py's."""
    own, rest = [], []
    i = 0
    while i < len(argv):
        arg = argv[i]
        if arg == "--":
            rest.extend(argv[i + 1:])
            break
        name, eq, _ = arg.partition("=")
        if name not in OWN_OPTIONS:
            rest.append(arg)
        elif OWN_OPTIONS[name] and not eq and i + 1 < len(argv):
            own.append(f"{arg}={argv[i + 1]}")
            i += 1
        else:
            own.append(arg)  # argparse refuses what is wrong with it (--dry-run=x, --option last)
        i += 1
    return own, rest


def check_launch_command(config: str, launch_args: List[str]):
    """Checks the job's launch_client.py command line with launch_client.py's own parser and
    config code, as every rank will run it; returns (the loaded config, the number of ranks).
    Raises UserError."""
    parser = launch_parser()

    def refuse(message):
        raise UserError(f"launch_client.py would refuse the job's arguments: {message}",
                        hint="python launch_client.py --help lists its flags; submit.py's own "
                             "are --scheduler, --option, --requeue, --stop-before, --skip-check and --dry-run")

    parser.error = refuse
    # As the job scripts run it: their --run_id and --set first, the user's flags after.
    args = parser.parse_args(["--cf", config, "--run_id", JOB_RUN_ID, *launch_args])
    if args.cf != config:
        raise UserError("--cf: the job reads the config given as CONFIG; give it once, as CONFIG")
    if args.rank is not None or args.role is not None:
        raise UserError("--rank/--role are for ranks started one per terminal; in a batch job the "
                        "scheduler starts every rank", hint="remove --rank and --role")
    if args.run_id != JOB_RUN_ID and run_id_problem(args.run_id):
        raise UserError(f"--run_id: {run_id_problem(args.run_id)}")
    for text in args.set:
        parse_override(text)  # a malformed --set is reported before the config file's problems
    loaded = load_config(config, args.set, given_as="CONFIG")
    return loaded, world_size_for(loaded)


def main(argv: Optional[List[str]] = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = build_parser()
    own, rest = split_arguments(argv)
    args = parser.parse_args(own)
    if not rest:
        parser.error("CONFIG is missing")
    if rest[0].startswith("-"):
        parser.error(f"expected CONFIG before launch_client.py's flags, found {rest[0]!r} first "
                     "(submit.py's own options are --scheduler, --option, --requeue, --stop-before, "
                     "--skip-check and --dry-run)")
    config, launch_args = rest[0], rest[1:]
    if args.stop_before is not None:
        if not args.requeue or args.scheduler != "slurm":
            parser.error("--stop-before is for --requeue on SLURM (PBS has no signal before the "
                         "walltime ends)")
    words = scheduler_words(args.option)
    try:
        loaded, ranks = check_launch_command(config, launch_args)
        if args.scheduler == "slurm":
            stop_before = None
            if args.requeue:  # the grace is the config's, --set included
                stop_before = chosen_stop_before(args.stop_before, loaded.common_args.preemption_grace_s)
            command = slurm_command(ranks, config, launch_args, words, stop_before)
        else:
            command = pbs_command(ranks, config, launch_args, words,
                                  torque=args.scheduler == "torque", rerunnable=args.requeue)
    except UserError as error:
        print(f"submit.py: error: {error}", file=sys.stderr)
        return 2
    warning = ignored_keys_warning(loaded)
    if warning:
        print(warning, file=sys.stderr)
    clients = ranks - 1
    print(f"# {ranks} ranks (1 server + {clients} client{'' if clients == 1 else 's'})", file=sys.stderr)
    if not args.skip_check:
        per_node = ranks_per_node(args.scheduler, ranks, words)
        if per_node is None:
            print("# ranks per node: SLURM chooses (--option=--ntasks-per-node=K or --option=--nodes=M says); "
                  "the check shows what one host running every rank needs", file=sys.stderr)
        else:
            print(f"# at most {per_node} rank(s) per node", file=sys.stderr)
        checked = readiness_check(config, launch_args, per_node)
        if checked != 0:
            print("submit.py: error: the readiness check found the run not ready (above); nothing was "
                  "submitted", file=sys.stderr)
            print("HINT: fix what it says, or submit without it: --skip-check", file=sys.stderr)
            return 2
        print("# readiness check: ready", file=sys.stderr)
    print(shlex.join(command), flush=True)
    if args.dry_run:
        return 0
    try:
        return subprocess.run(command, env=dict(os.environ)).returncode
    except FileNotFoundError:
        print(f"submit.py: error: {command[0]} not found: run this on a {args.scheduler} login node, "
              "or use --dry-run", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
