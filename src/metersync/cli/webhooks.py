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

    from metersync.pipeline import Pipeline, replay_webhooks
    from metersync.store.lock import LockHeld, run_lock

    if not event_ids and since is None:
        raise typer.BadParameter("name events with --id, or give --since", param_hint="--id")
    app = app_context(ctx)
    store = app.catalog.store
    count = replay_webhooks(
        store, since=parse_time(since, "--since") if since else None, event_ids=event_ids
    )
    typer.echo(f"{count} event(s) marked for processing")
    try:
        with run_lock(store):

            async def go() -> dict[str, int]:
                async with Pipeline(app.settings, app.catalog) as pipeline:
                    return await pipeline.process_webhooks(limit=10_000)

            typer.echo(f"processed: {asyncio.run(go())}")
    except LockHeld:
        typer.echo("a running service holds the lock: it processes them within a minute")
