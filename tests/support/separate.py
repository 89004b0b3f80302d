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
        self.started_at: Dict[str, float] = {}
        self.ended_at: Dict[str, float] = {}

    def start(self, rank: int, role: Optional[str] = None, name: Optional[str] = None, extra=(), prefix=(),
              env: Optional[Dict[str, str]] = None):
        """`prefix`: a command that runs the rank (setpriv...); `env`: entries for this process only."""
        role = role or ("server" if rank == 0 else "client")
        name = name or f"rank{rank}"
        log = open(self._log_path(name), "w")
        self.started_at[name] = time.monotonic()
        cmd = [*prefix, sys.executable, str(LAUNCHER), "--cf", str(self.config), "--run_id", self.run_id,
               "--rank", str(rank), "--role", role, *self.common, *extra]
        self.procs[name] = subprocess.Popen(cmd, cwd=self.cwd, env=dict(self.env, **(env or {})), stdout=log,
                                            stderr=subprocess.STDOUT, start_new_session=True)
        return name

    def wait(self, deadline_s: float, names=None) -> Dict[str, int]:
        """Exit codes of the named (default: all) processes; fails if one outlives the deadline.
        `ended_at[name]` is when each was seen to end (polled every 0.1 s)."""
        end = time.monotonic() + deadline_s
        names = list(names or self.procs)
        while True:
            for name in names:
                if name not in self.ended_at and self.procs[name].poll() is not None:
                    self.ended_at[name] = time.monotonic()
            if all(name in self.ended_at for name in names):
                return {name: self.procs[name].returncode for name in names}
            if time.monotonic() > end:
                late = [name for name in names if name not in self.ended_at]
                self.kill_all()
                raise AssertionError(f"{', '.join(late)} outlived the {deadline_s:.0f} s deadline; logs:\n"
                                     + self.all_logs())
            time.sleep(0.1)

    def seconds(self, name: str) -> float:
        """How long the named process ran (after wait())."""
        return self.ended_at[name] - self.started_at[name]

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
