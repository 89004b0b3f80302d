"""A test-only dataset module (FLamby's interface): the synthetic dataset with a model whose state
holds BatchNorm buffers (running mean and variance, num_batches_tracked) and dropout, trained with
Adam (moments in the optimizer's state): what a checkpoint must bring back beyond plain weights."""
import torch

from flamby_mpi.datasets.synthetic import (  # noqa: F401  (the module interface)
    BATCH_SIZE,
    NUM_FEATURES,
    BaselineLoss,
    SyntheticModule,
    metric,
)

LR = 0.01
Optimizer = torch.optim.Adam
_module = SyntheticModule(seed=0, num_centers=4)
NUM_CLIENTS = _module.NUM_CLIENTS
FedClass = _module.FedClass
get_nb_max_rounds = _module.get_nb_max_rounds


class Baseline(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.layers = torch.nn.Sequential(
            torch.nn.Linear(NUM_FEATURES, 8), torch.nn.BatchNorm1d(8), torch.nn.ReLU(), torch.nn.Dropout(0.2),
            torch.nn.Linear(8, 1))

    def forward(self, x):
        return torch.sigmoid(self.layers(x))
