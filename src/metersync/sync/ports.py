"""What the sync engine needs from a target: render, list, apply one write, classify errors.

The engine (plan, apply, journal) sees only this protocol and the records of sync.model, so a
second target is a second implementation of it, not a change to the engine. The engine owns
these contracts; targets implement them and the engine imports no target.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from decimal import Decimal
from typing import Any, Protocol

from metersync.catalog.views import Customer
from metersync.mechanics.retry import ErrorKind, TargetError
from metersync.store import Store
from metersync.sync.model import Change, Desired, External
from metersync.sync.plan import TargetRules

__all__ = [
    "ARCHIVED_KEY",
    "MANAGED_KEY",
    "NO_CONTEXT",
    "ContextNeeds",
    "EntitlementFigures",
    "EntitlementSource",
    "ErrorKind",
    "PeriodUsage",
    "RenderContext",
    "Target",
    "TargetError",
]

# Every record a target manages carries its local key under MANAGED_KEY (Stripe metadata, a
# HubSpot property): it is how a record is found again after a crash, and how metersync tells
# its own records from others. An archived record carries the time under ARCHIVED_KEY.
MANAGED_KEY = "metersync_key"
ARCHIVED_KEY = "metersync_archived_at"


@dataclass(frozen=True)
class ContextNeeds:
    links: tuple[str, ...] = ()  # other targets whose external ids the rendering shows
    usage: bool = False  # period-to-date usage per meter
    entitlements: tuple[str, ...] = ()  # feature keys whose entitlement figures it shows

    @property
    def any(self) -> bool:
        return bool(self.links) or self.usage or bool(self.entitlements)


@dataclass(frozen=True)
class PeriodUsage:
    """A meter's value for a customer over the current calendar month (UTC), from the same
    aggregation as the usage push, and the time of the latest event it counts."""

    value: float
    latest: datetime


@dataclass(frozen=True)
class EntitlementFigures:
    """A customer's live entitlement to a feature as a target shows it: whether it has access
    and, for a metered entitlement, its balance, its usage in the current usage period and when
    that period ends (None for a boolean or static entitlement)."""

    has_access: bool
    balance: Decimal | None = None
    usage: Decimal | None = None
    period_end: datetime | None = None


class EntitlementSource(Protocol):
    """Where the figures of a target's entitlements come from when an upstream source keeps
    the entitlements (OpenMeter): what its pull stored. Without one, the context reads the
    local entitlement engine (sync.context)."""

    def figures(
        self, store: Store, features: Sequence[str], keys: Sequence[str] | None
    ) -> dict[str, dict[str, EntitlementFigures]]:
        """customer key → feature key → the figures of its live entitlement to one of
        `features`, for the customers `keys` (None: every customer)."""
        ...

    def changed_customers(self, store: Store, features: Sequence[str], after: datetime) -> set[str]:
        """Customers whose figures of `features` changed (or were gone) since `after`."""
        ...


@dataclass(frozen=True)
class RenderContext:
    external_ids: Mapping[str, Mapping[str, str]] = field(default_factory=dict)  # target → key
    usage: Mapping[str, Mapping[str, PeriodUsage]] = field(default_factory=dict)  # key → slug
    # key → feature key: the figures of the customer's live entitlement (none: no entitlement)
    entitlements: Mapping[str, Mapping[str, EntitlementFigures]] = field(default_factory=dict)

    def external_id(self, target: str, key: str) -> str | None:
        return self.external_ids.get(target, {}).get(key)

    def usage_of(self, key: str) -> Mapping[str, PeriodUsage]:
        return self.usage.get(key, {})

    def entitlements_of(self, key: str) -> Mapping[str, EntitlementFigures]:
        return self.entitlements.get(key, {})


NO_CONTEXT = RenderContext()


class Target(Protocol):
    name: str
    rules: TargetRules
    # Names the rendering below. Change it whenever render() would give another Desired for
    # the same customer: links fingerprinted under an old version are then re-planned.
    render_version: str
    # What render() needs besides the customer: other targets' ids, period usage, entitlement
    # figures.
    needs: ContextNeeds

    def render(self, customer: Customer, context: RenderContext) -> Desired:
        """The record this target should hold for a local customer (pure)."""
        ...

    def classify(self, error: BaseException) -> TargetError: ...

    async def list_customers(self) -> list[External]: ...

    async def create(self, state: Mapping[str, Any], idempotency_key: str) -> str:
        """Create from a Desired.state(); returns the external id."""
        ...

    async def update(
        self,
        external_id: str,
        changes: tuple[Change, ...],
        state: Mapping[str, Any],
        idempotency_key: str,
    ) -> None: ...

    async def delete(self, external_id: str, idempotency_key: str) -> None: ...

    async def archive(self, external_id: str, idempotency_key: str) -> Mapping[str, str]:
        """Mark the record archived (kept); returns the metadata it wrote."""
        ...

    async def release(self, external_id: str, idempotency_key: str) -> None:
        """Remove the managed marker: the record stays, metersync no longer claims it."""
        ...

    async def find(self, key: str) -> External | None:
        """The managed record for a local key, if the target can find it (may lag writes)."""
        ...

    async def retrieve(self, external_id: str) -> External | None:
        """The record, or None if it does not exist or was deleted."""
        ...

    async def close(self) -> None: ...
