"""A small tmpfs mounted for one test: a disk that really fills (ENOSPC from the kernel, not a mock).

Needs root (or CAP_SYS_ADMIN); tests skip with the reason when the mount is refused. Always
unmounted afterwards, also when the test fails (a process of the job may still hold it for a
moment after it ended: retried, then detached lazily).
"""
from __future__ import annotations

import contextlib
import os
import subprocess
import time
from pathlib import Path
from typing import Iterator

import pytest


def _mount(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(["mount", *args], capture_output=True, text=True, timeout=30)


@contextlib.contextmanager
def tmpfs(directory: Path, size_kib: int) -> Iterator[Path]:
    """directory (created) with a tmpfs of size_kib KiB mounted on it, for the with block."""
    directory.mkdir(parents=True, exist_ok=True)
    if os.geteuid() != 0:
        pytest.skip("mounting a small tmpfs (a disk that fills) needs root")
    try:
        mounted = _mount("-t", "tmpfs", "-o", f"size={size_kib}k,mode=0755", "tmpfs", str(directory))
    except (OSError, subprocess.SubprocessError) as exc:
        pytest.skip(f"cannot mount a tmpfs: {exc}")
    if mounted.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs: {mounted.stderr.strip()}")
    try:
        yield directory
    finally:
        for _ in range(20):
            if subprocess.run(["umount", str(directory)], capture_output=True, timeout=30).returncode == 0:
                break
            time.sleep(0.25)
        else:
            subprocess.run(["umount", "-l", str(directory)], capture_output=True, timeout=30)


def resize(directory: Path, size_kib: int):
    """The tmpfs on directory grows (or shrinks) to size_kib KiB, its files kept."""
    done = _mount("-o", f"remount,size={size_kib}k", str(directory))
    assert done.returncode == 0, done.stderr


def temporary_files(root: Path) -> list:
    """Every file or link under root whose name is a temporary one (old: .X.tmp<pid>, now: .X.<hex>.tmp)."""
    return sorted(str(p) for p in Path(root).rglob("*") if ".tmp" in p.name)
