"""The two doors into ingest, one pipeline behind them.

- `ingest_events(catalog, meters, events)` takes events already decoded (mappings, as
  `json.loads` returns them); a rejection names the event's index in `events`.
- `ingest_json(catalog, meters, content)` takes the bytes or text of a file: NDJSON (one event
  per line), a JSON array of events (a CloudEvents batch), or one JSON object. A rejection names
  the NDJSON line (from 1) or the array index (from 0); a single object is "line 1".

Rules (docs/design.md, "Usage rules"):

- CloudEvents 1.0: `specversion` "1.0"; `id`, `source`, `type` and `subject` non-empty strings
  (`subject` a valid subject key); `time` RFC 3339 with a time zone, or absent (the ingestion
  time); `data` a JSON object or absent; other attributes are ignored.
- Each meter whose `event_type` is the event's type must find its value in `data` (see
  `_values.MeterRule`); if one cannot, the whole event is rejected, naming the meter, path and
  problem.
- An invalid event is rejected alone, with its reason; the valid ones in the same input are kept.
- Deduplication on (source, id): the first of several in one input wins, and an event already
  stored is a duplicate. The database decides (INSERT … ON CONFLICT DO NOTHING), so two ingests
  racing with the same events store each once.
- A subject the catalog does not know is created through `Catalog.upsert_subject`, so the
  catalog's auto-customer rule applies, before its events are written. A deleted subject is not
  brought back by an event: its events are stored and the report says so.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from datetime import datetime
from typing import Any

from metersync.catalog import Catalog
from metersync.catalog.meters import Meter
from metersync.usage.ingest._batches import DEFAULT_BATCH_SIZE, Run
from metersync.usage.ingest._document import INDEX, read_document, text_of
from metersync.usage.ingest._report import IngestReport


def ingest_events(
    catalog: Catalog,
    meters: Sequence[Meter],
    events: Iterable[Mapping[str, Any]],
    *,
    now: datetime | None = None,
    batch_size: int = DEFAULT_BATCH_SIZE,
) -> IngestReport:
    """Validate and store decoded events; rejections name each event's index in `events`.

    `now` (aware) is the ingestion time, and the time of events that carry none.
    """
    with Run(catalog, meters, now, batch_size, INDEX) as run:
        for index, event in enumerate(events):
            run.add(index, event)
        return run.finish()


def ingest_json(
    catalog: Catalog,
    meters: Sequence[Meter],
    content: bytes | str,
    *,
    now: datetime | None = None,
    batch_size: int = DEFAULT_BATCH_SIZE,
) -> IngestReport:
    """The fast path: a file's bytes or text (NDJSON, a JSON array of events, or one event).

    Raises InvalidInput when the input as a whole cannot be read (not UTF-8, empty, a broken
    JSON array); a bad NDJSON line is only that line's rejection.
    """
    unit, items = read_document(text_of(content))
    with Run(catalog, meters, now, batch_size, unit, raw_json=True) as run:
        for position, item in items:
            run.add(position, item)
        return run.finish()
