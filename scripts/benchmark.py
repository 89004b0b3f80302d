#!/usr/bin/env python
"""Measure flamby-mpi side by side with its references in one run and print the ratios, with the
targets of issue 10 beside them. These machines are shared and noisy: only ratios of runs made in
the same sitting, alternated, mean anything; absolute times move from day to day.

  python scripts/benchmark.py [--out DIR] [--sections heart,startup,...] [--pairs N] [--rounds N]
                              [--max-centres N] [--datasets ixi,...] [--rank-threads auto,2]
                              [--dataset-updates N]
                              [--markdown [PATH]] [--repo CHECKOUT]

Sections (each a function registered in SECTIONS; each prints what it runs and how long it took):
  heart       Fed-Heart-Disease end to end, wall from launch to exit: `mpirun -np 5` and the
              in-process twin (comm_args.backend=inprocess) against FLamby's in-RAM FedAvg
              (../shared/bench/flamby_inram_fedavg.py), runs alternated. Needs FLamby importable
              (e.g. PYTHONPATH=/path/to/flamby-site) and ../shared/data/fed_heart_disease; skipped
              with the reason otherwise. Target: mpirun at most 1.0x FLamby's in-RAM FedAvg.
  startup     time from the job's launch to its first round (results.json timing.first_round_unix)
              against the floor: as many ranks only importing torch and mpi4py and meeting in a
              Barrier (`mpirun -np N python -c ...`, timed from outside), at 5 and 33 ranks; and
              each rank's imports/data/first-message times from results.json `ranks`.
              Target: at most 2x.
  tiny_round  seconds per tiny round (synthetic, 1 local update, no evaluation) at 4 and 32
              centres against ../shared/bench/raw_mpi_tiny_round.py with as many ranks.
              Targets: 32 centres at most 1.5x; 4 centres no slower than before (1.1x).
  exchange    seconds per round with a 100 MB model and 4 clients (../shared/bench/big_model_dataset.py)
              against ../shared/bench/raw_mpi_round.py moving the same bytes with the same
              arithmetic, runs alternated. Like raw_mpi_round.py, rounds after the first (a
              warm-up) are timed (rounds.csv's round_s). Target: at most 1.25x.
  exchange_hosts
              the exchange section with every rank on a host of its own: five network namespaces
              of this machine (needs root and `ip`; skipped with the reason otherwise), MPI told
              to use TCP alone, raw_mpi_round.py placed the same; runs alternated. No target:
              what a change to the message path does between hosts.
  scaling     4, 8, 16, 32, 64 synthetic centres (up to --max-centres): time to first round,
              seconds per round, peak memory per rank. A point that fails, or would not fit in
              this machine's free memory, is recorded as such. Per round: rounds after the
              first (rounds.csv round_s), the whole-run mean beside it. Target: 64 centres
              complete, at most 2.5x the seconds per round of 32.
  checkpoints a checkpoint every round against none: heart's training time under mpirun -np 5
              (target: at most 1.05x), and the 100 MB model x 4 clients over the whole run against
              raw_mpi_round.py (target: at most 1.25x), runs alternated.
  telemetry   per-round cost of TensorBoard (on against off) with the tiny model at --centres
              centres, runs alternated. Target: at most 1.03x.
  datasets    each FLamby dataset of --datasets (default the light ones; fed_kits19 only when
              named; fed_lidc_idri says it needs a GPU) on stand-in data (heart on its real
              files) under `mpirun -n N+1`, one case per --rank-threads value, against FLamby's
              FedAvg in RAM on the same data and settings (scripts/bench/flamby_inram.py):
              per round the slowest centre's training, the launcher's rest (messages,
              aggregation, checkpoint, telemetry) and its share, peak RSS per rank; the whole
              run and the training rounds against the in-RAM loop; --dataset-updates N gives
              every stand-in dataset N local updates per round. Targets (issue 21): the
              launcher at most 5% of a round (IXI, ISIC2019, KITS19, LIDC-IDRI); IXI and
              ISIC2019 at most 1.0x FLamby's in-RAM loop.

Writes DIR/benchmark.csv (every measurement, ratio and note) and DIR/benchmark.png (the ratios
against their targets, and the scaling curve). --markdown prints the tables as markdown;
--markdown PATH writes them to a new file instead, a dated record of the sitting (a directory:
PATH/<date>.md, e.g. --markdown docs/benchmarks/), linked from docs/performance.md.
"""
from __future__ import annotations

import argparse
import ast
import contextlib
import importlib.util
import inspect
import json
import os
import platform
import shlex
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Dict, List, Optional, Sequence

sys.path.insert(0, str(Path(__file__).resolve().parent))
from benchmark_report import (
    draw,
    format_markdown,
    format_text,
    median_of,
    note_row,
    ratio_row,
    report,
    write_csv,
)

sys.path.insert(1, str(Path(__file__).resolve().parent / "bench"))  # the datasets section's modules
import isic_split
import per_dataset

REPO = Path(__file__).resolve().parents[1]
LAUNCHER = REPO / "launch_client.py"  # --repo measures another checkout (e.g. before a change)
CONFIG = REPO / "config" / "fedml_config.yaml"
HEART_CONFIG = REPO / "config" / "fed_heart_disease.yaml"
SHARED = Path(os.environ.get("FLAMBY_MPI_SHARED", REPO.parent / "shared"))
RAW_TINY_ROUND = SHARED / "bench" / "raw_mpi_tiny_round.py"
FLAMBY_INRAM = SHARED / "bench" / "flamby_inram_fedavg.py"
STARTUP_FLOOR = "import torch, mpi4py.MPI as M; M.COMM_WORLD.Barrier()"

# The targets of issue 10, each an upper bound on a ratio.
TARGET_HEART = 1.0  # issue 21 (1.5 before it)
TARGET_FIRST_ROUND = 2.0
TARGET_TINY_32 = 1.5
TARGET_TINY_4 = 1.1  # "no slower than today": 12.9 ms against 12 ms when the issue was filed
TARGET_SCALING_64_OVER_32 = 2.5
EXCHANGE_ROUNDS = 9  # the exchange section's rounds: rounds 2 to 9 are timed


def mpiexec() -> str:
    beside = Path(sys.executable).parent / "mpiexec"
    return str(beside) if beside.exists() else "mpiexec"


@dataclass
class Bench:
    """What every section gets: where to work and the user's choices."""
    work: Path
    pairs: int = 2
    rounds: int = 20
    max_centres: int = 64
    centres: int = 32  # the telemetry section's
    heart_data: Path = SHARED / "data" / "fed_heart_disease"
    datasets: List[str] = field(default_factory=lambda: list(per_dataset.LIGHT))  # the datasets section's
    rank_threads: List[Optional[int]] = field(default_factory=lambda: [None])  # None: the launcher's default
    dataset_updates: Optional[int] = None  # the datasets section's local updates per round (None: each one's own)

    @contextlib.contextmanager
    def step(self, what: str):
        """Print what runs, then how long it took; the body may add a result to `said`."""
        print(f"  {what} ...", end="", flush=True)
        said: Dict[str, str] = {}
        start = time.monotonic()
        try:
            yield said
        except BaseException:
            print(f" failed after {time.monotonic() - start:.1f} s", flush=True)
            raise
        print(f" {time.monotonic() - start:.1f} s{(', ' + said['result']) if 'result' in said else ''}",
              flush=True)


class RunFailed(Exception):
    """A job of a section failed: the section stops and its row says why; the other sections go on."""


# --- running jobs --------------------------------------------------------------------------------

class PeakMemory:
    """Memory of every python process under a job, sampled from /proc twice a second: the peak
    resident set (VmHWM, shared library pages included) and the largest private (anonymous) memory
    seen, which is what decides whether N ranks fit in one machine."""

    def __init__(self, root_pid: int):
        self.root_pid = root_pid
        self.peak_rss_mb: Dict[int, float] = {}
        self.peak_private_mb: Dict[int, float] = {}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._sample, daemon=True)
        self._thread.start()

    def stop(self):
        self._stop.set()
        self._thread.join()
        return sorted(self.peak_rss_mb.values()), sorted(self.peak_private_mb.values())

    def _descendants(self) -> List[int]:
        parents = {}
        for entry in os.scandir("/proc"):
            if entry.name.isdigit():
                with contextlib.suppress(OSError, IndexError, ValueError):
                    stat = Path(entry.path, "stat").read_text()
                    name, rest = stat[stat.index("(") + 1:stat.rindex(")")], stat[stat.rindex(")") + 1:]
                    parents[int(entry.name)] = (int(rest.split()[1]), name)
        family, grew = {self.root_pid}, True
        while grew:
            grew = False
            for pid, (ppid, _) in parents.items():
                if ppid in family and pid not in family:
                    family.add(pid)
                    grew = True
        return [pid for pid in family if pid in parents and parents[pid][1].startswith("python")]

    def _sample(self):
        while not self._stop.wait(0.5):
            for pid in self._descendants():
                # a rank may exit between the listing and the read (a zombie has no memory lines)
                with contextlib.suppress(OSError, ValueError, IndexError, KeyError):
                    fields = dict(line.split(":", 1) for line in Path(f"/proc/{pid}/status").read_text().splitlines()
                                  if ":" in line)
                    for key, peaks in (("VmHWM", self.peak_rss_mb), ("RssAnon", self.peak_private_mb)):
                        peaks[pid] = max(peaks.get(pid, 0.0), int(fields[key].split()[0]) / 1024)


# MPICH's lines after a rank dies, the same for every failure
MPICH_BANNER = ("YOUR APPLICATION TERMINATED", "This typically refers", "Please see the FAQ")


@dataclass
class Job:
    command: List[str]
    returncode: int
    wall_s: float
    launch_unix: float  # wall-clock time just before the launch, to compare with results.json
    output: str
    results: Optional[Dict] = None
    peak_rss_mb: List[float] = field(default_factory=list)  # per python process, when sampled
    peak_private_mb: List[float] = field(default_factory=list)

    def failure(self) -> str:
        """One line: what ran, how it ended, and its last words (without MPICH's exit banner)."""
        what = "timed out" if self.returncode == 124 else f"exit code {self.returncode}"
        if "Killed (signal 9)" in self.output:
            what += ", a rank was killed with SIGKILL (out of memory? see dmesg)"
        words = [ln.strip() for ln in self.output.splitlines() if ln.strip() and not ln.startswith("=")
                 and not ln.startswith(MPICH_BANNER)]
        program = next((Path(a).name for a in self.command if a.endswith(".py")), Path(self.command[0]).name)
        ranks = f" -n {self.command[2]}" if len(self.command) > 2 and self.command[1] == "-n" else ""
        return f"{program}{ranks}: {what}; last output: {' / '.join(words[-2:])[-300:] or '(none)'}"


def launch(command: List[str], deadline_s: float, env: Optional[Dict] = None, cwd: Optional[Path] = None,
           sample_memory: bool = False) -> Job:
    """Run one command in its own process group, killed as a whole at the deadline (mpiexec's
    children included), timed from outside."""
    launch_unix = time.time()
    start = time.monotonic()
    process = subprocess.Popen(command, cwd=cwd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                               text=True, start_new_session=True)
    sampler = PeakMemory(process.pid) if sample_memory else None
    try:
        output, _ = process.communicate(timeout=deadline_s)
        returncode = process.returncode
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)
        output, _ = process.communicate()
        returncode = 124
    except BaseException:  # Ctrl-C or SIGTERM of the benchmark: leave no rank behind
        os.killpg(process.pid, signal.SIGKILL)
        process.wait()
        raise
    finally:
        rss, private = sampler.stop() if sampler else ([], [])
    return Job(command, returncode, time.monotonic() - start, launch_unix, output or "", peak_rss_mb=rss,
               peak_private_mb=private)


# Private memory of one rank, measured here before the start-up change (synthetic dataset): about
# 540 MB. Jobs are not started when their ranks would not fit in the free memory: running out would
# have the kernel kill processes of whoever shares this machine.
PRIVATE_MB_PER_RANK = 550.0


def free_memory_mb() -> float:
    for line in Path("/proc/meminfo").read_text().splitlines():
        if line.startswith("MemAvailable:"):
            return int(line.split()[1]) / 1024
    return float("inf")


def memory_shortfall(ranks: int, private_mb: float = PRIVATE_MB_PER_RANK) -> Optional[str]:
    """Why `ranks` ranks of `private_mb` each (plus 5%) should not start now, or None when they fit."""
    needed, free = 1.05 * ranks * private_mb, free_memory_mb()
    if needed <= free:
        return None
    return (f"not started: {ranks} ranks need about {needed / 1024:.1f} GiB ({private_mb:.0f} MB each), "
            f"{free / 1024:.1f} GiB free now")


def run_project(ranks: int, args: List[str], out: Path, deadline_s: float, config: Optional[Path] = None,
                mpi: bool = True, sample_memory: bool = False, env: Optional[Dict[str, str]] = None,
                private_mb: float = PRIVATE_MB_PER_RANK, mpi_flags: Sequence[str] = ()) -> Job:
    """One run of the launcher (under `mpiexec [mpi_flags] -n ranks`, or alone for the in-process
    twin), with its results.json; RunFailed when it does not finish. `env`: variables added to this
    environment."""
    command = ([mpiexec(), *mpi_flags, "-n", str(ranks)] if mpi else []) + [
        sys.executable, str(LAUNCHER), "--cf", str(config or CONFIG), "--quiet",
        "--set", f"common_args.output_dir={out}", *args]
    shortfall = memory_shortfall(ranks, private_mb) if mpi else None
    if shortfall:
        raise RunFailed(shortfall)
    job = launch(command, deadline_s, cwd=out.parent, sample_memory=sample_memory,
                 env={**os.environ, **env} if env else None)
    if job.returncode != 0 or not (out / "results.json").exists():
        raise RunFailed(job.failure())
    job.results = json.loads((out / "results.json").read_text())
    return job


def without_checkpoints() -> List[str]:
    """The sections that measure the message path leave checkpoints off (each round would also
    write every rank's state: its cost is a row of its own); a checkout from before checkpoints
    (--repo) does not know the key."""
    config_module = LAUNCHER.parent / "flamby_mpi" / "config.py"
    known = config_module.exists() and "checkpoint_every" in config_module.read_text()
    return ["--set", "common_args.checkpoint_every=0"] if known else []


def without_memory_check() -> List[str]:
    """The scaling section runs up to 65 ranks on one host and has its own guard (memory_shortfall,
    from the private memory measured at the previous point); the launcher's start-up check, with its
    margin, would refuse the 64-centre point on a 24 GiB machine where it fits. A checkout from
    before the check (--repo) does not know the key."""
    config_module = LAUNCHER.parent / "flamby_mpi" / "config.py"
    known = config_module.exists() and "memory_check" in config_module.read_text()
    return ["--set", "device_args.memory_check=false"] if known else []


def tiny_round_args(centres: int, rounds: int) -> List[str]:
    return ["--set", "data_args.dataset=synthetic", "--set", f"data_args.synthetic_num_centers={centres}",
            "--set", f"train_args.comm_round={rounds}", "--set", "train_args.num_updates=1",
            # no evaluation but the final one
            "--set", f"validation_args.frequency_of_the_test={rounds + 1}", *without_checkpoints()]


def seconds_per_round(results: Dict) -> float:
    return results["timing"]["train_s"] / results["rounds_completed"]


def first_round_after_launch(job: Job) -> Optional[float]:
    """From the launch to rank 0 starting the first round. None before results.json has
    timing.first_round_unix (then timing.startup_s, which misses mpiexec's own start, is all there is)."""
    first = job.results.get("timing", {}).get("first_round_unix")
    return first - job.launch_unix if first is not None else None


def alternated(cases: List, pair: int) -> List:
    """The cases in a rotated order for each pair, so that no case always runs first (or last)."""
    shift = pair % len(cases)
    return cases[shift:] + cases[:shift]


def run_pairs(bench: Bench, title: str, cases: List) -> Optional[str]:
    """Each (what, run(pair)) case once per pair, in a rotated order. Stops at the first run that
    fails and says why (the caller records it and goes on with its next size), else None."""
    try:
        for pair in range(bench.pairs):
            for what, run in alternated(cases, pair):
                with bench.step(f"{title}: {what} (run {pair + 1}/{bench.pairs})") as said:
                    said["result"] = run(pair)
    except RunFailed as failure:
        print(f"    {str(failure)[:300]}", flush=True)
        return str(failure)[-400:]
    return None


# --- sections ------------------------------------------------------------------------------------

def heart(bench: Bench) -> List[Dict]:
    """Fed-Heart-Disease end to end against FLamby's in-RAM FedAvg, wall time from outside."""
    missing = ("FLamby is not importable (install it, e.g. `pip install --target DIR FLamby` and "
               "PYTHONPATH=DIR)" if importlib.util.find_spec("flamby") is None else
               f"no Fed-Heart-Disease data in {bench.heart_data} (--heart-data DIR)"
               if not (bench.heart_data / "processed.cleveland.data").exists() else
               f"{FLAMBY_INRAM} (the reference) is not here" if not FLAMBY_INRAM.exists() else None)
    if missing:
        print(f"  skipped: {missing}")
        return [note_row("heart", "skipped", missing)]
    data = ["--set", f"data_args.data_path={bench.heart_data}"]
    reference_env = {**os.environ, "HEART_DATA": str(bench.heart_data)}

    def mpirun(out):
        return run_project(5, data, out, 900, config=HEART_CONFIG)

    def twin(out):
        return run_project(1, data + ["--set", "comm_args.backend=inprocess"], out, 900, config=HEART_CONFIG,
                           mpi=False)

    def inram(out):
        out.mkdir(parents=True)
        job = launch([sys.executable, str(FLAMBY_INRAM), "42"], 900, env=reference_env, cwd=out)
        if job.returncode != 0:
            raise RunFailed(job.failure())
        return job

    cases = [("mpirun -np 5", mpirun), ("in-process twin", twin), ("FLamby in-RAM FedAvg", inram)]
    rows, metrics = [], {}
    for pair in range(bench.pairs):
        for case, run in alternated(cases, pair):
            with bench.step(f"heart: {case} (run {pair + 1}/{bench.pairs})"):
                job = run(bench.work / f"heart-{case.split()[0].lower()}-{pair}")
            rows.append({"section": "heart", "case": case, "run": pair, "ranks": 5 if case.startswith("mpi") else 1,
                         "wall_s": job.wall_s})
            metrics[case] = (job.results["metrics"] if job.results else parse_flamby_metrics(job.output))
            saved = (job.results or {}).get("checkpoints") or {}
            if case == "mpirun -np 5" and saved.get("mean_s") is not None:
                rows.append(note_row("heart", "checkpoint every round (the default), included above",
                                     f"{saved['mean_s'] * 1000:.1f} ms per round on average, at most "
                                     f"{saved['max_s'] * 1000:.1f} ms (results.json `checkpoints`)"))
    rows.append(note_row("heart", "same work", same_metrics(metrics)))
    reference = median_of(rows, "wall_s", case="FLamby in-RAM FedAvg")
    rows.append(ratio_row("heart", "mpirun -np 5, wall, vs FLamby in-RAM FedAvg",
                          median_of(rows, "wall_s", case="mpirun -np 5"), reference, TARGET_HEART))
    rows.append(ratio_row("heart", "in-process twin, wall, vs FLamby in-RAM FedAvg",
                          median_of(rows, "wall_s", case="in-process twin"), reference, None))
    return rows


def parse_flamby_metrics(output: str) -> Dict[str, float]:
    """flamby_inram_fedavg.py's last line, FLamby's dict of per-centre metrics."""
    line = [ln for ln in output.splitlines() if "{'client_test_" in ln][-1]  # tqdm's stderr may share it
    return ast.literal_eval(line[line.index("{'client_test_"):])


def same_metrics(metrics: Dict[str, Dict[str, float]]) -> str:
    """Whether every case computed the same per-centre test metrics (the comparison is only fair if
    they did the same work)."""
    reference = metrics.get("FLamby in-RAM FedAvg", {})
    centres = sorted(k for k in reference if k.startswith("client_test_"))
    differ = [f"{case} {k}: {got.get(k)} vs {reference[k]}" for case, got in metrics.items() for k in centres
              if got.get(k) is None or abs(got[k] - reference[k]) > 1e-6]
    if not centres:
        return "not checked: no metrics from FLamby's run"
    return (f"yes: {', '.join(centres)} equal to FLamby's in every run" if not differ
            else "NO, metrics differ: " + "; ".join(differ))


def startup(bench: Bench) -> List[Dict]:
    """Time to first round from the job's launch against ranks that only import torch and mpi4py."""
    rows = []
    for ranks in [n for n in (5, 33) if n - 1 <= bench.max_centres]:
        centres = ranks - 1
        rounds = 2  # the first round is what counts; two keep the run short

        def ours(pair, ranks=ranks, centres=centres, rounds=rounds):
            job = run_project(ranks, tiny_round_args(centres, rounds), bench.work / f"startup-{ranks}-{pair}",
                              300 + 20 * ranks)
            first = first_round_after_launch(job)
            approx = first is None
            if approx:
                first = job.results["timing"]["startup_s"]
            rows.append({"section": "startup", "case": "flamby-mpi", "ranks": ranks, "centres": centres,
                         "run": pair, "first_round_s": first, "wall_s": job.wall_s,
                         "note": "timing.startup_s (no timing.first_round_unix yet)" if approx else ""})
            for rank in job.results.get("ranks", []):
                rows.append({"section": "startup", "case": "rank", "ranks": ranks, "run": pair,
                             **{k: rank.get(k) for k in ("rank", "role", "imports_s", "data_s",
                                                         "first_message_s", "peak_rss_mb")}})
            return f"first round {first:.1f} s after launch" + (" (approx.)" if approx else "")

        def floor(pair, ranks=ranks):
            job = launch([mpiexec(), "-n", str(ranks), sys.executable, "-c", STARTUP_FLOOR], 300 + 10 * ranks)
            if job.returncode != 0:
                raise RunFailed(job.failure())
            rows.append({"section": "startup", "case": "floor", "ranks": ranks, "run": pair,
                         "wall_s": job.wall_s})
            return f"{job.wall_s:.1f} s"

        cases = [(f"flamby-mpi, {centres} synthetic centres, to first round", ours),
                 ("floor: import torch + mpi4py, Barrier", floor)]
        failed = run_pairs(bench, f"startup, {ranks} ranks", cases)
        if failed:
            rows.append(note_row("startup", f"{ranks} ranks", failed))
        rows.append(ratio_row("startup", f"time to first round, {ranks} ranks, vs import torch+mpi4py",
                              median_of(rows, "first_round_s", case="flamby-mpi", ranks=ranks),
                              median_of(rows, "wall_s", case="floor", ranks=ranks), TARGET_FIRST_ROUND,
                              ranks=ranks))
        if not any(r.get("case") == "rank" and r["ranks"] == ranks for r in rows):
            rows.append(note_row("startup", f"per-rank breakdown, {ranks} ranks",
                                 "results.json has no `ranks` yet (the start-up change reports them)"))
    return rows


def tiny_round(bench: Bench) -> List[Dict]:
    """Seconds per tiny round against raw mpi4py doing the same round with as many ranks."""
    if not RAW_TINY_ROUND.exists():
        print(f"  skipped: {RAW_TINY_ROUND} (the raw-MPI reference) is not here")
        return [note_row("tiny_round", "skipped", f"{RAW_TINY_ROUND} is not here")]
    rows = []
    for centres, target in [(c, t) for c, t in ((4, TARGET_TINY_4), (32, TARGET_TINY_32)) if c <= bench.max_centres]:
        # rounds of a few ms need more of them to rise above the noise
        rounds = bench.rounds * 5 if centres <= 8 else bench.rounds

        def ours(pair, centres=centres, rounds=rounds):
            job = run_project(centres + 1, tiny_round_args(centres, rounds), bench.work / f"tiny-{centres}-{pair}",
                              300 + 30 * centres)
            rows.append({"section": "tiny_round", "case": "flamby-mpi", "centres": centres, "run": pair,
                         "seconds_per_round": seconds_per_round(job.results), "wall_s": job.wall_s})
            return f"{rows[-1]['seconds_per_round'] * 1000:.1f} ms/round"

        def raw(pair, centres=centres, rounds=rounds):
            job = launch([mpiexec(), "-n", str(centres + 1), sys.executable, str(RAW_TINY_ROUND), str(rounds)],
                         300 + 30 * centres)
            if job.returncode != 0:
                raise RunFailed(job.failure())
            per_round = parse_raw_tiny_round(job.output)
            rows.append({"section": "tiny_round", "case": "raw mpi4py", "centres": centres, "run": pair,
                         "seconds_per_round": per_round, "wall_s": job.wall_s})
            return f"{per_round * 1000:.1f} ms/round"

        cases = [(f"flamby-mpi, {centres} centres, {rounds} rounds", ours),
                 (f"raw mpi4py, {centres + 1} ranks, {rounds} rounds", raw)]
        failed = run_pairs(bench, "tiny round", cases)
        if failed:
            rows.append(note_row("tiny_round", f"{centres} centres", failed))
        rows.append(ratio_row("tiny_round", f"{centres} centres, per round, vs raw mpi4py",
                              median_of(rows, "seconds_per_round", case="flamby-mpi", centres=centres),
                              median_of(rows, "seconds_per_round", case="raw mpi4py", centres=centres),
                              target, unit="s/round", centres=centres))
    return rows


def parse_raw_tiny_round(output: str) -> float:
    """raw_mpi_tiny_round.py's last line, '... clients: 12.34 ms/round' -> seconds per round."""
    line = [ln for ln in output.splitlines() if "ms/round" in ln][-1]
    return float(line.rsplit(":", 1)[1].split("ms")[0]) / 1000


def steady_seconds_per_round(out: Path) -> Optional[float]:
    """The mean of rounds.csv's round_s over the rounds after the first; None for a checkout whose
    rounds.csv has no round_s (from before it was added)."""
    import csv

    path = out / "rounds.csv"
    if not path.exists():
        return None
    per_round = {}
    for row in csv.DictReader(path.open()):
        if row.get("round_s"):
            per_round[int(row["round"])] = float(row["round_s"])
    after_first = [seconds for number, seconds in per_round.items() if number > 1]
    return statistics.mean(after_first) if after_first else None


def big_model_env(clients: int, megabytes: int, extra: Optional[Dict[str, str]] = None) -> Dict[str, str]:
    """What a run of ../shared/bench/big_model_dataset.py (ours or through raw_mpi_round.py) needs."""
    return {"BIG_MODEL_MB": str(megabytes), "BIG_MODEL_CLIENTS": str(clients), **(extra or {}),
            "PYTHONPATH": os.pathsep.join(p for p in (str(SHARED), os.environ.get("PYTHONPATH")) if p)}


def big_model_run(clients: int, rounds: int, out: Path, env: Dict[str, str], mpi_flags: Sequence[str] = (),
                  extra_args: Sequence[str] = ()) -> Dict:
    """One run of the big model (one tiny update a round, so a round is the exchange and FedAvg,
    no evaluation until the end); results.json."""
    return run_project(clients + 1, [
        "--set", "data_args.dataset=bench.big_model_dataset", "--set", "train_args.num_updates=1",
        "--set", f"train_args.comm_round={rounds}",
        "--set", f"validation_args.frequency_of_the_test={rounds + 1}", *extra_args],
        out, 1800, env=env, mpi_flags=mpi_flags).results


def raw_round_seconds(clients: int, megabytes: int, mpi_flags: Sequence[str] = (),
                      env: Optional[Dict[str, str]] = None) -> float:
    """raw_mpi_round.py's seconds per round (rounds after a warm-up one)."""
    done = subprocess.run([mpiexec(), *mpi_flags, "-n", str(clients + 1), sys.executable,
                           str(SHARED / "bench" / "raw_mpi_round.py"), str(megabytes)],
                          capture_output=True, text=True, timeout=1800, env={**os.environ, **(env or {})})
    if done.returncode != 0 or "s/round" not in done.stdout:
        raise RunFailed(f"raw_mpi_round.py: exit {done.returncode}: {done.stderr[-400:]}")
    return float(done.stdout.split(":")[-1].split("s/round")[0])


def exchange(bench: Bench) -> List[Dict]:
    """Seconds per round with a 100 MB model and 4 clients (../shared/bench/big_model_dataset.py: one
    tiny update, so a round is the exchange and FedAvg) against raw_mpi_round.py moving the same bytes
    in the same pattern with the same arithmetic (target: at most 1.25x). Runs alternated.

    raw_mpi_round.py times its rounds after an untimed warm-up round (the first receive into fresh
    buffers pays their page faults); ours are timed the same way: the mean of rounds.csv's round_s
    over rounds 2 to EXCHANGE_ROUNDS. A checkout without round_s (--repo, from before it) is timed by
    the difference of a 3-round and an EXCHANGE_ROUNDS-round run's training time instead (noisier:
    the first round's time varies from run to run). The whole-run mean, first round and final
    evaluation-only exchange included, is recorded beside it."""
    raw_round = SHARED / "bench" / "raw_mpi_round.py"
    if not raw_round.exists():
        return [note_row("exchange", "skipped", f"{raw_round} (the raw-MPI reference) is not here")]
    clients, megabytes, rounds = 4, 100, EXCHANGE_ROUNDS
    env = big_model_env(clients, megabytes)

    def ours(pair: int, rounds: int):
        out = bench.work / f"exchange-{pair}-{rounds}"
        return big_model_run(clients, rounds, out, env, extra_args=without_checkpoints()), out

    rows = []
    for pair in range(bench.pairs):
        for which in alternated(["ours", "raw"], pair):
            if which == "ours":
                with bench.step(f"exchange: flamby-mpi, {clients} clients x {megabytes} MB, {rounds} rounds "
                                f"(run {pair + 1}/{bench.pairs})") as said:
                    results, out = ours(pair, rounds)
                    whole = results["timing"]["train_s"] / results["rounds_completed"]
                    value = steady_seconds_per_round(out)
                    if value is None:
                        shorter, _ = ours(pair, 3)
                        value = ((results["timing"]["train_s"] - shorter["timing"]["train_s"])
                                 / (results["rounds_completed"] - shorter["rounds_completed"]))
                    said["result"] = f"{value:.3f} s/round after the first ({whole:.3f} s/round over the run)"
                rows.append({"section": "exchange", "case": "flamby-mpi", "centres": clients, "run": pair,
                             "seconds_per_round": value, "seconds_per_round_whole_run": whole})
            else:
                with bench.step(f"exchange: raw MPI, {clients} clients x {megabytes} MB") as said:
                    value = raw_round_seconds(clients, megabytes)
                    said["result"] = f"{value:.3f} s/round"
                rows.append({"section": "exchange", "case": "raw MPI", "centres": clients, "run": pair,
                             "seconds_per_round": value})
    rows.append(ratio_row("exchange", f"{megabytes} MB model x {clients} clients, per round after the first, "
                          "vs raw MPI", median_of(rows, "seconds_per_round", case="flamby-mpi"),
                          median_of(rows, "seconds_per_round", case="raw MPI"), 1.25, unit="s/round",
                          centres=clients))
    rows.append(ratio_row("exchange", f"same, over the whole run ({rounds} rounds, first and final exchange "
                          "included)", median_of(rows, "seconds_per_round_whole_run", case="flamby-mpi"),
                          median_of(rows, "seconds_per_round", case="raw MPI"), None, unit="s/round",
                          centres=clients))
    return rows


def exchange_hosts(bench: Bench) -> List[Dict]:
    """The exchange section between hosts: rank 0 and each client on a host of its own, five network
    namespaces of this machine (tests/support/netns.py: needs root and `ip`), MPI told to use TCP
    alone (UCX_TLS=tcp,self, FI_PROVIDER=tcp; left to itself, UCX sees one machine and moves the
    bytes through shared memory even between namespaces), against raw_mpi_round.py placed and told
    the same; runs alternated. No target of its own: what a change to the message path does between
    hosts, which the one-host sections cannot show (a send in flight moves over TCP only while its
    rank is inside MPI). Rounds after the first (rounds.csv's round_s), and the whole run."""
    raw_round = SHARED / "bench" / "raw_mpi_round.py"
    if not raw_round.exists():
        return [note_row("exchange_hosts", "skipped", f"{raw_round} (the raw-MPI reference) is not here")]
    tests = str(Path(__file__).resolve().parents[1] / "tests")
    sys.path.insert(0, tests)
    try:
        import pytest  # the tests' facilities skip by pytest's exceptions

        from support.netns import NamespaceHosts
    except ImportError as error:
        return [note_row("exchange_hosts", "skipped", f"needs pytest and tests/support/netns.py: {error}")]
    finally:
        sys.path.remove(tests)
    try:
        NamespaceHosts.check_available()
    except (pytest.skip.Exception, pytest.fail.Exception) as why:
        return [note_row("exchange_hosts", "skipped", str(why))]
    clients, megabytes, rounds = 4, 100, EXCHANGE_ROUNDS
    env = big_model_env(clients, megabytes, {"UCX_TLS": "tcp,self", "FI_PROVIDER": "tcp"})
    rows = []
    try:
        hosts = NamespaceHosts(clients + 1).start()
    except (OSError, RuntimeError, subprocess.SubprocessError) as error:  # start() removed what it made
        return [note_row("exchange_hosts", "failed", f"the namespace hosts could not be made: {error}")]
    try:
        flags = hosts.mpiexec_flags(hosts.host_file([1] * (clients + 1)))

        def ours(pair: int):
            out = bench.work / f"exchange-hosts-{pair}"
            results = big_model_run(clients, rounds, out, env, flags, without_checkpoints())
            whole = results["timing"]["train_s"] / results["rounds_completed"]
            value = steady_seconds_per_round(out)
            if value is None:  # a checkout from before rounds.csv's round_s: the whole run only
                value = whole
            rows.append({"section": "exchange_hosts", "case": "flamby-mpi", "centres": clients, "run": pair,
                         "seconds_per_round": value, "seconds_per_round_whole_run": whole})
            return f"{value:.3f} s/round after the first ({whole:.3f} s/round over the run)"

        def raw(pair: int):
            value = raw_round_seconds(clients, megabytes, flags, env)
            rows.append({"section": "exchange_hosts", "case": "raw MPI", "centres": clients, "run": pair,
                         "seconds_per_round": value})
            return f"{value:.3f} s/round"

        failed = run_pairs(bench, f"exchange between {clients + 1} hosts (TCP): {clients} clients x {megabytes} MB",
                           [("flamby-mpi", ours), ("raw MPI", raw)])
    finally:
        hosts.stop()
    if failed:
        return rows + [note_row("exchange_hosts", "failed", failed)]
    reference = median_of(rows, "seconds_per_round", case="raw MPI")
    rows.append(ratio_row("exchange_hosts", f"{megabytes} MB model x {clients} clients, one host each (TCP), per "
                          "round after the first, vs raw MPI", median_of(rows, "seconds_per_round", case="flamby-mpi"),
                          reference, None, unit="s/round", centres=clients))
    rows.append(ratio_row("exchange_hosts", f"same, over the whole run ({rounds} rounds)",
                          median_of(rows, "seconds_per_round_whole_run", case="flamby-mpi"), reference, None,
                          unit="s/round", centres=clients))
    return rows


def scaling(bench: Bench) -> List[Dict]:
    """Start-up, seconds per round and memory per rank from 4 to 64 synthetic centres."""
    rows, sampled, approximate_start = [], False, False
    private_mb = PRIVATE_MB_PER_RANK  # until measured
    for centres in [c for c in (4, 8, 16, 32, 64) if c <= bench.max_centres]:
        ranks = centres + 1
        point = {"section": "scaling", "case": "curve", "centres": centres, "ranks": ranks}
        # with the private memory per rank measured at the previous point
        shortfall = memory_shortfall(ranks, private_mb)
        if shortfall:
            point["note"] = shortfall
            print(f"  scaling, {centres} centres: {point['note']}")
            rows.append(point)
            continue
        with bench.step(f"scaling: {centres} synthetic centres, {bench.rounds} tiny rounds") as said:
            try:
                job = run_project(ranks, tiny_round_args(centres, bench.rounds) + without_memory_check(),
                                  bench.work / f"scaling-{centres}",
                                  300 + 30 * ranks, sample_memory=True, private_mb=private_mb)
            except RunFailed as failure:
                point["note"] = f"failed: {str(failure)[-300:]}"
                said["result"] = "FAILED"
                rows.append(point)
                continue
            reported = [r["peak_rss_mb"] for r in job.results.get("ranks", []) if r.get("peak_rss_mb")]
            peaks = reported or job.peak_rss_mb
            first = first_round_after_launch(job)
            # Rounds after the first (rounds.csv round_s), as in the exchange section: the first
            # round's one-off costs (receive buffers, each client's first optimizer step) weigh a lot
            # in 10 rounds and say nothing of how a round scales. The whole-run mean is kept beside it.
            steady = steady_seconds_per_round(bench.work / f"scaling-{centres}")
            point.update(seconds_per_round=steady if steady is not None else seconds_per_round(job.results),
                         seconds_per_round_whole_run=seconds_per_round(job.results), wall_s=job.wall_s,
                         first_round_s=first if first is not None else job.results["timing"]["startup_s"],
                         peak_rss_mb=max(peaks) if peaks else None,
                         peak_private_mb=max(job.peak_private_mb) if job.peak_private_mb else None)
            if job.peak_private_mb:  # what the next size needs: ranks x a typical rank (rank 0 holds a little more)
                private_mb = statistics.median(job.peak_private_mb)
            if not reported:
                sampled = True
            if first is None:
                approximate_start = True
            said["result"] = (f"{point['seconds_per_round'] * 1000:.1f} ms/round, first round after "
                              f"{point['first_round_s']:.1f} s, per rank at most {point['peak_rss_mb'] or 0:.0f} MB "
                              f"resident, {point['peak_private_mb'] or 0:.0f} MB private")
        rows.append(point)
    if sampled:
        rows.append(note_row("scaling", "peak RSS", "sampled from /proc every 0.5 s (VmHWM); results.json "
                             "has no `ranks` yet"))
    if approximate_start:
        rows.append(note_row("scaling", "time to first round", "timing.startup_s, from rank 0's start "
                             "(no timing.first_round_unix yet)"))
    by_centres = {r["centres"]: r for r in rows if r["case"] == "curve"}
    if 64 <= bench.max_centres and 32 in by_centres:
        at_64 = by_centres.get(64, {})
        rows.append(ratio_row("scaling", "per round after the first, 64 centres vs 32", at_64.get("seconds_per_round"),
                              by_centres[32].get("seconds_per_round"), TARGET_SCALING_64_OVER_32,
                              unit="s/round", note=at_64.get("note", "")))
        rows.append(ratio_row("scaling", "per round over the whole run (first and final exchange included), "
                              "64 centres vs 32", at_64.get("seconds_per_round_whole_run"),
                              by_centres[32].get("seconds_per_round_whole_run"), None, unit="s/round"))
    return rows


def telemetry(bench: Bench) -> List[Dict]:
    """Per-round cost of TensorBoard: the tiny model, runs alternated on/off."""
    rows = []
    centres = min(bench.centres, bench.max_centres)
    for pair in range(bench.pairs):
        for tensorboard in alternated([True, False], pair):
            label = "on" if tensorboard else "off"
            with bench.step(f"telemetry: TensorBoard {label}, {centres} centres (run {pair + 1}/{bench.pairs})") \
                    as said:
                job = run_project(centres + 1, tiny_round_args(centres, bench.rounds) + [
                    "--set", f"tracking_args.tensorboard={str(tensorboard).lower()}"],
                    bench.work / f"telemetry-{label}-{pair}", 300 + 30 * centres)
                said["result"] = f"{seconds_per_round(job.results) * 1000:.1f} ms/round"
            rows.append({"section": "telemetry", "case": f"tensorboard {label}", "centres": centres,
                         "run": pair, "seconds_per_round": seconds_per_round(job.results), "wall_s": job.wall_s})
    rows.append(ratio_row("telemetry", f"TensorBoard on vs off, {centres} centres, per round",
                          median_of(rows, "seconds_per_round", case="tensorboard on"),
                          median_of(rows, "seconds_per_round", case="tensorboard off"), 1.03,
                          unit="s/round", centres=centres))
    return rows


# --- per dataset (stand-in data) -----------------------------------------------------------------

STANDIN_WRITER = REPO / "scripts" / "standin_data.py"
INRAM_LOOP = REPO / "scripts" / "bench" / "flamby_inram.py"
DATASET_DEADLINE_S = 900  # one run of one dataset; the light ones take a minute or two here


def flamby_constants(name: str, env: Optional[Dict[str, str]]) -> Dict[str, int]:
    """FLamby's NUM_CLIENTS and BATCH_SIZE for a dataset, read in a child process (the 3-D datasets'
    imports, monai and nnU-Net, stay out of the benchmark's own process)."""
    done = subprocess.run([sys.executable, "-c", f"import flamby.datasets.{name} as m; "
                           "print('CONSTANTS', m.NUM_CLIENTS, m.BATCH_SIZE)"],
                          capture_output=True, text=True, timeout=300, env={**os.environ, **(env or {})})
    line = [ln for ln in done.stdout.splitlines() if ln.startswith("CONSTANTS ")]
    if done.returncode != 0 or not line:
        raise RunFailed(f"FLamby's {name} does not import: {(done.stderr.strip().splitlines() or ['?'])[-1][-300:]}")
    clients, batch = line[-1].split()[1:]
    return {"clients": int(clients), "batch": int(batch)}


def dataset_inputs(bench: Bench, run: per_dataset.DatasetRun):
    """(launcher arguments for the data, environment added for both runs), writing the stand-in data
    (and for Fed-ISIC2019 a FLamby with a train/test split) in the work directory."""
    if not run.standin:  # Fed-Heart-Disease: FLamby's real files
        if not (bench.heart_data / "processed.cleveland.data").exists():
            raise RunFailed(f"no Fed-Heart-Disease data in {bench.heart_data} (--heart-data DIR)")
        return ["--set", f"data_args.data_path={bench.heart_data}"], {}
    env: Dict[str, str] = {}
    if run.name == "fed_isic2019":
        site = bench.work / "isic-flamby"
        if not site.exists():
            isic_split.flamby_with_split(site, train_per_centre=run.batch_size or 8)
        env["PYTHONPATH"] = os.pathsep.join(p for p in (str(site), os.environ.get("PYTHONPATH")) if p)
    directory = bench.work / f"standin-{run.name}"
    if not directory.exists():
        done = subprocess.run([sys.executable, str(STANDIN_WRITER), run.name, str(directory)], capture_output=True,
                              text=True, timeout=600, env={**os.environ, **env})
        if done.returncode != 0:
            raise RunFailed(f"standin_data.py {run.name}: {done.stderr.strip()[-300:]}")
        (directory / "launcher-args.txt").write_text(done.stdout.strip().splitlines()[-1])
    return shlex.split((directory / "launcher-args.txt").read_text()), env


def one_dataset(bench: Bench, run: per_dataset.DatasetRun) -> List[Dict]:
    """MPI runs (one case per --rank-threads value) and FLamby's in-RAM loop, alternated."""
    base = {"section": per_dataset.SECTION, "dataset": run.name}
    if run.needs_gpu:
        print(f"  {run.name}: needs a GPU ({run.needs_gpu}); this section runs on CPU")
        return [{**base, "case": "status", "threads": t, "status": f"needs a GPU: {run.needs_gpu}"}
                for t in bench.rank_threads]
    data_args, env = dataset_inputs(bench, run)
    flamby = flamby_constants(run.name, env)
    ranks = flamby["clients"] + 1
    config = LAUNCHER.parent / "config" / f"{run.name}.yaml"
    common = data_args + per_dataset.run_arguments(run)
    cores = os.cpu_count() or 1
    rounds_label = f"{run.rounds} x {run.num_updates}"
    rows: List[Dict] = []
    if run.reduced:
        rows.append(note_row(per_dataset.SECTION, f"{run.name} settings", run.reduced))

    def mpi_case(threads):
        def go(pair):
            out = bench.work / f"datasets-{run.name}-mpi-{threads or 'auto'}-{pair}"
            extra = ["--set", f"device_args.cpu_threads={threads}"] if threads else []
            job = run_project(ranks, common + extra, out, DATASET_DEADLINE_S, config=config, env=env,
                              private_mb=run.private_mb)
            figures = per_dataset.mpi_breakdown((out / "rounds.csv").read_text(), job.results)
            rows.append({**base, "case": per_dataset.MPI_CASE, "threads": threads, "ranks": ranks, "run": pair,
                         "wall_s": job.wall_s, "rounds_label": rounds_label,
                         "threads_label": per_dataset.threads_label(threads, ranks, cores),
                         "batch": per_dataset.batch_label(run, flamby["batch"]),
                         "metrics": job.results.get("metrics", {}), **figures})
            return (f"round {figures['round_s'] or 0:.2f} s of which training {figures['train_s'] or 0:.2f} s, "
                    f"launcher {100 * (figures['share'] or 0):.1f}%")
        return (f"mpirun -n {ranks}, threads {threads or 'auto'}", go)

    def inram(pair):
        out = bench.work / f"datasets-{run.name}-inram-{pair}"
        out.mkdir(parents=True, exist_ok=True)
        job = launch([sys.executable, str(INRAM_LOOP), "--cf", str(config), *common], DATASET_DEADLINE_S,
                     env={**os.environ, **env}, cwd=out)
        if job.returncode != 0:
            raise RunFailed(job.failure())
        result = per_dataset.parse_inram(job.output)
        figures = per_dataset.inram_breakdown(result)
        rows.append({**base, "case": per_dataset.INRAM_CASE, "ranks": 1, "run": pair, "wall_s": job.wall_s,
                     "inram_threads": figures.pop("threads"), "metrics": result["metrics"],
                     "train_samples": result["train_samples"], **figures})
        return (f"round {figures['round_s'] or 0:.2f} s of which training {figures['train_s'] or 0:.2f} s "
                f"({result['threads']} threads)")

    cases = [mpi_case(t) for t in bench.rank_threads] + [("FLamby in-RAM FedAvg", inram)]
    failed = run_pairs(bench, f"datasets: {run.name}", cases)
    samples = next((r["train_samples"] for r in rows if r.get("case") == per_dataset.INRAM_CASE), ())
    for line in rows:  # a centre with fewer samples than a batch trains on smaller batches: say so
        if line.get("case") == per_dataset.MPI_CASE:
            line["batch"] = per_dataset.batch_label(run, flamby["batch"], samples)
    for threads in bench.rank_threads:
        mine = [r for r in rows if r.get("case") == per_dataset.MPI_CASE and r.get("threads") == threads]
        status = f"failed: {failed}" if failed else "measured"
        rows.append({**base, "case": "status", "threads": threads, "status": status})
        label = f"{run.name}" + (f", {threads} threads per rank" if threads else "")
        reference = [r for r in rows if r.get("case") == per_dataset.INRAM_CASE]
        rows.append(ratio_row(per_dataset.SECTION, f"{label}: whole run (wall), mpirun -n {ranks} vs FLamby in-RAM",
                              median_of(mine, "wall_s"), median_of(reference, "wall_s"), run.whole_run_target))
        rows.append(ratio_row(per_dataset.SECTION, f"{label}: training rounds ({rounds_label}), vs FLamby in-RAM",
                              median_of(mine, "rounds_total_s"), median_of(reference, "rounds_total_s"), None))
        rows.append(ratio_row(per_dataset.SECTION, f"{label}: launcher's share of a round (launcher / round)",
                              median_of(mine, "launcher_s"), median_of(mine, "round_s"), run.share_target,
                              unit="s/round"))
        if mine and reference:
            rows.append(note_row(per_dataset.SECTION, f"{label}: same work",
                                 per_dataset.metrics_agreement(mine[-1]["metrics"], reference[-1]["metrics"])))
    return rows


def datasets(bench: Bench) -> List[Dict]:
    """Each FLamby dataset (--datasets) on stand-in data (heart on its real files): per round the
    time training, the time in the launcher and its share, peak memory per rank, against FLamby's
    in-RAM FedAvg on the same data with the same settings (scripts/bench/flamby_inram.py)."""
    if importlib.util.find_spec("flamby") is None:
        return [note_row(per_dataset.SECTION, "skipped", "FLamby is not importable")]
    rows: List[Dict] = []
    for name in bench.datasets:
        run = per_dataset.with_updates(per_dataset.DATASETS[name], bench.dataset_updates)
        try:
            rows += one_dataset(bench, run)
        except RunFailed as failure:
            print(f"  {name}: {failure}", flush=True)
            rows += [{"section": per_dataset.SECTION, "dataset": name, "case": "status", "threads": t,
                      "status": f"not run: {str(failure)[-300:]}"} for t in bench.rank_threads]
    return rows


def dataset_report(rows: List[Dict], markdown: bool = False) -> str:
    """The per-dataset table, when the datasets section ran (report() has the ratios and notes)."""
    body = per_dataset.dataset_table(rows)
    if not body:
        return ""
    title = "Per dataset (medians over the runs; stand-in data, heart real)"
    table = (format_markdown if markdown else format_text)(per_dataset.TABLE_HEADER, body)
    return "\n\n" + ("**" + title + "**" if markdown else title) + "\n\n" + table


# One entry per section, run in this order. A section is `section(bench) -> rows` (rows: see
# benchmark_report.py; a ratio row from ratio_row() carries its target).
def checkpoint_figures(results: Dict) -> Dict:
    """results.json's checkpoint cost per cut (on the round's critical path), when the run wrote any."""
    saved = results.get("checkpoints") or {}
    return {"checkpoint_mean_s": saved["mean_s"]} if saved.get("mean_s") is not None else {}


def checkpoint_cost(bench: Bench) -> List[Dict]:
    """A checkpoint every round (the default) against none, side by side, runs alternated:
    Fed-Heart-Disease under `mpirun -np 5`, results.json's training time (target: at most 1.05x), and
    the exchange section's 100 MB model x 4 clients over the whole run, first round and final
    exchange included, against raw_mpi_round.py (target: at most 1.25x; checkpoints off beside it)."""
    rows = []
    if (bench.heart_data / "processed.cleveland.data").exists() and importlib.util.find_spec("flamby"):
        data = ["--set", f"data_args.data_path={bench.heart_data}"]

        def heart_run(every: int):
            def run(pair: int):
                out = bench.work / f"ckpt-heart-{every}-{pair}"
                job = run_project(5, data + ["--set", f"common_args.checkpoint_every={every}"], out, 900,
                                  config=HEART_CONFIG)
                rows.append({"section": "checkpoints", "case": f"heart, checkpoint_every={every}", "run": pair,
                             "seconds": job.results["timing"]["train_s"], "wall_s": job.wall_s,
                             **checkpoint_figures(job.results)})
                return f"training {job.results['timing']['train_s']:.3f} s"
            return run

        failed = run_pairs(bench, "checkpoints: heart", [("every round", heart_run(1)), ("none", heart_run(0))])
        if failed:
            rows.append(note_row("checkpoints", "heart failed", failed))
        else:
            rows.append(ratio_row("checkpoints", "heart, training time, checkpoint every round vs none",
                                  median_of(rows, "seconds", case="heart, checkpoint_every=1"),
                                  median_of(rows, "seconds", case="heart, checkpoint_every=0"), 1.05, unit="s"))
    else:
        rows.append(note_row("checkpoints", "heart skipped", "no FLamby or no Fed-Heart-Disease data"))
    raw_round = SHARED / "bench" / "raw_mpi_round.py"
    if not raw_round.exists():
        return rows + [note_row("checkpoints", "100 MB skipped", f"{raw_round} is not here")]
    clients, megabytes, rounds = 4, 100, EXCHANGE_ROUNDS
    env = big_model_env(clients, megabytes)

    def big_run(every: int):
        def run(pair: int):
            out = bench.work / f"ckpt-big-{every}-{pair}"
            results = big_model_run(clients, rounds, out, env,
                                    extra_args=["--set", f"common_args.checkpoint_every={every}"])
            value = results["timing"]["train_s"] / results["rounds_completed"]
            rows.append({"section": "checkpoints", "case": f"100 MB, checkpoint_every={every}", "run": pair,
                         "seconds_per_round": value, **checkpoint_figures(results)})
            return f"{value:.3f} s/round over the run"
        return run

    def raw(pair: int):
        value = raw_round_seconds(clients, megabytes)
        rows.append({"section": "checkpoints", "case": "100 MB, raw MPI", "run": pair, "seconds_per_round": value})
        return f"{value:.3f} s/round"

    failed = run_pairs(bench, f"checkpoints: {megabytes} MB x {clients}",
                       [("every round", big_run(1)), ("none", big_run(0)), ("raw MPI", raw)])
    if failed:
        return rows + [note_row("checkpoints", "100 MB failed", failed)]
    for case in ("heart, checkpoint_every=1", "100 MB, checkpoint_every=1"):
        cost = median_of(rows, "checkpoint_mean_s", case=case)
        if cost is not None:
            rows.append(note_row("checkpoints", f"{case.split(',')[0]}: what a cut costs the round",
                                 f"{cost * 1000:.1f} ms per cut, median of runs (results.json `checkpoints.mean_s`: "
                                 "the server's part plus the slowest client's, as the round waited for them)"))
    reference = median_of(rows, "seconds_per_round", case="100 MB, raw MPI")
    rows.append(ratio_row("checkpoints", f"{megabytes} MB x {clients}, checkpoint every round, whole run, vs raw MPI",
                          median_of(rows, "seconds_per_round", case="100 MB, checkpoint_every=1"), reference, 1.25,
                          unit="s/round", centres=clients))
    rows.append(ratio_row("checkpoints", f"{megabytes} MB x {clients}, no checkpoint, whole run, vs raw MPI",
                          median_of(rows, "seconds_per_round", case="100 MB, checkpoint_every=0"), reference, None,
                          unit="s/round", centres=clients))
    return rows


SECTIONS: Dict[str, Callable] = {
    "heart": heart,
    "startup": startup,
    "tiny_round": tiny_round,
    "exchange": exchange,
    "exchange_hosts": exchange_hosts,
    "scaling": scaling,
    "telemetry": telemetry,
    "checkpoints": checkpoint_cost,
    "datasets": datasets,
}


def run_section(name: str, bench: Bench) -> List[Dict]:
    section = SECTIONS[name]
    try:
        if len(inspect.signature(section).parameters) == 4:
            # the first form of this table, `section(work, pairs, centres, rounds)`, still works
            return section(bench.work, bench.pairs, bench.centres, bench.rounds)
        return section(bench)
    except RunFailed as failure:
        print(f"  {name} stopped: {failure}", flush=True)
        return [note_row(name, "failed", str(failure)[-400:])]


def parse_sections(text: str) -> List[str]:
    chosen = [s.strip() for s in text.split(",") if s.strip()]
    unknown = [s for s in chosen if s not in SECTIONS]
    if unknown or not chosen:
        raise ValueError(f"unknown section(s) {', '.join(unknown) or '(none given)'}; "
                         f"choose from {', '.join(SECTIONS)}")
    return chosen


def machine() -> str:
    cpu = next((ln.split(":", 1)[1].strip() for ln in Path("/proc/cpuinfo").read_text().splitlines()
                if ln.startswith("model name")), platform.processor() or "unknown CPU")
    memory = next(int(ln.split()[1]) for ln in Path("/proc/meminfo").read_text().splitlines()
                  if ln.startswith("MemTotal:"))
    return f"{os.cpu_count()} cores ({cpu}), {memory / 2 ** 20:.0f} GiB"


def markdown_path(option: Optional[str], date: str) -> Optional[Path]:
    """Where --markdown writes its record: None to print it, a directory's <date>.md, or the file named."""
    if option is None or option == "-":
        return None
    path = Path(option)
    return path / f"{date}.md" if path.is_dir() or option.endswith("/") else path


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", default="benchmark", help="directory for benchmark.csv and benchmark.png")
    parser.add_argument("--sections", default=",".join(SECTIONS),
                        help=f"comma-separated, of: {', '.join(SECTIONS)} (default: all)")
    parser.add_argument("--pairs", type=int, default=2, help="alternated runs of each case (medians are compared)")
    parser.add_argument("--rounds", type=int, default=20, help="rounds of a tiny-model run (5x at 4 centres)")
    parser.add_argument("--max-centres", type=int, default=64, help="skip every case with more centres")
    parser.add_argument("--centres", type=int, default=32, help="centres of the telemetry section")
    parser.add_argument("--heart-data", type=Path, default=Path(os.environ.get(
        "HEART_DATA", SHARED / "data" / "fed_heart_disease")), help="Fed-Heart-Disease's files")
    parser.add_argument("--datasets", default=",".join(per_dataset.LIGHT),
                        help="the datasets section's, comma-separated (fed_ may be left out), or all: "
                             f"{', '.join(per_dataset.DATASETS)} (default: {','.join(per_dataset.LIGHT)}; "
                             "fed_kits19 is heavy, run only when named)")
    parser.add_argument("--rank-threads", default="auto",
                        help="the datasets section's torch threads per MPI rank, comma-separated, each a case: "
                             "auto (the launcher's default, cores / ranks) or a number, e.g. auto,2")
    parser.add_argument("--dataset-updates", type=int, default=None, metavar="N",
                        help="the datasets section's local updates per round, for every dataset but heart "
                             "(default: each dataset's own, said in the Notes table), e.g. 20 for fed_kits19, "
                             "whose 1 update per round leaves a round mostly messages")
    parser.add_argument("--markdown", nargs="?", const="-", default=None, metavar="PATH",
                        help="also print the tables as markdown; with PATH, write them to that new file "
                             "instead (a directory: PATH/<date>.md), e.g. docs/benchmarks/")
    parser.add_argument("--repo", type=Path, default=REPO,
                        help="the checkout whose launch_client.py is measured (default: this one)")
    args = parser.parse_args(argv)
    try:
        sections = parse_sections(args.sections)
        chosen_datasets = per_dataset.parse_datasets(args.datasets)
        rank_threads = per_dataset.parse_rank_threads(args.rank_threads)
    except ValueError as error:
        parser.error(str(error))
    if args.pairs < 1 or args.rounds < 1 or args.max_centres < 1:
        parser.error("--pairs, --rounds and --max-centres must be at least 1")
    if args.dataset_updates is not None and args.dataset_updates < 1:
        parser.error("--dataset-updates must be at least 1")
    global LAUNCHER, CONFIG, HEART_CONFIG
    LAUNCHER = args.repo.resolve() / "launch_client.py"
    CONFIG = args.repo.resolve() / "config" / "fedml_config.yaml"
    HEART_CONFIG = args.repo.resolve() / "config" / "fed_heart_disease.yaml"
    started = time.strftime("%Y-%m-%d")
    record = markdown_path(args.markdown, started)
    if record is not None and record.exists():  # refused before an hour of measuring, not after
        parser.error(f"{record} exists: a dated record is never overwritten; give another PATH")
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    rows: List[Dict] = []
    # SIGTERM (a scheduler, `timeout`) unwinds like Ctrl-C: the running job is killed, the files kept.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    with tempfile.TemporaryDirectory(prefix="flamby-mpi-bench-") as work:
        for name in sections:
            print(f"{name}:", flush=True)
            start = time.monotonic()
            rows += run_section(name, Bench(Path(work), args.pairs, args.rounds, args.max_centres, args.centres,
                                            args.heart_data.resolve(), datasets=chosen_datasets,
                                            rank_threads=rank_threads, dataset_updates=args.dataset_updates))
            print(f"  ({name}: {time.monotonic() - start:.0f} s)", flush=True)
            write_csv(rows, out / "benchmark.csv")  # after every section: a long run stopped keeps what it measured
    draw(rows, out / "benchmark.png")
    print("\n" + report(rows) + dataset_report(rows))
    if args.markdown is not None:
        command = " ".join(["python scripts/benchmark.py", *(argv if argv is not None else sys.argv[1:])])
        tables = (f"Measured {started} on {machine()}, with `{command}`:\n\n" + report(rows, markdown=True)
                  + dataset_report(rows, markdown=True))
        if record is None:
            print("\n--- markdown ---\n" + tables)
        else:
            record.parent.mkdir(parents=True, exist_ok=True)
            with open(record, "x") as file:
                file.write(f"# Benchmark, {started}\n\n{tables}\n")
            print(f"wrote {record}")
    print(f"\nwrote {out / 'benchmark.csv'} and {out / 'benchmark.png'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
