"""A FLamby for Fed-ISIC2019 tests: the installed package, plus a small train/test split.

FLamby's FedIsic2019 reads its split from a CSV inside its own package
(`flamby/datasets/fed_isic2019/dataset_creation_scripts/train_test_split`), which FLamby's git
repository has and the wheel the tests install leaves out; the real split also lists 23,247
images, too many for a test to evaluate. So tests copy the installed FLamby package, unchanged,
into a directory of their own, add a split of a few images per centre and fold there (FLamby's
columns, our own rows) and put that directory first on PYTHONPATH: FLamby's own class reads it.
"""
from __future__ import annotations

import csv
import importlib.util
import shutil
from pathlib import Path

CENTERS = 6  # FLamby's NUM_CLIENTS for Fed-ISIC2019
CLASSES = 8
TRAIN_PER_CENTER = 3
TEST_PER_CENTER = 2
SPLIT = Path("flamby") / "datasets" / "fed_isic2019" / "dataset_creation_scripts" / "train_test_split"


def split_rows():
    rows = []
    for center in range(CENTERS):
        for fold, count in (("train", TRAIN_PER_CENTER), ("test", TEST_PER_CENTER)):
            for _ in range(count):
                index = len(rows)
                rows.append({"image": f"ISIC_{9000000 + index:07d}", "target": (center + index) % CLASSES,
                             "center": center, "fold": fold, "fold2": f"{fold}_{center}"})
    return rows


def flamby_with_small_split(site: Path) -> Path:
    """site/flamby: a copy of the installed FLamby with the small split; returns site."""
    spec = importlib.util.find_spec("flamby")
    installed = Path(list(spec.submodule_search_locations)[0])
    shutil.copytree(installed, site / "flamby", ignore=shutil.ignore_patterns("__pycache__"))
    with open(site / SPLIT, "w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=["image", "target", "center", "fold", "fold2"])
        writer.writeheader()
        writer.writerows(split_rows())
    return site
