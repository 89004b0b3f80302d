#!/usr/bin/env python3
"""Submit flamby-mpi to SLURM or PBS with as many ranks as the config's dataset needs (centres + 1).

    python scripts/submit.py CONFIG [--set section.key=value ...] [other launch_client.py flags]
    python scripts/submit.py --scheduler pbs --dry-run config/fed_ixi.yaml

Everything after CONFIG goes to launch_client.py. Options for sbatch/qsub go
before CONFIG, one per --option, written with "=" (repeatable):
    python scripts/submit.py --option=--time=04:00:00 --option=--partition=gpu CONFIG
The number of centres comes from the dataset (FLamby's NUM_CLIENTS); for
FLamby's datasets and synthetic it is known without importing torch or FLamby
(flamby_mpi.world_size), so this runs on a login node that has only pyyaml.
"""
from __future__ import annotations

import argparse
import os
import shlex
import subprocess
import sys
from pathlib import Path
from typing import List, Optional

SCRIPTS = Path(__file__).resolve().parent
sys.path.insert(0, str(SCRIPTS.parent))

from flamby_mpi.errors import UserError  # noqa: E402
from flamby_mpi.world_size import set_overrides, world_size_of  # noqa: E402  (torch-free)


def slurm_command(ranks: int, config: str, launch_args: List[str], options: List[str]) -> List[str]:
    return (["sbatch", f"--ntasks={ranks}"] + options
            + [str(SCRIPTS / "slurm_job.sh"), config] + launch_args)


def pbs_command(ranks: int, config: str, launch_args: List[str], options: List[str],
                torque: bool = False) -> List[str]:
    for arg in [config] + launch_args:
        if any(c.isspace() for c in arg) or "," in arg:
            raise UserError(f"{arg!r}: arguments travel to the PBS job in one variable, split on "
                            "spaces, so they cannot contain spaces or commas",
                            hint="put such values in the config file instead")
    job_args = " ".join([config] + launch_args)
    resources = f"nodes=1:ppn={ranks}" if torque else f"select=1:ncpus={ranks}:mpiprocs={ranks}"
    passing = ["-F", job_args] if torque else ["-v", f"FLAMBY_MPI_ARGS={job_args}"]
    return ["qsub", "-l", resources] + passing + options + [str(SCRIPTS / "pbs_job.sh")]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="submit.py", description=__doc__.split("\n\n")[0],
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="examples:\n"
               "  python scripts/submit.py config/fed_heart_disease.yaml --set data_args.data_path=/data/heart\n"
               "  python scripts/submit.py --option=--time=02:00:00 --option=--gpus-per-task=1 config/fed_ixi.yaml\n"
               "  python scripts/submit.py --scheduler pbs --dry-run config/fedml_config.yaml")
    parser.add_argument("--scheduler", choices=("slurm", "pbs", "torque"), default="slurm",
                        help="slurm (sbatch, default), pbs (PBS Pro qsub) or torque (Torque qsub)")
    parser.add_argument("--option", action="append", default=[], metavar="OPTION",
                        help="one option for sbatch/qsub, written --option=--time=04:00:00 "
                             "(or --option='-l walltime=4:00:00'); repeatable")
    parser.add_argument("--dry-run", action="store_true", help="print the command, submit nothing")
    parser.add_argument("config", help="YAML config, as for launch_client.py --cf")
    parser.add_argument("launch_args", nargs=argparse.REMAINDER,
                        help="launch_client.py flags (--set ..., --run_id ...)")
    return parser


def main(argv: Optional[List[str]] = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        ranks = world_size_of(args.config, set_overrides(args.launch_args))  # reports a bad --set before queueing
        if args.scheduler == "slurm":
            command = slurm_command(ranks, args.config, args.launch_args, args.option)
        else:
            command = pbs_command(ranks, args.config, args.launch_args, args.option,
                                  torque=args.scheduler == "torque")
    except UserError as error:
        print(f"submit.py: error: {error}", file=sys.stderr)
        return 2
    print(f"# {ranks} ranks (1 server + {ranks - 1} clients)", file=sys.stderr)
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
