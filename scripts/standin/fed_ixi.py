"""Stand-in Fed-IXI (IXI Tiny): T1 brain volumes and brain masks, in FLamby's download layout.

What FLamby's `FedIXITiny(data_path=DIR)` reads, and so what is written:
- `DIR/7kd5wj7v7p-3/IXI_sample/<subject>/T1/<subject>_image.nii.gz` and `.../label/<subject>_label.nii.gz`:
  the extracted archive. FLamby lists the subject folders here; the centre is the folder name's
  second field (`IXI012-HH-1211`: HH) and the train/test split is the row of the subject's IXI id
  in FLamby's own `metadata/metadata_tiny.csv`.
- `DIR/7kd5wj7v7p-3.zip`: the archive itself, holding the same files. FLamby loads every image and
  mask from the zip (not from the extracted folder), as its download leaves both.

Subjects are real IXI ids taken from FLamby's metadata (per centre, the first ids of each split whose
scanner column names that centre), so FLamby puts each one in the centre and split it is written
for. Volumes are IXI Tiny's 83 x 44 x 55 voxels (FLamby resizes them to 48 x 60 x 48): an int16
ellipsoid "brain" with noise and its binary mask, different per subject and per seed. Files are
byte-for-byte the same for the same seed (gzip and zip timestamps fixed).
"""
from __future__ import annotations

import csv
import gzip
import zipfile
from pathlib import Path
from typing import Dict, List, Tuple

import numpy as np

from .flamby_package import flamby_file

# FLamby's fed_ixi/common.py FOLDER: the archive's name, from the download URL.
ARCHIVE_FOLDER = "7kd5wj7v7p-3"
SHAPE = (83, 44, 55)  # IXI Tiny's volume size
# FLamby's CENTER_LABELS, and metadata_tiny.csv's Manufacturer column for the same centres.
CENTRES = ("Guys", "HH", "IOP")
SUBJECTS_PER_SPLIT = {"train": 2, "test": 1}  # per centre; FLamby's BATCH_SIZE is 2


def choose_subjects() -> List[Tuple[int, str, str]]:
    """(IXI id, centre, split) for every subject to write, from FLamby's metadata_tiny.csv."""
    by_centre: Dict[Tuple[int, str], List[int]] = {}
    with open(flamby_file("datasets", "fed_ixi", "metadata", "metadata_tiny.csv"), newline="") as f:
        for row in csv.DictReader(f):
            by_centre.setdefault((int(row["Manufacturer"]), row["Split"]), []).append(int(row["Patient ID"]))
    chosen = []
    for code, centre in enumerate(CENTRES):
        for split, count in SUBJECTS_PER_SPLIT.items():
            ids = sorted(by_centre.get((code, split), []))[:count]
            if len(ids) < count:
                raise SystemExit(f"standin_data.py: FLamby's metadata_tiny.csv has fewer than {count} "
                                 f"{split} subjects for {centre}")
            chosen += [(patient_id, centre, split) for patient_id in ids]
    return chosen


def volume_and_mask(rng: np.random.Generator) -> Tuple[np.ndarray, np.ndarray]:
    """An ellipsoid of brain-like intensity in noise, and the ellipsoid as a 0/1 mask."""
    axes = [np.linspace(-1.0, 1.0, n) for n in SHAPE]
    grid = np.meshgrid(*axes, indexing="ij")
    centre = rng.uniform(-0.1, 0.1, size=3)
    radii = rng.uniform(0.6, 0.85, size=3)
    inside = sum(((g - c) / r) ** 2 for g, c, r in zip(grid, centre, radii, strict=True)) <= 1.0
    image = rng.normal(30.0, 10.0, SHAPE) + inside * rng.normal(400.0, 60.0, SHAPE)
    return np.clip(image, 0, 32767).astype(np.int16), inside.astype(np.uint8)


def nifti_gz(array: np.ndarray) -> bytes:
    """A .nii.gz file's bytes, with a fixed gzip time so that the same data gives the same bytes."""
    import nibabel as nib  # FLamby's IXI extra; imported here so a missing one names itself

    image = nib.Nifti1Image(array, affine=np.eye(4))
    return gzip.compress(image.to_bytes(), compresslevel=6, mtime=0)


def write(directory: Path, seed: int) -> List[str]:
    archive_entries = []
    for index, (patient_id, centre, _split) in enumerate(choose_subjects()):
        rng = np.random.default_rng([seed, patient_id])
        image, mask = volume_and_mask(rng)
        subject = f"IXI{patient_id:03d}-{centre}-{1000 + index:04d}"
        for folder, suffix, array in (("T1", "image", image), ("label", "label", mask)):
            relative = Path(ARCHIVE_FOLDER, "IXI_sample", subject, folder, f"{subject}_{suffix}.nii.gz")
            data = nifti_gz(array)
            target = directory / relative
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_bytes(data)
            archive_entries.append((relative.as_posix(), data))
    with zipfile.ZipFile(directory / f"{ARCHIVE_FOLDER}.zip", "w", zipfile.ZIP_STORED) as archive:
        for name, data in archive_entries:
            archive.writestr(zipfile.ZipInfo(name, date_time=(1980, 1, 1, 0, 0, 0)), data)
    return ["--set", f"data_args.data_path={directory}"]
