"""Stand-in Fed-Camelyon16: per-slide bags of ResNet-50 tile features, in FLamby's layout.

What FLamby's `FedCamelyon16(data_path=DIR)` reads, and so what is written: one
`DIR/<slide>.tif.npy` per slide, a float32 array of shape (tiles, 2048) as FLamby's tiling script
saves it (a ResNet-50 feature vector per 224 x 224 tile; the number of tiles varies per slide).
FLamby takes each slide's label and centre from the CSVs it ships (labels.csv, metadata/metadata.csv)
and checks them against the slide's name (train slides: `normal_*` / `tumor_*`, whose number gives
the hospital; `test_*`: the challenge's test set), so the slides written are real Camelyon16 names
chosen from those CSVs: per centre, one normal and one tumour slide in train and in test, so that
each centre's test AUC is defined.

Bags hold a few dozen to a few hundred tiles (real slides reach FLamby's 10000-tile cap; FLamby's
collate_fn pads every bag to that cap, so the batch tensors have the real size whatever the bag
size). Features are non-negative like post-ReLU ResNet features; tumour slides carry a share of
tiles with raised features, so the task is learnable. Same seed, same bytes.

A directory whose path contains "test" is refused: FLamby would read every slide there as a test
slide (it looks for "test" in the whole path, not the file name), real data included.
"""
from __future__ import annotations

import csv
import sys
from pathlib import Path
from typing import Dict, List, Tuple

import numpy as np

from .flamby_package import flamby_file

FEATURE_DIM = 2048  # ResNet-50's, as FLamby's tiling_slides.py writes them
TILES_RANGE = (40, 400)  # tiles per stand-in slide; FLamby's collate_fn caps at 10000
SLIDES_PER_LABEL = {"train": 1, "test": 1}  # per centre and per label (normal, tumour)
REMOVED = {"normal_086", "test_049"}  # slides FLamby skips: removed from Camelyon16


def choose_slides() -> List[Tuple[str, int, str, int]]:
    """(slide, centre, split, label) for every slide to write, from FLamby's own CSVs."""
    tumour = {}
    with open(flamby_file("datasets", "fed_camelyon16", "labels.csv"), newline="") as f:
        for row in csv.DictReader(f):
            tumour[row["filenames"].split(".")[0].lower()] = row["tumor"] == "True"
    groups: Dict[Tuple[int, str, int], List[str]] = {}
    with open(flamby_file("datasets", "fed_camelyon16", "metadata", "metadata.csv"), newline="") as f:
        for row in csv.DictReader(f):
            slide = row["slide_name"].split(".")[0].lower()
            label = int(row["label"])
            if slide in REMOVED or slide not in tumour or tumour[slide] != bool(label):
                continue
            split = "test" if slide.startswith("test") else "train"
            groups.setdefault((int(float(row["hospital_corrected"])), split, label), []).append(slide)
    chosen = []
    for centre in (0, 1):
        for split, count in SLIDES_PER_LABEL.items():
            for label in (0, 1):
                slides = sorted(groups.get((centre, split, label), []))[:count]
                if len(slides) < count:
                    raise SystemExit(f"standin_data.py: FLamby's Camelyon16 metadata has no {split} slide "
                                     f"with label {label} in centre {centre}")
                chosen += [(slide, centre, split, label) for slide in slides]
    return chosen


def bag(rng: np.random.Generator, label: int) -> np.ndarray:
    tiles = int(rng.integers(TILES_RANGE[0], TILES_RANGE[1] + 1))
    features = rng.gamma(shape=1.0, scale=0.4, size=(tiles, FEATURE_DIM))
    if label:
        tumour_tiles = rng.random(tiles) < 0.2
        features[tumour_tiles, : FEATURE_DIM // 8] += 1.0
    return features.astype(np.float32)


def refuse_a_path_flamby_reads_as_test(directory: Path):
    """FLamby's class calls a slide a test slide when its full path contains "test" anywhere
    (`"test" not in str(slide).lower()`), so under such a directory every centre would have no
    training slide. Refused before anything is written."""
    if "test" in str(directory).lower():
        print(f"standin_data.py: {directory} contains 'test'; FLamby's Camelyon16 class would take every "
              "slide under it for a test slide (it looks for 'test' in the whole path), leaving no training "
              "data. Choose a directory whose path has no 'test' in it (the same holds for the real data).",
              file=sys.stderr)
        raise SystemExit(2)


def write(directory: Path, seed: int) -> List[str]:
    refuse_a_path_flamby_reads_as_test(directory)
    for slide, _centre, _split, label in choose_slides():
        number = int(slide.split("_")[1])
        kind = ("normal", "tumor", "test").index(slide.split("_")[0])
        rng = np.random.default_rng([seed, kind, number])
        np.save(directory / f"{slide}.tif.npy", bag(rng, label))
    return ["--set", f"data_args.data_path={directory}"]
