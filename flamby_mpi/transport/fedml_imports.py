"""Imports the part of FedML 0.9.6 a rank runs, and nothing else.

`import fedml` executes FedML's package-level imports: torchvision's models and through them
torch._dynamo (FedML's attack and defence code), its MLOps device-performance and profiling
modules, its job scheduler, wandb: CPU and memory on every rank (docs/performance.md, Start-up)
for modules this launcher never calls. What we run is FedML's cross-silo server or client manager, its MPI
communication manager and the classes they import. So:

- the FedML packages whose `__init__.py` pulls all that (`HOLLOW_PACKAGES`) are registered
  without executing their `__init__.py`; their submodules still load from FedML's own files, and
  the few names our modules take from a package itself are resolved to where FedML defines them
  (`PACKAGE_NAMES`);
- FedML's MLOps facade (`fedml.mlops`, `fedml.core.mlops`) is a stand-in with the functions FedML's
  cross-silo managers call (`MLOPS_CALLS`), each doing nothing: FedML's own return at once when
  `using_mlops` is false, the only value flamby-mpi gives. Any other name raises AttributeError;
- the algorithm modules of features flamby-mpi turns off (FedML's attacks, defences,
  contribution assessment, its own differential privacy, `DEFERRED_MODULES`) are loaded only if
  FedML ever uses one of their names; with the args we give FedML it never does.

Why not importlib.util.LazyLoader (flamby_mpi/datasets/deferred_imports.py) for the last group:
a LazyLoader module runs its code on the first attribute access, and FedML takes these names
with `from ..attack.byzantine_attack import ByzantineAttack` while its own modules are imported,
which is such an access: every deferred module would load at once, and with them torchvision,
torch._dynamo and scipy, the very imports this module exists to avoid. So each name FedML takes is a
`DeferredName` that loads the real module on first use and stands for the real object in calls,
attribute reads, isinstance/issubclass and as a base class.

The set is fixed by FedML 0.9.6, checked before anything is imported (`require_pinned_fedml`):
another version is refused, since nothing here has been tested with it.
flamby_mpi/transport/fedml_contract.py lists what the bridge relies on in FedML; its test fails on a change.
"""
from __future__ import annotations

import importlib
import importlib.util
import sys
import types
import warnings

from .. import HOLLOW_MARK

PINNED_FEDML_VERSION = "0.9.6"

# What FedML's cross-silo managers, aggregator and trainer adapter (the modules a rank imports) call
# on `fedml.mlops`; the contract test checks the list against FedML's sources both ways.
MLOPS_CALLS = frozenset((
    "event", "log", "log_aggregated_model_info", "log_aggregation_finished_status",
    "log_aggregation_status", "log_client_model_info", "log_round_info", "log_server_payload",
    "log_sys_perf", "log_training_finished_status", "log_training_model_input_info",
    "log_training_model_net_info", "log_training_status", "register_run_status_callback",
    "stop_sys_perf",
))

# Packages whose __init__.py imports far more than its submodules need.
HOLLOW_PACKAGES = ("fedml", "fedml.core", "fedml.cross_silo", "fedml.data")

# Names our code and FedML's managers import from a hollow package itself: where FedML defines them.
PACKAGE_NAMES = {
    "fedml.core": {"Context": "fedml.core.alg_frame.context"},
    "fedml.data": {"split_data_for_dist_trainers": "fedml.data.data_loader_cross_silo"},
}

# FedML's modules of features that are off in every flamby-mpi run (attacks, defences,
# contribution assessment, differential privacy of FedML's own; FLamby's DP goes through opacus).
DEFERRED_MODULES = (
    "fedml.core.security.attack.byzantine_attack",
    "fedml.core.security.attack.dlg_attack",
    "fedml.core.security.attack.label_flipping_attack",
    "fedml.core.security.attack.model_replacement_backdoor_attack",
    "fedml.core.contribution.gtg_shapley_value",
    "fedml.core.contribution.leave_one_out",
    "fedml.core.contribution.mr_shapley_value",
    "fedml.core.dp.frames.cdp",
    "fedml.core.dp.frames.ldp",
    "fedml.core.dp.frames.NbAFL",
    "fedml.core.dp.frames.dp_clip",
    "fedml.core.dp.budget_accountant.rdp_accountant",
    # MQTT/cloud configuration and NTP time: only FedML's cloud backends and profiling use them.
    "fedml.core.mlops.mlops_configs",
    "fedml.core.mlops.mlops_utils",
) + tuple("fedml.core.security.defense." + m for m in (
    "RFA_defense",
    "coordinate_wise_median_defense",
    "coordinate_wise_trimmed_mean_defense",
    "crfl_defense",
    "outlier_detection",
    "three_sigma_defense_foolsgold",
    "three_sigma_geomedian_defense",
    "three_sigma_defense",
    "cclip_defense",
    "foolsgold_defense",
    "geometric_median_defense",
    "krum_defense",
    "robust_learning_rate_defense",
    "slsgd_defense",
    "weak_dp_defense",
    "norm_diff_clipping_defense",
))

SERVER_MODULES = (
    "fedml.constants",
    "fedml.core.distributed.communication.mpi.com_manager",
    "fedml.core.alg_frame.server_aggregator",
    "fedml.cross_silo.server.fedml_aggregator",
    "fedml.cross_silo.server.fedml_server_manager",
)
CLIENT_MODULES = (
    "fedml.constants",
    "fedml.core.distributed.communication.mpi.com_manager",
    "fedml.core.alg_frame.client_trainer",
    "fedml.cross_silo.client.fedml_client_master_manager",
    "fedml.cross_silo.client.fedml_trainer_dist_adapter",
)


def fedml_version_problem():
    """Why this FedML cannot run here (a message for the user), or None. Reads the installed
    package's metadata only: nothing of FedML is imported."""
    from importlib.metadata import PackageNotFoundError, version

    try:
        found = version("fedml")
    except PackageNotFoundError:
        found = None
    if found == PINNED_FEDML_VERSION:
        return None
    return (f"flamby-mpi needs FedML {PINNED_FEDML_VERSION}, found "
            f"{'none installed' if found is None else found}: pip install fedml=={PINNED_FEDML_VERSION}")


def require_pinned_fedml():
    from ..exit.errors import UserError

    problem = fedml_version_problem()
    if problem:
        raise UserError(problem)


def import_fedml_for(role: str):
    """Imports what FedML's cross-silo `role` ("server" or "client") runs; returns the fedml package."""
    require_pinned_fedml()
    modules = SERVER_MODULES if role == "server" else CLIENT_MODULES
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # FedML's dependency warnings are not ours to fix
        _install_lean_fedml()
        for name in modules:
            importlib.import_module(name)
    return sys.modules["fedml"]


def _install_lean_fedml():
    if "fedml" in sys.modules:
        # Installed by an earlier call in this process, or FedML imported in full by other code:
        # stand-ins registered now would replace modules that already hold state.
        return
    for name in HOLLOW_PACKAGES:
        _register(_hollow_package(name))
    mlops = _mlops_stand_in("fedml.core.mlops")
    _register(mlops)
    _register(_mlops_stand_in("fedml.mlops", like=mlops))
    for name in DEFERRED_MODULES:
        _register(_deferred_module(name))


def _register(module: types.ModuleType):
    sys.modules[module.__name__] = module
    parent, _, child = module.__name__.rpartition(".")
    if parent:
        setattr(sys.modules[parent], child, module)


def _hollow_package(name: str) -> types.ModuleType:
    """The package as an import would make it, minus executing its __init__.py."""
    spec = importlib.util.find_spec(name)
    module = importlib.util.module_from_spec(spec)
    setattr(module, HOLLOW_MARK, True)
    if name == "fedml":
        module.__version__ = PINNED_FEDML_VERSION
    names = PACKAGE_NAMES.get(name, {})

    def __getattr__(attr):  # PEP 562: only for names the package has not got yet
        if attr in names:
            value = getattr(importlib.import_module(names[attr]), attr)
            setattr(module, attr, value)
            return value
        raise AttributeError(f"module {name!r} has no attribute {attr!r}: flamby-mpi does not execute "
                             f"{name}/__init__.py (flamby_mpi/transport/fedml_imports.py); add {attr!r} to "
                             f"PACKAGE_NAMES there")

    module.__getattr__ = __getattr__
    return module


class MLOpsStore:
    """Where the bridge registers the run's args (FedML's own class has the same role); the
    stand-in's functions read `using_mlops` from them."""
    mlops_args = None


def _mlops_stand_in(name: str, like=None) -> types.ModuleType:
    """FedML's MLOps facade for runs with using_mlops false: the functions in MLOPS_CALLS do
    nothing, as FedML's own do once they have checked `using_mlops`; any other name is an
    AttributeError, so a call FedML makes that nobody checked fails where it is made. Its
    submodules (MLOpsProfilerEvent, MLOpsConfigs) still load from FedML's files."""
    spec = importlib.util.find_spec("fedml.core.mlops")
    if like is None:
        module = importlib.util.module_from_spec(spec)
    else:  # `fedml.mlops`: FedML's alias of the same facade
        module = types.ModuleType(name, like.__doc__)
        module.__dict__.update({k: v for k, v in vars(like).items() if k not in ("__name__", "__spec__")})
    setattr(module, HOLLOW_MARK, True)
    module.MLOpsStore = MLOpsStore

    def __getattr__(attr):
        if attr.startswith("__") or attr not in MLOPS_CALLS:
            raise AttributeError(f"{name}.{attr}: not in the MLOps stand-in's allowed list "
                                 f"(MLOPS_CALLS in flamby_mpi/transport/fedml_imports.py); flamby-mpi runs FedML "
                                 f"without its MLOps, add the name there only if FedML's function does "
                                 f"nothing with using_mlops false")

        def disabled(*args, **kwargs):
            if getattr(MLOpsStore.mlops_args, "using_mlops", False):
                raise RuntimeError(f"FedML's mlops.{attr} with using_mlops on: flamby-mpi runs "
                                   f"without FedML's cloud")
            return None

        disabled.__name__ = disabled.__qualname__ = attr
        setattr(module, attr, disabled)
        return disabled

    module.__getattr__ = __getattr__
    return module


def _deferred_module(name: str) -> types.ModuleType:
    """A stand-in whose names load FedML's real module only when one is used (see the top)."""
    spec = importlib.util.find_spec(name)
    module = importlib.util.module_from_spec(spec)
    setattr(module, HOLLOW_MARK, True)

    def real():
        if sys.modules.get(name) is module:
            del sys.modules[name]
            _register(importlib.import_module(name))
        return sys.modules[name]

    def __getattr__(attr):
        if attr.startswith("__"):
            # Probes such as inspect.getmodule's hasattr(module, "__file__") over all of
            # sys.modules must not load the real module in the middle of another import.
            raise AttributeError(attr)
        return DeferredName(real, attr)

    module.__getattr__ = __getattr__
    return module


class DeferredName:
    """A name from a deferred module, standing for the real object, which is loaded on first use:
    a call, an attribute read, isinstance/issubclass with it, or a class statement with it as a base."""

    def __init__(self, load_module, attr: str):
        self._load_module, self._attr = load_module, attr

    def real(self):
        return getattr(self._load_module(), self._attr)

    def __call__(self, *args, **kwargs):
        return self.real()(*args, **kwargs)

    def __getattr__(self, attr):
        return getattr(self.real(), attr)

    def __instancecheck__(self, instance) -> bool:  # isinstance(x, name)
        return isinstance(instance, self.real())

    def __subclasscheck__(self, subclass) -> bool:  # issubclass(c, name)
        return issubclass(subclass, self.real())

    def __mro_entries__(self, bases):  # class C(name): ...
        return (self.real(),)

    def __repr__(self):
        return f"<deferred {self._attr} of FedML, not loaded yet>"
