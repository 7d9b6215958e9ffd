"""The HubSpot emulator's knobs: latency, rate limits, search lag and faults.

Every knob is a constructor argument of HubSpotEmulator and can be changed while it runs
(`hs.configure(...)`). Defaults are those of a Free/Starter private app: 100 requests per rolling
10 seconds and 250,000 a day.
"""

from __future__ import annotations

import fnmatch
from dataclasses import dataclass, fields, replace
from enum import StrEnum
from typing import Any


class HubSpotFaultKind(StrEnum):
    TEN_SECONDLY = "429_ten_secondly"  # a 429 as if the rolling 10-second limit was hit
    DAILY = "429_daily"  # a 429 as if the daily limit was hit
    ERROR_500 = "500"  # 500; nothing was done
    RESET = "reset"  # the connection is reset before the request is processed
    COMMIT_THEN_DROP = "commit_then_drop"  # the request is processed, then the connection closes


# What `fault_rate` picks among: the faults a client meets in the wild. A daily 429 is left out
# on purpose: a client should stop for the day, so chaos runs would just end.
CHAOS_KINDS: tuple[HubSpotFaultKind, ...] = (
    HubSpotFaultKind.TEN_SECONDLY,
    HubSpotFaultKind.ERROR_500,
    HubSpotFaultKind.RESET,
    HubSpotFaultKind.COMMIT_THEN_DROP,
)


def endpoint_matches(pattern: str | None, endpoint: str) -> bool:
    """None matches every endpoint; otherwise an endpoint name or a glob (`companies.*`)."""
    return pattern is None or fnmatch.fnmatchcase(endpoint, pattern)


@dataclass(frozen=True)
class HubSpotFault:
    """Inject `kind` into a share `probability` of the requests to endpoints matching `endpoint`
    (a glob over endpoint names such as `companies.batch_upsert` or `companies.*`)."""

    kind: HubSpotFaultKind
    probability: float
    endpoint: str = "*"

    @classmethod
    def from_value(cls, value: HubSpotFault | dict[str, Any]) -> HubSpotFault:
        if isinstance(value, HubSpotFault):
            return value
        probability = float(value["probability"])
        if not 0.0 <= probability <= 1.0:
            raise ValueError(f"fault probability must be within 0..1, got {probability}")
        return cls(HubSpotFaultKind(value["kind"]), probability, str(value.get("endpoint", "*")))


@dataclass(frozen=True)
class HubSpotConfig:
    latency_ms: float = 0.0
    jitter_ms: float = 0.0
    rate_limit_per_10s: int | None = 100  # None: no rolling-window limit (and no such headers)
    daily_limit: int | None = 250_000  # None: no daily limit
    search_lag_s: float = 0.0  # how long a write takes to reach the search index
    faults: tuple[HubSpotFault, ...] = ()  # per-endpoint fault rules, checked in order
    fault_rate: float = 0.0  # share of all requests that get a random fault among fault_kinds
    fault_kinds: tuple[HubSpotFaultKind, ...] = CHAOS_KINDS
    seed: int | None = None  # replays the same random faults and jitter
    # Real HubSpot answers a batch with partial failures 207 only when every input carries an
    # objectWriteTraceId; otherwise the whole batch fails with 400 and nothing is written. Off
    # by default: the emulator always answers 207, which is what the sync is written against.
    multi_status_needs_trace_id: bool = False
    request_log_size: int = 100_000

    def updated(self, changes: dict[str, Any]) -> HubSpotConfig:
        """A copy with `changes` applied; unknown keys and bad values raise ValueError."""
        known = {f.name for f in fields(self)}
        unknown = sorted(set(changes) - known)
        if unknown:
            raise ValueError(
                f"unknown HubSpot emulator setting {unknown[0]!r}; known: {sorted(known)}"
            )
        values = dict(changes)
        if "faults" in values:
            values["faults"] = tuple(HubSpotFault.from_value(f) for f in values["faults"])
        if "fault_kinds" in values:
            values["fault_kinds"] = tuple(HubSpotFaultKind(k) for k in values["fault_kinds"])
        for name in ("latency_ms", "jitter_ms", "search_lag_s"):
            if name in values and float(values[name]) < 0:
                raise ValueError(f"{name} must not be negative")
        for name in ("rate_limit_per_10s", "daily_limit"):
            if values.get(name) is not None and int(values[name]) < 1:
                raise ValueError(f"{name} must be at least 1, or None for no limit")
        if "fault_rate" in values and not 0.0 <= float(values["fault_rate"]) <= 1.0:
            raise ValueError("fault_rate must be within 0..1")
        return replace(self, **values)
