"""Unit tests of flamby_mpi.federation.training: FLamby's local-training semantics without MPI."""
import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader, TensorDataset

from flamby_mpi.federation.training import (
    DataLoaderWithMemory,
    LocalLearner,
    derived_seed,
    evaluate,
    make_loader,
)

CPU = torch.device("cpu")


@pytest.fixture(scope="module", autouse=True)
def _warm_optimizers():
    """torch imports torch._dynamo (seconds) on the first optimizer step of a process: pay it once."""
    model = torch.nn.Linear(1, 1)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.0)
    model(torch.zeros(1, 1)).sum().backward()
    optimizer.step()


def _numbers_loader(n=10, batch_size=4):
    return DataLoader(TensorDataset(torch.arange(n)), batch_size=batch_size, shuffle=False)


def test_loader_with_memory_keeps_position_and_wraps():
    memory = DataLoaderWithMemory(_numbers_loader())
    assert len(memory) == 10
    drawn = [memory.get_samples()[0].tolist() for _ in range(2)]
    # A later call goes on where the previous one stopped (as across rounds).
    drawn += [memory.get_samples()[0].tolist() for _ in range(3)]
    assert drawn == [[0, 1, 2, 3], [4, 5, 6, 7], [8, 9], [0, 1, 2, 3], [4, 5, 6, 7]]
    assert memory.batches_drawn == 5


class _CountingDataset(torch.utils.data.Dataset):
    def __init__(self, x, y):
        self.x, self.y, self.reads = x, y, 0

    def __len__(self):
        return len(self.x)

    def __getitem__(self, i):
        self.reads += 1
        return self.x[i], self.y[i]


def _regression_data(n=12, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, 3, generator=g)
    y = x @ torch.tensor([[1.0], [-2.0], [0.5]]) + 0.1
    return _CountingDataset(x, y)


def _learner(optimizer_class=torch.optim.Adam, lr=0.01, batch_size=4, data=None, optimizer_kwargs=None):
    torch.manual_seed(0)
    data = data if data is not None else _regression_data()
    loader = DataLoader(data, batch_size=batch_size, shuffle=False)
    return LocalLearner(torch.nn.Linear(3, 1), optimizer_class, lr, torch.nn.MSELoss(), loader, CPU,
                        optimizer_kwargs=optimizer_kwargs)


def _step_of(optimizer):
    states = list(optimizer.state.values())
    assert states, "the optimizer has no state yet"
    step = states[0]["step"]
    return int(step.item() if torch.is_tensor(step) else step)


def test_learner_keeps_optimizer_and_its_state_across_rounds():
    learner = _learner()
    optimizer = learner.optimizer
    assert learner.optimizer.param_groups[0]["lr"] == 0.01
    learner.train_steps(2)
    assert _step_of(optimizer) == 2
    exp_avg_before = {id(p): s["exp_avg"].clone() for p, s in optimizer.state.items()}

    global_state = {"weight": torch.full((1, 3), 0.25), "bias": torch.tensor([-1.5])}
    learner.load_global_state(global_state)
    # The model has the global parameters, in the very tensors the optimizer updates.
    assert torch.equal(learner.model.weight.detach(), global_state["weight"])
    assert torch.equal(learner.model.bias.detach(), global_state["bias"])
    optimizer_params = [p for group in optimizer.param_groups for p in group["params"]]
    assert [id(p) for p in optimizer_params] == [id(p) for p in learner.model.parameters()]
    assert learner.optimizer is optimizer
    assert _step_of(optimizer) == 2  # loading the global model does not reset Adam
    for p, s in optimizer.state.items():
        assert torch.equal(s["exp_avg"], exp_avg_before[id(p)])

    learner.train_steps(3)
    assert learner.optimizer is optimizer
    assert _step_of(optimizer) == 5
    # Training moved the parameters away from the loaded ones.
    assert not torch.equal(learner.model.weight.detach(), global_state["weight"])


def test_load_global_state_does_not_alias_the_given_tensors():
    learner = _learner(optimizer_class=torch.optim.SGD)
    state = {"weight": torch.zeros(1, 3), "bias": torch.zeros(1)}
    learner.load_global_state(state)
    learner.train_steps(1)
    assert torch.equal(state["weight"], torch.zeros(1, 3))


def test_train_steps_draws_exactly_n_batches():
    data = _regression_data(n=10)
    learner = _learner(optimizer_class=torch.optim.SGD, batch_size=4, data=data)
    assert learner.num_train_samples == 10
    loss = learner.train_steps(3)
    assert learner.batches.batches_drawn == 3
    assert data.reads == 4 + 4 + 2  # the third batch is the short last one
    assert isinstance(loss, float) and loss > 0
    learner.train_steps(2)
    assert learner.batches.batches_drawn == 5
    assert data.reads == 10 + 4 + 4  # wrapped around to the start
    assert learner.train_steps(0) == 0.0
    assert learner.batches.batches_drawn == 5


def test_an_empty_batch_steps_but_is_left_out_of_the_mean_loss():
    """Differential privacy's Poisson sampling draws empty batches now and then: rounds.csv and
    TensorBoard showed a train loss of nan for those rounds."""
    learner = _learner(optimizer_class=torch.optim.SGD, lr=0.1)
    draw, drawn = learner.batches.get_samples, []

    def with_an_empty_one():
        x, y = draw()
        drawn.append(len(y))
        return (x[:0], y[:0]) if len(drawn) == 2 else (x, y)

    learner.batches.get_samples = with_an_empty_one
    loss = learner.train_steps(3)
    assert len(drawn) == 3 and np.isfinite(loss) and loss > 0
    learner.batches.get_samples = lambda: (lambda x, y: (x[:0], y[:0]))(*draw())
    assert np.isnan(learner.train_steps(2))  # no sample at all: no loss, not 0


def test_train_steps_returns_mean_loss_and_trains():
    learner = _learner(optimizer_class=torch.optim.SGD, lr=0.1)
    x, y = learner.batches.loader.dataset.x, learner.batches.loader.dataset.y
    with torch.no_grad():
        before = torch.nn.functional.mse_loss(learner.model(x), y).item()
    learner.train_steps(30)
    with torch.no_grad():
        after = torch.nn.functional.mse_loss(learner.model(x), y).item()
    assert after < before / 2
    assert learner.model.training


def test_sgd_step_matches_hand_computation():
    # One SGD step on one sample, checked by hand: w <- w - lr * dL/dw.
    data = _CountingDataset(torch.tensor([[1.0, 2.0, 3.0]]), torch.tensor([[1.0]]))
    learner = _learner(optimizer_class=torch.optim.SGD, lr=0.1, batch_size=1, data=data)
    learner.load_global_state({"weight": torch.zeros(1, 3), "bias": torch.zeros(1)})
    loss = learner.train_steps(1)
    assert loss == 1.0  # (0 - 1)^2
    # dL/dw = 2 * (pred - y) * x = -2 * x ; dL/db = -2
    assert torch.allclose(learner.model.weight.detach(), torch.tensor([[0.2, 0.4, 0.6]]))
    assert torch.allclose(learner.model.bias.detach(), torch.tensor([0.2]))


def test_weight_decay_adds_its_term_to_the_sgd_step():
    # The same step with weight_decay wd: w <- w - lr * (dL/dw + wd * w).
    data = _CountingDataset(torch.tensor([[1.0, 2.0, 3.0]]), torch.tensor([[1.0]]))
    start = {"weight": torch.tensor([[0.5, -1.0, 0.25]]), "bias": torch.tensor([0.5])}
    after = {}
    for wd in (None, 0.1):
        learner = _learner(optimizer_class=torch.optim.SGD, lr=0.1, batch_size=1, data=data,
                           optimizer_kwargs=None if wd is None else {"weight_decay": wd})
        learner.load_global_state(start)
        learner.train_steps(1)
        after[wd] = {k: v.detach().clone() for k, v in learner.state_dict().items()}
    # pred = 0.5 - 2 + 0.75 + 0.5 = -0.25; dL/dpred = 2 * (-0.25 - 1) = -2.5
    grad_w, grad_b = -2.5 * torch.tensor([[1.0, 2.0, 3.0]]), torch.tensor([-2.5])
    assert torch.allclose(after[None]["weight"], start["weight"] - 0.1 * grad_w)
    assert torch.allclose(after[0.1]["weight"], start["weight"] - 0.1 * (grad_w + 0.1 * start["weight"]))
    assert torch.allclose(after[0.1]["bias"], start["bias"] - 0.1 * (grad_b + 0.1 * start["bias"]))
    assert not torch.equal(after[None]["weight"], after[0.1]["weight"])


def test_without_weight_decay_the_optimizer_keeps_its_own_default():
    # Nothing passed: AdamW keeps its 0.01 and the result is bitwise that of a plain
    # optimizer_class(params, lr=lr); an explicit value (0.0 too) is what the optimizer gets.
    plain = _learner(optimizer_class=torch.optim.AdamW)
    assert plain.optimizer.param_groups[0]["weight_decay"] == 0.01
    assert _learner(optimizer_class=torch.optim.AdamW, optimizer_kwargs={"weight_decay": 0.0}) \
        .optimizer.param_groups[0]["weight_decay"] == 0.0
    plain.train_steps(3)
    torch.manual_seed(0)
    model = torch.nn.Linear(3, 1)
    optimizer = torch.optim.AdamW(model.parameters(), lr=0.01)
    for x, y in DataLoader(_regression_data(), batch_size=4, shuffle=False):
        torch.nn.MSELoss()(model(x), y).backward()
        optimizer.step()
        optimizer.zero_grad()
    for name, value in model.state_dict().items():
        assert torch.equal(plain.state_dict()[name], value)


class _Fixed(torch.nn.Module):
    """Predicts the first feature; has a parameter so that .train()/.eval() mean something."""

    def __init__(self):
        super().__init__()
        self.dummy = torch.nn.Parameter(torch.zeros(1))

    def forward(self, x):
        return x[:, :1]


def _accuracy(y_true, y_pred):
    return float(((y_pred > 0.5) == y_true).mean())


def test_evaluate_metric_samples_and_predictions():
    x = torch.tensor([[0.9], [0.2], [0.7], [0.4], [0.6]])
    y = torch.tensor([[1.0], [0.0], [0.0], [0.0], [1.0]])
    loader = DataLoader(TensorDataset(x, y), batch_size=2, shuffle=False)
    model = _Fixed()
    model.train()
    result = evaluate(model, loader, _accuracy, CPU)
    assert result.num_samples == 5
    assert result.metric == pytest.approx(0.8)
    np.testing.assert_array_equal(result.y_true, y.numpy())
    np.testing.assert_array_equal(result.y_pred, x.numpy())
    assert model.training  # the mode is restored
    model.eval()
    evaluate(model, loader, _accuracy, CPU)
    assert not model.training


def test_evaluate_restores_torch_rng_state():
    x = torch.rand(20, 1)
    y = (x > 0.5).float()
    # A shuffling loader without its own generator draws from torch's global RNG.
    loader = DataLoader(TensorDataset(x, y), batch_size=3, shuffle=True)
    torch.manual_seed(123)
    expected = torch.rand(4)
    torch.manual_seed(123)
    result = evaluate(_Fixed(), loader, _accuracy, CPU)
    assert result.num_samples == 20
    assert result.metric == 1.0
    assert torch.equal(torch.rand(4), expected)


def test_evaluate_empty_loader():
    loader = DataLoader(TensorDataset(torch.zeros(0, 1), torch.zeros(0, 1)), batch_size=2)
    result = evaluate(_Fixed(), loader, _accuracy, CPU)
    assert result.num_samples == 0
    assert np.isnan(result.metric)


def test_derived_seed_is_stable_and_differs_per_rank():
    seeds = [derived_seed(42, rank) for rank in range(17)]
    assert seeds == [derived_seed(42, rank) for rank in range(17)]
    assert len(set(seeds)) == len(seeds)
    assert all(isinstance(s, int) and 0 <= s < 2 ** 32 for s in seeds)
    assert derived_seed(0, 1) != derived_seed(1, 1)
    assert derived_seed(0, 1) != derived_seed(1, 0)  # not a symmetric mix of seed and rank
    # Deterministic across processes: a pure function of (seed, rank), no global RNG involved.
    np.random.seed(7)
    torch.manual_seed(7)
    a = derived_seed(3, 2)
    np.random.seed(8)
    torch.manual_seed(8)
    assert derived_seed(3, 2) == a
    assert a == int(np.random.SeedSequence([3, 2]).generate_state(1)[0])


def test_make_loader_with_generator_is_reproducible():
    data = TensorDataset(torch.arange(10))
    order = []
    for _ in range(2):
        loader = make_loader(data, 3, True, 0, torch.Generator().manual_seed(derived_seed(0, 1)))
        assert loader.batch_size == 3
        order.append(torch.cat([b[0] for b in loader]).tolist())
    assert order[0] == order[1]
    assert sorted(order[0]) == list(range(10))
    assert order[0] != list(range(10))


# ---- the data position survives a checkpoint ---------------------------------------------------

def _shuffled_loader(seed=7):
    return make_loader(TensorDataset(torch.arange(11)), batch_size=3, shuffle=True, num_workers=0,
                       generator=torch.Generator().manual_seed(seed))


class _PoissonSampler(torch.utils.data.Sampler):
    """Like opacus's UniformWithReplacementSampler: each batch drawn as it is asked for."""

    def __init__(self, n, rate, generator):
        self.n, self.rate, self.generator, self.steps = n, rate, generator, int(1 / rate)

    def __len__(self):
        return self.steps

    def __iter__(self):
        for _ in range(self.steps):
            yield (torch.rand(self.n, generator=self.generator) < self.rate).nonzero().reshape(-1).tolist()


class _PoissonLoader(DataLoader):
    """The shape of opacus's DPDataLoader: a sample_rate, a lazily drawing batch sampler."""

    def __init__(self, generator):
        self.sample_rate = 0.25
        super().__init__(TensorDataset(torch.arange(12)), batch_sampler=_PoissonSampler(12, 0.25, generator),
                         generator=generator)


@pytest.mark.parametrize("make", [_shuffled_loader, lambda: _PoissonLoader(torch.Generator().manual_seed(3))],
                         ids=["shuffled", "poisson"])
@pytest.mark.parametrize("drawn_before", [0, 2, 4, 9])
def test_a_restored_data_position_gives_the_same_batches(make, drawn_before):
    original = DataLoaderWithMemory(make())
    for _ in range(drawn_before):
        original.get_samples()
    tensors, data = original.state()
    rng = torch.get_rng_state()
    expected = [original.get_samples()[0].tolist() for _ in range(10)]
    torch.set_rng_state(rng)
    restored = DataLoaderWithMemory(make())
    restored.get_samples()  # a fresh process has drawn something of its own before restoring
    restored.restore(tensors, data)
    assert [restored.get_samples()[0].tolist() for _ in range(10)] == expected
    assert restored.batches_drawn == drawn_before + 10
