"""Aggregation in SQL, the same statements on SQLite and PostgreSQL: meter values per customer
and tumbling window (integer division of microsecond timestamps), or per calendar month for
the period-to-date meters.

Customer, not subject: a usage row counts for the customer it is bound to. Binding happens
when usage is first pushed (`bind_usage`): the subject's customer at that moment, fixed from
then on, so usage already pushed stays with the customer it went to and usage that arrives
after a re-attribution follows the new customer.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

from sqlalchemy import Table, and_, func, literal, select, update
from sqlalchemy.orm import Session
from sqlalchemy.sql.elements import ColumnElement
from sqlalchemy.sql.selectable import ScalarSelect, Select

from metersync.catalog.meters import Aggregation, Meter
from metersync.store import AttributionRow, Store, UsageRow
from metersync.store.engine import USAGE_SEQUENCE
from metersync.store.links import routable_subjects
from metersync.store.usage_cells import change_page_end as page_end
from metersync.times import month_end, month_start, rfc3339_seconds
from metersync.usage.windows import WindowValue

US = 1_000_000
# Unbound rows per binding statement: a transaction short enough that ingest, which takes the
# same usage counter, waits a fraction of a second for it.
_BIND_ROWS = 50_000
# Core columns: this module is SQL through and through.
USAGE: Table = UsageRow.__table__  # type: ignore[attr-defined]
_u = USAGE.c
_a = AttributionRow.__table__.c  # type: ignore[attr-defined]


def subject_owner(subject: ColumnElement[Any]) -> ScalarSelect[Any]:
    """The customer `subject` (a column of the row being bound) is attributed to now."""
    return select(_a.customer_key).where(_a.subject_key == subject).scalar_subquery()


def bind_usage(store: Store, target: str) -> int:
    """Bind unbound usage rows to their subject's customer where that customer has a live
    link in `target`. Rows of subjects without such a customer stay unbound and wait. Bound
    rows take a new change number: their cells changed (store.usage_cells).

    Costs what is unbound, not the history nor the catalog: the rows waiting are walked in id
    order through their own partial index, `_BIND_ROWS` a statement, and each row's subject
    is looked up by key. A slice by id is also a slice of the table's pages (rows are stored
    in arrival order), so binding a large import reads the table once; slicing by subject
    instead read every page for every slice on PostgreSQL. Each slice is its own transaction,
    so ingest waits for one slice at most, never for the whole binding."""
    with store.read_session() as session:
        # Rows stored from now on wait for the next push: under a steady ingest faster than
        # binding, a walk to the moving end of the table would never finish.
        last = session.execute(select(func.max(_u.id))).scalar()
    bound, after = 0, 0
    while last is not None:
        with store.read_session() as session:
            upto = session.execute(_unbound_slice_end(after, last)).scalar()
        if upto is None:
            break
        with store.session() as session:
            seq = store.next_change_seq(session, USAGE_SEQUENCE)
            result = session.execute(
                update(UsageRow)
                .where(
                    _u.customer_key.is_(None),
                    _u.id > after,
                    _u.id <= upto,
                    routable_subjects(target).where(_a.subject_key == _u.subject).exists(),
                )
                .values(customer_key=subject_owner(_u.subject), seq=seq)
                .execution_options(synchronize_session=False)
            )
            bound += int(result.rowcount or 0)  # type: ignore[attr-defined]
        after = int(upto)
    return bound


def _unbound_slice_end(after: int, last: int) -> Select[Any]:
    """The id of the `_BIND_ROWS`-th unbound row in (after, last] (or the last of them): one
    ordered walk of the partial index, stopped by the LIMIT."""
    ids = (
        select(_u.id)
        .where(_u.customer_key.is_(None), _u.id > after, _u.id <= last)
        .order_by(_u.id)
        .limit(_BIND_ROWS)
        .subquery()
    )
    return select(func.max(ids.c.id))


def changed_cells(
    store: Store, meter: Meter, window_s: int, *, after: int, upto: int
) -> set[tuple[str, int]]:
    """The bound (customer, push window) cells of rows stored or bound with a change number in
    (after, upto]: windows of `window_s`, or calendar months when it is 0."""
    size = window_s or 86400  # months are folded from days here: no month arithmetic in SQL
    bucket = window_start_expr(size)
    query = (
        select(_u.customer_key, bucket)
        .where(
            _u.meter == meter.slug,
            _u.seq > after,
            _u.seq <= upto,
            _u.customer_key.is_not(None),
        )
        .distinct()
    )
    with store.read_session() as session:
        rows = session.execute(query).all()
    if window_s == 0:
        return {(str(key), month_start(int(start))) for key, start in rows}
    return {(str(key), int(start)) for key, start in rows}


def change_page_end(store: Store, meter: Meter, *, after: int, upto: int, rows: int) -> int:
    """Where a page of about `rows` of the meter's changed rows ends (store.usage_cells)."""
    return page_end(store, _u.seq, _u.meter == meter.slug, after=after, upto=upto, rows=rows)


def customers_with_usage(store: Store, meter: Meter, *, after: str | None, limit: int) -> list[str]:
    """The next `limit` customers (by key, after `after`) with bound usage of the meter."""
    query = select(_u.customer_key).where(_u.meter == meter.slug, _u.customer_key.is_not(None))
    if after is not None:
        query = query.where(_u.customer_key > after)
    query = query.distinct().order_by(_u.customer_key).limit(limit)
    with store.read_session() as session:
        return [str(key) for key in session.execute(query).scalars()]


def unbound_subjects(store: Store) -> dict[str, int]:
    """Usage rows waiting for their subject's customer to be linked, by subject."""
    with store.read_session() as session:
        rows = session.execute(
            select(_u.subject, func.count()).where(_u.customer_key.is_(None)).group_by(_u.subject)
        )
        return {subject: int(count) for subject, count in rows}


# -- windows -------------------------------------------------------------------------------------


def window_start_expr(window_s: int) -> ColumnElement[Any]:
    """Window start in seconds: integer division on both databases (bigint / bigint)."""
    size = literal(window_s * US)
    return (_u.time_us // size) * literal(window_s)


def _value(aggregation: Aggregation) -> Any:
    match aggregation:
        case Aggregation.SUM:
            return func.sum(_u.value)
        case Aggregation.COUNT:
            return func.count()
        case Aggregation.MAX:
            return func.max(_u.value)
        case Aggregation.MIN:
            return func.min(_u.value)
        case Aggregation.AVG:
            return func.avg(_u.value)
        case Aggregation.UNIQUE_COUNT:
            return func.count(_u.value_text.distinct())
    raise ValueError(f"{aggregation} has no plain SQL aggregate")


def customer_windows(
    store: Store,
    meter: Meter,
    window_s: int,
    *,
    customers: Sequence[str] | None = None,
    start: int | None = None,
    end: int | None = None,
) -> list[WindowValue]:
    """The meter's value per bound customer and window (seconds, UTC), windows of `window_s`
    (a calendar month when window_s is 0). `start`/`end` bound event times (seconds)."""
    with store.read_session() as session:
        return list(_windows(session, meter, window_s, customers, start, end))


def _windows(
    session: Session,
    meter: Meter,
    window_s: int,
    customers: Sequence[str] | None,
    start: int | None,
    end: int | None,
) -> Iterable[WindowValue]:
    conditions: list[Any] = [
        _u.meter == meter.slug,
        _u.customer_key.is_not(None),
    ]
    if customers is not None:
        conditions.append(_u.customer_key.in_(list(customers)))
    if start is not None:
        conditions.append(_u.time_us >= start * US)
    if end is not None:
        conditions.append(_u.time_us < end * US)
    if window_s == 0:
        yield from _monthly(session, meter, conditions)
        return
    window = window_start_expr(window_s).label("window_start")
    if meter.aggregation is Aggregation.LATEST:
        yield from _latest(session, [window], conditions)
        return
    query = (
        select(
            _u.customer_key,
            window,
            _value(meter.aggregation),
            func.max(_u.time_us),
        )
        .where(and_(*conditions))
        .group_by(_u.customer_key, window)
        .order_by(_u.customer_key, window)
    )
    for customer, window_start, value, latest in session.execute(query):
        yield WindowValue(customer, int(window_start), float(value or 0), int(latest))


def _monthly(session: Session, meter: Meter, conditions: list[Any]) -> Iterable[WindowValue]:
    """Per calendar month: read the per-day figures in SQL, then fold days into months here
    (month boundaries are not integer arithmetic). Exact for every aggregation but AVG and
    UNIQUE_COUNT, which are computed over the month's rows directly."""
    day = window_start_expr(86400).label("day")
    if meter.aggregation in (Aggregation.UNIQUE_COUNT, Aggregation.AVG):
        # Not foldable from days: one query per calendar month the rows span, each grouped by
        # customer in SQL (a month's bounds are computed here, not in SQL).
        lo, hi = session.execute(
            select(func.min(_u.time_us), func.max(_u.time_us)).where(and_(*conditions))
        ).one()
        if lo is None:
            return
        month = month_start(int(lo) // US)
        while month <= int(hi) // US:
            following = month_end(month)
            in_month = [*conditions, _u.time_us >= month * US, _u.time_us < following * US]
            rows = session.execute(
                select(_u.customer_key, _value(meter.aggregation), func.max(_u.time_us))
                .where(and_(*in_month))
                .group_by(_u.customer_key)
                .order_by(_u.customer_key)
            )
            for customer, value, latest in rows:
                yield WindowValue(customer, month, float(value or 0), int(latest))
            month = following
        return
    daily = (
        list(_latest(session, [day], conditions))
        if meter.aggregation is Aggregation.LATEST
        else [
            WindowValue(customer, int(day_start), float(value or 0), int(latest))
            for customer, day_start, value, latest in session.execute(
                select(
                    _u.customer_key,
                    day,
                    _value(meter.aggregation),
                    func.max(_u.time_us),
                )
                .where(and_(*conditions))
                .group_by(_u.customer_key, day)
            )
        ]
    )
    folded: dict[tuple[str, int], WindowValue] = {}
    for item in sorted(daily, key=lambda w: (w.customer_key, w.window_start)):
        key = (item.customer_key, month_start(item.window_start))
        before = folded.get(key)
        folded[key] = WindowValue(
            item.customer_key,
            key[1],
            _fold(meter.aggregation, before, item),
            max(item.latest_us, before.latest_us if before else 0),
        )
    yield from (folded[k] for k in sorted(folded))


def _fold(aggregation: Aggregation, before: WindowValue | None, item: WindowValue) -> float:
    if before is None:
        return item.value
    match aggregation:
        case Aggregation.SUM | Aggregation.COUNT:
            return before.value + item.value
        case Aggregation.MAX:
            return max(before.value, item.value)
        case Aggregation.MIN:
            return min(before.value, item.value)
        case Aggregation.LATEST:
            return item.value if item.latest_us >= before.latest_us else before.value
    raise ValueError(f"{aggregation} cannot be folded")


def _latest(session: Session, group: list[Any], conditions: list[Any]) -> Iterable[WindowValue]:
    """LATEST: the value of the newest event per customer and window (ties: the later row)."""
    ranked = (
        select(
            _u.customer_key,
            *group,
            _u.value,
            _u.time_us,
            func.row_number()
            .over(
                partition_by=[_u.customer_key, *group],
                order_by=[_u.time_us.desc(), _u.id.desc()],
            )
            .label("rank"),
        )
        .where(and_(*conditions))
        .subquery()
    )
    columns = list(ranked.c)
    query = select(*columns[:4]).where(ranked.c.rank == 1).order_by(columns[0], columns[1])
    for customer, window_start, value, time_us in session.execute(query):
        yield WindowValue(customer, int(window_start), float(value or 0), int(time_us))


# -- `usage show` --------------------------------------------------------------------------------


@dataclass(frozen=True)
class UsageWindow:
    """One row of a meter query, in OpenMeter's shape."""

    window_start: int
    window_end: int
    value: float
    group_by: dict[str, Any]

    def to_openmeter(self, customer_key: str | None = None) -> dict[str, Any]:
        # subject and groupBy are required in OpenMeter's MeterQueryRow: null when the value
        # covers every subject, {} when the window is not split.
        out: dict[str, Any] = {
            "windowStart": rfc3339_seconds(self.window_start),
            "windowEnd": rfc3339_seconds(self.window_end),
            "value": self.value,
            "subject": None,
            "groupBy": {k: None if v is None else str(v) for k, v in self.group_by.items()},
        }
        if customer_key is not None:
            out["customerId"] = customer_key
        return out


def query_meter(
    store: Store,
    meter: Meter,
    *,
    customer: tuple[str, Sequence[str]] | None,
    start: int,
    end: int,
    window_s: int,
    group: bool = False,
) -> list[UsageWindow]:
    """A meter's value per window, as OpenMeter's meter query shows it: for one customer
    (key, its current subjects) its bound usage plus its subjects' usage not bound yet, or
    everything when `customer` is None. `group` splits each window by the group_by values."""
    conditions: list[Any] = [
        _u.meter == meter.slug,
        _u.time_us >= start * US,
        _u.time_us < end * US,
    ]
    if customer is not None:
        customer_key, subjects = customer
        conditions.append(
            (_u.customer_key == customer_key)
            | (_u.customer_key.is_(None) & _u.subject.in_(list(subjects)))
        )
    window = window_start_expr(window_s).label("window_start")
    out: list[UsageWindow] = []
    with store.read_session() as session:
        if meter.aggregation is Aggregation.LATEST or group:
            rows = session.execute(
                select(window, _u.value, _u.value_text, _u.time_us, _u.groups)
                .where(and_(*conditions))
                .order_by(window, _u.time_us, _u.id)
            )
            buckets: dict[tuple[int, str], list[Any]] = {}
            for window_start, value, text, _time_us, groups in rows:
                bucket = (int(window_start), (groups or "{}") if group else "{}")
                buckets.setdefault(bucket, []).append((value, text))
            for (window_start, groups), items in sorted(buckets.items()):
                out.append(
                    UsageWindow(
                        window_start,
                        window_start + window_s,
                        _reduce(meter.aggregation, items),
                        json.loads(groups) if group else {},
                    )
                )
            return out
        query = (
            select(window, _value(meter.aggregation))
            .where(and_(*conditions))
            .group_by(window)
            .order_by(window)
        )
        for window_start, value in session.execute(query):
            out.append(
                UsageWindow(int(window_start), int(window_start) + window_s, float(value or 0), {})
            )
    return out


def _reduce(aggregation: Aggregation, items: list[tuple[float | None, str | None]]) -> float:
    numbers = [v for v, _ in items if v is not None]
    match aggregation:
        case Aggregation.SUM:
            return float(sum(numbers))
        case Aggregation.COUNT:
            return float(len(items))
        case Aggregation.MAX:
            return float(max(numbers)) if numbers else 0.0
        case Aggregation.MIN:
            return float(min(numbers)) if numbers else 0.0
        case Aggregation.AVG:
            return float(sum(numbers) / len(numbers)) if numbers else 0.0
        case Aggregation.LATEST:
            return float(numbers[-1]) if numbers else 0.0
        case Aggregation.UNIQUE_COUNT:
            return float(len({t for _, t in items}))
    raise ValueError(aggregation)
