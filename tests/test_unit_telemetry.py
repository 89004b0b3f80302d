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
    log.record(1, [_reply(0, 1, trained=False, wait=0.125), _reply(1, 1, trained=False, wait=0.5)],
               Traffic({0: 100, 1: 100}, {0: 30, 1: 30}), 0.1, training_round=False)
    log.close()
    assert sink.rounds == [(1, [0, 1], 1.5)]
    first, second = log.rows
    assert first == {"round": 1, "centre": 0, "local_train_s": 0.25, "wait_s": 0.125, "bytes_sent": 90,
                     "bytes_received": 100, "train_loss": 0.5, "sampled": True}
    assert second["sampled"] is False and second["train_loss"] is None and second["wait_s"] == 0.5
    rows = list(csv.DictReader(io.StringIO(log.csv_text())))
    assert tuple(rows[0]) == ROUND_COLUMNS and rows[1]["train_loss"] == ""
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


def test_a_terminal_gets_one_line_redrawn_with_the_eta():
    stream, clock = _Stream(tty=True), _Clock()
    progress = Progress(4, stream=stream, clock=clock)
    progress.start()
    for k in range(1, 5):
        clock.now += 10
        progress.round_done(k, 10.0, 0.5)
        if k == 1:
            assert "ETA 0:30" in stream.getvalue() and "elapsed 0:10" in stream.getvalue()
    text = stream.getvalue()
    assert text.count("\r") == 4 and text.endswith("\n") and text.count("\n") == 1
    assert "round 4/4 done" in text


def test_a_file_gets_a_line_every_tenth_or_thirty_seconds_and_the_last_round():
    stream, clock = _Stream(tty=False), _Clock()
    progress = Progress(100, stream=stream, clock=clock)
    progress.start()
    for k in range(1, 101):
        clock.now += 0.1
        progress.round_done(k, 0.1, 0.5)
    lines = stream.getvalue().splitlines()
    assert len(lines) == 10 and lines[0].startswith("[flamby-mpi] round 10/100 done")
    assert lines[-1].startswith("[flamby-mpi] round 100/100 done")
    slow, clock = _Stream(tty=False), _Clock()
    progress = Progress(1000, stream=slow, clock=clock)
    progress.start()
    for k in range(1, 5):
        clock.now += 31
        progress.round_done(k, 31.0, 0.5)
    assert len(slow.getvalue().splitlines()) == 4  # every 30 s although far from 10%


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
