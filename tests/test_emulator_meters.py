"""The emulator's billing meters, meter events, adjustments, event summaries and the v2 meter
event stream, driven only through the real stripe SDK over HTTP. freezegun moves business time
(the server's own loop keeps a real clock)."""

from __future__ import annotations

import random
import re
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
import pytest
import stripe
from freezegun import freeze_time
from freezegun.api import FrozenDateTimeFactory

from metersync.testing import StripeEmulator

# A Monday noon, UTC: day and hour windows around it are easy to reason about.
BASE = datetime(2025, 3, 10, 12, 0, tzinfo=UTC)
NOW = int(BASE.timestamp())
DAY = 86400
HOUR = 3600

METER_FIELDS = {
    "created",
    "customer_mapping",
    "default_aggregation",
    "display_name",
    "event_name",
    "event_time_window",
    "id",
    "livemode",
    "object",
    "status",
    "status_transitions",
    "updated",
    "value_settings",
}
EVENT_FIELDS = {"created", "event_name", "identifier", "livemode", "object", "payload", "timestamp"}
SUMMARY_FIELDS = {"aggregated_value", "end_time", "id", "livemode", "meter", "object", "start_time"}
RFC3339_MS = re.compile(r"\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}\.\d{3}Z")


@pytest.fixture(scope="module")
def emulator() -> Iterator[StripeEmulator]:
    with StripeEmulator() as running:
        yield running


@pytest.fixture
def client(emulator: StripeEmulator) -> stripe.StripeClient:
    emulator.reset()
    return emulator.client()


@pytest.fixture
def frozen() -> Iterator[FrozenDateTimeFactory]:
    with freeze_time(BASE) as factory:
        yield factory


# -- helpers -----------------------------------------------------------------------------------


def new_customer(client: stripe.StripeClient) -> str:
    return client.v1.customers.create({"name": "ACME"}).id


def new_meter(
    client: stripe.StripeClient,
    event_name: str = "api_calls",
    formula: str = "sum",
    **extra: Any,
) -> stripe.billing.Meter:
    params: dict[str, Any] = {
        "display_name": f"Meter {event_name}",
        "event_name": event_name,
        "default_aggregation": {"formula": formula},
        **extra,
    }
    return client.v1.billing.meters.create(params)


def send(
    client: stripe.StripeClient,
    customer: str,
    value: str | None = "1",
    event_name: str = "api_calls",
    **fields: Any,
) -> stripe.billing.MeterEvent:
    payload = {"stripe_customer_id": customer}
    if value is not None:
        payload["value"] = value
    return client.v1.billing.meter_events.create(
        {"event_name": event_name, "payload": payload, **fields}
    )


def summaries(
    client: stripe.StripeClient,
    meter_id: str,
    customer: str,
    start: int,
    end: int,
    window: str | None = None,
    **extra: Any,
) -> list[tuple[int, int, int]]:
    params: dict[str, Any] = {
        "customer": customer,
        "start_time": start,
        "end_time": end,
        "limit": 100,
        **extra,
    }
    if window is not None:
        params["value_grouping_window"] = window
    listed = client.v1.billing.meters.event_summaries.list(meter_id, params)
    return [(s.start_time, s.end_time, s.aggregated_value) for s in listed.data]


def total(client: stripe.StripeClient, meter_id: str, customer: str) -> int:
    """The meter's total for the customer over every timestamp an event may carry (business
    time: frozen or not)."""
    hour = int(time.time()) // HOUR * HOUR
    [(_, _, value)] = summaries(client, meter_id, customer, hour - 36 * DAY, hour + 2 * HOUR)
    return value


@contextmanager
def rejected(code: str, status: int = 400) -> Iterator[None]:
    with pytest.raises(stripe.InvalidRequestError) as caught:
        yield
    assert caught.value.http_status == status
    assert caught.value.code == code, caught.value.user_message


def cancel(client: stripe.StripeClient, identifier: str, event_name: str = "api_calls") -> Any:
    return client.v1.billing.meter_event_adjustments.create(
        {"event_name": event_name, "type": "cancel", "cancel": {"identifier": identifier}}
    )


def stream_client(emulator: StripeEmulator, token: str) -> stripe.StripeClient:
    return stripe.StripeClient(
        token,
        base_addresses={"api": emulator.url, "meter_events": emulator.url},
        http_client=stripe.HTTPXClient(allow_sync_methods=True),
    )


def stream_event(
    customer: str, value: str = "1", event_name: str = "api_calls", **fields: Any
) -> dict[str, Any]:
    return {
        "event_name": event_name,
        "payload": {"stripe_customer_id": customer, "value": value},
        **fields,
    }


# -- meters ------------------------------------------------------------------------------------


def test_meter_create_has_stripe_shape_and_defaults(
    client: stripe.StripeClient,
    frozen: FrozenDateTimeFactory,
) -> None:
    meter = new_meter(client)
    assert set(meter.to_dict()) == METER_FIELDS
    assert re.fullmatch(r"mtr_test_[A-Za-z0-9]{32}", meter.id)
    assert meter.object == "billing.meter"
    assert (meter.status, meter.livemode, meter.event_time_window) == ("active", False, None)
    assert meter.created == meter.updated == NOW
    assert meter.customer_mapping.to_dict() == {
        "event_payload_key": "stripe_customer_id",
        "type": "by_id",
    }
    assert meter.value_settings.event_payload_key == "value"
    assert meter.status_transitions.deactivated_at is None

    custom = new_meter(
        client,
        "tokens",
        "last",
        event_time_window="hour",
        customer_mapping={"event_payload_key": "cust", "type": "by_id"},
        value_settings={"event_payload_key": "tokens"},
    )
    assert custom.customer_mapping.event_payload_key == "cust"
    assert custom.value_settings.event_payload_key == "tokens"
    assert (custom.default_aggregation.formula, custom.event_time_window) == ("last", "hour")


@pytest.mark.parametrize(
    ("params", "code"),
    [
        ({"display_name": None}, "parameter_missing"),
        ({"display_name": "x" * 251}, "parameter_invalid"),
        ({"event_name": None}, "parameter_missing"),
        ({"event_name": "e" * 101}, "parameter_invalid"),
        ({"default_aggregation": None}, "parameter_missing"),
        ({"default_aggregation": {"formula": "max"}}, "parameter_invalid"),
        ({"customer_mapping": {"event_payload_key": "c", "type": "by_email"}}, "parameter_invalid"),
        ({"customer_mapping": {"event_payload_key": "c"}}, "parameter_missing"),
        ({"value_settings": {"event_payload_key": "v" * 101}}, "parameter_invalid"),
        ({"event_time_window": "week"}, "parameter_invalid"),
        ({"unit": "requests"}, "parameter_unknown"),
    ],
)
def test_meter_create_rejects_bad_params(
    client: stripe.StripeClient,
    params: dict[str, Any],
    code: str,
) -> None:
    base: dict[str, Any] = {
        "display_name": "API calls",
        "event_name": "api_calls",
        "default_aggregation": {"formula": "sum"},
    }
    merged = {k: v for k, v in {**base, **params}.items() if v is not None}
    with rejected(code):
        client.v1.billing.meters.create(merged)
    assert client.v1.billing.meters.list().data == []


def test_meter_list_retrieve_and_update(
    client: stripe.StripeClient,
    frozen: FrozenDateTimeFactory,
) -> None:
    first, second, third = (new_meter(client, name) for name in ("a", "b", "c"))
    listed = client.v1.billing.meters.list()
    assert [m.id for m in listed.data] == [third.id, second.id, first.id]  # newest first
    page = client.v1.billing.meters.list({"limit": 2})
    assert ([m.id for m in page.data], page.has_more) == ([third.id, second.id], True)
    after = client.v1.billing.meters.list({"limit": 2, "starting_after": second.id})
    assert ([m.id for m in after.data], after.has_more) == ([first.id], False)
    before = client.v1.billing.meters.list({"ending_before": first.id})
    assert [m.id for m in before.data] == [third.id, second.id]

    assert client.v1.billing.meters.retrieve(second.id).to_dict() == second.to_dict()
    frozen.tick(10)
    updated = client.v1.billing.meters.update(first.id, {"display_name": "Renamed"})
    assert (updated.display_name, updated.updated, updated.created) == ("Renamed", NOW + 10, NOW)
    with rejected("parameter_unknown"):
        client.v1.billing.meters.update(first.id, {"event_name": "z"})
    with rejected("parameter_invalid"):
        client.v1.billing.meters.update(first.id, {"display_name": "x" * 251})
    with rejected("resource_missing", 404):
        client.v1.billing.meters.retrieve("mtr_test_missing")
    with rejected("parameter_invalid"):
        client.v1.billing.meters.list({"status": "archived"})


def test_event_name_is_unique_among_active_meters(
    client: stripe.StripeClient,
    frozen: FrozenDateTimeFactory,
) -> None:
    original = new_meter(client, "api_calls")
    with rejected("resource_already_exists"):
        new_meter(client, "api_calls")

    frozen.tick(60)
    deactivated = client.v1.billing.meters.deactivate(original.id)
    assert deactivated.status == "inactive"
    assert deactivated.status_transitions.deactivated_at == NOW + 60
    assert deactivated.updated == NOW + 60
    with rejected("meter_already_inactive"):
        client.v1.billing.meters.deactivate(original.id)
    inactive = client.v1.billing.meters.list({"status": "inactive"})
    assert [m.id for m in inactive.data] == [original.id]

    successor = new_meter(client, "api_calls")  # the name is free while the first is inactive
    assert [m.id for m in client.v1.billing.meters.list({"status": "active"}).data] == [
        successor.id
    ]
    with rejected("resource_already_exists"):
        client.v1.billing.meters.reactivate(original.id)

    client.v1.billing.meters.deactivate(successor.id)
    frozen.tick(60)
    reactivated = client.v1.billing.meters.reactivate(original.id)
    assert reactivated.status == "active"
    assert reactivated.status_transitions.deactivated_at is None
    assert reactivated.updated == NOW + 120
    with rejected("meter_already_active"):
        client.v1.billing.meters.reactivate(original.id)


# -- meter events ------------------------------------------------------------------------------


def test_meter_event_is_accepted_with_defaults(
    client: stripe.StripeClient,
    emulator: StripeEmulator,
    frozen: FrozenDateTimeFactory,
) -> None:
    new_meter(client)
    customer = new_customer(client)
    event = send(client, customer, "25")
    assert set(event.to_dict()) == EVENT_FIELDS
    assert (event.object, event.livemode, event.event_name) == (
        "billing.meter_event",
        False,
        "api_calls",
    )
    assert event.timestamp == event.created == NOW  # timestamp defaults to now
    assert event.identifier  # generated when absent
    assert event.payload.to_dict() == {"stripe_customer_id": customer, "value": "25"}
    explicit = send(client, customer, "5", identifier="req-1", timestamp=NOW - HOUR)
    assert (explicit.identifier, explicit.timestamp) == ("req-1", NOW - HOUR)
    recorded = emulator.meter_events()
    assert [(e["identifier"], e["cancelled"]) for e in recorded] == [
        (event.identifier, False),
        ("req-1", False),
    ]


@pytest.mark.parametrize(
    ("fields", "code"),
    [
        (
            lambda c: {"event_name": "nope", "payload": {"stripe_customer_id": c, "value": "1"}},
            "no_meter",
        ),
        (
            lambda c: {"event_name": "retired", "payload": {"stripe_customer_id": c, "value": "1"}},
            "archived_meter",
        ),
        (
            lambda c: {"event_name": "api_calls", "payload": {"value": "1"}},
            "meter_event_no_customer_defined",
        ),
        (
            lambda c: {
                "event_name": "api_calls",
                "payload": {"stripe_customer_id": "cus_unknown", "value": "1"},
            },
            "meter_event_customer_not_found",
        ),
        (
            lambda c: {"event_name": "api_calls", "payload": {"stripe_customer_id": c}},
            "meter_event_invalid_value",
        ),
        (
            lambda c: {
                "event_name": "api_calls",
                "payload": {"stripe_customer_id": c, "value": "1.5"},
            },
            "meter_event_invalid_value",
        ),
        (
            lambda c: {
                "event_name": "api_calls",
                "payload": {"stripe_customer_id": c, "value": "-3"},
            },
            "meter_event_invalid_value",
        ),
        (
            lambda c: {
                "event_name": "api_calls",
                "payload": {"stripe_customer_id": c, "value": "ten"},
            },
            "meter_event_invalid_value",
        ),
        (lambda c: {"event_name": "api_calls"}, "parameter_missing"),
        (lambda c: {"payload": {"stripe_customer_id": c, "value": "1"}}, "parameter_missing"),
        (
            lambda c: {
                "event_name": "api_calls",
                "identifier": "i" * 101,
                "payload": {"stripe_customer_id": c, "value": "1"},
            },
            "parameter_invalid",
        ),
        (
            lambda c: {
                "event_name": "api_calls",
                "timestamp": "soon",
                "payload": {"stripe_customer_id": c, "value": "1"},
            },
            "parameter_invalid_integer",
        ),
    ],
    ids=[
        "unknown-meter",
        "inactive-meter",
        "no-customer",
        "unknown-customer",
        "no-value",
        "decimal-value",
        "negative-value",
        "text-value",
        "no-payload",
        "no-event-name",
        "long-identifier",
        "bad-timestamp",
    ],
)
def test_meter_event_rules(
    client: stripe.StripeClient,
    emulator: StripeEmulator,
    fields: Callable[[str], dict[str, Any]],
    code: str,
) -> None:
    new_meter(client)
    retired = new_meter(client, "retired")
    client.v1.billing.meters.deactivate(retired.id)
    customer = new_customer(client)
    with rejected(code):
        client.v1.billing.meter_events.create(fields(customer))
    assert emulator.meter_events() == []


def test_meter_event_for_a_deleted_customer_is_rejected(
    client: stripe.StripeClient,
    emulator: StripeEmulator,
) -> None:
    new_meter(client)
    customer = new_customer(client)
    client.v1.customers.delete(customer)
    with rejected("meter_event_customer_not_found"):
        send(client, customer)
    assert emulator.meter_events() == []


def test_meter_event_uses_the_meters_payload_keys(client: stripe.StripeClient) -> None:
    meter = new_meter(
        client,
        "tokens",
        customer_mapping={"event_payload_key": "account", "type": "by_id"},
        value_settings={"event_payload_key": "tokens"},
    )
    customer = new_customer(client)
    client.v1.billing.meter_events.create(
        {"event_name": "tokens", "payload": {"account": customer, "tokens": "40"}}
    )
    with rejected("meter_event_no_customer_defined"):
        send(client, customer, "2", event_name="tokens")  # stripe_customer_id is not the key
    assert total(client, meter.id, customer) == 40


def test_count_meter_needs_no_value(client: stripe.StripeClient) -> None:
    meter = new_meter(client, formula="count")
    customer = new_customer(client)
    send(client, customer, None)
    send(client, customer, "7")
    with rejected("meter_event_invalid_value"):
        send(client, customer, "seven")  # a value, when given, is still checked
    assert total(client, meter.id, customer) == 2


def test_timestamp_window_is_35_days_back_and_5_minutes_ahead(
    client: stripe.StripeClient,
    frozen: FrozenDateTimeFactory,
) -> None:
    meter = new_meter(client)
    customer = new_customer(client)
    send(client, customer, "1", timestamp=NOW - 35 * DAY)
    send(client, customer, "10", timestamp=NOW + 300)
    with rejected("timestamp_too_far_in_past"):
        send(client, customer, "100", timestamp=NOW - 35 * DAY - 1)
    with rejected("timestamp_in_future"):
        send(client, customer, "1000", timestamp=NOW + 301)
    assert total(client, meter.id, customer) == 11

    frozen.tick(DAY)  # the window follows business time
    with rejected("timestamp_too_far_in_past"):
        send(client, customer, "1", timestamp=NOW - 35 * DAY)
    send(client, customer, "1", timestamp=NOW + DAY + 300)


def test_a_duplicate_meter_event_identifier_is_not_counted_twice(
    client: stripe.StripeClient,
    emulator: StripeEmulator,
) -> None:
    meter = new_meter(client)
    customer = new_customer(client)
    send(client, customer, "5", identifier="usage-2025-03-10T11")
    with pytest.raises(stripe.InvalidRequestError) as caught:
        send(client, customer, "5", identifier="usage-2025-03-10T11")
    assert caught.value.code == "duplicate_meter_event"
    assert "usage-2025-03-10T11" in (caught.value.user_message or "")
    with rejected("duplicate_meter_event"):  # a different payload does not make it new
        send(client, customer, "6", identifier="usage-2025-03-10T11")
    assert total(client, meter.id, customer) == 5
    assert len(emulator.meter_events()) == 1


def test_an_identifier_may_be_reused_after_24_hours(
    client: stripe.StripeClient,
    frozen: FrozenDateTimeFactory,
) -> None:
    meter = new_meter(client)
    customer = new_customer(client)
    send(client, customer, "5", identifier="daily")
    frozen.tick(DAY - 1)
    with rejected("duplicate_meter_event"):
        send(client, customer, "5", identifier="daily")
    frozen.tick(1)
    reused = send(client, customer, "7", identifier="daily")
    assert reused.timestamp == NOW + DAY
    start = NOW - HOUR
    assert summaries(client, meter.id, customer, start, NOW + DAY + HOUR)[0][2] == 12


def test_business_time_moves_without_freezing_the_server(
    client: stripe.StripeClient,
    emulator: StripeEmulator,
    frozen: FrozenDateTimeFactory,
) -> None:
    emulator.configure(latency_ms=5)  # asyncio.sleep on the server must use the real clock
    try:
        new_meter(client)
        customer = new_customer(client)
        frozen.move_to(BASE + timedelta(days=3))
        event = send(client, customer)
        assert event.created == event.timestamp == NOW + 3 * DAY
    finally:
        emulator.configure(latency_ms=0)


# -- adjustments -------------------------------------------------------------------------------


def test_cancelled_event_leaves_the_summaries(
    client: stripe.StripeClient,
    emulator: StripeEmulator,
) -> None:
    meter = new_meter(client)
    customer = new_customer(client)
    send(client, customer, "5", identifier="keep")
    send(client, customer, "7", identifier="drop")
    adjustment = cancel(client, "drop")
    assert adjustment.to_dict() == {
        "cancel": {"identifier": "drop"},
        "event_name": "api_calls",
        "livemode": False,
        "object": "billing.meter_event_adjustment",
        "status": "complete",
        "type": "cancel",
    }
    assert total(client, meter.id, customer) == 5
    assert [e["identifier"] for e in emulator.meter_events()] == ["keep"]
    everything = emulator.meter_events(include_cancelled=True)
    assert [(e["identifier"], e["cancelled"]) for e in everything] == [
        ("keep", False),
        ("drop", True),
    ]
    with rejected("duplicate_meter_event"):  # a cancelled identifier is still taken
        send(client, customer, "7", identifier="drop")


def test_adjustment_rules(client: stripe.StripeClient, frozen: FrozenDateTimeFactory) -> None:
    new_meter(client)
    new_meter(client, "other")
    customer = new_customer(client)
    send(client, customer, "1", identifier="e1")
    with rejected("no_meter"):
        cancel(client, "e1", event_name="nope")
    with rejected("meter_event_not_found"):
        cancel(client, "unknown")
    with rejected("meter_event_not_found"):
        cancel(client, "e1", event_name="other")  # the event belongs to another meter
    with rejected("parameter_invalid"):
        client.v1.billing.meter_event_adjustments.create(
            {
                "event_name": "api_calls",
                "type": "void",
                "cancel": {"identifier": "e1"},
            }
        )
    with rejected("parameter_missing"):
        client.v1.billing.meter_event_adjustments.create(
            {"event_name": "api_calls", "type": "cancel", "cancel": {}}
        )
    cancel(client, "e1")
    with rejected("meter_event_already_cancelled"):
        cancel(client, "e1")

    send(client, customer, "1", identifier="e2")
    frozen.tick(DAY)
    with rejected("meter_event_cancel_window_expired"):
        cancel(client, "e2")


# -- event summaries ---------------------------------------------------------------------------


def test_event_summaries_group_by_hour_and_day(
    client: stripe.StripeClient,
    frozen: FrozenDateTimeFactory,
) -> None:
    meter = new_meter(client)
    customer, other = new_customer(client), new_customer(client)
    day_start = NOW - 12 * HOUR  # 2025-03-10T00:00Z
    for offset, value in ((0, "1"), (59 * 60, "2"), (2 * HOUR + 5, "4"), (-DAY + 3 * HOUR, "8")):
        send(client, customer, value, timestamp=day_start + offset)
    send(client, other, "100", timestamp=day_start)  # another customer's usage
    send(client, customer, "16", timestamp=NOW)  # at end_time: excluded (the end is exclusive)

    hourly = summaries(client, meter.id, customer, day_start, NOW, "hour")
    assert hourly == [  # oldest first; empty hours left out
        (day_start, day_start + HOUR, 3),
        (day_start + 2 * HOUR, day_start + 3 * HOUR, 4),
    ]
    daily = summaries(client, meter.id, customer, day_start - DAY, day_start + DAY, "day")
    assert daily == [(day_start - DAY, day_start, 8), (day_start, day_start + DAY, 23)]
    whole = summaries(client, meter.id, customer, day_start, NOW)
    assert whole == [(day_start, NOW, 7)]
    assert summaries(client, meter.id, customer, NOW + HOUR, NOW + 2 * HOUR) == [
        (NOW + HOUR, NOW + 2 * HOUR, 0)
    ]  # no window: one summary, even when empty
    assert summaries(client, meter.id, customer, NOW + HOUR, NOW + 2 * HOUR, "hour") == []

    listed = client.v1.billing.meters.event_summaries.list(
        meter.id, {"customer": customer, "start_time": day_start, "end_time": NOW}
    )
    [summary] = listed.data
    assert set(summary.to_dict()) == SUMMARY_FIELDS
    assert re.fullmatch(r"mtrusg_[A-Za-z0-9]{24}", summary.id)
    assert (summary.object, summary.meter, summary.livemode) == (
        "billing.meter_event_summary",
        meter.id,
        False,
    )
    assert listed.url == f"/v1/billing/meters/{meter.id}/event_summaries"


def test_last_meter_takes_the_latest_timestamp(
    client: stripe.StripeClient,
    frozen: FrozenDateTimeFactory,
) -> None:
    meter = new_meter(client, formula="last")
    customer = new_customer(client)
    hour = NOW - 3 * HOUR
    send(client, customer, "9", timestamp=hour + 30)
    send(client, customer, "4", timestamp=hour + 10)  # arrives later, but is older
    send(client, customer, "6", timestamp=hour + 2 * HOUR)
    send(client, customer, "5", timestamp=hour + 2 * HOUR)  # a tie: the last accepted wins
    assert summaries(client, meter.id, customer, hour, NOW, "hour") == [
        (hour, hour + HOUR, 9),
        (hour + 2 * HOUR, hour + 3 * HOUR, 5),
    ]
    assert summaries(client, meter.id, customer, hour, NOW) == [(hour, NOW, 5)]


def test_event_summaries_paginate(
    client: stripe.StripeClient,
    frozen: FrozenDateTimeFactory,
) -> None:
    meter = new_meter(client, formula="count")
    customer = new_customer(client)
    start = NOW - 5 * HOUR
    for hour in range(5):
        send(client, customer, None, timestamp=start + hour * HOUR)
    params: dict[str, Any] = {
        "customer": customer,
        "start_time": start,
        "end_time": NOW,
        "value_grouping_window": "hour",
        "limit": 2,
    }
    first = client.v1.billing.meters.event_summaries.list(meter.id, params)
    assert [s.start_time for s in first.data] == [start, start + HOUR]
    assert first.has_more
    second = client.v1.billing.meters.event_summaries.list(
        meter.id, {**params, "starting_after": first.data[-1].id}
    )
    assert [s.start_time for s in second.data] == [start + 2 * HOUR, start + 3 * HOUR]
    walked = client.v1.billing.meters.event_summaries.list(meter.id, params).auto_paging_iter()
    assert [s.start_time for s in walked] == [start + h * HOUR for h in range(5)]


@pytest.mark.parametrize(
    ("params", "code", "status"),
    [
        ({"start_time": NOW, "end_time": NOW}, "parameter_invalid", 400),
        ({"start_time": NOW + 30, "end_time": NOW + HOUR}, "parameter_invalid", 400),
        (
            {"start_time": NOW + 60, "end_time": NOW + HOUR, "value_grouping_window": "hour"},
            "parameter_invalid",
            400,
        ),
        (
            {"start_time": NOW, "end_time": NOW + DAY, "value_grouping_window": "day"},
            "parameter_invalid",
            400,
        ),  # noon is not a UTC day boundary
        (
            {"start_time": NOW, "end_time": NOW + HOUR, "value_grouping_window": "week"},
            "parameter_invalid",
            400,
        ),
        ({"end_time": NOW + HOUR}, "parameter_missing", 400),
        ({"start_time": NOW, "end_time": NOW + HOUR, "customer": None}, "parameter_missing", 400),
        (
            {"start_time": NOW, "end_time": NOW + HOUR, "customer": "cus_unknown"},
            "resource_missing",
            404,
        ),
    ],
    ids=[
        "empty-range",
        "not-minute-aligned",
        "not-hour-aligned",
        "not-day-aligned",
        "bad-window",
        "no-start",
        "no-customer",
        "unknown-customer",
    ],
)
def test_event_summary_params_are_checked(
    client: stripe.StripeClient,
    params: dict[str, Any],
    code: str,
    status: int,
) -> None:
    meter = new_meter(client)
    merged = {
        k: v for k, v in {"customer": new_customer(client), **params}.items() if v is not None
    }
    with rejected(code, status):
        client.v1.billing.meters.event_summaries.list(meter.id, merged)


def test_event_summaries_of_an_unknown_meter_are_404(client: stripe.StripeClient) -> None:
    with rejected("resource_missing", 404):
        client.v1.billing.meters.event_summaries.list(
            "mtr_test_missing",
            {"customer": new_customer(client), "start_time": 0, "end_time": 3600},
        )


def test_event_summaries_equal_the_sum_of_accepted_events(
    client: stripe.StripeClient,
    frozen: FrozenDateTimeFactory,
) -> None:
    """Random usage, some of it rejected, duplicated or cancelled: every summary (sum, count,
    last; no window, hour, day) equals what a model of the accepted events says."""
    rng = random.Random(20250310)
    meters = {
        formula: new_meter(client, f"ev_{formula}", formula) for formula in ("sum", "count", "last")
    }
    customers = [new_customer(client), new_customer(client)]
    accepted: list[dict[str, Any]] = []  # in acceptance order
    for index in range(45):
        formula = rng.choice(list(meters))
        event = {
            "formula": formula,
            "customer": rng.choice(customers),
            "timestamp": NOW - rng.randrange(3 * DAY),
            "value": rng.randrange(50),
            "identifier": f"ev-{index}",
        }
        payload = {"stripe_customer_id": event["customer"], "value": str(event["value"])}
        roll = rng.random()

        def send(event: dict[str, Any] = event, payload: dict[str, str] = payload) -> None:
            client.v1.billing.meter_events.create(
                {
                    "event_name": f"ev_{event['formula']}",
                    "payload": payload,
                    "identifier": event["identifier"],
                    "timestamp": event["timestamp"],
                }
            )

        if roll < 0.1:
            payload["value"] = "1.5"
            with rejected("meter_event_invalid_value"):
                send()
            continue
        if roll < 0.2 and accepted:
            event["identifier"] = rng.choice(accepted)["identifier"]
            with rejected("duplicate_meter_event"):
                send()
            continue
        send()
        accepted.append(event)
    for event in rng.sample(accepted, 5):
        cancel(client, event["identifier"], f"ev_{event['formula']}")
        accepted.remove(event)

    start, end = NOW - 12 * HOUR - 3 * DAY, NOW + 12 * HOUR  # whole UTC days around the usage
    for formula, meter in meters.items():
        for customer in customers:
            mine = [e for e in accepted if e["formula"] == formula and e["customer"] == customer]
            for window, size in ((None, end - start), ("hour", HOUR), ("day", DAY)):
                got = summaries(client, meter.id, customer, start, end, window)
                assert got == _expected(mine, formula, start, end, size, grouped=bool(window))


def test_every_customers_summaries_in_one_read(
    client: stripe.StripeClient,
    emulator: StripeEmulator,
    frozen: FrozenDateTimeFactory,
) -> None:
    """The control read answers, for every customer with events, what the summaries endpoint
    answers that customer (objects and all), from Python and over HTTP."""
    meter = new_meter(client)
    customers = [new_customer(client) for _ in range(3)]
    idle = new_customer(client)  # its only event is cancelled: left out of the read
    start = NOW - 6 * HOUR
    for index in range(30):
        send(client, customers[index % 3], str(index), timestamp=start + index * 11 * 60)
    cancel(
        client,
        client.v1.billing.meter_events.create(
            {
                "event_name": "api_calls",
                "payload": {"stripe_customer_id": idle, "value": "5"},
                "timestamp": start,
            }
        ).identifier,
    )
    # The day's range runs from one UTC midnight to the next; NOW is noon.
    ranges = {None: (start, NOW), "hour": (start, NOW), "day": (NOW - 12 * HOUR, NOW + 12 * HOUR)}
    for window, (begin, finish) in ranges.items():
        read = emulator.meter_event_summaries(meter.id, begin, finish, window=window)
        params: dict[str, Any] = {"start_time": begin, "end_time": finish, "limit": 100}
        if window:
            params["value_grouping_window"] = window
        assert read == [
            {
                "customer": customer,
                "summaries": [
                    s.to_dict()
                    for s in client.v1.billing.meters.event_summaries.list(
                        meter.id, {**params, "customer": customer}
                    ).data
                ],
            }
            for customer in sorted(customers)
        ]
    over_http = httpx.get(
        f"{emulator.url}/_emulator/meter_event_summaries",
        params={"meter": meter.id, "start_time": start, "end_time": NOW},
    )
    assert over_http.status_code == 200
    assert over_http.json()["data"] == emulator.meter_event_summaries(meter.id, start, NOW)
    misaligned = httpx.get(
        f"{emulator.url}/_emulator/meter_event_summaries",
        params={"meter": meter.id, "start_time": start + 1, "end_time": NOW},
    )
    assert misaligned.status_code == 400
    assert "start_time" in misaligned.json()["error"]["message"]
    unknown = httpx.get(
        f"{emulator.url}/_emulator/meter_event_summaries",
        params={"meter": "mtr_missing", "start_time": start, "end_time": NOW},
    )
    assert unknown.status_code == 404


def _expected(
    events: list[dict[str, Any]],
    formula: str,
    start: int,
    end: int,
    size: int,
    *,
    grouped: bool,
) -> list[tuple[int, int, int]]:
    groups: dict[int, list[dict[str, Any]]] = {start: []} if not grouped else {}
    for event in events:
        key = start + (event["timestamp"] - start) // size * size
        groups.setdefault(key, []).append(event)
    result = []
    for lo in sorted(groups):
        members = groups[lo]
        if formula == "sum":
            value = sum(e["value"] for e in members)
        elif formula == "count":
            value = len(members)
        else:  # ties on timestamp: the later accepted wins; max keeps the first maximum
            value = max(reversed(members), key=lambda e: e["timestamp"])["value"] if members else 0
        result.append((lo, min(lo + size, end), value))
    return result


# -- v2: meter event sessions and the stream ---------------------------------------------------


def test_v2_session_has_stripe_shape(
    client: stripe.StripeClient,
    emulator: StripeEmulator,
    frozen: FrozenDateTimeFactory,
) -> None:
    session = client.v2.billing.meter_event_session.create()
    assert set(session.to_dict()) == {
        "authentication_token",
        "created",
        "expires_at",
        "id",
        "livemode",
        "object",
    }
    assert session.object == "v2.billing.meter_event_session"
    assert session.livemode is False
    assert session.created == "2025-03-10T12:00:00.000Z"
    assert RFC3339_MS.fullmatch(session.expires_at)
    assert session.expires_at == "2025-03-10T12:15:00.000Z"
    assert session.authentication_token


def test_v2_stream_counts_events(client: stripe.StripeClient, emulator: StripeEmulator) -> None:
    meter = new_meter(client)
    customer = new_customer(client)
    session = client.v2.billing.meter_event_session.create()
    stream = stream_client(emulator, session.authentication_token)
    stamp = datetime.now(UTC) - timedelta(minutes=1)
    result = stream.v2.billing.meter_event_stream.create(
        {
            "events": [
                stream_event(customer, "3", identifier="s-1"),
                stream_event(customer, "4", timestamp=stamp.isoformat().replace("+00:00", "Z")),
            ]
        }
    )
    assert result is None  # the SDK returns nothing for the stream's empty body
    assert total(client, meter.id, customer) == 7
    events = emulator.meter_events()
    assert events[0]["identifier"] == "s-1"
    assert events[1]["timestamp"] == int(stamp.timestamp())
    assert emulator.meter_event_errors() == []


def test_v2_session_expires_after_15_minutes(
    client: stripe.StripeClient,
    emulator: StripeEmulator,
    frozen: FrozenDateTimeFactory,
) -> None:
    meter = new_meter(client)
    customer = new_customer(client)
    stream = stream_client(
        emulator, client.v2.billing.meter_event_session.create().authentication_token
    )
    stream.v2.billing.meter_event_stream.create({"events": [stream_event(customer, "1")]})
    frozen.tick(15 * 60 - 1)
    stream.v2.billing.meter_event_stream.create({"events": [stream_event(customer, "2")]})
    frozen.tick(1)
    with pytest.raises(stripe.TemporarySessionExpiredError) as caught:
        stream.v2.billing.meter_event_stream.create({"events": [stream_event(customer, "4")]})
    assert caught.value.http_status == 401
    assert caught.value.code == "billing_meter_event_session_expired"

    fresh = stream_client(
        emulator, client.v2.billing.meter_event_session.create().authentication_token
    )
    fresh.v2.billing.meter_event_stream.create({"events": [stream_event(customer, "8")]})
    assert total(client, meter.id, customer) == 11


def test_v2_stream_refuses_unknown_tokens_and_secret_keys(
    client: stripe.StripeClient,
    emulator: StripeEmulator,
) -> None:
    new_meter(client)
    customer = new_customer(client)
    for token in ("mest_test_made_up", "sk_test_metersync_emulator"):
        with pytest.raises(stripe.AuthenticationError):
            stream_client(emulator, token).v2.billing.meter_event_stream.create(
                {"events": [stream_event(customer)]}
            )
    assert emulator.meter_events() == []


@pytest.mark.parametrize(
    "events",
    [
        lambda c: [stream_event(c) for _ in range(101)],
        lambda c: [],
        lambda c: [stream_event(c), stream_event(c, timestamp="yesterday")],
        lambda c: [stream_event(c), stream_event(c, timestamp="2025-03-10T12:00:00")],
        lambda c: [
            stream_event(c),
            {"event_name": "api_calls", "payload": {"stripe_customer_id": c, "value": 3}},
        ],
        lambda c: [stream_event(c), {"payload": {"stripe_customer_id": c}}],
        lambda c: [stream_event(c), "not an event"],
        lambda c: [stream_event(c, identifier="x" * 101)],
    ],
    ids=[
        "101-events",
        "no-events",
        "bad-timestamp",
        "naive-timestamp",
        "numeric-value",
        "no-event-name",
        "not-an-object",
        "long-identifier",
    ],
)
def test_v2_stream_rejects_malformed_requests_whole(
    client: stripe.StripeClient,
    emulator: StripeEmulator,
    events: Callable[[str], list[Any]],
) -> None:
    new_meter(client)
    customer = new_customer(client)
    stream = stream_client(
        emulator, client.v2.billing.meter_event_session.create().authentication_token
    )
    with pytest.raises(stripe.InvalidRequestError) as caught:
        stream.v2.billing.meter_event_stream.create({"events": events(customer)})
    assert caught.value.http_status == 400
    assert emulator.meter_events() == []  # valid siblings are not ingested either
    assert emulator.meter_event_errors() == []


def test_v2_per_event_errors_are_recorded_not_counted(
    client: stripe.StripeClient,
    emulator: StripeEmulator,
) -> None:
    meter = new_meter(client)
    retired = new_meter(client, "retired")
    client.v1.billing.meters.deactivate(retired.id)
    customer = new_customer(client)
    send(client, customer, "100", identifier="from-v1")
    stream = stream_client(
        emulator, client.v2.billing.meter_event_session.create().authentication_token
    )
    stream.v2.billing.meter_event_stream.create(
        {
            "events": [
                stream_event(customer, "1", identifier="ok-1"),
                stream_event(customer, "1", event_name="nope", identifier="bad-meter"),
                stream_event(customer, "1", event_name="retired", identifier="inactive-meter"),
                stream_event("cus_unknown", "1", identifier="bad-customer"),
                stream_event(customer, "2.5", identifier="bad-value"),
                stream_event(customer, "1", identifier="too-old", timestamp="2020-01-01T00:00:00Z"),
                stream_event(customer, "1", identifier="ok-1"),  # a duplicate: silently dropped
                stream_event(customer, "1", identifier="from-v1"),  # duplicate of a v1 event
                stream_event(customer, "10", identifier="ok-2"),
            ]
        }
    )
    assert total(client, meter.id, customer) == 111
    assert [e["identifier"] for e in emulator.meter_events()] == ["from-v1", "ok-1", "ok-2"]
    errors = emulator.meter_event_errors()
    assert [(e["identifier"], e["code"]) for e in errors] == [
        ("bad-meter", "no_meter"),
        ("inactive-meter", "archived_meter"),
        ("bad-customer", "meter_event_customer_not_found"),
        ("bad-value", "meter_event_invalid_value"),
        ("too-old", "timestamp_too_far_in_past"),
    ]
    assert all(e["message"] and e["event_name"] for e in errors)
