"""The server rank (0): FedML's ServerAggregator doing FLamby's FedAvg and collecting reports."""
from __future__ import annotations

import time
from collections import OrderedDict
from typing import Dict, List, Optional

import numpy as np
import torch

from .aggregation import weighted_mean
from .plan import RunPlan
from .strategies import make_strategy
from .training import evaluate, make_loader

class ServerRun:
    """The global model, the per-round history and the final metrics."""

    def __init__(self, plan: RunPlan, console):
        self.plan = plan
        self.console = console
        torch.manual_seed(plan.seed)  # the initial global model depends on the seed only
        self.model = plan.dataset.baseline()
        self.strategy = make_strategy(plan)
        self.history: List[Dict] = []  # one row per evaluated round and test set
        self.final_metrics: Optional[Dict[str, float]] = None
        self.devices: Dict[int, str] = {}
        self.rounds_completed = 0
        self.first_round_at: Optional[float] = None
        self.last_round_at: Optional[float] = None
        self._round_started: Optional[float] = None
        self._pooled_test_set = None

    def check_pooled_test_data(self):
        """With pooled_test: flamby the server reads FLamby's pooled test set: fail now, not at the end."""
        if self.plan.config.validation_args.pooled_test == "flamby":
            self._pooled_test_set = self.plan.dataset.pooled_dataset(train=False)

    def global_state(self) -> "OrderedDict[str, torch.Tensor]":
        return OrderedDict((k, v.detach().clone()) for k, v in self.model.state_dict().items())

    def global_message(self, round_idx: int) -> "OrderedDict":
        """What every client receives for round round_idx: the model and strategy extras.

        An OrderedDict, not a dict: FedML treats a plain dict as one model per client."""
        return OrderedDict(state_dict=self.global_state(), extras=self.strategy.server_extras(round_idx))

    def start_first_round(self):
        self.first_round_at = self._round_started = time.time()

    def aggregate(self, round_idx: int, payloads: List) -> "OrderedDict":
        """payloads: (train samples, client payload) per client, in rank order.

        Returns the message for the next round."""
        reports = [p["report"] for _, p in payloads]
        for report in reports:
            self.devices[report["center"]] = report["device"]
        evaluated = self._record_evaluations(round_idx, reports)
        if round_idx >= self.plan.rounds:  # the evaluation-only round after the last one
            self._finish(reports, evaluated)
            return self.global_message(round_idx + 1)
        results = {p["report"]["center"]: (n, p["state_dict"], p.get("extras"))
                   for n, p in payloads if p["state_dict"] is not None}
        expected = self.strategy.participants(round_idx)
        if sorted(results) != expected:
            raise RuntimeError(f"round {round_idx}: updates from centres {sorted(results)}, expected {expected}")
        self.model.load_state_dict(self.strategy.aggregate(round_idx, self.global_state(), results))
        self.rounds_completed = round_idx + 1
        now = time.time()
        losses = [r["train_loss"] for r in reports if "train_loss" in r]
        who = "" if len(expected) == self.plan.num_clients else f" (centres {', '.join(map(str, expected))})"
        self.console(f"round {self.rounds_completed}/{self.plan.rounds} done in "
                     f"{now - (self._round_started or now):.2f} s{who}, mean train loss {np.mean(losses):.4f}")
        self.last_round_at = self._round_started = now
        return self.global_message(round_idx + 1)

    def _record_evaluations(self, round_idx: int, reports: List[Dict]) -> Dict[str, float]:
        """Records this round's evaluations; returns client_test_<k> and average (empty if none)."""
        evaluated = [r for r in reports if "evaluation" in r]
        if not evaluated:
            return {}
        row_metrics = {}
        for r in sorted(evaluated, key=lambda r: r["center"]):
            e = r["evaluation"]
            name = f"client_test_{r['center']}"
            row_metrics[name] = e["metric"]
            self.history.append({"round": e["round"], "test": name, "metric": e["metric"],
                                 "num_samples": e["num_samples"]})
        average = weighted_mean([(r["evaluation"]["metric"], r["evaluation"]["num_samples"]) for r in evaluated])
        self.history.append({"round": round_idx, "test": "average", "metric": average,
                             "num_samples": sum(r["evaluation"]["num_samples"] for r in evaluated)})
        shown = ", ".join(f"{k}={v:.4f}" for k, v in row_metrics.items())
        self.console(f"evaluation after round {round_idx}: {shown}, average={average:.4f}")
        return {**row_metrics, "average": average}

    def _finish(self, reports: List[Dict], evaluated: Dict[str, float]):
        """evaluated: the final round's metrics from _record_evaluations (every client evaluates)."""
        metrics = dict(evaluated)
        metrics["pooled"] = self._pooled_metric(reports)
        if metrics["pooled"] is not None:
            self.history.append({"round": self.plan.rounds, "test": "pooled", "metric": metrics["pooled"],
                                 "num_samples": sum(r["evaluation"]["num_samples"] for r in reports)})
        self.final_metrics = metrics

    def _pooled_metric(self, reports: List[Dict]) -> Optional[float]:
        mode = self.plan.config.validation_args.pooled_test
        if mode == "flamby":
            return self._pooled_metric_on_flamby_pooled_set()
        if mode != "predictions":
            return None
        ordered = sorted(reports, key=lambda r: r["center"])
        parts = [r["predictions"] for r in ordered if r.get("predictions") and len(r["predictions"]["y_true"])]
        if not parts:
            return None
        y_true = np.concatenate([p["y_true"] for p in parts])
        y_pred = np.concatenate([p["y_pred"] for p in parts])
        return float(self.plan.dataset.metric(y_true, y_pred))

    def _pooled_metric_on_flamby_pooled_set(self) -> float:
        # Exactly FLamby's benchmark: the model on FedClass(train=False, pooled=True). Some datasets
        # normalise that set with pooled-train statistics, so it differs from concatenated centres.
        plan = self.plan
        pooled = self._pooled_test_set or plan.dataset.pooled_dataset(train=False)
        loader = make_loader(pooled, plan.test_batch_size, shuffle=False,
                             num_workers=plan.config.data_args.num_workers)
        return evaluate(self.model, loader, plan.dataset.metric, torch.device("cpu")).metric


def make_aggregator(server_run: ServerRun, fedml_args):
    """FedML's ServerAggregator around a ServerRun (FedML is imported only here and in the bridge)."""
    from fedml.core.alg_frame.server_aggregator import ServerAggregator

    class FlambyServerAggregator(ServerAggregator):
        def get_model_params(self):
            return server_run.global_message(int(fedml_args.round_idx))

        def set_model_params(self, model_parameters):
            server_run.model.load_state_dict(model_parameters["state_dict"])

        def on_before_aggregation(self, raw_client_model_or_grad_list):
            return raw_client_model_or_grad_list, list(range(len(raw_client_model_or_grad_list)))

        def aggregate(self, raw_client_model_or_grad_list):
            return server_run.aggregate(int(fedml_args.round_idx), raw_client_model_or_grad_list)

        def on_after_aggregation(self, aggregated_model_or_grad):
            return aggregated_model_or_grad

        def test(self, test_data, device, args):
            return None  # the server holds no data; clients evaluate

        def test_all(self, train_data_local_dict, test_data_local_dict, device, args=None) -> bool:
            return True

    return FlambyServerAggregator(server_run.model, fedml_args)
