"""The v2 high-throughput meter event API: `/v2/billing/meter_event_session` hands out a token
valid for 15 minutes; `/v2/billing/meter_event_stream` takes up to 100 events per request with
that token.

Stripe validates stream events asynchronously: the request succeeds when its shape is right,
and an event that breaks a rule (unknown meter or customer, bad value, timestamp out of range)
is dropped and reported later (an error report webhook). The emulator drops it the same way and
keeps the report in `state.meter_event_errors`. The rules themselves are _meters.py's, shared
with v1.
"""

from __future__ import annotations

import math
import re
import time
from datetime import UTC, datetime
from typing import Any

from metersync.testing import _params as p
from metersync.testing._errors import StripeApiError, invalid, missing_param
from metersync.testing._meters import DUPLICATE_EVENT, EventDraft, ingest_event, read_event
from metersync.testing._routes import Call, HandlerResult, Route, route
from metersync.testing._state import EmulatorState

SESSION_TTL_S = 15 * 60
MAX_EVENTS = 100
SESSION_EXPIRED_CODE = "billing_meter_event_session_expired"
# RFC 3339 date-time: a time zone is required (datetime.fromisoformat alone takes naive times
# and bare dates too).
_RFC3339 = re.compile(r"\d{4}-\d{2}-\d{2}[Tt ]\d{2}:\d{2}:\d{2}(\.\d+)?([Zz]|[+-]\d{2}:\d{2})")


def routes() -> list[Route]:
    return [
        route(
            "POST",
            "/v2/billing/meter_event_session",
            "v2.billing.meter_event_session.create",
            create_session,
            body="json",
            mutates=True,
        ),
        route(
            "POST",
            "/v2/billing/meter_event_stream",
            "v2.billing.meter_event_stream.create",
            create_stream_events,
            body="json",
            auth="session_token",
            endpoint_class="meter_event_stream",
            mutates=True,
        ),
    ]


def create_session(call: Call) -> HandlerResult:
    p.only(call.params, set())
    state = call.state
    created = math.floor(time.time() * 1000) / 1000  # v2 times carry milliseconds
    token = state.new_id("mest_test_", 48)
    session = {
        "authentication_token": token,
        "created": _rfc3339(created),
        "expires_at": _rfc3339(created + SESSION_TTL_S),
        "id": state.new_id("mes_test_", 32),
        "livemode": False,
        "object": "v2.billing.meter_event_session",
    }
    state.sessions[token] = session
    return 200, session


def create_stream_events(call: Call) -> HandlerResult:
    state = call.state
    _require_live_session(state, call.api_key)
    # Every event's shape is checked before any is ingested: a malformed request changes nothing.
    drafts = _read_events(state, call.params)
    for draft in drafts:
        try:
            ingest_event(state, draft)
        except StripeApiError as exc:
            if exc.code == DUPLICATE_EVENT:
                continue  # already delivered: the stream drops it silently
            state.meter_event_errors.append(
                {
                    "identifier": draft.identifier,
                    "event_name": draft.event_name,
                    "code": exc.code,
                    "message": exc.message,
                }
            )
    return 200, {}


def _require_live_session(state: EmulatorState, token: str) -> None:
    session = state.sessions.get(token)
    if session is None:
        raise StripeApiError(
            401,
            "Invalid meter event session token. Create a session with "
            "POST /v2/billing/meter_event_session and use its authentication_token.",
        )
    if time.time() >= datetime.fromisoformat(session["expires_at"]).timestamp():
        raise StripeApiError(
            401,
            f"The meter event session {session['id']} expired at {session['expires_at']}. "
            "Create a new session.",
            type="temporary_session_expired",
            code=SESSION_EXPIRED_CODE,
        )


def _read_events(state: EmulatorState, params: dict[str, Any]) -> list[EventDraft]:
    p.only(params, {"events"})
    if "events" not in params:
        raise missing_param("events")
    events = params["events"]
    if not isinstance(events, list) or not 1 <= len(events) <= MAX_EVENTS:
        raise invalid(
            f"Invalid events: must be a list of 1 to {MAX_EVENTS} events.", param="events"
        )
    drafts = []
    for index, fields in enumerate(events):
        where = f"events[{index}]."
        if not isinstance(fields, dict):
            raise invalid(f"Invalid events[{index}]: must be an object.", param=f"events[{index}]")
        timestamp = _timestamp(fields, where + "timestamp")
        drafts.append(read_event(fields, state, timestamp=timestamp, where=where))
    return drafts


def _timestamp(fields: dict[str, Any], where: str) -> int | None:
    raw = fields.get("timestamp")
    if raw is None:
        return None
    if not isinstance(raw, str) or not _RFC3339.fullmatch(raw):
        raise invalid(
            f"Invalid {where}: must be an RFC 3339 date-time such as 2025-01-31T12:00:00.000Z.",
            param=where,
        )
    try:
        moment = datetime.fromisoformat(raw)
    except ValueError:  # e.g. month 13
        raise invalid(f"Invalid {where}: {raw} is not a valid date-time.", param=where) from None
    return math.floor(moment.timestamp())


def _rfc3339(moment: float) -> str:
    stamp = datetime.fromtimestamp(moment, UTC).isoformat(timespec="milliseconds")
    return stamp.replace("+00:00", "Z")
