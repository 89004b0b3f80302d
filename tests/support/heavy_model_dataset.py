"""A test-only dataset module (FLamby's interface): the synthetic dataset with HEAVY_MODEL_CENTRES
centres (default 2) and a model carrying HEAVY_MODEL_BYTES bytes (default 2.2e9, over MPI's 2 GiB
count limit) of float32 weights that the forward pass never uses, so a round is all exchange."""
import os

import torch

from flamby_mpi.datasets.synthetic import (  # noqa: F401  (the module interface)
    BATCH_SIZE,
    LR,
    BaselineLoss,
    Optimizer,
    SyntheticModule,
    metric,
)
from flamby_mpi.datasets.synthetic import Baseline as _SmallBaseline

NUM_CLIENTS = int(os.environ.get("HEAVY_MODEL_CENTRES", "2"))
_module = SyntheticModule(seed=0, num_centers=NUM_CLIENTS)
FedClass = _module.FedClass


def get_nb_max_rounds(num_updates, batch_size=BATCH_SIZE):
    return 2


class Baseline(_SmallBaseline):
    def __init__(self):
        super().__init__()
        elements = int(float(os.environ.get("HEAVY_MODEL_BYTES", "2.2e9")) // 4)
        self.ballast = torch.nn.Parameter(torch.zeros(elements), requires_grad=False)
