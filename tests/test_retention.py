"""Retention: processed webhook records and raw usage events are pruned when old; meter values,
which aggregates and the ledger read, are kept."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from sqlalchemy import insert, select

from metersync.catalog import Catalog
from metersync.service.retention import prune
from metersync.settings import RetentionSettings
from metersync.store import EventRow, UsageRow, WebhookEventRow


def test_retention_prunes_old_records_and_keeps_usage_values(catalog: Catalog) -> None:
    now = datetime(2026, 6, 1, tzinfo=UTC)
    old, recent = now - timedelta(days=40), now - timedelta(days=2)
    with catalog.store.session() as session:
        for event_id, processed in (("evt_old", old), ("evt_new", recent), ("evt_open", None)):
            session.add(
                WebhookEventRow(
                    id=event_id,
                    type="customer.updated",
                    payload="{}",
                    received_at=old,
                    processed_at=processed,
                )
            )
        for event_id, ingested in (("e_old", old), ("e_new", recent)):
            session.execute(
                insert(EventRow.__table__),  # type: ignore[attr-defined]
                {
                    "source": "s",
                    "event_id": event_id,
                    "type": "prompt",
                    "subject": "u",
                    "time_us": 0,
                    "ingested_at": ingested,
                },
            )
            session.execute(
                insert(UsageRow.__table__),  # type: ignore[attr-defined]
                {"source": "s", "event_id": event_id, "meter": "m", "subject": "u", "time_us": 0},
            )
    assert prune(catalog.store, RetentionSettings(), now=now) == {"webhook_events": 1}
    with catalog.store.read_session() as session:
        left = session.execute(select(WebhookEventRow.id)).scalars().all()  # type: ignore[call-overload]
    assert sorted(left) == ["evt_new", "evt_open"]  # unprocessed kept
    kept = prune(catalog.store, RetentionSettings(event_days=30), now=now)
    assert kept == {"usage_events": 1}
    with catalog.store.read_session() as session:
        assert session.execute(select(UsageRow.event_id)).scalars().all() != []  # type: ignore[call-overload]
        events = session.execute(select(EventRow.event_id)).scalars().all()  # type: ignore[call-overload]
    assert events == ["e_new"]
