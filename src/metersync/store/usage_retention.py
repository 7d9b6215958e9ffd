"""The retention floor's one owner: the `usage_retention` row, below which raw usage (usage_event,
usage_value) was pruned and is closed to new events.

Ingest and a prune are ordered through this row. Each ingest batch reads the floor inside its
own write transaction, holding the row shared until it commits (`floor_for_ingest`); a prune
raises it holding the row exclusively (`raise_floor`). On PostgreSQL the raise waits for the
batches in flight, and a batch that starts after it sees the new floor; on SQLite both are
write transactions, which the database runs one at a time. So once the floor is raised, no
event below it is stored, and the prune's deletes that follow find every row it has to delete.
"""

from __future__ import annotations

from collections.abc import Callable

from sqlalchemy import Connection, Table, insert, select, update
from sqlalchemy.orm import Session

from metersync.clock import utcnow
from metersync.store.engine import Store
from metersync.store.models import UsageRetentionRow

RETENTION: Table = UsageRetentionRow.__table__  # type: ignore[attr-defined]
_r = RETENTION.c
_FLOOR = "usage"  # the one row, written by migration 0012


def retention_floor(store: Store) -> int:
    """The first second of raw usage kept (a month's start, UTC), or 0 while nothing was
    pruned."""
    with store.read_session() as session:
        value = session.execute(select(_r.floor_s).where(_r.name == _FLOOR)).scalar()
    return int(value or 0)


def floor_for_ingest(conn: Connection) -> int:
    """The floor, read in an ingest batch's transaction and held shared until it ends (FOR
    SHARE on PostgreSQL; SQLite's write transaction already excludes a prune's)."""
    query = select(_r.floor_s).where(_r.name == _FLOOR).with_for_update(read=True)
    return int(conn.execute(query).scalar() or 0)


def raise_floor(store: Store, to_s: int, still_clear: Callable[[Session, int], bool]) -> int:
    """Move the floor up to `to_s` in one transaction that holds the row exclusively, if
    `still_clear(session, current floor)` agrees once the row is held (ingest batches that
    were in flight have committed by then, and none can start). Returns the floor after: `to_s`,
    or the floor before when `still_clear` refused (nothing is written then). A floor never
    moves down: pruned usage does not come back."""
    with store.session() as session:
        current = session.execute(
            select(_r.floor_s).where(_r.name == _FLOOR).with_for_update()
        ).scalar()
        if current is None:  # the row is the migration's; a database that lost it gets it back
            session.execute(insert(RETENTION).values(name=_FLOOR, floor_s=0, changed_at=utcnow()))
            current = 0
        current = int(current)
        if to_s <= current or not still_clear(session, current):
            return current
        session.execute(
            update(RETENTION).where(_r.name == _FLOOR).values(floor_s=to_s, changed_at=utcnow())
        )
    return to_s
