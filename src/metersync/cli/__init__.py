"""The `metersync` command: a thin door into the catalog, the store and (later) the sync."""

from __future__ import annotations

from pathlib import Path

import typer

from metersync import __version__
from metersync.cli import config, customers, db, events, meters, subjects, usage, webhooks
from metersync.cli.context import AppContext, MetersyncGroup
from metersync.cli.emulator import emulator_command
from metersync.cli.importing import import_command
from metersync.cli.run import run_command
from metersync.cli.sync import reconcile_command, status_command
from metersync.logs import configure_logging
from metersync.settings import CONFIG_ENV, LogFormat, LogLevel

app = typer.Typer(
    name="metersync",
    cls=MetersyncGroup,
    help="Keeps Stripe (and a CRM) in step with a metering catalog.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    context_settings={"help_option_names": ["-h", "--help"]},
)
app.add_typer(subjects.app, name="subjects")
app.add_typer(customers.app, name="customers")
app.command("import")(import_command)
app.add_typer(events.app, name="events")
app.add_typer(meters.app, name="meters")
app.add_typer(usage.app, name="usage")
app.add_typer(webhooks.app, name="webhooks")
app.command("reconcile")(reconcile_command)
app.command("status")(status_command)
app.command("run")(run_command)
app.add_typer(db.app, name="db")
app.add_typer(config.app, name="config")
app.command("emulator")(emulator_command)


def _version(value: bool) -> None:
    if value:
        typer.echo(f"metersync {__version__}")
        raise typer.Exit()


@app.callback()
def root(
    ctx: typer.Context,
    config_path: Path | None = typer.Option(
        None,
        "--config",
        "-c",
        envvar=CONFIG_ENV,
        dir_okay=False,
        help=f"TOML settings file (or {CONFIG_ENV}).",
    ),
    log_level: LogLevel | None = typer.Option(None, "--log-level", help="Overrides log.level."),
    log_format: LogFormat | None = typer.Option(
        None, "--log-format", help="Overrides log.format (auto: JSON unless stderr is a TTY)."
    ),
    version: bool = typer.Option(
        False, "--version", callback=_version, is_eager=True, help="Print the version and exit."
    ),
) -> None:
    # Logging works from the first line on, to stderr, even if the settings then fail to load;
    # loading them reconfigures it with their level and format.
    configure_logging(log_level or LogLevel.INFO, log_format or LogFormat.AUTO)
    obj = AppContext(config_path=config_path, log_level=log_level, log_format=log_format)
    ctx.obj = obj
    ctx.call_on_close(obj.close)


def main() -> None:
    app(prog_name="metersync")
