"""The two doors into ingest, one pipeline behind them.

- `ingest_events(catalog, meters, events)` takes events already decoded (mappings, as
  `json.loads` returns them); a rejection names the event's index in `events`.
- `ingest_json(catalog, meters, content)` takes the bytes or text of a file: NDJSON (one event
  per line), a JSON array of events (a CloudEvents batch), or one JSON object. A rejection names
  the NDJSON line (from 1) or the array index (from 0); a single object is "line 1".
- `ingest_ndjson(catalog, meters, lines)` takes NDJSON a line at a time from a stream (a file
  of millions of events): memory holds a batch, never the file. A line that is not UTF-8 is
  that line's rejection.
- `ingest_file(catalog, meters, stream)` takes an open binary file: up to `STREAM_FROM` bytes
  it is read whole (`ingest_json`, every framing); a larger NDJSON file streams
  (`ingest_ndjson`); a larger array or pretty-printed object is read whole, as it must be.

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

from collections.abc import Iterable, Iterator, Mapping, Sequence
from datetime import datetime
from typing import Any, BinaryIO

import msgspec

from metersync.catalog import Catalog
from metersync.catalog.meters import Meter
from metersync.usage.ingest._batches import DEFAULT_BATCH_SIZE, Run
from metersync.usage.ingest._document import INDEX, LINE, read_document, text_of
from metersync.usage.ingest._report import IngestReport

# Inputs up to this size are read whole; NDJSON beyond it streams a line at a time.
STREAM_FROM = 8 * 1024 * 1024


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


def ingest_ndjson(
    catalog: Catalog,
    meters: Sequence[Meter],
    lines: Iterable[bytes],
    *,
    now: datetime | None = None,
    batch_size: int = DEFAULT_BATCH_SIZE,
) -> IngestReport:
    """NDJSON read a line at a time (a binary file iterates by b"\n", so U+2028 inside a
    string never splits a line); positions are line numbers from 1."""
    with Run(catalog, meters, now, batch_size, LINE, raw_json=True) as run:
        for number, line in enumerate(lines, start=1):
            if number == 1:
                line = line.removeprefix(b"\xef\xbb\xbf")  # a byte-order mark is not JSON
            if not line.strip():
                continue
            try:
                text = line.decode("utf-8")
            except UnicodeDecodeError as exc:
                run.reject(number, f"not UTF-8 text ({exc.reason} at byte {exc.start + 1})")
                continue
            run.add(number, text)
        return run.finish()


def ingest_file(
    catalog: Catalog,
    meters: Sequence[Meter],
    stream: BinaryIO,
    *,
    now: datetime | None = None,
    batch_size: int = DEFAULT_BATCH_SIZE,
    stream_from: int = STREAM_FROM,
) -> IngestReport:
    """A file (or standard input) of any size, with the framing rules of `ingest_json`."""
    head = stream.read(stream_from)
    if len(head) == stream_from:
        head += stream.readline()  # to the end of the line the cut fell in
    if len(head) <= stream_from or not _starts_as_ndjson(head):
        return ingest_json(catalog, meters, head + stream.read(), now=now, batch_size=batch_size)
    return ingest_ndjson(catalog, meters, _lines(head, stream), now=now, batch_size=batch_size)


def _starts_as_ndjson(head: bytes) -> bool:
    """Whether the first line that holds anything is a whole JSON object by itself."""
    for line in head.removeprefix(b"\xef\xbb\xbf").split(b"\n")[:-1]:
        if line.strip():
            try:
                return isinstance(msgspec.json.decode(line), dict)
            except msgspec.DecodeError:
                return False
    return False


def _lines(head: bytes, rest: BinaryIO) -> Iterator[bytes]:
    """The lines of `head` followed by the rest of the stream, the line cut at the boundary
    joined again."""
    *whole, partial = head.split(b"\n")
    for line in whole:
        yield line + b"\n"
    following = iter(rest)
    yield partial + next(following, b"")
    yield from following
