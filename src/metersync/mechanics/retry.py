"""The vocabulary of failures that decides what happens next: retry soon, back off, stop, or
take the record as gone. Every target classifies its own errors into it; the engine acts on it
alone, never on a target's exception types."""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum


class ErrorKind(StrEnum):
    RETRYABLE = "retryable"  # try again soon (connection, timeout, 409, 429, 5xx)
    PERMANENT = "permanent"  # this item is wrong for the target; retry after backoff
    FATAL = "fatal"  # nothing will work (bad credentials): stop the run
    GONE = "gone"  # the record no longer exists (a delete's goal, or an update's end)


@dataclass(frozen=True)
class TargetError:
    kind: ErrorKind
    message: str
    throttled: bool = False  # a 429: the limiter slows down
    request_id: str | None = None


def kind_of_status(status: int) -> ErrorKind:
    """What an HTTP status alone says, for answers the API gave no more specific reason for:
    credentials refused stop the run; a timeout, a conflict, a lock, a 429 or a server error
    pass; anything else is this item's own problem."""
    if status in (401, 403):
        return ErrorKind.FATAL
    if status == 429 or status >= 500 or status in (408, 409, 423):
        return ErrorKind.RETRYABLE
    return ErrorKind.PERMANENT
