"""Where the run's secret comes from, and which secret files a rank trusts.

Separately started ranks prove to each other that they hold one secret
(handshake.py); it never crosses the network. In order of precedence:
1. the environment variable FLAMBY_MPI_SECRET, given to every rank out of band;
2. `comm_args.secret_file`: a file every rank reads (the server creates it,
   mode 0600, when it does not exist yet), for example in a private home directory;
3. by default, `<rendezvous_dir>/<run_id>.secret`, made afresh by the server for
   each run (mode 0600) and removed at its end.

A rank trusts a secret file only if it is a regular file (not a link), belongs
to the rank's own user and is neither readable nor writable by anyone else:
whoever can write a shared rendezvous directory could otherwise plant a secret
of their own there and pose as this run's server.
"""
from __future__ import annotations

import os
import secrets
import stat
from pathlib import Path
from typing import Optional

from ..exit.errors import UserError

ENV_VAR = "FLAMBY_MPI_SECRET"
MIN_CHARS = 16
_MAX_FILE_BYTES = 4096

_OUT_OF_BAND = (f"give every rank the secret out of band instead: comm_args.secret_file pointing to a "
                f"private file, or the environment variable {ENV_VAR}")


def from_environment() -> Optional[str]:
    value = os.environ.get(ENV_VAR)
    if value is None:
        return None
    value = value.strip()
    if len(value) < MIN_CHARS:
        raise UserError(f"{ENV_VAR} is set but holds {len(value)} characters; a secret needs at least "
                        f"{MIN_CHARS}",
                        hint="use a long random value, e.g. "
                             "export FLAMBY_MPI_SECRET=$(python -c 'import secrets; print(secrets.token_hex(32))')")
    return value


def read_trusted(path: Path) -> str:
    """The secret in `path`, if the file is this user's own and private; else a UserError saying why."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK)
    except FileNotFoundError:
        raise UserError(
            f"the run's secret file {path} does not exist",
            hint="start the server first (it creates the file), or create it yourself: "
                 f"(umask 077; python -c 'import secrets; print(secrets.token_hex(32))' > {path})") from None
    except OSError as exc:  # ELOOP: a symbolic link, which someone else may have put there
        raise UserError(f"cannot open the run's secret file {path} as a regular file: {exc.strerror}",
                        hint="the secret file must be a plain file of your own, not a link; "
                             + _OUT_OF_BAND) from None
    with os.fdopen(fd, "rb") as f:
        st = os.fstat(f.fileno())
        if not stat.S_ISREG(st.st_mode):
            raise UserError(f"refusing the run's secret file {path}: it is not a regular file",
                            hint=_OUT_OF_BAND)
        if st.st_uid != os.geteuid():
            raise UserError(f"refusing the run's secret file {path}: it belongs to uid {st.st_uid}, not to "
                            f"you (uid {os.geteuid()}); anyone who can write its directory could have put it "
                            "there", hint=_OUT_OF_BAND)
        if st.st_mode & 0o077:
            raise UserError(f"refusing the run's secret file {path}: others may read or write it "
                            f"(mode {stat.S_IMODE(st.st_mode):04o})", hint=f"chmod 600 {path}")
        data = f.read(_MAX_FILE_BYTES + 1)
    try:
        value = data.decode("utf-8").strip()
    except UnicodeDecodeError:
        value = ""
    if len(data) > _MAX_FILE_BYTES or len(value) < MIN_CHARS:
        raise UserError(f"the run's secret file {path} does not hold a usable secret "
                        f"(text of {MIN_CHARS} to {_MAX_FILE_BYTES} characters)",
                        hint=f"(umask 077; python -c 'import secrets; print(secrets.token_hex(32))' > {path})")
    return value


def create(path: Path) -> str:
    """A new random secret in a new file of mode 0600; never follows or replaces an existing entry."""
    value = secrets.token_hex(32)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(value + "\n")
    return value


def configured_file(secret_file: Optional[str]) -> Optional[Path]:
    return Path(os.path.expanduser(secret_file)) if secret_file else None


def for_server(per_run_file: Path, secret_file: Optional[str], announce) -> str:
    """The server's secret; writes the per-run file (or a missing configured one)."""
    value = from_environment()
    if value is not None:
        return value
    configured = configured_file(secret_file)
    if configured is None:
        return create(per_run_file)
    try:
        value = create(configured)
    except FileExistsError:
        return read_trusted(configured)
    except OSError as exc:
        raise UserError(f"cannot create the secret file {configured} (comm_args.secret_file): {exc.strerror}",
                        hint="point comm_args.secret_file to a file in an existing directory of your own") from None
    announce(f"created a new secret for this run in {configured} (comm_args.secret_file): every rank reads it")
    return value


def for_client(per_run_file: Path, secret_file: Optional[str]) -> str:
    value = from_environment()
    if value is not None:
        return value
    return read_trusted(configured_file(secret_file) or per_run_file)
