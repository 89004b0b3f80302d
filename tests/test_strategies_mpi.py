"""Every strategy under mpiexec, and bitwise equal to the in-process twin (same seed)."""
import hashlib
import json
import sys

import pytest

from support.mpi import DEFAULT_CONFIG, LAUNCHER, run_job, run_mpi
from support.mpi import test_env as env_for

pytestmark = pytest.mark.mpi

FAST = ["--set", "train_args.comm_round=3", "--set", "train_args.num_updates=5",
        "--set", "validation_args.frequency_of_the_test=2"]
CASES = {
    "FedAvg": [],
    "FedProx": ["--set", "train_args.mu=0.5"],
    "FedAdam": ["--set", "train_args.server_learning_rate=0.05"],
    "FedYogi": ["--set", "train_args.server_learning_rate=0.05"],
    "FedAdagrad": ["--set", "train_args.server_learning_rate=0.05"],
    "Scaffold": [],
    "Cyclic": ["--set", "train_args.comm_round=5"],
    "Cyclic-own-models": ["--set", "train_args.comm_round=6", "--set", "train_args.pass_model_on=false"],
    "FedAvgFineTuning": ["--set", "train_args.num_fine_tuning_steps=4"],
    "FedAvg-sampled": ["--set", "train_args.client_num_per_round=2"],
    "FedAvg-dp": ["--set", "train_args.dp_target_epsilon=5", "--set", "train_args.dp_target_delta=0.001",
                  "--set", "train_args.dp_max_grad_norm=1.0"],
}


def _sha(path):
    return hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.mark.parametrize("case", list(CASES))
def test_strategy_over_mpi_equals_in_process(case, workdir):
    cwd, home, marker = workdir
    if case.endswith("-dp"):
        pytest.importorskip("opacus", reason="differential privacy needs opacus (an optional install)")
    strategy = case.split("-")[0]
    args = ["--cf", str(DEFAULT_CONFIG), "--set", f"train_args.federated_optimizer={strategy}",
            "--set", "common_args.random_seed=5", *FAST, *CASES[case]]
    mpi = run_mpi(5, args + ["--run_id", marker, "--set", f"common_args.output_dir={cwd / 'mpi'}"],
                  cwd, home, deadline_s=150, marker=marker)
    assert mpi.returncode == 0, mpi.output
    inproc = run_job([sys.executable, str(LAUNCHER), *args, "--run_id", marker + "i",
                      "--set", f"common_args.output_dir={cwd / 'inprocess'}",
                      "--set", "comm_args.backend=inprocess"], cwd, env_for(home), 120)
    assert inproc.returncode == 0, inproc.output
    assert _sha(cwd / "mpi" / "global_model.pt") == _sha(cwd / "inprocess" / "global_model.pt")
    a = json.loads((cwd / "mpi" / "results.json").read_text())
    b = json.loads((cwd / "inprocess" / "results.json").read_text())
    assert a["strategy"] == strategy and a["metrics"] == b["metrics"]
    assert (a["backend"], b["backend"]) == ("MPI", "inprocess")
    assert mpi.leftovers == []


def test_in_process_refuses_rank_and_role(workdir):
    cwd, home, _ = workdir
    job = run_job([sys.executable, str(LAUNCHER), "--cf", str(DEFAULT_CONFIG), "--rank", "0", "--role", "server",
                   "--run_id", "x", "--set", "comm_args.backend=inprocess"], cwd, env_for(home), 60)
    assert job.returncode == 2 and "runs every rank in this one process" in job.stderr
