"""FLamby's local-training and evaluation semantics, free of FedML and MPI.

- A round is `num_updates` optimizer steps, not epochs.
- Batches come from an endless iterator over the client's train loader whose
  position survives across rounds (FLamby's DataLoaderWithMemory).
- The client keeps one optimizer, and its state, for the whole run; the global
  model is copied into the same parameter tensors each round.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Iterator, Optional

import numpy as np
import torch


def derived_seed(seed: int, rank: int) -> int:
    """A per-rank seed for data order and local randomness, stable across launch modes."""
    return int(np.random.SeedSequence([seed, rank]).generate_state(1)[0])


class DataLoaderWithMemory:
    """Iterates a DataLoader forever, restarting it silently; the position is kept between calls."""

    def __init__(self, loader: torch.utils.data.DataLoader):
        self.loader = loader
        self._iterator: Iterator = iter(loader)
        self.batches_drawn = 0

    def __len__(self) -> int:
        return len(self.loader.dataset)

    def get_samples(self):
        try:
            batch = next(self._iterator)
        except StopIteration:
            self._iterator = iter(self.loader)
            batch = next(self._iterator)
        self.batches_drawn += 1
        return batch


class LocalLearner:
    """One client's model, optimizer and endless batch stream."""

    def __init__(self, model: torch.nn.Module, optimizer_class: type, learning_rate: float,
                 loss: torch.nn.Module, train_loader: torch.utils.data.DataLoader,
                 device: torch.device, privacy: Optional["PrivacySettings"] = None,
                 optimizer_kwargs: Optional[dict] = None):
        self.device = device
        # `net` is the model whose state travels; `model` is what trains (the same
        # module, or opacus's wrapper around it when differential privacy is on).
        self.net = self.model = model.to(device)
        self.loss = loss.to(device)
        # optimizer_kwargs: e.g. weight_decay, only when the config sets it (RunPlan.optimizer_kwargs)
        self.optimizer = optimizer_class(self.model.parameters(), lr=learning_rate,
                                         **(optimizer_kwargs or {}))
        self._num_train_samples = len(train_loader.dataset)
        if privacy is not None:
            self.model, self.optimizer, train_loader = privacy.make_private(
                self.model, self.optimizer, train_loader, device)
        self.batches = DataLoaderWithMemory(train_loader)

    @property
    def num_train_samples(self) -> int:
        return self._num_train_samples

    def state_dict(self):
        return self.net.state_dict()

    def load_global_state(self, state_dict):
        # load_state_dict copies into the existing tensors, so the optimizer
        # (which holds references to them) keeps working and keeps its state.
        self.net.load_state_dict(state_dict)

    def train_steps(self, num_updates: int, extra_loss=None, grad_hook=None) -> float:
        """Runs num_updates optimizer steps; returns the mean training loss.

        extra_loss(model) adds a term to the loss (FedProx); grad_hook(model) edits the
        gradients before each step (Scaffold's correction).
        """
        self.model.train()
        total = 0.0
        for _ in range(num_updates):
            x, y = self.batches.get_samples()
            x, y = x.to(self.device), y.to(self.device)
            loss = self.loss(self.model(x), y)
            reported = loss.item()
            if extra_loss is not None:
                term = extra_loss(self.model)
                if term is not None:
                    loss = loss + term
            loss.backward()
            if grad_hook is not None:
                grad_hook(self.model)
            self.optimizer.step()
            self.optimizer.zero_grad()
            total += reported
        return total / max(1, num_updates)


@dataclass
class PrivacySettings:
    """FLamby's differential privacy: opacus's make_private_with_epsilon on each client."""

    target_epsilon: float
    target_delta: float
    max_grad_norm: float
    epochs: int  # FLamby passes the number of rounds
    seed: int

    def make_private(self, model, optimizer, loader, device):
        from opacus import PrivacyEngine  # optional dependency, checked when the plan is made

        wrapped, dp_optimizer, dp_loader = PrivacyEngine().make_private_with_epsilon(
            module=model, optimizer=optimizer, data_loader=loader, epochs=self.epochs,
            target_epsilon=self.target_epsilon, target_delta=self.target_delta,
            max_grad_norm=self.max_grad_norm,
            noise_generator=torch.Generator(device).manual_seed(self.seed))
        return wrapped, dp_optimizer, dp_loader


@dataclass
class Evaluation:
    metric: float
    num_samples: int
    # The labels and predictions behind the metric (FLamby's Pooled Test concatenates them).
    y_true: Optional[np.ndarray] = None
    y_pred: Optional[np.ndarray] = None

    def without_predictions(self) -> "Evaluation":
        return Evaluation(self.metric, self.num_samples)


def evaluate(model: torch.nn.Module, loader: torch.utils.data.DataLoader,
             metric: Callable, device: torch.device) -> Evaluation:
    """FLamby's evaluate_model_on_tests for one test loader, keeping predictions."""
    was_training = model.training
    model.eval()
    # Iterating a loader can touch torch's global RNG; keep training reproducible.
    rng_state = torch.get_rng_state()
    y_true, y_pred = [], []
    with torch.no_grad():
        for x, y in loader:
            y_pred.append(model(x.to(device)).detach().cpu().numpy())
            y_true.append(y.detach().cpu().numpy())
    torch.set_rng_state(rng_state)
    model.train(was_training)
    if not y_true:
        return Evaluation(float("nan"), 0, np.empty(0), np.empty(0))
    y_true_all, y_pred_all = np.concatenate(y_true), np.concatenate(y_pred)
    return Evaluation(float(metric(y_true_all, y_pred_all)), len(y_true_all), y_true_all, y_pred_all)


def make_loader(dataset, batch_size: int, shuffle: bool, num_workers: int,
                generator: Optional[torch.Generator] = None) -> torch.utils.data.DataLoader:
    return torch.utils.data.DataLoader(dataset, batch_size=batch_size, shuffle=shuffle,
                                       num_workers=num_workers, generator=generator)
