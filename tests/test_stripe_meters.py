"""Stripe billing meters end to end: ensure_meters, MeterEventSender (v1 and the v2 stream),
event_summaries and the `metersync meters` commands, against the emulator over real HTTP with
the real stripe SDK."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Awaitable, Callable, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, TypeVar

import pytest
import stripe
from freezegun import freeze_time
from typer.testing import CliRunner

from metersync.catalog.meters import MeterSettings
from metersync.cli import app
from metersync.errors import ConfigError
from metersync.settings import load_settings
from metersync.sync.ports import ErrorKind
from metersync.targets.stripe import (
    EventSummary,
    MeterEventSender,
    MeterOutcome,
    StripeCallFailed,
    StripeTarget,
    ensure_meters,
    event_summaries,
    is_duplicate_event,
    list_meters,
    meter_event_sender,
    meters_by_event_name,
)
from metersync.targets.stripe._meters import (
    _create,
    _decide,
    create_idempotency_key,
    create_params,
)
from metersync.testing import FaultKind, FaultRule, StripeEmulator
from metersync.usage.ports import Delivery, MeterEvent

T = TypeVar("T")
HOUR = 3600
KEY = "sk_test_meters"
runner = CliRunner()

TOKENS = MeterSettings.model_validate(
    {
        "slug": "tokens",
        "event_type": "prompt",
        "aggregation": "SUM",
        "value_property": "$.tokens",
        "stripe": {"event_name": "tokens_used", "display_name": "Tokens"},
    }
)
SEATS = MeterSettings.model_validate(
    {
        "slug": "seats",
        "event_type": "seat",
        "aggregation": "MAX",
        "value_property": "$.seats",
        "stripe": {"event_name": "seats"},
    }
)
LOCAL_ONLY = MeterSettings.model_validate(
    {"slug": "latency", "event_type": "request", "aggregation": "AVG", "value_property": "$.ms"}
)


@pytest.fixture(scope="module")
def running() -> Iterator[StripeEmulator]:
    with StripeEmulator() as emulator:
        yield emulator


@pytest.fixture
def emulator(running: StripeEmulator) -> StripeEmulator:
    running.reset()
    running.configure(faults=[])
    return running


def with_target(
    emulator: StripeEmulator, work: Callable[[StripeTarget], Awaitable[T]], **options: Any
) -> T:
    async def go() -> T:
        # Built inside the loop: the SDK's aiohttp session belongs to the loop that runs it.
        target = StripeTarget(KEY, api_base=emulator.url, rate=1000, **options)
        try:
            return await work(target)
        finally:
            await target.close()

    return asyncio.run(go())


def new_customer(emulator: StripeEmulator) -> str:
    return emulator.client().v1.customers.create({"name": "ACME"}).id


def new_meter(emulator: StripeEmulator, event_name: str, formula: str = "sum", **extra: Any) -> str:
    params = {
        "display_name": event_name,
        "event_name": event_name,
        "default_aggregation": {"formula": formula},
        **extra,
    }
    return emulator.client().v1.billing.meters.create(params).id


def events_for(
    customer: str, values: list[int], *, prefix: str = "e", event_name: str = "tokens_used"
) -> list[MeterEvent]:
    now = int(time.time())
    return [
        MeterEvent(event_name, customer, value, now - 60, f"{prefix}-{i}")
        for i, value in enumerate(values)
    ]


def total(emulator: StripeEmulator, meter_id: str, customer: str) -> float:
    hour = int(time.time()) // HOUR * HOUR
    listed = emulator.client().v1.billing.meters.event_summaries.list(
        meter_id,
        {"customer": customer, "start_time": hour - 30 * 86400, "end_time": hour + 2 * HOUR},
    )
    [summary] = listed.data
    return summary.aggregated_value


def requests_to(emulator: StripeEmulator, endpoint: str) -> list[dict[str, Any]]:
    return emulator.requests(endpoint)


def sender_run(
    emulator: StripeEmulator,
    batches: list[list[MeterEvent]],
    between: Callable[[], None] | None = None,
    **options: Any,
) -> tuple[list[list[Delivery]], MeterEventSender, StripeTarget]:
    """Send each batch with one sender (one session on v2), calling `between` between them."""

    async def work(
        target: StripeTarget,
    ) -> tuple[list[list[Delivery]], MeterEventSender, StripeTarget]:
        sender = MeterEventSender(target, **{"rate": 1000.0, **options})
        answers = []
        for index, batch in enumerate(batches):
            if index and between is not None:
                between()
            answers.append(await sender.send(batch))
        return answers, sender, target

    return with_target(emulator, work)


# -- ensure_meters ------------------------------------------------------------------------------


def test_ensure_creates_the_missing_meters_then_is_idempotent(emulator: StripeEmulator) -> None:
    meters = [TOKENS, SEATS, LOCAL_ONLY]
    checks = with_target(emulator, lambda t: ensure_meters(t, meters))
    assert [(c.slug, c.event_name, c.outcome) for c in checks] == [
        ("tokens", "tokens_used", MeterOutcome.CREATED),
        ("seats", "seats", MeterOutcome.CREATED),
    ]
    held = {m["event_name"]: m for m in emulator.meters()}
    assert {c.meter_id for c in checks} == {m["id"] for m in held.values()}
    assert held["tokens_used"]["display_name"] == "Tokens"
    assert held["seats"]["display_name"] == "seats"  # no display_name: the slug
    assert held["tokens_used"]["default_aggregation"] == {"formula": "sum"}
    assert held["seats"]["default_aggregation"] == {"formula": "last"}
    assert held["seats"]["customer_mapping"] == {
        "event_payload_key": "stripe_customer_id",
        "type": "by_id",
    }
    assert held["seats"]["value_settings"] == {"event_payload_key": "value"}
    creates = requests_to(emulator, "billing.meters.create")
    assert [r["idempotency_key"] for r in creates] == [
        create_idempotency_key(create_params(TOKENS)),
        create_idempotency_key(create_params(SEATS)),
    ]

    again = with_target(emulator, lambda t: ensure_meters(t, meters))
    assert [(c.outcome, c.meter_id) for c in again] == [
        (MeterOutcome.OK, c.meter_id) for c in checks
    ]
    assert len(requests_to(emulator, "billing.meters.create")) == 2, "a second run creates nothing"


def test_ensure_lists_every_page_of_meters(emulator: StripeEmulator) -> None:
    for i in range(105):  # more than one page of 100
        new_meter(emulator, f"other_{i}")
    tokens_id = new_meter(emulator, "tokens_used")  # newest: on the first page
    new_meter(emulator, "seats", "last")
    emulator.client().v1.billing.meters.deactivate(tokens_id)
    listed = with_target(emulator, list_meters)
    assert len(listed) == 107 and {m.status for m in listed} == {"active", "inactive"}
    assert meters_by_event_name(listed)["tokens_used"].id == tokens_id
    replacement = new_meter(emulator, "tokens_used")
    chosen = meters_by_event_name(with_target(emulator, list_meters))
    assert chosen["tokens_used"].id == replacement, "the active meter, not an inactive one"
    emulator.client().v1.billing.meters.deactivate(replacement)
    checks = with_target(emulator, lambda t: ensure_meters(t, [TOKENS, SEATS]))
    assert [c.outcome for c in checks] == [MeterOutcome.REACTIVATED, MeterOutcome.OK]
    assert checks[0].meter_id == replacement  # the newest of two fitting inactive meters
    assert len(requests_to(emulator, "billing.meters.list")) >= 4  # two listings of two pages


def test_a_mismatched_formula_is_a_config_error_naming_the_field(emulator: StripeEmulator) -> None:
    wrong = new_meter(emulator, "tokens_used", "count")
    with pytest.raises(ConfigError) as caught:
        with_target(emulator, lambda t: ensure_meters(t, [SEATS, TOKENS]))
    message = str(caught.value)
    assert "meter 'tokens'" in message and wrong in message
    assert "default_aggregation.formula 'count'" in message and "needs 'sum'" in message
    assert "cannot change" in message
    # Nothing is created when any meter is wrong (seats would have been): the test's own
    # create is the only one.
    assert len(requests_to(emulator, "billing.meters.create")) == 1
    assert [m["event_name"] for m in emulator.meters()] == ["tokens_used"]
    assert emulator.meters()[0]["default_aggregation"] == {"formula": "count"}  # not "fixed"


def test_mismatched_payload_keys_are_named_too(emulator: StripeEmulator) -> None:
    new_meter(
        emulator,
        "tokens_used",
        customer_mapping={"event_payload_key": "customer", "type": "by_id"},
        value_settings={"event_payload_key": "tokens"},
    )
    with pytest.raises(ConfigError) as caught:
        with_target(emulator, lambda t: ensure_meters(t, [TOKENS]))
    message = str(caught.value)
    assert "customer_mapping.event_payload_key 'customer'" in message
    assert "needs 'stripe_customer_id'" in message
    assert "value_settings.event_payload_key 'tokens'" in message and "needs 'value'" in message


def test_an_inactive_meter_is_reactivated(emulator: StripeEmulator) -> None:
    meter_id = new_meter(emulator, "tokens_used")
    emulator.client().v1.billing.meters.deactivate(meter_id)
    preview = with_target(emulator, lambda t: ensure_meters(t, [TOKENS], dry_run=True))
    assert [(c.outcome, c.meter_id) for c in preview] == [(MeterOutcome.WOULD_REACTIVATE, meter_id)]
    assert emulator.meters()[0]["status"] == "inactive"
    [check] = with_target(emulator, lambda t: ensure_meters(t, [TOKENS]))
    assert (check.outcome, check.meter_id) == (MeterOutcome.REACTIVATED, meter_id)
    assert "inactive" in check.note
    assert emulator.meters()[0]["status"] == "active"
    assert len(requests_to(emulator, "billing.meters.create")) == 1  # the test's own
    [check] = with_target(emulator, lambda t: ensure_meters(t, [TOKENS]))
    assert check.outcome is MeterOutcome.OK


def test_a_retired_mismatched_meter_is_left_alone_and_replaced(emulator: StripeEmulator) -> None:
    # Stripe cannot change a formula: deactivating the wrong meter is how it is replaced.
    wrong = new_meter(emulator, "tokens_used", "count")
    emulator.client().v1.billing.meters.deactivate(wrong)
    [check] = with_target(emulator, lambda t: ensure_meters(t, [TOKENS]))
    assert check.outcome is MeterOutcome.CREATED and check.meter_id != wrong
    assert wrong in check.note
    statuses = {m["id"]: m["status"] for m in emulator.meters()}
    assert statuses == {wrong: "inactive", check.meter_id: "active"}


def test_a_meter_created_by_another_run_meanwhile_is_adopted(emulator: StripeEmulator) -> None:
    # Listed before someone else created it: the create meets "event_name taken". (Another
    # metersync run with the same settings would send the same idempotency key: a replay.)
    decision = _decide(TOKENS, [])
    other = new_meter(emulator, "tokens_used")
    check = with_target(emulator, lambda t: _create(t, decision))
    assert (check.outcome, check.meter_id, check.note) == (
        MeterOutcome.OK,
        other,
        "created by another run",
    )
    assert len(emulator.meters()) == 1


def test_dry_run_creates_nothing(emulator: StripeEmulator) -> None:
    checks = with_target(emulator, lambda t: ensure_meters(t, [TOKENS, SEATS], dry_run=True))
    assert [(c.outcome, c.meter_id) for c in checks] == [(MeterOutcome.WOULD_CREATE, None)] * 2
    assert emulator.meters() == []


def test_a_create_whose_answer_is_lost_is_replayed_not_duplicated(
    emulator: StripeEmulator,
) -> None:
    emulator.configure(seed=3, faults=[FaultRule(FaultKind.COMMIT_THEN_DROP, 0.5)])
    checks = with_target(emulator, lambda t: ensure_meters(t, [TOKENS, SEATS]))
    emulator.configure(faults=[])
    assert {c.outcome for c in checks} == {MeterOutcome.CREATED}
    assert sorted(m["event_name"] for m in emulator.meters()) == ["seats", "tokens_used"]
    creates = requests_to(emulator, "billing.meters.create")
    assert any(r["fault"] == "commit_then_drop" for r in creates) and any(
        r["replayed"] for r in creates
    ), "the seed must make a create lose its answer and be replayed"


def test_a_refused_key_fails_with_exit_code_2(emulator: StripeEmulator) -> None:
    async def work(_: StripeTarget) -> None:
        target = StripeTarget("rk_live_refused", api_base=emulator.url)
        try:
            await ensure_meters(target, [TOKENS])
        finally:
            await target.close()

    with pytest.raises(StripeCallFailed) as caught:
        with_target(emulator, work)
    assert caught.value.exit_code == 2 and "listing billing meters" in str(caught.value)
    assert caught.value.error.kind is ErrorKind.FATAL


# -- v1 meter events ----------------------------------------------------------------------------


def test_v1_delivers_and_a_resend_counts_as_a_delivered_duplicate(
    emulator: StripeEmulator,
) -> None:
    meter_id = new_meter(emulator, "tokens_used")
    customer = new_customer(emulator)
    events = events_for(customer, [5, 7, 11])
    [first, second], _, _ = sender_run(emulator, [events, events])
    assert first == [Delivery(e.identifier, True) for e in events]
    assert second == [Delivery(e.identifier, True, duplicate=True) for e in events]
    assert total(emulator, meter_id, customer) == 23  # counted once
    posted = requests_to(emulator, "billing.meter_events.create")
    assert [r["status"] for r in posted] == [200] * 3 + [400] * 3


def test_stripes_own_duplicate_message_is_recognised() -> None:
    # Stripe's code for a repeated identifier is undocumented; its message is known.
    real = stripe.InvalidRequestError(
        "An event already exists with identifier tokens:acme:1741600800.",
        param="identifier",
        code=None,
        http_status=400,
    )
    other = stripe.InvalidRequestError(
        "No such customer: 'cus_x'", param="payload", code="resource_missing", http_status=400
    )
    assert is_duplicate_event(real) and not is_duplicate_event(other)


def test_v1_faults_leave_retryable_deliveries_that_a_resend_completes(
    emulator: StripeEmulator,
) -> None:
    meter_id = new_meter(emulator, "tokens_used")
    customers = [new_customer(emulator) for _ in range(4)]
    events = [
        MeterEvent("tokens_used", customers[i % 4], i + 1, int(time.time()) - 60, f"f-{i}")
        for i in range(60)
    ]
    emulator.configure(
        seed=7,
        faults=[
            {"kind": "error_500", "probability": 0.2, "endpoint": "billing.meter_events.create"},
            {"kind": "rate_limit", "probability": 0.15, "endpoint": "billing.meter_events.create"},
            {"kind": "commit_then_drop", "probability": 0.1, "endpoint": "billing.meter_events.*"},
        ],
    )
    [first], sender, target = sender_run(emulator, [events], retries=0)
    failed = [d for d in first if not d.delivered]
    assert failed, "the faults must have struck"
    assert all(d.error is not None and d.error.kind is ErrorKind.RETRYABLE for d in failed)
    assert any(d.error is not None and d.error.throttled for d in failed)
    assert sender.limiter.stats.throttled > 0, "a 429 slows the meter event limiter"
    assert target.limiter.stats.throttled == 0

    emulator.configure(faults=[])
    [second], _, _ = sender_run(emulator, [events])  # the SAME identifiers
    assert all(d.delivered for d in second)
    dropped = {r["fault"] for r in emulator.requests("billing.meter_events.create")}
    assert "commit_then_drop" in dropped
    # Events whose answer was lost landed anyway: their resend is a duplicate.
    assert any(d.duplicate for d in second)
    assert total(emulator, meter_id, customers[0]) == sum(e.value for e in events[0::4])
    assert sum(total(emulator, meter_id, c) for c in customers) == sum(e.value for e in events)


def test_v1_retries_inside_send_with_the_same_identifiers(emulator: StripeEmulator) -> None:
    meter_id = new_meter(emulator, "tokens_used")
    customer = new_customer(emulator)
    events = events_for(customer, list(range(1, 31)))
    emulator.configure(
        seed=5, faults=[FaultRule(FaultKind.ERROR_500, 0.3, "billing.meter_events.create")]
    )
    [answer], _, _ = sender_run(emulator, [events], retries=6, retry_delay_s=0.01)
    assert all(d.delivered for d in answer)
    assert total(emulator, meter_id, customer) == sum(range(1, 31))
    posted = emulator.requests("billing.meter_events.create")
    assert len(posted) > 30 and any(r["status"] == 500 for r in posted)
    assert len(emulator.meter_events()) == 30


def test_v1_permanent_errors_and_local_refusals(emulator: StripeEmulator) -> None:
    new_meter(emulator, "tokens_used")
    customer = new_customer(emulator)
    now = int(time.time())
    events = [
        MeterEvent("tokens_used", "cus_missing", 1, now - 60, "p-1"),
        MeterEvent("tokens_used", customer, 1, now - 36 * 86400, "p-2"),
        MeterEvent("tokens_used", customer, 1, now + 3600, "p-3"),
        MeterEvent("tokens_used", customer, -4, now - 60, "p-4"),
        MeterEvent("no_such_meter", customer, 1, now - 60, "p-5"),
        MeterEvent("tokens_used", customer, 1, now - 60, "p-7" + "x" * 100),
        MeterEvent("tokens_used", customer, 2, now - 60, "p-6"),
    ]
    [answer], _, _ = sender_run(emulator, [events])
    assert [d.delivered for d in answer] == [False] * 6 + [True]
    kinds = {d.identifier: d.error.kind for d in answer if d.error is not None}
    assert set(kinds.values()) == {ErrorKind.PERMANENT}
    messages = {d.identifier: d.error.message for d in answer if d.error is not None}
    assert "35-day" in messages["p-2"] and "future" in messages["p-3"]
    assert "negative" in messages["p-4"] and "1 to 100 characters" in answer[5].error.message
    # Refused locally: never sent. Only p-1, p-5 and p-6 reached Stripe.
    assert len(emulator.requests("billing.meter_events.create")) == 3


def test_v1_uses_the_meter_event_limiter_not_the_customer_limiter(
    emulator: StripeEmulator,
) -> None:
    new_meter(emulator, "tokens_used")
    customer = new_customer(emulator)
    [answer], sender, target = sender_run(emulator, [events_for(customer, [1] * 12)])
    assert all(d.delivered for d in answer)
    assert sender.limiter.stats.acquired == 12
    assert target.limiter.stats.acquired == 0 and target.requests == 0


def most_in_flight(requests: list[dict[str, Any]]) -> int:
    """The most requests the emulator was handling at once, from its log."""
    edges = sorted(
        [(r["time"], 1) for r in requests]
        + [(r["time"] + r["duration_ms"] / 1000, -1) for r in requests]
    )
    running = most = 0
    for _, step in edges:
        running += step
        most = max(most, running)
    return most


def test_v1_concurrency_above_a_hundred_is_not_capped_by_the_connection_pool(
    emulator: StripeEmulator,
) -> None:
    # The SDK's HTTP clients pool 100 connections by default: 150 lanes would run as 100.
    meter_id = new_meter(emulator, "tokens_used")
    customers = [new_customer(emulator) for _ in range(150)]
    now = int(time.time())
    events = [
        MeterEvent("tokens_used", c, 1, now - 60, f"wide-{i}") for i, c in enumerate(customers)
    ]
    emulator.configure(latency_ms=500)
    try:
        [answer], _, _ = sender_run(emulator, [events], concurrency=150)
    finally:
        emulator.configure(latency_ms=0)
    assert all(d.delivered for d in answer)
    assert most_in_flight(emulator.requests("billing.meter_events.create")) > 100
    assert sum(total(emulator, meter_id, c) for c in customers) == 150


def test_repeated_identifiers_in_one_send_are_a_bug(emulator: StripeEmulator) -> None:
    event = events_for("cus_x", [1])[0]
    with pytest.raises(ValueError, match="appears twice"):
        sender_run(emulator, [[event, event]])


# -- v2 meter event stream ----------------------------------------------------------------------


def test_v2_sends_batches_of_at_most_100_on_one_session(emulator: StripeEmulator) -> None:
    meter_id = new_meter(emulator, "tokens_used")
    customers = [new_customer(emulator) for _ in range(5)]
    now = int(time.time())
    events = [
        MeterEvent("tokens_used", customers[i % 5], 2, now - i, f"v2-{i}") for i in range(250)
    ]
    [answer], sender, target = sender_run(emulator, [events], api="v2")
    assert answer == [Delivery(e.identifier, True) for e in events]
    assert len(emulator.requests("v2.billing.meter_event_stream.create")) == 3
    assert len(emulator.requests("v2.billing.meter_event_session.create")) == 1
    assert sender.sessions_created == 1 and sender.limiter.stats.acquired == 3
    assert target.limiter.stats.acquired == 1  # the session: an ordinary API call
    assert emulator.meter_event_errors() == []
    assert sum(total(emulator, meter_id, c) for c in customers) == 500
    stored = {e["identifier"]: e for e in emulator.meter_events()}
    assert stored["v2-7"]["timestamp"] == now - 7  # RFC 3339 on the wire, same second


def test_v2_resend_is_dropped_by_the_stream_and_counted_once(emulator: StripeEmulator) -> None:
    meter_id = new_meter(emulator, "tokens_used")
    customer = new_customer(emulator)
    events = events_for(customer, [3] * 10)
    [first, second], sender, _ = sender_run(emulator, [events, events], api="v2")
    assert all(d.delivered for d in first + second)
    assert sender.sessions_created == 1
    assert total(emulator, meter_id, customer) == 30


def test_v2_renews_the_session_before_it_expires(emulator: StripeEmulator) -> None:
    meter_id = new_meter(emulator, "tokens_used")
    customer = new_customer(emulator)
    start = datetime.now(UTC)
    with freeze_time(start, tick=True) as frozen:
        first = events_for(customer, [1] * 120, prefix="a")
        second = [
            MeterEvent(e.event_name, e.customer_id, 2, e.timestamp + 16 * 60, f"b-{i}")
            for i, e in enumerate(first)
        ]
        [a, b], sender, _ = sender_run(
            emulator, [first, second], lambda: frozen.tick(timedelta(minutes=16)), api="v2"
        )
        assert all(d.delivered for d in a + b)
        assert sender.sessions_created == 2
        sessions = emulator.requests("v2.billing.meter_event_session.create")
        assert len(sessions) == 2
        streams = emulator.requests("v2.billing.meter_event_stream.create")
        assert [r["status"] for r in streams] == [200] * 4, "renewed before, not after, a 401"
        assert total(emulator, meter_id, customer) == 120 + 240


def test_v2_session_expired_mid_run_is_renewed_and_the_batch_resent(
    emulator: StripeEmulator,
) -> None:
    meter_id = new_meter(emulator, "tokens_used")
    customer = new_customer(emulator)
    start = datetime.now(UTC)
    with freeze_time(start, tick=True) as frozen:
        first = events_for(customer, [1] * 150, prefix="a")
        second = [
            MeterEvent(e.event_name, e.customer_id, 5, e.timestamp + 16 * 60, f"b-{i}")
            for i, e in enumerate(first)
        ]
        # A sender whose clock never moves cannot see the expiry coming: the stream tells it.
        frozen_clock = start.timestamp()
        [a, b], sender, _ = sender_run(
            emulator,
            [first, second],
            lambda: frozen.tick(timedelta(minutes=16)),
            api="v2",
            concurrency=1,
            clock=lambda: frozen_clock,
        )
        assert all(d.delivered for d in a + b)
        assert sender.sessions_created == 2
        statuses = [r["status"] for r in emulator.requests("v2.billing.meter_event_stream.create")]
        assert statuses == [200, 200, 401, 200, 200]
        assert total(emulator, meter_id, customer) == 150 + 5 * 150  # each event exactly once
        assert len(emulator.meter_events()) == 300


def test_v2_faults_leave_retryable_deliveries(emulator: StripeEmulator) -> None:
    meter_id = new_meter(emulator, "tokens_used")
    customer = new_customer(emulator)
    events = events_for(customer, [1] * 400)
    emulator.configure(
        seed=2,
        faults=[
            {
                "kind": "rate_limit",
                "probability": 0.5,
                "endpoint": "v2.billing.meter_event_stream.*",
            }
        ],
    )
    [first], sender, _ = sender_run(emulator, [events], api="v2", retries=0)
    failed = [d for d in first if not d.delivered]
    assert failed and all(d.error is not None and d.error.throttled for d in failed)
    assert sender.limiter.stats.throttled > 0
    emulator.configure(faults=[])
    [second], _, _ = sender_run(emulator, [events], api="v2")
    assert all(d.delivered for d in second)
    assert total(emulator, meter_id, customer) == 400


def test_v2_with_a_refused_key_reports_fatal_without_hammering(emulator: StripeEmulator) -> None:
    events = events_for("cus_x", [1] * 300)

    async def work(_: StripeTarget) -> list[Delivery]:
        target = StripeTarget("rk_live_refused", api_base=emulator.url)
        try:
            return await MeterEventSender(target, api="v2", rate=1000).send(events)
        finally:
            await target.close()

    answer = with_target(emulator, work)
    assert all(d.error is not None and d.error.kind is ErrorKind.FATAL for d in answer)
    assert len(emulator.requests("v2.billing.meter_event_session.create")) == 1


def test_the_factory_reads_usage_settings(tmp_path: Path, emulator: StripeEmulator) -> None:
    config = tmp_path / "metersync.toml"
    config.write_text('[usage]\nstripe_api = "v2"\nconcurrency = 3\n')
    settings = load_settings(config, environ={"STRIPE_API_KEY": KEY})

    async def work(target: StripeTarget) -> MeterEventSender:
        return meter_event_sender(settings, target)

    sender = with_target(emulator, work)
    assert (sender.api, sender.concurrency, sender.limiter.rate) == ("v2", 3, 100.0)
    # 50 ms of the rate: a loop stalled that long catches up instead of losing the tokens.
    assert sender.limiter.burst == 5.0


# -- event summaries ----------------------------------------------------------------------------


def test_event_summaries_give_stripes_hourly_totals(emulator: StripeEmulator) -> None:
    meter_id = new_meter(emulator, "tokens_used")
    customer = new_customer(emulator)
    other = new_customer(emulator)
    hour = int(time.time()) // HOUR * HOUR
    events = [
        MeterEvent("tokens_used", customer, 4, hour - 3 * HOUR + 10, "s-1"),
        MeterEvent("tokens_used", customer, 6, hour - 3 * HOUR + 20, "s-2"),
        MeterEvent("tokens_used", customer, 9, hour - HOUR + 5, "s-3"),
        MeterEvent("tokens_used", other, 100, hour - HOUR + 5, "s-4"),
    ]
    sender_run(emulator, [events])
    start, end = hour - 4 * HOUR, hour + HOUR

    hourly = with_target(
        emulator, lambda t: event_summaries(t, meter_id, customer, start, end, "hour")
    )
    assert hourly == [
        EventSummary(hour - 3 * HOUR, hour - 2 * HOUR, 10),
        EventSummary(hour - HOUR, hour, 9),
    ]
    whole = with_target(emulator, lambda t: event_summaries(t, meter_id, customer, start, end))
    assert whole == [EventSummary(start, end, 19)]


def test_event_summaries_read_every_page(emulator: StripeEmulator) -> None:
    meter_id = new_meter(emulator, "tokens_used")
    customer = new_customer(emulator)
    hour = int(time.time()) // HOUR * HOUR
    events = [
        MeterEvent("tokens_used", customer, i + 1, hour - (i + 1) * HOUR, f"h-{i}")
        for i in range(120)  # 120 hourly windows: two pages
    ]
    sender_run(emulator, [events])
    summaries = with_target(
        emulator,
        lambda t: event_summaries(t, meter_id, customer, hour - 130 * HOUR, hour, "hour"),
    )
    assert len(summaries) == 120
    assert sum(s.aggregated_value for s in summaries) == sum(range(1, 121))
    assert len(emulator.requests("billing.meters.event_summaries")) == 2


# -- the CLI ------------------------------------------------------------------------------------

CONFIG = """
[[meters]]
slug = "tokens"
event_type = "prompt"
aggregation = "SUM"
value_property = "$.tokens"
[meters.stripe]
event_name = "tokens_used"
display_name = "Tokens"

[[meters]]
slug = "seats"
event_type = "seat"
aggregation = "MAX"
value_property = "$.seats"
group_by = { plan = "$.plan" }
[meters.stripe]
event_name = "seats"
scale = 0.5

[[meters]]
slug = "latency"
event_type = "request"
aggregation = "AVG"
value_property = "$.ms"
"""


@pytest.fixture
def env(tmp_path: Path, emulator: StripeEmulator) -> dict[str, str]:
    config = tmp_path / "metersync.toml"
    config.write_text(CONFIG)
    return {
        "METERSYNC_CONFIG": str(config),
        "STRIPE_API_KEY": KEY,
        "METERSYNC_STRIPE_API_BASE": emulator.url,
        "METERSYNC_SYNC_RATE_LIMIT": "1000",
    }


def cli(env: dict[str, str], *args: str) -> tuple[int, str, str]:
    result = runner.invoke(app, list(args), env=env)
    if result.exception and not isinstance(result.exception, SystemExit):
        raise result.exception
    return result.exit_code, result.stdout, result.stderr


def test_cli_meters_list(env: dict[str, str], emulator: StripeEmulator) -> None:
    code, out, _ = cli(env, "meters", "list")
    assert code == 0 and "meters (3)" in out
    assert "tokens_used" in out and "plan=$.plan" in out and "0.5" in out
    code, out, _ = cli(env, "meters", "list", "--json")
    listed = json.loads(out)
    assert code == 0 and [m["slug"] for m in listed] == ["tokens", "seats", "latency"]
    assert listed[1]["stripe"] == {
        "eventName": "seats",
        "formula": "last",
        "scale": 0.5,
        "displayName": "seats",
    }
    assert listed[2]["stripe"] is None and listed[1]["groupBy"] == {"plan": "$.plan"}
    assert emulator.requests() == [], "listing the configuration calls no one"


def test_cli_meters_ensure(env: dict[str, str], emulator: StripeEmulator) -> None:
    code, out, _ = cli(env, "meters", "ensure", "--dry-run")
    assert code == 0 and "would create: tokens" in out and "dry run" in out
    assert emulator.meters() == []

    code, out, _ = cli(env, "meters", "ensure")
    ids = {m["event_name"]: m["id"] for m in emulator.meters()}
    assert code == 0 and out.splitlines() == [
        f"created: tokens (event_name 'tokens_used') → {ids['tokens_used']}",
        f"created: seats (event_name 'seats') → {ids['seats']}",
    ]
    code, out, _ = cli(env, "meters", "ensure", "--json")
    report = json.loads(out)
    assert code == 0 and report["dryRun"] is False
    assert [(m["slug"], m["outcome"], m["stripeMeterId"]) for m in report["meters"]] == [
        ("tokens", "ok", ids["tokens_used"]),
        ("seats", "ok", ids["seats"]),
    ]

    emulator.client().v1.billing.meters.deactivate(ids["seats"])
    code, out, _ = cli(env, "meters", "ensure")
    assert code == 0 and f"reactivated: seats (event_name 'seats') → {ids['seats']}" in out


def test_cli_meters_ensure_exits_2_on_a_mismatch(
    env: dict[str, str], emulator: StripeEmulator
) -> None:
    wrong = new_meter(emulator, "seats", "sum")
    code, out, err = cli(env, "meters", "ensure")
    assert code == 2 and out == ""
    [line] = err.strip().splitlines()
    assert line.startswith("error: meter 'seats': Stripe meter " + wrong)
    assert "default_aggregation.formula 'sum'" in line and "needs 'last'" in line
    assert len(emulator.meters()) == 1


def test_cli_meters_ensure_exits_2_without_a_key(env: dict[str, str]) -> None:
    env = {k: v for k, v in env.items() if k != "STRIPE_API_KEY"}
    code, _, err = cli(env, "meters", "ensure")
    assert code == 2 and err.strip().splitlines() == [
        "error: stripe.api_key is not set: set STRIPE_API_KEY (or stripe.api_key_file) to a "
        "Stripe secret or restricted key"
    ]
    code, _, err = cli({**env, "STRIPE_API_KEY": "rk_live_refused"}, "meters", "ensure")
    assert code == 2 and len(err.strip().splitlines()) == 1 and "listing billing meters" in err


def test_cli_meters_ensure_without_stripe_meters(tmp_path: Path) -> None:
    config = tmp_path / "empty.toml"
    config.write_text("")
    code, out, _ = cli({"METERSYNC_CONFIG": str(config)}, "meters", "ensure")
    assert code == 0 and "nothing to ensure" in out
