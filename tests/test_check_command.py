"""`python -m flamby_mpi check`: a run's readiness on a login node (data, extras, memory per rank), and
scripts/submit.py running it before sbatch/qsub. Real processes, real files."""
import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest

from flamby_mpi.datasets.synthetic import TRAIN_FRACTION, center_sizes
from support.mpi import DEFAULT_CONFIG, REPO
from support.mpi import test_env as env_for
from support.paths import SHARED_DATA

SUBMIT = REPO / "scripts" / "submit.py"
HEART = SHARED_DATA / "fed_heart_disease"


def _check(tmp_path, *args, module=("-m", "flamby_mpi", "check"), timeout=180, env=None):
    home = tmp_path / "home"
    home.mkdir(exist_ok=True)
    return subprocess.run([sys.executable, *module, *args], capture_output=True, text=True, cwd=tmp_path,
                          env=env_for(home, env), timeout=timeout)


def _mib(text, role):
    found = re.search(rf"{role} rank\s+([\d,.]+) (MiB|KiB)", text)
    assert found, text
    return float(found.group(1).replace(",", "")) * (1 if found.group(2) == "MiB" else 1 / 1024)


def test_synthetic_listed_centres_are_checked_and_memory_measured(tmp_path):
    done = _check(tmp_path, "--cf", str(DEFAULT_CONFIG), "--set", "data_args.centers=[3,1]",
                  "--set", "data_args.synthetic_samples_per_center=40")
    assert done.returncode == 0, done.stdout + done.stderr
    out = done.stdout
    assert "synthetic, centres 3, 1 (mpirun -np 3)" in out
    rows = {line.split()[0]: line.split() for line in out.splitlines() if re.match(r"^[0-9]+\s", line)}
    assert set(rows) == {"3", "1"}  # the listed centres, and only them
    for centre in (3, 1):  # the sizes of synthetic.py's centres
        size = center_sizes(4, 40)[centre]
        train = int(size * TRAIN_FRACTION)
        assert rows[str(centre)][1:3] == [str(train), str(size - train)]
    assert all(row[-1] == "ok" for row in rows.values())
    assert "memory per rank (peak RSS, one training step on 16 samples of centre 3" in out
    client, server = _mib(out, "client"), _mib(out, "server")
    assert 50 < client < 8000 and 50 < server < 8000  # a process that imported torch: tens to thousands
    assert not list(tmp_path.glob("runs"))  # a check writes no run


def test_the_output_directory_is_looked_at_as_the_run_will_take_it(tmp_path):
    """The check said ready for a run whose output directory held a finished run; the run then
    exited 2 on every rank (after its queue wait, under submit.py)."""
    small = ["--cf", str(DEFAULT_CONFIG), "--set", "data_args.synthetic_samples_per_center=40"]
    done = _check(tmp_path, *small)
    assert done.returncode == 0 and "the run id not known yet (no --run_id): not looked at" in done.stdout
    finished = tmp_path / "runs" / "r1"
    finished.mkdir(parents=True)
    (finished / ".flamby-mpi.lock").write_text("")
    (finished / "results.json").write_text('{"rounds_completed": 3}')
    before = sorted(p.name for p in finished.iterdir())
    done = _check(tmp_path, *small, "--run_id", "r1")
    assert done.returncode == 2, done.stdout + done.stderr
    assert "output directory: runs/r1 holds a finished run" in done.stdout and "Traceback" not in done.stderr
    assert _check(tmp_path, *small, "--run_id", "r1", "--overwrite").returncode == 0
    done = _check(tmp_path, *small, "--set", "common_args.output_dir=nowhere", "--resume")
    assert done.returncode == 2 and "--resume: nowhere does not exist" in done.stdout, done.stdout
    assert sorted(p.name for p in finished.iterdir()) == before and not (tmp_path / "nowhere").exists()


def test_a_centre_whose_data_fails_is_named_and_the_exit_is_2(tmp_path):
    """The faulty dataset (tests/support/faulty_dataset.py) fails on centre 2 only when loading."""
    done = _check(tmp_path, "--cf", str(DEFAULT_CONFIG), "--set", "data_args.dataset=support.faulty_dataset",
                  "--set", "data_args.centers=[0,2]", env={"FAULT_LOAD_CENTER": "2"})
    out = done.stdout + done.stderr
    assert done.returncode == 2, out
    assert "Traceback" not in out
    assert re.search(r"^2 .*FAILED$", done.stdout, re.M) and re.search(r"^0 .*ok$", done.stdout, re.M)
    assert "centre 2: FileNotFoundError: /data/centre2/train.csv" in done.stdout


def test_resume_without_a_run_to_continue_is_refused_as_the_launcher_refuses_it(tmp_path):
    """check --resume (and so submit.py --resume) with no run id said ready; the job then failed on
    every rank after its queue wait (in a batch job the run id is a new slurm-<id>)."""
    done = _check(tmp_path, "--cf", str(DEFAULT_CONFIG), "--resume")
    assert done.returncode == 2, done.stdout + done.stderr
    assert "--resume needs to know which run to continue" in done.stderr and "Traceback" not in done.stderr


def test_a_launcher_option_is_not_taken_for_an_abbreviation_of_a_check_option(tmp_path):
    """--rank 7 (pasted from a separate-terminal command) was read as --ranks-per-host 7."""
    done = _check(tmp_path, "--cf", str(DEFAULT_CONFIG), "--rank", "7")
    assert done.returncode == 2 and "unrecognized arguments: --rank 7" in done.stderr, done.stderr


def test_the_module_form_and_user_mistakes(tmp_path):
    done = _check(tmp_path, "--cf", str(DEFAULT_CONFIG), "--set", "data_args.centers=[9]",
                  module=("-m", "flamby_mpi.check"))
    assert done.returncode == 2
    assert "data_args.centers: synthetic has centres 0..3 (FLamby's indices), got 9" in done.stderr
    assert "Traceback" not in done.stderr
    missing = _check(tmp_path, "--cf", str(tmp_path / "nope.yaml"))
    assert missing.returncode == 2 and "config file not found" in missing.stderr


def _heart():
    pytest.importorskip("flamby.datasets.fed_heart_disease", reason="FLamby is not installed")
    if not HEART.is_dir():
        pytest.skip(f"{HEART} is absent")


@pytest.mark.realdata
def test_fed_heart_disease_real_data(tmp_path):
    _heart()
    done = _check(tmp_path, "--cf", str(REPO / "config" / "fed_heart_disease.yaml"),
                  "--set", f"data_args.data_path={HEART}")
    assert done.returncode == 0, done.stdout + done.stderr
    rows = [line.split() for line in done.stdout.splitlines() if re.match(r"^[0-3]\s", line)]
    # FLamby's train/test sizes of the four centres (its README: 199/104, 172/89, 30/16, 85/45)
    assert [r[:3] for r in rows] == [["0", "199", "104"], ["1", "172", "89"], ["2", "30", "16"], ["3", "85", "45"]]
    assert all(r[-1] == "ok" for r in rows)
    assert "(mpirun -np 5)" in done.stdout


@pytest.mark.realdata
def test_fed_heart_disease_with_a_missing_path_names_flamby_s_command(tmp_path):
    _heart()
    done = _check(tmp_path, "--cf", str(REPO / "config" / "fed_heart_disease.yaml"),
                  "--set", f"data_args.data_path={tmp_path / 'gone'}")
    assert done.returncode == 2
    assert f"python download.py --output-folder {tmp_path / 'gone'}" in done.stderr


def test_a_problem_of_every_centre_is_said_once_with_its_hint_once(tmp_path):
    """Fed-IXI with no data_path and no download recorded: FLamby finds no data for any centre. It
    was said per centre, each with its three-line hint twice (3 x 2 copies)."""
    from flamby_mpi.datasets.flamby_datasets import flamby_location_record
    from support.optional import import_or_skip

    import_or_skip("flamby.datasets.fed_ixi")
    if any(Path(flamby_location_record("fed_ixi", debug)).exists() for debug in (False, True)):
        pytest.skip("this FLamby has a recorded Fed-IXI download")
    done = _check(tmp_path, "--cf", str(REPO / "config" / "fed_ixi.yaml"))
    out = done.stdout + done.stderr
    assert done.returncode == 2, out
    assert re.search(r"^centres 0, 1, 2: the data of fed_ixi was not found", out, re.M), out
    assert out.count("python download.py --output-folder DIR") == 1 and out.count("HINT:") == 1, out


def _submit(tmp_path, *args):
    home = tmp_path / "home"
    home.mkdir(exist_ok=True)
    return subprocess.run([sys.executable, str(SUBMIT), *args], capture_output=True, text=True, cwd=REPO,
                          env=env_for(home), timeout=240)


def test_submit_dry_run_runs_the_check_first(tmp_path):
    done = _submit(tmp_path, "--dry-run", "config/fedml_config.yaml", "--set", "data_args.centers=[2]",
                   "--set", "train_args.comm_round=2")
    assert done.returncode == 0, done.stderr
    err = done.stderr
    assert (f"# readiness check: {shlex.quote(sys.executable)} -m flamby_mpi check --cf config/fedml_config.yaml "
            "--set 'data_args.centers=[2]' --set train_args.comm_round=2") in err
    assert "synthetic, centres 2 (mpirun -np 2)" in err and "# readiness check: ready" in err
    assert done.stdout.startswith("sbatch --ntasks=2 ")


def test_submit_refuses_a_run_that_is_not_ready(tmp_path):
    fake = tmp_path / "bin"
    fake.mkdir()
    calls = tmp_path / "calls"
    (fake / "sbatch").write_text(f"#!/bin/sh\necho \"$@\" >> {calls}\n")
    (fake / "sbatch").chmod(0o755)
    home = tmp_path / "home"
    home.mkdir()
    env = env_for(home, {"FAULT_LOAD_CENTER": "1"})
    env["PATH"] = f"{fake}:{env['PATH']}"
    done = subprocess.run([sys.executable, str(SUBMIT), "config/fedml_config.yaml",
                           "--set", "data_args.dataset=support.faulty_dataset"],
                          capture_output=True, text=True, cwd=REPO, env=env, timeout=240)
    assert done.returncode == 2, done.stderr
    assert "FAILED" in done.stderr and "nothing was submitted" in done.stderr and "--skip-check" in done.stderr
    assert not calls.exists()  # sbatch never ran
    skipped = subprocess.run([sys.executable, str(SUBMIT), "--skip-check", "config/fedml_config.yaml",
                              "--set", "data_args.dataset=support.faulty_dataset"],
                             capture_output=True, text=True, cwd=REPO, env=env, timeout=240)
    assert skipped.returncode == 0, skipped.stderr
    assert "readiness check" not in skipped.stderr
    assert calls.read_text().startswith("--ntasks=5 ")


def test_a_sample_s_shapes_show_a_scalar_label_by_name():
    """Fed-Camelyon16's label is a 0-d tensor: the column showed '361x2048 / ' with nothing after."""
    import torch

    from flamby_mpi.check import _sample_shapes

    assert _sample_shapes((torch.zeros(361, 2048), torch.tensor(1.0))) == "361x2048 / scalar"
    assert _sample_shapes((torch.zeros(3), 7)) == "3 / int"
