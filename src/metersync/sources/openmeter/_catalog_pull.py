"""The catalog half of a pull: OpenMeter's subjects and customers (all pages, deleted ones
included) become the local catalog.

A customer is rewritten locally only when its `updatedAt` moved; one deleted upstream (its
`deletedAt`, or gone from the listing) becomes a local tombstone, which the targets' delete
policies and mass-delete guards then handle. A pull that would tombstone more than the sync's
mass-delete fraction refuses, unless allowed: an upstream answering "no customers" by mistake
must not become deletes.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterable, Mapping
from typing import Any

from sqlalchemy import select

from metersync.catalog import Catalog
from metersync.catalog.views import Customer
from metersync.clock import utcnow
from metersync.errors import ExitCode, MetersyncError
from metersync.logs import get_logger
from metersync.settings import OpenMeterSettings
from metersync.sources.openmeter._client import OpenMeterClient, SourceUnavailable
from metersync.sources.openmeter._state import CATALOG_STATE, SOURCE, PullResult, _record
from metersync.store import Store, UpstreamCustomerRow

_log = get_logger("metersync.sources.openmeter")

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


class SourceMassDelete(MetersyncError):
    """Taking the source's word would delete more customers than the guard allows."""

    exit_code = ExitCode.MASS_DELETE_GUARD


class CatalogPull:
    """`OpenMeterSource.pull_catalog`: the reads, the mass-delete guard, then the writes."""

    def __init__(
        self,
        client: OpenMeterClient,
        settings: OpenMeterSettings,
        *,
        max_delete_fraction: float,
        mass_delete_floor: int,
    ) -> None:
        self.client = client
        self.settings = settings
        self.max_delete_fraction = max_delete_fraction
        self.mass_delete_floor = mass_delete_floor

    async def pull_catalog(
        self, catalog: Catalog, *, allow_mass_delete: bool = False
    ) -> PullResult:
        """Subjects and customers. Everything is read before anything is written. The
        OpenMeter calls stay on the event loop; the database work runs in a worker thread."""
        result = PullResult()
        try:
            subjects = await self.client.subjects()
            customers = await self.client.customers(page_size=self.settings.page_size)
        except SourceUnavailable as exc:
            await asyncio.to_thread(
                _record, catalog.store, CATALOG_STATE, ok=False, summary={"error": exc.message}
            )
            raise
        known, local = await asyncio.to_thread(_read_local, catalog)
        try:
            customers += await self._confirm_missing(local, customers, known)
        except SourceUnavailable as exc:
            await asyncio.to_thread(
                _record, catalog.store, CATALOG_STATE, ok=False, summary={"error": exc.message}
            )
            raise
        await asyncio.to_thread(
            self._write, catalog, subjects, customers, known, allow_mass_delete, result
        )
        _log.info("pulled the catalog from OpenMeter", counts=result.counts)
        return result

    async def _confirm_missing(
        self,
        local_customers: list[Customer],
        customers: list[dict[str, Any]],
        known: Mapping[str, UpstreamCustomerRow],
    ) -> list[dict[str, Any]]:
        """A local customer the listing did not show at all, not even as deleted: asked for
        by id before it becomes a tombstone. Returns what OpenMeter says of them (a live one
        stays, a deleted one is deleted); one OpenMeter does not know is left out (deleted)."""
        listed = {str(c.get("id")) for c in customers}
        listed_keys = {_key(c) for c in customers}
        confirmed: list[dict[str, Any]] = []
        for local in local_customers:
            seen = known.get(local.key)
            if local.key in listed_keys or seen is None or seen.upstream_id in listed:
                continue
            found = await self.client.customer(seen.upstream_id)
            if found is not None:
                confirmed.append(found)
        return confirmed

    def _write(
        self,
        catalog: Catalog,
        subjects: list[dict[str, Any]],
        customers: list[dict[str, Any]],
        known: Mapping[str, UpstreamCustomerRow],
        allow_mass_delete: bool,
        result: PullResult,
    ) -> None:
        """The mass-delete guard, then the writes and the pull's record (database work: run
        in a worker thread)."""
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


def _read_local(catalog: Catalog) -> tuple[dict[str, UpstreamCustomerRow], list[Customer]]:
    """What the pull knows of each customer upstream, then the local customers (database
    work: run in a worker thread)."""
    known = _known(catalog.store)
    return known, catalog.list_customers()


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
