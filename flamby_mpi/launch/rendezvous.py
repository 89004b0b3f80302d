"""One terminal per rank: separately started processes join one MPI communicator.

MPI itself does the joining (dynamic process management): the server opens an
MPI port and publishes it, keyed by run_id, in a rendezvous directory (a file,
so any shared filesystem works); each client takes a turn (a lock file carrying
an HMAC under the run's secret), connects to the port, and the two prove to
each other that they hold the run's secret (handshake.py: bounded JSON bytes,
never pickle, the secret never sent). Every accepted process is merged into
one intracommunicator, finally ordered by `--rank`. From there the job runs
exactly as under mpirun.

Files: `<dir>/<run_id>.json` (port, host, pid, heartbeat; mode 0600),
`<dir>/<run_id>.secret` (unless the secret is given out of band, run_secret.py)
and `<dir>/<run_id>.connecting` (the turn). The server refreshes the heartbeat
while it lives and removes its files at the end; a file whose heartbeat is old
(or whose process is gone, on the same host) comes from a crashed run and is
replaced, never trusted.
"""
from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import secrets
import socket
import stat
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Dict, List, Optional, Set, Tuple

from ..config import run_id_problem
from ..errors import UserError
from . import handshake, run_secret

log = logging.getLogger("flamby_mpi.rendezvous")

HEARTBEAT_S = 2.0
STALE_AFTER_S = 10.0
POLL_S = 0.2
# A connect turn held longer than this belongs to a client that died while connecting.
TURN_STALE_S = 30.0
# The rendezvous files are small; anything larger is not ours and is not read.
_MAX_FILE_BYTES = 16384


@dataclass
class RendezvousFiles:
    directory: Path
    run_id: str

    def __post_init__(self):
        problem = run_id_problem(self.run_id)  # checked with the config already: never reached by users
        if problem:
            raise UserError(problem)

    @property
    def info(self) -> Path:
        return self.directory / f"{self.run_id}.json"

    @property
    def secret(self) -> Path:
        return self.directory / f"{self.run_id}.secret"

    @property
    def turn(self) -> Path:
        return self.directory / f"{self.run_id}.connecting"

    def read_info(self) -> Optional[Dict]:
        """The published server, if the file holds what a server writes; None otherwise."""
        info = read_json(self.info)
        if not isinstance(info, dict):
            return None  # absent, being replaced right now, or not ours
        kinds = {"run_id": str, "port": str, "host": str, "pid": int, "heartbeat": (int, float)}
        if any(not isinstance(info.get(k), t) or isinstance(info.get(k), bool) for k, t in kinds.items()):
            return None
        if info["run_id"] != self.run_id or len(info["port"]) > 1024:
            return None
        return info

    def remove(self, *paths: Path):
        for path in paths or (self.info, self.secret):
            try:
                path.unlink()
            except FileNotFoundError:
                pass


def read_json(path: Path):
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK)
        with os.fdopen(fd, "rb") as f:
            data = f.read(_MAX_FILE_BYTES + 1)
        return None if len(data) > _MAX_FILE_BYTES else json.loads(data.decode("utf-8"))
    except (OSError, ValueError):  # ValueError covers bad UTF-8 and bad JSON
        return None


def _private_copy_beside(path: Path, text: str) -> Path:
    """A new file of mode 0600 holding text, under a fresh name beside path (never followed)."""
    while True:
        tmp = path.with_name(f".{path.name}.{secrets.token_hex(6)}")
        try:
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600)
            break
        except FileExistsError:
            continue
    with os.fdopen(fd, "w") as f:
        f.write(text)
    return tmp


def write_private(path: Path, text: str):
    """Atomically replaces `path` by a new private file holding text."""
    os.replace(_private_copy_beside(path, text), path)


def prepare_directory(directory: Path):
    """Creates the rendezvous directory private (0700); warns once when an existing one is not."""
    try:
        directory.mkdir(parents=True, exist_ok=True, mode=0o700)
        mode = directory.stat().st_mode
    except OSError as exc:
        raise UserError(f"cannot use the rendezvous directory {directory}: {exc.strerror}",
                        hint="point comm_args.rendezvous_dir to a directory you can write")
    if mode & 0o022:
        log.warning("the rendezvous directory %s is writable by other users (mode %04o): they cannot join "
                    "this run or read its secret, but they can disturb the join; prefer a private directory "
                    "(comm_args.rendezvous_dir) or give the secret out of band (comm_args.secret_file or %s)",
                    directory, stat.S_IMODE(mode), run_secret.ENV_VAR)


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except (ProcessLookupError, OverflowError, ValueError):
        return False
    except PermissionError:
        return True
    return True


def is_live(info: Optional[Dict]) -> bool:
    """A published server that still runs (fresh heartbeat, and its pid alive if on this host)."""
    if not info:
        return False
    if time.time() - float(info["heartbeat"]) > STALE_AFTER_S:
        return False
    if info["host"] == socket.gethostname() and not _pid_alive(info["pid"]):
        return False
    return True


def config_fingerprint(config_yaml: str) -> str:
    return hashlib.sha256(config_yaml.encode()).hexdigest()[:16]


class Publication:
    """The server's published port, kept fresh by a heartbeat thread until closed."""

    def __init__(self, files: RendezvousFiles, port: str, secret: str, owns_secret_file: bool):
        self.files, self.port, self.secret = files, port, secret
        self._owned = [files.info] + ([files.secret] if owns_secret_file else [])
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._beat, name="flamby-mpi-rendezvous", daemon=True)

    def _write(self):
        info = {"run_id": self.files.run_id, "port": self.port, "host": socket.gethostname(),
                "pid": os.getpid(), "heartbeat": time.time()}
        write_private(self.files.info, json.dumps(info))

    def _beat(self):
        while not self._stop.wait(HEARTBEAT_S):
            try:
                self._write()
            except OSError as exc:  # a shared filesystem hiccup must not kill the run
                log.warning("could not refresh %s: %s", self.files.info, exc)

    def close(self):
        self._stop.set()
        self.files.remove(*self._owned)


def publish(files: RendezvousFiles, port: str, secret_file: Optional[str],
            announce: Callable[[str], None]) -> Publication:
    """Server side: refuses a live server for the same run_id, replaces a stale one."""
    prepare_directory(files.directory)
    existing = files.read_info()
    if is_live(existing):
        raise UserError(f"a server for run_id {files.run_id!r} is already running "
                        f"(pid {existing['pid']} on {existing['host']}; {files.info})",
                        hint="choose another --run_id, or stop that server first")
    if files.info.exists() or files.secret.exists() or files.secret.is_symlink():
        log.warning("replacing a stale rendezvous file from an earlier run: %s", files.info)
        files.remove()
    owns_secret_file = run_secret.from_environment() is None and not secret_file
    secret = run_secret.for_server(files.secret, secret_file, announce)
    publication = Publication(files, port, secret, owns_secret_file)
    publication._write()
    publication._thread.start()
    return publication


def wait_for_server(files: RendezvousFiles, deadline: float) -> Dict:
    """Client side: the live server's info, or a UserError at the deadline."""
    seen_stale = False
    while True:
        info = files.read_info()
        if is_live(info):
            return info
        seen_stale = seen_stale or files.info.exists()
        if time.monotonic() > deadline:
            what = "only a stale file from an earlier run" if seen_stale else "nothing"
            raise UserError(
                f"no server for run_id {files.run_id!r} appeared: looked for {files.info} and found {what}",
                hint="start the server (--rank 0 --role server) with the same --cf, --run_id and "
                     "comm_args.rendezvous_dir, or raise comm_args.join_timeout_s")
        time.sleep(POLL_S)


# ----------------------------------------------------------------------------------------------
# Taking turns to connect: MPICH crashes when several processes connect to one port at once, and
# MPI_Comm_accept cannot time out, so the server calls Accept only while someone holds the turn.
# The turn file carries an HMAC under the secret: clients wait behind a turn of this run's clients
# and replace any other, and the server knows which Accepts are for a client of this run.

def _turn_proof(secret: str, files: RendezvousFiles, port: str, nonce: str) -> str:
    return handshake.proof(secret, "turn", files.run_id, port, nonce)


def read_turn(files: RendezvousFiles, secret: str, port: str) -> Tuple[Optional[str], Optional[os.stat_result]]:
    """(nonce of a turn proven by a client of this run or None, the file's stat or None if absent)."""
    try:
        st = os.stat(files.turn, follow_symlinks=False)
    except FileNotFoundError:
        return None, None
    turn = read_json(files.turn)
    if isinstance(turn, dict) and isinstance(turn.get("nonce"), str) and len(turn["nonce"]) <= 64 \
            and handshake.proof_matches(secret, turn.get("proof"), "turn", files.run_id, port, turn["nonce"]):
        return turn["nonce"], st
    return None, st


@contextlib.contextmanager
def connect_turn(files: RendezvousFiles, secret: str, port: str, deadline: float):
    """One client at a time; yields the turn's nonce. A lock that no client of this run holds
    (wrong content), or one older than TURN_STALE_S (its holder died), is replaced."""
    nonce = handshake.new_nonce()
    content = json.dumps({"nonce": nonce, "host": socket.gethostname(), "pid": os.getpid(),
                          "proof": _turn_proof(secret, files, port, nonce)})
    while True:
        # Written complete under a private name, then linked into place: a reader never sees half a
        # lock, and the link fails if the lock is held (atomic, also on NFS).
        tmp = _private_copy_beside(files.turn, content)
        try:
            os.link(tmp, files.turn)
            break
        except FileExistsError:
            pass
        finally:
            files.remove(tmp)
        held_by, st = read_turn(files, secret, port)
        if st is not None:
            stale = time.time() - st.st_mtime > TURN_STALE_S
            if held_by is None or stale:
                log.warning("replacing the connect turn %s: %s", files.turn,
                            "its holder stopped while connecting" if held_by else
                            "it was not written by a client of this run")
                with contextlib.suppress(FileNotFoundError):
                    if os.stat(files.turn, follow_symlinks=False).st_ino == st.st_ino:
                        files.turn.unlink()
                continue
        if time.monotonic() > deadline:
            raise UserError(f"could not get a turn to connect ({files.turn} stayed in place)",
                            hint="remove that file if no client of this run is starting")
        time.sleep(POLL_S / 4)
    try:
        yield nonce
    finally:
        # Only our own lock: someone may have replaced it in the meantime.
        if read_turn(files, secret, port)[0] == nonce:
            files.remove(files.turn)


# ----------------------------------------------------------------------------------------------
# Joining: the server accepts clients one at a time; every process already joined takes part in
# each Accept (it is collective over the growing communicator), then all merge with the newcomer.
# Only processes that proved they hold the secret are merged; the commands the server broadcasts to
# the joined ones (pickled by mpi4py) travel only between authenticated processes.

_ACCEPT, _DONE, _TIMEOUT = "accept", "done", "timeout"


class ServerJoin:
    """Rank 0's side of joining; `joined` is readable by a timeout thread."""

    def __init__(self, MPI, files: RendezvousFiles, port: str, secret: str, expected_ranks: Set[int],
                 fingerprint: str, announce: Callable[[str], None]):
        self.MPI, self.files, self.port, self.secret = MPI, files, port, secret
        self.expected, self.fingerprint, self.announce = set(expected_ranks), fingerprint, announce
        self.joined: Dict[int, str] = {}
        self._served_turns: Set[str] = set()
        self._deadline = time.monotonic()

    @property
    def missing(self):
        return sorted(self.expected - set(self.joined))

    def _wait_for_a_connecting_client(self, deadline: float) -> bool:
        """True once a turn file is in place that no Accept has served yet: its writer is about to
        connect, and until then the deadline stays ours to enforce (Accept cannot time out).

        A turn that a client of this run wrote (its HMAC checks out) is served once per nonce. A turn
        that no client of this run wrote is served once too, rather than ignored: its writer may be
        connecting, and MPICH crashes (SIGSEGV) when a second process connects to the port while an
        earlier connection is still pending, so the way to stay up is to accept that connection and
        refuse it in the handshake. Either way nothing is trusted before the handshake proves the secret.
        """
        while True:
            nonce, st = read_turn(self.files, self.secret, self.port)
            if st is not None:
                identity = nonce or f"unproven {st.st_ino} {st.st_mtime_ns} {st.st_size}"
                if identity not in self._served_turns:
                    self._served_turns.add(identity)
                    return True
            if time.monotonic() > deadline:
                return False
            time.sleep(POLL_S / 4)

    def _handshake(self, inter) -> Tuple[Optional[handshake.Hello], Optional[str]]:
        """(the hello if it was well formed, the reason to refuse or None). Never raises for what
        the peer sends: a bad peer is refused and the server goes on waiting for the real clients."""
        MPI = self.MPI
        inter.Set_errhandler(MPI.ERRORS_RETURN)
        challenge = handshake.challenge()
        hello = None
        try:
            handshake.send(MPI, inter, challenge)
            hello = handshake.read_hello(handshake.receive(MPI, inter))
        except handshake.HandshakeError as exc:
            return hello, f"it {exc}"
        except MPI.Exception as exc:
            return hello, f"the connection failed ({exc.Get_error_string()})"
        if not handshake.hello_is_proven(hello, self.secret, challenge["nonce"], self.port):
            reason = "it did not prove that it holds this run's secret"
        else:
            self._served_turns.add(hello.turn)  # its turn file may outlive the handshake a moment
            reason = _refusal(hello, self.expected, self.joined, self.fingerprint)
        # The deadline goes with the answer: a joined client then waits for the server's verdict
        # until then, whenever it started.
        remaining = max(0.0, self._deadline - time.monotonic())
        try:
            handshake.send(MPI, inter, handshake.make_verdict(self.secret, hello, challenge["nonce"],
                                                              self.port, reason, time.time() + remaining))
        except MPI.Exception as exc:
            reason = reason or f"the connection failed ({exc.Get_error_string()})"
        return hello, reason

    def run(self, deadline: float, timeout_message: Callable[[List[int]], str]):
        """Returns the intracommunicator of all ranks, ordered by rank.

        Raises UserError at the deadline, after telling the clients that did join.
        """
        MPI = self.MPI
        self._deadline = deadline
        intra = MPI.COMM_SELF  # everyone joined so far
        while self.missing:
            if not self._wait_for_a_connecting_client(deadline):
                message = timeout_message(self.missing)
                intra.bcast((_TIMEOUT, message), root=0)
                raise UserError(message, hint="start the missing clients with the same --cf, --run_id "
                                              "and rendezvous directory, or raise comm_args.join_timeout_s")
            intra.bcast((_ACCEPT, None), root=0)
            inter = intra.Accept(self.port, root=0)
            hello, reason = self._handshake(inter)
            intra.bcast(reason is None, root=0)
            if reason is not None:
                who = f"a process from {hello.describe()}" if hello else "an unidentified process"
                self.announce(f"refused {who}: {reason}")
                inter.Disconnect()
                continue
            merged = inter.Merge(high=False)
            inter.Free()
            if intra is not MPI.COMM_SELF:
                intra.Free()
            intra = merged
            self.joined[hello.rank] = f"{hello.host} pid {hello.pid}"
            missing = self.missing
            self.announce(f"rank {hello.rank} joined from {hello.host}"
                          + (f"; waiting for rank(s) {', '.join(map(str, missing))}" if missing else ""))
        intra.bcast((_DONE, None), root=0)
        ordered = intra.Split(0, 0)
        if intra is not MPI.COMM_SELF:
            intra.Free()
        return ordered


def _refusal(hello: handshake.Hello, expected: Set[int], joined: Dict[int, str],
             fingerprint: str) -> Optional[str]:
    """Why a client that proved the secret cannot join (None: it can)."""
    if hello.rank in joined:
        return f"rank {hello.rank} has already joined ({joined[hello.rank]})"
    if hello.rank not in expected:
        return f"rank {hello.rank} is not a client rank of this run (1..{max(expected)})"
    if hello.fingerprint != fingerprint:
        return "its configuration differs from the server's (same --cf and --set on every rank)"
    return None


def client_join(MPI, port: str, secret: str, rank: int, fingerprint: str, turn,
                on_joined: Optional[Callable[[handshake.Verdict], None]] = None):
    """Rank k >= 1: connects, proves itself and checks the server's proof, then follows the
    server's joining of the others. `turn` (a context manager yielding the turn's nonce) is held
    from Connect until this client is merged."""
    with turn as turn_nonce:
        inter = MPI.COMM_SELF.Connect(port)
        inter.Set_errhandler(MPI.ERRORS_RETURN)
        try:
            server_nonce = handshake.read_challenge(handshake.receive(MPI, inter))
            hello = handshake.make_hello(secret, server_nonce, port, rank, fingerprint, turn_nonce,
                                         socket.gethostname(), os.getpid())
            handshake.send(MPI, inter, hello)
            verdict = handshake.read_verdict(handshake.receive(MPI, inter), secret, hello["nonce"],
                                             server_nonce, port)
        except (handshake.HandshakeError, MPI.Exception) as exc:
            inter.Disconnect()
            what = str(exc) if isinstance(exc, handshake.HandshakeError) else \
                f"failed to answer ({exc.Get_error_string()})"
            raise UserError(f"rank {rank}: the process at the published port {what}: either it is not this "
                            "run's server, or this rank's secret differs from the server's",
                            hint="give every rank the same secret (same rendezvous directory and user, "
                                 f"comm_args.secret_file or {run_secret.ENV_VAR}); if the rendezvous "
                                 "directory is shared with others, use a private one")
        if not verdict.ok:
            inter.Disconnect()
            raise UserError(f"the server refused rank {rank}: {verdict.reason}",
                            hint="check --rank (each client rank once), --run_id and the config")
        intra = inter.Merge(high=True)
        inter.Free()
    if on_joined is not None:
        on_joined(verdict)
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
