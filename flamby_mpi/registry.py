"""Facts about FLamby's strategies and datasets that several places need, each written once.

Standard library only, on purpose: flamby_mpi.config takes its strategy choices
and hyperparameter help from here, the strategy classes their defaults, the
dataset loader FLamby's names and pip extras, and the scripts (scripts/submit.py
on a cluster login node with only pyyaml) the strategy names and the number of
centres, all without importing torch, FedML, mpi4py or FLamby.
"""
from __future__ import annotations

from collections import Counter
from dataclasses import dataclass
from types import MappingProxyType
from typing import Dict, List, Mapping, Optional, Tuple

# ---- ranks -------------------------------------------------------------------------------

# Rank 0 is the server, every other rank a client (one per centre): launch.world forms the world
# by this rule and failures names a rank's role with it.
SERVER, CLIENT = "server", "client"


def role_of(rank: int) -> str:
    return SERVER if rank == 0 else CLIENT


# ---- strategies ---------------------------------------------------------------------------

_FEDOPT = {"server_learning_rate": 1e-2, "beta1": 0.9, "beta2": 0.999, "tau": 1e-3}

# FLamby's strategy names, in FLamby's order, each with its strategy-specific train_args keys
# (FLamby's names, flamby/config_<dataset>.json) and their defaults; None: the config must set it.
# flamby_mpi/strategies has one class per name, which takes its defaults from here.
STRATEGY_HYPERPARAMETERS: Mapping[str, Mapping[str, object]] = MappingProxyType({
    name: MappingProxyType(dict(hyperparameters)) for name, hyperparameters in (
        ("FedAvg", {}),
        ("FedProx", {"mu": None}),
        ("FedAdam", _FEDOPT),
        ("FedYogi", _FEDOPT),
        ("FedAdagrad", _FEDOPT),
        ("Scaffold", {"server_learning_rate": 1.0}),
        ("Cyclic", {"deterministic_cycle": False, "pass_model_on": True}),
        ("FedAvgFineTuning", {"num_fine_tuning_steps": None}),
    )
})
STRATEGY_NAMES: Tuple[str, ...] = tuple(STRATEGY_HYPERPARAMETERS)

# The strategies FLamby published benchmark results for (the Method column of
# flamby_benchmark_results/<dataset>/*.csv, e.g. FedAvg100); FedAvgFineTuning is not among them.
FLAMBY_BENCHMARK_STRATEGIES: Tuple[str, ...] = tuple(n for n in STRATEGY_NAMES if n != "FedAvgFineTuning")


def _hyperparameter_users() -> Dict[str, List[str]]:
    users: Dict[str, List[str]] = {}
    for name, hyperparameters in STRATEGY_HYPERPARAMETERS.items():
        for key in hyperparameters:
            users.setdefault(key, []).append(name)
    return users


# Every strategy-specific train_args key, and the strategies that use it (in STRATEGY_NAMES order).
HYPERPARAMETER_USERS: Mapping[str, List[str]] = MappingProxyType(_hyperparameter_users())


def _yaml_spelling(value: object) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    return repr(value)


def hyperparameter_help(key: str, description: str = "") -> str:
    """Help for a strategy's train_args key: who uses it and each one's default, then `description`.

    e.g. 'FedAdam/FedYogi/FedAdagrad (default 0.01), Scaffold (default 1.0): the server's step size'.
    """
    groups: Dict[Optional[str], List[str]] = {}  # default as written -> strategies (None: required)
    for name in HYPERPARAMETER_USERS[key]:
        default = STRATEGY_HYPERPARAMETERS[name][key]
        groups.setdefault(None if default is None else _yaml_spelling(default), []).append(name)
    who = ", ".join(f"{'/'.join(names)} ({'required' if default is None else f'default {default}'})"
                    for default, names in groups.items())
    return f"{who}: {description}" if description else who


# ---- datasets -----------------------------------------------------------------------------

@dataclass(frozen=True)
class FlambyDataset:
    name: str
    # FLamby's NUM_CLIENTS (flamby/datasets/<name>/common.py), written here for login nodes without
    # FLamby (world_size, scripts/submit.py); a run takes NUM_CLIENTS from the FLamby module it imports,
    # and tests/test_unit_registry.py checks the two agree for every dataset.
    centres: int
    extra: str  # FLamby's pip extra for it (FLamby's setup.py extras_require)


FLAMBY_DATASET_FACTS: Mapping[str, FlambyDataset] = MappingProxyType({d.name: d for d in (
    FlambyDataset("fed_heart_disease", 4, "heart"),
    FlambyDataset("fed_tcga_brca", 6, "tcga"),
    FlambyDataset("fed_ixi", 3, "ixi"),
    FlambyDataset("fed_isic2019", 6, "isic2019"),
    FlambyDataset("fed_camelyon16", 2, "cam16"),
    FlambyDataset("fed_kits19", 6, "kits19"),
    FlambyDataset("fed_lidc_idri", 4, "lidc"),
)})
FLAMBY_DATASETS: Tuple[str, ...] = tuple(FLAMBY_DATASET_FACTS)


def canonical_flamby_name(name: str) -> Optional[str]:
    """'Fed-Heart-Disease', 'fed_heart_disease', 'heart_disease' -> 'fed_heart_disease' (or None)."""
    key = name.strip().lower().replace("-", "_")
    if not key.startswith("fed_"):
        key = "fed_" + key
    return key if key in FLAMBY_DATASET_FACTS else None


def is_synthetic(name: str) -> bool:
    """Whether data_args.dataset names the built-in synthetic dataset."""
    return name.strip().lower() == "synthetic"


def centre_problems(listed, dataset_name: str, centres: int) -> List[str]:
    """What is wrong with data_args.centers (FLamby centre indices, or None for all) for a dataset
    of `centres` centres: checked by the plan on every rank and by world_size before queueing."""
    if listed is None:
        return []
    if not listed:
        return ["data_args.centers: the list is empty; list at least one FLamby centre index (FedML "
                f"needs a client), e.g. [0], or leave it out for all {centres}"]
    problems = []
    outside = [c for c in listed if not 0 <= c < centres]
    if outside:
        problems.append(f"data_args.centers: {dataset_name} has centres 0..{centres - 1} (FLamby's indices), "
                        f"got {', '.join(map(str, outside))}")
    repeated = sorted(c for c, n in Counter(listed).items() if n > 1)
    if repeated:
        problems.append(f"data_args.centers: centre {', '.join(map(str, repeated))} listed more than once; "
                        "each centre is one client rank")
    return problems


def listed_centres(listed, centres: int) -> Tuple[int, ...]:
    """The FLamby centre indices a run trains, in rank order (rank k trains the k-th): data_args.centers
    as given (valid: centre_problems), or all of them."""
    return tuple(range(centres)) if listed is None else tuple(listed)


def client_count_problems(config, dataset_name: str, centres: int) -> List[str]:
    """The config's client counts (a RunConfig) that contradict the number of client ranks (the
    centres listed in data_args.centers, else all of the dataset's): checked by the plan on every
    rank, and by world_size (scripts/submit.py) before queueing, without torch."""
    listed = config.data_args.centers
    clients = centres if listed is None else len(listed)
    why = f"{dataset_name} has {centres} centres" if listed is None else \
        f"data_args.centers lists {clients} of {dataset_name}'s centres"
    problems = []
    for where, value in (("train_args.client_num_in_total", config.train_args.client_num_in_total),
                         ("device_args.worker_num", config.device_args.worker_num)):
        if value is not None and value != clients:
            problems.append(f"{where}: {why}, so this must be {clients} (or be left out), got {value}")
    return problems
