#!/usr/bin/env python
"""FLamby's own in-RAM FedAvg on any FLamby dataset, with the settings of a flamby-mpi config: the
reference the per-dataset benchmark (scripts/benchmark.py --sections datasets) compares with.

    python scripts/bench/flamby_inram.py --cf config/fed_ixi.yaml [--set KEY=VALUE ...]

The config and --set arguments are read by flamby-mpi's own config reader and plan, so that the
data (FLamby's dataset class on the same data_path), the batch size, learning rate, optimizer,
num_updates, rounds and seed are exactly those of the MPI run given the same arguments. Training is
FLamby's: its FedAvg strategy class (flamby.strategies.fed_avg.FedAvg), every centre trained one
after another in this one process, seeded as FLamby's benchmark seeds it. Only FedAvg without
weight decay is FLamby's benchmark loop; other strategies are refused (exit 2).

Prints, as its last line, `RESULT {json}`: the rounds' times (each round's whole time and the
local updates inside it), the time to build data and models, the final evaluation's time, the
per-centre metrics (FLamby's evaluate_model_on_tests, or the dataset's own loader metric as
FLamby's benchmark uses for KITS19 and LIDC-IDRI), torch's threads and this process's peak RSS.
"""
from __future__ import annotations

import argparse
import json
import random
import resource
import sys
import time
from pathlib import Path

STARTED = time.monotonic()
REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO))

import numpy as np  # noqa: E402
import torch  # noqa: E402
from flamby.strategies.fed_avg import FedAvg  # noqa: E402
from flamby.utils import evaluate_model_on_tests  # noqa: E402

from flamby_mpi.config import ConfigError, load_config  # noqa: E402
from flamby_mpi.exit.errors import UserError  # noqa: E402
from flamby_mpi.plan import make_plan  # noqa: E402


class TimedFedAvg(FedAvg):
    """FLamby's FedAvg, unchanged, with the time of each centre's local updates added up per round."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.local_update_s = 0.0

    def _local_optimization(self, _model, dataloader_with_memory):
        tick = time.perf_counter()
        super()._local_optimization(_model, dataloader_with_memory)
        self.local_update_s += time.perf_counter() - tick


def refuse(message: str) -> int:
    print(f"flamby_inram.py: {message}", file=sys.stderr)
    return 2


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--cf", required=True, help="a flamby-mpi config (config/<dataset>.yaml)")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                        help="a config override, as launch_client.py takes it (repeatable)")
    args = parser.parse_args(argv)
    try:
        plan = make_plan(load_config(args.cf, args.set), quiet=True)
    except (ConfigError, UserError) as error:
        return refuse(str(error))
    if plan.strategy != "FedAvg" or plan.weight_decay is not None or plan.privacy is not None:
        return refuse("FLamby's in-RAM reference is its FedAvg without weight decay or differential privacy; "
                      f"this config asks for {plan.strategy}: use train_args.federated_optimizer=FedAvg")
    spec = plan.dataset
    # As FLamby's benchmark: every global stream seeded once, loaders shuffling from torch's.
    torch.manual_seed(plan.seed)
    np.random.seed(plan.seed)
    random.seed(plan.seed)

    def loader(centre: int, train: bool):
        return torch.utils.data.DataLoader(
            spec.center_dataset(centre, train=train), batch_size=plan.batch_size if train else plan.test_batch_size,
            shuffle=train, num_workers=plan.num_workers, collate_fn=spec.collate_fn)

    try:
        train = [loader(c, True) for c in plan.centres]
        test = [loader(c, False) for c in plan.centres]
        strategy = TimedFedAvg(train, spec.baseline(), spec.baseline_loss(), plan.optimizer_class,
                               plan.learning_rate, plan.num_updates, plan.rounds, seed=plan.seed)
    except UserError as error:  # missing data or weights, as the launcher says it
        return refuse(f"{error}" + (f"; {error.hint}" if getattr(error, "hint", None) else ""))
    setup_s = time.monotonic() - STARTED
    rounds = []
    for _ in range(plan.rounds):
        before, tick = strategy.local_update_s, time.perf_counter()
        strategy.perform_round()
        rounds.append({"round_s": time.perf_counter() - tick, "train_s": strategy.local_update_s - before})
    tick = time.perf_counter()
    model = strategy.models_list[0].model
    if spec.loader_metric is not None:
        metrics = {f"client_test_{i}": float(spec.loader_metric(model, dl, False)) for i, dl in enumerate(test)}
    else:
        metrics = {k: float(v) for k, v in evaluate_model_on_tests(model, test, spec.metric, use_gpu=False).items()}
    result = {
        "dataset": spec.name, "centres": list(plan.centres), "batch_size": plan.batch_size,
        "train_samples": [len(dl.dataset) for dl in train], "rounds_planned": plan.rounds,
        "num_updates": plan.num_updates, "threads": torch.get_num_threads(), "setup_s": setup_s,
        "rounds": rounds, "eval_s": time.perf_counter() - tick, "metrics": metrics,
        "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
    }
    print("RESULT " + json.dumps(result), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
