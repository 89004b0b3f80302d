"""The report picture of a run, and a comparison of several runs.

`write_report(output_dir)` draws `<output_dir>/report.png` at the end of a run:
the test metric per centre and pooled over rounds (metrics.csv), the train loss
per centre over rounds and the per-round time split between local training and
waiting for the next model (rounds.csv, when the run has one).

    python -m flamby_mpi.report RUN_DIR [RUN_DIR ...] [--out FILE]

redraws it for one run or overlays several (one colour per run) into one
picture (default `comparison.png` in the current directory) and prints their
final metrics side by side.

Only the standard library at import time: the launcher imports this module, and
matplotlib is imported by the functions that draw. No torch, FedML or MPI here.
"""
from __future__ import annotations

import argparse
import csv
import io
import json
import logging
import math
import os
import re
import shutil
import sys
import tempfile
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Dict, List, Optional, Sequence

from .. import not_run_yet
from ..exit.errors import UserError, plain
from ..exit.failures import fail
from ..storage import safe_files

REPORT_NAME = "report.png"
DEFAULT_COMPARISON = "comparison.png"
METRICS_COLUMNS = ("round", "test", "metric", "num_samples")
# rounds.csv: one row per round (1-based) and centre (0-based); bytes_sent/bytes_received are
# not drawn, so not required.
ROUNDS_COLUMNS = ("round", "centre", "local_train_s", "wait_s", "train_loss", "sampled")

_RUN_HINT = ("give the output directory of a finished run (common_args.output_dir, default "
             "runs/<run_id>): results.json is written there when the run ends")
_CLIENT_TEST = re.compile(r"^client_test_(\d+)$")


@dataclass
class Run:
    """What the report reads from one run directory."""

    path: Path
    results: Dict
    metrics: List[Dict] = field(default_factory=list)  # rows of metrics.csv
    rounds: Optional[List[Dict]] = None  # rows of rounds.csv; None when the run has none
    notes: List[str] = field(default_factory=list)  # what could not be read, shown on the picture

    @property
    def label(self) -> str:
        private = " with DP" if isinstance(self.results.get("differential_privacy"), dict) else ""
        return f"{self.results.get('strategy', '?')}{private} ({self.name})"

    @property
    def name(self) -> str:
        """The run directory's name: its run id in runs/<run_id>; where common_args.output_dir named
        it without --run_id, the user's name, not the automatic timestamp run id, which tells
        compared runs apart poorly. Made absolute first: "." has no name of its own."""
        return Path(os.path.abspath(self.path)).name or str(self.results.get("run_id", self.path))

    @property
    def final_metrics(self) -> Dict[str, Optional[float]]:
        metrics = self.results.get("metrics")
        return metrics if isinstance(metrics, dict) else {}


def _number(text: str) -> Optional[float]:
    """A CSV cell as a float; empty or 'nan' is None."""
    text = text.strip()
    if text == "" or text.lower() in ("nan", "none", "null"):
        return None
    return float(text)


def _boolean(text: str) -> bool:
    value = text.strip().lower()
    if value in ("true", "1", "yes"):
        return True
    if value in ("false", "0", "no"):
        return False
    raise ValueError(f"sampled must be true or false, not {text!r}")


def _read_csv(path: Path, required: Sequence[str]) -> List[Dict[str, str]]:
    with open(path, newline="") as f:
        reader = csv.DictReader(f)
        missing = [c for c in required if c not in (reader.fieldnames or [])]
        if missing:
            raise ValueError(f"missing column(s) {', '.join(missing)} (has: "
                             f"{', '.join(reader.fieldnames or []) or 'nothing'})")
        return list(reader)


def read_metrics(path: Path) -> List[Dict]:
    """metrics.csv: {round, test, metric, num_samples}, metric None when not a number."""
    rows = []
    for line, row in enumerate(_read_csv(path, METRICS_COLUMNS), start=2):
        try:
            rows.append({"round": int(row["round"]), "test": row["test"],
                         "metric": _number(row["metric"]),
                         "num_samples": None if not row["num_samples"].strip() else int(row["num_samples"])})
        except (ValueError, AttributeError) as error:
            raise ValueError(f"line {line}: {error}") from None
    return rows


def read_rounds(path: Path) -> List[Dict]:
    """rounds.csv: {round, centre, local_train_s, wait_s, train_loss, sampled}; empty cells None."""
    rows = []
    for line, row in enumerate(_read_csv(path, ROUNDS_COLUMNS), start=2):
        try:
            rows.append({"round": int(row["round"]), "centre": int(row["centre"]),
                         "local_train_s": _number(row["local_train_s"]),
                         "wait_s": _number(row["wait_s"]),
                         "train_loss": _number(row["train_loss"]),
                         "sampled": _boolean(row["sampled"])})
        except (ValueError, AttributeError) as error:
            raise ValueError(f"line {line}: {error}") from None
    return rows


def load_run(run_dir) -> Run:
    """Reads a finished run's directory. UserError when it is missing, a file, or has no usable
    results.json (one without metrics is not a finished run's); a missing or unreadable metrics.csv
    or rounds.csv only leaves its panels out (see Run.notes)."""
    path = Path(run_dir)
    if path.is_file():
        raise UserError(f"{path} is a file, not a run directory", _file_hint(path))
    if not path.is_dir():
        raise UserError(f"no run directory {path}", _RUN_HINT)
    results_path = path / "results.json"
    if not results_path.is_file():
        raise UserError(f"{path} has no results.json: not the directory of a finished run", _RUN_HINT)
    try:
        results = json.loads(results_path.read_text())
    except (OSError, ValueError) as error:
        raise UserError(f"cannot read {results_path}: {error}", _RUN_HINT) from None
    if not isinstance(results, dict):
        raise UserError(f"{results_path} is not a JSON object", _RUN_HINT)
    problem = _metrics_problem(results)
    if problem:  # the table would be empty, and the picture of nothing
        raise UserError(f"{results_path} is not a finished run's results.json: {problem}", _RUN_HINT)
    run = Run(path=path, results=results)
    metrics_path = path / "metrics.csv"
    try:
        run.metrics = read_metrics(metrics_path)
    except FileNotFoundError:
        run.notes.append(f"{metrics_path.name} missing: metric over rounds not drawn")
    except (OSError, ValueError) as error:
        run.notes.append(f"{metrics_path.name} unreadable ({error}): metric over rounds not drawn")
    rounds_path = path / "rounds.csv"
    try:
        run.rounds = read_rounds(rounds_path)
    except FileNotFoundError:
        run.notes.append("no rounds.csv: train loss and time per round not drawn")
    except (OSError, ValueError) as error:
        run.notes.append(f"rounds.csv unreadable ({error}): train loss and time per round not drawn")
    return run


def _metrics_problem(results: Dict) -> Optional[str]:
    """What is wrong with results.json's metrics (the final metric per test set, which a finished
    run always writes), or None."""
    if "metrics" not in results:
        return "it has no metrics (the final metric per test set)"
    metrics = results["metrics"]
    if not isinstance(metrics, dict):
        return f"its metrics is {_json_kind(metrics)}, not an object of the final metric per test set"
    return None


def _json_kind(value) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "a boolean"
    return {list: "a list", str: "a string"}.get(type(value), "a number")


def _file_hint(path: Path) -> str:
    """A file of a run given for its directory (results.json, most likely): that directory."""
    if (path.parent / "results.json").is_file():
        return f"give the run's directory: {path.parent}"
    return _RUN_HINT


def _test_order(name: str):
    match = _CLIENT_TEST.match(name)
    if match:
        return (0, int(match.group(1)), name)
    return (1, {"average": 0, "pooled": 1}.get(name, 2), name)


def _test_label(name: str) -> str:
    match = _CLIENT_TEST.match(name)
    return f"centre {match.group(1)}" if match else name


def _shown(value) -> str:
    if value is None or not isinstance(value, (int, float)) or isinstance(value, bool) \
            or math.isnan(value):
        return "n/a"
    return f"{value:.4f}"


def format_comparison(runs: Sequence[Run]) -> str:
    """Final metrics side by side: rows client_test_<k>, average, pooled; one column per run."""
    names = sorted({name for run in runs for name in run.final_metrics}, key=_test_order)
    headers = [run.label for run in runs]
    first = max([len("test set"), *map(len, names)])
    widths = [max(len(h), 6) for h in headers]
    lines = ["  ".join([f"{'test set':<{first}}", *(f"{h:<{w}}" for h, w in zip(headers, widths, strict=True))]),
             "  ".join(["-" * first, *("-" * w for w in widths)])]
    for name in names:
        cells = [_shown(run.final_metrics.get(name)) if name in run.final_metrics else "-" for run in runs]
        lines.append("  ".join([f"{name:<{first}}", *(f"{c:<{w}}" for c, w in zip(cells, widths, strict=True))]))
    return "\n".join(line.rstrip() for line in lines)


def mixed_datasets_note(runs: Sequence[Run]) -> Optional[str]:
    """A note when the runs are of different datasets: each has its own metric (AUC, Dice, ...), so
    a row of the table puts different measures side by side. Compared all the same: the user asked."""
    datasets = sorted({plain(run.results["dataset"]) for run in runs if "dataset" in run.results})
    if len(datasets) < 2:
        return None
    return (f"these runs are of different datasets ({', '.join(datasets)}): each has its own metric, "
            "so a row of the table compares different measures")


def _mean(values) -> Optional[float]:
    values = [v for v in values if v is not None and not math.isnan(v)]
    return sum(values) / len(values) if values else None


def time_split(rounds: Sequence[Dict]) -> List[Dict]:
    """Per round, over the centres that trained (all centres in a round where none did): mean
    local training time and mean wait for the next model; stacked, about the round's duration."""
    by_round: Dict[int, List[Dict]] = {}
    for row in rounds:
        by_round.setdefault(row["round"], []).append(row)
    split = []
    for r in sorted(by_round):
        rows = [row for row in by_round[r] if row["sampled"]] or by_round[r]
        train = _mean(row["local_train_s"] for row in rows if row["sampled"])
        wait = _mean(row["wait_s"] for row in rows)
        if train is not None or wait is not None:
            split.append({"round": r, "train_s": train or 0.0, "wait_s": wait or 0.0})
    return split


_CENTRE_MARKERS = "os^Dv<>pXh*"


def _metric_series(run: Run) -> Dict[str, List]:
    series: Dict[str, List] = {}
    for row in sorted(run.metrics, key=lambda row: row["round"]):
        if row["metric"] is not None:
            series.setdefault(row["test"], []).append((row["round"], row["metric"]))
    return dict(sorted(series.items(), key=lambda item: _test_order(item[0])))


def _loss_series(run: Run) -> Dict[int, List]:
    series: Dict[int, List] = {}
    for row in sorted(run.rounds or [], key=lambda row: row["round"]):
        if row["sampled"] and row["train_loss"] is not None:
            series.setdefault(row["centre"], []).append((row["round"], row["train_loss"]))
    return dict(sorted(series.items()))


def _line(ax, points, **style):
    if points:
        xs, ys = zip(*points, strict=True)
        ax.plot(xs, ys, **style)


def _matplotlib():
    """matplotlib without pyplot: a Figure drawn by the Agg canvas needs neither pyplot's import
    (its backend machinery, a fifth of a second) nor a display."""
    import matplotlib
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    return matplotlib, Figure, FigureCanvasAgg


def draw(runs: Sequence[Run], out_path) -> Path:
    """One picture of one run, or of several overlaid (one colour per run), saved to out_path."""
    runs = list(runs)
    if not runs:
        raise ValueError("draw() needs at least one run")
    out_path = Path(out_path)
    fmt = _picture_format(out_path)
    matplotlib, Figure, FigureCanvasAgg = _matplotlib()
    from matplotlib.lines import Line2D
    from matplotlib.patches import Patch
    from matplotlib.ticker import MaxNLocator

    several = len(runs) > 1
    with_rounds = any(run.rounds for run in runs)
    panels = 3 if with_rounds else 1
    fig = Figure(figsize=(5.6 * panels, 4.8))
    FigureCanvasAgg(fig)
    axes = list(fig.subplots(1, panels, squeeze=False)[0])
    try:
        run_colours = [matplotlib.colormaps["tab10"](i % 10) for i in range(len(runs))]
        centre_colours = matplotlib.colormaps["tab10"]

        # Panel 1: test metric per centre, average and pooled, over rounds.
        ax = axes[0]
        for i, run in enumerate(runs):
            for test, points in _metric_series(run).items():
                match = _CLIENT_TEST.match(test)
                if several:
                    colour = run_colours[i]
                    if match:
                        k = int(match.group(1))
                        style = dict(color=colour, lw=0.8, alpha=0.5, ls=":",
                                     marker=_CENTRE_MARKERS[k % len(_CENTRE_MARKERS)], ms=4)
                    elif test == "pooled":
                        style = dict(color=colour, lw=2.2, marker="o")
                    else:
                        style = dict(color=colour, lw=1.5, ls="--", marker="o", ms=4)
                else:
                    if match:
                        style = dict(color=centre_colours(int(match.group(1)) % 10), lw=1.2, marker="o",
                                     ms=4, label=_test_label(test))
                    elif test == "pooled":
                        style = dict(color="black", lw=2.2, marker="o", label="pooled")
                    else:
                        style = dict(color="black", lw=1.5, ls="--", marker="o", ms=4, label=test)
                _line(ax, points, **style)
        ax.set_title("test metric over rounds")
        ax.set_xlabel("round")
        ax.set_ylabel(f"metric ({runs[0].results.get('dataset', 'dataset')})")
        if several:
            ax.legend(handles=[Line2D([], [], color="grey", lw=2.2, marker="o", label="pooled"),
                               Line2D([], [], color="grey", lw=1.5, ls="--", marker="o", label="average"),
                               Line2D([], [], color="grey", lw=0.8, ls=":", marker="o",
                                      label="centres (marker per centre)")],
                      fontsize="small")
        elif ax.lines:
            ax.legend(fontsize="small")

        if with_rounds:
            # Panel 2: train loss per centre (the rounds it trained), and the mean over centres.
            ax = axes[1]
            for i, run in enumerate(runs):
                series = _loss_series(run)
                for centre, points in series.items():
                    if several:
                        style = dict(color=run_colours[i], lw=0.8, alpha=0.5, ls=":",
                                     marker=_CENTRE_MARKERS[centre % len(_CENTRE_MARKERS)], ms=4)
                    else:
                        style = dict(color=centre_colours(centre % 10), lw=1.2, marker="o", ms=3,
                                     label=f"centre {centre}")
                    _line(ax, points, **style)
                by_round: Dict[int, List[float]] = {}
                for points in series.values():
                    for r, loss in points:
                        by_round.setdefault(r, []).append(loss)
                mean = [(r, sum(v) / len(v)) for r, v in sorted(by_round.items())]
                _line(ax, mean, color=run_colours[i] if several else "black", lw=2.2,
                      label=None if several else "mean over centres")
            ax.set_title("train loss per centre")
            ax.set_xlabel("round")
            ax.set_ylabel("train loss")
            if several:
                ax.legend(handles=[Line2D([], [], color="grey", lw=2.2, label="mean over centres"),
                                   Line2D([], [], color="grey", lw=0.8, ls=":", marker="o",
                                          label="centres (marker per centre)")],
                          fontsize="small")
            elif ax.lines:
                ax.legend(fontsize="small")

            # Panel 3: per round, mean local training time and mean wait for the next model.
            ax = axes[2]
            with_split = [(i, run) for i, run in enumerate(runs) if run.rounds]
            width = 0.8 / max(1, len(with_split))
            for slot, (i, run) in enumerate(with_split):
                split = time_split(run.rounds)
                if not split:
                    continue
                xs = [row["round"] - 0.4 + width * (slot + 0.5) for row in split]
                train = [row["train_s"] for row in split]
                wait = [row["wait_s"] for row in split]
                colour = run_colours[i] if several else "tab:blue"
                ax.bar(xs, train, width=width, color=colour, edgecolor=colour)
                ax.bar(xs, wait, width=width, bottom=train, color=colour if several else "tab:orange",
                       alpha=0.35 if several else 1.0, hatch="//" if several else None,
                       edgecolor=colour if several else "tab:orange")
            if ax.patches:
                top = max(p.get_y() + p.get_height() for p in ax.patches)
                ax.set_ylim(0, top * 1.35 or 1.0)
            ax.set_title("time per round (mean over centres)")
            ax.set_xlabel("round")
            ax.set_ylabel("seconds")
            ax.legend(handles=[Patch(color="grey" if several else "tab:blue", label="local training"),
                               Patch(facecolor="grey" if several else "tab:orange",
                                     alpha=0.35 if several else 1.0, hatch="//" if several else None,
                                     label="waiting for the next model")],
                      fontsize="small")

        rounds_drawn = [x for ax in axes for line in ax.lines for x in line.get_xdata()]
        rounds_drawn += [row["round"] for run in runs for row in run.rounds or []]
        for ax in axes:
            ax.grid(alpha=0.3)
            ax.xaxis.set_major_locator(MaxNLocator(integer=True, min_n_ticks=1))
            if rounds_drawn:
                ax.set_xlim(min(rounds_drawn) - 0.6, max(rounds_drawn) + 0.6)

        # Title (and, for several runs, which colour is which run) above the panels; notes below.
        notes = [f"{run.label}: {note}" if several else note for run in runs for note in run.notes]
        ncol = min(len(runs), 3 if panels == 3 else 1)
        header = 0.3 + (0.22 * math.ceil(len(runs) / ncol) if several else 0.0)
        footer = 0.1 + 0.2 * len(notes)
        height = fig.get_figheight() + header + footer
        fig.set_figheight(height)
        if several:
            datasets = sorted({str(run.results.get("dataset", "?")) for run in runs})
            fig.suptitle(f"{len(runs)} runs on {', '.join(datasets)}", y=1 - 0.08 / height, va="top")
            fig.legend(handles=[Line2D([], [], color=c, lw=2.2, label=run.label)
                                for c, run in zip(run_colours, runs, strict=True)],
                       loc="upper center", bbox_to_anchor=(0.5, 1 - 0.3 / height), fontsize="small",
                       ncol=ncol, frameon=False)
        else:
            run = runs[0]
            fig.suptitle(f"{run.label}: {run.results.get('dataset', '?')}, "
                         f"{run.results.get('rounds_completed', '?')} rounds", y=1 - 0.08 / height, va="top")
        if notes:
            fig.text(0.01, 0.08 / height, "\n".join(notes), fontsize="small", color="dimgrey", va="bottom")
        fig.tight_layout(rect=(0, footer / height, 1, 1 - header / height))
        # tight_layout leaves a placeholder layout engine behind, and savefig lays out every text
        # once more for any engine: with none the picture is the same bytes, drawn once.
        fig.set_layout_engine(None)
        _save(fig, out_path, fmt)
    finally:
        fig.clear()
    return out_path


def _drawable_types() -> List[str]:
    """The picture types --out may end with: every one matplotlib saves, but .pgf only where its TeX
    program (rcParams["pgf.texsystem"], xelatex) is installed: matplotlib measures a PGF picture's
    text with it and fails without it."""
    matplotlib, _, FigureCanvasAgg = _matplotlib()
    have_tex = shutil.which(matplotlib.rcParams["pgf.texsystem"]) is not None
    return sorted(t for t in FigureCanvasAgg.get_supported_filetypes() if t != "pgf" or have_tex)


def _picture_format(out_path: Path) -> str:
    """The format out_path's suffix names; checked before drawing, so a wrong --out costs no drawing."""
    if out_path.is_dir():  # first: a directory named like a picture would fail only at the rename
        raise UserError(f"cannot write {out_path}: it is a directory",
                        f"name a picture file, e.g. --out {out_path / DEFAULT_COMPARISON}")
    fmt = out_path.suffix.lstrip(".").lower()
    drawable = _drawable_types()
    hint = f"end --out with one of {', '.join('.' + t for t in drawable)}"
    if fmt == "pgf" and fmt not in drawable:
        matplotlib, _, _ = _matplotlib()
        tex = matplotlib.rcParams["pgf.texsystem"]
        raise UserError(f"cannot draw {out_path}: a .pgf picture needs {tex} (matplotlib measures its "
                        f"text with it), which is not installed", hint)
    if fmt not in drawable:
        raise UserError(f"cannot draw {out_path}: unknown picture type {out_path.suffix or '(none)'}", hint)
    if not out_path.parent.is_dir():
        raise UserError(f"cannot write {out_path}: no directory {out_path.parent}")
    return fmt


def _save(fig, out_path: Path, fmt: str):
    # Drawn into memory first: the backends of pdf, svg, ps, pgf and raw take only a path or a real
    # file, and TIFF's (PIL) seeks: safe_files' writer is neither. A picture is a few MB at most.
    picture = io.BytesIO()
    fig.savefig(picture, format=fmt, dpi=110)
    # Written as every output (safe_files.write_atomic): a fresh temporary name, then a rename, so a
    # reader never sees half a picture and a link planted at the name is replaced, not written through.
    safe_files.write_atomic(out_path.parent, out_path.name, picture.getvalue())


def write_report(output_dir) -> Optional[Path]:
    """Draws `<output_dir>/report.png` for the run there; for the driver at the end of a run.
    Never fails the run: on any problem it logs a warning and returns None."""
    try:
        output_dir = Path(output_dir)
        run = load_run(output_dir)
        with _private_matplotlib_cache():
            return draw([run], output_dir / REPORT_NAME)
    except Exception as error:  # noqa: BLE001 - the picture must never fail a finished run
        # A full disk: the run's results are written already, so StorageError's resume hint does not apply.
        said = error.args[0] if isinstance(error, safe_files.StorageError) else str(error)
        logging.getLogger("flamby_mpi").warning("%s not written: %s", REPORT_NAME, said.replace("\n", " "))
        return None


@contextmanager
def _private_matplotlib_cache():
    """matplotlib writes a font cache into ~/.cache/matplotlib when it first loads its fonts; a run
    writes nothing outside its output directory (docs/running.md, "No side effects"), so the driver's report
    loads them with a temporary MPLCONFIGDIR, removed afterwards. Left alone when matplotlib is
    already imported or the user set MPLCONFIGDIR. A matplotlib made by a FLamby dataset's import
    without running its __init__.py (datasets/deferred_imports.py) has not read MPLCONFIGDIR yet:
    it gets the temporary one too."""
    imported = "matplotlib" in sys.modules and not not_run_yet(sys.modules["matplotlib"])
    if imported or "MPLCONFIGDIR" in os.environ:
        yield
        return
    with tempfile.TemporaryDirectory(prefix="flamby-mpi-matplotlib-") as tmp:
        os.environ["MPLCONFIGDIR"] = tmp
        try:
            _matplotlib()  # matplotlib reads MPLCONFIGDIR once, here
        finally:
            del os.environ["MPLCONFIGDIR"]
        yield


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m flamby_mpi.report",
        description="Draw the report picture of one run, or overlay several runs in one picture "
                    "(one colour per run), and print their final metrics side by side.",
        epilog="example:\n  python -m flamby_mpi.report runs/fedavg runs/fedprox --out fedavg_vs_fedprox.png",
        formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("run_dirs", nargs="+", metavar="RUN_DIR",
                        help="output directory of a finished run (holds results.json)")
    parser.add_argument("--out", default=DEFAULT_COMPARISON, metavar="FILE",
                        help=f"picture to write (default: {DEFAULT_COMPARISON} in the current directory)")
    return parser


def main(argv: Optional[Sequence[str]] = None) -> int:
    args = build_parser().parse_args(list(sys.argv[1:] if argv is None else argv))
    try:
        runs = [load_run(d) for d in args.run_dirs]
        for run in runs:
            for note in run.notes:
                print(f"flamby-mpi: note: {run.path}: {note}", file=sys.stderr)
        datasets_note = mixed_datasets_note(runs)
        if datasets_note:
            print(f"flamby-mpi: note: {datasets_note}", file=sys.stderr)
        out = draw(runs, args.out)
    except UserError as error:
        return fail(str(error), error.exit_code)
    print(format_comparison(runs))
    print(f"picture: {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
