"""Raw usage by calendar month, for `metersync usage prune`: how many rows each month holds, which
of them wait for a customer, and the deletes below the retention floor.

usage_event and usage_value have no index on the event time (ingest pays for every index, and
its targets are 50,000 events a second), so these read or walk the whole table once: the
month counts in one aggregate query each, the deletes in ranges of the primary key. Each range
is one short transaction of at most `batch_size` rows: a prune of millions of rows never holds
one huge transaction, and ingest (SQLite has one writer at a time) waits at most one range. A
prune stopped or killed between ranges leaves rows below the floor that nothing reads (the
floor hides them), and the next prune walks the table again and deletes them.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from sqlalchemy import Table, delete, func, literal, select
from sqlalchemy.orm import Session

from metersync.store.engine import Store
from metersync.store.models import EventRow, UsageRow
from metersync.times import month_start

US = 1_000_000
_DAY_US = 86_400 * US
EVENTS: Table = EventRow.__table__  # type: ignore[attr-defined]
VALUES: Table = UsageRow.__table__  # type: ignore[attr-defined]


@dataclass(frozen=True)
class MonthRows:
    """What one calendar month (UTC) holds: events, and their meter values."""

    start: int  # seconds
    events: int
    values: int


@dataclass(frozen=True)
class Deleted:
    events: int
    values: int
    finished: bool  # False: stopped between ranges; rows below the floor may remain


def rows_by_month(store: Store, before_s: int) -> list[MonthRows]:
    """Rows per calendar month for events timed before `before_s`, oldest month first."""
    counts: dict[int, list[int]] = {}
    with store.read_session() as session:
        for position, table in enumerate((EVENTS, VALUES)):
            for month, rows in _per_month(session, table, before_s):
                counts.setdefault(month, [0, 0])[position] += rows
    return [MonthRows(month, events, values) for month, (events, values) in sorted(counts.items())]


def unbound_by_month(store: Store, before_s: int) -> dict[int, dict[str, int]]:
    """Meter values not bound to a customer yet, timed before `before_s`: month → subject →
    rows. Few, and found through the index on unbound values."""
    day = (VALUES.c.time_us // literal(_DAY_US)).label("day")
    query = (
        select(VALUES.c.subject, day, func.count())
        .where(VALUES.c.customer_key.is_(None), VALUES.c.time_us < before_s * US)
        .group_by(VALUES.c.subject, day)
    )
    out: dict[int, dict[str, int]] = {}
    with store.read_session() as session:
        for subject, day_number, rows in session.execute(query):
            subjects = out.setdefault(month_start(int(day_number) * 86_400), {})
            subjects[subject] = subjects.get(subject, 0) + int(rows)
    return out


def unbound_between(session: Session, start_s: int, end_s: int) -> int:
    """Meter values timed in [start_s, end_s) not bound to a customer yet (in the caller's
    transaction: the floor's, which waits for ingest batches in flight)."""
    query = select(func.count()).where(
        VALUES.c.customer_key.is_(None),
        VALUES.c.time_us >= start_s * US,
        VALUES.c.time_us < end_s * US,
    )
    return int(session.execute(query).scalar_one())


def delete_below(
    store: Store,
    floor_s: int,
    *,
    batch_size: int,
    should_stop: Callable[[], bool] | None = None,
) -> Deleted:
    """Delete the meter values, then the events, timed before `floor_s`, one range of
    `batch_size` primary keys per transaction; `should_stop` is asked between ranges."""
    if batch_size < 1:
        raise ValueError(f"batch_size must be at least 1, got {batch_size}")
    deleted = [0, 0]
    for position, table in ((1, VALUES), (0, EVENTS)):
        with store.read_session() as session:
            low, high = session.execute(select(func.min(table.c.id), func.max(table.c.id))).one()
        if low is None:
            continue
        # Rows stored after `high` was read are new events, which the floor keeps above it.
        for start in range(int(low), int(high) + 1, batch_size):
            if should_stop is not None and should_stop():
                return Deleted(deleted[0], deleted[1], finished=False)
            with store.session() as session:
                result = session.execute(
                    delete(table).where(
                        table.c.id >= start,
                        table.c.id < start + batch_size,
                        table.c.time_us < floor_s * US,
                    )
                )
                deleted[position] += int(result.rowcount or 0)  # type: ignore[attr-defined]
    return Deleted(deleted[0], deleted[1], finished=True)


def _per_month(session: Session, table: Table, before_s: int) -> list[tuple[int, int]]:
    # Per day in SQL (integer division on both databases), folded into months here: month
    # boundaries are not integer arithmetic.
    day = (table.c.time_us // literal(_DAY_US)).label("day")
    query = select(day, func.count()).where(table.c.time_us < before_s * US).group_by(day)
    months: dict[int, int] = {}
    for day_number, rows in session.execute(query):
        month = month_start(int(day_number) * 86_400)
        months[month] = months.get(month, 0) + int(rows)
    return list(months.items())
