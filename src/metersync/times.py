"""Timestamps as metersync writes and reads them: RFC 3339 text, unix seconds, calendar months.

One home for these conversions, so that every wire format and every month boundary agree.
"""

from __future__ import annotations

import calendar
from datetime import UTC, datetime
from typing import Any


def rfc3339(moment: datetime) -> str:
    """OpenMeter's timestamp form: UTC, millisecond precision, `Z`."""
    return moment.astimezone(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def rfc3339_seconds(seconds: int) -> str:
    """Unix seconds as RFC 3339 text in UTC, to the second (`2026-01-01T00:00:00Z`)."""
    return datetime.fromtimestamp(seconds, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def parse_rfc3339(text: str) -> datetime:
    """RFC 3339 text (a `Z` or an offset) as an aware datetime; ValueError if it is not one."""
    moment = datetime.fromisoformat(text.replace("Z", "+00:00"))
    if moment.tzinfo is None:
        raise ValueError(f"{text!r} has no time zone")
    return moment


def epoch_seconds(text: Any) -> int:
    """RFC 3339 text as unix seconds; ValueError if it is not a timestamp."""
    return int(parse_rfc3339(str(text)).timestamp())


def epoch_seconds_or_zero(text: Any) -> int:
    """As epoch_seconds, but 0 for a missing or unreadable value: for answers whose timestamps
    only order records (the newest wins), where an unreadable one should lose, not fail."""
    if not text:
        return 0
    try:
        return epoch_seconds(text)
    except ValueError:
        return 0


def month_start(moment: int) -> int:
    """The calendar month (UTC) that holds `moment` (seconds): its first second."""
    day = datetime.fromtimestamp(moment, UTC)
    return calendar.timegm((day.year, day.month, 1, 0, 0, 0))


def month_end(start: int) -> int:
    """The first second after the calendar month (UTC) that starts at `start`."""
    day = datetime.fromtimestamp(start, UTC)
    days = calendar.monthrange(day.year, day.month)[1]
    return start + days * 86400


def month_label(start: int) -> str:
    """The calendar month (UTC) that holds `start` (seconds), as people write it: `2026-03`."""
    return datetime.fromtimestamp(start, UTC).strftime("%Y-%m")
