"""Event ingest: CloudEvents in, one `usage_event` row per (source, id) and one `usage_value` row
per event and matching meter out.

Two doors, one pipeline:

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
  `_MeterRule`); if one cannot, the whole event is rejected, naming the meter, path and problem.
- An invalid event is rejected alone, with its reason; the valid ones in the same input are kept.
- Deduplication on (source, id): the first of several in one input wins, and an event already
  stored is a duplicate. The database decides (INSERT … ON CONFLICT DO NOTHING), so two ingests
  racing with the same events store each once.
- A subject the catalog does not know is created through `Catalog.upsert_subject`, so the
  catalog's auto-customer rule applies, before its events are written. A deleted subject is not
  brought back by an event: its events are stored and the report says so.

Speed (targets: 50,000 events/s into SQLite, 30,000 into PostgreSQL; bench/ingest.py measures):
events are written in batches, one transaction each, straight through the database driver:
SQLite's `executemany`, PostgreSQL's COPY (see the writers). SQLAlchemy Core's bulk insert
(insertmanyvalues with RETURNING) stored 57,000 events/s into SQLite and 16,000 into PostgreSQL
on the benchmark machine with nothing else to do, so it could not meet the targets once events
are parsed too. The file is read lazily and each batch dropped once written, so memory stays
at a batch or two, whatever the size of the file.
"""

from __future__ import annotations

import math
import re
import unicodedata
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Annotated, Any, Literal

import msgspec
import psycopg
from pydantic_core import PydanticCustomError
from sqlalchemy import Connection, select
from sqlmodel import col

from metersync.catalog import Catalog
from metersync.catalog.meters import Aggregation, Meter, ValuePath
from metersync.catalog.schemas import check_key
from metersync.clock import utcnow
from metersync.errors import InvalidInput
from metersync.store import EventRow, SubjectRow
from metersync.store.models import EVENT_ID_MAX, EVENT_TYPE_MAX, SOURCE_MAX
from metersync.usage.reports import STRIPE_VALUE_LIMIT

DEFAULT_BATCH_SIZE = 10_000
SPECVERSION = "1.0"
# Subject keys per lookup query: well inside SQLite's and PostgreSQL's bound-parameter limits.
_SUBJECT_LOOKUP_CHUNK = 500

_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_ONE_US = timedelta(microseconds=1)
# RFC 3339's date-time (section 5.6), with the space separator its note allows. The shape is
# checked here; datetime.fromisoformat then checks the values (month 13, hour 24, …), and would
# on its own accept far more than RFC 3339 (week dates, no zone, no seconds).
_RFC3339 = re.compile(
    r"\d{4}-\d{2}-\d{2}[Tt ]\d{2}:\d{2}:\d{2}(?:\.\d+)?(?:[Zz]|[+-]\d{2}:\d{2})", re.ASCII
)
# A number in a string, as OpenMeter accepts for numeric meters: decimal, optional exponent.
# Not float() alone, which also takes "inf", "nan", "1_000" and surrounding white space.
_DECIMAL = re.compile(r"[+-]?(?:\d+(?:\.\d*)?|\.\d+)(?:[eE][+-]?\d+)?", re.ASCII)
_JSON_MEDIA_TYPE = re.compile(r"application/(?:[\w.+-]+\+)?json", re.ASCII | re.IGNORECASE)

# Markers for "no value there" and "not looked at yet", where None is a value.
_MISSING: Any = object()
_UNCHECKED: Any = object()

_decode = msgspec.json.decode
_encode = msgspec.json.Encoder().encode


# -- the report ----------------------------------------------------------------------------------


@dataclass(frozen=True)
class Rejection:
    """One event not stored: where it is in the input, its id when it has a usable one, why."""

    reason: str
    line: int | None = None  # NDJSON line, from 1 (a single object is line 1 too)
    index: int | None = None  # position in a JSON array or in the events given, from 0
    event_id: str | None = None

    @property
    def where(self) -> str:
        return f"line {self.line}" if self.line is not None else f"index {self.index}"

    def __str__(self) -> str:
        named = f" (id {_quote(self.event_id, 80)})" if self.event_id is not None else ""
        return f"{self.where}{named}: {self.reason}"

    def to_json(self) -> dict[str, Any]:
        place = {"line": self.line} if self.line is not None else {"index": self.index}
        return place | {"id": self.event_id, "reason": self.reason}


@dataclass
class IngestReport:
    """received = accepted + duplicates + rejected."""

    received: int = 0
    accepted: int = 0  # stored now
    duplicates: int = 0  # valid, but the same (source, id) was stored before or came earlier
    rejections: list[Rejection] = field(default_factory=list)
    subjects_created: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    @property
    def rejected(self) -> int:
        return len(self.rejections)

    def to_json(self) -> dict[str, Any]:
        return {
            "received": self.received,
            "accepted": self.accepted,
            "duplicates": self.duplicates,
            "rejected": self.rejected,
            "subjects_created": list(self.subjects_created),
            "notes": list(self.notes),
            "rejections": [r.to_json() for r in self.rejections],
        }


# -- the doors -----------------------------------------------------------------------------------


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
    with _Run(catalog, meters, now, batch_size, _INDEX) as run:
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
    unit, items = _read_document(_text_of(content))
    with _Run(catalog, meters, now, batch_size, unit, raw_json=True) as run:
        for position, item in items:
            run.add(position, item)
        return run.finish()


# -- reading a document --------------------------------------------------------------------------

# What a position counts: NDJSON lines (from 1), or items of an array (from 0).
_LINE = "line"
_INDEX = "index"


def _text_of(content: bytes | str) -> str:
    if isinstance(content, str):
        return content.removeprefix("\ufeff")
    try:
        # utf-8-sig: a byte-order mark, as some editors on Windows write, is not part of the JSON.
        return content.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        raise InvalidInput(
            [], record=f"the input is not UTF-8 text ({exc.reason} at byte {exc.start})"
        ) from None


def _read_document(text: str) -> tuple[str, Iterator[tuple[int, str | msgspec.Raw]]]:
    """What positions count, and (position, the event's JSON text) for each event.

    Events are decoded as their batch comes up, so a whole file is never held as Python
    objects. Raises InvalidInput when the document as a whole is unusable.
    """
    start = len(text) - len(text.lstrip())
    if start == len(text):
        raise InvalidInput([], record="the input holds no events")
    if text[start] == "[":
        return _INDEX, _array_items(text)
    try:
        _decode(text)
    except msgspec.DecodeError as exc:
        first_line = text[start:].split("\n", 1)[0].rstrip()
        if first_line.endswith(("{", "[")):
            # A pretty-printed object: read line by line, every line would be rejected.
            raise InvalidInput([], record=_json_error(exc, text, whole_document=True)) from None
        return _LINE, _ndjson_lines(text)
    return _LINE, iter([(text.count("\n", 0, start) + 1, text)])


def _array_items(text: str) -> Iterator[tuple[int, msgspec.Raw]]:
    try:
        # Raw slices, not dicts: each element is decoded when its batch comes up.
        items = _decode(text, type=list[msgspec.Raw])
    except msgspec.DecodeError as exc:
        raise InvalidInput([], record=_json_error(exc, text, whole_document=True)) from None
    return enumerate(items)


def _ndjson_lines(text: str) -> Iterator[tuple[int, str]]:
    # Split on "\n" only: str.splitlines() would also split on U+2028 and other characters
    # that JSON allows unescaped inside strings.
    for number, line in enumerate(text.split("\n"), start=1):
        if line and not line.isspace():
            yield number, line


def _decode_json(item: str | msgspec.Raw) -> Any:
    try:
        return _decode(item)
    except msgspec.DecodeError as exc:
        # An array's items parsed as JSON already (a number too large can still fail here).
        text = item if isinstance(item, str) else None
        raise _Rejected(_json_error(exc, text, whole_document=False)) from None


_AT_BYTE = re.compile(r" \(byte (\d+)\)$")


def _json_error(exc: msgspec.DecodeError, text: str | None, *, whole_document: bool) -> str:
    """msgspec's message, placed as people count: by line and column, not by byte."""
    message = str(exc)
    if message == "Input data was truncated":
        # msgspec also says this of an invalid escape such as a lone surrogate "\ud800".
        return "not valid JSON: it ends early (something is not closed), or holds a bad escape"
    message = message.removeprefix("JSON is malformed: ")
    match = _AT_BYTE.search(message)
    if match is None or text is None:
        return f"not valid JSON: {message if match is None else message[: match.start()]}"
    # msgspec counts bytes of the UTF-8 encoding from 0; the column is in characters, from 1.
    before = text.encode("utf-8")[: int(match.group(1))].decode("utf-8", "ignore")
    column = len(before) - (before.rfind("\n") + 1) + 1
    line = before.count("\n") + 1
    where = f"line {line} column {column}" if whole_document else f"column {column}"
    return f"not valid JSON at {where}: {message[: match.start()]}"


# -- one event -----------------------------------------------------------------------------------


class _Rejected(Exception):
    def __init__(self, reason: str, event_id: str | None = None) -> None:
        super().__init__(reason)
        self.reason = reason
        self.event_id = event_id


# A valid event as rows: flat tuples of strings and numbers. The garbage collector stops tracking
# such tuples at its first pass; nested ones (an event holding its value rows) stay tracked into
# the oldest generation, and the full collections they set off took a third of the parse time.
_Key = tuple[str, str]  # (source, id)
# usage_event: source, event_id, type, subject, time_us, data (ingested_at is added on write)
_EventRow = tuple[str, str, str, str, int, str | None]
# usage_value: source, event_id, meter, subject, time_us, value, value_text, groups
_ValueRow = tuple[str, str, str, str, int, float | None, str | None, str | None]


class _Envelope(msgspec.Struct, gc=False):
    """The CloudEvents attributes ingest reads, typed so that msgspec checks a well-formed event
    in C while decoding it. Whatever it refuses goes through _EventParser.parse, which says why:
    the two accept the same events, this one only faster (a sixth of the parse time)."""

    specversion: Literal["1.0"]
    id: Annotated[str, msgspec.Meta(min_length=1, max_length=EVENT_ID_MAX)]
    source: Annotated[str, msgspec.Meta(min_length=1, max_length=SOURCE_MAX)]
    type: Annotated[str, msgspec.Meta(min_length=1, max_length=EVENT_TYPE_MAX)]
    subject: str
    time: str | None = None
    datacontenttype: str | None = None
    data: dict[str, Any] | None = None
    data_base64: None = None


_decode_envelope = msgspec.json.Decoder(_Envelope).decode


class _EventParser:
    """Checks events against CloudEvents 1.0 and the meters, and turns them into rows."""

    def __init__(self, meters: Sequence[Meter], now_us: int) -> None:
        self.now_us = now_us
        rules: dict[str, list[_MeterRule]] = {}
        for meter in meters:
            rules.setdefault(meter.settings.event_type, []).append(_MeterRule(meter))
        self.rules = {event_type: tuple(found) for event_type, found in rules.items()}
        # Few distinct subjects, many events: each key is checked once.
        self.subject_problems: dict[str, str | None] = {}

    def parse_json(self, raw: str | msgspec.Raw) -> tuple[_EventRow, list[_ValueRow]]:
        """An event from its JSON text."""
        try:
            event = _decode_envelope(raw)
        except msgspec.DecodeError:  # a ValidationError too: parse finds what is wrong
            return self.parse(_decode_json(raw))
        try:
            return self._rows(
                event.id,
                event.source,
                event.type,
                event.subject,
                event.time,
                event.datacontenttype,
                event.data,
            )
        except _Rejected as exc:
            raise _Rejected(exc.reason, event.id) from None

    def parse(self, event: Any) -> tuple[_EventRow, list[_ValueRow]]:
        """An event decoded from JSON (or shaped as if it were)."""
        if type(event) is not dict and not isinstance(event, Mapping):
            raise _Rejected(f"an event must be a JSON object, got {_kind(event)}")
        event_id = _attribute(event, "id", EVENT_ID_MAX)
        try:
            specversion = event.get("specversion")
            if specversion != SPECVERSION:
                raise _Rejected(_specversion_problem(specversion))
            source = _attribute(event, "source", SOURCE_MAX)
            event_type = _attribute(event, "type", EVENT_TYPE_MAX)
            data = event.get("data")
            if data is not None and not isinstance(data, Mapping):
                raise _Rejected(f"data must be a JSON object (or absent), got {_kind(data)}")
            if event.get("data_base64") is not None:
                raise _Rejected("data_base64 (binary data) is not supported: send data as JSON")
            return self._rows(
                event_id,
                source,
                event_type,
                event.get("subject"),
                event.get("time"),
                event.get("datacontenttype"),
                data,
            )
        except _Rejected as exc:
            raise _Rejected(exc.reason, event_id) from None

    def _rows(
        self,
        event_id: str,
        source: str,
        event_type: str,
        subject: Any,
        time: Any,
        content_type: Any,
        data: Mapping[str, Any] | None,
    ) -> tuple[_EventRow, list[_ValueRow]]:
        """The checks both doors share, and the rows. id, source and type are non-empty strings
        within their bounds by now."""
        if not (
            event_id.isascii()
            and event_id.isprintable()
            and source.isascii()
            and source.isprintable()
            and event_type.isascii()
            and event_type.isprintable()
        ):
            _check_storable(id=event_id, source=source, type=event_type)
        subject = self._subject(subject)
        time_us = self.now_us if time is None else _time_us(time)
        if not 0 <= time_us <= self.now_us + _FUTURE_LIMIT_US:
            raise _Rejected(
                f"time {_quote(time, 60)} is "
                + ("before 1970" if time_us < 0 else "more than a day in the future")
                + ": no meter can bill it (check the producer's clock)"
            )
        if content_type is not None:
            _check_content_type(content_type)
        values = [
            (source, event_id, rule.slug, subject, time_us, *rule.measure(data))
            for rule in self.rules.get(event_type, ())
        ]
        row = (source, event_id, event_type, subject, time_us, _json_text(data, "data"))
        return row, values

    def _subject(self, value: Any) -> str:
        if not isinstance(value, str):
            raise _Rejected(_not_a_string("subject", value))
        problem = self.subject_problems.get(value, _UNCHECKED)
        if problem is _UNCHECKED:
            problem = self.subject_problems[value] = _key_problem(value)
        if problem is not None:
            raise _Rejected(problem)
        return value


def _key_problem(value: str) -> str | None:
    """What makes `value` no subject key (the catalog's rule), or None."""
    try:
        check_key(value)
    except PydanticCustomError as exc:
        return f"subject {exc.message()}"
    return None


def _attribute(event: Mapping[str, Any], name: str, max_len: int) -> str:
    """A required string attribute (id, source, type): present, non-empty, bounded."""
    value = event.get(name)
    if type(value) is str and 0 < len(value) <= max_len:
        return value
    if not isinstance(value, str):
        raise _Rejected(_not_a_string(name, value))
    if not value:
        raise _Rejected(f"{name} must not be empty")
    raise _Rejected(f"{name} is {len(value)} characters long; at most {max_len} are allowed")


def _check_storable(**attributes: str) -> None:
    for name, value in attributes.items():
        problem = _unstorable(value)
        if problem is not None:
            raise _Rejected(f"{name} {problem}")


def _not_a_string(name: str, value: Any) -> str:
    if value is None:
        return f"{name} is required"
    return f"{name} must be a string, got {_kind(value)}"


def _unstorable(value: str) -> str | None:
    """Why text cannot be an identifier in the store, or None. PostgreSQL refuses NUL in text,
    and lone surrogates (from invalid UTF-8) cannot be encoded at all."""
    for ch in value:
        category = unicodedata.category(ch)
        if category == "Cs":
            return "is not valid Unicode text (a lone surrogate)"
        if category == "Cc":
            return f"must not contain control characters (found U+{ord(ch):04X})"
    return None


def _specversion_problem(value: Any) -> str:
    if value is None:
        return 'specversion is required (CloudEvents 1.0: "1.0")'
    if not isinstance(value, str):
        return f'specversion must be the string "1.0", got {_kind(value)}'
    return f'specversion is {_quote(value, 40)}: only CloudEvents 1.0 ("1.0") is accepted'


# Events stamped further ahead than this are a producer's clock, not usage: Stripe takes meter
# events at most 5 minutes ahead, and a window in the future would wait for it indefinitely.
_FUTURE_LIMIT_US = 86_400 * 1_000_000


def _time_us(value: Any) -> int:
    """An RFC 3339 time with a zone, as integer microseconds since the epoch (UTC).

    Digits past the microsecond (Go's RFC3339Nano) are cut off, not rounded, so an event never
    moves into the next window.
    """
    if not isinstance(value, str):
        raise _Rejected(f"time must be an RFC 3339 string, got {_kind(value)}")
    if _RFC3339.fullmatch(value) is None:
        raise _Rejected(_bad_time(value))
    try:
        moment = datetime.fromisoformat(value)
    except ValueError:
        moment = _lenient_time(value)
    return (moment - _EPOCH) // _ONE_US


def _lenient_time(value: str) -> datetime:
    # RFC 3339 allows a lower-case t and z, which fromisoformat does not; anything else that
    # fails here has the right shape and a value out of range (month 13, hour 24, second 60).
    try:
        return datetime.fromisoformat(value.upper())
    except ValueError as exc:
        raise _Rejected(f"{_bad_time(value)}: {exc}") from None


def _bad_time(value: str) -> str:
    return (
        f"time {_quote(value, 60)} is not an RFC 3339 time with a time zone, "
        'such as "2026-01-01T12:00:00Z"'
    )


def _check_content_type(value: Any) -> None:
    if not isinstance(value, str):
        raise _Rejected(f"datacontenttype must be a string, got {_kind(value)}")
    media_type = value.split(";", 1)[0].strip()
    if _JSON_MEDIA_TYPE.fullmatch(media_type) is None:
        raise _Rejected(
            f'datacontenttype is {_quote(value, 60)}: data must be JSON ("application/json")'
        )


def _json_text(value: Any, what: str) -> str | None:
    if value is None:
        return None
    try:
        return _encode(value).decode("utf-8")
    except (TypeError, ValueError, msgspec.EncodeError) as exc:
        # Only from ingest_events: decoded JSON always encodes. UnicodeEncodeError is a
        # ValueError (lone surrogates); TypeError an object JSON has no form for.
        raise _Rejected(f"{what} cannot be stored as JSON: {exc}") from None


# -- meter values --------------------------------------------------------------------------------


def _finder(path: ValuePath) -> Callable[[Any], Any]:
    """The value at `path` in data, or _MISSING: ValuePath.find, with a shortcut for the usual
    one-field path ("$.tokens"), which every event of the meter goes through."""
    steps = path.steps
    if steps is not None and len(steps) == 1 and isinstance(steps[0], str):
        name = steps[0]

        def one_field(data: Any) -> Any:
            if type(data) is dict:
                return data.get(name, _MISSING)
            return _any_path(path, data)

        return one_field
    return lambda data: _any_path(path, data)


def _any_path(path: ValuePath, data: Any) -> Any:
    found, value = path.find(data)
    return value if found else _MISSING


class _MeterRule:
    """How one meter reads an event: COUNT counts it (value 1); SUM, MAX, LATEST, AVG and MIN
    need a finite number (or a string holding one) at value_property, not negative if the meter
    is billed on Stripe; UNIQUE_COUNT needs a single value there, kept as text. group_by paths
    that find nothing group as null."""

    def __init__(self, meter: Meter) -> None:
        self.slug = meter.slug
        self.unique = meter.aggregation is Aggregation.UNIQUE_COUNT
        self.path_text = meter.value.text if meter.value is not None else ""
        self.find = _finder(meter.value) if meter.value is not None else None
        self.groups = tuple((name, _finder(path)) for name, path in meter.groups.items())
        # Stripe meter events take whole non-negative numbers; a negative value could never be
        # reported, so it is refused at the door rather than stuck in the ledger.
        self.non_negative = meter.settings.stripe is not None
        # Billed values must stay exact integers after scaling: doubles hold whole numbers
        # exactly up to 2**53, and the ledger sums them in 64-bit columns.
        self.limit = (
            STRIPE_VALUE_LIMIT / meter.settings.stripe.scale if meter.settings.stripe else None
        )

    def measure(self, data: Any) -> tuple[float | None, str | None, str | None]:
        """(value, value_text, groups as JSON text)."""
        groups = self._groups(data) if self.groups else None
        if self.find is None:  # COUNT: value_property is refused for it
            return 1.0, None, groups
        value = self.find(data)
        if value is _MISSING:
            no_data = " (the event has no data)" if data is None else ""
            raise self._problem(f"is missing{no_data}")
        if self.unique:
            return None, self._unique_value(value), groups
        return self._number(value), None, groups

    def _number(self, value: Any) -> float:
        if not _is_number(value):
            raise self._problem(f"is {_show(value)}, not a number")
        try:
            number = float(value)
        except OverflowError:  # an integer beyond a double's range
            raise self._problem(f"is {_show(value)}, too large a number") from None
        if not math.isfinite(number):
            raise self._problem(f"is {_show(value)}, not a finite number")
        if number < 0 and self.non_negative:
            raise self._problem(
                f"is {_show(value)}, a negative number: this meter is billed on a Stripe meter, "
                "and Stripe meter events take only whole non-negative numbers"
            )
        if self.limit is not None and number > self.limit:
            raise self._problem(
                f"is {_show(value)}, too large to bill exactly (at most {self.limit:.6g} for "
                "this meter's scale)"
            )
        return number

    def _unique_value(self, value: Any) -> str:
        if isinstance(value, str):
            if "\x00" in value or not (value.isascii() or _encodable(value)):
                raise self._problem("is text that cannot be stored (a NUL or a lone surrogate)")
            return value
        if value is None:
            raise self._problem("is null, not a value to count")
        if isinstance(value, (list, tuple, Mapping)):
            raise self._problem(f"is {_kind(value)}, not a single value to count")
        if isinstance(value, float) and not math.isfinite(value):
            raise self._problem(f"is {_show(value)}, not a finite number")
        text = _json_text(value, f"meter {self.slug}: {self.path_text}")
        assert text is not None
        return text

    def _groups(self, data: Any) -> str | None:
        groups = {}
        for name, find in self.groups:
            value = find(data)
            groups[name] = None if value is _MISSING else value
        return _json_text(groups, f"meter {self.slug}: group_by")

    def _problem(self, problem: str) -> _Rejected:
        return _Rejected(f"meter {self.slug}: {self.path_text} {problem}")


def _is_number(value: Any) -> bool:
    """A JSON number (not a boolean), or a string holding a decimal number."""
    kind = type(value)
    if kind is float or kind is int:  # the common case first: exact types, no isinstance walk
        return True
    if kind is str:
        return _DECIMAL.fullmatch(value) is not None
    # int and float subclasses (from ingest_events), but bool, which JSON keeps apart.
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _encodable(value: str) -> bool:
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def _kind(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, (int, float)):
        return "a number"
    if isinstance(value, str):
        return "a string"
    if isinstance(value, (list, tuple)):
        return "an array"
    if isinstance(value, Mapping):
        return "an object"
    return type(value).__name__


def _show(value: Any) -> str:
    """A value as it would appear in the JSON, shortened: "abc", -5, true, null, an object."""
    if isinstance(value, str):
        return _quote(value, 60)
    if value is None or isinstance(value, (bool, int, float)):
        text = repr(value) if isinstance(value, float) else _encode(value).decode()
        return text if len(text) <= 60 else text[:59] + "…"
    return _kind(value)


def _quote(value: str, limit: int) -> str:
    shown = value if len(value) <= limit else value[: limit - 1] + "…"
    return _encode(shown).decode("utf-8") if _encodable(shown) else repr(shown)


# -- a run: batches of events ---------------------------------------------------------------------


class _Run:
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
        parser = _EventParser(meters, (now - _EPOCH) // _ONE_US)
        self.parse = parser.parse_json if raw_json else parser.parse
        self.batch_size = batch_size
        self.unit = unit
        self.report = IngestReport()
        # The batch: rows by (source, id), so the first of a repeated event wins, and the value
        # rows of the events kept.
        self.rows: dict[_Key, _EventRow] = {}
        self.values: list[_ValueRow] = []
        self.subjects = _Subjects(catalog, self.report)
        self.writer = _writer_for(catalog, now)
        self.executor = (
            ThreadPoolExecutor(max_workers=1, thread_name_prefix="metersync-ingest")
            if self.writer.in_thread
            else None
        )
        self.stored: Future[tuple[int, int]] | None = None  # the batch being written

    def __enter__(self) -> _Run:
        return self

    def __exit__(self, *exc_info: object) -> None:
        # On an error too: the batch in flight is committed or rolled back, never cut off.
        if self.executor is not None:
            self.executor.shutdown(wait=True)

    def add(self, position: int, item: Any) -> None:
        self.report.received += 1
        try:
            row, values = self.parse(item)
        except _Rejected as exc:
            self._rejection(position, exc.reason, exc.event_id)
            return
        key = (row[0], row[1])
        if key in self.rows:
            self.report.duplicates += 1  # the first of the batch wins
            return
        self.rows[key] = row
        self.values += values
        if len(self.rows) >= self.batch_size:
            self.flush()

    def _rejection(self, position: int, reason: str, event_id: str | None) -> None:
        where = {"line": position} if self.unit == _LINE else {"index": position}
        self.report.rejections.append(Rejection(reason, event_id=event_id, **where))

    def flush(self) -> None:
        if not self.rows:
            return
        rows, values = list(self.rows.values()), self.values
        self.rows, self.values = {}, []
        if self.executor is None:
            self._count(*self._store(rows, values))
            return
        self.wait()
        self.stored = self.executor.submit(self._store, rows, values)

    def _store(self, rows: list[_EventRow], values: list[_ValueRow]) -> tuple[int, int]:
        """Subjects first, then the events: (events stored, events in the batch). In the writer
        thread on PostgreSQL."""
        self.subjects.ensure({row[3] for row in rows})  # row[3]: the subject
        return self.writer.write(rows, values), len(rows)

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
        return self.report


class _Subjects:
    """Creates the subjects events name that the catalog does not know, once each per run."""

    def __init__(self, catalog: Catalog, report: IngestReport) -> None:
        self.catalog = catalog
        self.report = report
        self.known: set[str] = set()

    def ensure(self, keys: set[str]) -> None:
        unseen = sorted(keys - self.known)
        if not unseen:
            return
        found = self._lookup(unseen)
        missing = [key for key in unseen if key not in found]
        if missing:
            # The catalog's own rules (auto-customer, change numbers), in one transaction; a
            # subject another writer created meanwhile is not created twice.
            self.report.subjects_created += self.catalog.create_subjects(missing)
        for key in unseen:
            if found.get(key):
                self.report.notes.append(
                    f"subject {key!r} is deleted: its events are stored, but bill no one until "
                    "the subject is upserted again"
                )
        self.known.update(unseen)

    def _lookup(self, keys: list[str]) -> dict[str, bool]:
        """Which of `keys` the catalog has: key → whether it is deleted (a tombstone)."""
        # One read per few hundred keys; the catalog has no bulk lookup, and get_subject per
        # key would cost a transaction each.
        found: dict[str, bool] = {}
        with self.catalog.store.read_session() as session:
            for start in range(0, len(keys), _SUBJECT_LOOKUP_CHUNK):
                query = select(col(SubjectRow.key), col(SubjectRow.deleted_at)).where(
                    col(SubjectRow.key).in_(keys[start : start + _SUBJECT_LOOKUP_CHUNK])
                )
                for key, deleted_at in session.execute(query):
                    found[key] = deleted_at is not None
        return found


# -- writing a batch -----------------------------------------------------------------------------


class _Writer:
    """Writes a batch of new-looking events in one transaction; returns how many were new."""

    in_thread = False  # whether a writer thread pays (see _Run)

    def __init__(self, catalog: Catalog, now: datetime) -> None:
        self.engine = catalog.store.engine
        # ingested_at as the column type would bind it (SQLite keeps text in SQLAlchemy's own
        # format), computed once: the same for every row of the run.
        column = EventRow.__table__.c.ingested_at  # type: ignore[attr-defined]
        processor = column.type.bind_processor(self.engine.dialect)
        self.ingested_at: Any = processor(now) if processor is not None else now

    def write(self, rows: list[_EventRow], values: list[_ValueRow]) -> int:
        with self.engine.begin() as conn:
            new = self.insert_events(conn, rows)
            if new is not None:
                # Values only for the events this batch stored: a duplicate's values are the
                # first copy's, already stored with it.
                values = [value for value in values if (value[0], value[1]) in new]
            if values:
                self.insert_values(conn, values)
        return len(rows) if new is None else len(new)

    def insert_events(self, conn: Connection, rows: list[_EventRow]) -> set[_Key] | None:
        """The keys of the events stored (the others were stored before), or None for all."""
        raise NotImplementedError

    def insert_values(self, conn: Connection, values: list[_ValueRow]) -> None:
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
        "(source, event_id, meter, subject, time_us, value, value_text, groups) "
        "VALUES (?, ?, ?, ?, ?, ?, ?, ?) ON CONFLICT (source, event_id, meter) DO NOTHING"
    )

    def insert_events(self, conn: Connection, rows: list[_EventRow]) -> set[_Key] | None:
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

    def insert_values(self, conn: Connection, values: list[_ValueRow]) -> None:
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
        "(source, event_id, meter, subject, time_us, value, value_text, groups) FROM STDIN"
    )
    VALUE_STAGE = (
        "CREATE TEMPORARY TABLE IF NOT EXISTS metersync_ingest_value ON COMMIT DELETE ROWS AS "
        "SELECT source, event_id, meter, subject, time_us, value, value_text, groups "
        "FROM usage_value WITH NO DATA"
    )
    COPY_STAGED_VALUES = (
        "COPY metersync_ingest_value "
        "(source, event_id, meter, subject, time_us, value, value_text, groups) FROM STDIN"
    )
    INSERT_STAGED_VALUES = (
        "INSERT INTO usage_value "
        "(source, event_id, meter, subject, time_us, value, value_text, groups) "
        "SELECT source, event_id, meter, subject, time_us, value, value_text, groups "
        "FROM metersync_ingest_value ON CONFLICT (source, event_id, meter) DO NOTHING"
    )

    def insert_events(self, conn: Connection, rows: list[_EventRow]) -> set[_Key] | None:
        with conn.connection.driver_connection.cursor() as cursor:  # type: ignore[union-attr]
            cursor.execute(self.EVENT_STAGE)
            _copy(cursor, self.COPY_EVENTS, rows)
            cursor.execute(self.INSERT_EVENTS, (self.ingested_at,))
            new = cursor.fetchall()
        return None if len(new) == len(rows) else {(source, event_id) for source, event_id in new}

    def insert_values(self, conn: Connection, values: list[_ValueRow]) -> None:
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


def _copy(cursor: Any, statement: str, rows: list[_EventRow] | list[_ValueRow]) -> None:
    with cursor.copy(statement) as copy:
        for row in rows:
            copy.write_row(row)


def _writer_for(catalog: Catalog, now: datetime) -> _Writer:
    dialect = catalog.store.dialect
    if dialect == "sqlite":
        return _SQLiteWriter(catalog, now)
    if dialect == "postgresql":
        return _PostgresWriter(catalog, now)
    raise NotImplementedError(f"event ingest supports SQLite and PostgreSQL, not {dialect}")
