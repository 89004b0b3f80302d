"""scripts/reproduce_flamby_benchmark.py: runs strategies x seeds and compares with published numbers."""
import csv
import json
import sys
from pathlib import Path

import pytest

from support.mpi import REPO, run_job
from support.mpi import test_env as env_for

SCRIPT = REPO / "scripts" / "reproduce_flamby_benchmark.py"
COLUMNS = ["seed", "deterministic_cycle", "Metric", "tau", "Method", "learning_rate", "beta1", "beta2", "Test",
           "server_learning_rate", "mu", "optimizer_class"]


def _published(folder, seeds, pooled_by_seed):
    folder.mkdir()
    for seed in seeds:
        with open(folder / f"synthetic_seed{seed}.csv", "w", newline="") as f:
            w = csv.DictWriter(f, fieldnames=COLUMNS)
            w.writeheader()
            for method, extra in (("FedAvg5", {}), ("FedProx5", {"mu": "0.1"}),
                                  ("Cyclic5", {"deterministic_cycle": "False"})):
                w.writerow({"seed": seed, "Metric": pooled_by_seed[seed], "Method": method, "Test": "Pooled Test",
                            "learning_rate": "0.05", "optimizer_class": "<class 'torch.optim.sgd.SGD'>", **extra})


def test_reproduction_table_plot_and_verdict(tmp_path):
    seeds = [1, 2]
    _published(tmp_path / "published", seeds, {1: "0.75", 2: "0.80"})
    out = tmp_path / "out"
    args = [sys.executable, str(SCRIPT), "--dataset", "synthetic",
            "--config", str(REPO / "config" / "fedml_config.yaml"),
            "--results-dir", str(tmp_path / "published"), "--output-dir", str(out), "--seeds", "1,2",
            "--strategies", "FedAvg,FedProx,Cyclic", "--num-updates", "5", "--backend", "inprocess",
            "--tolerance", "0.5"]
    home = tmp_path / "home"
    home.mkdir()
    job = run_job(args, tmp_path, env_for(home), 300)
    assert job.returncode == 0, job.output
    rows = list(csv.DictReader(open(out / "comparison.csv")))
    # Cyclic runs as FLamby's code does unless asked otherwise, and the table says so.
    assert [r["strategy"] for r in rows] == ["FedAvg", "FedProx", "Cyclic (pass_model_on=false)"]
    assert float(rows[0]["flamby_mean"]) == pytest.approx(0.775)
    ours = [json.loads((out / "runs" / "FedAvg" / f"seed{s}" / "results.json").read_text()) for s in seeds]
    assert float(rows[0]["ours_mean"]) == pytest.approx(sum(r["metrics"]["pooled"] for r in ours) / 2)
    # The published hyperparameters were applied (FedProx's mu, SGD at 0.05).
    prox = json.loads((out / "runs" / "FedProx" / "seed1" / "results.json").read_text())
    assert prox["strategy"] == "FedProx" and prox["learning_rate"] == 0.05
    assert prox["strategy_hyperparameters"] == {"mu": 0.1}
    cyclic = json.loads((out / "runs" / "Cyclic-pass_model_on-false" / "seed1" / "results.json").read_text())
    assert cyclic["strategy_hyperparameters"] == {"deterministic_cycle": False, "pass_model_on": False}
    assert "| FedAvg |" in (out / "comparison.md").read_text()
    assert (out / "comparison.png").read_bytes()[:4] == b"\x89PNG"

    # Same outputs reused, but a strict tolerance makes the verdict fail with exit code 1.
    strict = run_job(args[:-1] + ["0.0000001"], tmp_path, env_for(home), 120)
    assert strict.returncode == 1, strict.output

    # --rerun runs again over the finished runs (the launcher would refuse them without --overwrite).
    before = (out / "runs" / "FedAvg" / "seed1" / "results.json").stat().st_mtime_ns
    again = run_job(args + ["--rerun", "--strategies", "FedAvg", "--seeds", "1"], tmp_path, env_for(home), 300)
    assert again.returncode == 0, again.output
    assert (out / "runs" / "FedAvg" / "seed1" / "results.json").stat().st_mtime_ns != before


@pytest.mark.parametrize("bad, said", [
    (["--seeds", "a,b"], "--seeds: 'a,b' is not a comma-separated list of integers"),
    (["--seeds", ""], "--seeds: '' is not a comma-separated list of integers"),
    (["--timeout", "0"], "--timeout must be positive"),
    (["--num-updates", "-3"], "--num-updates must be positive"),
    (["--tolerance", "-1"], "--tolerance must be 0 or more"),
    (["--tolerance", "nan"], "--tolerance must be 0 or more"),
    (["--np", "1"], "--np must be at least 2"),
])
def test_usage_mistakes_are_said_in_one_line_before_any_run(bad, said, capsys):
    """They used to end in a ValueError traceback, or to start the sweep (--timeout 0: every run 'failed')."""
    sys.path.insert(0, str(SCRIPT.parent))
    try:
        import reproduce_flamby_benchmark as script
    finally:
        sys.path.remove(str(SCRIPT.parent))
    with pytest.raises(SystemExit) as ended:
        script.main(bad)
    assert ended.value.code == 2
    assert said in capsys.readouterr().err


def test_a_failed_run_s_error_and_hint_are_said_not_only_logged(tmp_path):
    """Fed-Heart-Disease without --data-path, and no download recorded by FLamby: the sweep's first
    run fails, and what to do was only in that run's console.log ('see console.log')."""
    from flamby_mpi.datasets.flamby_datasets import flamby_location_record
    from support.optional import import_or_skip

    import_or_skip("flamby.datasets.fed_heart_disease")
    if any(Path(flamby_location_record("fed_heart_disease", debug)).exists() for debug in (False, True)):
        pytest.skip("this FLamby has a recorded Fed-Heart-Disease download")
    _published(tmp_path / "published", [1], {1: "0.75"})
    out, home = tmp_path / "out", tmp_path / "home"
    home.mkdir()
    args = [sys.executable, str(SCRIPT), "--dataset", "fed_heart_disease", "--results-dir", str(tmp_path / "published"),
            "--output-dir", str(out), "--seeds", "1", "--strategies", "FedAvg", "--num-updates", "5",
            "--backend", "inprocess"]
    job = run_job(args, tmp_path, env_for(home), 300)
    assert job.returncode == 1, job.output
    assert "reproduce: FedAvg seed 1 failed (2); see" in job.stderr, job.stderr
    assert "flamby-mpi: error" in job.stderr and "python download.py --output-folder DIR" in job.stderr, job.stderr
