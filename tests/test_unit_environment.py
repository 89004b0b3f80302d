"""Unit tests of flamby_mpi.launch.environment: launchers read from a patched environment (no MPI)."""
import os

import pytest

import flamby_mpi.launch
from flamby_mpi.launch.environment import (
    MPICH,
    OPEN_MPI,
    HydraEnvironment,
    OpenMPIEnvironment,
    PBSEnvironment,
    PMIxEnvironment,
    SlurmEnvironment,
    detect_launcher,
    foreign_launcher_warning,
    rank_from_environment,
    started_by_mpi_launcher,
    warn_if_foreign_launcher,
)
from flamby_mpi.launch.separate import REEXEC_MARKER, should_reexec

# What each launcher really set, as seen on this machine (MPICH 5.0 Hydra, Open MPI 5.0,
# SLURM 22.05 srun with --mpi=pmi2 / --mpi=pmix / none): rank 3 of 5, local rank 1 (the local
# rank variables are not read: world.py counts local ranks from the host names).
HYDRA = {"PMI_RANK": "3", "PMI_SIZE": "5", "PMI_FD": "9", "MPI_LOCALRANKID": "1",
         "MPI_LOCALNRANKS": "2", "PMI_HOSTNAME": "node2"}
OPEN_MPI_RUN = {"OMPI_COMM_WORLD_RANK": "3", "OMPI_COMM_WORLD_SIZE": "5",
                "OMPI_COMM_WORLD_LOCAL_RANK": "1", "OMPI_COMM_WORLD_LOCAL_SIZE": "2", "PMIX_RANK": "3"}
BATCH_STEP = {"SLURM_JOB_ID": "7", "SLURM_PROCID": "0", "SLURM_LOCALID": "0", "SLURM_NTASKS": "5"}
SRUN = dict(BATCH_STEP, SLURM_PROCID="3", SLURM_LOCALID="1", SLURM_STEP_ID="0", SLURM_STEPID="0",
            SLURM_STEP_NUM_TASKS="5", SLURM_STEP_NUM_NODES="2")
SRUN_PMI2 = dict(SRUN, PMI_RANK="3", PMI_SIZE="5", PMI_FD="13", PMI_JOBID="7.0")
SRUN_PMIX = dict(SRUN, PMIX_RANK="3")
# mpiexec inside an sbatch script: Hydra's proxy was started by srun, the rank inherits its step.
HYDRA_IN_SLURM = dict(SRUN, SLURM_PROCID="0", SLURM_LOCALID="0", SLURM_STEP_NUM_TASKS="1", **HYDRA)
# A PMIx launcher that sets nothing else (PRRTE's prterun for a non-Open MPI program).
PRTERUN = {"PMIX_RANK": "3", "PMIX_NAMESPACE": "prterun-node1-1234@1"}


@pytest.fixture
def pbs_env(tmp_path):
    nodefile = tmp_path / "nodefile"
    nodefile.write_text("node1\nnode1\nnode2\nnode2\nnode2\n")
    return {"PBS_JOBID": "12.server", "PBS_NODEFILE": str(nodefile), "PBS_VNODENUM": "3",
            "PBS_ENVIRONMENT": "PBS_BATCH"}


@pytest.mark.parametrize("environ, kind", [
    (HYDRA, HydraEnvironment), (OPEN_MPI_RUN, OpenMPIEnvironment), (SRUN, SlurmEnvironment),
    (SRUN_PMI2, SlurmEnvironment), (SRUN_PMIX, SlurmEnvironment), (HYDRA_IN_SLURM, HydraEnvironment),
])
def test_every_launcher_gives_rank_and_size(environ, kind):
    launcher = detect_launcher(environ)
    assert type(launcher) is kind
    assert (launcher.rank, launcher.world_size) == (3, 5)


def test_pbs_task_reads_the_node_file(pbs_env):
    launcher = detect_launcher(pbs_env)
    assert type(launcher) is PBSEnvironment
    assert (launcher.rank, launcher.world_size) == (3, 5)
    assert detect_launcher(dict(pbs_env, PBS_NP="8")).world_size == 8  # Torque says it directly


def test_mpiexec_inside_a_pbs_job_is_mpiexec(pbs_env):
    assert type(detect_launcher(dict(pbs_env, **HYDRA))) is HydraEnvironment


@pytest.mark.parametrize("environ", [{}, BATCH_STEP, {"PBS_JOBID": "1.s"}, {"PMI_RANK": "x"}])
def test_no_launcher(environ):
    # The batch script itself (no step id) and a plain `python` are not launchers.
    assert detect_launcher(environ) is None


@pytest.mark.parametrize("environ", [HYDRA, OPEN_MPI_RUN, SRUN, SRUN_PMI2, SRUN_PMIX, HYDRA_IN_SLURM,
                                     PRTERUN])
def test_rank_is_read_the_same_way_as_the_error_reporter_reads_it(environ, monkeypatch):
    monkeypatch.setattr(os, "environ", dict(environ))
    assert detect_launcher().rank == rank_from_environment() == 3
    assert started_by_mpi_launcher()
    # The command line (flamby_mpi.cli) asks the package, which has this one reader.
    assert flamby_mpi.launch.rank_from_environment is rank_from_environment


def test_a_bare_pmix_launcher_is_a_launcher():
    launcher = detect_launcher(PRTERUN)
    assert type(launcher) is PMIxEnvironment
    assert (launcher.rank, launcher.world_size, launcher.implementation) == (3, None, None)
    assert foreign_launcher_warning(PRTERUN, MPICH) is None  # which MPI it serves cannot be told


def test_garbage_in_one_variable_does_not_hide_another_launcher():
    assert rank_from_environment(dict(OPEN_MPI_RUN, PMI_RANK="not-a-rank")) == 3
    assert rank_from_environment({"PMI_RANK": " 0 "}) == 0


# Where world.py's own list of rank variables (PMI_RANK, OMPI_COMM_WORLD_RANK, PMIX_RANK,
# SLURM_PROCID: the first one set won) disagreed with the launcher classes. Each row: the rank
# announced, and whether a process that names its --rank re-executes itself under
# `mpiexec -n 1` (it must when no MPI launcher started it), then what world.py said for both.
DISAGREEMENTS = {
    # A command of the sbatch script itself (the batch step): SLURM_PROCID=0 is set, but srun
    # started nothing. world.py took it for rank 0 of an MPI launcher and did not re-execute, so
    # `python launch_client.py --rank K ...` from a batch script ran as a plain MPI singleton,
    # which MPICH cannot connect to the other ranks.
    "sbatch script": (BATCH_STEP, None, True, 0, False),
    # A task PBS started itself (pbsdsh): world.py did not know PBS_VNODENUM. It still
    # re-executes: PBS wires no MPI.
    "pbsdsh task": ("pbs", 3, True, None, True),
}


@pytest.mark.parametrize("case", DISAGREEMENTS)
def test_where_the_two_readers_disagreed(case, pbs_env, monkeypatch):
    environ, rank, reexec, old_rank, old_reexec = DISAGREEMENTS[case]
    environ = pbs_env if environ == "pbs" else environ
    assert (rank, reexec) != (old_rank, old_reexec)
    assert rank_from_environment(environ) == rank
    assert started_by_mpi_launcher(environ) is not reexec
    monkeypatch.setattr(os, "environ", dict(environ))
    assert should_reexec(2) is reexec


@pytest.mark.parametrize("environ", [HYDRA, OPEN_MPI_RUN, SRUN, SRUN_PMI2, SRUN_PMIX, HYDRA_IN_SLURM,
                                     PRTERUN])
def test_a_process_an_mpi_launcher_started_never_reexecutes(environ, monkeypatch):
    monkeypatch.setattr(os, "environ", dict(environ))
    assert not should_reexec(2)


def test_a_process_started_by_hand_reexecutes_once(monkeypatch):
    monkeypatch.setattr(os, "environ", {})
    assert should_reexec(2) and should_reexec(0)
    assert not should_reexec(None)  # without --rank: a world of one, nothing to join
    monkeypatch.setattr(os, "environ", {REEXEC_MARKER: "1"})
    assert not should_reexec(2)


@pytest.mark.parametrize("environ, loaded", [(OPEN_MPI_RUN, MPICH), (SRUN_PMI2, OPEN_MPI),
                                             (HYDRA, OPEN_MPI)])
def test_foreign_launcher_warning(environ, loaded):
    message = foreign_launcher_warning(environ, loaded)
    other = OPEN_MPI if loaded == MPICH else MPICH
    assert f"environment belongs to {other} but {loaded} is loaded: every process would be rank 0" \
        in message
    assert "HINT:" in message


def test_the_classic_message_word_for_word():
    assert ("environment belongs to Open MPI but MPICH is loaded: every process would be rank 0"
            in foreign_launcher_warning(OPEN_MPI_RUN, MPICH))


@pytest.mark.parametrize("environ, loaded", [
    (HYDRA, MPICH), (OPEN_MPI_RUN, OPEN_MPI), (SRUN_PMI2, MPICH), (SRUN_PMIX, OPEN_MPI),
    (SRUN_PMIX, MPICH),  # MPICH may be built with PMIx: no verdict
    (HYDRA, None),  # library unknown: no verdict
    ({}, MPICH), (BATCH_STEP, MPICH),
    ({"PMI_RANK": "0", "PMI_SIZE": "1", "MPI_LOCALRANKID": "0"}, OPEN_MPI),  # one process: no harm
])
def test_no_warning_when_the_launcher_fits(environ, loaded):
    assert foreign_launcher_warning(environ, loaded) is None


def test_srun_without_mpi_plugin_is_named():
    message = foreign_launcher_warning(SRUN, MPICH)
    assert "srun started 5 tasks without an MPI plugin" in message
    assert "every process would be rank 0" in message and "--mpi=pmi2" in message


def test_warning_is_printed_once_per_job(capsys, monkeypatch):
    import flamby_mpi.launch.environment as environment

    monkeypatch.setattr(environment, "loaded_mpi_implementation", lambda: MPICH)
    assert warn_if_foreign_launcher(OPEN_MPI_RUN) is not None  # rank 3: returns it, prints nothing
    assert capsys.readouterr().err == ""
    warn_if_foreign_launcher(dict(OPEN_MPI_RUN, OMPI_COMM_WORLD_RANK="0", PMIX_RANK="0"))
    err = capsys.readouterr().err
    assert err.count("flamby-mpi: warning:") == 1
    assert "but MPICH is loaded" in err


def test_loaded_implementation_is_found_without_initialising_mpi():
    import subprocess
    import sys

    code = ("import sys\nfrom flamby_mpi.launch.environment import loaded_mpi_implementation as f\n"
            "print(f()); print('mpi4py.MPI' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    assert out.stdout.split() == ["MPICH", "False"]
