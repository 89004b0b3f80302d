"""`comm_args.backend: inprocess`: the server and every client in one process, no MPI, no FedML.

The same ServerRun and ClientRun objects and the same round protocol as the
MPI path (a global message out, one payload per client back, every client
answering every round), with messages copied as MPI would copy them, so the
final model is bitwise identical to the MPI run's: a debugging mode and a
reference.
"""
from __future__ import annotations

import pickle
from typing import List


def _as_if_sent(obj):
    # MPI pickles every message; doing the same keeps the two paths identical (no aliasing).
    return pickle.loads(pickle.dumps(obj, protocol=pickle.HIGHEST_PROTOCOL))


def run_rounds(server_run, client_runs: List) -> None:
    """Runs the whole federated training: plan.rounds rounds plus the final evaluation round."""
    server_run.start_first_round()
    message = server_run.global_message(0)
    for round_idx in range(server_run.plan.rounds + 1):
        payloads = []
        for client in client_runs:
            client.receive(_as_if_sent(message))
            payload = client.round_report(round_idx)
            payloads.append((client.learner.num_train_samples, _as_if_sent(payload)))
        message = server_run.aggregate(round_idx, payloads)
