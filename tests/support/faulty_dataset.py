"""A test-only dataset module (FLamby's interface) that fails on purpose.

The synthetic dataset with 4 centres, plus faults chosen by environment
variables, so tests can check that one failing rank ends the whole MPI job:
- FAULT_CENTER=k and FAULT_AFTER_ITEMS=n: centre k's training data raises after
  n samples were read (n = 2 * num_updates * batch_size fails in round 2);
- FAULT_SERVER_METRIC=1: the metric raises when the server computes the pooled metric;
- FAULT_LOAD_CENTER=k: building centre k's data raises FileNotFoundError (a missing file);
- FAULT_MISSING_CENTER=k: building centre k's data raises a UserError (data a user must fetch:
  said once, by rank 0).
"""
import os

import torch

from flamby_mpi.datasets.synthetic import (  # noqa: F401  (the module interface)
    BATCH_SIZE,
    LR,
    Baseline,
    BaselineLoss,
    Optimizer,
    SyntheticModule,
)
from flamby_mpi.datasets.synthetic import metric as _metric

NUM_CLIENTS = 4
_module = SyntheticModule(seed=0, num_centers=NUM_CLIENTS)


def get_nb_max_rounds(num_updates, batch_size=BATCH_SIZE):
    return _module.get_nb_max_rounds(num_updates, batch_size)


class FaultyCenter(torch.utils.data.Dataset):
    def __init__(self, inner, fail_after):
        self.inner, self.fail_after, self.reads = inner, fail_after, 0

    def __len__(self):
        return len(self.inner)

    def __getitem__(self, idx):
        self.reads += 1
        if self.fail_after is not None and self.reads > self.fail_after:
            raise RuntimeError(f"injected failure after {self.fail_after} samples")
        return self.inner[idx]


def FedClass(center=0, train=True, pooled=False):
    if str(center) == os.environ.get("FAULT_MISSING_CENTER"):
        from flamby_mpi.exit.errors import UserError

        raise UserError(f"the data of centre {center} is missing (injected)", hint="fetch it")
    if str(center) == os.environ.get("FAULT_LOAD_CENTER"):
        raise FileNotFoundError(f"/data/centre{center}/train.csv")
    inner = _module.FedClass(center=center, train=train, pooled=pooled)
    failing = train and str(center) == os.environ.get("FAULT_CENTER")
    return FaultyCenter(inner, int(os.environ["FAULT_AFTER_ITEMS"]) if failing else None)


def metric(y_true, y_pred):
    if os.environ.get("FAULT_SERVER_METRIC") == "1" and os.environ.get("PMI_RANK") == "0":
        raise RuntimeError("injected failure in the server's pooled metric")
    return _metric(y_true, y_pred)
