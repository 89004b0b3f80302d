"""FedAdam, FedYogi, FedAdagrad: an adaptive optimizer on the server, fed the averaged update.

Reddi et al., Adaptive Federated Optimization (2021), as in FLamby: m and v start
at zero, m = b1 m + (1 - b1) d, v per variant, global += lr * m / (sqrt(v) + tau).
"""
import torch

from .base import Strategy, weighted_delta


class _FedOpt(Strategy):
    # server_learning_rate, beta1, beta2, tau: defaults in flamby_mpi.registry, per subclass name.

    def __init__(self, plan):
        super().__init__(plan)
        self.m = None
        self.v = None

    def _second_moment(self, v, d2):
        raise NotImplementedError

    def state(self):
        return ({} if self.m is None else {"m": self.m, "v": self.v}), {}

    def restore(self, tensors, data):
        self.m, self.v = tensors.get("m"), tensors.get("v")

    def aggregate(self, round_idx, global_state, results):
        delta = weighted_delta(global_state, results)
        lr, b1, tau = (float(self.hp[k]) for k in ("server_learning_rate", "beta1", "tau"))
        if self.m is None:
            self.m = {k: torch.zeros_like(d) for k, d in delta.items()}
            self.v = {k: torch.zeros_like(d) for k, d in delta.items()}
        new_state = type(global_state)((k, v.clone()) for k, v in global_state.items())
        for key, d in delta.items():
            self.m[key] = b1 * self.m[key] + (1 - b1) * d
            self.v[key] = self._second_moment(self.v[key], d * d)
            new_state[key] = global_state[key] + lr * self.m[key] / (torch.sqrt(self.v[key]) + tau)
        return new_state


class FedAdam(_FedOpt):
    name = "FedAdam"

    def _second_moment(self, v, d2):
        b2 = float(self.hp["beta2"])
        return b2 * v + (1 - b2) * d2


class FedYogi(_FedOpt):
    name = "FedYogi"

    def _second_moment(self, v, d2):
        b2 = float(self.hp["beta2"])
        return v - (1 - b2) * d2 * torch.sign(v - d2)


class FedAdagrad(_FedOpt):
    name = "FedAdagrad"

    def _second_moment(self, v, d2):
        return v + d2
