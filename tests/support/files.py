"""Looking at a directory tree the way an attacker's victim would: nothing followed."""
import os
from pathlib import Path


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
