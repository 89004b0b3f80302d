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
only their scheduler's wording, so the rule is written once. A config that does not load leaves
the directory at DEFAULT_DIR: the launcher itself then reports the config's problem.
"""
from __future__ import annotations

import sys
from pathlib import Path
from typing import List, Optional

from .storage.run_directory import inspect


def run_directory(default_dir: str, config: str, args: List[str]) -> Path:
    from .cli import build_parser
    from .config import expand_dir, load_config
    from .exit.errors import UserError

    try:
        parsed, _ = build_parser().parse_known_args(["--cf", config, *args])
        named = load_config(parsed.cf, parsed.set).common_args.output_dir
    except (UserError, SystemExit, OSError):
        named = None
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
    if len(argv) < 2:
        print("usage: python -m flamby_mpi.restart DEFAULT_DIR CONFIG [LAUNCHER ARGS...]", file=sys.stderr)
        return 2
    default_dir, config, args = argv[0], argv[1], argv[2:]
    run_dir = run_directory(default_dir, config, args)
    print(f"{decide(run_dir)} {run_dir}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
