"""The only module that touches FedML's internals.

We do not call `fedml.init()`: it replaces the root logger, redirects print,
writes ~/.fedml and ./log, and POSTs to FedML's cloud even with
`using_mlops: false`. Instead we build the args namespace FedML's cross-silo
managers read, register it with FedML's MLOps store (otherwise every
`mlops.*` helper calls `fedml.init()` itself to get args, which contacts the
cloud), and start FedML's own cross-silo server and client managers over
FedML's MPI communication manager. Two behaviours are replaced in small
subclasses: the 5-second sleep before the server finishes, and
`MPI.Finalize()` inside `finish()` (we still need MPI afterwards to write
results and to abort the job on errors).
"""
from __future__ import annotations

import json
import warnings
from types import SimpleNamespace
from typing import Callable

def import_fedml():
    """Imports FedML quietly (its import emits dependency warnings that are not ours to fix)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        import fedml  # noqa: F401
        from fedml.cross_silo.client.fedml_client_master_manager import ClientMasterManager  # noqa: F401
        from fedml.cross_silo.server.fedml_server_manager import FedMLServerManager  # noqa: F401
    return fedml


def fedml_args(plan, world, run_id: str, device) -> SimpleNamespace:
    """The attributes FedML's cross-silo server and client read, for this rank."""
    from fedml.constants import FEDML_CROSS_SILO_SCENARIO_HORIZONTAL, FEDML_TRAINING_PLATFORM_CROSS_SILO
    from fedml.core.mlops import MLOpsStore

    n = plan.num_clients
    args = SimpleNamespace(
        training_type=FEDML_TRAINING_PLATFORM_CROSS_SILO,
        scenario=FEDML_CROSS_SILO_SCENARIO_HORIZONTAL,
        backend="MPI",
        using_mlops=False,
        enable_wandb=False,
        run_id=run_id,
        rank=world.rank,
        role="server" if world.is_server else "client",
        worker_num=n,
        client_num_in_total=n,
        client_num_per_round=n,
        # Server: every client rank; client: only itself (FedML's convention).
        client_id_list=json.dumps(list(range(1, n + 1)) if world.is_server else [world.rank]),
        # One extra FedML round at the end carries the final evaluation (no training).
        comm_round=plan.rounds + 1,
        frequency_of_the_test=plan.config.validation_args.frequency_of_the_test,
        test_on_clients="no",  # our trainer evaluates inside train(), see client.py
        dataset=plan.dataset.name,
        federated_optimizer="FedAvg",
        random_seed=plan.seed,
        round_idx=0,
        skip_log_model_net=True,
        enable_fhe=False,
        enable_dp=False,
        enable_attack=False,
        enable_defense=False,
        enable_contribution=False,
        is_mobile=0,
        device=device,
    )
    MLOpsStore.mlops_args = args
    return args


def _stop_receiving(comm_manager):
    """FedML's own stop empties its queues with a method that does not exist; do it right."""
    comm_manager._stop_running = True
    for thread in (comm_manager._server_receive_thread, comm_manager._client_receive_thread):
        if thread is not None:
            thread.stop()
            thread.join(timeout=10)


def receive_thread(manager):
    cm = manager.com_manager
    return cm._server_receive_thread or cm._client_receive_thread


def run_server(args, world, aggregator, on_first_round: Callable[[], None], watchdog) -> None:
    """Runs FedML's cross-silo server on rank 0 until every client has finished."""
    from fedml.cross_silo.server.fedml_aggregator import FedMLAggregator
    from fedml.cross_silo.server.fedml_server_manager import FedMLServerManager

    class ServerManager(FedMLServerManager):
        _started = False

        def send_init_msg(self):
            if not self._started:  # FedML may see all clients online twice
                self._started = True
                on_first_round()
            super().send_init_msg()

        def receive_message(self, msg_type, msg_params):
            watchdog.kick()
            super().receive_message(msg_type, msg_params)

        def process_finished_status(self, client_status, msg_params):
            # FedML's version sleeps 5 s, then calls MPI.Finalize(); we do neither.
            self.client_finished_mapping[str(msg_params.get_sender_id())] = True
            if all(self.client_finished_mapping.get(str(c), False) for c in self.client_id_list_in_this_round):
                self.finish()

        def finish(self):
            watchdog.stop()  # the receive thread is about to end on purpose
            _stop_receiving(self.com_manager)

    n = args.worker_num
    fedml_aggregator = FedMLAggregator(
        None, None, 0, None, None, None, n, args.device, args, aggregator)
    aggregator.set_id(0)
    manager = ServerManager(args, fedml_aggregator, world.comm, world.rank, world.size, "MPI")
    watchdog.watch(receive_thread(manager))
    manager.run()


def run_client(args, world, trainer, center: int, train_samples: int, watchdog) -> None:
    """Runs FedML's cross-silo client on rank k >= 1 (FLamby centre k-1) until the server says done."""
    from fedml.cross_silo.client.fedml_client_master_manager import ClientMasterManager
    from fedml.cross_silo.client.fedml_trainer_dist_adapter import TrainerDistAdapter

    class ClientManager(ClientMasterManager):
        def receive_message(self, msg_type, msg_params):
            watchdog.kick()
            super().receive_message(msg_type, msg_params)

        def finish(self):
            watchdog.stop()  # the receive thread is about to end on purpose
            _stop_receiving(self.com_manager)

    adapter = TrainerDistAdapter(
        args, args.device, world.rank, trainer.model, train_samples,
        {center: train_samples}, {center: None}, {center: None}, trainer)
    manager = ClientManager(args, adapter, world.comm, world.rank, world.size, "MPI")
    watchdog.watch(receive_thread(manager))
    manager.run()


__all__ = ["import_fedml", "fedml_args", "run_server", "run_client"]
