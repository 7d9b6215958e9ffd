"""The usage half of a pull: OpenMeter's meter query into `upstream_usage`, for every configured
meter over a trailing `lookback` that reaches back to before the last successful usage pull
(35 days on the first pull and on a full reconcile). The push reads the figures through the
same ledger, deltas and identifiers as local usage. A late correction upstream changes a
window's figure and the next push sends the difference; an event that arrives upstream later
than the lookback is read by the next full reconcile.

SUM and COUNT meters are read per subject and window (windowSize HOUR or DAY, as the push's
window), and only where something changed: one query for every window's total over all
subjects, then one query per run of windows whose total moved since the last pull (see
_window_totals), over every subject upstream at once (`groupBy=subject`, no subject filter).
A tick that sees new usage in the open window costs two requests per meter, however many
subjects there are; a full reconcile reads every window, in time slices sized so that an
answer holds at most about ROWS_PER_ANSWER rows (windows without usage ride along free).
Period meters (MAX, LATEST, UNIQUE_COUNT) are read per customer for this calendar month (and
the months before, back to the lookback), 100 customers a query: OpenMeter attributes usage
only to the customers a query names (`filterCustomerId`, at most 100; without it a query's
rows carry no customer), and a month's maximum or unique count cannot be told from totals.

Attribution is metersync's, as for local usage: a subject's figures are bound to its customer
when first pushed and stay with it. OpenMeter's per-customer query attributes by the owner at
query time, so after a subject moves upstream it would carry the subject's billed history to
the new customer; reading per subject avoids that. Every subject upstream is read, also one
the catalog does not know yet: its figures wait, unbound, until it has a customer. Period
meters are read per customer (a month's unique count does not add up over subjects): a moved
subject moves their month-to-date figure. Before a customer's Stripe record is deleted
(`pull_owed`), its former subjects are read once more and what they owe is bound to it and
pushed.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any, TypeVar

from metersync.catalog.meters import Meter
from metersync.errors import MetersyncError
from metersync.logs import get_logger
from metersync.settings import OpenMeterSettings
from metersync.sources.openmeter._client import OpenMeterClient, SourceUnavailable
from metersync.sources.openmeter._state import (
    CATALOG_STATE,
    USAGE_STATE,
    PullResult,
    _last_success,
    _last_summary,
    _record,
)
from metersync.sources.openmeter._usage_store import (
    _bind_to,
    _customer_ids,
    _former_subjects,
    _store_figures,
    _subject_count,
    _subjects_with_figures,
)
from metersync.sources.openmeter._window_totals import (
    WINDOW_TOTALS,
    Totals,
    changed_windows,
    fallen,
    observed_totals,
    recorded_totals,
    runs,
    slices,
    totals_key,
    totals_record,
)
from metersync.store import Store
from metersync.stripe_facts import METER_EVENT_PAST_LIMIT_S
from metersync.times import month_start, rfc3339_seconds
from metersync.usage.reports import push_window_s

_log = get_logger("metersync.sources.openmeter")

BACKFILL_S = METER_EVENT_PAST_LIMIT_S  # as far back as Stripe takes meter events
WINDOW_SIZES = {3600: "HOUR", 86400: "DAY"}
# About how many rows one per-subject answer may hold (some 11 MB of JSON): a longer read is cut
# into time slices. One window is the smallest slice: the meter query has no paging, and its
# only subject filter names subjects one by one.
ROWS_PER_ANSWER = 100_000
# Subjects per write transaction when an answer is stored: a short SQL IN list (SQLite takes
# 32,766 parameters a statement, PostgreSQL 65,535), and few commits.
STORE_CHUNK = 2000
T = TypeVar("T")


class SourceMismatch(MetersyncError):
    """The configuration does not fit the source (a meter missing upstream, another
    aggregation, a window OpenMeter cannot query)."""


@dataclass(frozen=True)
class _Plan:
    """What a usage pull reads, decided from the store before the first request."""

    lookback: int
    full: bool  # every window is read per subject (a first pull, a full reconcile)
    catalog_pulled: bool
    ids: dict[str, str]  # customer key → upstream id, for the period meters
    recorded: dict[str, Any]  # the last pull's window totals (_window_totals)
    subjects: int  # the catalog's subjects: the first per-subject answer's expected rows


class UsagePull:
    """`OpenMeterSource.pull_usage` and `pull_owed`: the meter queries, then the figures."""

    def __init__(
        self,
        client: OpenMeterClient,
        settings: OpenMeterSettings,
        meters: Sequence[Meter],
        *,
        window_s: int,
    ) -> None:
        self.client = client
        self.settings = settings
        self.meters = list(meters)
        self.window_s = window_s

    async def pull_usage(self, store: Store, *, full: bool = False) -> PullResult:
        """Every configured meter's figures over the lookback: per subject and window for SUM
        and COUNT (the windows that changed upstream; all of them when `full`), per customer
        for this month for the period meters. The lookback reaches back to before the last
        successful usage pull (an outage longer than the lookback loses nothing), and 35 days
        on the first pull and when `full`. Each answer is stored as it arrives; the window
        totals are recorded once every meter was read. The OpenMeter calls stay on the event
        loop; the database work runs in a worker thread."""
        result = PullResult()
        now = int(time.time())
        sent = self.client.requests
        plan = await asyncio.to_thread(self._plan, store, now, full)
        totals: dict[str, Totals] = {}
        try:
            await self._check_meters()
            for meter in self.meters:
                per = push_window_s(meter, self.window_s)
                if per:
                    seen = await self._pull_windows(store, meter, per, now, plan, result)
                    totals[totals_key(meter.slug, per)] = seen
                else:
                    await self._pull_months(store, meter, now, plan, result)
        except SourceUnavailable as exc:
            await asyncio.to_thread(
                _record, store, USAGE_STATE, ok=False, summary={"error": exc.message}
            )
            raise
        summary = {"usage": result.counts, WINDOW_TOTALS: totals_record(totals)}
        # Before the catalog was ever pulled there was no customer to read the period meters
        # for: the next pull still reads the whole backfill.
        await asyncio.to_thread(
            _record, store, USAGE_STATE, ok=plan.catalog_pulled, summary=summary
        )
        _log.info(
            "pulled usage from OpenMeter",
            counts=result.counts,
            lookback_s=plan.lookback,
            requests=self.client.requests - sent,
        )
        return result

    def _plan(self, store: Store, now: int, full: bool) -> _Plan:
        """The lookback and what else the pull needs from the store (database work: run in a
        worker thread)."""
        since = _last_success(store, USAGE_STATE)
        if full or since is None:
            lookback = BACKFILL_S
        else:
            behind = now - int(since.timestamp())
            lookback = min(
                BACKFILL_S, max(self.settings.lookback_s, behind + self.settings.lookback_s)
            )
        periods = any(not push_window_s(m, self.window_s) for m in self.meters)
        return _Plan(
            lookback=lookback,
            full=full or since is None,
            catalog_pulled=_last_success(store, CATALOG_STATE) is not None,
            ids=_customer_ids(store) if periods else {},
            recorded=dict(_last_summary(store, USAGE_STATE).get(WINDOW_TOTALS) or {}),
            subjects=_subject_count(store),
        )

    async def _pull_windows(
        self, store: Store, meter: Meter, per: int, now: int, plan: _Plan, result: PullResult
    ) -> Totals:
        """A SUM or COUNT meter: every window's total over all subjects (one query), then per
        subject the windows whose total is not the one the last pull recorded (all of them on
        a full read), in time slices of at most about ROWS_PER_ANSWER rows. Returns the
        totals, for the next pull to compare with."""
        [(_, start, end)] = self._ranges(meter, now, plan.lookback)
        size = WINDOW_SIZES[per]
        totals = observed_totals(
            await self.client.query(
                meter.slug,
                start=rfc3339_seconds(start),
                end=rfc3339_seconds(end),
                window_size=size,
            )
        )
        recorded = None if plan.full else recorded_totals(plan.recorded, meter.slug, per)
        changed = changed_windows(totals, recorded, start, end, per)
        result.add("windows_read", len(changed))
        # Where a subject's figure may have vanished upstream (None: anywhere, on a full read).
        gone = None if recorded is None else fallen(totals, recorded)
        # As if every subject the catalog knows had usage in every window with a total: an
        # answer holds at most about ROWS_PER_ANSWER rows, however the usage is spread.
        most = max(1, ROWS_PER_ANSWER // max(plan.subjects, 1))
        for run_start, run_end in runs(changed, per):
            for at, stop in slices(run_start, run_end, per, totals, most):
                rows = await self.client.query(
                    meter.slug,
                    start=rfc3339_seconds(at),
                    end=rfc3339_seconds(stop),
                    window_size=size,
                    per_subject=True,
                )
                vanished = gone is None or any(at <= w < stop for w in gone)
                await asyncio.to_thread(
                    _store_per_subject,
                    store,
                    meter.slug,
                    per,
                    (at, stop),
                    rows,
                    now,
                    result,
                    vanished=vanished,
                )
        return totals

    async def _pull_months(
        self, store: Store, meter: Meter, now: int, plan: _Plan, result: PullResult
    ) -> None:
        """A period meter: each month's figure per customer, `customers_per_query` customers a
        query."""
        by_id = {v: k for k, v in plan.ids.items()}
        for _, start, end in self._ranges(meter, now, plan.lookback):
            for part in _chunks(sorted(by_id), self.settings.customers_per_query):
                rows = await self.client.query(
                    meter.slug,
                    start=rfc3339_seconds(start),
                    end=rfc3339_seconds(end),
                    window_size=None,
                    customer_ids=part,
                )
                queried = sorted(by_id[i] for i in part)
                changed = await asyncio.to_thread(
                    _store_figures, store, meter.slug, 0, start, end, rows, by_id, now, queried
                )
                result.add("windows", len(rows))
                result.add("changed", changed)

    async def pull_owed(self, store: Store, customer_key: str, *, target: str) -> None:
        """Before `customer_key`'s record in `target` is deleted: read its subjects' latest
        figures and bind what is unbound to it, so the flush that follows bills what it
        still owes. Its subjects are those whose usage `target` routed to its record (the
        catalog already let go of them when the customer was deleted upstream). The
        OpenMeter calls stay on the event loop; the database work runs in a worker thread."""
        subjects, since = await asyncio.to_thread(_owed_reads, store, customer_key, target)
        if not subjects:
            return
        now = int(time.time())
        behind = now - int(since.timestamp()) if since else BACKFILL_S
        lookback = min(BACKFILL_S, behind + self.settings.lookback_s)
        for meter in self.meters:
            per = push_window_s(meter, self.window_s)
            if not per:
                continue  # period figures are the customer's own rows, already stored
            for _, start, end in self._ranges(meter, now, lookback):
                rows: list[dict[str, Any]] = []
                for part in _chunks(subjects, self.settings.customers_per_query):
                    rows += await self.client.query(
                        meter.slug,
                        start=rfc3339_seconds(start),
                        end=rfc3339_seconds(end),
                        window_size=WINDOW_SIZES[per],
                        subjects=part,
                    )
                await asyncio.to_thread(
                    _store_figures, store, meter.slug, per, start, end, rows, {}, now, subjects
                )
        await asyncio.to_thread(_bind_to, store, subjects, customer_key)

    async def _check_meters(self) -> None:
        upstream = {str(m.get("slug")): m for m in await self.client.meters()}
        for meter in self.meters:
            found = upstream.get(meter.slug)
            if found is None:
                raise SourceMismatch(
                    f"meter {meter.slug!r} is configured but OpenMeter has no meter with that "
                    f"slug (it has: {', '.join(sorted(upstream)) or 'none'})"
                )
            if str(found.get("aggregation")) != meter.aggregation.value:
                raise SourceMismatch(
                    f"meter {meter.slug!r}: configured as {meter.aggregation.value}, OpenMeter "
                    f"aggregates it as {found.get('aggregation')}"
                )
        if self.window_s not in WINDOW_SIZES:
            raise SourceMismatch(
                f"usage.window {self.window_s} s: with OpenMeter as the source it must be 1h or "
                "1d (the meter query's HOUR and DAY windows)"
            )

    def _ranges(self, meter: Meter, now: int, lookback: int) -> list[tuple[int, int, int]]:
        """(window, start, end) ranges to query: windows over the lookback, or for a period
        meter this month (and the months before, back to the lookback)."""
        per = push_window_s(meter, self.window_s)
        if per:
            start = (now - lookback) // per * per
            return [(per, start, -(-(now + 1) // per) * per)]
        ranges = [(0, month_start(now), now + 1)]
        while ranges[-1][1] > now - lookback:
            begin = month_start(ranges[-1][1] - 1)
            ranges.append((0, begin, ranges[-1][1]))
        return ranges


def _chunks(items: Sequence[T], size: int) -> Iterator[list[T]]:
    for i in range(0, len(items), size):
        yield list(items[i : i + size])


def _owed_reads(store: Store, customer_key: str, target: str) -> tuple[list[str], datetime | None]:
    """`pull_owed`'s reads: the customer's former subjects, and when there are any, the last
    successful usage pull (database work: run in a worker thread)."""
    subjects = _former_subjects(store, customer_key, target)
    if not subjects:
        return subjects, None
    return subjects, _last_success(store, USAGE_STATE)


def _store_per_subject(
    store: Store,
    meter: str,
    per: int,
    windows: tuple[int, int],
    rows: Sequence[Mapping[str, Any]],
    now: int,
    result: PullResult,
    *,
    vanished: bool,
) -> None:
    """An answer per subject over the windows of [start, end), stored: each subject's figures
    there replaced, STORE_CHUNK subjects a transaction. When a figure may have `vanished`
    upstream, the subjects with figures there are read too, and one the answer no longer
    shows falls to 0 (a read that scans the meter's figures: the table's key leads with the
    subject). Database work: run in a worker thread."""
    start, end = windows
    by_subject: dict[str, list[dict[str, Any]]] = {}
    for row in rows:
        by_subject.setdefault(str(row.get("subject") or ""), []).append(dict(row))
    subjects = set(by_subject)
    if vanished:
        subjects |= _subjects_with_figures(store, meter, per, start, end)
    subjects.discard("")  # a row without a subject is nobody's (and not a per-subject figure)
    for part in _chunks(sorted(subjects), STORE_CHUNK):
        mine = [row for subject in part for row in by_subject.get(subject, ())]
        changed = _store_figures(store, meter, per, start, end, mine, {}, now, part)
        result.add("changed", changed)
    result.add("windows", len(rows))
