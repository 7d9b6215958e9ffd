"""Entitlement usage on SQLite and PostgreSQL: a customer's usage of a feature is what billing
counts for it (bound rows, and the unbound rows of its subjects now), read from hourly cells
folded past a cursor, with raw edges; snapshots of balances and what drops them.

Expected figures come from the events list each test writes, never from the code under test.
"""

from __future__ import annotations

import os
import random
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from hypothesis.configuration import set_hypothesis_home_dir
from sqlalchemy import event as sa_event
from sqlalchemy import select

from metersync.catalog import Catalog
from metersync.catalog.meters import Aggregation, Meter, MeterSettings
from metersync.entitlements import _usage
from metersync.entitlements._usage import FeatureUsage, MeteredFeature, refresh_feature_usage
from metersync.store import CustomerRow, EntitlementRow, FeatureRow, Store
from metersync.store.entitlement_usage import (
    EntitlementSnapshot,
    drop_snapshots,
    latest_snapshot,
    save_snapshot,
)
from metersync.sync.journal import Journal
from metersync.usage.aggregate import bind_usage
from metersync.usage.ingest import ingest_events

if not os.environ.get("HYPOTHESIS_STORAGE_DIRECTORY"):
    set_hypothesis_home_dir(Path(tempfile.gettempdir()) / "metersync-hypothesis")

TOKENS = Meter.of(
    MeterSettings.model_validate(
        {
            "slug": "tokens",
            "event_type": "prompt",
            "aggregation": "SUM",
            "value_property": "$.tokens",
            "group_by": {"model": "$.model", "tier": "$.tier"},
        }
    )
)
PROMPTS = Meter.of(
    MeterSettings.model_validate(
        {"slug": "prompts", "event_type": "prompt", "aggregation": "COUNT"}
    )
)
METERS = [TOKENS, PROMPTS]
T0 = datetime(2026, 3, 2, 0, 0, tzinfo=UTC)  # a Monday, midnight
MINUTE = timedelta(minutes=1)
HOUR = timedelta(hours=1)


@dataclass
class Event:
    """One `prompt` event as the test wrote it, and the customer its rows were bound to."""

    subject: str
    at: datetime
    tokens: Decimal
    model: Any
    tier: Any
    owner: str | None = None


class World:
    """The catalog, the events written, and who each subject belongs to, as the test knows it."""

    def __init__(self, catalog: Catalog) -> None:
        self.catalog = catalog
        self.store = catalog.store
        self.events: list[Event] = []
        self.owner_of: dict[str, str] = {}
        self.ids = iter(range(1, 10**9))
        self.features: dict[str, MeteredFeature] = {}

    def customer(self, key: str, subjects: list[str], *, linked: bool = True) -> None:
        self.catalog.create_customer(
            {"key": key, "name": key, "usageAttribution": {"subjectKeys": subjects}}
        )
        self.owner_of.update(dict.fromkeys(subjects, key))
        if linked:
            Journal(self.store, "stripe").mark_synced(
                key, external_id=f"cus_{key}", pushed={"fields": {}, "metadata": {}}
            )

    def move(self, subject: str, source: str, target: str) -> None:
        for key, change in ((source, -1), (target, 1)):
            now = sorted(s for s, owner in self.owner_of.items() if owner == key)
            if change < 0:
                now.remove(subject)
            else:
                now.append(subject)
            self.catalog.update_customer(key, {"usageAttribution": {"subjectKeys": now}})
        self.owner_of[subject] = target

    def add(self, *events: Event) -> None:
        report = ingest_events(
            self.catalog,
            METERS,
            [
                {
                    "specversion": "1.0",
                    "id": f"e{next(self.ids)}",
                    "source": "test",
                    "type": "prompt",
                    "subject": e.subject,
                    "time": e.at.isoformat(),
                    "data": {"tokens": float(e.tokens), "model": e.model, "tier": e.tier},
                }
                for e in events
            ],
        )
        assert report.accepted == len(events), report
        self.events += events

    def bind(self) -> None:
        """The push's binding, and what it does in the test's own books."""
        bind_usage(self.store, "stripe")
        for e in self.events:
            if e.owner is None and e.subject in self.owner_of:
                e.owner = self.owner_of[e.subject]

    def feature(
        self, key: str, meter: Meter, filters: dict[str, str] | None = None
    ) -> MeteredFeature:
        feature_id = f"F{len(self.features):025d}"
        with self.store.session() as session:
            session.add(
                FeatureRow(
                    id=feature_id,
                    key=key,
                    name=key,
                    meter_slug=meter.slug,
                    group_filters=filters or {},
                )
            )
        self.features[key] = MeteredFeature.of(_feature_row(self.store, feature_id), meter)
        return self.features[key]

    def entitlement(self, customer: str, feature_key: str) -> str:
        with self.store.session() as session:
            customer_id = session.execute(
                select(CustomerRow.id).where(CustomerRow.key == customer)  # type: ignore[arg-type]
            ).scalar_one()
            entitlement_id = f"E{customer_id[1:]}"[:26]
            session.add(
                EntitlementRow(
                    id=entitlement_id,
                    kind="metered",
                    customer_key=customer,
                    feature_id=self.features[feature_key].id,
                    feature_key=feature_key,
                )
            )
        return entitlement_id

    def expected(
        self,
        customer: str,
        start: datetime,
        end: datetime,
        *,
        count: bool = False,
        filters: dict[str, str] | None = None,
    ) -> Decimal:
        """From the events: those bound to the customer, and the unbound ones of its subjects."""
        total = Decimal(0)
        for e in self.events:
            mine = e.owner == customer or (
                e.owner is None and self.owner_of.get(e.subject) == customer
            )
            matches = all(_text(getattr(e, k)) == v for k, v in (filters or {}).items())
            if mine and matches and start <= e.at < end:
                total += 1 if count else e.tokens
        return total


def _text(value: Any) -> str | None:
    if value is None:
        return None
    if isinstance(value, bool):
        return "true" if value else "false"
    return str(value)


def _feature_row(store: Store, feature_id: str) -> FeatureRow:
    with store.read_session() as session:
        row = session.get(FeatureRow, feature_id)
        assert row is not None
        return row


@pytest.fixture
def world(catalog: Catalog) -> World:
    return World(catalog)


def random_events(rng: random.Random, subjects: list[str], n: int, *, days: int = 2) -> list[Event]:
    """Events at whole seconds over `days`, several to a minute at times, values exact in
    binary (halves), two models."""
    out = []
    for _ in range(n):
        at = T0 + timedelta(seconds=rng.randrange(days * 86400))
        if rng.random() < 0.2 and out:  # the same minute as an earlier one
            at = out[-1].at.replace(second=rng.randrange(60))
        out.append(
            Event(
                rng.choice(subjects),
                at,
                Decimal(rng.randrange(1, 400)) / 2,
                rng.choice(["gpt", "claude"]),
                rng.choice([1, 2]),
            )
        )
    return out


def random_span(rng: random.Random, days: int = 2) -> tuple[datetime, datetime]:
    a, b = sorted(rng.randrange(days * 1440 + 1) for _ in range(2))
    return T0 + a * MINUTE, T0 + b * MINUTE


# -- exactness -----------------------------------------------------------------------------------


def test_between_is_the_customers_billed_usage_for_any_span(world: World) -> None:
    rng = random.Random(7)
    world.customer("acme", ["a1", "a2"])
    world.customer("beta", ["b1"])
    world.customer("later", ["w1"], linked=False)  # its usage waits unbound
    world.feature("tok", TOKENS)
    world.add(*random_events(rng, ["a1", "a2", "b1", "w1"], 300))
    world.bind()  # part of the history bound…
    world.add(*random_events(rng, ["a1", "a2", "b1", "w1"], 150))  # …and part not yet
    feature = world.features["tok"]

    def check(spans: list[tuple[datetime, datetime]]) -> None:
        for customer in ("acme", "beta", "later"):
            cuts = [t for span in spans for t in span]
            usage = FeatureUsage.load(
                world.store, feature, customer, T0, T0 + timedelta(days=2), cuts=cuts
            )
            for a, b in spans:
                assert usage.between(a, b) == world.expected(customer, a, b), (customer, a, b)
            # A span no cut named is read when asked, and is as exact.
            a, b = T0 + 61 * MINUTE + 7 * HOUR, T0 + 30 * HOUR + 59 * MINUTE
            assert usage.between(a, b) == world.expected(customer, a, b)

    spans = [random_span(rng) for _ in range(25)] + [(T0, T0 + timedelta(days=2))]
    check(spans)  # before any refresh: every hour is read raw
    assert refresh_feature_usage(world.store, feature) > 0
    check(spans)  # from the hourly cells: the same figures
    assert refresh_feature_usage(world.store, feature) == 0  # nothing changed since


def test_fractions_add_up_as_decimals_across_hours(world: World) -> None:
    """An hour's figure is the database's float sum, made Decimal by its shortest text (as
    billing sums a window); hours add up in decimal, so 0.1 in one and 0.2 in the next is 0.3."""
    world.customer("acme", ["a1"])
    feature = world.feature("tok", TOKENS)
    world.add(
        Event("a1", T0 + 5 * MINUTE, Decimal("0.1"), "gpt", 1),
        Event("a1", T0 + HOUR + 6 * MINUTE, Decimal("0.2"), "gpt", 1),
        Event("a1", T0 + 2 * HOUR + 1 * MINUTE, Decimal("0.1"), "gpt", 1),
        Event("a1", T0 + 2 * HOUR + 2 * MINUTE, Decimal("0.2"), "gpt", 1),
    )
    world.bind()
    refresh_feature_usage(world.store, feature)
    usage = FeatureUsage.load(world.store, feature, "acme", T0, T0 + 3 * HOUR)
    assert usage.between(T0, T0 + 2 * HOUR) == Decimal("0.3")  # not 0.30000000000000004
    assert usage.between(T0 + 2 * HOUR, T0 + 3 * HOUR) == Decimal(repr(0.1 + 0.2))


def test_count_meters_count_rows(world: World) -> None:
    rng = random.Random(3)
    world.customer("acme", ["a1", "a2"])
    world.feature("calls", PROMPTS)
    world.add(*random_events(rng, ["a1", "a2"], 120, days=1))
    world.bind()
    world.add(*random_events(rng, ["a1"], 30, days=1))
    refresh_feature_usage(world.store, world.features["calls"])
    usage = FeatureUsage.load(world.store, world.features["calls"], "acme", T0, T0 + 24 * HOUR)
    for _ in range(10):
        a, b = random_span(rng, days=1)
        assert usage.between(a, b) == world.expected("acme", a, b, count=True)


def test_group_filters_count_only_the_rows_that_match(world: World) -> None:
    rng = random.Random(11)
    world.customer("acme", ["a1"])
    world.feature("gpt", TOKENS, {"model": "gpt"})
    world.feature("gpt-tier-2", TOKENS, {"model": "gpt", "tier": "2"})  # a number in the JSON
    world.add(*random_events(rng, ["a1"], 200, days=1))
    world.add(Event("a1", T0 + 3 * MINUTE, Decimal(5), None, 2))  # no model: matches nothing
    world.bind()
    world.add(*random_events(rng, ["a1"], 40, days=1))
    for key, filters in (("gpt", {"model": "gpt"}), ("gpt-tier-2", {"model": "gpt", "tier": "2"})):
        feature = world.features[key]
        refresh_feature_usage(world.store, feature)
        usage = FeatureUsage.load(world.store, feature, "acme", T0, T0 + 24 * HOUR)
        for _ in range(8):
            a, b = random_span(rng, days=1)
            assert usage.between(a, b) == world.expected("acme", a, b, filters=filters)
        whole = world.expected("acme", T0, T0 + 24 * HOUR, filters=filters)
        assert 0 < whole < world.expected("acme", T0, T0 + 24 * HOUR)


def test_a_moved_subject_leaves_its_bound_usage_and_takes_its_unbound_usage(
    world: World,
) -> None:
    world.customer("acme", ["s1"])
    world.customer("beta", [])
    feature = world.feature("tok", TOKENS)
    world.add(Event("s1", T0 + 10 * MINUTE, Decimal(4), "gpt", 1))
    world.bind()  # billed to acme
    world.add(Event("s1", T0 + 20 * MINUTE, Decimal(6), "gpt", 1))  # waiting
    refresh_feature_usage(world.store, feature)
    world.move("s1", "acme", "beta")

    def figures() -> tuple[Decimal, Decimal]:
        out = []
        for key in ("acme", "beta"):
            usage = FeatureUsage.load(world.store, feature, key, T0, T0 + HOUR)
            out.append(usage.between(T0, T0 + HOUR))
            assert out[-1] == world.expected(key, T0, T0 + HOUR)
        return out[0], out[1]

    assert figures() == (Decimal(4), Decimal(6))
    world.bind()  # the waiting row goes to beta, as the figures said
    assert figures() == (Decimal(4), Decimal(6))
    refresh_feature_usage(world.store, feature)
    assert figures() == (Decimal(4), Decimal(6))


def test_a_late_event_changes_the_next_read_refreshed_or_not(world: World) -> None:
    world.customer("acme", ["a1"])
    feature = world.feature("tok", TOKENS)
    world.add(*(Event("a1", T0 + i * 17 * MINUTE, Decimal(i), "gpt", 1) for i in range(1, 60)))
    world.bind()
    refresh_feature_usage(world.store, feature)
    span = (T0, T0 + 20 * HOUR)

    def read() -> Decimal:
        return FeatureUsage.load(world.store, feature, "acme", *span).between(*span)

    before = read()
    world.add(Event("a1", T0 + 3 * HOUR + 30 * MINUTE, Decimal(100), "gpt", 1))  # late
    assert read() == before + 100  # unbound: read live
    world.bind()
    assert read() == before + 100  # bound, its cell not refreshed: read raw
    assert refresh_feature_usage(world.store, feature) == 1
    assert read() == before + 100 == world.expected("acme", *span)


def test_refresh_in_small_pages_gives_the_same_cells(world: World) -> None:
    rng = random.Random(5)
    world.customer("acme", ["a1", "a2"])
    world.customer("beta", ["b1"])
    feature = world.feature("tok", TOKENS)
    for _ in range(4):  # four writes and bindings: several change numbers
        world.add(*random_events(rng, ["a1", "a2", "b1"], 40))
        world.bind()
    assert refresh_feature_usage(world.store, feature, page_rows=7) > 0
    for customer in ("acme", "beta"):
        usage = FeatureUsage.load(world.store, feature, customer, T0, T0 + 48 * HOUR)
        assert usage.between(T0, T0 + 48 * HOUR) == world.expected(customer, T0, T0 + 48 * HOUR)


def test_only_sum_and_count_meters_can_be_burned() -> None:
    with pytest.raises(ValueError, match="SUM and COUNT"):
        MeteredFeature("f", "peak", Aggregation.MAX)


# -- cost ----------------------------------------------------------------------------------------


@contextmanager
def statements(store: Store) -> Iterator[list[tuple[str, Any]]]:
    """Every SQL statement the store runs, with its parameters, while in use."""
    seen: list[tuple[str, Any]] = []

    def record(conn: Any, cursor: Any, statement: str, params: Any, *_: Any) -> None:
        seen.append((" ".join(statement.split()), params))

    # The read sessions' engine is the engine with options: its statements are the engine's.
    sa_event.listen(store.engine, "before_cursor_execute", record)
    try:
        yield seen
    finally:
        sa_event.remove(store.engine, "before_cursor_execute", record)


def _keys_in(params: Any) -> set[str]:
    values = params.values() if isinstance(params, dict) else params
    found: set[str] = set()
    for value in values:
        if isinstance(value, (list, tuple, dict)):
            found |= _keys_in(value)
        elif isinstance(value, str) and value.startswith("cust-"):
            found.add(value)
    return found


def test_a_refresh_reads_only_the_cells_that_changed(world: World) -> None:
    """After one late event among 20 customers with history, a refresh reads the changed rows
    by change number and the one changed cell's customer, and writes that cell alone."""
    for i in range(20):
        world.customer(f"cust-{i:02d}", [f"subj{i:02d}"])
    feature = world.feature("tok", TOKENS)
    rng = random.Random(1)
    for i in range(20):
        world.add(*random_events(rng, [f"subj{i:02d}"], 10))
    world.bind()
    refresh_feature_usage(world.store, feature)
    world.add(Event("subj07", T0 + 5 * HOUR + 3 * MINUTE, Decimal(3), "gpt", 1))
    world.bind()
    with statements(world.store) as log:
        assert refresh_feature_usage(world.store, feature) == 1
    usage_reads = [(s, p) for s, p in log if s.startswith("SELECT") and "FROM usage_value" in s]
    assert usage_reads
    for statement, params in usage_reads:
        assert "seq >" in statement or _keys_in(params) == {"cust-07"}, statement
        assert _keys_in(params) <= {"cust-07"}, statement
    writes = [(s, p) for s, p in log if "INSERT INTO entitlement_usage_hour" in s]
    assert len(writes) == 1 and _keys_in(writes[0][1]) == {"cust-07"}
    usage = FeatureUsage.load(world.store, feature, "cust-07", T0, T0 + 48 * HOUR)
    assert usage.between(T0, T0 + 48 * HOUR) == world.expected("cust-07", T0, T0 + 48 * HOUR)


# -- snapshots -----------------------------------------------------------------------------------


def snapshot_of(usage: FeatureUsage, entitlement_id: str, at: datetime) -> EntitlementSnapshot:
    return EntitlementSnapshot(
        entitlement_id=entitlement_id,
        at=at,
        balances={"G1": Decimal("12.5"), "G2": Decimal(0)},
        overage=Decimal("0.25"),
        usage_mark=usage.usage_mark,
        max_usage_id=usage.max_usage_id,
        subjects_hash=usage.subjects_hash,
    )


def snapshot_world(world: World) -> tuple[MeteredFeature, str, str]:
    world.customer("acme", ["a1"])
    world.customer("beta", ["b1"])
    feature = world.feature("tok", TOKENS)
    acme, beta = world.entitlement("acme", "tok"), world.entitlement("beta", "tok")
    world.add(
        Event("a1", T0 + 10 * MINUTE, Decimal(1), "gpt", 1),
        Event("b1", T0 + 10 * MINUTE, Decimal(1), "gpt", 1),
    )
    world.bind()
    refresh_feature_usage(world.store, feature)
    return feature, acme, beta


def test_snapshots_round_trip_and_the_latest_at_or_before_is_found(world: World) -> None:
    feature, acme, _ = snapshot_world(world)
    usage = FeatureUsage.load(world.store, feature, "acme", T0, T0 + 3 * HOUR)
    first = snapshot_of(usage, acme, T0 + HOUR)
    assert save_snapshot(world.store, first)
    assert save_snapshot(world.store, snapshot_of(usage, acme, T0 + 2 * HOUR))
    assert latest_snapshot(world.store, acme, T0 + HOUR + 59 * MINUTE) == first
    assert latest_snapshot(world.store, acme, T0 + 3 * HOUR).at == T0 + 2 * HOUR  # type: ignore[union-attr]
    assert latest_snapshot(world.store, acme, T0 + 59 * MINUTE) is None
    with world.store.session() as session:
        assert drop_snapshots(session, acme) == 2
    assert latest_snapshot(world.store, acme, T0 + 3 * HOUR) is None


def test_a_refresh_drops_the_snapshots_after_a_cell_it_changes(world: World) -> None:
    feature, acme, beta = snapshot_world(world)
    for key, entitlement in (("acme", acme), ("beta", beta)):
        usage = FeatureUsage.load(world.store, feature, key, T0, T0 + 6 * HOUR)
        for hours in (2, 5):
            assert save_snapshot(world.store, snapshot_of(usage, entitlement, T0 + hours * HOUR))
    # acme's usage changes in hour 3: its snapshot at 5h goes, the one at 2h stays; beta's stay.
    world.add(Event("a1", T0 + 3 * HOUR + 59 * MINUTE, Decimal(1), "gpt", 1))
    world.bind()
    refresh_feature_usage(world.store, feature)
    assert latest_snapshot(world.store, acme, T0 + 6 * HOUR).at == T0 + 2 * HOUR  # type: ignore[union-attr]
    assert latest_snapshot(world.store, beta, T0 + 6 * HOUR).at == T0 + 5 * HOUR  # type: ignore[union-attr]
    # A change in the hour a snapshot falls in drops it, even a change after it (the hour is
    # the grain); the snapshot at that hour's start stays.
    usage = FeatureUsage.load(world.store, feature, "acme", T0, T0 + 6 * HOUR)
    assert save_snapshot(world.store, snapshot_of(usage, acme, T0 + 2 * HOUR + 40 * MINUTE))
    world.add(Event("a1", T0 + 2 * HOUR + 50 * MINUTE, Decimal(1), "gpt", 1))
    world.bind()
    refresh_feature_usage(world.store, feature)
    assert latest_snapshot(world.store, acme, T0 + 6 * HOUR).at == T0 + 2 * HOUR  # type: ignore[union-attr]


def test_a_snapshot_is_skipped_when_the_cursor_moved_since_its_figures(world: World) -> None:
    feature, acme, _ = snapshot_world(world)
    usage = FeatureUsage.load(world.store, feature, "acme", T0, T0 + 6 * HOUR)
    world.add(Event("b1", T0 + 4 * HOUR, Decimal(1), "gpt", 1))
    world.bind()
    refresh_feature_usage(world.store, feature)  # moves the cursor past usage.usage_mark
    assert not save_snapshot(world.store, snapshot_of(usage, acme, T0 + 2 * HOUR))
    assert latest_snapshot(world.store, acme, T0 + 6 * HOUR) is None
    again = FeatureUsage.load(world.store, feature, "acme", T0, T0 + 6 * HOUR)
    assert save_snapshot(world.store, snapshot_of(again, acme, T0 + 2 * HOUR))


def test_a_reader_finds_a_snapshot_stale_when_usage_before_it_waits_or_subjects_change(
    world: World,
) -> None:
    feature, acme, _ = snapshot_world(world)
    at = T0 + 2 * HOUR

    def current() -> bool | None:
        saved = latest_snapshot(world.store, acme, at)
        assert saved is not None
        return FeatureUsage.load(
            world.store, feature, "acme", at, T0 + 6 * HOUR, snapshot=saved
        ).snapshot_current

    def fresh_snapshot() -> None:
        usage = FeatureUsage.load(world.store, feature, "acme", T0, T0 + 6 * HOUR)
        assert save_snapshot(world.store, snapshot_of(usage, acme, at))

    fresh_snapshot()
    assert current() is True
    world.add(Event("a1", T0 + 3 * HOUR, Decimal(1), "gpt", 1))  # after it: no matter
    assert current() is True
    world.add(Event("a1", T0 + HOUR, Decimal(1), "gpt", 1))  # before it, unbound
    assert current() is False
    fresh_snapshot()
    assert current() is True
    world.bind()  # bound, not refreshed yet: rows before it wait for the cursor
    assert current() is False
    refresh_feature_usage(world.store, feature)  # which drops it
    assert latest_snapshot(world.store, acme, at) is None
    fresh_snapshot()
    world.catalog.upsert_subject({"key": "a2"})
    world.catalog.update_customer("acme", {"usageAttribution": {"subjectKeys": ["a1", "a2"]}})
    assert current() is False


# -- reads: statements and snapshots ---------------------------------------------------------------


def test_more_hours_read_raw_and_cut_than_a_statement_holds_give_the_same_figures(
    world: World, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Hour ranges read raw and parts of hours past one statement's share take statements of
    their own, in the same read; the figures are the same."""
    monkeypatch.setattr(_usage, "_RANGES", 3)
    monkeypatch.setattr(_usage, "_PARTS", 4)
    rng = random.Random(17)
    world.customer("acme", ["a1", "a2"])
    world.customer("beta", ["b1"])
    feature = world.feature("gpt", TOKENS, {"model": "gpt"})
    subjects = ["a1", "a2", "b1"]
    world.add(*random_events(rng, subjects, 150))
    world.bind()
    refresh_feature_usage(world.store, feature)
    world.add(*random_events(rng, subjects, 60))
    world.bind()  # bound, not refreshed: hours here and there are read raw
    world.add(*random_events(rng, subjects, 40))  # waiting
    spans = [random_span(rng) for _ in range(12)]
    cuts = [t for span in spans for t in span]
    end = T0 + timedelta(days=2)
    for customer in ("acme", "beta"):
        with statements(world.store) as log:
            usage = FeatureUsage.load(world.store, feature, customer, T0, end, cuts=cuts)
        assert len([s for s, _ in log if s.startswith("SELECT")]) > 3
        for a, b in [*spans, (T0, end)]:
            expected = world.expected(customer, a, b, filters={"model": "gpt"})
            assert usage.between(a, b) == expected, (customer, a, b)


def test_a_load_is_two_statements(world: World) -> None:
    """Cursor, counter, subjects and the rows past the cursor in one; the cells, the hours
    read raw, the unbound rows, the cut hours' parts and the snapshot's check in another."""
    feature, acme, _ = snapshot_world(world)
    world.add(Event("a1", T0 + 4 * HOUR + 20 * MINUTE, Decimal(2), "gpt", 1))
    world.bind()  # read raw
    world.add(Event("a1", T0 + 5 * HOUR + 40 * MINUTE, Decimal(3), "gpt", 1))  # waiting
    usage = FeatureUsage.load(world.store, feature, "acme", T0, T0 + 6 * HOUR)
    assert save_snapshot(world.store, snapshot_of(usage, acme, T0 + HOUR))
    cuts = [T0 + 10 * MINUTE, T0 + 4 * HOUR + 50 * MINUTE, T0 + 5 * HOUR + 5 * MINUTE]
    with world.store.read_session() as session, statements(world.store) as log:
        saved = latest_snapshot(world.store, acme, T0 + 2 * HOUR, session=session)
        usage = FeatureUsage.load(
            world.store,
            feature,
            "acme",
            T0 + HOUR,
            T0 + 6 * HOUR + 30 * MINUTE,
            cuts=cuts,
            snapshot=saved,
            session=session,
        )
    assert len([s for s, _ in log if s.startswith("SELECT")]) == 3
    assert usage.snapshot_current is True
    for a, b in [(T0 + HOUR, T0 + 6 * HOUR + 30 * MINUTE), (cuts[1], cuts[2])]:
        assert usage.between(a, b) == world.expected("acme", a, b)


def test_loads_in_one_read_session_read_one_snapshot(world: World) -> None:
    """A caller's read session: every load and snapshot in it sees the store as at its first
    read, whatever is written meanwhile; a load of its own afterwards sees the writes."""
    feature, acme, _ = snapshot_world(world)
    calls = world.feature("calls", PROMPTS)
    refresh_feature_usage(world.store, calls)
    span = (T0, T0 + 6 * HOUR)
    usage = FeatureUsage.load(world.store, feature, "acme", *span)
    assert save_snapshot(world.store, snapshot_of(usage, acme, T0 + HOUR))
    with world.store.read_session() as session:
        first = FeatureUsage.load(world.store, feature, "acme", *span, session=session)
        world.add(Event("a1", T0 + 30 * MINUTE, Decimal(7), "gpt", 1))  # before the snapshot
        saved = latest_snapshot(world.store, acme, T0 + 2 * HOUR, session=session)
        again = FeatureUsage.load(
            world.store, feature, "acme", T0 + HOUR, span[1], snapshot=saved, session=session
        )
        counted = FeatureUsage.load(world.store, calls, "acme", *span, session=session)
        assert again.snapshot_current is True
        assert again.between(T0 + HOUR, span[1]) == first.between(T0 + HOUR, span[1])
        assert counted.between(*span) == 1
    later = FeatureUsage.load(world.store, feature, "acme", *span)
    assert later.between(*span) == first.between(*span) + 7 == world.expected("acme", *span)
    saved = latest_snapshot(world.store, acme, T0 + 2 * HOUR)
    assert not FeatureUsage.load(
        world.store, feature, "acme", T0 + HOUR, span[1], snapshot=saved
    ).snapshot_current


# -- a property ----------------------------------------------------------------------------------


def test_spans_add_up(world: World) -> None:
    """between(a, b) + between(b, c) == between(a, c), for any minutes a ≤ b ≤ c."""
    rng = random.Random(13)
    world.customer("acme", ["a1", "a2"])
    feature = world.feature("tok", TOKENS)
    events = random_events(rng, ["a1", "a2"], 150, days=1)
    for e in events:  # fractions that are not exact in binary, too
        e.tokens = e.tokens / 10
    world.add(*events[:100])
    world.bind()
    refresh_feature_usage(world.store, feature)
    world.add(*events[100:])
    end = T0 + 24 * HOUR
    usage = FeatureUsage.load(world.store, feature, "acme", T0, end)
    minutes = st.integers(min_value=0, max_value=24 * 60)

    @settings(
        max_examples=40,
        deadline=None,
        database=None,
        suppress_health_check=[HealthCheck.function_scoped_fixture],
    )
    @given(st.lists(minutes, min_size=3, max_size=3))
    def adds_up(points: list[int]) -> None:
        a, b, c = (T0 + m * MINUTE for m in sorted(points))
        assert usage.between(a, b) + usage.between(b, c) == usage.between(a, c)

    adds_up()
