"""The server rank (0): the global model, the strategy's aggregation, the history and final metrics.

Each exchange it sends a `GlobalMessage` and aggregates the clients' `ClientReply`s
(flamby_mpi.federation.protocol); the transport (FedML over MPI, or the in-process loop)
carries them.
"""
from __future__ import annotations

import time
from collections import OrderedDict
from typing import Dict, List, Optional

import numpy as np
import torch

from .. import __version__
from ..checkpoints import checkpoint, staging
from ..exit.errors import UserError
from ..exit.preemption import signal_name as _signal_name
from ..outputs.progress import Progress
from ..outputs.telemetry import RoundLog, Traffic
from ..plan import RunPlan
from ..strategies import make_strategy
from ..strategies.aggregation import weighted_mean
from .global_rngs import GlobalRngs
from .protocol import ClientReply, GlobalMessage
from .training import derived_seed, evaluate, make_loader


class PeerError(UserError):
    """A client's own error (a full disk where it writes its checkpoint), carried in its reply and
    raised by the server: the job ends with that client's message, exit code and place."""

    def __init__(self, failed: Dict):
        super().__init__(str(failed["message"]), hint=str(failed.get("hint") or ""))
        self.exit_code = int(failed["exit_code"])
        self.at = str(failed["at"])


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
        self.stop_request = None  # this process's preemption.StopRequest, set by the driver
        self.start_round = 0  # the first exchange this process runs: the resumed cut, else 0
        self.resumed_from: Optional[Dict] = None  # {"round", "path"} when resumed
        self.stopped_by: Optional[int] = None  # the signal the job stopped for, once it did
        self.written_cuts: List[int] = []  # complete checkpoints on disk, oldest first
        # Per cut, what it cost the rounds: the server's staging, waiting and manifest plus the slowest
        # client's staging and waiting (a whole write where a part was written synchronously).
        self.checkpoint_seconds: List[float] = []
        self.checkpoint_waits: List[float] = []  # per cut: the longest any rank waited for a write before it
        self._saver = staging.PartSaver(plan.output_dir, 0, plan.checkpoint_staging_mb)
        self._parts: Dict[int, Dict[int, Dict]] = {}  # cut -> rank -> its part, confirmed, manifest not yet written
        # Manifests written while the next round trains: the cuts they complete, once collected.
        self._manifests = staging.BackgroundJob("checkpoint-manifests")
        self._manifests_in_flight: List[int] = []
        self._manifest_wait_s = 0.0  # waited for a manifest job: counted in the next cut's cost
        self._config_record: Optional[dict] = None  # the manifests' config, made at the first one
        # Cuts past keep_checkpoints whose files go: deleted by the manifest thread with its next job
        # (unlinks cost about 0.5 ms a file on ext4, and every rank waits for this one's message).
        self._cuts_to_remove: List[int] = []

    def check_pooled_test_data(self):
        """With pooled_test: flamby the server reads FLamby's pooled test set: fail now, not at the end."""
        if self.plan.pooled_test == "flamby":
            self._pooled_test_set = self.plan.pooled_test_dataset()

    def global_state(self) -> "OrderedDict[str, torch.Tensor]":
        """The global model's own tensors, not a copy: a message carrying them is sent (the MPI
        transport completes its sends before the next message is handled, the in-process one
        copies them) before the next aggregation changes them in place."""
        return self.model.state_dict()

    def global_message(self, round_idx: int, stop: Optional[int] = None) -> GlobalMessage:
        """What every client receives for exchange round_idx: the model and strategy extras."""
        return GlobalMessage(round_idx=round_idx, final=round_idx == self.plan.final_round,
                             state=self.global_state(), extras=self.strategy.server_extras(round_idx),
                             stop=stop)

    def console(self, text: str):
        self.progress.end_line()  # a line being redrawn on a terminal ends first
        self._console(text)

    def begin_telemetry(self):
        """The telemetry sinks start at the round this run starts from (0, or the resumed cut's)."""
        for sink in self.sinks:
            sink.begin(self.start_round)

    def start_first_round(self):
        self.first_round_at = self._round_started = time.time()
        self.progress.start()

    def aggregate(self, round_idx: int, replies: List[ClientReply],
                  traffic: Optional[Traffic] = None) -> Optional[GlobalMessage]:
        """replies: one per client, in rank order, each naming its FLamby centre; traffic: the bytes
        of this exchange as the transport sent them. Returns the message for the next exchange (None
        after the final one)."""
        for reply in replies:
            if reply.round_idx != round_idx:  # a transport bug, never a user's mistake
                raise RuntimeError(f"exchange {round_idx}: centre {reply.center} answered exchange "
                                   f"{reply.round_idx}")
            self.devices[reply.center] = reply.device
        try:
            self._settle_checkpoints(round_idx, replies)
        except BaseException:
            self._saver.drain()  # the job ends: no write of this rank left half done
            self._manifests.drain()
            raise
        if self.stopped_by is not None:  # the stop exchange: every part of the cut is written, it is complete
            self._close_writers()
            self.round_log.close()
            return None
        evaluated = self._record_evaluations(round_idx, replies)
        final = round_idx == self.plan.final_round
        self.round_log.record(round_idx, replies, traffic, training_round=not final)
        if final:
            self._close_writers()
            self._finish(replies, evaluated)
            self.round_log.close()
            return None
        # Keyed by client index (rank - 1), the strategies' name for a client; replies name their centre.
        results = {self.plan.rank_of(r.center) - 1: (r.train_samples, r.state, r.extras)
                   for r in replies if r.trained}
        expected = self.strategy.participants(round_idx)
        if sorted(results) != expected:
            raise RuntimeError(f"round {round_idx}: updates from centres {sorted(results)}, expected {expected}")
        global_state = self.global_state()
        new_state = self.strategy.aggregate(round_idx, global_state, results)
        if new_state is not global_state:
            self.model.load_state_dict(new_state)
        for reply in replies:  # spent: their memory goes back to the transport's receive buffers
            reply.state = None
        self.rounds_completed = round_idx + 1
        now = time.time()
        losses = [r.train_loss for r in replies if r.train_loss is not None]
        who = "" if len(expected) == self.plan.num_clients else \
            f" (centres {', '.join(str(self.plan.centre_of(i + 1)) for i in expected)})"
        round_s = now - (self._round_started or now)
        self.round_log.round_done(round_s)
        self.progress.round_done(self.rounds_completed, round_s, float(np.mean(losses)), who)
        self.last_round_at = self._round_started = now
        cut = self.rounds_completed
        if self.plan.checkpoint_due(cut):  # written while the next round trains
            # Live, not copied: nothing of this state changes before the next aggregation, which
            # collects the write first (_settle_checkpoints).
            self._saver.save(cut, *self.checkpoint_state(), live=True)
            # A part too big to stage was written at once: with the clients' parts already
            # confirmed (theirs too big as well), the cut's manifest is written now too.
            self._complete_cuts(round_idx, wait=False, in_background=True)
        stop = self._stop_asked(replies)
        if stop is not None and cut < self.plan.final_round:
            self.stopped_by = stop  # every client saves this cut (if not yet) and the job ends
            self.console(f"{_signal_name(stop)} received: stopping after round {cut} with a checkpoint")
            return self.global_message(cut, stop=stop)
        return self.global_message(cut)

    def _close_writers(self):
        """The exchanges are over (every cut's writes collected): the checkpoint threads end."""
        self._saver.close()
        self._manifests.close()

    def _stop_asked(self, replies: List[ClientReply]) -> Optional[int]:
        if self.stop_request is not None and self.stop_request.signum is not None:
            return self.stop_request.signum
        return next((r.stop_requested for r in replies if r.stop_requested), None)

    # ---- checkpoints ------------------------------------------------------------------------
    def checkpoint_state(self):
        """(tensors, JSON data): the global model, the strategy's server state, the history so far."""
        strategy_tensors, strategy_data = self.strategy.state()
        tensors = {"model": self.model.state_dict(), "strategy": strategy_tensors, "rng": torch.get_rng_state()}
        data = {"rank": 0, "rounds_completed": self.rounds_completed, "history": self.history,
                "devices": {str(c): d for c, d in self.devices.items()}, "round_log": self.round_log.state(),
                "strategy": strategy_data, "checkpoint_seconds": self.checkpoint_seconds,
                "checkpoint_waits": self.checkpoint_waits}
        return tensors, data

    def restore(self, tensors: dict, data: dict, round_idx: int, path: str):
        if data.get("rank") != 0 or data.get("rounds_completed") != round_idx:
            raise checkpoint.CheckpointError(f"{path}: the server's state is not that of round {round_idx}")
        self.model.load_state_dict(tensors["model"])
        self.strategy.restore(tensors["strategy"], data["strategy"])
        torch.set_rng_state(tensors["rng"])
        self.rounds_completed = self.start_round = round_idx
        self.history = list(data["history"])
        self.devices = {int(c): d for c, d in data["devices"].items()}
        self.round_log.restore(data["round_log"])
        self.checkpoint_seconds = list(data["checkpoint_seconds"])
        self.checkpoint_waits = list(data.get("checkpoint_waits", []))
        self.progress.resume_at(round_idx)
        self.resumed_from = {"round": round_idx, "path": path}

    def _settle_checkpoints(self, round_idx: int, replies: List[ClientReply]):
        """Takes the parts of cuts the clients confirm in this exchange, collects the manifests
        written since the last exchange and the server's own part (waiting for their writes if
        they still run), then has the manifest of every cut whose parts are all confirmed written,
        oldest first, while the next round trains (at the stop exchange and the final one: now).
        At the stop exchange the server's part of the cut is written first if it was not due.
        Raises the first client's failure (one shared disk fills for all: one message), or the
        server's own."""
        failed = next((r.checkpoint_failed for r in replies if r.checkpoint_failed), None)
        if failed is not None:
            raise PeerError(failed)
        self._collect_manifests()
        for reply in replies:
            for part in reply.checkpoints:
                self._parts.setdefault(part["round"], {})[self.plan.rank_of(reply.center)] = part
        stop_cut_unsaved = (round_idx not in self.written_cuts and self._saver.pending != round_idx
                            and 0 not in self._parts.get(round_idx, {}))
        if self.stopped_by is not None and stop_cut_unsaved:  # not due: written now, before its manifest
            self._saver.save(round_idx, *self.checkpoint_state(), synchronous=True)
        last = self.stopped_by is not None or round_idx == self.plan.final_round
        self._complete_cuts(round_idx, wait=True, in_background=not last)

    def _complete_cuts(self, round_idx: int, wait: bool, in_background: bool):
        """Collects the server's own parts written (waiting for the one in flight when wait), then
        writes the manifest of every cut whose parts are all confirmed, oldest first: in the
        background (collected at the next exchange, before the cut counts as complete) or now."""
        for part in self._saver.collect(wait=wait):
            self._parts.setdefault(part["round"], {})[0] = part
        ready = {}
        for cut in sorted(self._parts):
            parts = self._parts[cut]
            if len(parts) == self.plan.world_size:
                ready[cut] = self._parts.pop(cut)
            elif cut <= round_idx and 0 in parts:  # every part of it was due in this exchange's replies
                missing = sorted(self.plan.centre_of(r) for r in range(1, self.plan.world_size) if r not in parts)
                raise RuntimeError(f"checkpoint after round {cut}: centres {missing} did not save their part")
        if not ready:
            self._remove_old_cuts(in_background)
            return
        self._collect_manifests()  # one job at a time (parts written at once can complete two cuts in an exchange)
        for parts in ready.values():  # what each cut cost the rounds: counted now, in the round loop
            own = parts[0]["critical_s"] + self._manifest_wait_s
            self._manifest_wait_s = 0.0
            self.checkpoint_seconds.append(own + max(float(p["critical_s"]) for r, p in parts.items() if r != 0))
            self.checkpoint_waits.append(max(float(p.get("wait_s", 0.0)) for p in parts.values()))
        manifests = [(cut, {rank: part["files"] for rank, part in parts.items()}) for cut, parts in ready.items()]
        if self._config_record is None:  # the run's config does not change: made once, not per cut
            self._config_record = self.plan.config_record()
        config = self._config_record
        if in_background:
            self._manifests_in_flight = list(ready)
            removals, self._cuts_to_remove = self._cuts_to_remove, []
            self._manifests.submit(self._write_manifests, manifests, config, removals)
            return
        for i, manifest in enumerate(manifests, start=-len(manifests)):  # each cut's own entry, the last ones
            tick = time.perf_counter()
            self._write_manifests([manifest], config)
            self.checkpoint_seconds[i] += time.perf_counter() - tick
        self._completed(list(ready))
        self._remove_old_cuts(in_background=False)

    def _write_manifests(self, manifests, config: dict, removals: List[int] = ()):
        """Makes each cut a checkpoint (every part on disk, hashed: the parts were synced before
        they were confirmed), then removes the cuts in removals. Touches no state of the server:
        it may run in a thread of its own."""
        for cut, files in manifests:
            checkpoint.write_manifest(self.plan.output_dir, cut, self.plan.run_id, __version__, config, files)
        self._remove_cuts(removals)

    def _remove_cuts(self, cuts: List[int]):
        """Deletes the server's files of cuts (complete cuts past keep_checkpoints), each one's
        manifest first. Touches no state of the server: it may run in a thread of its own."""
        for old in cuts:
            checkpoint.remove_rank_files(self.plan.output_dir, old, 0, manifest_too=True)

    def _remove_old_cuts(self, in_background: bool):
        """The cuts waiting to be removed, when no manifest job took them: deleted by a job of
        their own while the next round trains, or now (the last exchange, or a job still running:
        it is collected at the next exchange, and the cuts wait for the one after)."""
        if in_background and self._manifests.pending:
            return
        if not in_background:
            self._collect_manifests()  # one job at a time; it may complete cuts, and so free older ones
        if not self._cuts_to_remove:
            return
        removals, self._cuts_to_remove = self._cuts_to_remove, []
        if in_background:  # a job completing no cut: _manifests_in_flight stays empty
            self._manifests.submit(self._remove_cuts, removals)
        else:
            self._remove_cuts(removals)

    def _collect_manifests(self):
        """The manifests written in the background, waited for: their cuts are complete now."""
        if self._manifests.pending:
            _, waited = self._manifests.wait()
            self._manifest_wait_s += waited
            cuts, self._manifests_in_flight = self._manifests_in_flight, []
            self._completed(cuts)

    def _completed(self, cuts: List[int]):
        """cuts have their manifest on disk: the oldest complete ones past keep_checkpoints are to go
        (_remove_old_cuts, or the next manifest job)."""
        self.written_cuts += cuts
        self._cuts_to_remove += self.written_cuts[:-self.plan.keep_checkpoints]
        self.written_cuts = self.written_cuts[-self.plan.keep_checkpoints:]

    def checkpoint_summary(self) -> Dict:
        """results.json's `checkpoints`: what the cuts cost the rounds, and how long ranks waited for writes."""
        seconds, waits = self.checkpoint_seconds, self.checkpoint_waits
        return {"every": self.plan.checkpoint_every, "keep": self.plan.keep_checkpoints, "written": len(seconds),
                "mean_s": round(sum(seconds) / len(seconds), 6) if seconds else None,
                "max_s": round(max(seconds), 6) if seconds else None,
                "wait_s": round(sum(waits), 6), "max_wait_s": round(max(waits), 6) if waits else None,
                "dir": str(checkpoint.checkpoints_dir(self.plan.output_dir))}

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
        # With only some centres listed it is theirs together (plan.pooled_test_dataset).
        plan = self.plan
        pooled = self._pooled_test_set or plan.pooled_test_dataset()
        loader = make_loader(pooled, plan.test_batch_size, shuffle=False, num_workers=plan.num_workers,
                             collate_fn=plan.dataset.collate_fn)
        # Seeded streams: the same pooled metric from the same seed, whatever the launch mode.
        with GlobalRngs.seeded(derived_seed(plan.seed, 0)).swapped_in():
            return evaluate(self.model, loader, plan.dataset.metric, torch.device("cpu"),
                            plan.dataset.loader_metric).metric
