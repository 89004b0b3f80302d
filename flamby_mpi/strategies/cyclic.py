"""Cyclic: one centre trains per round, starting from the model the previous one produced.

The order is 0..N-1 repeated with deterministic_cycle, else a new random
permutation of the centres for every cycle, seeded by common_args.random_seed.
"""
import numpy as np

from .base import Strategy


class Cyclic(Strategy):
    name = "Cyclic"
    hyperparameters = {"deterministic_cycle": False}
    allows_client_sampling = False

    def __init__(self, plan):
        super().__init__(plan)
        self._cycles = []
        self._rng = np.random.default_rng(plan.seed)

    def participants(self, round_idx):
        cycle = round_idx // self.num_clients
        while len(self._cycles) <= cycle:
            if self.hp["deterministic_cycle"]:
                self._cycles.append(list(range(self.num_clients)))
            else:
                self._cycles.append([int(c) for c in self._rng.permutation(self.num_clients)])
        return [self._cycles[cycle][round_idx % self.num_clients]]

    def aggregate(self, round_idx, global_state, results):
        (_, state, _), = results.values()  # the one participant's model is passed on
        return type(global_state)((k, v.clone()) for k, v in state.items())
