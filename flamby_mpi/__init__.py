"""flamby-mpi: FLamby's cross-silo benchmarks as real distributed jobs over MPI with FedML."""
import time as _time

__version__ = "0.1.0"
# When this process started running our code, before any heavy import: start-up times count from here.
PROCESS_START = _time.time()

# Set on a module made without running its code yet (a hollow package of datasets/deferred_imports.py,
# FedML's stand-ins of transport/fedml_imports.py); its code runs, if ever, on first use.
HOLLOW_MARK = "_flamby_mpi_hollow"


def not_run_yet(module) -> bool:
    """Whether a module in sys.modules is still waiting to run its code: hollow, or lazy."""
    import importlib.util

    # A LazyLoader module runs its code on any attribute read, __dict__ and __class__ included:
    # only its type may be looked at (deferred_imports.py's lazy modules subclass importlib's).
    lazy = getattr(importlib.util, "_LazyModule", None)
    if lazy is not None and issubclass(type(module), lazy):
        return True
    return bool(getattr(module, "__dict__", {}).get(HOLLOW_MARK))
