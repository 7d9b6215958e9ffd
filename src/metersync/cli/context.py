"""What every command shares: settings loaded once, the catalog opened once, errors mapped."""

from __future__ import annotations

import re
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeGuard

import typer

from metersync.cli.options import PlainHelpGroup
from metersync.errors import (
    ConfigError,
    DatabaseUnavailable,
    ExitCode,
    InvalidInput,
    MetersyncError,
    NotFound,
)

if TYPE_CHECKING:  # imported when first used: see the start-up note in metersync.cli
    from sqlalchemy.exc import DatabaseError

    from metersync.catalog import Catalog
    from metersync.settings import LogFormat, LogLevel, Settings


@dataclass
class AppContext:
    config_path: Path | None = None
    log_level: LogLevel | None = None
    log_format: LogFormat | None = None
    _settings: Settings | None = None
    _catalog: Catalog | None = None

    @property
    def settings(self) -> Settings:
        if self._settings is None:
            from metersync.logs import configure_logging
            from metersync.settings import load_settings

            self._settings = load_settings(self.config_path)
            configure_logging(
                self.log_level or self._settings.log.level,
                self.log_format or self._settings.log.format,
            )
        return self._settings

    @property
    def catalog(self) -> Catalog:
        if self._catalog is None:
            from metersync.catalog import Catalog
            from metersync.store import Store

            self._catalog = Catalog(
                Store.open(self.settings.database.url),
                auto_customer=self.settings.catalog.auto_customer,
            )
        return self._catalog

    def close(self) -> None:
        if self._catalog is not None:
            self._catalog.close()
            self._catalog = None


def app_context(ctx: typer.Context) -> AppContext:
    obj = ctx.find_object(AppContext)
    if obj is None:  # a command invoked without the root callback (only in embedding)
        obj = ctx.ensure_object(AppContext)
    return obj


def writable_catalog(ctx: typer.Context) -> Catalog:
    """The catalog, for a command that writes to it; refused (exit 2) when an upstream source
    owns it: the next pull would undo the write (a customer created here, deleted by it)."""
    app = app_context(ctx)
    if app.settings.openmeter.enabled:
        raise ConfigError(
            "the catalog and usage come from OpenMeter (openmeter.url is set): make this "
            "change in OpenMeter; metersync's next pull brings it here"
        )
    return app.catalog


@contextmanager
def tombstone_hint() -> Iterator[None]:
    """A get of a deleted record says how to see it anyway."""
    try:
        yield
    except NotFound as exc:
        if exc.tombstone:
            raise NotFound(f"{exc.message} (--include-deleted shows it)") from None
        raise


def name_cli_options(ctx: typer.Context, options: dict[str, str]) -> None:
    """Tell the error handler which CLI option sets which record field, for its messages."""
    ctx.meta["metersync.field_options"] = options


class MetersyncGroup(PlainHelpGroup):
    """The root group: turns the errors a user can cause into one line and an exit code."""

    def invoke(self, ctx: typer.Context) -> Any:  # type: ignore[override]
        try:
            return super().invoke(ctx)
        except MetersyncError as exc:
            _fail(_message(ctx, exc), exc.exit_code)
        except Exception as exc:
            if not _is_database_error(exc):
                raise
            from metersync.store.engine import first_line

            # The database went away or is not one (its file, its server) mid-command.
            _fail(f"database error: {first_line(exc)}", DatabaseUnavailable.exit_code)


def _is_database_error(exc: Exception) -> TypeGuard[DatabaseError]:
    # SQLAlchemy is imported by the commands that use a database, not by the CLI's start-up:
    # until one has, no exception can be one of its errors.
    errors = sys.modules.get("sqlalchemy.exc")
    return errors is not None and isinstance(exc, errors.DatabaseError)


def _message(ctx: typer.Context, exc: MetersyncError) -> str:
    # Commands that take a record's fields as options name them; elsewhere `key` is the KEY
    # argument (get, delete).
    options: dict[str, str] = ctx.meta.get("metersync.field_options", {"key": "KEY"})
    if isinstance(exc, InvalidInput) and exc.problems and not exc.record:
        parts = []
        for problem in exc.problems:
            # usageAttribution.subjectKeys[2] is set by the third --subject.
            option = options.get(re.sub(r"\[\d+\]$", "", problem.field))
            field_name = f"{option} ({problem.field})" if option else problem.field
            parts.append(f"{field_name}: {problem.problem}" if field_name else problem.problem)
        return "; ".join(parts)
    return exc.message


def _fail(message: str, code: ExitCode) -> None:
    from metersync.logs import get_logger, redact_text

    get_logger("metersync.cli").debug("command failed", error=message, exit_code=int(code))
    typer.echo(f"error: {redact_text(message)}", err=True)
    raise typer.Exit(int(code))
