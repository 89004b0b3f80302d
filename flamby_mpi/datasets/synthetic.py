"""`synthetic`: a built-in federated binary classification task needing no download.

Deterministic from the seed. Non-IID across centres: each centre has its own
feature shift, its own label balance (intercept) and its own size, so weighted
averaging and per-centre metrics are meaningful. Same interface as a FLamby
dataset module: NUM_CLIENTS, BATCH_SIZE, LR, Optimizer, get_nb_max_rounds,
FedClass, Baseline, BaselineLoss, metric.
"""
from __future__ import annotations

import numpy as np
import torch

NUM_FEATURES = 10
BATCH_SIZE = 16
LR = 0.05
NUM_EPOCHS_POOLED = 50
TRAIN_FRACTION = 2 / 3
Optimizer = torch.optim.SGD


class Baseline(torch.nn.Module):
    """Logistic regression, like FLamby's Fed-Heart-Disease baseline."""

    def __init__(self, input_dim: int = NUM_FEATURES):
        super().__init__()
        self.linear = torch.nn.Linear(input_dim, 1)

    def forward(self, x):
        return torch.sigmoid(self.linear(x))


class BaselineLoss(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.bce = torch.nn.BCELoss()

    def forward(self, prediction, target):
        return self.bce(prediction, target)


def metric(y_true, y_pred) -> float:
    """Accuracy of thresholded probabilities."""
    y_true = np.asarray(y_true).astype("uint8")
    return float(((np.asarray(y_pred) > 0.5) == y_true).mean())


def center_sizes(num_centers: int, samples_per_center: int):
    # Unequal sizes (1x, 1.5x, 0.5x, ...) so that sample weighting matters.
    factors = (1.0, 1.5, 0.5, 1.25, 0.75)
    return [max(8, int(samples_per_center * factors[k % len(factors)])) for k in range(num_centers)]


def make_center_arrays(seed: int, center: int, num_centers: int, samples_per_center: int):
    """All samples of one centre as (X float32 [n, d], y float32 [n, 1]), train part first."""
    shared = np.random.default_rng([seed, 0xC0FFEE])
    true_weights = shared.normal(0.0, 1.0, NUM_FEATURES)
    rng = np.random.default_rng([seed, center])
    n = center_sizes(num_centers, samples_per_center)[center]
    shift = rng.normal(0.0, 1.0, NUM_FEATURES) * (0.5 + center % 3 * 0.5)
    intercept = (center - (num_centers - 1) / 2) * 0.8  # label balance differs by centre
    x = rng.normal(0.0, 1.0, (n, NUM_FEATURES)) + shift
    logits = x @ true_weights / np.sqrt(NUM_FEATURES) * 2.0 + intercept
    y = (rng.random(n) < 1.0 / (1.0 + np.exp(-logits))).astype(np.float32)
    return x.astype(np.float32), y.reshape(-1, 1)


class SyntheticCenter(torch.utils.data.TensorDataset):
    def __init__(self, center: int, train: bool, pooled: bool = False, *, seed: int,
                 num_centers: int, samples_per_center: int):
        if pooled:
            parts = [SyntheticCenter(k, train, seed=seed, num_centers=num_centers,
                                     samples_per_center=samples_per_center) for k in range(num_centers)]
            super().__init__(torch.cat([p.tensors[0] for p in parts]), torch.cat([p.tensors[1] for p in parts]))
            return
        if not 0 <= center < num_centers:
            raise ValueError(f"synthetic has centres 0..{num_centers - 1}, got {center}")
        x, y = make_center_arrays(seed, center, num_centers, samples_per_center)
        n_train = int(len(x) * TRAIN_FRACTION)
        part = slice(0, n_train) if train else slice(n_train, None)
        super().__init__(torch.from_numpy(x[part]), torch.from_numpy(y[part]))


def train_sizes(num_centers: int, samples_per_center: int):
    """Each centre's training samples, known before any data is made."""
    return [int(n * TRAIN_FRACTION) for n in center_sizes(num_centers, samples_per_center)]


def train_size(seed: int, num_centers: int, samples_per_center: int) -> int:
    return sum(train_sizes(num_centers, samples_per_center))


class SyntheticModule:
    """A FLamby-style dataset module whose number of centres is a parameter."""

    Optimizer = Optimizer
    Baseline = Baseline
    BaselineLoss = BaselineLoss
    BATCH_SIZE = BATCH_SIZE
    LR = LR
    metric = staticmethod(metric)

    def __init__(self, seed: int, num_centers: int = 4, samples_per_center: int = 200):
        self.NUM_CLIENTS = num_centers
        self._seed = seed
        self._samples = samples_per_center

    def FedClass(self, center: int = 0, train: bool = True, pooled: bool = False):
        return SyntheticCenter(center, train, pooled, seed=self._seed, num_centers=self.NUM_CLIENTS,
                               samples_per_center=self._samples)

    def get_nb_max_rounds(self, num_updates: int, batch_size: int = BATCH_SIZE) -> int:
        total = train_size(self._seed, self.NUM_CLIENTS, self._samples)
        return max(1, (total // self.NUM_CLIENTS // batch_size) * NUM_EPOCHS_POOLED // num_updates)
