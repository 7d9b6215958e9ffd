"""Stripe: customers as a sync target, billing meters, meter events and Stripe's event totals.

- `StripeTarget` syncs customers (the engine's Target) and holds the account every call of
  this package goes through: one SDK client, one limiter of ordinary API calls.
- `ensure_meters()` makes the configured billing meters exist, active, and refuses a meter
  whose formula or payload keys differ from what metersync sends.
- `MeterEventSender` delivers meter events exactly once per identifier, on v1 or the v2 stream,
  under a limiter of its own; `meter_event_sender()` builds the one the settings describe.
- `event_summaries()` reads Stripe's per-customer totals; `StripeMeterFigures` offers them as
  the engine's `MeterFigures` port, which `usage verify` compares with the ledger.

The SDK stays inside: what these return are metersync's own records, and a failed meter call
raises StripeCallFailed.
"""

from metersync.targets.stripe._calls import StripeCallFailed, default_rate
from metersync.targets.stripe._customers import StripeTarget
from metersync.targets.stripe._events import is_duplicate_event, refuse_locally
from metersync.targets.stripe._figures import StripeMeterFigures
from metersync.targets.stripe._meters import (
    MeterCheck,
    MeterOutcome,
    StripeMeter,
    ensure_meters,
    list_meters,
    meter_mismatches,
    meters_by_event_name,
)
from metersync.targets.stripe._sender import (
    MeterEventSender,
    default_meter_event_rate,
    meter_event_sender,
)
from metersync.targets.stripe._summaries import EventSummary, event_summaries

__all__ = [
    "EventSummary",
    "MeterCheck",
    "MeterEventSender",
    "MeterOutcome",
    "StripeCallFailed",
    "StripeMeter",
    "StripeMeterFigures",
    "StripeTarget",
    "default_meter_event_rate",
    "default_rate",
    "ensure_meters",
    "event_summaries",
    "is_duplicate_event",
    "list_meters",
    "meter_event_sender",
    "meter_mismatches",
    "meters_by_event_name",
    "refuse_locally",
]
