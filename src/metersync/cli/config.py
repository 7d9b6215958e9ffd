"""`metersync config …`"""

from __future__ import annotations

import json

import typer

from metersync.cli.context import app_context
from metersync.cli.options import command_group
from metersync.cli.output import print_json, print_table

app = command_group("Configuration.")


@app.command("show")
def show(ctx: typer.Context, as_json: bool = typer.Option(False, "--json")) -> None:
    """Print the effective settings (file + environment), secrets masked."""
    data = app_context(ctx).settings.redacted()
    if as_json:
        print_json(data)
        return
    rows = []
    for section, values in data.items():
        if isinstance(values, list):  # [[meters]]: one row per meter
            rows += [[f"{section}[{i}]", json.dumps(item)] for i, item in enumerate(values)]
            if not values:
                rows.append([section, "none"])
            continue
        rows += [
            [f"{section}.{key}", "" if value is None else str(value)]
            for key, value in values.items()
        ]
    print_table("effective settings", ["setting", "value"], rows)
