"""Burning usage through grants within one period: the order, overage carried and absorbed,
expiry and void, and the invariants (balance ≥ 0, usage = Σ grant usage + overage, the state
at t depends on nothing after t), figured from usage given per minute, not by the engine."""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from decimal import Decimal

from hypothesis import given
from hypothesis import strategies as st

from metersync.entitlements import Grant, burn

T0 = datetime(2027, 1, 1, tzinfo=UTC)
END = T0 + timedelta(days=31)
D = Decimal


def minute(n: int) -> datetime:
    return T0 + timedelta(minutes=n)


def usage_at(events: dict[int, Decimal]) -> Callable[[datetime, datetime], Decimal]:
    """Usage given per minute since T0: the sum of the minutes in [start, end)."""

    def between(start: datetime, end: datetime) -> Decimal:
        return sum((v for m, v in events.items() if start <= minute(m) < end), Decimal(0))

    return between


def grant(
    gid: str,
    amount: int,
    *,
    priority: int = 1,
    at: int = 0,
    created: int = 0,
    expires: int | None = None,
    voided: int | None = None,
) -> Grant:
    return Grant(
        id=gid,
        amount=D(amount),
        priority=priority,
        effective_at=minute(at),
        created_at=minute(created),
        expires_at=None if expires is None else minute(expires),
        voided_at=None if voided is None else minute(voided),
    )


def test_grants_burn_by_priority_then_earlier_expiry_then_no_expiry_then_creation() -> None:
    grants = [
        grant("created-last", 10, created=9),
        grant("created-first", 10, created=1),
        grant("expires-later", 10, expires=50_000),
        grant("expires-soon", 10, expires=40_000),
        grant("second-priority", 10, priority=2, expires=20_000),  # expires first of all
    ]
    # Each 10 more of usage drains one more grant of 10: the order they drain in.
    order: list[str] = []
    for used in range(10, 51, 10):
        burnt = burn(grants, T0, END, usage_at({10: D(used)})).segments[0].grant_usage
        order += [g for g, amount in burnt.items() if amount == D(10) and g not in order]
    assert order == [
        "expires-soon",
        "expires-later",
        "created-first",
        "created-last",
        "second-priority",
    ]
    assert burn(grants, T0, END, usage_at({10: D(55)})).overage == D(5)


def test_overage_carries_and_a_grant_taking_effect_later_absorbs_it() -> None:
    grants = [grant("first", 10), grant("topup", 100, at=600)]
    result = burn(grants, T0, END, usage_at({10: D(30), 700: D(5)}))
    before, after = result.segments
    assert (before.end, before.overage, dict(before.balances)) == (minute(600), D(20), {"first": 0})
    assert dict(after.grant_usage) == {"topup": D(25)}  # 20 overdrawn, then 5 of its own
    assert (after.overage, dict(after.balances)) == (D(0), {"first": D(0), "topup": D(75)})
    assert result.balance == D(75)


def test_an_expired_or_voided_grant_stops_burning_and_keeps_what_it_held() -> None:
    grants = [
        grant("expiring", 10, expires=100),
        grant("voided", 10, priority=2, voided=200),
        grant("plain", 10, priority=3),
    ]
    result = burn(grants, T0, END, usage_at({50: D(4), 150: D(3), 250: D(8)}))
    assert [s.start for s in result.segments] == [T0, minute(100), minute(200)]
    assert result.balances == {"expiring": D(6), "voided": D(7), "plain": D(2)}
    assert result.balance == D(2)  # only "plain" is usable at the end
    assert result.usage == D(15) and result.overage == D(0)


def test_a_period_starts_from_rolled_over_balances_and_a_preserved_overage() -> None:
    result = burn(
        [grant("g", 100)], T0, END, usage_at({5: D(10)}), balances={"g": D(30)}, overage=D(7)
    )
    assert result.balances == {"g": D(13)} and result.overage == D(0)


def test_decimal_amounts_burn_exactly() -> None:
    result = burn([grant("g", 1)], T0, END, usage_at({1: D("0.1"), 2: D("0.2")}))
    assert result.balances == {"g": D("0.7")}


def test_no_grant_at_all_is_all_overage() -> None:
    result = burn([], T0, END, usage_at({1: D(3)}))
    assert (result.overage, result.balance, result.usage) == (D(3), D(0), D(3))


amounts = st.decimals(min_value=0, max_value=1000, places=2, allow_nan=False)
minutes = st.integers(min_value=0, max_value=44_639)  # the minutes of January
grants_strategy = st.lists(
    st.builds(
        lambda i, amount, priority, at, life, void: Grant(
            id=f"g{i}",
            amount=amount,
            priority=priority,
            effective_at=minute(at),
            created_at=minute(i),
            expires_at=None if life is None else minute(at + life),
            voided_at=None if void is None else minute(at + void),
        ),
        st.integers(0, 10_000),
        amounts,
        st.integers(1, 3),
        minutes,
        st.none() | st.integers(1, 20_000),
        st.none() | st.integers(1, 20_000),
    ),
    max_size=6,
    unique_by=lambda g: g.id,
)
usage_strategy = st.dictionaries(minutes, amounts, max_size=30)


@given(grants=grants_strategy, events=usage_strategy)
def test_balances_never_go_negative_and_usage_is_grant_usage_plus_overage(
    grants: list[Grant], events: dict[int, Decimal]
) -> None:
    result = burn(grants, T0, END, usage_at(events))
    assert all(balance >= 0 for balance in result.balances.values())
    assert result.overage >= 0
    burnt = sum((sum(s.grant_usage.values(), D(0)) for s in result.segments), D(0))
    assert result.usage == sum(events.values(), D(0))
    assert result.usage == burnt + result.overage
    # No grant gives more than it held.
    for g in grants:
        used = sum((s.grant_usage.get(g.id, D(0)) for s in result.segments), D(0))
        assert used <= g.amount


@given(grants=grants_strategy, events=usage_strategy, cut=minutes)
def test_the_state_at_a_moment_depends_on_nothing_after_it(
    grants: list[Grant], events: dict[int, Decimal], cut: int
) -> None:
    until = minute(cut)
    early = burn(grants, T0, until, usage_at(events)) if until > T0 else None
    later = {m: v for m, v in events.items() if minute(m) >= until}
    changed = {**events, **{m: v + 1 for m, v in later.items()}}
    changed[cut] = changed.get(cut, D(0)) + 999  # at the cut itself: after it
    early_again = burn(grants, T0, until, usage_at(changed)) if until > T0 else None
    assert early == early_again
    if early is not None:
        # And running the whole period passes through the same state at the cut.
        full = burn(grants, T0, END, usage_at(events))
        at_cut = [s for s in full.segments if s.end <= until]
        assert [s.end for s in at_cut] == [s.end for s in early.segments][: len(at_cut)]
