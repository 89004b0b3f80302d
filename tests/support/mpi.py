"""Running real MPI jobs from tests: mpiexec subprocesses with a deadline, always cleaned up."""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Dict, List, Optional

REPO = Path(__file__).resolve().parents[2]
LAUNCHER = REPO / "launch_client.py"
DEFAULT_CONFIG = REPO / "config" / "fedml_config.yaml"
TESTS_DIR = Path(__file__).resolve().parents[1]


def mpiexec() -> str:
    candidate = Path(sys.executable).parent / "mpiexec"
    return str(candidate) if candidate.exists() else "mpiexec"


@dataclass
class Finished:
    returncode: int
    stdout: str
    stderr: str
    seconds: float
    # Processes of the job still alive a few seconds after the launcher returned
    # (checked before the test's own clean-up kills them).
    leftovers: List[str] = field(default_factory=list)

    @property
    def output(self) -> str:
        return self.stdout + self.stderr


def test_env(home: Path, extra: Optional[Dict[str, str]] = None) -> Dict[str, str]:
    env = dict(os.environ)
    env["HOME"] = str(home)  # lets tests check that nothing is written to ~/.fedml
    env["PYTHONPATH"] = os.pathsep.join([str(REPO), str(TESTS_DIR)] +
                                        ([env["PYTHONPATH"]] if env.get("PYTHONPATH") else []))
    env["PYTHONUNBUFFERED"] = "1"
    env.update(extra or {})
    return env


def run_job(cmd: List[str], cwd: Path, env: Dict[str, str], deadline_s: float,
            marker: Optional[str] = None) -> Finished:
    """Runs cmd in its own session; on deadline kills the whole process group and fails."""
    start = time.monotonic()
    proc = subprocess.Popen(cmd, cwd=cwd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True, start_new_session=True)
    try:
        out, err = proc.communicate(timeout=deadline_s)
        seconds = time.monotonic() - start
        leftovers = wait_until_gone(marker) if marker else []
    except subprocess.TimeoutExpired:
        kill_group(proc)
        out, err = proc.communicate()
        raise AssertionError(f"job exceeded its {deadline_s:.0f} s deadline: {' '.join(cmd)}\n"
                             f"stdout:\n{out}\nstderr:\n{err}") from None
    finally:
        kill_group(proc)  # nothing the job started may outlive the test
    return Finished(proc.returncode, out, err, seconds, leftovers)


def wait_until_gone(marker: str, grace_s: float = 5.0) -> List[str]:
    deadline = time.monotonic() + grace_s
    while True:
        alive = processes_matching(marker)
        if not alive or time.monotonic() > deadline:
            return alive
        time.sleep(0.2)


def kill_group(proc: subprocess.Popen):
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass


def run_mpi(np_: int, args: List[str], cwd: Path, home: Path, deadline_s: float = 120,
            env_extra: Optional[Dict[str, str]] = None, marker: Optional[str] = None) -> Finished:
    cmd = [mpiexec(), "-n", str(np_), sys.executable, str(LAUNCHER)] + args
    return run_job(cmd, cwd, test_env(home, env_extra), deadline_s, marker=marker)


def processes_matching(marker: str) -> List[str]:
    """Command lines of live processes containing marker (to prove nothing was left behind)."""
    found = []
    for pid in os.listdir("/proc"):
        if not pid.isdigit() or int(pid) == os.getpid():
            continue
        try:
            cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode()
        except OSError:
            continue
        if marker in cmdline:
            found.append(cmdline)
    return found


def rank_pid(marker: str, rank: int) -> Optional[int]:
    """The pid of the python process that plays `rank` in the job whose command lines hold marker.

    Started one per terminal, that process names its rank (`--rank K`); under mpirun every rank has
    the same command line and the launcher's PMI_RANK tells them apart. Launchers (mpiexec, its
    proxies) are not python processes and never match."""
    for pid in os.listdir("/proc"):
        if not pid.isdigit() or int(pid) == os.getpid():
            continue
        try:
            args = Path(f"/proc/{pid}/cmdline").read_bytes().decode().split("\0")
            if args[0] != sys.executable or not any(marker in a for a in args):
                continue
            if "--rank" in args:
                if args[args.index("--rank") + 1] == str(rank):
                    return int(pid)
                continue
            environ = Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")
        except (OSError, IndexError, UnicodeDecodeError):
            continue
        if f"PMI_RANK={rank}".encode() in environ:
            return int(pid)
    return None


def mpich_segments() -> set:
    """MPICH's shared-memory segments on this host (flamby_mpi/launch/mpich_shm.py): a job that
    ends, however it ends, must leave none of its own."""
    return {p.name for p in Path("/dev/shm").glob("mpich_shm_*")}
