"""The hot read path: what a value or an access needs, read in a handful of statements built
once, in the caller's read transaction. A customer's access reads its entitlements, their
features, grants and resets in five statements, however many entitlements it has (the
`_writes` lookups, one record at a time through the ORM, cost a statement and a session each).
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import Table, bindparam, or_, select
from sqlalchemy.orm import Session

from metersync.entitlements._model import (
    Entitlement,
    EntitlementGrant,
    Feature,
    UsageReset,
)
from metersync.entitlements._records import entitlement_of, feature_of, grant_of, reset_of
from metersync.errors import NotFound
from metersync.store import (
    CustomerRow,
    EntitlementResetRow,
    EntitlementRow,
    FeatureRow,
    GrantRow,
)

_CUSTOMERS: Table = CustomerRow.__table__  # type: ignore[attr-defined]
_ENTITLEMENTS: Table = EntitlementRow.__table__  # type: ignore[attr-defined]
_FEATURES: Table = FeatureRow.__table__  # type: ignore[attr-defined]
_GRANTS: Table = GrantRow.__table__  # type: ignore[attr-defined]
_RESETS: Table = EntitlementResetRow.__table__  # type: ignore[attr-defined]


def _columns(table: Table) -> list[Any]:
    # Rows read as the records' functions read ORM rows: the JSON column `metadata` is `meta`.
    return [c.label("meta") if c.name == "metadata" else c for c in table.c]


_c = _CUSTOMERS.c
_CUSTOMER = select(_c.id, _c.key, _c.deleted_at).where(
    or_(_c.key == bindparam("customer"), _c.id == bindparam("customer"))
)
_OF_CUSTOMER = (
    select(*_columns(_ENTITLEMENTS))
    .where(_ENTITLEMENTS.c.customer_key == bindparam("key"))
    .order_by(_ENTITLEMENTS.c.created_at, _ENTITLEMENTS.c.id)
)
_FEATURES_IN = select(*_columns(_FEATURES)).where(
    _FEATURES.c.id.in_(bindparam("ids", expanding=True))
)
_GRANTS_IN = select(*_columns(_GRANTS)).where(
    _GRANTS.c.entitlement_id.in_(bindparam("ids", expanding=True))
)
_RESETS_IN = (
    select(*_columns(_RESETS))
    .where(_RESETS.c.entitlement_id.in_(bindparam("ids", expanding=True)))
    .order_by(_RESETS.c.reset_at)
)


@dataclass(frozen=True)
class Held:
    """An entitlement with everything a value of it reads besides usage."""

    entitlement: Entitlement
    feature: Feature
    grants: Sequence[EntitlementGrant]
    resets: Sequence[UsageReset]


@dataclass(frozen=True)
class Owner:
    id: str
    key: str
    deleted_at: datetime | None


def owner(session: Session, customer: str) -> Owner:
    """The customer by key (first) or id; NotFound when none."""
    rows = session.execute(_CUSTOMER, {"customer": customer}).all()
    if not rows:
        raise NotFound(f"customer {customer!r} does not exist")
    row = next((r for r in rows if r.key == customer), rows[0])
    return Owner(row.id, row.key, row.deleted_at)


def entitlements_of(session: Session, who: Owner) -> list[Entitlement]:
    """Every entitlement the customer has had, deleted ones included, oldest first."""
    rows = session.execute(_OF_CUSTOMER, {"key": who.key}).all()
    return [entitlement_of(row, who.id) for row in rows]  # type: ignore[arg-type]


def pick(
    entitlements: Sequence[Entitlement], id_or_feature: str, at: datetime | None, who: Owner
) -> Entitlement:
    """By id; or by feature key, the one live at `at` (None: now, the live one)."""
    for e in entitlements:
        if e.id == id_or_feature:
            return e
    by_feature = [e for e in entitlements if e.feature_key == id_or_feature]
    if at is None:
        found = [e for e in by_feature if e.deleted_at is None]
    else:
        found = [e for e in by_feature if e.created_at <= at and not _ended(e, at)]
    if found:
        return found[-1]
    raise NotFound(f"entitlement {id_or_feature!r} of customer {who.key!r} does not exist")


def _ended(entitlement: Entitlement, at: datetime) -> bool:
    return entitlement.deleted_at is not None and entitlement.deleted_at <= at


def holdings(session: Session, entitlements: Sequence[Entitlement]) -> dict[str, Held]:
    """Entitlement id → what its value reads: three statements for any number."""
    if not entitlements:
        return {}
    ids = [e.id for e in entitlements]
    features = {
        row.id: feature_of(row)  # type: ignore[arg-type]
        for row in session.execute(
            _FEATURES_IN, {"ids": sorted({e.feature_id for e in entitlements})}
        )
    }
    grants: dict[str, list[EntitlementGrant]] = defaultdict(list)
    for row in session.execute(_GRANTS_IN, {"ids": ids}):
        grants[row.entitlement_id].append(grant_of(row))  # type: ignore[arg-type]
    resets: dict[str, list[UsageReset]] = defaultdict(list)
    for row in session.execute(_RESETS_IN, {"ids": ids}):
        resets[row.entitlement_id].append(reset_of(row))  # type: ignore[arg-type]
    return {
        e.id: Held(e, features[e.feature_id], grants.get(e.id, []), resets.get(e.id, []))
        for e in entitlements
    }
