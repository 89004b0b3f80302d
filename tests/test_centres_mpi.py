"""data_args.centers under real mpiexec: rank k trains the k-th listed centre, results name FLamby's
indices, the in-process twin and --resume give the same model bit for bit."""
import csv
import hashlib
import json
import sys

import pytest

from support.mpi import DEFAULT_CONFIG, LAUNCHER, REPO, run_job, run_mpi
from support.mpi import test_env as env_for
from support.paths import SHARED_DATA

pytestmark = pytest.mark.mpi

SMALL = ["--set", "data_args.synthetic_num_centers=4", "--set", "data_args.synthetic_samples_per_center=24",
         "--set", "train_args.num_updates=2", "--set", "data_args.centers=[3,1]"]


def _sha(path):
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _mpi(workdir, np_, out, extra, run_id=None, deadline_s=120):
    cwd, home, marker = workdir
    args = ["--cf", str(DEFAULT_CONFIG), "--run_id", run_id or marker,
            "--set", f"common_args.output_dir={out}", *SMALL, *extra]
    return run_mpi(np_, args, cwd, home, deadline_s, marker=marker)


def _in_process(workdir, out, extra, config=DEFAULT_CONFIG, small=SMALL):
    cwd, home, _ = workdir
    args = [sys.executable, str(LAUNCHER), "--cf", str(config), "--run_id", "twin",
            "--set", f"common_args.output_dir={out}", "--set", "comm_args.backend=inprocess", *small, *extra]
    return run_job(args, cwd, env_for(home), 120)


def _rows(path):
    with open(path) as f:
        return list(csv.DictReader(f))


def test_listed_centres_under_mpiexec_name_flamby_s_indices_and_match_the_twin(workdir):
    cwd, home, marker = workdir
    out = cwd / "mpi"
    job = _mpi(workdir, 3, out, ["--set", "train_args.comm_round=2"])
    assert job.returncode == 0, job.output
    assert job.leftovers == []
    results = json.loads((out / "results.json").read_text())
    assert results["centres"] == [3, 1] and results["num_clients"] == 2 and results["world_size"] == 3
    assert set(results["metrics"]) == {"client_test_3", "client_test_1", "average", "pooled"}
    assert set(results["devices"]) == {"client_3", "client_1"}
    assert set(results["traffic"]["per_centre"]) == {"client_3", "client_1"}
    assert {row["Test"] for row in _rows(out / "results.csv")} == {"client_test_3", "client_test_1", "Pooled Test"}
    assert {row["test"] for row in _rows(out / "metrics.csv")} == {"client_test_3", "client_test_1", "average",
                                                                   "pooled"}
    assert {row["centre"] for row in _rows(out / "rounds.csv")} == {"3", "1"}
    assert "client_test_3" in job.stdout and "client_test_0" not in job.output
    # The checkpoint of the last round: one part per rank of this 3-process world.
    last = out / "checkpoints" / "round_2"
    assert sorted(p.name for p in last.glob("rank_*.json")) == ["rank_0.json", "rank_1.json", "rank_2.json"]

    twin = _in_process(workdir, cwd / "twin", ["--set", "train_args.comm_round=2"])
    assert twin.returncode == 0, twin.output
    assert _sha(out / "global_model.pt") == _sha(cwd / "twin" / "global_model.pt")
    assert json.loads((cwd / "twin" / "results.json").read_text())["metrics"] == results["metrics"]

    # Another list is another run: --resume refuses it, naming the key.
    other = _mpi(workdir, 3, out, ["--set", "train_args.comm_round=3", "--resume",
                                   "--set", "data_args.centers=[1,3]"])
    assert other.returncode == 2, other.output
    assert "data_args.centers" in other.stderr and "Traceback" not in other.output

    # Resumed under mpiexec for a third round: the model of three rounds in one go.
    resumed = _mpi(workdir, 3, out, ["--set", "train_args.comm_round=3", "--resume"])
    assert resumed.returncode == 0, resumed.output
    straight = _in_process(workdir, cwd / "straight", ["--set", "train_args.comm_round=3"])
    assert straight.returncode == 0, straight.output
    assert _sha(out / "global_model.pt") == _sha(cwd / "straight" / "global_model.pt")


def test_a_wrong_np_for_the_listed_centres_says_which(workdir):
    cwd, home, marker = workdir
    job = _mpi(workdir, 5, cwd / "out", ["--set", "train_args.comm_round=1"], deadline_s=60)
    assert job.returncode == 2, job.output
    assert "mpirun -np 3" in job.stderr and "data_args.centers [3, 1]" in job.stderr
    assert job.stderr.count("flamby-mpi: error") == 1
    assert not (cwd / "out").exists()


HEART = SHARED_DATA / "fed_heart_disease"


@pytest.mark.realdata
def test_fed_heart_disease_centres_0_and_2_under_mpiexec(workdir):
    pytest.importorskip("flamby.datasets.fed_heart_disease", reason="FLamby is not installed")
    if not HEART.is_dir():
        pytest.skip(f"{HEART} is absent")
    cwd, home, marker = workdir
    heart = ["--set", f"data_args.data_path={HEART}", "--set", "data_args.centers=[0,2]",
             "--set", "train_args.comm_round=2", "--set", "train_args.num_updates=5"]
    config = REPO / "config" / "fed_heart_disease.yaml"
    out = cwd / "mpi"
    job = run_mpi(3, ["--cf", str(config), "--run_id", marker, "--set", f"common_args.output_dir={out}", *heart],
                  cwd, home, 180, marker=marker)
    assert job.returncode == 0, job.output
    results = json.loads((out / "results.json").read_text())
    assert results["centres"] == [0, 2]
    assert set(results["metrics"]) == {"client_test_0", "client_test_2", "average", "pooled"}
    twin = _in_process(workdir, cwd / "twin", [], config=config, small=heart)
    assert twin.returncode == 0, twin.output
    assert _sha(out / "global_model.pt") == _sha(cwd / "twin" / "global_model.pt")
