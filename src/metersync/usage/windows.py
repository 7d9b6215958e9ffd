"""What the aggregation hands the planners: a meter's value for one customer and window. Plain
data, so that the pure planners (usage.reports) read it without the database."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class WindowValue:
    customer_key: str
    window_start: int  # seconds
    value: float
    latest_us: int  # time of the latest event in it
