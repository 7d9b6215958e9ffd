"""The entitlement usage tables' one owner: a feature's bound usage per customer and hour, the
cursor it is folded up to, and the snapshots of metered entitlements' balances.

What the figures are, and how the hours are refreshed, is `metersync.entitlements._usage`; this
module is the SQL of the three tables. All of them are caches of what the usage rows determine.

Ordering. A refresh of a feature, and a snapshot's save, lock the feature's cursor row to the
end of their transaction (`lock_cursor`: SELECT … FOR UPDATE on PostgreSQL; SQLite's writers
take the database's write lock at BEGIN). So a snapshot is saved only if no refresh moved the
cursor since its balances were computed, and every refresh after the save sees the snapshot
and drops it if it changes an hour the snapshot counted.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from decimal import Decimal
from typing import Any

from sqlalchemy import Table, bindparam, delete, select
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert
from sqlalchemy.orm import Session
from sqlalchemy.sql.elements import ColumnElement
from sqlalchemy.sql.selectable import ScalarSelect, Select

from metersync.clock import utcnow
from metersync.store.engine import Store
from metersync.store.models import (
    CustomerRow,
    EntitlementRow,
    EntitlementSnapshotRow,
    EntitlementUsageCursorRow,
    EntitlementUsageHourRow,
)

HOURS: Table = EntitlementUsageHourRow.__table__  # type: ignore[attr-defined]
CURSORS: Table = EntitlementUsageCursorRow.__table__  # type: ignore[attr-defined]
SNAPSHOTS: Table = EntitlementSnapshotRow.__table__  # type: ignore[attr-defined]
_h = HOURS.c
_k = CURSORS.c
_s = SNAPSHOTS.c
ENTITLEMENTS: Table = EntitlementRow.__table__  # type: ignore[attr-defined]
CUSTOMERS: Table = CustomerRow.__table__  # type: ignore[attr-defined]
_e = ENTITLEMENTS.c
_cu = CUSTOMERS.c

NOTHING_FOLDED = -1  # a cursor below every change number: no hour computed yet
_WRITE_BATCH = 2_000  # cells per statement

Cell = tuple[str, int]  # (customer key, hour start in seconds)


def _insert(session: Session, table: Table) -> Any:
    dialect = session.get_bind().dialect.name
    return (pg_insert if dialect == "postgresql" else sqlite_insert)(table)


# -- the cursor ----------------------------------------------------------------------------------


def cursor_of(feature_id: ColumnElement[str]) -> ScalarSelect[Any]:
    """How far the feature's hours are folded, as a scalar subquery (NULL, or NOTHING_FOLDED:
    not at all), for a statement that reads it with other things in one go."""
    return select(_k.seq).where(_k.feature_id == feature_id).scalar_subquery()


def lock_cursor(session: Session, feature_id: str) -> int:
    """The feature's cursor, locked until the caller's transaction ends (a write session): a
    refresh and a snapshot's save of the same feature run one after the other."""
    session.execute(
        _insert(session, CURSORS)
        .values(feature_id=feature_id, seq=NOTHING_FOLDED)
        .on_conflict_do_nothing()
    )
    seq = session.execute(
        select(_k.seq).where(_k.feature_id == feature_id).with_for_update()
    ).scalar_one()
    return int(seq)


def set_cursor(session: Session, feature_id: str, seq: int) -> None:
    """Move the cursor (its row exists: `lock_cursor` made it)."""
    session.execute(CURSORS.update().where(_k.feature_id == feature_id).values(seq=seq))


# -- the hours -----------------------------------------------------------------------------------


def write_hours(session: Session, feature_id: str, values: Mapping[Cell, Decimal | None]) -> None:
    """Store recomputed cells: a value replaces the cell's, None (no usage left) removes it."""
    upserts = [
        {"feature_id": feature_id, "customer_key": key, "hour_start": hour, "value": str(value)}
        for (key, hour), value in values.items()
        if value is not None
    ]
    gone = [
        {"gone_customer": key, "gone_hour": hour}
        for (key, hour), value in values.items()
        if value is None
    ]
    if upserts:
        insert = _insert(session, HOURS)
        statement = insert.on_conflict_do_update(
            index_elements=[_h.feature_id, _h.customer_key, _h.hour_start],
            set_={"value": insert.excluded.value},
        )
        for start in range(0, len(upserts), _WRITE_BATCH):
            session.execute(statement, upserts[start : start + _WRITE_BATCH])
    if gone:
        session.execute(
            delete(HOURS).where(
                _h.feature_id == feature_id,
                _h.customer_key == bindparam("gone_customer"),
                _h.hour_start == bindparam("gone_hour"),
            ),
            gone,
        )


def hour_cells(
    feature_id: ColumnElement[str],
    customer_key: ColumnElement[str],
    start: ColumnElement[int],
    end: ColumnElement[int],
    *leading: ColumnElement[Any],
) -> Select[Any]:
    """The customer's hours in [start, end) (seconds) that hold usage, as (*leading,
    hour_start, value), unordered: one range of the primary key. Of expressions (bind
    parameters, say), so that a reader builds it once and reads it with other things in one
    statement."""
    return select(*leading, _h.hour_start, _h.value).where(
        _h.feature_id == feature_id,
        _h.customer_key == customer_key,
        _h.hour_start >= start,
        _h.hour_start < end,
    )


# -- snapshots -----------------------------------------------------------------------------------


@dataclass(frozen=True)
class EntitlementSnapshot:
    """A metered entitlement's balances at `at`, and what they were computed from: the
    feature's usage cursor (`usage_mark`), the largest usage_value id then, and a hash of the
    customer's subjects then (`subjects_hash`). Engine-agnostic: grant id → balance."""

    entitlement_id: str
    at: datetime
    balances: Mapping[str, Decimal]
    overage: Decimal
    usage_mark: int
    max_usage_id: int
    subjects_hash: str


def subjects_hash(subjects: Iterable[str]) -> str:
    """A hash of a set of subject keys (order does not matter)."""
    digest = hashlib.sha256()
    for key in sorted(set(subjects)):
        digest.update(key.encode("utf-8"))
        digest.update(b"\x00")
    return digest.hexdigest()


def save_snapshot(store: Store, snapshot: EntitlementSnapshot) -> bool:
    """Store a snapshot (replacing one at the same time), unless the entitlement's feature's
    usage cursor is no longer `snapshot.usage_mark`: a refresh since may have changed usage the
    balances counted, and the one that did could not drop a snapshot not yet saved. Checked
    under the cursor's lock, in the transaction that writes. False: skipped."""
    with store.session() as session:
        feature_id = session.execute(
            select(_e.feature_id).where(_e.id == snapshot.entitlement_id)
        ).scalar_one()
        if lock_cursor(session, feature_id) != snapshot.usage_mark:
            return False
        values = {
            "entitlement_id": snapshot.entitlement_id,
            "at": snapshot.at,
            "balances": {grant: str(amount) for grant, amount in snapshot.balances.items()},
            "overage": str(snapshot.overage),
            "usage_mark": snapshot.usage_mark,
            "max_usage_id": snapshot.max_usage_id,
            "subjects_hash": snapshot.subjects_hash,
            "created_at": utcnow(),
        }
        insert = _insert(session, SNAPSHOTS).values(**values)
        replaced = {
            name: insert.excluded[name] for name in values if name not in ("entitlement_id", "at")
        }
        session.execute(
            insert.on_conflict_do_update(index_elements=[_s.entitlement_id, _s.at], set_=replaced)
        )
    return True


_LATEST = (
    select(
        _s.entitlement_id,
        _s.at,
        _s.balances,
        _s.overage,
        _s.usage_mark,
        _s.max_usage_id,
        _s.subjects_hash,
    )
    .where(_s.entitlement_id == bindparam("entitlement_id"), _s.at <= bindparam("at_or_before"))
    .order_by(_s.at.desc())
    .limit(1)
)


def latest_snapshot(
    store: Store,
    entitlement_id: str,
    at_or_before: datetime,
    *,
    session: Session | None = None,
) -> EntitlementSnapshot | None:
    """The entitlement's newest snapshot at or before `at_or_before`, or None. Whether it is
    still current for unbound usage and the customer's subjects is the reader's check
    (entitlements._usage.FeatureUsage). `session`: an open read session to read in (by
    default, a read session of its own)."""
    if session is None:
        with store.read_session() as own:
            return latest_snapshot(store, entitlement_id, at_or_before, session=own)
    row = (
        session.connection()
        .execute(_LATEST, {"entitlement_id": entitlement_id, "at_or_before": at_or_before})
        .first()
    )
    if row is None:
        return None
    return EntitlementSnapshot(
        entitlement_id=row.entitlement_id,
        at=row.at,
        balances={grant: Decimal(amount) for grant, amount in row.balances.items()},
        overage=Decimal(row.overage),
        usage_mark=int(row.usage_mark),
        max_usage_id=int(row.max_usage_id),
        subjects_hash=row.subjects_hash,
    )


def drop_snapshots(session: Session, entitlement_id: str) -> int:
    """Every snapshot of the entitlement, in the caller's transaction: a grant or a reset
    written changes balances from its time on, and snapshots are cheap to make again."""
    result = session.execute(delete(SNAPSHOTS).where(_s.entitlement_id == entitlement_id))
    return int(result.rowcount or 0)  # type: ignore[attr-defined]


def drop_snapshots_after(
    session: Session, feature_id: str, changed: Sequence[tuple[str, datetime]]
) -> None:
    """For each (customer key, t): drop the snapshots taken after t of the entitlements of the
    feature held by that customer, in the caller's transaction (a refresh changed an hour
    starting at t). One statement, run once per customer."""
    if not changed:
        return
    entitlements = select(_e.id).where(
        _e.feature_id == feature_id, _e.customer_key == bindparam("changed_customer")
    )
    statement = delete(SNAPSHOTS).where(
        _s.entitlement_id.in_(entitlements), _s.at > bindparam("changed_after", type_=_s.at.type)
    )
    session.execute(
        statement,
        [{"changed_customer": key, "changed_after": after} for key, after in changed],
    )
