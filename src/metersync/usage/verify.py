"""`metersync usage verify`: Stripe's event summaries against the ledger against the local
aggregates, per customer, meter and hour (calendar month for the period-to-date meters), with
every difference named.

Customers are compared a chunk at a time, in key order (a keyset walk over the target's
customer links), so that memory holds one chunk's figures and the differences found, whatever
the number of customers.

`--repair` does three things, none of which can bill twice:
- reports pending past Stripe's identifier window are settled by the summaries (landed →
  delivered; not landed → re-planned under a new identifier; ambiguous → left alone);
- reports delivered to the customer's current Stripe customer, older than the settle delay,
  that the summaries lack are marked failed, so the next push plans their value again (Stripe
  processes meter events asynchronously: a report younger than the delay that is missing is
  reported, not re-sent);
- then a push sends what was never pushed.
What Stripe holds beyond the ledger is reported, never undone (only a cancellation within 24 h
can take an event back, and that is a person's decision).
"""

from __future__ import annotations

import asyncio
from collections import defaultdict
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import timedelta
from typing import Any

from sqlalchemy.orm import Session

from metersync.catalog.meters import Aggregation, Meter
from metersync.clock import utcnow
from metersync.store import LedgerState, Store
from metersync.store.ledger import LedgerTable
from metersync.store.links import LinkTable
from metersync.store.usage_retention import retention_floor
from metersync.stripe_facts import METER_EVENT_IDENTIFIER_TRUST
from metersync.times import month_end, month_start, rfc3339_seconds
from metersync.usage.local_aggregates import LOCAL
from metersync.usage.ports import MeterEventSink, MeterFigures, UsageAggregates
from metersync.usage.push import PushResult, push_usage
from metersync.usage.reports import push_window_s, scaled

HOUR = 3600
# How long after delivery a report missing from Stripe's summaries is taken as lost.
DEFAULT_SETTLE = timedelta(hours=1)
# Customers compared at a time: what bounds verify's memory, whatever the customer count.
DEFAULT_CHUNK = 500
# A chunk's keys go into one IN (…) list per query: well below SQLite's and PostgreSQL's
# bound-parameter limits (32,766 and 65,535).
MAX_CHUNK = 10_000
_LOST = "delivered, but missing from Stripe's event summaries after the settle delay; re-planned"
_NOT_LANDED = "not in Stripe's event summaries after its identifier window; re-planned"


@dataclass(frozen=True)
class Difference:
    """One customer, meter and period as the three sources see it (scaled whole numbers).
    `delivered_here` counts only reports sent to the customer's current Stripe customer, the
    one whose summaries `stripe` comes from."""

    customer_key: str
    meter: str
    period_start: int
    period_end: int
    local: int
    delivered: int
    pending: int
    stripe: int
    delivered_here: int
    last: bool = False  # a `last` meter: figures are values, not sums

    @property
    def ledger(self) -> int:
        if self.last:
            return self.pending or self.delivered
        return self.delivered + self.pending

    @property
    def differs(self) -> bool:
        return self.local != self.ledger or self.delivered_here != self.stripe

    @property
    def problem(self) -> str:
        if self.stripe < self.delivered_here:
            gap = self.delivered_here - self.stripe
            return f"Stripe lacks {gap} that the ledger says was delivered"
        if self.stripe > self.delivered_here:
            gap = self.stripe - self.delivered_here
            return f"Stripe holds {gap} more than the ledger delivered"
        if self.pending:
            return f"{self.pending} written but not yet confirmed (pending)"
        if self.local < self.ledger:
            return (
                f"Stripe and the ledger hold {self.ledger - self.local} more than the local "
                "events (over-billed; a cancellation within 24 h is a person's decision)"
            )
        return f"{self.local - self.ledger} not pushed yet"

    def to_json(self) -> dict[str, Any]:
        return {
            "customer": self.customer_key,
            "meter": self.meter,
            "from": rfc3339_seconds(self.period_start),
            "to": rfc3339_seconds(self.period_end),
            "local": self.local,
            "ledgerDelivered": self.delivered,
            "ledgerPending": self.pending,
            "stripe": self.stripe,
            "problem": self.problem,
        }


@dataclass
class VerifyResult:
    checked: int = 0
    differences: list[Difference] = field(default_factory=list)
    settled: int = 0  # pending past the identifier window, settled by the summaries
    replanned: int = 0  # delivered but lost by Stripe: marked failed, planned again
    pushed: PushResult | None = None
    # The retention floor, when the range asked for began below it: the periods before it
    # were not checked (their raw usage was pruned; the ledger and Stripe still hold them).
    pruned_before: int | None = None

    def to_json(self) -> dict[str, Any]:
        return {
            "checked": self.checked,
            "differences": [d.to_json() for d in self.differences],
            "settled": self.settled,
            "replanned": self.replanned,
            "pushed": self.pushed.counts() if self.pushed else None,
            "prunedBefore": rfc3339_seconds(self.pruned_before) if self.pruned_before else None,
        }


@dataclass(frozen=True)
class _MeterCheck:
    """One meter as verify compares it: its Stripe meter, its periods and its bounds."""

    meter: Meter
    meter_id: str | None  # None: Stripe has no meter for its event name (it holds nothing)
    monthly: bool  # period-to-date: compared per calendar month, not per hour
    last: bool
    lo: int
    hi: int


# Local, ledger: per customer, per period.
_Local = dict[str, dict[int, int]]
_Ledger = dict[str, dict[int, tuple[int, int, int]]]


async def verify_usage(
    store: Store,
    figures: MeterFigures,
    meters: Sequence[Meter],
    *,
    window_s: int,
    start: int,
    end: int,
    late_usage: str = "report",
    repair: bool = False,
    sink: MeterEventSink | None = None,
    settle: timedelta = DEFAULT_SETTLE,
    aggregates: UsageAggregates = LOCAL,
    chunk_size: int = DEFAULT_CHUNK,
    progress: Callable[[int], None] | None = None,
) -> VerifyResult:
    """Compare over [start, end) (whole hours; whole months for period-to-date meters).

    Customers are walked in key order, `chunk_size` at a time: only one chunk's windows, ledger
    rows and Stripe figures are held, and a repair settles each chunk before the next. The
    differences are gathered across chunks, in the same order whatever the chunk size.
    `progress` is told how many customers each chunk covered."""
    if not 1 <= chunk_size <= MAX_CHUNK:
        raise ValueError(f"chunk size must be between 1 and {MAX_CHUNK}, got {chunk_size}")
    result = VerifyResult()
    start, end = start // HOUR * HOUR, -(-end // HOUR) * HOUR
    if aggregates.name == LOCAL.name:
        # From the retention floor on when the local events are the figures: their raw usage
        # below it was pruned, and the ledger's figures there would all look over-billed.
        floor = await asyncio.to_thread(retention_floor, store)
        if start < floor:
            # A month's start: whole hours and whole months both begin there.
            result.pruned_before, start = floor, floor
            end = max(end, start)
    target = figures.name
    # Usage not bound yet counts as local too: bound here as the next push would bind it
    # (bookkeeping only: it fixes which customer the usage belongs to, and sends nothing).
    await asyncio.to_thread(aggregates.bind, store, target)
    meter_ids = await figures.meter_ids()
    checks = [
        _check(meter, meter_ids, window_s, start, end)
        for meter in meters
        if meter.settings.stripe is not None and start < end  # not all of it below the floor
    ]
    links = LinkTable(store, target)
    after: str | None = None
    while page := await asyncio.to_thread(links.customer_page, after, chunk_size):
        after = page[-1][0]
        external_ids = {key: external_id for key, external_id in page if external_id}
        compared = await _compare(
            store, figures, checks, [key for key, _ in page], external_ids, window_s, aggregates
        )
        differences = [d for d in compared if d.differs]
        result.checked += len(compared)
        result.differences += differences
        if repair and sink is not None:
            # Only periods that can hold a pending report: a sum meter's reports are positive
            # deltas, so a pending one shows in `pending`; a last meter's may be a value of 0,
            # but its periods are months, few per customer. Not one query per hour of usage.
            held = [d for d in compared if d.pending or d.last]
            result.settled += await asyncio.to_thread(
                _settle_held, store, target, held, external_ids
            )
            result.replanned += await asyncio.to_thread(
                _replan_lost, store, target, differences, external_ids, settle
            )
        if progress is not None:
            progress(len(page))
    if repair and sink is not None:
        result.pushed = await push_usage(
            store,
            target,
            sink,
            meters,
            window_s=window_s,
            late_usage=late_usage,
            aggregates=aggregates,
        )
    return result


def customers_to_verify(store: Store, target: str) -> int:
    """How many customers verify_usage walks: every customer linked in `target` (a progress
    bar's total)."""
    return LinkTable(store, target).customer_count()


def _check(
    meter: Meter, meter_ids: dict[str, str], window_s: int, start: int, end: int
) -> _MeterCheck:
    assert meter.settings.stripe is not None
    monthly = push_window_s(meter, window_s) == 0
    lo, hi = (month_start(start), month_end(month_start(end - 1))) if monthly else (start, end)
    return _MeterCheck(
        meter,
        meter_ids.get(meter.settings.stripe.event_name),
        monthly,
        meter.aggregation in (Aggregation.MAX, Aggregation.LATEST),
        lo,
        hi,
    )


async def _compare(
    store: Store,
    figures: MeterFigures,
    checks: Sequence[_MeterCheck],
    customers: list[str],
    external_ids: dict[str, str],
    window_s: int,
    aggregates: UsageAggregates,
) -> list[Difference]:
    """Every period of one chunk of customers, equal or not: by customer (in walk order),
    meter and period."""
    read = await asyncio.to_thread(
        _local_and_ledger,
        store,
        figures.name,
        checks,
        window_s,
        customers,
        external_ids,
        aggregates,
    )
    compared: list[Difference] = []
    for customer in customers:
        external_id = external_ids.get(customer)
        for check, (local, ledger) in zip(checks, read, strict=True):
            mine, sent = local.get(customer, {}), ledger.get(customer, {})
            if not mine and not sent:
                continue  # nothing here or in the ledger: Stripe is not asked
            stripe: dict[int, int] = {}
            if check.meter_id is not None and external_id is not None:
                stripe = await _stripe(
                    figures, check.meter_id, external_id, check.lo, check.hi, check.monthly
                )
            for period in sorted(set(mine) | set(sent) | set(stripe)):
                delivered, pending, here = sent.get(period, (0, 0, 0))
                compared.append(
                    Difference(
                        customer,
                        check.meter.slug,
                        period,
                        month_end(period) if check.monthly else period + HOUR,
                        mine.get(period, 0),
                        delivered,
                        pending,
                        stripe.get(period, 0),
                        here,
                        check.last,
                    )
                )
    return compared


def _local_and_ledger(
    store: Store,
    target: str,
    checks: Sequence[_MeterCheck],
    window_s: int,
    customers: list[str],
    external_ids: dict[str, str],
    aggregates: UsageAggregates,
) -> list[tuple[_Local, _Ledger]]:
    """The local figures and the ledger's for one chunk of customers, per meter (database
    work)."""
    return [
        (
            _local(store, check, window_s, customers, aggregates),
            _ledger(store, target, check, customers, external_ids),
        )
        for check in checks
    ]


def _local(
    store: Store,
    check: _MeterCheck,
    window_s: int,
    customers: list[str],
    aggregates: UsageAggregates,
) -> _Local:
    assert check.meter.settings.stripe is not None
    scale = check.meter.settings.stripe.scale
    out: _Local = defaultdict(lambda: defaultdict(int))
    for w in aggregates.windows(
        store,
        check.meter,
        0 if check.monthly else window_s,
        customers=customers,
        start=check.lo,
        end=check.hi,
    ):
        period = w.window_start if check.monthly else w.window_start // HOUR * HOUR
        out[w.customer_key][period] += scaled(w.value, scale)
    return out


def _ledger(
    store: Store,
    target: str,
    check: _MeterCheck,
    customers: list[str],
    external_ids: dict[str, str],
) -> _Ledger:
    """(delivered, pending, delivered to the current Stripe customer) per customer and
    period. Sum meters add report values; last meters take the newest value by stamp."""
    out: dict[str, dict[int, list[int]]] = defaultdict(dict)
    rows = LedgerTable(store, target).sent_in(
        check.meter.slug, check.lo, check.hi, customers=customers
    )
    for customer, window_start, value, state, external_id in rows:
        period = int(window_start) if check.monthly else int(window_start) // HOUR * HOUR
        figures = out[customer].setdefault(period, [0, 0, 0])
        here = external_id == external_ids.get(customer)
        if state == LedgerState.DELIVERED:
            if check.last:
                figures[0], figures[1] = int(value), 0
                figures[2] = int(value) if here else figures[2]
            else:
                figures[0] += int(value)
                figures[2] += int(value) if here else 0
        elif check.last:
            figures[1] = int(value)
        else:
            figures[1] += int(value)
    return {c: {p: (v[0], v[1], v[2]) for p, v in by.items()} for c, by in out.items()}


async def _stripe(
    figures: MeterFigures, meter_id: str, customer_id: str, lo: int, hi: int, monthly: bool
) -> dict[int, int]:
    if monthly:
        out: dict[int, int] = {}
        month = lo
        while month < hi:
            nxt = month_end(month)
            found = await figures.totals(meter_id, customer_id, month, nxt, hourly=False)
            total = sum(value for _, value in found)
            if found and total:
                out[month] = total
            month = nxt
        return out
    found = await figures.totals(meter_id, customer_id, lo, hi, hourly=True)
    return {start: value for start, value in found if value}


def _period_rows(
    ledger: LedgerTable, session: Session, diff: Difference, external_id: str
) -> list[Any]:
    """The period's delivered and pending reports to the current Stripe customer, oldest
    stamp first."""
    return ledger.period_reports(
        session,
        customer_key=diff.customer_key,
        meter=diff.meter,
        start=diff.period_start,
        end=diff.period_end,
        external_customer_id=external_id,
    )


def _settle_held(
    store: Store, target: str, periods: list[Difference], external_ids: dict[str, str]
) -> int:
    """Pending reports too old to re-send safely (Stripe may have forgotten their identifiers)
    are settled by Stripe's summary of their period. Sum meters: the one set of them whose
    values, added to the delivered ones, make Stripe's total landed (DELIVERED); the others did
    not (FAILED: the next push plans their value again, under a new identifier). Last meters:
    Stripe shows the newest pending value → it landed; Stripe shows the newest delivered value
    → the newer pending ones did not. Anything ambiguous is left for a person."""
    cutoff = utcnow() - METER_EVENT_IDENTIFIER_TRUST
    settled = 0
    ledger = LedgerTable(store, target)
    with ledger.correcting() as session:
        for diff in periods:
            external_id = external_ids.get(diff.customer_key)
            if external_id is None:
                continue
            rows = _period_rows(ledger, session, diff, external_id)
            pending = [r for r in rows if r.state == LedgerState.PENDING]
            if not pending or any(r.created_at >= cutoff for r in pending):
                continue  # nothing held, or some still re-sendable: the next push first
            landed = (
                _landed_last(rows, diff.stripe) if diff.last else _landed_sum(rows, diff.stripe)
            )
            if landed is None:
                continue
            for row in pending:
                ok = row.id in landed
                ledger.set_outcome(
                    session,
                    row.id,
                    LedgerState.DELIVERED if ok else LedgerState.FAILED,
                    None if ok else _NOT_LANDED,
                )
                settled += 1
    return settled


def _replan_lost(
    store: Store,
    target: str,
    differences: list[Difference],
    external_ids: dict[str, str],
    settle: timedelta,
) -> int:
    """Delivered reports Stripe's summaries lack, once they are older than `settle`: marked
    FAILED, so the next push plans their value again under a new identifier. Sum meters: only
    when exactly one set of delivered reports accounts for the gap; last meters: the newest
    delivered value, when Stripe shows another."""
    cutoff = utcnow() - settle
    replanned = 0
    ledger = LedgerTable(store, target)
    with ledger.correcting() as session:
        for diff in differences:
            external_id = external_ids.get(diff.customer_key)
            if external_id is None or diff.stripe == diff.delivered_here:
                continue
            rows = [
                r
                for r in _period_rows(ledger, session, diff, external_id)
                if r.state == LedgerState.DELIVERED
            ]
            if not rows or any(r.delivered_at is None or r.delivered_at >= cutoff for r in rows):
                continue  # Stripe may still be processing them
            lost: set[int] | None
            if diff.last:
                lost = {rows[-1].id} if rows[-1].value != diff.stripe else None
            elif diff.stripe < diff.delivered_here:
                lost = _subset(rows, diff.delivered_here - diff.stripe)
            else:
                lost = None  # Stripe holds more: reported, never undone
            for row_id in lost or ():
                ledger.set_outcome(session, row_id, LedgerState.FAILED, _LOST)
                replanned += 1
    return replanned


def _subset(rows: Sequence[Any], amount: int) -> set[int] | None:
    """The one set of rows whose values add up to `amount`; None if none or several do."""
    if len(rows) > 12:
        return None  # too many to tell apart
    matches = [
        {r.id for i, r in enumerate(rows) if mask >> i & 1}
        for mask in range(1, 1 << len(rows))
        if sum(r.value for i, r in enumerate(rows) if mask >> i & 1) == amount
    ]
    return matches[0] if len(matches) == 1 else None


def _landed_sum(rows: Sequence[Any], stripe: int) -> set[int] | None:
    delivered = sum(r.value for r in rows if r.state == LedgerState.DELIVERED)
    pending = [r for r in rows if r.state == LedgerState.PENDING]
    if stripe == delivered:
        return set()
    return _subset(pending, stripe - delivered)


def _landed_last(rows: Sequence[Any], stripe: int) -> set[int] | None:
    newest = rows[-1]  # by stamp: the value a `last` meter shows if it landed
    if newest.state == LedgerState.PENDING and newest.value == stripe:
        return {r.id for r in rows if r.state == LedgerState.PENDING}  # older ones superseded
    delivered = [r for r in rows if r.state == LedgerState.DELIVERED]
    if delivered and delivered[-1].value == stripe and newest.value != stripe:
        return {
            r.id
            for r in rows
            if r.state == LedgerState.PENDING and r.timestamp < delivered[-1].timestamp
        }
    return None
