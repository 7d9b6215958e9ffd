"""A customer's usage of a metered feature, as the entitlement engine burns it.

The rule: a customer's usage is exactly what billing counts for it. That is the rows bound to
the customer (`usage_value.customer_key = C`), plus the rows not bound yet whose subject is
attributed to C now, which is what the next push will bind them to (usage.aggregate.bind_usage).
So the usage billed to a customer and the usage burning its entitlement are the same figures: a
subject moved to another customer leaves its bound rows with C and takes its unbound rows along,
just as binding would.

A feature is a meter (SUM or COUNT only: the others do not add up over time) and optional
group_by filters, dimension → value, matched against each row's `groups` (a string matches
itself; a number or a boolean its JSON text; null and a missing dimension match nothing).

Figures are Decimal, at one-minute resolution. A stretch of rows is summed by the database
(SUM of the float values; COUNT of the rows) and made Decimal from the float's shortest text
(`repr`), so 0.1 is 0.1; stretches are added in exact decimal arithmetic (a rounding raises).
An hour's figure is one such sum, as billing sums a window; a span is P(end) - P(start), where
P(x) is the usage from the loaded span's first hour up to x (whole hours, plus the part of x's
hour before x), so spans add up exactly: usage(a, b) + usage(b, c) = usage(a, c). Values
exact in binary (integers, halves, …) give exact figures; others are rounded by the float
sums, as billing's are (a figure may then move in its last digit when its rows are bound).

Fast reads: a feature's bound usage is kept per (customer, hour) in `entitlement_usage_hour`,
folded from the `usage` change numbers past the feature's own cursor (`refresh_feature_usage`):
the rows numbered past it name the (customer, hour) cells that changed, those cells are
recomputed from their raw rows on the aggregate index, and the cursor moves, in one
transaction. A refresh costs what changed, never the history; cells are recomputed, not
incremented, so a crash or a second refresh is harmless. A feature's first refresh folds every
row of its meter (a page of about `_PAGE_ROWS` rows a transaction; the rows of a store upgraded
from before change numbers all carry 0, and are one page).

`FeatureUsage.load` reads, in one read snapshot, the span's hours from that table (the hours
whose cells the cursor has not folded yet are read raw instead, so a read is exact whether or
not a refresh ran; a refresh only makes it cheaper), the unbound rows of the customer's
subjects, and, for every cut time given (segment boundaries), the part of its hour on the
nearer side of it, raw, in one statement. The unbound rows are read live, so a read's cost
grows with what waits unbound, which every push keeps small (a customer linked to no target
waits for ever, and pays its span's unbound rows at each read). `between` then adds in memory.

Snapshots of balances (store.entitlement_usage) let a value compute its current period only. A
refresh drops the snapshots of the (feature, customer)s it changes whose time is after the hour
changed; `FeatureUsage.load(snapshot=…)` checks the rest: unbound rows stored since the
snapshot (ids above its max_usage_id, since ingest takes the usage counter before it stores
rows, ids are handed out in commit order), a change of the customer's subjects, and rows the
cursor has not folded yet.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from decimal import Context, Decimal, Inexact, InvalidOperation, Overflow, localcontext
from typing import Any, TypeVar

from sqlalchemy import (
    JSON,
    String,
    Table,
    and_,
    case,
    cast,
    func,
    literal,
    null,
    or_,
    select,
    union_all,
)
from sqlalchemy.orm import Session
from sqlalchemy.sql.elements import ColumnElement
from sqlalchemy.sql.selectable import Select

from metersync.catalog.meters import Aggregation, Meter
from metersync.store import AttributionRow, CatalogSequenceRow, FeatureRow, Store, UsageRow
from metersync.store.engine import USAGE_SEQUENCE
from metersync.store.entitlement_usage import (
    NOTHING_FOLDED,
    Cell,
    EntitlementSnapshot,
    drop_snapshots_after,
    hour_values,
    lock_cursor,
    read_cursor,
    set_cursor,
    subjects_hash,
    write_hours,
)
from metersync.store.usage_cells import usage_mark

US = 1_000_000
MINUTE_US = 60 * US
HOUR_US = 3600 * US
HOUR_S = 3600
# Changed rows a refresh folds in one transaction (a page ends on a whole change number).
_PAGE_ROWS = 100_000
_RANGES = 200  # hour ranges a statement reads
_SUBJECTS = 500  # subject keys an IN list names
# Sums are exact or they fail: never a silent rounding of money.
_EXACT = Context(prec=200, traps=[Inexact, InvalidOperation, Overflow])
_ZERO = Decimal(0)
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_T = TypeVar("_T")

USAGE: Table = UsageRow.__table__  # type: ignore[attr-defined]
_u = USAGE.c
_a = AttributionRow.__table__.c  # type: ignore[attr-defined]
_q = CatalogSequenceRow.__table__.c  # type: ignore[attr-defined]


@dataclass(frozen=True)
class MeteredFeature:
    """What a metered feature counts: a SUM or COUNT meter, narrowed to some group_by values."""

    id: str
    meter: str
    aggregation: Aggregation
    group_filters: tuple[tuple[str, str], ...] = ()

    def __post_init__(self) -> None:
        if self.aggregation not in (Aggregation.SUM, Aggregation.COUNT):
            raise ValueError(
                f"feature {self.id}: meter {self.meter} is {self.aggregation.value};"
                " entitlements burn SUM and COUNT meters only"
            )
        for name, _ in self.group_filters:
            if '"' in name:
                raise ValueError(f"feature {self.id}: group_by dimension {name!r} has a quote")

    @classmethod
    def of(cls, feature: FeatureRow, meter: Meter) -> MeteredFeature:
        if feature.meter_slug != meter.slug:
            raise ValueError(f"feature {feature.key} counts {feature.meter_slug}, not {meter.slug}")
        return cls(
            id=feature.id,
            meter=meter.slug,
            aggregation=meter.aggregation,
            group_filters=tuple(sorted(feature.group_filters.items())),
        )


# -- the hourly cells ------------------------------------------------------------------------


def refresh_feature_usage(
    store: Store, feature: MeteredFeature, *, page_rows: int = _PAGE_ROWS
) -> int:
    """Fold the feature's changes up to the usage counter now into its hourly cells; returns
    how many cells were recomputed. Each page of changes is one transaction under the cursor's
    lock: the cells of the rows numbered in (cursor, page end] that are bound, recomputed from
    their raw rows, the snapshots after them dropped, the cursor moved."""
    mark = usage_mark(store)
    recomputed = 0
    while True:
        with store.session() as session:
            cursor = lock_cursor(session, feature.id)
            if cursor >= mark:
                return recomputed
            end = _page_end(session, feature, after=cursor, upto=mark, rows=page_rows)
            cells = _changed_cells(session, feature, after=cursor, upto=end)
            write_hours(session, feature.id, _recompute(session, feature, cells))
            earliest: dict[str, int] = {}
            for key, hour in cells:
                earliest[key] = min(hour, earliest.get(key, hour))
            drop_snapshots_after(
                session,
                feature.id,
                [
                    (key, datetime.fromtimestamp(hour, UTC))
                    for key, hour in sorted(earliest.items())
                ],
            )
            set_cursor(session, feature.id, end)
            recomputed += len(cells)


def _page_end(
    session: Session, feature: MeteredFeature, *, after: int, upto: int, rows: int
) -> int:
    """The change number of the `rows`-th row of the meter numbered in (after, upto], or upto:
    an ordered walk of the (meter, seq) index, stopped there."""
    end = session.execute(
        select(_u.seq)
        .where(_u.meter == feature.meter, _u.seq > after, _u.seq <= upto)
        .order_by(_u.seq)
        .offset(rows - 1)
        .limit(1)
    ).scalar()
    return upto if end is None else int(end)


def _changed_cells(
    session: Session, feature: MeteredFeature, *, after: int, upto: int
) -> set[Cell]:
    hour = (_u.time_us // literal(HOUR_US)) * literal(HOUR_S)
    rows = session.execute(
        select(_u.customer_key, hour)
        .where(
            _u.meter == feature.meter,
            _u.seq > after,
            _u.seq <= upto,
            _u.customer_key.is_not(None),
            *_group_match(session, feature),
        )
        .distinct()
    )
    return {(str(key), int(start)) for key, start in rows}


def _recompute(
    session: Session, feature: MeteredFeature, cells: Iterable[Cell]
) -> dict[Cell, Decimal | None]:
    """Each cell's usage from its raw rows (None: it has none), a customer's hours a statement."""
    hours_of: dict[str, list[int]] = defaultdict(list)
    for key, hour in cells:
        hours_of[key].append(hour // HOUR_S)
    values: dict[Cell, Decimal | None] = {}
    for key, hours in sorted(hours_of.items()):
        for hour in hours:
            values[(key, hour * HOUR_S)] = None
        for ranges in _chunks(_ranges(hours), _RANGES):
            for hour, amount in _hour_sums(session, feature, _u.customer_key == key, ranges):
                values[(key, hour * HOUR_S)] = amount
    return values


# -- reading -------------------------------------------------------------------------------------


class FeatureUsage:
    """One customer's usage of one feature over a span [start, end], loaded once (`load`),
    then `between` any whole minutes of it in memory.

    Every figure is P(b) - P(a), where P(x) is the usage from the span's first hour up to x:
    the whole hours before x's hour (cells, and unbound rows), plus the part of x's hour before
    x (read raw, from the nearer end of the hour). So spans add up exactly, whatever the float
    sums round to. `usage_mark`, `max_usage_id` and `subjects_hash` are what a snapshot
    computed from these figures records (store.entitlement_usage.save_snapshot)."""

    def __init__(
        self,
        store: Store,
        feature: MeteredFeature,
        customer_key: str,
        *,
        span: tuple[int, int],
        bound: Sequence[Decimal],
        unbound: Mapping[int, Decimal],
        subjects: tuple[str, ...],
        usage_mark: int,
        max_usage_id: int,
        snapshot_current: bool | None,
    ) -> None:
        self._store = store
        self.feature = feature
        self.customer_key = customer_key
        self._lo, self._hi = span  # minutes since the epoch
        self._first_hour = self._lo // 60
        self._bound = bound  # per hour of the span
        self._unbound = unbound  # hour → usage not bound yet
        prefix = [_ZERO]
        with localcontext(_EXACT):
            for index, value in enumerate(bound):
                prefix.append(prefix[-1] + value + unbound.get(self._first_hour + index, _ZERO))
        self._prefix = prefix
        self._within: dict[int, Decimal] = {}  # minute → usage from its hour's start to it
        self.subjects = subjects
        self.subjects_hash = subjects_hash(subjects)
        self.usage_mark = usage_mark
        self.max_usage_id = max_usage_id
        # Whether the snapshot given to `load` still holds (None: none was given).
        self.snapshot_current = snapshot_current

    @classmethod
    def load(
        cls,
        store: Store,
        feature: MeteredFeature,
        customer_key: str,
        start: datetime,
        end: datetime,
        *,
        cuts: Iterable[datetime] = (),
        snapshot: EntitlementSnapshot | None = None,
    ) -> FeatureUsage:
        """Read the customer's usage over [start, end] (whole minutes, aware) in one read
        snapshot. `cuts`: the other times `between` will be asked about (segment boundaries);
        the parts of hours they cut are read now, in the same snapshot and one statement,
        where any other time costs a read of its own later. `snapshot`: checked against what
        the store holds now, into `snapshot_current`."""
        lo, hi = _minute_of(start), _minute_of(end)
        if hi < lo:
            raise ValueError(f"usage span ends ({end}) before it starts ({start})")
        first_hour, end_hour = lo // 60, -(-hi // 60)
        with store.read_session() as session:
            cursor = read_cursor(session, feature.id)
            subjects = tuple(
                session.execute(
                    select(_a.subject_key)
                    .where(_a.customer_key == customer_key)
                    .order_by(_a.subject_key)
                ).scalars()
            )
            max_id = int(session.execute(select(func.max(_u.id))).scalar() or 0)
            bound = [_ZERO] * (end_hour - first_hour)
            if cursor == NOTHING_FOLDED:
                raw = set(range(first_hour, end_hour))
                unfolded: set[int] | None = None
            else:
                unfolded = _unfolded_hours(session, feature, customer_key, after=cursor)
                raw = {h for h in unfolded if first_hour <= h < end_hour}
                for hour_s, value in hour_values(
                    session,
                    feature.id,
                    customer_key,
                    start=first_hour * HOUR_S,
                    end=end_hour * HOUR_S,
                ):
                    bound[hour_s // HOUR_S - first_hour] = Decimal(value)
            for hour in raw:
                bound[hour - first_hour] = _ZERO
            mine = _u.customer_key == customer_key
            for chunk in _chunks(_ranges(raw), _RANGES):
                for hour, amount in _hour_sums(session, feature, mine, chunk):
                    bound[hour - first_hour] = amount
            unbound: dict[int, Decimal] = {}
            if subjects:
                with localcontext(_EXACT):
                    for chunk in _chunks(subjects, _SUBJECTS):
                        waiting = and_(_u.customer_key.is_(None), _u.subject.in_(chunk))
                        for hour, amount in _hour_sums(
                            session, feature, waiting, [(first_hour, end_hour)]
                        ):
                            unbound[hour] = unbound.get(hour, _ZERO) + amount
            usage = cls(
                store,
                feature,
                customer_key,
                span=(lo, hi),
                bound=bound,
                unbound=unbound,
                subjects=subjects,
                usage_mark=cursor,
                max_usage_id=max_id,
                snapshot_current=None,
            )
            usage._read_within(session, [lo, hi, *map(_minute_of, cuts)])
            if snapshot is not None:
                usage.snapshot_current = _snapshot_holds(
                    session, feature, snapshot, subjects, cursor=cursor, unfolded=unfolded
                )
        return usage

    def between(self, start: datetime, end: datetime) -> Decimal:
        """The customer's usage in [start, end): whole minutes within the loaded span."""
        a, b = _minute_of(start), _minute_of(end)
        if not self._lo <= a <= b <= self._hi:
            raise ValueError(
                f"usage asked for [{start}, {end}), outside the span loaded or reversed"
            )
        if a == b:
            return _ZERO
        with localcontext(_EXACT):
            return self._upto(b) - self._upto(a)

    def _upto(self, minute: int) -> Decimal:
        """P(minute): the usage from the span's first hour up to `minute`."""
        hour = minute // 60
        whole = self._prefix[hour - self._first_hour]
        if not minute % 60:
            return whole
        within = self._within.get(minute)
        if within is None:
            # A time no cut given to `load` named: read now (a read of its own, so of the
            # store as it is now).
            with self._store.read_session() as session:
                self._read_within(session, [minute])
            within = self._within[minute]
        return whole + within

    def _read_within(self, session: Session, minutes: Iterable[int]) -> None:
        """For each minute inside an hour of the span: the usage from the hour's start to it,
        one statement for all. The nearer end of the hour is read: the part before the
        minute, or the hour's figure less the part after it."""
        wanted = sorted(
            {m for m in minutes if m % 60 and self._lo <= m <= self._hi and m not in self._within}
        )
        if not wanted:
            return
        mine = _u.customer_key == self.customer_key
        parts: list[tuple[int, ColumnElement[bool], int, int]] = []
        for index, minute in enumerate(wanted):
            hour = minute // 60
            early = minute % 60 <= 30
            lo, hi = (hour * 60, minute) if early else (minute, hour * 60 + 60)
            parts.append((index, mine, lo, hi))
            if self.subjects and hour in self._unbound:
                for chunk in _chunks(self.subjects, _SUBJECTS):
                    waiting = and_(_u.customer_key.is_(None), _u.subject.in_(chunk))
                    parts.append((index, waiting, lo, hi))
        sums = _span_sums(session, self.feature, parts)
        with localcontext(_EXACT):
            for index, minute in enumerate(wanted):
                hour = minute // 60
                part = sums.get(index, _ZERO)
                if minute % 60 > 30:
                    total = self._bound[hour - self._first_hour]
                    part = total + self._unbound.get(hour, _ZERO) - part
                self._within[minute] = part


def _snapshot_holds(
    session: Session,
    feature: MeteredFeature,
    snapshot: EntitlementSnapshot,
    subjects: tuple[str, ...],
    *,
    cursor: int,
    unfolded: set[int] | None,
) -> bool:
    """A snapshot the refreshes left in place still holds unless the customer's subjects
    changed, rows before it wait for a refresh, or unbound rows before it were stored since."""
    if unfolded is None or cursor < snapshot.usage_mark:
        return False
    if snapshot.subjects_hash != subjects_hash(subjects):
        return False
    at_us = (snapshot.at - _EPOCH) // timedelta(microseconds=1)
    if any(hour * HOUR_US < at_us for hour in unfolded):
        return False
    for chunk in _chunks(subjects, _SUBJECTS):
        newer = session.execute(
            select(_u.id)
            .where(
                _u.customer_key.is_(None),
                _u.id > snapshot.max_usage_id,
                _u.subject.in_(chunk),
                _u.meter == feature.meter,
                _u.time_us < at_us,
                *_group_match(session, feature),
            )
            .limit(1)
        ).first()
        if newer is not None:
            return False
    return True


# -- SQL -----------------------------------------------------------------------------------------


def _amount(feature: MeteredFeature) -> Any:
    return func.count() if feature.aggregation is Aggregation.COUNT else func.sum(_u.value)


def _group_match(session: Session, feature: MeteredFeature) -> list[ColumnElement[bool]]:
    """The feature's group_by filters as SQL on the row's `groups` JSON text."""
    out: list[ColumnElement[bool]] = []
    postgres = session.get_bind().dialect.name == "postgresql"
    for name, value in feature.group_filters:
        found: ColumnElement[Any]
        if postgres:
            found = cast(_u.groups, JSON).op("->>", return_type=String())(literal(name, String()))
        else:
            path = literal(f'$."{name}"', String())
            kind = func.json_type(_u.groups, path)
            found = case(
                (kind == "text", func.json_extract(_u.groups, path)),
                (kind == "null", null()),
                else_=_u.groups.op("->", return_type=String())(path),
            )
        out.append(found == literal(value, String()))
    return out


def _hour_sums(
    session: Session,
    feature: MeteredFeature,
    whose: ColumnElement[bool],
    hour_ranges: Sequence[tuple[int, int]],
) -> list[tuple[int, Decimal]]:
    """(hour, usage) of the rows `whose` selects in the hour ranges [from, to) (hours since
    the epoch), on the aggregate index: its time ranges."""
    if not hour_ranges:
        return []
    within = or_(
        *(and_(_u.time_us >= lo * HOUR_US, _u.time_us < hi * HOUR_US) for lo, hi in hour_ranges)
    )
    hour = (_u.time_us // literal(HOUR_US)).label("hour")
    query: Select[Any] = (
        select(hour, _amount(feature))
        .where(_u.meter == feature.meter, whose, within, *_group_match(session, feature))
        .group_by(hour)
    )
    return [(int(h), _decimal(amount)) for h, amount in session.execute(query).all()]


def _span_sums(
    session: Session,
    feature: MeteredFeature,
    parts: Sequence[tuple[int, ColumnElement[bool], int, int]],
) -> dict[int, Decimal]:
    """For (key, whose, from, to) parts: the usage of the rows `whose` selects in the minutes
    [from, to), added up by key. One statement (UNION ALL), each part a range of an index."""
    groups = _group_match(session, feature)
    selects = [
        select(literal(key).label("part"), _amount(feature).label("amount")).where(
            _u.meter == feature.meter,
            whose,
            _u.time_us >= lo * MINUTE_US,
            _u.time_us < hi * MINUTE_US,
            *groups,
        )
        for key, whose, lo, hi in parts
    ]
    out: dict[int, Decimal] = {}
    with localcontext(_EXACT):
        for chunk in _chunks(selects, _RANGES):
            for key, amount in session.execute(union_all(*chunk)).all():
                out[int(key)] = out.get(int(key), _ZERO) + _decimal(amount)
    return out


def _unfolded_hours(
    session: Session, feature: MeteredFeature, customer_key: str, *, after: int
) -> set[int]:
    """Hours (since the epoch) of the customer's bound rows numbered past the cursor: their
    cells may be behind, so they are read raw. The meter's rows numbered past the cursor, in
    order, on the (meter, seq) index: few after a refresh. The range is closed by the counter
    (no row visible is numbered above it), and the customer is picked here rather than in
    SQL: an open range, or a condition on the customer, had SQLite walk the customer's whole
    history on the aggregate index instead."""
    upto = session.execute(select(_q.value).where(_q.name == USAGE_SEQUENCE)).scalar_one()
    rows = session.execute(
        select(_u.customer_key, _u.time_us)
        .where(
            _u.meter == feature.meter,
            _u.seq > after,
            _u.seq <= upto,
            *_group_match(session, feature),
        )
        .order_by(_u.seq)
    )
    return {int(t) // HOUR_US for key, t in rows if key == customer_key}


# -- small pieces --------------------------------------------------------------------------------


def _decimal(amount: Any) -> Decimal:
    """A database SUM or COUNT as Decimal: a float by its shortest text, so 0.1 is 0.1."""
    if amount is None:
        return _ZERO
    if isinstance(amount, float):
        # A whole number as one (278, not the float's text 278.0): figures print as given.
        return Decimal(int(amount)) if amount.is_integer() else Decimal(repr(amount))
    return Decimal(amount)


def _minute_of(moment: datetime) -> int:
    """Minutes since the epoch of an aware, whole-minute time."""
    if moment.tzinfo is None:
        raise ValueError(f"naive datetime {moment.isoformat()} given; use an aware UTC time")
    if moment.second or moment.microsecond:
        raise ValueError(f"{moment.isoformat()} is not a whole minute")
    return int(moment.timestamp()) // 60


def _ranges(hours: Iterable[int]) -> list[tuple[int, int]]:
    """Sorted hours as [from, to) runs of consecutive hours."""
    out: list[tuple[int, int]] = []
    for hour in sorted(hours):
        if out and out[-1][1] == hour:
            out[-1] = (out[-1][0], hour + 1)
        else:
            out.append((hour, hour + 1))
    return out


def _chunks(items: Sequence[_T], size: int) -> Iterator[Sequence[_T]]:
    for start in range(0, len(items), size):
        yield items[start : start + size]
