"""Retention: what the service deletes when it is old enough to be of no use.

- Webhook events processed more than `retention.webhook_days` ago. Stripe retries a delivery
  for at most three days, so a month of records catches every duplicate.
- Raw usage events ingested more than `retention.event_days` ago (0: kept). Their meter values
  stay: aggregates, the ledger and `usage verify` read those, and a resent copy of a pruned
  event still cannot count twice (usage_value is unique per source, id and meter).
"""

from __future__ import annotations

from datetime import datetime, timedelta

from sqlalchemy import delete

from metersync.clock import utcnow
from metersync.settings import RetentionSettings
from metersync.store import EventRow, Store, WebhookEventRow

_hooks = WebhookEventRow.__table__.c  # type: ignore[attr-defined]
_events = EventRow.__table__.c  # type: ignore[attr-defined]


def prune(
    store: Store, retention: RetentionSettings, *, now: datetime | None = None
) -> dict[str, int]:
    moment = now or utcnow()
    counts: dict[str, int] = {}
    with store.session() as session:
        if retention.webhook_days:
            cutoff = moment - timedelta(days=retention.webhook_days)
            result = session.execute(
                delete(WebhookEventRow.__table__).where(  # type: ignore[attr-defined]
                    _hooks.processed_at.is_not(None), _hooks.processed_at < cutoff
                )
            )
            counts["webhook_events"] = int(result.rowcount or 0)  # type: ignore[attr-defined]
        if retention.event_days:
            cutoff = moment - timedelta(days=retention.event_days)
            result = session.execute(
                delete(EventRow.__table__).where(_events.ingested_at < cutoff)  # type: ignore[attr-defined]
            )
            counts["usage_events"] = int(result.rowcount or 0)  # type: ignore[attr-defined]
    return {k: v for k, v in counts.items() if v}
