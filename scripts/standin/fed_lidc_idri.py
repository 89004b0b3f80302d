"""Stand-in Fed-LIDC-IDRI: CT volumes and consensus masks where FLamby's FedLidcIdri reads them.

FLamby's preprocessing (dataset_creation_scripts/process_raw.py) leaves one folder per CT series,
named by its SeriesInstanceUID, holding `patient.nii.gz` (the CT in Hounsfield units, float32,
resampled to 1 mm voxels) and `mask_consensus.nii.gz` (the nodules, uint8). FLamby's LidcIdriRaw
finds every `*patient.nii.gz` under data_path, takes `mask_consensus.nii.gz` beside it, and looks
the folder's name up in FLamby's own metadata/metadata.csv (in FLamby's package) for its centre
(Manufacturer 0-3) and split. So the stand-in takes real SeriesInstanceUIDs from that file:
TRAIN_PER_CENTRE train and TEST_PER_CENTRE test series of each of FLamby's 4 centres.
(The preprocessing also writes `mask.nii.gz`, every reader's mask; FLamby's class never reads it.)

Shapes: real volumes are a few hundred voxels a side; FLamby's class crops or pads every volume
to 384^3 (its out_shape) before cutting 128^3 patches for the V-Net, so the size on disk does not
change what a rank holds in memory. The stand-in volumes are VOLUME_SHAPE, to keep the files small.
"""
from __future__ import annotations

import csv
import gzip
import os
from pathlib import Path
from typing import Dict, List

import numpy as np

CENTRES = 4  # FLamby's NUM_CLIENTS for fed_lidc_idri
TRAIN_PER_CENTRE = 2
TEST_PER_CENTRE = 1
VOLUME_SHAPE = (64, 64, 48)  # x, y, z at 1 mm


def series_by_centre_and_split() -> Dict[tuple, List[str]]:
    """FLamby's series, grouped by (centre, split), in FLamby's order, from FLamby's metadata file."""
    import flamby.datasets  # an empty package: FLamby's dataset modules are not imported

    metadata = Path(os.path.dirname(flamby.datasets.__file__)) / "fed_lidc_idri" / "metadata" / "metadata.csv"
    groups: Dict[tuple, List[str]] = {}
    with open(metadata, newline="") as handle:
        for row in csv.DictReader(handle):
            groups.setdefault((int(row["Manufacturer"]), row["Split"]), []).append(row["SeriesInstanceUID"])
    return groups


def _nifti_gz(array: np.ndarray) -> bytes:
    """A .nii.gz of `array` at 1 mm isotropic, with a zero gzip timestamp so equal seeds give equal bytes."""
    import nibabel as nib  # the lidc extra

    return gzip.compress(nib.Nifti1Image(array, np.eye(4)).to_bytes(), mtime=0)


def _series(rng: np.random.Generator):
    """One CT (HU, float32) with one or two nodules, and its consensus mask (uint8)."""
    grid = np.indices(VOLUME_SHAPE).astype(np.float32)
    ct = rng.normal(-800.0, 60.0, size=VOLUME_SHAPE).astype(np.float32)  # lung parenchyma
    mask = np.zeros(VOLUME_SHAPE, dtype=np.uint8)
    for _ in range(int(rng.integers(1, 3))):
        centre = rng.uniform(12, np.array(VOLUME_SHAPE) - 12)[:, None, None, None]
        radius = float(rng.uniform(3, 7))
        inside = np.sqrt(((grid - centre) ** 2).sum(0)) < radius
        mask[inside] = 1
        ct[inside] = rng.normal(20.0, 30.0, size=int(inside.sum()))  # a solid nodule
    return ct, mask


def write(directory: Path, seed: int) -> List[str]:
    from flamby_mpi.storage.safe_files import write_atomic

    rng = np.random.default_rng(seed)
    groups = series_by_centre_and_split()
    for centre in range(CENTRES):
        for split, count in (("train", TRAIN_PER_CENTRE), ("test", TEST_PER_CENTRE)):
            for uid in groups[(centre, split)][:count]:
                ct, mask = _series(rng)
                write_atomic(directory, Path(uid) / "patient.nii.gz", _nifti_gz(ct))
                write_atomic(directory, Path(uid) / "mask_consensus.nii.gz", _nifti_gz(mask))
    return ["--set", f"data_args.data_path={directory}"]
