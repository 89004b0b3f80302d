"""`data_args.num_workers` > 0 inside real MPI ranks (issue 20, item 5): under MPICH's mpiexec and
Open MPI's mpirun the DataLoader workers never import mpi4py and are not children of a rank, and the
model is bitwise the one 0 workers give; a SIGKILLed worker ends the whole job with one message
naming its centre. The loader's own behaviour, in one process: tests/test_unit_loader_workers.py."""
import hashlib
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from support.facility import end_processes, processes_with_variable
from support.mpi import LAUNCHER, REPO, kill_group, mpiexec, run_job, run_mpi
from support.mpi import test_env as job_env  # aliased: pytest would collect test_env
from support.openmpi import openmpi_env, openmpi_prefix
from support.optional import import_or_skip, shared_or_skip
from support.paths import SHARED_DATA

pytestmark = [pytest.mark.mpi, pytest.mark.timeout(600)]

PROBE = ["--cf", str(REPO / "config" / "fedml_config.yaml"), "--set", "data_args.dataset=support.worker_probe_dataset",
         "--set", "train_args.comm_round=2", "--set", "train_args.num_updates=5"]
HEART = SHARED_DATA / "fed_heart_disease"
# One of Fed-Heart-Disease's centres, 2 rounds of 10 updates: -np 2.
HEART_ARGS = ["--cf", str(REPO / "config" / "fed_heart_disease.yaml"), "--set", f"data_args.data_path={HEART}",
              "--set", "data_args.centers=[1]", "--set", "train_args.comm_round=2",
              "--set", "train_args.num_updates=10"]


def _sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _inprocess(args, cwd, home, out, env_extra=None):
    job = run_job([sys.executable, str(LAUNCHER), *args, "--set", "comm_args.backend=inprocess",
                   "--set", f"common_args.output_dir={out}"], cwd, job_env(home, env_extra), 240)
    assert job.returncode == 0, job.output
    return _sha(out / "global_model.pt")


def _open_mpi(np_, args, cwd, home, marker, env_extra):
    prefix = openmpi_prefix()  # a skip with the way to get it, or under CI a failure
    env = openmpi_env(job_env(home, env_extra), prefix)
    # --oversubscribe: Open MPI gives one slot per core, and this machine may have fewer cores than ranks.
    return run_job([str(prefix / "bin" / "mpirun"), "--oversubscribe", "-np", str(np_), sys.executable,
                    str(LAUNCHER), *args], cwd, env, deadline_s=240, marker=marker)


def _gone_within(variable: str, value: str, seconds: float):
    """Processes (ranks, fork servers, workers) with variable=value still alive after `seconds`."""
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        alive = processes_with_variable(variable, value)
        if not alive:
            return []
        time.sleep(0.25)
    alive = processes_with_variable(variable, value)
    end_processes(alive)
    return alive


@pytest.fixture(scope="module")
def zero_workers_model(tmp_path_factory):
    """The probe run's global_model.pt with 0 workers, in process: one reference for both launchers."""
    root = tmp_path_factory.mktemp("zero-workers")
    (root / "home").mkdir()
    return _inprocess(PROBE, root, root / "home", root / "zero")


@pytest.mark.parametrize("mpi", ["mpich", "openmpi"])
def test_workers_never_touch_mpi_and_the_model_is_the_zero_worker_one(mpi, workdir, tmp_path, zero_workers_model):
    """num_workers=2 under a real launcher: every worker (training and test loaders of both clients)
    reports mpi4py absent and a fork server as its parent; the model equals 0 workers' in process."""
    cwd, home, marker = workdir
    probes = tmp_path / "probes"
    probes.mkdir()
    env = {"WORKER_PROBE_DIR": str(probes), "FLAMBY_MPI_TEST_JOB": marker}
    out = cwd / "out"
    args = [*PROBE, "--run_id", marker, "--set", "data_args.num_workers=2", "--set", f"common_args.output_dir={out}"]
    if mpi == "mpich":
        job = run_mpi(3, args, cwd, home, deadline_s=240, env_extra=env, marker=marker)
    else:
        job = _open_mpi(3, args, cwd, home, marker, env)
    assert job.returncode == 0, job.output
    assert "fork()" not in job.output  # Open MPI's warning about a fork after MPI_Init
    assert job.leftovers == []
    assert _gone_within("FLAMBY_MPI_TEST_JOB", marker, 15) == []
    records = [json.loads(p.read_text()) for p in probes.glob("*.json")]
    assert {(r["center"], r["train"]) for r in records} == {(0, True), (1, True), (0, False), (1, False)}
    for record in records:
        assert not record["mpi4py_imported"] and not record["mpi_initialized"], record
        assert not record["fedml_imported"], record
        assert "multiprocessing.forkserver" in record["parent_cmdline"], record
        assert str(LAUNCHER) not in record["parent_cmdline"], record
    assert _sha(out / "global_model.pt") == zero_workers_model


def test_fed_heart_disease_two_workers_under_mpiexec_equals_zero_workers(workdir):
    import_or_skip("flamby.datasets.fed_heart_disease")
    shared_or_skip(HEART)
    cwd, home, marker = workdir
    out = cwd / "out"
    job = run_mpi(2, [*HEART_ARGS, "--run_id", marker, "--set", "data_args.num_workers=2",
                      "--set", f"common_args.output_dir={out}"], cwd, home, deadline_s=240, marker=marker)
    assert job.returncode == 0, job.output
    assert job.leftovers == []
    assert _sha(out / "global_model.pt") == _inprocess(HEART_ARGS, cwd, home, cwd / "zero")


def test_a_sigkilled_worker_ends_every_rank_with_one_message_naming_its_centre(workdir, tmp_path):
    """Centre 1's training worker is SIGKILLed while the job trains; every rank exits nonzero within
    the deadline, the message names centre 1 and its data-loading worker once, without a traceback,
    and no rank, fork server or worker is left. An epoch lasts many rounds (large centres, 5 updates
    a round), so the worker killed is the one the rank is drawing from."""
    cwd, home, marker = workdir
    probes = tmp_path / "probes"
    probes.mkdir()
    env = job_env(home, {"WORKER_PROBE_DIR": str(probes), "WORKER_PROBE_SAMPLES": "20000",
                         "FLAMBY_MPI_TEST_JOB": marker})
    out = cwd / "out"
    cmd = [mpiexec(), "-n", "3", sys.executable, str(LAUNCHER), "--cf", str(REPO / "config" / "fedml_config.yaml"),
           "--set", "data_args.dataset=support.worker_probe_dataset", "--set", "data_args.num_workers=2",
           "--set", "train_args.comm_round=150", "--set", "train_args.num_updates=5",
           "--set", "validation_args.frequency_of_the_test=1000",
           "--run_id", marker, "--set", f"common_args.output_dir={out}"]
    job = subprocess.Popen(cmd, cwd=cwd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                           start_new_session=True)
    try:
        victim, end = None, time.monotonic() + 180
        while victim is None:
            assert job.poll() is None, f"the job ended before a worker could be killed: {job.communicate()}"
            assert time.monotonic() < end, "no training worker of centre 1 reported within 180 s"
            for probe in probes.glob("*.json"):
                record = json.loads(probe.read_text())
                if record["center"] == 1 and record["train"]:
                    victim = record["pid"]
            time.sleep(0.05)
        killed_at = time.monotonic()
        os.kill(victim, signal.SIGKILL)
        stdout, stderr = job.communicate(timeout=90)
        took = time.monotonic() - killed_at
    finally:
        kill_group(job)
    assert job.returncode != 0, stdout + stderr
    assert took < 60, f"the job took {took:.0f} s to end after the kill"
    said = "centre 1's training data: its data-loading worker (DataLoader worker process, " \
           f"pid {victim}) died, killed by signal SIGKILL"
    assert stderr.count(said) == 1, stderr
    assert "rank 2 (client" in stderr and "HINT:" in stderr and "data_args.num_workers" in stderr
    assert "Traceback" not in stderr, stderr
    assert not (out / "results.json").exists()
    assert _gone_within("FLAMBY_MPI_TEST_JOB", marker, 15) == []
