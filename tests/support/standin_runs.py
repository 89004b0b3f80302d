"""Stand-in data written by the real script, and a dataset's acceptance run on it: one round of one
update under mpiexec, then its in-process twin (issue 20)."""
from __future__ import annotations

import contextlib
import hashlib
import json
import math
import shlex
import shutil
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Dict, Iterator, List

from support.mpi import LAUNCHER, REPO, run_job, run_mpi
from support.mpi import test_env as env_for

STANDIN_SCRIPT = REPO / "scripts" / "standin_data.py"


def write_standin(dataset: str, directory: Path, seed: int = 0) -> List[str]:
    """Runs `scripts/standin_data.py DATASET DIR`; returns its last line, the launcher arguments."""
    done = subprocess.run([sys.executable, str(STANDIN_SCRIPT), dataset, str(directory), "--seed", str(seed)],
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stdout + done.stderr
    return shlex.split(done.stdout.strip().splitlines()[-1])


@contextlib.contextmanager
def scratch_without_test_in_path(prefix: str) -> Iterator[Path]:
    """A scratch directory whose path has no "test" in it (pytest's own have: pytest-of-USER):
    FLamby's Camelyon16 class calls every slide whose full path contains "test" a test slide."""
    root = Path(tempfile.mkdtemp(prefix=prefix, dir="/tmp"))
    assert "test" not in str(root).lower(), root
    try:
        yield root
    finally:
        shutil.rmtree(root, ignore_errors=True)


def tree_bytes(directory: Path) -> Dict[str, bytes]:
    return {p.relative_to(directory).as_posix(): p.read_bytes() for p in sorted(directory.rglob("*")) if p.is_file()}


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


@dataclass
class TwinRuns:
    mpi_metrics: Dict[str, float]
    mpi_model_sha: str
    inprocess_model_sha: str
    mpi_seconds: float
    inprocess_metrics: Dict[str, float]


def run_standin_twins(dataset: str, launcher_args: List[str], num_clients: int, cwd: Path, home: Path,
                      marker: str, deadline_s: float = 420) -> TwinRuns:
    """The acceptance run: mpiexec -n N+1 with the printed arguments, one round of one update, then
    the same run in process; both must exit 0."""
    common = ["--cf", str(REPO / "config" / f"{dataset}.yaml"), *launcher_args,
              "--set", "train_args.comm_round=1", "--set", "train_args.num_updates=1"]
    mpi_out, twin_out = cwd / "mpi", cwd / "inprocess"
    job = run_mpi(num_clients + 1, common + ["--run_id", marker, "--set", f"common_args.output_dir={mpi_out}"],
                  cwd, home, deadline_s=deadline_s, marker=marker)
    assert job.returncode == 0, job.output
    assert not job.leftovers, job.leftovers
    twin = run_job([sys.executable, str(LAUNCHER), *common, "--set", "comm_args.backend=inprocess",
                    "--set", f"common_args.output_dir={twin_out}"], cwd, env_for(home), deadline_s)
    assert twin.returncode == 0, twin.output
    metrics = {out: json.loads((out / "results.json").read_text())["metrics"] for out in (mpi_out, twin_out)}
    return TwinRuns(metrics[mpi_out], sha256(mpi_out / "global_model.pt"), sha256(twin_out / "global_model.pt"),
                    job.seconds, metrics[twin_out])


def assert_metric_per_centre(metrics: Dict[str, float], num_clients: int):
    for k in range(num_clients):
        value = metrics.get(f"client_test_{k}")
        assert value is not None and math.isfinite(value), (k, metrics)
