"""Real multi-process runs: `mpiexec -n K python launch_client.py ...` with deadlines."""
import hashlib
import json
import signal
import subprocess
import sys
import time

import pytest
import torch

from support.mpi import (
    DEFAULT_CONFIG,
    LAUNCHER,
    kill_group,
    mpich_segments,
    mpiexec,
    run_mpi,
    wait_until_gone,
)
from support.mpi import test_env as job_env

pytestmark = pytest.mark.mpi

FAST = ["--set", "train_args.comm_round=4", "--set", "train_args.num_updates=10",
        "--set", "validation_args.frequency_of_the_test=2"]


def _run(workdir, np_=5, extra=(), deadline_s=120, env=None, config=DEFAULT_CONFIG):
    cwd, home, marker = workdir
    out = cwd / "out"
    args = ["--cf", str(config), "--run_id", marker, "--set", f"common_args.output_dir={out}", *extra]
    return run_mpi(np_, args, cwd, home, deadline_s, env, marker=marker), out


def _sha(path):
    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_full_synthetic_run_writes_the_output_contract(workdir):
    cwd, home, marker = workdir
    job, out = _run(workdir, extra=FAST)
    assert job.returncode == 0, job.output
    results = json.loads((out / "results.json").read_text())
    assert results["dataset"] == "synthetic" and results["strategy"] == "FedAvg"
    assert results["num_clients"] == 4 and results["rounds_completed"] == 4
    assert results["seed"] == 0 and results["run_id"] == marker
    metrics = results["metrics"]
    assert set(metrics) == {"client_test_0", "client_test_1", "client_test_2", "client_test_3",
                            "average", "pooled"}
    assert all(0.0 <= metrics[k] <= 1.0 for k in metrics)
    # Better than chance after 4 rounds of FedAvg on a learnable task.
    assert metrics["pooled"] > 0.6
    assert set(results["timing"]) >= {"startup_s", "train_s", "total_s"}
    assert results["devices"] == {f"client_{k}": "cpu" for k in range(4)}

    csv_rows = (out / "results.csv").read_text().splitlines()
    assert csv_rows[0].split(",")[:4] == ["Test", "Method", "Metric", "seed"]
    assert [r.split(",")[0] for r in csv_rows[1:]] == [f"client_test_{k}" for k in range(4)] + ["Pooled Test"]
    assert all(r.split(",")[1] == "FedAvg10" for r in csv_rows[1:])

    metric_rows = (out / "metrics.csv").read_text().splitlines()[1:]
    rounds = sorted({int(r.split(",")[0]) for r in metric_rows})
    assert rounds == [2, 4]  # every 2 rounds, and the last one
    state = torch.load(out / "global_model.pt")
    assert set(state) == {"linear.weight", "linear.bias"}
    assert sorted(p.name for p in (out / "logs").iterdir()) == [f"rank{k}.log" for k in range(5)]
    assert "train_args" in (out / "config.yaml").read_text()

    # Progress and the per-centre table on the console.
    assert "round 4/4 done" in job.stdout and "client_test_3" in job.stdout
    # No side effects outside the output directory; nothing left running.
    assert not (home / ".fedml").exists()
    assert not (cwd / "log").exists()
    assert sorted(p.name for p in cwd.iterdir()) == ["out"]
    assert job.leftovers == []
    _check_telemetry(out, results, state, rounds=4, centres=4)


def _check_telemetry(out, results, state, rounds, centres):
    """rounds.csv has a row per round and centre whose bytes are the model's plus a FedML envelope,
    the totals add up, TensorBoard's own reader finds the scalars, and report.png is there."""
    import csv

    assert (out / "report.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"

    rows = list(csv.DictReader((out / "rounds.csv").open()))
    assert list(rows[0]) == ["round", "centre", "local_train_s", "wait_s", "bytes_sent", "bytes_received",
                             "train_loss", "sampled", "round_s"]
    assert [(int(r["round"]), int(r["centre"])) for r in rows] == \
        [(r, c) for r in range(1, rounds + 1) for c in range(centres)]
    model_bytes = sum(t.numel() * t.element_size() for t in state.values())
    for row in rows:
        assert row["sampled"] == "True" and float(row["train_loss"]) > 0
        assert 0 <= float(row["local_train_s"]) < 60 and 0 <= float(row["wait_s"]) < 60
        assert float(row["local_train_s"]) < float(row["round_s"]) < 60
        # Round 1 also carries FedML's start-up status messages; later rounds only the exchange.
        envelope = 8192 if row["round"] == "1" else 2048
        for key in ("bytes_sent", "bytes_received"):
            assert model_bytes < int(row[key]) < model_bytes + envelope, (key, row)
    traffic = results["traffic"]
    per_centre = traffic["per_centre"]
    assert sum(t["bytes_sent"] + t["bytes_received"] for t in per_centre.values()) == traffic["bytes_moved"]
    for c in range(centres):
        in_rows = sum(int(r["bytes_sent"]) for r in rows if int(r["centre"]) == c)
        # The totals also count the final, evaluation-only exchange (its reply has no model but
        # the test predictions for the pooled metric).
        assert 0 < per_centre[f"client_{c}"]["bytes_sent"] - in_rows < 8192

    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(out / "tensorboard"))
    events.Reload()
    tags = set(events.Tags()["scalars"])
    assert {"centre_0/train_loss", "centre_3/wait_s", "centre_2/bytes_received", "round/time_s",
            "metric/client_test_1", "metric/average", "metric/pooled"} <= tags
    assert [e.step for e in events.Scalars("centre_1/train_loss")] == list(range(1, rounds + 1))
    assert events.Scalars("metric/pooled")[0].value == pytest.approx(results["metrics"]["pooled"])
    losses = [float(r["train_loss"]) for r in rows if r["centre"] == "1"]
    assert [e.value for e in events.Scalars("centre_1/train_loss")] == pytest.approx(losses, rel=1e-6)
    times = [float(r["round_s"]) for r in rows if r["centre"] == "0"]
    assert [e.value for e in events.Scalars("round/time_s")] == pytest.approx(times, abs=2e-6)  # csv: 6 decimals


def test_same_seed_gives_bitwise_identical_model_and_other_seed_does_not(workdir, tmp_path):
    first, out1 = _run(workdir, extra=FAST + ["--set", "common_args.random_seed=7"])
    assert first.returncode == 0, first.output
    cwd, home, marker = workdir
    second, out2 = _run((cwd, home, marker + "b"),
                        extra=FAST + ["--set", "common_args.random_seed=7",
                                      "--set", f"common_args.output_dir={cwd / 'out2'}"])
    assert second.returncode == 0, second.output
    out2 = cwd / "out2"
    assert _sha(out1 / "global_model.pt") == _sha(out2 / "global_model.pt")
    assert json.loads((out1 / "results.json").read_text())["metrics"] == \
        json.loads((out2 / "results.json").read_text())["metrics"]

    third, _ = _run((cwd, home, marker + "c"),
                    extra=FAST + ["--set", "common_args.random_seed=8",
                                  "--set", f"common_args.output_dir={cwd / 'out3'}"])
    assert third.returncode == 0, third.output
    a, b = torch.load(out1 / "global_model.pt"), torch.load(cwd / "out3" / "global_model.pt")
    assert not torch.equal(a["linear.weight"], b["linear.weight"])


def test_wrong_world_size_fails_fast_with_advice(workdir):
    cwd, home, marker = workdir
    job, out = _run(workdir, np_=3, deadline_s=60)
    assert job.returncode != 0
    assert job.seconds < 20, f"took {job.seconds:.1f} s"
    assert "mpirun -np 5" in job.stderr
    assert job.stderr.count("flamby-mpi: error") == 1  # said once, by rank 0
    assert not out.exists()  # nothing was started
    assert job.leftovers == []


@pytest.mark.parametrize("rank_args", [["--rank", "1", "--role", "client"], ["--rank", "0", "--role", "server"]])
def test_a_rank_option_right_on_one_rank_only_ends_every_rank_with_exit_2(workdir, rank_args):
    """`mpiexec -n 5 ... --rank K`: rank K's check passes, the others' do not. The rank that
    passed used to go on into the run's first collective and wait there forever."""
    job, out = _run(workdir, deadline_s=60, extra=rank_args)
    assert job.returncode == 2, job.stderr[-2000:]
    assert job.seconds < 30, f"took {job.seconds:.1f} s"
    assert job.stderr.count("disagrees with the MPI rank") == 4  # each refused rank says its own
    refused = [r for r in range(5) if r != int(rank_args[1])]
    if 0 in refused:  # rank 0 says its own refusal
        assert "--rank 1 disagrees with the MPI rank 0" in job.stderr
    else:  # rank 0 passed: it names the ranks that refused
        assert "ranks 1, 2, 3, 4 of this job refused to start" in job.stderr
    assert "Traceback" not in job.stderr
    assert not (out / "results.json").exists()
    assert job.leftovers == []


def test_the_in_process_backend_under_mpiexec_is_refused_by_every_rank(workdir):
    """Rank 0 used to run the whole job in process while rank 1 exited 2 without a word."""
    job, out = _run(workdir, np_=2, deadline_s=60, extra=FAST + ["--set", "comm_args.backend=inprocess"])
    assert job.returncode == 2, job.stderr[-2000:]
    assert job.stderr.count("comm_args.backend=inprocess runs every rank in this one process") == 1
    assert not out.exists()
    assert job.leftovers == []


def test_client_failing_in_round_2_ends_the_job_with_its_traceback(workdir):
    cwd, home, marker = workdir
    updates, batch = 10, 16
    segments = mpich_segments()
    job, out = _run(workdir, deadline_s=90,
                    extra=FAST + ["--set", "data_args.dataset=support.faulty_dataset",
                                  "--set", f"train_args.num_updates={updates}"],
                    env={"FAULT_CENTER": "2", "FAULT_AFTER_ITEMS": str(updates * batch + 5)})
    assert job.returncode != 0
    assert "rank 3 (client" in job.stderr
    assert "injected failure after" in job.stderr
    assert job.stderr.count("Traceback (most recent call last)") == 1
    assert not (out / "results.json").exists()
    assert job.leftovers == []
    assert mpich_segments() <= segments  # MPI_Abort left MPICH's /dev/shm segment behind


def test_server_failure_ends_the_job(workdir):
    cwd, home, marker = workdir
    job, out = _run(workdir, deadline_s=90,
                    extra=FAST + ["--set", "data_args.dataset=support.faulty_dataset"],
                    env={"FAULT_SERVER_METRIC": "1"})
    assert job.returncode != 0
    assert "rank 0 (server" in job.stderr
    assert "injected failure in the server's pooled metric" in job.stderr
    assert not (out / "results.json").exists()
    assert job.leftovers == []


def test_config_error_is_reported_once_without_traceback(workdir):
    cwd, home, marker = workdir
    job, _ = _run(workdir, deadline_s=60,
                  extra=["--set", "train_args.epochs=3", "--set", "train_args.num_updates=-1"])
    assert job.returncode != 0
    assert job.stderr.count("invalid configuration (2 problem(s))") == 1
    assert "train_args.num_updates" in job.stderr and "train_args.epochs" in job.stderr
    assert "Traceback" not in job.stderr


def test_a_centre_whose_data_fails_to_load_ends_every_rank_before_fedml_starts(workdir):
    job, out = _run(workdir, deadline_s=90,
                    extra=FAST + ["--set", "data_args.dataset=support.faulty_dataset"],
                    env={"FAULT_LOAD_CENTER": "1"})
    assert job.returncode != 0
    assert "rank 2 (client" in job.stderr and "/data/centre1/train.csv" in job.stderr
    assert job.stderr.count("Traceback (most recent call last)") == 1
    assert "all 4 clients joined" not in job.stdout  # ended before training started
    assert not (out / "results.json").exists()
    assert job.leftovers == []


def test_using_gpu_without_a_visible_gpu_runs_on_cpu_with_one_warning(workdir):
    """The acceptance check, for real: 5 ranks, using_gpu true, no GPU visible (even on a GPU host)."""
    cwd, home, marker = workdir
    out = cwd / "out"
    job = run_mpi(5, ["--cf", str(DEFAULT_CONFIG), "--run_id", marker,
                      "--set", f"common_args.output_dir={out}", "--set", "device_args.using_gpu=true",
                      "--set", "train_args.comm_round=2", "--set", "train_args.num_updates=5"],
                  cwd, home, deadline_s=240, env_extra={"CUDA_VISIBLE_DEVICES": ""}, marker=marker)
    assert job.returncode == 0, job.output
    assert job.output.count("no GPU is visible") == 1, job.output
    assert "[flamby-mpi rank 1] WARNING: device_args.using_gpu is true but no GPU is visible" in job.stderr
    results = json.loads((out / "results.json").read_text())
    assert results["devices"] == {f"client_{k}": "cpu" for k in range(4)}
    assert job.leftovers == []


@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM])
def test_a_stop_during_start_up_ends_every_rank_with_128_plus_the_signal(workdir, signum):
    """Ctrl-C or SIGTERM (a scheduler) one second after the start, while the ranks import torch:
    Python's defaults gave a KeyboardInterrupt traceback per rank and a crash in the half-imported
    torch's teardown (mpiexec returned 11), and SIGTERM's plain death returned 15, not 143. Whenever
    it lands (a slow machine may already be training: then a stop with a checkpoint), the code is
    128 + the signal and no rank prints a traceback."""
    cwd, home, marker = workdir
    cmd = [mpiexec(), "-n", "5", sys.executable, str(LAUNCHER), "--cf", str(DEFAULT_CONFIG), "--run_id", marker,
           "--set", f"common_args.output_dir={cwd / 'out'}", "--set", "train_args.comm_round=400",
           "--set", "train_args.num_updates=200"]
    proc = subprocess.Popen(cmd, cwd=cwd, env=job_env(home), stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True, start_new_session=True)
    try:
        time.sleep(1.0)
        proc.send_signal(signum)
        out, err = proc.communicate(timeout=60)
    finally:
        kill_group(proc)
    assert proc.returncode == 128 + signum, (proc.returncode, err[-3000:])
    assert "Traceback" not in err and "egmentation" not in err, err[-3000:]
    assert wait_until_gone(marker) == []
