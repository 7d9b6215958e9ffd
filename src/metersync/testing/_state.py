"""Everything the emulator remembers: objects, idempotent results, sessions, webhook events.

Only the event loop's thread touches it (handlers are plain functions run on the loop), so it
needs no locks. Business time (`created`, 24 h idempotency, the 35-day window, 15-minute
sessions) is `time.time()`, so tests can move it with freezegun.
"""

from __future__ import annotations

import random
import string
import time
from dataclasses import dataclass, field
from typing import Any

_ALPHABET = string.ascii_letters + string.digits


def now() -> int:
    return int(time.time())


@dataclass
class StoredResponse:
    fingerprint: str
    status: int
    body: bytes
    request_id: str
    stored_at: float


@dataclass
class CustomerVersion:
    """What search sees of a customer from `visible_at` on (eventual consistency)."""

    visible_at: float
    snapshot: dict[str, Any] | None  # None: deleted


@dataclass
class MeterEventRecord:
    meter_id: str
    event: dict[str, Any]  # the billing.meter_event object as returned
    customer: str
    value: int
    timestamp: int
    received_at: float
    sequence: int
    cancelled: bool = False


@dataclass
class EmulatorState:
    ids: random.Random = field(default_factory=random.Random)
    customers: dict[str, dict[str, Any]] = field(default_factory=dict)
    deleted_customers: set[str] = field(default_factory=set)
    customer_order: dict[str, int] = field(default_factory=dict)  # id → insertion counter
    search_versions: dict[str, list[CustomerVersion]] = field(default_factory=dict)
    meters: dict[str, dict[str, Any]] = field(default_factory=dict)
    meter_order: dict[str, int] = field(default_factory=dict)
    meter_events: list[MeterEventRecord] = field(default_factory=list)
    meter_events_by_identifier: dict[str, MeterEventRecord] = field(default_factory=dict)
    meter_event_errors: list[dict[str, Any]] = field(default_factory=list)
    adjustments: list[dict[str, Any]] = field(default_factory=list)
    sessions: dict[str, dict[str, Any]] = field(default_factory=dict)  # token → session
    idempotency: dict[tuple[str, str], StoredResponse] = field(default_factory=dict)
    events: list[dict[str, Any]] = field(default_factory=list)  # webhook events, in order
    counter: int = 0

    def new_id(self, prefix: str, length: int = 14) -> str:
        return prefix + "".join(self.ids.choice(_ALPHABET) for _ in range(length))

    def next_counter(self) -> int:
        self.counter += 1
        return self.counter

    def expire_idempotency(self, ttl_s: float) -> None:
        cutoff = time.time() - ttl_s
        for key in [k for k, v in self.idempotency.items() if v.stored_at < cutoff]:
            del self.idempotency[key]
