"""Cyclic: one centre trains per round; by default it starts from the model the previous one produced.

The order is 0..N-1 repeated with deterministic_cycle, else a new random
permutation of the centres for every cycle, seeded by common_args.random_seed
(the same permutations as FLamby's np.random.default_rng(seed)).

pass_model_on: false reproduces FLamby's own cyclic.py (and so its published
Cyclic numbers): there every centre trains its own copy of the initial model
and no model ever moves between centres; FLamby's benchmark then evaluates
centre 0's copy. Here that copy is the global model, which is what the clients
evaluate, what the pooled test measures and what global_model.pt holds.
"""
from collections import OrderedDict

import numpy as np

from .base import Strategy


def _copy(state):
    return OrderedDict((k, v.detach().clone()) for k, v in state.items())


class Cyclic(Strategy):
    name = "Cyclic"
    allows_client_sampling = False
    # The client whose own model FLamby's benchmark evaluates (models_list[0]): client index 0, the
    # first centre listed (FLamby's centre 0 unless data_args.centers says otherwise).
    EVALUATED_CENTER = 0

    def __init__(self, plan):
        super().__init__(plan)
        self._cycles = []
        self._rng = np.random.default_rng(plan.seed)
        self._own_state = None  # client half, pass_model_on false: this centre's own model

    def state(self):
        tensors = {} if self._own_state is None else {"own_state": self._own_state}
        return tensors, {"cycles": self._cycles, "rng": self._rng.bit_generator.state}

    def restore(self, tensors, data):
        self._cycles = [[int(c) for c in cycle] for cycle in data["cycles"]]
        self._rng.bit_generator.state = data["rng"]
        self._own_state = tensors.get("own_state")

    def participants(self, round_idx):
        cycle = round_idx // self.num_clients
        while len(self._cycles) <= cycle:
            if self.hp["deterministic_cycle"]:
                self._cycles.append(list(range(self.num_clients)))
            else:
                self._cycles.append([int(c) for c in self._rng.permutation(self.num_clients)])
        return [self._cycles[cycle][round_idx % self.num_clients]]

    def aggregate(self, round_idx, global_state, results):
        (center, (_, state, _)), = results.items()
        if self.hp["pass_model_on"] or center == self.EVALUATED_CENTER:
            return state  # the server's received copy: it becomes the global model
        return global_state  # another centre's own model: it stays with that centre

    def receive(self, learner, state_dict):
        learner.load_global_state(state_dict)  # evaluated this round, whatever the mode
        if not self.hp["pass_model_on"] and self._own_state is None:
            self._own_state = _copy(state_dict)  # the first message holds the initial model

    def local_train(self, learner, round_idx, server_extras):
        if self.hp["pass_model_on"]:
            return super().local_train(learner, round_idx, server_extras)
        learner.load_global_state(self._own_state)
        loss = learner.train_steps(self.plan.num_updates)
        self._own_state = _copy(learner.state_dict())
        return loss, None
