"""The global random generators of Python (`random`) and numpy, owned per client like torch's.

FLamby's Fed-ISIC2019 draws from them: its FedClass picks CoarseDropout's hole count with
`random.randint` when built, and albumentations 1.x draws every augmentation from `random` and
`numpy.random`. Unseeded, two runs with the same seed train different models; shared by the
clients of the in-process backend, they would make it differ from MPI. So each client seeds its
own pair from its derived seed and swaps it in around its work, as it does torch's, and its
checkpoints carry both states (`state`/`restore`, plain JSON), so a resume draws what the
uninterrupted run would have drawn.
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

    def state(self) -> dict:
        """Both generators' states as JSON (Python's: its version, 625 words, gauss_next; numpy's
        MT19937: 624 words, position, cached Gaussian)."""
        version, words, gauss_next = self._python
        name, keys, pos, has_gauss, cached = self._numpy
        return {"python": [version, list(words), gauss_next],
                "numpy": [name, [int(k) for k in keys], int(pos), int(has_gauss), float(cached)]}

    def restore(self, state: dict):
        """The states `state()` gave; ValueError/TypeError for anything else (a checkpoint that is
        not ours is refused by the caller, never half applied)."""
        version, words, gauss_next = state["python"]
        name, keys, pos, has_gauss, cached = state["numpy"]
        probe_python, probe_numpy = random.Random(), np.random.RandomState()
        python = (int(version), tuple(int(w) for w in words), None if gauss_next is None else float(gauss_next))
        numpy_state = (str(name), np.array(keys, dtype=np.uint32), int(pos), int(has_gauss), float(cached))
        probe_python.setstate(python)  # raises on a malformed state before anything is replaced
        probe_numpy.set_state(numpy_state)
        self._python, self._numpy = python, numpy_state
