"""The client rank: FLamby centre k-1 trained with FLamby's semantics inside FedML's ClientTrainer.

What travels to the server each round (one FedML message) is a plain dict:
`{"state_dict": <local model or None>, "report": {...}}`. The report carries the
evaluation of the global model this client received (every
`frequency_of_the_test` rounds and at the end), so test data never moves; at
the end it may carry test predictions and labels for FLamby's Pooled Test.
"""
from __future__ import annotations

import contextlib
import logging
import time
from collections import OrderedDict

import torch

from .plan import RunPlan
from .strategies import make_strategy
from .training import LocalLearner, PrivacySettings, derived_seed, evaluate, make_loader

log = logging.getLogger("flamby_mpi.client")


class ClientRun:
    """Everything a client rank owns: data, learner, strategy half, test loader, RNG state."""

    def __init__(self, plan: RunPlan, rank: int, device: torch.device):
        self.plan = plan
        self.rank = rank
        self.center = rank - 1
        self.device = device
        self.strategy = make_strategy(plan)
        self._server_extras = None
        seed = derived_seed(plan.seed, rank)
        # This centre's own global-RNG stream (dropout, FedML-free code): seeded here, and
        # swapped in around all of this client's work, so that clients sharing one process
        # (the in-process backend) compute exactly what separate processes compute.
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
        train = plan.config.train_args
        privacy = None
        if train.dp_target_epsilon is not None:
            privacy = PrivacySettings(train.dp_target_epsilon, train.dp_target_delta, train.dp_max_grad_norm,
                                      epochs=plan.rounds, seed=seed)
        self.learner = LocalLearner(dataset.baseline(), plan.optimizer_class, plan.learning_rate,
                                    dataset.baseline_loss(), train_loader, device, privacy)
        self._rng_state = torch.get_rng_state()
        log.info("rank %d: centre %d of %s, %d train / %d test samples, device %s",
                 rank, self.center, dataset.name, len(train_set), len(test_set), device)

    @contextlib.contextmanager
    def _own_rng(self):
        outer = torch.get_rng_state()
        torch.set_rng_state(self._rng_state)
        try:
            yield
        finally:
            self._rng_state = torch.get_rng_state()
            torch.set_rng_state(outer)

    def receive(self, message):
        """The server's message: the global model, plus strategy extras (Scaffold's c)."""
        self.strategy.receive(self.learner, message["state_dict"])
        self._server_extras = message.get("extras")

    def round_report(self, round_idx: int) -> dict:
        """Evaluates (when due) the global model just received, then trains unless this is the end."""
        with self._own_rng():
            return self._round_report(round_idx)

    def _round_report(self, round_idx: int) -> dict:
        plan = self.plan
        final = round_idx == plan.rounds
        report = {"center": self.center, "round": round_idx, "device": str(self.device),
                  "train_samples": self.learner.num_train_samples}
        frequency = plan.config.validation_args.frequency_of_the_test
        if final or (round_idx > 0 and round_idx % frequency == 0):
            model = self.strategy.model_for_evaluation(self.learner, final)
            result = evaluate(model, self.test_loader, plan.dataset.metric, self.device)
            report["evaluation"] = {"round": round_idx, "metric": result.metric, "num_samples": result.num_samples}
            if final and plan.config.validation_args.pooled_test == "predictions":
                report["predictions"] = {"y_true": result.y_true, "y_pred": result.y_pred}
        if final or self.center not in self.strategy.participants(round_idx):
            return {"state_dict": None, "extras": None, "report": report}
        tick = time.perf_counter()
        report["train_loss"], extras = self.strategy.local_train(self.learner, round_idx, self._server_extras)
        report["train_s"] = time.perf_counter() - tick
        state = OrderedDict((k, v.detach().cpu().clone()) for k, v in self.learner.state_dict().items())
        return {"state_dict": state, "extras": extras, "report": report}


def make_trainer(client_run: ClientRun, fedml_args):
    """FedML's ClientTrainer around a ClientRun (FedML is imported only here and in the bridge)."""
    from fedml.core.alg_frame.client_trainer import ClientTrainer

    class FlambyClientTrainer(ClientTrainer):
        def __init__(self):
            super().__init__(client_run.learner.net, fedml_args)
            self._payload = None

        def get_model_params(self):
            return self._payload

        def set_model_params(self, model_parameters):
            client_run.receive(model_parameters)

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
