"""What a federated strategy is here: a server half and a client half, free of FedML and MPI.

The same strategy object type runs in every process; the server uses the
server half, each client the client half. Which centres train in a round is a
pure function of (seed, round), so clients and server agree without talking.
Every client answers every FedML round (FedML's cross-silo server waits for
all of them); a centre that does not train this round answers with no update.
"""
from __future__ import annotations

from typing import Dict, List, Mapping, Optional, Sequence, Tuple

import numpy as np
import torch

from ..registry import STRATEGY_HYPERPARAMETERS
from .aggregation import fedavg, weighted_update

State = "OrderedDict[str, torch.Tensor]"
# One client's result of a round: (train samples, local state, strategy extras).
ClientResult = Tuple[int, State, Optional[Dict]]


# Strategy name -> class, filled as the modules of this package are imported (strategies/__init__.py).
IMPLEMENTATIONS: Dict[str, type] = {}


class Strategy:
    name = "FedAvg"
    # Strategy-specific train_args keys and their defaults (None: required), read from
    # flamby_mpi.registry by `name` for every class that sets one.
    hyperparameters: Mapping[str, object] = STRATEGY_HYPERPARAMETERS[name]
    allows_client_sampling = True

    def __init_subclass__(cls, **kwargs):
        super().__init_subclass__(**kwargs)
        if "name" in cls.__dict__:  # a strategy of its own, which the registry must know
            if cls.name not in STRATEGY_HYPERPARAMETERS:
                raise TypeError(f"strategy {cls.name!r} ({cls.__module__}) is not in flamby_mpi/registry.py: "
                                "add its name and hyperparameters to STRATEGY_HYPERPARAMETERS")
            cls.hyperparameters = STRATEGY_HYPERPARAMETERS[cls.name]
            IMPLEMENTATIONS[cls.name] = cls

    def __init__(self, plan):
        self.plan = plan
        self.num_clients = plan.num_clients
        self.per_round = plan.clients_per_round
        self.hp = dict(plan.hyperparameters)  # this strategy's, defaults filled in by the plan

    # ---- both sides -----------------------------------------------------------------------
    def participants(self, round_idx: int) -> List[int]:
        """Clients that train in this round, by client index (rank - 1, the place of their centre in
        plan.centres), sorted; seeded by (seed, round) when sampling."""
        if self.per_round >= self.num_clients:
            return list(range(self.num_clients))
        rng = np.random.default_rng([self.plan.seed, round_idx, 0x5A])
        return sorted(int(c) for c in rng.choice(self.num_clients, self.per_round, replace=False))

    # ---- server half ----------------------------------------------------------------------
    def server_extras(self, round_idx: int) -> Optional[Dict]:
        """Sent to every client with the global model (e.g. Scaffold's control variate)."""
        return None

    def aggregate(self, round_idx: int, global_state: State, results: Dict[int, ClientResult]) -> State:
        """results: client index -> (train samples, local state, extras) for this round's participants.
        Returns the new global state.

        global_state holds the server model's own tensors, and the local states are the server's
        received copies, spent once aggregated: a strategy may compute in place in both (FedAvg
        does: a large model then costs no temporaries) and return global_state itself."""
        return fedavg(global_state, [(n, state) for n, state, _ in _in_order(results)], in_place=True)

    # ---- client half ----------------------------------------------------------------------
    def receive(self, learner, state_dict: State) -> None:
        """Takes the model the server sent; the client evaluates it and (usually) trains from it."""
        learner.load_global_state(state_dict)

    def local_train(self, learner, round_idx: int, server_extras: Optional[Dict]) -> Tuple[float, Optional[Dict]]:
        """Trains in place for num_updates steps; returns (mean loss, extras for the server)."""
        return learner.train_steps(self.plan.num_updates), None

    def model_for_evaluation(self, learner, final: bool) -> torch.nn.Module:
        """The model a client evaluates (FedAvgFineTuning fine-tunes a copy at the end)."""
        return learner.net


    # ---- checkpoints (both halves) --------------------------------------------------------
    def state(self) -> Tuple[Dict, Dict]:
        """What this half carries from round to round, as (tensors, JSON-able data), for a
        checkpoint; a strategy that keeps nothing between rounds returns two empty dicts."""
        return {}, {}

    def restore(self, tensors: Dict, data: Dict) -> None:
        """Takes back what state() returned (in a new process, resuming)."""


def _in_order(results: Dict[int, ClientResult]) -> Sequence[ClientResult]:
    return [results[c] for c in sorted(results)]


def weighted_delta(global_state: State, results: Dict[int, ClientResult]) -> Dict[str, torch.Tensor]:
    """Sample-weighted mean of (local - global) over participants, as FLamby computes it; the local
    states are spent (Strategy.aggregate)."""
    return weighted_update(global_state, [(n, state) for n, state, _ in _in_order(results)],
                           spend_client_states=True)
