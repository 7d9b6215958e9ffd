"""Aggregation in SQL on SQLite and PostgreSQL: binding, windows, months, the meter query."""

from __future__ import annotations

import calendar
import json
from collections import Counter
from typing import Any

from sqlalchemy import func, insert, select

from metersync.catalog import Catalog
from metersync.catalog.meters import Meter, MeterSettings
from metersync.store import UsageRow
from metersync.sync.journal import Journal
from metersync.times import month_start
from metersync.usage import aggregate
from metersync.usage.aggregate import (
    bind_usage,
    customer_windows,
    query_meter,
    unbound_subjects,
)

HOUR = 3600
T = calendar.timegm((2024, 5, 20, 10, 0, 0))


def meter(aggregation: str, slug: str = "m") -> Meter:
    return Meter.of(
        MeterSettings(
            slug=slug,
            event_type="e",
            aggregation=aggregation,  # type: ignore[arg-type]
            value_property=None if aggregation == "COUNT" else "$.v",
            group_by={"model": "$.model"},
        )
    )


counter = iter(range(1, 10**6))


def add(
    catalog: Catalog,
    subject: str,
    seconds: float,
    value: float | None = 1.0,
    *,
    slug: str = "m",
    text: str | None = None,
    groups: dict[str, Any] | None = None,
) -> None:
    with catalog.store.session() as session:
        session.execute(
            insert(UsageRow.__table__),  # type: ignore[attr-defined]
            {
                "source": "test",
                "event_id": f"e{next(counter)}",
                "meter": slug,
                "subject": subject,
                "time_us": int(seconds * 1_000_000),
                "value": value,
                "value_text": text,
                "groups": json.dumps(groups) if groups else None,
            },
        )


def linked(catalog: Catalog, key: str, subjects: list[str]) -> None:
    catalog.create_customer(
        {"key": key, "name": key, "usageAttribution": {"subjectKeys": subjects}}
    )
    Journal(catalog.store, "stripe").mark_synced(
        key, external_id=f"cus_{key}", pushed={"fields": {}, "metadata": {}}
    )


def bound(catalog: Catalog) -> dict[str, str | None]:
    with catalog.store.read_session() as session:
        rows = session.execute(select(UsageRow.event_id, UsageRow.customer_key))  # type: ignore[call-overload]
        return dict(rows.all())


def test_usage_binds_to_the_subjects_customer_once_it_is_linked(catalog: Catalog) -> None:
    catalog.upsert_subject({"key": "s1"})
    catalog.create_customer(
        {"key": "acme", "name": "Acme", "usageAttribution": {"subjectKeys": ["s1"]}}
    )
    add(catalog, "s1", T)
    assert bind_usage(catalog.store, "stripe") == 0  # acme has no Stripe link: it waits
    assert unbound_subjects(catalog.store) == {"s1": 1}
    Journal(catalog.store, "stripe").mark_synced(
        "acme", external_id="cus_acme", pushed={"fields": {}, "metadata": {}}
    )
    assert bind_usage(catalog.store, "stripe") == 1
    assert set(bound(catalog).values()) == {"acme"}
    assert unbound_subjects(catalog.store) == {}


def test_binding_walks_unbound_rows_in_slices_and_leaves_the_waiting_ones(
    catalog: Catalog, monkeypatch: Any
) -> None:
    # Slices of two rows: binding statements end inside runs of one subject's rows, and rows
    # that must wait (no linked customer) lie between rows that bind.
    monkeypatch.setattr(aggregate, "_BIND_ROWS", 2)
    linked(catalog, "acme", ["s1", "s2"])
    catalog.upsert_subject({"key": "lost"})
    for i, subject in enumerate(["s1", "lost", "s2", "s2", "lost", "s1", "s1"]):
        add(catalog, subject, T + i)
    columns = aggregate.USAGE.c
    with catalog.store.read_session() as session:
        mark = session.execute(select(func.max(columns.seq))).scalar()
    assert bind_usage(catalog.store, "stripe") == 5
    assert Counter(bound(catalog).values()) == {"acme": 5, None: 2}
    assert unbound_subjects(catalog.store) == {"lost": 2}
    with catalog.store.read_session() as session:
        seqs = session.execute(
            select(columns.seq).where(columns.customer_key.is_not(None))
        ).scalars()
        assert all(seq > (mark or 0) for seq in seqs)  # bound rows are changes the push sees
    assert bind_usage(catalog.store, "stripe") == 0  # what waits is not bound twice


def test_rows_stored_while_binding_walks_wait_for_the_next_binding(
    catalog: Catalog, monkeypatch: Any
) -> None:
    """The walk ends at the last row stored when it began: a steady ingest cannot keep one
    binding walking forever."""
    monkeypatch.setattr(aggregate, "_BIND_ROWS", 1)
    linked(catalog, "acme", ["s1"])
    add(catalog, "s1", T)
    add(catalog, "s1", T + 1)
    slice_end = aggregate._unbound_slice_end

    def storing_meanwhile(after: int, last: int) -> Any:
        add(catalog, "s1", T + 2)  # one more row for every slice walked
        return slice_end(after, last)

    monkeypatch.setattr(aggregate, "_unbound_slice_end", storing_meanwhile)
    assert bind_usage(catalog.store, "stripe") == 2
    monkeypatch.setattr(aggregate, "_unbound_slice_end", slice_end)
    assert unbound_subjects(catalog.store) == {"s1": 3}
    assert bind_usage(catalog.store, "stripe") == 3


def test_bound_usage_stays_and_new_usage_follows_a_re_attribution(catalog: Catalog) -> None:
    linked(catalog, "acme", ["s1"])
    linked(catalog, "beta", [])
    add(catalog, "s1", T)
    bind_usage(catalog.store, "stripe")
    catalog.update_customer("acme", {"usageAttribution": {"subjectKeys": []}})
    catalog.update_customer("beta", {"usageAttribution": {"subjectKeys": ["s1"]}})
    add(catalog, "s1", T + 60)  # the same window, after the move
    bind_usage(catalog.store, "stripe")
    windows = customer_windows(catalog.store, meter("COUNT"), HOUR)
    assert [(w.customer_key, w.window_start, w.value) for w in windows] == [
        ("acme", T, 1.0),
        ("beta", T, 1.0),
    ]


def test_windows_per_aggregation(catalog: Catalog) -> None:
    linked(catalog, "acme", ["s1", "s2"])
    for seconds, value, text in [
        (T + 10, 5.0, "a"),
        (T + 20, 2.0, "b"),
        (T + 30, 3.0, "a"),  # latest in the first window
        (T + HOUR + 1, 7.0, "c"),
    ]:
        add(catalog, "s1" if value != 2.0 else "s2", seconds, value, text=text)
    bind_usage(catalog.store, "stripe")
    expected = {
        "SUM": [10.0, 7.0],
        "COUNT": [3.0, 1.0],
        "MAX": [5.0, 7.0],
        "MIN": [2.0, 7.0],
        "AVG": [10.0 / 3, 7.0],
        "LATEST": [3.0, 7.0],
        "UNIQUE_COUNT": [2.0, 1.0],
    }
    for aggregation, values in expected.items():
        windows = customer_windows(catalog.store, meter(aggregation), HOUR)
        assert [w.window_start for w in windows] == [T, T + HOUR], aggregation
        assert [round(w.value, 9) for w in windows] == [round(v, 9) for v in values], aggregation
        assert windows[0].latest_us == (T + 30) * 1_000_000


def test_months_fold_days(catalog: Catalog) -> None:
    linked(catalog, "acme", ["s1"])
    june = calendar.timegm((2024, 6, 1, 0, 0, 0))
    add(catalog, "s1", june - 1, 4.0, text="x")  # May 31st 23:59:59
    add(catalog, "s1", june - 86400 * 3, 9.0, text="y")
    add(catalog, "s1", june, 1.0, text="x")  # June
    bind_usage(catalog.store, "stripe")
    may = month_start(june - 1)
    got = {
        a: [(w.window_start, w.value) for w in customer_windows(catalog.store, meter(a), 0)]
        for a in ("SUM", "MAX", "LATEST", "UNIQUE_COUNT")
    }
    assert got["SUM"] == [(may, 13.0), (june, 1.0)]
    assert got["MAX"] == [(may, 9.0), (june, 1.0)]
    assert got["LATEST"] == [(may, 4.0), (june, 1.0)]
    assert got["UNIQUE_COUNT"] == [(may, 2.0), (june, 1.0)]


def test_query_meter_by_window_and_group(catalog: Catalog) -> None:
    add(catalog, "s1", T + 1, 2.0, groups={"model": "a"})
    add(catalog, "s1", T + 2, 3.0, groups={"model": "b"})
    add(catalog, "s2", T + 3, 4.0, groups={"model": "a"})
    add(catalog, "s1", T + HOUR, 1.0, groups={"model": "a"})
    m = meter("SUM")
    plain = query_meter(
        catalog.store, m, customer=("acme", ["s1"]), start=T, end=T + 2 * HOUR, window_s=HOUR
    )
    assert [(w.window_start, w.value) for w in plain] == [(T, 5.0), (T + HOUR, 1.0)]
    assert plain[0].to_openmeter()["windowStart"] == "2024-05-20T10:00:00Z"
    grouped = query_meter(
        catalog.store, m, customer=None, start=T, end=T + HOUR, window_s=HOUR, group=True
    )
    assert [(w.group_by, w.value) for w in grouped] == [
        ({"model": "a"}, 6.0),
        ({"model": "b"}, 3.0),
    ]
