"""Which launcher started this process, read from its environment without initialising MPI.

One small class per launcher kind, each answering `detect()`, `rank` and
`world_size` from the variables that launcher sets. They are tried in a fixed
order: the MPI launchers first, because their variables stay exact inside a
SLURM or PBS allocation (where the batch step's own `SLURM_PROCID=0` is also
set, and MPICH's mpiexec starts its proxies with srun), then srun itself, then
a bare PMIx launcher, then PBS. There is no other list of launcher variables:
`rank_from_environment` and `started_by_mpi_launcher` are how the rest of the
program asks. The local rank is not read here: it is counted from the MPI
world once formed (world.py), whatever started it.

The launcher also tells which MPI implementation it wires up. When that is not
the library mpi4py loads, MPI_Init makes every process a singleton of rank 0
(or MPICH aborts outright under Open MPI's PMIx): `foreign_launcher_warning`
says so before MPI is initialised, once per job.
"""
from __future__ import annotations

import os
import sys
from typing import List, Mapping, Optional, Type

MPICH = "MPICH"
OPEN_MPI = "Open MPI"


def _int(environ: Mapping[str, str], name: str) -> Optional[int]:
    value = environ.get(name)
    if value is None or not value.strip().isdigit():
        return None
    return int(value)


class LauncherEnvironment:
    """What one launcher kind announces to each process it starts."""

    name = "a launcher"
    # The MPI implementation whose processes this launcher wires together
    # (None: it starts processes without any MPI wiring, or it cannot be told).
    implementation: Optional[str] = None
    # Whether the processes it starts are MPI processes (their MPI_Init joins the launcher's world,
    # or at least gets the wiring that lets them connect to others): PBS's own tasks are not.
    starts_mpi_processes = True
    rank_variable = ""
    size_variable = ""

    def __init__(self, environ: Mapping[str, str]):
        self.environ = environ

    @classmethod
    def detect(cls, environ: Mapping[str, str]) -> bool:
        return _int(environ, cls.rank_variable) is not None

    @property
    def rank(self) -> Optional[int]:
        return _int(self.environ, self.rank_variable)

    @property
    def world_size(self) -> Optional[int]:
        return _int(self.environ, self.size_variable)

    @property
    def evidence(self) -> str:
        """The variables that identified the launcher, for messages."""
        shown = [f"{v}={self.environ[v]}" for v in (self.rank_variable, self.size_variable)
                 if v in self.environ]
        return ", ".join(shown)

    def conflicts_with(self, loaded: Optional[str]) -> bool:
        """True when the loaded MPI library cannot join the processes this launcher started."""
        return None not in (self.implementation, loaded) and self.implementation != loaded


class HydraEnvironment(LauncherEnvironment):
    """MPICH's mpiexec/mpirun (Hydra), also Intel MPI's and MVAPICH's: a PMI-1 launcher."""

    name = "MPICH's mpiexec (Hydra)"
    implementation = MPICH
    rank_variable, size_variable = "PMI_RANK", "PMI_SIZE"

    @classmethod
    def detect(cls, environ):
        # Under `srun --mpi=pmi2` PMI_RANK is set too, but not Hydra's MPI_LOCALRANKID:
        # that case belongs to the srun class (same rank, and it knows the MPI plugin).
        return super().detect(environ) and (
            "MPI_LOCALRANKID" in environ or not SlurmEnvironment.detect(environ))


class OpenMPIEnvironment(LauncherEnvironment):
    """Open MPI's mpirun/mpiexec/prterun."""

    name = "Open MPI's mpirun"
    implementation = OPEN_MPI
    rank_variable = "OMPI_COMM_WORLD_RANK"
    size_variable = "OMPI_COMM_WORLD_SIZE"


class SlurmEnvironment(LauncherEnvironment):
    """SLURM's srun (a job step: not the batch script itself, which has no step id).

    The batch script runs as the job's batch step with `SLURM_PROCID=0` set, but
    srun did not start it: there SLURM_PROCID is no rank, and a process started
    from the script is as plain as one started from a terminal.

    srun wires MPI only through an MPI plugin: `--mpi=pmi2` (MPICH and its
    family) or `--mpi=pmix` (Open MPI; MPICH only when built with PMIx).
    """

    name = "SLURM's srun"
    rank_variable, size_variable = "SLURM_PROCID", "SLURM_STEP_NUM_TASKS"

    @classmethod
    def detect(cls, environ):
        return ("SLURM_STEP_ID" in environ or "SLURM_STEPID" in environ) and super().detect(environ)

    @property
    def world_size(self):
        size = _int(self.environ, "SLURM_STEP_NUM_TASKS")
        return size if size is not None else _int(self.environ, "SLURM_NTASKS")

    @property
    def pmi(self) -> Optional[str]:
        """The MPI plugin srun used: "pmix", "pmi2", or None when it wired no MPI."""
        if "PMIX_RANK" in self.environ:
            return "pmix"
        if "PMI_RANK" in self.environ or "PMI_FD" in self.environ:
            return "pmi2"
        return None

    @property
    def implementation(self):
        # PMIx serves Open MPI, and MPICH too when it was built with PMIx: no verdict.
        return MPICH if self.pmi == "pmi2" else None


class PMIxEnvironment(LauncherEnvironment):
    """A PMIx launcher that sets nothing else we know (PRRTE's prterun/prun, for instance).

    Open MPI's mpirun and srun --mpi=pmix set PMIX_RANK too; their own classes
    come first. PMIx serves Open MPI, and MPICH when built with it: no verdict on
    the implementation, and the world size is not in the environment.
    """

    name = "a PMIx launcher"
    rank_variable = "PMIX_RANK"


class PBSEnvironment(LauncherEnvironment):
    """A task started by PBS/Torque itself (pbsdsh, tm_spawn): PBS_VNODENUM is its index in the node file.

    PBS starts no MPI wiring of its own: inside a PBS job, mpiexec's variables
    (checked first) are what counts, and a task PBS started with --rank still
    needs `mpiexec -n 1` to connect to the others.
    """

    name = "PBS (pbsdsh)"
    starts_mpi_processes = False
    rank_variable = "PBS_VNODENUM"

    @classmethod
    def detect(cls, environ):
        return "PBS_JOBID" in environ and super().detect(environ)

    def _nodes(self) -> List[str]:
        path = self.environ.get("PBS_NODEFILE")
        try:
            with open(path) as lines:
                return [line.strip() for line in lines if line.strip()]
        except (OSError, TypeError):
            return []

    @property
    def world_size(self):
        size = _int(self.environ, "PBS_NP")  # Torque
        return size if size is not None else (len(self._nodes()) or None)


# The order matters: see the module docstring.
LAUNCHERS: List[Type[LauncherEnvironment]] = [
    HydraEnvironment, OpenMPIEnvironment, SlurmEnvironment, PMIxEnvironment, PBSEnvironment]


def detect_launcher(environ: Optional[Mapping[str, str]] = None) -> Optional[LauncherEnvironment]:
    """The launcher that started this process, or None (a plain `python` start)."""
    environ = os.environ if environ is None else environ
    for kind in LAUNCHERS:
        if kind.detect(environ):
            return kind(environ)
    return None


def rank_from_environment(environ: Optional[Mapping[str, str]] = None) -> Optional[int]:
    """The rank a launcher announced to this process, read without initialising MPI.

    None when no launcher started it: a plain `python`, or a batch script itself
    (an sbatch script's SLURM_PROCID=0 is not a rank).
    """
    launcher = detect_launcher(environ)
    return None if launcher is None else launcher.rank


def started_by_mpi_launcher(environ: Optional[Mapping[str, str]] = None) -> bool:
    """True when a launcher that starts MPI processes (mpiexec, srun, PMIx) started this one."""
    launcher = detect_launcher(environ)
    return launcher is not None and launcher.starts_mpi_processes


def loaded_mpi_implementation() -> Optional[str]:
    """The MPI implementation mpi4py loads (MPICH or Open MPI), found without initialising MPI.

    None when it cannot be told (an unknown library, or an mpi4py without the ABI helper).
    """
    module = sys.modules.get("mpi4py.MPI")
    try:
        if module is not None:
            version = module.Get_library_version()
            return OPEN_MPI if "Open MPI" in version else MPICH if "MPICH" in version else None
        # mpi4py >= 4.1 wheels pick their extension from the library they find
        # (honouring MPI4PY_LIBMPI and MPI4PY_MPIABI); this asks the same question.
        # An mpi4py built from source against a cluster's MPI registers nothing:
        # it links its library directly, which cannot be told before import.
        import mpi4py  # noqa: F401 - registers the wheel's extensions
        from mpi4py import _mpiabi

        if not _mpiabi._registry.get("mpi4py.MPI"):
            return None
        abi = _mpiabi._get_mpiabi()
    except Exception:  # noqa: BLE001 - mpi4py's private registry; only a warning depends on it
        return None
    return {"mpich": MPICH, "impi": MPICH, "openmpi": OPEN_MPI}.get(abi)


def foreign_launcher_warning(environ: Optional[Mapping[str, str]] = None,
                             loaded: Optional[str] = None) -> Optional[str]:
    """The warning for a launcher that cannot wire the loaded MPI into one world, else None."""
    launcher = detect_launcher(environ)
    if launcher is None or (launcher.world_size or 0) <= 1:
        return None
    if isinstance(launcher, SlurmEnvironment) and launcher.pmi is None:
        return (f"srun started {launcher.world_size} tasks without an MPI plugin (no PMI variables "
                "in the environment): every process would be rank 0\n"
                "HINT: use srun --mpi=pmi2 with MPICH or srun --mpi=pmix with Open MPI "
                "(srun --mpi=list shows what this cluster has), or mpiexec inside the allocation")
    loaded = loaded or loaded_mpi_implementation()
    if not launcher.conflicts_with(loaded):
        return None
    return (f"this process was started by {launcher.name} ({launcher.evidence}): the environment "
            f"belongs to {launcher.implementation} but {loaded} is loaded: every process would be "
            f"rank 0 (or MPI_Init fails)\nHINT: start the job with {loaded}'s own mpiexec (with pip's {loaded.lower()} "
            f"package: the mpiexec next to this python, {os.path.dirname(sys.executable)}), or make "
            f"mpi4py load {launcher.implementation}'s library (MPI4PY_LIBMPI=/path/to/libmpi.so)")


def warn_if_foreign_launcher(environ: Optional[Mapping[str, str]] = None) -> Optional[str]:
    """Prints the foreign-launcher warning once per job (from the launcher's rank 0); returns it."""
    message = foreign_launcher_warning(environ)
    if message is not None:
        launcher = detect_launcher(environ)
        if launcher is not None and launcher.rank in (0, None):
            print(f"flamby-mpi: warning: {message}", file=sys.stderr, flush=True)
    return message
