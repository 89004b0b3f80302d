"""Errors a user can fix, as opposed to bugs.

A `UserError` ends the program with exit code 2 and its message only (no
traceback): a wrong command line, config, world size, missing package or data.
Anything else is a bug or a runtime failure and is reported with its traceback.

A value the user gave is written into a message with `shown()`: bounded in
size whatever the value (a megabyte string, a list that YAML aliases make
billions of items long), so that the message stays one short message; a name
(a path, a key) with `plain()`: as it is unless a newline or other control
character in it would break the message apart.
"""
import reprlib

_SHORT = reprlib.Repr()
_SHORT.maxstring = _SHORT.maxother = 80
_SHORT.maxlist = _SHORT.maxtuple = _SHORT.maxdict = _SHORT.maxset = 4
_SHORT.maxlevel = 2


def shown(value) -> str:
    """repr() of a value from the user, at most about a hundred characters."""
    if isinstance(value, int) and value.bit_length() > 256:  # repr() refuses over 4300 digits
        digits = int((value.bit_length() - 1) * 0.30103) + 1  # exact, or one short
        digits += abs(value) >= 10 ** digits
        return f"{'a negative' if value < 0 else 'an'} integer of {digits} digits"
    return _SHORT.repr(value)


def plain(text) -> str:
    """Text of the user's (a path, a key) as it is when short and printable, else as shown() writes
    it: a newline or an escape sequence in it cannot start a line of its own or redraw the terminal."""
    text = str(text)
    return text if 0 < len(text) <= 200 and text.isprintable() else shown(text)


def clip(text: str, limit: int = 200) -> str:
    """Text that may quote a value of the user's (an exception's message), cut to `limit` characters."""
    return text if len(text) <= limit else text[:limit - 3] + "..."


class UserError(Exception):
    """A problem the user can fix; the message says what to do next."""

    exit_code = 2

    def __init__(self, message: str, hint: str = ""):
        super().__init__(message)
        self.hint = hint

    def __str__(self) -> str:
        text = super().__str__()
        return f"{text}\nHINT: {self.hint}" if self.hint else text


class ConfigError(UserError):
    """The config (YAML file plus --set overrides) is invalid; lists every problem (the first
    MAX_SHOWN of them in the message: a file of 20000 unknown keys made a message of 7 MB)."""

    MAX_SHOWN = 20

    def __init__(self, problems):
        self.problems = list(problems)
        lines = [f"  - {p}" for p in self.problems[:self.MAX_SHOWN]]
        if len(self.problems) > self.MAX_SHOWN:
            lines.append(f"  - ... and {len(self.problems) - self.MAX_SHOWN} more")
        super().__init__(f"invalid configuration ({len(self.problems)} problem(s)):\n" + "\n".join(lines))


class WorldSizeError(UserError):
    """The number of MPI processes does not match the dataset's centres."""


class RankMismatchError(UserError):
    """--rank given under mpirun disagrees with this process's MPI rank (only this rank knows)."""


class PeerRefusalError(UserError):
    """Another rank of this job refused to start (it said why); this one ends with it."""
