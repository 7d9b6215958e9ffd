"""The usage cells' one owner: which (meter, customer, window) of a target a push must plan, and
how far it has collected the changes that make them.

Why cells: a push must cost what changed, not the size of the history. Every write that
stores or binds usage takes a number from the `usage` counter (Store.next_change_seq), and the
rows carry it. A push collects the cells of rows numbered past its cursor into `usage_cell`,
moves the cursor, then plans those cells only, and lets each cell go once its report is
written (or nothing was owed). A cell skipped for a reason that passes stays. Collecting
before moving the cursor, and letting cells go only after their reports are written, means a
crash at any point leaves a cell planned twice at worst, and a second plan of a cell finds
its delta already in the ledger.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

from sqlalchemy import Table, bindparam, delete, func, select, tuple_
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert
from sqlalchemy.orm import Session
from sqlalchemy.sql.elements import ColumnElement
from sqlalchemy.sql.expression import Executable

from metersync.store.engine import USAGE_SEQUENCE, Store
from metersync.store.models import UsageCellRow, UsageCursorRow

CELLS: Table = UsageCellRow.__table__  # type: ignore[attr-defined]
CURSORS: Table = UsageCursorRow.__table__  # type: ignore[attr-defined]
_c = CELLS.c
_k = CURSORS.c
_WRITE_BATCH = 2_000  # cells per INSERT: bound parameters stay far below any limit

Cell = tuple[str, int]  # (customer key, window start)


def usage_mark(store: Store) -> int:
    """The newest usage change number committed: a push collects up to it."""
    return store.current_seq(USAGE_SEQUENCE)


def change_page_end(
    store: Store,
    seq: ColumnElement[int],
    where: ColumnElement[bool],
    *,
    after: int,
    upto: int,
    rows: int,
) -> int:
    """The change number of the `rows`-th row (by `seq`) of those `where` selects numbered in
    (after, upto], or `upto` when there are fewer: where a page of about `rows` changed rows
    ends. An ordered walk of a `(…, seq)` index, stopped at that row."""
    query = (
        select(seq).where(where, seq > after, seq <= upto).order_by(seq).offset(rows - 1).limit(1)
    )
    with store.read_session() as session:
        end = session.execute(query).scalar()
    return upto if end is None else int(end)


def mark_cell(
    session: Session,
    target: str,
    meter: str,
    customer_key: str,
    window: int,
    *,
    due_at: int | None = None,
) -> None:
    """Make one cell due again (at `due_at`, unix seconds, or now), inside the caller's
    transaction: a report refused, or found missing at the target, must be planned again."""
    row = {"target": target, "meter": meter, "customer_key": customer_key, "window_start": window}
    session.execute(_insert(session, update_due=True), [{**row, "due_at": due_at}])


def _insert(session: Session, *, update_due: bool = False) -> Executable:
    """INSERT … ON CONFLICT: a cell already due keeps its time, unless `update_due` (a new
    refusal's backoff replaces the old one). Run with a list of rows: one statement,
    compiled once (a VALUES list of 2,000 rows cost more to compile than to run)."""
    dialect = session.get_bind().dialect.name
    insert = (pg_insert if dialect == "postgresql" else sqlite_insert)(CELLS)
    if update_due:
        return insert.on_conflict_do_update(
            index_elements=[_c.target, _c.meter, _c.customer_key, _c.window_start],
            set_={"due_at": insert.excluded.due_at},
        )
    return insert.on_conflict_do_nothing()


class UsageCellTable:
    """One target's due cells and cursors."""

    def __init__(self, store: Store, target: str) -> None:
        self.store = store
        self.target = target

    def cursor(self, meter: str) -> tuple[int, int, float] | None:
        """How far the meter's changes were collected, and the window size and scale it is
        pushed under; None: never (its first push plans every cell)."""
        with self.store.read_session() as session:
            row = session.execute(
                select(_k.seq, _k.window_s, _k.scale).where(
                    _k.target == self.target, _k.meter == meter
                )
            ).first()
        return None if row is None else (int(row[0]), int(row[1]), float(row[2]))

    def set_cursor(self, meter: str, seq: int, *, window_s: int, scale: float) -> None:
        values = {"seq": seq, "window_s": window_s, "scale": scale}
        with self.store.session() as session:
            found = session.execute(
                CURSORS.update().where(_k.target == self.target, _k.meter == meter).values(values)
            )
            if not found.rowcount:  # type: ignore[attr-defined]
                session.execute(CURSORS.insert().values(target=self.target, meter=meter, **values))

    def add(
        self,
        meter: str,
        cells: Iterable[Cell],
        *,
        due_at: int | None = None,
        update_due: bool = False,
    ) -> int:
        """Make cells due (at `due_at`, or now); a cell already due keeps its time unless
        `update_due`. In batches; returns how many were offered."""
        offered = 0
        batch: list[dict[str, object]] = []
        with self.store.session() as session:
            for customer_key, window in cells:
                batch.append(
                    {
                        "target": self.target,
                        "meter": meter,
                        "customer_key": customer_key,
                        "window_start": window,
                        "due_at": due_at,
                    }
                )
                if len(batch) == _WRITE_BATCH:
                    session.execute(_insert(session, update_due=update_due), batch)
                    offered += len(batch)
                    batch = []
            if batch:
                session.execute(_insert(session, update_due=update_due), batch)
                offered += len(batch)
        return offered

    def due(self, meter: str, *, now: int, after: Cell | None, limit: int) -> list[Cell]:
        """The next `limit` cells of the meter due at `now` (unix seconds) after `after`, by
        (customer, window): a keyset walk, so each page costs the same however many cells
        there are."""
        query = select(_c.customer_key, _c.window_start).where(
            _c.target == self.target,
            _c.meter == meter,
            _c.due_at.is_(None) | (_c.due_at <= now),
        )
        if after is not None:
            query = query.where(tuple_(_c.customer_key, _c.window_start) > tuple_(*after))
        query = query.order_by(_c.customer_key, _c.window_start).limit(limit)
        with self.store.read_session() as session:
            return [(str(k), int(w)) for k, w in session.execute(query)]

    def release(self, meter: str, cells: Sequence[Cell]) -> None:
        """Cells whose reports are written, or that owed nothing: no longer due."""
        if not cells:
            return
        # One statement run for every cell, compiled once, each an indexed delete: an OR of
        # 500 cells a statement cost more to compile than the deletes themselves.
        statement = delete(CELLS).where(
            _c.target == self.target,
            _c.meter == meter,
            _c.customer_key == bindparam("cell_customer"),
            _c.window_start == bindparam("cell_window"),
        )
        with self.store.session() as session:
            session.execute(statement, [{"cell_customer": k, "cell_window": w} for k, w in cells])

    def count(self) -> int:
        """Cells due, over every meter: what the next push will plan at least."""
        with self.store.read_session() as session:
            return int(
                session.execute(
                    select(func.count()).select_from(CELLS).where(_c.target == self.target)
                ).scalar_one()
            )
