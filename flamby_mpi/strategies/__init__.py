"""Federated strategies by FLamby's names; each module holds a server half and a client half."""
from ..config import STRATEGY_NAMES
from .base import Strategy
from .cyclic import Cyclic
from .fed_avg import FedAvg
from .fed_avg_fine_tuning import FedAvgFineTuning
from .fed_opt import FedAdagrad, FedAdam, FedYogi
from .fed_prox import FedProx
from .scaffold import Scaffold

STRATEGIES = {cls.name: cls for cls in (FedAvg, FedProx, FedAdam, FedYogi, FedAdagrad, Scaffold, Cyclic,
                                        FedAvgFineTuning)}

assert tuple(STRATEGIES) == STRATEGY_NAMES, "config.STRATEGY_NAMES and the strategy modules disagree"
# Every strategy-specific train_args key, and the strategies that use it.
HYPERPARAMETER_USERS = {}
for _cls in STRATEGIES.values():
    for _key in _cls.hyperparameters:
        HYPERPARAMETER_USERS.setdefault(_key, []).append(_cls.name)

__all__ = ["STRATEGIES", "HYPERPARAMETER_USERS", "Strategy", "make_strategy"]


def make_strategy(plan) -> Strategy:
    return STRATEGIES[plan.config.train_args.federated_optimizer](plan)
