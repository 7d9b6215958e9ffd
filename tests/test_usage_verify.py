"""`usage verify` at scale: customers walked in chunks give what one chunk gives (differences,
their order, repairs), progress counts every customer, and the start bounds which periods are
compared. SQLite and PostgreSQL, the Stripe emulator over real HTTP, time frozen."""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Iterator, Sequence
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from freezegun import freeze_time
from sqlalchemy import update
from sqlmodel import col

from metersync.catalog import Catalog
from metersync.catalog.meters import Meter
from metersync.pipeline._verification import Verification
from metersync.pipeline._verification import verify as verify_step
from metersync.states import LinkState
from metersync.store import LinkRow, Store
from metersync.targets.stripe import MeterEventSender, StripeMeterFigures
from metersync.testing import StripeEmulator
from metersync.usage.local_aggregates import LOCAL, LocalAggregates
from metersync.usage.ports import UsageAggregates
from metersync.usage.verify import MAX_CHUNK, VerifyResult, verify_usage
from metersync.usage.windows import WindowValue
from test_usage_push import (
    HOUR,
    METERS,
    add,
    delivered_ago,
    lose_in_stripe,
    push,
    setup,
    stripe_id,
    stripe_totals,
    target,
    usage_pusher,
)

FROZEN = datetime(2026, 3, 10, 12, 0, tzinfo=UTC)
T = int(FROZEN.timestamp()) - 2 * HOUR  # a whole hour, two hours back
START, END = T - 6 * HOUR, int(FROZEN.timestamp()) + HOUR


@pytest.fixture
def emulator() -> Iterator[StripeEmulator]:
    with StripeEmulator() as running:
        yield running


@pytest.fixture(autouse=True)
def _frozen(store: Store) -> Iterator[None]:
    # The emulator's business clock follows frozen time, so Stripe's 35-day window and the
    # settle delay are measured from FROZEN, not from today. After the store is open: the
    # database driver's C extension must not load while datetime is patched.
    with freeze_time(FROZEN, real_asyncio=True):
        yield


def verify(
    catalog: Catalog,
    emulator: StripeEmulator,
    *,
    chunk_size: int,
    repair: bool = False,
    start: int = START,
    progress: Callable[[int], None] | None = None,
    aggregates: UsageAggregates = LOCAL,
) -> VerifyResult:
    async def go() -> VerifyResult:
        t = target(emulator)
        try:
            return await verify_usage(
                catalog.store,
                StripeMeterFigures(t),
                [Meter.of(m) for m in METERS],
                window_s=HOUR,
                start=start,
                end=END,
                repair=repair,
                sink=MeterEventSender(t, api="v1", rate=1000, retry_delay_s=0.01),
                chunk_size=chunk_size,
                progress=progress,
                aggregates=aggregates,
            )
        finally:
            await t.close()

    return asyncio.run(go())


class ReadsPerChunk(LocalAggregates):
    """The local aggregates, recording which customers each read of windows asked for."""

    def __init__(self) -> None:
        self.asked: list[list[str] | None] = []

    def windows(
        self,
        store: Store,
        meter: Meter,
        window_s: int,
        *,
        customers: Sequence[str] | None = None,
        start: int | None = None,
        end: int | None = None,
    ) -> list[WindowValue]:
        self.asked.append(None if customers is None else list(customers))
        return super().windows(store, meter, window_s, customers=customers, start=start, end=end)


def three_customers_and_a_gap(catalog: Catalog, emulator: StripeEmulator) -> None:
    """acme, beta and gamma pushed; then beta has usage not pushed yet; idle has a link and
    no usage at all."""
    setup(catalog, emulator, {"gamma": ["g1"], "acme": ["a1"], "beta": ["b1"], "idle": ["i1"]})
    add(catalog, "a1", T + 10, 5, "u1")
    add(catalog, "b1", T + 10, 4, "u1")
    add(catalog, "g1", T + HOUR + 10, 6, "u1")
    push(catalog, emulator)
    add(catalog, "b1", T + 20, 3, "u2")


def test_chunks_of_one_find_what_one_chunk_finds(
    catalog: Catalog, emulator: StripeEmulator
) -> None:
    three_customers_and_a_gap(catalog, emulator)
    walked: dict[int, list[int]] = {}
    results = {}
    for size in (1, 3, 500):
        walked[size] = []
        results[size] = verify(catalog, emulator, chunk_size=size, progress=walked[size].append)
    one = results[500]
    assert one.checked > 0
    # beta's new event: tokens +3, calls +1, users +1 (u2); its peak (4) did not change.
    assert [(d.customer_key, d.meter, d.problem) for d in one.differences] == [
        ("beta", "tokens", "3 not pushed yet"),
        ("beta", "calls", "1 not pushed yet"),
        ("beta", "users", "1 not pushed yet"),
    ]
    for size in (1, 3):
        assert results[size].checked == one.checked
        assert results[size].differences == one.differences
    # Every linked customer is walked once, in chunks of the size asked for.
    assert walked == {1: [1, 1, 1, 1], 3: [3, 1], 500: [4]}
    # Each read of the local figures asks for one chunk's customers, never for everyone's.
    reads = ReadsPerChunk()
    assert verify(catalog, emulator, chunk_size=3, aggregates=reads) == one
    assert reads.asked == [["acme", "beta", "gamma"]] * 4 + [["idle"]] * 4  # four meters


@pytest.mark.parametrize("chunk_size", [1, 500])
def test_a_repair_in_chunks_repairs_what_one_chunk_repairs(
    catalog: Catalog, emulator: StripeEmulator, chunk_size: int
) -> None:
    """Both chunk sizes, each in a world of its own, end with the same figures."""
    three_customers_and_a_gap(catalog, emulator)
    lose_in_stripe(emulator, 6)  # gamma's tokens and peak, delivered then lost by Stripe
    delivered_ago(catalog, timedelta(hours=2))  # past the settle delay
    repaired = verify(catalog, emulator, chunk_size=chunk_size, repair=True)
    assert [(d.customer_key, d.meter) for d in repaired.differences] == [
        ("beta", "tokens"),
        ("beta", "calls"),
        ("beta", "users"),
        ("gamma", "tokens"),
        ("gamma", "peak"),
    ]
    assert repaired.replanned == 2 and repaired.settled == 0
    # The push after the repair sends beta's gap and gamma's lost reports, once.
    assert repaired.pushed is not None and repaired.pushed.delivered == 5
    assert verify(catalog, emulator, chunk_size=chunk_size).differences == []
    gamma, beta = stripe_id(emulator, "gamma"), stripe_id(emulator, "beta")
    totals = stripe_totals(emulator)
    assert (totals[(gamma, "tokens")], totals[(gamma, "peak")]) == (6, 6)
    assert (totals[(beta, "tokens")], totals[(beta, "users")]) == (7, 2)


def test_the_start_leaves_out_periods_that_end_before_it(
    catalog: Catalog, emulator: StripeEmulator
) -> None:
    setup(catalog, emulator, {"acme": ["a1"]})
    old, recent = T - 30 * HOUR, T
    add(catalog, "a1", old + 10, 5, "u1")
    add(catalog, "a1", recent + 10, 5, "u1")
    push(catalog, emulator)
    add(catalog, "a1", old + 20, 2, "u1")  # two hourly gaps, 30 hours apart
    add(catalog, "a1", recent + 20, 3, "u1")

    def gaps(start: int) -> list[tuple[int, int]]:
        found = verify(catalog, emulator, chunk_size=500, start=start).differences
        return [(d.period_start, d.local - d.ledger) for d in found if d.meter == "tokens"]

    assert gaps(T - 48 * HOUR) == [(old, 2), (recent, 3)]
    # A start inside an hour keeps that hour (it ends after the start), not the ones before.
    assert gaps(old + HOUR + 1) == [(recent, 3)]
    assert gaps(recent + HOUR - 1) == [(recent, 3)]


def test_a_chunk_size_out_of_bounds_is_refused(catalog: Catalog, emulator: StripeEmulator) -> None:
    for size in (0, MAX_CHUNK + 1):
        with pytest.raises(ValueError, match=f"chunk size must be between 1 and {MAX_CHUNK}"):
            verify(catalog, emulator, chunk_size=size)


def test_the_steps_progress_counts_both_walks_of_a_repair(
    catalog: Catalog, emulator: StripeEmulator
) -> None:
    three_customers_and_a_gap(catalog, emulator)
    seen: list[tuple[int, int]] = []

    async def go() -> Verification:
        t = target(emulator)
        try:
            pusher = usage_pusher(catalog, t)
            figures: Any = StripeMeterFigures(t)
            return await verify_step(
                catalog.store,
                figures,
                pusher,
                START,
                END,
                repair=True,
                chunk_size=3,
                progress=lambda done, total: seen.append((done, total)),
            )
        finally:
            await t.close()

    result = asyncio.run(go())
    assert result.differences == [] and result.pushed_counts["delivered"] == 3
    # Four customers, walked to repair and then again to check: 3 + 1, then 3 + 1.
    assert seen == [(3, 8), (4, 8), (7, 8), (8, 8)]


def test_a_customer_whose_link_no_longer_routes_is_still_held_against_the_ledger(
    catalog: Catalog, emulator: StripeEmulator
) -> None:
    """Usage bound to a customer whose Stripe customer went missing cannot be pushed: verify
    still names it (without asking Stripe, which has no customer to ask about)."""
    setup(catalog, emulator, {"acme": ["a1"], "beta": ["b1"]})
    add(catalog, "a1", T + 10, 5, "u1")
    push(catalog, emulator)
    add(catalog, "a1", T + 20, 3, "u1")
    verify(catalog, emulator, chunk_size=1)  # binds the new usage to acme, as a push would
    with catalog.store.session() as session:
        session.execute(
            update(LinkRow).where(col(LinkRow.local_key) == "acme").values(state=LinkState.MISSING)
        )
    walked: list[int] = []
    found = verify(catalog, emulator, chunk_size=1, progress=walked.append).differences
    assert [(d.customer_key, d.meter, d.stripe, d.problem) for d in found] == [
        ("acme", "tokens", 0, "3 not pushed yet"),
        ("acme", "calls", 0, "1 not pushed yet"),
    ]
    assert walked == [1, 1]
