"""Entitlements (seed 003): what a customer may still use of a feature, read from the same
usage aggregates as billing. Built a piece at a time; so far, the usage periods."""

from metersync.entitlements._periods import (
    Interval,
    Period,
    UsagePeriod,
    truncate_minute,
    value_minute,
)

__all__ = ["Interval", "Period", "UsagePeriod", "truncate_minute", "value_minute"]
