"""Per-round telemetry, kept by rank 0 only: rounds.csv, TensorBoard, totals for results.json.

Clients send their part with each ClientReply (local training time, train loss,
and how long they waited for the message they answer); the transport tells the
server how many bytes each message took. So no rank but 0 writes telemetry files.

A centre's wait after round r is only known when it answers exchange r + 1, so
the rows of a round are completed one exchange later (the final, evaluation-only
exchange completes the last round's rows).
"""
from __future__ import annotations

import csv
import io
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Dict, List, Optional

from ..storage.safe_files import StorageError, UnsafePathError, is_storage_error

ROUND_COLUMNS = ("round", "centre", "local_train_s", "wait_s", "bytes_sent", "bytes_received",
                 "train_loss", "sampled", "round_s")

log = logging.getLogger("flamby_mpi.telemetry")


@dataclass
class Traffic:
    """Bytes of one exchange per centre, as the transport sent them: the server's message to the
    centre (what the centre received) and the centre's reply (what it sent)."""
    to_centre: Dict[int, int] = field(default_factory=dict)
    from_centre: Dict[int, int] = field(default_factory=dict)


def _seconds(value: Optional[float]) -> Optional[float]:
    return None if value is None else round(value, 6)


class RoundLog:
    """rounds.csv rows and run totals, fed once per exchange by ServerRun."""

    def __init__(self, sinks=()):
        self.rows: List[Dict] = []
        self.sinks = list(sinks)
        self._open: List[Dict] = []  # the rows of the last training round, waiting for wait_s
        self._open_round_s: Optional[float] = None
        self.totals: Dict[int, Dict[str, float]] = {}

    def _total(self, centre: int) -> Dict[str, float]:
        return self.totals.setdefault(centre, {"bytes_sent": 0, "bytes_received": 0, "compute_s": 0.0,
                                               "wait_s": 0.0})

    def record(self, round_idx: int, replies, traffic: Optional[Traffic], training_round: bool):
        """One exchange: its replies (in rank order) and its traffic; a training round opens one
        row per centre, sampled or not, whose round_s comes with round_done()."""
        traffic = traffic or Traffic()
        waits = {r.center: r.wait_s for r in replies}
        for row in self._open:
            row["wait_s"] = _seconds(waits.get(row["centre"]))
            self._total(row["centre"])["wait_s"] += row["wait_s"] or 0.0
        if self._open:
            self.rows.extend(self._open)
            for sink in self.sinks:
                sink.round(self._open[0]["round"], self._open, self._open_round_s)
        self._open, self._open_round_s = [], None
        for reply in replies:
            total = self._total(reply.center)
            total["bytes_sent"] += traffic.from_centre.get(reply.center, 0)
            total["bytes_received"] += traffic.to_centre.get(reply.center, 0)
            total["compute_s"] += reply.train_s or 0.0
            if training_round:
                self._open.append({
                    "round": round_idx + 1, "centre": reply.center, "local_train_s": _seconds(reply.train_s),
                    "wait_s": None, "bytes_sent": traffic.from_centre.get(reply.center),
                    "bytes_received": traffic.to_centre.get(reply.center), "train_loss": reply.train_loss,
                    "sampled": reply.trained, "round_s": None})

    def round_done(self, round_s: float):
        """The training round just recorded is aggregated: round_s is the server's time for all of
        it (from the end of the previous round: its message out, the clients' work, their replies
        in, the aggregation), the same figure the progress line shows."""
        for row in self._open:
            row["round_s"] = _seconds(round_s)
        self._open_round_s = round_s

    def close(self):
        """The run ended: rows still open (a run that stopped early) are kept without their wait."""
        self.rows.extend(self._open)
        self._open = []

    def state(self) -> Dict:
        """The rows and totals so far, as JSON data (a checkpoint)."""
        return {"rows": self.rows, "open": self._open, "open_round_s": self._open_round_s,
                "totals": {str(c): t for c, t in self.totals.items()}}

    def restore(self, data: Dict):
        self.rows, self._open = list(data["rows"]), list(data["open"])
        self._open_round_s = data["open_round_s"]
        self.totals = {int(c): dict(t) for c, t in data["totals"].items()}

    def csv_text(self) -> str:
        out = io.StringIO()
        writer = csv.DictWriter(out, fieldnames=ROUND_COLUMNS)
        writer.writeheader()
        for row in self.rows:
            # .get: rows restored from a checkpoint of an earlier version lack newer columns
            writer.writerow({k: "" if row.get(k) is None else row[k] for k in ROUND_COLUMNS})
        return out.getvalue()

    def summary(self) -> Dict:
        """Totals for results.json: bytes moved, and compute and communication time per centre."""
        per_centre = {f"client_{c}": {k: round(v, 6) if isinstance(v, float) else v for k, v in t.items()}
                      for c, t in sorted(self.totals.items())}
        return {"bytes_moved": sum(t["bytes_sent"] + t["bytes_received"] for t in self.totals.values()),
                "per_centre": per_centre}


class TensorBoardSink:
    """TensorBoard event files in one run directory (`tensorboard --logdir runs/` compares runs),
    written by flamby_mpi/outputs/tensorboard_events.py: one event per round and per evaluation, without
    importing TensorBoard. A file that cannot be written turns TensorBoard off for the run, with
    one warning naming it: telemetry never fails a run. A full disk ends the run at its next
    checkpoint or result file instead (which --resume continues); a link, a FIFO or a file where
    the directory or the event file goes is refused (safe_files.UnsafePathError), never written
    through."""

    def __init__(self, directory: Path, hyperparameters: Dict):
        self._writer = None
        self._path = Path(directory)
        self._hyperparameters = dict(hyperparameters)

    def begin(self, step: int):
        """Opens this session's event file once the run knows where it starts: round 0, or the round
        a --resume continues from. Nothing is made before (a refused --resume leaves no file). The
        session start at `step` makes TensorBoard drop what an earlier session wrote from that step
        on, which this one writes again (a checkpoint is cut before its round's rows are complete)."""
        from .tensorboard_events import EventFileWriter

        try:
            self._writer = EventFileWriter(self._path)
            self._path = self._writer.path
            self._writer.session_start(step)
            table = "\n".join(f"| {k} | {v} |" for k, v in self._hyperparameters.items())
            self._writer.text(step, "run/plan", "| key | value |\n|---|---|\n" + table)
        except (OSError, StorageError, UnsafePathError) as exc:
            self._off(exc)

    def _off(self, exc: Exception):
        if isinstance(exc, OSError) and is_storage_error(exc):
            exc = StorageError(self._path, exc)
        reason = exc.args[0] if isinstance(exc, (StorageError, UnsafePathError)) else exc
        log.warning("TensorBoard is off for this run: %s", reason)
        if self._writer is not None:
            try:
                self._writer.close()
            except OSError:
                pass
        self._writer = None

    def round(self, round_number: int, rows: List[Dict], round_s: Optional[float]):
        scalars = {f"centre_{row['centre']}/{key}": row[key] for row in rows
                   for key in ("train_loss", "local_train_s", "wait_s", "bytes_sent", "bytes_received")}
        scalars["round/time_s"] = round_s
        self._write(round_number, scalars)

    def evaluation(self, round_number: int, metrics: Dict[str, float]):
        self._write(round_number, {f"metric/{name}": value for name, value in metrics.items()})

    def _write(self, step: int, scalars: Dict[str, Optional[float]]):
        """All of a step's scalars as one event (a summary of several values, as TensorBoard reads
        them)."""
        if self._writer is None:
            return
        try:
            self._writer.scalars(step, {tag: value for tag, value in scalars.items() if value is not None})
        except OSError as exc:
            self._off(exc)

    def close(self):
        if self._writer is not None:
            try:
                self._writer.close()
            except OSError as exc:  # the last record's flush on a full disk
                self._off(exc)
