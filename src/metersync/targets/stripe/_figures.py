"""Stripe's billing meters as `usage verify` reads them (the engine's MeterFigures port): which
meter takes each event name, and its event summaries per customer."""

from __future__ import annotations

from metersync.targets.stripe._customers import StripeTarget
from metersync.targets.stripe._meters import list_meters, meters_by_event_name
from metersync.targets.stripe._summaries import event_summaries


class StripeMeterFigures:
    def __init__(self, target: StripeTarget) -> None:
        self.target = target
        self.name = target.name

    async def meter_ids(self) -> dict[str, str]:
        chosen = meters_by_event_name(await list_meters(self.target))
        return {name: meter.id for name, meter in chosen.items()}

    async def totals(
        self, meter_id: str, customer_id: str, start: int, end: int, *, hourly: bool
    ) -> list[tuple[int, int]]:
        found = await event_summaries(
            self.target, meter_id, customer_id, start, end, "hour" if hourly else None
        )
        return [(s.start_time, int(s.aggregated_value)) for s in found]
