"""DataLoader workers in one process (flamby_mpi/runtime/loader_workers.py, training.make_loader):
the same batches in the same order as 0 workers, over several epochs, for the built-in dataset and
the Fed-IXI and Fed-Camelyon16 stand-ins (what a worker unpickles; Fed-Heart-Disease's real data
runs under mpiexec in tests/test_loader_workers.py); workers started by the fork server, not
forked from this process; a killed worker named where the batch is drawn, and no SIGCHLD handler
left behind to raise elsewhere; a resume with workers drawing random augmentations bitwise the
uninterrupted run."""
import hashlib
import os
import signal
import time

import pytest
import torch

from flamby_mpi import cli
from flamby_mpi.datasets.synthetic import SyntheticCenter
from flamby_mpi.federation.training import DataLoaderWithMemory, evaluate, make_loader
from flamby_mpi.runtime import loader_workers
from support.mpi import DEFAULT_CONFIG
from support.optional import import_or_skip
from support.standin_runs import write_standin

pytestmark = pytest.mark.timeout(300)


def _synthetic(train=True):
    return SyntheticCenter(1, train, seed=0, num_centers=4, samples_per_center=120)


def _batches(dataset, num_workers, draws, batch_size=8, collate_fn=None):
    """`draws` batches through DataLoaderWithMemory (epochs restart as in training), as bytes."""
    loader = make_loader(dataset, batch_size, shuffle=True, num_workers=num_workers,
                         generator=torch.Generator().manual_seed(3), collate_fn=collate_fn)
    memory = DataLoaderWithMemory(loader)
    out = []
    for _ in range(draws):
        x, y = memory.get_samples()
        out.append(hashlib.sha256(x.numpy().tobytes() + y.numpy().tobytes()).hexdigest())
    return out


def test_two_workers_draw_the_batches_of_zero_workers_over_three_epochs():
    dataset = _synthetic()
    draws = 3 * -(-len(dataset) // 8) + 2  # three epochs and into a fourth
    assert _batches(dataset, 2, draws) == _batches(dataset, 0, draws)


class _OneTensorPerSample(torch.utils.data.Dataset):
    """Fed-Heart-Disease's way: a tensor of its own per sample, here 300 of them, more than the
    252 file descriptors that one message to the fork server can carry."""

    def __init__(self):
        generator = torch.Generator().manual_seed(0)
        self.x = [torch.randn(13, generator=generator) for _ in range(300)]
        self.y = [torch.tensor([i % 2], dtype=torch.float32) for i in range(300)]

    def __len__(self):
        return len(self.x)

    def __getitem__(self, index):
        return self.x[index], self.y[index]


def test_a_dataset_of_one_tensor_per_sample_reaches_the_workers():
    """It used to end the run with multiprocessing's "too many fds" (the pooled test set of
    Fed-HeartDisease, evaluated on rank 0 after the last round); torch's sharing strategy is put back."""
    import torch.multiprocessing

    before = torch.multiprocessing.get_sharing_strategy()
    dataset = _OneTensorPerSample()
    draws = -(-len(dataset) // 8) + 2  # an epoch and into the next
    assert _batches(dataset, 1, draws) == _batches(dataset, 0, draws)
    assert torch.multiprocessing.get_sharing_strategy() == before
    model = torch.nn.Linear(13, 1)
    loader = make_loader(dataset, 16, shuffle=False, num_workers=1)
    assert evaluate(model, loader, lambda y, p: float(len(y)), torch.device("cpu")).metric == len(dataset)


def test_a_loader_with_workers_uses_the_fork_server_and_not_persistent_workers():
    loader = make_loader(_synthetic(), 8, shuffle=True, num_workers=2)
    assert loader.multiprocessing_context.get_start_method() == "forkserver"
    assert not loader.persistent_workers  # it would draw one base seed for all epochs (module docstring)
    assert make_loader(_synthetic(), 8, shuffle=True, num_workers=0).multiprocessing_context is None


class _Parent(torch.utils.data.Dataset):
    """Each sample is the pid of the process that loaded it and of its parent."""

    def __len__(self):
        return 8

    def __getitem__(self, idx):
        return torch.tensor([os.getpid(), os.getppid()]), torch.tensor(0)


def test_workers_are_not_children_of_this_process():
    loader = make_loader(_Parent(), 2, shuffle=False, num_workers=2)
    pids = torch.cat([x for x, _ in loader])
    assert os.getpid() not in pids[:, 0].tolist()  # loaded in other processes...
    assert os.getpid() not in pids[:, 1].tolist()  # ...that this one did not fork


class _Slow(torch.utils.data.Dataset):
    def __len__(self):
        return 400

    def __getitem__(self, idx):
        time.sleep(0.02)
        return torch.tensor([float(idx)]), torch.tensor(0.0)


def test_a_killed_worker_is_named_where_the_batch_is_drawn_and_torchs_handler_is_not_left():
    before = signal.getsignal(signal.SIGCHLD)
    loader = make_loader(_Slow(), 4, shuffle=True, num_workers=2, generator=torch.Generator().manual_seed(0),
                         role="centre 3's training data")
    memory = DataLoaderWithMemory(loader)
    memory.get_samples()
    # torch's SIGCHLD handler would raise from whatever line runs when a worker dies
    assert signal.getsignal(signal.SIGCHLD) is before
    victim = memory._iterator._workers[0]
    os.kill(victim.pid, signal.SIGKILL)
    with pytest.raises(loader_workers.DataWorkerDied) as raised:
        for _ in range(len(loader) + 1):
            memory.get_samples()
    message = str(raised.value)
    assert message.startswith("centre 3's training data: its data-loading worker")
    assert f"pid {victim.pid}" in message and "killed by signal SIGKILL" in message
    assert "data_args.num_workers" in raised.value.hint
    assert raised.value.exit_code == 1


class _KilledAtFive(_Slow):
    """Sample 5 kills the worker loading it."""

    def __getitem__(self, idx):
        if idx == 5 and torch.utils.data.get_worker_info() is not None:
            os.kill(os.getpid(), signal.SIGKILL)
        return super().__getitem__(idx)


def test_a_killed_worker_during_evaluation_is_named():
    loader = make_loader(_KilledAtFive(), 4, shuffle=False, num_workers=2, role="centre 0's test data")
    with pytest.raises(loader_workers.DataWorkerDied, match="centre 0's test data: its data-loading worker"):
        evaluate(torch.nn.Linear(1, 1), loader, lambda y_true, y_pred: 0.0, torch.device("cpu"))


# ---- FLamby's datasets: what the worker unpickles -----------------------------------------------

def _flamby_batches_equal(dataset, collate_fn=None, batch_size=2):
    draws = -(-len(dataset) // batch_size) + 1  # into a second epoch
    assert _batches(dataset, 2, draws, batch_size, collate_fn) == _batches(dataset, 0, draws, batch_size, collate_fn)


@pytest.mark.heavy  # 75 s on a busy 2-core machine: each worker of this process imports MONAI itself
def test_fed_ixi_standin_two_workers_zero_workers_same_batches(tmp_path):
    ixi = import_or_skip("flamby.datasets.fed_ixi")
    write_standin("fed_ixi", tmp_path / "ixi")
    _flamby_batches_equal(ixi.FedClass(center=0, train=True, data_path=str(tmp_path / "ixi")))


def test_fed_camelyon16_standin_two_workers_zero_workers_same_batches():
    import shutil
    import tempfile
    from pathlib import Path

    cam = import_or_skip("flamby.datasets.fed_camelyon16")
    # FLamby calls every slide whose path holds "test" a test slide (pytest's paths do)
    root = Path(tempfile.mkdtemp(prefix="flamby-mpi-cam16-", dir="/tmp"))
    try:
        write_standin("fed_camelyon16", root / "data")
        dataset = cam.FedClass(center=0, train=True, data_path=str(root / "data"))
        _flamby_batches_equal(dataset, collate_fn=cam.collate_fn)
    finally:
        shutil.rmtree(root, ignore_errors=True)


# ---- a resume with workers whose samples are random -----------------------------------------------

RESUME = ["--cf", str(DEFAULT_CONFIG), "--set", "comm_args.backend=inprocess",
          "--set", "data_args.dataset=support.worker_probe_dataset", "--set", "data_args.num_workers=2",
          "--set", "train_args.num_updates=4", "--set", "validation_args.frequency_of_the_test=2",
          "--set", "tracking_args.tensorboard=false", "--set", "common_args.random_seed=5", "--quiet"]


def _resume_argv(out, rounds, extra=()):
    return RESUME + ["--set", f"train_args.comm_round={rounds}", "--set", f"common_args.output_dir={out}", *extra]


def _sha(path):
    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_a_resume_with_workers_drawing_random_augmentations_is_bitwise_the_uninterrupted_run(
        tmp_path, monkeypatch):
    """3 rounds of 4 batches of 16 end mid-epoch (about 150 samples a centre): the resume replays the
    epoch's batches through the workers, whose random streams come from the client's generator."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("WORKER_PROBE_AUGMENT", "1")
    full, cut = tmp_path / "full", tmp_path / "cut"
    assert cli.main(_resume_argv(full, 5)) == 0
    assert cli.main(_resume_argv(cut, 3)) == 0
    assert cli.main(_resume_argv(cut, 5, ["--resume"])) == 0
    assert _sha(full / "global_model.pt") == _sha(cut / "global_model.pt")
    assert (full / "metrics.csv").read_text() == (cut / "metrics.csv").read_text()
    # The augmentations are drawn in the workers, from their own seeded streams: 0 workers draw them
    # from the client's streams instead, so the model differs (docs/datasets.md says so).
    zero = tmp_path / "zero"
    assert cli.main(_resume_argv(zero, 5, ["--set", "data_args.num_workers=0"])) == 0
    assert _sha(zero / "global_model.pt") != _sha(full / "global_model.pt")
