"""Loads what a target's rendering may need beyond the customer itself (the types are in
sync.ports): other targets' external ids and the period's usage. A CRM company carries the
Stripe customer id and current usage; the Stripe customer needs neither.

A target names its needs (`ContextNeeds`); the sync run loads a `RenderContext` for the
customers it renders (a few queries for the whole batch, never one per customer) and finds
which customers' context changed since its last run, so that an incremental tick also
re-renders those whose catalog record did not change.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from datetime import UTC, datetime, timedelta

from metersync.catalog.meters import Meter
from metersync.store import Store
from metersync.store.links import LinkTable, changed_customers
from metersync.sync.ports import NO_CONTEXT, ContextNeeds, PeriodUsage, RenderContext
from metersync.times import month_start
from metersync.usage.local_aggregates import LOCAL
from metersync.usage.ports import UsageAggregates

# Rows committed out of order (a transaction that started before our last run and committed
# after it) carry timestamps before that run: re-reading this much of the past catches them.
# A customer looked at twice costs a render, never a write (its fingerprint is unchanged).
CONTEXT_OVERLAP = timedelta(minutes=5)


class ContextReader:
    """Loads render contexts from the store. `now` fixes the period (tests freeze it)."""

    def __init__(
        self,
        store: Store,
        needs: ContextNeeds,
        meters: Sequence[Meter],
        now: datetime,
        aggregates: UsageAggregates = LOCAL,
    ) -> None:
        self.store = store
        self.aggregates = aggregates
        self.needs = needs
        self.meters = list(meters) if needs.usage else []
        self.now = now

    def load(self, keys: Iterable[str] | None) -> RenderContext:
        """The context of `keys` (None: of every customer)."""
        if not self.needs.any:
            return NO_CONTEXT
        wanted = None if keys is None else sorted(set(keys))
        return RenderContext(
            external_ids={
                t: LinkTable(self.store, t).external_ids(wanted) for t in self.needs.links
            },
            usage=self._usage(wanted),
        )

    def changed_since(self, since: datetime | None, own_target: str) -> set[str]:
        """Customers whose context may differ from what the last run (started at `since`) saw:
        a needed target's link changed, this target's own link changed (usage binds to a
        customer once it is linked), usage was ingested for one of its subjects, or usage was
        pushed for it (binding happens at the push). A superset is fine; a miss is not."""
        if not self.needs.any or since is None:
            return set()
        after = since - CONTEXT_OVERLAP
        keys = changed_customers(self.store, [*self.needs.links, own_target], after)
        if self.meters:
            keys.update(self.aggregates.changed_customers(self.store, self.meters, after))
            if month_start(int(since.timestamp())) != month_start(int(self.now.timestamp())):
                # A new month: every "this month" figure starts again, with or without usage.
                keys.update(LinkTable(self.store, own_target).linked_keys())
        return keys

    # -- queries ---------------------------------------------------------------------------------

    def _usage(self, keys: list[str] | None) -> dict[str, dict[str, PeriodUsage]]:
        start = month_start(int(self.now.timestamp()))
        usage: dict[str, dict[str, PeriodUsage]] = {}
        for meter in self.meters:
            for item in self.aggregates.windows(self.store, meter, 0, customers=keys, start=start):
                latest = datetime.fromtimestamp(item.latest_us / 1_000_000, UTC)
                usage.setdefault(item.customer_key, {})[meter.slug] = PeriodUsage(
                    item.value, latest
                )
        return usage
