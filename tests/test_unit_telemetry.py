"""Per-round telemetry and the progress line, without MPI."""
import csv
import io
import json

import pytest

from flamby_mpi.federation.protocol import ClientReply
from flamby_mpi.outputs.progress import Progress
from flamby_mpi.outputs.telemetry import ROUND_COLUMNS, RoundLog, TensorBoardSink, Traffic


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
               training_round=True)
    assert log.rows == [] and sink.rounds == []  # the waits after round 1 are not known yet
    log.round_done(1.75)  # aggregated: the round's whole time
    log.record(1, [_reply(0, 1, trained=False, wait=0.125), _reply(1, 1, trained=False, wait=0.5)],
               Traffic({0: 100, 1: 100}, {0: 30, 1: 30}), training_round=False)
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


# A stand-in for Open MPI's launcher: it gives its child a pseudo-terminal for stdout whatever its
# own stdout is; the child says on stderr what reaches_a_terminal decides.
_LAUNCHER_STANDIN = """
import os, pty, subprocess, sys
child = ("import sys; from flamby_mpi.outputs.progress import reaches_a_terminal; "
         "print(reaches_a_terminal(sys.stdout), file=sys.stderr)")
master, slave = pty.openpty()
done = subprocess.run([sys.executable, "-c", child], stdout=slave, stderr=subprocess.PIPE, text=True)
sys.stderr.write(done.stderr)
"""


@pytest.mark.parametrize("open_mpi, launchers_output, shown_on_a_terminal", [
    (True, "file", False),  # mpirun ... > log (SLURM/PBS logs): plain lines, not redraws
    (True, "terminal", True),
    (False, "file", True),  # not Open MPI's: a terminal is one
])
def test_under_open_mpi_a_terminal_is_one_only_where_the_launcher_writes_to_one(
        open_mpi, launchers_output, shown_on_a_terminal, tmp_path):
    import os
    import pty
    import subprocess
    import sys

    from support.mpi import REPO

    env = {k: v for k, v in os.environ.items() if not k.startswith("OMPI_")}
    env["PYTHONPATH"] = str(REPO)
    if open_mpi:
        env["OMPI_COMM_WORLD_SIZE"] = "2"
    master, slave = pty.openpty() if launchers_output == "terminal" else (None, None)
    with open(tmp_path / "log", "w") as log:
        done = subprocess.run([sys.executable, "-c", _LAUNCHER_STANDIN], stdout=slave if slave else log,
                              stderr=subprocess.PIPE, text=True, env=env, timeout=60)
    for fd in (master, slave):
        if fd is not None:
            os.close(fd)
    assert done.stderr.strip() == str(shown_on_a_terminal), done.stderr


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
    assert "final metrics (synthetic, FedAvg, 2 rounds):" in shown
    code = main(["--cf", "config/fedml_config.yaml", "--quiet", "--set", "comm_args.backend=inprocess",
                 "--set", "train_args.comm_round=1", "--set", "train_args.num_updates=1",
                 "--set", f"common_args.output_dir={tmp_path / 'one'}"])
    assert code == 0 and "final metrics (synthetic, FedAvg, 1 round):" in capsys.readouterr().out


@pytest.fixture(autouse=True)
def _in_repo(monkeypatch):
    from support.mpi import REPO

    monkeypatch.chdir(REPO)


# ---- TensorBoard event files written without TensorBoard (flamby_mpi/outputs/tensorboard_events.py) ----

def test_event_bytes_are_protobufs_own_serialization():
    from tensorboard.compat.proto.event_pb2 import Event, SessionLog
    from tensorboard.compat.proto.summary_pb2 import Summary, SummaryMetadata
    from tensorboard.compat.proto.tensor_pb2 import TensorProto
    from tensorboard.compat.proto.tensor_shape_pb2 import TensorShapeProto

    from flamby_mpi.outputs import tensorboard_events as te

    scalars = {"centre_0/train_loss": 0.693, "centre_10/bytes_sent": 123456789.0, "round/time_s": 0.0,
               "metric/ünïcode": -1.5e-7}
    expected = Event(wall_time=1795907794.25, step=300, summary=Summary(value=[
        Summary.Value(tag=tag, simple_value=value) for tag, value in scalars.items()]))
    assert te.event(1795907794.25, 300, summary=te.scalars_summary(scalars)) == expected.SerializeToString()
    assert te.event(5.5, file_version="brain.Event:2") == \
        Event(wall_time=5.5, file_version="brain.Event:2").SerializeToString()
    text = "| key | value |\n|---|---|\n| strategy | FedAvg |"
    tensor = TensorProto(dtype="DT_STRING", string_val=[text.encode()],
                         tensor_shape=TensorShapeProto(dim=[TensorShapeProto.Dim(size=1)]))
    metadata = SummaryMetadata(plugin_data=SummaryMetadata.PluginData(plugin_name="text"))
    expected = Event(wall_time=7.0, summary=Summary(value=[
        Summary.Value(tag="run/plan/text_summary", metadata=metadata, tensor=tensor)]))
    assert te.event(7.0, 0, summary=te.text_summary("run/plan", text)) == expected.SerializeToString()
    start = Event(wall_time=2.0, step=4, session_log=SessionLog(status=SessionLog.START))
    assert te.event(2.0, 4, session_start=True) == start.SerializeToString()
    for step in (1, 127, 128, 2 ** 40):  # varints of one, two and six bytes
        assert te.event(1.0, step) == Event(wall_time=1.0, step=step).SerializeToString()


def test_crc32c_of_the_standard_check_value():
    from flamby_mpi.outputs.tensorboard_events import crc32c

    assert crc32c(b"123456789") == 0xE3069283  # CRC-32C's published check value
    assert crc32c(b"") == 0


def test_tensorboard_reads_the_files_the_sink_writes(tmp_path):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    sink = TensorBoardSink(tmp_path / "tb", {"strategy": "FedAvg", "rounds": 3})
    sink.begin(0)
    for number in (1, 2, 3):
        sink.round(number, [{"centre": 0, "train_loss": 0.5 / number, "local_train_s": 0.01, "wait_s": None,
                             "bytes_sent": 1000, "bytes_received": 2000}], round_s=0.25 * number)
    sink.evaluation(3, {"average": 0.75, "pooled": None})
    sink.close()
    events = EventAccumulator(str(tmp_path / "tb"), size_guidance={"tensors": 0})
    events.Reload()
    assert [(e.step, e.value) for e in events.Scalars("centre_0/train_loss")] == \
        [(n, pytest.approx(0.5 / n)) for n in (1, 2, 3)]
    assert [e.value for e in events.Scalars("round/time_s")] == [0.25, 0.5, 0.75]
    assert "centre_0/wait_s" not in events.Tags()["scalars"]  # None is left out, not written as 0
    assert [e.value for e in events.Scalars("metric/average")] == [0.75]
    (plan,) = events.Tensors("run/plan/text_summary")
    assert b"| strategy | FedAvg |" in plan.tensor_proto.string_val[0]


def test_an_unwritable_tensorboard_directory_turns_it_off_with_a_warning(tmp_path, caplog):
    (tmp_path / "tb").write_text("a file where the directory should be")
    sink = TensorBoardSink(tmp_path / "tb", {})
    sink.begin(0)
    sink.round(1, [], round_s=0.1)  # no error
    sink.close()
    assert "TensorBoard is off for this run" in caplog.text


def test_a_tensorboard_directory_linking_outside_is_not_written_through(tmp_path, caplog):
    outside = tmp_path / "outside"
    outside.mkdir()
    (tmp_path / "run").mkdir()
    (tmp_path / "run" / "tensorboard").symlink_to(outside, target_is_directory=True)
    sink = TensorBoardSink(tmp_path / "run" / "tensorboard", {"strategy": "FedAvg"})
    sink.begin(0)
    sink.round(1, [], round_s=0.1)
    sink.close()
    assert list(outside.iterdir()) == []
    assert "TensorBoard is off for this run" in caplog.text and "is a link" in caplog.text


def test_tensorboard_on_a_full_disk_turns_off_with_one_warning_naming_it(tmp_path, caplog):
    from support.tmpfs import tmpfs

    with tmpfs(tmp_path / "small", 16) as small:
        sink = TensorBoardSink(small / "tensorboard", {"strategy": "FedAvg"})
        sink.begin(0)
        for step in range(2000):  # about 60 bytes an event: the 16 KiB fill up
            sink.round(step, [], round_s=0.1)
        sink.close()
        warnings = [r.getMessage() for r in caplog.records if "TensorBoard is off" in r.getMessage()]
        assert len(warnings) == 1 and "no space left on the device" in warnings[0]
        assert str(small / "tensorboard" / "events.out.tfevents.") in warnings[0]


def test_a_session_resumed_at_a_step_replaces_what_earlier_sessions_wrote_from_there(tmp_path):
    """Two sessions in one process and second still get two files; TensorBoard's reader shows each
    step once, from the session that went on."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    for first, last, loss in ((0, 4, 1.0), (2, 5, 2.0)):
        sink = TensorBoardSink(tmp_path / "tb", {"rounds": last})
        sink.begin(first)
        for number in range(max(first, 1), last + 1):  # a resumed session writes its first round again
            row = {"centre": 0, "train_loss": loss * number, "local_train_s": None, "wait_s": None,
                   "bytes_sent": None, "bytes_received": None}
            sink.round(number, [row], round_s=None)
        sink.close()
    assert len(list((tmp_path / "tb").iterdir())) == 2
    events = EventAccumulator(str(tmp_path / "tb"))
    events.Reload()
    assert [(e.step, e.value) for e in events.Scalars("centre_0/train_loss")] == \
        [(1, 1.0), (2, 4.0), (3, 6.0), (4, 8.0), (5, 10.0)]


def test_nothing_is_written_before_the_session_begins(tmp_path):
    sink = TensorBoardSink(tmp_path / "tb", {})
    sink.round(1, [], round_s=0.1)
    sink.close()
    assert not (tmp_path / "tb").exists()
