"""Unit tests of flamby_mpi.outputs.report: reading run directories, the picture, the comparison table
and the `python -m flamby_mpi.report` command. Run directories are small fakes written here,
following the output contract (docs/running.md, "Outputs"), rounds.csv included."""
import csv
import gzip
import json
import logging
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from flamby_mpi.exit.errors import UserError
from flamby_mpi.outputs import report

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
ROOT = Path(__file__).resolve().parents[1]

ROUNDS_HEADER = ["round", "centre", "local_train_s", "wait_s", "bytes_sent", "bytes_received",
                 "train_loss", "sampled"]


def make_run(parent: Path, run_id: str, strategy: str = "FedAvg", shift: float = 0.0,
             rounds_csv: bool = True, num_rounds: int = 3, centres: int = 2, dataset: str = "synthetic") -> Path:
    """A finished run of `num_rounds` rounds and `centres` centres, evaluated after every round;
    centre 1 does not train in round 2 (client sampling)."""
    path = parent / run_id
    path.mkdir()
    final = {f"client_test_{k}": round(0.6 + 0.1 * k + shift, 4) for k in range(centres)}
    final["average"] = round(sum(final.values()) / centres, 4)
    final["pooled"] = round(final["average"] + 0.01, 4)
    (path / "results.json").write_text(json.dumps({
        "run_id": run_id, "dataset": dataset, "strategy": strategy, "seed": 0,
        "num_clients": centres, "rounds_completed": num_rounds, "metrics": final,
        "timing": {"startup_s": 1.0, "train_s": 2.0, "total_s": 3.0}}))
    with open(path / "metrics.csv", "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["round", "test", "metric", "num_samples"])
        for r in range(1, num_rounds + 1):
            for test, value in final.items():
                writer.writerow([r, test, value - 0.05 * (num_rounds - r), 10])
    if rounds_csv:
        with open(path / "rounds.csv", "w", newline="") as f:
            writer = csv.writer(f)
            writer.writerow(ROUNDS_HEADER)
            for r in range(1, num_rounds + 1):
                for k in range(centres):
                    sampled = not (k == 1 and r == 2)
                    writer.writerow([r, k, 0.2 + 0.01 * k if sampled else "", 0.05 + shift, 1000, 1000,
                                     0.7 - 0.05 * r + 0.01 * k if sampled else "",
                                     "true" if sampled else "false"])
    return path


def assert_png(path: Path):
    data = path.read_bytes()
    assert data[:8] == PNG_SIGNATURE
    assert 10_000 < len(data) < 2_000_000, len(data)


def run_module(*args, cwd=None, env=None):
    environ = dict(os.environ, PYTHONPATH=str(ROOT), **(env or {}))
    return subprocess.run([sys.executable, "-m", "flamby_mpi.report", *map(str, args)], cwd=cwd,
                          env=environ, capture_output=True, text=True, timeout=120)


def test_load_run_reads_results_metrics_and_rounds(tmp_path):
    run = report.load_run(make_run(tmp_path, "a"))
    assert run.label == "FedAvg (a)"
    private = make_run(tmp_path, "p")
    results = json.loads((private / "results.json").read_text())
    results["differential_privacy"] = {"target_epsilon": 1.0, "target_delta": 0.001, "max_grad_norm": 1.0}
    (private / "results.json").write_text(json.dumps(results))
    assert report.load_run(private).label == "FedAvg with DP (p)"  # two runs of one strategy are told apart
    assert run.final_metrics["client_test_1"] == 0.7
    assert len(run.metrics) == 3 * 4
    assert run.metrics[0] == {"round": 1, "test": "client_test_0", "metric": pytest.approx(0.5),
                              "num_samples": 10}
    assert len(run.rounds) == 3 * 2
    skipped = [row for row in run.rounds if not row["sampled"]]
    assert skipped == [{"round": 2, "centre": 1, "local_train_s": None, "wait_s": 0.05,
                        "train_loss": None, "sampled": False}]
    assert run.notes == []


def test_label_names_the_directory_when_the_run_id_is_automatic(tmp_path, monkeypatch):
    """common_args.output_dir without --run_id: the run id is a timestamp, the directory's name is
    the user's; runs/<run_id> (the run id is the name) is labelled as before."""
    path = make_run(tmp_path, "fedprox", strategy="FedProx")
    results = json.loads((path / "results.json").read_text())
    results["run_id"] = "20261206-101010-ab12"
    (path / "results.json").write_text(json.dumps(results))
    assert report.load_run(path).label == "FedProx (fedprox)"
    monkeypatch.chdir(path)
    assert report.load_run(".").label == "FedProx (fedprox)"  # the directory's own name, not ""
    del results["run_id"]
    (path / "results.json").write_text(json.dumps(results))
    assert report.load_run(path).label == "FedProx (fedprox)"


def test_time_split_is_over_the_centres_that_trained(tmp_path):
    run = report.load_run(make_run(tmp_path, "a"))
    split = report.time_split(run.rounds)
    assert [row["round"] for row in split] == [1, 2, 3]
    assert split[0]["train_s"] == pytest.approx(0.205)  # mean of 0.20 and 0.21
    assert split[1]["train_s"] == pytest.approx(0.20)  # centre 1 did not train in round 2
    assert split[1]["wait_s"] == pytest.approx(0.05)


def test_load_run_without_rounds_csv_notes_it(tmp_path):
    run = report.load_run(make_run(tmp_path, "a", rounds_csv=False))
    assert run.rounds is None
    assert run.notes == ["no rounds.csv: train loss and time per round not drawn"]


def test_unreadable_rounds_csv_is_a_note_not_an_error(tmp_path):
    path = make_run(tmp_path, "a")
    (path / "rounds.csv").write_text("round,centre\n1,0\n")
    run = report.load_run(path)
    assert run.rounds is None
    assert "missing column(s) local_train_s, wait_s, train_loss, sampled" in run.notes[0]


def test_load_run_errors_name_the_directory(tmp_path):
    with pytest.raises(UserError, match="no run directory"):
        report.load_run(tmp_path / "absent")
    with pytest.raises(UserError, match="has no results.json"):
        report.load_run(tmp_path)


def test_load_run_says_a_file_is_not_a_run_directory(tmp_path):
    """Not 'no run directory': the path is there. Its directory is the hint when it is a run's file."""
    results = make_run(tmp_path, "a") / "results.json"
    with pytest.raises(UserError) as refused:
        report.load_run(results)
    assert str(refused.value).splitlines() == [f"{results} is a file, not a run directory",
                                               f"HINT: give the run's directory: {results.parent}"]
    notes = tmp_path / "notes.txt"
    notes.write_text("")
    with pytest.raises(UserError, match=r"notes\.txt is a file, not a run directory\nHINT: give the output"):
        report.load_run(notes)


@pytest.mark.parametrize("results, problem", [
    ({}, "it has no metrics (the final metric per test set)"),
    ({"run_id": "a", "metrics": None}, "its metrics is null, not an object of the final metric per test set"),
    ({"metrics": [0.5]}, "its metrics is a list, not an object of the final metric per test set")])
def test_load_run_refuses_results_without_metrics(tmp_path, results, problem):
    """Not an empty table and exit 0: the final metrics are what a finished run's results.json holds."""
    path = make_run(tmp_path, "a")
    (path / "results.json").write_text(json.dumps(results))
    with pytest.raises(UserError) as refused:
        report.load_run(path)
    assert str(refused.value).splitlines()[0] == (f"{path / 'results.json'} is not a finished run's "
                                                  f"results.json: {problem}")


def test_draw_one_run(tmp_path):
    out = report.draw([report.load_run(make_run(tmp_path, "a"))], tmp_path / "one.png")
    assert_png(out)


def test_draw_run_without_rounds_csv(tmp_path):
    out = report.draw([report.load_run(make_run(tmp_path, "a", rounds_csv=False))], tmp_path / "one.png")
    assert_png(out)


def test_draw_refuses_an_unknown_picture_type(tmp_path):
    with pytest.raises(UserError, match="unknown picture type"):
        report.draw([report.load_run(make_run(tmp_path, "a"))], tmp_path / "one.txt")


# Every type matplotlib's Agg canvas saves (FigureCanvasAgg.get_supported_filetypes()), each with
# what its file starts with: vector ones (pdf, svg, ps) and TIFF are written by backends that refuse
# a writer of safe_files; raw and rgba are bare pixels, checked by test_every_advertised_type_is_drawn.
PICTURE_MAGIC = {
    "avif": (4, b"ftyp"), "eps": (0, b"%!PS-Adobe-3.0 EPSF"), "gif": (0, b"GIF8"), "jpeg": (0, b"\xff\xd8\xff"),
    "jpg": (0, b"\xff\xd8\xff"), "pdf": (0, b"%PDF-"), "pgf": (0, b"%% Creator: Matplotlib"),
    "png": (0, PNG_SIGNATURE), "ps": (0, b"%!PS-Adobe-3.0"), "raw": None, "rgba": None, "svg": (0, b"<?xml"),
    "svgz": (0, b"\x1f\x8b"), "tif": (0, b"II*\x00"), "tiff": (0, b"II*\x00"), "webp": (8, b"WEBP"),
}


def _tex_for_pgf() -> bool:
    """matplotlib measures a PGF picture's text with TeX (rcParams["pgf.texsystem"], xelatex)."""
    import matplotlib

    return shutil.which(matplotlib.rcParams["pgf.texsystem"]) is not None


def _advertised_types(tmp_path) -> list:
    """The types the hint of an unknown --out suffix lists."""
    with pytest.raises(UserError) as refused:
        report.draw([report.load_run(make_run(tmp_path, "hint"))], tmp_path / "one.txt")
    hint = str(refused.value).splitlines()[1]
    return [word.strip(",.") for word in hint.split() if word.startswith(".")]


def test_the_hint_advertises_every_type_that_can_be_drawn(tmp_path):
    drawable = sorted(t for t in PICTURE_MAGIC if t != "pgf" or _tex_for_pgf())
    assert _advertised_types(tmp_path) == drawable


@pytest.mark.parametrize("fmt", sorted(PICTURE_MAGIC))
def test_every_advertised_type_is_drawn(tmp_path, fmt):
    """A real report (three panels) in each type --out's hint lists, written whole under its name
    (nothing else left in the directory); .pgf where TeX is missing is refused in one line instead."""
    run = report.load_run(make_run(tmp_path, "a"))
    pictures = tmp_path / "pictures"
    pictures.mkdir()
    out = pictures / f"report.{fmt}"
    if fmt == "pgf" and not _tex_for_pgf():
        with pytest.raises(UserError, match=r"report\.pgf: a \.pgf picture needs \w+") as refused:
            report.draw([run], out)
        assert len(str(refused.value).splitlines()) == 2  # the message and its HINT
        assert ".pgf" not in str(refused.value).splitlines()[1]
        assert list(pictures.iterdir()) == []
        return
    assert report.draw([run], out) == out
    assert [p.name for p in pictures.iterdir()] == [out.name]
    data = out.read_bytes()
    if PICTURE_MAGIC[fmt] is None:  # raw, rgba: 4 bytes a pixel, no header
        assert len(data) > 100_000 and len(data) % 4 == 0 and len(set(data[::4])) > 1
    else:
        offset, magic = PICTURE_MAGIC[fmt]
        assert data[offset:offset + len(magic)] == magic, data[:16]
    if fmt == "svg":
        assert b"<svg" in data[:1000]
    if fmt == "svgz":
        assert b"<svg" in gzip.decompress(data)[:1000]


def test_a_vector_picture_replaces_a_link_at_its_name(tmp_path):
    """The picture is written as every output (safe_files.write_atomic): a link planted at its
    name is replaced, never written through."""
    elsewhere = tmp_path / "elsewhere.pdf"
    elsewhere.write_bytes(b"not yours")
    out = tmp_path / "report.pdf"
    out.symlink_to(elsewhere)
    report.draw([report.load_run(make_run(tmp_path, "a"))], out)
    assert not out.is_symlink() and out.read_bytes().startswith(b"%PDF-")
    assert elsewhere.read_bytes() == b"not yours"


def test_module_draws_a_pdf(tmp_path):
    result = run_module(make_run(tmp_path, "a"), "--out", "a.pdf", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert (tmp_path / "a.pdf").read_bytes().startswith(b"%PDF-")
    assert "picture: a.pdf" in result.stdout


def test_write_report_writes_report_png(tmp_path):
    path = make_run(tmp_path, "a")
    assert report.write_report(path) == path / "report.png"
    assert_png(path / "report.png")
    assert sorted(p.name for p in path.iterdir()) == ["metrics.csv", "report.png", "results.json",
                                                        "rounds.csv"]


def test_write_report_never_fails_the_run(tmp_path, caplog):
    with caplog.at_level(logging.WARNING, logger="flamby_mpi"):
        assert report.write_report(tmp_path / "absent") is None
    assert "report.png not written: no run directory" in caplog.text


def test_format_comparison_has_every_run_side_by_side(tmp_path):
    runs = [report.load_run(make_run(tmp_path, "a")),
            report.load_run(make_run(tmp_path, "b", strategy="FedProx", shift=0.05, centres=3))]
    lines = report.format_comparison(runs).splitlines()
    assert lines[0].split() == ["test", "set", "FedAvg", "(a)", "FedProx", "(b)"]
    assert [line.split()[0] for line in lines[2:]] == ["client_test_0", "client_test_1", "client_test_2",
                                                        "average", "pooled"]
    assert lines[2].split() == ["client_test_0", "0.6000", "0.6500"]
    assert lines[4].split() == ["client_test_2", "-", "0.8500"]  # run a has two centres


def test_module_overlays_two_runs_and_prints_the_table(tmp_path):
    a = make_run(tmp_path, "a")
    b = make_run(tmp_path, "b", strategy="FedProx", shift=0.05, rounds_csv=False)
    result = run_module(a, b, cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert_png(tmp_path / "comparison.png")
    assert "FedAvg (a)" in result.stdout and "FedProx (b)" in result.stdout
    pooled = [line for line in result.stdout.splitlines() if line.startswith("pooled")]
    assert pooled[0].split() == ["pooled", "0.6600", "0.7100"]
    assert "no rounds.csv" in result.stderr


def test_module_notes_runs_of_different_datasets(tmp_path):
    """Compared all the same (the user asked), but each dataset has its own metric (AUC, Dice, ...)."""
    heart = make_run(tmp_path, "heart", dataset="fed_heart_disease")
    ixi = make_run(tmp_path, "ixi", dataset="fed_ixi")
    result = run_module(ixi, heart, make_run(tmp_path, "heart2", dataset="fed_heart_disease"), cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    notes = [line for line in result.stderr.splitlines() if "datasets" in line]
    assert notes == ["flamby-mpi: note: these runs are of different datasets (fed_heart_disease, fed_ixi): "
                     "each has its own metric, so a row of the table compares different measures"]
    assert "pooled" in result.stdout


def test_module_says_nothing_of_datasets_for_runs_of_one(tmp_path):
    result = run_module(make_run(tmp_path, "a"), make_run(tmp_path, "b"), cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert result.stderr == ""


def test_module_out_option(tmp_path):
    result = run_module(make_run(tmp_path, "a"), "--out", tmp_path / "mine.png", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert_png(tmp_path / "mine.png")
    assert not (tmp_path / "comparison.png").exists()


@pytest.mark.parametrize("which", ["missing", "no_results", "a_file", "no_metrics"])
def test_module_bad_run_directory_is_one_message_exit_2(tmp_path, which):
    target = {"missing": tmp_path / "absent", "no_results": tmp_path, "a_file": tmp_path / "notes.txt",
              "no_metrics": tmp_path / "empty"}[which]
    if which == "a_file":
        target.write_text("")
    if which == "no_metrics":
        target.mkdir()
        (target / "results.json").write_text("{}")
    result = run_module(make_run(tmp_path, "a"), target, cwd=tmp_path)
    assert result.returncode == 2
    assert result.stdout == ""
    assert result.stderr.startswith("flamby-mpi: error: ")
    assert result.stderr.count("flamby-mpi: error") == 1
    assert "Traceback" not in result.stderr
    assert str(target) in result.stderr.splitlines()[0]
    said = {"missing": "no run directory", "no_results": "has no results.json",
            "a_file": "is a file, not a run directory", "no_metrics": "is not a finished run's results.json"}
    assert said[which] in result.stderr.splitlines()[0]
    assert not (tmp_path / "comparison.png").exists()


@pytest.mark.parametrize("name", ["pictures", "pictures.png"])
def test_module_out_naming_a_directory_says_so(tmp_path, name):
    """Not 'unknown picture type (none)', nor a traceback from the rename over a directory
    named like a picture."""
    directory = tmp_path / name
    directory.mkdir()
    result = run_module(make_run(tmp_path, "a"), "--out", directory, cwd=tmp_path)
    assert result.returncode == 2
    assert result.stdout == "" and "Traceback" not in result.stderr
    first, hint = result.stderr.splitlines()
    assert first == f"flamby-mpi: error: cannot write {directory}: it is a directory"
    assert hint == f"HINT: name a picture file, e.g. --out {directory / 'comparison.png'}"
    assert list(directory.iterdir()) == []


def test_import_does_not_import_matplotlib():
    code = ("import sys, flamby_mpi.outputs.report; "
            "heavy = [m for m in ('matplotlib', 'torch', 'fedml', 'mpi4py', 'numpy') if m in sys.modules]; "
            "assert not heavy, heavy")
    subprocess.run([sys.executable, "-c", code], check=True, env=dict(os.environ, PYTHONPATH=str(ROOT)),
                   timeout=60)


def test_write_report_writes_nothing_outside_the_output_directory(tmp_path):
    """docs/running.md "No side effects": matplotlib's font cache must not land in HOME."""
    run = make_run(tmp_path, "a")
    home = tmp_path / "home"
    home.mkdir()
    environ = {k: v for k, v in os.environ.items() if k not in ("MPLCONFIGDIR", "XDG_CACHE_HOME",
                                                                "XDG_CONFIG_HOME")}
    environ.update(HOME=str(home), PYTHONPATH=str(ROOT))
    code = f"import flamby_mpi.outputs.report as r; assert r.write_report({str(run)!r})"
    subprocess.run([sys.executable, "-c", code], check=True, env=environ, timeout=120)
    assert_png(run / "report.png")
    assert list(home.iterdir()) == []
