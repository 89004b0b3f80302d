"""A FLamby for the Fed-ISIC2019 benchmark: the installed package, unchanged, plus a train/test split.

FLamby's FedIsic2019 reads its split from a CSV inside its own package, which FLamby's wheel leaves
out (scripts/standin/fed_isic2019.py says so and exits 2), and the real split lists 23,247 images.
So the benchmark copies the installed package into its work directory, adds a split with enough
training images per centre for a batch, and puts that directory first on PYTHONPATH for the
stand-in writer and both runs: FLamby's own class reads it. (tests/support/isic_flamby.py does the
same for the tests, with fewer rows.)
"""
from __future__ import annotations

import csv
import importlib.util
import shutil
from pathlib import Path

CENTRES = 6  # FLamby's NUM_CLIENTS for Fed-ISIC2019
CLASSES = 8
SPLIT = Path("flamby") / "datasets" / "fed_isic2019" / "dataset_creation_scripts" / "train_test_split"


def split_rows(train_per_centre: int, test_per_centre: int):
    rows = []
    for centre in range(CENTRES):
        for fold, count in (("train", train_per_centre), ("test", test_per_centre)):
            for _ in range(count):
                index = len(rows)
                rows.append({"image": f"ISIC_{9100000 + index:07d}", "target": (centre + index) % CLASSES,
                             "center": centre, "fold": fold, "fold2": f"{fold}_{centre}"})
    return rows


def flamby_with_split(site: Path, train_per_centre: int, test_per_centre: int = 2) -> Path:
    """site/flamby: a copy of the installed FLamby with the split; returns site (for PYTHONPATH)."""
    spec = importlib.util.find_spec("flamby")
    if spec is None or not spec.submodule_search_locations:
        raise RuntimeError("FLamby is not installed")
    installed = Path(list(spec.submodule_search_locations)[0])
    shutil.copytree(installed, site / "flamby", ignore=shutil.ignore_patterns("__pycache__"))
    with open(site / SPLIT, "w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=["image", "target", "center", "fold", "fold2"])
        writer.writeheader()
        writer.writerows(split_rows(train_per_centre, test_per_centre))
    return site
