"""The pure half of scripts/benchmark.py's `datasets` section: which datasets run with what
settings, the per-round breakdown of an MPI run (rounds.csv and results.json) and of FLamby's
in-RAM loop (flamby_inram.py's RESULT line), and the per-dataset table. Nothing here runs a job,
so tests/test_unit_benchmark.py covers all of it.

What a round is made of, as the run already records it (flamby_mpi/outputs/telemetry.py):
- rounds.csv `round_s`: rank 0's time for the round, from the end of the previous aggregation to
  the end of this one: its message out, the clients' work, their replies in, the aggregation, and
  the previous cut's checkpoint on rank 0 (written after that aggregation);
- rounds.csv `local_train_s`: each centre's local updates (its num_updates optimizer steps). The
  clients train at the same time, so the round waits for the slowest: that is the round's
  training time;
- what is left, `round_s - slowest local_train_s`, is the launcher's: messages, aggregation, the
  checkpoint (each client writes its part before replying, rank 0 its part and the manifest),
  telemetry. results.json `checkpoints.mean_s` says how much of it is the checkpoint.
FLamby's in-RAM loop has the same split: each round's whole time and its local updates (the rest
is FLamby's averaging and copying of parameters).
"""
from __future__ import annotations

import csv
import io
import json
import statistics
from dataclasses import dataclass, replace
from typing import Dict, List, Optional, Sequence

SECTION = "datasets"
MPI_CASE = "flamby-mpi"
INRAM_CASE = "FLamby in-RAM"


@dataclass(frozen=True)
class DatasetRun:
    """One dataset's benchmark run: FLamby's settings except where `reduced` says why not."""
    name: str  # FLamby's
    rounds: int
    num_updates: int
    batch_size: Optional[int]  # None: FLamby's BATCH_SIZE
    reduced: str  # what differs from FLamby's benchmark settings, and why ("" for none)
    private_mb: float  # private memory per rank, for the check before launch (a little above measured)
    standin: bool = True  # stand-in data (scripts/standin_data.py); else the real data (heart)
    heavy: bool = False  # run only when named in --datasets
    needs_gpu: str = ""  # why it cannot run on CPU (FLamby's code calls .cuda()), "" when it can
    share_target: Optional[float] = None  # issue 21: the launcher's share of a round at most this
    whole_run_target: Optional[float] = None  # issue 21: MPI run at most this x FLamby's in-RAM loop


FEWER = "num_updates and rounds cut from FLamby's 100 x get_nb_max_rounds(100) to fit the section in ~10 min on 2 cores"
DATASETS: Dict[str, DatasetRun] = {r.name: r for r in (
    DatasetRun("fed_heart_disease", 15, 100, None, "", 550.0, standin=False),
    DatasetRun("fed_ixi", 3, 2, None, FEWER, 1700.0, share_target=0.05, whole_run_target=1.0),
    DatasetRun("fed_isic2019", 3, 2, 8, FEWER + "; batch 8, not FLamby's 64: EfficientNet-b0 at 64 needs about "
               "6 GB per rank on CPU (6 clients: 36 GB on a 24 GB machine) and about 30 s per update on one core",
               1300.0, share_target=0.05, whole_run_target=1.0),
    DatasetRun("fed_camelyon16", 3, 3, None, FEWER + "; the stand-in has 2 training slides per centre, so its "
               "batches hold 2 bags, not FLamby's 16", 900.0),
    DatasetRun("fed_kits19", 2, 1, None, "num_updates and rounds cut from FLamby's 100 x 30", 2500.0, heavy=True,
               share_target=0.05),
    DatasetRun("fed_lidc_idri", 2, 1, None, "", 3000.0, needs_gpu="FLamby's LIDC-IDRI loss calls .cuda()",
               share_target=0.05),
)}
LIGHT = tuple(name for name, run in DATASETS.items() if not run.heavy)


def with_updates(run: DatasetRun, updates: Optional[int]) -> DatasetRun:
    """run with `updates` local updates per round (--dataset-updates), said in its Notes row;
    heart keeps FLamby's own settings, and None changes nothing."""
    if updates is None or not run.standin or updates == run.num_updates:
        return run
    said = f"--dataset-updates {updates}: {updates} local updates per round instead of {run.num_updates}"
    return replace(run, num_updates=updates, reduced=f"{run.reduced}; {said}" if run.reduced else said)


def dataset_name(text: str) -> str:
    """FLamby's name from what a user types: `fed_ixi`, `ixi`, `heart` (for fed_heart_disease)."""
    key = text.strip().lower()
    for name in DATASETS:
        if key in (name, name[len("fed_"):], name[len("fed_"):].split("_")[0]):
            return name
    raise ValueError(f"unknown dataset {text.strip()!r}; choose from {', '.join(DATASETS)} "
                     f"(the fed_ may be left out; default: {','.join(LIGHT)})")


def parse_datasets(text: str) -> List[str]:
    """--datasets: comma-separated names, each once, in the order given; `all` is every dataset."""
    if text.strip().lower() == "all":
        return list(DATASETS)
    chosen: List[str] = []
    for part in (p for p in text.split(",") if p.strip()):
        name = dataset_name(part)
        if name not in chosen:
            chosen.append(name)
    if not chosen:
        raise ValueError(f"no dataset given; choose from {', '.join(DATASETS)}")
    return chosen


def parse_rank_threads(text: str) -> List[Optional[int]]:
    """--rank-threads: comma-separated torch threads per rank of the MPI runs, each a case of its own;
    `auto` (None) is the launcher's default (device_args.cpu_threads unset: cores / ranks)."""
    values: List[Optional[int]] = []
    for part in (p.strip().lower() for p in text.split(",") if p.strip()):
        if part == "auto":
            value = None
        elif part.isdigit() and 1 <= int(part) <= 1024:
            value = int(part)
        else:
            raise ValueError(f"--rank-threads: {part!r} is neither `auto` nor a number of threads from 1 to 1024")
        if value not in values:
            values.append(value)
    if not values:
        raise ValueError("--rank-threads: give `auto` or numbers of threads, e.g. auto,2")
    return values


def threads_per_rank(configured: Optional[int], ranks: int, cores: int) -> int:
    """What each rank runs with: the launcher's rule (flamby_mpi/driver.py torch_threads)."""
    return configured or max(1, cores // ranks)


def threads_label(configured: Optional[int], ranks: int, cores: int) -> str:
    used = threads_per_rank(configured, ranks, cores)
    return f"{used} (cpu_threads={configured})" if configured else f"{used} (default: {cores} cores / {ranks} ranks)"


def run_arguments(run: DatasetRun) -> List[str]:
    """--set arguments for both the MPI run and the in-RAM loop: the rounds, updates and batch size,
    evaluation only after the last round (FLamby's loop evaluates once, at the end) and no pooled
    test (the in-RAM loop evaluates the centres' test sets only)."""
    args = ["--set", f"train_args.comm_round={run.rounds}", "--set", f"train_args.num_updates={run.num_updates}",
            "--set", f"validation_args.frequency_of_the_test={run.rounds + 1}",
            "--set", "validation_args.pooled_test=off"]
    if run.batch_size is not None:
        args += ["--set", f"train_args.batch_size={run.batch_size}"]
    return args


def _number(text: Optional[str]) -> Optional[float]:
    return float(text) if text not in (None, "") else None


def mpi_breakdown(rounds_csv: str, results: Dict) -> Dict[str, Optional[float]]:
    """Per round, averaged over the training rounds of one MPI run: `round_s` (rank 0's), `train_s`
    (the slowest centre's local updates), `launcher_s` (the rest) and `share` (launcher over the
    round, over the whole run); `checkpoint_s` per cut (results.json, server's write plus the slowest
    client's); the sums over the run (`rounds_total_s`, `train_total_s`); peak RSS of rank 0 and of
    the largest client (results.json `ranks`)."""
    rounds: Dict[int, Dict[str, object]] = {}
    for row in csv.DictReader(io.StringIO(rounds_csv)):
        number = int(row["round"])
        entry = rounds.setdefault(number, {"round_s": _number(row.get("round_s")), "train": []})
        local = _number(row.get("local_train_s"))
        if local is not None and row.get("sampled", "True") != "False":
            entry["train"].append(local)
    complete = [(r["round_s"], max(r["train"])) for _, r in sorted(rounds.items())
                if r["round_s"] is not None and r["train"]]
    ranks = results.get("ranks") or []
    server = [r["peak_rss_mb"] for r in ranks if r.get("role") == "server" and r.get("peak_rss_mb") is not None]
    clients = [r["peak_rss_mb"] for r in ranks if r.get("role") == "client" and r.get("peak_rss_mb") is not None]
    checkpoint = (results.get("checkpoints") or {}).get("mean_s")
    out: Dict[str, Optional[float]] = {
        "rounds": len(complete), "checkpoint_s": checkpoint,
        "server_rss_mb": max(server) if server else None, "client_rss_mb": max(clients) if clients else None,
        "round_s": None, "train_s": None, "launcher_s": None, "share": None,
        "rounds_total_s": None, "train_total_s": None}
    if complete:
        total = sum(r for r, _ in complete)
        train = sum(t for _, t in complete)
        out.update(round_s=total / len(complete), train_s=train / len(complete),
                   launcher_s=(total - train) / len(complete), share=(total - train) / total if total > 0 else None,
                   rounds_total_s=total, train_total_s=train)
    return out


def parse_inram(output: str) -> Dict:
    """flamby_inram.py's `RESULT {json}` line (its last; tqdm's progress may share the line)."""
    lines = [line for line in output.splitlines() if "RESULT {" in line]
    if not lines:
        raise ValueError("no RESULT line in flamby_inram.py's output")
    return json.loads(lines[-1][lines[-1].index("RESULT {") + len("RESULT "):])


def inram_breakdown(result: Dict) -> Dict[str, Optional[float]]:
    """The same figures as mpi_breakdown for FLamby's loop: `train_s` is every centre's local updates
    (one after another), `launcher_s` FLamby's averaging and parameter copies."""
    rounds = result.get("rounds") or []
    total = sum(r["round_s"] for r in rounds)
    train = sum(r["train_s"] for r in rounds)
    n = len(rounds)
    return {"rounds": n, "round_s": total / n if n else None, "train_s": train / n if n else None,
            "launcher_s": (total - train) / n if n else None,
            "share": (total - train) / total if total > 0 else None,
            "rounds_total_s": total if n else None, "train_total_s": train if n else None,
            "peak_rss_mb": result.get("peak_rss_mb"), "threads": result.get("threads")}


def batch_label(run: DatasetRun, flamby_batch: Optional[int], train_samples: Sequence[int] = ()) -> str:
    """The batch size used, FLamby's beside it when different, and a smaller one where a centre has
    fewer training samples than a batch (its batches are then all of its samples)."""
    used = run.batch_size or flamby_batch
    text = "?" if used is None else str(used)
    if run.batch_size is not None and flamby_batch is not None and run.batch_size != flamby_batch:
        text += f" (FLamby's {flamby_batch})"
    if used is not None and train_samples and min(train_samples) < used:
        text += f", {min(train_samples)} per centre here"
    return text


def metrics_agreement(mpi: Dict[str, float], inram: Dict[str, float]) -> str:
    """How far the MPI run's per-centre metrics are from FLamby's loop's (the data order of a rank's
    loader is its own seeded stream, FLamby's loop shuffles from one global stream: equal metrics
    are not expected, close ones say both did the same kind of work)."""
    keys = sorted(k for k in inram if k.startswith("client_test_"))
    pairs = [(mpi.get(k), inram[k]) for k in keys]
    if not keys or any(a is None or b is None for a, b in pairs):
        return "metrics not compared (missing on one side)"
    largest = max(abs(a - b) for a, b in pairs)
    return "the same per-centre metrics" if largest == 0 else f"per-centre metrics differ by at most {largest:.4f}"


def _median(values: Sequence[Optional[float]]) -> Optional[float]:
    present = [v for v in values if v is not None]
    return statistics.median(present) if present else None


def dataset_rows(rows: List[Dict]) -> List[Dict]:
    """The per-dataset lines: for each (dataset, threads) the medians over its MPI runs, with the
    in-RAM loop's medians beside them; a dataset that did not run keeps its note."""
    lines: List[Dict] = []
    seen = []
    for r in rows:
        if r.get("section") == SECTION and r.get("dataset") and (r["dataset"], r.get("threads")) not in seen \
                and r.get("case") in (MPI_CASE, "status"):
            seen.append((r["dataset"], r.get("threads")))
    for dataset, threads in seen:
        mine = [r for r in rows if r.get("section") == SECTION and r.get("dataset") == dataset]
        mpi = [r for r in mine if r.get("case") == MPI_CASE and r.get("threads") == threads]
        inram = [r for r in mine if r.get("case") == INRAM_CASE]
        status = next((r.get("status") for r in mine if r.get("case") == "status" and r.get("threads") == threads),
                      "")
        line = {"dataset": dataset, "threads": threads, "status": status or ("measured" if mpi else "not run")}
        for key in ("ranks", "batch", "rounds_label", "threads_label"):
            line[key] = next((r.get(key) for r in mpi if r.get(key) is not None), None)
        for key in ("round_s", "train_s", "launcher_s", "share", "checkpoint_s", "server_rss_mb", "client_rss_mb",
                    "wall_s", "rounds_total_s"):
            line[key] = _median([r.get(key) for r in mpi])
        line["inram_round_s"] = _median([r.get("round_s") for r in inram])
        line["inram_train_s"] = _median([r.get("train_s") for r in inram])
        line["inram_threads"] = next((r.get("inram_threads") for r in inram if r.get("inram_threads")), None)
        line["inram_rss_mb"] = _median([r.get("peak_rss_mb") for r in inram])
        lines.append(line)
    return lines


def _seconds(value: Optional[float]) -> str:
    if value is None:
        return "-"
    return f"{value * 1000:.0f} ms" if value < 1 else f"{value:.2f} s"


def _mb(value: Optional[float]) -> str:
    return "-" if value is None else f"{value:,.0f}"


TABLE_HEADER = ["dataset", "ranks", "batch", "rounds x updates", "torch threads per rank", "round", "training",
                "launcher", "launcher share", "checkpoint per cut", "peak RSS MB: server / largest client",
                "FLamby in-RAM: round / training (threads, peak RSS MB)", "status"]


def dataset_table(rows: List[Dict]) -> List[List[str]]:
    """One line per dataset and thread setting (medians over the runs)."""
    table = []
    for line in dataset_rows(rows):
        share = "-" if line["share"] is None else f"{line['share'] * 100:.1f}%"
        inram = "-" if line["inram_round_s"] is None else (
            f"{_seconds(line['inram_round_s'])} / {_seconds(line['inram_train_s'])} "
            f"({line['inram_threads']}, {_mb(line['inram_rss_mb'])})")
        table.append([line["dataset"], str(line["ranks"] or "-"), line["batch"] or "-", line["rounds_label"] or "-",
                      line["threads_label"] or "-", _seconds(line["round_s"]), _seconds(line["train_s"]),
                      _seconds(line["launcher_s"]), share, _seconds(line["checkpoint_s"]),
                      f"{_mb(line['server_rss_mb'])} / {_mb(line['client_rss_mb'])}", inram, line["status"]])
    return table
