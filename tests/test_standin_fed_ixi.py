"""Stand-in Fed-IXI (scripts/standin/fed_ixi.py): FLamby's own FedIXITiny reads it, and the
launcher runs FLamby's 3-D U-Net on it under mpiexec and in process, bit for bit alike."""
import pytest

from support.standin_runs import (
    assert_metric_per_centre,
    run_standin_twins,
    tree_bytes,
    write_standin,
)

fed_ixi = pytest.importorskip("flamby.datasets.fed_ixi", reason="FLamby (with its IXI extra) is not installed")
torch = pytest.importorskip("torch")

TRAIN, TEST = 2, 1  # subjects per centre in the stand-in
CENTRE_NAMES = ("Guys", "HH", "IOP")  # FLamby's centre ids 0, 1, 2


@pytest.fixture(scope="module")
def standin(tmp_path_factory):
    directory = tmp_path_factory.mktemp("fed_ixi") / "data"
    return directory, write_standin("fed_ixi", directory)


def test_the_printed_line_points_the_launcher_at_the_data(standin):
    directory, launcher_args = standin
    assert launcher_args == ["--set", f"data_args.data_path={directory}"]


@pytest.mark.parametrize("centre", range(3))
@pytest.mark.parametrize("train", [True, False])
def test_flambys_class_reads_each_centre_and_split(standin, centre, train):
    directory, _ = standin
    assert fed_ixi.NUM_CLIENTS == 3
    dataset = fed_ixi.FedClass(center=centre, train=train, data_path=str(directory))
    assert len(dataset) == (TRAIN if train else TEST)
    # FLamby's centre (from the folder name) and split (from its metadata_tiny.csv) are the ones written.
    assert set(dataset.images_centers) == {CENTRE_NAMES[centre]}
    assert set(dataset.images_sets) == {"train" if train else "test"}
    x, y = next(iter(torch.utils.data.DataLoader(dataset, batch_size=fed_ixi.BATCH_SIZE)))
    n = min(fed_ixi.BATCH_SIZE, len(dataset))
    assert x.shape == (n, 1, 48, 60, 48) and x.dtype == torch.float32  # FLamby's common_shape
    assert y.shape == (n, 2, 48, 60, 48)  # one-hot brain mask
    assert torch.equal(y.sum(dim=1), torch.ones(n, 48, 60, 48))
    assert 0 < y[:, 1].mean() < 1  # some brain, some background
    loss = fed_ixi.BaselineLoss()(fed_ixi.Baseline()(x), y)
    assert torch.isfinite(loss)


def test_the_pooled_sets_hold_every_centre(standin):
    directory, _ = standin
    assert len(fed_ixi.FedClass(train=True, pooled=True, data_path=str(directory))) == 3 * TRAIN
    assert len(fed_ixi.FedClass(train=False, pooled=True, data_path=str(directory))) == 3 * TEST


def test_the_archive_folder_is_flambys(standin):
    from flamby.datasets.fed_ixi.common import FOLDER

    directory, _ = standin
    assert (directory / f"{FOLDER}.zip").is_file() and (directory / FOLDER / "IXI_sample").is_dir()


def test_same_seed_same_bytes_other_seed_other_volumes(standin, tmp_path):
    directory, _ = standin
    write_standin("fed_ixi", tmp_path / "again", seed=0)
    write_standin("fed_ixi", tmp_path / "other", seed=1)
    first = tree_bytes(directory)
    assert tree_bytes(tmp_path / "again") == first
    other = tree_bytes(tmp_path / "other")
    assert other.keys() == first.keys()
    assert all(other[name] != first[name] for name in first if name.endswith("_image.nii.gz"))


@pytest.mark.mpi
@pytest.mark.timeout(900)
def test_mpi_run_on_the_standin_has_a_metric_per_centre_and_equals_its_in_process_twin(standin, workdir):
    """Issue 20's acceptance for Fed-IXI: mpiexec -n 4 with the printed arguments, one round of one
    update; measured here: about 40 s and 5.6 GiB summed over the 4 ranks (1.5 GiB the largest)."""
    _, launcher_args = standin
    cwd, home, marker = workdir
    runs = run_standin_twins("fed_ixi", launcher_args, 3, cwd, home, marker)
    assert_metric_per_centre(runs.mpi_metrics, 3)
    assert runs.mpi_model_sha == runs.inprocess_model_sha
