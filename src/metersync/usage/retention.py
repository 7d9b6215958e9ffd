"""Retention of raw usage (`metersync usage prune`): events and their meter values are deleted in
whole calendar months (UTC), oldest first, once nothing in them can still be billed.

- Only months that ended at least Stripe's 35 days plus a week ago (stripe_facts): Stripe takes
  no meter event for them any more, and `usage verify` no longer looks at them by default. A
  cut inside that range is refused (`cut_problem`).
- A month is kept while something in it is not known to be billed: usage not bound to a
  customer yet, reports for its windows still PENDING, or usage of a Stripe meter that the
  ledger has not reported (a push reports it, held as late when Stripe no longer takes it).
  The first such month ends the prune: months go oldest first, so that one floor divides what
  is kept from what was pruned.
- The floor (store.usage_retention) is raised before any row is deleted. From then on ingest
  refuses events below it (a pruned copy could no longer catch a duplicate), and the push,
  `usage verify`, `usage show` and the API's meter query read nothing below it. The deletes
  (store.usage_rows) run in batches, and a prune stopped or killed midway is finished by the
  next one.

The ledger keeps its rows: what was reported stays on record, and the push never plans a window
below the floor again, so no total "falls" when its events go.

The caller holds the sync lock (store.lock.run_lock), as a push's caller does: a push never
runs in the middle of a prune.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy.orm import Session

from metersync.catalog.meters import Aggregation, Meter
from metersync.clock import utcnow
from metersync.errors import FieldProblem, InvalidInput
from metersync.store import Store
from metersync.store.ledger import LedgerTable, pending_windows
from metersync.store.usage_retention import raise_floor, retention_floor
from metersync.store.usage_rows import (
    Deleted,
    MonthRows,
    delete_below,
    rows_by_month,
    unbound_between,
    unbound_by_month,
)
from metersync.stripe_facts import METER_EVENT_PAST_LIMIT_S, RETENTION_PAST_MARGIN_S
from metersync.times import month_label, month_start, rfc3339_seconds
from metersync.usage.local_aggregates import LOCAL
from metersync.usage.reports import push_window_s, scaled

DEFAULT_BATCH_SIZE = 50_000
# How far back a month must have ended before it can be pruned.
PROTECTED_S = METER_EVENT_PAST_LIMIT_S + RETENTION_PAST_MARGIN_S
_PUSH = "`metersync reconcile --only usage`"


def latest_cut(now: datetime) -> int:
    """The most recent cut allowed at `now`: the first second of the month that holds
    now - PROTECTED_S, so every month before it ended at least that long ago."""
    return month_start(int(now.timestamp()) - PROTECTED_S)


def cut_problem(cut: int, now: datetime) -> str | None:
    """Why pruning the months before `cut` (a month's start) is refused at `now`, or None."""
    latest = latest_cut(now)
    if cut <= latest:
        return None
    return (
        f"{month_label(cut)} is too recent: the months before it include some that may still be "
        f"pushed to Stripe or bound to a customer (Stripe takes meter events up to "
        f"{METER_EVENT_PAST_LIMIT_S // 86400} days old, and {RETENTION_PAST_MARGIN_S // 86400} "
        f"days of margin follow); the latest cut allowed now is {month_label(latest)}"
    )


def pruned_problem(store: Store, start: int) -> str | None:
    """Why usage from `start` (seconds) cannot be shown whole, or None: it reaches below the
    retention floor, where the raw usage was pruned. `usage show` and the API's meter query
    refuse such a range rather than show totals that lack the pruned part."""
    floor = retention_floor(store)
    if start >= floor:
        return None
    return (
        f"{rfc3339_seconds(start)} is before {rfc3339_seconds(floor)}, the retention floor: raw "
        f"usage before it was pruned (`metersync usage prune`); start at "
        f"{rfc3339_seconds(floor)} or later"
    )


@dataclass(frozen=True)
class KeptMonth:
    """The oldest month before the cut that must stay, and why; the months after it stay too."""

    start: int
    reasons: tuple[str, ...]


@dataclass(frozen=True)
class PrunePlan:
    cut: int  # the months before it were asked for (a month's start)
    floor: int  # the floor before (0: nothing pruned yet)
    new_floor: int  # the floor after: the cut, or the kept month
    months: tuple[MonthRows, ...]  # what goes, oldest first
    kept: KeptMonth | None

    def interrupted(self, month: MonthRows) -> bool:
        """Rows below the floor already: left by a prune that was stopped midway."""
        return month.start < self.floor


@dataclass(frozen=True)
class PruneResult:
    plan: PrunePlan
    dry_run: bool
    deleted: Deleted | None = None  # None for a dry run

    def to_json(self) -> dict[str, Any]:
        plan = self.plan
        deleted = self.deleted
        return {
            "dryRun": self.dry_run,
            "cut": rfc3339_seconds(plan.cut),
            "floor": {
                "before": rfc3339_seconds(plan.floor) if plan.floor else None,
                "after": rfc3339_seconds(plan.new_floor) if plan.new_floor else None,
            },
            "months": [
                {
                    "month": month_label(m.start),
                    "events": m.events,
                    "values": m.values,
                    "interrupted": plan.interrupted(m),
                }
                for m in plan.months
            ],
            "kept": (
                {"month": month_label(plan.kept.start), "reasons": list(plan.kept.reasons)}
                if plan.kept
                else None
            ),
            "deleted": ({"events": deleted.events, "values": deleted.values} if deleted else None),
            "finished": deleted.finished if deleted else None,
        }


def plan_prune(
    store: Store,
    cut: int,
    meters: Sequence[Meter],
    *,
    window_s: int,
    target: str,
    now: datetime,
) -> PrunePlan:
    """What a prune up to `cut` would delete, and the month that stops it (database reads)."""
    floor = retention_floor(store)
    reasons = _keep_reasons(store, meters, window_s, target, floor, cut, now)
    kept = KeptMonth(min(reasons), tuple(reasons[min(reasons)])) if reasons else None
    new_floor = max(floor, kept.start if kept else cut)
    months = tuple(m for m in rows_by_month(store, max(cut, floor)) if m.start < new_floor)
    return PrunePlan(cut, floor, new_floor, months, kept)


def prune_usage(
    store: Store,
    cut: int,
    meters: Sequence[Meter],
    *,
    window_s: int,
    target: str,
    now: datetime | None = None,
    dry_run: bool = False,
    batch_size: int = DEFAULT_BATCH_SIZE,
    should_stop: Callable[[], bool] | None = None,
) -> PruneResult:
    """Prune the raw usage of the months before `cut` (the first second of a month, UTC) that
    nothing holds back. `meters` and `window_s` are the push's, `target` its ledger's."""
    moment = now or utcnow()
    if cut != month_start(cut):
        raise ValueError(f"a cut is the first second of a month, got {rfc3339_seconds(cut)}")
    problem = cut_problem(cut, moment)
    if problem is not None:
        raise InvalidInput([FieldProblem("before", problem)])
    plan = plan_prune(store, cut, meters, window_s=window_s, target=target, now=moment)
    if dry_run:
        return PruneResult(plan, dry_run=True)
    if not _raise(store, plan):
        # Usage arrived meanwhile in a month about to go (it waits for a customer): plan
        # again, and that month stays.
        plan = plan_prune(store, cut, meters, window_s=window_s, target=target, now=moment)
        if not _raise(store, plan):
            raise InvalidInput(
                [FieldProblem("before", "usage keeps arriving in the months to prune: try again")]
            )
    deleted = delete_below(store, plan.new_floor, batch_size=batch_size, should_stop=should_stop)
    return PruneResult(plan, dry_run=False, deleted=deleted)


def _raise(store: Store, plan: PrunePlan) -> bool:
    """Raise the floor to the plan's, unless usage waiting for a customer arrived below it
    since the plan (ingest's new rows are unbound: that is all that can have changed there)."""
    if plan.new_floor <= plan.floor:
        return True

    def still_clear(session: Session, current: int) -> bool:
        return unbound_between(session, current, plan.new_floor) == 0

    return raise_floor(store, plan.new_floor, still_clear) == plan.new_floor


def _keep_reasons(
    store: Store,
    meters: Sequence[Meter],
    window_s: int,
    target: str,
    floor: int,
    cut: int,
    now: datetime,
) -> dict[int, list[str]]:
    """Month → why it must stay, for the months in [floor, cut) that hold anything not known
    to be billed."""
    reasons: dict[int, list[str]] = {}
    for month, subjects in unbound_by_month(store, cut).items():
        if month >= floor:
            reasons.setdefault(month, []).append(_unbound(subjects))
    pending: dict[int, int] = {}
    for _meter, _customer, window_start in pending_windows(store, cut):
        month = month_start(window_start)
        if month >= floor:
            pending[month] = pending.get(month, 0) + 1
    for month, count in pending.items():
        reasons.setdefault(month, []).append(
            f"{count} usage report(s) for its windows are pending (written, delivery not "
            f"confirmed): push again ({_PUSH}); those pending past Stripe's 24 h identifier "
            f"window are settled by `metersync usage verify --repair --from "
            f"{rfc3339_seconds(month)[:10]}`"
        )
    if cut > floor:
        for month, by_meter in _unreported(store, meters, window_s, target, floor, cut, now):
            for slug, windows in sorted(by_meter.items()):
                reasons.setdefault(month, []).append(
                    f"meter {slug}: {windows} window(s) hold usage the ledger has not reported: "
                    f"push ({_PUSH}), which reports it (held as late usage when Stripe no "
                    "longer takes it)"
                )
    return reasons


def _unbound(subjects: dict[str, int]) -> str:
    names = sorted(subjects)
    shown = ", ".join(repr(s) for s in names[:5]) + (
        f" and {len(names) - 5} more" if len(names) > 5 else ""
    )
    return (
        f"{sum(subjects.values())} usage row(s) of subject(s) {shown} are not bound to a "
        f"customer yet: attribute each subject to a customer that has a Stripe customer, then "
        f"push ({_PUSH}), which binds them"
    )


def _unreported(
    store: Store,
    meters: Sequence[Meter],
    window_s: int,
    target: str,
    start: int,
    end: int,
    now: datetime,
) -> list[tuple[int, dict[str, int]]]:
    """(month, meter → windows) where a Stripe meter's local total is more than the ledger
    reported (a `last` meter's: another value), in [start, end)."""
    ledger = LedgerTable(store, target)
    months: dict[int, dict[str, int]] = {}
    for meter in meters:
        stripe = meter.settings.stripe
        if stripe is None:
            continue
        windows = LOCAL.windows(store, meter, push_window_s(meter, window_s), start=start, end=end)
        if not windows:
            continue
        last = meter.aggregation in (Aggregation.MAX, Aggregation.LATEST)
        bases = ledger.bases(meter.slug, now, last=last)
        for window in windows:
            total = scaled(window.value, stripe.scale)
            base = bases.get((window.customer_key, window.window_start))
            reported = base[0] if base else 0
            if total != reported if last else total > reported:
                by_meter = months.setdefault(month_start(window.window_start), {})
                by_meter[meter.slug] = by_meter.get(meter.slug, 0) + 1
    return sorted(months.items())
