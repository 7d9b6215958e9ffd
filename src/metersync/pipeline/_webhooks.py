"""Stripe webhook events, stored by the service as they arrive (service.webhooks), processed
here: `customer.updated` and `customer.deleted` for a customer metersync manages trigger a
targeted reconcile of that customer (drift repaired, a customer deleted in Stripe recreated by
policy) without waiting for the nightly full reconcile. Anything else, or a customer we do not
manage, is acknowledged and recorded as ignored: never an error loop.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Sequence
from datetime import datetime

from sqlalchemy import Row, select, update

from metersync.catalog import Catalog
from metersync.clock import utcnow
from metersync.logs import get_logger
from metersync.store import Store, WebhookEventRow
from metersync.sync.customer_sync import SyncOptions, sync_customer_keys
from metersync.sync.journal import Journal
from metersync.sync.ports import Target

_log = get_logger("metersync.webhooks")
HANDLED = ("customer.updated", "customer.deleted")
_table = WebhookEventRow.__table__  # type: ignore[attr-defined]
_w = _table.c


async def process_pending(
    catalog: Catalog, target: Target, options: SyncOptions, *, limit: int = 100
) -> dict[str, int]:
    """Process stored events not processed yet, oldest first; returns outcomes counted. The
    database work runs in a worker thread, the target's calls on the event loop."""
    store = catalog.store
    rows = await asyncio.to_thread(_pending, store, limit)
    journal = Journal(store, target.name)
    counts: dict[str, int] = {}
    for event_id, event_type, payload in rows:
        outcome = await _process(catalog, target, options, journal, event_type, payload)
        await asyncio.to_thread(_mark, store, event_id, outcome)
        kind = outcome.split(":", 1)[0]
        counts[kind] = counts.get(kind, 0) + 1
        _log.info("webhook processed", event_id=event_id, type=event_type, outcome=outcome)
    return counts


async def _process(
    catalog: Catalog,
    target: Target,
    options: SyncOptions,
    journal: Journal,
    event_type: str,
    payload: str,
) -> str:
    if event_type not in HANDLED:
        return f"ignored: {event_type} is not an event metersync acts on"
    try:
        external_id = str(json.loads(payload)["data"]["object"]["id"])
    except (ValueError, KeyError, TypeError):
        return "ignored: no customer in the event"
    link = await asyncio.to_thread(journal.by_external_id, external_id)
    if link is None:
        return f"ignored: {external_id} is not a customer metersync manages"
    result = await sync_customer_keys(catalog, target, options, [link.key])
    done = {k: v for k, v in result.counts.items() if v}
    return f"reconciled: {link.key} {done}"


def _pending(store: Store, limit: int) -> Sequence[Row[str, str, str]]:
    """Up to `limit` stored events not processed yet, oldest first (database work: run in a
    worker thread)."""
    with store.read_session() as session:
        return session.execute(
            select(_w.id, _w.type, _w.payload)
            .where(_w.processed_at.is_(None))
            .order_by(_w.received_at, _w.id)
            .limit(limit)
        ).all()


def _mark(store: Store, event_id: str, outcome: str) -> None:
    """Record an event's outcome (database work: run in a worker thread)."""
    with store.session() as session:
        session.execute(
            update(_table)
            .where(_w.id == event_id)
            .values(processed_at=utcnow(), outcome=outcome[:2000])
        )


def replay_webhooks(
    store: Store, *, since: datetime | None = None, event_ids: Sequence[str] = ()
) -> int:
    """Mark stored events unprocessed again (all since `since`, or the ids given)."""
    query = update(_table).values(processed_at=None, outcome=None)
    if event_ids:
        query = query.where(_w.id.in_(list(event_ids)))
    elif since is not None:
        query = query.where(_w.received_at >= since)
    with store.session() as session:
        return int(session.execute(query).rowcount or 0)  # type: ignore[attr-defined]
