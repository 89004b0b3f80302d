"""FLamby behind one door: names, imports, licence prompts and data-missing errors."""
from __future__ import annotations

import builtins
import contextlib
import importlib
import io
import os
import sys
from typing import Dict, Optional, Tuple

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
        # What FLamby's modules import and a run never uses: loaded if ever used (deferred_imports.py)
        with deferring(dataset=name):
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


# How each dataset gets to where FLamby reads it, on a machine with internet (compute nodes often have
# none): the steps of its README in FLamby's repository (flamby/datasets/<name>/README.md), each run in
# the dataset's dataset_creation_scripts folder (several scripts import their neighbours by file name
# or read relative paths, so FLamby's READMEs run them from there). DIR: where the data goes.
_README = "https://github.com/owkin/FLamby/blob/main/flamby/datasets/{name}/README.md"
DATA_STEPS: Dict[str, Tuple[str, ...]] = {
    "fed_heart_disease": (
        "python download.py --output-folder DIR    # 40 KB from the UCI repository",
    ),
    "fed_tcga_brca": (),  # its data ships inside FLamby (brca.csv beside the dataset's code)
    "fed_ixi": (
        "python download.py --output-folder DIR    # IXI Tiny, 444 MB",
    ),
    "fed_isic2019": (
        "# accept the ISIC 2019 and HAM10000 licences on their pages first (see the README)",
        "python download_isic.py --output-folder DIR    # the ISIC 2019 images and CSVs",
        "python resize_images.py    # preprocessing: shorter side 224 px, colour constancy",
    ),
    "fed_camelyon16": (
        "# a Google Drive OAuth secret (client_secrets.json) and a browser login: see the README",
        "python download.py --output-folder DIR --path-to-secret client_secrets.json --port 6006    # 900 GB",
        "python tiling_slides.py --batch-size 64    # preprocessing: tiles -> ResNet50 features "
        "(openslide-tools, a GPU; 50 GB)",
    ),
    "fed_kits19": (
        "git clone https://github.com/neheller/kits19 DIR && (cd DIR && pip install -r requirements.txt "
        "&& python -m starter_code.get_imaging)    # 30 GB",
        "python create_config.py --output_folder DIR",
        "python parsing_and_adding_metadata.py",
        "python run_nnUnet_plan_and_preprocess.py --num_threads 1    # preprocessing (nnU-Net)",
    ),
    "fed_lidc_idri": (
        "python download_ct_scans.py -o DIR    # 150 GB of DICOM from TCIA, converted to NIfTI "
        "(the preprocessing FLamby reads); run it again if it stalls",
    ),
}


def _scripts_folder(name: str) -> str:
    """The dataset's dataset_creation_scripts folder in the installed FLamby (where FLamby also keeps
    dataset_location.yaml, its record of where the data went)."""
    try:
        import flamby.datasets as datasets_pkg

        base = os.path.dirname(os.path.realpath(datasets_pkg.__file__))
    except ImportError:  # advice without FLamby installed: the folder in FLamby's repository
        base = "FLamby/flamby/datasets"
    return os.path.join(base, name, "dataset_creation_scripts")


def flamby_location_record(name: str, debug: bool = False) -> str:
    """The file where FLamby's download scripts record a dataset's location, read when
    data_args.data_path is left out (FLamby's get_config_file_path)."""
    return os.path.join(_scripts_folder(name), "dataset_location_debug.yaml" if debug else "dataset_location.yaml")


def looked_in(name: str, data_path: Optional[str], debug: bool = False) -> str:
    """Where a run of this dataset looks for its data, in words."""
    if data_path is not None:
        return f"{data_path} (data_args.data_path)"
    return f"the location recorded in {flamby_location_record(name, debug)} (data_args.data_path is not set)"


def download_advice(name: str, data_path: Optional[str] = None) -> str:
    """What to run, on a node with internet, so that FLamby finds this dataset's data."""
    steps = DATA_STEPS.get(name)
    if steps is None:  # not one of FLamby's seven
        return f"see FLamby's instructions for {name} (flamby/datasets/{name}/README.md)"
    if not steps:
        return (f"{name}'s data ships inside FLamby (brca.csv in flamby/datasets/{name}): leave "
                f"data_args.data_path out; if the file is missing, reinstall FLamby with its extra: "
                f"pip install -e './FLamby[{FLAMBY_EXTRAS[name]}]'")
    folder = data_path if data_path is not None else "DIR"
    commands = "\n".join(f"  {step.replace('DIR', folder)}" for step in steps)
    if name == "fed_kits19":
        then = ("FLamby then reads the location create_config.py recorded (its dataset class takes no "
                "data_path)")
    elif name == "fed_camelyon16":
        then = ("then set data_args.data_path to the features folder tiling_slides.py wrote (or leave it "
                "out: FLamby records it)")
    else:
        then = f"then set data_args.data_path={folder} (or leave it out: FLamby records where it downloaded)"
    return (f"on a machine with internet (compute nodes are often offline), in {_scripts_folder(name)}, "
            f"run FLamby's steps for {name} ({_README.format(name=name)}), with {folder} on a file system "
            f"every node reads:\n{commands}\n{then}")


# Files a dataset's folder must hold, where FLamby's class does not say so itself: Fed-Heart-Disease
# reads whatever `*.data` it finds there, so a wrong or half-filled folder failed deep in pandas
# (KeyError) or torch (torch.cat of nothing) on every rank instead of naming the folder.
REQUIRED_FILES = {
    "fed_heart_disease": tuple(f"processed.{centre}.data"
                               for centre in ("cleveland", "hungarian", "switzerland", "va")),
}


def check_data_path(name: str, data_path: Optional[str]):
    """A data_path that is no directory, or lacks the files the dataset reads: said before FLamby's
    class is built (whose own check comes after building its augmentations, or not at all:
    Fed-KITS19, or fails unclearly: Fed-Heart-Disease)."""
    if data_path is None:
        return
    if not os.path.isdir(data_path):
        if os.path.exists(data_path):  # the download advice would name the file as its folder
            raise UserError(f"the data of {name} was not found: {data_path} (data_args.data_path) is a file, "
                            "not a folder", hint=f"set data_args.data_path to the folder holding {name}'s data; "
                                                 "to get it: " + download_advice(name))
        raise UserError(f"the data of {name} was not found: {data_path} (data_args.data_path) does not exist",
                        hint=download_advice(name, data_path))
    missing = [f for f in REQUIRED_FILES.get(name, ()) if not os.path.isfile(os.path.join(data_path, f))]
    if missing:
        raise UserError(f"the data of {name} was not found: {data_path} (data_args.data_path) lacks "
                        f"{', '.join(missing)}", hint=download_advice(name, data_path))


# What FLamby's dataset classes say when the data (or its preprocessing) is not where they look.
_DATA_MISSING = ("not downloaded", "not a valid path", "No such file", "partially downloaded", "config file",
                 "Could not find the config", "preprocessing for dataset")


@contextlib.contextmanager
def flamby_construction_guard(name: str, data_path: Optional[str] = None, debug: bool = False):
    """Turns FLamby's prompts and data-missing errors into clear UserErrors: what is missing, where
    it was looked for, and the commands that fetch and preprocess it."""
    original_input = builtins.input

    def refuse_prompt(prompt=""):
        raise UserError(f"FLamby asked a question while loading {name}: {str(prompt).strip()[:200]}",
                        hint=_licence_advice(name, LICENCE_PROMPT_AT_LOAD.get(name, "see FLamby's README")))

    builtins.input = refuse_prompt
    # FLamby prints "WARNING USING DEBUG MODE DATASET EVEN THOUGH DEBUG WAS SET TO FALSE" when it finds
    # no record of a download, then fails: on every rank, before the message below says what is
    # missing. What FLamby prints is shown once it is known not to be that.
    printed = io.StringIO()
    data_missing = False
    try:
        with contextlib.redirect_stdout(printed):
            yield
    except (ValueError, FileNotFoundError) as exc:
        text = str(exc)
        if any(s in text for s in _DATA_MISSING):
            data_missing = True
            raise UserError(f"the data of {name} was not found in {looked_in(name, data_path, debug)}: {text}",
                            hint=download_advice(name, data_path)) from exc
        raise
    finally:
        builtins.input = original_input
        if printed.getvalue() and not data_missing:
            sys.stdout.write(printed.getvalue())
