"""A client's own Python and numpy generators (flamby_mpi/federation/host_rng.py): swapped in
around its work, and carried by checkpoints so that a resume draws what the uninterrupted run would."""
import json
import random

import numpy as np
import pytest

from flamby_mpi.federation.host_rng import HostRng


def _draws(rng: HostRng):
    with rng.swapped_in():
        return random.random(), random.gauss(0, 1), np.random.rand(3).tolist(), np.random.randn()


def test_a_client_draws_from_its_own_generators_and_leaves_the_process_ones_alone():
    random.seed(1)
    np.random.seed(1)
    outer = random.getstate(), np.random.get_state()[1].tolist()
    assert _draws(HostRng(7)) == _draws(HostRng(7)) != _draws(HostRng(8))
    assert (random.getstate(), np.random.get_state()[1].tolist()) == outer


def test_the_state_survives_json_and_continues_the_same_stream():
    original = HostRng(42)
    _draws(original)  # mid-stream, a cached Gaussian included
    restored = HostRng(0)
    restored.restore(json.loads(json.dumps(original.state())))
    assert _draws(restored) == _draws(original)


@pytest.mark.parametrize("bad", [
    {},
    {"python": [3, [1, 2], None], "numpy": ["MT19937", [1], 0, 0, 0.0]},
    {"python": "x", "numpy": "y"},
])
def test_a_malformed_state_is_refused_and_changes_nothing(bad):
    rng = HostRng(3)
    before = rng.state()
    with pytest.raises((KeyError, ValueError, TypeError)):
        rng.restore(bad)
    assert rng.state() == before
