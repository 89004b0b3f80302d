"""A client's own torch/numpy/Python random streams: isolated from the process's, and carried by
a checkpoint exactly (what the in-process twin and --resume rely on for FLamby's augmentations)."""
import pickle
import random

import numpy as np
import torch

from flamby_mpi.federation.global_rngs import GlobalRngs, seed_all


def _draw():
    return torch.rand(3).tolist(), np.random.rand(3).tolist(), [random.random() for _ in range(3)]


def test_two_clients_in_one_process_draw_what_separate_processes_draw():
    seed_all(1)
    alone = [_draw(), _draw()]
    seed_all(1)
    first = GlobalRngs()
    seed_all(2)
    second = GlobalRngs()
    seed_all(99)
    outer = _draw()
    seed_all(99)
    with first.swapped_in():
        a = _draw()
    with second.swapped_in():
        _draw()
    with first.swapped_in():
        b = _draw()
    assert [a, b] == alone
    assert _draw() == outer  # the process's own streams went on as if nothing had happened


def test_a_checkpointed_state_resumes_the_same_draws():
    streams = GlobalRngs.seeded(7)
    with streams.swapped_in():
        _draw()
        np.random.normal()  # numpy keeps a cached gaussian: part of the state
    tensors, data = streams.state()
    tensors, data = pickle.loads(pickle.dumps(tensors)), pickle.loads(pickle.dumps(data))
    with streams.swapped_in():
        expected = _draw(), np.random.normal()
    restored = GlobalRngs.seeded(0)
    restored.restore(tensors, data)
    with restored.swapped_in():
        assert (_draw(), np.random.normal()) == expected
