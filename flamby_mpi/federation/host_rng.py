"""The global random generators of Python (`random`) and numpy, owned per client like torch's.

FLamby's Fed-ISIC2019 draws from them: its FedClass picks CoarseDropout's hole count with
`random.randint` when built, and albumentations 1.x draws every augmentation from `random` and
`numpy.random`. Unseeded, two runs with the same seed train different models; shared by the
clients of the in-process backend, they would make it differ from MPI. So each client seeds its
own pair from its derived seed and swaps it in around its work, as it does torch's.
(Not in checkpoints yet: a resumed run continues them from a fresh seed.)
"""
from __future__ import annotations

import contextlib
import random

import numpy as np


class HostRng:
    def __init__(self, seed: int):
        self._python = random.Random(seed).getstate()
        self._numpy = np.random.RandomState(seed % 2 ** 32).get_state()

    @contextlib.contextmanager
    def swapped_in(self):
        outer_python, outer_numpy = random.getstate(), np.random.get_state()
        random.setstate(self._python)
        np.random.set_state(self._numpy)
        try:
            yield
        finally:
            self._python, self._numpy = random.getstate(), np.random.get_state()
            random.setstate(outer_python)
            np.random.set_state(outer_numpy)
