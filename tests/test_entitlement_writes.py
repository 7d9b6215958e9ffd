"""Features, entitlements, grants and resets as stored, on SQLite and PostgreSQL: OpenMeter's
rules (one live entitlement per customer and feature, override, void, resets) and the errors
a door shows (each naming its field)."""

from __future__ import annotations

from datetime import UTC, datetime
from decimal import Decimal

import pytest
from freezegun import freeze_time

from metersync.catalog import Catalog
from metersync.catalog.meters import Meter, MeterSettings
from metersync.entitlements import EntitlementBook
from metersync.errors import Conflict, InvalidInput, NotFound, PreconditionFailed
from metersync.store import Store

NOW = datetime(2027, 3, 15, 12, 30, 20, tzinfo=UTC)
TOKENS = Meter.of(
    MeterSettings(
        slug="tokens",
        event_type="prompt",
        aggregation="SUM",  # type: ignore[arg-type]
        value_property="$.tokens",
        group_by={"model": "$.model"},
    )
)
LATEST = Meter.of(
    MeterSettings(
        slug="seats",
        event_type="seats",
        aggregation="LATEST",  # type: ignore[arg-type]
        value_property="$.seats",
    )
)


@pytest.fixture
def book(store: Store, catalog: Catalog) -> EntitlementBook:
    catalog.create_customer(
        {"key": "acme", "name": "Acme", "usageAttribution": {"subjectKeys": ["acme-app"]}}
    )
    return EntitlementBook(store, [TOKENS, LATEST])


def metered(**extra: object) -> dict[str, object]:
    return {"type": "metered", "featureKey": "gpt_4", "usagePeriod": {"interval": "MONTH"}} | extra


@freeze_time(NOW)
def test_a_metered_entitlement_takes_its_defaults_at_a_whole_minute(book: EntitlementBook) -> None:
    book.create_feature({"key": "gpt_4", "name": "GPT-4", "meterSlug": "tokens"})
    made = book.create_entitlement("acme", metered(issue={"amount": 100}))
    minute = datetime(2027, 3, 15, 12, 30, tzinfo=UTC)
    assert made.usage_period is not None and made.usage_period.anchor == minute
    assert made.measure_usage_from == minute
    assert made.customer_key == "acme" and made.feature_key == "gpt_4"
    (issued,) = book.list_grants(entitlement=made.id)
    # The issued grant returns to its amount at every reset: min = max = amount.
    assert (issued.amount, issued.min_rollover, issued.max_rollover) == (
        Decimal(100),
        Decimal(100),
        Decimal(100),
    )
    assert book.get_entitlement("gpt_4", customer="acme").id == made.id


@freeze_time(NOW)
def test_measure_usage_from_the_current_period_start(book: EntitlementBook) -> None:
    book.create_feature({"key": "gpt_4", "name": "GPT-4", "meterSlug": "tokens"})
    made = book.create_entitlement(
        "acme",
        metered(
            usagePeriod={"interval": "MONTH", "anchor": "2027-01-31T00:00:00Z"},
            measureUsageFrom="CURRENT_PERIOD_START",
        ),
    )
    # Jan 31 + 1 month is Feb 28; + 2 months is Mar 31: the period holding Mar 15 starts Feb 28.
    assert made.measure_usage_from == datetime(2027, 2, 28, tzinfo=UTC)


def test_one_live_entitlement_per_customer_and_feature_and_override(book: EntitlementBook) -> None:
    with freeze_time(NOW) as clock:
        book.create_feature({"key": "gpt_4", "name": "GPT-4", "meterSlug": "tokens"})
        first = book.create_entitlement("acme", metered())
        with pytest.raises(Conflict, match="already has an entitlement to 'gpt_4'"):
            book.create_entitlement("acme", metered())
        clock.tick(3600)
        second = book.override_entitlement("acme", "gpt_4", metered(isSoftLimit=True))
    assert second.is_soft_limit and second.id != first.id
    old = book.get_entitlement(first.id)
    assert old.deleted_at == second.created_at  # the old one ends where the new one starts
    assert [e.id for e in book.list_entitlements(customer="acme")] == [second.id]
    assert len(book.list_entitlements(customer="acme", include_deleted=True)) == 2
    # By feature key at a time before the override: the entitlement live then.
    earlier = book.get_entitlement("gpt_4", customer="acme", at=NOW)
    assert earlier.id == first.id
    assert book.get_entitlement("gpt_4", customer="acme").id == second.id


@freeze_time(NOW)
def test_entitlements_need_a_live_feature_a_live_customer_and_a_sum_or_count_meter(
    book: EntitlementBook, catalog: Catalog
) -> None:
    with pytest.raises(NotFound, match="feature 'gpt_4' does not exist"):
        book.create_entitlement("acme", metered())
    book.create_feature({"key": "seats", "name": "Seats", "meterSlug": "seats"})
    with pytest.raises(InvalidInput, match="needs a SUM or COUNT meter"):
        book.create_entitlement("acme", metered(featureKey="seats"))
    book.create_feature({"key": "gpt_4", "name": "GPT-4", "meterSlug": "tokens"})
    with pytest.raises(NotFound, match="customer 'nobody'"):
        book.create_entitlement("nobody", metered())
    catalog.create_customer({"key": "gone", "name": "Gone"})
    catalog.delete_customer("gone")
    with pytest.raises(PreconditionFailed, match="deleted"):
        book.create_entitlement("gone", metered())
    book.archive_feature("gpt_4")
    with pytest.raises(NotFound, match="archived"):
        book.create_entitlement(
            "acme", metered(featureId=book.list_features(include_archived=True)[1].id)
        )


def test_feature_rules(book: EntitlementBook) -> None:
    book.create_feature(
        {
            "key": "gpt_4",
            "name": "GPT-4",
            "meterSlug": "tokens",
            "meterGroupByFilters": {"model": "gpt-4"},
        }
    )
    with pytest.raises(Conflict, match="'gpt_4' already exists"):
        book.create_feature({"key": "gpt_4", "name": "again"})
    with pytest.raises(InvalidInput, match="meterSlug: no meter 'nope'"):
        book.create_feature({"key": "x", "name": "X", "meterSlug": "nope"})
    with pytest.raises(InvalidInput, match="does not group by region"):
        book.create_feature(
            {
                "key": "y",
                "name": "Y",
                "meterSlug": "tokens",
                "meterGroupByFilters": {"region": "eu"},
            }
        )
    with pytest.raises(InvalidInput, match=r"key: String should match pattern"):
        book.create_feature({"key": "Bad Key", "name": "Z"})
    archived = book.archive_feature("gpt_4")
    assert archived.archived_at is not None
    # An archived key can be taken again.
    assert book.create_feature({"key": "gpt_4", "name": "GPT-4 again"}).id != archived.id


def test_bad_input_names_every_field(book: EntitlementBook) -> None:
    book.create_feature({"key": "gpt_4", "name": "GPT-4", "meterSlug": "tokens"})
    with pytest.raises(InvalidInput) as caught:
        book.create_entitlement(
            "acme",
            metered(
                usagePeriod={"interval": "PT30M"},
                grants=[{"amount": -1, "effectiveAt": "2027-01-01T00:00:00", "priority": 0}],
            ),
        )
    fields = {p.field for p in caught.value.problems}
    assert fields == {
        "usagePeriod.interval",
        "grants[0].amount",
        "grants[0].effectiveAt",
        "grants[0].priority",
    }
    with pytest.raises(InvalidInput, match="type: must be metered, boolean or static"):
        book.create_entitlement("acme", {"type": "credits", "featureKey": "gpt_4"})
    with pytest.raises(InvalidInput, match="config: is not JSON"):
        book.create_entitlement("acme", {"type": "static", "featureKey": "gpt_4", "config": "{"})


@freeze_time(NOW)
def test_grants_take_whole_minutes_and_expire_by_calendar(book: EntitlementBook) -> None:
    book.create_feature({"key": "gpt_4", "name": "GPT-4", "meterSlug": "tokens"})
    book.create_entitlement("acme", metered())
    grant = book.create_grant(
        "acme",
        "gpt_4",
        {
            "amount": 0.1,
            "effectiveAt": "2027-01-31T10:00:01Z",
            "expiration": {"duration": "MONTH", "count": 1},
            "recurrence": {"interval": "WEEK"},
        },
    )
    assert grant.amount == Decimal("0.1")  # the number's text, not the float nearest to it
    assert grant.effective_at == datetime(2027, 1, 31, 10, 1, tzinfo=UTC)  # ceiled
    assert grant.expires_at == datetime(2027, 2, 28, 10, 1, tzinfo=UTC)  # clamped
    assert grant.recurrence is not None and grant.recurrence.anchor == grant.effective_at
    with pytest.raises(InvalidInput, match="minRolloverAmount 5 is above maxRolloverAmount 1"):
        book.create_grant(
            "acme",
            "gpt_4",
            {
                "amount": 1,
                "effectiveAt": "2027-01-01T00:00:00Z",
                "minRolloverAmount": 5,
                "maxRolloverAmount": 1,
            },
        )


@freeze_time(NOW)
def test_void_is_now_and_once(book: EntitlementBook) -> None:
    book.create_feature({"key": "gpt_4", "name": "GPT-4", "meterSlug": "tokens"})
    book.create_entitlement("acme", metered())
    grant = book.create_grant(
        "acme", "gpt_4", {"amount": 10, "effectiveAt": "2027-03-01T00:00:00Z"}
    )
    voided = book.void_grant(grant.id)
    assert voided.voided_at == datetime(2027, 3, 15, 12, 30, tzinfo=UTC)
    with pytest.raises(Conflict, match="voided already"):
        book.void_grant(grant.id)
    with pytest.raises(NotFound):
        book.void_grant("01ARZ3NDEKTSV4RRFFQ69G5FAV")
    assert book.list_grants(customer="acme") == []
    assert [g.id for g in book.list_grants(customer="acme", include_deleted=True)] == [grant.id]


@freeze_time(NOW)
def test_resets_are_in_the_past_in_order(book: EntitlementBook) -> None:
    book.create_feature({"key": "gpt_4", "name": "GPT-4", "meterSlug": "tokens"})
    made = book.create_entitlement(
        "acme", metered(measureUsageFrom="2027-03-01T00:00:00Z", preserveOverageAtReset=True)
    )
    with pytest.raises(InvalidInput, match=r"effectiveAt: .* is in the future"):
        book.record_reset("acme", "gpt_4", {"effectiveAt": "2027-03-16T00:00:00Z"})
    reset = book.record_reset("acme", "gpt_4", {"effectiveAt": "2027-03-10T08:15:59Z"})
    assert reset.at == datetime(2027, 3, 10, 8, 15, tzinfo=UTC)
    assert reset.preserve_overage  # the entitlement's default
    with pytest.raises(InvalidInput, match="not after the last reset"):
        book.record_reset("acme", "gpt_4", {"effectiveAt": "2027-03-09T00:00:00Z"})
    book.record_reset("acme", made.id, {"preserveOverage": False, "retainAnchor": True})
    assert [(r.preserve_overage, r.retain_anchor) for r in book.resets_of(made.id)] == [
        (True, False),
        (False, True),
    ]


@freeze_time(NOW)
def test_a_deleted_entitlement_is_not_deleted_again(book: EntitlementBook) -> None:
    book.create_feature({"key": "gpt_4", "name": "GPT-4", "meterSlug": "tokens"})
    made = book.create_entitlement("acme", metered())
    book.delete_entitlement(made.id)
    with pytest.raises(NotFound, match="was deleted at"):
        book.delete_entitlement(made.id)


def test_a_deleted_customers_entitlements_end_with_it_and_its_key_starts_afresh(
    book: EntitlementBook, catalog: Catalog
) -> None:
    with freeze_time(NOW) as clock:
        book.create_feature({"key": "gpt_4", "name": "GPT-4", "meterSlug": "tokens"})
        made = book.create_entitlement("acme", metered())
        clock.tick(60)
        catalog.delete_customer("acme")
        ended = book.get_entitlement(made.id)
        assert ended.deleted_at is not None and ended.deleted_at > made.created_at
        clock.tick(60)
        # Created again under the key (a new id): no entitlement carries over, and a new one can
        # be made (this was a foreign-key failure when entitlements referred to the id).
        catalog.create_customer({"key": "acme", "name": "Acme again"})
        assert book.list_entitlements(customer="acme") == []
        again = book.create_entitlement("acme", metered())
    assert again.id != made.id
    # What was live then is still found at that time.
    assert book.get_entitlement("gpt_4", customer="acme", at=NOW).id == made.id
