"""FedAvgFineTuning: FedAvg, then each client fine-tunes the final global model for
num_fine_tuning_steps local steps and evaluates its fine-tuned model on its own test set."""
from .base import Strategy


class FedAvgFineTuning(Strategy):
    name = "FedAvgFineTuning"

    def model_for_evaluation(self, learner, final):
        if final:  # training is over: fine-tune this client's copy in place
            learner.train_steps(int(self.hp["num_fine_tuning_steps"]))
        return learner.net
