"""`import torch` without running torch._meta_registrations until something may need it.

torch's `__init__` ends with `from torch import _meta_registrations`: Python "meta kernels", the
shape functions that tensors on the meta device (torch.compile, torch.export, fake tensors) use
for operators that have none in C++. Running it imports torch._decomp, torch._refs and
torch._prims: about 0.33 s of CPU in every process, a fifth of torch's import. The stand-in keeps
the one thing torch needs of it elsewhere (torch.Generator's metaclass): 0.31 s saved. A rank that trains
FLamby's models in eager mode never calls one: its tensors live on the CPU or a GPU. On a 2-core
host, the five ranks of a Fed-Heart-Disease job pay it 1.4 s of CPU (docs/performance.md).

`install()` (the entry point calls it before anything imports torch) has torch import a stand-in instead,
and the real module runs, registering exactly what it registers at torch's import, as soon as:
- anything imports one of `LOADED_BY`: torch._dynamo, torch._inductor, torch._decomp,
  torch._functorch.aot_autograd (compilation and export import them before they trace), or opacus
  (its per-sample gradients move a copy of the model to the meta device);
- anything reads an attribute of the stand-in;
- `load()` is called: a dataset module of the user's (`data_args.dataset` naming their module) gets
  it before it is imported, since it may build on the meta device.
Without it, a meta-device operator whose kernel is one of these raises torch's own
NotImplementedError ("attempted to run this operator with Meta tensors"); it never computes a
different number. Tensors on the CPU or a GPU never dispatch to these kernels, so a run is the same
bit for bit (tests/test_deferred_dataset_imports.py trains FLamby's models both ways).

`install()` acts only on the torch releases that test ran on (`TESTED_TORCH`, as pyproject.toml
pins) and only before torch is imported; elsewhere it does nothing and torch imports as usual.
"""
from __future__ import annotations

import importlib
import importlib.abc
import importlib.util
import sys
import threading
import types
from typing import Optional

from .. import HOLLOW_MARK

NAME = "torch._meta_registrations"
LOADED_BY = ("torch._dynamo", "torch._inductor", "torch._decomp", "torch._functorch.aot_autograd", "opacus")
TESTED_TORCH = ("2.14",)  # major.minor; pyproject.toml pins the same

_lock = threading.RLock()
_finder: Optional["_LoadFirst"] = None


class _StandIn(types.ModuleType):
    """torch._meta_registrations until it runs: any attribute read runs it and is forwarded."""

    def __getattr__(self, name):
        if name.startswith("__") and name.endswith("__"):
            raise AttributeError(name)
        return getattr(load(), name)


class _LoadFirst(importlib.abc.MetaPathFinder):
    """Has the real module run before any of LOADED_BY (or their submodules) is loaded. Only a
    load counts, not a look (importlib.util.find_spec: optim_without_dynamo's stand-in asks for
    torch._dynamo's spec): the spec the other finders give is handed back with a loader that runs
    it first, and puts the module's own loader back in its spec before the module is made."""

    def find_spec(self, fullname, path=None, target=None):
        if fullname == NAME:  # torch's own import of it: the stand-in
            return importlib.util.spec_from_loader(NAME, _StandInLoader())
        if not any(fullname == name or fullname.startswith(name + ".") for name in LOADED_BY):
            return None
        for finder in sys.meta_path:
            if finder is self or not hasattr(finder, "find_spec"):
                continue
            spec = finder.find_spec(fullname, path, target)
            if spec is not None:
                if spec.loader is not None:
                    spec.loader = _RunFirst(spec.loader)
                return spec
        return None


class _StandInLoader(importlib.abc.Loader):
    """Makes the stand-in where torch's __init__ runs the real module, and does there the one
    thing of it torch itself relies on outside the meta device: torch.Generator's metaclass,
    without which torch.Generator() refuses to be made ("opaque metaclass", torch 2.14).

    torch sets it at the end of torch._prims.rng_prims, which the real module reaches through
    torch._prims; importing rng_prims alone would run torch._prims' __init__ (126 prims made
    custom operators: 0.11 s of CPU a rank), so the stand-in makes the one call instead. The real
    module, when it runs, imports rng_prims, which sets the same metaclass again and registers
    torch.Generator as an opaque type, a record only torch.compile's tracing reads."""

    def create_module(self, spec):
        stand_in = _StandIn(NAME)
        stand_in.__dict__[HOLLOW_MARK] = True
        return stand_in

    def exec_module(self, module):
        import torch
        from torch._custom_class_base import CustomClassBaseMeta

        torch._C._set_generator_metaclass(CustomClassBaseMeta)


class _RunFirst(importlib.abc.Loader):
    """A module's loader, run after torch._meta_registrations is. That run may import the very
    module asked for (it imports torch._decomp): the import then hands over that module, made
    once, instead of making and running a second copy (whose tables would stay empty)."""

    def __init__(self, loader):
        self.loader = loader
        self.made = None  # the module load() made, with its own spec

    def create_module(self, spec):
        load()
        made = sys.modules.get(spec.name)
        if made is not None:  # spec.loader stays this one: exec_module does not run it again
            self.made = (made, made.__spec__)
            return made
        spec.loader = self.loader  # from here on the module's spec, and so its __loader__, are its own
        return self.loader.create_module(spec)

    def exec_module(self, module):
        if self.made is not None and self.made[0] is module:
            module.__spec__ = self.made[1]  # the import set its spec to the one it was asked with
            return
        load()  # only reached through a spec kept before create_module
        self.loader.exec_module(module)


def tested_torch() -> bool:
    """Whether the torch installed is a release this module was tested on (read without importing it)."""
    from importlib import metadata

    try:
        version = metadata.version("torch")
    except metadata.PackageNotFoundError:
        return False
    return ".".join(version.split(".")[:2]) in TESTED_TORCH


def install() -> bool:
    """Stands torch._meta_registrations in before torch's import; returns whether it did (not once
    torch is imported, nor on an untested torch)."""
    global _finder
    with _lock:
        if "torch" in sys.modules or NAME in sys.modules or not tested_torch():
            return False
        _finder = _LoadFirst()
        sys.meta_path.insert(0, _finder)
        return True


def standing_in() -> bool:
    """Whether torch._meta_registrations has not run yet in this process."""
    return isinstance(sys.modules.get(NAME), _StandIn)


def load():
    """The real torch._meta_registrations, run now if the stand-in was in its place."""
    global _finder
    with _lock:
        if _finder is not None:
            sys.meta_path.remove(_finder)
            _finder = None
        module = sys.modules.get(NAME)
        if isinstance(module, _StandIn):
            del sys.modules[NAME]
            module = importlib.import_module(NAME)  # also binds it as torch._meta_registrations
        return module if module is not None else importlib.import_module(NAME)
