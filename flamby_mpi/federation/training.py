"""FLamby's local-training and evaluation semantics, free of FedML and MPI.

- A round is `num_updates` optimizer steps, not epochs.
- Batches come from an endless iterator over the client's train loader whose
  position survives across rounds (FLamby's DataLoaderWithMemory).
- The client keeps one optimizer, and its state, for the whole run; the global
  model is copied into the same parameter tensors each round.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Iterator, Optional, Tuple

import numpy as np
import torch

from ..runtime import loader_workers


def derived_seed(seed: int, rank: int) -> int:
    """A per-rank seed for data order and local randomness, stable across launch modes."""
    return int(np.random.SeedSequence([seed, rank]).generate_state(1)[0])


class DataLoaderWithMemory:
    """Iterates a DataLoader forever, restarting it silently; the position is kept between calls.

    Its position can be saved and restored exactly (checkpoints), without reloading a batch:
    - a loader with its own torch.Generator (ours) draws the epoch's permutation from it when an
      epoch starts; the generator's state then and the batches drawn since are the position, and
      restoring replays the permutation and skips that many batches of indices;
    - opacus's Poisson-sampling loader draws each batch as it goes, from the loader's generator
      (ours, which opacus keeps) or else torch's global stream (the client's own, saved with the
      client): its position is that generator's current state and the batches left in the
      epoch; restoring starts an iterator, puts the generator back, and ends that epoch after
      the batches it had left.
    """

    def __init__(self, loader: torch.utils.data.DataLoader):
        self.loader = loader
        self.batches_drawn = 0
        self._start_epoch()

    def __len__(self) -> int:
        return len(self.loader.dataset)

    def _start_epoch(self):
        generator = self.loader.generator
        self._epoch_generator_state = None if generator is None else generator.get_state()
        self._iterator: Iterator = loader_workers.start_iterator(self.loader)
        self._epoch_batches = 0
        self._epoch_length: Optional[int] = None  # set when restored mid-epoch in draw-as-you-go mode

    def get_samples(self):
        if self._epoch_length is not None and self._epoch_batches >= self._epoch_length:
            self._start_epoch()
        try:
            batch = self._next()
        except StopIteration:
            self._start_epoch()
            batch = self._next()
        self.batches_drawn += 1
        self._epoch_batches += 1
        return batch

    def _next(self):
        return loader_workers.next_batch(self._iterator, data_role(self.loader))

    def _draws_as_it_goes(self) -> bool:
        return getattr(self.loader, "sample_rate", None) is not None  # opacus's DPDataLoader

    def state(self) -> Tuple[dict, dict]:
        """(tensors, JSON data) that restore this exact position."""
        tensors = {} if self._epoch_generator_state is None else {"epoch_generator": self._epoch_generator_state}
        left = None
        if self._draws_as_it_goes():
            left = (self._epoch_length if self._epoch_length is not None else len(self.loader)) - self._epoch_batches
            if self.loader.generator is not None:
                tensors = {"generator": self.loader.generator.get_state()}
        return tensors, {"batches_drawn": self.batches_drawn, "epoch_batches": self._epoch_batches,
                         "epoch_batches_left": left}

    def restore(self, tensors: dict, data: dict):
        self.batches_drawn = int(data["batches_drawn"])
        done = int(data["epoch_batches"])
        if self._draws_as_it_goes():
            outer = torch.get_rng_state()
            # What its start draws was drawn before the checkpoint: undone.
            self._iterator = loader_workers.start_iterator(self.loader)
            torch.set_rng_state(outer)
            if self.loader.generator is not None:
                self.loader.generator.set_state(tensors["generator"])
            self._epoch_generator_state, self._epoch_batches = None, 0
            self._epoch_length = int(data["epoch_batches_left"])
            return
        if "epoch_generator" not in tensors or self.loader.generator is None:
            raise ValueError("the saved data position does not fit this loader")
        self.loader.generator.set_state(tensors["epoch_generator"])
        self._start_epoch()
        sampler_iter = getattr(self._iterator, "_sampler_iter", None)
        for _ in range(done):
            if self.loader.num_workers == 0 and sampler_iter is not None:
                next(sampler_iter)  # the batch's indices only: no sample is loaded
                self._iterator._num_yielded += 1
            else:  # worker processes prefetch, and their random streams must advance as they did
                self._next()
        self._epoch_batches = done


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
        self.accountant = None  # opacus's, with differential privacy: its history is checkpointed
        if privacy is not None:
            role = data_role(train_loader)
            self.model, self.optimizer, train_loader, self.accountant = privacy.make_private(
                self.model, self.optimizer, train_loader, device)
            train_loader.data_role = role  # opacus's loader is a new one, over the same data
        self.batches = DataLoaderWithMemory(train_loader)

    @property
    def num_train_samples(self) -> int:
        return self._num_train_samples

    def state_dict(self):
        return self.net.state_dict()

    def state(self) -> Tuple[dict, dict]:
        """(tensors, JSON data): optimizer, data position and, with differential privacy, the noise
        generator and the privacy accountant's history. Not the model: every message the server
        sends, the first after a resume included, carries the whole global model, and the client
        loads it (load_state_dict, strict: every parameter and buffer) before it evaluates or trains;
        what the model held at the cut is never read again. A strategy that keeps a model of its
        own between rounds (Cyclic's own models, Scaffold's previous result) saves it in its state."""
        batch_tensors, batch_data = self.batches.state()
        tensors = {"optimizer": self.optimizer.state_dict(), "batches": batch_tensors}
        data = {"batches": batch_data}
        noise = getattr(self.optimizer, "generator", None)
        if isinstance(noise, torch.Generator):
            tensors["noise_generator"] = noise.get_state()
        if self.accountant is not None:
            data["accountant_history"] = [list(step) for step in self.accountant.history]
        return tensors, data

    def restore(self, tensors: dict, data: dict):
        if "model" in tensors:  # a checkpoint written before clients stopped saving their model
            self.net.load_state_dict(tensors["model"])
        self.optimizer.load_state_dict(tensors["optimizer"])
        self.batches.restore(tensors["batches"], data["batches"])
        noise = getattr(self.optimizer, "generator", None)
        if isinstance(noise, torch.Generator):
            noise.set_state(tensors["noise_generator"])
        if self.accountant is not None:
            self.accountant.history = [tuple(step) for step in data["accountant_history"]]

    def load_global_state(self, state_dict):
        # load_state_dict copies into the existing tensors, so the optimizer
        # (which holds references to them) keeps working and keeps its state.
        self.net.load_state_dict(state_dict)

    def train_steps(self, num_updates: int, extra_loss=None, grad_hook=None) -> float:
        """Runs num_updates optimizer steps; returns the mean training loss over its non-empty batches.

        extra_loss(model) adds a term to the loss (FedProx); grad_hook(model) edits the
        gradients before each step (Scaffold's correction).
        """
        self.model.train()
        total, counted = 0.0, 0
        for _ in range(num_updates):
            x, y = self.batches.get_samples()
            x, y = x.to(self.device), y.to(self.device)
            loss = self.loss(self.model(x), y)
            # An empty batch (opacus's Poisson sampling draws one now and then) still steps, but its
            # loss is a mean over no sample, NaN: it is left out of the mean reported, not the step.
            reported = loss.item() if len(y) else None
            if extra_loss is not None:
                term = extra_loss(self.model)
                if term is not None:
                    loss = loss + term
            loss.backward()
            if grad_hook is not None:
                grad_hook(self.model)
            self.optimizer.step()
            self.optimizer.zero_grad()
            if reported is not None:
                total, counted = total + reported, counted + 1
        if num_updates and not counted:
            return float("nan")  # every batch was empty: no loss to report
        return total / max(1, counted)


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

        engine = PrivacyEngine()
        wrapped, dp_optimizer, dp_loader = engine.make_private_with_epsilon(
            module=model, optimizer=optimizer, data_loader=loader, epochs=self.epochs,
            target_epsilon=self.target_epsilon, target_delta=self.target_delta,
            max_grad_norm=self.max_grad_norm,
            noise_generator=torch.Generator(device).manual_seed(self.seed))
        return wrapped, dp_optimizer, dp_loader, engine.accountant


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
             metric: Callable, device: torch.device, loader_metric: Optional[Callable] = None) -> Evaluation:
    """FLamby's evaluate_model_on_tests for one test loader, keeping predictions; or, for the
    datasets FLamby's benchmark evaluates with their own function (DatasetSpec.loader_metric),
    that function's metric, without predictions."""
    was_training = model.training
    model.eval()
    # Iterating a loader can touch torch's and numpy's global RNGs (Fed-KITS19's test crops draw
    # from numpy's): keep training reproducible.
    rng_state, numpy_state = torch.get_rng_state(), np.random.get_state()
    y_true, y_pred = [], []
    try:
        if loader_metric is not None:
            with loader_workers.starting_workers():  # FLamby's function starts the loader's workers itself
                value = float(loader_metric(model, loader, device.type == "cuda"))
            return Evaluation(value, len(loader.dataset))
        with torch.no_grad():
            batches = loader_workers.start_iterator(loader)
            while True:
                try:
                    x, y = loader_workers.next_batch(batches, data_role(loader))
                except StopIteration:
                    break
                y_pred.append(model(x.to(device)).detach().cpu().numpy())
                y_true.append(y.detach().cpu().numpy())
    finally:
        torch.set_rng_state(rng_state)
        np.random.set_state(numpy_state)
        model.train(was_training)
    if not y_true:
        return Evaluation(float("nan"), 0, np.empty(0), np.empty(0))
    y_true_all, y_pred_all = np.concatenate(y_true), np.concatenate(y_pred)
    return Evaluation(float(metric(y_true_all, y_pred_all)), len(y_true_all), y_true_all, y_pred_all)


def make_loader(dataset, batch_size: int, shuffle: bool, num_workers: int,
                generator: Optional[torch.Generator] = None,
                collate_fn: Optional[Callable] = None, role: str = "this rank's data") -> torch.utils.data.DataLoader:
    """FLamby's loader. With num_workers > 0 its worker processes start from a fork server, never
    forked from this MPI rank, seeded from `generator` and computing with this rank's number of
    torch threads (runtime/loader_workers.py); the batches are the ones 0 workers give, in the same
    order, bit for bit, for a dataset without randomness of its own. `role` names the data in the
    message when a worker dies ("centre 2's training data")."""
    workers = {}
    if num_workers > 0:
        workers = {"multiprocessing_context": loader_workers.worker_context(dataset, collate_fn),
                   "worker_init_fn": loader_workers.worker_init()}
    loader = torch.utils.data.DataLoader(dataset, batch_size=batch_size, shuffle=shuffle,
                                         num_workers=num_workers, generator=generator, collate_fn=collate_fn,
                                         **workers)
    loader.data_role = role
    return loader


def data_role(loader) -> str:
    return getattr(loader, "data_role", "this rank's data")
