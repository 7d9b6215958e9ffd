"""Usage health for `metersync status` and the service's /metrics: the ledger by state, its
lag, usage waiting for a customer link, and usage held as late."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import func, select

from metersync.clock import utcnow
from metersync.store import LedgerState, Store
from metersync.usage.ledger import LEDGER, Ledger
from metersync.usage.local_aggregates import LOCAL
from metersync.usage.ports import UsageAggregates

_g = LEDGER.c


def usage_status(
    store: Store,
    target: str,
    *,
    now: datetime | None = None,
    aggregates: UsageAggregates = LOCAL,
) -> dict[str, Any]:
    moment = now or utcnow()
    with store.read_session() as session:
        oldest_pending = session.execute(
            select(func.min(_g.created_at)).where(
                _g.target == target, _g.state == LedgerState.PENDING
            )
        ).scalar()
        last_delivered = session.execute(
            select(func.max(_g.delivered_at)).where(_g.target == target)
        ).scalar()
        late = [
            {"meter": meter, "reports": int(count), "value": int(value or 0)}
            for meter, count, value in session.execute(
                select(_g.meter, func.count(), func.sum(_g.value))
                .where(_g.target == target, _g.state == LedgerState.LATE)
                .group_by(_g.meter)
                .order_by(_g.meter)
            )
        ]
        failing = [
            {
                "customer": customer,
                "meter": meter,
                "windowStart": int(window),
                "state": state,
                "attempts": attempts,
                "lastError": error,
            }
            for customer, meter, window, state, attempts, error in session.execute(
                select(
                    _g.customer_key,
                    _g.meter,
                    _g.window_start,
                    _g.state,
                    _g.attempts,
                    _g.last_error,
                )
                .where(_g.target == target, _g.last_error.is_not(None))
                .where(_g.state.in_([LedgerState.PENDING, LedgerState.FAILED]))
                .order_by(_g.id.desc())
                .limit(50)
            )
        ]
    waiting = aggregates.waiting_subjects(store)
    return {
        "ledger": Ledger(store, target).counts(),
        "lagSeconds": _age(oldest_pending, moment),
        "oldestPendingAt": _stamp(oldest_pending),
        "lastDeliveredAt": _stamp(last_delivered),
        "waiting": {"subjects": len(waiting), "usageRows": sum(waiting.values())},
        "late": late,
        "failing": failing,
    }


def _age(moment: datetime | None, now: datetime) -> float:
    return round((now - moment).total_seconds(), 1) if moment else 0.0


def _stamp(moment: datetime | None) -> str | None:
    return moment.isoformat(timespec="seconds") if moment else None
