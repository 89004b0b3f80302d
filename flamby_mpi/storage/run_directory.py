"""A run owns its output directory: one job at a time in it, and never over another run's files.

Rank 0 takes an exclusive lock on `<output_dir>/.flamby-mpi.lock` right after the run id is
agreed and before any rank writes there, and holds it until its process ends (flock: the kernel
releases it when the process exits, however it exits). The lock file records the holder (host,
pid, start time, run id, and a random token of the job that rank 0 shares with every rank):
- a second job on the directory is refused (exit 2) naming the job that holds it;
- a rank on another host than rank 0 checks its own host's copy of the directory: on a shared
  file system it finds the lock held with its own job's token and goes on; on a disk of its
  own it takes that copy's lock (a second rank beside it finds its token there);
- starting afresh (no --resume) where an earlier run left files (results.json: finished; else
  config.yaml, logs, checkpoints...: interrupted) is refused, naming what is there and the two
  ways on: --resume, or --overwrite, which deletes those files once the new run holds the lock;
- a resumed run removes the earlier run's final outputs (results.json first) before training,
  so that results.json always belongs to the run that wrote it last: a run killed before its
  end never leaves one behind.
Only the names a run writes count and are deleted: other entries (the rendezvous directory,
start_local.sh's terminals/, files of the user's) are neither a run nor ever removed here.

The state (`inspect`) is also what `python -m flamby_mpi.restart` decides from; this module
imports neither torch nor MPI.
"""
from __future__ import annotations

import errno
import fcntl
import json
import os
import re
import secrets
import stat
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Dict, List, Optional, Tuple

from ..exit.errors import UserError, plain
from . import safe_files
from .safe_files import StorageError, UnsafePathError

LOCK_NAME = ".flamby-mpi.lock"
RESULTS = "results.json"
# What a run writes at its end, results.json first: once it is gone, no file here claims the run finished.
FINAL_OUTPUTS = (RESULTS, "global_model.pt", "results.csv", "metrics.csv", "rounds.csv", "report.png")
RUN_FILES = frozenset(FINAL_OUTPUTS + ("config.yaml",))
RUN_DIRS = frozenset({"logs", "checkpoints", "tensorboard"})
# A temporary file of a run's own, left by a kill during a write (safe_files' names, and older ones).
_TEMPORARY = re.compile(r"^\.(?P<name>.+?)\.(?:[0-9a-f]{16}\.tmp|tmp[0-9]*)$")
# The checkpoint layout a run leaves (flamby_mpi/checkpoints/checkpoint.py writes it and takes these
# names from here): checkpoints/round_<r>/, complete once its manifest is there.
ROUND_DIR = re.compile(r"^round_([0-9]{1,9})$")
MANIFEST = "manifest.json"
_RECORD_CAP = 64 * 1024  # a holder record is a few hundred bytes
_RESULTS_CAP = 64 * 1024 * 1024
# A rank that finds its host's copy locked waits this long for the holder's record to name its job
# (another rank of this job, beside it, may have taken the lock an instant before writing it).
RECORD_WAIT_S = 10.0
_UNSUPPORTED = {errno.ENOLCK, errno.EOPNOTSUPP, errno.ENOSYS}


def _when(unix: float) -> str:
    return time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(unix))


def new_token() -> str:
    return secrets.token_hex(16)


@dataclass(frozen=True)
class Holder:
    """Who holds a directory's lock: what the lock file records."""
    host: str
    pid: int
    started: float  # unix time
    token: str  # the job's, the same on every rank of it
    run_id: str

    def describe(self) -> str:
        return f"run {plain(self.run_id)} on host {plain(self.host)}, pid {self.pid}, started {_when(self.started)}"

    def to_bytes(self) -> bytes:
        return (json.dumps(asdict(self)) + "\n").encode()

    @classmethod
    def from_bytes(cls, data: bytes) -> Optional["Holder"]:
        try:
            record = safe_files.load_json(data, max_depth=2)
            holder = cls(host=record["host"], pid=record["pid"], started=record["started"],
                         token=record["token"], run_id=record["run_id"])
        except (ValueError, UnicodeDecodeError, KeyError, TypeError):
            return None
        kinds = [(holder.host, str), (holder.pid, int), (holder.started, (int, float)), (holder.token, str),
                 (holder.run_id, str)]
        return holder if all(isinstance(v, k) and not isinstance(v, bool) for v, k in kinds) else None


class DirectoryBusy(UserError):
    """Another job holds the directory's lock."""

    def __init__(self, output_dir: Path, holder: Optional[Holder], on: str = ""):
        who = holder.describe() if holder is not None else "a job whose record in the lock file cannot be read"
        super().__init__(f"{plain(output_dir)}{on} is in use by another job ({who}); two jobs in one output "
                         "directory would overwrite each other's checkpoints and results",
                         hint="wait for that job to end, or give this run another --run_id (or "
                              "common_args.output_dir)")


class DirectoryLock:
    """The lock of one output directory, held by this process while it is open."""

    def __init__(self, output_dir: Path, fd: Optional[int], supported: bool = True, created: bool = False):
        self.output_dir, self.fd, self.supported = output_dir, fd, supported
        # The lock file was made by this take: no run had ever been in the directory.
        self.created = created

    @classmethod
    def take(cls, output_dir: Path) -> Optional["DirectoryLock"]:
        """The directory's lock (the directory made if missing), or None when another job holds it.
        Raises UnsafePathError for a link or a non-file at the lock's name, StorageError when the
        directory cannot be made."""
        try:
            dir_fd = safe_files.open_dir(output_dir, create=True)
        except FileExistsError:  # mkdir(exist_ok=True) over a file
            raise UserError(f"the output directory {plain(output_dir)} is a file",
                            hint="choose another common_args.output_dir (or --run_id)") from None
        except OSError as exc:  # what the checks before could not see: /proc, an NFS root squash, an ACL
            if safe_files.is_storage_error(exc):
                raise StorageError(output_dir, exc, "making") from None
            raise UserError(f"the output directory {plain(output_dir)} cannot be made or opened "
                            f"({exc.strerror or type(exc).__name__})",
                            hint="choose another common_args.output_dir (or --run_id)") from None
        try:
            # Opened, never created anew under a temporary name: the lock lives on this one inode.
            fd, created = _open_lock_file(dir_fd)
        except OSError as exc:
            if exc.errno == errno.ELOOP:
                raise UnsafePathError(output_dir / LOCK_NAME, "is a link") from None
            if exc.errno == errno.EISDIR:
                raise UnsafePathError(output_dir / LOCK_NAME, "is not a regular file") from None
            if safe_files.is_storage_error(exc):
                raise StorageError(output_dir / LOCK_NAME, exc, "opening") from None
            raise
        finally:
            os.close(dir_fd)
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            os.close(fd)
            raise UnsafePathError(output_dir / LOCK_NAME, "is not a regular file")
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            return None
        except OSError as exc:
            if exc.errno in _UNSUPPORTED:  # e.g. Lustre mounted without flock: go on, unguarded, and say so
                return cls(output_dir, fd, supported=False, created=created)
            os.close(fd)
            raise
        return cls(output_dir, fd, created=created)

    def record(self, holder: Holder):
        """Writes the holder into the lock file, in place: the lock is on this inode, a rename would
        leave it behind."""
        data = holder.to_bytes()
        try:
            os.ftruncate(self.fd, 0)
            os.pwrite(self.fd, data, 0)
        except OSError as exc:
            if safe_files.is_storage_error(exc):
                raise StorageError(self.output_dir / LOCK_NAME, exc) from None
            raise

    def release(self):
        if self.fd is not None:
            os.close(self.fd)  # closing the last descriptor of the open file releases the flock
            self.fd = None

    def withdraw(self):
        """A refused job leaves the directory as it found it: the lock file goes if this take made
        it (while still held, so no other job holds it meanwhile), then the lock is released."""
        if self.created and self.fd is not None:
            try:
                safe_files.remove(self.output_dir, LOCK_NAME)
            except OSError:
                pass  # a lock file left behind only marks the directory as a run's
        self.release()


def _open_lock_file(dir_fd: int) -> Tuple[int, bool]:
    """(the lock file's descriptor, whether this call created it), never through a link."""
    flags = os.O_RDWR | os.O_NOFOLLOW | os.O_NONBLOCK | getattr(os, "O_CLOEXEC", 0)
    while True:
        try:
            return os.open(LOCK_NAME, flags | os.O_CREAT | os.O_EXCL, 0o644, dir_fd=dir_fd), True
        except FileExistsError:  # a link there too: the open below refuses it (ELOOP)
            pass
        try:
            return os.open(LOCK_NAME, flags, dir_fd=dir_fd), False
        except FileNotFoundError:  # removed in between (a refused job withdrawing): make it then
            continue


def read_holder(output_dir: Path, token: Optional[str] = None, wait_s: float = 0.0) -> Optional[Holder]:
    """The holder the lock file records (None: none readable). With wait_s, reads again until the
    record names `token` (or, without a token, until there is a record) or wait_s has passed."""
    deadline = time.monotonic() + wait_s
    while True:
        try:
            holder = Holder.from_bytes(safe_files.read_bounded(LOCK_NAME, _RECORD_CAP, root=output_dir))
        except (OSError, ValueError, UserError):
            holder = None
        settled = holder is not None and (token is None or holder.token == token)
        if settled or time.monotonic() >= deadline:
            return holder
        time.sleep(0.05)


@dataclass
class DirectoryState:
    """What an output directory holds: kind is "empty", "finished", "interrupted" or "foreign"
    (files of a run's names where no run ever was: refused, never deleted)."""
    kind: str
    what: str = ""  # e.g. "a finished run (results.json of 2026-12-05 14:02:11, 15 rounds)"
    entries: List[str] = field(default_factory=list)  # the run's names present, results.json first
    newest_checkpoint: Optional[int] = None  # the newest round with a manifest


def newest_checkpoint(output_dir: Path) -> Optional[int]:
    """The newest round_<r> of output_dir that holds a manifest (a complete cut, as far as its name
    says; resume checks the rest), reached without following a link; None when there is none."""
    rounds = []
    try:
        found = list(safe_files.entries(output_dir, "checkpoints"))
    except (NotADirectoryError, UnsafePathError):  # a link or a file there: no checkpoint of ours
        found = []
    for name, is_dir in found:
        match = ROUND_DIR.match(name)
        if match and is_dir and safe_files.file_exists(output_dir, f"checkpoints/{name}/{MANIFEST}"):
            rounds.append(int(match.group(1)))
    return max(rounds) if rounds else None


def _is_run_entry(name: str, is_dir: bool) -> bool:
    if name in RUN_DIRS:
        return True
    if name in RUN_FILES:
        return not is_dir
    match = _TEMPORARY.match(name)
    return bool(match) and match.group("name") in RUN_FILES and not is_dir


def owning_run(path: Path) -> Optional[Tuple[Path, str]]:
    """(the run's directory, the part of it) when path lies inside a directory a run owns
    (`logs/`, `checkpoints/`, `tensorboard/`) of a directory holding a run, else None. A run
    made there would mix its files with that run's, its `--overwrite` or pruning would delete
    them. Looked up along the path as written and along the path with its links resolved."""
    written = Path(os.path.abspath(os.path.expanduser(str(path))))
    for chain in (written, Path(os.path.realpath(written))):
        for part in (chain, *chain.parents):
            # The lock file marks a run's directory (every run takes it, and it stays): a user's
            # own `logs/` beside a config.yaml is not a run.
            if part.name in RUN_DIRS and os.path.isfile(part.parent / LOCK_NAME):
                return part.parent, part.name
    return None


def _finished_summary(output_dir: Path) -> str:
    parts = []
    try:
        parts.append(f"results.json of {_when(os.stat(output_dir / RESULTS, follow_symlinks=False).st_mtime)}")
        results = safe_files.load_json(safe_files.read_bounded(RESULTS, _RESULTS_CAP, root=output_dir))
        rounds = results.get("rounds_completed") if isinstance(results, dict) else None
        if isinstance(rounds, int) and not isinstance(rounds, bool):
            parts.append(f"{rounds} rounds")
    except (OSError, ValueError, UnicodeDecodeError, UserError):
        pass
    return ", ".join(parts) or "results.json"


def inspect(output_dir: Path, lock_was_there: Optional[bool] = None) -> DirectoryState:
    """The state of output_dir from the names a run writes there (nothing else counts), and from its
    lock file, which every run leaves (lock_was_there: whether it was there before this job took
    the lock; None: look now). Names of a run's files with neither a lock file nor a complete
    checkpoint are someone else's: "foreign", never deleted by --overwrite."""
    try:
        found = [(name, is_dir) for name, is_dir in safe_files.entries(output_dir) if _is_run_entry(name, is_dir)]
    except (NotADirectoryError, UnsafePathError):
        found = []
    if not found:
        return DirectoryState("empty")
    names = sorted((name for name, _ in found), key=lambda n: (n != RESULTS, n))
    newest = newest_checkpoint(output_dir)
    if lock_was_there is None:
        lock_was_there = safe_files.file_exists(output_dir, LOCK_NAME)
    if not lock_was_there and newest is None:
        return DirectoryState("foreign", f"files named as a run's files are ({', '.join(names[:6])}) but no "
                                         f"flamby-mpi run (no {LOCK_NAME})", names)
    if names[0] == RESULTS and safe_files.file_exists(output_dir, RESULTS):
        return DirectoryState("finished", f"a finished run ({_finished_summary(output_dir)})", names, newest)
    if newest is not None:
        what = f"an interrupted run (checkpoint of round {newest})"
    else:
        what = f"an interrupted run without a complete checkpoint ({', '.join(names[:6])})"
    return DirectoryState("interrupted", what, names, newest)


def clear_run(output_dir: Path, state: DirectoryState):
    """Deletes the earlier run's files (results.json first), never following a link; the lock
    file and everything that is not a run's stay."""
    for name in state.entries:
        safe_files.remove_tree(output_dir, name)


def discard_final_outputs(output_dir: Path) -> List[str]:
    """A resumed run: the earlier end's outputs go before training, results.json first."""
    return [name for name in FINAL_OUTPUTS if safe_files.remove(output_dir, name)]


def refusal(output_dir: Path, state: DirectoryState, on: str = "") -> UserError:
    if state.kind == "foreign":
        return UserError(f"{plain(output_dir)}{on} holds {state.what}: a run there would write over them",
                         hint="give this run another --run_id (or common_args.output_dir), or move those files "
                              "away; --overwrite deletes only an earlier run's files, so it does not apply")
    if state.kind == "finished":
        ways = "to run it again, add --overwrite (its files are deleted)"
        if state.newest_checkpoint is not None:  # a run with checkpoints off has nothing to continue from
            ways += "; to continue it with more rounds, --resume with a larger train_args.comm_round"
    else:
        start_afresh = "to start afresh, add --overwrite (its files are deleted)"
        ways = (f"to continue it, add --resume; {start_afresh}" if state.newest_checkpoint is not None
                else f"it stopped before its first complete checkpoint, so it cannot be continued: {start_afresh}")
    return UserError(f"{plain(output_dir)}{on} holds {state.what}",
                     hint=f"{ways}; or give this run another --run_id (or common_args.output_dir)")


# The locks this process holds: open until the process ends (or release_all, for runs in process).
_HELD: List[DirectoryLock] = []


def release_all():
    safe_files.set_run_directory(None)
    while _HELD:
        _HELD.pop().release()


@dataclass
class Claim:
    """This process's outcome of `claim`: an exit code (0: go on) and what to say once logging is up."""
    code: int = 0
    notes: List[str] = field(default_factory=list)


def _take_and_check(output_dir: Path, holder: Holder, resume: bool, overwrite: bool,
                    on: str = "") -> Tuple[Optional[DirectoryLock], List[str]]:
    """Takes output_dir's lock for holder's job and checks what is there. Returns (the lock, or None
    when this job already holds it elsewhere: a shared file system; notes). Raises UserError."""
    # --resume where no run ever was (a mistyped run id): refused before the directory is made,
    # so that the same command without --resume is not then refused as an interrupted run.
    if resume and not on and not os.path.lexists(os.path.expanduser(str(output_dir))):
        raise _nothing_to_resume(output_dir, "does not exist")
    lock = DirectoryLock.take(output_dir)
    if lock is None:
        # Rank 0's token is new: any record will do. Another host's rank waits for its own job's.
        current = read_holder(output_dir, holder.token, RECORD_WAIT_S) if on else read_holder(output_dir, None, 1.0)
        if current is not None and current.token == holder.token:
            return None, []  # our own job: rank 0 on a shared file system, or a rank beside us
        raise DirectoryBusy(output_dir, current, on)
    try:
        current = read_holder(output_dir) if on else None
        if current is not None and current.token == holder.token:
            _HELD.append(lock)  # a shared file system whose locks do not reach across hosts
            return None, []
        state = inspect(output_dir, lock_was_there=not lock.created)
        problem = _state_refusal(output_dir, state, resume, overwrite, on)
        if problem is not None:
            raise problem
        lock.record(holder)
        notes = [] if lock.supported else [
            f"{output_dir}: the file system does not support locks (flock), so a second job in this "
            "output directory cannot be refused: make sure there is none"]
        if state.kind != "empty" and overwrite:
            clear_run(output_dir, state)
            notes.append(f"--overwrite: the earlier run in {output_dir}{on} was deleted: {state.what}")
    except BaseException:
        lock.withdraw()
        raise
    _HELD.append(lock)
    return lock, notes


def _state_refusal(output_dir: Path, state: DirectoryState, resume: bool, overwrite: bool,
                   on: str = "") -> Optional[UserError]:
    """Why a job with these options cannot start in a directory in this state, or None."""
    if state.kind == "foreign" or (state.kind != "empty" and not (resume or overwrite)):
        return refusal(output_dir, state, on)
    if state.kind == "empty" and resume and not on:
        return _nothing_to_resume(output_dir, "holds no run (no checkpoint, no results.json)")
    return None


def refusal_ahead(output_dir: Path, resume: bool, overwrite: bool) -> Optional[UserError]:
    """What taking the directory would refuse, from what is there now, taking and making nothing:
    a server started alone (one terminal per rank) asks before it waits for its clients, which
    took up to comm_args.join_timeout_s before the refusal was said. The claim still decides."""
    if not os.path.lexists(os.path.expanduser(str(output_dir))):
        return _nothing_to_resume(output_dir, "does not exist") if resume else None
    return _state_refusal(output_dir, inspect(output_dir), resume, overwrite)


def _nothing_to_resume(output_dir: Path, why: str) -> UserError:
    return UserError(f"--resume: {plain(output_dir)} {why}: there is no run there to continue",
                     hint="check --run_id / common_args.output_dir, or start without --resume")


def claim(plan, transport) -> Claim:
    """Every rank, once the run id is agreed and before anything is written in the output directory:
    rank 0 takes it (lock, state, --overwrite) and tells every rank its verdict and the job's token;
    a rank on another host then checks its own host's copy; one allgather ends every rank with exit 2
    if any of them is refused, rank 0 saying why once."""
    if transport.rank == 0:
        holder = Holder(transport.host, os.getpid(), time.time(), new_token(), plan.run_id)
        try:
            _, notes = _take_and_check(plan.output_dir, holder, plan.resume, plan.overwrite)
            verdict: Dict = {"host": transport.host, "token": holder.token, "notes": notes}
        except UserError as error:
            verdict = {"error": str(error), "exit_code": error.exit_code}
    else:
        verdict = None
    verdict = transport.agree(verdict)
    from ..exit import failures

    if "error" in verdict:
        if transport.rank == 0:
            failures.report(failures.message(verdict["error"], "rank 0"))
        return Claim(verdict["exit_code"])
    claim_here = Claim(notes=list(verdict["notes"]) if transport.rank == 0 else [])
    problem = None
    if transport.host != verdict["host"]:
        holder = Holder(transport.host, os.getpid(), time.time(), verdict["token"], plan.run_id)
        try:
            _, notes = _take_and_check(plan.output_dir, holder, plan.resume, plan.overwrite,
                                       on=f" (host {plain(transport.host)}'s copy)")
            claim_here.notes += notes
        except UserError as error:
            problem = (transport.rank, str(error), error.exit_code)
    problems = [p for p in transport.allgather(problem) if p is not None]
    if not problems:
        safe_files.set_run_directory(plan.output_dir)  # here on every rank: never made again by a write
        return claim_here
    if transport.rank == 0:
        for text, ranks in failures.by_text((rank, text) for rank, text, _ in problems).items():
            failures.report(failures.message(text, "rank " + ", ".join(map(str, ranks))))
    return Claim(max(code for _, _, code in problems))
