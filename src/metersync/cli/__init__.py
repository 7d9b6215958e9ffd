"""The `metersync` command: a thin door into the catalog, the usage pipeline, the sync and the
service.

Start-up cost: cron jobs and scripts run `metersync` once per call, and `--version` or `--help`
must not pay for what the commands use. So the modules of this package import only typer and
light helpers at their top; a command imports its heavy dependencies (the settings with
pydantic, the catalog and store with SQLAlchemy, the Stripe SDK, the service, the emulator,
rich) in its body, when it runs. Names needed only by type hints go under TYPE_CHECKING.
tests/test_cli_startup.py fails when `--version` or `--help` imports one of them again.
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

import typer

from metersync.cli import (
    config,
    customers,
    db,
    entitlements,
    events,
    features,
    meters,
    subjects,
    usage,
    webhooks,
)
from metersync.cli.context import AppContext, MetersyncGroup
from metersync.cli.daemon import run_command
from metersync.cli.emulator import emulator_command
from metersync.cli.importing import import_command
from metersync.cli.sync import reconcile_command, status_command

# metersync.settings' CONFIG_ENV and the values of its LogLevel and LogFormat, spelt out here:
# importing the settings module (pydantic, SQLAlchemy) just to list them would cost --help and
# --version most of their start-up. tests/test_cli_startup.py checks that they agree.
CONFIG_ENV = "METERSYNC_CONFIG"
LogLevelName = Literal["debug", "info", "warning", "error"]
LogFormatName = Literal["auto", "json", "console"]

app = typer.Typer(
    name="metersync",
    cls=MetersyncGroup,
    help="Keeps Stripe (and a CRM) in step with a metering catalog.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    rich_markup_mode=None,  # plain help, as command_group says why
    context_settings={"help_option_names": ["-h", "--help"]},
)
app.add_typer(subjects.app, name="subjects")
app.add_typer(customers.app, name="customers")
app.command("import")(import_command)
app.add_typer(events.app, name="events")
app.add_typer(meters.app, name="meters")
app.add_typer(usage.app, name="usage")
app.add_typer(features.app, name="features")
app.add_typer(entitlements.app, name="entitlements")
app.add_typer(webhooks.app, name="webhooks")
app.command("reconcile")(reconcile_command)
app.command("status")(status_command)
app.command("run")(run_command)
app.add_typer(db.app, name="db")
app.add_typer(config.app, name="config")
app.command("emulator")(emulator_command)


def _version(value: bool) -> None:
    if value:
        from metersync import __version__

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
    log_level: LogLevelName | None = typer.Option(None, "--log-level", help="Overrides log.level."),
    log_format: LogFormatName | None = typer.Option(
        None, "--log-format", help="Overrides log.format (auto: JSON unless stderr is a TTY)."
    ),
    version: bool = typer.Option(
        False, "--version", callback=_version, is_eager=True, help="Print the version and exit."
    ),
) -> None:
    # Logging works from the first line on, to stderr, even if the settings then fail to load;
    # loading them reconfigures it with their level and format.
    from metersync.logs import configure_logging
    from metersync.settings import LogFormat, LogLevel

    level = LogLevel(log_level) if log_level else None
    format_ = LogFormat(log_format) if log_format else None
    configure_logging(level or LogLevel.INFO, format_ or LogFormat.AUTO)
    obj = AppContext(config_path=config_path, log_level=level, log_format=format_)
    ctx.obj = obj
    ctx.call_on_close(obj.close)


def main() -> None:
    app(prog_name="metersync")
