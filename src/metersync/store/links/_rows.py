"""What every link query shares: the states usage can be routed through, the table's core
columns, and reading many keys in bounded IN lists."""

from __future__ import annotations

from typing import Any

from sqlmodel import Session

from metersync.states import LinkState
from metersync.store.models import LinkRow

_BATCH = 500  # keys per IN (…) query: far below any database's bound-parameter limit
# Customer links whose external record usage can be routed to.
ROUTABLE = (LinkState.SYNCED, LinkState.UPDATING, LinkState.ARCHIVED)


def link_columns() -> Any:
    # Core columns, for queries that read a few columns of many rows without ORM objects.
    return LinkRow.__table__.c  # type: ignore[attr-defined]


def in_batches(session: Session, query: Any, column: Any, keys: list[str] | None) -> list[Any]:
    if keys is None:
        return list(session.exec(query))
    rows: list[Any] = []
    for start in range(0, len(keys), _BATCH):
        rows += session.exec(query.where(column.in_(keys[start : start + _BATCH])))
    return rows
