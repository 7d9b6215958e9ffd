"""Upstream usage as the push reads it: the figures the usage pull stored in `upstream_usage`,
bound to customers and folded into the push's windows."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime

from sqlalchemy import and_, func, select, update

from metersync.catalog.meters import Meter
from metersync.clock import utcnow
from metersync.sources.openmeter._state import SOURCE
from metersync.sources.openmeter._usage_store import _U
from metersync.store import Store, UpstreamUsageRow
from metersync.store.engine import USAGE_SEQUENCE
from metersync.store.links import routable_subjects
from metersync.store.usage_cells import change_page_end, usage_mark
from metersync.times import month_start
from metersync.usage.aggregate import subject_owner
from metersync.usage.reports import push_window_s
from metersync.usage.windows import WindowValue


class OpenMeterAggregates:
    """The figures `pull_usage` stored, in the shape the usage push reads (UsageAggregates)."""

    name = SOURCE

    def bind(self, store: Store, target: str) -> int:
        """Bind unbound subject figures to their subject's customer where it has a live link
        in `target`, as local usage is bound (aggregate.bind_usage)."""
        routable = routable_subjects(target)
        owner = subject_owner(_U.subject)
        with store.session() as session:
            seq = store.next_change_seq(session, USAGE_SEQUENCE)
            done = session.execute(
                update(UpstreamUsageRow)
                .where(
                    _U.source == SOURCE,
                    _U.customer_key.is_(None),
                    _U.subject.in_(routable),
                )
                .values(customer_key=owner, changed_at=utcnow(), seq=seq)
                .execution_options(synchronize_session=False)
            )
            return int(done.rowcount or 0)  # type: ignore[attr-defined]

    def waiting_subjects(self, store: Store) -> dict[str, int]:
        with store.read_session() as session:
            rows = session.execute(
                select(_U.subject, func.count())
                .where(_U.source == SOURCE, _U.customer_key.is_(None), _U.value != 0)
                .group_by(_U.subject)
            )
            return {str(subject): int(count) for subject, count in rows}

    def windows(
        self,
        store: Store,
        meter: Meter,
        window_s: int,
        *,
        customers: Sequence[str] | None = None,
        start: int | None = None,
        end: int | None = None,
    ) -> list[WindowValue]:
        period = push_window_s(meter, 3600) == 0
        conditions = [
            _U.source == SOURCE,
            _U.meter == meter.slug,
            _U.customer_key.is_not(None),
            (_U.window_s == 0) if period else (_U.window_s != 0),
        ]
        if customers is not None:
            conditions.append(_U.customer_key.in_(list(customers)))
        if start is not None:
            conditions.append(_U.window_start >= (month_start(start) if window_s == 0 else start))
        if end is not None:
            conditions.append(_U.window_start < end)
        with store.read_session() as session:
            rows = session.execute(
                select(_U.customer_key, _U.window_start, _U.window_s, _U.value, _U.latest_us)
                .where(and_(*conditions))
                .order_by(_U.customer_key, _U.window_start)
            ).all()
        # Subjects' figures summed per customer, into the windows asked for (a month of
        # hours for the CRM's month to date).
        folded: dict[tuple[str, int], WindowValue] = {}
        for key, window, stored, value, latest in rows:
            start_s = int(window)
            if window_s == 0:
                wider = month_start(start_s)
            elif stored and window_s > stored:
                wider = start_s // window_s * window_s
            else:
                wider = start_s
            before = folded.get((key, wider))
            folded[(key, wider)] = WindowValue(
                key,
                wider,
                float(value) + (before.value if before else 0.0),
                max(int(latest), before.latest_us if before else 0),
            )
        return [w for w in folded.values() if w.value]

    def changed_customers(self, store: Store, meters: Sequence[Meter], after: datetime) -> set[str]:
        with store.read_session() as session:
            return set(
                session.execute(
                    select(_U.customer_key)
                    .where(
                        _U.source == SOURCE,
                        _U.meter.in_([m.slug for m in meters]),
                        _U.customer_key.is_not(None),
                        _U.changed_at >= after,
                    )
                    .distinct()
                ).scalars()
            )

    def change_mark(self, store: Store) -> int:
        return usage_mark(store)

    def changed_cells(
        self, store: Store, meter: Meter, window_s: int, *, after: int, upto: int
    ) -> set[tuple[str, int]]:
        """Figures written or bound with a change number in (after, upto], as push cells."""
        period = push_window_s(meter, 3600) == 0
        with store.read_session() as session:
            rows = session.execute(
                select(_U.customer_key, _U.window_start)
                .where(
                    _U.source == SOURCE,
                    _U.meter == meter.slug,
                    _U.seq > after,
                    _U.seq <= upto,
                    _U.customer_key.is_not(None),
                    (_U.window_s == 0) if period else (_U.window_s != 0),
                )
                .distinct()
            ).all()
        cells: set[tuple[str, int]] = set()
        for key, window in rows:
            start = int(window)
            cells.add(
                (str(key), month_start(start) if window_s == 0 else start // window_s * window_s)
            )
        return cells

    def change_page_end(
        self, store: Store, meter: Meter, *, after: int, upto: int, rows: int
    ) -> int:
        where = (_U.source == SOURCE) & (_U.meter == meter.slug)
        return change_page_end(store, _U.seq, where, after=after, upto=upto, rows=rows)

    def customers(self, store: Store, meter: Meter, *, after: str | None, limit: int) -> list[str]:
        query = select(_U.customer_key).where(
            _U.source == SOURCE, _U.meter == meter.slug, _U.customer_key.is_not(None)
        )
        if after is not None:
            query = query.where(_U.customer_key > after)
        query = query.distinct().order_by(_U.customer_key).limit(limit)
        with store.read_session() as session:
            return [str(key) for key in session.execute(query).scalars()]
