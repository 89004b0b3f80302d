"""Scaffold, as FLamby implements it (flamby/strategies/scaffold.py), for faithful numbers.

Each client keeps a correction c_i (start: zero) and its previous local result
y_i (start: the initial model). In a round, with the received global model x,
server learning rate g, client learning rate l and K local steps:
  c_i <- c_i + (x - y_i) / (g l K)        (x - y_i: how far this client drifted
                                            from where the federation went)
  K steps on the loss minus c_i . w        (each gradient is corrected by -c_i)
  y_i <- g y + (1 - g) x                   (sent to the server)
and the server averages the y_i weighted by train-set size. The control
variate is thus derived, on each client, from the global model it receives
every round; FLamby keeps no separate server control variate.
"""
import torch

from .base import Strategy


class Scaffold(Strategy):
    name = "Scaffold"

    def __init__(self, plan):
        super().__init__(plan)
        self.c_i = None  # client half: this centre's correction
        self.previous = None  # client half: this centre's previous result y_i

    def state(self):
        return ({} if self.c_i is None else {"c_i": self.c_i, "previous": self.previous}), {}

    def restore(self, tensors, data):
        self.c_i, self.previous = tensors.get("c_i"), tensors.get("previous")

    def local_train(self, learner, round_idx, server_extras):
        g = float(self.hp["server_learning_rate"])
        params = dict(learner.model.named_parameters())
        x = {k: p.detach().clone() for k, p in params.items()}
        if self.c_i is None:
            # FLamby starts y_i at the initial model, which every client receives in round 0.
            self.c_i = {k: torch.zeros_like(p) for k, p in x.items()}
            self.previous = {k: v.clone() for k, v in x.items()}
        scale = g * self.plan.learning_rate * self.plan.num_updates
        for k in x:
            self.c_i[k] = self.c_i[k] + (x[k] - self.previous[k]) / scale
        correction = self.c_i

        def correct(model):
            for name, p in model.named_parameters():
                if p.grad is not None:
                    p.grad -= correction[name]

        loss = learner.train_steps(self.plan.num_updates, grad_hook=correct)
        with torch.no_grad():
            for k, p in params.items():
                p.copy_(g * p + (1 - g) * x[k])
                self.previous[k] = p.detach().clone()
        return loss, None
