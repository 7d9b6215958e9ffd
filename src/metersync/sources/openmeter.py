"""OpenMeter as the source: its subjects and customers become the local catalog, its meter
query becomes the usage the push sends to Stripe.

A pull has two halves, so that each job pulls what it is about to use:

- `pull_catalog`: subjects and customers (all pages, deleted ones included). A customer is
  rewritten locally only when its `updatedAt` moved; one deleted upstream (its `deletedAt`, or
  gone from the listing) becomes a local tombstone, which the targets' delete policies and
  mass-delete guards then handle. A pull that would tombstone more than the sync's
  mass-delete fraction refuses, unless allowed: an upstream answering "no customers" by
  mistake must not become deletes.
- `pull_usage`: for every configured meter, the meter query per customer (windowSize HOUR or
  DAY, as the push's window; the calendar month to date, one figure per customer, for the
  period meters MAX, LATEST and UNIQUE_COUNT), over a trailing `lookback` (35 days on the first
  pull and on a full reconcile). The figures land in `upstream_usage`; the push reads them
  through the same ledger, deltas and identifiers as local usage. A late correction upstream
  changes a window's figure and the next push sends the difference.

Attribution is OpenMeter's: its query counts an event for the customer whose usage
attribution holds the subject at query time. A window metersync already pushed for one
customer stays pushed (the ledger); after a re-attribution upstream, what the other customer
gains is pushed to it, and what the first one lost is reported (a total that fell), never
taken back.

When OpenMeter cannot be read, the pull raises SourceUnavailable before writing anything from
that answer: the run reports it and the next one starts over.
"""

from __future__ import annotations

import time
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import and_, delete, func, select
from sqlalchemy.orm import Session

from metersync.catalog import Catalog
from metersync.clock import utcnow
from metersync.errors import ExitCode, MetersyncError
from metersync.logs import get_logger
from metersync.settings import OpenMeterSettings
from metersync.sources.openmeter_client import OpenMeterClient, SourceUnavailable
from metersync.store import Store, SyncStateRow, UpstreamCustomerRow, UpstreamUsageRow
from metersync.usage.aggregate import WindowValue, month_start
from metersync.usage.meters import Meter
from metersync.usage.reports import push_window_s

_log = get_logger("metersync.sources.openmeter")

SOURCE = "openmeter"
STATE = "source:openmeter"  # its row in sync_state: last pull, last success, last outcome
BACKFILL_S = 35 * 86400  # Stripe takes meter events up to 35 days old
WINDOW_SIZES = {3600: "HOUR", 86400: "DAY"}
# The customer fields a pull copies (OpenMeter's names); the rest of its record is its own.
_CUSTOMER_FIELDS = (
    "key",
    "name",
    "description",
    "primaryEmail",
    "currency",
    "billingAddress",
    "metadata",
    "usageAttribution",
)
_U = UpstreamUsageRow.__table__.c  # type: ignore[attr-defined]


class SourceMismatch(MetersyncError):
    """The configuration does not fit the source (a meter missing upstream, another
    aggregation, a window OpenMeter cannot query)."""


class SourceMassDelete(MetersyncError):
    """Taking the source's word would delete more customers than the guard allows."""

    exit_code = ExitCode.MASS_DELETE_GUARD


@dataclass
class PullResult:
    counts: dict[str, int] = field(default_factory=dict)
    problems: list[str] = field(default_factory=list)  # upstream records that were refused

    def add(self, name: str, n: int = 1) -> None:
        if n:
            self.counts[name] = self.counts.get(name, 0) + n

    def to_json(self) -> dict[str, Any]:
        return {"counts": self.counts, "problems": self.problems}


class OpenMeterSource:
    def __init__(
        self,
        settings: OpenMeterSettings,
        meters: Sequence[Meter],
        *,
        window_s: int,
        max_delete_fraction: float = 0.1,
        mass_delete_floor: int = 3,
    ) -> None:
        self.settings = settings
        self.meters = list(meters)
        self.window_s = window_s
        self.max_delete_fraction = max_delete_fraction
        self.mass_delete_floor = mass_delete_floor
        assert settings.url is not None
        self.client = OpenMeterClient(
            settings.url,
            settings.resolved_token(),
            timeout_s=settings.timeout_s,
            retries=settings.retries,
        )

    async def close(self) -> None:
        await self.client.close()

    # -- the catalog -------------------------------------------------------------------------

    async def pull_catalog(
        self, catalog: Catalog, *, allow_mass_delete: bool = False
    ) -> PullResult:
        """Subjects and customers. Everything is read before anything is written."""
        result = PullResult()
        try:
            subjects = await self.client.subjects()
            customers = await self.client.customers(page_size=self.settings.page_size)
        except SourceUnavailable as exc:
            _record(catalog.store, ok=False, summary={"error": exc.message})
            raise
        known = _known(catalog.store)
        try:
            customers += await self._confirm_missing(catalog, customers, known)
        except SourceUnavailable as exc:
            _record(catalog.store, ok=False, summary={"error": exc.message})
            raise
        self._guard(catalog, customers, allow_mass_delete)
        live = [c for c in customers if not c.get("deletedAt")]
        wanted_subjects = {str(s["key"]) for s in subjects if s.get("key")}
        for customer in live:
            wanted_subjects.update(_subject_keys(customer))
        _delete_customers(catalog, customers, result)
        _free_moved_subjects(catalog, live, result)
        _put_customers(catalog, live, known, result)
        _sync_subjects(catalog, subjects, wanted_subjects, result)
        _remember(catalog.store, customers)
        _record(catalog.store, ok=True, summary={"catalog": result.counts})
        _log.info("pulled the catalog from OpenMeter", counts=result.counts)
        return result

    async def _confirm_missing(
        self,
        catalog: Catalog,
        customers: list[dict[str, Any]],
        known: Mapping[str, UpstreamCustomerRow],
    ) -> list[dict[str, Any]]:
        """A local customer the listing did not show at all, not even as deleted: asked for
        by id before it becomes a tombstone. Returns what OpenMeter says of them (a live one
        stays, a deleted one is deleted); one OpenMeter does not know is left out (deleted)."""
        listed = {str(c.get("id")) for c in customers}
        listed_keys = {_key(c) for c in customers}
        confirmed: list[dict[str, Any]] = []
        for local in catalog.list_customers():
            seen = known.get(local.key)
            if local.key in listed_keys or seen is None or seen.upstream_id in listed:
                continue
            found = await self.client.customer(seen.upstream_id)
            if found is not None:
                confirmed.append(found)
        return confirmed

    def _guard(
        self, catalog: Catalog, customers: list[dict[str, Any]], allow_mass_delete: bool
    ) -> None:
        local = {c.key for c in catalog.list_customers()}
        upstream_live = {_key(c) for c in customers if not c.get("deletedAt")}
        leaving = len(local - upstream_live)
        if allow_mass_delete or leaving < self.mass_delete_floor:
            return
        if leaving > self.max_delete_fraction * max(len(local), 1):
            raise SourceMassDelete(
                f"OpenMeter lists {len(upstream_live)} live customers; taking that would delete "
                f"{leaving} of the {len(local)} local ones, more than sync.max_delete_fraction "
                f"({self.max_delete_fraction:g}). Nothing was changed. If this is intended, "
                "re-run with --allow-mass-delete."
            )

    # -- usage -------------------------------------------------------------------------------

    async def pull_usage(self, store: Store, *, full: bool = False) -> PullResult:
        """Every configured meter's figures per customer over the lookback (35 days when full
        or on the first pull)."""
        result = PullResult()
        now = int(time.time())
        state = _state(store)
        first = state is None or state.last_summary is None or "usage" not in state.last_summary
        lookback = BACKFILL_S if full or first else self.settings.lookback_s
        ids = _customer_ids(store)
        try:
            upstream = await self._check_meters()
            fetched: list[tuple[Meter, int, int, int, list[dict[str, Any]]]] = []
            for meter in self.meters:
                for per, start, end in self._ranges(meter, now, lookback):
                    rows = await self._query(upstream[meter.slug], ids, per, start, end)
                    fetched.append((meter, per, start, end, rows))
        except SourceUnavailable as exc:
            _record(store, ok=False, summary={"error": exc.message})
            raise
        by_id = {v: k for k, v in ids.items()}
        for meter, per, start, end, rows in fetched:
            changed = _store_figures(store, meter.slug, per, start, end, rows, by_id, now)
            result.add("windows", len(rows))
            result.add("changed", changed)
        _record(store, ok=True, summary={"usage": result.counts})
        _log.info("pulled usage from OpenMeter", counts=result.counts, lookback_s=lookback)
        return result

    async def _check_meters(self) -> dict[str, dict[str, Any]]:
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
        return upstream

    def _ranges(self, meter: Meter, now: int, lookback: int) -> list[tuple[int, int, int]]:
        """(window, start, end) ranges to query: windows over the lookback, or for a period
        meter this month (and last month too, when the lookback reaches into it)."""
        per = push_window_s(meter, self.window_s)
        if per:
            start = (now - lookback) // per * per
            return [(per, start, -(-(now + 1) // per) * per)]
        this_month = month_start(now)
        ranges = [(0, this_month, now + 1)]
        if now - lookback < this_month:
            ranges.append((0, month_start(this_month - 1), this_month))
        return ranges

    async def _query(
        self, meter: Mapping[str, Any], ids: Mapping[str, str], per: int, start: int, end: int
    ) -> list[dict[str, Any]]:
        rows: list[dict[str, Any]] = []
        chunk = self.settings.customers_per_query
        upstream_ids = sorted(ids.values())
        for i in range(0, len(upstream_ids), chunk):
            rows += await self.client.query(
                str(meter.get("slug")),
                customer_ids=upstream_ids[i : i + chunk],
                start=_rfc3339(start),
                end=_rfc3339(end),
                window_size=WINDOW_SIZES.get(per) if per else None,
            )
        return rows


# -- upstream usage as the push reads it ---------------------------------------------------------


class OpenMeterAggregates:
    """The figures `pull_usage` stored, in the shape the usage push reads (UsageAggregates)."""

    name = SOURCE

    def bind(self, store: Store, target: str) -> int:
        return 0  # OpenMeter attributes usage to customers itself

    def waiting_subjects(self, store: Store) -> dict[str, int]:
        return {}

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
        stored_per = (
            0 if push_window_s(meter, 3600) == 0 else _stored_window(store, meter.slug) or 3600
        )
        conditions = [_U.source == SOURCE, _U.meter == meter.slug, _U.window_s == stored_per]
        if customers is not None:
            conditions.append(_U.customer_key.in_(list(customers)))
        if start is not None:
            conditions.append(_U.window_start >= (month_start(start) if window_s == 0 else start))
        if end is not None:
            conditions.append(_U.window_start < end)
        with store.read_session() as session:
            rows = session.execute(
                select(_U.customer_key, _U.window_start, _U.value, _U.latest_us)
                .where(and_(*conditions))
                .order_by(_U.customer_key, _U.window_start)
            ).all()
        if window_s == stored_per or stored_per == 0:
            return [WindowValue(k, int(w), float(v), int(t)) for k, w, v, t in rows if v]
        # Wider windows than stored (a month of hours, for the CRM's month to date): summed.
        folded: dict[tuple[str, int], WindowValue] = {}
        for key, window, value, latest in rows:
            wider = (
                month_start(int(window)) if window_s == 0 else int(window) // window_s * window_s
            )
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
                        _U.changed_at >= after,
                    )
                    .distinct()
                ).scalars()
            )


# -- the catalog's writes ------------------------------------------------------------------------


def _key(customer: Mapping[str, Any]) -> str:
    """OpenMeter's key, or its id when it has none (the local catalog needs one)."""
    return str(customer.get("key") or customer["id"])


def _subject_keys(customer: Mapping[str, Any]) -> list[str]:
    attribution = customer.get("usageAttribution") or {}
    return [str(k) for k in attribution.get("subjectKeys") or []]


def _as_local(customer: Mapping[str, Any]) -> dict[str, Any]:
    record = {f: customer[f] for f in _CUSTOMER_FIELDS if customer.get(f) is not None}
    record["key"] = _key(customer)
    return record


def _known(store: Store) -> dict[str, UpstreamCustomerRow]:
    with store.read_session() as session:
        rows = session.execute(
            select(UpstreamCustomerRow).where(UpstreamCustomerRow.source == SOURCE)  # type: ignore[arg-type]
        ).scalars()
        return {r.local_key: r for r in rows}


def _delete_customers(
    catalog: Catalog, customers: list[dict[str, Any]], result: PullResult
) -> None:
    """Deleted upstream (deletedAt), or no longer listed at all: a local tombstone."""
    live = {_key(c) for c in customers if not c.get("deletedAt")}
    for local in catalog.list_customers():
        if local.key not in live:
            catalog.delete_customer(local.key)
            result.add("customers_deleted")


def _free_moved_subjects(catalog: Catalog, live: list[dict[str, Any]], result: PullResult) -> None:
    """A subject moved from one customer to another upstream: take it off the old one first,
    since a subject belongs to one customer at a time here too."""
    owner = {s: _key(c) for c in live for s in _subject_keys(c)}
    for local in catalog.list_customers():
        kept = [s for s in local.subject_keys if owner.get(s) in (None, local.key)]
        if len(kept) != len(local.subject_keys):
            catalog.update_customer(local.key, {"usageAttribution": {"subjectKeys": kept}})
            result.add("subjects_moved", len(local.subject_keys) - len(kept))


def _put_customers(
    catalog: Catalog,
    live: list[dict[str, Any]],
    known: Mapping[str, UpstreamCustomerRow],
    result: PullResult,
) -> None:
    local = {c.key for c in catalog.list_customers()}
    for customer in live:
        key = _key(customer)
        seen = known.get(key)
        unchanged = (
            key in local
            and seen is not None
            and not seen.deleted
            and seen.upstream_updated_at == customer.get("updatedAt")
        )
        if unchanged:
            continue
        try:
            outcome = catalog.put_customer(_as_local(customer))
        except MetersyncError as exc:
            # Bad data upstream (an email we cannot send to Stripe, a key too long): refused
            # alone, named, and tried again when it changes upstream.
            result.problems.append(f"customer {key!r}: {exc.message}")
            continue
        result.add(f"customers_{outcome.outcome.value}")


def _sync_subjects(
    catalog: Catalog,
    subjects: list[dict[str, Any]],
    wanted: set[str],
    result: PullResult,
) -> None:
    local = {s.key: s for s in catalog.list_subjects()}
    for subject in subjects:
        key = str(subject.get("key") or "")
        if not key:
            continue
        have = local.get(key)
        name, metadata = subject.get("displayName"), subject.get("metadata") or {}
        if have is not None and have.display_name == name and dict(have.metadata) == metadata:
            continue
        try:
            catalog.upsert_subject(
                {"key": key, "displayName": name, "metadata": metadata}, auto_customer=False
            )
        except MetersyncError as exc:
            result.problems.append(f"subject {key!r}: {exc.message}")
            continue
        result.add("subjects_upserted")
    for key in sorted(set(local) - wanted):
        catalog.delete_subject(key)
        result.add("subjects_deleted")


def _remember(store: Store, customers: Iterable[Mapping[str, Any]]) -> None:
    """Each customer's upstream id and updatedAt: the meter query filters by the id, and the
    next pull rewrites a customer only when its updatedAt moved. One key can be listed more
    than once (a deleted customer and the live one that took its key over, or several
    deleted ones): the live one wins, else the latest."""
    chosen: dict[str, Mapping[str, Any]] = {}
    for customer in customers:
        key = _key(customer)
        before = chosen.get(key)
        if before is None or _rank(customer) > _rank(before):
            chosen[key] = customer
    now = utcnow()
    with store.session() as session:
        rows = {
            r.local_key: r
            for r in session.execute(
                select(UpstreamCustomerRow).where(UpstreamCustomerRow.source == SOURCE)  # type: ignore[arg-type]
            ).scalars()
        }
        for key, customer in chosen.items():
            row = rows.get(key) or UpstreamCustomerRow(
                source=SOURCE, local_key=key, upstream_id=str(customer["id"])
            )
            row.upstream_id = str(customer["id"])
            row.upstream_updated_at = customer.get("updatedAt")
            row.deleted = bool(customer.get("deletedAt"))
            row.seen_at = now
            session.add(row)


def _rank(customer: Mapping[str, Any]) -> tuple[bool, str]:
    return (not customer.get("deletedAt"), str(customer.get("updatedAt") or ""))


def _customer_ids(store: Store) -> dict[str, str]:
    with store.read_session() as session:
        rows = session.execute(
            select(UpstreamCustomerRow.local_key, UpstreamCustomerRow.upstream_id).where(  # type: ignore[call-overload]
                UpstreamCustomerRow.source == SOURCE,
                UpstreamCustomerRow.deleted.is_(False),  # type: ignore[attr-defined]
            )
        )
        return {str(k): str(v) for k, v in rows}


# -- usage's writes ------------------------------------------------------------------------------


def _store_figures(
    store: Store,
    meter: str,
    per: int,
    start: int,
    end: int,
    rows: list[dict[str, Any]],
    by_id: Mapping[str, str],
    now: int,
) -> int:
    """Replace the stored figures of [start, end) with OpenMeter's answer; returns how many
    changed. A window OpenMeter no longer reports (its events moved to another customer)
    becomes 0, so the push sees the fall instead of an old figure."""
    figures: dict[tuple[str, int], float] = {}
    for row in rows:
        key = by_id.get(str(row.get("customerId") or ""))
        if key is None:
            continue
        window = month_start(start) if per == 0 else _epoch(row["windowStart"])
        figures[(key, window)] = float(row.get("value") or 0)
    stamp = utcnow()
    changed = 0
    with store.session() as session:
        existing = {
            (k, int(w)): (float(v), int(t))
            for k, w, v, t in session.execute(
                select(_U.customer_key, _U.window_start, _U.value, _U.latest_us).where(
                    _U.source == SOURCE,
                    _U.meter == meter,
                    _U.window_s == per,
                    _U.window_start >= start,
                    _U.window_start < end,
                )
            )
        }
        for (key, window), value in figures.items():
            before = existing.pop((key, window), None)
            if before is not None and before[0] == value:
                continue
            latest = min(now, window + per - 1) if per else now
            _upsert(session, meter, per, key, window, value, latest, stamp)
            changed += 1
        for (key, window), (value, latest_us) in existing.items():
            if value != 0:
                _upsert(session, meter, per, key, window, 0.0, latest_us // 1_000_000, stamp)
                changed += 1
    return changed


def _upsert(
    session: Session,
    meter: str,
    per: int,
    key: str,
    window: int,
    value: float,
    latest_s: int,
    stamp: datetime,
) -> None:
    session.execute(
        delete(UpstreamUsageRow).where(
            _U.source == SOURCE,
            _U.meter == meter,
            _U.customer_key == key,
            _U.window_s == per,
            _U.window_start == window,
        )
    )
    session.add(
        UpstreamUsageRow(
            source=SOURCE,
            meter=meter,
            customer_key=key,
            window_s=per,
            window_start=window,
            value=value,
            latest_us=latest_s * 1_000_000,
            changed_at=stamp,
        )
    )


def _stored_window(store: Store, meter: str) -> int | None:
    with store.read_session() as session:
        found = session.execute(
            select(func.max(_U.window_s)).where(_U.source == SOURCE, _U.meter == meter)
        ).scalar()
    return int(found) if found else None


# -- state ---------------------------------------------------------------------------------------


def _state(store: Store) -> SyncStateRow | None:
    with store.read_session() as session:
        return session.get(SyncStateRow, STATE)


def _record(store: Store, *, ok: bool, summary: Mapping[str, Any]) -> None:
    """The pull's outcome, for status: when it last ran and succeeded, and what it saw."""
    now = utcnow()
    with store.session() as session:
        row = session.get(SyncStateRow, STATE) or SyncStateRow(target=STATE)
        row.last_tick_at = now
        merged = dict(row.last_summary or {})
        merged.pop("error", None)
        merged.update(summary)
        if ok:
            row.last_success_at = now
        row.last_summary = merged
        session.add(row)


def source_status(store: Store) -> dict[str, Any]:
    state = _state(store)
    now = utcnow()
    success = state.last_success_at if state else None
    if success is not None and success.tzinfo is None:
        success = success.replace(tzinfo=UTC)
    summary = (state.last_summary if state else None) or {}
    return {
        "source": SOURCE,
        "lastPullAt": state.last_tick_at.isoformat(timespec="seconds")
        if state and state.last_tick_at
        else None,
        "lastSuccessAt": success.isoformat(timespec="seconds") if success else None,
        "lagSeconds": round((now - success).total_seconds(), 1) if success else None,
        "error": summary.get("error"),
        "last": {k: v for k, v in summary.items() if k != "error"},
    }


def _rfc3339(seconds: int) -> str:
    return datetime.fromtimestamp(seconds, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def _epoch(text: Any) -> int:
    return int(datetime.fromisoformat(str(text).replace("Z", "+00:00")).timestamp())
