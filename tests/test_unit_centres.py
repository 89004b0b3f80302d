"""data_args.centers: which FLamby centres a run trains, rank k -> the k-th listed (no MPI).

The mapping lives in one place, RunPlan.centre_of; these tests check it, the validation (plan and the
torch-free world size agree), and that the federation's names are FLamby's indices."""
import importlib.util

import pytest
import torch

from flamby_mpi.config import build_config
from flamby_mpi.exit.errors import ConfigError
from flamby_mpi.federation.client import ClientRun
from flamby_mpi.federation.server import ServerRun
from flamby_mpi.plan import make_plan
from flamby_mpi.registry import (
    FLAMBY_DATASET_FACTS,
    centre_problems,
    client_count_problems,
    listed_centres,
)
from flamby_mpi.transport.inprocess import run_exchanges
from flamby_mpi.world_size import world_size_for

SMALL = {"synthetic_num_centers": 4, "synthetic_samples_per_center": 24}


def _config(centers=None, **data):
    data_args = dict(SMALL, **data)
    if centers is not None:
        data_args["centers"] = centers
    return build_config({"data_args": data_args, "train_args": {"comm_round": 2, "num_updates": 2}})


def test_default_is_every_centre_in_flamby_s_order():
    plan = make_plan(_config())
    assert plan.centres == (0, 1, 2, 3)
    assert [plan.centre_of(rank) for rank in range(1, 5)] == [0, 1, 2, 3]
    assert plan.all_centres and plan.world_size == 5
    assert "centres" not in plan.summary()  # a run of all centres shows what it always showed


def test_rank_k_trains_the_k_th_listed_centre():
    plan = make_plan(_config([3, 1]))
    assert plan.centres == (3, 1)
    assert (plan.num_clients, plan.world_size) == (2, 3)
    assert (plan.centre_of(1), plan.centre_of(2)) == (3, 1)
    assert (plan.rank_of(3), plan.rank_of(1)) == (1, 2)
    assert not plan.all_centres
    assert plan.summary()["centres"] == "3,1"
    with pytest.raises(ValueError):
        plan.centre_of(0)  # the server trains no centre
    with pytest.raises(ValueError):
        plan.centre_of(3)


def test_listing_every_centre_in_order_is_the_default_run():
    assert make_plan(_config([0, 1, 2, 3])).all_centres
    assert not make_plan(_config([1, 0, 2, 3])).all_centres  # another rank order: another run


@pytest.mark.parametrize("centers, expected", [
    ([], "the list is empty"),
    ([4], "synthetic has centres 0..3 (FLamby's indices), got 4"),
    ([0, 7, 9], "got 7, 9"),
    ([1, 2, 1], "centre 1 listed more than once"),
])
def test_wrong_lists_are_refused_by_the_plan_and_the_world_size_alike(centers, expected):
    config = _config(centers)
    with pytest.raises(ConfigError, match="data_args.centers") as by_plan:
        make_plan(config)
    with pytest.raises(ConfigError, match="data_args.centers") as by_count:
        world_size_for(config)  # the torch-free path job scripts take
    assert expected in str(by_plan.value)
    assert str(by_plan.value) == str(by_count.value)


@pytest.mark.parametrize("text", ["-1", "[-1]", "[a]", "3", "[1.5]", "[true]", "[[0]]"])
def test_malformed_values_are_config_errors(text):
    with pytest.raises(ConfigError, match="data_args.centers"):
        build_config({}, [f"data_args.centers={text}"])


def test_world_size_counts_the_listed_centres_without_torch_for_flamby_names():
    for name, facts in FLAMBY_DATASET_FACTS.items():
        config = build_config({"data_args": {"dataset": name, "centers": [facts.centres - 1]}})
        assert world_size_for(config) == 2
    config = build_config({"data_args": {"dataset": "fed_heart_disease", "centers": [4]}})
    with pytest.raises(ConfigError, match="fed_heart_disease has centres 0..3"):
        world_size_for(config)


def test_client_counts_are_checked_against_the_listed_centres():
    config = build_config({"data_args": dict(SMALL, centers=[0, 2]), "train_args": {"client_num_in_total": 4}})
    problems = client_count_problems(config, "synthetic", 4)
    assert problems == ["train_args.client_num_in_total: data_args.centers lists 2 of synthetic's centres, "
                        "so this must be 2 (or be left out), got 4"]
    ok = build_config({"data_args": dict(SMALL, centers=[0, 2]), "train_args": {"client_num_in_total": 2,
                                                                                 "client_num_per_round": 2}})
    assert client_count_problems(ok, "synthetic", 4) == []
    with pytest.raises(ConfigError, match="client_num_per_round: at most 2"):
        make_plan(build_config({"data_args": dict(SMALL, centers=[0, 2]),
                                "train_args": {"client_num_per_round": 3}}))


def test_registry_helpers():
    assert centre_problems(None, "x", 3) == []
    assert listed_centres(None, 3) == (0, 1, 2)
    assert listed_centres([2, 0], 3) == (2, 0)
    big = list(range(100_000)) + [5]  # counted once, not item by item: a long list is no hang
    assert centre_problems(big, "x", 200_000) == ["data_args.centers: centre 5 listed more than once; "
                                                  "each centre is one client rank"]


def _run_in_process(plan):
    server = ServerRun(plan, console=lambda text: None)
    clients = [ClientRun(plan, rank, torch.device("cpu")) for rank in range(1, plan.num_clients + 1)]
    run_exchanges(server, clients)
    return server, clients


def test_clients_load_their_listed_centre_and_results_name_flamby_s_indices(tmp_path):
    plan = make_plan(_config([3, 1])).with_run_id("c")
    reference = make_plan(_config()).with_run_id("r")
    server, clients = _run_in_process(plan)
    assert [c.center for c in clients] == [3, 1]
    for client in clients:  # the very samples FLamby's FedClass gives for that centre
        own = plan.dataset.center_dataset(client.center, train=False)
        assert len(client.test_loader.dataset) == len(own)
        assert torch.equal(client.test_loader.dataset.tensors[0], own.tensors[0])
    assert set(server.final_metrics) == {"client_test_1", "client_test_3", "average", "pooled"}
    assert set(server.devices) == {1, 3}
    assert {row["centre"] for row in server.round_log.rows} == {1, 3}
    assert "client_3" in server.round_log.summary()["per_centre"]
    # A centre's data order and local randomness do not depend on which centres run beside it:
    # centre 1's loader is seeded as in the run of all four (where it is rank 2).
    alone = ClientRun(plan, 2, torch.device("cpu"))  # centre 1, rank 2 of [3, 1]: fresh, untrained
    full = ClientRun(reference, 2, torch.device("cpu"))  # centre 1, rank 2 of all four
    other = ClientRun(reference, 4, torch.device("cpu"))  # centre 3: another stream
    draws = [[alone.learner.batches.get_samples()[0] for _ in range(3)] for alone in (alone, full, other)]
    assert all(torch.equal(a, b) for a, b in zip(draws[0], draws[1], strict=True))
    assert not all(torch.equal(a, b) for a, b in zip(draws[1], draws[2], strict=True))


def test_pooled_test_flamby_uses_only_the_listed_centres():
    listed = make_plan(build_config({"data_args": dict(SMALL, centers=[3, 1]),
                                     "validation_args": {"pooled_test": "flamby"}}))
    pooled = listed.pooled_test_dataset()
    assert len(pooled) == sum(len(listed.dataset.center_dataset(c, train=False)) for c in (3, 1))
    every = make_plan(build_config({"data_args": SMALL, "validation_args": {"pooled_test": "flamby"}}))
    assert len(every.pooled_test_dataset()) == len(every.dataset.pooled_dataset(train=False))


def test_strategies_sample_client_indices_and_the_server_names_centres():
    """Sampling 1 of 2 listed centres: the server's progress names the FLamby centre trained."""
    config = build_config({"data_args": dict(SMALL, centers=[3, 1]),
                           "train_args": {"comm_round": 3, "num_updates": 1, "client_num_per_round": 1}})
    plan = make_plan(config).with_run_id("s")
    said = []
    server = ServerRun(plan, console=said.append)
    lines = []
    server.progress.round_done = lambda done, seconds, loss, who: lines.append(who)
    clients = [ClientRun(plan, rank, torch.device("cpu")) for rank in (1, 2)]
    run_exchanges(server, clients)
    assert len(lines) == 3
    for round_idx, who in enumerate(lines):
        (index,) = server.strategy.participants(round_idx)
        assert who == f" (centres {plan.centre_of(index + 1)})"


@pytest.mark.skipif(importlib.util.find_spec("flamby") is None, reason="FLamby is not installed")
def test_a_flamby_run_counts_flamby_s_own_num_clients():
    from flamby.datasets import fed_heart_disease

    plan = make_plan(build_config({"data_args": {"dataset": "fed_heart_disease", "centers": [2, 0]}}))
    assert plan.dataset.num_clients == fed_heart_disease.NUM_CLIENTS
    assert plan.centres == (2, 0)


@pytest.mark.skipif(importlib.util.find_spec("flamby") is None, reason="FLamby is not installed")
def test_the_plan_counts_the_imported_module_s_num_clients_not_the_registry_s(monkeypatch):
    """The registry's copy serves only login nodes without FLamby: a FLamby with another NUM_CLIENTS
    is believed (a wrong -np is then refused by the world-size check with the right number)."""
    from flamby.datasets import fed_heart_disease

    monkeypatch.setattr(fed_heart_disease, "NUM_CLIENTS", 3)
    plan = make_plan(build_config({"data_args": {"dataset": "fed_heart_disease"}}))
    assert plan.centres == (0, 1, 2) and plan.world_size == 4
    with pytest.raises(ConfigError, match="fed_heart_disease has centres 0..2"):
        make_plan(build_config({"data_args": {"dataset": "fed_heart_disease", "centers": [3]}}))
