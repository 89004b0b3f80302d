"""A one-node SLURM cluster for tests, from Debian's packages (`.ci/run` installs them).

Everything lives in one private directory: its own munged (started as user
munge, with a fresh key and socket there), slurmctld and slurmd (as root, with
`SlurmdParameters=config_overrides` and more CPUs than the machine has, so that
N+1 tasks fit on 2 cores), state, spool, logs. Nothing under /etc or /run is
touched; clients find the cluster through SLURM_CONF. `stop()` ends every
process that holds a file in that directory (daemons, job steps) and removes it.
"""
from __future__ import annotations

import os
import shutil
import socket
import subprocess
import tempfile
import time
from pathlib import Path
from typing import Dict, List

from .facility import (
    end_processes,
    missing,
    processes_holding,
    processes_with_variable,
    require_root,
)

BINARIES = ("munged", "slurmctld", "slurmd", "slurmstepd", "sbatch", "srun", "scontrol", "scancel", "sinfo")
APT_HINT = "apt-get install slurmctld slurmd slurm-client munge (.ci/run does)"
ACTIVE_STATES = {"PENDING", "CONFIGURING", "RUNNING", "COMPLETING", "SUSPENDED", "REQUEUED", "RESIZING"}
NODE_CPUS = 16  # more than this 2-core machine has: N+1 one-CPU tasks fit (config_overrides)


def _free_ports(count: int) -> List[int]:
    sockets = [socket.socket() for _ in range(count)]
    try:
        for s in sockets:
            s.bind(("127.0.0.1", 0))
        return [s.getsockname()[1] for s in sockets]
    finally:
        for s in sockets:
            s.close()


def check_available():
    require_root("a SLURM cluster")
    absent = [b for b in BINARIES if not (shutil.which(b) or Path("/usr/sbin", b).exists())]
    if absent:
        missing(f"SLURM is not installed (no {', '.join(absent)}): {APT_HINT}")


class SlurmCluster:
    def __init__(self):
        self.root = Path(tempfile.mkdtemp(prefix="flamby-slurm-", dir="/tmp"))
        self.root.chmod(0o755)  # munged (user munge) must reach its socket in here
        self.conf = self.root / "slurm.conf"
        self.munge_socket = self.root / "munge" / "run" / "munge.socket"
        self.node = socket.gethostname().split(".")[0]

    @property
    def env(self) -> Dict[str, str]:
        return {"SLURM_CONF": str(self.conf)}

    def _command(self, *args: str, timeout: float = 30, check: bool = True) -> subprocess.CompletedProcess:
        done = subprocess.run(list(args), env=dict(os.environ, **self.env), capture_output=True,
                              text=True, timeout=timeout)
        if check and done.returncode != 0:
            raise RuntimeError(f"{' '.join(args)} failed ({done.returncode}):\n{done.stdout}{done.stderr}"
                               f"\n{self.logs()}")
        return done

    def _sbin(self, name: str) -> str:
        return shutil.which(name) or f"/usr/sbin/{name}"

    def start(self, deadline_s: float = 60) -> "SlurmCluster":
        try:
            self._start_munge()
            self._write_conf()
            for daemon in ("slurmctld", "slurmd"):
                self._command(self._sbin(daemon), "-f", str(self.conf))  # both daemonize
            self._wait_for_idle_node(deadline_s)
        except BaseException:
            self.stop()
            raise
        return self

    def _start_munge(self):
        munge = self.root / "munge"
        key_dir, run_dir = munge / "etc", munge / "run"
        key_dir.mkdir(parents=True)
        run_dir.mkdir()
        key = key_dir / "munge.key"
        if shutil.which("mungekey") or Path("/usr/sbin/mungekey").exists():
            self._command(self._sbin("mungekey"), "--create", f"--keyfile={key}")
        else:
            key.write_bytes(os.urandom(1024))
        shutil.chown(munge, "munge", "munge")
        for path in (key_dir, run_dir, key):
            shutil.chown(path, "munge", "munge")
        munge.chmod(0o755)
        run_dir.chmod(0o755)
        key_dir.chmod(0o700)
        key.chmod(0o600)
        self._command("runuser", "-u", "munge", "--", self._sbin("munged"),
                      f"--socket={self.munge_socket}", f"--key-file={key}",
                      f"--pid-file={run_dir / 'munged.pid'}", f"--log-file={munge / 'munged.log'}",
                      f"--seed-file={key_dir / 'seed'}")

    def _write_conf(self):
        for sub in ("state", "spool", "log"):
            (self.root / sub).mkdir()
        r = self.root
        ctld_port, slurmd_port = _free_ports(2)
        self.conf.write_text(f"""\
# One-node test cluster, written by tests/support/slurm.py (its docstring says how it runs).
ClusterName=flambytest
SlurmctldHost={self.node}(127.0.0.1)
SlurmctldPort={ctld_port}
SlurmdPort={slurmd_port}
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
CredType=cred/munge
AuthInfo=socket={self.munge_socket}
StateSaveLocation={r}/state
SlurmdSpoolDir={r}/spool
SlurmctldPidFile={r}/slurmctld.pid
SlurmdPidFile={r}/slurmd.pid
SlurmctldLogFile={r}/log/slurmctld.log
SlurmdLogFile={r}/log/slurmd.log
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/none
JobCompType=jobcomp/none
SelectType=select/cons_tres
SelectTypeParameters=CR_Core
MpiDefault=none
ReturnToService=2
MinJobAge=600
SlurmdParameters=config_overrides
NodeName={self.node} NodeAddr=127.0.0.1 CPUs={NODE_CPUS} RealMemory=65536 State=UNKNOWN
PartitionName=test Nodes={self.node} Default=YES MaxTime=INFINITE State=UP
""")

    def _wait_for_idle_node(self, deadline_s: float):
        deadline = time.monotonic() + deadline_s
        state = ""
        while time.monotonic() < deadline:
            done = self._command("sinfo", "-h", "-N", "-o", "%T", check=False)
            state = done.stdout.strip()
            if state == "idle":
                return
            time.sleep(0.5)
        raise RuntimeError(f"the test SLURM node is not idle after {deadline_s:.0f} s "
                           f"(state {state!r})\n{self.logs()}")

    def submit(self, args: List[str], cwd: Path, env: Dict[str, str]) -> int:
        done = subprocess.run(["sbatch", "--parsable", *args], cwd=cwd, env=dict(env, **self.env),
                              capture_output=True, text=True, timeout=30)
        if done.returncode != 0:
            raise AssertionError(f"sbatch failed ({done.returncode}): {done.stderr}")
        return int(done.stdout.strip().split(";")[0])

    def job(self, job_id: int) -> Dict[str, str]:
        """`scontrol show job` as a dict (JobState, ExitCode, StdOut...)."""
        done = self._command("scontrol", "show", "job", "-o", str(job_id), check=False)
        fields = {}
        for item in done.stdout.split():
            key, sep, value = item.partition("=")
            if sep:
                fields.setdefault(key, value)
        return fields

    def wait(self, job_id: int, deadline_s: float) -> Dict[str, str]:
        """Waits until the job has ended; on deadline cancels it and fails with what it printed."""
        deadline = time.monotonic() + deadline_s
        while True:
            fields = self.job(job_id)
            if fields.get("JobState") and fields["JobState"] not in ACTIVE_STATES:
                return fields
            if time.monotonic() > deadline:
                self._command("scancel", str(job_id), check=False)
                output = Path(fields.get("StdOut", "/nonexistent"))
                shown = output.read_text() if output.is_file() else "(no output file)"
                raise AssertionError(f"SLURM job {job_id} still {fields.get('JobState')} after its "
                                     f"{deadline_s:.0f} s deadline (cancelled)\n{shown}\n{self.logs()}")
            time.sleep(1)

    def wait_for(self, job_id: int, what: str, ready, deadline_s: float) -> Dict[str, str]:
        """Polls `scontrol show job` until ready(fields); on deadline cancels the job and fails."""
        deadline = time.monotonic() + deadline_s
        while True:
            fields = self.job(job_id)
            if ready(fields):
                return fields
            if time.monotonic() > deadline:
                self._command("scancel", str(job_id), check=False)
                raise AssertionError(f"SLURM job {job_id}: not {what} after {deadline_s:.0f} s "
                                     f"(cancelled): {fields}\n{self.logs()}")
            time.sleep(0.2)

    def scancel(self, job_id: int, *flags: str):
        self._command("scancel", *flags, str(job_id), check=False)

    def requeue(self, job_id: int):
        self._command("scontrol", "requeue", str(job_id))

    def start_requeued_now(self, job_id: int, restarts: int, deadline_s: float):
        """SLURM holds a requeued job for about two minutes (its EligibleTime); once the job is
        pending again, a test lets it start at once."""
        self.wait_for(job_id, f"pending after restart {restarts}",
                      lambda f: f.get("JobState") == "PENDING" and int(f.get("Restarts", 0)) >= restarts,
                      deadline_s)
        self._command("scontrol", "update", f"jobid={job_id}", "StartTime=now")

    def logs(self) -> str:
        parts = []
        for path in sorted(self.root.glob("log/*.log")) + [self.root / "munge" / "munged.log"]:
            if path.is_file():
                tail = path.read_text(errors="replace").splitlines()[-15:]
                parts.append(f"--- {path.name}\n" + "\n".join(tail))
        return "\n".join(parts)

    def stop(self):
        if self.conf.exists():
            try:
                self._command("scancel", "--user", str(os.getuid()), check=False, timeout=10)
            except (OSError, subprocess.SubprocessError):
                pass
        # Daemons and job steps hold a log or pid file in here; job processes carry SLURM_CONF.
        end_processes(set(processes_holding(self.root)) | set(processes_with_variable(
            "SLURM_CONF", str(self.conf))))
        shutil.rmtree(self.root, ignore_errors=True)

