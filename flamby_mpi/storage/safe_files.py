"""Files in a directory a run owns: written whole or not at all, never through a link, read within bounds.

Everything flamby-mpi writes under an output, checkpoint, log or rendezvous directory goes through
this module, so that a planted link, a FIFO or a full disk is handled in one place:
- Paths are a `root` (the directory the user named: it may itself be a link, the user's choice)
  and a relative path below it. Every component below the root is made and entered one at a time,
  relative to its parent's descriptor, with O_NOFOLLOW|O_DIRECTORY: a link or a file where a
  directory should be is refused (`UnsafePathError`), never followed, never pruned through.
- `write_atomic` writes a fresh temporary file, created with O_CREAT|O_EXCL|O_NOFOLLOW under an
  unpredictable name beside the target, then renames it over the target (a rename replaces a link
  at the target's name, it never writes through it). The data is hashed on the way (sha256, size);
  `durable=True` also fsyncs the file and its directory. Nothing else writes a whole file.
  `direct=True` (a checkpoint's tensors) writes a file of several MiB with O_DIRECT, past the page
  cache, where the file system allows it (`_DirectFile`).
- `open_append` opens a log for appending, O_NOFOLLOW, never truncating.
- A write the file system refuses for lack of room or rights (ENOSPC, EDQUOT, EROFS, EACCES, EPERM)
  raises `StorageError` naming the file, after its partial temporary file is removed.
- `open_regular` / `read_bounded` open with O_NOFOLLOW|O_NONBLOCK (a FIFO does not block the open),
  require a regular file (fstat of the open file, not a prior stat of the path) and read at most
  a cap: a link to /dev/zero, a FIFO or a huge file is refused, never read without end.
"""
from __future__ import annotations

import errno
import fcntl
import hashlib
import json
import mmap
import os
import secrets
import stat
import threading
from pathlib import Path, PurePosixPath
from typing import BinaryIO, Callable, Dict, Iterable, Iterator, List, Optional, Tuple, Union

from ..exit.errors import UserError, plain

# Errors of the file system's room or rights: the user can fix them (free space, a quota, a mount).
STORAGE_ERRNOS = {
    errno.ENOSPC: "no space left on the device",
    errno.EDQUOT: "disk quota exceeded",
    errno.EROFS: "read-only file system",
    errno.EACCES: "permission denied",
    errno.EPERM: "operation not permitted",
}
# sysexits' EX_IOERR: a job script can tell a full disk (free space, then --resume) from a config mistake (2).
EXIT_STORAGE = 74

_ROOT_FLAGS = os.O_RDONLY | os.O_DIRECTORY | getattr(os, "O_CLOEXEC", 0)  # the root may be a link: the user's choice
_DIR_FLAGS = _ROOT_FLAGS | os.O_NOFOLLOW
_NEW_FILE_FLAGS = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | getattr(os, "O_CLOEXEC", 0)
_READ_FLAGS = os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | getattr(os, "O_CLOEXEC", 0)

Writer = Callable[[BinaryIO], object]


class StorageError(UserError):
    """A write the file system refused (full disk, quota, read-only, rights): which file, why, what next."""

    exit_code = EXIT_STORAGE

    def __init__(self, path: Union[str, Path], error: OSError, doing: str = "writing"):
        self.path, self.errno = Path(path), error.errno
        reason = STORAGE_ERRNOS.get(error.errno, error.strerror or type(error).__name__)
        super().__init__(f"{doing} {plain(path)} failed: {reason} (errno {errno.errorcode.get(error.errno, '?')})",
                         hint="free space on that file system (or fix its quota, mount or permissions), then "
                              "continue the run with --resume")


class DirectoryRemoved(UserError):
    """The directory a file was being written in was removed meanwhile (by hand, by a clean-up of
    the output directory): the run cannot go on writing there. run_directory: the run's whole
    output directory went."""

    exit_code = 1

    def __init__(self, path: Union[str, Path], run_directory: Union[str, Path, None] = None):
        path = Path(path)
        if run_directory is None:
            message = f"{plain(path.parent)} was removed while {plain(path.name)} was being written in it"
        else:
            message = (f"the run's output directory {plain(run_directory)} was removed while the run was "
                       f"going (writing {plain(path)})")
        super().__init__(message, hint="something deleted the run's output directory (or a part of it) while "
                                       "the run was going: start the run again, in a directory nothing else "
                                       "cleans up")


# The output directory of the run this process is in, once taken (run_directory.claim): a write
# below it never makes it again. Made again, it would hold a run without its lock, its checkpoints
# or its config, which another job could take meanwhile.
_run_directory: Optional[str] = None


def set_run_directory(path: Union[str, Path, None]):
    global _run_directory
    _run_directory = None if path is None else os.path.abspath(os.path.expanduser(str(path)))


def _refuse_to_remake_the_run_directory(root: str, relative):
    run = _run_directory
    if run is None or os.path.lexists(run):
        return
    path = os.path.abspath(root)
    if path == run or path.startswith(run.rstrip(os.sep) + os.sep):
        writing = Path(path).joinpath(*_parts(relative)) if relative is not None else Path(path)
        raise DirectoryRemoved(writing, run_directory=run)


class UnsafePathError(UserError):
    """A link, or something other than a directory or regular file, where the run keeps its files."""

    def __init__(self, path: Union[str, Path], what: str):
        self.found = f"{plain(path)} {what}"  # "<path> is a link": for a reader's own wording
        super().__init__(f"{plain(path)} {what}: flamby-mpi never follows a link or writes through one inside "
                         "a run's directory",
                         hint="remove it (or choose another output directory); nothing was written there")


def is_storage_error(error: BaseException) -> bool:
    return isinstance(error, OSError) and error.errno in STORAGE_ERRNOS


def _parts(relative: Union[str, PurePosixPath, Path]) -> List[str]:
    """The components of a path below a root ("." and empty ones dropped, as pathlib does); a path
    that is absolute, empty or climbs ("..") raises ValueError. A split, not pathlib: a checkpoint
    part passes some ten paths here per cut, and pathlib's parsing was a tenth of its writer's CPU."""
    text = str(relative)
    parts = [p for p in text.split("/") if p not in ("", ".")]
    if not parts or ".." in parts or text.startswith("/"):
        raise ValueError(f"not a path below a run's directory: {relative!r}")
    return parts


def _file_name(name: str) -> str:
    """name, when it names a file of a directory (no "/", not "", "." or ".."); ValueError otherwise."""
    if _parts(name) != [name]:  # _parts raises ValueError for "", ".", ".." itself
        raise ValueError(f"not a file name: {name!r}")
    return name


def _parent(parts: List[str]) -> Optional[str]:
    """The directory of a path below a root, relative to it (None: the root itself)."""
    return "/".join(parts[:-1]) if len(parts) > 1 else None


def open_dir(root: Union[str, Path], relative: Union[str, Path, None] = None, create: bool = False,
             mode: int = 0o777) -> int:
    """A descriptor of root/relative, each component below root entered without following a link
    (made first when create and missing). The caller closes it. Raises UnsafePathError,
    FileNotFoundError, or StorageError when a directory cannot be made. Every directory is opened
    first and made only when missing: a checkpoint part opens several per cut, mostly existing."""
    root_text = os.path.expanduser(str(root))
    try:
        try:
            fd = os.open(root_text, _ROOT_FLAGS)
        except (FileNotFoundError, NotADirectoryError):
            if not create:
                raise
            _refuse_to_remake_the_run_directory(root_text, relative)
            # FileExistsError when a file is there: the callers name it ("is a file").
            Path(root_text).mkdir(parents=True, exist_ok=True)
            fd = os.open(root_text, _ROOT_FLAGS)
    except NotADirectoryError:
        raise UnsafePathError(Path(root_text), "is not a directory") from None
    except OSError as exc:
        if is_storage_error(exc):
            raise StorageError(Path(root_text), exc, "making the directory") from None
        raise
    parts = _parts(relative) if relative is not None else []
    try:
        for i, part in enumerate(parts):
            try:
                try:
                    child = os.open(part, _DIR_FLAGS, dir_fd=fd)
                except FileNotFoundError:
                    if not create:
                        raise
                    try:
                        os.mkdir(part, mode, dir_fd=fd)
                    except FileExistsError:  # made meanwhile (another thread, another rank)
                        pass
                    except FileNotFoundError:  # the directory entered last was removed meanwhile
                        _refuse_to_remake_the_run_directory(root_text, relative)
                        raise DirectoryRemoved(Path(root_text).joinpath(*parts[:i + 1])) from None
                    except OSError as exc:
                        if is_storage_error(exc):
                            raise StorageError(Path(root_text).joinpath(*parts[:i + 1]), exc,
                                               "making the directory") from None
                        raise
                    child = os.open(part, _DIR_FLAGS, dir_fd=fd)
            except (NotADirectoryError, OSError) as exc:
                if isinstance(exc, NotADirectoryError) or exc.errno == errno.ELOOP:
                    raise UnsafePathError(Path(root_text).joinpath(*parts[:i + 1]),
                                          "is a link or not a directory") from None
                raise
            os.close(fd)
            fd = child
    except BaseException:
        os.close(fd)
        raise
    return fd


class _HashingFile:
    """A file being written that hashes what goes through it (torch.save streams into it, so a
    model of several GB is never held twice in memory). It keeps the OSError a write raised: a
    writer may wrap it in its own error (torch.save raises "RuntimeError: unexpected pos" for a
    full disk), and the caller still has to tell a full disk from a bug. No fileno(): a writer
    that finds one (PIL) would write past the hash."""

    def __init__(self, handle):
        self.handle, self.digest, self.size = handle, hashlib.sha256(), 0
        self.error: Optional[OSError] = None

    def write(self, data) -> int:
        self.digest.update(data)
        self.size += memoryview(data).nbytes
        try:
            return self.handle.write(data)
        except OSError as exc:
            self.error = self.error or exc
            raise

    def flush(self):
        try:
            self.handle.flush()
        except OSError as exc:
            self.error = self.error or exc
            raise


_DIRECT_ALIGN = 4096  # O_DIRECT's alignment of memory, offset and length: the largest logical block in use
_DIRECT_CHUNK = 4 << 20  # what one O_DIRECT write takes; a file smaller than this is written as before
# From what size a caller asks for direct: below it, the page cache costs little and _DirectFile's
# Python-level writes (torch.save makes about 70 for a small part) would cost more.
DIRECT_MIN_BYTES = _DIRECT_CHUNK
_bounce = threading.local()  # each writing thread's aligned buffer, made once (fresh pages cost, reused ones not)


def _set_flag(fd: int, flag: int, on: bool) -> bool:
    flags = fcntl.fcntl(fd, fcntl.F_GETFL)
    try:
        fcntl.fcntl(fd, fcntl.F_SETFL, flags | flag if on else flags & ~flag)
        return True
    except OSError:  # EINVAL: this file system has no direct I/O
        return False


class _DirectFile:
    """A new file written past the page cache (O_DIRECT) once it reaches _DIRECT_CHUNK bytes.

    Why: on the virtual machines these jobs run on, filling fresh page-cache pages costs about 3 ms
    of CPU per MB (0.35 s for a 100 MB part, hash included, against 0.12 s once a file's pages are
    reused), taken from the cores the next round trains on; an O_DIRECT write is a DMA from one
    aligned buffer reused by the thread, 0.02 s of CPU per 100 MB. The bytes are those a buffered
    write gives. Where the file system refuses O_DIRECT (at the switch, or at a write: EINVAL), the
    file goes on through the page cache; the last partial block is always written that way."""

    def __init__(self, fd: int):
        self.fd = fd
        self.direct: Optional[bool] = None  # decided when the first chunk is full
        self.filled = 0
        buffer = getattr(_bounce, "buffer", None)
        if buffer is None:
            buffer = _bounce.buffer = mmap.mmap(-1, _DIRECT_CHUNK)  # page-aligned
        self.view = memoryview(buffer)

    def fileno(self) -> int:
        return self.fd

    def write(self, data) -> int:
        data = memoryview(data).cast("B")
        if self.direct is False:
            self._write_all(data)
            return len(data)
        done = 0
        while done < len(data):
            take = min(_DIRECT_CHUNK - self.filled, len(data) - done)
            self.view[self.filled:self.filled + take] = data[done:done + take]
            self.filled += take
            done += take
            if self.filled == _DIRECT_CHUNK:
                if self.direct is None:
                    self.direct = _set_flag(self.fd, os.O_DIRECT, True)
                self._write_all(self.view)
                self.filled = 0
                if self.direct is False:  # refused: the rest goes straight through the page cache
                    self._write_all(data[done:])
                    return len(data)
        return len(data)

    def _write_all(self, data):
        written = 0
        while written < len(data):
            try:
                written += os.write(self.fd, data[written:])
            except OSError as exc:
                # EINVAL: O_DIRECT accepted at the switch, not by the write (or a short write left
                # the offset unaligned): the rest is written through the page cache.
                if exc.errno != errno.EINVAL or not self.direct:
                    raise
                self.direct = False
                _set_flag(self.fd, os.O_DIRECT, False)

    def flush(self):
        """Writes what is buffered: whole blocks as before, the last partial one without O_DIRECT."""
        if self.filled:
            whole = self.filled // _DIRECT_ALIGN * _DIRECT_ALIGN if self.direct else 0
            if whole:
                self._write_all(self.view[:whole])
            if self.direct:
                self.direct = False
                _set_flag(self.fd, os.O_DIRECT, False)
            self._write_all(self.view[whole:self.filled])
            self.filled = 0

    def close(self):
        self.view.release()
        os.close(self.fd)

    def __enter__(self):
        return self

    def __exit__(self, *exc_info):
        self.close()


def _new_temporary(dir_fd: int, name: str, mode: int) -> Tuple[str, int]:
    while True:  # unpredictable: a name planted in advance (a link) is never the one used
        tmp = f".{name}.{secrets.token_hex(8)}.tmp"
        try:
            return tmp, os.open(tmp, _NEW_FILE_FLAGS, mode, dir_fd=dir_fd)
        except FileExistsError:
            continue


def write_atomic(root: Union[str, Path], relative: Union[str, Path], data: Union[bytes, Writer],
                 durable: bool = False, mode: int = 0o644, direct: bool = False) -> Dict[str, object]:
    """Writes root/relative whole (data, or writer(file) for streamed content) through a fresh
    temporary file and a rename; a reader, a kill or a full disk never leaves half of it under
    its name. durable: the file is synced before the rename, its directory after it. direct: past
    the page cache where possible (_DirectFile). Returns {"sha256", "bytes"} of what was written."""
    parts = _parts(relative)
    with Directory(root, _parent(parts), create=True) as directory:
        entry = directory.write_atomic(parts[-1], data, durable=durable, mode=mode, direct=direct)
        if durable:  # the rename survives a crash of the host once the directory is synced
            directory.sync()
        return entry


class Directory:
    """root/relative entered once (as open_dir does: no link followed below root) for several
    files written there and one sync: a checkpoint part's two files and their round directory
    open the directory once instead of once per file and once more for the sync."""

    def __init__(self, root: Union[str, Path], relative: Union[str, Path, None] = None, create: bool = False):
        self.fd = open_dir(root, relative, create=create)
        self.root, self.relative = root, relative

    def path(self, name: str) -> Path:
        """The file's path as a message shows it."""
        base = Path(os.path.expanduser(str(self.root)))
        return base.joinpath(*_parts(self.relative), name) if self.relative is not None else base / name

    def write_atomic(self, name: str, data: Union[bytes, Writer], durable: bool = False, mode: int = 0o644,
                     direct: bool = False) -> Dict[str, object]:
        """write_atomic of one file of this directory; durable syncs the file (not the directory:
        sync() once after the last file)."""
        _file_name(name)
        tmp, hashing = None, None
        try:
            tmp, fd = _new_temporary(self.fd, name, mode)
            with (_DirectFile(fd) if direct and hasattr(os, "O_DIRECT") else os.fdopen(fd, "wb")) as handle:
                hashing = _HashingFile(handle)
                if callable(data):
                    data(hashing)
                else:
                    hashing.write(data)
                hashing.flush()
                if durable:  # before the rename: a crash never leaves the name on an unwritten file
                    os.fsync(handle.fileno())
            os.replace(tmp, name, src_dir_fd=self.fd, dst_dir_fd=self.fd)
            tmp = None
            return {"sha256": hashing.digest.hexdigest(), "bytes": hashing.size}
        except Exception as exc:  # re-raised: a writer may have wrapped the file's own OSError
            seen = hashing.error if hashing is not None and hashing.error is not None else exc
            if is_storage_error(seen):
                raise StorageError(self.path(name), seen) from None
            if isinstance(seen, FileNotFoundError):  # opened by descriptor: only its removal makes it vanish
                raise DirectoryRemoved(self.path(name)) from None
            raise
        finally:
            if tmp is not None:
                try:
                    os.unlink(tmp, dir_fd=self.fd)
                except OSError:
                    pass

    def sync(self):
        """fsync of the directory: the renames done in it survive a crash of the host."""
        try:
            os.fsync(self.fd)
        except OSError:  # some file systems refuse a directory's fsync; the files themselves are synced
            pass

    def close(self):
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1

    def __enter__(self):
        return self

    def __exit__(self, *exc_info):
        self.close()


def open_append(root: Union[str, Path], relative: Union[str, Path], mode: int = 0o644, *,
                new: bool = False) -> BinaryIO:
    """root/relative opened for appending (created if absent), never through a link, never truncated.
    new: the file must not exist yet (FileExistsError if it does)."""
    parts = _parts(relative)
    dir_fd = open_dir(root, _parent(parts), create=True)
    target = Path(os.path.expanduser(str(root))).joinpath(*parts)
    try:  # O_NONBLOCK: a FIFO planted there fails at once (ENXIO) instead of waiting for a reader
        fd = os.open(parts[-1], os.O_WRONLY | os.O_CREAT | os.O_APPEND | os.O_NOFOLLOW | os.O_NONBLOCK
                     | (os.O_EXCL if new else 0) | getattr(os, "O_CLOEXEC", 0), mode, dir_fd=dir_fd)
    except OSError as exc:
        if exc.errno == errno.ELOOP:
            raise UnsafePathError(target, "is a link") from None
        if exc.errno in (errno.ENXIO, errno.EISDIR):
            raise UnsafePathError(target, "is not a regular file") from None
        if is_storage_error(exc):
            raise StorageError(target, exc, "opening") from None
        raise
    finally:
        os.close(dir_fd)
    if not stat.S_ISREG(os.fstat(fd).st_mode):
        os.close(fd)
        raise UnsafePathError(target, "is not a regular file")
    os.set_blocking(fd, True)
    return os.fdopen(fd, "ab")


def open_regular(path: Union[str, Path], cap: int, root: Union[str, Path, None] = None) -> BinaryIO:
    """A regular file opened for reading without following a link or blocking on a FIFO; raises
    UnsafePathError for anything else, ValueError when it holds more than cap bytes, OSError
    (FileNotFoundError...) as the system says. With root, path is relative to it and no component
    below root is followed either."""
    if root is not None:
        parts = _parts(path)
        dir_fd = open_dir(root, _parent(parts))
        shown_path, name = Path(root).joinpath(*parts), parts[-1]
    else:
        dir_fd, shown_path, name = None, Path(path), str(path)
    try:
        fd = os.open(name, _READ_FLAGS, dir_fd=dir_fd)
    except OSError as exc:
        if exc.errno == errno.ELOOP:
            raise UnsafePathError(shown_path, "is a link") from None
        raise
    finally:
        if dir_fd is not None:
            os.close(dir_fd)
    info = os.fstat(fd)
    if not stat.S_ISREG(info.st_mode):
        os.close(fd)
        raise UnsafePathError(shown_path, "is not a regular file")
    if info.st_size > cap:
        os.close(fd)
        raise ValueError(f"{plain(shown_path)}: {info.st_size} bytes, more than the {cap} expected at most")
    os.set_blocking(fd, True)
    return os.fdopen(fd, "rb")


def read_bounded(path: Union[str, Path], cap: int, root: Union[str, Path, None] = None) -> bytes:
    """The whole content of a regular file of at most cap bytes, read from the open file (a file that
    grows past cap after the open is refused too)."""
    with open_regular(path, cap, root) as handle:
        data = handle.read(cap + 1)
    if len(data) > cap:
        raise ValueError(f"{plain(path)}: more than the {cap} bytes expected at most")
    return data


def load_json(data: bytes, max_depth: int = 32):
    """JSON from bytes already bounded in size, nested at most max_depth deep (ValueError otherwise)."""
    depth = deepest = 0
    in_string = escaped = False
    for byte in data:  # a linear scan: the C parser's own limit is the interpreter's recursion limit
        if in_string:
            if escaped:
                escaped = False
            elif byte == 0x5C:  # backslash
                escaped = True
            elif byte == 0x22:
                in_string = False
        elif byte == 0x22:
            in_string = True
        elif byte in (0x5B, 0x7B):
            depth += 1
            deepest = max(deepest, depth)
            if deepest > max_depth:
                raise ValueError(f"JSON nested more than {max_depth} deep")
        elif byte in (0x5D, 0x7D):
            depth -= 1
    return json.loads(data.decode("utf-8"))


def entries(root: Union[str, Path], relative: Union[str, Path, None] = None) -> Iterator[Tuple[str, bool]]:
    """(name, is a real directory) of what root/relative holds, links reported as not directories;
    nothing when it does not exist."""
    try:
        fd = open_dir(root, relative)
    except FileNotFoundError:
        return iter(())
    try:
        with os.scandir(fd) as scan:
            found = [(entry.name, entry.is_dir(follow_symlinks=False)) for entry in scan]
    finally:
        os.close(fd)
    return iter(found)


def remove(root: Union[str, Path], relative: Union[str, Path]) -> bool:
    """Unlinks root/relative (a file or a link: never what a link points to). Returns whether
    something was removed."""
    parts = _parts(relative)
    try:
        dir_fd = open_dir(root, _parent(parts))
    except (FileNotFoundError, UnsafePathError):
        return False
    try:
        return _unlink(parts[-1], dir_fd)
    finally:
        os.close(dir_fd)


def remove_files(root: Union[str, Path], relative: Union[str, Path], names: Iterable[str],
                 also: Optional[Callable[[str], bool]] = None) -> List[str]:
    """Unlinks names of the directory root/relative (files or links, never what a link points to),
    then the files there whose name also() accepts, then the directory itself once empty; the
    directory entered once, not once per name. A directory that is missing, or a link, is left
    alone. Returns the names removed. Every name is checked before anything is removed."""
    parts = _parts(relative)
    names = [_file_name(name) for name in names]
    try:
        parent = open_dir(root, _parent(parts))
    except (FileNotFoundError, UnsafePathError):
        return []
    removed: List[str] = []
    try:
        try:
            fd = os.open(parts[-1], _DIR_FLAGS, dir_fd=parent)
        except (FileNotFoundError, NotADirectoryError):  # missing; a link or a file (O_NOFOLLOW|O_DIRECTORY)
            return removed
        except OSError as exc:
            if exc.errno == errno.ELOOP:  # a link, where a system says so instead
                return removed
            raise
        try:
            for name in names:
                if _unlink(name, fd):
                    removed.append(name)
            if also is not None:
                with os.scandir(fd) as scan:
                    found = [entry.name for entry in scan if not entry.is_dir(follow_symlinks=False)
                             and also(entry.name)]
                removed += [name for name in found if _unlink(name, fd)]
        finally:
            os.close(fd)
        try:  # rmdir never follows a link, and removes only an empty directory
            os.rmdir(parts[-1], dir_fd=parent)
        except OSError:  # other files still there, or gone already
            pass
    finally:
        os.close(parent)
    return removed


def _unlink(name: str, dir_fd: int) -> bool:
    try:
        os.unlink(name, dir_fd=dir_fd)
        return True
    except (FileNotFoundError, IsADirectoryError):
        return False


def remove_tree(root: Union[str, Path], relative: Union[str, Path]) -> None:
    """Deletes root/relative and everything below it without following any link inside it (a link
    is removed as a link). Missing: nothing to do."""
    parts = _parts(relative)
    try:
        parent = open_dir(root, _parent(parts))
    except (FileNotFoundError, UnsafePathError):
        return
    try:
        _remove_below(parent, parts[-1])
    finally:
        os.close(parent)


def _remove_below(parent_fd: int, name: str):
    try:
        info = os.stat(name, dir_fd=parent_fd, follow_symlinks=False)
    except FileNotFoundError:
        return
    if stat.S_ISDIR(info.st_mode):
        fd = os.open(name, _DIR_FLAGS, dir_fd=parent_fd)
        try:
            with os.scandir(fd) as scan:
                children = [entry.name for entry in scan]
            for child in children:
                _remove_below(fd, child)
        finally:
            os.close(fd)
        os.rmdir(name, dir_fd=parent_fd)
    else:
        os.unlink(name, dir_fd=parent_fd)


def file_exists(root: Union[str, Path], relative: Union[str, Path]) -> bool:
    """Whether root/relative is a regular file reached without following a link below root."""
    parts = _parts(relative)
    try:
        dir_fd = open_dir(root, _parent(parts))
    except (OSError, UnsafePathError):
        return False
    try:
        return stat.S_ISREG(os.stat(parts[-1], dir_fd=dir_fd, follow_symlinks=False).st_mode)
    except OSError:
        return False
    finally:
        os.close(dir_fd)

