"""The sections for the work itself: [sync] (pace, retries, delete policies and their safety
limits), [catalog] (whether a new subject gets a customer) and [usage] (aggregation windows and
how meter events are sent)."""

from __future__ import annotations

from typing import Literal

from pydantic import Field, field_validator

from metersync.settings._section import Section
from metersync.settings._values import duration_seconds


class SyncSettings(Section):
    concurrency: int = Field(default=16, ge=1, le=256)
    # Requests/s to the target; unset: Stripe's own limit for the key (25 test, 100 live).
    rate_limit: float | None = Field(default=None, gt=0)
    search_rate_limit: float = Field(default=20.0, gt=0)
    request_timeout_s: float = Field(default=30.0, gt=0)
    retry_attempts: int = Field(default=5, ge=1, le=20)
    delete_policy: Literal["delete", "archive", "keep"] = "delete"
    missing_policy: Literal["recreate", "report"] = "recreate"
    orphan_policy: Literal["report", "delete"] = "report"
    max_delete_fraction: float = Field(default=0.1, ge=0.0, le=1.0)
    max_deletes: int | None = Field(default=None, ge=0)
    mass_delete_floor: int = Field(default=3, ge=1)


class CatalogSettings(Section):
    auto_customer: bool = True


class UsageSettings(Section):
    # Tumbling aggregation window, UTC: "1h" (default), "15m", "1d"... It must divide a day, so
    # windows line up with Stripe's hourly and daily event summaries.
    window: str = "1h"
    # Usage older than Stripe's 35-day window: "report" (held, shown by status) or "push_now"
    # (sent with the current time, so it lands in the current billing period).
    late_usage: Literal["report", "push_now"] = "report"
    # Stripe's meter event API: "v1" (one request per event) or "v2" (the high-throughput stream,
    # up to 100 events per request).
    stripe_api: Literal["v1", "v2"] = "v1"
    # Meter event requests/s, separate from customer calls; unset: 100 for test keys, 1,000 live.
    meter_event_rate: float | None = Field(default=None, gt=0)
    concurrency: int = Field(default=16, ge=1, le=256)

    @field_validator("window")
    @classmethod
    def _window(cls, value: str) -> str:
        seconds = duration_seconds(value)
        if seconds <= 0 or 86400 % seconds:
            raise ValueError(f"{value!r} must divide a day (for example 1m, 15m, 1h, 1d)")
        return value

    @property
    def window_s(self) -> int:
        return duration_seconds(self.window)
