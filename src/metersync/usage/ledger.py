"""The usage ledger: one row per report to a target's meter, PENDING before its call and
DELIVERED after. What the ledger holds is what the next delta is measured against; a PENDING
row counts as sent (it will be, with its own identifier), a FAILED one does not.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime

from sqlalchemy import Table, case, func, insert, select, update

from metersync.clock import utcnow
from metersync.mechanics.backoff import backoff
from metersync.store import LedgerRow, LedgerState, LinkKind, LinkRow, Store
from metersync.usage.aggregate import ROUTABLE
from metersync.usage.reports import Base, Report

LEDGER: Table = LedgerRow.__table__  # type: ignore[attr-defined]
_g = LEDGER.c
_l = LinkRow.__table__.c  # type: ignore[attr-defined]
# States whose value the target has, or will have: the base of the next delta.
COUNTED = (LedgerState.PENDING, LedgerState.DELIVERED, LedgerState.LATE)


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


class Ledger:
    def __init__(self, store: Store, target: str) -> None:
        self.store = store
        self.target = target

    def external_ids(self) -> dict[str, str]:
        """Customer key → the target's id, for customers usage can be pushed to."""
        query = select(_l.local_key, _l.external_id).where(
            _l.target == self.target,
            _l.kind == LinkKind.CUSTOMER,
            _l.external_id.is_not(None),
            _l.state.in_([s.value for s in ROUTABLE]),
        )
        with self.store.read_session() as session:
            return {key: external_id for key, external_id in session.execute(query)}

    def bases(
        self, meter: str, now: datetime, *, last: bool = False
    ) -> dict[tuple[str, int], Base]:
        """Per (customer, window): what the target holds or will hold, the highest revision,
        the newest stamp, and whether a refusal's backoff still runs.

        Sum meters add up the values of every counted report, so a report that ends FAILED
        (refused) drops out and its value is planned again, whatever was planned after it.
        Last meters hold the newest counted report's value."""
        # Aggregated in the database: one row per window, not per report. A window pushed
        # every tick gathers many reports, and the push must not hold them all in memory.
        counted = _g.state.in_([s.value for s in COUNTED])
        agg = (
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
            .subquery()
        )
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
                (customer, int(window)): Base(
                    int(total or 0), int(revision), int(stamp or 0), bool(waiting)
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

    def record(self, reports: Sequence[Report]) -> list[int]:
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
            session.execute(insert(LEDGER), rows)
            identifiers = [r.identifier for r in reports]
            found = dict(
                session.execute(
                    select(_g.identifier, _g.id).where(
                        _g.target == self.target, _g.identifier.in_(identifiers)
                    )
                ).all()
            )
        return [int(found[i]) for i in identifiers]

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

    def delivered(self, ids: Sequence[int]) -> None:
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

    def failed(self, report_id: int, message: str, *, outcome_known: bool) -> None:
        """A send failed. Unknown outcome (connection, timeout, 5xx, 429): stays PENDING and is
        re-sent with its identifier after a backoff. Refused: FAILED, and its value is planned
        again, as a new revision, after the backoff."""
        now = utcnow()
        with self.store.session() as session:
            attempts = session.execute(select(_g.attempts).where(_g.id == report_id)).scalar_one()
            session.execute(
                update(LEDGER)
                .where(_g.id == report_id)
                .values(
                    attempts=attempts + 1,
                    last_error=message[:2000],
                    next_attempt_at=now + backoff(attempts + 1, base_s=5.0, cap_s=1800.0),
                    state=LedgerState.FAILED if outcome_known else LedgerState.PENDING,
                )
            )

    def counts(self) -> dict[str, int]:
        query = select(_g.state, func.count()).where(_g.target == self.target).group_by(_g.state)
        with self.store.read_session() as session:
            return {state: int(count) for state, count in session.execute(query)}
