"""`metersync run`: a thin door into metersync.service."""

from __future__ import annotations

import typer

from metersync.cli.context import app_context


def run_command(ctx: typer.Context) -> None:
    """Run as a service: sync customers and usage on a schedule, one active syncer per database
    (a second one waits as standby). With OpenMeter as the source, each tick pulls from it
    first; HubSpot's companies follow when HubSpot is configured. SIGTERM or SIGINT stops it
    cleanly (exit 0)."""
    from metersync.service.daemon import Service

    app = app_context(ctx)
    raise typer.Exit(Service(app.settings, app.catalog).run())
