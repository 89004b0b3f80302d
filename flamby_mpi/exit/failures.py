"""One way to say that a run failed, and to end it.

Every failure after the command line is read is one line (plus the original
traceback for a bug) in one template, shown once on stderr and kept in the
rank's log file:

    flamby-mpi: error on rank K (ROLE, host H): WHAT

Before any rank exists (a wrong command line or config) the `on rank ...` part
is left out. User mistakes say what to do next and carry no traceback; bugs
carry the traceback of the rank that failed, once.
"""
from __future__ import annotations

import logging
import sys
import traceback
from typing import Callable, Dict, Iterable, List, Optional, Tuple

from ..registry import role_of

EXIT_FAILURE = 1
EXIT_USER_ERROR = 2


def where(rank: int, host: str) -> str:
    return f"rank {rank} ({role_of(rank)}, host {host})"


def message(text: str, at: Optional[str] = None) -> str:
    return f"flamby-mpi: error{f' on {at}' if at else ''}: {text}"


def bug(what: str) -> str:
    """The text for an unexpected exception being handled: what failed, then its traceback."""
    return f"{what}; ending the whole job. Original error:\n{traceback.format_exc()}"


def by_text(problems: Iterable[Tuple[int, str]]) -> Dict[str, List[int]]:
    """(rank or centre, message) pairs as message -> who has it, in first-seen order: a problem
    several share is said once, naming them."""
    grouped: Dict[str, List[int]] = {}
    for who, text in problems:
        grouped.setdefault(text, []).append(who)
    return grouped


_reports = 0  # in this process: a rank that ends with a code but said nothing says where to look


def reported() -> bool:
    return _reports > 0


def report(text: str):
    """Shown once on the console (stderr) and kept in the rank's log file once it is set up."""
    global _reports
    _reports += 1
    print(text, file=sys.stderr, flush=True)
    if logging.getLogger().handlers:  # the root logger writes the rank's log file (logs.py)
        # Outside flamby_mpi: not echoed to stderr (logs.FAILURE_LOGGER: a full log stays silent on it).
        logging.getLogger("flamby-mpi.failure").error(text)


def fail(text: str, code: int, at: Optional[str] = None, end: Optional[Callable[[int], object]] = None):
    """Reports text in the template, then ends as `end(code)` says (abort the job, exit the
    process); without `end`, returns code for the caller to exit with."""
    report(message(text, at))
    return end(code) if end is not None else code
