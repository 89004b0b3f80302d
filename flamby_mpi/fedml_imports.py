"""Imports the part of FedML 0.9.6 a rank runs, and nothing else.

`import fedml` executes FedML's package-level imports: torchvision's models and through them
torch._dynamo (FedML's attack and defence code), its MLOps device-performance and profiling
modules, its job scheduler, wandb; about 4 s of CPU and 230 MB per rank, for modules this
launcher never calls. What we run is FedML's cross-silo server or client manager, its MPI
communication manager and the classes they import. So:

- the FedML packages whose `__init__.py` pulls all that (`HOLLOW_PACKAGES`) are registered
  without executing their `__init__.py`; their submodules still load from FedML's own files, and
  the few names our modules take from a package itself are resolved to where FedML defines them
  (`PACKAGE_NAMES`);
- FedML's MLOps facade (`fedml.mlops`, `fedml.core.mlops`) is a stand-in whose functions do
  nothing: every one FedML calls returns at once when `using_mlops` is false, which is the
  only value flamby-mpi accepts; `MLOpsStore` keeps the args as FedML's does;
- the algorithm modules of features flamby-mpi turns off (FedML's attacks, defences,
  contribution assessment, and its model trainers, `DEFERRED_MODULES`) are imported only if
  FedML ever uses one of their names; with the args we give FedML it never does.

The server imports only the server's managers, a client only the client's. The set is fixed by
the pinned FedML version: with any other version FedML is imported the ordinary way. All of
this is reversible by `FLAMBY_MPI_FULL_FEDML_IMPORT=1` (FedML imported in full, as before),
for telling a FedML behaviour from an effect of this module.
"""
from __future__ import annotations

import importlib
import importlib.util
import os
import sys
import types
import warnings

PINNED_FEDML_VERSION = "0.9.6"

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


def import_fedml_for(role: str):
    """Imports what FedML's cross-silo `role` ("server" or "client") runs; returns the fedml package."""
    modules = SERVER_MODULES if role == "server" else CLIENT_MODULES
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # FedML's dependency warnings are not ours to fix
        if _full_import_wanted():
            import fedml  # noqa: F401
        else:
            _install_lean_fedml()
        for name in modules:
            importlib.import_module(name)
    return sys.modules["fedml"]


def _full_import_wanted() -> bool:
    if "fedml" in sys.modules and not getattr(sys.modules["fedml"], "_flamby_mpi_hollow", False):
        return True  # someone imported FedML in full already: nothing left to save
    if os.environ.get("FLAMBY_MPI_FULL_FEDML_IMPORT"):
        return True
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("fedml") != PINNED_FEDML_VERSION
    except PackageNotFoundError:
        return True  # the ordinary import gives the ordinary error


def _install_lean_fedml():
    if "fedml" in sys.modules:
        return  # installed by an earlier call in this process
    for name in HOLLOW_PACKAGES:
        _register(_hollow_package(name))
    mlops = _mlops_stand_in()
    for name in ("fedml.core.mlops", "fedml.mlops"):
        _register(mlops if name == "fedml.core.mlops" else _alias(name, mlops))
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
    module._flamby_mpi_hollow = True
    if name == "fedml":
        module.__version__ = PINNED_FEDML_VERSION
        module._global_training_type = None  # read by FedML's MLOps helpers
        module._global_comm_backend = None
    names = PACKAGE_NAMES.get(name, {})

    def __getattr__(attr):  # PEP 562: only for names the package has not got yet
        if attr in names:
            value = getattr(importlib.import_module(names[attr]), attr)
            setattr(module, attr, value)
            return value
        raise AttributeError(f"module {name!r} has no attribute {attr!r}: flamby-mpi does not execute "
                             f"{name}/__init__.py (flamby_mpi/fedml_imports.py); add {attr!r} to "
                             f"PACKAGE_NAMES there, or set FLAMBY_MPI_FULL_FEDML_IMPORT=1")

    module.__getattr__ = __getattr__
    return module


def _alias(name: str, module: types.ModuleType) -> types.ModuleType:
    alias = types.ModuleType(name, module.__doc__)
    alias.__dict__.update({k: v for k, v in vars(module).items() if k not in ("__name__", "__spec__")})
    return alias


class MLOpsStore:
    """Where FedML's MLOps helpers read the run's args (FedML's own class has the same role)."""
    mlops_args = None
    mlops_bind_result = False


def _mlops_stand_in() -> types.ModuleType:
    """FedML's MLOps facade for runs with using_mlops false: every call does nothing, as FedML's
    own functions do once they have checked `using_mlops`. Its submodules (MLOpsProfilerEvent,
    MLOpsConfigs) still load from FedML's files."""
    spec = importlib.util.find_spec("fedml.core.mlops")
    module = importlib.util.module_from_spec(spec)
    module._flamby_mpi_hollow = True
    module.MLOpsStore = MLOpsStore

    def __getattr__(attr):
        if attr.startswith("__"):
            raise AttributeError(attr)

        def disabled(*args, **kwargs):
            if getattr(MLOpsStore.mlops_args, "using_mlops", False):
                raise RuntimeError(f"FedML's mlops.{attr} with using_mlops on: flamby-mpi runs "
                                   f"without FedML's cloud (set FLAMBY_MPI_FULL_FEDML_IMPORT=1 to "
                                   f"import FedML in full)")
            return None

        disabled.__name__ = attr
        return disabled

    module.__getattr__ = __getattr__
    return module


def _deferred_module(name: str) -> types.ModuleType:
    """A stand-in whose names load FedML's real module only when one is used (called or read)."""
    spec = importlib.util.find_spec(name)
    module = importlib.util.module_from_spec(spec)
    module._flamby_mpi_hollow = True

    def real():
        if sys.modules.get(name) is module:
            del sys.modules[name]
            _register(importlib.import_module(name))
        return sys.modules[name]

    def __getattr__(attr):
        if attr.startswith("__"):
            raise AttributeError(attr)
        return _DeferredName(real, attr)

    module.__getattr__ = __getattr__
    return module


class _DeferredName:
    """A name from a deferred module: the real object is loaded on first use."""

    def __init__(self, load_module, attr: str):
        self._load_module, self._attr = load_module, attr

    def _real(self):
        return getattr(self._load_module(), self._attr)

    def __call__(self, *args, **kwargs):
        return self._real()(*args, **kwargs)

    def __getattr__(self, attr):
        return getattr(self._real(), attr)
