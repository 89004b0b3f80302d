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

import contextlib
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
from typing import Callable, Dict, List, Optional, Set

from ..errors import UserError

log = logging.getLogger("flamby_mpi.rendezvous")

HEARTBEAT_S = 2.0
STALE_AFTER_S = 10.0
POLL_S = 0.2
# A connect turn held longer than this belongs to a client that died while connecting.
TURN_STALE_S = 30.0


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

_ACCEPT, _DONE, _TIMEOUT = "accept", "done", "timeout"


class ServerJoin:
    """Rank 0's side of joining; `joined` is readable by a timeout thread."""

    def __init__(self, MPI, files: RendezvousFiles, port: str, secret: str, expected_ranks: Set[int],
                 fingerprint: str, announce: Callable[[str], None]):
        self.MPI, self.files, self.port, self.secret = MPI, files, port, secret
        self.expected, self.fingerprint, self.announce = set(expected_ranks), fingerprint, announce
        self.joined: Dict[int, str] = {}

    @property
    def missing(self):
        return sorted(self.expected - set(self.joined))

    def _wait_for_a_connecting_client(self, deadline: float) -> bool:
        # MPI_Comm_accept cannot time out, so only call it once a client holds the connect
        # turn (it is about to connect): the deadline stays ours to enforce.
        turn = turn_file(self.files)
        while not turn.exists():
            if time.monotonic() > deadline:
                return False
            time.sleep(POLL_S / 4)
        return True

    def run(self, deadline: float, timeout_message: Callable[[List[int]], str]):
        """Returns the intracommunicator of all ranks, ordered by rank.

        Raises UserError at the deadline, after telling the clients that did join.
        """
        MPI = self.MPI
        intra = MPI.COMM_SELF  # everyone joined so far
        while self.missing:
            if not self._wait_for_a_connecting_client(deadline):
                message = timeout_message(self.missing)
                intra.bcast((_TIMEOUT, message), root=0)
                raise UserError(message, hint="start the missing clients with the same --cf, --run_id "
                                              "and rendezvous directory, or raise comm_args.join_timeout_s")
            intra.bcast((_ACCEPT, None), root=0)
            inter = intra.Accept(self.port, root=0)
            hello = inter.recv(source=0)
            reason = _refusal(hello, self.secret, self.expected, self.joined, self.fingerprint)
            # The deadline goes with the answer: a joined client then waits for the server's
            # verdict until then, whenever it started.
            inter.send({"ok": reason is None, "reason": reason,
                        "deadline": time.time() + max(0.0, deadline - time.monotonic())}, dest=0)
            intra.bcast(reason is None, root=0)
            if reason is not None:
                self.announce(f"refused a process from {hello.get('host')} (pid {hello.get('pid')}): {reason}")
                inter.Disconnect()
                continue
            merged = inter.Merge(high=False)
            inter.Free()
            if intra is not MPI.COMM_SELF:
                intra.Free()
            intra = merged
            self.joined[int(hello["rank"])] = f"{hello.get('host')} pid {hello.get('pid')}"
            missing = self.missing
            self.announce(f"rank {hello['rank']} joined from {hello.get('host')}"
                          + (f"; waiting for rank(s) {', '.join(map(str, missing))}" if missing else ""))
        intra.bcast((_DONE, None), root=0)
        ordered = intra.Split(0, 0)
        if intra is not MPI.COMM_SELF:
            intra.Free()
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


def client_join(MPI, port: str, secret: str, rank: int, fingerprint: str, turn=None,
                on_joined: Optional[Callable[[Dict], None]] = None):
    """Rank k >= 1: connects, presents itself, then follows the server's joining of the others.

    `turn` (a context manager) is held from Connect until this client is merged: MPICH can
    crash when several processes connect to one port at the same time, so clients take turns.
    """
    with turn if turn is not None else contextlib.nullcontext():
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
    if on_joined is not None:
        on_joined(reply)
    while True:
        command, message = intra.bcast(None, root=0)
        if command == _DONE:
            break
        if command == _TIMEOUT:
            raise UserError(f"rank {rank}: the server gave up: {message}")
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


def turn_file(files: RendezvousFiles) -> Path:
    return files.directory / f"{files.run_id}.connecting"


@contextlib.contextmanager
def connect_turn(files: RendezvousFiles, deadline: float):
    """One client at a time: an O_EXCL lock file (works on shared filesystems such as NFS)."""
    lock = turn_file(files)
    while True:
        try:
            fd = os.open(lock, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            break
        except FileExistsError:
            try:
                if time.time() - lock.stat().st_mtime > TURN_STALE_S:  # its holder died
                    lock.unlink()
                    continue
            except FileNotFoundError:
                continue
            if time.monotonic() > deadline:
                raise UserError(f"could not get a turn to connect ({lock} stayed in place)",
                                hint="remove that file if no client of this run is starting")
            time.sleep(POLL_S / 4)
    with os.fdopen(fd, "w") as f:
        f.write(json.dumps({"pid": os.getpid(), "host": socket.gethostname()}))
    try:
        yield
    finally:
        try:
            lock.unlink()
        except FileNotFoundError:
            pass
