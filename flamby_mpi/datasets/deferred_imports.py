"""Modules that FLamby's dataset packages import but a run never uses, loaded on first use instead.

Every rank imports its FLamby dataset module, all ranks at once on the same cores, and most of
what that import costs is code no run executes (figures in docs/benchmarks/):

- `flamby.utils`, which every FLamby dataset imports, starts with `import matplotlib`,
  `import matplotlib.pyplot as plt` and `import seaborn as sns` for its plotting helpers;
  training and evaluation never call them;
- Fed-Heart-Disease (and FLamby's synthetic dataset) take `train_test_split` from
  `sklearn.model_selection`, whose `__init__.py` imports every model-selection tool and through
  them `sklearn.metrics` and `scipy.stats`; scikit-learn's own utilities import `scipy.stats` too,
  for functions only other estimators call.

Two ways of deferring, both used only while a FLamby dataset is imported (`deferring`); modules
already imported are left as they are:

- `UNUSED_BY_RUNS` are created with the standard library's importlib.util.LazyLoader: the module
  object exists at once and its code runs on the first attribute access. That suits modules
  imported as a whole (`import scipy.stats`), not packages whose submodules are imported (finding
  a submodule reads the package's `__path__`, an attribute access) nor modules whose names are
  taken with `from module import name` (also an access);
- `HOLLOW_PACKAGES` are packages created without running their `__init__.py`: their submodules
  import from the package's own files as usual, the names listed for a package come from the
  submodule that defines them (the same objects the `__init__.py` would hand over), and the first
  use of any other name runs the real `__init__.py` in the same module object, after which it is
  the package a plain import gives.

Either way code that does use these modules works unchanged, only later.
"""
from __future__ import annotations

import contextlib
import importlib
import importlib.abc
import importlib.util
import sys
import threading
from typing import Dict, Iterable, Iterator, Mapping, Optional

# Imported as whole modules and only called inside functions no run calls.
UNUSED_BY_RUNS = ("matplotlib.pyplot", "seaborn", "scipy.stats")

# package -> {name taken from the package: the submodule that defines it}.
HOLLOW_PACKAGES: Dict[str, Dict[str, str]] = {
    "matplotlib": {},  # flamby.utils imports it only to reach matplotlib.pyplot (deferred above)
    "sklearn.model_selection": {"train_test_split": "sklearn.model_selection._split"},
}

# Set on a hollow package until its __init__.py has run (flamby_mpi.runtime.startup leaves such
# packages out of the modules a rank loaded: their code did not run).
HOLLOW_MARK = "_flamby_mpi_hollow"


class _HollowLoader(importlib.abc.Loader):
    """Makes the package module without executing its __init__.py; `real` executes it on demand."""

    def __init__(self, real: importlib.abc.Loader, names: Mapping[str, str]):
        self.real = real
        self.names = dict(names)

    def create_module(self, spec):
        return self.real.create_module(spec)

    def exec_module(self, module):
        real, names, lock = self.real, self.names, threading.RLock()
        state = {"running": False}

        def run_init():
            with lock:
                if state["running"]:
                    return
                state["running"] = True
                # From here the module is the package a plain import makes, half-initialised while
                # its __init__.py runs (a missing name is an AttributeError, as then).
                for key in ("__getattr__", HOLLOW_MARK):
                    vars(module).pop(key, None)
                module.__spec__.loader = module.__loader__ = real
                real.exec_module(module)

        def __getattr__(attr):  # PEP 562: only for names the package has not got yet
            if attr in names and not state["running"]:
                value = getattr(importlib.import_module(names[attr]), attr)
                setattr(module, attr, value)
                return value
            if attr.startswith("__"):
                # Probes such as inspect.getmodule's hasattr(module, "__file__") over all of
                # sys.modules must not run the package in the middle of another import.
                raise AttributeError(f"module {module.__name__!r} has no attribute {attr!r}")
            run_init()
            return getattr(module, attr)

        module.__getattr__ = __getattr__
        setattr(module, HOLLOW_MARK, True)


class _DeferringFinder(importlib.abc.MetaPathFinder):
    def __init__(self, lazy: Iterable[str], hollow: Mapping[str, Mapping[str, str]]):
        self.lazy = set(lazy)
        self.hollow = dict(hollow)

    def find_spec(self, name, path=None, target=None):
        if name not in self.lazy and name not in self.hollow:
            return None
        names = self.hollow.pop(name, None)
        self.lazy.discard(name)  # find the real spec with the other finders, once
        spec = importlib.util.find_spec(name)
        if spec is None or spec.loader is None or not hasattr(spec.loader, "exec_module"):
            return spec
        if names is not None:
            if spec.submodule_search_locations is None:  # not a package: nothing to hollow
                return spec
            spec.loader = _HollowLoader(spec.loader, names)
        else:
            spec.loader = importlib.util.LazyLoader(spec.loader)
        return spec


@contextlib.contextmanager
def deferring(names: Iterable[str] = UNUSED_BY_RUNS,
              packages: Optional[Mapping[str, Mapping[str, str]]] = None) -> Iterator[None]:
    """Within the block, importing one of `names` (not imported yet) gives a module that loads on
    first use, and importing one of `packages` (default HOLLOW_PACKAGES when `names` is left as
    it is, else none) gives the package without running its __init__.py until a name it does not
    list is used."""
    if packages is None:
        packages = HOLLOW_PACKAGES if names is UNUSED_BY_RUNS else {}
    finder = _DeferringFinder((name for name in names if name not in sys.modules),
                              {name: listed for name, listed in packages.items() if name not in sys.modules})
    sys.meta_path.insert(0, finder)
    try:
        yield
    finally:
        sys.meta_path.remove(finder)
