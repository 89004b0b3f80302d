"""The only module that touches FedML: the MPI transport of a run (FedMLTransport), FedML's
args, and the adapters that put a ServerRun behind FedML's ServerAggregator and a ClientRun
behind FedML's ClientTrainer.

We do not call `fedml.init()`: it replaces the root logger, redirects print,
writes ~/.fedml and ./log, and POSTs to FedML's cloud even with
`using_mlops: false`. Instead we build the args namespace FedML's cross-silo
managers read, register it with FedML's MLOps store (otherwise every
`mlops.*` helper calls `fedml.init()` itself to get args, which contacts the
cloud), and start FedML's own cross-silo server and client managers over
FedML's MPI communication manager. Three behaviours are replaced in small
subclasses: the 5-second sleep before the server finishes, `MPI.Finalize()`
inside `finish()` (we still need MPI afterwards to write results and to abort
the job on errors), and the communication manager's transport: FedML's Message
objects travel in flamby_mpi.transport.wire's format (tensors as their own memory instead
of pickled, messages over 2 GiB in pieces), received without FedML's sleep
loops, and counted in bytes for the per-round telemetry.
"""
from __future__ import annotations

import json
import logging
import queue
import threading
import time
import traceback
from types import SimpleNamespace
from typing import Callable, Dict, FrozenSet, List, Optional

from ..exit import failures
from ..launch import world as world_collectives
from ..launch.world import World
from ..outputs.telemetry import Traffic
from ..runtime import startup
from .fedml_imports import fedml_version_problem
from .watchdog import Watchdog

log = logging.getLogger("flamby_mpi.transport")


def import_fedml(role: str):
    """Imports the part of FedML that `role` runs (flamby_mpi/transport/fedml_imports.py says what and why)."""
    from .fedml_imports import import_fedml_for

    return import_fedml_for(role)


def contract_problems():
    """What this module relies on inside FedML and the installed FedML no longer provides
    (flamby_mpi/transport/fedml_contract.py; [] when all holds)."""
    from .fedml_contract import contract_problems as problems

    return problems()


def fedml_args(plan, world, device, start_round: int = 0) -> SimpleNamespace:
    """The attributes FedML's cross-silo server and client read, for this rank."""
    from fedml.constants import (
        FEDML_CROSS_SILO_SCENARIO_HORIZONTAL,
        FEDML_TRAINING_PLATFORM_CROSS_SILO,
    )
    from fedml.core.mlops import MLOpsStore

    n = plan.num_clients
    args = SimpleNamespace(
        training_type=FEDML_TRAINING_PLATFORM_CROSS_SILO,
        scenario=FEDML_CROSS_SILO_SCENARIO_HORIZONTAL,
        backend="MPI",
        using_mlops=False,
        enable_wandb=False,
        run_id=plan.run_id,
        rank=world.rank,
        role="server" if world.is_server else "client",
        worker_num=n,
        client_num_in_total=n,
        client_num_per_round=n,
        # Server: every client rank; client: only itself (FedML's convention).
        client_id_list=json.dumps(list(range(1, n + 1)) if world.is_server else [world.rank]),
        # FedML's rounds are our exchanges from the round resumed (else 0) on: the training
        # rounds plus the final evaluation-only one. Our round = FedML's round_idx + start_round.
        comm_round=plan.exchanges - start_round,
        frequency_of_the_test=plan.eval_every,
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


class Meter:
    """Bytes per peer rank as the MPI transport sent and received them, since the last take()."""

    def __init__(self):
        self._lock = threading.Lock()
        self._sent: Dict[int, int] = {}
        self._received: Dict[int, int] = {}

    def sent(self, rank: int, size: int):
        with self._lock:
            self._sent[rank] = self._sent.get(rank, 0) + size

    def received(self, rank: int, size: int):
        with self._lock:
            self._received[rank] = self._received.get(rank, 0) + size

    def take(self, centre_of: Callable[[int], int]) -> Traffic:
        """This exchange's traffic by FLamby centre (centre_of: the plan's rank -> centre), and start
        counting the next one."""
        with self._lock:
            traffic = Traffic(to_centre={centre_of(r): n for r, n in self._sent.items() if r > 0},
                              from_centre={centre_of(r): n for r, n in self._received.items() if r > 0})
            self._sent, self._received = {}, {}
        return traffic


# The receive thread's wait for the next message header: MPICH's blocking probe spins (even with
# MPIR_CVAR_CH4_PROGRESS_THROTTLE and MPIR_CVAR_ENABLE_HEAVY_YIELD), which takes the CPU from ranks
# that train when ranks outnumber cores. So it probes with pauses growing from _FIRST_PAUSE_S to
# _PAUSE_S, and to _LONG_IDLE_PAUSE_S once idle for _LONG_IDLE_S (then a peer is training: a few
# ms of latency are small beside its round). With many ranks the idle ones' wake-ups add up, so
# the long pause starts early (scripts/benchmark.py's scaling section measures it; figures in
# docs/benchmarks/).
# Only the header is waited for this way; a message's buffers follow it at once and are received
# with blocking MPI calls.
# While a client's main thread handles a message (it trains), a message received meanwhile would
# only wait in the queue: the thread does not probe then, but rests until the main thread waits for
# the queue again. Probing during training woke this thread every few ms, each time taking the GIL
# from the training thread. The server keeps receiving while it handles a reply: a client's large
# send (MPI's rendezvous protocol) waits for the receive to be posted, so resting there serialised
# the replies of a big model behind each one's handling.
_FIRST_PAUSE_S, _PAUSE_S = 0.00005, 0.001
_LONG_IDLE_S, _LONG_IDLE_PAUSE_S = 0.05, 0.005
_STOP_CHECK_S = 0.2


def _metered_comm_manager(comm, rank: int, size: int, in_flight_peers: FrozenSet[int]):
    """FedML's MPI communication manager, moving FedML's Message objects with flamby_mpi.transport.wire
    (tensors as their own memory, not pickled) and counting the bytes of every message.

    A send to a rank of in_flight_peers returns with its buffers in flight (wire.SendsInFlight);
    a send to any other rank returns once done. The peers are the ranks on this rank's host: there
    MPI moves a large message through shared memory, the receiver copying it, and the clients
    receive the global model at the same time. Between hosts (TCP) a send moves only while its rank
    is inside MPI: left in flight, moved by the receive thread's probes, the rounds were slower than
    with each send waited for, one client after another (docs/benchmarks/2026-12-07.md). A host
    name shared by two machines (containers) or a job told to use TCP on one host only costs
    speed: the sends are completed all the same before anything they read changes."""
    from fedml.core.distributed.communication.message import Message
    from fedml.core.distributed.communication.mpi.com_manager import MpiCommunicationManager
    from fedml.core.distributed.communication.mpi.mpi_receive_thread import MPIReceiveThread
    from mpi4py import MPI

    from . import wire

    def listed(ranks) -> str:
        return ", ".join(map(str, sorted(ranks))) or "none"

    log.info("rank %d: its sends to the ranks on this host (%s) leave their buffers in flight; to the "
             "ranks on other hosts (%s) they return once done", rank, listed(set(in_flight_peers) - {rank}),
             listed(set(range(size)) - set(in_flight_peers)))

    class MeteredReceiveThread(MPIReceiveThread):
        def __init__(self, meter: Meter, main_waiting: threading.Event, sends: "wire.SendsInFlight", *args):
            super().__init__(*args)
            self.meter = meter
            self.main_waiting = main_waiting  # set while the main thread waits for the queue
            self.sends = sends  # the main thread's sends in flight, which this thread's probes move

        def stop(self):
            super().stop()
            self.main_waiting.set()  # a thread resting until then sees the stop at once

        def _rest_while_main_is_busy(self) -> bool:
            """Waits until the main thread waits for the next message; True when stopped meanwhile."""
            while not self.main_waiting.is_set():
                self.main_waiting.wait(_STOP_CHECK_S)
            return self._stop_event.is_set()

        def run(self):  # FedML's loop, with the wire format, the byte count and a bounded back-off
            status, pool = MPI.Status(), wire.BufferPool()
            try:
                while True:
                    idle_since, pause = time.monotonic(), _FIRST_PAUSE_S
                    while not self.comm.Iprobe(source=MPI.ANY_SOURCE, tag=wire.HEAD_TAG, status=status):
                        if not self.main_waiting.is_set():
                            if self._rest_while_main_is_busy():
                                return
                            idle_since, pause = time.monotonic(), _FIRST_PAUSE_S
                            continue
                        if self._stop_event.wait(pause):
                            return
                        # While the main thread's sends are in flight, these probes move them
                        # along, so the pause stays short until they are done.
                        sending = not self.sends.test()
                        long_idle = not sending and time.monotonic() - idle_since > _LONG_IDLE_S
                        pause = min(pause * 2, _LONG_IDLE_PAUSE_S if long_idle else _PAUSE_S)
                    source = status.Get_source()
                    message, size = wire.receive(self.comm, source, status.Get_count(MPI.BYTE), pool)
                    self.meter.received(source, size)
                    self.q.put(message)
                    # Not held while waiting for the next one: once handled, its buffers are free
                    # for the next message of the same sizes (wire.BufferPool).
                    message = None
            except Exception:
                traceback.print_exc()
                raise  # the watchdog sees this thread die and ends the job

    class MeteredMpiCommManager(MpiCommunicationManager):
        def __init__(self, comm, rank, size):
            self.meter = Meter()
            # Probing is allowed until the message loop runs (FedML's managers start it last).
            self.main_waiting = threading.Event()
            self.main_waiting.set()
            self.sends_in_flight = wire.SendsInFlight()
            super().__init__(comm, rank, size)

        def _start_receiving(self, name: str):
            receive_queue = queue.Queue(0)
            thread = MeteredReceiveThread(self.meter, self.main_waiting, self.sends_in_flight, self.comm, self.rank,
                                          self.size, name, receive_queue)
            thread.start()
            return thread, receive_queue

        def init_server_communication(self):
            self._server_receive_thread, receive_queue = self._start_receiving("ServerReceiveThread")
            return queue.Queue(0), receive_queue

        def init_client_communication(self):
            self._client_receive_thread, receive_queue = self._start_receiving("ClientReceiveThread")
            return queue.Queue(0), receive_queue

        def handle_receive_message(self):
            # FedML's loop polls its queue in a sleep loop on every rank, which with many ranks on
            # few cores takes the CPU the training needs; this one sleeps until a message is queued.
            self._notify_connection_ready()
            try:
                while not self._stop_running:
                    self.main_waiting.set()
                    try:
                        message = self.q_receiver.get(timeout=_STOP_CHECK_S)
                    except queue.Empty:
                        continue
                    if self.rank != 0:
                        self.main_waiting.clear()
                    self.sends_in_flight.complete()  # the handler may change what they read
                    # The handler's sends stay in flight: waiting for them here (MPI's blocking
                    # waits poll) took the CPU the receivers copy with, on every rank of a host;
                    # the 100 MB model's rounds took 1.1-1.4x longer (docs/benchmarks/2026-12-07.md).
                    self.notify(message)
            finally:
                self.main_waiting.set()
            # Not on an error: the job is ending, and a peer gone would leave this wait hanging.
            self.sends_in_flight.complete()

        def send_message(self, msg):
            dest = msg.get(Message.MSG_ARG_KEY_RECEIVER)
            in_flight = self.sends_in_flight if dest in in_flight_peers else None
            self.meter.sent(dest, wire.send(self.comm, msg, dest, in_flight))

    return MeteredMpiCommManager(comm, rank, size)


def run_server(args, world, aggregator, on_first_round: Callable[[], None], watchdog) -> None:
    """Runs FedML's cross-silo server on rank 0 until every client has finished."""
    from fedml.cross_silo.server.fedml_aggregator import FedMLAggregator
    from fedml.cross_silo.server.fedml_server_manager import FedMLServerManager

    class ServerManager(FedMLServerManager):
        _started = False

        def _init_manager(self):
            self.com_manager = _metered_comm_manager(self.comm, self.rank, self.size, world.ranks_on_this_host())
            self.com_manager.add_observer(self)

        def send_init_msg(self):
            # FedML calls this every time it sees all clients online after a status message, and
            # each client reports twice (when its connection is ready, and when the server asks):
            # up to N+1 init messages, each the whole model, to every client, which ignores all
            # but the first. Only the first is sent.
            if self._started:
                return
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
    aggregator.meter = manager.com_manager.meter
    watchdog.watch(receive_thread(manager))
    manager.run()


def run_client(args, world, trainer, client_index: int, train_samples: int, watchdog) -> None:
    """Runs FedML's cross-silo client on rank k >= 1 until the server says done. client_index is
    FedML's name for it (k - 1, what FedML's server sends in its messages), not its FLamby centre."""
    from fedml.cross_silo.client.fedml_client_master_manager import ClientMasterManager
    from fedml.cross_silo.client.fedml_trainer_dist_adapter import TrainerDistAdapter

    class ClientManager(ClientMasterManager):
        def _init_manager(self):
            self.com_manager = _metered_comm_manager(self.comm, self.rank, self.size, world.ranks_on_this_host())
            self.com_manager.add_observer(self)

        def receive_message(self, msg_type, msg_params):
            watchdog.kick()
            super().receive_message(msg_type, msg_params)

        def finish(self):
            watchdog.stop()  # the receive thread is about to end on purpose
            _stop_receiving(self.com_manager)

    adapter = TrainerDistAdapter(
        args, args.device, world.rank, trainer.model, train_samples,
        {client_index: train_samples}, {client_index: None}, {client_index: None}, trainer)
    manager = ClientManager(args, adapter, world.comm, world.rank, world.size, "MPI")
    # A stop message (preemption) is the last this client trains on: FedML's next message,
    # which it sends after every aggregation, then ends the client as after the final round.
    trainer.on_stop = lambda: setattr(manager, "num_rounds", manager.round_idx + 1)
    watchdog.watch(receive_thread(manager))
    manager.run()


# A client's reply travels to FedML's aggregator inside a plain dict: FedML leaves a dict as it is,
# while it walks anything else key by key to move it to a device.
_REPLY = "flamby_mpi.reply"


def make_aggregator(server_run, fedml_args):
    """FedML's ServerAggregator around a ServerRun: FedML sends what get_model_params returns
    (a GlobalMessage) and hands aggregate() the clients' ClientReplys."""
    from fedml.core.alg_frame.server_aggregator import ServerAggregator

    class FlambyServerAggregator(ServerAggregator):
        def get_model_params(self):
            return server_run.global_message(int(fedml_args.round_idx) + server_run.start_round)

        def set_model_params(self, model_parameters):
            pass  # ServerRun.aggregate already holds the aggregated model

        def on_before_aggregation(self, raw_client_model_or_grad_list):
            return raw_client_model_or_grad_list, list(range(len(raw_client_model_or_grad_list)))

        meter: Optional[Meter] = None  # the server's MPI traffic, set once FedML's manager exists

        def aggregate(self, raw_client_model_or_grad_list):
            round_idx = int(fedml_args.round_idx) + server_run.start_round
            replies = [payload[_REPLY] for _, payload in raw_client_model_or_grad_list]
            traffic = self.meter.take(server_run.plan.centre_of) if self.meter is not None else None
            # After the final exchange FedML still sends one model message, which clients ignore.
            return server_run.aggregate(round_idx, replies, traffic) or server_run.global_message(round_idx)

        def on_after_aggregation(self, aggregated_model_or_grad):
            return aggregated_model_or_grad

        def test(self, test_data, device, args):
            return None  # the server holds no data; clients evaluate

        def test_all(self, train_data_local_dict, test_data_local_dict, device, args=None) -> bool:
            return True

    return FlambyServerAggregator(server_run.model, fedml_args)


def make_trainer(client_run, fedml_args):
    """FedML's ClientTrainer around a ClientRun: set_model_params receives the GlobalMessage,
    train() computes the ClientReply that get_model_params hands FedML to send.

    The GlobalMessage is not a plain dict on purpose: FedML's server sends a dict as one model
    per client."""
    from fedml.core.alg_frame.client_trainer import ClientTrainer

    class FlambyClientTrainer(ClientTrainer):
        def __init__(self):
            super().__init__(client_run.learner.net, fedml_args)
            self._reply = None
            self.on_stop: Callable[[], None] = lambda: None  # set by run_client

        def get_model_params(self):
            return {_REPLY: self._reply}

        def set_model_params(self, model_parameters):
            startup.mark("first_message")  # FedML hands over each model it receives; the first counts
            client_run.receive(model_parameters)

        def update_dataset(self, local_train_dataset, local_test_dataset, local_sample_number):
            pass  # the data of this centre was loaded once, in ClientRun

        def on_before_local_training(self, train_data, device, args):
            pass  # no FedML FHE/DP/attack hooks

        def on_after_local_training(self, train_data, device, args):
            pass

        def train(self, train_data, device, args):
            self._reply = client_run.reply()
            if self._reply.round_idx != int(args.round_idx) + client_run.start_round:  # the counts agree
                raise RuntimeError(f"FedML runs round {args.round_idx} (from {client_run.start_round}), the "
                                   f"server sent round {self._reply.round_idx}")
            if client_run.stopped_by is not None:
                self.on_stop()

        def test(self, test_data, device, args):
            pass  # evaluation happens in train(), on the model received from the server

    return FlambyClientTrainer()


class FedMLTransport:
    """A run over MPI: this process plays one rank, FedML's cross-silo managers carry the messages."""

    def __init__(self, world: World):
        # Before anything of the run is written: the bridge is tested with one FedML only. Each rank
        # checks its own (hosts may differ) and ends the whole job, without a collective that a
        # rank already gone would leave waiting.
        problem = fedml_version_problem()
        if problem:
            failures.fail(problem, failures.EXIT_USER_ERROR, failures.where(world.rank, world.host),
                          end=world.abort)
        self.world = world
        self.rank, self.host, self.world_size = world.rank, world.host, world.size
        self.local_ranks: List[int] = [world.rank]
        self._watchdog: Optional[Watchdog] = None

    def begin(self, plan, on_expire: Callable[[str], None]):
        """From here on, a rank that hears nothing for round_timeout_s ends the job."""
        self._watchdog = Watchdog(plan.round_timeout_s, on_expire).start()
        import_fedml(self._role)  # before the data: this rank's imports are then done
        startup.mark("imports")

    def agree(self, value):
        return world_collectives.bcast(self.world.comm, value, root=0)

    def allgather(self, value) -> list:
        return world_collectives.allgather(self.world.comm, value)

    def device(self, plan, warn):
        from ..runtime.devices import pick_device

        return pick_device(plan.devices, self.world, warn)

    @property
    def _role(self) -> str:
        return "server" if self.world.is_server else "client"

    def exchange(self, plan, server_run, client_runs, on_first_round: Callable[[], None], device):
        import_fedml(self._role)
        start_round = server_run.start_round if server_run is not None else client_runs[0].start_round
        args = fedml_args(plan, self.world, device, start_round)
        if server_run is not None:
            run_server(args, self.world, make_aggregator(server_run, args), on_first_round, self._watchdog)
        else:
            (client_run,) = client_runs
            run_client(args, self.world, make_trainer(client_run, args), client_run.client_index,
                       client_run.learner.num_train_samples, self._watchdog)

    def stop_watching(self):
        if self._watchdog is not None:
            self._watchdog.stop()

    def finish(self):
        self.stop_watching()
        self.world.finish()

    def abort(self, code: int):
        self.world.abort(code)


__all__ = ["FedMLTransport", "import_fedml", "fedml_args", "make_aggregator", "make_trainer"]
