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
nearer side of it, raw. Two statements, built once per shape and given their values as bind
parameters (the cursor, the counter, the subjects and the rows past the cursor; then all the
rest, one UNION ALL), in a read session of its own or the caller's. The unbound rows are read
live, so a read's cost grows with what waits unbound, which every push keeps small (a customer
linked to no target waits for ever, and pays its span's unbound rows at each read). `between`
then adds in memory.

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
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from decimal import Context, Decimal, Inexact, InvalidOperation, Overflow, localcontext
from functools import lru_cache
from typing import Any, TypeVar

from sqlalchemy import (
    JSON,
    BigInteger,
    Connection,
    Float,
    Integer,
    String,
    Table,
    Text,
    and_,
    bindparam,
    case,
    cast,
    func,
    literal_column,
    null,
    or_,
    select,
    union_all,
)
from sqlalchemy.orm import Session
from sqlalchemy.sql.elements import ColumnElement
from sqlalchemy.sql.selectable import CompoundSelect, Select

from metersync.catalog.meters import Aggregation, Meter
from metersync.store import AttributionRow, CatalogSequenceRow, FeatureRow, Store, UsageRow
from metersync.store.engine import USAGE_SEQUENCE
from metersync.store.entitlement_usage import (
    NOTHING_FOLDED,
    Cell,
    EntitlementSnapshot,
    cursor_of,
    drop_snapshots_after,
    hour_cells,
    lock_cursor,
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
    postgres = _is_postgres(session)
    rows = session.execute(
        select(_u.customer_key, _HOUR)
        .where(
            _u.meter == feature.meter,
            _u.seq > after,
            _u.seq <= upto,
            _u.customer_key.is_not(None),
            *_group_match(postgres, len(feature.group_filters)),
        )
        .distinct(),
        _group_params(postgres, feature),
    )
    return {(str(key), int(hour) * HOUR_S) for key, hour in rows}


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
        session: Session | None = None,
    ) -> FeatureUsage:
        """Read the customer's usage over [start, end] (whole minutes, aware) in one read
        snapshot. `cuts`: the other times `between` will be asked about (segment boundaries);
        the parts of hours they cut are read now, in the same snapshot, where any other time
        costs a read of its own later. `snapshot`: checked against what the store holds now,
        into `snapshot_current`. `session`: an open read session to read in, so that several
        loads read one snapshot (by default, a read session of its own).

        Two statements, each built once per shape and given its values as parameters: the
        cursor, the usage counter, the largest usage id, the customer's subjects and the rows
        numbered past the cursor; then the span's cells, the hours read raw, the unbound rows,
        the parts of hours cut and the snapshot's check, in one UNION ALL."""
        lo, hi = _minute_of(start), _minute_of(end)
        if hi < lo:
            raise ValueError(f"usage span ends ({end}) before it starts ({start})")
        minutes = [lo, hi, *map(_minute_of, cuts)]
        if session is None:
            with store.read_session() as own:
                return cls._load(store, own, feature, customer_key, lo, hi, minutes, snapshot)
        return cls._load(store, session, feature, customer_key, lo, hi, minutes, snapshot)

    @classmethod
    def _load(
        cls,
        store: Store,
        session: Session,
        feature: MeteredFeature,
        customer_key: str,
        lo: int,
        hi: int,
        minutes: list[int],
        snapshot: EntitlementSnapshot | None,
    ) -> FeatureUsage:
        first_hour, end_hour = lo // 60, -(-hi // 60)
        connection = session.connection()
        postgres = connection.dialect.name == "postgresql"
        params: dict[str, Any] = {
            "meter": feature.meter,
            "customer": customer_key,
            "feature_id": feature.id,
            "usage_sequence": USAGE_SEQUENCE,
            **_group_params(postgres, feature),
        }
        cursor, max_id, subjects, changed = NOTHING_FOLDED, 0, [], set()
        head = connection.execute(_head_statement(postgres, len(feature.group_filters)), params)
        for kind, key, a, c in head:
            if kind == _HEAD:
                cursor = NOTHING_FOLDED if a is None else int(a)
                max_id = int(c or 0)
            elif kind == _SUBJECT:
                subjects.append(key)
            elif key == customer_key:
                changed.add(int(a) // HOUR_US)
        subjects.sort()
        unfolded: set[int] | None
        if cursor == NOTHING_FOLDED:
            unfolded = None
            raw = set(range(first_hour, end_hour))
        else:
            unfolded = changed
            raw = {h for h in unfolded if first_hour <= h < end_hour}

        holds = False
        if snapshot is not None:
            holds = _snapshot_may_hold(snapshot, subjects, cursor=cursor, unfolded=unfolded)
        wanted = _cut_minutes(minutes, lo, hi)
        read = _Read(
            postgres=postgres,
            count=feature.aggregation is Aggregation.COUNT,
            groups=len(feature.group_filters),
            cells=unfolded is not None,
            raw=_ranges(raw),
            unbound=bool(subjects),
            parts=[(minute, bool(subjects)) for minute in wanted],
            newer=holds and bool(subjects),
        )
        params.update(
            cells_from=first_hour * HOUR_S,
            cells_to=end_hour * HOUR_S,
            span_from=first_hour * HOUR_US,
            span_to=end_hour * HOUR_US,
        )
        if snapshot is not None:
            params.update(
                snapshot_max_id=snapshot.max_usage_id,
                snapshot_at=(snapshot.at - _EPOCH) // timedelta(microseconds=1),
            )
        sums = read.run(connection, params)

        bound = [_ZERO] * (end_hour - first_hour)
        for hour_s, value in sums.cells:
            if hour_s // HOUR_S not in raw:
                bound[hour_s // HOUR_S - first_hour] = Decimal(value)
        for hour, amount in sums.raw.items():
            bound[hour - first_hour] = amount
        usage = cls(
            store,
            feature,
            customer_key,
            span=(lo, hi),
            bound=bound,
            unbound=sums.unbound,
            subjects=tuple(subjects),
            usage_mark=cursor,
            max_usage_id=max_id,
            snapshot_current=None,
        )
        usage._take_within(wanted, sums.parts)
        if snapshot is not None:
            usage.snapshot_current = holds and not sums.newer
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
        one statement for all (`_take_within`). The unbound rows are read for the hours that
        had some when loaded."""
        wanted = [m for m in _cut_minutes(minutes, self._lo, self._hi) if m not in self._within]
        if not wanted:
            return
        connection = session.connection()
        postgres = connection.dialect.name == "postgresql"
        read = _Read(
            postgres=postgres,
            count=self.feature.aggregation is Aggregation.COUNT,
            groups=len(self.feature.group_filters),
            parts=[
                (minute, bool(self.subjects) and minute // 60 in self._unbound) for minute in wanted
            ],
        )
        params = {
            "meter": self.feature.meter,
            "customer": self.customer_key,
            **_group_params(postgres, self.feature),
        }
        self._take_within(wanted, read.run(connection, params).parts)

    def _take_within(self, wanted: Sequence[int], parts: Mapping[int, Decimal]) -> None:
        """The usage from each wanted minute's hour start to it, from the parts read (the
        nearer end of the hour: the part before the minute, or the hour's figure less the
        part after it; `_part_span`), by the minute's index in `wanted`."""
        with localcontext(_EXACT):
            for index, minute in enumerate(wanted):
                hour = minute // 60
                part = parts.get(index, _ZERO)
                if minute % 60 > 30:
                    total = self._bound[hour - self._first_hour]
                    part = total + self._unbound.get(hour, _ZERO) - part
                self._within[minute] = part


def _cut_minutes(minutes: Iterable[int], lo: int, hi: int) -> list[int]:
    """The minutes inside an hour (not on its start) within [lo, hi], sorted, once each."""
    return sorted({m for m in minutes if m % 60 and lo <= m <= hi})


def _part_span(minute: int) -> tuple[int, int]:
    """The minutes [from, to) of the nearer end of the minute's hour: before it, or after."""
    hour = minute // 60
    return (hour * 60, minute) if minute % 60 <= 30 else (minute, hour * 60 + 60)


def _snapshot_may_hold(
    snapshot: EntitlementSnapshot,
    subjects: Sequence[str],
    *,
    cursor: int,
    unfolded: set[int] | None,
) -> bool:
    """A snapshot the refreshes left in place still holds unless the customer's subjects
    changed, rows before it wait for a refresh, or unbound rows before it were stored since:
    all but the last (a read: `_Read.newer`)."""
    if unfolded is None or cursor < snapshot.usage_mark:
        return False
    if snapshot.subjects_hash != subjects_hash(subjects):
        return False
    at_us = (snapshot.at - _EPOCH) // timedelta(microseconds=1)
    return not any(hour * HOUR_US < at_us for hour in unfolded)


# -- SQL -----------------------------------------------------------------------------------------
#
# The reads' statements are built once per shape (the dialect, the aggregation, how many group
# filters, which parts) and take every value as a bind parameter, so a read costs no statement
# construction, and SQLAlchemy's cache of compiled statements serves them.


def _amount(feature: MeteredFeature) -> Any:
    return func.count() if feature.aggregation is Aggregation.COUNT else func.sum(_u.value)


@lru_cache(maxsize=32)
def _group_match(postgres: bool, count: int) -> tuple[ColumnElement[bool], ...]:
    """`count` group_by filters as SQL on the row's `groups` JSON text, the dimension and the
    value bind parameters (`_group_params`)."""
    out: list[ColumnElement[bool]] = []
    for index in range(count):
        key = bindparam(f"group_key_{index}", type_=String())
        value = bindparam(f"group_value_{index}", type_=String())
        found: ColumnElement[Any]
        if postgres:
            found = cast(_u.groups, JSON).op("->>", return_type=String())(key)
        else:
            kind = func.json_type(_u.groups, key)
            found = case(
                (kind == "text", func.json_extract(_u.groups, key)),
                (kind == "null", null()),
                else_=_u.groups.op("->", return_type=String())(key),
            )
        out.append(found == value)
    return tuple(out)


def _group_params(postgres: bool, feature: MeteredFeature) -> dict[str, str]:
    """The values of `_group_match`'s parameters for the feature's filters."""
    params: dict[str, str] = {}
    for index, (name, value) in enumerate(feature.group_filters):
        params[f"group_key_{index}"] = name if postgres else f'$."{name}"'
        params[f"group_value_{index}"] = value
    return params


def _is_postgres(session: Session) -> bool:
    return session.get_bind().dialect.name == "postgresql"


# Row kinds of the reads' UNION ALLs.
_HEAD, _SUBJECT, _CHANGED = 0, 1, 2
_CELL, _RAW, _UNBOUND, _PART, _NEWER = 0, 1, 2, 3, 4
_PARTS = 100  # parts of hours a statement reads (two selects each, with unbound rows)
_HOUR = (_u.time_us // literal_column(str(HOUR_US), BigInteger())).label("hour")


def _kind(kind: int) -> ColumnElement[int]:
    return literal_column(str(kind), Integer())


@lru_cache(maxsize=32)
def _head_statement(postgres: bool, groups: int) -> CompoundSelect[*tuple[Any, ...]]:
    """(kind, key, a, c): the feature's cursor (a, NULL: none), and the largest usage id (c);
    the customer's subjects (key); the rows of the meter numbered past the cursor, up to the
    usage counter (their customer, and time in a), unless nothing is folded yet. The rows past
    the cursor are walked on the (meter, seq) index, the range closed by the counter (no row
    visible is numbered above it), and the customer picked by the caller: a condition on the
    customer, or an open range, had SQLite walk the customer's whole history on the aggregate
    index instead."""
    cursor = cursor_of(bindparam("feature_id", type_=String()))
    counter = select(_q.value).where(_q.name == bindparam("usage_sequence")).scalar_subquery()
    no_key, no_number = cast(null(), String()), cast(null(), BigInteger())
    return union_all(
        select(
            _kind(_HEAD),
            no_key,
            cursor,
            select(func.max(_u.id)).scalar_subquery(),
        ),
        select(_kind(_SUBJECT), _a.subject_key, no_number, no_number).where(
            _a.customer_key == bindparam("customer")
        ),
        select(_kind(_CHANGED), _u.customer_key, _u.time_us, no_number).where(
            _u.meter == bindparam("meter"),
            _u.seq > cursor,
            _u.seq <= counter,
            cursor > literal_column(str(NOTHING_FOLDED), BigInteger()),
            *_group_match(postgres, groups),
        ),
    )


@dataclass(frozen=True)
class _Shape:
    """Which parts a body statement has: see `_body_statement`."""

    postgres: bool
    count: bool
    groups: int
    cells: bool
    raw: int  # hour ranges read raw
    unbound: bool
    parts: tuple[bool, ...]  # for each: whether the unbound rows too
    newer: bool


@lru_cache(maxsize=256)
def _body_statement(shape: _Shape) -> CompoundSelect[*tuple[Any, ...]]:
    """(kind, hour, value, amount): the customer's cells in [cells_from, cells_to) seconds
    (hour in seconds, the value as text); the bound rows' usage in the hour ranges
    [raw_from_i, raw_to_i) microseconds, by hour; the unbound rows' of the customer's subjects
    in [span_from, span_to), by hour; each part's bound (and unbound) usage in
    [part_from_i, part_to_i), by part (its index in hour); whether an unbound row of the
    customer's subjects with an id above snapshot_max_id is before snapshot_at (amount 1).
    Each select is one range of an index."""
    groups = _group_match(shape.postgres, shape.groups)
    amount = func.count() if shape.count else func.sum(_u.value)
    no_text = cast(null(), Text())
    no_amount = cast(null(), BigInteger() if shape.count else Float())
    customer = bindparam("customer", type_=String())
    meter = _u.meter == bindparam("meter")
    mine = _u.customer_key == customer
    waiting = and_(
        _u.customer_key.is_(None),
        _u.subject.in_(select(_a.subject_key).where(_a.customer_key == customer)),
    )
    selects: list[Select[*tuple[Any, ...]]] = []
    if shape.cells:
        selects.append(
            hour_cells(
                bindparam("feature_id", type_=String()),
                customer,
                bindparam("cells_from", type_=BigInteger()),
                bindparam("cells_to", type_=BigInteger()),
                _kind(_CELL),
            ).add_columns(no_amount)
        )
    if shape.raw:
        within = or_(
            *(
                and_(
                    _u.time_us >= bindparam(f"raw_from_{index}"),
                    _u.time_us < bindparam(f"raw_to_{index}"),
                )
                for index in range(shape.raw)
            )
        )
        selects.append(
            select(_kind(_RAW), _HOUR, no_text, amount)
            .where(meter, mine, within, *groups)
            .group_by(_HOUR)
        )
    if shape.unbound:
        selects.append(
            select(_kind(_UNBOUND), _HOUR, no_text, amount)
            .where(
                meter,
                waiting,
                _u.time_us >= bindparam("span_from"),
                _u.time_us < bindparam("span_to"),
                *groups,
            )
            .group_by(_HOUR)
        )
    for index, with_unbound in enumerate(shape.parts):
        for whose in (mine, waiting) if with_unbound else (mine,):
            selects.append(
                select(_kind(_PART), _kind(index), no_text, amount).where(
                    meter,
                    whose,
                    _u.time_us >= bindparam(f"part_from_{index}"),
                    _u.time_us < bindparam(f"part_to_{index}"),
                    *groups,
                )
            )
    if shape.newer:
        newer = (
            select(_u.id)
            .where(
                _u.customer_key.is_(None),
                _u.id > bindparam("snapshot_max_id"),
                _u.subject.in_(select(_a.subject_key).where(_a.customer_key == customer)),
                meter,
                _u.time_us < bindparam("snapshot_at"),
                *groups,
            )
            .limit(1)
            .subquery()
        )
        selects.append(
            select(_kind(_NEWER), cast(null(), BigInteger()), no_text, func.count()).select_from(
                newer
            )
        )
    return union_all(*selects)


@dataclass
class _Sums:
    """What a `_Read` found."""

    cells: list[tuple[int, str]] = field(default_factory=list)  # (hour start s, value)
    raw: dict[int, Decimal] = field(default_factory=dict)  # hour → bound usage
    unbound: dict[int, Decimal] = field(default_factory=dict)  # hour → unbound usage
    parts: dict[int, Decimal] = field(default_factory=dict)  # part → usage
    newer: bool = False


@dataclass
class _Read:
    """A load's reads after its head, as few statements as the limits allow: the first has
    the cells, the unbound rows, the snapshot's check, the first `_RANGES` raw hour ranges
    and the first `_PARTS` parts; more ranges and parts take statements of their own. `parts`:
    (minute, whether the unbound rows too), each read from the nearer end of its hour."""

    postgres: bool
    count: bool
    groups: int
    cells: bool = False
    raw: Sequence[tuple[int, int]] = ()
    unbound: bool = False
    parts: Sequence[tuple[int, bool]] = ()
    newer: bool = False

    def run(self, connection: Connection, params: dict[str, Any]) -> _Sums:
        sums = _Sums()
        raw_chunks = list(_chunks(self.raw, _RANGES))
        part_chunks = list(_chunks(self.parts, _PARTS))
        statements = max(len(raw_chunks), len(part_chunks), 1)
        for number in range(statements):
            first = number == 0
            ranges = raw_chunks[number] if number < len(raw_chunks) else ()
            parts = part_chunks[number] if number < len(part_chunks) else ()
            shape = _Shape(
                postgres=self.postgres,
                count=self.count,
                groups=self.groups,
                cells=first and self.cells,
                raw=len(ranges),
                unbound=first and self.unbound,
                parts=tuple(with_unbound for _, with_unbound in parts),
                newer=first and self.newer,
            )
            if not (shape.cells or shape.raw or shape.unbound or shape.parts or shape.newer):
                continue
            values = dict(params)
            for index, (lo, hi) in enumerate(ranges):
                values[f"raw_from_{index}"] = lo * HOUR_US
                values[f"raw_to_{index}"] = hi * HOUR_US
            for index, (minute, _) in enumerate(parts):
                lo, hi = _part_span(minute)
                values[f"part_from_{index}"] = lo * MINUTE_US
                values[f"part_to_{index}"] = hi * MINUTE_US
            offset = number * _PARTS
            with localcontext(_EXACT):
                for kind, hour, value, amount in connection.execute(_body_statement(shape), values):
                    if kind == _CELL:
                        sums.cells.append((int(hour), value))
                    elif kind == _RAW:
                        sums.raw[int(hour)] = _decimal(amount)
                    elif kind == _UNBOUND:
                        sums.unbound[int(hour)] = _decimal(amount)
                    elif kind == _PART:
                        key = offset + int(hour)
                        sums.parts[key] = sums.parts.get(key, _ZERO) + _decimal(amount)
                    else:
                        sums.newer = bool(amount)
        return sums


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
    postgres = _is_postgres(session)
    query: Select[Any] = (
        select(_HOUR, _amount(feature))
        .where(
            _u.meter == feature.meter,
            whose,
            within,
            *_group_match(postgres, len(feature.group_filters)),
        )
        .group_by(_HOUR)
    )
    rows = session.execute(query, _group_params(postgres, feature)).all()
    return [(int(h), _decimal(amount)) for h, amount in rows]


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
