"""The usage half of a pull: for every configured meter, OpenMeter's meter query per subject
and window (windowSize HOUR or DAY, as the push's window), or per customer for this calendar
month for the period meters (MAX, LATEST, UNIQUE_COUNT), over a trailing `lookback` that
reaches back to before the last successful usage pull (35 days on the first pull and on a full
reconcile). The figures land in `upstream_usage`; the push reads them through the same ledger,
deltas and identifiers as local usage. A late correction upstream changes a window's figure and
the next push sends the difference; an event that arrives upstream later than the lookback is
read by the next full reconcile.

Attribution is metersync's, as for local usage: a subject's figures are bound to its customer
when first pushed and stay with it. OpenMeter's per-customer query attributes by the owner at
query time, so after a subject moves upstream it would carry the subject's billed history to
the new customer; reading per subject avoids that. Period meters are read per customer (a
month's unique count does not add up over subjects): a moved subject moves their month-to-date
figure. Before a customer's Stripe record is deleted (`pull_owed`), its former subjects are
read once more and what they owe is bound to it and pushed.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Mapping, Sequence
from datetime import datetime
from typing import Any

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
    _record,
)
from metersync.sources.openmeter._usage_store import (
    _bind_to,
    _customer_ids,
    _former_subjects,
    _store_figures,
    _subjects_to_query,
)
from metersync.store import Store
from metersync.stripe_facts import METER_EVENT_PAST_LIMIT_S
from metersync.times import month_start, rfc3339_seconds
from metersync.usage.reports import push_window_s

_log = get_logger("metersync.sources.openmeter")

BACKFILL_S = METER_EVENT_PAST_LIMIT_S  # as far back as Stripe takes meter events
WINDOW_SIZES = {3600: "HOUR", 86400: "DAY"}
# A meter query's answer: the meter, window size (0: per customer and month), range and rows.
_Fetched = tuple[Meter, int, int, int, list[dict[str, Any]]]


class SourceMismatch(MetersyncError):
    """The configuration does not fit the source (a meter missing upstream, another
    aggregation, a window OpenMeter cannot query)."""


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
        and COUNT, per customer for this month for the period meters. The lookback reaches
        back to before the last successful usage pull (an outage longer than the lookback
        loses nothing), and 35 days on the first pull and when `full`. The OpenMeter calls
        stay on the event loop; the database work runs in a worker thread."""
        result = PullResult()
        now = int(time.time())
        lookback, catalog_pulled, subjects, ids = await asyncio.to_thread(
            self._plan, store, now, full
        )
        try:
            await self._check_meters()
            fetched: list[_Fetched] = []
            for meter in self.meters:
                for per, start, end in self._ranges(meter, now, lookback):
                    rows = await self._query(meter.slug, per, start, end, subjects, ids)
                    fetched.append((meter, per, start, end, rows))
        except SourceUnavailable as exc:
            await asyncio.to_thread(
                _record, store, USAGE_STATE, ok=False, summary={"error": exc.message}
            )
            raise
        await asyncio.to_thread(
            _store_pulled, store, fetched, subjects, ids, now, catalog_pulled, result
        )
        _log.info("pulled usage from OpenMeter", counts=result.counts, lookback_s=lookback)
        return result

    def _plan(
        self, store: Store, now: int, full: bool
    ) -> tuple[int, bool, list[str], dict[str, str]]:
        """The lookback, whether the catalog was ever pulled, the subjects and the customers'
        upstream ids to query (database work: run in a worker thread)."""
        since = _last_success(store, USAGE_STATE)
        catalog_pulled = _last_success(store, CATALOG_STATE) is not None
        if full or since is None:
            lookback = BACKFILL_S
        else:
            behind = now - int(since.timestamp())
            lookback = min(
                BACKFILL_S, max(self.settings.lookback_s, behind + self.settings.lookback_s)
            )
        subjects = _subjects_to_query(store, now - lookback)
        ids = _customer_ids(store)
        return lookback, catalog_pulled, subjects, ids

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
                rows = await self._query(meter.slug, per, start, end, subjects, {})
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

    async def _query(
        self,
        meter: str,
        per: int,
        start: int,
        end: int,
        subjects: Sequence[str],
        ids: Mapping[str, str],
    ) -> list[dict[str, Any]]:
        """Per subject for windowed meters (binding decides the customer, as for local usage);
        per customer for period meters (a month's unique count or maximum does not add up
        over subjects)."""
        chunk = self.settings.customers_per_query
        rows: list[dict[str, Any]] = []
        by_subject = per != 0
        keys = list(subjects) if by_subject else sorted(ids.values())
        for i in range(0, len(keys), chunk):
            part = keys[i : i + chunk]
            rows += await self.client.query(
                meter,
                start=rfc3339_seconds(start),
                end=rfc3339_seconds(end),
                window_size=WINDOW_SIZES.get(per) if per else None,
                subjects=part if by_subject else (),
                customer_ids=() if by_subject else part,
            )
        return rows


def _owed_reads(store: Store, customer_key: str, target: str) -> tuple[list[str], datetime | None]:
    """`pull_owed`'s reads: the customer's former subjects, and when there are any, the last
    successful usage pull (database work: run in a worker thread)."""
    subjects = _former_subjects(store, customer_key, target)
    if not subjects:
        return subjects, None
    return subjects, _last_success(store, USAGE_STATE)


def _store_pulled(
    store: Store,
    fetched: Sequence[_Fetched],
    subjects: list[str],
    ids: Mapping[str, str],
    now: int,
    catalog_pulled: bool,
    result: PullResult,
) -> None:
    """Each query's figures stored, then the pull's record (database work: run in a worker
    thread)."""
    by_id = {v: k for k, v in ids.items()}
    for meter, per, start, end, rows in fetched:
        queried = subjects if per else sorted(ids)
        changed = _store_figures(store, meter.slug, per, start, end, rows, by_id, now, queried)
        result.add("windows", len(rows))
        result.add("changed", changed)
    # Before the catalog was ever pulled there was nobody to ask about: the next pull
    # still reads the whole backfill.
    _record(store, USAGE_STATE, ok=catalog_pulled, summary={"usage": result.counts})
