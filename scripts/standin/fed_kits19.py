"""Stand-in Fed-KITS19: nnU-Net preprocessed cases where FLamby's FedKits19 reads them.

FLamby's Kits19Raw (flamby/datasets/fed_kits19/dataset.py), given a data path BASE, points
nnU-Net at BASE/kits19_preprocessing and reads
  Task064_KiTS_labelsFixed/nnUNetPlansv2.1_plans_3D.pkl         the plans: plans_per_stage[0]["patch_size"]
  Task064_KiTS_labelsFixed/nnUNetData_plans_v2.1_stage0/<case>.npz  data = (2, z, y, x) float32:
                                                                 channel 0 the CT, channel 1 the labels
  Task064_KiTS_labelsFixed/nnUNetData_plans_v2.1_stage0/<case>.pkl  the case's properties; FLamby reads
                                                                 "class_locations" to oversample foreground
for every case of FLamby's own metadata/thresholded_sites.csv (in FLamby's package, not in BASE):
it loads every case's .pkl of the split when the dataset is built, so all 96 cases are written
(74 train, 22 test, 6 centres), each tiny. The .pkl files are Python pickles, as nnU-Net writes
them and FLamby loads them (batchgenerators' load_pickle): FLamby's class unpickles whatever is
in this folder, so point data_path only at data you trust.

Shapes: nnU-Net's real plans for KiTS19 give patches of 80x160x160 voxels over volumes of a few
hundred voxels a side. FLamby's Baseline (nnU-Net's Generic_UNet, pooling 2x2x2 four times then
1x2x2) needs a patch divisible by 16 along z and 32 along y and x, and its instance norms need
more than one voxel at the bottom when training (16x32x32 leaves one: torch refuses it), so the
stand-in plans ask for a patch of 32x32x32 (two voxels at the bottom), over volumes of about
40^3; labels are nnU-Net's 0 (background), 1 (kidney), 2 (tumour).
"""
from __future__ import annotations

import csv
import io
import os
import pickle
import zipfile
from pathlib import Path
from typing import Dict, List

import numpy as np

TASK = Path("kits19_preprocessing") / "Task064_KiTS_labelsFixed"
PLANS = TASK / "nnUNetPlansv2.1_plans_3D.pkl"
CASES = TASK / "nnUNetData_plans_v2.1_stage0"
# The smallest patch FLamby's Baseline accepts (see the module docstring).
PATCH_SIZE = (32, 32, 32)
POOL_KERNELS = [[2, 2, 2], [2, 2, 2], [2, 2, 2], [2, 2, 2], [1, 2, 2]]
CONV_KERNELS = [[3, 3, 3]] * 6
SPACING = (0.78125, 0.78125, 0.78125)  # nnU-Net's target spacing for Task064 (mm)
# nnU-Net keeps at most this many voxel coordinates per class in class_locations.
MAX_LOCATIONS = 10000


def case_ids() -> List[str]:
    """FLamby's KiTS19 cases, in FLamby's order, from FLamby's own metadata file."""
    import flamby.datasets  # an empty package: FLamby's dataset modules are not imported

    metadata = Path(os.path.dirname(flamby.datasets.__file__)) / "fed_kits19" / "metadata" / "thresholded_sites.csv"
    with open(metadata, newline="") as handle:
        return [row["case_ids"] for row in csv.DictReader(handle)]


def _npz(arrays: Dict[str, np.ndarray]) -> bytes:
    """np.savez_compressed's format with a fixed timestamp per entry, so equal seeds give equal bytes."""
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", compression=zipfile.ZIP_DEFLATED) as archive:
        for name, array in arrays.items():
            entry = zipfile.ZipInfo(f"{name}.npy", date_time=(1980, 1, 1, 0, 0, 0))
            entry.compress_type = zipfile.ZIP_DEFLATED
            with archive.open(entry, "w", force_zip64=True) as handle:
                np.lib.format.write_array(handle, np.ascontiguousarray(array), allow_pickle=False)
    return buffer.getvalue()


def _case(rng: np.random.Generator):
    """One preprocessed case: (2, z, y, x) float32 (z-scored CT, labels) and its properties."""
    shape = tuple(int(n) for n in rng.integers(36, 45, size=3))
    grid = np.indices(shape).astype(np.float32)
    centre = np.array([s / 2 for s in shape], dtype=np.float32)[:, None, None, None]
    offset = rng.uniform(-2, 2, size=(3, 1, 1, 1)).astype(np.float32)
    radius = np.array([shape[0] / 4, shape[1] / 4, shape[2] / 4], dtype=np.float32)[:, None, None, None]
    distance = np.sqrt((((grid - centre - offset) / radius) ** 2).sum(0))
    labels = np.zeros(shape, dtype=np.float32)
    labels[distance < 1.0] = 1  # kidney
    labels[distance < 0.45] = 2  # tumour inside it
    ct = rng.normal(0.0, 1.0, size=shape).astype(np.float32) + labels
    data = np.stack([ct, labels]).astype(np.float32)
    locations = {}
    for label in (1, 2):
        voxels = np.argwhere(labels == label)
        if len(voxels) > MAX_LOCATIONS:
            voxels = voxels[rng.choice(len(voxels), MAX_LOCATIONS, replace=False)]
        locations[label] = voxels
    properties = {
        "original_size_of_raw_data": np.array(shape),
        "original_spacing": np.array(SPACING),
        "size_after_cropping": shape,
        "crop_bbox": [[0, shape[0]], [0, shape[1]], [0, shape[2]]],
        "classes": np.array([0.0, 1.0, 2.0], dtype=np.float32),
        "use_nonzero_mask_for_norm": {0: False},
        "size_after_resampling": shape,
        "spacing_after_resampling": np.array(SPACING),
        "class_locations": locations,
        "stand_in": True,
    }
    return data, properties


def _plans() -> dict:
    stage = {
        "batch_size": 2,
        "num_pool_per_axis": [4, 5, 5],
        "patch_size": np.array(PATCH_SIZE),
        "median_patient_size_in_voxels": np.array([40, 40, 40]),
        "current_spacing": np.array(SPACING),
        "original_spacing": np.array(SPACING),
        "do_dummy_2D_data_aug": False,
        "pool_op_kernel_sizes": POOL_KERNELS,
        "conv_kernel_sizes": CONV_KERNELS,
    }
    return {
        "num_stages": 1,
        "num_modalities": 1,
        "modalities": {0: "CT"},
        "normalization_schemes": {0: "CT"},
        "num_classes": 2,
        "all_classes": [1, 2],
        "base_num_features": 32,
        "use_mask_for_norm": {0: False},
        "keep_only_largest_region": None,
        "transpose_forward": [0, 1, 2],
        "transpose_backward": [0, 1, 2],
        "data_identifier": "nnUNetData_plans_v2.1",
        "conv_per_stage": 2,
        "plans_per_stage": {0: stage},
        "stand_in": "flamby-mpi scripts/standin/fed_kits19.py",
    }


def write(directory: Path, seed: int) -> List[str]:
    from flamby_mpi.storage.safe_files import write_atomic

    rng = np.random.default_rng(seed)
    write_atomic(directory, PLANS, pickle.dumps(_plans(), protocol=4))
    for case in case_ids():
        data, properties = _case(rng)
        write_atomic(directory, CASES / f"{case}.npz", _npz({"data": data}))
        write_atomic(directory, CASES / f"{case}.pkl", pickle.dumps(properties, protocol=4))
    return ["--set", f"data_args.data_path={directory}"]
