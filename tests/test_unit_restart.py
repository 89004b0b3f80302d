"""flamby_mpi.restart: the rule a restarted cluster job follows (the scripts' own tests run it
through scripts/slurm_job.sh and scripts/pbs_job.sh with stand-ins, tests/test_cluster_scripts.py)."""
from pathlib import Path

import pytest

from flamby_mpi import restart

ROOT = Path(__file__).resolve().parents[1]
CONFIG = str(ROOT / "config" / "fedml_config.yaml")


def _decision(capsys, *argv):
    assert restart.main(list(argv)) == 0
    decision, _, directory = capsys.readouterr().out.strip().partition(" ")
    return decision, Path(directory)


def test_finished_resume_overwrite_or_afresh_in_the_directory_the_command_line_names(tmp_path, capsys):
    default, mine = tmp_path / "runs" / "slurm-7", tmp_path / "mine dir"
    assert _decision(capsys, str(default), CONFIG) == ("afresh", default)
    (default / "rendezvous").mkdir(parents=True)  # made by the join before the run, and the lock: no run yet
    (default / ".flamby-mpi.lock").write_text("")
    assert _decision(capsys, str(default), CONFIG) == ("afresh", default)
    (default / "config.yaml").write_text("x")  # killed before its first checkpoint: start it again over it
    assert _decision(capsys, str(default), CONFIG) == ("overwrite", default)
    (default / "checkpoints" / "round_2").mkdir(parents=True)
    assert _decision(capsys, str(default), CONFIG) == ("overwrite", default)  # no manifest: not complete
    (default / "checkpoints" / "round_2" / "manifest.json").write_text("{}")
    assert _decision(capsys, str(default), CONFIG) == ("resume", default)
    (default / "results.json").write_text("{}")
    assert _decision(capsys, str(default), CONFIG) == ("finished", default)
    # A resume (or --overwrite) removes results.json before training: killed then, it resumes again.
    (default / "results.json").unlink()
    assert _decision(capsys, str(default), CONFIG) == ("resume", default)
    # the user's --set (after the script's own) wins, spaces and all
    override = ["--set", f"common_args.output_dir={tmp_path / 'x'}", "--set", f"common_args.output_dir={mine}"]
    assert _decision(capsys, str(default), CONFIG, *override) == ("afresh", mine)


def _undecided(capsys, *argv):
    """restart cannot decide: exit 2, nothing on stdout (the job scripts read the decision there),
    its reason as one error line (and a HINT) on stderr, no traceback."""
    assert restart.main(list(argv)) == 2
    captured = capsys.readouterr()
    assert captured.out == "" and "Traceback" not in captured.err
    lines = captured.err.splitlines()
    assert len(lines) in (1, 2) and (len(lines) == 1 or lines[1].startswith("HINT: ")), captured.err
    return lines[0]


def test_a_config_that_does_not_load_is_no_decision(tmp_path, capsys):
    """It may be what names the run directory: the job must not start afresh elsewhere."""
    (tmp_path / "bad.yaml").write_text("common_args: [not, a, mapping")
    assert "bad.yaml" in _undecided(capsys, str(tmp_path / "d"), str(tmp_path / "bad.yaml"))
    assert "config file not found" in _undecided(capsys, str(tmp_path / "d"), str(tmp_path / "missing.yaml"))
    # The job scripts take the config as CONFIG (sbatch slurm_job.sh CONFIG): the hint says so, not --cf.
    assert restart.main([str(tmp_path / "d"), str(tmp_path / "missing.yaml")]) == 2
    assert "HINT: pass an existing file as CONFIG, e.g. config/fedml_config.yaml" in capsys.readouterr().err
    assert "expected section.key=value" in _undecided(capsys, str(tmp_path / "d"), CONFIG, "--set", "comm_round")
    assert not (tmp_path / "d").exists()


@pytest.mark.parametrize("args, reason", [
    (["--bogus"], "would refuse the job's arguments: unrecognized arguments: --bogus"),
    (["--run_id"], "argument --run_id: expected one argument"),
    (["--rank", "x"], "argument --rank: invalid int value: 'x'"),
    (["--help"], "--help or --version only"),
    (["--version"], "--help or --version only"),
])
def test_a_command_line_the_launcher_refuses_is_no_decision(args, reason, tmp_path, capsys):
    """It used to print `afresh DEFAULT_DIR` with exit 0 (argparse's usage on stderr, which the job
    scripts dropped), and the restarted job started afresh."""
    line = _undecided(capsys, str(tmp_path / "d"), CONFIG, *args)
    assert line.startswith("flamby-mpi: error: restart: cannot decide") and reason in line, line


def test_config_given_with_cf_is_a_usage_error(tmp_path, capsys):
    assert restart.main([str(tmp_path / "d"), "--cf", CONFIG]) == 2
    captured = capsys.readouterr()
    assert captured.out == "" and "usage" in captured.err and "found '--cf'" in captured.err


def test_usage(capsys):
    assert restart.main([]) == 2 and "usage" in capsys.readouterr().err
