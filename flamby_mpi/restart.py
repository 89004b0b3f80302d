"""What a cluster job started again (SLURM requeue, PBS rerun) does with its run, for the job scripts.

  python -m flamby_mpi.restart DEFAULT_DIR CONFIG [LAUNCHER ARGS...]

prints one line, `<decision> <run directory>`, where the run directory is the one the job's own
command line names (a user's `--set common_args.output_dir=...` wins over the script's
DEFAULT_DIR) and the decision is:

  finished   the run has results.json: nothing to redo;
  resume     it has a complete checkpoint (a manifest) and no results.json: continue it with --resume;
  overwrite  it was interrupted before any complete checkpoint (config.yaml, logs... but no
             manifest, no results.json): start it again with --overwrite, which deletes those files;
  afresh     nothing of a run is there: start the run (files of a run's names that no run left
             are the user's: the launcher then refuses the directory, naming them).

No killed run leaves these ambiguous: results.json is written last, and a resumed or overwritten
run removes it before training (flamby_mpi/storage/run_directory.py); the manifest of a checkpoint is
written once every rank's files are. scripts/slurm_job.sh and scripts/pbs_job.sh ask this and keep
only their scheduler's wording, so the rule is written once.

When it cannot decide (launch_client.py would refuse the command line, the config does not load,
the directory cannot be read) it prints nothing on stdout, one error line (and a HINT) on stderr,
and exits 2: the job scripts then stop with that reason in the job's log. Taking it for `afresh`
would start a run over the directory that the job's own command line may name elsewhere.
"""
from __future__ import annotations

import contextlib
import io
import sys
from pathlib import Path
from typing import List, Optional

from .exit.errors import UserError
from .exit.failures import fail
from .storage.run_directory import inspect

USAGE = "usage: python -m flamby_mpi.restart DEFAULT_DIR CONFIG [LAUNCHER ARGS...]"


def launch_arguments(config: str, args: List[str]):
    """The job's command line as launch_client.py reads it, or UserError saying why it would refuse it
    (argparse's own message, without its usage lines)."""
    from .cli import build_parser

    parser = build_parser()

    def refuse(message):
        raise UserError(f"launch_client.py would refuse the job's arguments: {message}",
                        hint="python launch_client.py --help lists its flags")

    parser.error = refuse
    try:
        with contextlib.redirect_stdout(io.StringIO()):  # stdout is the decision: never help text there
            return parser.parse_args(["--cf", config, *args])
    except SystemExit:  # --help or --version: the job would print that and start nothing
        raise UserError("the job's arguments ask launch_client.py for its --help or --version only: "
                        "there is no run to restart") from None


def run_directory(default_dir: str, config: str, args: List[str]) -> Path:
    """The run directory of the job's command line. Raises UserError when it cannot be told: a
    command line the launcher refuses, a config that does not load (it may name the directory)."""
    from .config import expand_dir, load_config

    parsed = launch_arguments(config, args)
    named = load_config(parsed.cf, parsed.set, given_as="CONFIG").common_args.output_dir  # the job scripts' CONFIG
    return expand_dir(named) if named else Path(default_dir)  # `~` as the launcher reads it


def decide(run_dir: Path) -> str:
    state = inspect(run_dir)
    if state.kind == "finished":
        return "finished"
    if state.newest_checkpoint is not None:
        return "resume"
    return "overwrite" if state.kind == "interrupted" else "afresh"


def main(argv: Optional[List[str]] = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if len(argv) < 2 or argv[1].startswith("-"):  # `--cf CONFIG` would take "--cf" for the config
        found = f": expected CONFIG after DEFAULT_DIR, found {argv[1]!r}" if len(argv) >= 2 else ""
        print(USAGE + found, file=sys.stderr)
        return 2
    default_dir, config, args = argv[0], argv[1], argv[2:]
    try:
        run_dir = run_directory(default_dir, config, args)
        decision = decide(run_dir)
    except UserError as error:
        return fail(f"restart: cannot decide what the restarted job does: {error}", error.exit_code)
    except OSError as error:  # the run directory unreadable (permissions, an I/O error)
        return fail(f"restart: cannot decide what the restarted job does: {error}", 2)
    print(f"{decision} {run_dir}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
