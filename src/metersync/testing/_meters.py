"""`/v1/billing/meters` (with event summaries), meter events and meter event adjustments.

The rules a meter event must pass live here once (`read_event` for its shape, `ingest_event`
for everything that needs the state) and serve both v1 and the v2 stream (_v2.py): v1 turns a
broken rule into a 400, the v2 stream into an error record, as Stripe's asynchronous
processing does.

Business time is `time.time()` (see _state.py), so freezegun moves the 35-day window, the 24 h
identifier uniqueness and the 24 h cancellation window.
"""

from __future__ import annotations

import hashlib
import re
import string
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

from metersync.testing import _params as p
from metersync.testing._errors import invalid, missing_param, no_such
from metersync.testing._routes import Call, HandlerResult, Route, route
from metersync.testing._state import EmulatorState, MeterEventRecord, now

DISPLAY_NAME_MAX = 250
EVENT_NAME_MAX = 100
PAYLOAD_KEY_MAX = 100
IDENTIFIER_MAX = 100
FORMULAS = ("sum", "count", "last")
EVENT_TIME_WINDOWS = ("day", "hour")
GROUPING_WINDOWS = {"hour": 3600, "day": 86400}  # epoch seconds are UTC, so % aligns to UTC
SUMMARY_ALIGNMENT_S = 60  # Stripe: start_time and end_time "must be aligned with minute boundaries"
PAST_WINDOW_S = 35 * 86400
FUTURE_WINDOW_S = 5 * 60
IDENTIFIER_TTL_S = 24 * 3600  # identifier uniqueness, and how long an event can be cancelled
DEFAULT_CUSTOMER_KEY = "stripe_customer_id"
DEFAULT_VALUE_KEY = "value"

# Error codes. The per-event ones are Stripe's own (the codes of its meter error reports,
# `v1.billing.meter.error_report_triggered`), so v1 errors and v2 error records agree.
DUPLICATE_EVENT = "duplicate_meter_event"
NO_METER = "no_meter"
ARCHIVED_METER = "archived_meter"
NO_CUSTOMER_DEFINED = "meter_event_no_customer_defined"
CUSTOMER_NOT_FOUND = "meter_event_customer_not_found"
INVALID_VALUE = "meter_event_invalid_value"
TOO_FAR_IN_PAST = "timestamp_too_far_in_past"
IN_FUTURE = "timestamp_in_future"
EVENT_NAME_TAKEN = "resource_already_exists"
METER_ALREADY_INACTIVE = "meter_already_inactive"
METER_ALREADY_ACTIVE = "meter_already_active"
EVENT_NOT_FOUND = "meter_event_not_found"
EVENT_ALREADY_CANCELLED = "meter_event_already_cancelled"
CANCEL_WINDOW_EXPIRED = "meter_event_cancel_window_expired"

# Whole numbers only: no sign, no decimals (a meter event's payload value is a whole number as a
# string; docs/design.md, "Stripe semantics we rely on").
_WHOLE_NUMBER = re.compile(r"[0-9]+")
_BASE62 = string.digits + string.ascii_letters
_CREATE_PARAMS = {
    "display_name",
    "event_name",
    "default_aggregation",
    "customer_mapping",
    "value_settings",
    "event_time_window",
}
_EVENT_FIELDS = {"event_name", "payload", "identifier", "timestamp"}
_SUMMARY_PARAMS = {
    "customer",
    "start_time",
    "end_time",
    "value_grouping_window",
    "limit",
    "starting_after",
    "ending_before",
}


def routes() -> list[Route]:
    return [
        route("POST", "/v1/billing/meters", "billing.meters.create", create_meter, mutates=True),
        route("GET", "/v1/billing/meters", "billing.meters.list", list_meters),
        route("GET", "/v1/billing/meters/{id}", "billing.meters.retrieve", retrieve_meter),
        route(
            "POST", "/v1/billing/meters/{id}", "billing.meters.update", update_meter, mutates=True
        ),
        route(
            "POST",
            "/v1/billing/meters/{id}/deactivate",
            "billing.meters.deactivate",
            deactivate_meter,
            mutates=True,
        ),
        route(
            "POST",
            "/v1/billing/meters/{id}/reactivate",
            "billing.meters.reactivate",
            reactivate_meter,
            mutates=True,
        ),
        route(
            "GET",
            "/v1/billing/meters/{id}/event_summaries",
            "billing.meters.event_summaries",
            list_event_summaries,
        ),
        route(
            "POST",
            "/v1/billing/meter_events",
            "billing.meter_events.create",
            create_event,
            endpoint_class="meter_events",
            mutates=True,
        ),
        route(
            "POST",
            "/v1/billing/meter_event_adjustments",
            "billing.meter_event_adjustments.create",
            create_adjustment,
            mutates=True,
        ),
    ]


# -- meters -------------------------------------------------------------------------------------


def create_meter(call: Call) -> HandlerResult:
    params = call.params
    p.only(params, _CREATE_PARAMS)
    display_name = _required_text(params, "display_name", DISPLAY_NAME_MAX)
    event_name = _required_text(params, "event_name", EVENT_NAME_MAX)
    formula = _formula(params)
    customer_key = _customer_mapping_key(params)
    value_key = _value_key(params)
    event_time_window = _choice(params, "event_time_window", EVENT_TIME_WINDOWS)
    state = call.state
    _ensure_event_name_free(state, event_name)
    moment = now()
    meter: dict[str, Any] = {
        "created": moment,
        "customer_mapping": {"event_payload_key": customer_key, "type": "by_id"},
        "default_aggregation": {"formula": formula},
        "display_name": display_name,
        "event_name": event_name,
        "event_time_window": event_time_window,
        "id": state.new_id("mtr_test_", 32),
        "livemode": False,
        "object": "billing.meter",
        "status": "active",
        "status_transitions": {"deactivated_at": None},
        "updated": moment,
        "value_settings": {"event_payload_key": value_key},
    }
    state.meters[meter["id"]] = meter
    state.meter_order[meter["id"]] = state.next_counter()
    return 200, meter


def list_meters(call: Call) -> HandlerResult:
    params = call.params
    p.only(params, {"limit", "starting_after", "ending_before", "status"})
    limit, starting_after, ending_before = p.list_page(params)
    status = _choice(params, "status", ("active", "inactive"))
    state = call.state
    ordered = sorted(state.meters, key=lambda mid: -state.meter_order[mid])
    if status is not None:
        ordered = [mid for mid in ordered if state.meters[mid]["status"] == status]
    page, has_more = p.paginate(
        ordered,
        limit,
        starting_after,
        ending_before,
        exists=lambda mid: mid in state.meters,
        kind="billing.meter",
    )
    return 200, p.list_object([state.meters[mid] for mid in page], has_more, "/v1/billing/meters")


def retrieve_meter(call: Call) -> HandlerResult:
    p.only(call.params, set())
    return 200, _meter(call.state, call.path_params["id"])


def update_meter(call: Call) -> HandlerResult:
    p.only(call.params, {"display_name"})  # Stripe lets nothing else change after creation
    meter = _meter(call.state, call.path_params["id"])
    if "display_name" in call.params:
        meter["display_name"] = _required_text(call.params, "display_name", DISPLAY_NAME_MAX)
        meter["updated"] = now()
    return 200, meter


def deactivate_meter(call: Call) -> HandlerResult:
    p.only(call.params, set())
    meter = _meter(call.state, call.path_params["id"])
    if meter["status"] == "inactive":
        raise invalid(f"The meter {meter['id']} is already inactive.", code=METER_ALREADY_INACTIVE)
    moment = now()
    meter["status"] = "inactive"
    meter["status_transitions"] = {"deactivated_at": moment}
    meter["updated"] = moment
    return 200, meter


def reactivate_meter(call: Call) -> HandlerResult:
    p.only(call.params, set())
    state = call.state
    meter = _meter(state, call.path_params["id"])
    if meter["status"] == "active":
        raise invalid(f"The meter {meter['id']} is already active.", code=METER_ALREADY_ACTIVE)
    # While it was inactive, another meter may have taken its event_name.
    _ensure_event_name_free(state, meter["event_name"])
    meter["status"] = "active"
    meter["status_transitions"] = {"deactivated_at": None}
    meter["updated"] = now()
    return 200, meter


def _meter(state: EmulatorState, meter_id: str) -> dict[str, Any]:
    meter = state.meters.get(meter_id)
    if meter is None:
        raise no_such("billing.meter", meter_id)
    return meter


def _ensure_event_name_free(state: EmulatorState, event_name: str) -> None:
    for meter in state.meters.values():
        if meter["status"] == "active" and meter["event_name"] == event_name:
            raise invalid(
                f"An active meter ({meter['id']}) already uses the event_name '{event_name}'. "
                "Deactivate it first or choose another event_name.",
                param="event_name",
                code=EVENT_NAME_TAKEN,
            )


def _formula(params: dict[str, Any]) -> str:
    aggregation = p.obj(params, "default_aggregation")
    if aggregation is None:
        raise missing_param("default_aggregation")
    p.only(aggregation, {"formula"}, prefix="default_aggregation.")
    formula = _choice(
        aggregation, "formula", FORMULAS, param="default_aggregation[formula]", required=True
    )
    assert formula is not None
    return formula


def _customer_mapping_key(params: dict[str, Any]) -> str:
    mapping = p.obj(params, "customer_mapping")
    if mapping is None:
        return DEFAULT_CUSTOMER_KEY
    p.only(mapping, {"event_payload_key", "type"}, prefix="customer_mapping.")
    # Both fields are required inside customer_mapping (stripe-python's typed params).
    key = _required_text(
        mapping, "event_payload_key", PAYLOAD_KEY_MAX, param="customer_mapping[event_payload_key]"
    )
    _choice(mapping, "type", ("by_id",), param="customer_mapping[type]", required=True)
    return key


def _value_key(params: dict[str, Any]) -> str:
    settings = p.obj(params, "value_settings")
    if settings is None:
        return DEFAULT_VALUE_KEY
    p.only(settings, {"event_payload_key"}, prefix="value_settings.")
    return _required_text(
        settings, "event_payload_key", PAYLOAD_KEY_MAX, param="value_settings[event_payload_key]"
    )


# -- meter events: the rules shared with the v2 stream ------------------------------------------


@dataclass(frozen=True)
class EventDraft:
    """A meter event whose shape is valid; whether it is accepted depends on the state."""

    event_name: str
    payload: dict[str, str]
    identifier: str  # given, or generated when absent
    timestamp: int | None  # None: the time it is received


def read_event(
    fields: dict[str, Any],
    state: EmulatorState,
    *,
    timestamp: int | None,
    where: str = "",
) -> EventDraft:
    """Check the shape of one event (400 for the whole request if broken). The caller parses
    `timestamp` itself: v1 sends unix seconds, v2 an RFC 3339 string."""
    p.only(fields, _EVENT_FIELDS, prefix=where)
    event_name = _required_text(fields, "event_name", EVENT_NAME_MAX, param=where + "event_name")
    payload = _payload(fields, where + "payload")
    identifier = p.text(fields, "identifier", max_len=IDENTIFIER_MAX, param=where + "identifier")
    if identifier == "":
        raise invalid(f"Invalid {where}identifier: must not be empty.", param=where + "identifier")
    return EventDraft(event_name, payload, identifier or _new_identifier(state), timestamp)


def ingest_event(state: EmulatorState, draft: EventDraft) -> MeterEventRecord:
    """Accept one event, or raise a 400 StripeApiError whose `code` says which rule it broke
    (DUPLICATE_EVENT for an identifier already accepted within 24 h)."""
    moment = now()
    # Duplicates first: a retry of an accepted event is "already delivered", whatever has
    # changed since (a deleted customer, a deactivated meter, a timestamp now out of range).
    _reject_duplicate(state, draft.identifier)
    timestamp = moment if draft.timestamp is None else draft.timestamp
    _check_time_window(timestamp, moment)
    meter = _meter_for_event(state, draft.event_name)
    customer = _customer_of(state, meter, draft.payload)
    value = _value_of(meter, draft.payload)
    event = {
        "created": moment,
        "event_name": draft.event_name,
        "identifier": draft.identifier,
        "livemode": False,
        "object": "billing.meter_event",
        "payload": dict(draft.payload),
        "timestamp": timestamp,
    }
    record = MeterEventRecord(
        meter["id"], event, customer, value, timestamp, time.time(), state.next_counter()
    )
    state.meter_events.append(record)
    # A reused identifier (after 24 h) now names the new event; the old one still counts.
    state.meter_events_by_identifier[draft.identifier] = record
    return record


def create_event(call: Call) -> HandlerResult:
    timestamp = p.integer(call.params, "timestamp")
    draft = read_event(call.params, call.state, timestamp=timestamp)
    record = ingest_event(call.state, draft)
    return 200, record.event


def _payload(fields: dict[str, Any], where: str) -> dict[str, str]:
    if "payload" not in fields:
        raise missing_param(where)
    payload = p.obj(fields, "payload", param=where)
    assert payload is not None
    for key, value in payload.items():
        if not isinstance(value, str):
            raise invalid(
                f"Invalid {where}[{key}]: payload values must be strings.", param=f"{where}[{key}]"
            )
    return payload


def _new_identifier(state: EmulatorState) -> str:
    # UUID-like, as Stripe generates; drawn from the state's generator like every other id.
    return str(uuid.UUID(int=state.ids.getrandbits(128), version=4))


def _reject_duplicate(state: EmulatorState, identifier: str) -> None:
    earlier = state.meter_events_by_identifier.get(identifier)
    if earlier is not None and time.time() - earlier.received_at < IDENTIFIER_TTL_S:
        raise invalid(
            f"A meter event with identifier '{identifier}' was already received within the last "
            "24 hours; it is counted once. Treat this event as already delivered.",
            param="identifier",
            code=DUPLICATE_EVENT,
        )


def _check_time_window(timestamp: int, moment: int) -> None:
    if timestamp < moment - PAST_WINDOW_S:
        raise invalid(
            f"The timestamp {timestamp} is more than 35 days in the past; meter events must be "
            "within the past 35 calendar days.",
            param="timestamp",
            code=TOO_FAR_IN_PAST,
        )
    if timestamp > moment + FUTURE_WINDOW_S:
        raise invalid(
            f"The timestamp {timestamp} is more than 5 minutes in the future.",
            param="timestamp",
            code=IN_FUTURE,
        )


def _meter_for_event(state: EmulatorState, event_name: str) -> dict[str, Any]:
    named = [m for m in state.meters.values() if m["event_name"] == event_name]
    for meter in named:
        if meter["status"] == "active":
            return meter
    if named:
        raise invalid(
            f"The meter for event_name '{event_name}' is inactive.",
            param="event_name",
            code=ARCHIVED_METER,
        )
    raise invalid(
        f"No active meter with event_name '{event_name}' exists.", param="event_name", code=NO_METER
    )


def _customer_of(state: EmulatorState, meter: dict[str, Any], payload: dict[str, str]) -> str:
    key = meter["customer_mapping"]["event_payload_key"]
    customer_id = payload.get(key)
    if not customer_id:
        raise invalid(
            f"The payload has no customer: it needs payload[{key}] for meter {meter['id']}.",
            param=f"payload[{key}]",
            code=NO_CUSTOMER_DEFINED,
        )
    if customer_id not in state.customers:  # unknown, or deleted
        raise invalid(
            f"No such customer: '{customer_id}'", param=f"payload[{key}]", code=CUSTOMER_NOT_FOUND
        )
    return customer_id


def _value_of(meter: dict[str, Any], payload: dict[str, str]) -> int:
    key = meter["value_settings"]["event_payload_key"]
    raw = payload.get(key)
    if raw is None and meter["default_aggregation"]["formula"] == "count":
        return 1  # a count meter counts events; the value is optional
    if raw is None:
        raise invalid(
            f"The payload has no value: it needs payload[{key}] for meter {meter['id']}.",
            param=f"payload[{key}]",
            code=INVALID_VALUE,
        )
    if not _WHOLE_NUMBER.fullmatch(raw):
        raise invalid(
            f"Invalid payload[{key}]: '{raw}' is not a whole number.",
            param=f"payload[{key}]",
            code=INVALID_VALUE,
        )
    return int(raw)


# -- adjustments --------------------------------------------------------------------------------


def create_adjustment(call: Call) -> HandlerResult:
    params = call.params
    p.only(params, {"event_name", "type", "cancel"})
    event_name = _required_text(params, "event_name", EVENT_NAME_MAX)
    _choice(params, "type", ("cancel",), required=True)
    cancel = p.obj(params, "cancel")
    if cancel is None:
        raise missing_param("cancel")
    p.only(cancel, {"identifier"}, prefix="cancel.")
    identifier = _required_text(cancel, "identifier", IDENTIFIER_MAX, param="cancel[identifier]")
    record = _cancellable(call.state, event_name, identifier)
    record.cancelled = True
    adjustment = {
        "cancel": {"identifier": identifier},
        "event_name": event_name,
        "livemode": False,
        "object": "billing.meter_event_adjustment",
        "status": "complete",
        "type": "cancel",
    }
    call.state.adjustments.append(adjustment)
    return 200, adjustment


def _cancellable(state: EmulatorState, event_name: str, identifier: str) -> MeterEventRecord:
    if not any(m["event_name"] == event_name for m in state.meters.values()):
        raise invalid(
            f"No meter with event_name '{event_name}' exists.", param="event_name", code=NO_METER
        )
    record = state.meter_events_by_identifier.get(identifier)
    if record is None or record.event["event_name"] != event_name:
        raise invalid(
            f"No meter event with identifier '{identifier}' and event_name "
            f"'{event_name}' was received.",
            param="cancel[identifier]",
            code=EVENT_NOT_FOUND,
        )
    if record.cancelled:
        raise invalid(
            f"The meter event '{identifier}' is already cancelled.",
            param="cancel[identifier]",
            code=EVENT_ALREADY_CANCELLED,
        )
    if time.time() - record.received_at >= IDENTIFIER_TTL_S:
        raise invalid(
            f"The meter event '{identifier}' was received more than 24 hours ago; "
            "only events received within 24 hours can be cancelled.",
            param="cancel[identifier]",
            code=CANCEL_WINDOW_EXPIRED,
        )
    return record


# -- event summaries ----------------------------------------------------------------------------


def list_event_summaries(call: Call) -> HandlerResult:
    params = call.params
    p.only(params, _SUMMARY_PARAMS)
    state = call.state
    meter = _meter(state, call.path_params["id"])
    customer = _required_text(params, "customer", None)
    if customer not in state.customers and customer not in state.deleted_customers:
        raise no_such("customer", customer, param="customer")
    start, end, window = _summary_range(params)
    limit, starting_after, ending_before = p.list_page(params)
    records = [r for r in _counted(state, meter["id"], start, end) if r.customer == customer]
    summaries = [
        _summary(meter, customer, lo, hi, group)
        for lo, hi, group in _windows(records, start, end, window)
    ]
    by_id = {s["id"]: s for s in summaries}
    page, has_more = p.paginate(
        list(by_id),
        limit,
        starting_after,
        ending_before,
        exists=lambda sid: sid in by_id,
        kind="billing.meter_event_summary",
    )
    url = f"/v1/billing/meters/{meter['id']}/event_summaries"
    return 200, p.list_object([by_id[sid] for sid in page], has_more, url)


def summaries_of_every_customer(state: EmulatorState, params: dict[str, Any]) -> dict[str, Any]:
    """What `GET /v1/billing/meters/{id}/event_summaries` answers for each customer that has
    events of the meter in the range, all of them from one pass over the events: the control
    read `GET /_emulator/meter_event_summaries?meter=…&start_time=…&end_time=…` (and
    `value_grouping_window`, as the summaries endpoint takes it). Checking every customer's
    figures through the summaries endpoint takes a request per customer, each of which scans
    every event: hours for a benchmark's 100,000 customers. Customers without events in the
    range are left out; each customer's summaries come whole, not in pages."""
    p.only(params, {"meter", "start_time", "end_time", "value_grouping_window"})
    meter = _meter(state, _required_text(params, "meter", None))
    start, end, window = _summary_range(params)
    by_customer: dict[str, list[MeterEventRecord]] = {}
    for record in _counted(state, meter["id"], start, end):
        by_customer.setdefault(record.customer, []).append(record)
    return {
        "object": "list",
        "data": [
            {
                "customer": customer,
                "summaries": [
                    _summary(meter, customer, lo, hi, group)
                    for lo, hi, group in _windows(records, start, end, window)
                ],
            }
            for customer, records in sorted(by_customer.items())
        ],
    }


def _counted(
    state: EmulatorState, meter_id: str, start: int, end: int
) -> Iterator[MeterEventRecord]:
    """The meter's events that count in [start, end): not cancelled, stamped in the range."""
    for record in state.meter_events:
        if record.meter_id == meter_id and not record.cancelled and start <= record.timestamp < end:
            yield record


def _summary_range(params: dict[str, Any]) -> tuple[int, int, int | None]:
    """start_time, end_time and the grouping window in seconds (None: one summary)."""
    start = p.integer(params, "start_time", required=True)
    end = p.integer(params, "end_time", required=True)
    assert start is not None and end is not None
    if start >= end:
        raise invalid("start_time must be before end_time.", param="start_time")
    name = _choice(params, "value_grouping_window", tuple(GROUPING_WINDOWS))
    step = GROUPING_WINDOWS[name] if name else SUMMARY_ALIGNMENT_S
    unit = name or "minute"
    for field, value in (("start_time", start), ("end_time", end)):
        if value % step:
            raise invalid(
                f"Invalid {field}: {value} is not aligned to a UTC {unit} boundary.", param=field
            )
    return start, end, GROUPING_WINDOWS[name] if name else None


def _windows(
    records: list[MeterEventRecord],
    start: int,
    end: int,
    window: int | None,
) -> list[tuple[int, int, list[MeterEventRecord]]]:
    """Without a window: the whole range, even when empty. With one: only the windows that
    hold an event (Stripe leaves empty windows out), oldest first. (Stripe's own order for
    grouped summaries is not documented; ascending is what a reader of a time series expects.)"""
    if window is None:
        return [(start, end, records)]
    groups: dict[int, list[MeterEventRecord]] = {}
    for record in records:
        groups.setdefault(record.timestamp - record.timestamp % window, []).append(record)
    return [(lo, min(lo + window, end), groups[lo]) for lo in sorted(groups)]


def _summary(
    meter: dict[str, Any],
    customer: str,
    start: int,
    end: int,
    records: list[MeterEventRecord],
) -> dict[str, Any]:
    return {
        "aggregated_value": _aggregate(meter["default_aggregation"]["formula"], records),
        "end_time": end,
        "id": _summary_id(meter["id"], customer, start, end),
        "livemode": False,
        "meter": meter["id"],
        "object": "billing.meter_event_summary",
        "start_time": start,
    }


def _aggregate(formula: str, records: list[MeterEventRecord]) -> int:
    if formula == "count":
        return len(records)
    if formula == "sum":
        return sum(r.value for r in records)
    # last: the latest timestamp wins; on a tie, the event accepted last.
    latest = max(records, key=lambda r: (r.timestamp, r.sequence), default=None)
    return latest.value if latest is not None else 0


def _summary_id(meter_id: str, customer: str, start: int, end: int) -> str:
    """Summaries are computed per request; a stable id keeps starting_after working across
    pages."""
    digest = hashlib.sha256(f"{meter_id}|{customer}|{start}|{end}".encode()).digest()
    number = int.from_bytes(digest, "big")
    chars = []
    for _ in range(24):
        number, index = divmod(number, len(_BASE62))
        chars.append(_BASE62[index])
    return "mtrusg_" + "".join(chars)


# -- small parameter helpers --------------------------------------------------------------------


def _required_text(
    params: dict[str, Any],
    name: str,
    max_len: int | None,
    *,
    param: str | None = None,
) -> str:
    value = p.text(params, name, required=True, max_len=max_len, param=param)
    assert value is not None
    return value


def _choice(
    params: dict[str, Any],
    name: str,
    allowed: tuple[str, ...],
    *,
    param: str | None = None,
    required: bool = False,
) -> str | None:
    where = param or name
    value = p.text(params, name, required=required, param=where)
    if value is not None and value not in allowed:
        raise invalid(f"Invalid {where}: must be one of {', '.join(allowed)}", param=where)
    return value
