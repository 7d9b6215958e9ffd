"""`metersync config …`"""

from __future__ import annotations

import typer

from metersync.cli.context import app_context
from metersync.cli.output import print_json, print_table

app = typer.Typer(help="Configuration.", no_args_is_help=True)


@app.command("show")
def show(ctx: typer.Context, as_json: bool = typer.Option(False, "--json")) -> None:
    """Print the effective settings (file + environment), secrets masked."""
    data = app_context(ctx).settings.redacted()
    if as_json:
        print_json(data)
        return
    rows = [
        [f"{section}.{key}", "" if value is None else str(value)]
        for section, values in data.items()
        for key, value in values.items()
    ]
    print_table("effective settings", ["setting", "value"], rows)
