"""Server-side arithmetic, free of FedML and MPI.

FedAvg as FLamby computes it: the new global model is the old one plus the
train-set-size-weighted mean of the clients' updates (local - global).
"""
from __future__ import annotations

from collections import OrderedDict
from typing import Dict, Mapping, Sequence, Tuple

import torch

StateDict = Mapping[str, torch.Tensor]


def weighted_update(global_state: StateDict, client_states: Sequence[Tuple[int, StateDict]]) -> Dict[str, torch.Tensor]:
    """Train-set-size-weighted mean of (local - global) for every floating entry, as FLamby
    computes it; clients are summed in the given (rank) order."""
    if not client_states:
        raise ValueError("fedavg needs at least one client state")
    total = float(sum(n for n, _ in client_states))
    if total <= 0:
        raise ValueError("fedavg: clients reported no training samples")
    update = {}
    for key, old in global_state.items():
        if torch.is_floating_point(old):
            delta = torch.zeros_like(old)
            for n, state in client_states:
                delta += (state[key].to(old.dtype) - old) * n
            update[key] = delta / total
    return update


def fedavg(global_state: StateDict, client_states: Sequence[Tuple[int, StateDict]]) -> "OrderedDict[str, torch.Tensor]":
    """Weighted FedAvg of client states: the global state plus the weighted mean update.

    Non-floating entries (e.g. BatchNorm's num_batches_tracked) cannot be
    averaged: they are taken from the first client.
    """
    update = weighted_update(global_state, client_states)
    return OrderedDict((key, old + update[key]) if key in update else (key, client_states[0][1][key].clone())
                       for key, old in global_state.items())


def weighted_mean(values: Sequence[Tuple[float, int]]) -> float:
    """Mean of (value, weight) pairs, ignoring NaN values; NaN when nothing is left."""
    kept = [(v, w) for v, w in values if v == v and w > 0]
    weight = sum(w for _, w in kept)
    return sum(v * w for v, w in kept) / weight if weight else float("nan")
