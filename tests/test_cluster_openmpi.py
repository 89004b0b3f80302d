"""The mpirun path with Open MPI instead of MPICH, and the warning when launcher and library disagree.

Open MPI's runtime comes from tests/support/openmpi.py (its own prefix; the
project's environment stays MPICH's).
"""
import json
import os
import sys

import pytest

from support.mpi import DEFAULT_CONFIG, LAUNCHER, mpiexec, run_job
from support.mpi import test_env as job_env  # aliased: pytest would collect test_env
from support.openmpi import openmpi_env, openmpi_prefix

pytestmark = pytest.mark.mpi

SMALL = ["--set", "train_args.comm_round=2", "--set", "train_args.num_updates=5"]


def _env(home, prefix, use_its_library=True):
    return openmpi_env(job_env(home), prefix, use_its_library)


@pytest.fixture(scope="module")
def prefix():
    return openmpi_prefix()


def test_mpirun_with_open_mpi_finishes(prefix, workdir):
    cwd, home, marker = workdir
    env = _env(home, prefix)
    library = run_job([str(prefix / "bin" / "mpirun"), "-np", "1", sys.executable, "-c",
                       "from mpi4py import MPI; print(MPI.Get_library_version())"], cwd, env, 60)
    assert library.returncode == 0 and "Open MPI" in library.stdout, library.output

    out = cwd / "out"
    # --oversubscribe: Open MPI gives one slot per core, and this machine has fewer cores than ranks.
    job = run_job([str(prefix / "bin" / "mpirun"), "--oversubscribe", "-np", "5", sys.executable,
                   str(LAUNCHER), "--cf", str(DEFAULT_CONFIG), "--run_id", marker,
                   "--set", f"common_args.output_dir={out}", *SMALL],
                  cwd, env, deadline_s=240, marker=marker)
    assert job.returncode == 0, job.output
    results = json.loads((out / "results.json").read_text())
    assert results["world_size"] == 5 and results["rounds_completed"] == 2
    assert set(results["metrics"]) >= {"client_test_0", "client_test_3", "average", "pooled"}
    assert "final metrics" in job.stdout
    # Open MPI gives its ranks a terminal for stdout; mpirun's own output here is a pipe, as a
    # SLURM/PBS log is a file: plain progress lines, no redraws (docs/running.md).
    assert "\x1b[K" not in job.stdout and "\r" not in job.stdout, repr(job.stdout[-500:])
    assert "round 2/2 done" in job.stdout
    assert job.leftovers == []


def test_open_mpi_launcher_with_mpich_loaded_is_named(prefix, workdir):
    """Open MPI's mpirun, mpi4py on pip's MPICH: MPICH would abort in MPI_Init; we say why first."""
    cwd, home, marker = workdir
    env = _env(home, prefix, use_its_library=False)
    job = run_job([str(prefix / "bin" / "mpirun"), "--oversubscribe", "-np", "5", sys.executable,
                   str(LAUNCHER), "--cf", str(DEFAULT_CONFIG), "--run_id", marker],
                  cwd, env, deadline_s=120, marker=marker)
    assert job.returncode != 0
    message = "environment belongs to Open MPI but MPICH is loaded: every process would be rank 0"
    assert job.stderr.count(message) == 1, job.output  # once per job, from rank 0
    assert "MPI4PY_LIBMPI" in job.stderr
    assert job.leftovers == []


def test_mpich_launcher_with_open_mpi_loaded_is_named(prefix, workdir):
    cwd, home, marker = workdir
    env = _env(home, prefix)
    env["PATH"] = os.pathsep.join(p for p in env["PATH"].split(os.pathsep) if p != str(prefix / "bin"))
    job = run_job([mpiexec(), "-n", "5", sys.executable, str(LAUNCHER), "--cf", str(DEFAULT_CONFIG),
                   "--run_id", marker], cwd, env, deadline_s=120, marker=marker)
    assert job.returncode == 2, job.output
    assert job.stderr.count("environment belongs to MPICH but Open MPI is loaded") == 1, job.output
    # Every process became a rank 0 singleton; the size error is still said once.
    assert job.stderr.count("only 1 MPI process is running") == 1
    assert job.leftovers == []
