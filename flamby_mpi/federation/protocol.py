"""The round protocol: what the server sends every client, and what each client answers.

A run is `plan.exchanges` exchanges: in exchange r (0-based) the server sends
every client a `GlobalMessage` for round r, and every client answers with one
`ClientReply`. Rounds 0..plan.rounds-1 train; the last exchange,
`plan.final_round`, only evaluates the final model (`final` is true and no
client trains). Every client answers every exchange, also when it does not
train (client sampling, Cyclic): FedML's cross-silo server waits for all of
them. The transports (FedML over MPI, the in-process loop) carry these objects
unchanged. Checkpoints ride on the same exchanges: a client's reply confirms the parts it has
written (flamby_mpi.checkpoints.staging writes them while the next round trains), and the server
completes a cut once every part is confirmed (flamby_mpi.checkpoints.checkpoint); a stop (SIGTERM,
SIGINT) is asked for in a reply and ordered in the next GlobalMessage.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Dict, List, Optional

from .training import Evaluation

State = "OrderedDict[str, torch.Tensor]"


@dataclass
class GlobalMessage:
    """Server -> every client, for one exchange."""
    round_idx: int
    final: bool  # the evaluation-only exchange after the last training round
    state: State  # the global model
    extras: Optional[Dict] = None  # strategy extras (Scaffold's server control variate)
    # A signal number: the job is stopping (SIGTERM/SIGINT somewhere). Clients neither evaluate
    # nor train; they save the cut after round_idx rounds (unless saved already) and the job ends.
    stop: Optional[int] = None


@dataclass
class ClientReply:
    """One client -> server, for the exchange it was sent."""
    center: int  # FLamby's index of the client's centre (plan.centre_of(rank))
    round_idx: int
    train_samples: int  # the FedAvg weight
    device: str
    state: Optional[State] = None  # the local model after training; None if it did not train
    extras: Optional[Dict] = None  # strategy extras (Scaffold's control-variate delta)
    train_loss: Optional[float] = None
    train_s: Optional[float] = None
    # How long this client waited, after its previous reply, for the message it answers now:
    # the communication time of the previous round as this client saw it (None in exchange 0).
    wait_s: Optional[float] = None
    # The evaluation of the global model received this exchange, when due (plan.evaluates);
    # its predictions travel only in the final exchange with pooled_test: predictions.
    evaluation: Optional[Evaluation] = None
    # Its parts of checkpoints written (and synced) since its previous reply, each {"round": cut,
    # "files": {name: {"sha256", "bytes"}}, "write_s", "wait_s", "critical_s": seconds}: a part is
    # staged as the round ends and written while the next one trains, so it usually travels one
    # exchange later; rank 0 writes a cut's manifest once every rank's part of it is confirmed.
    checkpoints: List[Dict] = field(default_factory=list)
    # The signal this client's process received (SIGTERM/SIGINT), if any: the job stops at the
    # next round boundary.
    stop_requested: Optional[int] = None
    # A part of a checkpoint could not be written (a full disk, a link where a round directory
    # should be): {"message", "hint", "exit_code", "at"}. The server ends the job with it, so that
    # clients failing together on one shared disk make one message, not one each.
    checkpoint_failed: Optional[Dict] = None

    @property
    def trained(self) -> bool:
        return self.state is not None
