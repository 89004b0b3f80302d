"""Real facilities for the cluster tests (a SLURM cluster, network namespaces, Open MPI).

A test that needs one skips with the reason and the way to get it; under CI
(`CI=true`, where .ci/run provides every facility) a missing one fails instead,
so that CI can never pass by skipping.
"""
from __future__ import annotations

import os
import signal
import time
from pathlib import Path
from typing import Iterable, List

import pytest


def under_ci() -> bool:
    return os.environ.get("CI", "").lower() in ("1", "true", "yes")


def missing(reason: str):
    """Skips the test, or fails it under CI."""
    if under_ci():
        pytest.fail(f"CI must provide this facility, but: {reason}", pytrace=False)
    pytest.skip(reason)


def require_root(what: str):
    if os.geteuid() != 0:
        missing(f"{what} needs root (CI runs as root)")


def processes_holding(root: Path) -> List[int]:
    """Processes with a file open, or their working directory, under root (ours to end)."""
    root_text = str(root)
    found = []
    for pid in os.listdir("/proc"):
        if not pid.isdigit() or int(pid) == os.getpid():
            continue
        links = [f"/proc/{pid}/cwd"]
        try:
            links += [f"/proc/{pid}/fd/{fd}" for fd in os.listdir(f"/proc/{pid}/fd")]
        except OSError:
            continue
        for link in links:
            try:
                if os.readlink(link).startswith(root_text):
                    found.append(int(pid))
                    break
            except OSError:
                continue
    return found


def processes_with_variable(name: str, value: str) -> List[int]:
    """Processes whose environment has name=value (what a job started by our daemons inherits)."""
    wanted = f"{name}={value}".encode()
    found = []
    for pid in os.listdir("/proc"):
        if not pid.isdigit() or int(pid) == os.getpid():
            continue
        try:
            with open(f"/proc/{pid}/environ", "rb") as environ:
                if wanted in environ.read().split(b"\0"):
                    found.append(int(pid))
        except OSError:
            continue
    return found


def end_processes(pids: Iterable[int], grace_s: float = 5.0):
    """SIGTERM, then SIGKILL what is still alive after grace_s."""
    pids = [p for p in pids if p != os.getpid()]
    for pid in pids:
        _signal(pid, signal.SIGTERM)
    deadline = time.monotonic() + grace_s
    while time.monotonic() < deadline and any(_alive(p) for p in pids):
        time.sleep(0.1)
    for pid in pids:
        if _alive(pid):
            _signal(pid, signal.SIGKILL)


def _signal(pid: int, sig):
    try:
        os.kill(pid, sig)
    except (ProcessLookupError, PermissionError):
        pass


def _alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as stat:
            return stat.read().split(")")[-1].split()[0] != "Z"  # a zombie has ended
    except OSError:
        return False
