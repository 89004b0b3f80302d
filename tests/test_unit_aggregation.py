"""Unit tests of flamby_mpi.aggregation (FedAvg arithmetic)."""
import math
from collections import OrderedDict

import pytest
import torch

from flamby_mpi.aggregation import fedavg, weighted_mean


def _state(w, b, steps):
    return OrderedDict(weight=torch.tensor(w), bias=torch.tensor(b),
                       num_batches_tracked=torch.tensor(steps, dtype=torch.int64))


def test_fedavg_two_clients_weights_1_and_3():
    global_state = _state([[1.0, 2.0], [0.0, -4.0]], [0.5], 0)
    a = _state([[3.0, 2.0], [1.0, -4.0]], [0.5], 7)
    b = _state([[5.0, 6.0], [-1.0, 0.0]], [1.5], 9)
    new = fedavg(global_state, [(1, a), (3, b)])
    # old + ((a - old) * 1 + (b - old) * 3) / 4 == (a * 1 + b * 3) / 4
    assert torch.equal(new["weight"], torch.tensor([[4.5, 5.0], [-0.5, -1.0]]))
    assert torch.equal(new["bias"], torch.tensor([1.25]))
    assert list(new) == ["weight", "bias", "num_batches_tracked"]
    assert new["weight"].dtype == torch.float32


def test_fedavg_integer_buffers_come_from_the_first_client():
    global_state = _state([1.0], [0.0], 0)
    a, b = _state([2.0], [0.0], 7), _state([4.0], [0.0], 9)
    new = fedavg(global_state, [(2, a), (2, b)])
    assert new["num_batches_tracked"].dtype == torch.int64
    assert new["num_batches_tracked"].item() == 7
    assert torch.equal(new["weight"], torch.tensor([3.0]))
    new["num_batches_tracked"] += 1  # a copy, not the client's tensor
    assert a["num_batches_tracked"].item() == 7
    assert fedavg(global_state, [(2, b), (2, a)])["num_batches_tracked"].item() == 9


def test_fedavg_single_client_is_its_model_and_inputs_are_untouched():
    global_state = _state([1.0, 1.0], [0.0], 0)
    client = _state([0.25, -3.0], [2.0], 1)
    new = fedavg(global_state, [(10, client)])
    assert torch.equal(new["weight"], client["weight"])
    assert torch.equal(new["bias"], client["bias"])
    assert torch.equal(global_state["weight"], torch.tensor([1.0, 1.0]))
    assert new["weight"] is not client["weight"]


def test_fedavg_client_with_zero_samples_has_no_weight():
    global_state = _state([0.0], [0.0], 0)
    new = fedavg(global_state, [(0, _state([100.0], [100.0], 1)), (5, _state([2.0], [-2.0], 2))])
    assert torch.equal(new["weight"], torch.tensor([2.0]))
    assert torch.equal(new["bias"], torch.tensor([-2.0]))


def test_fedavg_casts_client_tensors_to_the_global_dtype():
    global_state = OrderedDict(w=torch.tensor([0.0], dtype=torch.float32))
    client = OrderedDict(w=torch.tensor([0.5], dtype=torch.float64))
    new = fedavg(global_state, [(1, client)])
    assert new["w"].dtype == torch.float32 and new["w"].item() == 0.5


def test_fedavg_without_clients_or_samples_raises():
    global_state = _state([1.0], [0.0], 0)
    with pytest.raises(ValueError, match="at least one client"):
        fedavg(global_state, [])
    with pytest.raises(ValueError, match="no training samples"):
        fedavg(global_state, [(0, _state([2.0], [0.0], 0)), (0, _state([3.0], [0.0], 0))])


def test_weighted_mean():
    assert weighted_mean([(0.5, 1), (1.0, 3)]) == 0.875
    assert weighted_mean([(0.5, 1), (float("nan"), 10), (1.0, 3)]) == 0.875
    assert weighted_mean([(0.2, 2), (0.9, 0)]) == 0.2  # zero weight is ignored
    assert math.isnan(weighted_mean([(float("nan"), 2)]))
    assert math.isnan(weighted_mean([]))
    assert math.isnan(weighted_mean([(1.0, 0)]))
