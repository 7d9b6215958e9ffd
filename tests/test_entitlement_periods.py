"""Usage periods of entitlements: anchor + n·interval, months clamped from the anchor, minute
resolution. Table-driven cases for the rules, properties for every moment and interval."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta, timezone

import pytest
from hypothesis import given
from hypothesis import strategies as st

from metersync.entitlements import Interval, Period, UsagePeriod, value_minute
from metersync.errors import InvalidInput


def at(text: str) -> datetime:
    return datetime.fromisoformat(text).replace(tzinfo=UTC)


@pytest.mark.parametrize(
    ("interval", "anchor", "boundaries"),
    [
        # A month-end anchor clamps in short months and comes back: from the anchor each time.
        (
            "MONTH",
            "2027-01-31T00:00",
            ["2027-01-31T00:00", "2027-02-28T00:00", "2027-03-31T00:00", "2027-04-30T00:00"],
        ),
        # A leap year's February holds the 29th.
        ("MONTH", "2028-01-31T10:30", ["2028-01-31T10:30", "2028-02-29T10:30", "2028-03-31T10:30"]),
        # February 29 yearly: the 28th in common years, the 29th again in the next leap year.
        (
            "YEAR",
            "2028-02-29T00:00",
            ["2028-02-29T00:00", "2029-02-28T00:00", "2030-02-28T00:00", "2031-02-28T00:00"],
        ),
        ("WEEK", "2027-01-04T09:00", ["2027-01-04T09:00", "2027-01-11T09:00", "2027-01-18T09:00"]),
        ("DAY", "2027-03-13T23:00", ["2027-03-13T23:00", "2027-03-14T23:00", "2027-03-15T23:00"]),
        ("PT1H", "2027-01-01T00:00", ["2027-01-01T00:00", "2027-01-01T01:00", "2027-01-01T02:00"]),
        # A calendar part and a clock part together: n months, then n half days.
        (
            "P1MT12H",
            "2027-01-31T00:00",
            ["2027-01-31T00:00", "2027-02-28T12:00", "2027-04-01T00:00", "2027-05-01T12:00"],
        ),
    ],
)
def test_boundaries_count_from_the_anchor(
    interval: str, anchor: str, boundaries: list[str]
) -> None:
    period = UsagePeriod.of(interval, at(anchor))
    assert [period.boundary(n) for n in range(len(boundaries))] == [at(b) for b in boundaries]


@pytest.mark.parametrize(
    ("interval", "anchor", "moment", "start", "end"),
    [
        ("MONTH", "2027-01-31T00:00", "2027-02-28T00:00", "2027-02-28T00:00", "2027-03-31T00:00"),
        ("MONTH", "2027-01-31T00:00", "2027-02-27T23:59", "2027-01-31T00:00", "2027-02-28T00:00"),
        # Before the anchor the periods run backwards the same way.
        ("MONTH", "2027-03-31T00:00", "2027-03-01T00:00", "2027-02-28T00:00", "2027-03-31T00:00"),
        ("MONTH", "2027-03-31T00:00", "2026-12-31T00:00", "2026-12-31T00:00", "2027-01-31T00:00"),
        ("DAY", "2027-01-01T06:00", "2026-12-30T05:59", "2026-12-29T06:00", "2026-12-30T06:00"),
        ("YEAR", "2028-02-29T00:00", "2029-03-01T00:00", "2029-02-28T00:00", "2030-02-28T00:00"),
    ],
)
def test_the_period_holding_a_moment(
    interval: str, anchor: str, moment: str, start: str, end: str
) -> None:
    period = UsagePeriod.of(interval, at(anchor))
    assert period.period_at(at(moment)) == Period(at(start), at(end))


def test_the_anchor_is_taken_at_its_minute_and_in_utc() -> None:
    paris = timezone(timedelta(hours=1))
    period = UsagePeriod.of("DAY", datetime(2027, 1, 1, 1, 0, 42, 5, tzinfo=paris))
    assert period.anchor == at("2027-01-01T00:00")


def test_a_value_at_a_moment_is_taken_at_the_next_whole_minute() -> None:
    assert value_minute(at("2027-01-01T10:00:00")) == at("2027-01-01T10:00")
    assert value_minute(at("2027-01-01T10:00:00.000001")) == at("2027-01-01T10:01")
    assert value_minute(at("2027-01-01T10:00:59")) == at("2027-01-01T10:01")


@pytest.mark.parametrize(
    ("text", "name", "iso"),
    [
        ("DAY", "DAY", "P1D"),
        ("week", "WEEK", "P7D"),
        ("P1M", "MONTH", "P1M"),
        ("P12M", "YEAR", "P1Y"),
        ("PT1H", "PT1H", "PT1H"),
        ("P1Y2M3DT4H5M", "P1Y2M3DT4H5M", "P1Y2M3DT4H5M"),
    ],
)
def test_intervals_read_and_written_as_openmeter_names_them(text: str, name: str, iso: str) -> None:
    interval = Interval.parse(text)
    assert (interval.name, interval.iso) == (name, iso)
    assert Interval.parse(interval.iso) == interval


@pytest.mark.parametrize(
    ("text", "problem"),
    [
        ("PT59M", "shorter than an hour"),
        ("PT0S", "shorter than an hour"),
        ("PT1H30S", "whole number of minutes"),
        ("P0.5M", "fraction of a month"),
        ("-P1D", "negative"),
        ("FORTNIGHT", "neither DAY, WEEK, MONTH, YEAR nor an ISO-8601 duration"),
        ("", "neither DAY, WEEK, MONTH, YEAR nor an ISO-8601 duration"),
    ],
)
def test_a_bad_interval_is_refused_naming_the_field_and_the_value(text: str, problem: str) -> None:
    with pytest.raises(InvalidInput) as raised:
        Interval.parse(text, field="usagePeriod.interval")
    message = str(raised.value)
    assert message.startswith(f"usagePeriod.interval: {text!r}") and problem in message


def test_an_anchor_without_a_time_zone_is_refused() -> None:
    with pytest.raises(InvalidInput, match="anchor: 2027-01-01T00:00:00 has no time zone"):
        UsagePeriod.of("DAY", datetime(2027, 1, 1))


def _valid(iso: str) -> bool:
    try:
        Interval.parse(iso)
    except InvalidInput:
        return False
    return True


intervals = st.one_of(
    st.sampled_from(["DAY", "WEEK", "MONTH", "YEAR"]),
    st.builds(
        lambda months, days, minutes: f"P{months}M{days}DT{minutes}M",
        st.integers(0, 14),
        st.integers(0, 40),
        st.integers(0, 3000),
    ).filter(_valid),
)
moments = st.datetimes(
    min_value=datetime(2000, 1, 1), max_value=datetime(2100, 1, 1), timezones=st.just(UTC)
)


@given(interval=intervals, anchor=moments, moment=moments)
def test_every_moment_lies_in_exactly_one_period_between_consecutive_boundaries(
    interval: str, anchor: datetime, moment: datetime
) -> None:
    period = UsagePeriod.of(interval, anchor)
    n = period.index(moment)
    held = period.period_at(moment)
    assert held == Period(period.boundary(n), period.boundary(n + 1))
    assert moment in held and held.start < held.end
    # The neighbours do not hold it, and they meet this period exactly.
    assert moment not in Period(period.boundary(n - 1), held.start)
    assert moment not in Period(held.end, period.boundary(n + 2))
    # The period's own start opens it.
    assert period.period_at(held.start) == held
