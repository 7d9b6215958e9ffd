"""A meter event as Stripe takes it (pure): its wire forms, the refusals that can be told
without asking Stripe, and the answers that mean "delivered before" or "the stream's session is
gone".

Exactly-once rests on the event `identifier`: Stripe counts an identifier once within 24 h and
rejects a repeat, so a resend with the same identifier (after a 500, a timeout, a lost answer)
can never double-count, and a rejected repeat counts as delivered (`is_duplicate_event`).
"""

from __future__ import annotations

import functools
import re
from collections.abc import Sequence
from datetime import UTC, datetime
from typing import Any
from urllib.parse import urlencode

import stripe

from metersync.stripe_facts import (
    METER_EVENT_CUSTOMER_KEY,
    METER_EVENT_FUTURE_LIMIT_S,
    METER_EVENT_IDENTIFIER_MAX,
    METER_EVENT_NAME_MAX,
    METER_EVENT_PAST_LIMIT_S,
    METER_EVENT_VALUE_KEY,
    SEND_PAST_MARGIN_S,
)
from metersync.sync.ports import ErrorKind, TargetError
from metersync.times import rfc3339
from metersync.usage.ports import MeterEvent

# Error codes Stripe (or the emulator) gives these answers.
DUPLICATE_EVENT_CODE = "duplicate_meter_event"
SESSION_EXPIRED_CODE = "billing_meter_event_session_expired"
# Where meter events are posted: one a request on v1, batches on the v2 stream.
V1_PATH = "/v1/billing/meter_events"
STREAM_PATH = "/v2/billing/meter_event_stream"
# Stripe's code for a repeated identifier is undocumented (the emulator's code is a guess);
# its message is known: "An event already exists with identifier …". Either one identifies it.
_DUPLICATE_MESSAGE = re.compile(
    r"already exists with identifier|identifier\b.*\balready\b.*\b(received|used|exists|seen)\b",
    re.IGNORECASE | re.DOTALL,
)


def is_duplicate_event(exc: BaseException) -> bool:
    """Stripe's answer to an identifier it already counted (within 24 h): delivered before."""
    if not isinstance(exc, stripe.InvalidRequestError) or exc.http_status != 400:
        return False
    if exc.code == DUPLICATE_EVENT_CODE:
        return True
    message = exc.user_message or str(exc)
    return bool(_DUPLICATE_MESSAGE.search(message))


def refuse_locally(event: MeterEvent, *, now: float) -> TargetError | None:
    """Why Stripe would refuse this event whatever we do, if we can tell without asking.

    The v2 stream would accept the request and drop such an event silently; refusing it here
    makes it a visible, permanent failure on both APIs."""
    problem = None
    if not 1 <= len(event.identifier) <= METER_EVENT_IDENTIFIER_MAX:
        # On the stream one malformed event fails its whole batch of 100: catch it here.
        problem = f"identifier must have 1 to {METER_EVENT_IDENTIFIER_MAX} characters"
    elif not 1 <= len(event.event_name) <= METER_EVENT_NAME_MAX:
        problem = f"event_name must have 1 to {METER_EVENT_NAME_MAX} characters"
    elif not event.customer_id:
        problem = f"payload.{METER_EVENT_CUSTOMER_KEY} is empty"
    elif event.value < 0:
        problem = f"value {event.value} is negative; Stripe takes whole numbers ≥ 0"
    elif event.timestamp < now - METER_EVENT_PAST_LIMIT_S + SEND_PAST_MARGIN_S:
        problem = (
            f"timestamp {event.timestamp} is older than Stripe's 35-day window for meter events"
        )
    elif event.timestamp > now + METER_EVENT_FUTURE_LIMIT_S:
        problem = f"timestamp {event.timestamp} is more than 5 minutes in the future"
    if problem is None:
        return None
    return TargetError(ErrorKind.PERMANENT, f"meter event {event.identifier}: {problem}")


def check_unique_identifiers(events: Sequence[MeterEvent]) -> None:
    # Two events with one identifier in one call: Stripe would count the first and drop the
    # second as "already delivered", losing its value. That is a caller's bug.
    seen: set[str] = set()
    for event in events:
        if event.identifier in seen:
            raise ValueError(f"identifier {event.identifier!r} appears twice in one send()")
        seen.add(event.identifier)


def session_rejected(exc: BaseException) -> bool:
    """The stream refused the token: expired (TemporarySessionExpiredError, code
    billing_meter_event_session_expired) or unknown to Stripe (401)."""
    if isinstance(exc, stripe.TemporarySessionExpiredError):
        return True
    if isinstance(exc, stripe.StripeError):
        return exc.code == SESSION_EXPIRED_CODE or exc.http_status == 401
    return False


def v1_form(event: MeterEvent) -> str:
    """The v1 request's form body, as stripe-python encodes the same params."""
    return urlencode(
        (
            ("event_name", event.event_name),
            (f"payload[{METER_EVENT_CUSTOMER_KEY}]", event.customer_id),
            (f"payload[{METER_EVENT_VALUE_KEY}]", str(event.value)),
            ("identifier", event.identifier),
            ("timestamp", str(event.timestamp)),
        ),
        safe="[]",
    )


def stream_event(event: MeterEvent) -> dict[str, Any]:
    return {
        "event_name": event.event_name,
        "payload": payload(event),
        "identifier": event.identifier,
        "timestamp": _rfc3339_ms(event.timestamp),
    }


@functools.lru_cache(maxsize=4096)
def _rfc3339_ms(timestamp: int) -> str:
    # The stream takes RFC 3339 times, not v1's unix seconds. A push's events share a few
    # stamps (the starts of their windows): each is formatted once.
    return rfc3339(datetime.fromtimestamp(timestamp, UTC))


def payload(event: MeterEvent) -> dict[str, str]:
    # Stripe's payload values are strings; the value a whole number.
    return {METER_EVENT_CUSTOMER_KEY: event.customer_id, METER_EVENT_VALUE_KEY: str(event.value)}
