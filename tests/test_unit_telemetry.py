"""Per-round telemetry and the progress line, without MPI."""
import csv
import io
import json

import pytest

from flamby_mpi.progress import Progress
from flamby_mpi.protocol import ClientReply
from flamby_mpi.telemetry import ROUND_COLUMNS, RoundLog, Traffic


def _reply(centre, round_idx, trained=True, wait=None):
    return ClientReply(center=centre, round_idx=round_idx, train_samples=10, device="cpu",
                       state={} if trained else None, train_loss=0.5 if trained else None,
                       train_s=0.25 if trained else None, wait_s=wait)


class _Sink:
    def __init__(self):
        self.rounds, self.evaluations = [], []

    def round(self, number, rows, round_s):
        self.rounds.append((number, [r["centre"] for r in rows], round_s))


def test_a_round_is_completed_by_the_waits_of_the_next_exchange():
    sink = _Sink()
    log = RoundLog([sink])
    log.record(0, [_reply(0, 0), _reply(1, 0, trained=False)], Traffic({0: 100, 1: 100}, {0: 90, 1: 20}),
               1.5, training_round=True)
    assert log.rows == [] and sink.rounds == []  # the waits after round 1 are not known yet
    log.round_done(1.75)  # aggregated: the round's whole time replaces the time so far
    log.record(1, [_reply(0, 1, trained=False, wait=0.125), _reply(1, 1, trained=False, wait=0.5)],
               Traffic({0: 100, 1: 100}, {0: 30, 1: 30}), 0.1, training_round=False)
    log.close()
    assert sink.rounds == [(1, [0, 1], 1.75)]
    first, second = log.rows
    assert first == {"round": 1, "centre": 0, "local_train_s": 0.25, "wait_s": 0.125, "bytes_sent": 90,
                     "bytes_received": 100, "train_loss": 0.5, "sampled": True, "round_s": 1.75}
    assert second["sampled"] is False and second["train_loss"] is None and second["wait_s"] == 0.5
    rows = list(csv.DictReader(io.StringIO(log.csv_text())))
    assert tuple(rows[0]) == ROUND_COLUMNS and rows[1]["train_loss"] == "" and rows[1]["round_s"] == "1.75"
    summary = log.summary()
    assert summary["bytes_moved"] == 100 + 100 + 90 + 20 + 100 + 100 + 30 + 30
    assert summary["per_centre"]["client_0"] == {"bytes_sent": 120, "bytes_received": 200, "compute_s": 0.25,
                                                 "wait_s": 0.125}
    json.dumps(summary)


class _Stream(io.StringIO):
    def __init__(self, tty):
        super().__init__()
        self.tty = tty

    def isatty(self):
        return self.tty


class _Clock:
    def __init__(self):
        self.now = 0.0

    def __call__(self):
        return self.now


def _drive(total: int, rounds: int, round_s: float, tty: bool, after_first=None) -> str:
    """What a Progress of `total` rounds writes for `rounds` rounds of round_s seconds each."""
    stream, clock = _Stream(tty=tty), _Clock()
    progress = Progress(total, stream=stream, clock=clock)
    progress.start()
    for k in range(1, rounds + 1):
        clock.now += round_s
        progress.round_done(k, round_s, 0.5)
        if k == 1 and after_first is not None:
            after_first(stream.getvalue())
    return stream.getvalue()


def test_a_terminal_gets_one_line_redrawn_with_the_eta():
    def first(text):
        assert "ETA 0:30" in text and "elapsed 0:10" in text

    text = _drive(4, 4, 10.0, tty=True, after_first=first)
    assert text.count("\r") == 4 and text.endswith("\n") and text.count("\n") == 1
    assert "round 4/4 done" in text


def test_a_file_gets_a_line_every_tenth_or_thirty_seconds_and_the_last_round():
    lines = _drive(100, 100, 0.1, tty=False).splitlines()
    assert len(lines) == 10 and lines[0].startswith("[flamby-mpi] round 10/100 done")
    assert lines[-1].startswith("[flamby-mpi] round 100/100 done")
    slow = _drive(1000, 4, 31.0, tty=False)
    assert len(slow.splitlines()) == 4  # every 30 s although far from 10%


def test_quiet_shows_only_the_final_table(tmp_path, capsys):
    from flamby_mpi.cli import main

    out = tmp_path / "run"
    code = main(["--cf", "config/fedml_config.yaml", "--quiet", "--set", "comm_args.backend=inprocess",
                 "--set", "train_args.comm_round=2", "--set", "train_args.num_updates=2",
                 "--set", "tracking_args.tensorboard=false", "--set", f"common_args.output_dir={out}"])
    assert code == 0
    shown = capsys.readouterr().out
    assert "final metrics" in shown and "client_test_3" in shown
    assert "round 2/2 done" not in shown and "evaluation after" not in shown and "outputs in" not in shown
    assert "round 2/2 done" in (out / "logs" / "rank0.log").read_text()  # kept in the log file
    assert not (out / "tensorboard").exists()
    assert len((out / "rounds.csv").read_text().splitlines()) == 1 + 2 * 4


@pytest.fixture(autouse=True)
def _in_repo(monkeypatch):
    from support.mpi import REPO

    monkeypatch.chdir(REPO)
