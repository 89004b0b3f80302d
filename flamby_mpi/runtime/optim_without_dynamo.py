"""torch.optim without importing torch._dynamo, a large import (CPU and memory on every rank,
docs/performance.md, Start-up) that a run which compiles nothing never uses.

Two places of torch.optim import torch._dynamo although nothing is compiled:

1. Every `Optimizer.step` runs `import torch._dynamo; torch._dynamo.graph_break()`, a marker for
   `torch.compile`'s tracer that does nothing when called outside compilation (its body is
   empty). Until something needs more of torch._dynamo, `torch._dynamo` is a stand-in with
   that one empty function; any other name loads the real torch._dynamo in its place (the
   stand-in then forwards to it), so code that does compile still works.
2. torch 2 wraps several `Optimizer` methods (`add_param_group`, `zero_grad`, `state_dict`, ...) in
`torch._disable_dynamo`, whose first call imports torch._dynamo only to tell `torch.compile`
to leave the method alone, then caches the result on the method as `__dynamo_disable`.
flamby-mpi never compiles, so outside compilation that wrapper just calls the method: we fill
the cache with the method itself, and the call goes straight to it, the same arithmetic without
the import. When anything does use torch._dynamo (`torch.compile`), the stand-in hands over to
the real module and the cache entries filled here are emptied again, so torch marks those
methods for its compiler exactly as without this module.

Both depend on torch's internals (the wrapper's code name and cache attribute, the optimizers'
import inside `step`) and on `code.co_qualname` (Python 3.11+), so `install()` acts only on the
versions tests/test_unit_optim_without_dynamo.py runs on (`TESTED_TORCH`, `TESTED_PYTHON`);
elsewhere it does nothing and the first optimizer step imports torch._dynamo as usual.
pyproject.toml pins torch to the tested range.
"""
from __future__ import annotations

import sys

from .. import HOLLOW_MARK

_CACHE_ATTRIBUTE = "__dynamo_disable"  # where torch._compile._disable_dynamo caches per function

TESTED_TORCH = ("2.14",)  # major.minor releases the tests ran on; pyproject.toml pins the same
TESTED_PYTHON = (3, 11)  # co_qualname is 3.11's; CI runs 3.11 (requires-python says so)

# Methods whose cache install() filled: emptied when the real torch._dynamo takes over.
_filled = []


def applies(torch_version: str, python=None) -> bool:
    """Whether this torch and Python are the ones this module was tested on."""
    python = tuple((python or sys.version_info)[:2])
    return python >= TESTED_PYTHON and ".".join(torch_version.split(".")[:2]) in TESTED_TORCH


def _is_disable_dynamo_wrapper(function) -> bool:
    code = getattr(function, "__code__", None)
    return (code is not None and code.co_name == "inner" and "_disable_dynamo" in code.co_qualname
            and code.co_filename.endswith("_compile.py") and hasattr(function, "__wrapped__"))


def install() -> bool:
    """Makes torch.optim's optimizers work without importing torch._dynamo (see above). Returns
    whether it did: not on an untested torch or Python, nor once torch._dynamo is imported."""
    import torch.optim

    loaded = sys.modules.get("torch._dynamo")
    if loaded is not None:
        return bool(getattr(loaded, HOLLOW_MARK, False))  # installed by an earlier call
    if not applies(torch.__version__):
        return False
    _install_dynamo_stand_in(sys.modules)
    classes = {torch.optim.Optimizer}
    classes.update(c for c in vars(torch.optim).values()
                   if isinstance(c, type) and issubclass(c, torch.optim.Optimizer))
    for cls in classes:
        for attribute in vars(cls).values():
            if _is_disable_dynamo_wrapper(attribute):
                method = attribute.__wrapped__
                if getattr(method, _CACHE_ATTRIBUTE, None) is None:
                    setattr(method, _CACHE_ATTRIBUTE, method)
                    _filled.append(method)
    return True


def _empty_filled_caches():
    """torch's wrappers compute their real entry (torch._dynamo.disable) on their next call."""
    while _filled:
        method = _filled.pop()
        if getattr(method, _CACHE_ATTRIBUTE, None) is method:
            delattr(method, _CACHE_ATTRIBUTE)


def graph_break(msg: str = "") -> None:
    """torch._dynamo.graph_break outside compilation: nothing to do."""


def _install_dynamo_stand_in(modules):
    import importlib
    import importlib.util
    import types

    import torch

    name = "torch._dynamo"
    stand_in = types.ModuleType(name, "flamby-mpi's stand-in for torch._dynamo until it is needed")
    stand_in.__spec__ = importlib.util.find_spec(name)
    stand_in.__path__ = list(stand_in.__spec__.submodule_search_locations or [])
    setattr(stand_in, HOLLOW_MARK, True)
    stand_in.graph_break = graph_break

    def load_real():
        if modules.get(name) is stand_in:
            del modules[name]
            _empty_filled_caches()
            torch._dynamo = importlib.import_module(name)
        return modules[name]

    def __getattr__(attribute):
        if attribute.startswith("__") and attribute.endswith("__"):
            # Probes such as inspect.getmodule's hasattr(module, "__file__") over all of
            # sys.modules must not load torch._dynamo in the middle of another import.
            raise AttributeError(attribute)
        return getattr(load_real(), attribute)  # the first real use: the real module takes over

    stand_in.__getattr__ = __getattr__
    modules[name] = stand_in
    torch._dynamo = stand_in
    sys.meta_path.insert(0, _RealDynamoFirst(stand_in, load_real))


class _RealDynamoFirst:
    """An import of a submodule (`import torch._dynamo.utils`) while the stand-in holds the place
    loads the real torch._dynamo first; a submodule its package import already loaded is handed
    over as it is, never executed twice."""

    def __init__(self, stand_in, load_real):
        self._stand_in, self._load_real = stand_in, load_real

    def find_spec(self, fullname, path=None, target=None):
        import sys

        if not fullname.startswith("torch._dynamo.") or sys.modules.get("torch._dynamo") is not self._stand_in:
            return None
        self._load_real()
        sys.meta_path.remove(self)
        loaded = sys.modules.get(fullname)
        if loaded is None:
            return None  # the ordinary finders load it, under the real package
        import importlib.util

        return importlib.util.spec_from_loader(fullname, _AlreadyLoaded(loaded))


class _AlreadyLoaded:
    def __init__(self, module):
        self._module, self._spec = module, module.__spec__

    def create_module(self, spec):
        return self._module

    def exec_module(self, module):
        module.__spec__ = self._spec  # the import machinery set ours; the module keeps its own
