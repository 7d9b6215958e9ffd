"""Link health for `metersync status`, per target (Stripe, and HubSpot when configured)."""

from __future__ import annotations

from typing import Any

from sqlalchemy import func
from sqlmodel import col, select

from metersync.catalog import Catalog
from metersync.store import LinkRow
from metersync.sync.journal import Journal


def link_status(catalog: Catalog, target: str, *, failing_limit: int = 50) -> dict[str, Any]:
    journal = Journal(catalog.store, target)
    with catalog.store.read_session() as session:
        counts: dict[str, dict[str, int]] = {}
        for kind, state, count in session.exec(
            select(LinkRow.kind, LinkRow.state, func.count())
            .where(LinkRow.target == target)
            .group_by(col(LinkRow.kind), col(LinkRow.state))
        ):
            counts.setdefault(kind, {})[state] = int(count)
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
            for row in session.exec(
                select(LinkRow)
                .where(LinkRow.target == target, col(LinkRow.last_error).is_not(None))
                .order_by(col(LinkRow.updated_at).desc())
                .limit(failing_limit)
            )
        ]
    sync_state = journal.state()
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
