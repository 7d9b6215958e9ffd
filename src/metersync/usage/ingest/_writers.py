"""Writing a batch: its events and their meter values in one transaction.

Speed (targets: 50,000 events/s into SQLite, 30,000 into PostgreSQL; bench/ingest.py measures):
events are written in batches, one transaction each, straight through the database driver:
SQLite's `executemany`, PostgreSQL's COPY (see each writer). SQLAlchemy Core's bulk insert
(insertmanyvalues with RETURNING) stored 57,000 events/s into SQLite and 16,000 into PostgreSQL
on the benchmark machine with nothing else to do, so it could not meet the targets once events
are parsed too.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

import psycopg
from sqlalchemy import Connection

from metersync.catalog import Catalog
from metersync.store import EventRow
from metersync.store.engine import NEXT_USAGE_SEQ_SQL
from metersync.store.usage_retention import floor_for_ingest
from metersync.usage.ingest._rows import EventKey, StoredValueRow, UsageEventRow, UsageValueRow

_US = 1_000_000


class FloorRaised(Exception):
    """A prune raised the retention floor after the batch was parsed, and some of its events
    are below it now: nothing of the batch was written."""

    def __init__(self, floor_us: int) -> None:
        super().__init__(f"the retention floor is now {floor_us} µs")
        self.floor_us = floor_us


class _Writer:
    """Writes a batch of new-looking events in one transaction; returns how many were new."""

    in_thread = False  # whether a writer thread pays (see _batches.Run)

    def __init__(self, catalog: Catalog, now: datetime) -> None:
        self.engine = catalog.store.engine
        # ingested_at as the column type would bind it (SQLite keeps text in SQLAlchemy's own
        # format), computed once: the same for every row of the run.
        column = EventRow.__table__.c.ingested_at  # type: ignore[attr-defined]
        processor = column.type.bind_processor(self.engine.dialect)
        self.ingested_at: Any = processor(now) if processor is not None else now

    def write(self, rows: list[UsageEventRow], values: list[UsageValueRow], floor_us: int) -> int:
        """`floor_us`: a floor no higher than any the batch was parsed against. The floor is
        read again inside the transaction (store.usage_retention orders it against a prune);
        when it rose above an event of the batch, FloorRaised, and nothing is written."""
        with self.engine.begin() as conn:
            # First: the usage counter's lock orders batches, so a push that saw the counter
            # at N never later finds a value numbered N or less that it missed.
            seq = self.next_seq(conn)
            floor_now = floor_for_ingest(conn) * _US
            if floor_now > floor_us and any(row[4] < floor_now for row in rows):  # row[4]: time
                raise FloorRaised(floor_now)
            new = self.insert_events(conn, rows)
            if new is not None:
                # Values only for the events this batch stored: a duplicate's values are the
                # first copy's, already stored with it.
                values = [value for value in values if (value[0], value[1]) in new]
            if values:
                self.insert_values(conn, [(*value, seq) for value in values])
        return len(rows) if new is None else len(new)

    def next_seq(self, conn: Connection) -> int:
        cursor = conn.connection.driver_connection.cursor()  # type: ignore[union-attr]
        try:
            cursor.execute(NEXT_USAGE_SEQ_SQL)
            return int(cursor.fetchone()[0])
        finally:
            cursor.close()

    def insert_events(self, conn: Connection, rows: list[UsageEventRow]) -> set[EventKey] | None:
        """The keys of the events stored (the others were stored before), or None for all."""
        raise NotImplementedError

    def insert_values(self, conn: Connection, values: list[StoredValueRow]) -> None:
        raise NotImplementedError


class _SQLiteWriter(_Writer):
    """executemany through the sqlite3 driver, inside the IMMEDIATE transaction Store opens."""

    INSERT_EVENT = (
        "INSERT INTO usage_event (source, event_id, type, subject, time_us, data, ingested_at) "
        "VALUES (?, ?, ?, ?, ?, ?, ?) ON CONFLICT (source, event_id) DO NOTHING"
    )
    # usage_event.id is SQLite's rowid, and a new row's rowid is one more than the largest:
    # under the write lock the batch holds, the rows above the old maximum are exactly the
    # events this batch stored (sqlite3's executemany cannot return rows).
    TOP_ID = "SELECT coalesce(max(id), 0) FROM usage_event"
    NEW_EVENTS = "SELECT source, event_id FROM usage_event WHERE id > ?"
    INSERT_VALUE = (
        "INSERT INTO usage_value "
        "(source, event_id, meter, subject, time_us, value, value_text, groups, seq) "
        "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?) ON CONFLICT (source, event_id, meter) DO NOTHING"
    )

    def insert_events(self, conn: Connection, rows: list[UsageEventRow]) -> set[EventKey] | None:
        cursor = conn.connection.driver_connection.cursor()  # type: ignore[union-attr]
        try:
            top = cursor.execute(self.TOP_ID).fetchone()[0]
            ingested_at = (self.ingested_at,)
            cursor.executemany(self.INSERT_EVENT, [row + ingested_at for row in rows])
            if cursor.rowcount == len(rows):  # the sum over the rows: none was a duplicate
                return None
            return set(cursor.execute(self.NEW_EVENTS, (top,)).fetchall())
        finally:
            cursor.close()

    def insert_values(self, conn: Connection, values: list[StoredValueRow]) -> None:
        cursor = conn.connection.driver_connection.cursor()  # type: ignore[union-attr]
        try:
            cursor.executemany(self.INSERT_VALUE, values)
        finally:
            cursor.close()


class _PostgresWriter(_Writer):
    """Events: COPY into a staging table, then one INSERT … SELECT … ON CONFLICT DO NOTHING
    RETURNING the keys stored. Values: COPY straight into usage_value.

    COPY is PostgreSQL's bulk path: rows stream in one round trip, where executemany sends one
    statement per row (psycopg pipelines them, but the server still plans and runs each).
    Values only ever belong to events this very transaction stored, so none can exist yet and
    the COPY needs no conflict handling (it is a tenth faster than staging them too). Should one
    exist all the same (usage_value rows kept while their event was removed), the COPY fails
    inside a savepoint and the values go through the staged ON CONFLICT DO NOTHING instead.

    The staging tables copy the real columns' types; created once per connection, they are
    emptied at every commit (creating them per batch cost a twentieth of the time).
    """

    in_thread = True

    EVENT_STAGE = (
        "CREATE TEMPORARY TABLE IF NOT EXISTS metersync_ingest_event ON COMMIT DELETE ROWS AS "
        "SELECT source, event_id, type, subject, time_us, data FROM usage_event WITH NO DATA"
    )
    COPY_EVENTS = (
        "COPY metersync_ingest_event (source, event_id, type, subject, time_us, data) FROM STDIN"
    )
    INSERT_EVENTS = (
        "INSERT INTO usage_event (source, event_id, type, subject, time_us, data, ingested_at) "
        "SELECT source, event_id, type, subject, time_us, data, %s FROM metersync_ingest_event "
        "ON CONFLICT (source, event_id) DO NOTHING RETURNING source, event_id"
    )
    COPY_VALUES = (
        "COPY usage_value "
        "(source, event_id, meter, subject, time_us, value, value_text, groups, seq) "
        "FROM STDIN"
    )
    VALUE_STAGE = (
        "CREATE TEMPORARY TABLE IF NOT EXISTS metersync_ingest_value ON COMMIT DELETE ROWS AS "
        "SELECT source, event_id, meter, subject, time_us, value, value_text, groups, seq "
        "FROM usage_value WITH NO DATA"
    )
    COPY_STAGED_VALUES = (
        "COPY metersync_ingest_value "
        "(source, event_id, meter, subject, time_us, value, value_text, groups, seq) "
        "FROM STDIN"
    )
    INSERT_STAGED_VALUES = (
        "INSERT INTO usage_value "
        "(source, event_id, meter, subject, time_us, value, value_text, groups, seq) "
        "SELECT source, event_id, meter, subject, time_us, value, value_text, groups, seq "
        "FROM metersync_ingest_value ON CONFLICT (source, event_id, meter) DO NOTHING"
    )

    def insert_events(self, conn: Connection, rows: list[UsageEventRow]) -> set[EventKey] | None:
        with conn.connection.driver_connection.cursor() as cursor:  # type: ignore[union-attr]
            cursor.execute(self.EVENT_STAGE)
            _copy(cursor, self.COPY_EVENTS, rows)
            cursor.execute(self.INSERT_EVENTS, (self.ingested_at,))
            new = cursor.fetchall()
        return None if len(new) == len(rows) else {(source, event_id) for source, event_id in new}

    def insert_values(self, conn: Connection, values: list[StoredValueRow]) -> None:
        with conn.connection.driver_connection.cursor() as cursor:  # type: ignore[union-attr]
            cursor.execute("SAVEPOINT metersync_values")
            try:
                _copy(cursor, self.COPY_VALUES, values)
            except psycopg.errors.UniqueViolation:
                cursor.execute("ROLLBACK TO SAVEPOINT metersync_values")
                cursor.execute(self.VALUE_STAGE)
                _copy(cursor, self.COPY_STAGED_VALUES, values)
                cursor.execute(self.INSERT_STAGED_VALUES)
            cursor.execute("RELEASE SAVEPOINT metersync_values")


def _copy(cursor: Any, statement: str, rows: list[UsageEventRow] | list[StoredValueRow]) -> None:
    with cursor.copy(statement) as copy:
        for row in rows:
            copy.write_row(row)


def writer_for(catalog: Catalog, now: datetime) -> _Writer:
    dialect = catalog.store.dialect
    if dialect == "sqlite":
        return _SQLiteWriter(catalog, now)
    if dialect == "postgresql":
        return _PostgresWriter(catalog, now)
    raise NotImplementedError(f"event ingest supports SQLite and PostgreSQL, not {dialect}")
