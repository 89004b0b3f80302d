"""What flamby_mpi/transport/fedml_bridge.py and fedml_imports.py rely on inside FedML 0.9.6, written down.

The bridge subclasses FedML's managers and reads or sets their private attributes (the receive
threads, the stop flag, the receive queue, the finished-client map, the client's round count) and
calls FedML's constructors with positional arguments. None of that is FedML's public API: an
upgrade that renames one of them would not fail at import, it would hang or misbehave in the
middle of a job. `contract_problems()` checks each of them by name and signature, without MPI,
and says what no longer holds; tests/test_unit_fedml_contract.py runs it in CI.

Kinds of need:
- SIGNATURES: a function's parameter names, in order (the bridge overrides it or calls it
  positionally);
- INIT_ATTRIBUTES: instance attributes a class's __init__ (or a base class's) assigns, read from
  the source (constructing these objects needs a live MPI communicator and starts threads);
- USES: a method of FedML whose body must still use `self.<name>`: where FedML calls into what
  the bridge overrides, or reads what the bridge sets;
- CONSTANTS: module or class attributes the bridge reads;
- the MLOps stand-in's allowed list (fedml_imports.MLOPS_CALLS) against FedML's own sources:
  every name it allows is a function of FedML's facade, and every `mlops.<name>` the imported
  FedML modules use is allowed.
"""
from __future__ import annotations

import ast
import importlib
import importlib.util
import inspect
import re
import sys
import textwrap
from pathlib import Path
from typing import Dict, Iterable, List, Set, Tuple

from .. import HOLLOW_MARK

_COMM = "fedml.core.distributed.communication"
_MPI_MANAGER = f"{_COMM}.mpi.com_manager.MpiCommunicationManager"
_RECEIVE_THREAD = f"{_COMM}.mpi.mpi_receive_thread.MPIReceiveThread"
_COMM_MANAGER = "fedml.core.distributed.fedml_comm_manager.FedMLCommManager"
_SERVER_MANAGER = "fedml.cross_silo.server.fedml_server_manager.FedMLServerManager"
_CLIENT_MANAGER = "fedml.cross_silo.client.fedml_client_master_manager.ClientMasterManager"
_AGGREGATOR = "fedml.core.alg_frame.server_aggregator.ServerAggregator"
_TRAINER = "fedml.core.alg_frame.client_trainer.ClientTrainer"

# function -> its parameters in order (the bridge's overrides take the same; its calls pass them
# by position).
SIGNATURES: Dict[str, str] = {
    f"{_MPI_MANAGER}.__init__": "self, comm, rank, size",
    f"{_MPI_MANAGER}.init_server_communication": "self",
    f"{_MPI_MANAGER}.init_client_communication": "self",
    f"{_MPI_MANAGER}.handle_receive_message": "self",
    f"{_MPI_MANAGER}.send_message": "self, msg",
    f"{_MPI_MANAGER}._notify_connection_ready": "self",
    f"{_MPI_MANAGER}.notify": "self, msg_params",
    f"{_MPI_MANAGER}.add_observer": "self, observer",
    f"{_RECEIVE_THREAD}.__init__": "self, comm, rank, size, name, q",
    f"{_RECEIVE_THREAD}.run": "self",
    f"{_RECEIVE_THREAD}.stop": "self",
    f"{_COMM}.message.Message.get": "self, key",
    f"{_COMM}.message.Message.get_sender_id": "self",
    f"{_COMM_MANAGER}._init_manager": "self",
    f"{_COMM_MANAGER}.run": "self",
    f"{_COMM_MANAGER}.receive_message": "self, msg_type, msg_params",
    f"{_COMM_MANAGER}.finish": "self",
    f"{_SERVER_MANAGER}.__init__": "self, args, aggregator, comm, client_rank, client_num, backend",
    f"{_SERVER_MANAGER}.send_init_msg": "self",
    f"{_SERVER_MANAGER}.process_finished_status": "self, client_status, msg_params",
    f"{_CLIENT_MANAGER}.__init__": "self, args, trainer_dist_adapter, comm, rank, size, backend",
    "fedml.cross_silo.server.fedml_aggregator.FedMLAggregator.__init__":
        "self, train_global, test_global, all_train_data_num, train_data_local_dict, "
        "test_data_local_dict, train_data_local_num_dict, client_num, device, args, server_aggregator",
    "fedml.cross_silo.client.fedml_trainer_dist_adapter.TrainerDistAdapter.__init__":
        "self, args, device, client_rank, model, train_data_num, train_data_local_num_dict, "
        "train_data_local_dict, test_data_local_dict, model_trainer",
    f"{_AGGREGATOR}.__init__": "self, model, args",
    f"{_AGGREGATOR}.set_id": "self, aggregator_id",
    f"{_AGGREGATOR}.get_model_params": "self",
    f"{_AGGREGATOR}.set_model_params": "self, model_parameters",
    f"{_AGGREGATOR}.on_before_aggregation": "self, raw_client_model_or_grad_list",
    f"{_AGGREGATOR}.aggregate": "self, raw_client_model_or_grad_list",
    f"{_AGGREGATOR}.on_after_aggregation": "self, aggregated_model_or_grad",
    f"{_AGGREGATOR}.test": "self, test_data, device, args",
    f"{_AGGREGATOR}.test_all": "self, train_data_local_dict, test_data_local_dict, device, args",
    f"{_TRAINER}.__init__": "self, model, args",
    f"{_TRAINER}.get_model_params": "self",
    f"{_TRAINER}.set_model_params": "self, model_parameters",
    f"{_TRAINER}.update_dataset": "self, local_train_dataset, local_test_dataset, local_sample_number",
    f"{_TRAINER}.on_before_local_training": "self, train_data, device, args",
    f"{_TRAINER}.on_after_local_training": "self, train_data, device, args",
    f"{_TRAINER}.train": "self, train_data, device, args",
    f"{_TRAINER}.test": "self, test_data, device, args",
}

# class -> attributes its __init__ (its own or a base's) assigns on self, which the bridge uses.
INIT_ATTRIBUTES: Dict[str, Tuple[str, ...]] = {
    # _stop_receiving sets _stop_running and stops both threads; the metered manager's receive loop
    # reads q_receiver; init_*_communication set the thread attributes.
    _MPI_MANAGER: ("comm", "rank", "size", "_stop_running", "_server_receive_thread",
                   "_client_receive_thread", "q_receiver"),
    # MeteredReceiveThread.run waits on _stop_event and puts messages on q, reads comm.
    _RECEIVE_THREAD: ("comm", "_stop_event", "q"),
    # ServerManager.process_finished_status marks and reads these; _init_manager reads comm/rank/size.
    _SERVER_MANAGER: ("client_finished_mapping", "client_id_list_in_this_round", "com_manager",
                      "comm", "rank", "size"),
    # run_client's on_stop sets num_rounds from round_idx (the last round after a stop request).
    _CLIENT_MANAGER: ("num_rounds", "round_idx", "com_manager", "comm", "rank", "size"),
}

# FedML method -> `self.<dotted name>` its body must use: how FedML reaches what the bridge overrides
# (left out, the override would never run) or reads what the bridge sets.
USES: Dict[str, Tuple[str, ...]] = {
    f"{_MPI_MANAGER}.__init__": ("self.init_server_communication", "self.init_client_communication",
                                 "self.q_receiver"),
    f"{_RECEIVE_THREAD}.stop": ("self._stop_event.set",),
    f"{_COMM_MANAGER}.__init__": ("self._init_manager",),
    f"{_COMM_MANAGER}.run": ("self.com_manager.handle_receive_message",),
    f"{_SERVER_MANAGER}.handle_message_client_status_update": ("self.process_finished_status",),
    f"{_SERVER_MANAGER}.process_online_status": ("self.send_init_msg",),
    f"{_CLIENT_MANAGER}.handle_message_receive_model_from_server": ("self.num_rounds", "self.round_idx",
                                                                    "self.finish"),
}

# Module or class attributes the bridge reads.
CONSTANTS: Tuple[str, ...] = (
    "fedml.constants.FEDML_CROSS_SILO_SCENARIO_HORIZONTAL",
    "fedml.constants.FEDML_TRAINING_PLATFORM_CROSS_SILO",
    f"{_COMM}.message.Message.MSG_ARG_KEY_RECEIVER",
)

_MLOPS_FACADE = "fedml.core.mlops"


def contract_problems() -> List[str]:
    """Every need above that the installed FedML no longer meets, one readable line each; [] when
    all hold. Imports FedML the way a rank does (fedml_imports), both roles."""
    from .fedml_imports import import_fedml_for

    import_fedml_for("server")
    import_fedml_for("client")
    problems: List[str] = []
    for path, expected in SIGNATURES.items():
        problems += _signature_problems(path, expected)
    for path, attributes in INIT_ATTRIBUTES.items():
        problems += _init_attribute_problems(path, attributes)
    for path, names in USES.items():
        problems += _use_problems(path, names)
    for path in CONSTANTS:
        try:
            _resolve(path)
        except (ImportError, AttributeError):
            problems.append(f"{path}: missing (fedml_bridge.py reads it)")
    problems += _mlops_problems()
    problems += _module_problems()
    return problems


def _resolve(path: str):
    """The object at a dotted path: the longest importable module prefix, then attributes."""
    parts = path.split(".")
    for cut in range(len(parts), 0, -1):
        name = ".".join(parts[:cut])
        try:
            obj = sys.modules.get(name) or importlib.import_module(name)
        except ImportError:
            continue
        for attribute in parts[cut:]:
            obj = getattr(obj, attribute)
        return obj
    raise ImportError(path)


def _function(path: str):
    try:
        obj = _resolve(path)
    except (ImportError, AttributeError):
        return None
    return obj if callable(obj) else None


def _signature_problems(path: str, expected: str) -> List[str]:
    function = _function(path)
    if function is None:
        return [f"{path}: missing (fedml_bridge.py overrides or calls it)"]
    found = ", ".join(inspect.signature(function).parameters)
    if found != expected:
        return [f"{path}: parameters are ({found}), fedml_bridge.py relies on ({expected})"]
    return []


def _source_tree(function) -> ast.AST:
    return ast.parse(textwrap.dedent(inspect.getsource(function)))


def _self_dotted_names(tree: ast.AST, stored: bool) -> Set[str]:
    """`self.a`, `self.a.b`... in the tree: only assignment targets if `stored`, else every use."""
    names: Set[str] = set()
    for node in ast.walk(tree):
        if not isinstance(node, ast.Attribute):
            continue
        if stored and not isinstance(node.ctx, ast.Store):
            continue
        chain, inner = [node.attr], node.value
        while isinstance(inner, ast.Attribute):
            chain.append(inner.attr)
            inner = inner.value
        if isinstance(inner, ast.Name) and inner.id == "self":
            names.add("self." + ".".join(reversed(chain)))
    return names


def _init_attribute_problems(path: str, attributes: Iterable[str]) -> List[str]:
    try:
        cls = _resolve(path)
    except (ImportError, AttributeError):
        return [f"{path}: missing (fedml_bridge.py subclasses it)"]
    assigned: Set[str] = set()
    for klass in cls.__mro__:
        init = vars(klass).get("__init__")
        if init is None or not inspect.isfunction(init):
            continue
        try:
            assigned |= _self_dotted_names(_source_tree(init), stored=True)
        except (OSError, TypeError):
            continue  # no source (a C type such as object or Thread's bases): nothing of FedML's
    return [f"{path}.__init__ no longer sets self.{name} (fedml_bridge.py reads or sets it)"
            for name in attributes if f"self.{name}" not in assigned]


def _use_problems(path: str, names: Iterable[str]) -> List[str]:
    function = _function(path)
    if function is None:
        return [f"{path}: missing (fedml_bridge.py relies on what it does)"]
    used = _self_dotted_names(_source_tree(function), stored=False)
    return [f"{path} no longer uses {name} (fedml_bridge.py overrides or sets it)"
            for name in names if not any(u == name or u.startswith(name + ".") for u in used)]


def _facade_functions() -> Set[str]:
    """The functions FedML's real MLOps facade defines, read from its source, not executed (its
    import is what fedml_imports avoids)."""
    spec = importlib.util.find_spec(_MLOPS_FACADE)
    tree = ast.parse(Path(spec.origin).read_text())
    return {node.name for node in tree.body if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef))}


def _loaded_fedml_sources() -> Dict[str, str]:
    sources = {}
    for name, module in list(sys.modules.items()):
        if not name.startswith("fedml") or module is None:
            continue
        if vars(module).get(HOLLOW_MARK):
            continue  # a stand-in: its code did not run
        origin = getattr(getattr(module, "__spec__", None), "origin", None)
        if origin and origin.endswith(".py"):
            sources[name] = Path(origin).read_text()
    return sources


def _mlops_problems() -> List[str]:
    from .fedml_imports import MLOPS_CALLS

    problems = [f"fedml_imports.MLOPS_CALLS allows {name!r}, which FedML's {_MLOPS_FACADE} does not "
                f"define" for name in sorted(MLOPS_CALLS - _facade_functions())]
    calls = re.compile(r"\bmlops\.(\w+)\s*\(")
    for module, source in sorted(_loaded_fedml_sources().items()):
        for name in sorted(set(calls.findall(source)) - MLOPS_CALLS):
            problems.append(f"{module} calls mlops.{name}, which the MLOps stand-in does not allow "
                            f"(fedml_imports.MLOPS_CALLS)")
    return problems


def _module_problems() -> List[str]:
    from .fedml_imports import DEFERRED_MODULES, HOLLOW_PACKAGES, PACKAGE_NAMES

    problems = []
    for name in (*HOLLOW_PACKAGES, *DEFERRED_MODULES):
        if importlib.util.find_spec(name) is None:
            problems.append(f"{name}: no such FedML module (fedml_imports.py registers it)")
    for package, names in PACKAGE_NAMES.items():
        for attribute, module in names.items():
            spec = importlib.util.find_spec(module)
            if spec is None or not re.search(rf"^(class|def) {attribute}\b", Path(spec.origin).read_text(), re.M):
                problems.append(f"{package}.{attribute}: not defined in {module} any more "
                                f"(fedml_imports.PACKAGE_NAMES)")
    return problems
