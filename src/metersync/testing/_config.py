"""The emulator's realism knobs: latency, rate limits, search delay, faults, webhooks.

Every knob is a constructor argument of StripeEmulator and can be changed while it runs, from
Python (`emulator.configure(...)`) or over HTTP (`POST /_emulator/config` with a JSON body).
"""

from __future__ import annotations

import fnmatch
from dataclasses import asdict, dataclass, field, fields, replace
from enum import StrEnum
from typing import Any


class FaultKind(StrEnum):
    ERROR_500 = "error_500"  # 500 api_error; nothing was done
    RESET = "reset"  # the connection is reset before the request is processed
    COMMIT_THEN_DROP = "commit_then_drop"  # the request is processed, then the connection closes
    SLOW = "slow"  # the request is processed; the response comes after `slow_seconds`
    RATE_LIMIT = "rate_limit"  # a 429 as if the rate limit was hit


@dataclass(frozen=True)
class FaultRule:
    """Inject `kind` into a share `probability` of the requests to endpoints matching `endpoint`
    (a glob over endpoint names such as `customers.create`, `customers.*`, `billing.*`)."""

    kind: FaultKind
    probability: float
    endpoint: str = "*"

    def matches(self, endpoint: str) -> bool:
        return fnmatch.fnmatchcase(endpoint, self.endpoint)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> FaultRule:
        probability = float(data["probability"])
        if not 0.0 <= probability <= 1.0:
            raise ValueError(f"fault probability must be within 0..1, got {probability}")
        return cls(FaultKind(data["kind"]), probability, str(data.get("endpoint", "*")))


# Stripe's rate limits per endpoint class: test mode 25/s, search 20/s; meter events have their
# own budget (docs/design.md, "Stripe semantics we rely on"). None means unlimited (the
# default, for fast tests).
ENDPOINT_CLASSES = ("default", "search", "meter_events", "meter_event_stream")


@dataclass(frozen=True)
class EmulatorConfig:
    latency_ms: float = 0.0
    jitter_ms: float = 0.0
    rate_limit: float | None = None  # requests/s for ordinary endpoints
    search_rate_limit: float | None = None
    meter_event_rate_limit: float | None = None
    meter_event_stream_rate_limit: float | None = None
    burst: float | None = None  # bucket size; defaults to one second's worth
    search_delay_s: float = 0.0  # eventual consistency of customer search
    faults: tuple[FaultRule, ...] = ()
    slow_seconds: float = 30.0
    seed: int | None = None
    webhook_url: str | None = None
    webhook_secret: str | None = None
    webhook_max_attempts: int = 5
    webhook_retry_delay_s: float = 0.5  # doubles after each failed attempt
    request_log_size: int = 100_000

    def limit_for(self, endpoint_class: str) -> float | None:
        return {
            "default": self.rate_limit,
            "search": self.search_rate_limit,
            "meter_events": self.meter_event_rate_limit,
            "meter_event_stream": self.meter_event_stream_rate_limit,
        }[endpoint_class]

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["faults"] = [{**asdict(f), "kind": f.kind.value} for f in self.faults]
        if data["webhook_secret"]:
            data["webhook_secret"] = "whsec_…"  # noqa: S105 - a mask, not a secret
        return data

    def updated(self, changes: dict[str, Any]) -> EmulatorConfig:
        """A copy with `changes` applied; unknown keys and bad values raise ValueError."""
        known = {f.name for f in fields(self)}
        unknown = sorted(set(changes) - known)
        if unknown:
            raise ValueError(f"unknown emulator setting {unknown[0]!r}; known: {sorted(known)}")
        values = dict(changes)
        if "faults" in values:
            values["faults"] = tuple(
                f if isinstance(f, FaultRule) else FaultRule.from_dict(f) for f in values["faults"]
            )
        for name in ("latency_ms", "jitter_ms", "search_delay_s", "slow_seconds"):
            if name in values and float(values[name]) < 0:
                raise ValueError(f"{name} must not be negative")
        return replace(self, **values)


@dataclass
class Counters:
    by_endpoint: dict[str, dict[str, int]] = field(default_factory=dict)

    def count(self, endpoint: str, outcome: str) -> None:
        per = self.by_endpoint.setdefault(endpoint, {})
        per[outcome] = per.get(outcome, 0) + 1
