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
from metersync.errors import ConfigError, ExitCode
from metersync.logs import get_logger
from metersync.store.lock import run_lock
from metersync.sync.model import Action, ActionKind, Plan
from metersync.sync.reconcile import RunResult, sync_customers
from metersync.sync.status import link_status
from metersync.targets.factory import stripe_target, sync_options, usage_pusher
from metersync.usage.push import PushResult, UsagePusher
from metersync.usage.status import usage_status

_log = get_logger("metersync.cli")
SUMMARY_COLUMNS = ("created", "updated", "deleted", "adopted", "failed", "blocked")


def reconcile_command(
    ctx: typer.Context,
    dry_run: bool = typer.Option(False, "--dry-run", help="Print the plan; write nothing."),
    as_json: bool = typer.Option(False, "--json", help="Print the plan and summary as JSON."),
    full: bool = typer.Option(
        False, "--full", help="List Stripe: adopt, repair drift, recreate, report orphans."
    ),
    only: str | None = typer.Option(
        None, "--only", help="customers or usage (default: both; usage when meters are set)."
    ),
    allow_mass_delete: bool = typer.Option(
        False, "--allow-mass-delete", help="Apply deletes even past the mass-delete guard."
    ),
    wait: float | None = typer.Option(
        None,
        "--wait",
        metavar="SECONDS",
        help="When another run (or the service) holds the lock, wait up to this long for it.",
    ),
) -> None:
    """Make Stripe match the catalog: customers, then usage. Exit 0 all good, 1 some items
    failed or were blocked, 2 bad config or input, 3 another run holds the lock, 4 the
    mass-delete guard tripped."""
    if only not in (None, "customers", "usage"):
        raise typer.BadParameter(f"{only!r}: use customers or usage", param_hint="--only")
    app = app_context(ctx)
    settings = app.settings
    options = sync_options(
        settings, full=full, dry_run=dry_run, allow_mass_delete=allow_mass_delete
    )
    catalog = app.catalog
    with run_lock(catalog.store, wait_s=wait or 0.0):
        target = stripe_target(settings)
        pusher = usage_pusher(settings, target, catalog.store)
        if only == "usage" and not pusher.configured:
            raise ConfigError("--only usage: no [[meters]] with a stripe section are configured")
        with _Progress(as_json) as progress:
            outcome = asyncio.run(_run(catalog, target, options, pusher, only, progress))
    customers, usage = outcome
    if as_json:
        data: dict[str, Any] = customers.to_json() if customers else {}
        if usage is not None:
            data["usage"] = usage.to_json()
        print_json(data)
    else:
        if customers is not None:
            _print_result(customers, dry_run=dry_run)
        if usage is not None:
            _print_usage(usage, dry_run=dry_run)
    code = customers.exit_code if customers else ExitCode.OK
    if usage is not None and usage.failed and code == ExitCode.OK:
        code = ExitCode.SOME_FAILED
    raise typer.Exit(int(code))


async def _run(
    catalog: Any,
    target: Any,
    options: Any,
    pusher: UsagePusher,
    only: str | None,
    progress: Callable[[int, int], None] | None,
) -> tuple[RunResult | None, PushResult | None]:
    customers = usage = None
    try:
        if only in (None, "customers"):
            customers = await sync_customers(
                catalog,
                target,
                options,
                progress=progress,
                before_delete=pusher.flush if pusher.configured else None,
            )
        if only == "usage" or (only is None and pusher.configured):
            usage = await pusher.run(dry_run=options.dry_run)
        return customers, usage
    finally:
        await target.close()


def _print_usage(result: PushResult, *, dry_run: bool) -> None:
    counts = result.counts()
    title = "usage (dry run, nothing sent)" if dry_run else "usage"
    columns = ("planned", "sent", "delivered", "duplicates", "failed", "late", "held")
    print_table(title, ["", *columns], [["reports", *(counts.get(c, 0) for c in columns)]])
    if result.waiting_subjects:
        typer.echo(
            f"usage waiting: {result.waiting_subjects} subject(s) have usage but no customer "
            "linked in Stripe yet"
        )
    for failure in result.failures:
        typer.echo(
            f"usage failed: {failure['customer']} / {failure['meter']}: {failure['error']}",
            err=True,
        )


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
    if app.settings.meters:
        report["usage"] = usage_status(app.catalog.store, "stripe")
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
    if "usage" in report:
        _print_usage_status(report["usage"])
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


def _print_usage_status(usage: dict[str, Any]) -> None:
    ledger = usage["ledger"]
    states = ("pending", "delivered", "late", "failed")
    print_table("usage ledger (stripe)", list(states), [[ledger.get(s, 0) for s in states]])
    waiting = usage["waiting"]
    typer.echo(
        f"usage lag: {usage['lagSeconds']:g} s (oldest pending report "
        f"{usage['oldestPendingAt'] or 'none'}); last delivered: "
        f"{usage['lastDeliveredAt'] or 'never'}; waiting for a customer link: "
        f"{waiting['usageRows']} usage row(s) of {waiting['subjects']} subject(s)"
    )
    for late in usage["late"]:
        typer.echo(
            f"late usage held (older than Stripe's 35 days; late_usage = report): meter "
            f"{late['meter']}: {late['reports']} report(s), value {late['value']}"
        )
    for failing in usage["failing"]:
        typer.echo(
            f"usage failing: {failing['customer']} / {failing['meter']} window "
            f"{failing['windowStart']} ({failing['state']}, {failing['attempts']} attempts): "
            f"{failing['lastError']}",
            err=True,
        )
