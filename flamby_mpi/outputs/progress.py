"""Rank 0's progress line: round, elapsed time, ETA and the last mean train loss.

On a terminal the line is redrawn in place after every round. When the output is
a file (SLURM/PBS logs, a pipe) a plain line is written when another 10% of the
rounds is done (every round below 20 rounds) or 30 s have passed, and always for
the last round, so that logs stay short. Every round is also kept in the rank's
log file. `--quiet` shows none of it.
"""
from __future__ import annotations

import logging
import os
import sys
import time
from typing import Callable, Optional, TextIO

log = logging.getLogger("flamby_mpi.rounds")  # reaches only the rank's log file (logs.py)


def _clock_text(seconds: float) -> str:
    seconds = int(round(max(0.0, seconds)))
    hours, rest = divmod(seconds, 3600)
    minutes, seconds = divmod(rest, 60)
    return f"{hours}:{minutes:02d}:{seconds:02d}" if hours else f"{minutes}:{seconds:02d}"


def reaches_a_terminal(stream: TextIO) -> bool:
    """Whether what is written to the stream is shown on a terminal. Open MPI's mpirun gives the
    ranks it starts a pseudo-terminal for stdout whatever its own stdout is (a file, a pipe: a
    SLURM/PBS log would fill with redraws), so a rank of Open MPI's (OMPI_COMM_WORLD_SIZE) asks
    where its parent, the launcher (prterun, prted), writes: /proc/<parent>/fd/1. Cannot tell:
    plain lines, which read well on a terminal too."""
    if not (hasattr(stream, "isatty") and stream.isatty()):
        return False
    if "OMPI_COMM_WORLD_SIZE" not in os.environ:
        return True
    try:
        launchers_output = os.readlink(f"/proc/{os.getppid()}/fd/1")
    except OSError:
        return False
    return launchers_output.startswith(("/dev/pts/", "/dev/tty"))


class Progress:
    def __init__(self, total_rounds: int, stream: Optional[TextIO] = None, quiet: bool = False,
                 every_fraction: float = 0.1, every_s: float = 30.0,
                 clock: Callable[[], float] = time.monotonic):
        self.total = total_rounds
        self.stream = stream or sys.stdout
        self.quiet = quiet
        self.interactive = (not quiet) and reaches_a_terminal(self.stream)
        self.every_rounds = max(1, int(total_rounds * every_fraction))
        self.every_s = every_s
        self.clock = clock
        self.started: Optional[float] = None
        self._last_line_at: Optional[float] = None
        self._last_line_round = 0
        self._drawn = False
        self._resumed_at = 0  # rounds done before this process started (--resume): not in the ETA

    def resume_at(self, completed: int):
        self._resumed_at = self._last_line_round = completed

    def start(self):
        self.started = self._last_line_at = self.clock()

    def round_done(self, completed: int, round_s: float, mean_loss: float, note: str = ""):
        now = self.clock()
        if self.started is None:
            self.start()
        elapsed = now - self.started
        done_here = completed - self._resumed_at
        eta = elapsed / done_here * (self.total - completed) if done_here > 0 else 0.0
        text = (f"round {completed}/{self.total} done in {round_s:.2f} s{note}, mean train loss "
                f"{mean_loss:.4f} | elapsed {_clock_text(elapsed)}, ETA {_clock_text(eta)}")
        log.info(text)
        if self.quiet:
            return
        if self.interactive:
            self.stream.write(f"\r\033[K[flamby-mpi] {text}")
            self.stream.flush()
            self._drawn = True
            if completed == self.total:
                self.end_line()
            return
        due = (completed - self._last_line_round >= self.every_rounds
               or now - self._last_line_at >= self.every_s or completed == self.total)
        if due:
            self.stream.write(f"[flamby-mpi] {text}\n")
            self.stream.flush()
            self._last_line_at, self._last_line_round = now, completed

    def end_line(self):
        """Ends the line being redrawn, before anything else is printed."""
        if self._drawn:
            self.stream.write("\n")
            self.stream.flush()
            self._drawn = False
