"""OpenMeter's meter query over the emulator's events (GET /api/v1/meters/{meter}/query).

Events of the meter's event type are aggregated per tumbling window (aligned to the window size
in `windowTimeZone`, UTC by default) and per group: subject, customer, and the meter's own
groupBy values. Windows without events are left out. `from` is inclusive and `to` exclusive:
the spec's text calls `to` inclusive, but its windows are [start, end) and OpenMeter's query
engine filters event time < to, which is what a client paging through windows relies on.
Neither has to be aligned to the window size (the spec asks for no alignment): they bound
event times, the windows stay aligned.
"""

from __future__ import annotations

import bisect
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta, tzinfo
from typing import Any
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from metersync.testing._openmeter_store import (
    BadRequest,
    Bucket,
    Meter,
    Store,
    from_us,
    parse_time,
    rfc3339,
    to_us,
)

WINDOW_SIZES = ("MINUTE", "HOUR", "DAY", "MONTH")
FIXED_US = {"MINUTE": 60_000_000, "HOUR": 3_600_000_000, "DAY": 86_400_000_000}
MINUTE_US = FIXED_US["MINUTE"]
MAX_FILTER = 100
# The bounds of a query without windows (one row per group for the whole period).
UNBOUNDED = (-(2**62), 2**62)
RESERVED = ("subject", "customer_id")


@dataclass(frozen=True)
class MeterQuery:
    from_us: int | None = None
    to_us: int | None = None
    window_size: str | None = None
    time_zone: str = "UTC"
    subjects: tuple[str, ...] = ()
    customer_ids: tuple[str, ...] = ()
    group_by: tuple[str, ...] = ()
    filter_group_by: dict[str, str] = field(default_factory=dict)

    @classmethod
    def from_params(cls, params: dict[str, list[str]]) -> MeterQuery:
        """From the query string (parse_qs); a bad value is a 400 naming its parameter."""

        def one(name: str) -> str | None:
            values = params.get(name)
            return values[0] if values else None

        start, end = one("from"), one("to")
        from_value = None if start is None else parse_time(start, "from")
        to_value = None if end is None else parse_time(end, "to")
        if from_value is not None and to_value is not None and from_value >= to_value:
            raise BadRequest("invalid from: from must be before to")
        window_size = one("windowSize")
        if window_size is not None and window_size not in WINDOW_SIZES:
            raise BadRequest(f"invalid windowSize {window_size!r}; one of {WINDOW_SIZES}")
        customer_ids = tuple(params.get("filterCustomerId", ()))
        if len(customer_ids) > MAX_FILTER:
            raise BadRequest(f"invalid filterCustomerId: at most {MAX_FILTER} customers")
        filter_group_by = {
            name[len("filterGroupBy[") : -1]: values[0]
            for name, values in params.items()
            if name.startswith("filterGroupBy[") and name.endswith("]") and values
        }
        return cls(
            from_us=from_value,
            to_us=to_value,
            window_size=window_size,
            time_zone=one("windowTimeZone") or "UTC",
            subjects=tuple(params.get("subject", ())),
            customer_ids=customer_ids,
            group_by=tuple(dict.fromkeys(params.get("groupBy", ()))),
            filter_group_by=filter_group_by,
        )


class Windows:
    """The tumbling window an event time falls in, as (start, end) microseconds."""

    def __init__(self, size: str | None, zone: tzinfo) -> None:
        self.size = size
        self.zone = zone
        self.fixed = FIXED_US.get(size or "") if zone is UTC else None

    def of(self, t: int) -> tuple[int, int]:
        if self.size is None:
            return UNBOUNDED
        if self.fixed is not None:
            start = t - t % self.fixed
            return start, start + self.fixed
        local = from_us(t).astimezone(self.zone)
        if self.size in ("MINUTE", "HOUR"):
            truncated = local.replace(second=0, microsecond=0)
            if self.size == "HOUR":
                truncated = truncated.replace(minute=0)
            begin = to_us(truncated)
            return begin, begin + FIXED_US[self.size]
        first = local.replace(hour=0, minute=0, second=0, microsecond=0)
        if self.size == "DAY":
            after = first.date() + timedelta(days=1)
            following = datetime(after.year, after.month, after.day, tzinfo=self.zone)
        else:
            first = first.replace(day=1)
            year, month = divmod(first.year * 12 + first.month, 12)  # the next month, 0-based
            following = datetime(year, month + 1, 1, tzinfo=self.zone)
        return to_us(first), to_us(following)


def _zone(name: str) -> tzinfo:
    if name.upper() in ("UTC", "ETC/UTC", "Z"):
        return UTC
    try:
        return ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError):
        raise BadRequest(f"invalid windowTimeZone {name!r}: not an IANA time zone") from None


# -- aggregation ---------------------------------------------------------------------------------
# A window's value is built from partial states (one per subject's slice of events), merged
# across subjects that share a group: a sum, a count, a (sum, count) for AVG, a set for
# UNIQUE_COUNT, and (time, ingestion order, value) for LATEST.

Order = Callable[[int], tuple[int, int]]


def _partial(aggregation: str, values: Sequence[Any], count: int, order: Order) -> Any:
    """The state of `count` events whose values are `values` (None: no usable value), or None
    when none of them counts for the meter."""
    if aggregation == "COUNT":
        return count or None
    if values.count(None) == len(values):
        return None
    if aggregation == "SUM":
        return float(sum(filter(None, values)))  # filter(None) drops the Nones (and zeros)
    if aggregation == "UNIQUE_COUNT":
        return {v for v in values if v is not None}
    if aggregation == "LATEST":
        last = max(k for k, v in enumerate(values) if v is not None)
        return (*order(last), values[last])
    numbers = [v for v in values if v is not None]
    if aggregation == "MIN":
        return min(numbers)
    if aggregation == "MAX":
        return max(numbers)
    return (sum(numbers), len(numbers))  # AVG


def _merge(aggregation: str, a: Any, b: Any) -> Any:
    if aggregation in ("SUM", "COUNT"):
        return a + b
    if aggregation == "MIN":
        return min(a, b)
    if aggregation == "MAX":
        return max(a, b)
    if aggregation == "AVG":
        return (a[0] + b[0], a[1] + b[1])
    if aggregation == "UNIQUE_COUNT":
        return a | b
    return max(a, b, key=lambda state: state[:2])  # LATEST


def _final(aggregation: str, state: Any) -> float:
    if aggregation == "AVG":
        return float(state[0] / state[1])
    if aggregation == "UNIQUE_COUNT":
        return float(len(state))
    if aggregation == "LATEST":
        return float(state[2])
    return float(state)


# -- the query -----------------------------------------------------------------------------------

GroupKey = tuple[int, int, str | None, str | None, tuple[str | None, ...]]


class _Groups:
    """Window × subject × customer × groupBy values → [state, first time, last time]."""

    def __init__(self, aggregation: str) -> None:
        self.aggregation = aggregation
        self.entries: dict[GroupKey, list[Any]] = {}

    def add(self, key: GroupKey, state: Any, first: int, last: int) -> None:
        if state is None:
            return
        entry = self.entries.get(key)
        if entry is None:
            self.entries[key] = [state, first, last]
        else:
            entry[0] = _merge(self.aggregation, entry[0], state)
            entry[1] = min(entry[1], first)
            entry[2] = max(entry[2], last)


def run_query(store: Store, meter: Meter, query: MeterQuery) -> dict[str, Any]:
    windows = Windows(query.window_size, _zone(query.time_zone))
    meter_keys = [k for k in query.group_by if k not in RESERVED]
    for name, keys in (("groupBy", meter_keys), ("filterGroupBy", list(query.filter_group_by))):
        unknown = [k for k in keys if k not in meter.group_by]
        if unknown:
            raise BadRequest(f"invalid {name}: {unknown[0]} is not a groupBy of {meter.slug}")
    by_subject = "subject" in query.group_by
    by_customer = bool(query.customer_ids) or "customer_id" in query.group_by

    # Usage is attributed to customers at query time, by their usageAttribution now, as
    # OpenMeter does: moving a subject to another customer moves its past usage too.
    owner: dict[str, str] = {}
    if query.customer_ids:
        for customer_id in query.customer_ids:
            customer = store.customers.get(customer_id)
            if customer is None:
                raise BadRequest(f"invalid filterCustomerId: customer not found: {customer_id}")
            for key in customer.subject_keys:
                owner.setdefault(key, customer.id)
    elif by_customer:
        owner = {key: c.id for c in store.live_customers() for key in c.subject_keys}

    buckets = store.buckets.get(meter.event_type, {})
    subjects = list(owner) if query.customer_ids else list(buckets)
    if query.subjects:
        wanted = set(query.subjects)
        subjects = [s for s in subjects if s in wanted]
    kind = {"COUNT": None, "UNIQUE_COUNT": "text"}.get(meter.aggregation, "number")

    groups = _Groups(meter.aggregation)
    for subject in subjects:
        bucket = buckets.get(subject)
        if bucket is None:
            continue
        times = bucket.times
        lo = 0 if query.from_us is None else bisect.bisect_left(times, query.from_us)
        hi = len(times) if query.to_us is None else bisect.bisect_left(times, query.to_us)
        if lo >= hi:
            continue
        values: list[Any] = []
        if kind is not None:
            assert meter.value_property is not None
            values = bucket.column(meter.value_property, kind)
        ident = (subject if by_subject else None, owner.get(subject) if by_customer else None)
        if meter_keys or query.filter_group_by:
            _grouped(groups, windows, meter, query, meter_keys, bucket, values, ident, lo, hi)
        else:
            _contiguous(groups, windows, meter, bucket, values, ident, lo, hi)

    rows = []
    for (start, end, row_subject, row_customer, group_values), (state, first, last) in sorted(
        groups.entries.items(), key=lambda item: _row_order(item[0])
    ):
        if query.window_size is None:
            start = query.from_us if query.from_us is not None else first - first % MINUTE_US
            end = query.to_us if query.to_us is not None else last - last % MINUTE_US + MINUTE_US
        row: dict[str, Any] = {
            "value": _final(meter.aggregation, state),
            "windowStart": rfc3339(start),
            "windowEnd": rfc3339(end),
            "subject": row_subject,
        }
        if row_customer is not None:
            row["customerId"] = row_customer
        row["groupBy"] = dict(zip(meter_keys, group_values, strict=True))
        rows.append(row)
    result: dict[str, Any] = {}
    if query.from_us is not None:
        result["from"] = rfc3339(query.from_us)
    if query.to_us is not None:
        result["to"] = rfc3339(query.to_us)
    if query.window_size is not None:
        result["windowSize"] = query.window_size
    result["data"] = rows
    return result


def _contiguous(
    groups: _Groups,
    windows: Windows,
    meter: Meter,
    bucket: Bucket,
    values: list[Any],
    ident: tuple[str | None, str | None],
    lo: int,
    hi: int,
) -> None:
    """No groupBy values: a window's events are one run of the sorted bucket, found by bisecting
    for the window's end, and aggregated as a slice."""
    times, events = bucket.times, bucket.events
    i = lo
    while i < hi:
        start, end = windows.of(times[i])
        j = bisect.bisect_left(times, end, i, hi)
        base = i

        def order(k: int, base: int = base) -> tuple[int, int]:
            event = events[base + k]
            return event.time_us, event.seq

        state = _partial(meter.aggregation, values[i:j], j - i, order)
        groups.add((start, end, *ident, ()), state, times[i], times[j - 1])
        i = j


def _grouped(
    groups: _Groups,
    windows: Windows,
    meter: Meter,
    query: MeterQuery,
    meter_keys: list[str],
    bucket: Bucket,
    values: list[Any],
    ident: tuple[str | None, str | None],
    lo: int,
    hi: int,
) -> None:
    """With groupBy values (or filters on them): event by event."""
    times, events = bucket.times, bucket.events
    columns = {
        key: bucket.column(meter.group_by[key], "text")
        for key in {*meter_keys, *query.filter_group_by}
    }
    filters = [(columns[key], wanted) for key, wanted in query.filter_group_by.items()]
    picked: dict[tuple[int, int, tuple[str | None, ...]], list[int]] = {}
    start = end = None
    for x in range(lo, hi):
        if end is None or times[x] >= end:
            start, end = windows.of(times[x])
        if any(column[x] != wanted for column, wanted in filters):
            continue
        assert start is not None
        group_values = tuple(columns[key][x] for key in meter_keys)
        picked.setdefault((start, end, group_values), []).append(x)
    for (start, end, group_values), indexes in picked.items():

        def order(k: int, indexes: list[int] = indexes) -> tuple[int, int]:
            event = events[indexes[k]]
            return event.time_us, event.seq

        subset = [values[x] for x in indexes] if values else []
        state = _partial(meter.aggregation, subset, len(indexes), order)
        key = (start, end, *ident, group_values)
        groups.add(key, state, times[indexes[0]], times[indexes[-1]])


def _row_order(key: GroupKey) -> tuple[Any, ...]:
    start, _, subject, customer, group_values = key
    return (start, subject or "", customer or "", tuple(v or "" for v in group_values))
