"""Stripe's own totals of a meter's events for one customer, which `usage verify` compares with
the ledger.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal

from metersync.targets.stripe._calls import setup_call
from metersync.targets.stripe._customers import StripeTarget


@dataclass(frozen=True)
class EventSummary:
    start_time: int
    end_time: int
    aggregated_value: float  # Stripe's type; whole numbers in, whole sums out


async def event_summaries(
    target: StripeTarget,
    meter_id: str,
    customer_id: str,
    start: int,
    end: int,
    window: Literal["hour", "day"] | None = None,
) -> list[EventSummary]:
    """Stripe's totals for one customer on one meter, over [start, end): one summary for the
    range, or one per hour or day that holds events (Stripe leaves empty windows out). Stripe
    wants start and end on minute boundaries, or on hour / day boundaries with a window."""
    summaries: list[EventSummary] = []
    cursor: str | None = None
    while True:
        params: dict[str, Any] = {
            "customer": customer_id,
            "start_time": start,
            "end_time": end,
            "limit": 100,
        }
        if window is not None:
            params["value_grouping_window"] = window
        if cursor is not None:
            params["starting_after"] = cursor
        page = await setup_call(
            target.account,
            f"reading event summaries of meter {meter_id}",
            target.account.client.v1.billing.meters.event_summaries.list_async,
            meter_id,
            params,  # type: ignore[arg-type]
        )
        summaries.extend(
            EventSummary(int(s.start_time), int(s.end_time), s.aggregated_value) for s in page.data
        )
        if not page.has_more or not page.data:
            return summaries
        cursor = page.data[-1].id
