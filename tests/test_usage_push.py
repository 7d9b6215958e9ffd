"""Usage to Stripe meters end to end: catalog and usage on SQLite and PostgreSQL, the emulator
over real HTTP, the real SDK."""

from __future__ import annotations

import asyncio
import json
from collections import Counter, defaultdict
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from itertools import count
from typing import Any

import pytest
from freezegun import freeze_time
from sqlalchemy import insert, select, update

from metersync.catalog import Catalog
from metersync.catalog.meters import Meter
from metersync.chaos.usage import meters as chaos_meters
from metersync.errors import ConfigError
from metersync.store import LedgerRow, LedgerState, LinkRow, UsageRow
from metersync.store.ledger import LedgerTable
from metersync.sync.apply import RetryPolicy
from metersync.sync.customer_sync import SyncOptions, sync_customers
from metersync.targets.stripe import (
    MeterEventSender,
    StripeMeterFigures,
    StripeTarget,
    ensure_meters,
)
from metersync.testing import StripeEmulator
from metersync.usage.local_aggregates import LocalAggregates
from metersync.usage.push import PushResult, UsagePusher
from metersync.usage.status import usage_status
from metersync.usage.verify import verify_usage

HOUR = 3600
NOW = datetime.now(UTC).replace(minute=30, second=0, microsecond=0) - timedelta(hours=1)
T = int(NOW.timestamp()) // HOUR * HOUR - 2 * HOUR  # a window two hours back
# The four meters of the crash test: tokens (SUM), calls (COUNT), peak (MAX), users
# (UNIQUE_COUNT), each on a Stripe meter of the same event name.
METERS = [m.settings for m in chaos_meters()]
_ids = count(1)


@pytest.fixture
def emulator() -> Iterator[StripeEmulator]:
    with StripeEmulator() as running:
        yield running


def target(emulator: StripeEmulator) -> StripeTarget:
    return StripeTarget("sk_test_usage", api_base=emulator.url, rate=1000)


def setup(catalog: Catalog, emulator: StripeEmulator, customers: dict[str, list[str]]) -> None:
    for key, subjects in customers.items():
        catalog.create_customer(
            {"key": key, "name": key, "usageAttribution": {"subjectKeys": subjects}}
        )

    async def go() -> None:
        t = target(emulator)
        try:
            options = SyncOptions(retry=RetryPolicy(attempts=5, base_delay_s=0.01))
            await sync_customers(catalog, t, options)
            await ensure_meters(t, METERS)
        finally:
            await t.close()

    asyncio.run(go())


def add(catalog: Catalog, subject: str, seconds: int, tokens: int, user: str = "u1") -> None:
    """What ingest writes for one `prompt` event (one row per meter)."""
    event_id = f"e{next(_ids)}"
    rows: list[dict[str, Any]] = [
        {"meter": "tokens", "value": float(tokens)},
        {"meter": "calls", "value": 1.0},
        {"meter": "peak", "value": float(tokens)},
        {"meter": "users", "value_text": user},
    ]
    with catalog.store.session() as session:
        session.execute(
            insert(UsageRow.__table__),  # type: ignore[attr-defined]
            [
                {
                    "source": "test",
                    "event_id": event_id,
                    "subject": subject,
                    "time_us": seconds * 1_000_000,
                    "value": None,
                    "value_text": None,
                    **row,
                }
                for row in rows
            ],
        )


def usage_pusher(
    catalog: Catalog,
    stripe: Any,
    *,
    api: str = "v1",
    meters: Any = METERS,
    window_s: int = HOUR,
    late_usage: str = "report",
    **sender: Any,
) -> UsagePusher:
    """The pusher the tests use: v1 at 1,000/s to the emulator, quick retries unless
    `sender` says otherwise."""
    return UsagePusher(
        store=catalog.store,
        target="stripe",
        sink=MeterEventSender(stripe, api=api, rate=1000, **(sender or {"retry_delay_s": 0.01})),
        meters=[Meter.of(m) for m in meters],
        window_s=window_s,
        late_usage=late_usage,
    )


def push(catalog: Catalog, emulator: StripeEmulator, **kw: Any) -> PushResult:
    async def go() -> PushResult:
        t = target(emulator)
        try:
            settings = {
                k: kw.pop(k) for k in ("api", "meters", "window_s", "late_usage") if k in kw
            }
            return await usage_pusher(catalog, t, **settings).run(**kw)
        finally:
            await t.close()

    return asyncio.run(go())


def stripe_totals(emulator: StripeEmulator) -> dict[tuple[str, str], int]:
    """Sum (or last, for `peak`) of the accepted meter events per (customer, event name)."""
    totals: dict[tuple[str, str], int] = defaultdict(int)
    last: dict[tuple[str, str], tuple[int, int]] = {}
    for event in emulator.meter_events():
        key = (event["payload"]["stripe_customer_id"], event["event_name"])
        value = int(event["payload"]["value"])
        if event["event_name"] == "peak":
            if key not in last or event["timestamp"] >= last[key][0]:
                last[key] = (event["timestamp"], value)
        else:
            totals[key] += value
    totals.update({k: v for k, (_, v) in last.items()})
    return dict(totals)


def stripe_id(emulator: StripeEmulator, key: str) -> str:
    return next(c["id"] for c in emulator.customers() if c["metadata"].get("metersync_key") == key)


def test_sum_count_max_and_unique_count_end_to_end(
    catalog: Catalog, emulator: StripeEmulator
) -> None:
    setup(catalog, emulator, {"acme": ["a1", "a2"], "beta": ["b1"]})
    add(catalog, "a1", T + 10, 5, "u1")
    add(catalog, "a2", T + 20, 7, "u2")
    add(catalog, "a1", T + HOUR + 5, 3, "u1")
    add(catalog, "b1", T + 30, 4, "u9")
    first = push(catalog, emulator)
    assert first.failed == 0 and first.delivered == first.sent > 0
    acme, beta = stripe_id(emulator, "acme"), stripe_id(emulator, "beta")
    assert stripe_totals(emulator) == {
        (acme, "tokens"): 15,
        (acme, "calls"): 3,
        (acme, "peak"): 7,
        (acme, "users"): 2,
        (beta, "tokens"): 4,
        (beta, "calls"): 1,
        (beta, "peak"): 4,
        (beta, "users"): 1,
    }
    sent = len(emulator.meter_events())
    assert push(catalog, emulator).sent == 0  # nothing new: nothing sent
    assert len(emulator.meter_events()) == sent
    # Late-arriving events land as correction deltas for their windows.
    add(catalog, "a2", T + 40, 10, "u3")
    again = push(catalog, emulator)
    assert again.sent == 4
    totals = stripe_totals(emulator)
    assert (totals[(acme, "tokens")], totals[(acme, "calls")]) == (25, 4)
    assert (totals[(acme, "peak")], totals[(acme, "users")]) == (10, 3)


def test_a_report_pending_after_a_crash_is_resent_once(
    catalog: Catalog, emulator: StripeEmulator
) -> None:
    setup(catalog, emulator, {"acme": ["a1"]})
    add(catalog, "a1", T + 10, 5)
    push(catalog, emulator)
    acme = stripe_id(emulator, "acme")
    # As if the process died after the calls, before recording their outcome.
    with catalog.store.session() as session:
        session.execute(update(LedgerRow).values(state=LedgerState.PENDING, delivered_at=None))
    again = push(catalog, emulator)
    assert again.sent == again.duplicates == again.delivered == 4
    assert stripe_totals(emulator)[(acme, "tokens")] == 5
    with catalog.store.read_session() as session:
        states = set(session.execute(select(LedgerRow.state)).scalars())  # type: ignore[call-overload]
    assert states == {LedgerState.DELIVERED}


def test_usage_of_an_unlinked_customer_waits(catalog: Catalog, emulator: StripeEmulator) -> None:
    setup(catalog, emulator, {"acme": ["a1"]})
    add(catalog, "nobody", T + 10, 5)  # a subject no customer has
    result = push(catalog, emulator)
    assert result.sent == 0 and result.waiting_subjects == 1


def test_the_35_day_boundary_and_late_policy(catalog: Catalog, emulator: StripeEmulator) -> None:
    setup(catalog, emulator, {"acme": ["a1"]})
    old = int((NOW - timedelta(days=40)).timestamp()) // HOUR * HOUR
    add(catalog, "a1", old + 10, 6)
    held = push(catalog, emulator, late_usage="report")
    assert held.late == 4 and held.sent == 0
    with catalog.store.read_session() as session:
        rows = session.execute(select(LedgerRow.state, LedgerRow.meter)).all()  # type: ignore[call-overload]
    assert {state for state, _ in rows} == {LedgerState.LATE}
    assert push(catalog, emulator, late_usage="push_now").sent == 0  # already held: reported once


def test_late_usage_push_now_lands_in_the_current_period(
    catalog: Catalog, emulator: StripeEmulator
) -> None:
    setup(catalog, emulator, {"acme": ["a1"]})
    old = int((NOW - timedelta(days=40)).timestamp()) // HOUR * HOUR
    add(catalog, "a1", old + 10, 6)
    result = push(catalog, emulator, late_usage="push_now")
    # Sums land stamped now; the old month's MAX stays held: stamped now, it would replace the
    # current month's own last value.
    assert (result.late, result.sent, result.delivered) == (1, 3, 3)
    acme = stripe_id(emulator, "acme")
    assert stripe_totals(emulator)[(acme, "tokens")] == 6
    assert (acme, "peak") not in stripe_totals(emulator)


def test_v2_stream_end_to_end(catalog: Catalog, emulator: StripeEmulator) -> None:
    setup(catalog, emulator, {"acme": ["a1"]})
    for hour in range(5):
        add(catalog, "a1", T - hour * HOUR, 2)
    result = push(catalog, emulator, api="v2")
    assert result.delivered == result.sent and result.failed == 0
    acme = stripe_id(emulator, "acme")
    assert stripe_totals(emulator)[(acme, "tokens")] == 10
    assert emulator.meter_event_errors() == []
    report = json.loads(json.dumps(result.to_json()))  # what `--json` prints
    assert report["failures"] == [] and report["summary"]["delivered"] == result.delivered > 0


def verify(catalog: Catalog, emulator: StripeEmulator, *, repair: bool = False) -> Any:
    async def go() -> Any:
        t = target(emulator)
        try:
            return await verify_usage(
                catalog.store,
                StripeMeterFigures(t),
                [Meter.of(m) for m in METERS],
                window_s=HOUR,
                start=T - 6 * HOUR,
                end=int(NOW.timestamp()) + HOUR,
                repair=repair,
                sink=MeterEventSender(t, api="v1", rate=1000, retry_delay_s=0.01),
            )
        finally:
            await t.close()

    return asyncio.run(go())


def test_verify_agrees_after_a_push_and_names_each_difference(
    catalog: Catalog, emulator: StripeEmulator
) -> None:
    setup(catalog, emulator, {"acme": ["a1"]})
    add(catalog, "a1", T + 10, 5, "u1")
    add(catalog, "a1", T + HOUR + 10, 2, "u2")
    push(catalog, emulator)
    clean = verify(catalog, emulator)
    assert clean.checked >= 4 and clean.differences == []

    add(catalog, "a1", T + 20, 3, "u3")  # not pushed yet
    found = {(d.meter, d.period_start): d for d in verify(catalog, emulator).differences}
    assert found[("tokens", T)].problem == "3 not pushed yet"
    repaired = verify(catalog, emulator, repair=True)
    assert repaired.pushed is not None and repaired.pushed.delivered == 3  # peak unchanged
    assert verify(catalog, emulator).differences == []


def lose_in_stripe(emulator: StripeEmulator, value: int) -> None:
    """As if Stripe dropped accepted events of this value (the v2 stream validates later)."""
    assert emulator.lose_meter_events(value) > 0


def delivered_ago(catalog: Catalog, age: timedelta) -> None:
    with catalog.store.session() as session:
        session.execute(update(LedgerRow).values(delivered_at=datetime.now(UTC) - age))


def test_verify_repair_replans_what_stripe_lost_once_it_has_settled(
    catalog: Catalog, emulator: StripeEmulator
) -> None:
    setup(catalog, emulator, {"acme": ["a1"]})
    add(catalog, "a1", T + 10, 7)
    push(catalog, emulator)
    acme = stripe_id(emulator, "acme")
    lose_in_stripe(emulator, 7)
    # Just delivered: Stripe may still be processing it. Reported, not re-sent.
    early = verify(catalog, emulator, repair=True)
    assert early.replanned == 0
    assert {d.problem for d in early.differences} == {
        "Stripe lacks 7 that the ledger says was delivered"
    }
    # Past the settle delay: re-planned and sent again, under a new identifier, once.
    delivered_ago(catalog, timedelta(hours=2))
    repaired = verify(catalog, emulator, repair=True)
    assert repaired.replanned == 2  # tokens (7) and peak (7)
    assert verify(catalog, emulator).differences == []
    assert stripe_totals(emulator)[(acme, "tokens")] == 7
    assert verify(catalog, emulator, repair=True).replanned == 0  # nothing more to do


def test_verify_compares_with_the_current_stripe_customer_only(
    catalog: Catalog, emulator: StripeEmulator
) -> None:
    """After a recreate or relink, what went to the old Stripe customer stays there: not
    re-sent to the new one."""
    setup(catalog, emulator, {"acme": ["a1"]})
    old = stripe_id(emulator, "acme")
    add(catalog, "a1", T + 10, 5)
    push(catalog, emulator)
    new = emulator.client().v1.customers.create({"name": "acme again"}).id
    with catalog.store.session() as session:
        session.execute(update(LinkRow).where(LinkRow.local_key == "acme").values(external_id=new))
    delivered_ago(catalog, timedelta(hours=2))
    verify(catalog, emulator, repair=True)
    totals = stripe_totals(emulator)
    assert totals[(old, "tokens")] == 5 and (new, "tokens") not in totals


def reconcile_with_usage(catalog: Catalog, emulator: StripeEmulator) -> Any:
    async def go() -> Any:
        t = target(emulator)
        try:
            pusher = usage_pusher(catalog, t, retries=0)
            options = SyncOptions(retry=RetryPolicy(attempts=2, base_delay_s=0.01))
            return await sync_customers(catalog, t, options, before_delete=pusher.flush)
        finally:
            await t.close()

    return asyncio.run(go())


def test_a_customers_usage_is_flushed_before_its_stripe_customer_is_deleted(
    catalog: Catalog, emulator: StripeEmulator
) -> None:
    setup(catalog, emulator, {"acme": ["a1"], "beta": ["b1"]})
    acme = stripe_id(emulator, "acme")
    add(catalog, "a1", T + 10, 5)
    add(catalog, "b1", T + 10, 9)  # beta's usage is not part of acme's flush
    catalog.delete_customer("acme")
    result = reconcile_with_usage(catalog, emulator)
    assert result.counts.get("deleted") == 1
    assert stripe_totals(emulator) == {
        (acme, "tokens"): 5,
        (acme, "calls"): 1,
        (acme, "peak"): 5,
        (acme, "users"): 1,
    }
    assert all(c["id"] != acme for c in emulator.customers())


def test_a_delete_waits_while_the_customers_usage_cannot_be_delivered(
    catalog: Catalog, emulator: StripeEmulator
) -> None:
    setup(catalog, emulator, {"acme": ["a1"]})
    acme = stripe_id(emulator, "acme")
    add(catalog, "a1", T + 10, 5)
    for meter in emulator.meters():  # Stripe now refuses every meter event
        emulator.client().v1.billing.meters.deactivate(meter["id"])
    catalog.delete_customer("acme")
    result = reconcile_with_usage(catalog, emulator)
    assert result.counts.get("deleted", 0) == 0 and result.counts["failed"] == 1
    assert "usage for this customer is not yet delivered" in result.applied.failures[0]["error"]
    assert any(c["id"] == acme for c in emulator.customers())


def test_frozen_time_a_window_crossing_the_35_day_edge_is_held_then_reported(
    catalog: Catalog, emulator: StripeEmulator
) -> None:
    """With time frozen (the emulator's business clock follows it): a window pushed at 34 days
    old gets a late correction after it crossed the edge; the correction is held and reported,
    and Stripe keeps what it had."""
    frozen = datetime(2026, 3, 10, 12, 0, tzinfo=UTC)
    window = int((frozen - timedelta(days=34)).timestamp()) // HOUR * HOUR
    with freeze_time(frozen, real_asyncio=True) as clock:
        setup(catalog, emulator, {"acme": ["a1"]})
        add(catalog, "a1", window + 10, 5)
        first = push(catalog, emulator, now=frozen)
        assert first.delivered == 4 and first.late == 0
        clock.tick(timedelta(days=2))
        add(catalog, "a1", window + 20, 3)  # arrives late for a window now 36 days old
        later = frozen + timedelta(days=2)
        held = push(catalog, emulator, now=later)
        # tokens +3 and calls +1 are late; the month's peak (5) and users (u1) did not change.
        assert held.sent == 0 and held.late == 2
        status = usage_status(catalog.store, "stripe", now=later)
        assert [(x["meter"], x["value"]) for x in status["late"]] == [("calls", 1), ("tokens", 3)]
        acme = stripe_id(emulator, "acme")
        assert stripe_totals(emulator)[(acme, "tokens")] == 5


def test_verify_repair_settles_reports_pending_past_the_identifier_window(
    catalog: Catalog, emulator: StripeEmulator
) -> None:
    setup(catalog, emulator, {"acme": ["a1"]})
    add(catalog, "a1", T + 10, 5)
    push(catalog, emulator)
    acme = stripe_id(emulator, "acme")
    two_days_ago = datetime.now(UTC) - timedelta(days=2)
    # Reports that landed, but whose outcome was never recorded, two days ago.
    with catalog.store.session() as session:
        session.execute(
            update(LedgerRow).values(state=LedgerState.PENDING, created_at=two_days_ago)
        )
    # And one that never left: written, then the process died, two days ago.
    add(catalog, "a1", T + 20, 3)
    with catalog.store.session() as session:
        session.execute(
            insert(LedgerRow.__table__),  # type: ignore[attr-defined]
            {
                "target": "stripe",
                "customer_key": "acme",
                "meter": "tokens",
                "window_start": T,
                "window_s": HOUR,
                "revision": 2,
                "value": 3,
                "total": 8,
                "identifier": "msu_never_sent",
                "external_customer_id": acme,
                "event_name": "tokens",
                "timestamp": T,
                "state": LedgerState.PENDING,
                "attempts": 0,
                "created_at": two_days_ago,
            },
        )
    held = push(catalog, emulator)
    assert held.held == 5 and held.sent == 1  # the new event: calls +1 (peak, users unchanged)
    repaired = verify(catalog, emulator, repair=True)
    assert repaired.settled == 5
    assert verify(catalog, emulator).differences == []
    assert stripe_totals(emulator)[(acme, "tokens")] == 8


# -- regressions from review: each of these billed twice or lost usage -----------------------------


def test_a_changed_window_or_scale_is_refused_not_billed_again(
    catalog: Catalog, emulator: StripeEmulator
) -> None:
    setup(catalog, emulator, {"acme": ["a1"]})
    acme = stripe_id(emulator, "acme")
    add(catalog, "a1", T + 10, 2500)
    tokens = METERS[0]
    push(catalog, emulator, meters=[tokens])
    with pytest.raises(ConfigError, match=r"usage\.window: meter .tokens. was reported in windows"):
        push(catalog, emulator, meters=[tokens], window_s=900)
    rescaled = tokens.model_copy(
        update={"stripe": tokens.stripe.model_copy(update={"scale": 0.01})}  # type: ignore[union-attr]
    )
    with pytest.raises(
        ConfigError, match=r"meters\.tokens\.stripe\.scale: reports were made at scale 1"
    ):
        push(catalog, emulator, meters=[rescaled])
    assert stripe_totals(emulator)[(acme, "tokens")] == 2500


def test_a_refused_revision_under_a_newer_one_is_planned_again(
    catalog: Catalog, emulator: StripeEmulator
) -> None:
    setup(catalog, emulator, {"acme": ["a1"]})
    acme = stripe_id(emulator, "acme")
    add(catalog, "a1", T + 10, 10)
    push(catalog, emulator)
    add(catalog, "a1", T + 20, 5)
    push(catalog, emulator)  # revision 2: +5
    # Revision 1 turns out refused (its outcome known only now, as `usage verify` settles it):
    # through the ledger's own path, which makes its cell due again.
    ledger = LedgerTable(catalog.store, "stripe")
    with catalog.store.read_session() as session:
        first = session.execute(
            select(LedgerRow.id).where(LedgerRow.meter == "tokens", LedgerRow.revision == 1)
        ).scalar_one()
    with ledger.correcting() as session:
        ledger.set_outcome(session, first, LedgerState.FAILED, "refused")
    lose_in_stripe(emulator, 10)
    again = push(catalog, emulator)
    assert again.sent >= 1
    assert stripe_totals(emulator)[(acme, "tokens")] == 15


def test_a_delete_waits_while_a_window_waits_out_a_refusal(
    catalog: Catalog, emulator: StripeEmulator
) -> None:
    setup(catalog, emulator, {"acme": ["a1"]})
    acme = stripe_id(emulator, "acme")
    add(catalog, "a1", T + 10, 5)
    meters = emulator.meters()
    for meter in meters:
        emulator.client().v1.billing.meters.deactivate(meter["id"])
    assert push(catalog, emulator).failed == 4  # refused: FAILED, waiting out a backoff
    for meter in meters:
        emulator.client().v1.billing.meters.reactivate(meter["id"])
    catalog.delete_customer("acme")
    result = reconcile_with_usage(catalog, emulator)
    assert result.counts.get("deleted", 0) == 0  # the customer stays until its usage is in
    assert any(c["id"] == acme for c in emulator.customers())


def _statements(catalog: Catalog) -> Any:
    """A log of every SQL statement the store runs, with its parameters, while in use."""
    from contextlib import contextmanager

    from sqlalchemy import event

    @contextmanager
    def log() -> Iterator[list[tuple[str, Any]]]:
        seen: list[tuple[str, Any]] = []

        def record(conn: Any, cursor: Any, statement: str, params: Any, *_: Any) -> None:
            seen.append((" ".join(statement.split()), params))

        engines = {catalog.store.engine, catalog.store._read_engine}
        for engine in engines:
            event.listen(engine, "before_cursor_execute", record)
        try:
            yield seen
        finally:
            for engine in engines:
                event.remove(engine, "before_cursor_execute", record)

    return log()


def _keys_in(params: Any) -> set[str]:
    values = params.values() if isinstance(params, dict) else params
    found: set[str] = set()
    for value in values:
        if isinstance(value, (list, tuple, dict)):
            found |= _keys_in(value)
        elif isinstance(value, str) and value.startswith("cust-"):
            found.add(value)
    return found


def test_many_small_writes_since_the_last_tick_are_collected_in_pages_of_rows(
    catalog: Catalog, emulator: StripeEmulator, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Each write takes a change number of its own. A tick after 60 of them (one event each,
    four rows: one per meter) reads them in pages of about COLLECT_ROWS rows of the meter,
    not one page per handful of change numbers, and pushes every one."""
    from metersync.usage import push as push_module
    from metersync.usage.local_aggregates import LOCAL

    setup(catalog, emulator, {"k1": ["s1"], "k2": ["s2"]})
    add(catalog, "s1", T, 1)
    assert push(catalog, emulator).failed == 0
    for i in range(60):
        add(catalog, f"s{1 + i % 2}", T - (i % 5) * HOUR + 1, 1)
        LOCAL.bind(catalog.store, "stripe")  # a change number of its own for each row
    pages: list[tuple[str, int, int]] = []
    original = LocalAggregates.changed_cells

    def counted(self: Any, store: Any, meter: Any, window_s: int, *, after: int, upto: int) -> Any:
        pages.append((meter.slug, after, upto))
        return original(self, store, meter, window_s, after=after, upto=upto)

    monkeypatch.setattr(LocalAggregates, "changed_cells", counted)
    monkeypatch.setattr(push_module, "COLLECT_ROWS", 40)
    tick = push(catalog, emulator)
    assert tick.failed == 0 and tick.planned == tick.delivered > 0
    per_meter = Counter(slug for slug, _after, _upto in pages)
    assert per_meter == {"tokens": 2, "calls": 2, "peak": 2, "users": 2}  # 60 rows: 40 + 20
    totals = stripe_totals(emulator)
    assert totals[(stripe_id(emulator, "k1"), "tokens")] == 31
    assert totals[(stripe_id(emulator, "k2"), "tokens")] == 30


def test_a_tick_reads_only_the_cells_that_changed(
    catalog: Catalog, emulator: StripeEmulator
) -> None:
    """The statement log of a tick after one new event, among 20 customers with history: every
    read of usage values or the ledger is bounded by change number or names the one customer
    whose cell changed; no statement reads another customer's usage or reports."""
    customers = {f"cust-{i:02d}": [f"subj{i:02d}"] for i in range(20)}
    setup(catalog, emulator, customers)
    for i in range(20):
        add(catalog, f"subj{i:02d}", T + 10 + i, 5 + i, f"u{i}")
        add(catalog, f"subj{i:02d}", T - 5 * HOUR + i, 1, f"u{i}")
    first = push(catalog, emulator)
    assert first.failed == 0 and first.planned == first.sent == 20 * (2 + 2 + 1 + 1)
    assert push(catalog, emulator).planned == 0

    add(catalog, "subj07", T + 50, 3, "u99")
    with _statements(catalog) as log:
        tick = push(catalog, emulator)
    # One cell of each meter changed; the peak (MAX, 12 so far) is not raised by 3.
    assert tick.planned == tick.sent == tick.delivered == 3
    reads = [(s, p) for s, p in log if s.startswith("SELECT")]
    usage_reads = [(s, p) for s, p in reads if "FROM usage_value" in s]
    ledger_reads = [(s, p) for s, p in reads if "FROM usage_ledger" in s]
    assert usage_reads and ledger_reads
    for statement, params in usage_reads + ledger_reads:
        bounded = (
            "seq >" in statement  # the changed rows since the cursor
            or "customer_key IS NULL" in statement  # rows waiting to be bound
            or statement == "SELECT max(usage_value.id) AS max_1 FROM usage_value"  # one key
            or "usage_ledger.state =" in statement  # reports pending a re-send
            or "usage_ledger.identifier IN" in statement  # the ids of the reports just written
            or _keys_in(params) == {"cust-07"}  # the changed cell's customer
        )
        assert bounded, statement
        assert _keys_in(params) <= {"cust-07"}, statement
    # And nothing else was read whole: the links of that one customer only.
    link_reads = [(s, p) for s, p in reads if "FROM link" in s and "local_key IN" in s]
    assert link_reads and all(_keys_in(p) == {"cust-07"} for _, p in link_reads)


def test_a_cell_skipped_for_now_stays_due_and_is_pushed_when_its_time_comes(
    catalog: Catalog, emulator: StripeEmulator
) -> None:
    """Usage stamped ahead of the clock is skipped, not lost: its cell stays due though no
    event arrives after it, and the first push once its window has begun sends it."""
    frozen = datetime(2026, 3, 10, 12, 0, tzinfo=UTC)
    now_s = int(frozen.timestamp())
    with freeze_time(frozen, real_asyncio=True) as clock:
        setup(catalog, emulator, {"acme": ["a1"]})
        add(catalog, "a1", now_s - 600, 5)
        assert push(catalog, emulator, now=frozen).delivered == 4  # the meter's first push
        add(catalog, "a1", now_s + 2 * HOUR + 10, 7)  # two hours ahead
        early = push(catalog, emulator, now=frozen)
        assert {(s.meter, s.reason) for s in early.skipped} == {
            ("tokens", "in the future"),
            ("calls", "in the future"),
        }
        assert usage_status(catalog.store, "stripe", now=frozen)["cellsDue"] == 2
        # No new event: only the due cells bring it back.
        assert push(catalog, emulator, now=frozen).planned == 0
        later = frozen + timedelta(hours=3)
        clock.move_to(later)
        on_time = push(catalog, emulator, now=later)
        assert on_time.planned == on_time.delivered == 2 and not on_time.skipped
        assert usage_status(catalog.store, "stripe", now=later)["cellsDue"] == 0
        acme = stripe_id(emulator, "acme")
        assert stripe_totals(emulator)[(acme, "tokens")] == 12


def test_a_first_push_of_more_reports_than_one_query_can_name(catalog: Catalog) -> None:
    """The ledger writes and reads back 70,000 reports in one call: more than PostgreSQL's
    65,535 bound parameters in one statement."""
    from metersync.usage.reports import Report, identifier

    reports = [
        Report(
            customer_key=f"c{i % 1000}",
            meter="tokens",
            window_start=(i // 1000) * HOUR,
            window_s=HOUR,
            revision=1,
            value=1,
            total=1,
            identifier=identifier(f"c{i % 1000}", "tokens", (i // 1000) * HOUR, 1),
            external_customer_id=f"cus_{i % 1000}",
            event_name="tokens",
            timestamp=(i // 1000) * HOUR,
        )
        for i in range(70_000)
    ]
    ids = LedgerTable(catalog.store, "stripe").record(reports)
    assert len(set(ids)) == 70_000
    with catalog.store.read_session() as session:
        stored = {i: key for i, key in session.execute(select(LedgerRow.id, LedgerRow.identifier))}
    assert [stored[i] for i in ids] == [r.identifier for r in reports]


def test_pushes_in_chunks_of_a_few_cells_add_up_exactly(
    catalog: Catalog, emulator: StripeEmulator, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Chunks of two cells, pages of three changed rows, a first push walking one customer at
    a time, and a dry run merging cells not yet collected: every chunk and page boundary
    falls somewhere, and the totals in Stripe are those of the events."""
    from metersync.usage import due
    from metersync.usage import push as push_module

    monkeypatch.setattr(due, "CHUNK_CELLS", 2)
    monkeypatch.setattr(push_module, "COLLECT_ROWS", 3)
    monkeypatch.setattr(due, "FIRST_CHUNK_CUSTOMERS", 1)
    customers = {f"k{i}": [f"s{i}"] for i in range(5)}
    setup(catalog, emulator, customers)
    expected: dict[str, int] = defaultdict(int)
    for i in range(5):
        for hour in range(3):
            add(catalog, f"s{i}", T - hour * HOUR + 10, i + hour + 1, f"u{hour}")
            expected[f"k{i}"] += i + hour + 1
    first = push(catalog, emulator)
    assert first.failed == 0 and first.planned == first.delivered
    for i in range(5):  # late events for two windows of every customer
        add(catalog, f"s{i}", T - HOUR + 20, 2, "u9")
        add(catalog, f"s{i}", T + 30, 3, "u9")
        expected[f"k{i}"] += 5
    # Bound but not collected yet: what a dry run merges into the cells it reads.
    from metersync.usage.local_aggregates import LOCAL

    assert LOCAL.bind(catalog.store, "stripe") == 5 * 2 * 4
    preview = push(catalog, emulator, dry_run=True)
    tick = push(catalog, emulator)
    assert preview.planned == tick.planned == tick.delivered == 5 * (2 + 2 + 1)
    totals = stripe_totals(emulator)
    for key, tokens in expected.items():
        assert totals[(stripe_id(emulator, key), "tokens")] == tokens
    assert push(catalog, emulator).planned == 0
