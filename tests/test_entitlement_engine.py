"""Periods strung together: resets (programmatic and manual), rollover, recurrence, the value
at a minute, the burn-down history and snapshots. Table-driven cases with figures worked out by
hand (the comments say how), and properties checked against a minute-by-minute model written
here, not by the engine."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from itertools import pairwise

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from metersync.entitlements import (
    GrantTerms,
    HistorySegment,
    Interval,
    MeteredTerms,
    Period,
    Reset,
    UsagePeriod,
    history,
    state_at,
    value_at,
)

D = Decimal
T0 = datetime(2027, 1, 1, tzinfo=UTC)
Usage = Callable[[datetime, datetime], Decimal]


def at(text: str) -> datetime:
    return datetime.fromisoformat(text).replace(tzinfo=UTC)


class Recorder:
    """Usage given at whole minutes; records every read."""

    def __init__(self, events: dict[datetime, Decimal]) -> None:
        self.events = events
        self.calls: list[tuple[datetime, datetime]] = []

    def __call__(self, start: datetime, end: datetime) -> Decimal:
        assert start < end, f"a read of zero length at {start}"
        self.calls.append((start, end))
        return sum((v for t, v in self.events.items() if start <= t < end), D(0))


def usage(**events: int) -> Recorder:
    """usage(**{"2027-01-05T10:00": 30}): amounts at minutes."""
    return Recorder({at(t): D(v) for t, v in events.items()})


def g(gid: str, amount: int, effective: str = "2027-01-01T00:00", **kw: object) -> GrantTerms:
    kw.setdefault("priority", 1)
    return GrantTerms(
        id=gid,
        amount=D(amount),
        effective_at=at(effective),
        created_at=at(effective),
        **kw,  # type: ignore[arg-type]
    )


def terms(
    interval: str = "DAY",
    anchor: str = "2027-01-01T00:00",
    measure: str | None = None,
    **kw: object,
) -> MeteredTerms:
    return MeteredTerms(
        usage_period=UsagePeriod.of(interval, at(anchor)),
        measure_usage_from=at(measure or anchor),
        **kw,  # type: ignore[arg-type]
    )


# --- rollover -------------------------------------------------------------------------------


def test_rollover_at_a_month_end_anchor_clamps_up_to_min_and_down_to_max() -> None:
    # Periods Jan 31 → Feb 28 → Mar 31 → Apr 30 (month ends clamp, then come back).
    t = terms(
        "MONTH",
        "2027-01-31T00:00",
        grants=(
            g("a", 100, "2027-01-31T00:00", min_rollover=D(30), max_rollover=D(80)),
            g("b", 100, "2027-01-31T00:00", priority=2, max_rollover=D(40)),
        ),
    )
    use = usage(**{"2027-02-10T00:00": 90, "2027-03-15T00:00": 60})
    # Period 1: 90 burns a (priority 1) to 10; b untouched at 100.
    v = value_at(t, use, at("2027-02-27T23:59"))
    assert (dict(v.grant_balances), v.usage) == ({"a": D(10), "b": D(100)}, D(90))
    assert v.period == Period(at("2027-01-31T00:00"), at("2027-02-28T00:00"))
    # Reset Feb 28: a = min(80, max(10, 30)) = 30 (raised to min); b = min(40, max(100, 0)) = 40
    # (capped at max).
    v = value_at(t, use, at("2027-02-28T00:00"))
    assert (dict(v.grant_balances), v.usage, v.balance) == ({"a": D(30), "b": D(40)}, 0, D(70))
    assert v.period == Period(at("2027-02-28T00:00"), at("2027-03-31T00:00"))
    # Period 2: 60 burns a 30 → 0, then b 40 → 10. What the grants made available this period:
    # 10 left + 60 burnt = 70, the rolled-over balance.
    v = value_at(t, use, at("2027-03-30T12:00"))
    assert (dict(v.grant_balances), v.usage, v.total_available_grant_amount) == (
        {"a": D(0), "b": D(10)},
        D(60),
        D(70),
    )
    # Reset Mar 31: a = min(80, max(0, 30)) = 30; b = min(40, max(10, 0)) = 10.
    v = value_at(t, use, at("2027-03-31T00:00"))
    assert dict(v.grant_balances) == {"a": D(30), "b": D(10)}
    assert v.period == Period(at("2027-03-31T00:00"), at("2027-04-30T00:00"))


# --- overage ------------------------------------------------------------------------------


def test_a_grant_taking_effect_mid_period_absorbs_the_carried_overage() -> None:
    t = terms(grants=(g("base", 10), g("topup", 100, "2027-01-01T12:00")))
    use = usage(**{"2027-01-01T10:00": 25, "2027-01-01T12:30": 5})
    # 25 against base 10: base 0, overage 15; no access (a hard limit).
    v = value_at(t, use, at("2027-01-01T11:00"))
    assert (v.balance, v.overage, v.usage, v.has_access) == (0, D(15), D(25), False)
    # At 12:00 topup takes effect and pays the 15 first: 100 - 15 = 85.
    v = value_at(t, use, at("2027-01-01T12:00"))
    assert (dict(v.grant_balances), v.overage) == ({"base": 0, "topup": D(85)}, 0)
    # The grants made 10 + 100 available: 85 left + 10 + 15 burnt.
    assert v.total_available_grant_amount == D(110)
    # 12:30 burns 5 more of topup: 80; usage 30 in the period; still 110 made available.
    v = value_at(t, use, at("2027-01-01T13:00"))
    assert (v.balance, v.usage, v.overage, v.total_available_grant_amount) == (
        D(80),
        D(30),
        0,
        D(110),
    )


# --- recurrence -----------------------------------------------------------------------------


def test_recurrence_on_a_period_boundary_comes_after_the_rollover() -> None:
    # max_rollover 0: the rollover alone would leave 0; the recurrence after it restores 10.
    daily = g("daily", 10, recurrence=Interval.parse("DAY"), max_rollover=D(0))
    t = terms(grants=(daily,), preserve_overage_at_reset=True)
    use = usage(**{"2027-01-01T05:00": 14})
    # Jan 1: 14 against 10: 0 left, overage 4.
    v = value_at(t, use, at("2027-01-01T23:59"))
    assert (v.balance, v.overage) == (0, D(4))
    # Jan 2 00:00: rollover → 0, recurrence → 10, the preserved 4 paid from it → 6.
    v = value_at(t, use, at("2027-01-02T00:00"))
    assert (v.balance, v.overage, v.usage, v.total_available_grant_amount) == (D(6), 0, 0, D(10))
    # Without preserving the overage, the day starts with the full 10.
    v = value_at(replace(t, preserve_overage_at_reset=False), use, at("2027-01-02T00:00"))
    assert (v.balance, v.overage) == (D(10), 0)


def test_a_grant_recurs_from_when_it_takes_effect_not_from_the_period_start() -> None:
    # Takes effect at 05:30 (anchor of its hourly recurrence): recurs at 06:30, 07:30, …
    late = g("late", 10, "2027-01-01T05:30", recurrence=Interval.parse("PT1H"))
    t = terms(grants=(late,))
    use = usage(**{"2027-01-01T05:40": 4, "2027-01-01T06:40": 1})
    assert value_at(t, use, at("2027-01-01T06:29")).balance == D(6)  # 10 - 4
    assert value_at(t, use, at("2027-01-01T06:30")).balance == D(10)  # restored
    assert value_at(t, use, at("2027-01-01T07:00")).balance == D(9)  # 10 - 1


def test_recurrence_mid_period_restores_the_amount_and_cuts_a_segment() -> None:
    half = g("half", 8, recurrence=Interval.parse("PT12H"))
    t = terms(grants=(half,))
    use = usage(**{"2027-01-01T03:00": 5, "2027-01-01T13:00": 2})
    # 8 - 5 = 3 until noon, restored to 8 at noon, 8 - 2 = 6 after 13:00.
    assert value_at(t, use, at("2027-01-01T11:59")).balance == D(3)
    assert value_at(t, use, at("2027-01-01T12:00")).balance == D(8)
    v = value_at(t, use, at("2027-01-01T14:00"))
    # Usage 7 in the day; made available: 6 left + 7 burnt = 13 (8, then 5 of the recurrence).
    assert (v.balance, v.usage, v.total_available_grant_amount) == (D(6), D(7), D(13))
    segments = history(t, use, at("2027-01-01T00:00"), at("2027-01-02T00:00"))
    assert [(s.period.start, s.period.end) for s in segments] == [
        (at("2027-01-01T00:00"), at("2027-01-01T12:00")),
        (at("2027-01-01T12:00"), at("2027-01-02T00:00")),
    ]
    assert [(s.balance_at_start, dict(s.grant_usages), s.balance_at_end) for s in segments] == [
        (D(8), {"half": D(5)}, D(3)),
        (D(8), {"half": D(2)}, D(6)),
    ]


# --- manual resets --------------------------------------------------------------------------

RESET_AT = "2027-01-10T12:00"


@pytest.mark.parametrize(
    ("preserve", "default", "retain", "balance", "period_end"),
    [
        # g: 100 with min_rollover 40. Jan 5 uses 130: g 0, overage 30. The reset rolls g over
        # to max(0, 40) = 40; a preserved 30 is paid from it at once: 10.
        (True, False, True, D(10), "2027-02-01T00:00"),  # anchor kept: Feb 1 is still a reset
        (False, True, True, D(40), "2027-02-01T00:00"),  # forgiven: 40
        (True, False, False, D(10), "2027-02-10T12:00"),  # anchor moved to the reset
        (False, True, False, D(40), "2027-02-10T12:00"),
        (None, True, False, D(10), "2027-02-10T12:00"),  # the reset does not say: the default
        (None, False, True, D(40), "2027-02-01T00:00"),
    ],
)
def test_a_manual_reset_preserves_or_forgives_overage_and_retains_or_moves_the_anchor(
    preserve: bool | None, default: bool, retain: bool, balance: Decimal, period_end: str
) -> None:
    t = terms(
        "MONTH",
        grants=(g("g", 100, min_rollover=D(40)),),
        resets=(Reset(at(RESET_AT), preserve_overage=preserve, retain_anchor=retain),),
        preserve_overage_at_reset=default,
    )
    use = usage(**{"2027-01-05T00:00": 130, "2027-01-20T00:00": 1})
    v = value_at(t, use, at(RESET_AT))
    assert (v.balance, v.overage, v.usage) == (balance, 0, 0)
    assert v.period == Period(at(RESET_AT), at(period_end))
    assert v.last_reset == at(RESET_AT)
    # Before the reset: the month from its anchor, cut short by the reset.
    before = value_at(t, use, at("2027-01-10T11:59"))
    assert before.period == Period(at("2027-01-01T00:00"), at(RESET_AT))
    assert (before.balance, before.overage, before.usage) == (0, D(30), D(130))
    # The next period after the reset: from Feb 1 (anchor kept) or Feb 10 12:00 (moved).
    assert value_at(t, use, at(period_end)).period.start == at(period_end)


def test_a_manual_reset_on_a_boundary_is_one_reset_and_says_whether_overage_is_kept() -> None:
    t = terms(
        grants=(g("g", 10),),
        resets=(Reset(at("2027-01-02T00:00"), preserve_overage=True, retain_anchor=False),),
    )
    use = usage(**{"2027-01-01T08:00": 13})
    # 13 against 10: overage 3, kept by the reset (the entitlement alone would forgive it), then
    # paid from g's rollover (min(10, max(0, 0)) = 0): still 3.
    v = value_at(t, use, at("2027-01-02T00:00"))
    assert (v.balance, v.overage) == (0, D(3))
    assert v.period == Period(at("2027-01-02T00:00"), at("2027-01-03T00:00"))
    segments = history(t, use, at("2027-01-01T00:00"), at("2027-01-03T00:00"))
    assert [s.period.start for s in segments] == [at("2027-01-01T00:00"), at("2027-01-02T00:00")]


# --- expiry and void ------------------------------------------------------------------------


def test_an_expired_grant_is_dropped_at_the_reset() -> None:
    t = terms(
        grants=(
            g("exp", 10, expires_at=at("2027-01-02T00:00")),
            g("keep", 20, priority=2),
        )
    )
    use = usage(**{"2027-01-01T06:00": 4})
    assert dict(value_at(t, use, at("2027-01-01T23:59")).grant_balances) == {
        "exp": D(6),
        "keep": D(20),
    }
    # At the reset exp has expired: gone from the value and from the state carried on.
    assert dict(value_at(t, use, at("2027-01-02T00:00")).grant_balances) == {"keep": D(20)}
    assert dict(state_at(t, use, at("2027-01-02T00:00")).balances) == {"keep": D(20)}


def test_a_voided_grant_stops_burning() -> None:
    t = terms(
        grants=(g("v", 10, voided_at=at("2027-01-01T12:00")), g("keep", 20, priority=2)),
    )
    use = usage(**{"2027-01-01T10:00": 3, "2027-01-01T13:00": 5})
    # 3 from v (priority 1): 7. After the void at noon, 5 from keep: 15.
    v = value_at(t, use, at("2027-01-01T14:00"))
    assert (dict(v.grant_balances), v.usage) == ({"keep": D(15)}, D(8))
    # Made available: 15 left + 3 + 5 burnt (v's unburnt 7 no longer counts).
    assert v.total_available_grant_amount == D(23)


# --- access, measuring, minutes -------------------------------------------------------------


@pytest.mark.parametrize(("soft", "access"), [(True, True), (False, False)])
def test_a_soft_limit_keeps_access_at_zero_balance(soft: bool, access: bool) -> None:
    t = terms(grants=(g("g", 5),), is_soft_limit=soft)
    v = value_at(t, usage(**{"2027-01-01T01:00": 9}), at("2027-01-01T02:00"))
    assert (v.balance, v.overage, v.has_access) == (0, D(4), access)
    assert value_at(replace(t, grants=()), usage(), T0).has_access is soft


def test_usage_before_measuring_starts_is_ignored_and_never_read() -> None:
    t = terms(measure="2027-01-01T12:00", grants=(g("g", 10),))
    use = usage(**{"2027-01-01T06:00": 50, "2027-01-01T13:00": 3})
    v = value_at(t, use, at("2027-01-01T18:00"))
    assert (v.usage, v.balance, v.overage) == (D(3), D(7), 0)
    assert v.period == Period(at("2027-01-01T00:00"), at("2027-01-02T00:00"))
    assert v.last_reset == at("2027-01-01T12:00")
    assert use.calls == [(at("2027-01-01T12:00"), at("2027-01-01T18:00"))]
    # Before measuring starts: nothing used, the grants whole.
    v = value_at(t, use, at("2027-01-01T08:00"))
    assert (v.usage, v.balance) == (0, D(10))


@pytest.mark.parametrize(
    ("moment", "used"),
    [("2027-01-01T10:00:00", 0), ("2027-01-01T10:00:30", 2), ("2027-01-01T10:01:00", 2)],
)
def test_a_value_at_a_moment_counts_the_minute_it_is_in(moment: str, used: int) -> None:
    t = terms(grants=(g("g", 10),))
    v = value_at(t, usage(**{"2027-01-01T10:00": 2}), at(moment))
    assert (v.usage, v.balance) == (D(used), D(10 - used))


def test_one_read_per_segment() -> None:
    # Three days, a grant taking effect on day 2: segments [1st, 2nd), [2nd, 2nd 06:00),
    # [2nd 06:00, 3rd), [3rd, 3rd 12:00).
    t = terms(grants=(g("g", 10), g("later", 5, "2027-01-02T06:00")))
    use = usage()
    value_at(t, use, at("2027-01-03T12:00"))
    assert use.calls == [
        (at("2027-01-01T00:00"), at("2027-01-02T00:00")),
        (at("2027-01-02T00:00"), at("2027-01-02T06:00")),
        (at("2027-01-02T06:00"), at("2027-01-03T00:00")),
        (at("2027-01-03T00:00"), at("2027-01-03T12:00")),
    ]


def test_a_snapshot_must_be_at_a_period_start() -> None:
    t = terms(grants=(g("g", 10),))
    snap = state_at(t, usage(), at("2027-01-01T05:00"))
    with pytest.raises(ValueError, match="period's start"):
        value_at(t, usage(), at("2027-01-01T06:00"), since=snap)


# --- properties, against a minute-by-minute model -------------------------------------------

WINDOW = 480  # minutes after T0 the properties look at
HOURS = st.sampled_from([1, 2, 4])


def minute(n: int) -> datetime:
    return T0 + timedelta(minutes=n)


@st.composite
def scenarios(draw: st.DrawFn) -> tuple[MeteredTerms, dict[int, Decimal]]:
    amounts = st.integers(0, 40).map(D)
    grants = []
    for i in range(draw(st.integers(0, 4))):
        effective = draw(st.integers(0, WINDOW))
        life = draw(st.none() | st.integers(1, WINDOW))
        void = draw(st.none() | st.integers(1, WINDOW))
        hours = draw(st.none() | st.sampled_from([1, 2]))
        anchor = draw(st.none() | st.integers(0, WINDOW))
        recurrence: UsagePeriod | Interval | None = None
        if hours is not None:
            interval = Interval.parse(f"PT{hours}H")
            recurrence = interval if anchor is None else UsagePeriod(interval, minute(anchor))
        grants.append(
            GrantTerms(
                id=f"g{i}",
                amount=draw(amounts),
                priority=draw(st.integers(1, 2)),
                effective_at=minute(effective),
                created_at=minute(draw(st.integers(0, WINDOW))),
                expires_at=None if life is None else minute(effective + life),
                voided_at=None if void is None else minute(effective + void),
                min_rollover=draw(amounts),
                max_rollover=draw(st.none() | amounts),
                recurrence=recurrence,
            )
        )
    resets = [
        Reset(minute(m), draw(st.none() | st.booleans()), draw(st.booleans()))
        for m in sorted(set(draw(st.lists(st.integers(0, WINDOW), max_size=3))))
    ]
    t = MeteredTerms(
        usage_period=UsagePeriod(
            Interval.parse(f"PT{draw(HOURS)}H"), minute(draw(st.integers(0, 180)))
        ),
        measure_usage_from=minute(draw(st.integers(0, 120))),
        grants=tuple(grants),
        resets=tuple(resets),
        preserve_overage_at_reset=draw(st.booleans()),
        is_soft_limit=draw(st.booleans()),
    )
    events = draw(st.dictionaries(st.integers(0, WINDOW), st.integers(0, 30).map(D), max_size=40))
    return t, events


def by_minute(events: dict[int, Decimal]) -> Recorder:
    return Recorder({minute(m): v for m, v in events.items()})


def mins(moment: datetime) -> int:
    return (moment - T0) // timedelta(minutes=1)


def reset_minutes(t: MeteredTerms) -> set[int]:
    """Every reset in [-WINDOW, 2·WINDOW]: the anchor's boundaries until the first manual reset
    that moves it, that reset's boundaries until the next one, …, and the manual resets."""
    step = mins(T0 + t.usage_period.interval.times(1))
    moved = [mins(r.at) for r in t.resets if not r.retain_anchor]
    anchors = [mins(t.usage_period.anchor), *moved]
    edges: list[int | None] = [None, *moved, None]
    times = {mins(r.at) for r in t.resets}
    for i, anchor in enumerate(anchors):
        low, high = edges[i], edges[i + 1]
        for k in range(-4 * WINDOW // step, 4 * WINDOW // step):
            b = anchor + k * step
            if (low is None or b >= low) and (high is None or b < high):
                times.add(b)
    return times


def model(t: MeteredTerms, events: dict[int, Decimal], until: int) -> dict[str, object]:
    """The state after everything at minute `until`, walking one minute at a time: at each
    minute a reset (rollover, drop, overage kept or forgiven), then recurrences, then grants
    taking effect start whole, then the carried overage is paid, then the minute's usage."""
    start = mins(t.measure_usage_from)
    resets = reset_minutes(t)
    preserve = {mins(r.at): r.preserve_overage for r in t.resets}
    balances: dict[str, Decimal] = {}
    overage = D(0)

    def usable(gr: GrantTerms, m: int) -> bool:
        ends = [mins(x) for x in (gr.expires_at, gr.voided_at) if x is not None]
        return mins(gr.effective_at) <= m and all(m < e for e in ends)

    def recurs(gr: GrantTerms, m: int) -> bool:
        period = gr.recurrence_period
        if period is None or m <= mins(gr.effective_at) or not usable(gr, m):
            return False
        step = mins(T0 + period.interval.times(1))
        return (m - mins(period.anchor)) % step == 0

    def pay(amount: Decimal, grants: list[GrantTerms]) -> Decimal:
        for gr in grants:
            take = min(amount, balances[gr.id])
            balances[gr.id] -= take
            amount -= take
        return amount

    now: list[GrantTerms] = [gr for gr in t.grants if usable(gr, until)]
    for m in range(start, until + 1):
        if m > start and m in resets:
            balances = {
                gr.id: min(
                    gr.amount if gr.max_rollover is None else gr.max_rollover,
                    max(balances[gr.id], gr.min_rollover),
                )
                for gr in t.grants
                if gr.id in balances and usable(gr, m)
            }
            kept = preserve.get(m)
            if not (t.preserve_overage_at_reset if kept is None else kept):
                overage = D(0)
        for gr in t.grants:
            if m > start and recurs(gr, m):
                balances[gr.id] = gr.amount
        now = sorted(
            (gr for gr in t.grants if usable(gr, m)), key=lambda gr: gr.burn_grant().burn_key
        )
        for gr in now:
            balances.setdefault(gr.id, gr.amount)
        overage = pay(overage, now)
        if m == until:
            break
        overage += pay(events.get(m, D(0)), now)
    period_start = max(r for r in resets if r <= until)
    return {
        "grant_balances": {gr.id: balances.get(gr.id, gr.amount) for gr in now},
        "overage": overage if until >= start else D(0),
        "usage": sum((v for m, v in events.items() if max(period_start, start) <= m < until), D(0)),
        "period_start": minute(period_start),
    }


PROPERTY = settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.too_slow])


@settings(PROPERTY, max_examples=400)
@given(scenario=scenarios(), until=st.integers(0, WINDOW))
def test_the_value_is_the_minute_by_minute_model_and_never_negative(
    scenario: tuple[MeteredTerms, dict[int, Decimal]], until: int
) -> None:
    t, events = scenario
    v = value_at(t, by_minute(events), minute(until))
    expected = model(t, events, until)
    assert {
        "grant_balances": dict(v.grant_balances),
        "overage": v.overage,
        "usage": v.usage,
        "period_start": v.period.start,
    } == expected
    assert v.balance >= 0 and v.overage >= 0
    assert v.balance == sum(v.grant_balances.values(), D(0))
    assert v.has_access == (v.balance > 0 or t.is_soft_limit)
    assert v.period.start <= minute(until) < v.period.end


@PROPERTY
@given(scenario=scenarios())
def test_within_a_period_usage_is_grant_usage_plus_overage(
    scenario: tuple[MeteredTerms, dict[int, Decimal]],
) -> None:
    t, events = scenario
    segments = history(t, by_minute(events), T0, minute(WINDOW))
    for before, after in pairwise(segments):
        assert before.period.end == after.period.start
    periods: dict[datetime, list[HistorySegment]] = {}
    for s in segments:
        assert s.balance_at_start >= 0 and s.balance_at_end >= 0
        assert all(b >= 0 for b in s.grant_balances_at_end.values())
        start = value_at(t, by_minute({}), s.period.start).period.start
        periods.setdefault(start, []).append(s)
    measuring = mins(t.measure_usage_from)
    for start, group in periods.items():
        used = sum((s.usage for s in group), D(0))
        burnt = sum((sum(s.grant_usages.values(), D(0)) for s in group), D(0))
        assert used + group[0].overage_at_start == burnt + group[-1].overage
        end = mins(group[-1].period.end)
        low = max(mins(start), measuring)
        assert used == sum((v for m, v in events.items() if low <= m < end), D(0))


@PROPERTY
@given(
    scenario=scenarios(),
    until=st.integers(0, WINDOW),
    second=st.integers(0, 59),
    bump=st.integers(1, 50).map(D),
)
def test_the_value_at_a_moment_depends_on_no_usage_from_its_value_minute_on(
    scenario: tuple[MeteredTerms, dict[int, Decimal]], until: int, second: int, bump: Decimal
) -> None:
    t, events = scenario
    moment = minute(until) + timedelta(seconds=second)
    cut = until + (1 if second else 0)  # the value minute
    changed = {m: v + bump if m >= cut else v for m, v in events.items()}
    changed[cut] = changed.get(cut, D(0)) + bump
    assert value_at(t, by_minute(events), moment) == value_at(t, by_minute(changed), moment)


@PROPERTY
@given(scenario=scenarios(), until=st.integers(0, WINDOW))
def test_the_value_from_a_snapshot_at_the_period_start_is_the_value_from_scratch(
    scenario: tuple[MeteredTerms, dict[int, Decimal]], until: int
) -> None:
    t, events = scenario
    scratch = value_at(t, by_minute(events), minute(until))
    snap = state_at(t, by_minute(events), scratch.period.start)
    use = by_minute(events)
    assert value_at(t, use, minute(until), since=snap) == scratch
    # And it reads nothing before the snapshot.
    assert all(start >= snap.at for start, _ in use.calls) or snap.at <= t.measure_usage_from
    # The history from the snapshot is the tail of the history from scratch.
    tail = history(t, by_minute(events), snap.at, minute(until), since=snap)
    full = history(t, by_minute(events), snap.at, minute(until))
    assert tail == full
