"""Scaffold (Karimireddy et al. 2020, option II) with FLamby's server learning rate.

Client i keeps a control variate c_i, the server keeps c; both start at zero.
Each local step corrects the gradient by (c - c_i). After K steps with learning
rate lr: c_i+ = c_i - c + (x - y) / (K lr). The client sends y and c_i+ - c_i;
the server moves x by server_learning_rate times the weighted mean update and
c by the sum of the clients' control-variate changes divided by N. The server's
c travels to the clients with the global model each round.
"""
import torch

from .base import Strategy, _in_order


class Scaffold(Strategy):
    name = "Scaffold"
    hyperparameters = {"server_learning_rate": 1.0}

    def __init__(self, plan):
        super().__init__(plan)
        self.c = None  # server half
        self.c_i = None  # client half

    # server half
    def server_extras(self, round_idx):
        return None if self.c is None else {"c": {k: v.clone() for k, v in self.c.items()}}

    def aggregate(self, round_idx, global_state, results):
        ordered = _in_order(results)
        keys = list(ordered[0][2]["delta_c"])
        if self.c is None:
            self.c = {k: torch.zeros_like(global_state[k]) for k in keys}
        total = float(sum(n for n, _, _ in ordered))
        lr = float(self.hp["server_learning_rate"])
        new_state = type(global_state)((k, v.clone()) for k, v in global_state.items())
        for key in keys:
            update = torch.zeros_like(global_state[key])
            for n, state, _ in ordered:
                update += (state[key] - global_state[key]) * n
            new_state[key] = global_state[key] + lr * update / total
            change = torch.zeros_like(self.c[key])
            for _, _, extras in ordered:
                change += extras["delta_c"][key]
            self.c[key] = self.c[key] + change / self.num_clients
        return new_state

    def server_state(self):
        return {"c": self.c}

    # client half
    def local_train(self, learner, round_idx, server_extras):
        params = dict(learner.model.named_parameters())
        if self.c_i is None:
            self.c_i = {k: torch.zeros_like(p) for k, p in params.items()}
        c = server_extras["c"] if server_extras else {k: torch.zeros_like(p) for k, p in params.items()}
        start = {k: p.detach().clone() for k, p in params.items()}
        correction = {k: c[k].to(p.device) - self.c_i[k] for k, p in params.items()}

        def correct(model):
            for name, p in model.named_parameters():
                if p.grad is not None:
                    p.grad += correction[name]

        loss = learner.train_steps(self.plan.num_updates, grad_hook=correct)
        steps_lr = self.plan.num_updates * self.plan.learning_rate
        delta_c = {}
        for k, p in params.items():
            new_c_i = self.c_i[k] - c[k].to(p.device) + (start[k] - p.detach()) / steps_lr
            delta_c[k] = (new_c_i - self.c_i[k]).cpu()
            self.c_i[k] = new_c_i
        return loss, {"delta_c": delta_c}
