"""`metersync webhooks …`"""

from __future__ import annotations

import typer

from metersync.cli.context import app_context
from metersync.cli.options import command_group
from metersync.cli.usage import parse_time

app = command_group("Stripe webhook events received by the service.")


@app.command("replay")
def replay_command(
    ctx: typer.Context,
    event_ids: list[str] = typer.Option([], "--id", help="An event id (repeatable)."),
    since: str | None = typer.Option(None, "--since", help="Every event received since then."),
) -> None:
    """Process stored webhook events again: now, or by the running service within a minute."""
    import asyncio

    from metersync.service.webhooks import process_pending, replay
    from metersync.store.lock import LockHeld, run_lock
    from metersync.targets.factory import stripe_target, sync_options

    if not event_ids and since is None:
        raise typer.BadParameter("name events with --id, or give --since", param_hint="--id")
    app = app_context(ctx)
    store = app.catalog.store
    count = replay(
        store, since=parse_time(since, "--since") if since else None, event_ids=event_ids
    )
    typer.echo(f"{count} event(s) marked for processing")
    try:
        with run_lock(store):
            target = stripe_target(app.settings)
            options = sync_options(app.settings, full=True, dry_run=False, allow_mass_delete=False)

            async def go() -> dict[str, int]:
                try:
                    return await process_pending(app.catalog, target, options, limit=10_000)
                finally:
                    await target.close()

            typer.echo(f"processed: {asyncio.run(go())}")
    except LockHeld:
        typer.echo("a running service holds the lock: it processes them within a minute")
