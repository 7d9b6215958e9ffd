"""HubSpot's rendering and the batcher: pure, no server."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from datetime import UTC, datetime
from decimal import Decimal

from metersync.catalog.meters import Meter, MeterSettings
from metersync.catalog.views import BillingAddress, Customer
from metersync.mechanics.batching import Batcher
from metersync.sync.ports import (
    MANAGED_KEY,
    NO_CONTEXT,
    EntitlementFigures,
    PeriodUsage,
    RenderContext,
)
from metersync.targets.hubspot import (
    HubSpotTarget,
    entitlement_property,
    property_definitions,
    usage_property,
)

TOKENS = Meter.of(
    MeterSettings(
        slug="api-tokens",
        event_type="prompt",
        aggregation="SUM",
        value_property="$.tokens",
    )
)


def acme() -> Customer:
    return Customer(
        id="01J0000000000000000000000",
        key="acme",
        name="Acme",
        description=None,
        primary_email="billing@acme.test",
        currency="EUR",
        billing_address=BillingAddress(country="DE", city="Berlin", phone_number="+49 30 1234"),
        metadata={"plan": "pro"},
        subject_keys=("acme-api",),
        auto_created=False,
        change_seq=7,
        created_at=datetime(2024, 5, 1, tzinfo=UTC),
        updated_at=datetime(2024, 5, 1, tzinfo=UTC),
        deleted_at=None,
    )


def test_render_is_pinned_to_its_version() -> None:
    """If this fails because render() changed on purpose, bump render_version with it."""
    target = HubSpotTarget("pat-na1-test", meters=[TOKENS])
    context = RenderContext(
        external_ids={"stripe": {"acme": "cus_123"}},
        usage={
            "acme": {
                "api-tokens": PeriodUsage(1234.5, datetime(2026, 11, 21, 9, 30, 1, 250000, UTC))
            }
        },
    )
    assert target.render_version == "hubspot-company/1"
    assert target.render(acme(), context).state() == {
        "fields": {
            "name": "Acme",
            "description": None,
            "phone": "+49 30 1234",
            "address": None,
            "address2": None,
            "city": "Berlin",
            "state": None,
            "zip": None,
            "country": "DE",
            "metersync_primary_email": "billing@acme.test",
            "stripe_customer_id": "cus_123",
            "metersync_usage_api_tokens": "1234.5",
            "metersync_usage_api_tokens_at": "2026-11-21T09:30:01.250Z",
        },
        "metadata": {MANAGED_KEY: "acme"},
    }


def test_without_stripe_id_or_usage_those_properties_are_empty() -> None:
    target = HubSpotTarget("pat-na1-test", meters=[TOKENS])
    fields = target.render(acme(), NO_CONTEXT).fields
    assert fields["stripe_customer_id"] is None
    assert fields[usage_property("api-tokens")] is None


def test_whole_usage_has_no_decimal_point() -> None:
    target = HubSpotTarget("pat-na1-test", meters=[TOKENS])
    context = RenderContext(
        usage={"acme": {"api-tokens": PeriodUsage(42.0, datetime(2026, 11, 1, tzinfo=UTC))}}
    )
    assert target.render(acme(), context).fields[usage_property("api-tokens")] == "42"


def test_the_key_property_is_unique_and_every_property_is_versioned() -> None:
    definitions = {d["name"]: d for d in property_definitions([TOKENS])}
    assert definitions[MANAGED_KEY]["hasUniqueValue"] is True
    assert definitions["metersync_usage_api_tokens"]["type"] == "number"
    assert definitions["metersync_usage_api_tokens_at"]["type"] == "datetime"
    assert all(d["description"].endswith("[metersync-properties/1]") for d in definitions.values())
    assert all(d["groupName"] == "metersync" for d in definitions.values())


# -- entitlement figures ------------------------------------------------------------------------


def test_without_entitlement_features_the_render_and_its_version_are_unchanged() -> None:
    plain = HubSpotTarget("pat-na1-test", meters=[TOKENS])
    listed = HubSpotTarget("pat-na1-test", meters=[TOKENS], entitlement_features=())
    assert listed.render_version == plain.render_version == "hubspot-company/1"
    assert listed.needs == plain.needs
    assert not any(name.startswith("metersync_ent_") for name in listed.render(acme()).fields)


def test_features_fold_into_the_render_version_whatever_their_order() -> None:
    one = HubSpotTarget("pat-na1-test", entitlement_features=["gpt_4", "seats"])
    other = HubSpotTarget("pat-na1-test", entitlement_features=["seats", "gpt_4"])
    fewer = HubSpotTarget("pat-na1-test", entitlement_features=["gpt_4"])
    assert (
        one.render_version == other.render_version == "hubspot-company/1+entitlements/1:gpt_4,seats"
    )
    assert fewer.render_version not in (one.render_version, "hubspot-company/1")
    assert one.needs.entitlements == ("gpt_4", "seats")


def test_a_metered_entitlement_renders_its_four_figures() -> None:
    target = HubSpotTarget("pat-na1-test", entitlement_features=["gpt_4", "sso"])
    context = RenderContext(
        entitlements={
            "acme": {
                "gpt_4": EntitlementFigures(
                    has_access=True,
                    balance=Decimal("750.50"),
                    usage=Decimal("249.500"),
                    period_end=datetime(2026, 12, 1, tzinfo=UTC),
                ),
                "sso": EntitlementFigures(has_access=False),
            }
        }
    )
    fields = target.render(acme(), context).fields
    assert {k: v for k, v in fields.items() if k.startswith("metersync_ent_")} == {
        "metersync_ent_gpt_4_access": "true",
        "metersync_ent_gpt_4_balance": "750.5",
        "metersync_ent_gpt_4_usage": "249.5",
        "metersync_ent_gpt_4_period_end": "2026-12-01T00:00:00.000Z",
        # A boolean or static entitlement: access only, no figures.
        "metersync_ent_sso_access": "false",
        "metersync_ent_sso_balance": None,
        "metersync_ent_sso_usage": None,
        "metersync_ent_sso_period_end": None,
    }


def test_whole_amounts_have_no_decimal_point_or_exponent() -> None:
    target = HubSpotTarget("pat-na1-test", entitlement_features=["gpt_4"])
    figures = EntitlementFigures(True, Decimal("1E+3"), Decimal("0.000"), None)
    fields = target.render(acme(), RenderContext(entitlements={"acme": {"gpt_4": figures}})).fields
    assert fields[entitlement_property("gpt_4", "balance")] == "1000"
    assert fields[entitlement_property("gpt_4", "usage")] == "0"


def test_without_an_entitlement_its_properties_are_empty() -> None:
    target = HubSpotTarget("pat-na1-test", entitlement_features=["gpt_4"])
    other = RenderContext(entitlements={"globex": {"gpt_4": EntitlementFigures(True)}})
    for context in (NO_CONTEXT, other):
        fields = target.render(acme(), context).fields
        assert [fields[entitlement_property("gpt_4", f)] for f in ("access", "balance")] == [
            None,
            None,
        ]
        assert fields[entitlement_property("gpt_4", "period_end")] is None


def test_entitlement_properties_are_typed_and_versioned() -> None:
    definitions = {d["name"]: d for d in property_definitions([], ["gpt_4"])}
    access = definitions["metersync_ent_gpt_4_access"]
    assert (access["type"], access["fieldType"]) == ("bool", "booleancheckbox")
    assert [o["value"] for o in access["options"]] == ["true", "false"]
    assert definitions["metersync_ent_gpt_4_balance"]["type"] == "number"
    assert definitions["metersync_ent_gpt_4_usage"]["type"] == "number"
    assert definitions["metersync_ent_gpt_4_period_end"]["type"] == "datetime"
    assert all(d["description"].endswith("[metersync-properties/1]") for d in definitions.values())


# -- the batcher ---------------------------------------------------------------------------------


def test_concurrent_submits_leave_in_batches_of_at_most_max_size() -> None:
    sent: list[list[int]] = []

    async def send(items: Sequence[int]) -> list[int | BaseException]:
        sent.append(list(items))
        await asyncio.sleep(0)
        return [i * 10 for i in items]

    async def go() -> list[int]:
        batcher: Batcher[int, int] = Batcher(send, max_size=100, linger_s=0.01)
        return list(await asyncio.gather(*(batcher.submit(i) for i in range(250))))

    assert asyncio.run(go()) == [i * 10 for i in range(250)]
    assert [len(b) for b in sent] == [100, 100, 50]


def test_one_record_failing_fails_alone() -> None:
    async def send(items: Sequence[str]) -> list[str | BaseException]:
        return [ValueError(f"bad {i}") if i == "b" else i.upper() for i in items]

    async def go() -> list[str | BaseException]:
        batcher: Batcher[str, str] = Batcher(send, max_size=10, linger_s=0.01)
        return list(
            await asyncio.gather(*(batcher.submit(i) for i in "abc"), return_exceptions=True)
        )

    a, b, c = asyncio.run(go())
    assert (a, c) == ("A", "C")
    assert isinstance(b, ValueError) and str(b) == "bad b"


def test_a_failed_request_fails_every_record_in_it() -> None:
    async def send(items: Sequence[int]) -> list[int | BaseException]:
        raise ConnectionError("reset")

    async def go() -> list[int | BaseException]:
        batcher: Batcher[int, int] = Batcher(send, max_size=10, linger_s=0.01)
        return list(
            await asyncio.gather(*(batcher.submit(i) for i in range(3)), return_exceptions=True)
        )

    results = asyncio.run(go())
    assert all(isinstance(r, ConnectionError) for r in results)


def test_a_lone_submit_leaves_after_the_linger() -> None:
    async def send(items: Sequence[int]) -> list[int | BaseException]:
        return list(items)

    async def go() -> int:
        batcher: Batcher[int, int] = Batcher(send, max_size=100, linger_s=0.01)
        return await asyncio.wait_for(batcher.submit(7), timeout=1)

    assert asyncio.run(go()) == 7
