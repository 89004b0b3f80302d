"""Stand-in Fed-ISIC2019 in FLamby's layout, and stand-in EfficientNet weights where the run looks.

What FLamby's FedIsic2019 reads (flamby/datasets/fed_isic2019/dataset.py):
- the split: `train_test_split`, a CSV (image, target, center, fold, fold2) that FLamby keeps
  INSIDE its own package, in `flamby/datasets/fed_isic2019/dataset_creation_scripts/`, not in
  the data directory; FLamby's git repository has it (FLamby's wheel built with `pip wheel`
  leaves it out);
- `<data_path>/ISIC_2019_Training_Input_preprocessed/<image>.jpg` for every row of that split:
  RGB JPEGs whose shorter side is 224 pixels (FLamby's resize_images.py keeps the aspect ratio),
  from which FLamby's albumentations crop 200 x 200.

So this writer reads the split FLamby will read and writes one JPEG per row: a few distinct
images per (centre, class), the other rows hard links to them (a copy where links are refused),
so that even FLamby's full split (23,247 rows) costs little disk. Every centre and both folds are
present because they are FLamby's.

FLamby's Baseline calls `EfficientNet.from_pretrained('efficientnet-b0')`, which downloads
weights from the internet: stand-in weights of the right shapes (random, seeded; NOT ImageNet's)
are written to `DIR/standin_torch_home/hub/checkpoints/<the file name efficientnet_pytorch looks
for>`, with a README.txt, and the printed arguments point `data_args.pretrained_weights_dir` there.
"""
from __future__ import annotations

import csv
import importlib.util
import io
import os
import sys
from pathlib import Path
from typing import Dict, List, Tuple

import numpy as np

IMAGES = "ISIC_2019_Training_Input_preprocessed"
WEIGHTS_HOME = "standin_torch_home"
SHORT_SIDE = 224  # FLamby's resize_images.py: sz = 224 for the shorter edge
LONG_SIDE = 298  # 4:3, as most ISIC 2019 photographs (1024 x 768, 600 x 450) come out
VARIANTS = 3  # distinct images per (centre, class)
# The launcher arguments: the data, the stand-in weights, and a batch size that keeps 6
# EfficientNet-b0 ranks on one small machine (FLamby's BATCH_SIZE is 64).
BATCH_SIZE = 4


def flamby_split_path() -> Path:
    """Where FLamby's FedIsic2019 reads its split: beside its own dataset.py (found without
    importing FLamby, as FLamby finds it: the real path of its package)."""
    spec = importlib.util.find_spec("flamby")
    if spec is None or not spec.submodule_search_locations:
        raise MissingSplit("FLamby is not installed (python -c 'import flamby' fails)")
    package = Path(os.path.realpath(list(spec.submodule_search_locations)[0]))
    return package / "datasets" / "fed_isic2019" / "dataset_creation_scripts" / "train_test_split"


class MissingSplit(Exception):
    pass


def read_split(path: Path) -> List[Dict[str, str]]:
    if not path.is_file():
        raise MissingSplit(
            f"FLamby's Fed-ISIC2019 reads its train/test split from {path}, and that file is missing "
            "from this FLamby installation (a wheel built with `pip wheel` leaves it out). Install FLamby "
            "from its git repository as its README says (git clone https://github.com/owkin/FLamby.git && "
            "pip install -e './FLamby[isic2019]'), or copy flamby/datasets/fed_isic2019/"
            f"dataset_creation_scripts/train_test_split from FLamby's repository to {path}.")
    with open(path, newline="") as handle:
        rows = list(csv.DictReader(handle))
    missing = {"image", "target", "center"} - set(rows[0] if rows else ())
    if missing:
        raise MissingSplit(f"{path} lacks the columns {sorted(missing)}: not FLamby's split")
    return rows


def _image_bytes(seed: int, center: int, target: int, variant: int) -> bytes:
    """A skin-photo-like JPEG: a smooth background, a darker blob placed by (centre, class), noise."""
    from PIL import Image

    rng = np.random.default_rng([seed, center, target, variant])
    rows, cols = np.mgrid[0:SHORT_SIDE, 0:LONG_SIDE].astype(np.float32)
    skin = np.array([200, 160, 140], np.float32) + rng.normal(0, 12, 3)
    cy, cx = SHORT_SIDE * rng.uniform(0.3, 0.7), LONG_SIDE * rng.uniform(0.3, 0.7)
    radius = 30 + 6 * target + rng.uniform(0, 20)
    blob = np.exp(-((rows - cy) ** 2 + (cols - cx) ** 2) / (2 * radius ** 2))[..., None]
    lesion = np.array([90 + 10 * center, 60, 50 + 15 * target], np.float32)
    pixels = skin * (1 - blob) + lesion * blob + rng.normal(0, 6, (SHORT_SIDE, LONG_SIDE, 3))
    out = io.BytesIO()
    Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8), "RGB").save(out, format="JPEG", quality=85)
    return out.getvalue()


def write_images(directory: Path, rows: List[Dict[str, str]], seed: int) -> int:
    folder = directory / IMAGES
    folder.mkdir(parents=True, exist_ok=True)
    firsts: Dict[Tuple[int, int, int], Path] = {}
    for index, row in enumerate(rows):
        key = (int(row["center"]), int(row["target"]), index % VARIANTS)
        path = folder / (row["image"] + ".jpg")
        first = firsts.get(key)
        if first is None:
            path.write_bytes(_image_bytes(seed, *key))
            firsts[key] = path
            continue
        try:
            os.link(first, path)
        except OSError:  # file systems without hard links: a copy
            path.write_bytes(first.read_bytes())
    return len(firsts)


def write_weights(directory: Path, seed: int) -> Path:
    """Random EfficientNet weights of the right shapes under the name efficientnet_pytorch loads."""
    import torch
    from efficientnet_pytorch import EfficientNet
    from flamby.datasets.fed_isic2019 import Baseline

    from flamby_mpi.datasets.pretrained_weights import checkpoint_path, weights_needed

    weights = weights_needed("fed_isic2019", Baseline)
    home = directory / WEIGHTS_HOME
    path = Path(checkpoint_path(weights, str(home)))
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(seed)
    torch.save(EfficientNet.from_name(weights.arch).state_dict(), path)
    (home / "README.txt").write_text(
        f"STAND-IN WEIGHTS, NOT PRETRAINED.\n\n{path.relative_to(home)} holds random {weights.arch} weights "
        f"(seed {seed}) of the shapes\nefficientnet_pytorch expects, under the file name it looks for, so that "
        "FLamby's\nFed-ISIC2019 model can be built without internet on stand-in data "
        "(scripts/standin_data.py).\nFor real runs fetch the real weights on a machine with internet:\n"
        f"  TORCH_HOME=DIR python -c '{weights.fetch_python}'\n"
        f"(source: {weights.url})\n")
    return home


def write(directory: Path, seed: int) -> List[str]:
    try:
        rows = read_split(flamby_split_path())
    except MissingSplit as exc:
        print(f"standin_data.py: {exc}", file=sys.stderr)
        raise SystemExit(2) from None
    write_images(directory, rows, seed)
    home = write_weights(directory, seed)
    return ["--set", f"data_args.data_path={directory}",
            "--set", f"data_args.pretrained_weights_dir={home}",
            "--set", f"train_args.batch_size={BATCH_SIZE}"]
