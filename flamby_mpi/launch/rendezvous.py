"""One terminal per rank: separately started processes join one MPI communicator.

MPI itself does the joining (dynamic process management): the server opens an
MPI port and publishes it, keyed by run_id, in a rendezvous directory (a file,
so any shared filesystem works); each client takes a turn (a lock file carrying
an HMAC under the run's secret), connects to the port, and the two prove to
each other that they hold the run's secret (handshake.py: bounded JSON bytes,
never pickle, the secret never sent). Every accepted process is merged into
one intracommunicator, finally ordered by `--rank`. From there the job runs
exactly as under mpirun.

Files: `<dir>/<run_id>.json` (port, host, pid and a heartbeat counter; mode 0600),
`<dir>/<run_id>.secret` (unless the secret is given out of band, run_secret.py),
`<dir>/<run_id>.connecting` (the turn), `<dir>/<run_id>.lock` (held by a server
while it publishes) and `<dir>/<run_id>.gave_up` (a client that stopped before
connecting tells the server so, under an HMAC).

Freshness is judged on the reader's own monotonic clock, never by comparing
two hosts' wall clocks: a publication is live while its counter changes, and
stale once it has stayed the same for STALE_AFTER_S as this reader watched it
(or, on the same host only, when its process is gone). A server decides and
publishes while holding the lock, so of two servers started together exactly
one publishes; a stale publication is replaced only under that lock.
"""
from __future__ import annotations

import contextlib
import errno
import fcntl
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
from typing import Callable, Dict, List, Optional, Sequence, Set, Tuple

from ..config import run_id_problem
from ..exit.errors import UserError, clip, plain
from ..exit.fast_exit import end_thread
from ..storage import safe_files
from . import handshake, join_config, run_secret

log = logging.getLogger("flamby_mpi.rendezvous")

HEARTBEAT_S = 1.0
# A publication whose counter a reader saw unchanged this long is stale: far above any pause of a
# live server's heartbeat thread (it rewrites the file every HEARTBEAT_S).
STALE_AFTER_S = 10.0
POLL_S = 0.2
# A connect turn that a waiting client saw held this long (on its own clock) belongs to a client
# that died while connecting.
TURN_STALE_S = 30.0
# The rendezvous files are small; anything larger (or nested deeper) is not ours and is not read.
_MAX_FILE_BYTES = 16384
_MAX_DEPTH = 4
# How long a server waits for another one that holds the publishing lock (it may be watching a
# stale publication for STALE_AFTER_S).
_LOCK_WAIT_S = STALE_AFTER_S + 20.0

_OWN_DIRECTORY = "or give this run a rendezvous directory of your own (comm_args.rendezvous_dir)"


class GaveUp(UserError):
    """A client stopped before connecting, for a reason the server should hear of (gave_up file)."""


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

    @property
    def lock(self) -> Path:
        return self.directory / f"{self.run_id}.lock"

    @property
    def gave_up(self) -> Path:
        return self.directory / f"{self.run_id}.gave_up"

    def read_info(self) -> Optional[Dict]:
        """The published server, if the file holds what a server writes; None otherwise."""
        return _as_info(read_json(self.info), self.run_id)

    def look(self) -> Tuple[bool, Optional[Dict]]:
        """(whether something is published under the info name, the server it describes or None).
        Raises a UserError naming the file when it is no file of ours (a directory, a FIFO, a
        link) or another user's file this user may not read."""
        try:
            document = _read_document(self.info)
        except FileNotFoundError:
            return False, None
        except safe_files.UnsafePathError:
            raise not_a_file(self.info, "where a server publishes its port") from None
        except PermissionError:
            raise foreign_file(self.info, "cannot be read") from None
        except (OSError, ValueError):  # too large, torn by the file system, not JSON: not ours
            return True, None
        return True, _as_info(document, self.run_id)

    def remove(self, *paths: Path):
        for path in paths or (self.info, self.secret):
            try:
                path.unlink()
            except FileNotFoundError:
                pass


def _as_info(info, run_id: str) -> Optional[Dict]:
    if not isinstance(info, dict):
        return None  # absent, or not ours
    kinds = {"run_id": str, "port": str, "host": str, "pid": int, "beat": int}
    if any(not isinstance(info.get(k), t) or isinstance(info.get(k), bool) for k, t in kinds.items()):
        return None
    if info["run_id"] != run_id or len(info["port"]) > 1024:
        return None
    return info


def _read_document(path: Path):
    """JSON of a regular file of at most _MAX_FILE_BYTES, nested at most _MAX_DEPTH deep, opened
    without following a link or blocking on a FIFO (safe_files)."""
    return safe_files.load_json(safe_files.read_bounded(path, _MAX_FILE_BYTES), max_depth=_MAX_DEPTH)


def read_json(path: Path):
    """_read_document, or None for anything wrong with the file (absent, not regular, too large,
    not JSON, unreadable): for files whose content is then checked against an HMAC anyway."""
    try:
        return _read_document(path)
    except (OSError, ValueError, UserError):  # ValueError covers bad UTF-8, bad JSON, too large or deep
        return None


# --- naming what is in the way -----------------------------------------------------------------

def what_is(path: Path) -> str:
    try:
        mode = os.stat(path, follow_symlinks=False).st_mode
    except OSError:
        return "gone"
    for test, name in ((stat.S_ISLNK, "a symbolic link"), (stat.S_ISDIR, "a directory"),
                       (stat.S_ISFIFO, "a FIFO"), (stat.S_ISSOCK, "a socket"), (stat.S_ISREG, "a file")):
        if test(mode):
            return name
    return "a device file"


def _owner(path: Path) -> str:
    try:
        uid = os.stat(path, follow_symlinks=False).st_uid
    except OSError:
        return "another user"
    try:
        import pwd

        return f"uid {uid} ({pwd.getpwuid(uid).pw_name})"
    except (KeyError, ImportError):
        return f"uid {uid}"


def not_a_file(path: Path, role: str, error=UserError) -> UserError:
    return error(f"{plain(path)} is {what_is(path)}, not a file flamby-mpi writes ({role}); nothing was "
                 "written through it", hint=f"remove it (rm -r {plain(path)}) and start again, {_OWN_DIRECTORY}")


def foreign_file(path: Path, what: str, error=UserError) -> UserError:
    return error(f"{plain(path)} {what}: it belongs to {_owner(path)}, not to you (uid {os.geteuid()})",
                 hint=f"ask its owner (or an administrator) to remove it, choose another --run_id, {_OWN_DIRECTORY}")


# --- writing ------------------------------------------------------------------------------------

def _private_copy_beside(path: Path, text: str) -> Tuple[Path, int]:
    """A new file of mode 0600 holding text, under a fresh unpredictable name beside path (created
    O_EXCL|O_NOFOLLOW: a name planted in advance is never used); (its path, its inode)."""
    while True:
        tmp = path.with_name(f".{path.name}.{secrets.token_hex(6)}")
        try:
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
            break
        except FileExistsError:
            continue
    try:
        with os.fdopen(fd, "w") as f:
            f.write(text)
            inode = os.fstat(f.fileno()).st_ino
    except BaseException:
        with contextlib.suppress(OSError):
            tmp.unlink()
        raise
    return tmp, inode


def write_private(path: Path, text: str) -> int:
    """Atomically replaces `path` by a new private file holding text; returns the new file's inode.
    A link at `path` is replaced, never written through."""
    tmp, inode = _private_copy_beside(path, text)
    try:
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            tmp.unlink()
        raise
    return inode


def prepare_directory(directory: Path):
    """Creates the rendezvous directory private (0700); warns once when an existing one is not."""
    try:
        directory.mkdir(parents=True, exist_ok=True, mode=0o700)
        mode = directory.stat().st_mode
    except OSError as exc:
        raise UserError(f"cannot use the rendezvous directory {plain(directory)}: {exc.strerror}",
                        hint="point comm_args.rendezvous_dir to a directory you can write") from None
    if mode & 0o022:
        log.warning("the rendezvous directory %s is writable by other users (mode %04o): they cannot join "
                    "this run or read its secret, but they can disturb the join; prefer a private directory "
                    "(comm_args.rendezvous_dir) or give the secret out of band (comm_args.secret_file or %s)",
                    directory, stat.S_IMODE(mode), run_secret.ENV_VAR)


# --- freshness, on the reader's clock ---------------------------------------------------------

def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except (ProcessLookupError, OverflowError, ValueError):
        return False
    except PermissionError:
        return True
    return True


def gone_on_this_host(info: Dict) -> bool:
    """The one shortcut to "stale" without watching: the publisher's host is this one (same clock,
    same pids) and its process no longer exists."""
    return info["host"] == socket.gethostname() and not _pid_alive(info["pid"])


class Freshness:
    """What one reader saw of a published file, timed on its own monotonic clock: live once the
    document changed while watched (a heartbeat), stale once unchanged for STALE_AFTER_S."""

    def __init__(self, clock: Callable[[], float] = time.monotonic):
        self.clock = clock
        self.last: Optional[Dict] = None
        self.since = clock()  # when `last` was first seen
        self.changed_at: Optional[float] = None

    @staticmethod
    def _beat(document: Optional[Dict]):
        return None if document is None else (document["port"], document["host"], document["pid"], document["beat"])

    def see(self, document: Optional[Dict]):
        """One look at the publication (a server's info, or None when absent or not a server's)."""
        if self._beat(document) != self._beat(self.last):
            now = self.clock()
            if self.last is not None and document is not None:
                self.changed_at = now  # a new beat (or a new publication): someone writes it
            self.since = now
        self.last = document

    def live(self) -> bool:
        return self.last is not None and self.changed_at is not None \
            and self.clock() - self.changed_at <= STALE_AFTER_S

    def unchanged_s(self) -> float:
        return self.clock() - self.since

    def stale(self) -> bool:
        return self.last is not None and not self.live() and self.unchanged_s() > STALE_AFTER_S


class Publication:
    """The server's published port, kept fresh by a heartbeat thread until closed. It rewrites only
    files that are still its own (the inode it wrote): if another process replaced or removed them,
    it stops and says so in `displaced` (the join then ends, since clients cannot reach it)."""

    def __init__(self, files: RendezvousFiles, port: str, secret: str, owns_secret_file: bool):
        self.files, self.port, self.secret = files, port, secret
        self._owned: Dict[Path, int] = {}
        if owns_secret_file:
            self._owned[files.secret] = os.stat(files.secret, follow_symlinks=False).st_ino
        self._count = 0
        self.displaced: Optional[str] = None
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._beat, name="flamby-mpi-rendezvous", daemon=True)

    def _write(self):
        info = {"run_id": self.files.run_id, "port": self.port, "host": socket.gethostname(),
                "pid": os.getpid(), "beat": self._count}
        self._owned[self.files.info] = write_private(self.files.info, json.dumps(info))

    def _not_ours(self) -> Optional[str]:
        for path, inode in self._owned.items():
            try:
                if os.stat(path, follow_symlinks=False).st_ino != inode:
                    return f"{plain(path)} was replaced by another process"
            except FileNotFoundError:
                return f"{plain(path)} was removed by another process"
            except OSError:
                continue  # a shared filesystem hiccup: look again at the next beat
        return None

    def _beat(self):
        while not self._stop.wait(HEARTBEAT_S):
            self.displaced = self._not_ours()
            if self.displaced:
                log.warning("stopped refreshing %s: %s", self.files.info, self.displaced)
                return
            self._count += 1
            try:
                self._write()
            except OSError as exc:  # a shared filesystem hiccup must not kill the run
                log.warning("could not refresh %s: %s", self.files.info, exc)

    def start(self) -> "Publication":
        self._write()
        self._thread.start()
        return self

    def close(self):
        """Stops refreshing and removes what this server published; the thread has ended when this
        returns (a thread alive at the exit skips MPICH's PMI finalize: flamby_mpi/exit/fast_exit.py)."""
        self._stop.set()
        end_thread(self._thread, timeout=10)  # at most one refresh under way
        for path, inode in list(self._owned.items()):
            with contextlib.suppress(OSError):
                if os.stat(path, follow_symlinks=False).st_ino == inode:
                    path.unlink()
        self.files.remove(self.files.gave_up)


@contextlib.contextmanager
def publishing_lock(files: RendezvousFiles, wait_s: float = _LOCK_WAIT_S):
    """An exclusive flock on `<run_id>.lock` while a server decides and publishes. The holder removes
    the file before unlocking, so a waiter that then locks the removed file sees that the name no
    longer leads to it and tries again with the new one: never two holders."""
    end = time.monotonic() + wait_s
    while True:
        try:
            fd = os.open(files.lock, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC, 0o600)
        except PermissionError:
            raise foreign_file(files.lock, "cannot be opened") from None
        except OSError as exc:
            if exc.errno in (errno.ELOOP, errno.EISDIR, errno.ENXIO):
                raise not_a_file(files.lock, "the lock a server holds while it publishes") from None
            raise UserError(f"cannot open {plain(files.lock)}: {exc.strerror}",
                            hint="point comm_args.rendezvous_dir to a directory you can write") from None
        try:
            if not stat.S_ISREG(os.fstat(fd).st_mode):
                raise not_a_file(files.lock, "the lock a server holds while it publishes")
            while True:
                try:
                    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                    break
                except BlockingIOError:
                    if time.monotonic() > end:
                        raise UserError(f"another server for run_id {files.run_id!r} has been publishing for "
                                        f"{wait_s:g} s (it holds {plain(files.lock)})",
                                        hint="choose another --run_id, or stop that server first") from None
                    time.sleep(POLL_S / 4)
            try:
                current = os.stat(files.lock, follow_symlinks=False).st_ino
            except FileNotFoundError:
                current = None
            if current == os.fstat(fd).st_ino:
                break
        except BaseException:
            os.close(fd)
            raise
        os.close(fd)  # locked a file its holder had already removed: take the new one
    try:
        yield
    finally:
        with contextlib.suppress(OSError):
            files.lock.unlink()
        os.close(fd)  # unlocks


def _live_server(files: RendezvousFiles, announce: Callable[[str], None]) -> Tuple[bool, Optional[Dict]]:
    """(whether a file is published, the live server it describes or None), watched on this process's
    clock until its counter changes (live) or stays the same for STALE_AFTER_S (stale)."""
    freshness = Freshness()
    announced = False
    while True:
        present, info = files.look()
        if not present:
            return False, None  # nothing there, or the earlier server just ended and removed it
        if info is None or gone_on_this_host(info):
            return True, None
        freshness.see(info)
        if freshness.live():
            return True, info
        if freshness.stale():
            return True, None
        if not announced:
            announce(f"found {files.info} (pid {info['pid']} on {info['host']}): watching its heartbeat for "
                     f"up to {STALE_AFTER_S:g} s: a server still beating is running this run (refused), "
                     f"a silent one was left by a crashed run (replaced)")
            announced = True
        time.sleep(POLL_S)


def _remove_stale(files: RendezvousFiles, paths: List[Path]):
    for path in paths:
        try:
            path.unlink()
        except FileNotFoundError:
            pass
        except IsADirectoryError:
            raise not_a_file(path, "a file left by an earlier run") from None
        except PermissionError:
            raise foreign_file(path, "is left by an earlier run and this directory does not let you "
                                     "remove it") from None


def publish(files: RendezvousFiles, port: str, secret_file: Optional[str],
            announce: Callable[[str], None]) -> Publication:
    """Server side: refuses a live server for the same run_id, replaces a stale one; the decision
    and the publishing happen under the publishing lock."""
    prepare_directory(files.directory)
    with publishing_lock(files):
        present, live = _live_server(files, announce)
        if live is not None:
            raise UserError(f"a server for run_id {files.run_id!r} is already running "
                            f"(pid {live['pid']} on {live['host']}; {files.info})",
                            hint="choose another --run_id, or stop that server first")
        stale = [path for path in (files.info, files.secret, files.gave_up)
                 if os.path.lexists(path)]
        if present or stale:
            log.warning("replacing a stale rendezvous file from an earlier run: %s", files.info)
            _remove_stale(files, stale)
        owns_secret_file = run_secret.from_environment() is None and not secret_file
        try:
            secret = run_secret.for_server(files.secret, secret_file, announce)
        except FileExistsError:  # made by something that does not take the lock
            raise UserError(f"{plain(files.secret)} appeared while this server was publishing: something "
                            "other than a flamby-mpi server writes there",
                            hint=f"choose another --run_id, {_OWN_DIRECTORY}") from None
        return Publication(files, port, secret, owns_secret_file).start()


def wait_for_server(files: RendezvousFiles, deadline: float) -> Dict:
    """Client side: the live server's info (its counter seen to change on this process's clock),
    or a UserError at the deadline."""
    freshness = Freshness()
    while True:
        present, info = files.look()
        freshness.see(info if present else None)
        if freshness.live():
            return freshness.last
        if time.monotonic() > deadline:
            if freshness.last is not None:
                what = (f"only a file that did not change for {freshness.unchanged_s():.0f} s (left by a crashed "
                        "run, or a server that stopped)")
            else:
                what = "a file that is not a server's publication" if present else "nothing"
            raise UserError(
                f"no server for run_id {files.run_id!r} appeared: looked for {files.info} and found {what}",
                hint="start the server (--rank 0 --role server) with the same --cf, --run_id and "
                     "comm_args.rendezvous_dir, or raise comm_args.join_timeout_s")
        time.sleep(POLL_S)


def leave_gave_up(files: RendezvousFiles, secret: str, port: str, rank: int, reason: str):
    """Client: tells the server that this rank stopped before connecting (HMAC under the secret and
    the port: no one without the secret can end a run this way, no earlier run's file counts)."""
    host, pid = socket.gethostname(), os.getpid()
    reason = clip(reason.splitlines()[0] if reason else "", 300)
    document = {"rank": rank, "host": host, "pid": pid, "reason": reason,
                "proof": handshake.proof(secret, "gave-up", files.run_id, port, rank, host, pid, reason)}
    with contextlib.suppress(OSError):  # best effort: the server's join timeout still bounds its wait
        write_private(files.gave_up, json.dumps(document))


def read_gave_up(files: RendezvousFiles, secret: str, port: str) -> Optional[str]:
    """Server: what a client of this run that gave up said, if its HMAC proves it."""
    document = read_json(files.gave_up)
    if not isinstance(document, dict):
        return None
    rank, host, pid, reason = (document.get(k) for k in ("rank", "host", "pid", "reason"))
    if not (isinstance(rank, int) and isinstance(host, str) and isinstance(pid, int) and isinstance(reason, str)):
        return None
    if not handshake.proof_matches(secret, document.get("proof"), "gave-up", files.run_id, port, rank, host,
                                   pid, reason):
        return None
    return f"rank {rank} (host {clip(plain(host), 100)}, pid {pid}) gave up joining: {clip(reason, 300)}"


# ----------------------------------------------------------------------------------------------
# Taking turns to connect: MPICH crashes when several processes connect to one port at once, and
# MPI_Comm_accept cannot time out, so the server calls Accept only while someone holds the turn.
# The turn file carries an HMAC under the secret: clients wait behind a turn of this run's clients
# and replace any other, and the server knows which Accepts are for a client of this run.

def _turn_proof(secret: str, files: RendezvousFiles, port: str, nonce: str) -> str:
    return handshake.proof(secret, "turn", files.run_id, port, nonce)


def read_turn(files: RendezvousFiles, secret: str, port: str) -> Tuple[Optional[str], Optional[os.stat_result]]:
    """(nonce of a turn proven by a client of this run or None, the entry's lstat or None if absent).
    The entry may be something other than a regular file: the callers look at st_mode."""
    try:
        st = os.stat(files.turn, follow_symlinks=False)
    except FileNotFoundError:
        return None, None
    if not stat.S_ISREG(st.st_mode):
        return None, st
    turn = read_json(files.turn)
    if isinstance(turn, dict) and isinstance(turn.get("nonce"), str) and len(turn["nonce"]) <= 64 \
            and handshake.proof_matches(secret, turn.get("proof"), "turn", files.run_id, port, turn["nonce"]):
        return turn["nonce"], st
    if turn is None and not os.path.lexists(files.turn):
        return None, None  # released while being read: no turn, rather than an unproven one
    return None, st


@contextlib.contextmanager
def connect_turn(files: RendezvousFiles, secret: str, port: str, deadline: float):
    """One client at a time; yields the turn's nonce. A lock that no client of this run holds
    (wrong content), or one this client saw held for TURN_STALE_S by its own clock (its holder
    died), is replaced. Something that is not a regular file there, or another user's lock that
    cannot be removed, ends this client (GaveUp), as does a turn not obtained by the deadline."""
    nonce = handshake.new_nonce()
    content = json.dumps({"nonce": nonce, "host": socket.gethostname(), "pid": os.getpid(),
                          "proof": _turn_proof(secret, files, port, nonce)})
    first_seen: Dict[Tuple[int, Optional[str]], float] = {}
    while True:
        # Written complete under a private name, then linked into place: a reader never sees half a
        # lock, and the link fails if the lock is held (atomic, also on NFS).
        tmp, _ = _private_copy_beside(files.turn, content)
        try:
            os.link(tmp, files.turn)
            break
        except FileExistsError:
            pass
        finally:
            files.remove(tmp)
        held_by, st = read_turn(files, secret, port)
        if st is not None:
            if not stat.S_ISREG(st.st_mode):
                raise not_a_file(files.turn, "the turn clients take to connect", error=GaveUp)
            held_since = first_seen.setdefault((st.st_ino, held_by), time.monotonic())
            stale = time.monotonic() - held_since > TURN_STALE_S
            if held_by is None or stale:
                log.warning("replacing the connect turn %s: %s", files.turn,
                            "its holder stopped while connecting" if held_by else
                            "it was not written by a client of this run")
                try:
                    if os.stat(files.turn, follow_symlinks=False).st_ino == st.st_ino:
                        files.turn.unlink()
                except FileNotFoundError:
                    pass
                except PermissionError:
                    raise foreign_file(files.turn, "is in the way (a turn no client of this run took) and this "
                                                   "directory does not let you remove it", error=GaveUp) from None
                continue
        if time.monotonic() > deadline:
            raise GaveUp(f"could not get a turn to connect ({files.turn} stayed in place)",
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
    """Rank 0's side of joining; `joined` is readable by a timeout thread.

    Besides the deadline, the join ends early, with exit 2 and one message, when it cannot succeed:
    a client of this run gave up before connecting (its HMAC-proven gave_up file), or the server's
    own published files were removed or replaced (`publication.displaced`). While the server waits
    in MPI's Accept (which cannot be interrupted) a thread watches for the same, and `abandon(text)`
    ends the process."""

    def __init__(self, MPI, files: RendezvousFiles, port: str, secret: str, expected_ranks: Set[int],
                 fingerprint: str, announce: Callable[[str], None], publication: Optional[Publication] = None,
                 abandon: Optional[Callable[[str], None]] = None, key_names: Sequence[str] = ()):
        self.MPI, self.files, self.port, self.secret = MPI, files, port, secret
        self.expected, self.fingerprint, self.announce = set(expected_ranks), fingerprint, announce
        self.key_names = tuple(key_names)  # of the fingerprint's digests (join_config): named when they differ
        self.publication, self.abandon = publication, abandon
        self.joined: Dict[int, str] = {}
        self._served_turns: Set[str] = set()
        self._ignored_turns: Set[Tuple[int, int]] = set()
        self._deadline = time.monotonic()

    @property
    def missing(self):
        return sorted(self.expected - set(self.joined))

    def cannot_succeed(self) -> Optional[UserError]:
        """Why the join can no longer succeed (a client gave up, our files are gone), or None."""
        if self.publication is not None and self.publication.displaced:
            return UserError(f"run {self.files.run_id}: {self.publication.displaced} while the server waited for "
                             "its clients: they can no longer find it or read its secret",
                             hint="leave the rendezvous directory to this run while it starts, then start the "
                                  f"server and the clients again, {_OWN_DIRECTORY}")
        gave_up = read_gave_up(self.files, self.secret, self.port)
        if gave_up:
            return UserError(f"run {self.files.run_id}: {gave_up}",
                             hint="fix what that client names (its own message says how), then start the server "
                                  "and the clients again")
        return None

    def _wait_for_a_connecting_client(self, deadline: float) -> Optional[UserError]:
        """None once a turn file is in place that no Accept has served yet: its writer is about to
        connect, and until then the deadline stays ours to enforce (Accept cannot time out). Else
        why to stop: the deadline passed (a message without text: the caller words it), or
        cannot_succeed().

        A turn that a client of this run wrote (its HMAC checks out) is served once per nonce. A turn
        that no client of this run wrote is served once too, rather than ignored: its writer may be
        connecting, and MPICH crashes (SIGSEGV) when a second process connects to the port while an
        earlier connection is still pending, so the way to stay up is to accept that connection and
        refuse it in the handshake. Either way nothing is trusted before the handshake proves the secret.
        Something other than a regular file is no client's turn (ours write files): never served.
        """
        while True:
            stop = self.cannot_succeed()
            if stop is not None:
                return stop
            nonce, st = read_turn(self.files, self.secret, self.port)
            if st is not None and not stat.S_ISREG(st.st_mode):
                if (st.st_ino, st.st_mode) not in self._ignored_turns:
                    self._ignored_turns.add((st.st_ino, st.st_mode))
                    self.announce(f"{self.files.turn} is {what_is(self.files.turn)}, not a turn file: no client "
                                  "can connect while it is there (remove it)")
            elif st is not None:
                identity = nonce or f"unproven {st.st_ino} {st.st_mtime_ns} {st.st_size}"
                if identity not in self._served_turns:
                    self._served_turns.add(identity)
                    return None
            if time.monotonic() > deadline:
                return UserError("")
            time.sleep(POLL_S / 4)

    def _accept(self, intra):
        """intra.Accept, watched by a thread that ends the process (`abandon`) if the join can no
        longer succeed: a client that took its turn may have given up before connecting."""
        watching = threading.Event()

        def watch():
            while not watching.wait(POLL_S):
                stop = self.cannot_succeed()
                if stop is not None and not watching.is_set():
                    self.abandon(str(stop))
                    return

        if self.abandon is not None:
            threading.Thread(target=watch, name="flamby-mpi-accept-watch", daemon=True).start()
        try:
            return intra.Accept(self.port, root=0)
        finally:
            watching.set()

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
            reason = _refusal(hello, self.expected, self.joined, self.fingerprint, self.key_names)
        # What is left of the deadline goes with the answer, in seconds (no wall clock crosses hosts):
        # a joined client then waits for the server's verdict that long on its own clock.
        remaining = max(0.0, self._deadline - time.monotonic())
        try:
            handshake.send(MPI, inter, handshake.make_verdict(self.secret, hello, challenge["nonce"],
                                                              self.port, reason, remaining))
        except MPI.Exception as exc:
            reason = reason or f"the connection failed ({exc.Get_error_string()})"
        return hello, reason

    def run(self, deadline: float, timeout_message: Callable[[List[int]], str]):
        """Returns the intracommunicator of all ranks, ordered by rank.

        Raises UserError at the deadline or when the join cannot succeed, after telling the clients
        that did join.
        """
        MPI = self.MPI
        self._deadline = deadline
        intra = MPI.COMM_SELF  # everyone joined so far
        while self.missing:
            stop = self._wait_for_a_connecting_client(deadline)
            if stop is not None:
                if not str(stop):
                    stop = UserError(timeout_message(self.missing),
                                     hint="start the missing clients with the same --cf, --run_id and "
                                          "rendezvous directory, or raise comm_args.join_timeout_s")
                intra.bcast((_TIMEOUT, stop.args[0]), root=0)
                raise stop
            intra.bcast((_ACCEPT, None), root=0)
            inter = self._accept(intra)
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
             fingerprint: str, key_names: Sequence[str] = ()) -> Optional[str]:
    """Why a client that proved the secret cannot join (None: it can)."""
    if hello.rank in joined:
        return f"rank {hello.rank} has already joined ({joined[hello.rank]})"
    if hello.rank not in expected:
        return f"rank {hello.rank} is not a client rank of this run (1..{max(expected)})"
    if hello.fingerprint != fingerprint:
        return join_config.refusal(key_names, fingerprint, hello.fingerprint)
    return None


def client_join(MPI, port: str, secret: str, rank: int, fingerprint: str, turn,
                on_joined: Optional[Callable[[handshake.Verdict], None]] = None):
    """Rank k >= 1: connects, proves itself and checks the server's proof, then follows the
    server's joining of the others. `turn` (a context manager yielding the turn's nonce) is held
    from Connect until this client is merged."""
    with turn as turn_nonce:
        try:
            inter = MPI.COMM_SELF.Connect(port)
        except MPI.Exception as exc:  # the server is gone, or its host unreachable from here
            raise GaveUp(f"rank {rank}: could not connect to the published port ({exc.Get_error_string()})",
                         hint="check that the server still runs and that this host can reach its host; "
                              "then start the server and the clients again") from None
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
                                 "directory is shared with others, use a private one") from None
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
