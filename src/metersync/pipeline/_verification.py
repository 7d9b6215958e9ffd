"""`usage verify` as a step: Stripe's figures against the ledger against the usage figures, and
with a repair, what still differs after it (what the repair could not fix)."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from metersync.store import Store
from metersync.times import rfc3339_seconds
from metersync.usage.ports import MeterFigures
from metersync.usage.push import UsagePusher
from metersync.usage.verify import (
    DEFAULT_CHUNK,
    Difference,
    VerifyResult,
    customers_to_verify,
    verify_usage,
)


@dataclass
class Verification:
    checked: int
    differences: list[Difference]
    settled: int  # pending past the identifier window, settled by Stripe's figures
    replanned: int  # delivered but lost by Stripe: planned again
    pushed_counts: dict[str, int]
    pruned_before: int | None = None  # the retention floor, when the range began below it

    def to_json(self) -> dict[str, Any]:
        return {
            "checked": self.checked,
            "differences": [d.to_json() for d in self.differences],
            "settled": self.settled,
            "replanned": self.replanned,
            "pushed": self.pushed_counts,
            "prunedBefore": rfc3339_seconds(self.pruned_before) if self.pruned_before else None,
        }


async def verify(
    store: Store,
    figures: MeterFigures,
    pusher: UsagePusher,
    start: int,
    end: int,
    *,
    repair: bool,
    chunk_size: int = DEFAULT_CHUNK,
    progress: Callable[[int, int], None] | None = None,
) -> Verification:
    """`progress(done, total)` counts customers; with a repair the customers are walked twice
    (repair, then check again), and the total says so."""
    walked: _Walked | None = None
    if progress is not None:
        total = await asyncio.to_thread(customers_to_verify, store, figures.name)
        walked = _Walked(progress, total * (2 if repair else 1))

    async def check(*, fix: bool) -> VerifyResult:
        return await verify_usage(
            store,
            figures,
            pusher.meters,
            window_s=pusher.window_s,
            start=start,
            end=end,
            late_usage=pusher.late_usage,
            repair=fix,
            sink=pusher.sink,
            aggregates=pusher.aggregates,
            chunk_size=chunk_size,
            progress=walked.add if walked is not None else None,
        )

    first = await check(fix=repair)
    if not repair:
        return Verification(first.checked, first.differences, 0, 0, {}, first.pruned_before)
    # After a repair, what still differs is what it could not fix.
    after = await check(fix=False)
    pushed = first.pushed.counts() if first.pushed else {}
    return Verification(
        after.checked,
        after.differences,
        first.settled,
        first.replanned,
        pushed,
        after.pruned_before,
    )


@dataclass
class _Walked:
    """Customers walked so far, told to `progress` as (done, total)."""

    progress: Callable[[int, int], None]
    total: int
    done: int = 0

    def add(self, customers: int) -> None:
        self.done += customers
        # Customers linked during the walk can take it past the total counted before it.
        self.progress(self.done, max(self.total, self.done))
