"""Server-side arithmetic, free of FedML and MPI.

FedAvg as FLamby computes it: the new global model is the old one plus the
train-set-size-weighted mean of the clients' updates (local - global).
"""
from __future__ import annotations

from collections import OrderedDict
from typing import Dict, Mapping, Sequence, Tuple

import torch

StateDict = Mapping[str, torch.Tensor]


def weighted_update(global_state: StateDict, client_states: Sequence[Tuple[int, StateDict]],
                    spend_client_states: bool = False) -> Dict[str, torch.Tensor]:
    """Train-set-size-weighted mean of (local - global) for every floating entry, as FLamby
    computes it (sum over clients, in the given rank order, of (local - global) * n, divided by
    the total); the client states are left as they are.

    spend_client_states: the client states are the caller's to spend (the copies a server received):
    each one's floating entries are overwritten with its weighted difference, and the mean is built
    in the first client's tensors. No temporary is allocated, which for a large model is most of
    the aggregation's time (a fresh 100 MB tensor pays its page faults) and two copies of memory.
    The arithmetic is the same operations in the same order, so the result is bitwise the same.
    """
    if not client_states:
        raise ValueError("fedavg needs at least one client state")
    total = float(sum(n for n, _ in client_states))
    if total <= 0:
        raise ValueError("fedavg: clients reported no training samples")
    update = {}
    for key, old in global_state.items():
        if not torch.is_floating_point(old):
            continue
        delta = None
        for n, state in client_states:
            local = state[key]
            if (spend_client_states and local.dtype == old.dtype and local.shape == old.shape
                    and local.data_ptr() != old.data_ptr()):
                term = local.sub_(old)
            else:
                term = local.to(old.dtype) - old
            term.mul_(n)
            if delta is None:
                # The sum starts from zero: 0 + term, which turns -0.0 into +0.0, as adding it to
                # zeros would (the formula this replaces allocated those zeros).
                delta = term.add_(0.0)
            else:
                delta.add_(term)
        update[key] = delta.div_(total)
    return update


def fedavg(global_state: StateDict, client_states: Sequence[Tuple[int, StateDict]],
           in_place: bool = False) -> "OrderedDict[str, torch.Tensor]":
    """Weighted FedAvg of client states: the global state plus the weighted mean update.

    Non-floating entries (e.g. BatchNorm's num_batches_tracked) cannot be
    averaged: they are taken from the first client.

    in_place: the global state's tensors (the server model's own) receive the result, and the
    client states are spent (weighted_update); returns global_state itself. Otherwise a new
    state is returned and nothing given is changed.
    """
    update = weighted_update(global_state, client_states, spend_client_states=in_place)
    if not in_place:
        return OrderedDict((key, old + update[key]) if key in update else (key, client_states[0][1][key].clone())
                           for key, old in global_state.items())
    for key, old in global_state.items():
        if key in update:
            old.add_(update[key])
        else:
            old.copy_(client_states[0][1][key])
    return global_state


def weighted_mean(values: Sequence[Tuple[float, int]]) -> float:
    """Mean of (value, weight) pairs, ignoring NaN values; NaN when nothing is left."""
    kept = [(v, w) for v, w in values if v == v and w > 0]
    weight = sum(w for _, w in kept)
    return sum(v * w for v, w in kept) / weight if weight else float("nan")
