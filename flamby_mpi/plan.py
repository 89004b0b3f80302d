"""RunPlan: the validated config joined with its dataset into concrete run values.

Every rank computes the same plan from the same config without talking to the
others, so mismatches (world size, client counts) are found before any MPI call.
"""
from __future__ import annotations

import importlib
from dataclasses import dataclass
from typing import List

import torch

from .config import OPTIMIZER_CHOICES, RunConfig
from .datasets import DatasetSpec, resolve_dataset
from .errors import ConfigError

_OPTIMIZERS = {
    "sgd": torch.optim.SGD, "adam": torch.optim.Adam, "adamw": torch.optim.AdamW,
    "adagrad": torch.optim.Adagrad, "rmsprop": torch.optim.RMSprop,
}
assert set(_OPTIMIZERS) == set(OPTIMIZER_CHOICES)


@dataclass
class RunPlan:
    config: RunConfig
    dataset: DatasetSpec
    num_clients: int
    rounds: int
    num_updates: int
    batch_size: int
    test_batch_size: int
    learning_rate: float
    optimizer_class: type
    seed: int

    @property
    def world_size(self) -> int:
        return self.num_clients + 1

    @property
    def optimizer_name(self) -> str:
        """The client optimizer as results and the banner show it, e.g. torch.optim.sgd.SGD."""
        return f"{self.optimizer_class.__module__}.{self.optimizer_class.__name__}"

    def summary(self) -> dict:
        from .strategies import STRATEGIES

        train = self.config.train_args
        return {
            "dataset": self.dataset.name, "strategy": train.federated_optimizer,
            # e.g. Cyclic's pass_model_on, which changes what the run measures
            **STRATEGIES[train.federated_optimizer].resolve_hyperparameters(train),
            "num_clients": self.num_clients, "rounds": self.rounds, "num_updates": self.num_updates,
            "batch_size": self.batch_size, "learning_rate": self.learning_rate,
            "optimizer": self.optimizer_name,
            "seed": self.seed,
        }


def resolve_optimizer(name: str) -> type:
    key = name.strip()
    if key.lower() in _OPTIMIZERS:
        return _OPTIMIZERS[key.lower()]
    if "." in key:
        module_name, _, cls_name = key.rpartition(".")
        try:
            cls = getattr(importlib.import_module(module_name), cls_name)
        except (ImportError, AttributeError, ValueError, TypeError):  # e.g. ".SGD", "..SGD"
            cls = None
        if isinstance(cls, type) and issubclass(cls, torch.optim.Optimizer) and cls is not torch.optim.Optimizer:
            return cls
    raise ValueError(f"train_args.client_optimizer: {name!r} is not an optimizer; valid choices: "
                     f"{', '.join(OPTIMIZER_CHOICES)} or a dotted class such as torch.optim.SGD")


def _strategy_problems(train, num_clients: int) -> List[str]:
    from .strategies import HYPERPARAMETER_USERS, STRATEGIES

    strategy = STRATEGIES[train.federated_optimizer]
    problems = []
    for key, users in HYPERPARAMETER_USERS.items():
        value = getattr(train, key)
        if key in strategy.hyperparameters:
            if value is None and strategy.hyperparameters[key] is None:
                problems.append(f"train_args.{key}: {strategy.name} needs it (FLamby's name); "
                                f"strategies using it: {', '.join(users)}")
        elif value is not None:
            problems.append(f"train_args.{key}: not used by {strategy.name} (only by {', '.join(users)}); "
                            "remove it or choose one of those strategies")
    dp = [train.dp_target_epsilon, train.dp_target_delta, train.dp_max_grad_norm]
    if any(v is not None for v in dp):
        if any(v is None for v in dp):
            problems.append("train_args.dp_target_epsilon, dp_target_delta and dp_max_grad_norm go together "
                            "(differential privacy needs all three)")
        else:
            try:
                import opacus  # noqa: F401
            except ImportError:
                problems.append("train_args.dp_*: differential privacy needs opacus, which is not installed: "
                                "pip install opacus")
    per_round = train.client_num_per_round
    if per_round is not None:
        if per_round > num_clients:
            problems.append(f"train_args.client_num_per_round: at most {num_clients} (the centres), got {per_round}")
        elif per_round < num_clients and not strategy.allows_client_sampling:
            problems.append(f"train_args.client_num_per_round: {strategy.name} picks its own centre each "
                            "round; leave client_num_per_round out")
    return problems


def make_plan(config: RunConfig) -> RunPlan:
    seed = config.common_args.random_seed
    dataset = resolve_dataset(config.data_args, seed)
    train = config.train_args
    problems: List[str] = []
    n = dataset.num_clients

    for where, value in (("train_args.client_num_in_total", train.client_num_in_total),
                         ("device_args.worker_num", config.device_args.worker_num)):
        if value is not None and value != n:
            problems.append(f"{where}: {dataset.name} has {n} centres, so this must be {n} "
                            f"(or be left out), got {value}")
    problems += _strategy_problems(train, n)

    optimizer_class = dataset.optimizer_class
    if train.client_optimizer is not None:
        try:
            optimizer_class = resolve_optimizer(train.client_optimizer)
        except ValueError as exc:
            problems.append(str(exc))

    rounds = train.comm_round
    if rounds is None:
        rounds = int(dataset.get_nb_max_rounds(train.num_updates))
        if rounds < 1:
            problems.append(f"train_args.comm_round: {dataset.name}'s get_nb_max_rounds("
                            f"{train.num_updates}) gives {rounds}; set comm_round explicitly")
    if problems:
        raise ConfigError(problems)

    batch_size = train.batch_size or dataset.batch_size
    return RunPlan(
        config=config, dataset=dataset, num_clients=n, rounds=rounds, num_updates=train.num_updates,
        batch_size=batch_size, test_batch_size=config.validation_args.test_batch_size or batch_size,
        learning_rate=train.learning_rate if train.learning_rate is not None else dataset.learning_rate,
        optimizer_class=optimizer_class, seed=seed,
    )
