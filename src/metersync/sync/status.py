"""Link health for `metersync status`, per target (Stripe, and HubSpot when configured)."""

from __future__ import annotations

from typing import Any

from metersync.catalog import Catalog
from metersync.store.links import LinkTable
from metersync.store.sync_state import SyncStateTable


def link_status(catalog: Catalog, target: str, *, failing_limit: int = 50) -> dict[str, Any]:
    links = LinkTable(catalog.store, target)
    counts = links.counts()
    failing = [
        {
            "kind": row.kind,
            "key": row.local_key,
            "state": row.state,
            "externalId": row.external_id,
            "attempts": row.attempts,
            "nextAttemptAt": row.next_attempt_at.isoformat(timespec="seconds")
            if row.next_attempt_at
            else None,
            "lastError": row.last_error,
        }
        for row in links.failing(failing_limit)
    ]
    sync_state = SyncStateTable(catalog.store, target).read()
    cursor = sync_state.change_cursor if sync_state else 0
    high_water = catalog.high_water()

    def stamp(value: Any) -> str | None:
        return value.isoformat(timespec="seconds") if value else None

    return {
        "target": target,
        "links": counts,
        "failing": failing,
        "runs": {
            "lastTickAt": stamp(sync_state.last_tick_at if sync_state else None),
            "lastFullAt": stamp(sync_state.last_full_at if sync_state else None),
            "lastSuccessAt": stamp(sync_state.last_success_at if sync_state else None),
            "lastSummary": sync_state.last_summary if sync_state else None,
        },
        "lag": {
            "cursor": cursor,
            "catalog": high_water,
            "changes": max(0, high_water - cursor),
        },
    }
