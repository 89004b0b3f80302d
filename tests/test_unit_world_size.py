"""flamby_mpi.world_size: the MPI process count the job scripts ask for (no MPI)."""
import subprocess
import sys
from pathlib import Path

import pytest

from flamby_mpi.config import load_config
from flamby_mpi.exit.errors import ConfigError, UserError
from flamby_mpi.plan import make_plan
from flamby_mpi.registry import FLAMBY_DATASET_FACTS, canonical_flamby_name
from flamby_mpi.world_size import set_overrides, world_size_of

REPO = Path(__file__).resolve().parents[1]
CONFIG = REPO / "config"
SYNTHETIC = str(CONFIG / "fedml_config.yaml")
HEART = str(CONFIG / "fed_heart_disease.yaml")


def test_flamby_dataset_is_its_centres_plus_one():
    assert world_size_of(HEART) == 5


def test_set_overrides_change_the_count():
    assert world_size_of(HEART, ["data_args.dataset=synthetic", "data_args.synthetic_num_centers=7"]) == 8
    assert world_size_of(SYNTHETIC, ["data_args.dataset=Fed-IXI"]) == 4  # FLamby's other spelling


@pytest.mark.parametrize("path", sorted(CONFIG.glob("*.yaml")), ids=lambda p: p.name)
def test_every_shipped_config(path):
    config = load_config(str(path))
    name = canonical_flamby_name(config.data_args.dataset)
    expected = (FLAMBY_DATASET_FACTS[name].centres if name else config.data_args.synthetic_num_centers) + 1
    assert world_size_of(str(path)) == expected


def test_synthetic_agrees_with_the_plan():
    for overrides in ([], ["data_args.synthetic_num_centers=3"]):
        expected = make_plan(load_config(SYNTHETIC, overrides)).world_size
        assert world_size_of(SYNTHETIC, overrides) == world_size_of(SYNTHETIC, overrides, check_plan=True) == expected


def test_a_dataset_module_is_asked_itself():
    # tests/support/faulty_dataset.py: NUM_CLIENTS = 4
    assert world_size_of(SYNTHETIC, ["data_args.dataset=support.faulty_dataset"]) == 5


@pytest.mark.parametrize("text", ["train_args.comm_round", "comm_round=3", "=3", ".x=1"])
def test_malformed_set_is_a_user_error_before_the_file_is_read(text, tmp_path):
    for path in (SYNTHETIC, str(tmp_path / "missing.yaml")):
        with pytest.raises(UserError, match="expected section.key=value"):
            world_size_of(path, [text])


def test_config_problems_are_reported():
    with pytest.raises(ConfigError, match="train_args.epochs"):
        world_size_of(SYNTHETIC, ["train_args.epochs=3"])
    with pytest.raises(UserError, match="config file not found"):
        world_size_of(str(REPO / "config" / "missing.yaml"))
    with pytest.raises(UserError, match="unknown dataset 'mnist'"):
        world_size_of(SYNTHETIC, ["data_args.dataset=mnist"])


def test_client_counts_are_checked_against_the_centres_without_the_plan():
    """The plan's own check, also where the count needs no torch (what submit.py relies on)."""
    with pytest.raises(ConfigError) as info:
        world_size_of(HEART, ["train_args.client_num_in_total=1000", "device_args.worker_num=3"])
    assert info.value.problems == [
        "train_args.client_num_in_total: fed_heart_disease has 4 centres, so this must be 4 "
        "(or be left out), got 1000",
        "device_args.worker_num: fed_heart_disease has 4 centres, so this must be 4 (or be left out), got 3"]
    with pytest.raises(ConfigError, match="device_args.worker_num: synthetic has 4 centres"):
        world_size_of(SYNTHETIC, ["device_args.worker_num=3"])
    assert world_size_of(HEART, ["train_args.client_num_in_total=4", "device_args.worker_num=4"]) == 5
    with pytest.raises(ConfigError) as from_plan:
        make_plan(load_config(SYNTHETIC, ["device_args.worker_num=3"]))
    assert from_plan.value.problems == [
        "device_args.worker_num: synthetic has 4 centres, so this must be 4 (or be left out), got 3"]


def test_check_plan_reports_what_a_rank_would():
    fedprox = ["train_args.federated_optimizer=FedProx"]  # without its required mu
    assert world_size_of(SYNTHETIC, fedprox) == 5
    with pytest.raises(ConfigError, match="train_args.mu"):
        world_size_of(SYNTHETIC, fedprox, check_plan=True)


def test_check_plan_without_flamby_says_so(monkeypatch):
    """Runs whether or not FLamby is installed (CI installs it): `import flamby` made to fail."""
    for name in [m for m in sys.modules if m == "flamby" or m.startswith("flamby.")]:
        monkeypatch.delitem(sys.modules, name)
    monkeypatch.setitem(sys.modules, "flamby", None)
    with pytest.raises(UserError, match="needs FLamby"):
        world_size_of(HEART, check_plan=True)


def test_set_overrides_reads_both_spellings():
    args = ["--run_id", "x", "--set", "a.b=1", "--set=c.d=2", "--rank", "0", "--set"]
    assert set_overrides(args) == ["a.b=1", "c.d=2"]


def test_counting_imports_nothing_heavy():
    """What scripts/submit.py does on a login node with only pyyaml."""
    code = ("import sys\n"
            "from flamby_mpi.world_size import world_size_of\n"
            f"assert world_size_of({HEART!r}) == 5\n"
            f"assert world_size_of({SYNTHETIC!r}, ['data_args.synthetic_num_centers=2']) == 3\n"
            "print(sorted(m for m in sys.modules if m.split('.')[0] in ('torch', 'fedml', 'mpi4py', 'flamby')))")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO, timeout=60)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "[]"
