"""Stripe's billing meters as `usage verify` reads them (usage.ports.MeterFigures): which meter
takes each event name, and its event summaries per customer."""

from __future__ import annotations

from metersync.targets.stripe import StripeTarget
from metersync.targets.stripe_meters import event_summaries, list_meters, meters_by_event_name


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
