"""One client's own streams of the process-wide random generators: torch's, numpy's and Python's.

FLamby's datasets draw from the global generators, not only torch's: Fed-KITS19's nnU-Net crops and
batchgenerators augmentations from numpy's, albumentations (Fed-ISIC2019) from Python's `random`
and numpy's. Each client seeds all three from its own seed (seed_all), builds its data and model,
keeps the states then (GlobalRngs) and swaps them in around all of its work, so that clients
sharing one process (the in-process backend) draw exactly what separate processes draw, and a
checkpoint carries them so that a resumed run draws what an uninterrupted one would. The server
evaluates FLamby's pooled test set inside streams of its own (Fed-KITS19's test crops are random).
"""
from __future__ import annotations

import contextlib
import random
from typing import Iterator, Tuple

import numpy as np
import torch


def seed_all(seed: int):
    """Seeds torch's, numpy's and Python's global generators from one client seed."""
    torch.manual_seed(seed)
    np.random.seed(seed % 2**32)
    random.seed(seed)


class GlobalRngs:
    """The three generators' states as they are now: the client's streams from here on."""

    def __init__(self):
        self._torch, self._numpy, self._python = self._capture()

    @classmethod
    def seeded(cls, seed: int) -> "GlobalRngs":
        """Streams seeded from `seed`, leaving the process's generators as they were."""
        outer = cls._capture()
        seed_all(seed)
        streams = cls()
        cls._put(outer)
        return streams

    @staticmethod
    def _capture():
        return torch.get_rng_state(), np.random.get_state(), random.getstate()

    @staticmethod
    def _put(states):
        torch_state, numpy_state, python_state = states
        torch.set_rng_state(torch_state)
        np.random.set_state(numpy_state)
        random.setstate(python_state)

    @contextlib.contextmanager
    def swapped_in(self) -> Iterator[None]:
        outer = self._capture()
        self._put((self._torch, self._numpy, self._python))
        try:
            yield
        finally:
            self._torch, self._numpy, self._python = self._capture()
            self._put(outer)

    # ---- checkpoints: tensors for torch.save, the rest JSON -----------------------------------
    def state(self) -> Tuple[dict, dict]:
        name, keys, pos, has_gauss, cached_gaussian = self._numpy
        version, internal, gauss_next = self._python
        tensors = {"torch": self._torch, "numpy_keys": torch.from_numpy(keys.astype(np.int64)),
                   "python_internal": torch.tensor(internal, dtype=torch.int64)}
        data = {"numpy": [name, int(pos), int(has_gauss), float(cached_gaussian)],
                "python": [version, gauss_next]}
        return tensors, data

    def restore(self, tensors: dict, data: dict):
        name, pos, has_gauss, cached_gaussian = data["numpy"]
        version, gauss_next = data["python"]
        self._torch = tensors["torch"]
        self._numpy = (name, tensors["numpy_keys"].numpy().astype(np.uint32), pos, has_gauss, cached_gaussian)
        self._python = (version, tuple(int(v) for v in tensors["python_internal"].tolist()), gauss_next)
