"""Manual links: tie a local customer to an existing target record, or let one go.

The target's calls stay on the event loop; the database work runs in a worker thread."""

from __future__ import annotations

import asyncio

from metersync.catalog import Catalog
from metersync.catalog.views import Customer
from metersync.errors import Conflict, NotFound
from metersync.sync.apply import idempotency_key
from metersync.sync.journal import Journal
from metersync.sync.model import digest
from metersync.sync.ports import Target


async def link_customer(catalog: Catalog, target: Target, key: str, external_id: str) -> None:
    """Link `key` to `external_id` after checking both exist and neither is taken.

    The record is adopted as it is; the next reconcile pushes the catalog's fields and marks it
    managed. Nothing is written to the target here.
    """
    journal = Journal(catalog.store, target.name)
    customer = await asyncio.to_thread(_check_free, catalog, journal, key, external_id)
    record = await target.retrieve(external_id)
    if record is None:
        raise NotFound(f"{target.name} customer {external_id} does not exist (or was deleted)")
    if record.key is not None and record.key != customer.key:
        raise Conflict(
            f"{target.name} customer {external_id} is managed for customer {record.key!r}"
        )
    # What we know it holds: its fields, and none of its metadata as ours yet.
    await asyncio.to_thread(
        journal.mark_synced,
        key,
        external_id=external_id,
        pushed={"fields": dict(record.fields), "metadata": {}},
    )


def _check_free(catalog: Catalog, journal: Journal, key: str, external_id: str) -> Customer:
    """The customer `key`, once neither it nor `external_id` is linked elsewhere (database
    work: run in a worker thread)."""
    customer = catalog.get_customer(key)
    current = journal.link(key)
    if (
        current is not None
        and current.external_id
        and current.external_id != external_id
        and current.state not in ("deleted", "released")
    ):
        raise Conflict(
            f"customer {key!r} is already linked to {current.external_id}; unlink it first"
        )
    other = journal.by_external_id(external_id)
    if other is not None and other.key != key and other.state not in ("deleted", "released"):
        raise Conflict(
            f"{journal.target} customer {external_id} is already linked to customer {other.key!r}"
        )
    return customer


async def unlink_customer(catalog: Catalog, target: Target, key: str) -> str:
    """Stop managing the record linked to `key`: its marker is removed, the record stays."""
    journal = Journal(catalog.store, target.name)
    link = await asyncio.to_thread(journal.link, key)
    if link is None:
        raise NotFound(f"customer {key!r} is not linked to {target.name}")
    external_id = link.external_id
    if external_id and link.state not in ("deleted", "released"):
        idem = idempotency_key(
            target.name, "release", key, link.generation, digest([external_id, "release"])
        )
        record = await target.retrieve(external_id)
        if record is not None and record.key == key:
            await target.release(external_id, idem)
    await asyncio.to_thread(journal.unlink, key)
    return external_id or ""
