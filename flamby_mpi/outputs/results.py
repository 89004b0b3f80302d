"""The output contract, read by tools outside the project (docs/running.md, section "Outputs").

In the output directory: results.json, results.csv (FLamby's benchmark layout),
metrics.csv (one row per evaluated round and test set), rounds.csv (one row per
training round and centre: times, bytes, loss; telemetry.py) and global_model.pt
(`torch.save(state_dict)`); config.yaml (the resolved config) is written by the
driver when the run starts. Files are written by flamby_mpi.storage.safe_files.write_atomic (a
fresh temporary name, then a rename), so a reader never sees half a file, nothing is written
through a link, and a full disk raises safe_files.StorageError with no partial file left.
"""
from __future__ import annotations

import csv
import io
import json
import math
from typing import Dict, Optional

from ..storage import safe_files, torch_files

RESULTS_CSV_COLUMNS = ["Test", "Method", "Metric", "seed", "learning_rate", "optimizer_class", "num_updates",
                       "rounds", "dp_target_epsilon", "dp_target_delta", "dp_max_grad_norm"]


def _json_number(value):
    return None if value is None or (isinstance(value, float) and math.isnan(value)) else value


def flamby_method_name(strategy: str, num_updates: int) -> str:
    """FLamby names a federated method by strategy and local updates, e.g. FedAvg100."""
    return f"{strategy}{num_updates}"


def write_results(plan, server_run, timing: Dict[str, float], world_size: int,
                  extra: Optional[Dict] = None) -> Dict:
    output_dir = plan.output_dir
    metrics = {k: _json_number(v) for k, v in (server_run.final_metrics or {}).items()}
    strategy = plan.strategy
    results = {
        "run_id": plan.run_id,
        "dataset": plan.dataset.name,
        "strategy": strategy,
        # The strategy's own hyperparameters as used, defaults filled in (e.g. Cyclic's pass_model_on).
        "strategy_hyperparameters": dict(server_run.strategy.hp),
        # FLamby's differential privacy (opacus) on every client, or null: off.
        "differential_privacy": None if plan.privacy is None else {
            "target_epsilon": plan.privacy.target_epsilon, "target_delta": plan.privacy.target_delta,
            "max_grad_norm": plan.privacy.max_grad_norm},
        "seed": plan.seed,
        "num_clients": plan.num_clients,
        # FLamby's indices of the centres trained, in rank order (data_args.centers, default all)
        "centres": list(plan.centres),
        "world_size": world_size,
        "rounds_planned": plan.rounds,
        "rounds_completed": server_run.rounds_completed,
        "num_updates": plan.num_updates,
        "batch_size": plan.batch_size,
        "learning_rate": plan.learning_rate,
        "optimizer": plan.optimizer_name,
        "weight_decay": plan.weight_decay,  # null: none passed, the optimizer's own default
        "metrics": metrics,
        "pooled_test": plan.pooled_test,
        "devices": {f"client_{c}": d for c, d in sorted(server_run.devices.items())},
        "timing": {k: round(v, 3) for k, v in timing.items()},
        # Summed over every exchange; rounds.csv has them per round and centre.
        "traffic": server_run.round_log.summary(),
    }
    if extra:
        results.update(extra)

    # Streamed into the file: the model is not held a second time in memory.
    safe_files.write_atomic(output_dir, "global_model.pt",
                            lambda handle: torch_files.save(server_run.model.state_dict(), handle, crc32=True))

    rows = io.StringIO()
    writer = csv.writer(rows)
    writer.writerow(RESULTS_CSV_COLUMNS)
    method = flamby_method_name(strategy, plan.num_updates)
    # FLamby's own columns for it (its benchmark's CSVs), empty when it is off
    privacy_columns = ["", "", ""] if plan.privacy is None else [
        plan.privacy.target_epsilon, plan.privacy.target_delta, plan.privacy.max_grad_norm]
    test_names = [k for k in metrics if k.startswith("client_test_")]
    if metrics.get("pooled") is not None:
        test_names.append("pooled")
    for name in test_names:
        writer.writerow(["Pooled Test" if name == "pooled" else name, method, metrics[name], plan.seed,
                         plan.learning_rate, f"<class '{plan.optimizer_name}'>",
                         plan.num_updates, plan.rounds, *privacy_columns])
    safe_files.write_atomic(output_dir, "results.csv", rows.getvalue().encode())

    safe_files.write_atomic(output_dir, "rounds.csv", server_run.round_log.csv_text().encode())

    history = io.StringIO()
    writer = csv.writer(history)
    writer.writerow(["round", "test", "metric", "num_samples"])
    for row in server_run.history:
        writer.writerow([row["round"], row["test"], row["metric"], row["num_samples"]])
    safe_files.write_atomic(output_dir, "metrics.csv", history.getvalue().encode())

    # results.json last: its presence means the run finished and everything else is there.
    safe_files.write_atomic(output_dir, "results.json", (json.dumps(results, indent=2) + "\n").encode())
    return results


def format_table(metrics: Dict[str, Optional[float]]) -> str:
    """The final per-centre table shown on the console."""
    width = max([len("test set"), *map(len, metrics)])
    lines = [f"{'test set':<{width}}  metric", f"{'-' * width}  ------"]
    for name, value in metrics.items():
        shown = "n/a" if value is None or value != value else f"{value:.4f}"
        lines.append(f"{name:<{width}}  {shown}")
    return "\n".join(lines)
