"""Errors a user can fix, as opposed to bugs.

A `UserError` ends the program with exit code 2 and its message only (no
traceback): a wrong command line, config, world size, missing package or data.
Anything else is a bug or a runtime failure and is reported with its traceback.
"""


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
    """The config (YAML file plus --set overrides) is invalid; lists every problem."""

    def __init__(self, problems):
        self.problems = list(problems)
        lines = "\n".join(f"  - {p}" for p in self.problems)
        super().__init__(f"invalid configuration ({len(self.problems)} problem(s)):\n{lines}")


class WorldSizeError(UserError):
    """The number of MPI processes does not match the dataset's centres."""


class RankMismatchError(UserError):
    """--rank given under mpirun disagrees with this process's MPI rank (only this rank knows)."""
