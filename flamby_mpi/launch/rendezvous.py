"""One terminal per rank: separately started processes join one MPI communicator.

MPI itself does the joining (dynamic process management): the server opens an
MPI port and publishes it, keyed by run_id, in a rendezvous directory (a file,
so any shared filesystem works) together with a per-run secret (mode 0600);
each client connects to the port, presents the secret and its rank, and every
accepted process is merged into one intracommunicator, finally ordered by
`--rank`. From there the job runs exactly as under mpirun.

Files: `<dir>/<run_id>.json` (port, host, pid, heartbeat) and
`<dir>/<run_id>.secret`. The server refreshes the heartbeat while it lives and
removes both files at the end; a file whose heartbeat is old (or whose process
is gone, on the same host) comes from a crashed run and is replaced, never
trusted.
"""
from __future__ import annotations

import hashlib
import hmac
import json
import logging
import os
import secrets
import socket
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Dict, Optional, Set

from ..errors import UserError

log = logging.getLogger("flamby_mpi.rendezvous")

HEARTBEAT_S = 2.0
STALE_AFTER_S = 10.0
POLL_S = 0.2


@dataclass
class RendezvousFiles:
    directory: Path
    run_id: str

    @property
    def info(self) -> Path:
        return self.directory / f"{self.run_id}.json"

    @property
    def secret(self) -> Path:
        return self.directory / f"{self.run_id}.secret"

    def read_info(self) -> Optional[Dict]:
        try:
            return json.loads(self.info.read_text())
        except (OSError, ValueError):
            return None  # absent, or being replaced right now

    def remove(self):
        for path in (self.info, self.secret):
            try:
                path.unlink()
            except FileNotFoundError:
                pass


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def is_live(info: Optional[Dict]) -> bool:
    """A published server that still runs (fresh heartbeat, and its pid alive if on this host)."""
    if not info:
        return False
    if time.time() - float(info.get("heartbeat", 0)) > STALE_AFTER_S:
        return False
    if info.get("host") == socket.gethostname() and not _pid_alive(int(info.get("pid", -1))):
        return False
    return True


def config_fingerprint(config_yaml: str) -> str:
    return hashlib.sha256(config_yaml.encode()).hexdigest()[:16]


class Publication:
    """The server's published port, kept fresh by a heartbeat thread until closed."""

    def __init__(self, files: RendezvousFiles, port: str, secret: str):
        self.files, self.port, self.secret = files, port, secret
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._beat, name="flamby-mpi-rendezvous", daemon=True)

    def _write(self):
        info = {"run_id": self.files.run_id, "port": self.port, "host": socket.gethostname(),
                "pid": os.getpid(), "heartbeat": time.time()}
        tmp = self.files.info.with_name(f".{self.files.info.name}.{os.getpid()}")
        tmp.write_text(json.dumps(info))
        os.replace(tmp, self.files.info)

    def _beat(self):
        while not self._stop.wait(HEARTBEAT_S):
            try:
                self._write()
            except OSError as exc:  # a shared filesystem hiccup must not kill the run
                log.warning("could not refresh %s: %s", self.files.info, exc)

    def close(self):
        self._stop.set()
        self.files.remove()


def publish(files: RendezvousFiles, port: str) -> Publication:
    """Server side: refuses a live server for the same run_id, replaces a stale one."""
    files.directory.mkdir(parents=True, exist_ok=True)
    existing = files.read_info()
    if is_live(existing):
        raise UserError(f"a server for run_id {files.run_id!r} is already running "
                        f"(pid {existing.get('pid')} on {existing.get('host')}; {files.info})",
                        hint="choose another --run_id, or stop that server first")
    if existing is not None or files.secret.exists():
        log.warning("replacing a stale rendezvous file from an earlier run: %s", files.info)
        files.remove()
    secret = secrets.token_hex(16)
    fd = os.open(files.secret, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(secret)
    publication = Publication(files, port, secret)
    publication._write()
    publication._thread.start()
    return publication


def wait_for_server(files: RendezvousFiles, deadline: float) -> Dict:
    """Client side: the live server's info and secret, or a UserError at the deadline."""
    seen_stale = False
    while True:
        info = files.read_info()
        if is_live(info):
            try:
                info["secret"] = files.secret.read_text().strip()
            except OSError as exc:
                raise UserError(f"cannot read the run's secret {files.secret}: {exc}",
                                hint="start the client as the same user as the server, "
                                     "on a filesystem the server's host shares")
            return info
        seen_stale = seen_stale or info is not None
        if time.monotonic() > deadline:
            what = "only a stale file from an earlier run" if seen_stale else "nothing"
            raise UserError(
                f"no server for run_id {files.run_id!r} appeared: looked for {files.info} and found {what}",
                hint="start the server (--rank 0 --role server) with the same --cf, --run_id and "
                     "comm_args.rendezvous_dir, or raise comm_args.join_timeout_s")
        time.sleep(POLL_S)


# ----------------------------------------------------------------------------------------------
# Joining: the server accepts clients one at a time; every process already joined takes part in
# each Accept (it is collective over the growing communicator), then all merge with the newcomer.

_ACCEPT, _DONE = "accept", "done"


class ServerJoin:
    """Rank 0's side of joining; `current` and `joined` are readable by a timeout thread."""

    def __init__(self, MPI, port: str, secret: str, expected_ranks: Set[int], fingerprint: str,
                 announce: Callable[[str], None]):
        self.MPI, self.port, self.secret = MPI, port, secret
        self.expected, self.fingerprint, self.announce = set(expected_ranks), fingerprint, announce
        self.current = MPI.COMM_SELF  # the communicator of everyone joined so far
        self.joined: Dict[int, str] = {}

    @property
    def missing(self):
        return sorted(self.expected - set(self.joined))

    def run(self):
        """Returns the intracommunicator of all ranks, ordered by rank."""
        MPI = self.MPI
        while self.missing:
            intra = self.current
            intra.bcast(_ACCEPT, root=0)
            inter = intra.Accept(self.port, root=0)
            hello = inter.recv(source=0)
            reason = _refusal(hello, self.secret, self.expected, self.joined, self.fingerprint)
            inter.send({"ok": reason is None, "reason": reason}, dest=0)
            intra.bcast(reason is None, root=0)
            if reason is not None:
                self.announce(f"refused a process from {hello.get('host')} (pid {hello.get('pid')}): {reason}")
                inter.Disconnect()
                continue
            merged = inter.Merge(high=False)
            inter.Free()
            self.current = merged
            if intra is not MPI.COMM_SELF:
                intra.Free()
            self.joined[int(hello["rank"])] = f"{hello.get('host')} pid {hello.get('pid')}"
            missing = self.missing
            self.announce(f"rank {hello['rank']} joined from {hello.get('host')}"
                          + (f"; waiting for rank(s) {', '.join(map(str, missing))}" if missing else ""))
        intra = self.current
        intra.bcast(_DONE, root=0)
        ordered = intra.Split(0, 0)
        if intra is not MPI.COMM_SELF:
            intra.Free()
        self.current = ordered
        return ordered


def _refusal(hello: Dict, secret: str, expected: Set[int], joined: Dict[int, str],
             fingerprint: str) -> Optional[str]:
    if not isinstance(hello, dict) or not hmac.compare_digest(str(hello.get("secret", "")), secret):
        return "it did not present this run's secret"
    rank = hello.get("rank")
    if rank in joined:
        return f"rank {rank} has already joined ({joined[rank]})"
    if rank not in expected:
        return f"rank {rank} is not a client rank of this run (1..{max(expected)})"
    if hello.get("fingerprint") != fingerprint:
        return "its configuration differs from the server's (same --cf and --set on every rank)"
    return None


def client_join(MPI, port: str, secret: str, rank: int, fingerprint: str):
    """Rank k >= 1: connects, presents itself, then follows the server's joining of the others."""
    inter = MPI.COMM_SELF.Connect(port)
    inter.send({"rank": rank, "secret": secret, "fingerprint": fingerprint,
                "host": socket.gethostname(), "pid": os.getpid()}, dest=0)
    reply = inter.recv(source=0)
    if not reply.get("ok"):
        inter.Disconnect()
        raise UserError(f"the server refused rank {rank}: {reply.get('reason')}",
                        hint="check --rank (each client rank once), --run_id and the config")
    intra = inter.Merge(high=True)
    inter.Free()
    while intra.bcast(None, root=0) == _ACCEPT:
        inter = intra.Accept(None, root=0)
        if intra.bcast(None, root=0):
            merged = inter.Merge(high=False)
            inter.Free()
            intra.Free()
            intra = merged
        else:
            inter.Disconnect()
    ordered = intra.Split(0, rank)
    intra.Free()
    return ordered
