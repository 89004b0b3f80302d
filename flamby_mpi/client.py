"""The client rank: FLamby centre k-1 trained with FLamby's semantics inside FedML's ClientTrainer.

What travels to the server each round (one FedML message) is a plain dict:
`{"state_dict": <local model or None>, "report": {...}}`. The report carries the
evaluation of the global model this client received (every
`frequency_of_the_test` rounds and at the end), so test data never moves; at
the end it may carry test predictions and labels for FLamby's Pooled Test.
"""
from __future__ import annotations

import logging
import time
from collections import OrderedDict

import torch

from .plan import RunPlan
from .training import LocalLearner, derived_seed, evaluate, make_loader

log = logging.getLogger("flamby_mpi.client")


class ClientRun:
    """Everything a client rank owns: data, learner, test loader (built before FedML starts)."""

    def __init__(self, plan: RunPlan, rank: int, device: torch.device):
        self.plan = plan
        self.rank = rank
        self.center = rank - 1
        self.device = device
        seed = derived_seed(plan.seed, rank)
        # Dropout and other global-RNG users on this rank; data order has its own generator.
        torch.manual_seed(seed)
        dataset = plan.dataset
        train_set = dataset.center_dataset(self.center, train=True)
        test_set = dataset.center_dataset(self.center, train=False)
        if len(train_set) == 0:
            raise RuntimeError(f"centre {self.center} of {dataset.name} has no training samples")
        workers = plan.config.data_args.num_workers
        train_loader = make_loader(train_set, plan.batch_size, shuffle=True, num_workers=workers,
                                   generator=torch.Generator().manual_seed(seed))
        self.test_loader = make_loader(test_set, plan.test_batch_size, shuffle=False, num_workers=workers)
        self.learner = LocalLearner(dataset.baseline(), plan.optimizer_class, plan.learning_rate,
                                    dataset.baseline_loss(), train_loader, device)
        log.info("rank %d: centre %d of %s, %d train / %d test samples, device %s",
                 rank, self.center, dataset.name, len(train_set), len(test_set), device)

    def round_report(self, round_idx: int) -> dict:
        """Evaluates (when due) the global model just received, then trains unless this is the end."""
        plan = self.plan
        final = round_idx == plan.rounds
        report = {"center": self.center, "round": round_idx, "device": str(self.device),
                  "train_samples": self.learner.num_train_samples}
        frequency = plan.config.validation_args.frequency_of_the_test
        if final or (round_idx > 0 and round_idx % frequency == 0):
            result = evaluate(self.learner.model, self.test_loader, plan.dataset.metric, self.device)
            report["evaluation"] = {"round": round_idx, "metric": result.metric, "num_samples": result.num_samples}
            if final and plan.config.validation_args.pooled_test == "predictions":
                report["predictions"] = {"y_true": result.y_true, "y_pred": result.y_pred}
        if final:
            return {"state_dict": None, "report": report}
        tick = time.perf_counter()
        report["train_loss"] = self.learner.train_steps(plan.num_updates)
        report["train_s"] = time.perf_counter() - tick
        state = OrderedDict((k, v.detach().cpu()) for k, v in self.learner.model.state_dict().items())
        return {"state_dict": state, "report": report}


def make_trainer(client_run: ClientRun, fedml_args):
    """FedML's ClientTrainer around a ClientRun (FedML is imported only here and in the bridge)."""
    from fedml.core.alg_frame.client_trainer import ClientTrainer

    class FlambyClientTrainer(ClientTrainer):
        def __init__(self):
            super().__init__(client_run.learner.model, fedml_args)
            self._payload = None

        def get_model_params(self):
            return self._payload

        def set_model_params(self, model_parameters):
            client_run.learner.load_global_state(model_parameters)

        def update_dataset(self, local_train_dataset, local_test_dataset, local_sample_number):
            pass  # the data of this centre was loaded once, in ClientRun

        def on_before_local_training(self, train_data, device, args):
            pass  # no FedML FHE/DP/attack hooks

        def on_after_local_training(self, train_data, device, args):
            pass

        def train(self, train_data, device, args):
            self._payload = client_run.round_report(int(args.round_idx))

        def test(self, test_data, device, args):
            pass  # evaluation happens in train(), on the model received from the server

    return FlambyClientTrainer()
