"""Alembic, driven from code: the migrations ship inside the package, so an installed
metersync (pip, Docker) can upgrade its database without an alembic.ini next to it."""

from __future__ import annotations

from alembic import command
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import inspect
from sqlalchemy.engine import Connection

SCRIPT_LOCATION = "metersync.store:migrations"


def alembic_config(connection: Connection | None = None) -> Config:
    config = Config()
    config.set_main_option("script_location", SCRIPT_LOCATION)
    if connection is not None:
        # env.py uses this connection, and so its transaction, instead of opening its own.
        config.attributes["connection"] = connection
    return config


def head_revision() -> str:
    head = ScriptDirectory.from_config(alembic_config()).get_current_head()
    assert head is not None, "the package ships at least one migration"
    return head


def known_revisions() -> set[str]:
    scripts = ScriptDirectory.from_config(alembic_config())
    return {script.revision for script in scripts.walk_revisions()}


def current_revision(conn: Connection) -> str | None:
    return MigrationContext.configure(conn).get_current_revision()


def is_empty(conn: Connection) -> bool:
    return not inspect(conn).get_table_names()


def upgrade(conn: Connection, revision: str = "head") -> None:
    command.upgrade(alembic_config(conn), revision)


def describe_mismatch(url: str, current: str | None, head: str) -> str:
    if current is None:
        return f"database {url} has no metersync schema yet: run `metersync db upgrade`"
    if current in known_revisions():
        return (
            f"database {url} is at schema revision {current}, this version needs {head}: "
            "run `metersync db upgrade`"
        )
    return (
        f"database {url} is at schema revision {current}, which this version of metersync does "
        "not know: it was migrated by a newer metersync"
    )
