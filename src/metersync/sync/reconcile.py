"""A customer sync run: read the catalog (all of it, or what changed since the last run), read
the links, list the target only for a full reconcile, plan, and unless it is a dry run apply and
advance the cursor. The CLI's `reconcile` and (later) the service's jobs both call this.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from metersync.catalog import Catalog
from metersync.catalog.views import Customer
from metersync.clock import utcnow
from metersync.errors import ExitCode, MetersyncError
from metersync.logs import get_logger
from metersync.sync.apply import Applier, ApplyResult, FatalTargetError, RetryPolicy
from metersync.sync.journal import Journal
from metersync.sync.model import ActionKind, DeletePolicy, Desired, Plan, Snapshot
from metersync.sync.plan import plan_customers
from metersync.targets.base import Target

_log = get_logger("metersync.sync")


class TargetUnusable(MetersyncError):
    """The target refuses every call (credentials, permissions): a configuration problem."""


@dataclass(frozen=True)
class SyncOptions:
    full: bool = False
    dry_run: bool = False
    policy: DeletePolicy = field(default_factory=DeletePolicy)
    concurrency: int = 16
    retry: RetryPolicy = field(default_factory=RetryPolicy)


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
) -> RunResult:
    journal = Journal(catalog.store, target.name)
    started = utcnow()
    if options.full:
        changes = catalog.changes_since(0, include_subjects=False)  # subjects: all re-routed
        customers = changes.customers
        snapshot: Snapshot | None = Snapshot.of(await target.list_customers())
        subject_keys: list[str] | None = None
    else:
        changes = catalog.changes_since(journal.cursor())
        due = set(journal.due(started)) - {c.key for c in changes.customers}
        customers = changes.customers + catalog.customers_by_keys(due)
        snapshot = None
        subject_keys = [s.key for s in changes.subjects]
    local = {c.key: _render(target, c) for c in customers}
    links = journal.links(None, with_state=False) if options.full else journal.links(local)
    plan = plan_customers(
        target=target.name,
        local=local,
        links=links,
        snapshot=snapshot,
        policy=options.policy,
        now=started,
        rules=target.rules,
        managed=None if options.full else journal.managed_count(),
    )
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

    applier = Applier(
        target, journal, concurrency=options.concurrency, retry=options.retry, progress=progress
    )
    try:
        applied = await applier.run(plan)
    except FatalTargetError as exc:
        raise TargetUnusable(f"{target.name} refused the run: {exc}") from None
    result.applied = applied
    result.counts = dict(applied.outcomes)
    # Subjects follow their customers: re-route those whose attribution changed and those whose
    # customer got a new external id in this run.
    if subject_keys is not None and applied.changed_customers:
        subject_keys += _subjects_of(catalog, applied.changed_customers, customers)
    result.subjects_routed = journal.route_subjects(subject_keys)
    # Withheld deletes left no trace on their link rows: keep the cursor before them, so the
    # next run (with --allow-mass-delete, or after the catalog is fixed) sees them again. The
    # rest of the window replays as no-ops.
    cursor = None if plan.guard_tripped else changes.high_water
    journal.advance(cursor=cursor, full=options.full, summary=result.counts)
    _log.info("applied", target=target.name, counts=result.counts)
    return result


def _render(target: Target, customer: Customer) -> Desired | None:
    return None if customer.is_deleted else target.render(customer)


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
    counts: dict[str, int] = {}
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
