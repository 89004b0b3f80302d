"""data_args.data_path for a FLamby dataset class whose own __init__ has no data_path but whose base has.

FLamby's FedKits19(center, train, pooled, ...) takes no data_path, while its base Kits19Raw does
(and with it skips FLamby's per-install dataset_location file and points nnU-Net at the path).
FedKits19.__init__ calls `super().__init__(...)` without it. Rather than copy FedKits19's centre
selection, the class returned here slots one small class between FedKits19 and Kits19Raw in the
method resolution order, whose __init__ adds data_path to that call: FLamby's own code does every
read, with the path it would take from its config file taken from ours instead.
"""
from __future__ import annotations

import functools
import inspect
from typing import Optional


def _takes_data_path(init) -> bool:
    try:
        parameters = inspect.signature(init).parameters
    except (TypeError, ValueError):
        return False
    return "data_path" in parameters


def base_taking_data_path(fed_class: type) -> Optional[type]:
    """The nearest base class of fed_class whose __init__ names data_path, or None (also when
    fed_class is a function, as a user's dataset module may give)."""
    if not isinstance(fed_class, type):
        return None
    for base in fed_class.__mro__[1:]:
        if "__init__" in vars(base) and _takes_data_path(base.__init__):
            return base
    return None


@functools.lru_cache(maxsize=None)
def with_data_path(fed_class: type, data_path: str) -> type:
    """fed_class, with data_path handed to the base class that takes it (see the module docstring)."""
    base = base_taking_data_path(fed_class)
    if base is None:
        raise TypeError(f"{fed_class.__name__} has no base class taking data_path")

    class DataPathToBase(base):
        def __init__(self, *args, **kwargs):
            kwargs.setdefault("data_path", data_path)
            super().__init__(*args, **kwargs)

    class WithDataPath(fed_class, DataPathToBase):
        # A class made here has no importable name: pickles (DataLoader workers started by spawn or
        # forkserver) rebuild it from FLamby's class and the path.
        def __reduce__(self):
            return _rebuild, (fed_class, data_path, self.__dict__)

    WithDataPath.__name__ = WithDataPath.__qualname__ = fed_class.__name__
    return WithDataPath


def _rebuild(fed_class: type, data_path: str, state: dict):
    cls = with_data_path(fed_class, data_path)
    instance = cls.__new__(cls)
    instance.__dict__.update(state)
    return instance
