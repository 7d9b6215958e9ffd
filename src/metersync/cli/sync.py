"""`metersync reconcile` and `metersync status`: thin doors into metersync.sync."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import typer

from metersync.cli.context import app_context
from metersync.cli.output import print_json, print_table
from metersync.cli.progress import ProgressBar

if TYPE_CHECKING:  # the commands import what they use when they run: see metersync.cli
    from metersync.sync.customer_sync import RunResult
    from metersync.sync.model import Action, Plan
    from metersync.usage.push import PushResult

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
    target: str | None = typer.Option(
        None, "--target", help="stripe or hubspot (default: every configured target)."
    ),
) -> None:
    """Pull from OpenMeter when it is the source, then make Stripe (and HubSpot, when
    configured) match the catalog: Stripe's customers, the usage push, then HubSpot's
    companies. Exit 0 all good, 1 some items
    failed or were blocked, 2 bad config or input, 3 another run holds the lock, 4 the
    mass-delete guard tripped."""
    import asyncio

    from metersync.pipeline import check_targets, reconcile
    from metersync.store.lock import run_lock

    if only not in (None, "customers", "usage"):
        raise typer.BadParameter(f"{only!r}: use customers or usage", param_hint="--only")
    app = app_context(ctx)
    catalog = app.catalog
    check_targets(app.settings, target)
    bar = ProgressBar("applying", quiet=as_json, log=True)
    with run_lock(catalog.store, wait_s=wait or 0.0), bar as progress:
        outcome = asyncio.run(
            reconcile(
                catalog,
                app.settings,
                full=full,
                dry_run=dry_run,
                allow_mass_delete=allow_mass_delete,
                only=only,
                only_target=target,
                progress=progress,
            )
        )
    if as_json:
        print_json(outcome.to_json())
    else:
        for name, customers in outcome.customers.items():
            if name == "hubspot" and outcome.usage is not None:
                _print_usage(outcome.usage, dry_run=dry_run)
            _print_result(customers, dry_run=dry_run)
        if outcome.usage is not None and "hubspot" not in outcome.customers:
            _print_usage(outcome.usage, dry_run=dry_run)
    raise typer.Exit(int(outcome.exit_code))


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
    from metersync.sync.model import IN_SYNC, ActionKind

    shown = [a for a in plan.actions if a.kind != ActionKind.SKIP or a.reason != IN_SYNC]
    in_sync = len(plan.actions) - len(shown)
    mode = "full" if plan.full else "incremental"
    print_table(
        f"{plan.target} plan ({mode}; {len(shown)} actions, {in_sync} in sync)",
        ["action", "key", f"{plan.target} id", "details"],
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
    """Link health per target (Stripe, and HubSpot when configured): counts by state, failing
    items with their last error, last runs, lag; the usage ledger when meters are configured;
    the OpenMeter source's last pulls, lag and error when it is the source."""
    from metersync.pipeline import source_status
    from metersync.sync.status import link_status
    from metersync.usage.status import usage_status

    app = app_context(ctx)
    report = link_status(app.catalog, "stripe")
    if app.settings.meters:
        report["usage"] = usage_status(app.catalog.store, "stripe")
    others = (
        {"hubspot": link_status(app.catalog, "hubspot")} if app.settings.hubspot.enabled else {}
    )
    if app.settings.openmeter.enabled:
        report["source"] = source_status(app.catalog.store)
    if as_json:
        if others:
            report["targets"] = others
        print_json(report)
        return
    _print_link_status(report)
    if "source" in report:
        _print_source_status(report["source"])
    if "usage" in report:
        _print_usage_status(report["usage"])
    for other in others.values():
        _print_link_status(other)


def _print_source_status(source: dict[str, Any]) -> None:
    for part in ("catalog", "usage"):
        pulled = source[part]
        lag = "never" if pulled["lagSeconds"] is None else f"{pulled['lagSeconds']:g} s ago"
        typer.echo(
            f"source openmeter ({part}): last pull {pulled['lastPullAt'] or 'never'}; last "
            f"success {lag}"
        )
        if pulled["error"]:
            typer.echo(
                f"source openmeter ({part}): the last pull failed: {pulled['error']}", err=True
            )


def _print_link_status(report: dict[str, Any]) -> None:
    target = report["target"]
    rows = [
        [kind, state, count]
        for kind, states in report["links"].items()
        for state, count in sorted(states.items())
    ]
    print_table(f"links ({target})", ["kind", "state", "count"], rows)
    runs = report["runs"]
    typer.echo(
        f"{target}: last tick: {runs['lastTickAt'] or 'never'}; last full reconcile: "
        f"{runs['lastFullAt'] or 'never'}; last success: {runs['lastSuccessAt'] or 'never'}; "
        f"catalog changes not yet synced: {report['lag']['changes']}"
    )
    if report["failing"]:
        print_table(
            f"{target}: failing or blocked ({len(report['failing'])})",
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
    if usage["retentionFloor"]:
        typer.echo(
            f"raw usage kept from {usage['retentionFloor']}: the months before it were pruned"
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
