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

from .data_path_to_base import base_taking_data_path, with_data_path

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
    # FLamby's collate_fn where the dataset has one (Camelyon16 pads its variable-size bags of tile
    # features; LIDC-IDRI), used by every loader as FLamby's benchmark does; None: torch's default.
    collate_fn: Optional[Callable] = None
    # Called around dataset construction to turn known failures into UserErrors.
    make_guard: Optional[Callable[[], Any]] = None
    # FLamby's benchmark evaluates some datasets with their own function over a loader instead of
    # metric(y_true, y_pred) over all predictions (flamby.benchmarks.benchmark_utils.
    # set_dataset_specific_config): (model, loader, use_gpu) -> the loader's metric. None: metric.
    loader_metric: Optional[Callable[[torch.nn.Module, Any, bool], float]] = None
    data_path: Optional[str] = None
    debug: bool = False
    # Why this dataset trains only on a GPU (FLamby code that calls .cuda()), or None.
    needs_cuda: Optional[str] = None

    def center_dataset(self, center: int, train: bool) -> torch.utils.data.Dataset:
        return self._build(center=center, train=train, pooled=False)

    def pooled_dataset(self, train: bool) -> torch.utils.data.Dataset:
        """FLamby's pooled set (all centres together), as its benchmark's Pooled Test uses."""
        return self._build(train=train, pooled=True)

    def listed_centres_dataset(self, centres, train: bool) -> torch.utils.data.Dataset:
        """The listed centres' sets together, in the order given: the pooled set of a run that trains
        only some centres (FLamby's pooled set would hold the others too)."""
        return torch.utils.data.ConcatDataset([self.center_dataset(c, train) for c in centres])

    def data_path_problem(self) -> Optional[str]:
        """Why data_args.data_path cannot be given to this dataset (its class takes no data_path,
        nor does a base class of it), or None. The plan asks, before anything is made."""
        accepted = _accepted_kwargs(self.fed_class)
        if (self.data_path is not None and accepted is not None and "data_path" not in accepted
                and base_taking_data_path(self.fed_class) is None):
            return (f"data_args.data_path: dataset {self.name} does not accept it (it finds its data itself): "
                    "remove data_args.data_path from the config")
        return None

    def _build(self, **kwargs) -> torch.utils.data.Dataset:
        accepted = _accepted_kwargs(self.fed_class)
        fed_class = self.fed_class
        if self.data_path is not None:
            problem = self.data_path_problem()
            if problem is not None:  # a plan refuses it first; a dataset built without one
                from ..exit.errors import UserError
                raise UserError(problem)
            if accepted is not None and "data_path" not in accepted:
                # FLamby's FedKits19: its base class takes the path (data_path_to_base.py).
                fed_class = with_data_path(fed_class, self.data_path)
            else:
                kwargs["data_path"] = self.data_path
        if self.debug and (accepted is None or "debug" in accepted):
            kwargs["debug"] = True
        if self.make_guard is None:
            return fed_class(**kwargs)
        with self.make_guard():
            return fed_class(**kwargs)


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
                     make_guard=None, loader_metric=None, needs_cuda=None) -> DatasetSpec:
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
        collate_fn=getattr(module, "collate_fn", None),
        make_guard=make_guard,
        loader_metric=loader_metric,
        needs_cuda=needs_cuda,
        data_path=data_path,
        debug=debug,
    )
