"""What entitlements are, as the engine and the doors see them: features, entitlements,
grants and resets, read from their rows. Pure: no database here (`_records` reads the rows)."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime
from decimal import Decimal
from enum import StrEnum

from dateutil.relativedelta import relativedelta

from metersync.entitlements._periods import Period, UsagePeriod


class Kind(StrEnum):
    METERED = "metered"
    BOOLEAN = "boolean"
    STATIC = "static"


# OpenMeter's ExpirationPeriod units; months and years clamp at a month's end (relativedelta).
EXPIRATION_UNITS = {
    "HOUR": lambda n: relativedelta(hours=n),
    "DAY": lambda n: relativedelta(days=n),
    "WEEK": lambda n: relativedelta(weeks=n),
    "MONTH": lambda n: relativedelta(months=n),
    "YEAR": lambda n: relativedelta(years=n),
}


@dataclass(frozen=True)
class Expiration:
    duration: str  # one of EXPIRATION_UNITS
    count: int

    def after(self, moment: datetime) -> datetime:
        return moment + EXPIRATION_UNITS[self.duration](self.count)


@dataclass(frozen=True)
class Feature:
    id: str
    key: str
    name: str
    meter_slug: str | None
    group_filters: Mapping[str, str]
    metadata: Mapping[str, str]
    created_at: datetime
    updated_at: datetime
    archived_at: datetime | None = None


@dataclass(frozen=True)
class Issue:
    """The grant issued with a metered entitlement and restored at every reset."""

    amount: Decimal
    priority: int = 1


@dataclass(frozen=True)
class Entitlement:
    id: str
    kind: Kind
    customer_id: str
    customer_key: str
    feature_id: str
    feature_key: str
    created_at: datetime
    updated_at: datetime
    metadata: Mapping[str, str] = field(default_factory=dict)
    usage_period: UsagePeriod | None = None  # metered always; boolean and static optionally
    measure_usage_from: datetime | None = None  # metered
    is_soft_limit: bool = False
    preserve_overage_at_reset: bool = False
    issue: Issue | None = None
    config: str | None = None  # static: JSON text
    deleted_at: datetime | None = None

    def active_at(self, moment: datetime) -> bool:
        return self.created_at <= moment and (self.deleted_at is None or moment < self.deleted_at)


@dataclass(frozen=True)
class EntitlementGrant:
    id: str
    entitlement_id: str
    amount: Decimal
    priority: int
    effective_at: datetime
    created_at: datetime
    updated_at: datetime
    min_rollover: Decimal = Decimal(0)
    max_rollover: Decimal | None = None  # None: the amount
    expiration: Expiration | None = None
    expires_at: datetime | None = None
    recurrence: UsagePeriod | None = None
    metadata: Mapping[str, str] = field(default_factory=dict)
    voided_at: datetime | None = None

    def next_recurrence(self, moment: datetime) -> datetime | None:
        if self.recurrence is None:
            return None
        return self.recurrence.period_at(moment).end


@dataclass(frozen=True)
class UsageReset:
    id: str
    entitlement_id: str
    at: datetime
    preserve_overage: bool
    retain_anchor: bool
    created_at: datetime


# -- what a value read gives ---------------------------------------------------------------


@dataclass(frozen=True)
class EntitlementValue:
    """OpenMeter's EntitlementValue: metered entitlements fill the figures, static ones the
    config; boolean ones only has_access."""

    has_access: bool
    balance: Decimal | None = None
    usage: Decimal | None = None
    overage: Decimal | None = None
    total_available_grant_amount: Decimal | None = None
    config: str | None = None
    # Metered: the usage period the figures are of (the CRM shows its end). Not in
    # OpenMeter's shape; the value's own reading of it, so no second read is needed.
    period: Period | None = None


@dataclass(frozen=True)
class HistoryWindow:
    """OpenMeter's BalanceHistoryWindow: [start, end), the usage in it and the balance at its
    start."""

    start: datetime
    end: datetime
    usage: Decimal
    balance_at_start: Decimal


@dataclass(frozen=True)
class BurnDownSegment:
    """OpenMeter's GrantBurnDownHistorySegment."""

    start: datetime
    end: datetime
    usage: Decimal
    overage: Decimal
    balance_at_start: Decimal
    grant_balances_at_start: Mapping[str, Decimal]
    balance_at_end: Decimal
    grant_balances_at_end: Mapping[str, Decimal]
    grant_usages: Mapping[str, Decimal]


@dataclass(frozen=True)
class WindowedHistory:
    windows: tuple[HistoryWindow, ...]
    segments: tuple[BurnDownSegment, ...]
