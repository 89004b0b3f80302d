"""Modules that FLamby's dataset packages import but a run never uses, loaded on first use instead.

`flamby.utils`, which every FLamby dataset imports, starts with `import matplotlib.pyplot as plt`
and `import seaborn as sns` for its plotting helpers; training and evaluation never call them.
Every rank paid for both at start-up, all ranks at once (figures in docs/benchmarks/).
While a FLamby dataset is imported, these modules are created with the standard library's
importlib.util.LazyLoader: the module object exists at once and its code runs on the first
attribute access, so code that does use them works unchanged. Modules already imported are
left as they are.
"""
from __future__ import annotations

import contextlib
import importlib.abc
import importlib.util
import sys
from typing import Iterable, Iterator

# Plotting only, in FLamby's shared utilities; nothing on the training path reads them.
UNUSED_BY_RUNS = ("matplotlib.pyplot", "seaborn")


class _LazyFinder(importlib.abc.MetaPathFinder):
    def __init__(self, names: Iterable[str]):
        self.names = set(names)

    def find_spec(self, name, path=None, target=None):
        if name not in self.names:
            return None
        self.names.discard(name)  # find the real spec with the other finders, once
        spec = importlib.util.find_spec(name)
        if spec is None or spec.loader is None or not hasattr(spec.loader, "exec_module"):
            return spec
        spec.loader = importlib.util.LazyLoader(spec.loader)
        return spec


@contextlib.contextmanager
def deferring(names: Iterable[str] = UNUSED_BY_RUNS) -> Iterator[None]:
    """Within the block, importing one of `names` (not imported yet) gives a module that loads on
    first use."""
    finder = _LazyFinder(name for name in names if name not in sys.modules)
    sys.meta_path.insert(0, finder)
    try:
        yield
    finally:
        sys.meta_path.remove(finder)
