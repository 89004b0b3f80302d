"""A test-only dataset module (FLamby's interface): the synthetic dataset, whose samples, when read by
a DataLoader worker process, report that worker.

With WORKER_PROBE_DIR set (in the rank: the dataset object carries it to its workers), the first
sample a worker reads writes <dir>/<pid>.json: the worker's pid and parent, the centre and split it
loads, whether mpi4py (or FedML) is imported in it. Tests read these to check that workers never
touch MPI, and to find a worker of a given centre to kill. WORKER_PROBE_SAMPLES sets the centres'
size. With WORKER_PROBE_AUGMENT=1 each training sample gets random noise drawn from torch's, numpy's
and Python's global generators, as FLamby's augmentations draw (Fed-ISIC2019's albumentations,
Fed-KITS19's crops); otherwise the samples are the synthetic dataset's, unchanged.
"""
import json
import os
import random
import sys

import numpy as np
import torch

from flamby_mpi.datasets.synthetic import (  # noqa: F401  (the module interface)
    BATCH_SIZE,
    LR,
    Baseline,
    BaselineLoss,
    Optimizer,
    SyntheticModule,
    metric,
)

NUM_CLIENTS = 2
_module = SyntheticModule(seed=0, num_centers=NUM_CLIENTS,
                          samples_per_center=int(os.environ.get("WORKER_PROBE_SAMPLES", "200")))


def get_nb_max_rounds(num_updates, batch_size=BATCH_SIZE):
    return _module.get_nb_max_rounds(num_updates, batch_size)


class ProbedCenter(torch.utils.data.Dataset):
    def __init__(self, inner, center, train):
        self.inner, self.center, self.train = inner, center, train
        self.probe_dir = os.environ.get("WORKER_PROBE_DIR")
        self.augment = train and os.environ.get("WORKER_PROBE_AUGMENT") == "1"
        self._reported = False

    def __len__(self):
        return len(self.inner)

    def __getitem__(self, idx):
        if not self._reported and self.probe_dir and torch.utils.data.get_worker_info() is not None:
            self._reported = True
            _report(self.probe_dir, self.center, self.train)
        x, y = self.inner[idx]
        if self.augment:
            x = x + 0.1 * torch.rand(x.shape) + float(np.random.normal(0, 0.1)) + random.uniform(-0.1, 0.1)
        return x, y


def _report(directory, center, train):
    mpi = sys.modules.get("mpi4py.MPI")
    record = {"pid": os.getpid(), "ppid": os.getppid(), "center": center, "train": train,
              "mpi4py_imported": "mpi4py" in sys.modules,
              "mpi_initialized": bool(mpi is not None and mpi.Is_initialized()),
              "fedml_imported": "fedml" in sys.modules,
              "parent_cmdline": _cmdline(os.getppid())}
    path = os.path.join(directory, f"{os.getpid()}.json")
    with open(path + ".tmp", "w") as f:
        json.dump(record, f)
    os.replace(path + ".tmp", path)


def _cmdline(pid):
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            return f.read().replace(b"\0", b" ").decode(errors="replace")
    except OSError:
        return ""


def FedClass(center=0, train=True, pooled=False):
    return ProbedCenter(_module.FedClass(center=center, train=train, pooled=pooled),
                        "pooled" if pooled else center, train)
