"""Per-rank log files and the rank-0 console.

Every rank writes `<output_dir>/logs/rank<k>.log` with our records and FedML's
records at `tracking_args.log_level` and above. Rank 0 also shows progress on
stdout; clients print only warnings and errors, prefixed with their rank.
`print` is left alone (FedML's init would hijack it; we never call that).
"""
from __future__ import annotations

import logging
import sys
from pathlib import Path

_FORMAT = "%(asctime)s %(levelname)s [%(name)s] %(message)s"


# Console records logged with extra=SHOWN_WHEN_QUIET stay on stdout under --quiet (the final table).
SHOWN_WHEN_QUIET = {"shown_when_quiet": True}


def setup_rank_logging(output_dir: Path, rank: int, fedml_level: str, quiet: bool = False) -> Path:
    log_dir = output_dir / "logs"
    log_dir.mkdir(parents=True, exist_ok=True)
    path = log_dir / f"rank{rank}.log"
    root = logging.getLogger()
    for handler in list(root.handlers):
        root.removeHandler(handler)
    file_handler = logging.FileHandler(path, mode="w")
    file_handler.setFormatter(logging.Formatter(_FORMAT))
    root.addHandler(file_handler)
    # FedML logs through the root logger: its level decides what of FedML is kept.
    root.setLevel(getattr(logging, fedml_level.upper()))

    ours = logging.getLogger("flamby_mpi")
    ours.setLevel(logging.INFO)  # our own records always reach the file
    ours.propagate = True
    for handler in list(ours.handlers):
        ours.removeHandler(handler)
    # Warnings and errors of any rank go to stderr, naming the rank.
    warnings_out = logging.StreamHandler(sys.stderr)
    warnings_out.setLevel(logging.WARNING)
    warnings_out.setFormatter(logging.Formatter(f"[flamby-mpi rank {rank}] %(levelname)s: %(message)s"))
    ours.addHandler(warnings_out)
    # Progress is shown by rank 0 only.
    progress = console_logger()
    for handler in list(progress.handlers):
        progress.removeHandler(handler)
    progress.propagate = False
    progress.setLevel(logging.INFO)
    progress.addHandler(file_handler)
    if rank == 0:
        shown = logging.StreamHandler(sys.stdout)
        shown.setFormatter(logging.Formatter("[flamby-mpi] %(message)s"))
        if quiet:
            shown.addFilter(lambda record: record.levelno >= logging.WARNING
                            or getattr(record, "shown_when_quiet", False))
        progress.addHandler(shown)
    else:
        progress.addHandler(warnings_out)
    return path


def console_logger() -> logging.Logger:
    """Records shown to the user on rank 0 (and kept in the rank's log file)."""
    return logging.getLogger("flamby_mpi.progress")
