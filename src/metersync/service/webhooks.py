"""Stripe webhooks received: signature checked, stored once by event id, answered at once. They
are processed in the background by the pipeline (metersync.pipeline, process_webhooks).

Stripe signs each delivery (`Stripe-Signature: t=…,v1=…[,v1=…]`) with the endpoint's secret;
stripe-python checks it, with a 300 s tolerance against replays, and any of several v1
signatures (a secret being rolled). A delivery that fails the check is refused (400). A valid
one is stored by its id, so a second delivery of the same event changes nothing, and answered
200 at once: Stripe disables endpoints that are slow or keep failing.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass

import stripe
from sqlalchemy.exc import IntegrityError

from metersync.clock import utcnow
from metersync.logs import get_logger
from metersync.store import Store, WebhookEventRow

_log = get_logger("metersync.webhooks")
TOLERANCE_S = 300


class BadDelivery(Exception):
    """The delivery is not a genuine, timely Stripe event (the message says why)."""


@dataclass(frozen=True)
class Received:
    event_id: str
    type: str
    duplicate: bool


def receive(
    store: Store, payload: bytes, signature: str | None, secrets: Sequence[str]
) -> Received:
    """Check the signature against each secret; store the event once by id."""
    if not signature:
        raise BadDelivery("no Stripe-Signature header")
    text = payload.decode("utf-8", errors="replace")
    reason = "no webhook secret is configured"
    for secret in secrets:
        try:
            stripe.WebhookSignature.verify_header(text, signature, secret, TOLERANCE_S)
            break
        except stripe.SignatureVerificationError as exc:
            reason = str(exc).split("\n")[0]
    else:
        raise BadDelivery(f"signature check failed: {reason}")
    try:
        event = json.loads(payload)
        event_id, event_type = str(event["id"]), str(event["type"])
    except (ValueError, KeyError, TypeError):
        raise BadDelivery("the body is not a Stripe event (JSON with id and type)") from None
    try:
        with store.session() as session:
            if session.get(WebhookEventRow, event_id) is not None:
                return Received(event_id, event_type, duplicate=True)
            session.add(
                WebhookEventRow(id=event_id, type=event_type, payload=text, received_at=utcnow())
            )
    except IntegrityError:  # the same event, delivered twice at once
        return Received(event_id, event_type, duplicate=True)
    return Received(event_id, event_type, duplicate=False)
