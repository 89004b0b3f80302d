"""Rank 0's part of a cut is written from its live tensors (staging.PartSaver.save(live=True)), not
from a copy. That is sound only because nothing changes them before rank 0's next aggregation,
which collects the write first. Here rank 0's background writes start 0.3 s late (a slow disk;
not the clients', which the in-process clients would wait for before rank 0 aggregates), so a
change made before the collect would land in the file: every cut's rank_0.pt must still be the
same bytes as in the run that writes every part at once from the live state, at the end of its
round (common_args.checkpoint_staging_mb: 0). FedAvg changes the model in place (its received
copies spent as scratch); FedAdam also keeps moments of its own. And rank 0's parts must not have
gone through a staged copy: that would pass the comparison without testing anything.

Runs go through flamby_mpi.cli.main(argv) with the in-process backend (bitwise the MPI run:
test_strategies_mpi.py)."""
import hashlib
import threading
import time

import pytest

from flamby_mpi import cli
from flamby_mpi.checkpoints import checkpoint, staging
from support.mpi import DEFAULT_CONFIG
from support.strategy_cases import CASES

pytestmark = pytest.mark.timeout(300)

ROUNDS = 4
WRITE_DELAY_S = 0.3


def _argv(case, output_dir, extra=()):
    return ["--cf", str(DEFAULT_CONFIG), "--set", f"train_args.federated_optimizer={case}", *CASES[case],
            "--set", "comm_args.backend=inprocess", "--set", "train_args.num_updates=3",
            "--set", f"train_args.comm_round={ROUNDS}", "--set", "validation_args.frequency_of_the_test=2",
            "--set", "tracking_args.tensorboard=false", "--set", "common_args.random_seed=3",
            "--set", f"common_args.keep_checkpoints={ROUNDS}", "--set", f"common_args.output_dir={output_dir}",
            "--quiet", *extra]


def _sha(path):
    return hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.mark.parametrize("case", ["FedAvg", "FedAdam"])
def test_rank_0_part_written_late_from_the_live_model_is_the_cut_s_state(case, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    at_once = tmp_path / "at_once"
    assert cli.main(_argv(case, at_once, ["--set", "common_args.checkpoint_staging_mb=0"])) == 0

    write = checkpoint.write_rank_state
    delayed = []

    def slow_disk(output_dir, round_idx, rank, *args, **kwargs):
        if rank == 0 and threading.current_thread().name.startswith("checkpoint-writer"):
            delayed.append((rank, round_idx))
            time.sleep(WRITE_DELAY_S)
        return write(output_dir, round_idx, rank, *args, **kwargs)

    stage = staging.stage
    staged = []

    def staged_copy(round_idx, rank, *args, **kwargs):
        staged.append(rank)
        return stage(round_idx, rank, *args, **kwargs)

    monkeypatch.setattr(checkpoint, "write_rank_state", slow_disk)
    monkeypatch.setattr(staging, "stage", staged_copy)
    late = tmp_path / "late"
    assert cli.main(_argv(case, late)) == 0
    assert (0, 1) in delayed and (0, ROUNDS - 1) in delayed, delayed  # rank 0's parts, in the background
    assert 0 not in staged and set(staged) == {1, 2, 3, 4}, staged  # from the live model; the clients' copied
    assert _sha(late / "global_model.pt") == _sha(at_once / "global_model.pt")
    for cut in range(1, ROUNDS + 1):
        name = f"round_{cut}/rank_0.pt"
        assert (late / "checkpoints" / name).read_bytes() == (at_once / "checkpoints" / name).read_bytes(), name
