#!/usr/bin/env python
"""Measure flamby-mpi side by side in one run and print ratios (these machines are shared and noisy:
only ratios of runs made in the same sitting, alternated, mean anything).

  python scripts/benchmark.py [--out DIR] [--sections telemetry,tiny_round] [--pairs N] [--centres N]
                              [--repo CHECKOUT]

Sections (more will join them; each prints its own rows):
  telemetry   per-round cost of the telemetry (TensorBoard on against off) with the tiny model
              (synthetic, 1 local update, no evaluation) at 32 centres (`mpiexec -n 33`), runs
              alternated on/off; the ratio is on/off seconds per round (target: < 1.03).
  tiny_round  seconds per tiny round against ../shared/bench/raw_mpi_tiny_round.py with as many
              ranks (target: at most 1.5x at 32 centres).

Writes DIR/benchmark.csv (every measurement) and DIR/benchmark.png (the ratios), and prints a
table. Seconds per round are timing.train_s / rounds from each run's results.json.
"""
from __future__ import annotations

import argparse
import csv
import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Dict, List

REPO = Path(__file__).resolve().parents[1]
LAUNCHER = REPO / "launch_client.py"  # --repo measures another checkout (e.g. before a change)
CONFIG = REPO / "config" / "fedml_config.yaml"


def mpiexec() -> str:
    beside = Path(sys.executable).parent / "mpiexec"
    return str(beside) if beside.exists() else "mpiexec"


def tiny_round_args(centres: int, rounds: int) -> List[str]:
    return ["--set", "data_args.dataset=synthetic", "--set", f"data_args.synthetic_num_centers={centres}",
            "--set", f"train_args.comm_round={rounds}", "--set", "train_args.num_updates=1",
            # no evaluation but the final one
            "--set", f"validation_args.frequency_of_the_test={rounds + 1}"]


def run_job(np_: int, args: List[str], out: Path, deadline_s: float) -> Dict:
    """One `mpiexec -n np_` job; its results.json plus the wall time seen from outside."""
    cmd = [mpiexec(), "-n", str(np_), sys.executable, str(LAUNCHER), "--cf", str(CONFIG),
           "--set", f"common_args.output_dir={out}", *args]
    start = time.monotonic()
    job = subprocess.run(cmd, cwd=out.parent, capture_output=True, text=True, timeout=deadline_s)
    wall = time.monotonic() - start
    if job.returncode != 0:
        sys.exit(f"benchmark: {' '.join(cmd)} failed ({job.returncode}):\n{job.stdout}{job.stderr}")
    results = json.loads((out / "results.json").read_text())
    results["wall_s"] = wall
    return results


def telemetry(work: Path, pairs: int, centres: int, rounds: int) -> List[Dict]:
    rows = []
    for pair in range(pairs):
        for tensorboard in (True, False) if pair % 2 == 0 else (False, True):
            label = "on" if tensorboard else "off"
            out = work / f"telemetry-{label}-{pair}"
            results = run_job(centres + 1, tiny_round_args(centres, rounds) + [
                "--set", f"tracking_args.tensorboard={str(tensorboard).lower()}"], out, 1800)
            per_round = results["timing"]["train_s"] / results["rounds_completed"]
            print(f"  telemetry {label:3s} pair {pair + 1}/{pairs}: {per_round * 1000:.1f} ms/round", flush=True)
            rows.append({"section": "telemetry", "case": f"tensorboard {label}", "centres": centres,
                         "seconds_per_round": per_round, "wall_s": results["wall_s"]})
    on = statistics.median(r["seconds_per_round"] for r in rows if r["case"] == "tensorboard on")
    off = statistics.median(r["seconds_per_round"] for r in rows if r["case"] == "tensorboard off")
    rows.append({"section": "telemetry", "case": "ratio on/off (median)", "centres": centres,
                 "ratio": on / off, "target": 1.03})
    return rows


RAW_TINY_ROUND = REPO.parent / "shared" / "bench" / "raw_mpi_tiny_round.py"


def tiny_round(work: Path, pairs: int, centres: int, rounds: int) -> List[Dict]:
    """Seconds per tiny round against raw mpi4py doing the same round with as many ranks."""
    if not RAW_TINY_ROUND.exists():
        print(f"  skipped: {RAW_TINY_ROUND} (the raw-MPI reference) is not here")
        return []
    rows = []
    for pair in range(pairs):
        out = work / f"tiny-{centres}-{pair}"
        results = run_job(centres + 1, tiny_round_args(centres, rounds), out, 1800)
        ours = results["timing"]["train_s"] / results["rounds_completed"]
        raw = subprocess.run([mpiexec(), "-n", str(centres + 1), sys.executable, str(RAW_TINY_ROUND),
                              str(rounds)], capture_output=True, text=True, timeout=1800)
        raw_s = float(raw.stdout.split(":")[-1].split("ms")[0]) / 1000
        print(f"  tiny round, {centres} centres, pair {pair + 1}/{pairs}: {ours * 1000:.1f} ms, "
              f"raw mpi4py {raw_s * 1000:.1f} ms", flush=True)
        rows += [{"section": "tiny_round", "case": "flamby-mpi", "centres": centres, "seconds_per_round": ours,
                  "wall_s": results["wall_s"]},
                 {"section": "tiny_round", "case": "raw mpi4py", "centres": centres, "seconds_per_round": raw_s}]
    ours = statistics.median(r["seconds_per_round"] for r in rows if r["case"] == "flamby-mpi")
    raw = statistics.median(r["seconds_per_round"] for r in rows if r["case"] == "raw mpi4py")
    rows.append({"section": "tiny_round", "case": f"ratio to raw mpi4py, {centres} centres (median)",
                 "centres": centres, "ratio": ours / raw, "target": 1.5})
    return rows


RAW_ROUND = REPO.parent / "shared" / "bench" / "raw_mpi_round.py"


def exchange(work: Path, pairs: int, centres: int, rounds: int) -> List[Dict]:
    """Seconds per round with a 100 MB model and 4 clients (../shared/bench/big_model_dataset.py: one tiny
    update, so a round is the exchange and FedAvg) against raw_mpi_round.py moving the same bytes in the
    same pattern with the same arithmetic (target: at most 1.25x). --centres and --rounds do not apply."""
    import os

    if not RAW_ROUND.exists():
        print(f"  skipped: {RAW_ROUND} (the raw-MPI reference) is not here")
        return []
    clients, megabytes, exchanges = 4, 100, 5
    saved = dict(os.environ)
    os.environ.update({"BIG_MODEL_MB": str(megabytes), "BIG_MODEL_CLIENTS": str(clients), "PYTHONPATH": os.pathsep.join(
        p for p in (str(RAW_ROUND.parents[1]), saved.get("PYTHONPATH")) if p)})  # `bench.` names the module
    rows = []
    try:
        for pair in range(pairs):
            results = run_job(clients + 1, [
                "--set", "data_args.dataset=bench.big_model_dataset", "--set", "train_args.num_updates=1",
                "--set", f"train_args.comm_round={exchanges}",
                "--set", f"validation_args.frequency_of_the_test={exchanges + 1}"], work / f"exchange-{pair}", 1800)
            ours = results["timing"]["train_s"] / results["rounds_completed"]
            raw = subprocess.run([mpiexec(), "-n", str(clients + 1), sys.executable, str(RAW_ROUND), str(megabytes)],
                                 capture_output=True, text=True, timeout=1800)
            raw_s = float(raw.stdout.split(":")[-1].split("s/round")[0])
            print(f"  exchange, {clients} clients x {megabytes} MB, pair {pair + 1}/{pairs}: {ours:.3f} s/round, "
                  f"raw MPI {raw_s:.3f} s/round", flush=True)
            rows += [{"section": "exchange", "case": "flamby-mpi", "centres": clients, "seconds_per_round": ours,
                      "wall_s": results["wall_s"]},
                     {"section": "exchange", "case": "raw MPI", "centres": clients, "seconds_per_round": raw_s}]
    finally:
        os.environ.clear()
        os.environ.update(saved)
    ours = statistics.median(r["seconds_per_round"] for r in rows if r["case"] == "flamby-mpi")
    raw_s = statistics.median(r["seconds_per_round"] for r in rows if r["case"] == "raw MPI")
    rows.append({"section": "exchange", "case": f"ratio to raw MPI, {megabytes} MB x {clients} (median)",
                 "centres": clients, "ratio": ours / raw_s, "target": 1.25})
    return rows


SECTIONS = {"telemetry": telemetry, "tiny_round": tiny_round, "exchange": exchange}


def draw(rows: List[Dict], path: Path):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    ratios = [r for r in rows if "ratio" in r]
    fig, ax = plt.subplots(figsize=(6, 1 + 0.6 * len(ratios)))
    labels = [f"{r['section']}: {r['case']}" for r in ratios]
    ax.barh(labels, [r["ratio"] for r in ratios], color="tab:blue")
    for i, r in enumerate(ratios):
        if r.get("target"):
            ax.plot([r["target"]] * 2, [i - 0.4, i + 0.4], color="tab:red")
    ax.axvline(1.0, color="grey", linewidth=0.8)
    ax.set_xlabel("ratio (red: target)")
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", default="benchmark", help="directory for benchmark.csv and benchmark.png")
    parser.add_argument("--sections", default=",".join(SECTIONS),
                        help=f"comma-separated, of: {', '.join(SECTIONS)}")
    parser.add_argument("--pairs", type=int, default=2, help="alternated on/off pairs per comparison")
    parser.add_argument("--centres", type=int, default=32)
    parser.add_argument("--rounds", type=int, default=20)
    parser.add_argument("--repo", type=Path, default=REPO,
                        help="the checkout whose launch_client.py is measured (default: this one)")
    args = parser.parse_args(argv)
    global LAUNCHER, CONFIG
    LAUNCHER = args.repo.resolve() / "launch_client.py"
    CONFIG = args.repo.resolve() / "config" / "fedml_config.yaml"
    unknown = [s for s in args.sections.split(",") if s not in SECTIONS]
    if unknown:
        parser.error(f"unknown section(s) {unknown}; choose from {', '.join(SECTIONS)}")
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    rows: List[Dict] = []
    with tempfile.TemporaryDirectory(prefix="flamby-mpi-bench-") as work:
        for name in args.sections.split(","):
            print(f"{name}:", flush=True)
            rows += SECTIONS[name](Path(work), args.pairs, args.centres, args.rounds)
    columns = ["section", "case", "centres", "seconds_per_round", "wall_s", "ratio", "target"]
    with (out / "benchmark.csv").open("w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=columns)
        writer.writeheader()
        for row in rows:
            writer.writerow({k: row.get(k, "") for k in columns})
    draw(rows, out / "benchmark.png")
    print(f"\n{'measure':45s} {'ratio':>7s} {'target':>7s}")
    for row in rows:
        if "ratio" in row:
            ok = "ok" if row["ratio"] <= row["target"] else "MISSED"
            print(f"{row['section'] + ': ' + row['case']:45s} {row['ratio']:7.3f} {row['target']:7.2f}  {ok}")
    print(f"\nwrote {out / 'benchmark.csv'} and {out / 'benchmark.png'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
