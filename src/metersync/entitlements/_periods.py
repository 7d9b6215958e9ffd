"""Usage periods: an anchor and an interval, repeated.

An entitlement's usage resets at anchor + n·interval for every whole n, before the anchor as
well as after it. A boundary is computed from the anchor each time, never from the previous
boundary, so that months clamp to their last day and come back: an anchor on January 31 gives
February 28 (29 in a leap year), then March 31, not March 28.

The interval is one of OpenMeter's names (DAY, WEEK, MONTH, YEAR) or an ISO-8601 duration of
at least one hour; its calendar parts (years, months, days) move by the calendar, its time part
by the clock, all in UTC. Everything is at one-minute resolution, as the balance engine is: the
anchor is truncated to its minute, and `value_minute` rounds a moment up to the next one.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Final

import isodate
from dateutil.relativedelta import relativedelta

from metersync.errors import FieldProblem, InvalidInput

MINUTE: Final = timedelta(minutes=1)
_NAMED: Final = {"DAY": "P1D", "WEEK": "P1W", "MONTH": "P1M", "YEAR": "P1Y"}
_SHORTEST: Final = timedelta(hours=1)


@dataclass(frozen=True)
class Interval:
    """An interval in calendar parts and a clock part: what anchor + n·interval adds n times."""

    months: int  # years count as 12 months
    days: int
    seconds: int

    @classmethod
    def parse(cls, text: str, *, field: str = "interval") -> Interval:
        """DAY, WEEK, MONTH, YEAR or an ISO-8601 duration of at least an hour (PT1H, P2W,
        P1M15D); anything else is InvalidInput naming `field` and the value."""
        iso = _NAMED.get(text.upper(), text)
        try:
            parsed = isodate.parse_duration(iso)
        except (isodate.ISO8601Error, ValueError):
            raise _invalid(
                field,
                f"{text!r} is neither DAY, WEEK, MONTH, YEAR nor an ISO-8601 duration"
                " (e.g. PT1H, P1D, P1M)",
            ) from None
        if isinstance(parsed, isodate.Duration):
            months = int(parsed.years) * 12 + int(parsed.months)
            if months != parsed.years * 12 + parsed.months:
                raise _invalid(field, f"{text!r} has a fraction of a month or year")
            rest = parsed.tdelta
        else:
            months, rest = 0, parsed
        interval = cls(months, rest.days, rest.seconds + rest.microseconds // 1_000_000)
        if rest.microseconds % 1_000_000 or interval.seconds % 60:
            raise _invalid(field, f"{text!r} is not a whole number of minutes")
        if min(interval.months, interval.days, interval.seconds) < 0:
            raise _invalid(field, f"{text!r} is negative")
        if interval.months == 0 and timedelta(interval.days, interval.seconds) < _SHORTEST:
            raise _invalid(field, f"{text!r} is shorter than an hour (PT1H at least)")
        return interval

    @property
    def fixed(self) -> timedelta | None:
        """The interval as a fixed length, when it has no month in it."""
        return None if self.months else timedelta(self.days, self.seconds)

    def times(self, n: int) -> relativedelta:
        return relativedelta(months=n * self.months, days=n * self.days, seconds=n * self.seconds)

    @property
    def iso(self) -> str:
        """The ISO-8601 form (OpenMeter's `intervalISO`)."""
        years, months = divmod(self.months, 12)
        hours, rest = divmod(self.seconds, 3600)
        date = "".join(
            f"{v}{unit}" for v, unit in ((years, "Y"), (months, "M"), (self.days, "D")) if v
        )
        time = "".join(f"{v}{unit}" for v, unit in ((hours, "H"), (rest // 60, "M")) if v)
        return "P" + date + (f"T{time}" if time else "") if date or time else "PT0S"

    @property
    def name(self) -> str:
        """OpenMeter's name for it (DAY, WEEK, MONTH, YEAR), else its ISO-8601 form."""
        return _NAMES.get(self, self.iso)


_NAMES: Final = {Interval.parse(iso): name for name, iso in _NAMED.items()}


@dataclass(frozen=True)
class Period:
    """[start, end): a usage period."""

    start: datetime
    end: datetime

    def __contains__(self, moment: datetime) -> bool:
        return self.start <= moment < self.end


@dataclass(frozen=True)
class UsagePeriod:
    """Boundaries at anchor + n·interval, n any whole number."""

    interval: Interval
    anchor: datetime

    @classmethod
    def of(cls, interval: str, anchor: datetime) -> UsagePeriod:
        if anchor.tzinfo is None:
            raise _invalid("anchor", f"{anchor.isoformat()} has no time zone")
        return cls(Interval.parse(interval), truncate_minute(anchor.astimezone(UTC)))

    def boundary(self, n: int) -> datetime:
        """anchor + n·interval, from the anchor: month ends clamp, and come back."""
        return self.anchor + self.interval.times(n)

    def index(self, moment: datetime) -> int:
        """The n of the period holding `moment`: boundary(n) ≤ moment < boundary(n + 1)."""
        fixed = self.interval.fixed
        if fixed is not None:
            return (moment - self.anchor) // fixed
        # An estimate from the calendar months between them, then a step or two to the exact n.
        months = (moment.year - self.anchor.year) * 12 + moment.month - self.anchor.month
        n = months // self.interval.months
        while self.boundary(n) > moment:
            n -= 1
        while self.boundary(n + 1) <= moment:
            n += 1
        return n

    def period_at(self, moment: datetime) -> Period:
        """The period holding `moment` (a boundary starts the period it opens)."""
        n = self.index(moment)
        return Period(self.boundary(n), self.boundary(n + 1))


def _invalid(field: str, problem: str) -> InvalidInput:
    return InvalidInput([FieldProblem(field, problem)])


def truncate_minute(moment: datetime) -> datetime:
    return moment.replace(second=0, microsecond=0)


def value_minute(moment: datetime) -> datetime:
    """The minute a value "at" `moment` is computed at: the next whole minute, unless `moment`
    is one (usage during a minute counts once that minute is over)."""
    truncated = truncate_minute(moment)
    return truncated if truncated == moment else truncated + MINUTE
