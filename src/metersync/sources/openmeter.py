"""OpenMeter as the source: its subjects and customers become the local catalog, its meter
query becomes the usage the push sends to Stripe.

A pull has two halves, so that each job pulls what it is about to use:

- `pull_catalog`: subjects and customers (all pages, deleted ones included). A customer is
  rewritten locally only when its `updatedAt` moved; one deleted upstream (its `deletedAt`, or
  gone from the listing) becomes a local tombstone, which the targets' delete policies and
  mass-delete guards then handle. A pull that would tombstone more than the sync's
  mass-delete fraction refuses, unless allowed: an upstream answering "no customers" by
  mistake must not become deletes.
- `pull_usage`: for every configured meter, the meter query per subject and window
  (windowSize HOUR or DAY, as the push's window), or per customer for this calendar month for
  the period meters (MAX, LATEST, UNIQUE_COUNT), over a trailing `lookback` that reaches back
  to before the last successful usage pull (35 days on the first pull and on a full
  reconcile). The figures land in `upstream_usage`; the push reads them through the same
  ledger, deltas and identifiers as local usage. A late correction upstream changes a
  window's figure and the next push sends the difference; an event that arrives upstream
  later than the lookback is read by the next full reconcile.

Attribution is metersync's, as for local usage: a subject's figures are bound to its
customer when first pushed and stay with it. OpenMeter's per-customer query attributes by
the owner at query time, so after a subject moves upstream it would carry the subject's
billed history to the new customer; reading per subject avoids that. Period meters are read
per customer (a month's unique count does not add up over subjects): a moved subject moves
their month-to-date figure. Before a customer's Stripe record is deleted (`pull_owed`), its
former subjects are read once more and what they owe is bound to it and pushed.

When OpenMeter cannot be read, the pull raises SourceUnavailable before writing anything from
that answer: the run reports it and the next one starts over.
"""

from __future__ import annotations

import time
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import and_, func, select, update
from sqlalchemy.orm import Session

from metersync.catalog import Catalog
from metersync.catalog.meters import Meter
from metersync.clock import utcnow
from metersync.errors import ExitCode, MetersyncError
from metersync.logs import get_logger
from metersync.settings import OpenMeterSettings
from metersync.sources.openmeter_client import OpenMeterClient, SourceUnavailable
from metersync.store import (
    LinkKind,
    LinkRow,
    Store,
    SubjectRow,
    SyncStateRow,
    UpstreamCustomerRow,
    UpstreamUsageRow,
)
from metersync.store.links import routable_subjects
from metersync.stripe_facts import METER_EVENT_PAST_LIMIT_S
from metersync.times import epoch_seconds, month_start, rfc3339_seconds
from metersync.usage.aggregate import WindowValue, subject_owner
from metersync.usage.reports import push_window_s

_log = get_logger("metersync.sources.openmeter")

SOURCE = "openmeter"
# Rows in sync_state: each half's last pull, last success and outcome.
CATALOG_STATE = "source:openmeter:catalog"
USAGE_STATE = "source:openmeter:usage"
PER_CUSTOMER = ""  # the subject of a period meter's figure, which is per customer
BACKFILL_S = METER_EVENT_PAST_LIMIT_S  # as far back as Stripe takes meter events
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
_L = LinkRow.__table__.c  # type: ignore[attr-defined]
_S = SubjectRow.__table__.c  # type: ignore[attr-defined]


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
            _record(catalog.store, CATALOG_STATE, ok=False, summary={"error": exc.message})
            raise
        known = _known(catalog.store)
        try:
            customers += await self._confirm_missing(catalog, customers, known)
        except SourceUnavailable as exc:
            _record(catalog.store, CATALOG_STATE, ok=False, summary={"error": exc.message})
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
        _record(catalog.store, CATALOG_STATE, ok=True, summary={"catalog": result.counts})
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
        """Every configured meter's figures over the lookback: per subject and window for SUM
        and COUNT, per customer for this month for the period meters. The lookback reaches
        back to before the last successful usage pull (an outage longer than the lookback
        loses nothing), and 35 days on the first pull and when `full`."""
        result = PullResult()
        now = int(time.time())
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
        try:
            await self._check_meters()
            fetched: list[tuple[Meter, int, int, int, list[dict[str, Any]]]] = []
            for meter in self.meters:
                for per, start, end in self._ranges(meter, now, lookback):
                    rows = await self._query(meter.slug, per, start, end, subjects, ids)
                    fetched.append((meter, per, start, end, rows))
        except SourceUnavailable as exc:
            _record(store, USAGE_STATE, ok=False, summary={"error": exc.message})
            raise
        by_id = {v: k for k, v in ids.items()}
        for meter, per, start, end, rows in fetched:
            queried = subjects if per else sorted(ids)
            changed = _store_figures(store, meter.slug, per, start, end, rows, by_id, now, queried)
            result.add("windows", len(rows))
            result.add("changed", changed)
        # Before the catalog was ever pulled there was nobody to ask about: the next pull
        # still reads the whole backfill.
        _record(store, USAGE_STATE, ok=catalog_pulled, summary={"usage": result.counts})
        _log.info("pulled usage from OpenMeter", counts=result.counts, lookback_s=lookback)
        return result

    async def pull_owed(self, store: Store, customer_key: str, *, target: str) -> None:
        """Before `customer_key`'s record in `target` is deleted: read its subjects' latest
        figures and bind what is unbound to it, so the flush that follows bills what it
        still owes. Its subjects are those whose usage `target` routed to its record (the
        catalog already let go of them when the customer was deleted upstream)."""
        subjects = _former_subjects(store, customer_key, target)
        if not subjects:
            return
        now = int(time.time())
        since = _last_success(store, USAGE_STATE)
        behind = now - int(since.timestamp()) if since else BACKFILL_S
        lookback = min(BACKFILL_S, behind + self.settings.lookback_s)
        for meter in self.meters:
            per = push_window_s(meter, self.window_s)
            if not per:
                continue  # period figures are the customer's own rows, already stored
            for _, start, end in self._ranges(meter, now, lookback):
                rows = await self._query(meter.slug, per, start, end, subjects, {})
                _store_figures(store, meter.slug, per, start, end, rows, {}, now, subjects)
        _bind_to(store, subjects, customer_key)

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


# -- upstream usage as the push reads it ---------------------------------------------------------


class OpenMeterAggregates:
    """The figures `pull_usage` stored, in the shape the usage push reads (UsageAggregates)."""

    name = SOURCE

    def bind(self, store: Store, target: str) -> int:
        """Bind unbound subject figures to their subject's customer where it has a live link
        in `target`, as local usage is bound (aggregate.bind_usage)."""
        routable = routable_subjects(target)
        owner = subject_owner(_U.subject)
        with store.session() as session:
            done = session.execute(
                update(UpstreamUsageRow)
                .where(
                    _U.source == SOURCE,
                    _U.customer_key.is_(None),
                    _U.subject.in_(routable),
                )
                .values(customer_key=owner, changed_at=utcnow())
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


def _former_subjects(store: Store, customer_key: str, target: str) -> list[str]:
    """Subjects whose usage `target` routes to the customer's record (their subject links),
    and subjects with figures bound to the customer."""
    customer_link = (
        select(_L.external_id)
        .where(_L.target == target, _L.kind == LinkKind.CUSTOMER, _L.local_key == customer_key)
        .scalar_subquery()
    )
    with store.read_session() as session:
        keys = set(
            session.execute(
                select(_L.local_key).where(
                    _L.target == target,
                    _L.kind == LinkKind.SUBJECT,
                    _L.external_id.is_not(None),
                    _L.external_id == customer_link,
                )
            ).scalars()
        )
        keys.update(
            session.execute(
                select(_U.subject)
                .where(
                    _U.source == SOURCE,
                    _U.customer_key == customer_key,
                    _U.subject != PER_CUSTOMER,
                )
                .distinct()
            ).scalars()
        )
    return sorted(keys)


def _bind_to(store: Store, subjects: Sequence[str], customer_key: str) -> None:
    with store.session() as session:
        session.execute(
            update(UpstreamUsageRow)
            .where(
                _U.source == SOURCE,
                _U.customer_key.is_(None),
                _U.subject.in_(list(subjects)),
            )
            .values(customer_key=customer_key, changed_at=utcnow())
            .execution_options(synchronize_session=False)
        )


def _subjects_to_query(store: Store, since: int) -> list[str]:
    """Every subject the catalog knows (live or not: a deleted customer's subjects may still
    owe usage), and every subject with figures in the range."""
    with store.read_session() as session:
        keys = set(session.execute(select(_S.key)).scalars())
        keys.update(
            session.execute(
                select(_U.subject)
                .where(_U.source == SOURCE, _U.subject != PER_CUSTOMER, _U.window_start >= since)
                .distinct()
            ).scalars()
        )
    return sorted(keys)


def _store_figures(
    store: Store,
    meter: str,
    per: int,
    start: int,
    end: int,
    rows: list[dict[str, Any]],
    by_id: Mapping[str, str],
    now: int,
    queried: Sequence[str],
) -> int:
    """Replace the stored figures of [start, end) of the `queried` subjects (per customer for
    period meters: their keys) with OpenMeter's answer; returns how many changed. A figure
    that changes keeps its binding (usage stays with the customer it went to); a window of a
    queried subject OpenMeter no longer reports becomes 0, so the push sees the fall. Rows of
    what was not queried (a deleted customer's month) are left as they are."""
    figures: dict[tuple[str, int], tuple[float, str | None]] = {}
    for row in rows:
        if per:
            subject = str(row.get("subject") or "")
            if not subject:
                continue
            figures[(subject, epoch_seconds(row["windowStart"]))] = (
                float(row.get("value") or 0),
                None,
            )
        else:
            key = by_id.get(str(row.get("customerId") or ""))
            if key is not None:
                figures[(key, start)] = (float(row.get("value") or 0), key)
    stamp = utcnow()
    changed = 0
    with store.session() as session:
        existing = {
            (str(subject), int(window)): float(value)
            for subject, window, value in session.execute(
                select(_U.subject, _U.window_start, _U.value).where(
                    _U.source == SOURCE,
                    _U.meter == meter,
                    _U.window_s == per,
                    _U.window_start >= start,
                    _U.window_start < end,
                    _U.subject.in_(list(queried)),
                )
            )
        }
        for (subject, window), (value, customer) in figures.items():
            before = existing.pop((subject, window), None)
            if before == value:
                continue
            latest = min(now, window + per - 1) if per else now
            _write_figure(session, meter, per, subject, window, value, latest, customer, stamp)
            changed += 1
        for (subject, window), value in existing.items():
            if value != 0:
                latest = min(now, window + per - 1) if per else now
                _write_figure(session, meter, per, subject, window, 0.0, latest, None, stamp)
                changed += 1
    return changed


def _write_figure(
    session: Session,
    meter: str,
    per: int,
    subject: str,
    window: int,
    value: float,
    latest_s: int,
    customer: str | None,
    stamp: datetime,
) -> None:
    """Insert or update one figure. An update keeps the row's customer: a subject's figure is
    bound once; a period meter's row is the customer's own."""
    key = (
        _U.source == SOURCE,
        _U.meter == meter,
        _U.subject == (customer if per == 0 and customer else subject),
        _U.window_s == per,
        _U.window_start == window,
    )
    found = session.execute(
        update(UpstreamUsageRow)
        .where(*key)
        .values(value=value, latest_us=latest_s * 1_000_000, changed_at=stamp)
    )
    if int(found.rowcount or 0):  # type: ignore[attr-defined]
        return
    session.add(
        UpstreamUsageRow(
            source=SOURCE,
            meter=meter,
            subject=customer if per == 0 and customer else subject,
            window_s=per,
            window_start=window,
            value=value,
            latest_us=latest_s * 1_000_000,
            customer_key=customer,
            changed_at=stamp,
        )
    )


# -- state ---------------------------------------------------------------------------------------


def _last_success(store: Store, name: str) -> datetime | None:
    with store.read_session() as session:
        row = session.get(SyncStateRow, name)
        when = row.last_success_at if row else None
    if when is not None and when.tzinfo is None:
        when = when.replace(tzinfo=UTC)
    return when


def _record(store: Store, name: str, *, ok: bool, summary: Mapping[str, Any]) -> None:
    """A pull's outcome, for status and for the next pull: when it ran and last succeeded,
    and what it saw (or the error)."""
    now = utcnow()
    with store.session() as session:
        row = session.get(SyncStateRow, name) or SyncStateRow(target=name)
        row.last_tick_at = now
        merged = {k: v for k, v in (row.last_summary or {}).items() if k != "error"}
        merged.update(summary)
        if ok:
            row.last_success_at = now
        row.last_summary = merged
        session.add(row)


def source_status(store: Store) -> dict[str, Any]:
    now = utcnow()
    parts: dict[str, Any] = {}
    errors = []
    for part, name in (("catalog", CATALOG_STATE), ("usage", USAGE_STATE)):
        with store.read_session() as session:
            row = session.get(SyncStateRow, name)
        success = _last_success(store, name)
        summary = (row.last_summary if row else None) or {}
        if summary.get("error"):
            errors.append(f"{part}: {summary['error']}")
        parts[part] = {
            "lastPullAt": row.last_tick_at.isoformat(timespec="seconds")
            if row and row.last_tick_at
            else None,
            "lastSuccessAt": success.isoformat(timespec="seconds") if success else None,
            "lagSeconds": round((now - success).total_seconds(), 1) if success else None,
            "error": summary.get("error"),
        }
    lags = [p["lagSeconds"] for p in parts.values() if p["lagSeconds"] is not None]
    return {
        "source": SOURCE,
        "lagSeconds": max(lags) if lags else None,
        "error": "; ".join(errors) or None,
        **parts,
    }
