"""The local side of `UsageAggregates` (usage.ports): events ingested into this store,
aggregated in SQL. The other side is an upstream metering system that aggregates them itself
(OpenMeter, in the sources adapters). The usage push, `usage verify` and the CRM's usage
properties read windows through that one interface, so the ledger, deltas and identifiers are
the same whichever side aggregated.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime

from sqlalchemy import Table, select

from metersync.catalog.meters import Meter
from metersync.store import AttributionRow, EventRow, Store, UsageRow
from metersync.store.ledger import customers_pushed_since
from metersync.store.usage_cells import usage_mark
from metersync.store.usage_retention import retention_floor
from metersync.usage.aggregate import (
    bind_usage,
    change_page_end,
    changed_cells,
    customer_windows,
    customers_with_usage,
    unbound_subjects,
)
from metersync.usage.windows import WindowValue


class LocalAggregates:
    """Events ingested into this store, aggregated in SQL (usage/aggregate.py)."""

    name = "local"

    def bind(self, store: Store, target: str) -> int:
        return bind_usage(store, target)

    def waiting_subjects(self, store: Store) -> dict[str, int]:
        return unbound_subjects(store)

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
        # Nothing below the retention floor: a prune stopped midway leaves part of a pruned
        # window's events, whose total would seem to have fallen (usage/retention.py).
        floor = retention_floor(store)
        if floor and (start is None or start < floor):
            start = floor
        return customer_windows(store, meter, window_s, customers=customers, start=start, end=end)

    def changed_customers(self, store: Store, meters: Sequence[Meter], after: datetime) -> set[str]:
        """Events ingested since `after` (by their subject's bound or current customer), and
        usage pushed since (binding happens at the push)."""
        events: Table = EventRow.__table__  # type: ignore[attr-defined]
        usages: Table = UsageRow.__table__  # type: ignore[attr-defined]
        attributions: Table = AttributionRow.__table__  # type: ignore[attr-defined]
        event, usage, attribution = events.c, usages.c, attributions.c
        slugs = [m.slug for m in meters]
        ingested = (
            select(usage.customer_key, attribution.customer_key)
            .select_from(usages)
            .join(events, (event.source == usage.source) & (event.event_id == usage.event_id))
            .outerjoin(attributions, attribution.subject_key == usage.subject)
            .where(usage.meter.in_(slugs), event.ingested_at >= after)
            .distinct()
        )
        keys: set[str] = set()
        with store.read_session() as session:
            for bound, attributed in session.execute(ingested):
                keys.update(k for k in (bound, attributed) if k)
        keys.update(customers_pushed_since(store, slugs, after))
        return keys

    def change_mark(self, store: Store) -> int:
        return usage_mark(store)

    def changed_cells(
        self, store: Store, meter: Meter, window_s: int, *, after: int, upto: int
    ) -> set[tuple[str, int]]:
        return changed_cells(store, meter, window_s, after=after, upto=upto)

    def change_page_end(
        self, store: Store, meter: Meter, *, after: int, upto: int, rows: int
    ) -> int:
        return change_page_end(store, meter, after=after, upto=upto, rows=rows)

    def customers(self, store: Store, meter: Meter, *, after: str | None, limit: int) -> list[str]:
        return customers_with_usage(store, meter, after=after, limit=limit)


LOCAL = LocalAggregates()
