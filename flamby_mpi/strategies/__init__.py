"""Federated strategies by FLamby's names; each module holds a server half and a client half,
except aggregation.py: FedAvg's arithmetic that they (and the server's weighted means) share.

Every module of this package is imported here, and each Strategy subclass with a `name`
registers itself (strategies/base.py): adding a strategy is one module plus its entry in
flamby_mpi/registry.py (docs/ARCHITECTURE.md shows the smallest example).
"""
import importlib
import pkgutil

from ..registry import HYPERPARAMETER_USERS, STRATEGY_NAMES
from .base import IMPLEMENTATIONS, Strategy

for _module in pkgutil.iter_modules(__path__):
    importlib.import_module(f"{__name__}.{_module.name}")

# A check, not an assert: it must hold under `python -O` too, where a missing module would
# otherwise surface as a KeyError in the line below.
_unimplemented = [name for name in STRATEGY_NAMES if name not in IMPLEMENTATIONS]
if _unimplemented:
    raise ImportError(f"flamby_mpi/registry.py names strategies no module of flamby_mpi/strategies/ "
                      f"implements: {', '.join(_unimplemented)} (add a module with a Strategy subclass of that "
                      "name, or remove the name from the registry)")
STRATEGIES = {name: IMPLEMENTATIONS[name] for name in STRATEGY_NAMES}

__all__ = ["STRATEGIES", "HYPERPARAMETER_USERS", "Strategy", "make_strategy"]


def make_strategy(plan) -> Strategy:
    return STRATEGIES[plan.strategy](plan)
