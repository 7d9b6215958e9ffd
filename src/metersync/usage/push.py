"""A usage push: bind new usage to customers, finish reports left pending, plan new reports
from the aggregates and the ledger, write them, send them, record each outcome.

Exactly once: a report is written PENDING before its call and marked DELIVERED after; a crash
in between leaves it PENDING, and the next push re-sends it with the same identifier, which
Stripe answers as a duplicate (counted as delivered). A new delta is always measured against
every report written, delivered or not, so nothing is counted twice.
"""

from __future__ import annotations

import asyncio
import time
from collections import defaultdict
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

from metersync.catalog.meters import Meter
from metersync.clock import utcnow
from metersync.errors import ConfigError, TargetUnusable
from metersync.logs import get_logger
from metersync.mechanics.retry import ErrorKind
from metersync.store import Store
from metersync.store.ledger import LedgerTable, PendingReport
from metersync.store.usage_cells import Cell, UsageCellTable
from metersync.stripe_facts import METER_EVENT_IDENTIFIER_TRUST
from metersync.usage.due import Chunk, DueCells, EveryCustomer, Reader
from metersync.usage.local_aggregates import LOCAL
from metersync.usage.ports import MeterEvent, MeterEventSink, UsageAggregates
from metersync.usage.reports import Skipped, plan_reports, push_window_s

_log = get_logger("metersync.usage")
# Changed rows collected per page (a page takes the whole of its last change number: an ingest
# batch is ≤ 10,000 rows a meter, a binding slice ≤ 50,000): its distinct cells are held at once.
COLLECT_ROWS = 100_000


@dataclass
class PushResult:
    bound: int = 0
    planned: int = 0
    sent: int = 0
    delivered: int = 0
    duplicates: int = 0
    failed: int = 0
    late: int = 0
    held: int = 0  # pending past the identifier window: left for `usage verify`
    skipped: list[Skipped] = field(default_factory=list)
    failures: list[dict[str, Any]] = field(default_factory=list)
    waiting_subjects: int = 0
    # Where the push's time went, by stage (seconds): the rates docs/scale.md reasons with,
    # and the first place to look when a tick is slow.
    seconds: dict[str, float] = field(default_factory=dict)

    def timed(self, stage: str, started: float) -> None:
        self.seconds[stage] = self.seconds.get(stage, 0.0) + time.perf_counter() - started

    def counts(self) -> dict[str, int]:
        out = {
            "planned": self.planned,
            "sent": self.sent,
            "delivered": self.delivered,
            "duplicates": self.duplicates,
            "failed": self.failed,
            "late": self.late,
            "held": self.held,
        }
        return {k: v for k, v in out.items() if v}

    def to_json(self) -> dict[str, Any]:
        return {
            "summary": self.counts(),
            "bound": self.bound,
            "waitingSubjects": self.waiting_subjects,
            "skipped": [
                {
                    "customer": s.customer_key,
                    "meter": s.meter,
                    "windowStart": s.window_start,
                    "reason": s.reason,
                }
                for s in self.skipped
            ],
            "failures": self.failures,
        }


async def push_usage(
    store: Store,
    target: str,
    sink: MeterEventSink,
    meters: Sequence[Meter],
    *,
    window_s: int,
    late_usage: str,
    now: datetime | None = None,
    customers: Sequence[str] | None = None,
    dry_run: bool = False,
    progress: Callable[[int], None] | None = None,
    should_stop: Callable[[], bool] | None = None,
    aggregates: UsageAggregates = LOCAL,
) -> PushResult:
    """One push for `target`. `customers` limits it to those customers (the flush before a
    customer's delete). `aggregates`: where the meter values come from (local events, or an
    upstream such as OpenMeter)."""
    moment = now or utcnow()
    ledger = LedgerTable(store, target)
    result = PushResult()
    if not dry_run:
        result.bound = await asyncio.to_thread(aggregates.bind, store, target)
    result.waiting_subjects = len(await asyncio.to_thread(aggregates.waiting_subjects, store))
    if not dry_run:
        await finish_pending(ledger, sink, result, moment, customers)
    # Read once, after binding: every change numbered up to here is committed and visible.
    upto = await asyncio.to_thread(aggregates.change_mark, store)
    for meter in meters:
        if meter.settings.stripe is None:
            continue
        push = _MeterPush(
            Reader(store, target, meter, push_window_s(meter, window_s), aggregates, moment),
            ledger,
            result,
            late_usage=late_usage,
            dry_run=dry_run,
        )
        finished = await push.run(upto, customers, sink, progress, should_stop)
        if not finished:
            return result
    if result.late:
        _log.warning(
            "usage older than Stripe's 35-day window held (late_usage = report)",
            reports=result.late,
        )
    if not dry_run and result.planned:
        stages = {stage: round(seconds, 3) for stage, seconds in result.seconds.items()}
        _log.info("usage pushed", target=target, seconds=stages, **result.counts())
    return result


@dataclass
class _MeterPush:
    """One meter's part of a push: pick the walk, then plan, write and send chunk by chunk."""

    reader: Reader
    ledger: LedgerTable
    result: PushResult
    late_usage: str
    dry_run: bool

    async def run(
        self,
        upto: int,
        customers: Sequence[str] | None,
        sink: MeterEventSink,
        progress: Callable[[int], None] | None,
        should_stop: Callable[[], bool] | None,
    ) -> bool:
        """False when `should_stop` cut it short (what is written and unsent stays PENDING)."""
        started = time.perf_counter()
        walk, first = await asyncio.to_thread(self._walk, upto, customers)
        self.result.timed("collect", started)
        while True:
            started = time.perf_counter()
            chunk = await asyncio.to_thread(walk.next)
            self.result.timed("read", started)
            if chunk is None:
                break
            to_send = await asyncio.to_thread(self._plan_and_record, chunk)
            if to_send:
                started = time.perf_counter()
                await _send(self.ledger, sink, to_send, self.result, progress, should_stop)
                self.result.timed("send", started)
            if should_stop is not None and should_stop():
                return False
        if first and not self.dry_run:
            # The first push planned every cell: from here on, only changes.
            await asyncio.to_thread(self._set_cursor, upto)
        return True

    @property
    def _cells(self) -> UsageCellTable:
        return UsageCellTable(self.reader.store, self.reader.target)

    def _walk(
        self, upto: int, customers: Sequence[str] | None
    ) -> tuple[DueCells | EveryCustomer, bool]:
        """The walk this push takes, and whether it is the meter's first push (database work,
        run in a worker thread)."""
        meter = self.reader.meter
        cursor = self._cells.cursor(meter.slug)
        _check_unchanged(self.ledger, meter, self.reader.window_s, cursor)
        if customers is not None:  # a flush: these customers' every window, nothing else
            return EveryCustomer(self.reader, customers=customers), False
        if cursor is None:
            return EveryCustomer(self.reader), True
        if self.dry_run:
            changed = self.reader.aggregates.changed_cells(
                self.reader.store, meter, self.reader.window_s, after=cursor[0], upto=upto
            )
            return DueCells(self.reader, extra=sorted(changed)), False
        # A page of about COLLECT_ROWS changed rows at a time, so a tick after a large import
        # holds one page of cells, not all, and a catch-up after many small writes (one change
        # number each) reads them in a few pages, not one per handful of writes. Collected
        # before the cursor moves: a crash in between collects them again.
        seen = cursor[0]
        aggregates, store = self.reader.aggregates, self.reader.store
        while seen < upto:
            page_end = aggregates.change_page_end(
                store, meter, after=seen, upto=upto, rows=COLLECT_ROWS
            )
            changed = aggregates.changed_cells(
                store, meter, self.reader.window_s, after=seen, upto=page_end
            )
            self._cells.add(meter.slug, sorted(changed))
            self._set_cursor(page_end)
            seen = page_end
        return DueCells(self.reader), False

    def _set_cursor(self, upto: int) -> None:
        stripe = self.reader.meter.settings.stripe
        assert stripe is not None
        self._cells.set_cursor(
            self.reader.meter.slug, upto, window_s=self.reader.window_s, scale=stripe.scale
        )

    def _plan_and_record(self, chunk: Chunk) -> list[PendingReport]:
        """Plan a chunk, write its reports, let its settled cells go (database work, run in a
        worker thread); returns the reports to send now."""
        meter = self.reader.meter
        started = time.perf_counter()
        planned, skipped = plan_reports(
            meter,
            chunk.windows,
            chunk.bases,
            chunk.external_ids,
            window_s=self.reader.window_s,
            now=self.reader.moment,
            late_usage=self.late_usage,
        )
        self.result.skipped += skipped
        self.result.planned += len(planned)
        self.result.late += sum(1 for r in planned if r.late)
        self.result.timed("plan", started)
        if self.dry_run:
            return []
        started = time.perf_counter()
        ids = self.ledger.record(planned)
        # A skipped cell stays due: its reason passes (a backoff, a window not begun, a link to
        # come back), and a later tick looks again: from the time it passes when that is known
        # (a refusal's backoff was set on its cell when it was recorded). Every other cell is
        # settled.
        waiting = {(s.customer_key, s.window_start) for s in skipped}
        self._cells.add(meter.slug, sorted(waiting))
        timed: dict[int, list[Cell]] = defaultdict(list)
        for s in skipped:
            if s.not_before is not None:
                timed[s.not_before].append((s.customer_key, s.window_start))
        for not_before, cells in sorted(timed.items()):
            self._cells.add(meter.slug, sorted(cells), due_at=not_before, update_due=True)
        self._cells.release(meter.slug, [c for c in chunk.cells if c not in waiting])
        self.result.timed("record", started)
        return [
            PendingReport(
                id=i,
                customer_key=r.customer_key,
                meter=r.meter,
                window_start=r.window_start,
                identifier=r.identifier,
                external_customer_id=r.external_customer_id,
                event_name=r.event_name,
                value=r.value,
                timestamp=r.timestamp,
                attempts=0,
                created_at=self.reader.moment,
            )
            for i, r in zip(ids, planned, strict=True)
            if not r.late
        ]


def _check_unchanged(
    ledger: LedgerTable, meter: Meter, window_s: int, cursor: tuple[int, int, float] | None
) -> None:
    """A meter's reports add up only under one window size and one scale: after a change,
    totals would be measured against bases made under the other, and history billed again.
    Once a meter has a cursor, it records what the meter is pushed under; before, the ledger
    tells (read whole once, at the meter's first push)."""
    assert meter.settings.stripe is not None
    scale = meter.settings.stripe.scale
    used = {cursor[1:]} if cursor is not None else ledger.reported_under(meter.slug)
    for used_window, used_scale in sorted(used):
        if used_window != window_s:
            raise ConfigError(
                f"usage.window: meter {meter.slug!r} was reported in windows of {used_window} s "
                f"and is now configured for {window_s} s; its totals would not match what was "
                "sent, and history would be billed again. Restore the window size, or bill "
                "under a new Stripe event name from a cut-over."
            )
        if used_scale != scale:
            raise ConfigError(
                f"meters.{meter.slug}.stripe.scale: reports were made at scale {used_scale:g} "
                f"and it is now {scale:g}; totals under the new scale would be billed again. "
                "Restore the scale, or bill under a new Stripe event name from a cut-over."
            )


async def finish_pending(
    ledger: LedgerTable,
    sink: MeterEventSink,
    result: PushResult,
    now: datetime,
    customers: Sequence[str] | None,
) -> None:
    pending = await asyncio.to_thread(ledger.pending, now, customers=customers)
    # A report pending past the identifier's trust could be counted twice if re-sent blindly:
    # it is held for `usage verify` instead.
    fresh = [p for p in pending if now - p.created_at < METER_EVENT_IDENTIFIER_TRUST]
    result.held = len(pending) - len(fresh)
    if result.held:
        _log.warning(
            "pending usage reports older than Stripe's identifier window are held; run "
            "`metersync usage verify` to settle them",
            reports=result.held,
        )
    await _send(ledger, sink, fresh, result, None, None)


async def _send(
    ledger: LedgerTable,
    sink: MeterEventSink,
    reports: list[PendingReport],
    result: PushResult,
    progress: Callable[[int], None] | None,
    should_stop: Callable[[], bool] | None,
) -> None:
    """Send in rounds holding at most one report per (customer, meter): Stripe takes one
    concurrent meter event per customer and meter, and reports of one window must land in
    revision order for `last` meters."""
    for batch in _rounds(reports):
        if should_stop is not None and should_stop():
            # Stopping: what is written and unsent stays PENDING, and the next push sends it
            # with the same identifiers.
            return
        events = [
            MeterEvent(
                event_name=r.event_name,
                customer_id=r.external_customer_id,
                value=r.value,
                timestamp=r.timestamp,
                identifier=r.identifier,
            )
            for r in batch
        ]
        deliveries = await sink.send(events)
        result.sent += len(events)
        delivered: list[int] = []
        failed: list[tuple[int, str, bool]] = []  # report id, why, whether the outcome is known
        refused: str | None = None  # the target refuses every call: stop after recording
        for report, delivery in zip(batch, deliveries, strict=True):
            if delivery.delivered:
                delivered.append(report.id)
                result.delivered += 1
                result.duplicates += int(delivery.duplicate)
                continue
            error = delivery.error
            message = error.message if error else "not delivered"
            known = error is not None and error.kind in (ErrorKind.PERMANENT, ErrorKind.GONE)
            failed.append((report.id, message, known))
            result.failed += 1
            result.failures.append(
                {"customer": report.customer_key, "meter": report.meter, "error": message}
            )
            if error is not None and error.kind is ErrorKind.FATAL:
                refused = message
                break
        await asyncio.to_thread(_record_outcomes, ledger, delivered, failed)
        if refused is not None:
            raise TargetUnusable(f"{ledger.target}: meter events are refused: {refused}")
        if progress is not None:
            progress(len(batch))


def _record_outcomes(
    ledger: LedgerTable, delivered: list[int], failed: list[tuple[int, str, bool]]
) -> None:
    for report_id, message, known in failed:
        ledger.mark_failed(report_id, message, outcome_known=known)
    ledger.mark_delivered(delivered)


def _rounds(reports: list[PendingReport]) -> list[list[PendingReport]]:
    queues: dict[tuple[str, str], list[PendingReport]] = {}
    for report in reports:
        queues.setdefault((report.external_customer_id, report.event_name), []).append(report)
    rounds: list[list[PendingReport]] = []
    depth = max((len(q) for q in queues.values()), default=0)
    for index in range(depth):
        rounds.append([q[index] for q in queues.values() if index < len(q)])
    return rounds


@dataclass(frozen=True)
class UsagePusher:
    """A usage push bound to its store, target and meters: what `reconcile` and the service
    run, and what customer sync calls before deleting a customer (`flush`)."""

    store: Store
    target: str
    sink: MeterEventSink
    meters: Sequence[Meter]
    window_s: int
    late_usage: str
    aggregates: UsageAggregates = LOCAL

    @property
    def configured(self) -> bool:
        return any(m.settings.stripe is not None for m in self.meters)

    async def run(
        self,
        *,
        dry_run: bool = False,
        now: datetime | None = None,
        customers: Sequence[str] | None = None,
        should_stop: Callable[[], bool] | None = None,
    ) -> PushResult:
        return await push_usage(
            self.store,
            self.target,
            self.sink,
            self.meters,
            window_s=self.window_s,
            late_usage=self.late_usage,
            now=now,
            dry_run=dry_run,
            customers=customers,
            should_stop=should_stop,
            aggregates=self.aggregates,
        )

    async def flush(self, customer_key: str) -> bool:
        """Push what `customer_key` still owes; True when nothing of it is left undelivered
        (usage held as late is reported by `status`, and does not hold the delete up)."""
        if not self.configured:
            return True
        result = await self.run(customers=[customer_key])
        left = await asyncio.to_thread(
            LedgerTable(self.store, self.target).pending,
            utcnow() + timedelta(days=3650),
            customers=[customer_key],
        )
        # Anything skipped (a window waiting out a refusal, usage stamped in the future, a
        # total that fell) is usage the customer still owes: the delete waits for it.
        return not left and not result.failed and not result.held and not result.skipped
