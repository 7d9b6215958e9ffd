"""What the usage engine needs from the outside, as contracts it owns: where aggregated values
come from (`UsageAggregates`: the local events, or an upstream metering system such as OpenMeter)
and where meter events go (`MeterEventSink`: Stripe's billing meters). Adapters implement these;
the engine imports no adapter.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Protocol

from metersync.catalog.meters import Meter
from metersync.mechanics.retry import TargetError
from metersync.store import Store
from metersync.usage.windows import WindowValue


@dataclass(frozen=True)
class MeterEvent:
    event_name: str
    customer_id: str
    value: int
    timestamp: int  # unix seconds
    identifier: str  # unique per usage report: the meter counts it once (stripe_facts)


@dataclass(frozen=True)
class Delivery:
    identifier: str
    delivered: bool
    duplicate: bool = False  # the meter already had this identifier: delivered earlier
    error: TargetError | None = None  # why it was not delivered


class MeterEventSink(Protocol):
    async def send(self, events: Sequence[MeterEvent]) -> list[Delivery]: ...


class MeterFigures(Protocol):
    """What the billing meters counted, as the meter system itself reports it (Stripe's event
    summaries): what `usage verify` holds the ledger against."""

    name: str  # the target whose links and ledger the figures are compared with

    async def meter_ids(self) -> dict[str, str]:
        """event_name → the id of the meter that takes its events."""
        ...

    async def totals(
        self, meter_id: str, customer_id: str, start: int, end: int, *, hourly: bool
    ) -> list[tuple[int, int]]:
        """(window start, counted value) for one customer over [start, end): one figure for
        the whole range, or one per hour that holds events (empty hours left out)."""
        ...


class UsageAggregates(Protocol):
    name: str

    def bind(self, store: Store, target: str) -> int:
        """Fix which customer unbound usage counts for (see aggregate.bind_usage); returns
        how many values were bound."""
        ...

    def waiting_subjects(self, store: Store) -> dict[str, int]:
        """Usage waiting for its subject's customer to be linked, by subject."""
        ...

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
        """The meter's value per customer and window (a calendar month when window_s is 0)."""
        ...

    def changed_customers(self, store: Store, meters: Sequence[Meter], after: datetime) -> set[str]:
        """Customers whose values may have changed since `after` (a superset is fine)."""
        ...

    def change_mark(self, store: Store) -> int:
        """The newest usage change number committed (store.usage_cells): what a push collects
        up to."""
        ...

    def changed_cells(
        self, store: Store, meter: Meter, window_s: int, *, after: int, upto: int
    ) -> set[tuple[str, int]]:
        """The bound (customer, window) cells whose value may have changed with a change number
        in (after, upto]; windows of `window_s`, or calendar months when it is 0."""
        ...

    def change_page_end(
        self, store: Store, meter: Meter, *, after: int, upto: int, rows: int
    ) -> int:
        """The change number that ends a page of about `rows` of the meter's rows numbered past
        `after`: the number of the `rows`-th one (the page takes all its rows), or `upto` when
        fewer remain. Pages by rows, not by change numbers: a thousand small writes are one
        page, one large write is one page of its own."""
        ...

    def customers(self, store: Store, meter: Meter, *, after: str | None, limit: int) -> list[str]:
        """The next `limit` customers (by key, after `after`) with bound usage of the meter: a
        meter's first push walks them all."""
        ...
