"""Per-rank log files and the rank-0 console.

Every rank writes `<output_dir>/logs/rank<k>.log` with our records and FedML's
records at `tracking_args.log_level` and above. Rank 0 also shows progress on
stdout; clients print only warnings and errors, prefixed with their rank.
`print` is left alone (FedML's init would hijack it; we never call that).

A log is opened for appending (flamby_mpi.storage.safe_files.open_append: never through a
link, never truncated), so a --resume adds to the log of the attempt that crashed.
A log that can no longer be written (a full disk) is said once on stderr and left
off; the run goes on, and its console output with it.
"""
from __future__ import annotations

import logging
import os
import sys
from pathlib import Path

from ..storage import safe_files

_FORMAT = "%(asctime)s %(levelname)s [%(name)s] %(message)s"
# failures.report's records: already on stderr, so a log that fails on one of them stays silent.
FAILURE_LOGGER = "flamby-mpi.failure"


# Console records logged with extra=SHOWN_WHEN_QUIET stay on stdout under --quiet (the final table).
SHOWN_WHEN_QUIET = {"shown_when_quiet": True}


class AppendedLogFile(logging.Handler):
    """A rank's log file: each record appended with one write to a file opened by open_append.
    A failed write turns the file off with one line on stderr instead of logging's
    "--- Logging error ---" traceback after every record."""

    def __init__(self, output_dir: Path, relative: str, rank: int):
        super().__init__()
        self.path = Path(output_dir) / relative
        self.rank = rank
        self._file = safe_files.open_append(output_dir, relative)
        self._fd = self._file.fileno()
        self.off = False

    def emit(self, record: logging.LogRecord):
        if self.off:
            return
        try:
            data = memoryview((self.format(record) + "\n").encode("utf-8", "backslashreplace"))
        except Exception:  # noqa: BLE001 - a record that cannot be formatted: logging's own report
            self.handleError(record)
            return
        try:
            while data:
                data = data[os.write(self._fd, data):]
        except OSError as exc:
            self.off = True
            if record.name != FAILURE_LOGGER:
                reason = (str(safe_files.StorageError(self.path, exc)).split("\n")[0]
                          if safe_files.is_storage_error(exc) else f"writing {self.path} failed: {exc}")
                print(f"[flamby-mpi rank {self.rank}] WARNING: {reason}; this rank's log stops here, the run "
                      "goes on (its console output with it)", file=sys.stderr, flush=True)

    def close(self):
        try:
            if not self._file.closed:
                self._file.close()
        finally:
            super().close()


def setup_rank_logging(output_dir: Path, rank: int, fedml_level: str, quiet: bool = False) -> Path:
    """Opens this rank's log (raises safe_files.UnsafePathError for a link or a non-file there,
    StorageError when it cannot be created) and routes the records; returns its path."""
    file_handler = AppendedLogFile(output_dir, f"logs/rank{rank}.log", rank)
    file_handler.setFormatter(logging.Formatter(_FORMAT))
    root = logging.getLogger()
    for handler in list(root.handlers):
        root.removeHandler(handler)
        if isinstance(handler, AppendedLogFile):  # an earlier run in this process (tests)
            handler.close()
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
    return file_handler.path


def console_logger() -> logging.Logger:
    """Records shown to the user on rank 0 (and kept in the rank's log file)."""
    return logging.getLogger("flamby_mpi.progress")
