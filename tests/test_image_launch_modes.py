"""An image dataset in the launcher's other launch modes (issue 20): FLamby's Fed-Camelyon16
attention-MIL model on the stand-in data, 2 centres, Adam, a checkpoint every round.

- one process per terminal (no mpirun, the authenticated rendezvous) ends with the global_model.pt
  of the mpiexec run of the same config, bit for bit;
- SIGTERM to mpiexec, as a scheduler sends it, once round 1's checkpoint is complete: every rank
  stops at a round boundary with exit 143, and `--resume` ends with the uninterrupted mpiexec run's
  global_model.pt, metrics, and one rounds.csv row per round and centre; the report picture is
  drawn from the resumed run;
- the telemetry of an image run: rounds.csv, TensorBoard's events, both agreeing with results.json;
- (heavy) Fed-IXI's 3-D U-Net, whose BatchNorm buffers and AdamW moments a checkpoint must carry:
  stopped by SIGTERM and resumed in process, bitwise the uninterrupted run (the in-process twin is
  bitwise the mpiexec run, tests/test_standin_fed_ixi.py).

Fed-Camelyon16 rather than Fed-IXI's 3-D U-Net: at batch size 1 and one update its round costs a
fraction of IXI's, so the four jobs fit CI's budget. Its bags go through FLamby's collate_fn (padded
to 10000 tiles). Adam (FLamby's own Optimizer and LR for the dataset, in place of the config's SGD
without momentum, which keeps no state): its moments must survive the checkpoint for the resumed
run to be bitwise the uninterrupted one.
"""
import csv
import json
import os
import re
import signal
import subprocess
import sys
import threading
import time
import uuid
from pathlib import Path

import pytest

from flamby_mpi import cli
from support.mpi import LAUNCHER, REPO, kill_group, mpiexec, run_job, run_mpi
from support.mpi import test_env as env_for
from support.optional import import_or_skip
from support.separate import SeparateRanks
from support.standin_runs import scratch_without_test_in_path, sha256, write_standin

pytest.importorskip("flamby.datasets.fed_camelyon16", reason="FLamby is not installed")

pytestmark = [pytest.mark.mpi, pytest.mark.timeout(600)]

DATASET = "fed_camelyon16"
CONFIG = REPO / "config" / f"{DATASET}.yaml"
CENTRES = (0, 1)
ROUNDS = 3
# Three updates a round: a round long enough that a SIGTERM sent as round 1's checkpoint completes
# reaches the ranks before the last round's boundary, where a stop is no longer taken.
RUN = ["--set", f"data_args.centers=[{','.join(map(str, CENTRES))}]",
       "--set", f"train_args.comm_round={ROUNDS}", "--set", "train_args.num_updates=3",
       "--set", "train_args.batch_size=1", "--set", "train_args.client_optimizer=torch.optim.Adam",
       "--set", "train_args.learning_rate=0.001", "--set", "validation_args.frequency_of_the_test=1",
       "--set", "common_args.checkpoint_every=1", "--set", "tracking_args.tensorboard=true"]
NP = len(CENTRES) + 1
JOB_DEADLINE_S = 240  # start-up of 3 ranks importing FLamby on a loaded 2-core machine, then 3 short rounds
STOP_DEADLINE_S = 60  # from the SIGTERM to mpiexec's exit: the round under way, the cut, the exit
PREEMPTED = 143  # 128 + SIGTERM (docs/checkpoints.md#preemption-and-ctrl-c)
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


@pytest.fixture(scope="module")
def data():
    """The launcher arguments `scripts/standin_data.py` printed for its stand-in."""
    with scratch_without_test_in_path("flamby-mpi-imgmodes-") as root:
        yield write_standin(DATASET, root / "data")


def _config(data):
    return ["--cf", str(CONFIG), *data, *RUN]


@pytest.fixture(scope="module")
def reference(data, tmp_path_factory):
    """The output directory of the uninterrupted mpiexec run, which the other modes must reproduce."""
    root = tmp_path_factory.mktemp("reference")
    cwd, home = root / "cwd", root / "home"
    cwd.mkdir()
    home.mkdir()
    marker, out = f"t{uuid.uuid4().hex[:10]}", cwd / "out"
    job = run_mpi(NP, [*_config(data), "--run_id", marker, "--set", f"common_args.output_dir={out}"],
                  cwd, home, deadline_s=JOB_DEADLINE_S, marker=marker)
    assert job.returncode == 0, job.output
    assert job.leftovers == [], job.leftovers
    return out


def _results(out: Path) -> dict:
    return json.loads((out / "results.json").read_text())


def _rounds(out: Path):
    with open(out / "rounds.csv", newline="") as f:
        return list(csv.DictReader(f))


def _training_rows(out: Path):
    """rounds.csv without its timings and byte counts, which differ from run to run."""
    return [(int(r["round"]), int(r["centre"]), r["train_loss"], r["sampled"]) for r in _rounds(out)]


def _assert_telemetry(out: Path):
    """rounds.csv has one row per round and centre, TensorBoard one point per round and centre
    (also across a resume, whose ranks write a second events file), and both agree with results.json."""
    rows = _training_rows(out)
    assert [(r, c) for r, c, _, _ in rows] == [(r, c) for r in range(1, ROUNDS + 1) for c in CENTRES], rows
    assert all(sampled == "True" and float(loss) > 0 for _, _, loss, sampled in rows), rows
    event_files = sorted((out / "tensorboard").glob("events.out.tfevents.*"))
    assert event_files and all(f.stat().st_size > 0 for f in event_files), event_files
    try:
        from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
    except ImportError:  # the files are written without TensorBoard; reading them back needs it
        return
    events = EventAccumulator(str(out / "tensorboard"))
    events.Reload()
    for c in CENTRES:
        losses = events.Scalars(f"centre_{c}/train_loss")
        assert [e.step for e in losses] == list(range(1, ROUNDS + 1))
        assert [e.value for e in losses] == pytest.approx([float(loss) for _, k, loss, _ in rows if k == c],
                                                          rel=1e-6)
    metrics = _results(out)["metrics"]
    for name in [f"client_test_{c}" for c in CENTRES] + ["average"]:
        evaluated = events.Scalars(f"metric/{name}")
        assert [e.step for e in evaluated] == list(range(1, ROUNDS + 1)), name  # evaluated every round
        assert evaluated[-1].value == pytest.approx(metrics[name])
    assert [e.value for e in events.Scalars("metric/pooled")] == pytest.approx([metrics["pooled"]])


def test_one_process_per_terminal_gives_the_mpiexec_runs_model(data, reference, workdir):
    cwd, home, marker = workdir
    ranks = SeparateRanks(cwd, home, CONFIG, marker, [*data, *RUN])
    try:
        for k in (2, 1, 0):  # the clients first: they wait for the server's rendezvous file
            ranks.start(k)
        codes = ranks.wait(JOB_DEADLINE_S)
        assert codes == {f"rank{k}": 0 for k in (2, 1, 0)}, ranks.all_logs()
        assert "all 2 clients joined" in ranks.log("rank0")
        assert ranks.leftovers() == []
    finally:
        ranks.kill_all()
    out = cwd / "runs" / marker
    results = _results(out)
    assert results["world_size"] == NP and results["centres"] == list(CENTRES)
    assert results["rounds_completed"] == ROUNDS
    assert sha256(out / "global_model.pt") == sha256(reference / "global_model.pt")
    assert results["metrics"] == _results(reference)["metrics"]
    assert _training_rows(out) == _training_rows(reference)


def _wait_for_file(path: Path, job: subprocess.Popen, deadline_s: float):
    end = time.monotonic() + deadline_s
    while not path.exists():
        if job.poll() is not None:
            raise AssertionError(f"the job ended ({job.returncode}) before {path} was written:\n"
                                 + job.communicate()[0])
        assert time.monotonic() < end, f"no {path} within {deadline_s} s"
        time.sleep(0.01)


def test_sigterm_to_mpiexec_after_a_checkpoint_then_resume_equals_the_uninterrupted_run(data, reference, workdir):
    cwd, home, marker = workdir
    out = cwd / "out"
    command = [mpiexec(), "-n", str(NP), sys.executable, str(LAUNCHER), *_config(data),
               "--run_id", marker, "--set", f"common_args.output_dir={out}"]
    job = subprocess.Popen(command, cwd=cwd, env=env_for(home), stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                           text=True, start_new_session=True)
    try:
        # Rank 0's part of cut 1 is on disk while round 2 trains; cut 1's manifest only comes while
        # round 3, the last, trains, and a stop asked then would land after the last round.
        _wait_for_file(out / "checkpoints" / "round_1" / "rank_0.pt", job, JOB_DEADLINE_S)
        job.send_signal(signal.SIGTERM)  # to mpiexec alone, which passes it on to every rank
        output, _ = job.communicate(timeout=STOP_DEADLINE_S)
    finally:
        kill_group(job)
    assert job.returncode == PREEMPTED, output
    stopped = re.search(r"stopped by SIGTERM after round (\d+); checkpoint in", output)
    assert stopped, output
    cut = int(stopped.group(1))
    assert 1 <= cut < ROUNDS, output
    assert (out / "checkpoints" / f"round_{cut}" / "manifest.json").is_file()
    assert f"--run_id {marker}" in output and "--resume" in output and "Traceback" not in output
    assert not (out / "results.json").exists()  # a stopped run is not a finished one

    resumed = run_job([*command, "--resume"], cwd, env_for(home), JOB_DEADLINE_S, marker=marker)
    assert resumed.returncode == 0, resumed.output
    assert f"resumed from round {cut}" in resumed.output
    assert resumed.leftovers == [], resumed.leftovers
    results = _results(out)
    assert results["rounds_completed"] == ROUNDS and results["resumed_from"]["round"] == cut
    assert sha256(out / "global_model.pt") == sha256(reference / "global_model.pt")
    assert results["metrics"] == _results(reference)["metrics"]
    assert (out / "metrics.csv").read_text() == (reference / "metrics.csv").read_text()
    assert _training_rows(out) == _training_rows(reference)  # every round once, the same losses
    _assert_telemetry(out)

    assert (out / "report.png").read_bytes().startswith(PNG_MAGIC)  # drawn by the resumed run itself
    picture = cwd / "resumed.png"
    report = run_job([sys.executable, "-m", "flamby_mpi.report", str(out), "--out", str(picture)],
                     cwd, env_for(home), 120)
    assert report.returncode == 0, report.output
    assert "client_test_1" in report.stdout and f"picture: {picture}" in report.stdout
    assert picture.read_bytes().startswith(PNG_MAGIC)


def test_an_image_runs_telemetry_is_complete(reference):
    _assert_telemetry(reference)
    timing = _results(reference)["ranks"]
    assert [r["rank"] for r in timing] == list(range(NP)) and all(r["peak_rss_mb"] > 0 for r in timing)


def _sigterm_once_written(path: Path, stop: threading.Event):
    while not stop.is_set():
        if path.exists():
            os.kill(os.getpid(), signal.SIGTERM)
            return
        time.sleep(0.005)


@pytest.mark.heavy
def test_fed_ixi_unet_with_batchnorm_and_adamw_stopped_and_resumed_in_process_is_bitwise(tmp_path, monkeypatch):
    """Heavy: three 3-D U-Net runs in one process, about half a minute of CPU and 1.4 GiB."""
    torch = import_or_skip("torch")
    import_or_skip("flamby.datasets.fed_ixi")
    data = write_standin("fed_ixi", tmp_path / "data")
    monkeypatch.chdir(tmp_path)

    def argv(out):  # FLamby's Optimizer for IXI is AdamW (the config's SGD keeps no state)
        return ["--cf", str(REPO / "config" / "fed_ixi.yaml"), *data, "--set", "data_args.centers=[0,1]",
                "--set", f"train_args.comm_round={ROUNDS}", "--set", "train_args.num_updates=1",
                "--set", "train_args.batch_size=1", "--set", "train_args.client_optimizer=torch.optim.AdamW",
                "--set", "comm_args.backend=inprocess", "--set", f"common_args.output_dir={out}", "--quiet"]

    full, stopped = tmp_path / "full", tmp_path / "stopped"
    assert cli.main(argv(full)) == 0
    model = torch.load(full / "global_model.pt", weights_only=True)
    assert any(name.endswith("running_var") for name in model) and \
        any(name.endswith("num_batches_tracked") for name in model)  # the buffers are in what is compared
    stop = threading.Event()
    sender = threading.Thread(target=_sigterm_once_written, daemon=True,
                              args=(stopped / "checkpoints" / "round_1" / "rank_0.pt", stop))
    sender.start()
    try:
        assert cli.main(argv(stopped)) == PREEMPTED
    finally:
        stop.set()
        sender.join()
    assert not (stopped / "results.json").exists()
    assert cli.main([*argv(stopped), "--resume"]) == 0
    assert _results(stopped)["resumed_from"]["round"] in range(1, ROUNDS)
    assert sha256(stopped / "global_model.pt") == sha256(full / "global_model.pt")
    assert (stopped / "metrics.csv").read_text() == (full / "metrics.csv").read_text()
    assert _training_rows(stopped) == _training_rows(full)
