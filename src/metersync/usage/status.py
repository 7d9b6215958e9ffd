"""Usage health for `metersync status` and the service's /metrics: the ledger by state, its
lag, usage waiting for a customer link, usage held as late, and the retention floor."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from metersync.clock import utcnow
from metersync.store import Store
from metersync.store.ledger import LedgerTable
from metersync.store.usage_cells import UsageCellTable
from metersync.store.usage_retention import retention_floor
from metersync.times import rfc3339_seconds
from metersync.usage.local_aggregates import LOCAL
from metersync.usage.ports import UsageAggregates


def usage_status(
    store: Store,
    target: str,
    *,
    now: datetime | None = None,
    aggregates: UsageAggregates = LOCAL,
) -> dict[str, Any]:
    moment = now or utcnow()
    ledger = LedgerTable(store, target)
    oldest_pending = ledger.oldest_pending_at()
    last_delivered = ledger.last_delivered_at()
    late = [
        {"meter": meter, "reports": count, "value": value}
        for meter, count, value in ledger.late_by_meter()
    ]
    failing = [
        {
            "customer": row.customer_key,
            "meter": row.meter,
            "windowStart": int(row.window_start),
            "state": row.state,
            "attempts": row.attempts,
            "lastError": row.last_error,
        }
        for row in ledger.failing(50)
    ]
    waiting = aggregates.waiting_subjects(store)
    return {
        "ledger": ledger.counts(),
        "lagSeconds": _age(oldest_pending, moment),
        "oldestPendingAt": _stamp(oldest_pending),
        "lastDeliveredAt": _stamp(last_delivered),
        "waiting": {"subjects": len(waiting), "usageRows": sum(waiting.values())},
        # Cells the next push will plan at least: changed and not yet reported, or waiting out
        # a refusal or a stamp in the future.
        "cellsDue": UsageCellTable(store, target).count(),
        "late": late,
        "failing": failing,
        # Where raw usage starts: the months before it were pruned (`usage prune`).
        "retentionFloor": rfc3339_seconds(floor) if (floor := retention_floor(store)) else None,
    }


def _age(moment: datetime | None, now: datetime) -> float:
    return round((now - moment).total_seconds(), 1) if moment else 0.0


def _stamp(moment: datetime | None) -> str | None:
    return moment.isoformat(timespec="seconds") if moment else None
