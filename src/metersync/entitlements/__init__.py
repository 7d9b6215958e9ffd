"""Entitlements (seed 003): what a customer may still use of a feature, read from the same
usage aggregates as billing. Built a piece at a time; so far, the usage periods and the
burn-down of usage through grants within one period."""

from metersync.entitlements._burn import Burn, Grant, Segment, burn
from metersync.entitlements._periods import (
    Interval,
    Period,
    UsagePeriod,
    truncate_minute,
    value_minute,
)
from metersync.entitlements._writes import EntitlementBook

__all__ = [
    "Burn",
    "EntitlementBook",
    "Grant",
    "Interval",
    "Period",
    "Segment",
    "UsagePeriod",
    "burn",
    "truncate_minute",
    "value_minute",
]
