"""`comm_args.backend: inprocess`: the server and every client in one process, no MPI, no FedML.

The same ServerRun and ClientRun objects and the same round protocol as the MPI
path (a GlobalMessage out, one ClientReply per client back, every client
answering every exchange), with messages copied as MPI would copy them (flamby_mpi.transport.wire's format), so the
final model is bitwise identical to the MPI run's: a debugging mode and a
reference.
"""
from __future__ import annotations

import socket
from typing import Callable, List, Tuple

from ..outputs.telemetry import Traffic
from ..runtime import startup
from . import wire


def _as_if_sent(obj) -> Tuple[object, int]:
    """The object as its receiver gets it, and the bytes it took: through the MPI transport's
    wire format (flamby_mpi.transport.wire) without MPI, so the two paths stay identical (no aliasing)."""
    return wire.as_if_sent(obj)


def run_exchanges(server_run, client_runs: List) -> None:
    """Runs the whole federated training: every exchange, the final evaluation-only one included."""
    message = server_run.global_message(server_run.start_round)  # 0, or the round resumed
    while message is not None:
        replies, traffic = [], Traffic()
        for client in client_runs:
            received, traffic.to_centre[client.center] = _as_if_sent(message)
            startup.mark("first_message")  # the clients' first message: only the first call counts
            client.receive(received)
            reply, traffic.from_centre[client.center] = _as_if_sent(client.reply())
            replies.append(reply)
        message = server_run.aggregate(message.round_idx, replies, traffic)


class InProcessTransport:
    """A run in this one process: it plays rank 0 and every client rank."""

    rank = 0
    world_size = 1  # processes in the job

    def __init__(self, plan):
        self.host = socket.gethostname()
        self.local_ranks = list(range(plan.world_size))

    def begin(self, plan, on_expire: Callable[[str], None]):
        startup.mark("imports")  # nothing to wait for (no peer can fall silent), no FedML to import

    def agree(self, value):
        return value

    def allgather(self, value) -> list:
        return [value]

    def device(self, plan, warn):
        import torch

        return torch.device("cpu")

    def exchange(self, plan, server_run, client_runs, on_first_round: Callable[[], None], device):
        on_first_round()
        run_exchanges(server_run, client_runs)

    def stop_watching(self):
        pass

    def finish(self):
        pass

    def abort(self, code: int) -> int:
        return code  # nobody else to end
