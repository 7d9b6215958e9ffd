"""HubSpot's rendering and the batcher: pure, no server."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from datetime import UTC, datetime

from metersync.catalog.meters import Meter, MeterSettings
from metersync.catalog.views import BillingAddress, Customer
from metersync.mechanics.batching import Batcher
from metersync.sync.ports import MANAGED_KEY, NO_CONTEXT, PeriodUsage, RenderContext
from metersync.targets.hubspot import HubSpotTarget, property_definitions, usage_property

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
