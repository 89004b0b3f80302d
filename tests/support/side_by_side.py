"""Independent processes of one test started together and waited for together.

A test that compares two fresh interpreters (with and without a shortcut, FLamby's import and
ours, two collections of the suite) spends its time importing or compiling on one core each; one
after the other they took the sum of their times on the 2-core machines CI runs on, side by side
the longer of the two. Output goes to files, not pipes, so a chatty process never waits on a
reader that is waiting on the other one. Whatever outlives the deadline is killed, with its group.
"""
from __future__ import annotations

import subprocess
import tempfile
import time
from typing import Dict, List, Optional, Sequence

from .mpi import kill_group


def run_side_by_side(commands: Sequence[Sequence[str]], timeout_s: float, cwd=None,
                     env: Optional[Dict[str, str]] = None,
                     envs: Optional[Sequence[Optional[Dict[str, str]]]] = None) -> List[subprocess.CompletedProcess]:
    """Runs every command at once (env for all, or envs one each) and returns their results in
    the same order, stdout and stderr as text; fails the test if one outlives timeout_s."""
    envs = list(envs) if envs is not None else [env] * len(commands)
    assert len(envs) == len(commands)
    started = []
    try:
        for argv, its_env in zip(commands, envs, strict=True):
            out, err = tempfile.TemporaryFile(), tempfile.TemporaryFile()
            process = subprocess.Popen(list(argv), cwd=cwd, env=its_env, stdout=out, stderr=err,
                                       start_new_session=True)
            started.append((argv, process, out, err))
        deadline = time.monotonic() + timeout_s
        results = []
        for argv, process, out, err in started:
            try:
                process.wait(timeout=max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                raise AssertionError(f"{' '.join(map(str, argv))[:200]} outlived its {timeout_s:.0f} s "
                                     "deadline") from None
            texts = []
            for handle in (out, err):
                handle.seek(0)
                texts.append(handle.read().decode(errors="replace"))
            results.append(subprocess.CompletedProcess(list(argv), process.returncode, *texts))
        return results
    finally:
        for _, process, out, err in started:
            if process.poll() is None:
                kill_group(process)
                process.wait()
            out.close()
            err.close()
