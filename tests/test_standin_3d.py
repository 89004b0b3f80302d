"""The 3-D datasets on stand-in data: Fed-KITS19 (nnU-Net) and Fed-LIDC-IDRI (V-Net).

scripts/standin_data.py writes each in FLamby's own layout; FLamby's own classes read it (through
flamby_mpi's DatasetSpec, as a run does). The MPI runs are heavy (7 ranks of about 1.2 GB for
KITS19; LIDC-IDRI needs a GPU and several GB per rank): `pytest -m heavy`.
"""
import math
import sys
from types import SimpleNamespace

import pytest

from support.mpi import LAUNCHER, REPO, run_job
from support.mpi import test_env as env_for
from support.standin_runs import (
    assert_metric_per_centre,
    run_standin_twins,
    tree_bytes,
    write_standin,
)


def _write(dataset, directory, seed=0):
    """Runs scripts/standin_data.py; returns the launcher arguments of its last line."""
    args = write_standin(dataset, directory, seed)
    assert args == ["--set", f"data_args.data_path={directory}"]
    return args


def _spec(dataset, directory):
    from flamby_mpi.datasets import resolve_dataset

    data_args = SimpleNamespace(dataset=dataset, data_path=str(directory), debug=False, pretrained_weights_dir=None)
    return resolve_dataset(data_args, seed=0)


@pytest.fixture
def kits19():
    pytest.importorskip("flamby.datasets.fed_kits19", reason="FLamby's kits19 extra is not installed")


@pytest.fixture
def lidc():
    pytest.importorskip("flamby.datasets.fed_lidc_idri", reason="FLamby's lidc extra is not installed")


def test_kits19_standin_is_deterministic_and_read_by_flamby_for_every_centre(tmp_path, kits19):
    first, again, other = tmp_path / "a", tmp_path / "b", tmp_path / "c"
    _write("fed_kits19", first)
    _write("fed_kits19", again)
    _write("fed_kits19", other, seed=1)
    assert tree_bytes(first) == tree_bytes(again)
    assert tree_bytes(first) != tree_bytes(other)

    spec = _spec("fed_kits19", first)  # FedKits19 itself takes no data_path: data_path_to_base.py
    assert spec.num_clients == 6
    sizes = {}
    for centre in range(6):
        for train in (True, False):
            dataset = spec.center_dataset(centre, train=train)
            x, y = dataset[0]
            assert x.shape == y.shape == (1, 32, 32, 32)  # the stand-in plans' patch
            assert set(y.unique().tolist()) <= {0.0, 1.0, 2.0}
            sizes[centre, train] = len(dataset)
    # FLamby's own split of its 96 cases (metadata/thresholded_sites.csv).
    assert sum(n for (_, train), n in sizes.items() if train) == 74
    assert sum(n for (_, train), n in sizes.items() if not train) == 22
    assert len(spec.pooled_dataset(train=False)) == 22


@pytest.mark.heavy
def test_lidc_idri_standin_is_read_by_flamby_for_every_centre(tmp_path, lidc):
    """Heavy: FLamby pads every volume to 384^3 and cuts 27 test patches of 128^3 (about 5 GB)."""
    directory = tmp_path / "lidc"
    _write("fed_lidc_idri", directory)
    spec = _spec("fed_lidc_idri", directory)
    assert spec.num_clients == 4
    for centre in range(4):
        for train, patches in ((True, 2), (False, 27)):
            dataset = spec.center_dataset(centre, train=train)
            assert len(dataset) == (2 if train else 1)
            x, y = dataset[0]
            assert x.shape == y.shape == (patches, 128, 128, 128)
            assert 0.0 <= float(x.min()) and float(x.max()) <= 1.0  # FLamby's ClipNorm
            if train:
                assert int(y.sum()) > 0  # FLamby's sampler centres patches on the nodules


def _mpi_equals_the_twin(dataset, centres, workdir):
    """One round of one update under mpiexec -n centres+1 and in process: a metric per centre and
    pooled, the same global_model.pt and the same metrics."""
    cwd, home, marker = workdir
    runs = run_standin_twins(dataset, _write(dataset, cwd / "data"), centres, cwd, home, marker, deadline_s=600)
    assert_metric_per_centre(runs.mpi_metrics, centres)
    assert math.isfinite(runs.mpi_metrics["pooled"]), runs.mpi_metrics
    assert runs.mpi_model_sha == runs.inprocess_model_sha
    assert runs.mpi_metrics == runs.inprocess_metrics
    print(f"\n{dataset} mpiexec -n {centres + 1}: wall {runs.mpi_seconds:.1f} s, metrics "
          + ", ".join(f"{k}={v:.4f}" for k, v in runs.mpi_metrics.items()))


@pytest.mark.heavy
@pytest.mark.mpi
def test_kits19_one_round_under_mpi_equals_the_in_process_twin(workdir, kits19):
    _mpi_equals_the_twin("fed_kits19", 6, workdir)


@pytest.mark.parametrize("using_gpu", ["false", "true"])
def test_lidc_idri_on_cpu_is_refused_before_training(workdir, lidc, using_gpu):
    """FLamby's LIDC-IDRI loss calls .cuda(): on a CPU the run stops before training, exit 2, saying
    so: from the config (using_gpu false), or naming the client ranks that found no GPU (using_gpu
    true); nothing is made either way."""
    import torch

    if using_gpu == "true" and torch.cuda.is_available():
        pytest.skip("a GPU is visible here")
    cwd, home, _ = workdir
    job = run_job([sys.executable, str(LAUNCHER), "--cf", str(REPO / "config" / "fed_lidc_idri.yaml"),
                   "--set", f"data_args.data_path={cwd}", "--set", f"device_args.using_gpu={using_gpu}",
                   "--set", "comm_args.backend=inprocess", "--set", f"common_args.output_dir={cwd / 'out'}"],
                  cwd, env_for(home), 120)
    assert job.returncode == 2, job.output
    assert ".cuda()" in job.stderr and "Traceback" not in job.output
    if using_gpu == "false":
        assert "device_args.using_gpu" in job.stderr
    else:
        assert "rank(s) 1, 2, 3, 4 have no GPU" in job.stderr
    assert not (cwd / "out").exists()  # either way refused before the output directory is made


def test_the_check_of_lidc_idri_on_a_host_without_a_gpu_checks_the_data_and_says_why_not_memory(tmp_path, lidc):
    """A login node seldom has a GPU: the check showed torch's raw 'Found no NVIDIA driver' from its
    training step and said not ready. The data is checked, and the memory line says why it was not
    measured, as the run's own refusal does."""
    import torch

    if torch.cuda.is_available():
        pytest.skip("a GPU is visible here")
    home = tmp_path / "home"
    home.mkdir()
    args = _write("fed_lidc_idri", tmp_path / "data")
    job = run_job([sys.executable, "-m", "flamby_mpi", "check", "--cf", str(REPO / "config" / "fed_lidc_idri.yaml"),
                   *args, "--set", "data_args.centers=[0]"], tmp_path, env_for(home), 180)
    assert job.returncode == 0, job.output
    assert "NVIDIA" not in job.output and "Traceback" not in job.output
    assert "memory per rank not measured: one training step needs a GPU" in job.stdout and ".cuda()" in job.stdout
    assert "ok" in [line.split()[-1] for line in job.stdout.splitlines() if line.startswith("0 ")]


@pytest.mark.heavy
@pytest.mark.mpi
def test_lidc_idri_one_round_under_mpi_equals_the_in_process_twin(workdir, lidc):
    import torch

    if not torch.cuda.is_available():
        pytest.skip("FLamby's Fed-LIDC-IDRI loss calls .cuda(): needs a GPU")
    _mpi_equals_the_twin("fed_lidc_idri", 4, workdir)
