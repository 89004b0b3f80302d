"""Federated strategies by FLamby's names; each module holds a server half and a client half."""
from ..registry import HYPERPARAMETER_USERS, STRATEGY_NAMES
from .base import Strategy
from .cyclic import Cyclic
from .fed_avg import FedAvg
from .fed_avg_fine_tuning import FedAvgFineTuning
from .fed_opt import FedAdagrad, FedAdam, FedYogi
from .fed_prox import FedProx
from .scaffold import Scaffold

# The names and defaults are flamby_mpi.registry's; this maps each name to its implementation.
_CLASSES = {cls.name: cls for cls in (FedAvg, FedProx, FedAdam, FedYogi, FedAdagrad, Scaffold, Cyclic,
                                      FedAvgFineTuning)}
assert set(_CLASSES) == set(STRATEGY_NAMES), "flamby_mpi.registry and the strategy modules disagree"
STRATEGIES = {name: _CLASSES[name] for name in STRATEGY_NAMES}

__all__ = ["STRATEGIES", "HYPERPARAMETER_USERS", "Strategy", "make_strategy"]


def make_strategy(plan) -> Strategy:
    return STRATEGIES[plan.config.train_args.federated_optimizer](plan)
