"""Entitlement values, access and history end to end, on SQLite and PostgreSQL: events
ingested for two subjects of one customer burn one customer entitlement, bound or not yet
bound; a late event changes the next read (the cached period-start balances with it); figures
worked out by hand in the comments, not by the code under test."""

from __future__ import annotations

from datetime import UTC, datetime
from decimal import Decimal
from typing import Any

import pytest
from freezegun import freeze_time

from metersync.catalog import Catalog
from metersync.catalog.meters import Meter, MeterSettings
from metersync.entitlements import EntitlementBook, EntitlementValue, EntitlementValues
from metersync.errors import InvalidInput
from metersync.store import Store
from metersync.store.entitlement_usage import latest_snapshot
from metersync.sync.journal import Journal
from metersync.usage.aggregate import bind_usage
from metersync.usage.ingest import ingest_events

D = Decimal
TOKENS = Meter.of(
    MeterSettings.model_validate(
        {
            "slug": "tokens",
            "event_type": "prompt",
            "aggregation": "SUM",
            "value_property": "$.tokens",
        }
    )
)


def at(text: str) -> datetime:
    return datetime.fromisoformat(text).replace(tzinfo=UTC)


class World:
    def __init__(self, store: Store, catalog: Catalog) -> None:
        self.store, self.catalog = store, catalog
        self.book = EntitlementBook(store, [TOKENS])
        self.values = EntitlementValues(self.book, store, [TOKENS])
        self.n = 0

    def ingest(self, subject: str, when: str, tokens: int) -> None:
        self.n += 1
        with freeze_time(at("2027-03-01 00:00")):  # ingest refuses events from the future
            report = self._ingest(subject, when, tokens)
        assert report.accepted == 1

    def _ingest(self, subject: str, when: str, tokens: int) -> Any:
        return ingest_events(
            self.catalog,
            [TOKENS],
            [
                {
                    "specversion": "1.0",
                    "id": f"e{self.n}",
                    "source": "test",
                    "type": "prompt",
                    "subject": subject,
                    "time": at(when).isoformat(),
                    "data": {"tokens": tokens},
                }
            ],
        )


@pytest.fixture
def world(store: Store, catalog: Catalog) -> World:
    catalog.create_customer(
        {"key": "acme", "name": "Acme", "usageAttribution": {"subjectKeys": ["app-1", "app-2"]}}
    )
    Journal(store, "stripe").mark_synced(
        "acme", external_id="cus_acme", pushed={"fields": {}, "metadata": {}}
    )
    w = World(store, catalog)
    with freeze_time(at("2027-01-01 00:00")):
        w.book.create_feature({"key": "gpt_4", "name": "GPT-4", "meterSlug": "tokens"})
        w.book.create_entitlement(
            "acme",
            {
                "type": "metered",
                "featureKey": "gpt_4",
                "usagePeriod": {"interval": "MONTH", "anchor": "2027-01-01T00:00:00Z"},
                "grants": [
                    {"amount": 100, "priority": 1, "effectiveAt": "2027-01-01T00:00:00Z"},
                    {"amount": 50, "priority": 2, "effectiveAt": "2027-01-15T00:00:00Z"},
                ],
            },
        )
    return w


def figures(value: EntitlementValue) -> tuple[Decimal | None, Decimal | None, Decimal | None, bool]:
    return value.balance, value.usage, value.overage, value.has_access


def test_two_subjects_burn_one_customer_entitlement_and_a_late_event_changes_the_next_read(
    world: World,
) -> None:
    world.ingest("app-1", "2027-01-05 10:00", 30)
    bind_usage(world.store, "stripe")  # app-1's usage is billed (bound); app-2's waits
    world.ingest("app-2", "2027-01-20 12:00", 90)
    # Jan 5: 30 from G1 (priority 1): G1 70. Jan 15: G2 (50) takes effect. Jan 20: 90 →
    # G1 70 → 0, then G2 50 → 30. Balance 30, usage 120.
    assert figures(world.values.value("acme", "gpt_4", at("2027-01-25 00:00"))) == (
        D(30),
        D(120),
        D(0),
        True,
    )
    world.ingest("app-1", "2027-02-03 09:00", 40)
    # Feb 1 rollover (max rollover = amount, min 0): G1 0, G2 30. Feb 3: 40 → G2 0, overage 10.
    assert figures(world.values.value("acme", "gpt_4", at("2027-02-10 00:00"))) == (
        D(0),
        D(40),
        D(10),
        False,
    )
    assert (
        latest_snapshot(
            world.store,
            world.book.get_entitlement("gpt_4", customer="acme").id,
            at("2027-02-01 00:00"),
        )
        is not None
    )
    # A late event in January: G2 30 → 20 on Jan 31; Feb rolls over 20; Feb's 40 leaves 20 over.
    world.ingest("app-2", "2027-01-31 08:00", 10)
    assert figures(world.values.value("acme", "gpt_4", at("2027-02-10 00:00"))) == (
        D(0),
        D(40),
        D(20),
        False,
    )
    bind_usage(world.store, "stripe")  # binding moves nothing: the same figures
    assert figures(world.values.value("acme", "gpt_4", at("2027-02-10 00:00"))) == (
        D(0),
        D(40),
        D(20),
        False,
    )
    # A value at a time is the value at the next whole minute: the Feb 3 09:00 event counts
    # at 09:00:30, not at 08:59:59 (the minute 08:59 ends before it).
    assert world.values.value("acme", "gpt_4", at("2027-02-03 09:00:30")).usage == D(40)
    assert world.values.value("acme", "gpt_4", at("2027-02-03 08:59:00")).usage == D(0)


def test_a_grant_written_later_drops_the_cached_balances(world: World) -> None:
    world.ingest("app-1", "2027-01-05 10:00", 130)
    # Jan: 130 → G1 0, 30 over until G2 takes effect Jan 15 and absorbs it: G2 20.
    assert figures(world.values.value("acme", "gpt_4", at("2027-02-10 00:00"))) == (
        D(20),
        D(0),
        D(0),
        True,
    )
    with freeze_time(at("2027-02-10 00:00")):
        world.book.create_grant(
            "acme", "gpt_4", {"amount": 5, "priority": 1, "effectiveAt": "2027-01-02T00:00:00Z"}
        )
    # The new grant burns first from Jan 5 (priority 1, created last but G1 has the same
    # priority and no expiry, so creation order: G1 first, then it): 130 → G1 0, new 0,
    # 25 over → G2 25 left. Rolls over 25 (max = 50).
    assert world.values.value("acme", "gpt_4", at("2027-02-10 00:00")).balance == D(25)


def test_access_boolean_static_and_history(world: World, catalog: Catalog) -> None:
    with freeze_time(at("2027-01-01 00:00")):
        world.book.create_feature({"key": "sso", "name": "SSO"})
        world.book.create_feature({"key": "limits", "name": "Limits"})
        world.book.create_entitlement("acme", {"type": "boolean", "featureKey": "sso"})
        world.book.create_entitlement(
            "acme", {"type": "static", "featureKey": "limits", "config": '{"seats": 5}'}
        )
    world.ingest("app-1", "2027-01-05 10:00", 30)
    world.ingest("app-2", "2027-01-20 12:00", 90)
    access = world.values.access("acme", at("2027-01-25 00:00"))
    assert sorted(access) == ["gpt_4", "limits", "sso"]
    assert access["sso"].has_access and access["limits"].config == '{"seats": 5}'
    history = world.values.history(
        "acme", "gpt_4", start=at("2027-01-01 00:00"), end=at("2027-01-31 00:00"), window="DAY"
    )
    # Only the days with usage, each with the balance at its start: 100 on Jan 5; on Jan 20,
    # G1 70 + G2 50 = 120.
    assert [(w.start.day, w.usage, w.balance_at_start) for w in history.windows] == [
        (5, D(30), D(100)),
        (20, D(90), D(120)),
    ]
    assert sum((s.usage for s in history.segments), D(0)) == D(120)
    # In Tokyo (UTC+9), Jan 20 12:00 UTC is Jan 20 21:00: the day window starts at 15:00 UTC
    # the day before.
    tokyo = world.values.history(
        "acme",
        "gpt_4",
        start=at("2027-01-15 00:00"),
        end=at("2027-01-31 00:00"),
        window="DAY",
        tz="Asia/Tokyo",
    )
    assert [(w.start, w.usage) for w in tokyo.windows] == [(at("2027-01-19 15:00"), D(90))]
    with pytest.raises(InvalidInput, match="windowTimeZone: 'Mars/Base' is not an IANA"):
        world.values.history(
            "acme",
            "gpt_4",
            start=at("2027-01-01 00:00"),
            end=at("2027-01-31 00:00"),
            tz="Mars/Base",
        )


def test_the_service_refresh_folds_usage_and_leaves_every_figure_as_it_was(world: World) -> None:
    world.ingest("app-1", "2027-01-05 10:00", 30)
    bind_usage(world.store, "stripe")
    world.ingest("app-2", "2027-01-20 12:00", 90)
    before = world.values.value("acme", "gpt_4", at("2027-01-25 00:00"))
    assert world.values.refresh() == 1  # the one bound cell: Jan 5 10:00 of acme
    assert world.values.refresh() == 0  # nothing new: nothing recomputed
    assert world.values.value("acme", "gpt_4", at("2027-01-25 00:00")) == before


def test_the_shapes_both_doors_render_are_compact_exact_and_the_engines_periods() -> None:
    from metersync.entitlements import (
        Entitlement,
        EntitlementGrant,
        Interval,
        Kind,
        UsagePeriod,
        UsageReset,
        entitlement_json,
        exact_json,
        grant_json,
    )
    from metersync.entitlements._model import Issue

    month = UsagePeriod(Interval.parse("MONTH"), at("2027-01-01 00:00"))
    entitlement = Entitlement(
        id="ent",
        kind=Kind.METERED,
        customer_id="cus",
        customer_key="acme",
        feature_id="feat",
        feature_key="tokens",
        created_at=at("2027-01-10 00:00"),
        updated_at=at("2027-01-10 00:00"),
        usage_period=month,
        measure_usage_from=at("2027-01-10 00:00"),
        issue=Issue(D("1E+3")),
    )
    # A manual reset that keeps the anchor still starts a period (the engine's rule).
    reset = UsageReset("r", "ent", at("2027-02-15 00:00"), False, True, at("2027-02-15 00:00"))
    shape = entitlement_json(entitlement, [reset], at("2027-02-20 12:00"))
    assert "metadata" not in shape and "deletedAt" not in shape and "activeTo" not in shape
    assert shape["usagePeriod"]["anchor"] == "2027-01-01T00:00:00.000Z"
    assert shape["currentUsagePeriod"] == {
        "from": "2027-02-15T00:00:00.000Z",
        "to": "2027-03-01T00:00:00.000Z",
    }
    assert shape["lastReset"] == "2027-02-15T00:00:00.000Z"
    encoded = exact_json(shape)
    assert b'"issueAfterReset":1000,' in encoded and b'"issue":{"amount":1000,' in encoded
    v1 = entitlement_json(entitlement, [reset], at("2027-02-20 12:00"), subject_key="acme_api")
    assert v1["subjectKey"] == "acme_api" and not {"customerId", "issue"} & set(v1)

    grant = EntitlementGrant(
        id="g",
        entitlement_id="ent",
        amount=D("0.1"),
        priority=1,
        effective_at=at("2027-03-01 00:00"),
        created_at=at("2027-02-20 00:00"),
        updated_at=at("2027-02-20 00:00"),
        recurrence=UsagePeriod(Interval.parse("DAY"), at("2027-03-01 00:00")),
    )
    shown = grant_json(grant, at("2027-02-20 12:00"))
    # No maximum means the amount, said; the first recurrence is after the grant takes effect.
    assert shown["maxRolloverAmount"] == D("0.1") and "metadata" not in shown
    assert shown["nextRecurrence"] == "2027-03-02T00:00:00.000Z"
    assert b'"amount":0.1,' in exact_json(shown)
