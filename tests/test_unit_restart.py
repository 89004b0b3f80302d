"""flamby_mpi.restart: the rule a restarted cluster job follows (the scripts' own tests run it
through scripts/slurm_job.sh and scripts/pbs_job.sh with stand-ins, tests/test_cluster_scripts.py)."""
from pathlib import Path

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


def test_a_config_that_does_not_load_leaves_the_default_directory(tmp_path, capsys):
    (tmp_path / "bad.yaml").write_text("common_args: [not, a, mapping")
    assert _decision(capsys, str(tmp_path / "d"), str(tmp_path / "bad.yaml")) == ("afresh", tmp_path / "d")
    assert _decision(capsys, str(tmp_path / "d"), str(tmp_path / "missing.yaml")) == ("afresh", tmp_path / "d")


def test_usage(capsys):
    assert restart.main([]) == 2 and "usage" in capsys.readouterr().err
