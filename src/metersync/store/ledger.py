"""The usage ledger's one owner: every query and write of ledger rows is here.

One row per report to a target's meter, PENDING before its call and DELIVERED after. What the
ledger holds is what the next delta is measured against; a PENDING row counts as sent (it will
be, with its own identifier), a FAILED one does not.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Protocol

from sqlalchemy import Table, case, func, insert, select, update
from sqlalchemy.orm import Session

from metersync.clock import utcnow
from metersync.mechanics.backoff import backoff
from metersync.states import LedgerState
from metersync.store.engine import Store
from metersync.store.models import LedgerRow
from metersync.store.usage_cells import mark_cell

LEDGER: Table = LedgerRow.__table__  # type: ignore[attr-defined]
_g = LEDGER.c
_ERROR_MAX = 2000  # characters of an error kept on a report
# States whose value the target has, or will have: the base of the next delta.
COUNTED = (LedgerState.PENDING, LedgerState.DELIVERED, LedgerState.LATE)
# States whose value was sent: what `usage verify` compares with the target's figures.
SENT = (LedgerState.DELIVERED, LedgerState.PENDING)


class NewReport(Protocol):
    """A report about to be written (usage.reports.Report is one)."""

    @property
    def customer_key(self) -> str: ...
    @property
    def meter(self) -> str: ...
    @property
    def window_start(self) -> int: ...
    @property
    def window_s(self) -> int: ...
    @property
    def revision(self) -> int: ...
    @property
    def value(self) -> int: ...
    @property
    def total(self) -> int: ...
    @property
    def identifier(self) -> str: ...
    @property
    def external_customer_id(self) -> str: ...
    @property
    def event_name(self) -> str: ...
    @property
    def timestamp(self) -> int: ...
    @property
    def scale(self) -> float: ...
    @property
    def late(self) -> bool: ...


@dataclass(frozen=True)
class PendingReport:
    id: int
    customer_key: str
    meter: str
    window_start: int
    identifier: str
    external_customer_id: str
    event_name: str
    value: int
    timestamp: int
    attempts: int
    created_at: datetime


class LedgerTable:
    """The ledger rows of one target."""

    def __init__(self, store: Store, target: str) -> None:
        self.store = store
        self.target = target

    # -- what the next delta is measured against -------------------------------------------------

    def bases(
        self,
        meter: str,
        now: datetime,
        *,
        last: bool = False,
        customers: Sequence[str] | None = None,
        windows: tuple[int, int] | None = None,
    ) -> dict[tuple[str, int], tuple[int, int, int, bool]]:
        """Per (customer, window): (what the target holds or will hold, the highest revision,
        the newest stamp, whether a refusal's backoff still runs), the planner's `Base`.

        Sum meters add up the values of every counted report, so a report that ends FAILED
        (refused) drops out and its value is planned again, whatever was planned after it.
        Last meters hold the newest counted report's value.

        `customers` and `windows` (starts in [lo, hi)) narrow it to the cells a push plans
        (the report index serves both), so a tick reads the ledger of what changed, never all
        of it."""
        # Aggregated in the database: one row per window, not per report. A window pushed
        # every tick gathers many reports, and the push must not hold them all in memory.
        counted = _g.state.in_([s.value for s in COUNTED])
        grouped = (
            select(
                _g.customer_key.label("customer_key"),
                _g.window_start.label("window_start"),
                func.max(_g.revision).label("revision"),
                func.sum(case((counted, _g.value), else_=0)).label("total"),
                func.max(case((counted, _g.timestamp), else_=0)).label("stamp"),
                func.max(case((counted, _g.revision), else_=0)).label("counted"),
                func.max(
                    case(
                        ((_g.state == LedgerState.FAILED) & (_g.next_attempt_at > now), 1),
                        else_=0,
                    )
                ).label("waiting"),
            )
            .where(_g.target == self.target, _g.meter == meter)
            .group_by(_g.customer_key, _g.window_start)
        )
        if customers is not None:
            grouped = grouped.where(_g.customer_key.in_(list(customers)))
        if windows is not None:
            grouped = grouped.where(_g.window_start >= windows[0], _g.window_start < windows[1])
        agg = grouped.subquery()
        if last:  # the newest counted report's value, not the sum
            newest = LEDGER.alias("newest")
            query = select(
                agg.c.customer_key,
                agg.c.window_start,
                agg.c.revision,
                func.coalesce(newest.c.total, 0),
                agg.c.stamp,
                agg.c.waiting,
            ).select_from(
                agg.outerjoin(
                    newest,
                    (newest.c.target == self.target)
                    & (newest.c.meter == meter)
                    & (newest.c.customer_key == agg.c.customer_key)
                    & (newest.c.window_start == agg.c.window_start)
                    & (newest.c.revision == agg.c.counted),
                )
            )
        else:
            query = select(
                agg.c.customer_key,
                agg.c.window_start,
                agg.c.revision,
                agg.c.total,
                agg.c.stamp,
                agg.c.waiting,
            )
        with self.store.read_session() as session:
            return {
                (customer, int(window)): (
                    int(total or 0),
                    int(revision),
                    int(stamp or 0),
                    bool(waiting),
                )
                for customer, window, revision, total, stamp, waiting in session.execute(query)
            }

    def reported_under(self, meter: str) -> set[tuple[int, float]]:
        """The (window size, scale) pairs the meter's reports were made under."""
        query = (
            select(_g.window_s, _g.scale)
            .where(_g.target == self.target, _g.meter == meter)
            .distinct()
        )
        with self.store.read_session() as session:
            return {(int(w), float(s)) for w, s in session.execute(query)}

    # -- reports: writes and their outcomes ------------------------------------------------------

    def record(self, reports: Sequence[NewReport]) -> list[int]:
        """Write reports before sending them (PENDING, or LATE when held): one transaction, so
        a crash leaves all of them or none."""
        if not reports:
            return []
        now = utcnow()
        rows = [
            {
                "target": self.target,
                "customer_key": r.customer_key,
                "meter": r.meter,
                "window_start": r.window_start,
                "window_s": r.window_s,
                "revision": r.revision,
                "value": r.value,
                "total": r.total,
                "identifier": r.identifier,
                "external_customer_id": r.external_customer_id,
                "event_name": r.event_name,
                "timestamp": r.timestamp,
                "scale": r.scale,
                "state": LedgerState.LATE if r.late else LedgerState.PENDING,
                "attempts": 0,
                "created_at": now,
            }
            for r in reports
        ]
        with self.store.session() as session:
            # The ids come back from the INSERT itself, in the order of the rows (SQLAlchemy's
            # insertmanyvalues): reading them back by identifier afterwards cost PostgreSQL a
            # scan per chunk on a ledger never analyzed.
            result = session.execute(
                insert(LEDGER).returning(_g.id, sort_by_parameter_order=True), rows
            )
            return [int(report_id) for (report_id,) in result]

    def pending(
        self, now: datetime, *, customers: Iterable[str] | None = None
    ) -> list[PendingReport]:
        """Reports written but not known delivered, due now (oldest first)."""
        query = (
            select(
                _g.id,
                _g.customer_key,
                _g.meter,
                _g.window_start,
                _g.identifier,
                _g.external_customer_id,
                _g.event_name,
                _g.value,
                _g.timestamp,
                _g.attempts,
                _g.created_at,
            )
            .where(
                _g.target == self.target,
                _g.state == LedgerState.PENDING,
                (_g.next_attempt_at.is_(None)) | (_g.next_attempt_at <= now),
            )
            .order_by(_g.id)
        )
        if customers is not None:
            query = query.where(_g.customer_key.in_(list(customers)))
        with self.store.read_session() as session:
            return [PendingReport(*row) for row in session.execute(query)]

    def mark_delivered(self, ids: Sequence[int]) -> None:
        if not ids:
            return
        now = utcnow()
        with self.store.session() as session:
            for start in range(0, len(ids), 500):
                session.execute(
                    update(LEDGER)
                    .where(_g.id.in_(ids[start : start + 500]), _g.state == LedgerState.PENDING)
                    .values(state=LedgerState.DELIVERED, delivered_at=now, last_error=None)
                )

    def mark_failed(self, report_id: int, message: str, *, outcome_known: bool) -> None:
        """A send failed. Unknown outcome (connection, timeout, 5xx, 429): stays PENDING and is
        re-sent with its identifier after a backoff. Refused: FAILED, and its value is planned
        again, as a new revision, after the backoff."""
        now = utcnow()
        with self.store.session() as session:
            attempts, customer_key, meter, window = session.execute(
                select(_g.attempts, _g.customer_key, _g.meter, _g.window_start).where(
                    _g.id == report_id
                )
            ).one()
            retry_at = now + backoff(attempts + 1, base_s=5.0, cap_s=1800.0)
            if outcome_known:  # its value is owed again: the cell is due after the backoff
                due_at = math.ceil(retry_at.timestamp())
                mark_cell(session, self.target, meter, customer_key, int(window), due_at=due_at)
            session.execute(
                update(LEDGER)
                .where(_g.id == report_id)
                .values(
                    attempts=attempts + 1,
                    last_error=message[:_ERROR_MAX],
                    next_attempt_at=retry_at,
                    state=LedgerState.FAILED if outcome_known else LedgerState.PENDING,
                )
            )

    # -- health ----------------------------------------------------------------------------------

    def counts(self) -> dict[str, int]:
        query = select(_g.state, func.count()).where(_g.target == self.target).group_by(_g.state)
        with self.store.read_session() as session:
            return {state: int(count) for state, count in session.execute(query)}

    def oldest_pending_at(self) -> datetime | None:
        with self.store.read_session() as session:
            return session.execute(
                select(func.min(_g.created_at)).where(
                    _g.target == self.target, _g.state == LedgerState.PENDING
                )
            ).scalar()

    def last_delivered_at(self) -> datetime | None:
        with self.store.read_session() as session:
            return session.execute(
                select(func.max(_g.delivered_at)).where(_g.target == self.target)
            ).scalar()

    def late_by_meter(self) -> list[tuple[str, int, int]]:
        """(meter, reports, value) of the reports held as late, by meter."""
        query = (
            select(_g.meter, func.count(), func.sum(_g.value))
            .where(_g.target == self.target, _g.state == LedgerState.LATE)
            .group_by(_g.meter)
            .order_by(_g.meter)
        )
        with self.store.read_session() as session:
            return [(m, int(n), int(v or 0)) for m, n, v in session.execute(query)]

    def failing(self, limit: int) -> list[Any]:
        """Reports with an error that are still pending or failed, newest first: customer_key,
        meter, window_start, state, attempts, last_error."""
        query = (
            select(
                _g.customer_key,
                _g.meter,
                _g.window_start,
                _g.state,
                _g.attempts,
                _g.last_error,
            )
            .where(_g.target == self.target, _g.last_error.is_not(None))
            .where(_g.state.in_([LedgerState.PENDING, LedgerState.FAILED]))
            .order_by(_g.id.desc())
            .limit(limit)
        )
        with self.store.read_session() as session:
            return list(session.execute(query))

    # -- verification ----------------------------------------------------------------------------

    def sent_in(
        self, meter: str, lo: int, hi: int, *, customers: Sequence[str] | None = None
    ) -> list[Any]:
        """The meter's sent reports (delivered or pending) for windows in [lo, hi), of every
        customer or of `customers`, oldest stamp first: customer_key, window_start, value,
        state, external_customer_id."""
        query = (
            select(_g.customer_key, _g.window_start, _g.value, _g.state, _g.external_customer_id)
            .where(
                _g.target == self.target,
                _g.meter == meter,
                _g.window_start >= lo,
                _g.window_start < hi,
                _g.state.in_(SENT),
            )
            .order_by(_g.timestamp, _g.revision)
        )
        if customers is not None:
            query = query.where(_g.customer_key.in_(list(customers)))
        with self.store.read_session() as session:
            return list(session.execute(query))

    @contextmanager
    def correcting(self) -> Iterator[Session]:
        """One transaction for a verification's corrections (period_reports, set_outcome)."""
        with self.store.session() as session:
            yield session

    def period_reports(
        self,
        session: Session,
        *,
        customer_key: str,
        meter: str,
        start: int,
        end: int,
        external_customer_id: str,
    ) -> list[Any]:
        """A period's sent reports to one external customer, oldest stamp first: id, value,
        state, created_at, delivered_at, timestamp."""
        return list(
            session.execute(
                select(_g.id, _g.value, _g.state, _g.created_at, _g.delivered_at, _g.timestamp)
                .where(
                    _g.target == self.target,
                    _g.customer_key == customer_key,
                    _g.meter == meter,
                    _g.window_start >= start,
                    _g.window_start < end,
                    _g.external_customer_id == external_customer_id,
                    _g.state.in_(SENT),
                )
                .order_by(_g.timestamp, _g.revision)
            ).all()
        )

    def set_outcome(
        self, session: Session, report_id: int, state: LedgerState, note: str | None
    ) -> None:
        """Settle a report by what the target's figures show: DELIVERED, or FAILED (planned
        again under a new identifier by the next push)."""
        if state is LedgerState.FAILED:
            customer_key, meter, window = session.execute(
                select(_g.customer_key, _g.meter, _g.window_start).where(_g.id == report_id)
            ).one()
            mark_cell(session, self.target, meter, customer_key, int(window))
        session.execute(
            update(LEDGER)
            .where(_g.id == report_id)
            .values(state=state, last_error=note, next_attempt_at=None)
        )


def customers_pushed_since(store: Store, meters: Sequence[str], after: datetime) -> set[str]:
    """Customers with a report for one of `meters` written or delivered at or after `after`,
    in any target."""
    query = (
        select(_g.customer_key)
        .where(
            _g.meter.in_(meters),
            (_g.created_at >= after) | (_g.delivered_at >= after),
        )
        .distinct()
    )
    with store.read_session() as session:
        return set(session.execute(query).scalars())


def pending_windows(store: Store, before: int) -> list[tuple[str, str, int]]:
    """Reports still PENDING, in any target, for windows that start before `before` (seconds):
    (meter, customer_key, window_start). A prune keeps their months: the usage they report is
    not known to be billed yet."""
    query = select(_g.meter, _g.customer_key, _g.window_start).where(
        _g.state == LedgerState.PENDING, _g.window_start < before
    )
    with store.read_session() as session:
        return [(m, c, int(w)) for m, c, w in session.execute(query)]
