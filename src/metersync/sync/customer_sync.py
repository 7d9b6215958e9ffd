"""A customer sync run: read the catalog (all of it, or what changed since the last run), read
the links, list the target only for a full reconcile, plan, and unless it is a dry run apply and
advance the cursor. The CLI's `reconcile` and the service's jobs both call this.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass, field, replace
from datetime import datetime
from typing import Any

from metersync.catalog import Catalog
from metersync.catalog.meters import Meter
from metersync.catalog.views import Customer
from metersync.clock import utcnow
from metersync.errors import ExitCode, TargetUnusable
from metersync.logs import get_logger
from metersync.sync.apply import Applier, ApplyResult, FatalTargetError, RetryPolicy
from metersync.sync.context import ContextReader
from metersync.sync.journal import Journal
from metersync.sync.model import (
    IN_SYNC,
    ActionKind,
    DeletePolicy,
    Desired,
    LinkView,
    Plan,
    Snapshot,
)
from metersync.sync.plan import confirm_in_sync, plan_customers
from metersync.sync.ports import EntitlementSource, RenderContext, Target
from metersync.usage.local_aggregates import LOCAL
from metersync.usage.ports import UsageAggregates

_log = get_logger("metersync.sync")


@dataclass(frozen=True)
class SyncOptions:
    full: bool = False
    dry_run: bool = False
    policy: DeletePolicy = field(default_factory=DeletePolicy)
    concurrency: int = 16
    retry: RetryPolicy = field(default_factory=RetryPolicy)
    # For targets that show usage (ContextNeeds.usage): the meters, and whether this target's
    # sync binds usage rows to customers itself (when no usage push does it).
    meters: tuple[Meter, ...] = ()
    bind_usage: bool = False
    aggregates: UsageAggregates = LOCAL
    # Entitlement figures from an upstream source (None: the local entitlement engine).
    entitlements: EntitlementSource | None = None


@dataclass
class RunResult:
    plan: Plan
    applied: ApplyResult | None = None
    subjects_routed: int = 0
    counts: dict[str, int] = field(default_factory=dict)

    @property
    def exit_code(self) -> ExitCode:
        if self.plan.guard_tripped:
            return ExitCode.MASS_DELETE_GUARD
        if self.counts.get("failed") or self.counts.get("blocked"):
            return ExitCode.SOME_FAILED
        return ExitCode.OK

    def to_json(self) -> dict[str, Any]:
        return {
            "plan": self.plan.to_json(),
            "applied": self.applied is not None,
            "summary": self.counts,
            "failures": self.applied.failures if self.applied else [],
            "subjectsRouted": self.subjects_routed,
            "exitCode": int(self.exit_code),
        }


async def sync_customers(
    catalog: Catalog,
    target: Target,
    options: SyncOptions,
    *,
    progress: Callable[[int, int], None] | None = None,
    before_delete: Callable[[str], Awaitable[bool]] | None = None,
    should_stop: Callable[[], bool] | None = None,
) -> RunResult:
    journal = Journal(catalog.store, target.name, render_version=target.render_version)
    started = utcnow()
    context = ContextReader(
        catalog.store,
        target.needs,
        options.meters,
        started,
        options.aggregates,
        entitlements=options.entitlements,
    )
    if target.needs.usage and options.bind_usage and not options.dry_run:
        await asyncio.to_thread(options.aggregates.bind, catalog.store, target.name)
    listed: Snapshot | None = None
    high_water: int | None = None
    if options.full:
        # Read first: every change after it is picked up by the next run, whatever this one
        # reads later.
        high_water = await asyncio.to_thread(catalog.high_water)
        listed = Snapshot.of(await _list(target))
    planned = await asyncio.to_thread(
        _plan_run, catalog, target, options, journal, context, started, listed, high_water
    )
    plan = planned.plan
    result = RunResult(plan, counts=_planned_counts(plan))
    _log.info(
        "planned",
        target=target.name,
        mode="full" if options.full else "incremental",
        counts=plan.counts(),
        guard_tripped=plan.guard_tripped,
    )
    if options.dry_run:
        return result
    if options.full:
        # In sync, but not by fingerprint (first full run after an upgrade, or a record that
        # matched without our last push): record it, so the next full run takes the fast path.
        confirmed = [a.desired for a in plan.actions if a.in_sync and a.desired is not None]
        if confirmed:
            await asyncio.to_thread(journal.confirm_in_sync, confirmed)

    applier = Applier(
        target,
        journal,
        concurrency=options.concurrency,
        retry=options.retry,
        progress=progress,
        before_delete=before_delete,
        should_stop=should_stop,
    )
    applied = await _apply(applier, plan, result)
    if plan.in_sync:
        result.counts["skip"] = result.counts.get("skip", 0) + plan.in_sync
    await asyncio.to_thread(
        _record_run, catalog, target, options, journal, planned, applied, result, started
    )
    _log.info("applied", target=target.name, counts=result.counts)
    return result


@dataclass(frozen=True)
class _Planned:
    plan: Plan
    customers: list[Customer]  # the customers the plan looked at
    subject_keys: list[str] | None  # subjects to re-route (None: every subject)
    high_water: int  # the catalog change number the run covers


def _plan_run(
    catalog: Catalog,
    target: Target,
    options: SyncOptions,
    journal: Journal,
    context: ContextReader,
    started: datetime,
    listed: Snapshot | None,
    high_water: int | None,
) -> _Planned:
    """Read what the run looks at and plan it (database work and pure planning: run in a
    worker thread). A full run brings the target's listing and the high water read before it."""
    in_sync: frozenset[str] = frozenset()
    context_only: set[str] = set()
    if listed is not None:
        assert high_water is not None
        # The fast path: links whose customer is unchanged since it was pushed, and whose
        # record the listing shows as pushed, need no customer loaded and no plan of their own.
        # Not for targets whose records show context (usage, other targets' ids): that can
        # change while the customer does not, so each one is rendered.
        if not target.needs.any:
            in_sync = confirm_in_sync(journal.in_sync_candidates(), listed, target.render_version)
        customers = catalog.customers_by_keys(
            k for k in catalog.customer_keys() if k not in in_sync
        )
        subject_keys: list[str] | None = None  # a full run re-routes every subject
    else:
        changes = catalog.changes_since(journal.cursor())
        high_water = changes.high_water
        changed = {c.key for c in changes.customers}
        due = set(journal.due(started)) - changed
        # Customers whose catalog record did not change but whose context did (a new Stripe
        # id, new usage): re-rendered, and written only if the render differs.
        context_only = context.changed_since(journal.context_since(), target.name)
        context_only -= changed | due
        due |= context_only
        customers = changes.customers + catalog.customers_by_keys(due)
        subject_keys = [s.key for s in changes.subjects]
    local = _render_all(target, customers, context)
    plan = plan_customers(
        target=target.name,
        local=local,
        links=_links_to_plan(journal, local, listed, in_sync),
        snapshot=listed,
        policy=options.policy,
        now=started,
        rules=target.rules,
        managed=None if options.full else journal.managed_count(),
        in_sync=in_sync,
    )
    if context_only:
        # Looked at only because their context may have changed: those that did not are not
        # news (a tick after 10,000 creates would otherwise report 10,000 skips).
        plan = replace(
            plan,
            actions=tuple(
                a for a in plan.actions if not (a.reason == IN_SYNC and a.key in context_only)
            ),
        )
    return _Planned(plan, customers, subject_keys, high_water)


def _record_run(
    catalog: Catalog,
    target: Target,
    options: SyncOptions,
    journal: Journal,
    planned: _Planned,
    applied: ApplyResult,
    result: RunResult,
    started: datetime,
) -> None:
    """After the apply: re-route subjects, then move the cursor (database work: run in a
    worker thread)."""
    # Subjects follow their customers: re-route those whose attribution changed and those whose
    # customer got a new external id in this run.
    subject_keys = planned.subject_keys
    if subject_keys is not None and applied.changed_customers:
        subject_keys = subject_keys + _subjects_of(
            catalog, applied.changed_customers, planned.customers
        )
    result.subjects_routed = journal.route_subjects(subject_keys)
    # Withheld deletes left no trace on their link rows: keep the cursor before them, so the
    # next run (with --allow-mass-delete, or after the catalog is fixed) sees them again. The
    # rest of the window replays as no-ops.
    # So do actions postponed by a stop (the service shutting down): nothing was begun for
    # them, and the next run must see them again.
    postponed = applied.outcomes.get("postponed", 0)
    cursor = None if planned.plan.guard_tripped or postponed else planned.high_water
    journal.advance(
        cursor=cursor,
        full=options.full,
        summary=result.counts,
        context_since=started if cursor is not None and target.needs.any else None,
    )


async def _list(target: Target) -> list[Any]:
    """The target's records for a full reconcile; a listing that fails (after the target's
    own retries) stops the run with the target's reason, not a traceback."""
    try:
        return await target.list_customers()
    except Exception as exc:  # noqa: BLE001 - described by the target, then raised as ours
        error = target.classify(exc)
        raise TargetUnusable(
            f"{target.name}: listing its records failed: {error.message}"
        ) from None


async def _apply(applier: Applier, plan: Plan, result: RunResult) -> ApplyResult:
    """Apply the plan; its outcomes become the run's counts."""
    try:
        applied = await applier.run(plan)
    except FatalTargetError as exc:
        raise TargetUnusable(f"{applier.target.name} refused the run: {exc}") from None
    result.applied = applied
    result.counts = dict(applied.outcomes)
    return applied


def _render_all(
    target: Target, customers: Iterable[Customer], reader: ContextReader
) -> dict[str, Desired | None]:
    """Each customer as the target should hold it (None: deleted locally), with the context
    of all of them loaded at once."""
    customers = list(customers)
    live = [c.key for c in customers if not c.is_deleted]
    context = reader.load(None if len(live) > _LOAD_ALL_OVER else live)
    return {c.key: _render(target, c, context) for c in customers}


# Past this many customers, one query for every customer's context beats an IN list.
_LOAD_ALL_OVER = 5000


def _render(target: Target, customer: Customer, context: RenderContext) -> Desired | None:
    if customer.is_deleted:
        return None
    return replace(target.render(customer, context), seq=customer.change_seq)


def _links_to_plan(
    journal: Journal,
    local: dict[str, Desired | None],
    snapshot: Snapshot | None,
    in_sync: frozenset[str],
) -> dict[str, LinkView]:
    """The links the planner looks at: those of the local records it plans, and in a full
    reconcile also those of managed records with no local record to plan (orphans, released)."""
    keys = set(local)
    if snapshot is not None:
        keys.update(k for k in snapshot.by_key if k not in in_sync)
    # An incremental plan diffs against what was last pushed; a full one against the listing.
    return journal.links(keys, with_state=snapshot is None)


def _planned_counts(plan: Plan) -> dict[str, int]:
    names = {
        ActionKind.CREATE: "created",
        ActionKind.UPDATE: "updated",
        ActionKind.DELETE: "deleted",
        ActionKind.ADOPT: "adopted",
        ActionKind.RELINK: "relinked",
        ActionKind.RECREATE: "recreated",
        ActionKind.ARCHIVE: "archived",
        ActionKind.RELEASE: "released",
    }
    counts: dict[str, int] = {"skip": plan.in_sync} if plan.in_sync else {}
    for action in plan.actions:
        name = names.get(action.kind, action.kind.value)
        counts[name] = counts.get(name, 0) + 1
    return counts


def _subjects_of(catalog: Catalog, keys: set[str], known: list[Customer]) -> list[str]:
    by_key = {c.key: c for c in known}
    missing = [k for k in keys if k not in by_key]
    for customer in catalog.customers_by_keys(missing):
        by_key[customer.key] = customer
    return [s for k in keys if k in by_key for s in by_key[k].subject_keys]


async def sync_customer_keys(
    catalog: Catalog,
    target: Target,
    options: SyncOptions,
    keys: list[str],
    *,
    before_delete: Callable[[str], Awaitable[bool]] | None = None,
) -> RunResult:
    """A full reconcile of a few customers, without listing the target: each one's linked
    record is read by id, then planned and applied like any full reconcile (drift repaired, a
    record deleted out of band recreated by policy). What a webhook about those customers
    triggers. Search is not asked (it lags writes); duplicates and orphans are the nightly full
    reconcile's. The cursor does not move: the next tick still reads every change."""
    journal = Journal(catalog.store, target.name, render_version=target.render_version)
    reader = ContextReader(
        catalog.store,
        target.needs,
        options.meters,
        utcnow(),
        options.aggregates,
        entitlements=options.entitlements,
    )

    def read() -> tuple[list[Customer], dict[str, Desired | None], dict[str, LinkView]]:
        customers = catalog.customers_by_keys(keys)
        local = _render_all(target, customers, reader)
        return customers, local, journal.links(local, with_state=False)

    customers, local, links = await asyncio.to_thread(read)
    records: dict[str, Any] = {}
    for key in local:
        link = links.get(key)
        if link is not None and link.external_id:
            found = await target.retrieve(link.external_id)
            if found is not None:
                records[found.id] = found
    plan = plan_customers(
        target=target.name,
        local=local,
        links=links,
        snapshot=Snapshot.of(list(records.values())),
        policy=options.policy,
        now=utcnow(),
        rules=target.rules,
    )
    result = RunResult(plan, counts=_planned_counts(plan))
    if options.dry_run:
        return result
    applier = Applier(
        target,
        journal,
        concurrency=options.concurrency,
        retry=options.retry,
        before_delete=before_delete,
    )
    applied = await _apply(applier, plan, result)
    if applied.changed_customers:
        changed = applied.changed_customers
        await asyncio.to_thread(
            lambda: journal.route_subjects(_subjects_of(catalog, changed, customers))
        )
    return result
