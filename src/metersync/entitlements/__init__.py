"""Entitlements (seed 003): what a customer may still use of a feature, read from the same
usage aggregates as billing. Built a piece at a time; so far, the usage periods and the
burn-down of usage through grants within one period, and the engine that strings periods
together (resets, rollover, recurrence) into a value, a history and a snapshot; and their
OpenMeter JSON shapes, which the API and the CLI both render."""

from metersync.entitlements._burn import Burn, Grant, Segment, burn
from metersync.entitlements._engine import (
    GrantTerms,
    HistorySegment,
    MeteredTerms,
    MeteredValue,
    Reset,
    Snapshot,
    current_period,
    history,
    state_at,
    value_at,
)
from metersync.entitlements._model import (
    BurnDownSegment,
    Entitlement,
    EntitlementGrant,
    EntitlementValue,
    Feature,
    HistoryWindow,
    Kind,
    UsageReset,
    WindowedHistory,
)
from metersync.entitlements._periods import (
    Interval,
    Period,
    UsagePeriod,
    truncate_minute,
    value_minute,
)
from metersync.entitlements._shapes import (
    access_json,
    current_usage_period,
    entitlement_json,
    exact_json,
    feature_json,
    grant_json,
    history_json,
    last_reset,
    reset_json,
    usage_period_in_force,
    value_json,
)
from metersync.entitlements._values import EntitlementValues
from metersync.entitlements._writes import EntitlementBook

__all__ = [
    "Burn",
    "BurnDownSegment",
    "Entitlement",
    "EntitlementBook",
    "EntitlementGrant",
    "EntitlementValue",
    "EntitlementValues",
    "Feature",
    "Grant",
    "GrantTerms",
    "HistorySegment",
    "HistoryWindow",
    "Interval",
    "Kind",
    "MeteredTerms",
    "MeteredValue",
    "Period",
    "Reset",
    "Segment",
    "Snapshot",
    "UsagePeriod",
    "UsageReset",
    "WindowedHistory",
    "access_json",
    "burn",
    "current_period",
    "current_usage_period",
    "entitlement_json",
    "exact_json",
    "feature_json",
    "grant_json",
    "history",
    "history_json",
    "last_reset",
    "reset_json",
    "state_at",
    "truncate_minute",
    "usage_period_in_force",
    "value_at",
    "value_json",
    "value_minute",
]
