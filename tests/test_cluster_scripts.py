"""The job scripts and the submit helper without a scheduler.

PBS cannot run here: its script is checked for syntax and header, its
directives as scripts/submit.py computes them from the config, and it is run
for real under a PBS-like environment (PBS_JOBID, PBS_NODEFILE, PBS_O_WORKDIR),
where MPICH's mpiexec reads the node file as it would under PBS. The SLURM
script runs on a real SLURM in test_cluster_slurm.py.
"""
import json
import os
import re
import shlex
import signal
import socket
import subprocess
import sys
import time

import pytest

from support.mpi import DEFAULT_CONFIG, REPO, run_job
from support.mpi import test_env as job_env  # aliased: pytest would collect test_env
from support.scripts import load_script

SLURM_SCRIPT = REPO / "scripts" / "slurm_job.sh"
PBS_SCRIPT = REPO / "scripts" / "pbs_job.sh"
SUBMIT = REPO / "scripts" / "submit.py"


def _directives(script, prefix):
    return [line[len(prefix):].strip() for line in script.read_text().splitlines()
            if line.startswith(prefix + " ")]


@pytest.mark.parametrize("script", [SLURM_SCRIPT, PBS_SCRIPT])
def test_scripts_are_valid_bash(script):
    done = subprocess.run(["bash", "-n", str(script)], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    text = script.read_text()
    assert text.startswith("#!/bin/bash\n")
    # Where site-specific lines go, and how the project's python is found.
    for needle in ("Site-specific lines go here", "module load", "FLAMBY_MPI_PYTHON", "VIRTUAL_ENV"):
        assert needle in text, needle


def test_slurm_header():
    directives = _directives(SLURM_SCRIPT, "#SBATCH")
    assert "--ntasks=5" in directives  # = 4 centres + 1 for config/fedml_config.yaml
    for option in ("--cpus-per-task=", "--mem-per-cpu=", "--time=", "--output=", "--job-name="):
        assert any(d.startswith(option) for d in directives), option
    text = SLURM_SCRIPT.read_text()
    for commented in ("##SBATCH --partition=", "##SBATCH --account=", "##SBATCH --gpus-per-task="):
        assert commented in text
    # Both ways of starting ranks are documented, with what each MPI needs.
    assert "--mpi=pmi2" in text and "--mpi=pmix" in text


def test_pbs_header():
    directives = _directives(PBS_SCRIPT, "#PBS")
    assert "-l select=1:ncpus=5:mpiprocs=5:mem=10gb" in directives
    assert any(d.startswith("-l walltime=") for d in directives)
    assert "-N flamby-mpi" in directives and "-j oe" in directives
    text = PBS_SCRIPT.read_text()
    assert "##PBS -l nodes=1:ppn=5" in text  # Torque's spelling
    assert "##PBS -q <queue>" in text and "##PBS -A <account>" in text
    assert "NOT TESTED ON A REAL PBS" in text


submit = load_script("submit")


def _submit(capsys, *args):
    """scripts/submit.py --dry-run in this process: (exit code, printed command, stderr). Without the
    readiness check (tests/test_check_command.py has it): these tests are about the command."""
    code = submit.main(["--dry-run", "--skip-check", *args])
    captured = capsys.readouterr()
    return code, shlex.split(captured.out.strip()), captured.err


@pytest.mark.parametrize("config, extra, ranks", [
    ("config/fedml_config.yaml", [], 5),
    ("config/fed_ixi.yaml", [], 4),  # FLamby's centres are known without FLamby installed
    ("config/fed_tcga_brca.yaml", [], 7),
    ("config/fedml_config.yaml", ["--set", "data_args.synthetic_num_centers=6"], 7),
])
def test_submit_computes_ranks_from_the_config(config, extra, ranks, capsys, monkeypatch):
    monkeypatch.chdir(REPO)
    code, command, err = _submit(capsys, "--scheduler", "pbs", config, *extra)
    assert code == 0, err
    assert f"# {ranks} ranks (1 server + {ranks - 1} clients)" in err
    assert command[:3] == ["qsub", "-l", f"select=1:ncpus={ranks}:mpiprocs={ranks}"]
    assert command[3:5] == ["-v", "FLAMBY_MPI_ARGS=" + " ".join([config, *extra])]
    assert command[-1] == str(PBS_SCRIPT)

    code, torque, _ = _submit(capsys, "--scheduler", "torque", config, *extra)
    assert torque[:5] == ["qsub", "-l", f"nodes=1:ppn={ranks}", "-F", " ".join([config, *extra])]

    code, slurm, _ = _submit(capsys, "--option=--time=00:10:00", config, *extra)
    assert slurm == ["sbatch", f"--ntasks={ranks}", "--time=00:10:00", str(SLURM_SCRIPT), config, *extra]


def test_submit_reports_config_errors(capsys, monkeypatch):
    monkeypatch.chdir(REPO)
    code, _, err = _submit(capsys, "config/fedml_config.yaml", "--set", "train_args.epochs=3")
    assert code == 2 and "train_args.epochs" in err
    code, _, err = _submit(capsys, "--scheduler", "pbs", "config/fed_ixi.yaml",
                           "--set", "data_args.data_path=/my data")
    assert code == 2 and "cannot contain spaces" in err


def test_submit_says_one_client_in_the_singular(capsys, monkeypatch):
    monkeypatch.chdir(REPO)
    code, command, err = _submit(capsys, "config/fedml_config.yaml", "--set", "data_args.synthetic_num_centers=1")
    assert code == 0, err
    assert "# 2 ranks (1 server + 1 client)" in err.splitlines() and command[1] == "--ntasks=2"


@pytest.mark.parametrize("content, message, hint", [
    (None, "config file not found", "HINT: pass an existing file as CONFIG, e.g. config/fedml_config.yaml"),
    (b"a: \0", "is a binary file", "HINT: pass a YAML config as CONFIG, e.g. config/fedml_config.yaml"),
    (b"a: \xff", "is not UTF-8 text", "HINT: save it as UTF-8, or pass the right file as CONFIG"),
])
def test_a_config_file_problem_hints_at_config_not_at_cf(content, message, hint, capsys, monkeypatch, tmp_path):
    """launch_client.py's hints say `--cf`; submit.py takes the config as CONFIG (and refuses --cf)."""
    monkeypatch.chdir(REPO)
    config = tmp_path / "job.yaml"
    if content is not None:
        config.write_bytes(content)
    code, _, err = _submit(capsys, str(config))
    assert code == 2 and message in err and hint in err.splitlines(), err
    assert "--cf" not in err


def test_submit_command_line_runs_without_installing_anything(tmp_path):
    done = subprocess.run([sys.executable, str(SUBMIT), "--dry-run", "--skip-check", "--scheduler", "pbs",
                           "config/fed_heart_disease.yaml"], capture_output=True, text=True,
                          cwd=REPO, timeout=120, env=job_env(tmp_path))
    assert done.returncode == 0, done.stderr
    assert done.stdout.startswith("qsub -l select=1:ncpus=5:mpiprocs=5 ")


@pytest.mark.parametrize("config, extra", [
    ("config/fed_heart_disease.yaml", []),
    ("config/fedml_config.yaml", ["--set=data_args.synthetic_num_centers=2"]),
])
def test_submit_imports_neither_torch_nor_fedml_nor_mpi(config, extra, tmp_path):
    """A login node may have only pyyaml: submit.py sizes FLamby and synthetic jobs without the rest."""
    code = ("import runpy, sys\n"
            f"sys.argv = ['submit.py', '--dry-run', '--skip-check', {config!r}, *{extra!r}]\n"
            "try:\n"
            f"    runpy.run_path({str(SUBMIT)!r}, run_name='__main__')\n"
            "except SystemExit as done:\n"
            "    assert done.code == 0, done.code\n"
            "print(sorted(m for m in sys.modules if m.split('.')[0] in ('torch', 'fedml', 'mpi4py', 'flamby')))")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO, timeout=60,
                          env=job_env(tmp_path))
    assert done.returncode == 0, done.stderr
    assert done.stdout.splitlines()[-1] == "[]", done.stdout


# --- submitting never wastes an allocation ------------------------------------------------------

@pytest.fixture
def fake_schedulers(tmp_path):
    """sbatch and qsub stand-ins first on PATH that record each call: (env, calls file)."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    calls = tmp_path / "calls.txt"
    for name in ("sbatch", "qsub"):
        tool = bin_dir / name
        tool.write_text(f'#!/bin/bash\necho "{name} $*" >> {shlex.quote(str(calls))}\n'
                        'echo "Submitted batch job 4242"\n')
        tool.chmod(0o755)
    home = tmp_path / "home"
    home.mkdir()
    env = job_env(home, {"PATH": f"{bin_dir}:{job_env(home)['PATH']}"})
    return env, calls


def _submit_command_line(env, *args, check=False):
    skip = [] if check else ["--skip-check"]  # the readiness check: tests/test_check_command.py
    return subprocess.run([sys.executable, str(SUBMIT), *skip, *args], capture_output=True, text=True,
                          cwd=REPO, env=env, timeout=60)


def _calls(calls):
    return calls.read_text().splitlines() if calls.exists() else []


def test_submit_without_dry_run_calls_the_scheduler(fake_schedulers):
    """The stand-in works: a valid command line is submitted, once, as printed."""
    env, calls = fake_schedulers
    done = _submit_command_line(env, "config/fedml_config.yaml", "--set", "train_args.comm_round=2")
    assert done.returncode == 0, done.stderr
    assert "Submitted batch job 4242" in done.stdout
    assert _calls(calls) == [f"sbatch --ntasks=5 {SLURM_SCRIPT} config/fedml_config.yaml "
                             "--set train_args.comm_round=2"]


@pytest.mark.parametrize("args", [
    ["config/fedml_config.yaml", "--dry-run"],  # after CONFIG: submit.py's, not the job's
    ["config/fedml_config.yaml", "--set", "train_args.comm_round=2", "--dry-run"],
    ["--dry-run", "config/fedml_config.yaml"],
])
def test_dry_run_anywhere_prints_and_submits_nothing(fake_schedulers, args):
    env, calls = fake_schedulers
    done = _submit_command_line(env, *args)
    assert done.returncode == 0, done.stderr
    command = shlex.split(done.stdout.strip())
    assert command[:4] == ["sbatch", "--ntasks=5", str(SLURM_SCRIPT), "config/fedml_config.yaml"]
    assert "--dry-run" not in command
    assert _calls(calls) == []


@pytest.mark.parametrize("args, message", [
    (["config/fedml_config.yaml", "--bogus"], "unrecognized arguments: --bogus"),
    (["config/fedml_config.yaml", "--set", "train_args.comm_round=2", "--bogus", "x"],
     "unrecognized arguments: --bogus x"),
    (["--bogus", "config/fedml_config.yaml"], "found '--bogus' first"),
    (["config/fedml_config.yaml", "--set"], "argument --set: expected one argument"),
    (["config/fedml_config.yaml", "--set", "comm_round=3"], "expected section.key=value"),
    (["config/fedml_config.yaml", "--set", "train_args.epochs=3"], "use train_args.num_updates"),
    (["config/fedml_config.yaml", "--set", "train_args.client_num_in_total=1000"],
     "synthetic has 4 centres, so this must be 4"),
    (["config/fed_ixi.yaml", "--set", "device_args.worker_num=4"], "fed_ixi has 3 centres"),
    (["config/fedml_config.yaml", "--rank", "1", "--role", "client"],
     "the scheduler starts every rank"),
    (["config/fedml_config.yaml", "--cf", "config/fed_ixi.yaml"], "give it once, as CONFIG"),
    (["config/fedml_config.yaml", "--run_id", "../elsewhere"],
     "run id '../elsewhere' cannot name files"),
    (["config/missing.yaml"], "config file not found"),
    (["config/fedml_config.yaml", "--scheduler", "lsf"], "invalid choice: 'lsf'"),
    ([], "CONFIG is missing"),
])
def test_mistakes_are_refused_before_submission(fake_schedulers, args, message):
    """Each of these used to be queued (or would fail on every rank): now an error at the prompt."""
    env, calls = fake_schedulers
    done = _submit_command_line(env, *args)
    assert done.returncode == 2, (done.stdout, done.stderr)
    assert message in done.stderr
    assert done.stdout == "" and _calls(calls) == []


def test_own_options_anywhere_and_their_values_as_next_argument(capsys, monkeypatch):
    monkeypatch.chdir(REPO)
    code, command, err = _submit(capsys, "config/fed_ixi.yaml", "--set", "train_args.comm_round=2",
                                 "--scheduler", "torque", "--option", "-q", "--option=short")
    assert code == 0, err
    assert command == ["qsub", "-l", "nodes=1:ppn=4",
                       "-F", "config/fed_ixi.yaml --set train_args.comm_round=2",
                       "-q", "short", str(PBS_SCRIPT)]
    code, command, err = _submit(capsys, "config/fedml_config.yaml", "--option", "--time=00:10:00",
                                 "--run_id", "mine")
    assert command == ["sbatch", "--ntasks=5", "--time=00:10:00", str(SLURM_SCRIPT),
                       "config/fedml_config.yaml", "--run_id", "mine"]
    # After "--" nothing is submit.py's: --dry-run there would go to the job, so it is refused.
    assert submit.main(["config/fedml_config.yaml", "--", "--dry-run"]) == 2
    assert "unrecognized arguments: --dry-run" in capsys.readouterr().err


def test_submit_warns_about_ignored_keys(capsys, monkeypatch, tmp_path):
    monkeypatch.chdir(REPO)
    config = tmp_path / "fedml_style.yaml"
    config.write_text("data_args:\n  partition_method: hetero\n"
                      "tracking_args:\n  wandb_project: fedml\n")
    code, command, err = _submit(capsys, str(config))
    assert code == 0, err
    assert ("flamby-mpi: warning: ignoring keys that have no effect here: "
            "data_args.partition_method, tracking_args.wandb_project") in err.splitlines()


def test_flamby_example_config_is_refused_until_fixed(capsys, monkeypatch, tmp_path):
    """A FedML-style config: its errors at the prompt; fixed as they say, it sizes the job."""
    import yaml

    monkeypatch.chdir(REPO)
    example = REPO / "tests" / "configs" / "fedml_style_example.yaml"
    code, _, err = _submit(capsys, str(example))
    assert code == 2
    for fragment in ("common_args.training_type", "model_args.model", "train_args.epochs"):
        assert fragment in err
    raw = yaml.safe_load(example.read_text())
    raw["common_args"]["training_type"] = "cross_silo"
    raw["model_args"]["model"] = "baseline"
    del raw["train_args"]["epochs"]
    fixed = tmp_path / "fixed.yaml"
    fixed.write_text(yaml.safe_dump(raw, sort_keys=False))
    code, _, err = _submit(capsys, str(fixed))
    # it has client_num_in_total: 1000
    assert code == 2 and "fed_heart_disease has 4 centres, so this must be 4" in err
    raw["train_args"]["client_num_in_total"] = 4
    fixed.write_text(yaml.safe_dump(raw, sort_keys=False))
    code, command, err = _submit(capsys, str(fixed))
    assert code == 0, err
    assert command[:2] == ["sbatch", "--ntasks=5"]
    assert sum("warning: ignoring keys" in line for line in err.splitlines()) == 1


@pytest.mark.parametrize("script, env", [
    (SLURM_SCRIPT, {"SLURM_JOB_ID": "1", "SLURM_NTASKS": "5"}),
    (PBS_SCRIPT, {"PBS_JOBID": "1.pbs"}),
])
def test_scripts_without_config_print_usage(script, env, tmp_path):
    done = subprocess.run(["bash", str(script)], capture_output=True, text=True, cwd=tmp_path,
                          env=job_env(tmp_path, env), timeout=60)
    assert done.returncode == 2 and "usage:" in done.stderr


def test_slurm_script_outside_slurm_says_so(tmp_path):
    env = job_env(tmp_path)
    env.pop("SLURM_JOB_ID", None)
    done = subprocess.run(["bash", str(SLURM_SCRIPT), str(DEFAULT_CONFIG)], capture_output=True,
                          text=True, cwd=tmp_path, env=env, timeout=60)
    assert done.returncode != 0 and "submit with sbatch" in done.stderr


@pytest.mark.mpi
def test_pbs_script_runs_under_a_pbs_like_environment(workdir):
    """No PBS here: the variables a PBS job gets, and MPICH's mpiexec reading the node file."""
    cwd, home, marker = workdir
    nodefile = cwd / "nodefile"
    nodefile.write_text(f"{socket.gethostname()}\n" * 5)  # PBS Pro: one line per mpiproc
    env = job_env(home, {
        "PBS_JOBID": f"{marker}.pbsserver", "PBS_NODEFILE": str(nodefile), "PBS_O_WORKDIR": str(cwd),
        "PBS_ENVIRONMENT": "PBS_BATCH", "FLAMBY_MPI_PYTHON": sys.executable,
        "FLAMBY_MPI_ARGS": f"{DEFAULT_CONFIG} --set train_args.comm_round=2 --set train_args.num_updates=5",
    })
    job = run_job(["bash", str(PBS_SCRIPT)], REPO, env, deadline_s=240, marker=marker)
    assert job.returncode == 0, job.output
    out = cwd / "runs" / f"pbs-{marker}"  # in PBS_O_WORKDIR, named after the job
    results = json.loads((out / "results.json").read_text())
    assert results["run_id"] == f"pbs-{marker}" and results["world_size"] == 5
    assert results["rounds_completed"] == 2
    assert re.search(r"PBS job \S+, 5 ranks", job.stdout)
    assert job.leftovers == []


# --- Requeue / rerun (issue 11): submit.py --requeue, and the scripts' restart and signal plumbing
# with stand-ins for mpiexec, scontrol and qstat (the real SLURM runs are in test_cluster_slurm.py).

def test_submit_requeue_asks_slurm_for_requeue_and_a_warning_signal(capsys, monkeypatch):
    monkeypatch.chdir(REPO)
    code, command, err = _submit(capsys, "--requeue", "config/fedml_config.yaml")
    assert code == 0, err
    # preemption_grace_s is 30 by default: 30 s to stop + 30 s margin.
    assert command[:4] == ["sbatch", "--ntasks=5", "--requeue", "--signal=B:TERM@60"]
    code, command, err = _submit(capsys, "config/fedml_config.yaml", "--requeue",
                                 "--set", "common_args.preemption_grace_s=90.5",
                                 "--option=--time=04:00:00")
    assert command[2:5] == ["--requeue", "--signal=B:TERM@121", "--time=04:00:00"]
    code, command, err = _submit(capsys, "--requeue", "--stop-before", "600", "config/fedml_config.yaml")
    assert command[2:4] == ["--requeue", "--signal=B:TERM@600"]
    code, command, err = _submit(capsys, "config/fedml_config.yaml")
    assert "--requeue" not in command and not any(c.startswith("--signal") for c in command)


def test_submit_requeue_makes_pbs_jobs_rerunnable(capsys, monkeypatch):
    monkeypatch.chdir(REPO)
    for scheduler in ("pbs", "torque"):
        code, command, err = _submit(capsys, "--scheduler", scheduler, "--requeue", "config/fedml_config.yaml")
        assert code == 0, err
        assert command[5:7] == ["-r", "y"] and command[-1] == str(PBS_SCRIPT)
    code, command, err = _submit(capsys, "--scheduler", "pbs", "config/fedml_config.yaml")
    assert "-r" not in command


@pytest.mark.parametrize("args, message", [
    (["--stop-before", "60"], "--stop-before is for --requeue on SLURM"),
    (["--requeue", "--scheduler", "pbs", "--stop-before", "60"], "--stop-before is for --requeue on SLURM"),
    (["--requeue", "--stop-before", "0"], "at least common_args.preemption_grace_s + 30 = 60"),
    (["--requeue", "--stop-before", "-5"], "at least common_args.preemption_grace_s + 30 = 60"),
    # Accepted before (--signal=B:TERM@5): the job had no time to stop with a checkpoint.
    (["--requeue", "--stop-before", "5"], "--stop-before 5: give the seconds before the time limit, "
                                          "at least common_args.preemption_grace_s + 30 = 60"),
    (["--requeue", "--stop-before", "59"], "at least common_args.preemption_grace_s + 30 = 60"),
    (["--requeue", "--stop-before", "70", "--set", "common_args.preemption_grace_s=40.5"],
     "--stop-before 70: give the seconds before the time limit, at least common_args.preemption_grace_s "
     "+ 30 = 71"),
    (["--requeue", "--stop-before", "soon"], "invalid int value"),
])
def test_submit_refuses_a_bad_stop_before(args, message, capsys, monkeypatch):
    monkeypatch.chdir(REPO)
    # submit.py's own options go anywhere: after CONFIG here, with the job's --set
    try:
        code = submit.main(["--dry-run", "--skip-check", "config/fedml_config.yaml", *args])
    except SystemExit as exited:  # argparse's own refusals
        code = exited.code
    captured = capsys.readouterr()
    assert code == 2 and message in captured.err and captured.out == "", captured.err


def test_submit_takes_a_stop_before_of_grace_plus_the_margin(capsys, monkeypatch):
    monkeypatch.chdir(REPO)
    code, command, err = _submit(capsys, "--requeue", "--stop-before", "40", "config/fedml_config.yaml",
                                 "--set", "common_args.preemption_grace_s=10")
    assert code == 0, err
    assert command[2:4] == ["--requeue", "--signal=B:TERM@40"]


def _stand_ins(tmp_path, scontrol_job="JobState=RUNNING Requeue=1", run_count=None):
    """A bin directory: mpiexec that logs its arguments and, on SIGTERM, exits 143 like a job
    stopped at a round boundary; scontrol and qstat that answer like the schedulers and log."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    log = tmp_path / "calls.log"
    (bin_dir / "mpiexec").write_text(
        f"#!/bin/bash\necho \"mpiexec $*\" >> {log}\n"
        f"trap 'echo mpiexec got TERM >> {log}; exit 143' TERM\n"
        f"touch {tmp_path}/launched\nfor i in $(seq 600); do sleep 0.1; done\n")
    (bin_dir / "scontrol").write_text(
        f"#!/bin/bash\necho \"scontrol $*\" >> {log}\n"
        f"[ \"$1\" = show ] && echo 'JobId=7 {scontrol_job} Restarts=0'\nexit 0\n")
    qstat = f"echo '    run_count = {run_count}'" if run_count is not None else "exit 1"
    (bin_dir / "qstat").write_text(f"#!/bin/bash\n{qstat}\n")
    for tool in bin_dir.iterdir():
        tool.chmod(0o755)
    return bin_dir, log


def _script_env(tmp_path, bin_dir, extra):
    env = job_env(tmp_path, {"FLAMBY_MPI_PYTHON": sys.executable, "FLAMBY_MPI_MPIEXEC": str(bin_dir / "mpiexec"),
                             **extra})
    env["PATH"] = f"{bin_dir}:{env['PATH']}"
    return env


def _run_then_term(script, tmp_path, env, deadline_s=60):
    """Starts the job script, sends SIGTERM to it alone once the launcher runs; (rc, stdout)."""
    proc = subprocess.Popen(["bash", str(script), str(DEFAULT_CONFIG)], cwd=tmp_path, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            start_new_session=True)
    try:
        deadline = time.monotonic() + deadline_s
        while not (tmp_path / "launched").exists():
            assert proc.poll() is None and time.monotonic() < deadline, proc.communicate()[0]
            time.sleep(0.05)
        proc.send_signal(signal.SIGTERM)
        out, _ = proc.communicate(timeout=deadline_s)
        return proc.returncode, out
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()


@pytest.mark.parametrize("script, env", [
    (SLURM_SCRIPT, {"SLURM_JOB_ID": "7", "SLURM_NTASKS": "5"}),
    (PBS_SCRIPT, {"PBS_JOBID": "7.pbs", "FLAMBY_MPI_NP": "5"}),
])
def test_a_signal_to_the_batch_shell_reaches_the_launcher(script, env, tmp_path):
    bin_dir, log = _stand_ins(tmp_path, scontrol_job="JobState=COMPLETING Requeue=1")
    code, out = _run_then_term(script, tmp_path, _script_env(tmp_path, bin_dir, env))
    calls = log.read_text()
    assert code == 143, out  # the launcher's own exit code
    assert "mpiexec got TERM" in calls
    assert "scontrol requeue" not in calls  # a job SLURM is already ending is not requeued


@pytest.mark.parametrize("requeueable", [True, False])
def test_slurm_job_signalled_alone_requeues_itself_if_requeueable(requeueable, tmp_path):
    """SLURM's --signal=B:TERM@<s> warning before the time limit: the job is still RUNNING."""
    bin_dir, log = _stand_ins(tmp_path, scontrol_job=f"JobState=RUNNING Requeue={int(requeueable)}")
    code, out = _run_then_term(SLURM_SCRIPT, tmp_path, _script_env(
        tmp_path, bin_dir, {"SLURM_JOB_ID": "7", "SLURM_NTASKS": "5"}))
    assert code == 143, out
    assert ("requeueing SLURM job 7" in out) == requeueable, out
    assert ("scontrol requeue 7" in log.read_text()) == requeueable


def _restarted(script, tmp_path, env, run_dir, state):
    """A restarted job whose run directory holds `state` (nothing, logs of a run killed before its
    first checkpoint, a checkpoint, results)."""
    if state == "interrupted":
        (run_dir / "logs").mkdir(parents=True)
        (run_dir / "logs" / "rank0.log").write_text("killed in round 1\n")
        (run_dir / ".flamby-mpi.lock").write_text("")  # every run takes it, and it stays
    if state in ("checkpoint", "finished"):
        (run_dir / "checkpoints" / "round_3").mkdir(parents=True)
        (run_dir / "checkpoints" / "round_3" / "manifest.json").write_text("{}")
    if state == "finished":
        (run_dir / "results.json").write_text("{}")
    bin_dir, log = _stand_ins(tmp_path, run_count=env.pop("run_count", None))
    env = _script_env(tmp_path, bin_dir, env)
    (bin_dir / "mpiexec").write_text(f"#!/bin/bash\necho \"mpiexec $*\" >> {log}\n")  # ends at once
    done = subprocess.run(["bash", str(script), str(DEFAULT_CONFIG)], cwd=tmp_path, env=env,
                          capture_output=True, text=True, timeout=60)
    return done, log.read_text() if log.exists() else ""


def _with_args(script, tmp_path, extra):
    """A job script that runs `script` with the submitted arguments and then `extra` (a user's own,
    given last)."""
    wrapper = tmp_path / "job.sh"
    wrapper.write_text(f"#!/bin/bash\nexec bash {script} \"$@\" {shlex.join(extra)}\n")
    return wrapper


# A restarted job of each scheduler, and the run directory it looks in by default.
RESTARTED = [
    (SLURM_SCRIPT, {"SLURM_JOB_ID": "7", "SLURM_NTASKS": "5", "SLURM_RESTART_COUNT": "1"}, "runs/slurm-7"),
    (PBS_SCRIPT, {"PBS_JOBID": "7.pbs", "FLAMBY_MPI_NP": "5", "run_count": "2"}, "runs/pbs-7"),
]


@pytest.mark.parametrize("script, env, run_dir", [
    (SLURM_SCRIPT, {"SLURM_JOB_ID": "7", "SLURM_NTASKS": "5", "SLURM_RESTART_COUNT": "1"}, "runs/slurm-7"),
    (PBS_SCRIPT, {"PBS_JOBID": "7.pbs", "FLAMBY_MPI_NP": "5", "run_count": "2"}, "runs/pbs-7"),
    # A user's own output directory is where the restarted job looks.
    (SLURM_SCRIPT, {"SLURM_JOB_ID": "7", "SLURM_NTASKS": "5", "SLURM_RESTART_COUNT": "2",
                    "FLAMBY_MPI_ARGS_EXTRA": "mine"}, "mine"),
])
@pytest.mark.parametrize("state", ["empty", "interrupted", "checkpoint", "finished"])
def test_a_restarted_job_resumes_starts_afresh_or_does_nothing(script, env, run_dir, state, tmp_path):
    env = dict(env)  # parametrize shares the dict between cases
    mine = env.pop("FLAMBY_MPI_ARGS_EXTRA", None)
    (tmp_path / run_dir).mkdir(parents=True)
    if mine:  # the user's --set goes after the script's: theirs wins
        script = _with_args(script, tmp_path, ["--set", f"common_args.output_dir={mine}"])
    done, calls = _restarted(script, tmp_path, env, tmp_path / run_dir, state)
    assert done.returncode == 0, done.stdout + done.stderr
    if state == "finished":
        assert "had already finished" in done.stdout and "nothing to redo" in done.stdout
        assert "mpiexec" not in calls
    elif state == "checkpoint":
        assert "resuming from the newest complete checkpoint" in done.stdout
        assert calls.rstrip().endswith("--resume"), calls
    elif state == "interrupted":  # never refused as "holds an interrupted run", never skipped
        assert "before any complete checkpoint" in done.stdout and "starting afresh over" in done.stdout
        assert calls.rstrip().endswith("--overwrite") and "--resume" not in calls, calls
    else:
        assert "before any complete checkpoint" in done.stdout and "starting afresh" in done.stdout
        assert "mpiexec" in calls and "--resume" not in calls and "--overwrite" not in calls


def test_a_first_start_never_resumes(tmp_path):
    (tmp_path / "runs" / "slurm-7" / "checkpoints" / "round_3").mkdir(parents=True)
    (tmp_path / "runs" / "slurm-7" / "checkpoints" / "round_3" / "manifest.json").write_text("{}")
    done, calls = _restarted(SLURM_SCRIPT, tmp_path, {"SLURM_JOB_ID": "7", "SLURM_NTASKS": "5"},
                             tmp_path / "runs" / "slurm-7", "empty")
    assert done.returncode == 0 and "mpiexec" in calls and "--resume" not in calls, done.stdout


@pytest.mark.parametrize("script, env, run_dir", RESTARTED)
def test_a_users_overwrite_was_for_the_first_start_only(script, env, run_dir, tmp_path):
    """Submitted with --overwrite (over an older run), restarted after a checkpoint: it resumes its
    own run (--resume and --overwrite together would be refused), never deletes it."""
    (tmp_path / run_dir).mkdir(parents=True)
    done, calls = _restarted(_with_args(script, tmp_path, ["--overwrite"]), tmp_path, dict(env), tmp_path / run_dir,
                             "checkpoint")
    assert done.returncode == 0, done.stdout + done.stderr
    assert calls.rstrip().endswith("--resume") and "--overwrite" not in calls, calls


@pytest.mark.parametrize("script, env, run_dir", RESTARTED)
@pytest.mark.parametrize("mistake, reason", [
    (["--bogus"], "unrecognized arguments: --bogus"),
    (["--set", "comm_round=3"], "expected section.key=value"),
])
def test_a_restarted_job_that_cannot_decide_says_why_and_stops(script, env, run_dir, mistake, reason, tmp_path):
    """flamby_mpi.restart's reason used to go to /dev/null and the job started afresh beside the
    checkpoint it should have resumed: now the reason is in the job's log, and it exits 2."""
    (tmp_path / run_dir).mkdir(parents=True)
    done, calls = _restarted(_with_args(script, tmp_path, mistake), tmp_path, dict(env), tmp_path / run_dir,
                             "checkpoint")
    assert done.returncode == 2, done.stdout + done.stderr
    assert reason in done.stderr and "cannot be decided (above): stopping" in done.stderr, done.stderr
    assert "Traceback" not in done.stderr and "usage:" not in done.stderr
    assert "mpiexec" not in calls and "afresh" not in done.stdout
