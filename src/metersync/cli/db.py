"""`metersync db …`: schema migrations."""

from __future__ import annotations

import typer

from metersync.cli.context import app_context
from metersync.cli.options import command_group
from metersync.errors import FieldProblem, InvalidInput

app = command_group("The database schema.")


@app.command("upgrade")
def upgrade(
    ctx: typer.Context,
    revision: str = typer.Option("head", "--revision", help="Target revision."),
) -> None:
    """Migrate the database to the schema this version needs (safe to run again)."""
    from alembic.util.exc import CommandError

    from metersync.store import Store
    from metersync.store.engine import build_engine

    store = Store(build_engine(app_context(ctx).settings.database.url))
    try:
        try:
            before, after = store.upgrade(revision)
        except CommandError as exc:
            raise InvalidInput([FieldProblem("--revision", str(exc))]) from None
        if before == after:
            typer.echo(f"{store.safe_url}: already at revision {after}")
        else:
            typer.echo(f"{store.safe_url}: upgraded from {before or 'empty'} to {after}")
    finally:
        store.dispose()


@app.command("current")
def current(ctx: typer.Context) -> None:
    """Show the database's schema revision and the one this version needs."""
    from metersync.store import Store
    from metersync.store.engine import build_engine
    from metersync.store.migrate import head_revision

    store = Store(build_engine(app_context(ctx).settings.database.url))
    try:
        typer.echo(f"database: {store.safe_url}")
        typer.echo(f"current:  {store.current_revision() or 'empty'}")
        typer.echo(f"needed:   {head_revision()}")
    finally:
        store.dispose()
