"""Event ingest on both databases: CloudEvents rules, meter values, dedup on (source, id),
subjects created on the way, the file formats, and `metersync events ingest`."""

from __future__ import annotations

import io
import json
import threading
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from freezegun import freeze_time
from sqlalchemy import select
from typer.testing import CliRunner

from metersync.catalog import Catalog
from metersync.catalog.meters import Meter, MeterSettings
from metersync.cli import app
from metersync.errors import InvalidInput
from metersync.store import EventRow, Store, UsageRow
from metersync.usage.ingest import (
    IngestReport,
    Rejection,
    ingest_events,
    ingest_file,
    ingest_json,
    ingest_ndjson,
)

TOKENS = MeterSettings.model_validate(
    {
        "slug": "tokens",
        "event_type": "prompt",
        "aggregation": "SUM",
        "value_property": "$.tokens",
        "group_by": {"model": "$.model"},
        "stripe": {"event_name": "tokens"},
    }
)
PROMPTS = MeterSettings.model_validate(
    {"slug": "prompts", "event_type": "prompt", "aggregation": "COUNT"}
)
USERS = MeterSettings.model_validate(
    {
        "slug": "users",
        "event_type": "prompt",
        "aggregation": "UNIQUE_COUNT",
        "value_property": "$.user",
    }
)
# Not billed on Stripe: negative values are fine (a credit, a correction).
BALANCE = MeterSettings.model_validate(
    {
        "slug": "balance",
        "event_type": "adjustment",
        "aggregation": "SUM",
        "value_property": "$.amount",
    }
)
METERS = [Meter.of(m) for m in (TOKENS, PROMPTS, USERS, BALANCE)]
TIME = "2026-11-21T10:00:00Z"
TIME_US = int(datetime(2026, 11, 21, 10, tzinfo=UTC).timestamp()) * 1_000_000


def event(event_id: str = "e1", **overrides: Any) -> dict[str, Any]:
    """A valid prompt event; overrides replace attributes, and None removes one."""
    base: dict[str, Any] = {
        "specversion": "1.0",
        "id": event_id,
        "source": "api",
        "type": "prompt",
        "subject": "user-1",
        "time": TIME,
        "data": {"tokens": 10, "model": "gpt", "user": "u1"},
    }
    base.update(overrides)
    return {k: v for k, v in base.items() if v is not None}


def ingest(catalog: Catalog, *events: dict[str, Any], **options: Any) -> IngestReport:
    return ingest_events(catalog, METERS, events, **options)


def stored_events(store: Store) -> list[tuple[Any, ...]]:
    table = EventRow.__table__  # type: ignore[attr-defined]
    query = select(
        table.c.source, table.c.event_id, table.c.subject, table.c.time_us, table.c.data
    ).order_by(table.c.source, table.c.event_id)
    with store.engine.connect() as conn:
        return [tuple(row) for row in conn.execute(query)]


def stored_values(store: Store) -> dict[tuple[str, str], tuple[Any, ...]]:
    """(event id, meter) → (value, value_text, groups as data, subject, time_us)."""
    table = UsageRow.__table__  # type: ignore[attr-defined]
    query = select(
        table.c.event_id,
        table.c.meter,
        table.c.value,
        table.c.value_text,
        table.c.groups,
        table.c.subject,
        table.c.time_us,
        table.c.customer_key,
    )
    with store.engine.connect() as conn:
        rows = list(conn.execute(query))
    assert all(row.customer_key is None for row in rows)  # bound at push time, not here
    return {
        (row.event_id, row.meter): (
            row.value,
            row.value_text,
            None if row.groups is None else json.loads(row.groups),
            row.subject,
            row.time_us,
        )
        for row in rows
    }


def value_count(store: Store) -> int:
    table = UsageRow.__table__  # type: ignore[attr-defined]
    with store.engine.connect() as conn:
        return len(list(conn.execute(select(table.c.id))))


def reasons(report: IngestReport) -> dict[int | None, str]:
    return {r.line if r.line is not None else r.index: r.reason for r in report.rejections}


# -- dedup ---------------------------------------------------------------------------------------


def test_same_source_and_id_is_stored_once(catalog: Catalog) -> None:
    first = ingest(catalog, event("e1"), event("e1", data={"tokens": 99, "user": "u9"}))
    assert (first.received, first.accepted, first.duplicates, first.rejected) == (2, 1, 1, 0)
    again = ingest(catalog, event("e1", data={"tokens": 5, "user": "u5"}))
    assert (again.received, again.accepted, again.duplicates) == (1, 0, 1)
    # Another source may reuse the id: a different event.
    other = ingest(catalog, event("e1", source="batch-job"))
    assert (other.accepted, other.duplicates) == (1, 0)

    assert [(s, i) for s, i, *_ in stored_events(catalog.store)] == [
        ("api", "e1"),
        ("batch-job", "e1"),
    ]
    values = stored_values(catalog.store)
    # The first copy wins, values included: a duplicate's data never replaces it.
    assert values[("e1", "tokens")][0] == 10.0
    assert value_count(catalog.store) == 3 * 2  # three meters match a prompt, in two events


def test_duplicates_across_batches_of_one_call(catalog: Catalog) -> None:
    events = [event(f"e{i}") for i in range(5)] + [event("e1"), event("e3"), event("e5")]
    report = ingest(catalog, *events, batch_size=2)
    assert (report.received, report.accepted, report.duplicates) == (8, 6, 2)
    assert len(stored_events(catalog.store)) == 6
    # Batches that mix new events and stored ones store the new ones' values only.
    assert value_count(catalog.store) == 6 * 3


def test_values_already_stored_without_their_event_are_kept(catalog: Catalog) -> None:
    # As if the events had been pruned and their values kept: the event comes back, and the
    # value stored first stays (ON CONFLICT DO NOTHING), while the missing ones are added.
    table = UsageRow.__table__  # type: ignore[attr-defined]
    with catalog.store.engine.begin() as conn:
        conn.execute(
            table.insert().values(
                source="api", event_id="e1", meter="tokens", subject="user-1", time_us=0, value=1.0
            )
        )
    report = ingest(catalog, event("e1"), event("e2"))
    assert (report.accepted, report.rejected) == (2, 0)
    values = stored_values(catalog.store)
    assert values[("e1", "tokens")][0] == 1.0
    assert values[("e2", "tokens")][0] == 10.0
    assert value_count(catalog.store) == 6


def test_concurrent_ingests_of_the_same_events_store_each_once(catalog: Catalog) -> None:
    events = [event(f"e{i:04d}", subject=f"user-{i % 7}") for i in range(600)]
    reports: list[IngestReport] = []

    def run() -> None:
        reports.append(ingest(catalog, *events, batch_size=50))

    threads = [threading.Thread(target=run) for _ in range(3)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert sum(r.accepted for r in reports) == 600
    assert sum(r.duplicates for r in reports) == 1200
    assert len(stored_events(catalog.store)) == 600
    assert value_count(catalog.store) == 1800
    assert len(catalog.list_subjects()) == 7


# -- time ----------------------------------------------------------------------------------------


def test_missing_time_is_the_ingestion_time(catalog: Catalog) -> None:
    with freeze_time("2026-11-21 12:34:56.789012"):
        report = ingest(catalog, event("e1", time=None), event("e2", time=None))
    assert report.accepted == 2
    expected = int(datetime(2026, 11, 21, 12, 34, 56, tzinfo=UTC).timestamp()) * 10**6 + 789012
    assert {row[3] for row in stored_events(catalog.store)} == {expected}
    assert stored_values(catalog.store)[("e1", "tokens")][4] == expected


def test_explicit_now_is_used_for_events_without_time(catalog: Catalog) -> None:
    now = datetime(2026, 1, 2, 3, 4, 5, tzinfo=UTC)
    ingest(catalog, event("e1", time=None), now=now)
    assert stored_events(catalog.store)[0][3] == int(now.timestamp()) * 1_000_000
    with pytest.raises(ValueError, match="aware"):
        ingest(catalog, event("e2"), now=datetime(2026, 1, 2))


@pytest.mark.parametrize(
    ("time", "offset_us"),
    [
        ("2026-11-21T10:00:00Z", 0),
        ("2026-11-21T10:00:00.5Z", 500_000),
        ("2026-11-21t10:00:00.000001z", 1),
        ("2026-11-21 10:00:00Z", 0),
        ("2026-11-21T12:30:00+02:30", 0),
        ("2026-11-21T09:00:00-01:00", 0),
        # Nanoseconds (Go's RFC3339Nano) are cut, not rounded into the next microsecond.
        ("2026-11-21T10:00:00.999999999Z", 999_999),
    ],
)
def test_rfc3339_times(catalog: Catalog, time: str, offset_us: int) -> None:
    report = ingest(catalog, event("e1", time=time))
    assert report.rejections == []
    assert stored_events(catalog.store)[0][3] == TIME_US + offset_us


# -- rejections ----------------------------------------------------------------------------------


def test_bad_events_are_rejected_one_by_one_and_the_rest_kept(catalog: Catalog) -> None:
    report = ingest(
        catalog,
        event("ok-1"),
        event(None),  # 1: no id
        event("bad-spec", specversion="0.3"),
        event("bad-time", time="2026-11-21T10:00:00"),  # no zone
        event("not-a-number", data={"tokens": "abc", "user": "u1"}),
        event("negative", data={"tokens": -5, "user": "u1"}),
        event("no-value", data={"model": "gpt", "user": "u1"}),
        event("bad-subject", subject="  padded  "),
        event("ok-2", subject="user-2"),
        "not an object",  # type: ignore[arg-type]
    )
    assert (report.received, report.accepted, report.rejected) == (10, 2, 8)
    assert reasons(report) == {
        1: "id is required",
        2: 'specversion is "0.3": only CloudEvents 1.0 ("1.0") is accepted',
        3: 'time "2026-11-21T10:00:00" is not an RFC 3339 time with a time zone, '
        'such as "2026-01-01T12:00:00Z"',
        4: 'meter tokens: $.tokens is "abc", not a number',
        5: "meter tokens: $.tokens is -5, a negative number: this meter is billed on a Stripe "
        "meter, and Stripe meter events take only whole non-negative numbers",
        6: "meter tokens: $.tokens is missing",
        7: "subject '  padded  ' must not start or end with white space",
        9: "an event must be a JSON object, got a string",
    }
    ids = {r.index: r.event_id for r in report.rejections}
    assert ids[1] is None and ids[9] is None and ids[4] == "not-a-number"
    assert str(report.rejections[3]) == (
        'index 4 (id "not-a-number"): meter tokens: $.tokens is "abc", not a number'
    )
    assert [i for _, i, *_ in stored_events(catalog.store)] == ["ok-1", "ok-2"]
    # A rejected event leaves no value behind, not even for the meters it did satisfy.
    assert {event_id for event_id, _ in stored_values(catalog.store)} == {"ok-1", "ok-2"}


@pytest.mark.parametrize(
    ("overrides", "reason"),
    [
        ({"specversion": None}, 'specversion is required (CloudEvents 1.0: "1.0")'),
        ({"specversion": 1.0}, 'specversion must be the string "1.0", got a number'),
        ({"source": None}, "source is required"),
        ({"source": ""}, "source must not be empty"),
        ({"source": "s" * 513}, "source is 513 characters long; at most 512 are allowed"),
        ({"type": "t" * 257}, "type is 257 characters long; at most 256 are allowed"),
        ({"type": 7}, "type must be a string, got a number"),
        ({"subject": None}, "subject is required"),
        ({"subject": ""}, "subject must not be empty"),
        ({"subject": "s" * 257}, "subject must be at most 256 characters, got 257"),
        ({"source": "a\x00b"}, "source must not contain control characters (found U+0000)"),
        ({"time": 1700000000}, "time must be an RFC 3339 string, got a number"),
        (
            {"time": "2026-02-30T10:00:00Z"},
            'time "2026-02-30T10:00:00Z" is not an RFC 3339 time with a time zone, such as '
            '"2026-01-01T12:00:00Z": day is out of range for month',
        ),
        ({"data": [1, 2]}, "data must be a JSON object (or absent), got an array"),
        (
            {"datacontenttype": "text/plain"},
            'datacontenttype is "text/plain": data must be JSON ("application/json")',
        ),
        (
            {"data_base64": "aGk="},
            "data_base64 (binary data) is not supported: send data as JSON",
        ),
        ({"data": None}, "meter tokens: $.tokens is missing (the event has no data)"),
        ({"data": {"tokens": True, "user": "u"}}, "meter tokens: $.tokens is true, not a number"),
        ({"data": {"tokens": None, "user": "u"}}, "meter tokens: $.tokens is null, not a number"),
        (
            {"data": {"tokens": "1e999", "user": "u"}},
            'meter tokens: $.tokens is "1e999", not a finite number',
        ),
        (
            {"data": {"tokens": " 12", "user": "u"}},
            'meter tokens: $.tokens is " 12", not a number',
        ),
        (
            {"data": {"tokens": 1, "user": None}},
            "meter users: $.user is null, not a value to count",
        ),
        (
            {"data": {"tokens": 1, "user": {"id": 1}}},
            "meter users: $.user is an object, not a single value to count",
        ),
    ],
)
@pytest.mark.parametrize("door", ["events", "json"])
def test_each_rule_names_the_field_and_the_problem(
    catalog: Catalog, overrides: dict[str, Any], reason: str, door: str
) -> None:
    # None in overrides removes the attribute, but for data, where it means an explicit null.
    data = event("e1", **{k: v for k, v in overrides.items() if v is not None})
    for key in (k for k, v in overrides.items() if v is None):
        if key == "data":
            data["data"] = None
        else:
            data.pop(key, None)
    # Both doors give the same reason: the JSON one checks most events in msgspec first, and
    # hands those it refuses to the same checks as ingest_events.
    if door == "events":
        report = ingest(catalog, data)
    else:
        report = ingest_json(catalog, METERS, json.dumps(data))
    assert [r.reason for r in report.rejections] == [reason]
    assert report.accepted == 0


def test_values_that_cannot_be_stored(catalog: Catalog) -> None:
    report = ingest(
        catalog,
        event("e1", data={"tokens": 1, "user": "a\x00b"}),
        event("e2", data={"tokens": 1, "user": "\ud800"}),
        event("e3", data={"tokens": 1, "user": "u", "at": object()}),
        event("e4", id="tab\there"),
    )
    assert reasons(report) == {
        0: "meter users: $.user is text that cannot be stored (a NUL or a lone surrogate)",
        1: "meter users: $.user is text that cannot be stored (a NUL or a lone surrogate)",
        2: "data cannot be stored as JSON: Encoding objects of type object is unsupported",
        3: "id must not contain control characters (found U+0009)",
    }
    report = ingest_json(catalog, METERS, json.dumps(event("e5", source="a\u0007b")))
    assert [r.reason for r in report.rejections] == [
        "source must not contain control characters (found U+0007)"
    ]


def test_what_is_accepted(catalog: Catalog) -> None:
    report = ingest(
        catalog,
        # Extra CloudEvents attributes and extensions are ignored; JSON content types are fine.
        event("e1", dataschema="https://example.test/s", traceparent="00-ab", comexampleext=1),
        event("e2", datacontenttype="application/json; charset=utf-8"),
        event("e3", datacontenttype="application/cloudevents+json", time=None),
        event("e4", datacontenttype=None, data={"tokens": "12.5", "user": "u"}),
        event("e5", data={"tokens": 0, "user": 7}),
        event("e6", type="unmetered", data=None),
        event("e7", type="adjustment", data={"amount": -3.5}),
        event("e8", source="ünïcode ✓", subject="Zürich-1"),
    )
    assert report.rejections == []
    assert report.accepted == 8
    values = stored_values(catalog.store)
    assert values[("e4", "tokens")][0] == 12.5
    assert values[("e7", "balance")][0] == -3.5  # no Stripe meter: negative is allowed
    assert not any(event_id == "e6" for event_id, _ in values)  # no meter for its type
    data = {event_id: text for _, event_id, _, _, text in stored_events(catalog.store)}
    assert data["e6"] is None  # no data: NULL
    assert catalog.get_subject("Zürich-1").key == "Zürich-1"


# -- meter values --------------------------------------------------------------------------------


def test_count_unique_count_and_group_by(catalog: Catalog) -> None:
    ingest(
        catalog,
        event("e1", data={"tokens": 7, "model": "gpt", "user": "alice"}),
        event("e2", data={"tokens": 3, "user": 42}),  # no model: grouped as null
        event("e3", data={"tokens": 1.5, "model": "gpt", "user": True}),
    )
    values = stored_values(catalog.store)
    assert values[("e1", "tokens")] == (7.0, None, {"model": "gpt"}, "user-1", TIME_US)
    assert values[("e2", "tokens")][:3] == (3.0, None, {"model": None})
    assert values[("e3", "tokens")][0] == 1.5
    # COUNT: 1 per event, whatever the data; no group_by: NULL groups.
    assert {values[(e, "prompts")][:3] for e in ("e1", "e2", "e3")} == {(1.0, None, None)}
    # UNIQUE_COUNT: strings as they are, other values as compact JSON.
    assert [values[(e, "users")][:2] for e in ("e1", "e2", "e3")] == [
        (None, "alice"),
        (None, "42"),
        (None, "true"),
    ]


def test_nested_and_indexed_value_paths(catalog: Catalog) -> None:
    nested = Meter.of(
        MeterSettings.model_validate(
            {
                "slug": "bytes",
                "event_type": "upload",
                "aggregation": "MAX",
                "value_property": "$.file.sizes[1]",
                "group_by": {"region": "$.location.region", "first": "$.tags[0]"},
            }
        )
    )
    upload = event("u1", type="upload", data={"file": {"sizes": [1, 2048]}, "tags": ["a"]})
    report = ingest_events(catalog, [nested], [upload, event("u2", type="upload", data={})])
    assert reasons(report) == {1: "meter bytes: $.file.sizes[1] is missing"}
    assert stored_values(catalog.store)[("u1", "bytes")][:3] == (
        2048.0,
        None,
        {"region": None, "first": "a"},
    )


# -- subjects ------------------------------------------------------------------------------------


def test_unknown_subjects_are_created_with_their_auto_customer(catalog: Catalog) -> None:
    catalog.create_customer(
        {"key": "acme", "name": "ACME", "usageAttribution": {"subjectKeys": ["known"]}}
    )
    report = ingest(
        catalog,
        event("e1", subject="known"),
        event("e2", subject="new-1"),
        event("e3", subject="new-1"),
        event("e4", subject="new-2"),
        batch_size=2,
    )
    assert report.subjects_created == ["new-1", "new-2"]
    assert catalog.get_subject("known").customer_key == "acme"
    for key in ("new-1", "new-2"):
        assert catalog.get_subject(key).customer_key == key
        customer = catalog.get_customer(key)
        assert customer.auto_created and customer.subject_keys == (key,)
    assert ingest(catalog, event("e5", subject="new-1")).subjects_created == []


def test_auto_customer_off_creates_the_subject_alone(store: Store) -> None:
    catalog = Catalog(store, auto_customer=False)
    ingest(catalog, event("e1", subject="lone"))
    assert catalog.get_subject("lone").customer_key is None


def test_a_deleted_subject_is_not_brought_back(catalog: Catalog) -> None:
    catalog.upsert_subject({"key": "gone"})
    catalog.delete_subject("gone")
    report = ingest(catalog, event("e1", subject="gone"))
    assert report.accepted == 1 and report.subjects_created == []
    assert report.notes == [
        "subject 'gone' is deleted: its events are stored, but bill no one until the subject "
        "is upserted again"
    ]
    assert catalog.get_subject("gone", include_deleted=True).is_deleted


# -- files ---------------------------------------------------------------------------------------


def lines(*events: dict[str, Any] | str) -> str:
    return "\n".join(e if isinstance(e, str) else json.dumps(e) for e in events)


def test_ndjson_rejections_name_their_line(catalog: Catalog) -> None:
    text = lines(
        event("e1"),
        "",  # blank lines count as lines, and are not events
        '{"specversion": "1.0", "id": "e2",',
        event("e3", data={"tokens": "x", "user": "u"}),
        "   ",
        event("e4"),
    )
    report = ingest_json(catalog, METERS, text.encode() + b"\r\n")
    assert (report.received, report.accepted, report.rejected) == (4, 2, 2)
    assert [str(r) for r in report.rejections] == [
        "line 3: not valid JSON: it ends early (something is not closed), or holds a bad escape",
        'line 4 (id "e3"): meter tokens: $.tokens is "x", not a number',
    ]
    report = ingest_json(catalog, METERS, '{"id": "e9"}\n{"a" 1}\n')
    assert [str(r) for r in report.rejections] == [
        'line 1 (id "e9"): specversion is required (CloudEvents 1.0: "1.0")',
        "line 2: not valid JSON at column 6: expected ':'",
    ]


def test_json_array_rejections_name_their_index(catalog: Catalog) -> None:
    batch = [event("e1"), event("e2", specversion="2.0"), 7, event("e3")]
    report = ingest_json(catalog, METERS, "\ufeff  " + json.dumps(batch, indent=2))
    assert (report.received, report.accepted) == (4, 2)
    assert [(r.index, r.line, r.event_id) for r in report.rejections] == [
        (1, None, "e2"),
        (2, None, None),
    ]
    assert report.to_json()["rejections"][0] == {
        "index": 1,
        "id": "e2",
        "reason": 'specversion is "2.0": only CloudEvents 1.0 ("1.0") is accepted',
    }


def test_a_single_object_pretty_printed_or_not(catalog: Catalog) -> None:
    report = ingest_json(catalog, METERS, "\n" + json.dumps(event("e1"), indent=2))
    assert report.accepted == 1
    report = ingest_json(catalog, METERS, json.dumps(event("e2", subject="")))
    assert [str(r) for r in report.rejections] == ['line 1 (id "e2"): subject must not be empty']


@pytest.mark.parametrize(
    ("content", "message"),
    [
        (b"", "the input holds no events"),
        (b" \n\t", "the input holds no events"),
        (b"\xff\xfe{}", "the input is not UTF-8 text (invalid start byte at byte 0)"),
        (b'[{"id": "e1"},\n {"id": }]', "not valid JSON at line 2 column 9: invalid character"),
        (b'{\n  "id": "e1",\n  "x": nope\n}', "not valid JSON at line 3 column"),
        (b'[{"id": "e1"}', "not valid JSON: it ends early"),
    ],
)
def test_an_unreadable_document_is_one_error(
    catalog: Catalog, content: bytes, message: str
) -> None:
    with pytest.raises(InvalidInput) as raised:
        ingest_json(catalog, METERS, content)
    assert str(raised.value).startswith(message)
    assert stored_events(catalog.store) == []


def test_stored_rows_keep_the_data_as_json(catalog: Catalog) -> None:
    data = {"tokens": 1, "model": "m", "user": "ü", "nested": {"a": [1, 2.5, None]}}
    ingest_json(catalog, METERS, json.dumps([event("e1", data=data)]))
    (_, _, subject, time_us, text), *_ = stored_events(catalog.store)
    assert (subject, time_us, json.loads(text)) == ("user-1", TIME_US, data)


def test_rejection_text() -> None:
    assert str(Rejection("bad", line=3, event_id="e3")) == 'line 3 (id "e3"): bad'
    assert str(Rejection("bad", index=0)) == "index 0: bad"
    assert Rejection("bad", line=2).to_json() == {"line": 2, "id": None, "reason": "bad"}


# -- the command ---------------------------------------------------------------------------------

runner = CliRunner()
METERS_TOML = """
[[meters]]
slug = "tokens"
event_type = "prompt"
aggregation = "SUM"
value_property = "$.tokens"
group_by = { model = "$.model" }
[meters.stripe]
event_name = "tokens"
"""


@pytest.fixture
def config(store: Store, database_url: str, tmp_path: Path) -> Path:
    """A config file with the tokens meter; the database (already migrated) by environment."""
    path = tmp_path / "metersync.toml"
    path.write_text(METERS_TOML)
    return path


def cli(
    config: Path, database_url: str, *args: str, input: str | None = None
) -> tuple[int, str, str]:
    result = runner.invoke(
        app,
        ["--config", str(config), "events", "ingest", *args],
        env={"METERSYNC_DATABASE_URL": database_url},
        input=input,
    )
    if result.exception and not isinstance(result.exception, SystemExit):
        raise result.exception
    return result.exit_code, result.stdout, result.stderr


def write(tmp_path: Path, *events: dict[str, Any] | str) -> str:
    path = tmp_path / "events.ndjson"
    path.write_text(lines(*events) + "\n")
    return str(path)


def test_cli_clean_file_exits_0(config: Path, database_url: str, tmp_path: Path) -> None:
    path = write(tmp_path, event("e1"), event("e2", subject="user-2"))
    code, out, err = cli(config, database_url, path)
    assert code == 0, err
    assert "ingested 2 of 2 events" in out
    assert "created 2 new subject(s) the events name: 'user-1', 'user-2'" in err
    code, out, err = cli(config, database_url, path, "--json")
    assert code == 0
    assert json.loads(out) == {
        "received": 2,
        "accepted": 0,
        "duplicates": 2,
        "rejected": 0,
        "subjects_created": [],
        "notes": [],
        "rejections": [],
    }


def test_cli_rejections_exit_1(config: Path, database_url: str, tmp_path: Path) -> None:
    path = write(
        tmp_path,
        event("e1"),
        event("e2", data={"tokens": "abc"}),
        "{oops",
        event("e3"),
    )
    code, out, err = cli(config, database_url, path)
    assert code == 1
    assert err.splitlines()[:2] == [
        'rejected: line 2 (id "e2"): meter tokens: $.tokens is "abc", not a number',
        "rejected: line 3: not valid JSON at column 2: object keys must be strings",
    ]
    assert "ingested 2 of 4 events" in out and "Traceback" not in out + err
    code, out, _ = cli(config, database_url, "-", "--json", input=Path(path).read_text())
    summary = json.loads(out)
    assert code == 1
    assert (summary["accepted"], summary["duplicates"], summary["rejected"]) == (0, 2, 2)
    assert summary["rejections"][0] == {
        "line": 2,
        "id": "e2",
        "reason": 'meter tokens: $.tokens is "abc", not a number',
    }


@pytest.mark.parametrize(
    ("content", "message"),
    [
        (None, "error: FILE: '{missing}' does not exist\n"),
        ("[1, 2", "error: '{file}': not valid JSON: it ends early"),
        ("", "error: '{file}': the input holds no events\n"),
    ],
)
def test_cli_unusable_input_exits_2(
    config: Path, database_url: str, tmp_path: Path, content: str | None, message: str
) -> None:
    path = tmp_path / "events.json"
    if content is not None:
        path.write_text(content)
    code, out, err = cli(config, database_url, str(path))
    assert code == 2
    expected = message.format(missing=path, file=path)
    assert err.startswith(expected) and err.count("\n") == 1
    assert "Traceback" not in out + err


def test_cli_stdin_not_utf8_exits_2(config: Path, database_url: str) -> None:
    result = runner.invoke(
        app,
        ["--config", str(config), "events", "ingest", "-"],
        env={"METERSYNC_DATABASE_URL": database_url},
        input=b"\xff\xfe\x00",
    )
    assert result.exit_code == 2
    assert result.stderr == (
        "error: standard input: the input is not UTF-8 text (invalid start byte at byte 0)\n"
    )


def test_cli_without_meters_notes_it(database_url: str, store: Store, tmp_path: Path) -> None:
    path = write(tmp_path, event("e1"))
    empty = tmp_path / "empty.toml"
    empty.write_text("")
    code, _, err = cli(empty, database_url, path)
    assert code == 0
    assert "note: no meters are configured: the events are stored, but measure nothing" in err


def test_a_value_too_large_to_bill_exactly_is_rejected(catalog: Catalog) -> None:
    report = ingest(
        catalog,
        event("huge", data={"tokens": 10**19, "user": "u1"}),
        event("fine", data={"tokens": 2**53, "user": "u1"}),
    )
    assert reasons(report) == {
        0: "meter tokens: $.tokens is 10000000000000000000, too large to bill exactly (at most "
        "9.0072e+15 for this meter's scale)"
    }
    assert report.accepted == 1


def test_times_no_meter_can_bill_are_rejected(catalog: Catalog) -> None:
    with freeze_time("2026-05-01T12:00:00Z"):
        report = ingest(
            catalog,
            event("past", time="1969-12-31T23:59:59Z"),
            event("future", time="2026-05-02T12:00:01Z"),
            event("soon", time="2026-05-02T11:59:59Z"),
        )
    assert reasons(report) == {
        0: 'time "1969-12-31T23:59:59Z" is before 1970: no meter can bill it (check the '
        "producer's clock)",
        1: 'time "2026-05-02T12:00:01Z" is more than a day in the future: no meter can bill it '
        "(check the producer's clock)",
    }
    assert report.accepted == 1


@pytest.mark.parametrize("stream_from", [1, 64, 300])
def test_a_large_ndjson_file_streams_with_the_same_outcome(
    catalog: Catalog, stream_from: int
) -> None:
    """Past `stream_from` bytes NDJSON is read a line at a time; the outcome (what is stored,
    what is rejected and on which line) is that of reading it whole, wherever the cut falls."""
    text = (
        lines(
            event("e1"),
            "",
            '{"specversion": "1.0", "id": "e2",',
            event("e3", data={"tokens": "x", "user": "u"}),
            event("e4", subject="user-2"),
            event("e1"),  # a repeat: a duplicate
        )
        + "\r\n"
    )
    whole = ingest_json(catalog, METERS, text.encode())
    stored = stored_values(catalog.store)
    with catalog.store.session() as session:
        session.execute(UsageRow.__table__.delete())  # type: ignore[attr-defined]
        session.execute(EventRow.__table__.delete())  # type: ignore[attr-defined]
    streamed = ingest_file(catalog, METERS, io.BytesIO(text.encode()), stream_from=stream_from)
    # The same but for the subjects: the first read created them.
    assert {**streamed.to_json(), "subjects_created": []} == {
        **whole.to_json(),
        "subjects_created": [],
    }
    assert stored_values(catalog.store) == stored


def test_a_streamed_line_that_is_not_utf8_is_that_lines_rejection(catalog: Catalog) -> None:
    body = (
        lines(event("e1"), event("e2")).encode()
        + b'\n{"id": "\xff"}\n'
        + lines(event("e3")).encode()
    )
    report = ingest_file(catalog, METERS, io.BytesIO(body), stream_from=16)
    assert (report.received, report.accepted, report.rejected) == (4, 3, 1)
    assert [str(r) for r in report.rejections] == [
        "line 3: not UTF-8 text (invalid start byte at byte 9)"
    ]


def test_a_large_array_or_pretty_object_is_read_whole(catalog: Catalog) -> None:
    batch = json.dumps([event("e1"), event("e2")], indent=2).encode()
    report = ingest_file(catalog, METERS, io.BytesIO(batch), stream_from=8)
    assert (report.received, report.accepted) == (2, 2)
    single = json.dumps(event("e3"), indent=2).encode()
    report = ingest_file(catalog, METERS, io.BytesIO(single), stream_from=8)
    assert (report.received, report.accepted) == (1, 1)


def test_streamed_ingest_holds_a_batch_not_the_file(catalog: Catalog) -> None:
    """Peak traced memory while streaming 40,000 events is about that of 4,000: it grows with
    the batch, not with the file."""
    import tracemalloc

    def generate(n: int, offset: int) -> Iterator[bytes]:
        for i in range(n):
            yield (json.dumps(event(f"m{offset + i}", subject=f"s{i % 50}")) + "\n").encode()

    peaks = []
    for n, offset in ((4_000, 0), (40_000, 100_000)):
        tracemalloc.start()
        report = ingest_ndjson(catalog, METERS, generate(n, offset), batch_size=1_000)
        peaks.append(tracemalloc.get_traced_memory()[1])
        tracemalloc.stop()
        assert report.accepted == n
    assert peaks[1] < 2 * peaks[0], peaks
