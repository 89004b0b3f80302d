"""Facts about FLamby's strategies that several places need, each written once.

Standard library only, on purpose: flamby_mpi.config takes its strategy choices
and hyperparameter help from here, the strategy classes their defaults, and the
scripts the strategy names, all without importing torch, FedML, mpi4py or FLamby.
"""
from __future__ import annotations

from types import MappingProxyType
from typing import Dict, List, Mapping, Optional, Tuple

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
