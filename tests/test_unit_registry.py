"""flamby_mpi.registry: one source per fact, and every place that shows a fact agrees with it (no MPI)."""
import dataclasses
import subprocess
import sys
from pathlib import Path

import pytest

from flamby_mpi.config import TrainArgs, describe_options
from flamby_mpi.registry import (
    FLAMBY_BENCHMARK_STRATEGIES,
    HYPERPARAMETER_USERS,
    STRATEGY_HYPERPARAMETERS,
    STRATEGY_NAMES,
    hyperparameter_help,
)
from flamby_mpi.strategies import STRATEGIES
from support.optional import import_or_skip, shared_or_skip

REPO = Path(__file__).resolve().parents[1]
HEAVY = ("torch", "fedml", "mpi4py", "flamby")


def _yaml(value):
    return ("true" if value else "false") if isinstance(value, bool) else repr(value)


def test_light_modules_import_nothing_heavy():
    """config and registry are what scripts/submit.py imports on a login node with only pyyaml."""
    code = ("import sys, flamby_mpi.config, flamby_mpi.registry\n"
            f"print(sorted(m for m in sys.modules if m.split('.')[0] in {HEAVY!r}))")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO, timeout=60)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "[]"


# --- strategies -----------------------------------------------------------------------------

def test_strategy_classes_are_the_registry_s():
    assert tuple(STRATEGIES) == STRATEGY_NAMES
    for name, cls in STRATEGIES.items():
        assert cls.name == name
        assert dict(cls.hyperparameters) == dict(STRATEGY_HYPERPARAMETERS[name])


def test_a_strategy_class_unknown_to_the_registry_is_refused():
    from flamby_mpi.strategies import Strategy

    with pytest.raises(TypeError, match="'FedNova' .* is not in flamby_mpi/registry.py"):
        type("FedNova", (Strategy,), {"name": "FedNova"})


def test_config_choices_and_keys_come_from_the_registry():
    fields = {f.name: f for f in dataclasses.fields(TrainArgs)}
    assert fields["federated_optimizer"].metadata["choices"] == STRATEGY_NAMES
    assert set(HYPERPARAMETER_USERS) <= set(fields)


@pytest.mark.parametrize("key", sorted(HYPERPARAMETER_USERS))
def test_help_shows_each_user_and_default(key):
    help_text = {f.name: f for f in dataclasses.fields(TrainArgs)}[key].metadata["help"]
    for name in HYPERPARAMETER_USERS[key]:
        default = STRATEGY_HYPERPARAMETERS[name][key]
        assert name in help_text
        assert ("required" if default is None else f"default {_yaml(default)}") in help_text
    assert f"train_args.{key} " in describe_options()


def test_hyperparameter_help_groups_strategies_by_default():
    assert hyperparameter_help("server_learning_rate") == \
        "FedAdam/FedYogi/FedAdagrad (default 0.01), Scaffold (default 1.0)"
    assert hyperparameter_help("mu", "proximal term weight") == "FedProx (required): proximal term weight"
    assert hyperparameter_help("pass_model_on") == "Cyclic (default true)"


def test_configuration_page_shows_the_registry_defaults():
    page = (REPO / "docs" / "configuration.md").read_text().splitlines()
    for key, users in HYPERPARAMETER_USERS.items():
        rows = [line for line in page if line.startswith(f"| `train_args.{key}` |")]
        assert len(rows) == 1, key
        meaning_cell = rows[0].split(" | ")[-1]
        for name in users:
            default = STRATEGY_HYPERPARAMETERS[name][key]
            expected = "(required)" if default is None else f"(default {_yaml(default)})"
            group = next(part for part in meaning_cell.split(", ") if name in part.split(" (")[0].split("/"))
            assert expected in group, (key, name, meaning_cell)


def test_reproduction_script_offers_the_benchmark_strategies():
    done = subprocess.run([sys.executable, str(REPO / "scripts" / "reproduce_flamby_benchmark.py"), "--help"],
                          capture_output=True, text=True, cwd=REPO, timeout=60)
    assert done.returncode == 0, done.stderr
    assert f"among {', '.join(FLAMBY_BENCHMARK_STRATEGIES)}" in " ".join(done.stdout.split())
    assert set(FLAMBY_BENCHMARK_STRATEGIES) < set(STRATEGY_NAMES)


def test_benchmark_strategies_are_those_flamby_published():
    import csv

    results = REPO.parent / "shared" / "data" / "flamby_benchmark_results"
    shared_or_skip(results)
    files = sorted(results.glob("*/*seed*.csv"))
    assert files, f"FLamby's published results are not in {results}"
    for path in files:
        methods = {row["Method"] for row in csv.DictReader(open(path))}
        federated = {m[:-3] for m in methods if m.endswith("100")}
        assert federated == set(FLAMBY_BENCHMARK_STRATEGIES), path


# --- datasets -------------------------------------------------------------------------------

def test_dataset_loader_reads_the_registry():
    from flamby_mpi.datasets import FLAMBY_DATASETS as loader_names
    from flamby_mpi.datasets.flamby_datasets import FLAMBY_EXTRAS
    from flamby_mpi.registry import FLAMBY_DATASET_FACTS, FLAMBY_DATASETS

    assert loader_names == FLAMBY_DATASETS == tuple(FLAMBY_DATASET_FACTS)
    assert FLAMBY_EXTRAS == {name: facts.extra for name, facts in FLAMBY_DATASET_FACTS.items()}
    for name, facts in FLAMBY_DATASET_FACTS.items():
        assert facts.name == name and facts.centres >= 1


@pytest.mark.parametrize("name", ["fed_heart_disease", "fed_tcga_brca", "fed_ixi", "fed_isic2019",
                                  "fed_camelyon16", "fed_kits19", "fed_lidc_idri"])
def test_centre_counts_match_flamby_where_installed(name):
    """The table is a copy of FLamby's NUM_CLIENTS (submit.py must size jobs without FLamby)."""
    from flamby_mpi.registry import FLAMBY_DATASET_FACTS

    common = import_or_skip(f"flamby.datasets.{name}.common")  # FLamby and that dataset's extra
    assert FLAMBY_DATASET_FACTS[name].centres == common.NUM_CLIENTS
