"""Starting ranks as separate processes (one per 'terminal', no mpirun), with deadlines and clean-up."""
from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path
from typing import Dict, List, Optional

from .mpi import LAUNCHER, kill_group, test_env, wait_until_gone


class SeparateRanks:
    """Starts `python launch_client.py ... --rank K --role ROLE` processes; always kills them at the end."""

    def __init__(self, cwd: Path, home: Path, config: Path, run_id: str, common: List[str],
                 env: Optional[Dict[str, str]] = None):
        self.cwd, self.config, self.run_id, self.common = cwd, config, run_id, list(common)
        self.env = test_env(home, env)
        self.procs: Dict[str, subprocess.Popen] = {}

    def start(self, rank: int, role: Optional[str] = None, name: Optional[str] = None, extra=()):
        role = role or ("server" if rank == 0 else "client")
        name = name or f"rank{rank}"
        log = open(self._log_path(name), "w")
        cmd = [sys.executable, str(LAUNCHER), "--cf", str(self.config), "--run_id", self.run_id,
               "--rank", str(rank), "--role", role, *self.common, *extra]
        self.procs[name] = subprocess.Popen(cmd, cwd=self.cwd, env=self.env, stdout=log,
                                            stderr=subprocess.STDOUT, start_new_session=True)
        return name

    def wait(self, deadline_s: float, names=None) -> Dict[str, int]:
        """Exit codes of the named (default: all) processes; fails if one outlives the deadline."""
        end = time.monotonic() + deadline_s
        codes = {}
        for name in names or list(self.procs):
            try:
                codes[name] = self.procs[name].wait(timeout=max(0.1, end - time.monotonic()))
            except subprocess.TimeoutExpired:
                self.kill_all()
                raise AssertionError(f"{name} outlived its {deadline_s:.0f} s deadline; logs:\n"
                                     + self.all_logs())
        return codes

    def _log_path(self, name: str) -> Path:
        # Named by run id too: two runs started side by side in one directory both have a rank0.
        return self.cwd / f"{self.run_id}.{name}.log"

    def wait_for_line(self, name: str, text: str, deadline_s: float = 90):
        """Waits until `text` is in the named process's log; fails if it exits or the deadline passes."""
        end = time.monotonic() + deadline_s
        while text not in self.log(name):
            if self.procs[name].poll() is not None and text not in self.log(name):
                self.kill_all()
                raise AssertionError(f"{name} exited ({self.procs[name].returncode}) without printing "
                                     f"{text!r}; logs:\n" + self.all_logs())
            if time.monotonic() > end:
                self.kill_all()
                raise AssertionError(f"{name} did not print {text!r} within {deadline_s:.0f} s; logs:\n"
                                     + self.all_logs())
            time.sleep(0.1)

    def log(self, name: str) -> str:
        return self._log_path(name).read_text()

    def all_logs(self) -> str:
        return "\n".join(f"--- {n}\n{self.log(n)}" for n in self.procs)

    def leftovers(self):
        return wait_until_gone(self.run_id)

    def kill_all(self):
        for proc in self.procs.values():
            kill_group(proc)
