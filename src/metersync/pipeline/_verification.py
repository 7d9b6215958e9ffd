"""`usage verify` as a step: Stripe's figures against the ledger against the usage figures, and
with a repair, what still differs after it (what the repair could not fix)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from metersync.store import Store
from metersync.times import rfc3339_seconds
from metersync.usage.ports import MeterFigures
from metersync.usage.push import UsagePusher
from metersync.usage.verify import Difference, VerifyResult, verify_usage


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
) -> Verification:
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
