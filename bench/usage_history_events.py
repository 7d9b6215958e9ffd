"""The events of bench/usage_history.py, and the figures they must bill to.

Events are written straight to NDJSON bytes, a chunk at a time, with %-formatting and no JSON
encoder: generating 10,000,000 of them must cost a small fraction of ingesting them, and a
chunk is all that is ever held. The same pass adds each event to `Expected`, the per-customer
figures the ledger and Stripe must end up with, computed from the events themselves and not
from anything metersync aggregated.

How events are split (by position, so the split is exact): of every six events, three are
`prompt` (the SUM meter `tokens`, 1 to 4,000 tokens each), two are `request` (the COUNT meter
`requests`) and one is `activity` (the UNIQUE_COUNT meter `users`, one of USERS users of the
customer). Each event goes to a customer drawn at random from the stream's customers.
"""

from __future__ import annotations

import json
import random
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

SOURCE = "bench/usage_history"
USERS = 50  # distinct users a customer can have: the UNIQUE_COUNT meter counts them per month
MAX_TOKENS = 4000
SPLIT = (
    "3 in 6 prompt (tokens, SUM), 2 in 6 request (requests, COUNT), "
    "1 in 6 activity (users, UNIQUE_COUNT)"
)

METERS_TOML = """
[[meters]]
slug = "tokens"
event_type = "prompt"
aggregation = "SUM"
value_property = "$.tokens"
[meters.stripe]
event_name = "history_tokens"

[[meters]]
slug = "requests"
event_type = "request"
aggregation = "COUNT"
[meters.stripe]
event_name = "history_requests"

[[meters]]
slug = "users"
event_type = "activity"
aggregation = "UNIQUE_COUNT"
value_property = "$.user"
[meters.stripe]
event_name = "history_users"
"""

_HEAD = '{"specversion":"1.0","id":"%s%d","source":"' + SOURCE + '","type":'
_PROMPT = _HEAD + '"prompt","subject":"%s","time":"%s","data":{"tokens":%d}}'
_REQUEST = _HEAD + '"request","subject":"%s","time":"%s","data":{"path":"/v1/chat"}}'
_ACTIVITY = _HEAD + '"activity","subject":"%s","time":"%s","data":{"user":"u%d"}}'


def customer_key(index: int) -> str:
    return f"c-{index:05d}"


def subject_key(index: int) -> str:
    return f"s-{index:05d}"


def customer_record(index: int) -> dict[str, object]:
    """A customer with one subject, as a person would create it."""
    return {
        "key": customer_key(index),
        "name": f"History customer {index:05d}",
        "usageAttribution": {"subjectKeys": [subject_key(index)]},
    }


@dataclass
class Expected:
    """What each customer's events add up to: tokens and requests in all, and per calendar
    month ("YYYY-MM") the set of its users, as a bitmask (a month-to-date distinct count)."""

    customers: int
    tokens: list[int] = field(default_factory=list)
    requests: list[int] = field(default_factory=list)
    users: dict[str, list[int]] = field(default_factory=dict)
    events: int = 0

    def __post_init__(self) -> None:
        self.tokens = self.tokens or [0] * self.customers
        self.requests = self.requests or [0] * self.customers

    def billed(self) -> dict[tuple[str, str], int]:
        """(customer key, meter slug) → the total every report of it must add up to: the
        UNIQUE_COUNT meter is sent as month-to-date deltas, so its reports add up to the sum
        over months of the distinct users."""
        totals: dict[tuple[str, str], int] = {}
        for index in range(self.customers):
            key = customer_key(index)
            distinct = sum(m[index].bit_count() for m in self.users.values())
            for meter, value in (
                ("tokens", self.tokens[index]),
                ("requests", self.requests[index]),
                ("users", distinct),
            ):
                if value:
                    totals[(key, meter)] = value
        return totals

    def save(self, path: Path) -> None:
        data = {
            "customers": self.customers,
            "events": self.events,
            "tokens": self.tokens,
            "requests": self.requests,
            # Bitmasks as hex: JSON numbers past 2**53 lose bits in some readers.
            "users": {m: [format(x, "x") for x in masks] for m, masks in self.users.items()},
        }
        path.write_text(json.dumps(data))

    @classmethod
    def load(cls, path: Path, customers: int) -> Expected:
        if not path.exists():
            return cls(customers)
        data = json.loads(path.read_text())
        return cls(
            data["customers"],
            data["tokens"],
            data["requests"],
            {m: [int(x, 16) for x in masks] for m, masks in data["users"].items()},
            data["events"],
        )


@dataclass
class EventStream:
    """`total` events spread evenly, in time order, over [start_s, start_s + span_s), each to a
    customer drawn from `customers` (indexes); ids are `prefix` + position."""

    prefix: str
    total: int
    start_s: int
    span_s: int
    customers: Sequence[int]
    seed: int

    def chunks(self, size: int, expected: Expected) -> Iterator[bytes]:
        """NDJSON, `size` events a chunk; each event is added to `expected` as it is written."""
        rng = random.Random(self.seed)
        draw = rng.random
        pool, pool_size = self.customers, len(self.customers)
        subjects = [subject_key(c) for c in range(expected.customers)]
        tokens, requests = expected.tokens, expected.requests
        prefix, total, start, span = self.prefix, self.total, self.start_s, self.span_s
        seconds = [f"{s:02d}Z" for s in range(60)]
        minute = -1
        stamp = at_minute = month = ""
        masks: list[int] = []
        for low in range(0, total, size):
            lines = []
            for i in range(low, min(total, low + size)):
                second = start + i * span // total
                if second // 60 != minute:
                    # Many events share a minute: format it (and find its month) once.
                    minute = second // 60
                    at_minute = time.strftime("%Y-%m-%dT%H:%M:", time.gmtime(second))
                    if at_minute[:7] != month:
                        month = at_minute[:7]
                        masks = expected.users.setdefault(month, [0] * expected.customers)
                stamp = at_minute + seconds[second % 60]
                customer = pool[int(draw() * pool_size)]
                kind = i % 6
                if kind < 3:
                    value = int(draw() * MAX_TOKENS) + 1
                    tokens[customer] += value
                    lines.append(_PROMPT % (prefix, i, subjects[customer], stamp, value))
                elif kind < 5:
                    requests[customer] += 1
                    lines.append(_REQUEST % (prefix, i, subjects[customer], stamp))
                else:
                    user = int(draw() * USERS)
                    masks[customer] |= 1 << user
                    lines.append(_ACTIVITY % (prefix, i, subjects[customer], stamp, user))
            expected.events += len(lines)
            lines.append("")
            yield "\n".join(lines).encode()
