"""An event's time: RFC 3339 with a time zone, strictly, as integer microseconds since the epoch.

Not `metersync.times.parse_rfc3339`, which reads the timestamps metersync and its partners
write: it takes whatever `datetime.fromisoformat` takes ("2026-01-01T12:00Z" without seconds,
the week date "2026-W01-1T12:00:00Z", "20260101T120000Z", any separator), yet refuses the
lower-case `t` and `z` that RFC 3339 allows. Events come from any producer, so their shape is
checked against RFC 3339 first, and each refusal says why.
"""

from __future__ import annotations

import re
from datetime import UTC, datetime, timedelta
from typing import Any

from metersync.times import rfc3339_seconds
from metersync.usage.ingest._reasons import Rejected, kind_of, quote

EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
ONE_US = timedelta(microseconds=1)
# RFC 3339's date-time (section 5.6), with the space separator its note allows. The shape is
# checked here; datetime.fromisoformat then checks the values (month 13, hour 24, …), and would
# on its own accept far more than RFC 3339 (week dates, no zone, no seconds).
_RFC3339 = re.compile(
    r"\d{4}-\d{2}-\d{2}[Tt ]\d{2}:\d{2}:\d{2}(?:\.\d+)?(?:[Zz]|[+-]\d{2}:\d{2})", re.ASCII
)

# Events stamped further ahead than this are a producer's clock, not usage: Stripe takes meter
# events at most 5 minutes ahead, and a window in the future would wait for it indefinitely.
FUTURE_LIMIT_US = 86_400 * 1_000_000


def event_time_us(value: Any) -> int:
    """An RFC 3339 time with a zone, as integer microseconds since the epoch (UTC).

    Digits past the microsecond (Go's RFC3339Nano) are cut off, not rounded, so an event never
    moves into the next window.
    """
    if not isinstance(value, str):
        raise Rejected(f"time must be an RFC 3339 string, got {kind_of(value)}")
    if _RFC3339.fullmatch(value) is None:
        raise Rejected(_bad_time(value))
    try:
        moment = datetime.fromisoformat(value)
    except ValueError:
        moment = _lenient_time(value)
    return (moment - EPOCH) // ONE_US


def _lenient_time(value: str) -> datetime:
    # RFC 3339 allows a lower-case t and z, which fromisoformat does not; anything else that
    # fails here has the right shape and a value out of range (month 13, hour 24, second 60).
    try:
        return datetime.fromisoformat(value.upper())
    except ValueError as exc:
        raise Rejected(f"{_bad_time(value)}: {exc}") from None


def _bad_time(value: str) -> str:
    return (
        f"time {quote(value, 60)} is not an RFC 3339 time with a time zone, "
        'such as "2026-01-01T12:00:00Z"'
    )


def below_floor(time_us: int, floor_us: int) -> str:
    """Why an event timed before the retention floor is refused: its month was pruned, and a
    copy of it stored then is gone, so it could no longer be told apart from a duplicate."""
    return (
        f"time {rfc3339_seconds(time_us // 1_000_000)} is before the retention floor "
        f"{rfc3339_seconds(floor_us // 1_000_000)}: usage before it was pruned "
        "(`metersync usage prune`) and takes no new events"
    )
