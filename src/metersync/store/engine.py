"""Opening the database: one engine per process, write and read sessions, the schema check."""

from __future__ import annotations

import sqlite3
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from sqlalchemy import Engine, create_engine, event, select, update
from sqlalchemy.engine import Connection, make_url
from sqlalchemy.exc import DatabaseError, DBAPIError
from sqlalchemy.pool import StaticPool
from sqlmodel import Session, col

from metersync.errors import DatabaseUnavailable
from metersync.store import migrate
from metersync.store.models import CatalogSequenceRow

CATALOG_SEQUENCE = "catalog"
# The usage counter: one number per write that stores or binds usage (store.usage_cells).
USAGE_SEQUENCE = "usage"
# The same increment for writers on a raw driver connection (ingest): both drivers take it.
NEXT_USAGE_SEQ_SQL = (
    "UPDATE catalog_sequence SET value = value + 1 WHERE name = 'usage' RETURNING value"
)
_SQLITE_BUSY_TIMEOUT = 30.0  # seconds a writer waits for another writer's lock
_SQLITE_BEGIN_OPTION = "sqlite_begin"


class Store:
    """The database behind the catalog, the link table, usage events and the ledger."""

    def __init__(self, engine: Engine) -> None:
        self.engine = engine
        # A read session is one snapshot, so answers assembled from several queries (a change
        # feed, customers with their subjects) never mix two states. SQLite in WAL mode gives a
        # deferred transaction a snapshot at its first read, and takes no write lock, so a long
        # read never blocks writers; PostgreSQL needs REPEATABLE READ for the same.
        self._read_engine = (
            engine.execution_options(**{_SQLITE_BEGIN_OPTION: "DEFERRED"})
            if engine.dialect.name == "sqlite"
            else engine.execution_options(isolation_level="REPEATABLE READ")
        )

    @classmethod
    def open(cls, url: str, *, auto_migrate_new_sqlite: bool = True) -> Store:
        """Connect, and make sure the schema is the one this version of metersync needs.

        A new SQLite file is migrated on first use; any other database must be brought up to
        date with `metersync db upgrade`, so a schema change is always an operator's decision.
        """
        store = cls(build_engine(url))
        try:
            store.ensure_schema(auto_migrate=auto_migrate_new_sqlite and store.is_sqlite)
        except BaseException:
            store.dispose()
            raise
        return store

    @property
    def dialect(self) -> str:
        return self.engine.dialect.name

    @property
    def is_sqlite(self) -> bool:
        return self.dialect == "sqlite"

    @property
    def safe_url(self) -> str:
        return self.engine.url.render_as_string(hide_password=True)

    def ensure_schema(self, *, auto_migrate: bool) -> None:
        with self._connect() as conn, conn.begin():
            current = migrate.current_revision(conn)
            head = migrate.head_revision()
            if current == head:
                return
            if current is None and auto_migrate and migrate.is_empty(conn):
                # Inside the same (on SQLite, IMMEDIATE) transaction as the check: two processes
                # opening a new file at once migrate it once.
                migrate.upgrade(conn)
                return
        raise DatabaseUnavailable(migrate.describe_mismatch(self.safe_url, current, head))

    def upgrade(self, revision: str = "head") -> tuple[str | None, str | None]:
        """Run migrations up to `revision`; returns (revision before, revision after)."""
        with self._connect() as conn, conn.begin():
            before = migrate.current_revision(conn)
            migrate.upgrade(conn, revision)
            return before, migrate.current_revision(conn)

    def current_revision(self) -> str | None:
        with self._connect(self._read_engine) as conn:
            return migrate.current_revision(conn)

    @contextmanager
    def session(self) -> Iterator[Session]:
        """A write transaction: committed when the block ends, rolled back if it raises."""
        with Session(self.engine, expire_on_commit=False) as session, session.begin():
            yield session

    @contextmanager
    def read_session(self) -> Iterator[Session]:
        with Session(self._read_engine, expire_on_commit=False) as session, session.begin():
            yield session

    def next_change_seq(self, session: Session, sequence: str = CATALOG_SEQUENCE) -> int:
        """Take the next change number of `sequence`, holding the counter's lock until commit.

        Call this first in a catalog write: every later write waits here, so whatever a
        transaction reads after this call is the latest committed state. For usage it is
        what makes a cursor exact: numbers commit in the order they are taken, so a reader
        that saw the counter at N will never later find a row numbered N or less it missed.
        """
        value = session.execute(
            update(CatalogSequenceRow)
            .where(col(CatalogSequenceRow.name) == sequence)
            .values(value=col(CatalogSequenceRow.value) + 1)
            .returning(col(CatalogSequenceRow.value))
        ).scalar_one()
        return int(value)

    def current_seq(self, sequence: str) -> int:
        """The last change number of `sequence` committed: every row at or below it is visible."""
        with self.read_session() as session:
            value = session.execute(
                select(col(CatalogSequenceRow.value)).where(
                    col(CatalogSequenceRow.name) == sequence
                )
            ).scalar_one()
        return int(value)

    def dispose(self) -> None:
        self.engine.dispose()

    @contextmanager
    def _connect(self, engine: Engine | None = None) -> Iterator[Connection]:
        try:
            conn = (engine or self.engine).connect()
        except DBAPIError as exc:
            raise DatabaseUnavailable(
                f"cannot connect to database {self.safe_url}: {first_line(exc)}"
            ) from None
        with conn:
            try:
                yield conn
            except DatabaseError as exc:
                # "file is not a database" surfaces at the first statement, not at connect.
                raise DatabaseUnavailable(
                    f"cannot use database {self.safe_url}: {first_line(exc)}"
                ) from None


def first_line(exc: DBAPIError) -> str:
    """The driver's own message, without SQLAlchemy's SQL echo and background link."""
    text = str(exc.orig) if exc.orig is not None else str(exc)
    return text.strip().splitlines()[0] if text.strip() else type(exc).__name__


def build_engine(url: str) -> Engine:
    parsed = make_url(url)
    if parsed.get_backend_name() == "sqlite":
        return _sqlite_engine(url, parsed.database)
    return create_engine(
        url,
        pool_pre_ping=True,
        connect_args={"connect_timeout": 5},
    )


def _sqlite_engine(url: str, database: str | None) -> Engine:
    in_memory = database in (None, "", ":memory:")
    if not in_memory:
        assert database is not None
        parent = Path(database).expanduser().resolve().parent
        if not parent.is_dir():
            raise DatabaseUnavailable(
                f"cannot open SQLite database {database!r}: "
                f"directory {str(parent)!r} does not exist"
            )
    kwargs: dict[str, Any] = {
        "connect_args": {"timeout": _SQLITE_BUSY_TIMEOUT, "check_same_thread": False}
    }
    if in_memory:
        # One shared connection, or every new connection would see its own empty database.
        kwargs["poolclass"] = StaticPool
    engine = create_engine(url, **kwargs)

    @event.listens_for(engine, "connect")
    def _on_connect(dbapi_connection: Any, _record: Any) -> None:
        # Let SQLAlchemy's "begin" event below issue BEGIN itself (pysqlite would defer it).
        dbapi_connection.isolation_level = None
        cursor = dbapi_connection.cursor()
        cursor.execute("PRAGMA foreign_keys=ON")
        if not in_memory:
            _enable_wal(cursor)
            cursor.execute("PRAGMA synchronous=NORMAL")
        cursor.close()

    @event.listens_for(engine, "begin")
    def _on_begin(conn: Connection) -> None:
        # Writers take the write lock up front. A deferred transaction that reads and then
        # writes can fail at once with "database is locked" when two of them race to upgrade.
        mode = conn.get_execution_options().get(_SQLITE_BEGIN_OPTION, "IMMEDIATE")
        conn.exec_driver_sql(f"BEGIN {mode}")

    return engine


def _enable_wal(cursor: Any) -> None:
    """WAL: readers do not block the writer, nor the writer readers.

    The mode is stored in the file, so it is switched once. Switching needs an exclusive lock and
    SQLite answers "database is locked" at once instead of waiting out the busy timeout, which two
    processes opening a new file together would hit; so wait for it here.
    """
    deadline = time.monotonic() + _SQLITE_BUSY_TIMEOUT
    while True:
        try:
            if cursor.execute("PRAGMA journal_mode").fetchone()[0] != "wal":
                cursor.execute("PRAGMA journal_mode=WAL")
            return
        except sqlite3.OperationalError as exc:
            if "locked" not in str(exc) or time.monotonic() > deadline:
                raise
            time.sleep(0.01)
