"""The one dataset interface the rest of the code sees.

FLamby datasets, user modules with FLamby's dataset-module interface and the
built-in `synthetic` dataset all become a `DatasetSpec`.
"""
from __future__ import annotations

import inspect
from dataclasses import dataclass
from types import ModuleType
from typing import Any, Callable, Optional

import torch

# What a FLamby dataset module exposes (flamby/datasets/fed_*/__init__.py).
REQUIRED_ATTRIBUTES = (
    "NUM_CLIENTS", "BATCH_SIZE", "LR", "Optimizer", "get_nb_max_rounds",
    "FedClass", "Baseline", "BaselineLoss", "metric",
)


@dataclass
class DatasetSpec:
    name: str
    num_clients: int
    batch_size: int
    learning_rate: float
    optimizer_class: type
    get_nb_max_rounds: Callable[..., int]
    fed_class: Callable[..., torch.utils.data.Dataset]
    baseline: Callable[[], torch.nn.Module]
    baseline_loss: Callable[[], torch.nn.Module]
    metric: Callable[[Any, Any], float]
    # Called around dataset construction to turn known failures into UserErrors.
    make_guard: Optional[Callable[[], Any]] = None
    data_path: Optional[str] = None
    debug: bool = False

    def center_dataset(self, center: int, train: bool) -> torch.utils.data.Dataset:
        return self._build(center=center, train=train, pooled=False)

    def pooled_dataset(self, train: bool) -> torch.utils.data.Dataset:
        """FLamby's pooled set (all centres together), as its benchmark's Pooled Test uses."""
        return self._build(train=train, pooled=True)

    def listed_centres_dataset(self, centres, train: bool) -> torch.utils.data.Dataset:
        """The listed centres' sets together, in the order given: the pooled set of a run that trains
        only some centres (FLamby's pooled set would hold the others too)."""
        return torch.utils.data.ConcatDataset([self.center_dataset(c, train) for c in centres])

    def _build(self, **kwargs) -> torch.utils.data.Dataset:
        accepted = _accepted_kwargs(self.fed_class)
        if self.data_path is not None:
            if accepted is not None and "data_path" not in accepted:
                from ..exit.errors import UserError
                raise UserError(f"dataset {self.name} does not accept data_args.data_path",
                                hint="remove data_args.data_path from the config")
            kwargs["data_path"] = self.data_path
        if self.debug and (accepted is None or "debug" in accepted):
            kwargs["debug"] = True
        if self.make_guard is None:
            return self.fed_class(**kwargs)
        with self.make_guard():
            return self.fed_class(**kwargs)


def _accepted_kwargs(fn) -> Optional[set]:
    """Keyword names `fn` accepts, or None when it takes **kwargs or cannot be inspected."""
    try:
        params = inspect.signature(fn).parameters.values()
    except (TypeError, ValueError):
        return None
    if any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params):
        return None
    return {p.name for p in params}


def spec_from_module(module: ModuleType, name: str, data_path=None, debug=False,
                     make_guard=None) -> DatasetSpec:
    return DatasetSpec(
        name=name,
        num_clients=int(module.NUM_CLIENTS),
        batch_size=int(module.BATCH_SIZE),
        learning_rate=float(module.LR),
        optimizer_class=module.Optimizer,
        get_nb_max_rounds=module.get_nb_max_rounds,
        fed_class=module.FedClass,
        baseline=module.Baseline,
        baseline_loss=module.BaselineLoss,
        metric=module.metric,
        make_guard=make_guard,
        data_path=data_path,
        debug=debug,
    )
