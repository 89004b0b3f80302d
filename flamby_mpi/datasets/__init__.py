"""Resolves `data_args.dataset` to a DatasetSpec.

Accepted: `synthetic` (built in), a FLamby name in either spelling
(`fed_heart_disease`, `Fed-Heart-Disease`), or the name of any importable module,
dotted (`mypackage.my_silos`) or not (`my_silos`), with FLamby's dataset-module
interface (how users bring their own silos).
"""
from __future__ import annotations

import functools
import importlib

from ..exit.errors import UserError, clip, shown
from ..registry import is_synthetic
from .flamby_datasets import (
    FLAMBY_DATASETS,
    NEEDS_CUDA,
    canonical_flamby_name,
    check_data_path,
    check_licence_accepted,
    flamby_construction_guard,
    import_flamby_dataset,
    loader_metric,
)
from .pretrained_weights import guarded_baseline
from .spec import REQUIRED_ATTRIBUTES, DatasetSpec, spec_from_module
from .synthetic import SyntheticModule

__all__ = ["DatasetSpec", "resolve_dataset", "FLAMBY_DATASETS"]


_CHOICES = ("use synthetic, one of FLamby's datasets (" + ", ".join(FLAMBY_DATASETS)
            + ") or the name of an importable module with FLamby's dataset interface, dotted "
              "(mypackage.my_silos) or not (my_silos, for a my_silos.py on the Python path)")
_IMPORTABLE = "make sure the module is importable on every host (PYTHONPATH, pip install)"


def resolve_dataset(data_args, seed: int) -> DatasetSpec:
    name = data_args.dataset
    if is_synthetic(name):
        module = SyntheticModule(seed, data_args.synthetic_num_centers, data_args.synthetic_samples_per_center)
        if data_args.data_path is not None:
            raise UserError("the synthetic dataset is generated from the seed and takes no data_path",
                            hint="remove data_args.data_path, or choose a FLamby dataset")
        return spec_from_module(module, "synthetic")

    flamby_name = canonical_flamby_name(name)
    if flamby_name is not None:
        module = import_flamby_dataset(flamby_name)
        _check_interface(module, flamby_name)
        check_data_path(flamby_name, data_args.data_path)  # before the licence: a wrong path is the mistake
        check_licence_accepted(flamby_name)
        spec = spec_from_module(module, flamby_name, data_args.data_path, data_args.debug,
                                make_guard=functools.partial(flamby_construction_guard, flamby_name,
                                                             data_args.data_path, data_args.debug),
                                loader_metric=loader_metric(flamby_name, module),
                                needs_cuda=NEEDS_CUDA.get(flamby_name))
        # A model that downloads weights when built: its file is looked for first (offline nodes).
        spec.baseline = guarded_baseline(flamby_name, spec.baseline, data_args.pretrained_weights_dir)
        return spec

    try:
        module = importlib.import_module(name)
    except ModuleNotFoundError as exc:
        if "." not in name and exc.name == name:
            # Not a module at all: most likely a misspelt dataset name; show the choices.
            raise UserError(f"unknown dataset {shown(name)}", hint=_CHOICES) from None
        raise UserError(f"cannot import dataset module {shown(name)}: {clip(str(exc))}", hint=_IMPORTABLE) from None
    except ImportError as exc:
        raise UserError(f"cannot import dataset module {shown(name)}: {clip(str(exc))}", hint=_IMPORTABLE) from None
    except (ValueError, TypeError) as exc:  # "", ".x" (relative), "a..b": not a module name
        raise UserError(f"unknown dataset {shown(name)} ({clip(str(exc))})", hint=_CHOICES) from None
    _check_interface(module, name)
    return spec_from_module(module, name, data_args.data_path, data_args.debug)


def _check_interface(module, name: str):
    missing = [a for a in REQUIRED_ATTRIBUTES if not hasattr(module, a)]
    if missing:
        raise UserError(f"dataset module {shown(name)} lacks {', '.join(missing)}",
                        hint="a dataset module must define " + ", ".join(REQUIRED_ATTRIBUTES)
                             + " like flamby.datasets.fed_heart_disease")
