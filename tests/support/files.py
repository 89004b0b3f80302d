"""Looking at a directory tree the way an attacker's victim would: nothing followed."""
import os
from pathlib import Path
from typing import Optional


def snapshot(directory: Path) -> dict:
    """Every path below directory, links not followed: the bytes of files, the targets of links."""
    found = {}
    for path in sorted(Path(directory).rglob("*")):
        if path.is_symlink():
            found[str(path)] = ("link", os.readlink(path))
        elif path.is_file():
            found[str(path)] = ("file", path.read_bytes())
        else:
            found[str(path)] = ("dir", None)
    return found


HUGE = 30 * 1000 * 1000  # issue 18's 30 MB manifest


def plant_hostile(path: Path, kind: str, outside: Optional[Path] = None):
    """Replaces the file at path by a hostile one of the given kind; `outside` is where the
    link-to-valid-copy kind puts the copy."""
    original = path.read_bytes()
    path.unlink()
    if kind == "fifo":
        os.mkfifo(path)
    elif kind == "dev-zero-link":
        path.symlink_to("/dev/zero")
    elif kind == "huge":  # 30 MB of the file's own first bytes then zeros: too big, whatever it holds
        with open(path, "wb") as handle:
            handle.write(original)
            handle.truncate(HUGE)
    elif kind == "sparse-10GB":  # takes no room on the disk, says 10 GB
        with open(path, "wb") as handle:
            handle.truncate(10 * 1024 ** 3)
    elif kind == "deep":
        path.write_bytes(b"[" * 200_000 + b"]" * 200_000)
    elif kind == "link-to-valid-copy" and outside is not None:  # never followed, even to good data
        outside.write_bytes(original)
        path.symlink_to(outside)
    elif kind == "directory":
        path.mkdir()
    else:
        raise AssertionError(kind)
