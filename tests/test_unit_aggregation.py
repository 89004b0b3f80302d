"""Unit tests of flamby_mpi.strategies.aggregation (FedAvg arithmetic)."""
import math
from collections import OrderedDict

import pytest
import torch

from flamby_mpi.strategies.aggregation import fedavg, weighted_mean, weighted_update


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


def _reference_fedavg(global_state, client_states):
    """FedAvg exactly as the first version computed it (zeros, then += (local - global) * n, then
    / total, then global + update, every step a new tensor): the spent, in-place arithmetic must
    give these bits."""
    total = float(sum(n for n, _ in client_states))
    new = OrderedDict()
    for key, old in global_state.items():
        if torch.is_floating_point(old):
            delta = torch.zeros_like(old)
            for n, state in client_states:
                delta += (state[key].to(old.dtype) - old) * n
            new[key] = old + delta / total
        else:
            new[key] = client_states[0][1][key].clone()
    return new


def _awkward(generator, shape, dtype):
    """Random values with the cases where float arithmetic is easiest to get subtly wrong:
    signed zeros, infinities, NaN, subnormals, huge and tiny magnitudes."""
    values = torch.randn(shape, generator=generator, dtype=torch.float64)
    values *= torch.pow(10.0, torch.randint(-30, 30, shape, generator=generator).double())
    special = torch.tensor([0.0, -0.0, float("inf"), float("-inf"), float("nan"), 1e-40, -1e-40, 1e-310])
    mask = torch.rand(shape, generator=generator) < 0.2
    picks = special[torch.randint(0, len(special), shape, generator=generator)]
    return torch.where(mask, picks, values).to(dtype)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.float16, torch.bfloat16])
@pytest.mark.parametrize("seed", range(6))
def test_in_place_fedavg_gives_the_bits_of_the_original_formula(dtype, seed):
    generator = torch.Generator().manual_seed(seed)
    shapes = {"weight": (7, 13), "bias": (13,), "scalar": ()}
    global_state = OrderedDict((k, _awkward(generator, s, dtype)) for k, s in shapes.items())
    global_state["steps"] = torch.tensor(3)
    clients = []
    for k in range(1 + seed % 4):
        state = OrderedDict((key, _awkward(generator, s, dtype)) for key, s in shapes.items())
        state["steps"] = torch.tensor(10 + k)
        clients.append((int(torch.randint(1, 10_000, (1,), generator=generator)), state))
    # A client with a zero weight, and one whose entry equals the global one, also count.
    clients.append((0, OrderedDict((k, v.clone()) for k, v in global_state.items())))
    expected = _reference_fedavg(global_state, clients)

    kept = fedavg(global_state, clients)  # not in place: nothing given may change
    model = OrderedDict((k, v.clone()) for k, v in global_state.items())
    spent = fedavg(model, [(n, OrderedDict((k, v.clone()) for k, v in s.items())) for n, s in clients], in_place=True)
    assert spent is model
    for key in expected:
        want = expected[key].view(torch.int16 if expected[key].element_size() == 2 else
                                  torch.int32 if expected[key].element_size() == 4 else torch.int64)
        for got in (kept[key], spent[key]):
            assert got.dtype == expected[key].dtype and got.shape == expected[key].shape
            assert torch.equal(got.view(want.dtype), want), f"{key}: not the same bits"  # -0.0, NaN payloads


def test_fedavg_not_in_place_leaves_its_inputs_alone():
    global_state = _state([[1.0, 2.0]], [0.5], 0)
    a, b = _state([[3.0, -0.0]], [0.5], 7), _state([[5.0, 6.0]], [1.5], 9)
    before = [OrderedDict((k, v.clone()) for k, v in s.items()) for s in (global_state, a, b)]
    fedavg(global_state, [(1, a), (3, b)])
    for given, copy in zip((global_state, a, b), before, strict=True):
        assert all(torch.equal(given[k], copy[k]) for k in copy)


def test_weighted_update_spent_keeps_the_sign_of_a_zero_sum():
    # local -0.0 against global +0.0: every term is -0.0, and the sum from zeros is +0.0.
    global_state = OrderedDict(w=torch.tensor([0.0, 1.0]))
    clients = [(2, OrderedDict(w=torch.tensor([-0.0, 3.0]))), (1, OrderedDict(w=torch.tensor([-0.0, 1.0])))]
    update = weighted_update(global_state, clients, spend_client_states=True)
    assert torch.equal(update["w"].view(torch.int32), torch.tensor([0.0, 4.0 / 3.0]).view(torch.int32))
