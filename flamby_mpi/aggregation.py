"""Server-side arithmetic, free of FedML and MPI.

FedAvg as FLamby computes it: the new global model is the old one plus the
train-set-size-weighted mean of the clients' updates (local - global).
"""
from __future__ import annotations

from collections import OrderedDict
from typing import Mapping, Sequence, Tuple

import torch

StateDict = Mapping[str, torch.Tensor]


def fedavg(global_state: StateDict, client_states: Sequence[Tuple[int, StateDict]]) -> "OrderedDict[str, torch.Tensor]":
    """Weighted FedAvg of client states; clients are summed in the given (rank) order.

    Non-floating entries (e.g. BatchNorm's num_batches_tracked) cannot be
    averaged: they are taken from the first client.
    """
    if not client_states:
        raise ValueError("fedavg needs at least one client state")
    total = float(sum(n for n, _ in client_states))
    if total <= 0:
        raise ValueError("fedavg: clients reported no training samples")
    new_state = OrderedDict()
    for key, old in global_state.items():
        if not torch.is_floating_point(old):
            new_state[key] = client_states[0][1][key].clone()
            continue
        delta = torch.zeros_like(old)
        for n, state in client_states:
            delta += (state[key].to(old.dtype) - old) * n
        new_state[key] = old + delta / total
    return new_state


def weighted_mean(values: Sequence[Tuple[float, int]]) -> float:
    """Mean of (value, weight) pairs, ignoring NaN values; NaN when nothing is left."""
    kept = [(v, w) for v, w in values if v == v and w > 0]
    weight = sum(w for _, w in kept)
    return sum(v * w for v, w in kept) / weight if weight else float("nan")
