"""Modules that FLamby's dataset packages import but a run never uses, loaded on first use instead.

Every rank imports its FLamby dataset module, all ranks at once on the same cores, and most of
what that import costs is code no run executes (figures in docs/benchmarks/):

- `flamby.utils`, which every FLamby dataset imports, starts with `import matplotlib`,
  `import matplotlib.pyplot as plt` and `import seaborn as sns` for its plotting helpers;
  training and evaluation never call them;
- Fed-Heart-Disease (and FLamby's synthetic dataset) take `train_test_split` from
  `sklearn.model_selection`, whose `__init__.py` imports every model-selection tool and through
  them `sklearn.metrics` and `scipy.stats`; scikit-learn's own utilities import `scipy.stats` too,
  for functions only other estimators call;
- per dataset (`BY_DATASET`, used when `deferring` is given the dataset's name): the parts of
  monai (Fed-IXI), albumentations and scikit-learn's metrics (Fed-ISIC2019) that its classes do
  not use, which those packages' `__init__.py` files import all at once.

Two ways of deferring, both used only while a FLamby dataset is imported (`deferring`); modules
already imported are left as they are:

- `UNUSED_BY_RUNS` are created with the standard library's importlib.util.LazyLoader: the module
  object exists at once and its code runs on the first attribute access other than what the
  import system set before running it (importing it again, or reading its `__spec__` or
  `__file__`, is no use). That suits modules imported as a whole (`import scipy.stats`), not
  packages whose submodules import names from them nor modules whose names are taken with
  `from module import name` (an access);
- `HOLLOW_PACKAGES` are packages created without running their `__init__.py`: their submodules
  import from the package's own files as usual, the names listed for a package come from the
  submodule that defines them (the same objects the `__init__.py` would hand over; or, for names
  such as `__version__`, computed as the `__init__.py` computes them), and the first
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
from dataclasses import dataclass, field
from typing import Callable, Dict, Iterable, Iterator, Mapping, Optional, Tuple, Union

from .. import HOLLOW_MARK  # set on a hollow package until its __init__.py has run

# Imported as whole modules and only called inside functions no run calls.
UNUSED_BY_RUNS = ("matplotlib.pyplot", "seaborn", "scipy.stats")

# package -> {name taken from the package: the submodule that defines it}.
HOLLOW_PACKAGES: Dict[str, Dict[str, str]] = {
    "matplotlib": {},  # flamby.utils imports it only to reach matplotlib.pyplot (deferred above)
    "sklearn.model_selection": {"train_test_split": "sklearn.model_selection._split"},
}

# Where a hollow package's listed name comes from: the submodule that defines it, or a function
# that computes it as the package's __init__.py would.
NameSource = Union[str, Callable[[], object]]


def _monai_version() -> str:
    """monai's `__version__`, computed as its __init__.py computes it: monai.utils takes it from
    the package when imported (its `deprecated` decorators compare it with each name's removal)."""
    from monai._version import get_versions

    return get_versions().get("version", "0+unknown")


def _albumentations_version() -> str:
    """albumentations' `__version__`: its __init__.py writes its distribution's version."""
    from importlib.metadata import version

    return version("albumentations")


@dataclass(frozen=True)
class DatasetDeferrals:
    """What one FLamby dataset's module imports beyond the above that a run of it never uses."""
    modules: Tuple[str, ...] = ()  # deferred as whole modules, as UNUSED_BY_RUNS
    packages: Mapping[str, Mapping[str, NameSource]] = field(default_factory=dict)  # as HOLLOW_PACKAGES
    # hollow package -> its submodules imported as soon as it is made, in this order: what its
    # __init__.py imports first where its submodules import each other in circles that only that
    # order resolves, and hollow subpackages that FLamby's import does not reach but its classes
    # do, later, when deferring has ended.
    imported_with: Mapping[str, Tuple[str, ...]] = field(default_factory=dict)


_MONAI_TRANSFORMS = "monai.transforms"
BY_DATASET: Dict[str, DatasetDeferrals] = {
    # Fed-IXI builds its sets with six monai transforms. monai's __init__.py imports every monai
    # subpackage (monai.apps, monai.networks.nets, monai.bundle...) and through them torchvision,
    # torch._dynamo, scipy.signal, tensorboard; monai.transforms' imports every transform. Its
    # images are NIfTI: nibabel's optional pydicom is for DICOM extensions of their headers.
    "fed_ixi": DatasetDeferrals(
        modules=("pydicom", "skimage.morphology", "onnx", "onnx.reference", "scipy.ndimage"),
        packages={
            "monai": {"__version__": _monai_version},
            "monai.apps": {},  # monai.transforms.compose imports monai.apps.utils only
            "monai.data": {"MetaTensor": "monai.data.meta_tensor"},  # the transforms import its submodules
            _MONAI_TRANSFORMS: {  # the names FLamby's fed_ixi/dataset.py takes from it
                "AddChannel": f"{_MONAI_TRANSFORMS}.utility.array",
                "AsDiscrete": f"{_MONAI_TRANSFORMS}.post.array",
                "Compose": f"{_MONAI_TRANSFORMS}.compose",
                "NormalizeIntensity": f"{_MONAI_TRANSFORMS}.intensity.array",
                "Resize": f"{_MONAI_TRANSFORMS}.spatial.array",
                "ToTensor": f"{_MONAI_TRANSFORMS}.utility.array",
            },
        },
        imported_with={"monai": ("monai.utils",)},  # monai's __init__.py imports monai.utils.module first
    ),
    # Fed-ISIC2019 builds its augmentations with ten albumentations transforms (albumentations'
    # __init__.py imports every transform, and through its domain-adaptation ones qudida,
    # sklearn.decomposition, sklearn.preprocessing and skimage.exposure) and scores with one
    # scikit-learn metric.
    "fed_isic2019": DatasetDeferrals(
        packages={
            "albumentations": {
                "__version__": _albumentations_version,  # core.serialization takes it from the package
                "random_utils": "albumentations.random_utils",  # `from albumentations import random_utils`
                # the names FLamby's fed_isic2019/dataset.py takes from it
                "Compose": "albumentations.core.composition",
                "RandomScale": "albumentations.augmentations.geometric.resize",
                "Rotate": "albumentations.augmentations.geometric.rotate",
                "Flip": "albumentations.augmentations.geometric.transforms",
                "Affine": "albumentations.augmentations.geometric.transforms",
                "RandomCrop": "albumentations.augmentations.crops.transforms",
                "CenterCrop": "albumentations.augmentations.crops.transforms",
                "CoarseDropout": "albumentations.augmentations.dropout.coarse_dropout",
                "RandomBrightnessContrast": "albumentations.augmentations.transforms",
                "Normalize": "albumentations.augmentations.transforms",
            },
            "albumentations.augmentations": {},  # its __init__.py imports every transform module
            # fed_isic2019/metric.py: `from sklearn import metrics`, then metrics.balanced_accuracy_score;
            # sklearn.metrics' __init__.py imports every metric, scipy.stats and scipy.optimize with them
            "sklearn.metrics": {"balanced_accuracy_score": "sklearn.metrics._classification"},
        },
        # albumentations.augmentations is first imported when the sets are built
        imported_with={"albumentations": ("albumentations.augmentations",)},
    ),
}


class _HollowLoader(importlib.abc.Loader):
    """Makes the package module without executing its __init__.py; `real` executes it on demand."""

    def __init__(self, real: importlib.abc.Loader, names: Mapping[str, NameSource], then: Tuple[str, ...] = ()):
        self.real = real
        self.names = dict(names)
        self.then = then  # submodules imported once the package is made

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
                source = names[attr]
                try:
                    if callable(source):
                        value = source()
                    elif source == f"{module.__name__}.{attr}":  # the name is that submodule itself
                        value = importlib.import_module(source)
                    else:
                        value = getattr(importlib.import_module(source), attr)
                except (ImportError, AttributeError):
                    # Another version that keeps the name elsewhere (or not at all): what the
                    # package's own __init__.py gives, as without deferring.
                    run_init()
                    return getattr(module, attr)
                setattr(module, attr, value)
                return value
            submodule = sys.modules.get(f"{module.__name__}.{attr}")
            if submodule is not None:
                # `from package import submodule` while that submodule is still loading (it is set
                # on its package only once loaded): what the import system gives a plain package.
                return submodule
            if attr.startswith("__"):
                # Probes such as inspect.getmodule's hasattr(module, "__file__") over all of
                # sys.modules must not run the package in the middle of another import.
                raise AttributeError(f"module {module.__name__!r} has no attribute {attr!r}")
            run_init()
            return getattr(module, attr)

        module.__getattr__ = __getattr__
        setattr(module, HOLLOW_MARK, True)
        for name in self.then:
            importlib.import_module(name)


class _LazyModule(importlib.util._LazyModule):
    """importlib's lazy module, except that reading what the import system set on it before its
    code ran (__spec__, __file__, __path__...) does not run that code: importing it a second time
    reads `__spec__` (Python 3.11's import checks whether it is still initialising), and so do
    probes such as monai's optional_import. Any other attribute runs it, after which it is a plain
    module (importlib's _LazyModule turns its class back into ModuleType)."""

    def __getattribute__(self, attr):
        if attr in _SET_BEFORE_EXECUTION:
            namespace = object.__getattribute__(self, "__dict__")
            if attr in namespace:
                return namespace[attr]
        return super().__getattribute__(attr)


# What importlib's module creation sets before the module's code runs (_init_module_attrs).
_SET_BEFORE_EXECUTION = frozenset({"__name__", "__loader__", "__package__", "__spec__", "__path__",
                                   "__file__", "__cached__"})


class _LazyLoader(importlib.util.LazyLoader):
    def exec_module(self, module):
        super().exec_module(module)
        module.__class__ = _LazyModule


class _DeferringFinder(importlib.abc.MetaPathFinder):
    def __init__(self, lazy: Iterable[str], hollow: Mapping[str, Mapping[str, NameSource]],
                 imported_with: Optional[Mapping[str, Tuple[str, ...]]] = None):
        self.lazy = set(lazy)
        self.hollow = dict(hollow)
        self.imported_with = dict(imported_with or {})

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
            spec.loader = _HollowLoader(spec.loader, names, self.imported_with.get(name, ()))
        else:
            spec.loader = _LazyLoader(spec.loader)
        return spec


@contextlib.contextmanager
def deferring(names: Iterable[str] = UNUSED_BY_RUNS,
              packages: Optional[Mapping[str, Mapping[str, NameSource]]] = None,
              dataset: Optional[str] = None) -> Iterator[None]:
    """Within the block, importing one of `names` (not imported yet) gives a module that loads on
    first use, and importing one of `packages` (default HOLLOW_PACKAGES when `names` is left as
    it is, else none) gives the package without running its __init__.py until a name it does not
    list is used. `dataset`: that FLamby dataset's entries of BY_DATASET too."""
    if packages is None:
        packages = HOLLOW_PACKAGES if names is UNUSED_BY_RUNS else {}
    extra = BY_DATASET.get(dataset or "", DatasetDeferrals())
    names, packages = [*names, *extra.modules], {**packages, **extra.packages}
    finder = _DeferringFinder((name for name in names if name not in sys.modules),
                              {name: listed for name, listed in packages.items() if name not in sys.modules},
                              extra.imported_with)
    sys.meta_path.insert(0, finder)
    try:
        yield
    finally:
        sys.meta_path.remove(finder)
