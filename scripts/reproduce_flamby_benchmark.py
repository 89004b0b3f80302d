#!/usr/bin/env python
"""Reproduce FLamby's published benchmark over MPI and compare, side by side.

For each strategy and seed, runs
  mpiexec -n N+1 python launch_client.py --cf config/<dataset>.yaml --set ...
with the strategy's hyperparameters as FLamby published them (read from the
published results files themselves; Cyclic as FLamby's code runs it, with
train_args.pass_model_on=false, unless --cyclic-pass-model-on), then writes, next to FLamby's published
numbers (../shared/data/flamby_benchmark_results/<dataset>):
  comparison.csv, comparison.md  per strategy: our mean/std of Pooled Test over the
                                 seeds, FLamby's, the difference, within tolerance?
  comparison.png                 our mean +/- std vs FLamby's per strategy
  runs/<strategy>/seed<k>/       every run's own outputs (results.json ...)

Example (FLamby installed, heart data in ../shared/data):
  python scripts/reproduce_flamby_benchmark.py --dataset fed_heart_disease \
      --data-path ../shared/data/fed_heart_disease --strategies FedAvg,FedProx --seeds 42,43
"""
from __future__ import annotations

import argparse
import csv
import json
import math
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Dict, List, Optional

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from flamby_mpi.registry import FLAMBY_BENCHMARK_STRATEGIES  # noqa: E402  (torch-free)

DEFAULT_RESULTS = REPO.parent / "shared" / "data" / "flamby_benchmark_results"
# Hyperparameter columns of FLamby's results files that are train_args keys here.
HYPERPARAMETER_COLUMNS = ("learning_rate", "mu", "server_learning_rate", "beta1", "beta2", "tau",
                          "deterministic_cycle")
POOLED = "Pooled Test"
# FLamby's cyclic.py never passes the model on: every centre trains its own copy and the
# benchmark evaluates centre 0's. Its published Cyclic numbers come from that behaviour,
# which train_args.pass_model_on=false reproduces (see flamby_mpi/strategies/cyclic.py).
CYCLIC_AS_FLAMBY_CODE = {"pass_model_on": "false"}
CYCLIC_PASSED_ON = {"pass_model_on": "true"}


def published(results_dir: Path, seeds: List[int]) -> Dict[int, List[dict]]:
    """seed -> rows of FLamby's published results file for that seed."""
    files = {int("".join(ch for ch in p.stem.split("seed")[-1] if ch.isdigit())): p
             for p in results_dir.glob("*seed*.csv")}
    missing = [s for s in seeds if s not in files]
    if missing:
        sys.exit(f"reproduce: no published results for seed(s) {missing} in {results_dir}")
    return {s: list(csv.DictReader(open(files[s]))) for s in seeds}


def flamby_settings(rows: List[dict], strategy: str, num_updates: int) -> Dict[str, str]:
    """The published hyperparameters of Method <strategy><num_updates> (e.g. FedAvg100)."""
    method = f"{strategy}{num_updates}"
    for row in rows:
        if row["Method"] == method:
            settings = {k: row[k] for k in HYPERPARAMETER_COLUMNS if row.get(k) not in (None, "", "nan")}
            optimizer = row.get("optimizer_class", "")
            if "sgd" in optimizer.lower():
                settings["client_optimizer"] = "torch.optim.SGD"
            return settings
    sys.exit(f"reproduce: {method} is not in FLamby's published results")


def published_pooled(rows: List[dict], strategy: str, num_updates: int) -> Optional[float]:
    for row in rows:
        if row["Method"] == f"{strategy}{num_updates}" and row["Test"] == POOLED:
            return float(row["Metric"])
    return None


def run_one(args, strategy: str, seed: int, settings: Dict[str, str], out: Path) -> dict:
    result_file = out / "results.json"
    if result_file.exists() and not args.rerun:
        return json.loads(result_file.read_text())
    overrides = [f"train_args.federated_optimizer={strategy}", f"common_args.random_seed={seed}",
                 f"common_args.output_dir={out}", f"train_args.num_updates={args.num_updates}"]
    overrides += [f"train_args.{k}={v.lower() if v in ('True', 'False') else v}" for k, v in settings.items()]
    if args.data_path:
        overrides.append(f"data_args.data_path={args.data_path}")
    if args.backend == "inprocess":
        overrides.append("comm_args.backend=inprocess")
    # This directory is the script's own, and a run there without results.json (an earlier attempt
    # killed, or --rerun) is to be replaced: the launcher would refuse it otherwise.
    launcher = [sys.executable, str(REPO / "launch_client.py"), "--cf", str(args.config),
                "--run_id", f"repro-{strategy}-seed{seed}", "--overwrite"]
    for o in overrides:
        launcher += ["--set", o]
    if args.backend == "mpi":
        mpiexec = Path(sys.executable).parent / "mpiexec"
        launcher = [str(mpiexec if mpiexec.exists() else "mpiexec"), "-n", str(args.np)] + launcher
    out.mkdir(parents=True, exist_ok=True)
    tick = time.time()
    with open(out / "console.log", "w") as log:
        try:
            code = subprocess.run(launcher, stdout=log, stderr=subprocess.STDOUT, timeout=args.timeout,
                                  start_new_session=True).returncode
        except subprocess.TimeoutExpired:
            code = "timeout"
    if code != 0 or not result_file.exists():
        said = what_the_run_said(out / "console.log")
        sys.exit(f"reproduce: {strategy} seed {seed} failed ({code}); see {out / 'console.log'}"
                 + (f"\n{said}" if said else ""))
    result = json.loads(result_file.read_text())
    print(f"  {strategy:<11} seed {seed}: pooled {result['metrics']['pooled']:.4f} ({time.time() - tick:.0f} s)",
          flush=True)
    return result


def what_the_run_said(console_log: Path) -> str:
    """The launcher's error and its hint in a failed run's console.log: what to fix, said here
    rather than only in the file (a missing data path fails the sweep's first run)."""
    try:
        lines = console_log.read_text(errors="replace").splitlines()
    except OSError:
        return ""
    for i, line in enumerate(lines):
        if line.startswith("flamby-mpi: error"):
            block = [line]
            for more in lines[i + 1:]:
                if more.startswith(("[flamby-mpi]", "flamby-mpi: ", "Abort(", "WARNING ")):
                    break
                block.append(more)
            return "\n".join(block)
    return ""


def summarise(values: List[float]):
    mean = statistics.fmean(values)
    std = statistics.stdev(values) if len(values) > 1 else 0.0
    return mean, std


def write_outputs(out: Path, rows: List[dict], tolerance: float, dataset: str, seeds: List[int], backend: str):
    with open(out / "comparison.csv", "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    lines = [f"Pooled Test on {dataset}, seeds {', '.join(map(str, seeds))} (mean ± std over seeds)", "",
             "| strategy | flamby-mpi | FLamby published | difference | within ±%g |" % tolerance,
             "|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r['strategy']} | {r['ours_mean']:.3f} ± {r['ours_std']:.3f} | "
                     f"{r['flamby_mean']:.3f} ± {r['flamby_std']:.3f} | {r['difference']:+.3f} | "
                     f"{'yes' if r['within_tolerance'] else 'no'} |")
    (out / "comparison.md").write_text("\n".join(lines) + "\n")
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print("reproduce: matplotlib is not installed; no comparison.png")
        return
    fig, ax = plt.subplots(figsize=(1.2 * len(rows) + 2, 4))
    x = range(len(rows))
    ax.errorbar([i - 0.1 for i in x], [r["ours_mean"] for r in rows], yerr=[r["ours_std"] for r in rows],
                fmt="o", capsize=4, label=f"flamby-mpi ({'MPI' if backend == 'mpi' else 'in process'})")
    ax.errorbar([i + 0.1 for i in x], [r["flamby_mean"] for r in rows], yerr=[r["flamby_std"] for r in rows],
                fmt="s", capsize=4, label="FLamby published")
    ax.set_xticks(list(x), [r["strategy"].replace(" (", "\n(") for r in rows])
    ax.set_ylabel("Pooled Test metric")
    ax.set_title(f"{dataset}: mean ± std over seeds {seeds[0]}..{seeds[-1]}")
    ax.legend()
    fig.tight_layout()
    fig.savefig(out / "comparison.png", dpi=120)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--dataset", default="fed_heart_disease")
    parser.add_argument("--strategies", default=",".join(FLAMBY_BENCHMARK_STRATEGIES),
                        help=f"comma-separated, among {', '.join(FLAMBY_BENCHMARK_STRATEGIES)}")
    parser.add_argument("--seeds", default="42,43,44,45,46")
    parser.add_argument("--data-path", default=None, help="data_args.data_path for every run")
    parser.add_argument("--config", type=Path, default=None, help="default: config/<dataset>.yaml")
    parser.add_argument("--results-dir", type=Path, default=None,
                        help="FLamby's published results for the dataset "
                             "(default: ../shared/data/flamby_benchmark_results/<dataset>)")
    parser.add_argument("--output-dir", type=Path, default=None, help="default: runs/reproduce-<dataset>")
    parser.add_argument("--num-updates", type=int, default=100)
    parser.add_argument("--np", type=int, default=None, help="MPI processes (default: centres + 1)")
    parser.add_argument("--backend", choices=("mpi", "inprocess"), default="mpi")
    parser.add_argument("--tolerance", type=float, default=0.03)
    parser.add_argument("--timeout", type=float, default=900, help="seconds per run")
    parser.add_argument("--rerun", action="store_true", help="rerun runs whose results.json exists")
    parser.add_argument("--cyclic-pass-model-on", action="store_true",
                        help="run Cyclic passing the model from centre to centre; by default Cyclic runs as "
                             "FLamby's code does (each centre its own model, centre 0's evaluated), which is "
                             "what FLamby's published Cyclic numbers measure")
    args = parser.parse_args(argv)

    strategies = [s.strip() for s in args.strategies.split(",") if s.strip()]
    unknown = [s for s in strategies if s not in FLAMBY_BENCHMARK_STRATEGIES]
    if unknown:
        parser.error(f"unknown strategies {unknown}; valid: {', '.join(FLAMBY_BENCHMARK_STRATEGIES)}")
    try:
        seeds = [int(s) for s in args.seeds.split(",")]
    except ValueError:
        parser.error(f"--seeds: {args.seeds!r} is not a comma-separated list of integers (e.g. 42,43)")
    for name, value in (("--timeout", args.timeout), ("--num-updates", args.num_updates)):
        if not value > 0:
            parser.error(f"{name} must be positive, not {value}")
    if not args.tolerance >= 0:
        parser.error(f"--tolerance must be 0 or more, not {args.tolerance}")
    if args.np is not None and args.np < 2:
        parser.error(f"--np must be at least 2 (a server and a client), not {args.np}")
    args.config = args.config or REPO / "config" / f"{args.dataset}.yaml"
    results_dir = args.results_dir or DEFAULT_RESULTS / args.dataset
    out = args.output_dir or Path("runs") / f"reproduce-{args.dataset}"
    if not args.config.is_file():
        parser.error(f"config not found: {args.config}")
    if not results_dir.is_dir():
        parser.error(f"published results not found: {results_dir}")
    if args.np is None:
        from flamby_mpi.exit.errors import UserError
        from flamby_mpi.world_size import world_size_of

        overrides = [f"data_args.data_path={args.data_path}"] if args.data_path else []
        try:  # check_plan: as every rank will, so a missing FLamby is said once, here
            args.np = world_size_of(str(args.config), overrides, check_plan=True)
        except UserError as error:  # FLamby or a dataset's extra missing, a bad config: say so, no traceback
            sys.exit(f"reproduce: {error}")
    table = published(results_dir, seeds)
    print(f"reproducing {', '.join(strategies)} on {args.dataset}, seeds {seeds}, "
          f"{f'{args.np} MPI processes' if args.backend == 'mpi' else 'in process'} per run; outputs in {out}",
          flush=True)

    rows = []
    for strategy in strategies:
        ours, theirs = [], []
        label, extra, runs = strategy, {}, out / "runs" / strategy
        if strategy == "Cyclic":
            extra = CYCLIC_PASSED_ON if args.cyclic_pass_model_on else CYCLIC_AS_FLAMBY_CODE
            label = f"Cyclic (pass_model_on={extra['pass_model_on']})"
            runs = out / "runs" / f"Cyclic-pass_model_on-{extra['pass_model_on']}"
        for seed in seeds:
            settings = {**flamby_settings(table[seed], strategy, args.num_updates), **extra}
            result = run_one(args, strategy, seed, settings, runs / f"seed{seed}")
            ours.append(result["metrics"]["pooled"])
            theirs.append(published_pooled(table[seed], strategy, args.num_updates))
        ours_mean, ours_std = summarise(ours)
        flamby_mean, flamby_std = summarise([v for v in theirs if v is not None])
        rows.append({"strategy": label, "ours_mean": ours_mean, "ours_std": ours_std,
                     "flamby_mean": flamby_mean, "flamby_std": flamby_std,
                     "difference": ours_mean - flamby_mean,
                     "within_tolerance": not math.isnan(ours_mean) and abs(ours_mean - flamby_mean) <= args.tolerance,
                     "ours_per_seed": " ".join(f"{v:.4f}" for v in ours),
                     "flamby_per_seed": " ".join("nan" if v is None else f"{v:.4f}" for v in theirs)})
    out.mkdir(parents=True, exist_ok=True)
    write_outputs(out, rows, args.tolerance, args.dataset, seeds, args.backend)
    print((out / "comparison.md").read_text())
    return 0 if all(r["within_tolerance"] for r in rows) else 1


if __name__ == "__main__":
    sys.exit(main())
