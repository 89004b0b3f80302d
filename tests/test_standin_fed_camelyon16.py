"""Stand-in Fed-Camelyon16 (scripts/standin/fed_camelyon16.py): FLamby's own FedCamelyon16 reads
it, and the launcher runs FLamby's attention-MIL model on it, batched with FLamby's collate_fn,
under mpiexec and in process, bit for bit alike."""
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np
import pytest

from support.standin_runs import (
    STANDIN_SCRIPT,
    assert_metric_per_centre,
    run_standin_twins,
    tree_bytes,
    write_standin,
)

cam = pytest.importorskip("flamby.datasets.fed_camelyon16", reason="FLamby is not installed")
torch = pytest.importorskip("torch")

MAX_TILES = 10000  # FLamby's collate_fn pads (and cuts) every bag to this many tiles
PER_SPLIT = 2  # slides per centre and split: one normal, one tumour


@pytest.fixture(scope="module")
def no_test_in_path():
    """A scratch directory whose path has no "test" in it (pytest's own have: pytest-of-USER):
    FLamby's Camelyon16 class calls every slide whose full path contains "test" a test slide."""
    root = Path(tempfile.mkdtemp(prefix="flamby-mpi-cam16-", dir="/tmp"))
    assert "test" not in str(root).lower()
    yield root
    shutil.rmtree(root, ignore_errors=True)


@pytest.fixture(scope="module")
def standin(no_test_in_path):
    directory = no_test_in_path / "data"
    return directory, write_standin("fed_camelyon16", directory)


def test_a_directory_with_test_in_its_path_is_refused_before_writing(tmp_path):
    """pytest's tmp_path has "test" in it (pytest-of-USER): FLamby would find no training slide there."""
    directory = tmp_path / "data"
    done = subprocess.run([sys.executable, str(STANDIN_SCRIPT), "fed_camelyon16", str(directory)],
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 2, done.stdout + done.stderr
    assert "contains 'test'" in done.stderr and "Traceback" not in done.stderr
    assert not list(directory.glob("*.npy"))


def test_the_printed_line_points_the_launcher_at_the_data(standin):
    directory, launcher_args = standin
    assert launcher_args == ["--set", f"data_args.data_path={directory}"]


def test_every_slide_is_a_bag_of_2048_dim_features_of_its_own_size(standin):
    directory, _ = standin
    bags = [np.load(path) for path in sorted(directory.glob("*.tif.npy"))]
    assert len(bags) == 2 * 2 * PER_SPLIT
    assert all(b.dtype == np.float32 and b.ndim == 2 and b.shape[1] == 2048 for b in bags)
    sizes = [b.shape[0] for b in bags]
    assert len(set(sizes)) > 1 and max(sizes) <= MAX_TILES


@pytest.mark.parametrize("centre", range(2))
@pytest.mark.parametrize("train", [True, False])
def test_flambys_class_reads_each_centre_and_split(standin, centre, train):
    directory, _ = standin
    assert cam.NUM_CLIENTS == 2
    dataset = cam.FedClass(center=centre, train=train, data_path=str(directory))
    assert len(dataset) == PER_SPLIT
    # FLamby's labels (from its CSVs, checked against the slide names): both classes in every set,
    # so every centre's test AUC is defined.
    assert sorted(dataset.features_labels) == [0, 1]
    assert set(dataset.features_centers) == {centre}
    loader = torch.utils.data.DataLoader(dataset, batch_size=cam.BATCH_SIZE, collate_fn=cam.collate_fn)
    x, y = next(iter(loader))
    assert x.shape == (PER_SPLIT, MAX_TILES, 2048) and y.shape == (PER_SPLIT, 1)
    logits = cam.Baseline()(x)
    assert torch.isfinite(cam.BaselineLoss()(logits, y))
    assert np.isfinite(cam.metric(y.numpy(), logits.detach().numpy()))


def test_the_pooled_sets_hold_every_centre(standin):
    directory, _ = standin
    for train in (True, False):
        assert len(cam.FedClass(train=train, pooled=True, data_path=str(directory))) == 2 * PER_SPLIT


def test_same_seed_same_bytes_other_seed_other_features(standin, no_test_in_path):
    directory, _ = standin
    write_standin("fed_camelyon16", no_test_in_path / "again", seed=0)
    write_standin("fed_camelyon16", no_test_in_path / "other", seed=1)
    first = tree_bytes(directory)
    assert tree_bytes(no_test_in_path / "again") == first
    other = tree_bytes(no_test_in_path / "other")
    assert other.keys() == first.keys() and all(other[name] != first[name] for name in first)


@pytest.mark.mpi
@pytest.mark.timeout(900)
def test_mpi_run_on_the_standin_has_a_metric_per_centre_and_equals_its_in_process_twin(standin, workdir):
    """Issue 20's acceptance for Fed-Camelyon16: mpiexec -n 3 with the printed arguments, one round
    of one update (FLamby's batch size 16; the stand-in's 2 slides per centre make a batch of 2
    bags padded to 10000 tiles); measured here: about 15 s and 2.8 GiB summed over the 3 ranks."""
    _, launcher_args = standin
    cwd, home, marker = workdir
    runs = run_standin_twins("fed_camelyon16", launcher_args, 2, cwd, home, marker)
    assert_metric_per_centre(runs.mpi_metrics, 2)
    assert runs.mpi_model_sha == runs.inprocess_model_sha
