"""The emulator's objects have exactly the field names and `object` values of Stripe's own
fixtures (stripe/openapi fixtures3.json, kept in tests/fixtures/stripe)."""

from __future__ import annotations

import time
from collections.abc import Iterator
from typing import Any

import pytest
import stripe

from metersync.testing import StripeEmulator
from specs import stripe_fixture_resources


@pytest.fixture(scope="module")
def fixtures() -> dict[str, Any]:
    return stripe_fixture_resources()


@pytest.fixture(scope="module")
def objects() -> Iterator[dict[str, dict[str, Any]]]:
    """One of each object, made through the real SDK."""
    with StripeEmulator() as emulator:
        client = emulator.client()
        customer = client.v1.customers.create({"name": "Shape", "address": {"line1": "1 Main"}})
        deleted = client.v1.customers.delete(client.v1.customers.create({"name": "Gone"}).id)
        meter = client.v1.billing.meters.create(
            {
                "display_name": "API calls",
                "event_name": "api_call",
                "default_aggregation": {"formula": "sum"},
            }
        )
        now = int(time.time())
        event = client.v1.billing.meter_events.create(
            {
                "event_name": "api_call",
                "identifier": "shape-1",
                "timestamp": now,
                "payload": {"stripe_customer_id": customer.id, "value": "25"},
            }
        )
        adjustment = client.v1.billing.meter_event_adjustments.create(
            {"event_name": "api_call", "type": "cancel", "cancel": {"identifier": "shape-1"}}
        )
        client.v1.billing.meter_events.create(
            {
                "event_name": "api_call",
                "identifier": "shape-2",
                "timestamp": now,
                "payload": {"stripe_customer_id": customer.id, "value": "7"},
            }
        )
        hour = now - now % 3600
        summaries = client.v1.billing.meters.event_summaries.list(
            meter.id, {"customer": customer.id, "start_time": hour, "end_time": hour + 3600}
        )
        yield {
            "customer": customer.to_dict(),
            "deleted_customer": deleted.to_dict(),
            "billing.meter": meter.to_dict(),
            "billing.meter_event": event.to_dict(),
            "billing.meter_event_adjustment": adjustment.to_dict(),
            "billing.meter_event_summary": summaries.data[0].to_dict(),
        }


@pytest.mark.parametrize(
    "name",
    [
        "customer",
        "deleted_customer",
        "billing.meter",
        "billing.meter_event",
        "billing.meter_event_adjustment",
        "billing.meter_event_summary",
    ],
)
def test_field_names_and_object_values_match_stripes_fixtures(
    name: str, fixtures: dict[str, Any], objects: dict[str, dict[str, Any]]
) -> None:
    expected, actual = fixtures[name], objects[name]
    assert sorted(actual) == sorted(expected), name
    assert actual["object"] == expected["object"]
    # Nested objects that are present in both have the same fields too.
    for field, value in expected.items():
        if isinstance(value, dict) and isinstance(actual[field], dict) and value:
            assert sorted(actual[field]) == sorted(value), f"{name}.{field}"


def test_summary_value_is_the_sum_of_accepted_events(objects: dict[str, dict[str, Any]]) -> None:
    # shape-1 (25) was cancelled; only shape-2 (7) counts.
    assert objects["billing.meter_event_summary"]["aggregated_value"] == 7


def test_sdk_classes_are_built_from_the_responses() -> None:
    # stripe-python picks the class from `object`; a wrong value would give a bare StripeObject.
    with StripeEmulator() as emulator:
        meter = emulator.client().v1.billing.meters.create(
            {"display_name": "m", "event_name": "m", "default_aggregation": {"formula": "count"}}
        )
    assert isinstance(meter, stripe.billing.Meter)
