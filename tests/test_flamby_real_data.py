"""FLamby itself on real data, over MPI and in process (skipped when FLamby or ../shared/data is absent,
failed instead under CI: tests/support/optional.py)."""
import csv
import json
import re
import sys

import pytest

from support.mpi import LAUNCHER, REPO, run_job, run_mpi
from support.mpi import test_env as env_for
from support.optional import import_or_skip, shared_or_skip
from support.paths import SHARED_DATA

pytestmark = [pytest.mark.mpi, pytest.mark.realdata]

HEART = SHARED_DATA / "fed_heart_disease"
PUBLISHED = SHARED_DATA / "flamby_benchmark_results" / "fed_heart_disease"


def _published(seed, method="FedAvg100"):
    with open(PUBLISHED / f"heart_seed{seed}.csv") as f:
        return {row["Test"]: float(row["Metric"]) for row in csv.DictReader(f) if row["Method"] == method}


@pytest.fixture
def heart_data():
    """Skips unless FLamby and the shared heart files and published results are there (fails under CI)."""
    import_or_skip("flamby.datasets.fed_heart_disease")
    shared_or_skip(HEART, PUBLISHED)


def test_fedavg_on_fed_heart_disease_reproduces_flamby_seed_42(workdir, heart_data):
    cwd, home, marker = workdir
    out = cwd / "out"
    job = run_mpi(5, ["--cf", str(REPO / "config" / "fed_heart_disease.yaml"), "--run_id", marker,
                      "--set", f"data_args.data_path={HEART}", "--set", f"common_args.output_dir={out}"],
                  cwd, home, deadline_s=180, marker=marker)
    assert job.returncode == 0, job.output
    metrics = json.loads((out / "results.json").read_text())["metrics"]
    published = _published(42)
    # FLamby's published FedAvg100 seed-42 numbers; pooled within the acceptance band.
    assert abs(metrics["pooled"] - 0.748) <= 0.03
    assert metrics["pooled"] == pytest.approx(published["Pooled Test"], abs=0.02)
    for k in range(4):
        assert metrics[f"client_test_{k}"] == pytest.approx(published[f"client_test_{k}"], abs=0.05)
    # docs/running.md "No side effects": FLamby's import leaves matplotlib made but not run, and the
    # server's report then runs it: with the run's temporary MPLCONFIGDIR, not HOME's cache.
    assert (out / "report.png").exists()
    assert not (home / ".cache" / "matplotlib").exists() and not (home / ".config" / "matplotlib").exists()
    # The sample output of README.md and docs/running.md is this run's: its final table line for
    # line, and its other lines in their forms (numbers, times, run ids and paths vary).
    printed = job.stdout.splitlines()
    table = printed[printed.index("[flamby-mpi] final metrics (fed_heart_disease, FedAvg, 15 rounds):"):][:9]

    def form(line):
        line = re.sub(r"^\[flamby-mpi\] run \S+:", "[flamby-mpi] run ID:", line)
        return re.sub(r"\d[\d.:-]*", "#", re.sub(r"\S*/\S*", "PATH", line))

    shown = [form(line) for line in printed]
    for doc in (REPO / "README.md", REPO / "docs" / "running.md"):
        text = doc.read_text()
        assert "\n".join(table) in text, doc
        start = text.index("[flamby-mpi] run ")
        for line in text[start:text.index("```", start)].splitlines():
            if line.startswith("[flamby-mpi] "):
                assert any(s.startswith(form(line.removesuffix("..."))) for s in shown), f"{doc}: {line!r}"


@pytest.mark.parametrize("seed", [42, 43])
def test_cyclic_as_flambys_code_gives_flambys_published_numbers(seed, workdir, heart_data):
    """pass_model_on=false is FLamby's cyclic.py: its published Cyclic100 numbers, seed for seed."""
    cwd, home, _ = workdir
    out = cwd / "out"
    settings = ["federated_optimizer=Cyclic", "pass_model_on=false", "deterministic_cycle=false",
                "learning_rate=0.01", "client_optimizer=torch.optim.SGD"]  # FLamby's published Cyclic100
    args = [sys.executable, str(LAUNCHER), "--cf", str(REPO / "config" / "fed_heart_disease.yaml"),
            "--set", f"data_args.data_path={HEART}", "--set", f"common_args.output_dir={out}",
            "--set", f"common_args.random_seed={seed}", "--set", "comm_args.backend=inprocess"]
    for setting in settings:
        args += ["--set", f"train_args.{setting}"]
    job = run_job(args, cwd, env_for(home), 180)
    assert job.returncode == 0, job.output
    metrics = json.loads((out / "results.json").read_text())["metrics"]
    published = _published(seed, "Cyclic100")
    assert metrics["pooled"] == pytest.approx(published["Pooled Test"], abs=1e-9)
    for k in range(4):
        assert metrics[f"client_test_{k}"] == pytest.approx(published[f"client_test_{k}"], abs=1e-9)
