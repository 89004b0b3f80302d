"""The server rank (0): the global model, the strategy's aggregation, the history and final metrics.

Each exchange it sends a `GlobalMessage` and aggregates the clients' `ClientReply`s
(flamby_mpi.protocol); the transport (FedML over MPI, or the in-process loop)
carries them.
"""
from __future__ import annotations

import time
from collections import OrderedDict
from typing import Dict, List, Optional

import numpy as np
import torch

from .aggregation import weighted_mean
from .plan import RunPlan
from .progress import Progress
from .protocol import ClientReply, GlobalMessage
from .strategies import make_strategy
from .telemetry import RoundLog, Traffic
from .training import evaluate, make_loader


class ServerRun:
    """The global model, the per-round history and the final metrics."""

    def __init__(self, plan: RunPlan, console, progress: Optional[Progress] = None, sinks=()):
        self.plan = plan
        self._console = console
        self.progress = progress or Progress(plan.rounds, quiet=True)
        self.sinks = list(sinks)  # telemetry (TensorBoard) fed every round and evaluation
        self.round_log = RoundLog(self.sinks)
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
        if self.plan.pooled_test == "flamby":
            self._pooled_test_set = self.plan.dataset.pooled_dataset(train=False)

    def global_state(self) -> "OrderedDict[str, torch.Tensor]":
        return OrderedDict((k, v.detach().clone()) for k, v in self.model.state_dict().items())

    def global_message(self, round_idx: int) -> GlobalMessage:
        """What every client receives for exchange round_idx: the model and strategy extras."""
        return GlobalMessage(round_idx=round_idx, final=round_idx == self.plan.final_round,
                             state=self.global_state(), extras=self.strategy.server_extras(round_idx))

    def console(self, text: str):
        self.progress.end_line()  # a line being redrawn on a terminal ends first
        self._console(text)

    def start_first_round(self):
        self.first_round_at = self._round_started = time.time()
        self.progress.start()

    def aggregate(self, round_idx: int, replies: List[ClientReply],
                  traffic: Optional[Traffic] = None) -> Optional[GlobalMessage]:
        """replies: one per client, in rank order; traffic: the bytes of this exchange as the
        transport sent them. Returns the message for the next exchange (None after the final one)."""
        for reply in replies:
            if reply.round_idx != round_idx:  # a transport bug, never a user's mistake
                raise RuntimeError(f"exchange {round_idx}: centre {reply.center} answered exchange "
                                   f"{reply.round_idx}")
            self.devices[reply.center] = reply.device
        evaluated = self._record_evaluations(round_idx, replies)
        now = time.time()
        final = round_idx == self.plan.final_round
        self.round_log.record(round_idx, replies, traffic, now - (self._round_started or now),
                              training_round=not final)
        if final:
            self._finish(replies, evaluated)
            self.round_log.close()
            return None
        results = {r.center: (r.train_samples, r.state, r.extras) for r in replies if r.trained}
        expected = self.strategy.participants(round_idx)
        if sorted(results) != expected:
            raise RuntimeError(f"round {round_idx}: updates from centres {sorted(results)}, expected {expected}")
        self.model.load_state_dict(self.strategy.aggregate(round_idx, self.global_state(), results))
        self.rounds_completed = round_idx + 1
        now = time.time()
        losses = [r.train_loss for r in replies if r.train_loss is not None]
        who = "" if len(expected) == self.plan.num_clients else f" (centres {', '.join(map(str, expected))})"
        self.progress.round_done(self.rounds_completed, now - (self._round_started or now),
                                 float(np.mean(losses)), who)
        self.last_round_at = self._round_started = now
        return self.global_message(round_idx + 1)

    def _record_evaluations(self, round_idx: int, replies: List[ClientReply]) -> Dict[str, float]:
        """Records this exchange's evaluations; returns client_test_<k> and average (empty if none)."""
        evaluated = sorted((r for r in replies if r.evaluation is not None), key=lambda r: r.center)
        if not evaluated:
            return {}
        row_metrics = {}
        for r in evaluated:
            name = f"client_test_{r.center}"
            row_metrics[name] = r.evaluation.metric
            self.history.append({"round": round_idx, "test": name, "metric": r.evaluation.metric,
                                 "num_samples": r.evaluation.num_samples})
        average = weighted_mean([(r.evaluation.metric, r.evaluation.num_samples) for r in evaluated])
        self.history.append({"round": round_idx, "test": "average", "metric": average,
                             "num_samples": sum(r.evaluation.num_samples for r in evaluated)})
        shown = ", ".join(f"{k}={v:.4f}" for k, v in row_metrics.items())
        self.console(f"evaluation after round {round_idx}: {shown}, average={average:.4f}")
        for sink in self.sinks:
            sink.evaluation(round_idx, {**row_metrics, "average": average})
        return {**row_metrics, "average": average}

    def _finish(self, replies: List[ClientReply], evaluated: Dict[str, float]):
        """evaluated: the final exchange's metrics from _record_evaluations (every client evaluates)."""
        metrics = dict(evaluated)
        metrics["pooled"] = self._pooled_metric(replies)
        if metrics["pooled"] is not None:
            self.history.append({"round": self.plan.final_round, "test": "pooled", "metric": metrics["pooled"],
                                 "num_samples": sum(r.evaluation.num_samples for r in replies)})
            for sink in self.sinks:
                sink.evaluation(self.plan.final_round, {"pooled": metrics["pooled"]})
        self.final_metrics = metrics

    def _pooled_metric(self, replies: List[ClientReply]) -> Optional[float]:
        mode = self.plan.pooled_test
        if mode == "flamby":
            return self._pooled_metric_on_flamby_pooled_set()
        if mode != "predictions":
            return None
        parts = [r.evaluation for r in sorted(replies, key=lambda r: r.center)
                 if r.evaluation.y_true is not None and len(r.evaluation.y_true)]
        if not parts:
            return None
        y_true = np.concatenate([p.y_true for p in parts])
        y_pred = np.concatenate([p.y_pred for p in parts])
        return float(self.plan.dataset.metric(y_true, y_pred))

    def _pooled_metric_on_flamby_pooled_set(self) -> float:
        # Exactly FLamby's benchmark: the model on FedClass(train=False, pooled=True). Some datasets
        # normalise that set with pooled-train statistics, so it differs from concatenated centres.
        plan = self.plan
        pooled = self._pooled_test_set or plan.dataset.pooled_dataset(train=False)
        loader = make_loader(pooled, plan.test_batch_size, shuffle=False, num_workers=plan.num_workers)
        return evaluate(self.model, loader, plan.dataset.metric, torch.device("cpu")).metric
