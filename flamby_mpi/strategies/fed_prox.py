"""FedProx: FedAvg plus a proximal term mu/2 * ||w - w_round_start||^2 in each client's loss."""
from .base import Strategy


class FedProx(Strategy):
    name = "FedProx"

    def local_train(self, learner, round_idx, server_extras):
        mu = float(self.hp["mu"])
        anchor = [p.detach().clone() for p in learner.model.parameters()]  # the received global model

        def proximal(model):
            if mu <= 0.0:
                return None
            squared = sum(((p - a) ** 2).sum() for p, a in zip(model.parameters(), anchor, strict=True))
            return mu / 2.0 * squared

        return learner.train_steps(self.plan.num_updates, extra_loss=proximal), None
