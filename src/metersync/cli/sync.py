"""`metersync reconcile` and `metersync status`: thin doors into metersync.sync."""

from __future__ import annotations

import asyncio
import sys
import time
from collections.abc import Callable
from typing import Any

import typer
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from metersync.cli.context import app_context
from metersync.cli.output import print_json, print_table
from metersync.logs import get_logger
from metersync.store.lock import run_lock
from metersync.sync.model import Action, ActionKind, Plan
from metersync.sync.reconcile import RunResult, sync_customers
from metersync.sync.status import link_status
from metersync.targets.factory import stripe_target, sync_options

_log = get_logger("metersync.cli")
SUMMARY_COLUMNS = ("created", "updated", "deleted", "adopted", "failed", "blocked")


def reconcile_command(
    ctx: typer.Context,
    dry_run: bool = typer.Option(False, "--dry-run", help="Print the plan; write nothing."),
    as_json: bool = typer.Option(False, "--json", help="Print the plan and summary as JSON."),
    full: bool = typer.Option(
        False, "--full", help="List Stripe: adopt, repair drift, recreate, report orphans."
    ),
    only: str = typer.Option("customers", "--only", help="What to sync: customers."),
    allow_mass_delete: bool = typer.Option(
        False, "--allow-mass-delete", help="Apply deletes even past the mass-delete guard."
    ),
) -> None:
    """Make Stripe match the catalog. Exit 0 all good, 1 some items failed or were blocked,
    2 bad config or input, 3 another run holds the lock, 4 the mass-delete guard tripped."""
    if only != "customers":
        raise typer.BadParameter(
            f"{only!r}: only 'customers' can be synced by this version", param_hint="--only"
        )
    app = app_context(ctx)
    settings = app.settings
    options = sync_options(
        settings, full=full, dry_run=dry_run, allow_mass_delete=allow_mass_delete
    )
    catalog = app.catalog
    with run_lock(catalog.store):
        target = stripe_target(settings)
        with _Progress(as_json) as progress:
            result = asyncio.run(_run(catalog, target, options, progress))
    if as_json:
        print_json(result.to_json())
    else:
        _print_result(result, dry_run=dry_run)
    raise typer.Exit(int(result.exit_code))


async def _run(
    catalog: Any, target: Any, options: Any, progress: Callable[[int, int], None] | None
) -> RunResult:
    try:
        return await sync_customers(catalog, target, options, progress=progress)
    finally:
        await target.close()


class _Progress:
    """A progress bar on a terminal; a log line every few seconds otherwise."""

    def __init__(self, quiet: bool) -> None:
        self.quiet = quiet
        self.bar: Progress | None = None
        self.task: Any = None
        self.last_log = 0.0

    def __enter__(self) -> Callable[[int, int], None] | None:
        if self.quiet:
            return None
        if sys.stderr.isatty():
            self.bar = Progress(
                TextColumn("applying"),
                BarColumn(),
                MofNCompleteColumn(),
                TimeElapsedColumn(),
                transient=True,
            )
            self.bar.start()
            self.task = self.bar.add_task("apply", total=None)
        return self.update

    def update(self, done: int, total: int) -> None:
        if self.bar is not None:
            self.bar.update(self.task, completed=done, total=total)
        elif time.monotonic() - self.last_log > 5 or done == total:
            self.last_log = time.monotonic()
            _log.info("progress", done=done, total=total)

    def __exit__(self, *exc: object) -> None:
        if self.bar is not None:
            self.bar.stop()


def _print_result(result: RunResult, *, dry_run: bool) -> None:
    _print_plan(result.plan)
    counts = result.counts
    title = "planned (dry run, nothing written)" if dry_run else "summary"
    print_table(
        title, ["", *SUMMARY_COLUMNS], [["customers", *(counts.get(c, 0) for c in SUMMARY_COLUMNS)]]
    )
    extra = {k: v for k, v in counts.items() if k not in SUMMARY_COLUMNS and v}
    if extra:
        typer.echo("also: " + ", ".join(f"{k} {v}" for k, v in sorted(extra.items())))
    if result.applied and result.applied.failures:
        for failure in result.applied.failures:
            typer.echo(
                f"failed: {failure['key']} ({failure['action']}): {failure['error']}", err=True
            )
    if result.plan.guard_tripped:
        typer.echo(
            f"mass-delete guard: {result.plan.guard_reason}; no customer was deleted. "
            "Re-run with --allow-mass-delete if this is intended.",
            err=True,
        )


def _print_plan(plan: Plan) -> None:
    shown = [a for a in plan.actions if a.kind != ActionKind.SKIP or a.reason != "in sync"]
    in_sync = len(plan.actions) - len(shown)
    mode = "full" if plan.full else "incremental"
    print_table(
        f"plan ({mode}; {len(shown)} actions, {in_sync} in sync)",
        ["action", "key", "stripe id", "details"],
        [[a.kind.value, a.key, a.external_id or "", _details(a)] for a in shown],
    )


def _details(action: Action) -> str:
    parts = [f"{c.field}: {_short(c.before)} → {_short(c.after)}" for c in action.changes]
    if action.reason:
        parts.append(action.reason)
    return "; ".join(parts)


def _short(value: Any) -> str:
    text = "∅" if value is None else str(value)
    return text if len(text) <= 40 else text[:37] + "…"


def status_command(
    ctx: typer.Context,
    as_json: bool = typer.Option(False, "--json", help="Print as JSON."),
) -> None:
    """Link health: counts by state, failing items with their last error, last runs, lag."""
    app = app_context(ctx)
    report = link_status(app.catalog, "stripe")
    if as_json:
        print_json(report)
        return
    rows = [
        [kind, state, count]
        for kind, states in report["links"].items()
        for state, count in sorted(states.items())
    ]
    print_table("links (stripe)", ["kind", "state", "count"], rows)
    runs = report["runs"]
    typer.echo(
        f"last tick: {runs['lastTickAt'] or 'never'}; last full reconcile: "
        f"{runs['lastFullAt'] or 'never'}; last success: {runs['lastSuccessAt'] or 'never'}; "
        f"catalog changes not yet synced: {report['lag']['changes']}"
    )
    if report["failing"]:
        print_table(
            f"failing or blocked ({len(report['failing'])})",
            ["kind", "key", "state", "attempts", "next attempt", "last error"],
            [
                [
                    f["kind"],
                    f["key"],
                    f["state"],
                    f["attempts"],
                    f["nextAttemptAt"] or "",
                    f["lastError"],
                ]
                for f in report["failing"]
            ],
        )
