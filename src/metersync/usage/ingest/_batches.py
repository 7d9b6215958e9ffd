"""A run: events parsed into batches, each batch stored while the next is parsed.

The file is read lazily and each batch dropped once written, so memory stays at a batch or two,
whatever the size of the file.
"""

from __future__ import annotations

from collections.abc import Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from datetime import UTC, datetime
from typing import Any

from metersync.catalog import Catalog
from metersync.catalog.meters import Meter
from metersync.clock import utcnow
from metersync.store.usage_retention import retention_floor
from metersync.usage.ingest._cloudevent import EventParser
from metersync.usage.ingest._document import LINE
from metersync.usage.ingest._event_time import EPOCH, ONE_US, below_floor
from metersync.usage.ingest._reasons import Rejected
from metersync.usage.ingest._report import IngestReport, Rejection
from metersync.usage.ingest._rows import EventKey, UsageEventRow, UsageValueRow
from metersync.usage.ingest._subjects import Subjects
from metersync.usage.ingest._writers import FloorRaised, writer_for

DEFAULT_BATCH_SIZE = 10_000


class Run:
    """One ingest call: parses events into batches, and stores each batch: its new subjects,
    then its events in one transaction.

    On PostgreSQL a writer thread stores a batch while the caller's thread parses the next: the
    server inserts while psycopg waits with the GIL released. One writer, and at most one batch
    waiting for it, so batches land in input order and memory holds two batches at most. Not on
    SQLite: sqlite3 takes the GIL back for every row it binds, and a parser holding the GIL
    for its whole switch interval each time made the writer half as fast (measured).
    """

    def __init__(
        self,
        catalog: Catalog,
        meters: Sequence[Meter],
        now: datetime | None,
        batch_size: int,
        unit: str,
        *,
        raw_json: bool = False,
    ) -> None:
        if batch_size < 1:
            raise ValueError(f"batch_size must be at least 1, got {batch_size}")
        if now is not None and now.tzinfo is None:
            raise ValueError(f"now must be an aware datetime, got the naive {now.isoformat()}")
        now = (now or utcnow()).astimezone(UTC)
        self.parser = EventParser(
            meters, (now - EPOCH) // ONE_US, retention_floor(catalog.store) * 1_000_000
        )
        self.parse = self.parser.parse_json if raw_json else self.parser.parse
        self.batch_size = batch_size
        self.unit = unit
        self.report = IngestReport()
        # The batch: rows by (source, id), so the first of a repeated event wins, and the value
        # rows of the events kept.
        self.rows: dict[EventKey, UsageEventRow] = {}
        self.values: list[UsageValueRow] = []
        self.places: list[int] = []  # each row's position in the input, in the rows' order
        # The floor when the batch began: every row of it was parsed under this floor or a
        # higher one (a floor only rises), so the writer need look again only if it rose.
        self.batch_floor_us = self.parser.floor_us
        # Events refused by the writer (the floor rose after they were parsed), kept apart
        # from the parser's: on PostgreSQL the writer runs in its own thread.
        self.refused: list[Rejection] = []
        self.subjects = Subjects(catalog, self.report)
        self.writer = writer_for(catalog, now)
        self.executor = (
            ThreadPoolExecutor(max_workers=1, thread_name_prefix="metersync-ingest")
            if self.writer.in_thread
            else None
        )
        self.stored: Future[tuple[int, int]] | None = None  # the batch being written

    def __enter__(self) -> Run:
        return self

    def __exit__(self, *exc_info: object) -> None:
        # On an error too: the batch in flight is committed or rolled back, never cut off.
        if self.executor is not None:
            self.executor.shutdown(wait=True)

    def add(self, position: int, item: Any) -> None:
        self.report.received += 1
        try:
            row, values = self.parse(item)
        except Rejected as exc:
            self._rejection(position, exc.reason, exc.event_id)
            return
        key = (row[0], row[1])
        if key in self.rows:
            self.report.duplicates += 1  # the first of the batch wins
            return
        self.rows[key] = row
        self.places.append(position)
        self.values += values
        if len(self.rows) >= self.batch_size:
            self.flush()

    def reject(self, position: int, reason: str) -> None:
        """An item refused before it could be parsed (a line that is not UTF-8 text)."""
        self.report.received += 1
        self._rejection(position, reason, None)

    def _rejection(self, position: int, reason: str, event_id: str | None) -> None:
        self.report.rejections.append(self._rejection_at(position, reason, event_id))

    def _rejection_at(self, position: int, reason: str, event_id: str | None) -> Rejection:
        where = {"line": position} if self.unit == LINE else {"index": position}
        return Rejection(reason, event_id=event_id, **where)

    def flush(self) -> None:
        if not self.rows:
            return
        rows, values, places = list(self.rows.values()), self.values, self.places
        floor_us = self.batch_floor_us
        self.rows, self.values, self.places = {}, [], []
        self.batch_floor_us = self.parser.floor_us
        if self.executor is None:
            self._count(*self._store(rows, values, places, floor_us))
            return
        self.wait()
        self.stored = self.executor.submit(self._store, rows, values, places, floor_us)

    def _store(
        self,
        rows: list[UsageEventRow],
        values: list[UsageValueRow],
        places: list[int],
        floor_us: int,
    ) -> tuple[int, int]:
        """Subjects first, then the events: (events stored, events in the batch). In the writer
        thread on PostgreSQL."""
        self.subjects.ensure({row[3] for row in rows})  # row[3]: the subject
        while rows:
            try:
                return self.writer.write(rows, values, floor_us), len(rows)
            except FloorRaised as raised:
                floor_us = raised.floor_us
                rows, values, places = self._below_floor(floor_us, rows, values, places)
        return 0, 0

    def _below_floor(
        self,
        floor_us: int,
        rows: list[UsageEventRow],
        values: list[UsageValueRow],
        places: list[int],
    ) -> tuple[list[UsageEventRow], list[UsageValueRow], list[int]]:
        """A prune raised the floor while the batch was parsed: its events below the floor are
        refused, as the parser refuses them from now on, and the others are written."""
        self.parser.floor_us = floor_us
        kept_rows: list[UsageEventRow] = []
        kept_places: list[int] = []
        for row, position in zip(rows, places, strict=True):
            if row[4] < floor_us:  # row[4]: the time
                self.refused.append(
                    self._rejection_at(position, below_floor(row[4], floor_us), row[1])
                )
            else:
                kept_rows.append(row)
                kept_places.append(position)
        kept = {(row[0], row[1]) for row in kept_rows}
        return kept_rows, [v for v in values if (v[0], v[1]) in kept], kept_places

    def wait(self) -> None:
        """Until the batch in flight is stored; its errors are raised here."""
        if self.stored is None:
            return
        stored, self.stored = self.stored, None
        self._count(*stored.result())

    def _count(self, accepted: int, kept: int) -> None:
        self.report.accepted += accepted
        self.report.duplicates += kept - accepted

    def finish(self) -> IngestReport:
        self.flush()
        self.wait()
        if self.refused:
            # In input order, with the parser's own.
            self.report.rejections = sorted(
                [*self.report.rejections, *self.refused],
                key=lambda r: r.line if r.line is not None else r.index or 0,
            )
        return self.report
