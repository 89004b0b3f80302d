"""scripts/benchmark.py's pure parts: section choice, ratios against targets, tables, csv and png.
No job runs here and nothing is timed: the measurements themselves belong to the benchmark."""
import csv
import json
import statistics
import sys
import time
from pathlib import Path

import pytest

from support.scripts import load_script

benchmark = load_script("benchmark", register=True)
report = load_script("benchmark_report", register=True)


def test_sections_are_chosen_by_name_and_unknown_ones_are_refused():
    assert benchmark.parse_sections("tiny_round, heart") == ["tiny_round", "heart"]
    with pytest.raises(ValueError, match="unknown section.*wire.*choose from heart"):
        benchmark.parse_sections("heart,wire")
    with pytest.raises(ValueError, match="none given"):
        benchmark.parse_sections(" , ")


def test_the_command_line_refuses_an_unknown_section(capsys):
    with pytest.raises(SystemExit) as exit_:
        benchmark.main(["--sections", "nope"])
    assert exit_.value.code == 2
    assert "choose from" in capsys.readouterr().err


def test_a_ratio_meets_its_target_only_when_measured_and_at_most_the_target():
    assert report.ratio_row("s", "c", 3.0, 2.0, 1.5)["met"] == "yes"
    missed = report.ratio_row("s", "c", 3.1, 2.0, 1.5)
    assert (missed["ratio"], missed["met"]) == (1.55, "no")
    failed = report.ratio_row("scaling", "64 vs 32", None, 0.5, 2.5)
    assert (failed["ratio"], failed["met"]) == (None, "no")
    assert report.ratio_row("s", "c", 1.0, 2.0, None)["met"] == ""


def test_medians_are_taken_over_the_matching_rows_only():
    rows = [{"case": "a", "centres": 4, "x": 1.0}, {"case": "a", "centres": 4, "x": 3.0},
            {"case": "a", "centres": 32, "x": 100.0}, {"case": "b", "centres": 4, "x": 7.0},
            {"case": "a", "centres": 4, "x": None}]
    assert report.median_of(rows, "x", case="a", centres=4) == 2.0
    assert report.median_of(rows, "x", case="c") is None


def test_raw_tiny_round_output_and_rotation_and_first_round():
    assert benchmark.parse_raw_tiny_round("noise\nraw mpi4py tiny round, 4 clients: 12.50 ms/round\n") == 0.0125
    assert benchmark.alternated(["a", "b", "c"], 0) == ["a", "b", "c"]
    assert benchmark.alternated(["a", "b", "c"], 1) == ["b", "c", "a"]
    job = benchmark.Job(["x"], 0, 10.0, 1000.0, "", results={"timing": {"first_round_unix": 1012.5}})
    assert benchmark.first_round_after_launch(job) == 12.5
    job.results = {"timing": {"startup_s": 9.0}}  # before the start-up change: no launch-relative time
    assert benchmark.first_round_after_launch(job) is None


def test_heart_cases_are_checked_to_do_the_same_work_as_flamby():
    flamby = benchmark.parse_flamby_metrics(
        "rounds 15 train time 2.94\n{'client_test_0': 0.7596153846153846, 'client_test_1': 0.6966292134831461}\n")
    assert flamby == {"client_test_0": 0.7596153846153846, "client_test_1": 0.6966292134831461}
    ours = {**flamby, "average": 0.72, "pooled": 0.75}
    assert benchmark.same_metrics({"FLamby in-RAM FedAvg": flamby, "mpirun -np 5": ours}).startswith("yes")
    verdict = benchmark.same_metrics({"FLamby in-RAM FedAvg": flamby,
                                      "mpirun -np 5": {**ours, "client_test_1": 0.69}})
    assert verdict.startswith("NO") and "mpirun -np 5 client_test_1: 0.69" in verdict


def _rows():
    return [
        {"section": "heart", "case": "mpirun -np 5", "run": 0, "wall_s": 30.0},
        report.ratio_row("heart", "mpirun vs FLamby", 30.0, 10.0, 1.5),
        report.ratio_row("tiny_round", "32 centres", 0.4, 0.3, 1.5, unit="s/round"),
        {"section": "startup", "case": "rank", "ranks": 5, "rank": 0, "role": "server", "imports_s": 2.0,
         "data_s": 3.0, "first_message_s": 9.0, "peak_rss_mb": 400.0},
        *({"section": "startup", "case": "rank", "ranks": 5, "rank": k, "role": "client", "imports_s": 2.0 + k,
           "data_s": 4.0, "first_message_s": 9.5, "peak_rss_mb": 300.0 + k} for k in (1, 2, 3, 4)),
        {"section": "scaling", "case": "curve", "centres": 4, "ranks": 5, "seconds_per_round": 0.012,
         "first_round_s": 8.0, "peak_rss_mb": 350.0, "peak_private_mb": 300.0},
        {"section": "scaling", "case": "curve", "centres": 64, "ranks": 65,
         "note": "not run: needs about 35.0 GiB (500 MB per rank), 20.0 GiB free"},
        report.note_row("exchange", "skipped", "no big model here"),
    ]


def test_the_report_shows_ratios_targets_breakdown_scaling_and_notes():
    text = report.report(_rows())
    heart = next(line for line in text.splitlines() if line.startswith("heart: mpirun vs FLamby"))
    assert heart.split()[-4:] == ["3.00x", "<=", "1.5x", "MISSED"]
    tiny = next(line for line in text.splitlines() if line.startswith("tiny_round"))
    assert "400.0 ms/round" in tiny and tiny.endswith("ok")
    clients = next(line for line in text.splitlines() if "clients, slowest" in line)
    assert "6.00 s" in clients and "304.0 MB" in clients  # rank 4: imports at 2 + 4 s
    assert "12.0 ms/round" in text and "not run: needs about 35.0 GiB" in text
    assert "exchange: skipped  no big model here" in text


def test_markdown_tables_are_ready_to_paste():
    text = report.report(_rows(), markdown=True)
    table = [line for line in text.splitlines() if line.startswith("|")]
    assert table[0] == "| measure | flamby-mpi | reference | ratio | target | met |"
    assert table[1] == "|---|---|---|---|---|---|"
    assert "| heart: mpirun vs FLamby | 30.00 s | 10.00 s | 3.00x | <= 1.5x | MISSED |" in table
    assert all(line.endswith("|") for line in table)


def test_csv_has_every_row_and_png_is_drawn(tmp_path):
    rows = _rows()
    report.write_csv(rows, tmp_path / "benchmark.csv")
    with open(tmp_path / "benchmark.csv", newline="") as f:
        read = list(csv.DictReader(f))
    assert list(read[0]) == report.COLUMNS and len(read) == len(rows)
    assert read[1]["ratio"] == "3.0" and read[1]["met"] == "no" and read[0]["ratio"] == ""
    report.draw(rows, tmp_path / "benchmark.png")
    report.draw([], tmp_path / "empty.png")  # nothing measured still gives a picture, not a crash
    for name in ("benchmark.png", "empty.png"):
        assert (tmp_path / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_main_runs_the_chosen_sections_and_a_failed_one_does_not_stop_the_others(tmp_path, monkeypatch, capsys):
    def fine(bench):
        assert bench.pairs == 3 and bench.max_centres == 8
        return [report.ratio_row("fine", "x", 1.0, 1.0, 1.5)]

    def broken(bench):
        raise benchmark.RunFailed("mpiexec ...: exit code 1; last output: boom")

    def first_form(work, pairs, centres, rounds):  # the table's first signature still works
        # such sections made their ratio rows by hand: ratio and target, no ours/reference/met
        return [{"section": "first_form", "case": f"{pairs} pairs {rounds} rounds", "ratio": 2.0, "target": 1.25}]

    monkeypatch.setattr(benchmark, "SECTIONS", {"broken": broken, "fine": fine, "first_form": first_form})
    out = tmp_path / "out"
    assert benchmark.main(["--out", str(out), "--sections", "broken,fine,first_form", "--pairs", "3",
                           "--max-centres", "8", "--rounds", "7", "--markdown"]) == 0
    printed = capsys.readouterr().out
    assert "broken stopped: mpiexec ...: exit code 1; last output: boom" in printed
    assert "| fine: x | 1.00 s | 1.00 s | 1.00x | <= 1.5x | ok |" in printed
    assert "| first_form: 3 pairs 7 rounds | - | - | 2.00x | <= 1.25x | MISSED |" in printed
    assert "Measured " in printed and "--sections broken,fine,first_form" in printed
    with open(out / "benchmark.csv", newline="") as f:
        cases = [(r["section"], r["case"]) for r in csv.DictReader(f)]
    assert cases == [("broken", "failed"), ("fine", "x"), ("first_form", "3 pairs 7 rounds")]
    assert (out / "benchmark.png").exists()



def test_markdown_path_writes_a_dated_record_and_never_overwrites_one(tmp_path, monkeypatch, capsys):
    calls = []

    def fine(bench):
        calls.append(bench.pairs)
        return [report.ratio_row("fine", "x", 1.0, 1.0, 1.5)]

    monkeypatch.setattr(benchmark, "SECTIONS", {"fine": fine})
    records = tmp_path / "docs" / "benchmarks"
    records.mkdir(parents=True)
    argv = ["--out", str(tmp_path / "out"), "--sections", "fine", "--markdown", f"{records}/"]
    assert benchmark.main(argv) == 0
    written = list(records.iterdir())
    assert [p.name for p in written] == [time.strftime("%Y-%m-%d") + ".md"]
    text = written[0].read_text()
    assert text.startswith("# Benchmark, ") and "| fine: x | 1.00 s | 1.00 s | 1.00x | <= 1.5x | ok |" in text
    assert "--- markdown ---" not in capsys.readouterr().out  # written, not printed
    with pytest.raises(SystemExit) as refused:  # the same day again: refused before anything runs
        benchmark.main(argv)
    assert refused.value.code == 2 and calls == [2] and written[0].read_text() == text
    assert "never overwritten" in capsys.readouterr().err

def _alive(pid):
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


def test_a_job_past_its_deadline_is_killed_with_its_children_and_memory_is_sampled_until_it_ends():
    # a parent that starts a child and outlives the deadline, as mpiexec and its ranks do
    parent = ("import subprocess, sys, time; child = subprocess.Popen([sys.executable, '-c', "
              "'import time; time.sleep(60)']); print(child.pid, flush=True); b = b\"x\" * (50 * 2**20); "
              "time.sleep(60)")
    job = benchmark.launch([sys.executable, "-c", parent], deadline_s=4, sample_memory=True)
    assert job.returncode == 124 and "timed out" in job.failure()
    child = int(job.output.split()[0])
    deadline = time.monotonic() + 10
    while _alive(child) and time.monotonic() < deadline:
        time.sleep(0.2)
    assert not _alive(child)
    # both python processes were sampled; the parent's 50 MB buffer shows in its private memory
    assert len(job.peak_rss_mb) == 2 and max(job.peak_private_mb) >= 50


def test_a_job_that_ends_early_while_sampled_is_measured():
    job = benchmark.launch([sys.executable, "-c", "import time; time.sleep(1.5)"], deadline_s=60,
                           sample_memory=True)
    assert job.returncode == 0 and len(job.peak_rss_mb) == 1 and job.peak_rss_mb[0] > 0


def test_a_job_that_would_not_fit_in_free_memory_is_not_started(tmp_path, monkeypatch):
    monkeypatch.setattr(benchmark, "free_memory_mb", lambda: 4096.0)
    assert benchmark.memory_shortfall(6) is None  # 6 x 550 MB x 1.05 = 3.4 GiB
    assert "65 ranks need about 36.7 GiB (550 MB each), 4.0 GiB free" in benchmark.memory_shortfall(65)
    with pytest.raises(benchmark.RunFailed, match="not started: 33 ranks"):
        benchmark.run_project(33, [], tmp_path / "out", 10)
    assert not (tmp_path / "out").exists()


def test_a_size_that_fails_is_recorded_and_the_next_size_still_runs(monkeypatch, capsys):
    monkeypatch.setattr(benchmark, "RAW_TINY_ROUND", Path(__file__))  # only has to exist
    seen = []

    def fake_project(ranks, args, out, deadline_s, **_):
        seen.append(ranks)
        if ranks == 5:
            raise benchmark.RunFailed("mpiexec -n 5 ...: exit code 1; last output: boom")
        return benchmark.Job([], 0, 1.0, 0.0, "", results={"timing": {"train_s": 2.0}, "rounds_completed": 10})

    monkeypatch.setattr(benchmark, "run_project", fake_project)
    monkeypatch.setattr(benchmark, "launch", lambda *a, **k: benchmark.Job(
        [], 0, 1.0, 0.0, "raw mpi4py tiny round, 32 clients: 100.00 ms/round"))
    rows = benchmark.tiny_round(benchmark.Bench(Path("/nonexistent"), pairs=1, rounds=10))
    assert seen == [5, 33]
    notes = [r for r in rows if r.get("note")]
    assert notes[0]["case"] == "4 centres" and "boom" in notes[0]["note"]
    ratios = {r["centres"]: r for r in rows if "ratio" in r}
    assert ratios[4]["met"] == "no" and ratios[4]["ratio"] is None
    assert ratios[32]["ratio"] == pytest.approx(2.0) and ratios[32]["met"] == "no"


def test_a_failed_job_is_said_in_one_line_without_mpich_banner():
    output = ("training...\nTraceback (most recent call last):\nValueError: boom\n"
              "=====================\n=   BAD TERMINATION OF ONE OF YOUR APPLICATION PROCESSES\n"
              "YOUR APPLICATION TERMINATED WITH THE EXIT STRING: Killed (signal 9)\n"
              "This typically refers to a problem with your application.\n"
              "Please see the FAQ page for debugging suggestions\n")
    job = benchmark.Job(["/venv/bin/mpiexec", "-n", "33", "/venv/bin/python", "/repo/launch_client.py", "--cf", "x"],
                        9, 1.0, 0.0, output)
    assert job.failure() == ("launch_client.py -n 33: exit code 9, a rank was killed with SIGKILL (out of memory? "
                             "see dmesg); last output: Traceback (most recent call last): / ValueError: boom")
    table = report.report([report.note_row("tiny_round", "32 centres", "two\nlines")])
    assert "tiny_round: 32 centres  two lines" in table


# --- the datasets section's pure parts (scripts/bench/per_dataset.py) ----------------------------

per_dataset = benchmark.per_dataset  # scripts/bench/per_dataset.py, as benchmark.py imports it

# rounds.csv of a 2-round run with 3 centres (the columns telemetry.py writes); centre 2 sat out round 2
ROUNDS_CSV = """round,centre,local_train_s,wait_s,bytes_sent,bytes_received,train_loss,sampled,round_s
1,0,19.0,0.6,1985212,1989108,0.59,True,20.0
1,1,19.5,0.08,1985212,1989108,0.57,True,20.0
1,2,19.25,0.29,1985212,1989108,0.58,True,20.0
2,0,9.0,0.05,1984766,1988909,0.52,True,10.0
2,1,8.5,0.27,1984766,1988909,0.50,True,10.0
2,2,,0.67,,,,False,10.0
"""
RESULTS = {"checkpoints": {"mean_s": 0.056, "max_s": 0.066},
           "ranks": [{"rank": 0, "role": "server", "peak_rss_mb": 1124.3},
                     {"rank": 1, "role": "client", "peak_rss_mb": 1610.2},
                     {"rank": 2, "role": "client", "peak_rss_mb": 1532.5},
                     {"rank": 3, "role": "client", "peak_rss_mb": None}]}


def test_an_mpi_round_is_split_into_the_slowest_centres_training_and_the_launchers_rest():
    figures = per_dataset.mpi_breakdown(ROUNDS_CSV, RESULTS)
    assert figures["rounds"] == 2
    assert figures["round_s"] == pytest.approx(15.0)
    assert figures["train_s"] == pytest.approx((19.5 + 9.0) / 2)  # the slowest sampled centre per round
    assert figures["launcher_s"] == pytest.approx((0.5 + 1.0) / 2)
    assert figures["share"] == pytest.approx(1.5 / 30.0)  # over the run, not a mean of per-round shares
    assert (figures["rounds_total_s"], figures["train_total_s"]) == (pytest.approx(30.0), pytest.approx(28.5))
    assert (figures["checkpoint_s"], figures["server_rss_mb"], figures["client_rss_mb"]) == (0.056, 1124.3, 1610.2)


def test_an_mpi_run_without_complete_rounds_or_checkpoints_gives_no_figures_rather_than_wrong_ones():
    header = ROUNDS_CSV.splitlines()[0]
    figures = per_dataset.mpi_breakdown(header + "\n1,0,1.0,,10,10,0.5,True,\n", {})
    assert figures["rounds"] == 0
    assert all(figures[k] is None for k in ("round_s", "train_s", "launcher_s", "share", "checkpoint_s",
                                            "server_rss_mb", "client_rss_mb"))


def test_flamby_inram_result_line_is_found_after_progress_bars_and_split_the_same_way():
    result = {"rounds": [{"round_s": 4.0, "train_s": 3.5}, {"round_s": 2.0, "train_s": 1.5}], "threads": 2,
              "peak_rss_mb": 900.0, "metrics": {"client_test_0": 0.5}, "train_samples": [2, 2]}
    output = ("warnings...\n 50%|#####     | 1/2 [00:01<00:01]100%|##########| 2/2 RESULT "
              + json.dumps(result) + "\n")
    parsed = per_dataset.parse_inram(output)
    assert parsed == result
    figures = per_dataset.inram_breakdown(parsed)
    assert (figures["round_s"], figures["train_s"], figures["launcher_s"]) == (3.0, 2.5, 0.5)
    assert figures["share"] == pytest.approx(1.0 / 6.0)
    assert (figures["threads"], figures["peak_rss_mb"]) == (2, 900.0)
    with pytest.raises(ValueError, match="no RESULT line"):
        per_dataset.parse_inram("Traceback (most recent call last):\n  ...\n")


def test_datasets_are_chosen_by_flamby_name_or_short_name_and_unknown_ones_are_refused():
    assert per_dataset.parse_datasets("heart, ixi,fed_isic2019,ixi") == ["fed_heart_disease", "fed_ixi",
                                                                         "fed_isic2019"]
    assert per_dataset.parse_datasets("lidc_idri,kits19") == ["fed_lidc_idri", "fed_kits19"]
    assert per_dataset.parse_datasets("all") == list(per_dataset.DATASETS)
    assert "fed_kits19" not in per_dataset.LIGHT and "fed_lidc_idri" in per_dataset.LIGHT
    with pytest.raises(ValueError, match="unknown dataset 'tcga'.*choose from fed_heart_disease"):
        per_dataset.parse_datasets("ixi,tcga")
    with pytest.raises(ValueError, match="no dataset given"):
        per_dataset.parse_datasets(" , ")


def test_rank_threads_are_auto_or_a_count_and_each_is_said_with_where_it_comes_from():
    assert per_dataset.parse_rank_threads("auto, 2,auto,1") == [None, 2, 1]
    for bad in ("0", "two", "-1", "2000", ","):
        with pytest.raises(ValueError, match="rank-threads"):
            per_dataset.parse_rank_threads(bad)
    # the launcher's rule (driver.torch_threads): cores shared by the ranks, at least one
    assert per_dataset.threads_per_rank(None, ranks=4, cores=2) == 1
    assert per_dataset.threads_per_rank(None, ranks=4, cores=16) == 4
    assert per_dataset.threads_per_rank(3, ranks=4, cores=2) == 3
    assert per_dataset.threads_label(None, 7, 2) == "1 (default: 2 cores / 7 ranks)"
    assert per_dataset.threads_label(2, 7, 2) == "2 (cpu_threads=2)"


def test_both_runs_get_the_same_settings_and_a_reduced_batch_is_said():
    isic = per_dataset.DATASETS["fed_isic2019"]
    args = per_dataset.run_arguments(isic)
    sets = dict(a.split("=", 1) for a in args[1::2])
    assert args[0::2] == ["--set"] * len(sets)
    assert sets == {"train_args.comm_round": str(isic.rounds), "train_args.num_updates": str(isic.num_updates),
                    "validation_args.frequency_of_the_test": str(isic.rounds + 1),
                    "validation_args.pooled_test": "off", "train_args.batch_size": "8"}
    assert "train_args.batch_size=" not in " ".join(per_dataset.run_arguments(per_dataset.DATASETS["fed_ixi"]))
    assert per_dataset.batch_label(isic, 64) == "8 (FLamby's 64)"
    camelyon = per_dataset.DATASETS["fed_camelyon16"]
    assert per_dataset.batch_label(camelyon, 16, [2, 3]) == "16, 2 per centre here"
    assert per_dataset.batch_label(camelyon, 16, [16, 20]) == "16"
    assert all(run.reduced for run in per_dataset.DATASETS.values() if run.standin and not run.needs_gpu)


def test_dataset_updates_change_every_stand_in_run_and_say_so_but_never_heart():
    kits = per_dataset.with_updates(per_dataset.DATASETS["fed_kits19"], 20)
    assert kits.num_updates == 20 and "train_args.num_updates=20" in per_dataset.run_arguments(kits)
    assert kits.reduced.endswith("--dataset-updates 20: 20 local updates per round instead of 1")
    heart = per_dataset.DATASETS["fed_heart_disease"]
    assert per_dataset.with_updates(heart, 20) is heart
    assert per_dataset.with_updates(per_dataset.DATASETS["fed_ixi"], None) is per_dataset.DATASETS["fed_ixi"]


def test_metrics_agreement_says_equal_or_by_how_much_they_differ():
    same = {"client_test_0": 0.5, "client_test_1": 0.25, "average": 0.375}
    assert per_dataset.metrics_agreement(dict(same), same) == "the same per-centre metrics"
    assert per_dataset.metrics_agreement({**same, "client_test_1": 0.2}, same) == \
        "per-centre metrics differ by at most 0.0500"
    assert "not compared" in per_dataset.metrics_agreement({"client_test_0": 0.5}, same)


def _dataset_section_rows():
    base = {"section": "datasets", "dataset": "fed_ixi"}
    mpi = [{**base, "case": "flamby-mpi", "threads": None, "ranks": 4, "batch": "2", "rounds_label": "3 x 2",
            "threads_label": "1 (default: 2 cores / 4 ranks)", "round_s": r, "train_s": r - 0.5, "launcher_s": 0.5,
            "share": 0.5 / r, "checkpoint_s": 0.05, "server_rss_mb": 1100.0, "client_rss_mb": 1600.0, "wall_s": w}
           for r, w in ((5.0, 40.0), (7.0, 44.0))]
    inram = [{**base, "case": "FLamby in-RAM", "round_s": 6.0, "train_s": 5.9, "inram_threads": 2,
              "peak_rss_mb": 1500.0, "wall_s": 50.0}]
    return mpi + inram + [{**base, "case": "status", "threads": None, "status": "measured"},
                          {"section": "datasets", "dataset": "fed_lidc_idri", "case": "status", "threads": None,
                           "status": "needs a GPU: FLamby's LIDC-IDRI loss calls .cuda()"}]


def test_the_per_dataset_table_shows_medians_share_memory_and_why_a_dataset_did_not_run():
    table = per_dataset.dataset_table(_dataset_section_rows())
    assert len(table) == 2
    ixi = dict(zip(per_dataset.TABLE_HEADER, table[0], strict=True))
    assert (ixi["round"], ixi["training"], ixi["launcher"]) == ("6.00 s", "5.50 s", "500 ms")
    assert ixi["launcher share"] == f"{100 * statistics.median([0.5 / 5, 0.5 / 7]):.1f}%"
    assert ixi["peak RSS MB: server / largest client"] == "1,100 / 1,600"
    assert ixi["FLamby in-RAM: round / training (threads, peak RSS MB)"] == "6.00 s / 5.90 s (2, 1,500)"
    assert ixi["status"] == "measured"
    lidc = dict(zip(per_dataset.TABLE_HEADER, table[1], strict=True))
    assert lidc["status"].startswith("needs a GPU") and lidc["round"] == "-"


def test_main_passes_the_datasets_and_threads_on_and_prints_the_per_dataset_table(tmp_path, monkeypatch, capsys):
    seen = []

    def datasets(bench):
        seen.append((bench.datasets, bench.rank_threads, bench.dataset_updates))
        return _dataset_section_rows()

    monkeypatch.setattr(benchmark, "SECTIONS", {"datasets": datasets})
    assert benchmark.main(["--out", str(tmp_path / "out"), "--sections", "datasets", "--datasets", "ixi,lidc",
                           "--rank-threads", "auto,2", "--markdown"]) == 0
    assert benchmark.main(["--out", str(tmp_path / "out2"), "--sections", "datasets", "--datasets", "kits19",
                           "--dataset-updates", "20"]) == 0
    assert seen == [(["fed_ixi", "fed_lidc_idri"], [None, 2], None), (["fed_kits19"], [None], 20)]
    printed = capsys.readouterr().out
    assert "**Per dataset" in printed
    assert "| fed_lidc_idri | - | - |" in printed and "needs a GPU" in printed


def test_the_command_line_refuses_an_unknown_dataset_or_thread_count(capsys):
    for argv in (["--datasets", "ixi,mnist"], ["--rank-threads", "auto,0"], ["--dataset-updates", "0"]):
        with pytest.raises(SystemExit) as exit_:
            benchmark.main(["--sections", "datasets", *argv])
        assert exit_.value.code == 2
    err = capsys.readouterr().err
    assert "unknown dataset 'mnist'" in err and "rank-threads" in err
