"""The pure half of scripts/benchmark.py: measurement rows -> ratio rows, text and markdown tables,
benchmark.csv and benchmark.png. Nothing here runs a job, so the unit tests cover all of it.

A row is a dict whose keys are among COLUMNS. Three kinds:
- a measurement (one run, or one rank of a run): `seconds`, `seconds_per_round`, `wall_s`, ...;
- a ratio (`ratio_row`): `ours` against `reference`, with the issue's `target` and `met` = yes/no;
- a note (`note_row`): a section skipped or a run failed, with the reason in `note`.
"""
from __future__ import annotations

import csv
import math
import statistics
from pathlib import Path
from typing import Dict, Iterable, List, Optional

COLUMNS = ["section", "case", "centres", "ranks", "run", "seconds", "seconds_per_round",
           "seconds_per_round_whole_run", "wall_s",
           "first_round_s", "role", "rank", "imports_s", "data_s", "first_message_s", "peak_rss_mb",
           "peak_private_mb",
           "ours", "reference", "unit", "ratio", "target", "met", "note"]


def ratio_row(section: str, case: str, ours: Optional[float], reference: Optional[float],
              target: Optional[float], unit: str = "s", **extra) -> Dict:
    """`ours` / `reference`, met when at most `target` (every target in the issue is an upper bound).
    A missing side (a run that failed, a point not measured) gives no ratio and, with a target, met = no."""
    measured = ours is not None and reference is not None and reference > 0
    ratio = ours / reference if measured else None
    met = "" if target is None else ("yes" if measured and ratio <= target else "no")
    return {"section": section, "case": case, "ours": ours, "reference": reference, "unit": unit,
            "ratio": ratio, "target": target, "met": met, **extra}


def note_row(section: str, case: str, note: str, **extra) -> Dict:
    return {"section": section, "case": case, "note": note, **extra}


def median_of(rows: Iterable[Dict], key: str, **match) -> Optional[float]:
    """Median of `key` over the rows whose fields equal `match`; None when there is none."""
    values = [r[key] for r in rows
              if all(r.get(k) == v for k, v in match.items()) and r.get(key) is not None]
    return statistics.median(values) if values else None


def format_quantity(value: Optional[float], unit: str = "s") -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "-"
    if unit in ("s", "s/round"):
        suffix = "/round" if unit == "s/round" else ""
        return f"{value * 1000:,.1f} ms{suffix}" if value < 1 else f"{value:,.2f} s{suffix}"
    return f"{value:,.1f} {unit}"


def _ratio_cells(row: Dict) -> List[str]:
    ratio = "-" if row.get("ratio") is None else f"{row['ratio']:.2f}x"
    target = "" if row.get("target") is None else f"<= {row['target']:g}x"
    met = row.get("met")
    if met is None and row.get("target") is not None:  # a row made by hand, without ratio_row()
        met = "yes" if row.get("ratio") is not None and row["ratio"] <= row["target"] else "no"
    met = {"yes": "ok", "no": "MISSED"}.get(met or "", "")
    unit = row.get("unit", "s")
    return [f"{row['section']}: {row['case']}", format_quantity(row.get("ours"), unit),
            format_quantity(row.get("reference"), unit), ratio, target, met]


RATIO_HEADER = ["measure", "flamby-mpi", "reference", "ratio", "target", "met"]
SCALING_HEADER = ["centres", "ranks", "time to first round", "per round", "peak RSS per rank (max)",
                  "private memory per rank (max)", "status"]
BREAKDOWN_HEADER = ["ranks", "rank(s)", "imports done", "data loaded", "first message", "peak RSS"]


def ratio_table(rows: List[Dict]) -> List[List[str]]:
    return [_ratio_cells(r) for r in rows if "ratio" in r]


def notes_table(rows: List[Dict]) -> List[List[str]]:
    """Sections skipped or stopped, and measurements taken another way than planned, each said once.
    (The scaling points say theirs in the scaling table.)"""
    seen, table = set(), []
    for r in rows:
        line = (f"{r['section']}: {r['case']}", " ".join((r.get("note") or "").split())[:400])  # one table line
        if line[1] and line not in seen and not (r["section"] == "scaling" and r["case"] == "curve"):
            seen.add(line)
            table.append(list(line))
    return table


def scaling_table(rows: List[Dict]) -> List[List[str]]:
    """One line per scaling point (rows with section scaling and case `curve`)."""
    table = []
    for r in rows:
        if r.get("section") == "scaling" and r.get("case") == "curve":
            table.append([str(r["centres"]), str(r["ranks"]), format_quantity(r.get("first_round_s")),
                          format_quantity(r.get("seconds_per_round"), "s/round"),
                          format_quantity(r.get("peak_rss_mb"), "MB"), format_quantity(r.get("peak_private_mb"), "MB"),
                          r.get("note") or "completed"])
    return table


def breakdown_table(rows: List[Dict]) -> List[List[str]]:
    """Start-up per rank, summarised: the server, then the clients' median and slowest."""
    table = []
    per_rank = [r for r in rows if r.get("section") == "startup" and r.get("case") == "rank"]
    for ranks in sorted({r["ranks"] for r in per_rank}):
        mine = [r for r in per_rank if r["ranks"] == ranks]
        groups = [("server (0)", [r for r in mine if r.get("role") == "server"], max),
                  ("clients, median", [r for r in mine if r.get("role") == "client"], statistics.median),
                  ("clients, slowest", [r for r in mine if r.get("role") == "client"], max)]
        for label, group, pick in groups:
            if not group:
                continue
            cells = []
            for key, unit in (("imports_s", "s"), ("data_s", "s"), ("first_message_s", "s"),
                              ("peak_rss_mb", "MB")):
                values = [r[key] for r in group if r.get(key) is not None]
                cells.append(format_quantity(pick(values) if values else None, unit))
            table.append([str(ranks), label, *cells])
    return table


def format_text(header: List[str], body: List[List[str]]) -> str:
    widths = [max(len(str(c)) for c in column) for column in zip(header, *body, strict=True)]
    line = "  ".join(f"{{:{w}s}}" for w in widths)
    lines = [line.format(*header), line.format(*("-" * w for w in widths)), *(line.format(*row) for row in body)]
    return "\n".join(text.rstrip() for text in lines)


def format_markdown(header: List[str], body: List[List[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    return "\n".join(lines + ["| " + " | ".join(c.replace("|", "\\|") for c in row) + " |" for row in body])


def report(rows: List[Dict], markdown: bool = False) -> str:
    """Every table that has rows, as text for the terminal or as markdown for docs/benchmarks/ pages."""
    fmt = format_markdown if markdown else format_text
    parts = []
    for title, header, body in (("Ratios (measured side by side in this run)", RATIO_HEADER, ratio_table(rows)),
                                ("Start-up per rank (seconds from each process's start)", BREAKDOWN_HEADER,
                                 breakdown_table(rows)),
                                ("Scaling (synthetic centres, tiny model)", SCALING_HEADER, scaling_table(rows)),
                                ("Notes", ["what", "note"], notes_table(rows))):
        if body:
            parts.append(("**" + title + "**" if markdown else title) + "\n\n" + fmt(header, body))
    return "\n\n".join(parts)


def write_csv(rows: List[Dict], path: Path) -> None:
    with path.open("w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=COLUMNS)
        writer.writeheader()
        for row in rows:
            writer.writerow({k: ("" if row.get(k) is None else row[k]) for k in COLUMNS})


def draw(rows: List[Dict], path: Path) -> None:
    """Left: every ratio against its target (red). Right, when measured: the scaling curve."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    ratios = [r for r in rows if r.get("ratio") is not None]
    curve = [r for r in rows if r.get("section") == "scaling" and r.get("case") == "curve"
             and r.get("seconds_per_round") is not None]
    panels = 2 if curve else 1
    fig, axes = plt.subplots(1, panels, figsize=(7 * panels, 1.5 + 0.5 * max(len(ratios), 3)), squeeze=False)
    ax = axes[0][0]
    labels = [f"{r['section']}: {r['case']}" for r in ratios]
    colours = ["tab:green" if r.get("met") == "yes" else "tab:red" if r.get("met") == "no" else "tab:blue"
               for r in ratios]
    ax.barh(labels, [r["ratio"] for r in ratios], color=colours)
    for i, r in enumerate(ratios):
        if r.get("target") is not None:
            ax.plot([r["target"]] * 2, [i - 0.4, i + 0.4], color="black", linewidth=2)
    ax.axvline(1.0, color="grey", linewidth=0.8)
    ax.invert_yaxis()
    ax.set_xlabel("flamby-mpi / reference (black bar: the issue's target)")
    if not ratios:
        ax.text(0.5, 0.5, "no ratio measured", ha="center", transform=ax.transAxes)
    if curve:
        ax = axes[0][1]
        centres = [r["centres"] for r in curve]
        lines = ax.plot(centres, [r["seconds_per_round"] for r in curve], "o-", label="seconds per round")
        starts = [(r["centres"], r["first_round_s"]) for r in curve if r.get("first_round_s") is not None]
        if starts:
            ax2 = ax.twinx()
            lines += ax2.plot(*zip(*starts, strict=True), "s--", color="tab:orange",
                              label="time to first round (s, right)")
            ax2.set_ylabel("time to first round (s)")
        ax.legend(lines, [line.get_label() for line in lines], loc="upper left")
        ax.set_xscale("log", base=2)
        ax.set_xticks(centres, [str(c) for c in centres])
        ax.set_xlabel("synthetic centres")
        ax.set_ylabel("seconds per round")
        ax.set_title("scaling")
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
