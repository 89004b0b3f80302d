"""Each strategy's arithmetic against small hand-computed cases (no MPI)."""
import subprocess
import sys
from collections import OrderedDict
from pathlib import Path

import pytest
import torch

from flamby_mpi.config import build_config
from flamby_mpi.plan import make_plan
from flamby_mpi.strategies import STRATEGIES, make_strategy

REPO = Path(__file__).resolve().parents[1]


def _strategy(name, **train):
    config = build_config({"train_args": {"federated_optimizer": name, "num_updates": 2, "learning_rate": 0.5,
                                          **train}})
    return make_strategy(make_plan(config))


def _state(w, b=0.0):
    return OrderedDict([("linear.weight", torch.tensor([[float(w)]])), ("linear.bias", torch.tensor([float(b)]))])


def test_fedavg_weights_updates_by_train_samples():
    s = _strategy("FedAvg")
    new = s.aggregate(0, _state(1.0), {0: (1, _state(3.0), None), 2: (3, _state(-1.0), None)})
    # 1 + (1*2 + 3*(-2)) / 4 = 0
    assert new["linear.weight"].item() == pytest.approx(0.0)


@pytest.mark.parametrize("name, v_expected", [
    ("FedAdam", (1 - 0.5) * 4.0),        # b2 v + (1-b2) d^2 with v=0, d=2
    ("FedYogi", 0 - (1 - 0.5) * 4.0 * -1.0),  # v - (1-b2) d^2 sign(v - d^2)
    ("FedAdagrad", 4.0),                # v + d^2
])
def test_fedopt_first_round_by_hand(name, v_expected):
    s = _strategy(name, server_learning_rate=0.1, beta1=0.5, beta2=0.5, tau=0.25)
    new = s.aggregate(0, _state(1.0), {0: (2, _state(3.0), None), 1: (2, _state(3.0), None)})
    d = 2.0
    m = 0.5 * d
    expected = 1.0 + 0.1 * m / (v_expected ** 0.5 + 0.25)
    assert new["linear.weight"].item() == pytest.approx(expected, rel=1e-6)
    assert s.m["linear.weight"].item() == pytest.approx(m)
    assert s.v["linear.weight"].item() == pytest.approx(v_expected)


def test_fedadam_moments_persist_across_rounds():
    s = _strategy("FedAdam", server_learning_rate=1.0, beta1=0.5, beta2=0.5, tau=1e-3)  # tau > 0: the config
    s.aggregate(0, _state(0.0), {0: (1, _state(2.0), None)})      # d=2: m=1, v=2
    s.aggregate(1, _state(0.0), {0: (1, _state(0.0), None)})      # d=0: m=0.5, v=1
    assert s.m["linear.weight"].item() == pytest.approx(0.5)
    assert s.v["linear.weight"].item() == pytest.approx(1.0)


def test_cyclic_passes_the_model_on_and_cycles_deterministically():
    s = _strategy("Cyclic", deterministic_cycle=True)
    assert [s.participants(r)[0] for r in range(6)] == [0, 1, 2, 3, 0, 1]
    new = s.aggregate(0, _state(1.0), {0: (10, _state(7.0), None)})
    assert new["linear.weight"].item() == 7.0
    random_order = _strategy("Cyclic")
    first_cycle = [random_order.participants(r)[0] for r in range(4)]
    assert sorted(first_cycle) == [0, 1, 2, 3]
    assert first_cycle == [_strategy("Cyclic").participants(r)[0] for r in range(4)]  # seeded


class _StateLearner:
    """A stand-in LocalLearner holding one number; centre k's training adds 10**k to it."""

    def __init__(self, center):
        self.center, self.w = center, None

    def load_global_state(self, state):
        self.w = state["linear.weight"].item()

    def state_dict(self):
        return _state(self.w)

    def train_steps(self, n, extra_loss=None, grad_hook=None):
        self.w += 10 ** self.center
        return 0.0


def _cyclic_run(rounds, **train):
    """Server and four client halves of Cyclic (deterministic order), as the backends wire them."""
    server = _strategy("Cyclic", deterministic_cycle=True, **train)
    clients = [_strategy("Cyclic", deterministic_cycle=True, **train) for _ in range(4)]
    learners = [_StateLearner(c) for c in range(4)]
    global_state, sent = _state(0.0), []
    for r in range(rounds):
        for client, learner in zip(clients, learners, strict=True):
            client.receive(learner, global_state)
        (center,) = server.participants(r)
        clients[center].local_train(learners[center], r, None)
        sent.append(learners[center].w)
        global_state = server.aggregate(r, global_state, {center: (1, learners[center].state_dict(), None)})
    return global_state["linear.weight"].item(), sent


def test_cyclic_passes_the_model_from_centre_to_centre():
    final, sent = _cyclic_run(8)
    assert sent == [1, 11, 111, 1111, 1112, 1122, 1222, 2222]
    assert final == 2222


def test_cyclic_without_passing_on_is_flambys_own_models_with_centre_0_evaluated():
    final, sent = _cyclic_run(8, pass_model_on=False)
    # Every centre trains its own copy of the initial model, never another centre's.
    assert sent == [1, 10, 100, 1000, 2, 20, 200, 2000]
    assert final == 2  # the global model is centre 0's own model


def test_client_sampling_is_seeded_and_the_same_everywhere():
    a, b = _strategy("FedAvg", client_num_per_round=2), _strategy("FedAvg", client_num_per_round=2)
    rounds = [a.participants(r) for r in range(10)]
    assert rounds == [b.participants(r) for r in range(10)]
    assert all(len(p) == 2 and p == sorted(set(p)) for p in rounds)
    assert len({tuple(p) for p in rounds}) > 1  # not the same pair every round
    assert _strategy("FedAvg").participants(3) == [0, 1, 2, 3]


class _OneParamLearner:
    """A stand-in LocalLearner: w <- w - lr * (grad + correction), loss 0.5 * w^2 (grad = w)."""

    def __init__(self, w):
        self.model = torch.nn.Module()
        self.model.w = torch.nn.Parameter(torch.tensor([float(w)]))

    def train_steps(self, n, extra_loss=None, grad_hook=None):
        for _ in range(n):
            self.model.w.grad = self.model.w.detach().clone()
            if grad_hook is not None:
                grad_hook(self.model)
            with torch.no_grad():
                self.model.w -= 0.5 * self.model.w.grad
        return 0.0


def test_scaffold_corrections_by_hand():
    # FLamby's Scaffold: c_i += (x - y_prev) / (g l K); gradients corrected by -c_i; y = g y + (1 - g) x.
    client = _strategy("Scaffold", server_learning_rate=0.5)  # l = 0.5, K = 2: g l K = 0.5
    learner = _OneParamLearner(4.0)
    # Round 0: x = y_prev = 4, c_i = 0: two plain steps 4 -> 2 -> 1; sent y' = 0.5*1 + 0.5*4 = 2.5.
    client.local_train(learner, 0, None)
    assert learner.model.w.item() == pytest.approx(2.5)
    assert client.c_i["w"].item() == 0.0 and client.previous["w"].item() == pytest.approx(2.5)

    # The server averaged to x = 3 (another client went elsewhere): c_i = 0 + (3 - 2.5) / 0.5 = 1.
    learner.model.w.data = torch.tensor([3.0])
    client.local_train(learner, 1, None)
    assert client.c_i["w"].item() == pytest.approx(1.0)
    # steps with grad w - 1: 3 -> 3 - 0.5*2 = 2 -> 2 - 0.5*1 = 1.5; sent 0.5*1.5 + 0.5*3 = 2.25
    assert learner.model.w.item() == pytest.approx(2.25)
    assert client.previous["w"].item() == pytest.approx(2.25)


def test_scaffold_server_is_a_weighted_average_of_what_clients_send():
    server = _strategy("Scaffold")
    new = server.aggregate(0, _state(1.0), {0: (1, _state(3.0), None), 1: (3, _state(-1.0), None)})
    assert new["linear.weight"].item() == pytest.approx(0.0)


def test_fedprox_adds_the_proximal_term_against_the_round_start():
    s = _strategy("FedProx", mu=2.0)
    seen = []

    class Learner(_OneParamLearner):
        def train_steps(self, n, extra_loss=None, grad_hook=None):
            with torch.no_grad():
                self.model.w += 3.0  # pretend training moved w by 3
            seen.append(extra_loss(self.model).item())
            return 0.0

    s.local_train(Learner(1.0), 0, None)
    assert seen == [pytest.approx(2.0 / 2 * 9.0)]  # mu/2 * (w - w0)^2


def test_a_registry_name_without_a_module_stops_the_import_even_under_python_O():
    code = ("from flamby_mpi import registry\n"
            "registry.STRATEGY_NAMES += ('FedNothing',)\n"
            "import flamby_mpi.strategies\n")
    done = subprocess.run([sys.executable, "-O", "-c", code], cwd=REPO, capture_output=True, text=True,
                          timeout=120)
    assert done.returncode == 1
    assert "ImportError: flamby_mpi/registry.py names strategies no module of flamby_mpi/strategies/ " \
           "implements: FedNothing" in done.stderr


def test_every_strategy_has_a_module_and_flamby_names():
    assert list(STRATEGIES) == ["FedAvg", "FedProx", "FedAdam", "FedYogi", "FedAdagrad", "Scaffold", "Cyclic",
                                "FedAvgFineTuning"]
