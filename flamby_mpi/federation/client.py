"""A client rank k: the k-th centre the plan lists (`plan.centre_of(k)`, FLamby's centre k-1 by
default) trained with FLamby's semantics.

Each exchange it receives a `GlobalMessage` and answers with a `ClientReply`
(flamby_mpi.federation.protocol): the evaluation of the global model it received, when due
(so test data never moves), then its local update unless this is the final,
evaluation-only exchange or the strategy leaves this centre out of the round.
"""
from __future__ import annotations

import logging
import socket
import time
from collections import OrderedDict
from typing import List, Optional

import torch

from ..checkpoints import checkpoint, staging
from ..exit.errors import UserError
from ..exit.failures import where
from ..plan import RunPlan
from ..strategies import make_strategy
from .global_rngs import GlobalRngs, seed_all
from .protocol import ClientReply, GlobalMessage
from .training import LocalLearner, PrivacySettings, derived_seed, evaluate, make_loader

log = logging.getLogger("flamby_mpi.client")


class ClientRun:
    """Everything a client rank owns: data, learner, strategy half, test loader, RNG state."""

    def __init__(self, plan: RunPlan, rank: int, device: torch.device):
        self.plan = plan
        self.rank = rank
        self.center = plan.centre_of(rank)  # FLamby's index: what its data and its results are named by
        # The strategies' name for this client (which clients train in a round, in what order they
        # are aggregated): its place among the listed centres.
        self.client_index = rank - 1
        self.device = device
        self.strategy = make_strategy(plan)
        self._message: GlobalMessage = None
        self._replied_at: Optional[float] = None
        self._waited: Optional[float] = None
        if plan.dataset.needs_cuda and device.type != "cuda":  # using_gpu, but no GPU on this host
            raise UserError(f"rank {rank} has no GPU: {plan.dataset.needs_cuda}",
                            hint="run on nodes with a GPU visible to every client rank (nvidia-smi)")
        # Seeded by the centre (as rank centre + 1 is when every centre runs), so that a centre draws
        # the same data order and local randomness whichever centres are listed with it.
        seed = derived_seed(plan.seed, self.center + 1)
        # This centre's own global-RNG streams (dropout, FLamby's augmentations and crops): seeded
        # here, and swapped in around all of this client's work (global_rngs.py), so that clients
        # sharing one process (the in-process backend) compute exactly what separate processes compute.
        seed_all(seed)
        dataset = plan.dataset
        train_set = dataset.center_dataset(self.center, train=True)
        test_set = dataset.center_dataset(self.center, train=False)
        if len(train_set) == 0:
            raise RuntimeError(f"centre {self.center} of {dataset.name} has no training samples")
        train_loader = make_loader(train_set, plan.batch_size, shuffle=True, num_workers=plan.num_workers,
                                   generator=torch.Generator().manual_seed(seed), collate_fn=dataset.collate_fn,
                                   role=f"centre {self.center}'s training data")
        self.test_loader = make_loader(test_set, plan.test_batch_size, shuffle=False,
                                       num_workers=plan.num_workers, collate_fn=dataset.collate_fn,
                                       role=f"centre {self.center}'s test data")
        privacy = None
        if plan.privacy is not None:
            privacy = PrivacySettings(plan.privacy.target_epsilon, plan.privacy.target_delta,
                                      plan.privacy.max_grad_norm, epochs=plan.rounds, seed=seed)
        self.learner = LocalLearner(dataset.baseline(), plan.optimizer_class, plan.learning_rate,
                                    dataset.baseline_loss(), train_loader, device, privacy,
                                    optimizer_kwargs=plan.optimizer_kwargs())
        self._rngs = GlobalRngs()
        self.stop_request = None  # this process's preemption.StopRequest, set by the driver
        self.start_round = 0  # the first exchange this process runs: the resumed cut, else 0
        self.stopped_by: Optional[int] = None  # the signal of a stop message, once one came
        self.written_cuts: List[int] = []  # complete checkpoints holding this rank's files, oldest first
        self._confirmed: List[int] = []  # cuts whose parts its replies confirmed, not yet known complete
        self._saver = staging.PartSaver(plan.output_dir, rank, plan.checkpoint_staging_mb)
        log.info("rank %d: centre %d of %s, %d train / %d test samples, device %s",
                 rank, self.center, dataset.name, len(train_set), len(test_set), device)

    def receive(self, message: GlobalMessage):
        """The server's message: the global model, plus strategy extras (Scaffold's c)."""
        if self._replied_at is not None:
            self._waited = time.perf_counter() - self._replied_at
        # The server has the manifest of cut c written while round c + 1 trains and collects it
        # before it sends message c + 2: only then is c complete, and older cuts may go.
        self.written_cuts += [c for c in self._confirmed if c < message.round_idx - 1]
        self._confirmed = [c for c in self._confirmed if c >= message.round_idx - 1]
        self.strategy.receive(self.learner, message.state)
        # Loaded into the learner: the received copy is let go now, so that its memory goes back to
        # the transport's receive buffers for the next message instead of a new one being allocated.
        message.state = None
        self._message = message

    def reply(self) -> ClientReply:
        """Evaluates (when due) the global model just received, then trains unless this is the end;
        confirms the parts of checkpoints written meanwhile, and stages this rank's part of the cut
        when one is due (written while the next round trains) or writes it at once when the job is stopping."""
        message = self._message
        if message.stop:
            self.stopped_by = message.stop
            reply = ClientReply(center=self.center, round_idx=message.round_idx, device=str(self.device),
                                train_samples=self.learner.num_train_samples, wait_s=self._waited)
            cut = message.round_idx
        else:
            with self._rngs.swapped_in():
                reply = self._reply(message)
            cut = message.round_idx + 1
        due = (message.stop or self.plan.checkpoint_due(cut)) and cut not in self._cuts_saved()
        # The server keeps keep_checkpoints manifests; until the cuts confirmed now are complete,
        # the newest complete one must stay, whatever keep_checkpoints is. The older ones go in the
        # writer's thread once this cut's part is written (off the reply's path), else now.
        old_cuts = self._take_prunable(keep=max(1, self.plan.keep_checkpoints - 1))
        try:
            parts = self._saver.collect()  # the part written while this round trained, waited for
            if due:  # a stop has no later reply to confirm the part in: it is written now
                self.save_checkpoint(cut, synchronous=bool(message.stop), after=self._remover(old_cuts))
                old_cuts = []
            reply.checkpoints = parts + self._saver.collect(wait=False)  # a part written synchronously
        except UserError as error:  # told to the server, which ends the job with one message
            self._saver.drain()
            reply.checkpoints = []
            reply.checkpoint_failed = {"message": error.args[0], "hint": error.hint,
                                       "exit_code": error.exit_code, "at": where(self.rank, socket.gethostname())}
        self._confirmed += [part["round"] for part in reply.checkpoints]
        self._remover(old_cuts)()
        if self.stop_request is not None:
            reply.stop_requested = self.stop_request.signum
        self._replied_at = time.perf_counter()
        return reply

    def finish_checkpoints(self):
        """The job's exchanges are over (every rank past them): the cuts confirmed are complete,
        and as many are kept as the server keeps."""
        self._saver.drain()
        self.written_cuts += self._confirmed
        self._confirmed = []
        self._prune(keep=self.plan.keep_checkpoints)

    # ---- checkpoints ------------------------------------------------------------------------
    def checkpoint_state(self):
        """(tensors, JSON data): everything this client carries from one round to the next."""
        learner_tensors, learner_data = self.learner.state()
        strategy_tensors, strategy_data = self.strategy.state()
        rng_tensors, rng_data = self._rngs.state()
        tensors = {"learner": learner_tensors, "strategy": strategy_tensors, "rngs": rng_tensors}
        return tensors, {"rank": self.rank, "learner": learner_data, "strategy": strategy_data, "rngs": rng_data}

    def restore(self, tensors: dict, data: dict):
        if data.get("rank") != self.rank:
            raise checkpoint.CheckpointError(f"the state read for rank {self.rank} is rank {data.get('rank')}'s")
        self.learner.restore(tensors["learner"], data["learner"])
        self.strategy.restore(tensors["strategy"], data["strategy"])
        self._rngs.restore(tensors["rngs"], data["rngs"])

    def save_checkpoint(self, cut: int, synchronous: bool = False, after=None):
        """Stages this rank's part of the cut after `cut` rounds and writes it in the background
        (synchronous: now), then runs after; the write before it, if still running, is waited for first."""
        self._saver.save(cut, *self.checkpoint_state(), synchronous=synchronous, after=after)

    def _cuts_saved(self) -> List[int]:
        pending = self._saver.pending
        return self.written_cuts + self._confirmed + ([pending] if pending is not None else [])

    def _prune(self, keep: int):
        """Deletes this rank's files of all but the newest `keep` complete cuts (those confirmed
        or being written stay)."""
        self._remover(self._take_prunable(keep))()

    def _take_prunable(self, keep: int) -> List[int]:
        """The complete cuts past the newest `keep`, no longer counted as this rank's: to be deleted."""
        old, self.written_cuts = self.written_cuts[:-keep], self.written_cuts[-keep:]
        return old

    def _remover(self, cuts: List[int]):
        """A function deleting this rank's files of cuts (in the writer's thread or here)."""
        output_dir, rank = self.plan.output_dir, self.rank

        def remove():
            for old in cuts:
                checkpoint.remove_rank_files(output_dir, old, rank)
        return remove

    def _reply(self, message: GlobalMessage) -> ClientReply:
        plan, round_idx = self.plan, message.round_idx
        reply = ClientReply(center=self.center, round_idx=round_idx, device=str(self.device),
                            train_samples=self.learner.num_train_samples, wait_s=self._waited)
        if plan.evaluates(round_idx):
            model = self.strategy.model_for_evaluation(self.learner, message.final)
            evaluation = evaluate(model, self.test_loader, plan.dataset.metric, self.device,
                                  plan.dataset.loader_metric)
            pooled_by_predictions = message.final and plan.pooled_test == "predictions"
            reply.evaluation = evaluation if pooled_by_predictions else evaluation.without_predictions()
        if message.final or self.client_index not in self.strategy.participants(round_idx):
            return reply
        tick = time.perf_counter()
        reply.train_loss, reply.extras = self.strategy.local_train(self.learner, round_idx, message.extras)
        reply.train_s = time.perf_counter() - tick
        # The model's own tensors (a copy only off a GPU): the reply is sent, or copied by the
        # in-process transport, before this client trains again.
        reply.state = OrderedDict((k, v.detach().cpu()) for k, v in self.learner.state_dict().items())
        return reply
