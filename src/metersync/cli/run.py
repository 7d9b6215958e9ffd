"""`metersync run`: a thin door into metersync.service."""

from __future__ import annotations

import typer

from metersync.cli.context import app_context
from metersync.service.runner import Service


def run_command(ctx: typer.Context) -> None:
    """Run as a service: sync customers and usage on a schedule, one active syncer per database
    (a second one waits as standby). SIGTERM or SIGINT stops it cleanly (exit 0)."""
    app = app_context(ctx)
    raise typer.Exit(Service(app.settings, app.catalog).run())
