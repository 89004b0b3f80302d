"""FLamby behind one door: names, imports, licence prompts and data-missing errors."""
from __future__ import annotations

import builtins
import contextlib
import importlib
import os

from ..exit.errors import UserError
from ..registry import FLAMBY_DATASET_FACTS, FLAMBY_DATASETS, canonical_flamby_name  # noqa: F401 (re-exported)
from .deferred_imports import deferring

# FLamby's names and pip extras live in flamby_mpi.registry (torch-free, also read by scripts/submit.py).
FLAMBY_EXTRAS = {name: facts.extra for name, facts in FLAMBY_DATASET_FACTS.items()}
# Datasets whose class calls flamby.utils.accept_license() (an input() prompt) when built.
LICENCE_PROMPT_AT_LOAD = {
    "fed_tcga_brca": "https://gdc.cancer.gov/access-data/data-access-processes-and-tools",
}


# Datasets whose FLamby code moves tensors to CUDA unconditionally, so that they cannot train on a CPU.
NEEDS_CUDA = {
    "fed_lidc_idri": "FLamby's Fed-LIDC-IDRI loss (BaselineLoss, flamby/datasets/fed_lidc_idri/loss.py) "
                     "moves the labels to the GPU with .cuda(), so this dataset trains only on a GPU",
}


def loader_metric(name: str, module):
    """FLamby's benchmark's own evaluation of one test loader where it is not metric(y_true, y_pred)
    over all predictions (flamby.benchmarks.benchmark_utils.set_dataset_specific_config), else None.
    Fed-KITS19: the dice of the arg-max prediction, batch by batch, averaged; Fed-LIDC-IDRI: the
    dice of each image from its patches taken in chunks, averaged."""
    if name == "fed_kits19":
        def kits19(model, loader, use_gpu: bool) -> float:
            return module.evaluate_dice_on_tests(model, [loader], module.metric, use_gpu)["client_test_0"]
        return kits19
    if name == "fed_lidc_idri":
        def lidc_idri(model, loader, use_gpu: bool) -> float:
            return module.evaluate_dice_on_tests_by_chunks(model, [loader], use_gpu)["client_test_0"]
        return lidc_idri
    return None


FLAMBY_INSTALL = (
    "install FLamby from its git repository, with the extra for your dataset:\n"
    "  git clone https://github.com/owkin/FLamby.git && pip install -e './FLamby[{extra}]'"
)


def import_flamby_dataset(name: str):
    module_name = f"flamby.datasets.{name}"
    try:
        with deferring():  # FLamby's plotting imports: loaded if ever used (deferred_imports.py)
            return importlib.import_module(module_name)
    except ModuleNotFoundError as exc:
        missing = exc.name or ""
        if missing == "flamby" or missing.startswith("flamby."):
            raise UserError(f"dataset {name} needs FLamby, which is not installed",
                            hint=FLAMBY_INSTALL.format(extra=FLAMBY_EXTRAS[name])) from None
        raise UserError(f"FLamby's {name} needs the package {missing!r}, which is not installed",
                        hint=f"in your FLamby checkout: pip install -e '.[{FLAMBY_EXTRAS[name]}]'") from None


def licence_file(name: str) -> str:
    import flamby.datasets as datasets_pkg

    folder = os.path.join(os.path.dirname(os.path.realpath(datasets_pkg.__file__)), name,
                          "dataset_creation_scripts")
    return os.path.join(folder, f"license_agreement_{name}")


def _licence_advice(name: str, link: str) -> str:
    return (f"FLamby asks once, interactively, that you accept the data terms of {name} ({link}). "
            "Under MPI nobody can answer that prompt. Accept it once in a terminal:\n"
            f"  python -c \"from flamby.utils import accept_license; accept_license('{link}', '{name}')\"\n"
            "then launch again.")


def check_licence_accepted(name: str):
    """Detects FLamby's interactive licence prompt before launch instead of hanging on input()."""
    link = LICENCE_PROMPT_AT_LOAD.get(name)
    if link and not os.path.exists(licence_file(name)):
        raise UserError(f"the data licence of {name} has not been accepted yet",
                        hint=_licence_advice(name, link))


def download_advice(name: str) -> str:
    return (f"download it with FLamby's script (see FLamby/flamby/datasets/{name}/README.md), e.g.\n"
            f"  python -m flamby.datasets.{name}.dataset_creation_scripts.download --output-folder DIR\n"
            "then set data_args.data_path=DIR (or rely on the path FLamby's download recorded)")


@contextlib.contextmanager
def flamby_construction_guard(name: str):
    """Turns FLamby's prompts and data-missing errors into clear UserErrors."""
    original_input = builtins.input

    def refuse_prompt(prompt=""):
        raise UserError(f"FLamby asked a question while loading {name}: {str(prompt).strip()[:200]}",
                        hint=_licence_advice(name, LICENCE_PROMPT_AT_LOAD.get(name, "see FLamby's README")))

    builtins.input = refuse_prompt
    try:
        yield
    except (ValueError, FileNotFoundError) as exc:
        text = str(exc)
        if any(s in text for s in ("not downloaded", "not a valid path", "No such file",
                                   "partially downloaded", "config file")):
            raise UserError(f"the data of {name} was not found: {text}", hint=download_advice(name)) from exc
        raise
    finally:
        builtins.input = original_input
