"""The errors metersync raises on purpose, and the exit code each one maps to.

Every error a user can cause is one of these, carries a message that names the field or the
record at fault, and is turned into a one-line message plus an exit code by the CLI. Anything
else that escapes is a bug.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import IntEnum


class ExitCode(IntEnum):
    OK = 0
    SOME_FAILED = 1
    BAD_INPUT = 2
    LOCKED = 3
    MASS_DELETE_GUARD = 4


class MetersyncError(Exception):
    """Base class: a message meant for a person, and the exit code a one-shot run returns."""

    exit_code: ExitCode = ExitCode.BAD_INPUT

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message

    def __str__(self) -> str:
        return self.message


@dataclass(frozen=True)
class FieldProblem:
    """One invalid field: `field` is the dotted path in OpenMeter's JSON naming."""

    field: str
    problem: str

    def __str__(self) -> str:
        return f"{self.field}: {self.problem}" if self.field else self.problem


class InvalidInput(MetersyncError):
    """A record or argument that fails validation. Lists every problem found, not just the first."""

    def __init__(self, problems: list[FieldProblem], *, record: str | None = None) -> None:
        self.problems = problems
        self.record = record
        text = "; ".join(str(p) for p in problems)
        super().__init__(f"{record}: {text}" if record and text else (record or text))


class ConfigError(MetersyncError):
    """A setting that is missing, malformed or contradicts another."""


class NotFound(MetersyncError):
    """A key that names no live record; `tombstone` when it names a deleted one."""

    def __init__(self, message: str, *, tombstone: bool = False) -> None:
        super().__init__(message)
        self.tombstone = tombstone


class Conflict(MetersyncError):
    """A write that would break a catalog invariant (unique key, one customer per subject)."""


class TargetUnusable(MetersyncError):
    """A target refuses every call (credentials, permissions, its daily allowance): the run
    stops, and what it wrote before is kept. A configuration problem, not a failed item."""


class DatabaseUnavailable(MetersyncError):
    """The database cannot be reached or is not at the schema this version needs."""


class PreconditionFailed(MetersyncError):
    """A request about a record in a state that forbids it: an entitlement of a deleted
    customer, a subject with no customer (HTTP 412)."""
