"""What a cluster job started again (SLURM requeue, PBS rerun) does with its run, for the job scripts.

  python -m flamby_mpi.restart DEFAULT_DIR CONFIG [LAUNCHER ARGS...]

prints one line, `<decision> <run directory>`, where the run directory is the one the job's own
command line names (a user's `--set common_args.output_dir=...` wins over the script's
DEFAULT_DIR) and the decision is:

  finished  the run has results.json: nothing to redo;
  resume    it has a complete checkpoint (a manifest): continue it with --resume;
  afresh    neither: start the run again.

scripts/slurm_job.sh and scripts/pbs_job.sh ask this and keep only their scheduler's wording, so
the rule is written once. A config that does not load leaves the directory at DEFAULT_DIR: the
launcher itself then reports the config's problem.
"""
from __future__ import annotations

import sys
from pathlib import Path
from typing import List, Optional


def run_directory(default_dir: str, config: str, args: List[str]) -> Path:
    from .cli import build_parser
    from .config import load_config
    from .errors import UserError

    try:
        parsed, _ = build_parser().parse_known_args(["--cf", config, *args])
        named = load_config(parsed.cf, parsed.set).common_args.output_dir
    except (UserError, SystemExit, OSError):
        named = None
    return Path(named or default_dir)


def decide(run_dir: Path) -> str:
    if (run_dir / "results.json").is_file():
        return "finished"
    if any(run_dir.glob("checkpoints/round_*/manifest.json")):
        return "resume"
    return "afresh"


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
