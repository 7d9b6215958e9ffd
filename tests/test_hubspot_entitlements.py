"""Entitlement figures on HubSpot companies: the catalog and entitlements on SQLite and
PostgreSQL, the sync engine, the HubSpot target over real HTTP against the HubSpot emulator.
A company is written when its figures change (usage, a grant, time), and only then."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from freezegun import freeze_time

from metersync.catalog import Catalog
from metersync.catalog.meters import Meter, MeterSettings
from metersync.entitlements import EntitlementBook
from metersync.settings import HubSpotSettings
from metersync.sync.apply import RetryPolicy
from metersync.sync.context import ContextReader
from metersync.sync.customer_sync import RunResult, SyncOptions, sync_customers
from metersync.sync.model import DeletePolicy
from metersync.sync.ports import MANAGED_KEY, ContextNeeds
from metersync.targets.hubspot import HubSpotTarget, entitlement_property
from metersync.testing.hubspot import HubSpotEmulator
from metersync.usage.ingest import ingest_events

TOKEN = "pat-na1-00000000-0000-0000-0000-000000000000"
FAST_RETRY = RetryPolicy(attempts=8, base_delay_s=0.01, max_delay_s=0.05)
TOKENS = Meter.of(
    MeterSettings(
        slug="tokens",
        event_type="prompt",
        aggregation="SUM",  # type: ignore[arg-type]
        value_property="$.tokens",
    )
)
FEATURES = ("gpt_4", "sso")


@pytest.fixture
def hubspot() -> Iterator[HubSpotEmulator]:
    with HubSpotEmulator(
        token=TOKEN, rate_limit_per_10s=None, multi_status_needs_trace_id=True
    ) as running:
        yield running


@pytest.fixture
def book(catalog: Catalog) -> EntitlementBook:
    for i in range(3):
        catalog.create_customer(
            {
                "key": f"c{i}",
                "name": f"Customer {i}",
                "usageAttribution": {"subjectKeys": [f"c{i}"]},
            }
        )
    book = EntitlementBook(catalog.store, [TOKENS])
    with freeze_time("2026-01-01"):  # before any run the tests look at
        book.create_feature({"key": "gpt_4", "name": "GPT-4", "meterSlug": "tokens"})
        book.create_feature({"key": "sso", "name": "SSO"})
    return book


def metered(amount: int, **extra: Any) -> dict[str, Any]:
    return {
        "type": "metered",
        "featureKey": "gpt_4",
        "usagePeriod": {"interval": "MONTH", "anchor": "2026-01-01T00:00:00Z"},
        "measureUsageFrom": "CURRENT_PERIOD_START",
        "issue": {"amount": amount},
        **extra,
    }


def run(catalog: Catalog, hubspot: HubSpotEmulator, features: tuple[str, ...]) -> RunResult:
    options = SyncOptions(
        full=False,
        policy=DeletePolicy(),
        concurrency=200,
        retry=FAST_RETRY,
        meters=(TOKENS,),
        bind_usage=True,
    )

    async def go() -> RunResult:
        # No usage properties: the features' own meter still counts for the figures.
        target = HubSpotTarget(
            TOKEN,
            api_base=hubspot.url,
            requests_per_10s=1000,
            daily_reserve=0,
            entitlement_features=features,
        )
        try:
            return await sync_customers(catalog, target, options)
        finally:
            await target.close()

    return asyncio.run(go())


def use(catalog: Catalog, subject: str, tokens: int, event_id: str) -> None:
    at = datetime.now(UTC) - timedelta(seconds=5)
    event = {
        "specversion": "1.0",
        "id": event_id,
        "source": "test",
        "type": "prompt",
        "subject": subject,
        "time": at.isoformat().replace("+00:00", "Z"),
        "data": {"tokens": tokens},
    }
    assert ingest_events(catalog, [TOKENS], [event]).accepted == 1


def this_minute() -> str:
    return datetime.now(UTC).replace(second=0, microsecond=0).isoformat()


def figures(hubspot: HubSpotEmulator, key: str, feature: str = "gpt_4") -> dict[str, str | None]:
    (company,) = [c for c in hubspot.companies() if c["properties"][MANAGED_KEY] == key]
    return {
        figure: company["properties"].get(entitlement_property(feature, figure)) or None
        for figure in ("access", "balance", "usage", "period_end")
    }


def test_companies_carry_the_figures_and_are_written_again_only_when_they_change(
    catalog: Catalog, book: EntitlementBook, hubspot: HubSpotEmulator
) -> None:
    made = book.create_entitlement("c0", metered(1000))
    book.create_entitlement("c1", {"type": "boolean", "featureKey": "sso"})
    book.create_entitlement("c2", metered(10))
    use(catalog, "c0", 100, "e1")
    assert made.usage_period is not None
    month_end = made.usage_period.period_at(datetime.now(UTC)).end
    end = month_end.strftime("%Y-%m-%dT%H:%M:%S.000Z")

    assert run(catalog, hubspot, FEATURES).counts == {"created": 3}
    assert figures(hubspot, "c0") == {
        "access": "true",
        "balance": "900",
        "usage": "100",
        "period_end": end,
    }
    assert figures(hubspot, "c2") == {
        "access": "true",
        "balance": "10",
        "usage": "0",
        "period_end": end,
    }
    # A boolean entitlement: access only; no entitlement: nothing.
    assert figures(hubspot, "c1", "sso") == {
        "access": "true",
        "balance": None,
        "usage": None,
        "period_end": None,
    }
    assert set(figures(hubspot, "c1").values()) == {None}
    assert set(figures(hubspot, "c2", "sso").values()) == {None}

    # Nothing changed: no call at all.
    calls = hubspot.calls()
    assert run(catalog, hubspot, FEATURES).counts == {}
    assert hubspot.calls() == calls

    # New usage of the feature's meter: that company alone.
    use(catalog, "c0", 50, "e2")
    assert run(catalog, hubspot, FEATURES).counts == {"updated": 1}
    assert figures(hubspot, "c0")["balance"] == "850"
    assert figures(hubspot, "c0")["usage"] == "150"

    # A new grant: that company alone.
    book.create_grant("c2", "gpt_4", {"amount": 5, "effectiveAt": this_minute()})
    assert run(catalog, hubspot, FEATURES).counts == {"updated": 1}
    assert figures(hubspot, "c2")["balance"] == "15"
    assert figures(hubspot, "c0")["balance"] == "850"

    # The entitlement deleted: its properties are cleared.
    book.delete_entitlement(book.get_entitlement("sso", customer="c1").id)
    assert run(catalog, hubspot, FEATURES).counts == {"updated": 1}
    assert set(figures(hubspot, "c1", "sso").values()) == {None}


def test_without_features_configured_nothing_is_written_for_entitlements(
    catalog: Catalog, book: EntitlementBook, hubspot: HubSpotEmulator
) -> None:
    book.create_entitlement("c0", metered(1000))
    assert run(catalog, hubspot, ()).counts == {"created": 3}
    names = {p["name"] for p in hubspot.properties("companies")}
    assert not any(name.startswith("metersync_ent_") for name in names)
    # A grant changes nothing the companies show.
    book.create_grant("c0", "gpt_4", {"amount": 5, "effectiveAt": this_minute()})
    assert run(catalog, hubspot, ()).counts == {}


# -- what changes with time alone ----------------------------------------------------------------


def reader(catalog: Catalog, now: str) -> ContextReader:
    return ContextReader(
        catalog.store,
        ContextNeeds(entitlements=("gpt_4",)),
        [TOKENS],
        datetime.fromisoformat(now),
    )


def test_a_period_boundary_grant_start_expiry_and_recurrence_mark_the_customer_changed(
    catalog: Catalog, book: EntitlementBook
) -> None:
    with freeze_time("2026-11-10 12:00:00"):
        book.create_entitlement(
            "c0", metered(10, usagePeriod={"interval": "DAY", "anchor": "2026-11-01T06:00:00Z"})
        )
        book.create_entitlement(
            "c1", metered(10, usagePeriod={"interval": "MONTH", "anchor": "2026-01-01T00:00:00Z"})
        )
        book.create_grant("c1", "gpt_4", {"amount": 5, "effectiveAt": "2026-11-12T08:00:00Z"})
        book.create_entitlement(
            "c2", metered(10, usagePeriod={"interval": "MONTH", "anchor": "2026-01-01T00:00:00Z"})
        )
        book.create_grant(
            "c2",
            "gpt_4",
            {
                "amount": 5,
                "effectiveAt": "2026-11-10T12:00:00Z",
                "expiration": {"duration": "DAY", "count": 3},
                "recurrence": {"interval": "PT10H"},
            },
        )
        # Another feature's entitlement is not looked at.
        book.create_feature({"key": "other", "name": "Other", "meterSlug": "tokens"})
        book.create_entitlement("c2", metered(1, featureKey="other"))
    since = datetime(2026, 11, 11, 5, 0, tzinfo=UTC)
    # Nothing written since, and no boundary between: nobody.
    assert reader(catalog, "2026-11-11T05:30:00+00:00").changed_since(since, "hubspot") == set()
    # c0's day starts again at 06:00; c2's grant recurs at 08:00 (every ten hours from 12:00).
    assert reader(catalog, "2026-11-11T06:30:00+00:00").changed_since(since, "hubspot") == {"c0"}
    assert reader(catalog, "2026-11-11T08:30:00+00:00").changed_since(since, "hubspot") == {
        "c0",
        "c2",
    }
    # c1's grant takes effect at 08:00 the next day; c2's expires on the 13th at 12:00.
    later = datetime(2026, 11, 12, 7, 0, tzinfo=UTC)
    assert reader(catalog, "2026-11-12T08:00:00+00:00").changed_since(later, "hubspot") == {"c1"}
    after_expiry = datetime(2026, 11, 13, 11, 0, tzinfo=UTC)
    assert reader(catalog, "2026-11-13T12:00:00+00:00").changed_since(after_expiry, "hubspot") == {
        "c2"
    }


def test_writes_mark_the_customer_changed(catalog: Catalog, book: EntitlementBook) -> None:
    with freeze_time("2026-11-10 12:00:00"):
        made = book.create_entitlement("c0", metered(10))
    since = datetime(2026, 11, 10, 13, 0, tzinfo=UTC)
    at = "2026-11-10T14:00:00+00:00"
    assert reader(catalog, at).changed_since(since, "hubspot") == set()
    with freeze_time("2026-11-10 13:30:00"):
        book.create_entitlement("c1", metered(10))
    assert reader(catalog, at).changed_since(since, "hubspot") == {"c1"}
    later = datetime(2026, 11, 10, 14, 0, tzinfo=UTC)
    with freeze_time("2026-11-10 14:30:00"):
        book.create_grant("c0", "gpt_4", {"amount": 1, "effectiveAt": "2026-11-10T14:30:00Z"})
    assert reader(catalog, "2026-11-10T15:00:00+00:00").changed_since(later, "hubspot") == {"c0"}
    with freeze_time("2026-11-10 15:30:00"):
        book.record_reset("c0", "gpt_4", {"effectiveAt": "2026-11-10T15:30:00Z"})
    assert reader(catalog, "2026-11-10T16:00:00+00:00").changed_since(
        datetime(2026, 11, 10, 15, 10, tzinfo=UTC), "hubspot"
    ) == {"c0"}
    with freeze_time("2026-11-10 16:30:00"):
        book.delete_entitlement(made.id)
    assert reader(catalog, "2026-11-10T17:00:00+00:00").changed_since(
        datetime(2026, 11, 10, 16, 10, tzinfo=UTC), "hubspot"
    ) == {"c0"}


def test_usage_of_a_features_meter_marks_the_customer_changed_without_usage_properties(
    catalog: Catalog, book: EntitlementBook
) -> None:
    book.create_entitlement("c1", metered(10))
    since = datetime.now(UTC)
    use(catalog, "c1", 3, "u1")
    found = reader(catalog, datetime.now(UTC).isoformat()).changed_since(since, "hubspot")
    assert "c1" in found


# -- the setting ---------------------------------------------------------------------------------


def test_the_setting_takes_feature_keys_only() -> None:
    assert HubSpotSettings().entitlement_features == []
    assert HubSpotSettings(entitlement_features=["gpt_4", "sso"]).entitlement_features == [
        "gpt_4",
        "sso",
    ]
    for bad in (["GPT-4"], ["gpt__4"], ["x" * 65], ["gpt_4", "gpt_4"]):
        with pytest.raises(ValueError, match=r"feature key|more than once"):
            HubSpotSettings(entitlement_features=bad)
