"""The usage pull from OpenMeter, counted: a tick costs the same meter queries whatever the
number of subjects (one for the windows' totals, one per run of windows whose total moved);
a late correction inside the lookback is read by the next tick, one beyond it by the full
re-read; a figure that vanished upstream falls to 0 (at the next tick where its window's total
fell, else at the full read); a long read is cut into time slices; a failed pull leaves the last
totals to compare with.
Against the OpenMeter emulator over real HTTP, on SQLite and PostgreSQL, at a frozen instant
(so that no hour ends mid-test)."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Iterable, Iterator
from datetime import UTC, datetime
from typing import Any, TypeVar

import pytest
from freezegun import freeze_time
from sqlalchemy import select

from metersync.catalog import Catalog
from metersync.catalog.meters import Meter, MeterSettings
from metersync.settings import OpenMeterSettings
from metersync.sources.openmeter import OpenMeterSource, PullResult, SourceUnavailable, _usage_pull
from metersync.sources.openmeter._window_totals import changed_windows, fallen, runs, slices
from metersync.store import UpstreamUsageRow
from metersync.testing import OpenMeterEmulator

TOKEN = "om-test-token"
HOUR = 3600
NOW = datetime(2026, 3, 11, 10, 20, tzinfo=UTC)  # 20 minutes into an hour
OPEN = int(NOW.timestamp()) // HOUR * HOUR  # the open window
QUERY = "/api/v1/meters/tokens/query"
METERS = [
    Meter.of(
        MeterSettings(
            slug="tokens", event_type="prompt", aggregation="SUM", value_property="$.tokens"
        )
    )
]
T = TypeVar("T")


@pytest.fixture
def om() -> Iterator[OpenMeterEmulator]:
    with OpenMeterEmulator(token=TOKEN) as running:
        running.add_meter("tokens", event_type="prompt", value_property="$.tokens")
        yield running


def event(name: str, subject: str, at: int, tokens: int) -> dict[str, Any]:
    return {
        "specversion": "1.0",
        "id": name,
        "source": "app",
        "type": "prompt",
        "subject": subject,
        "time": datetime.fromtimestamp(at, UTC).isoformat().replace("+00:00", "Z"),
        "data": {"tokens": tokens},
    }


def add_customers(om: OpenMeterEmulator, numbers: Iterable[int]) -> None:
    """Customer c{i} with subject s{i}: usage three hours ago, an hour ago and in the open
    window."""
    for i in numbers:
        om.create_customer(f"c{i}", f"C{i}", subject_keys=[f"s{i}"])
        om.ingest(
            event(f"e{i}-{back}", f"s{i}", OPEN - back * HOUR + 60, i + back) for back in (3, 1, 0)
        )


def run(om: OpenMeterEmulator, step: Callable[[OpenMeterSource], Awaitable[T]]) -> T:
    """`step` with a source of its own (its HTTP client belongs to this event loop)."""

    async def go() -> T:
        settings = OpenMeterSettings(url=om.url, token=TOKEN, retries=1, timeout_s=5)
        source = OpenMeterSource(settings, METERS, window_s=HOUR)
        try:
            return await step(source)
        finally:
            await source.close()

    return asyncio.run(go())


def pull(om: OpenMeterEmulator, catalog: Catalog, *, full: bool = False) -> tuple[PullResult, int]:
    """A usage pull; returns its result and how many meter queries it sent."""
    before = len(om.requests(QUERY))
    result = run(om, lambda source: source.pull_usage(catalog.store, full=full))
    return result, len(om.requests(QUERY)) - before


def pull_catalog(om: OpenMeterEmulator, catalog: Catalog) -> None:
    run(om, lambda source: source.pull_catalog(catalog))


def figures(catalog: Catalog) -> dict[tuple[str, int], float]:
    """The stored hourly figures: (subject, window start) → value."""
    u = UpstreamUsageRow.__table__.c  # type: ignore[attr-defined]
    with catalog.store.read_session() as session:
        rows = session.execute(
            select(u.subject, u.window_start, u.value).where(u.meter == "tokens")
        ).all()
    return {(str(s), int(w)): float(v) for s, w, v in rows}


def test_a_tick_costs_the_same_queries_for_10_or_300_subjects(
    om: OpenMeterEmulator, catalog: Catalog
) -> None:
    with freeze_time(NOW, tick=True):
        add_customers(om, range(10))
        pull_catalog(om, catalog)
        pull(om, catalog)  # the first pull reads the whole backfill
        assert figures(catalog)[("s7", OPEN - 3 * HOUR)] == 10
        costs = {}
        for subjects in (10, 300):
            if subjects == 300:
                add_customers(om, range(10, 300))
                pull_catalog(om, catalog)
                pull(om, catalog)  # reads the new subjects' hours
            om.ingest([event(f"tick-{subjects}", "s0", OPEN + 120, 5)])
            result, costs[subjects] = pull(om, catalog)
            assert result.counts["windows_read"] == 1  # the open window, every subject in it
            assert result.counts["changed"] == 1
        # One query for the totals, one for the open window: per 100 subjects it was 1 and 3.
        assert costs == {10: 2, 300: 2}
        assert figures(catalog)[("s0", OPEN)] == 0 + 5 + 5
        assert figures(catalog)[("s299", OPEN - HOUR)] == 300
        idle, queries = pull(om, catalog)
        assert queries == 1 and "windows_read" not in idle.counts  # nothing changed: totals only


def test_a_late_correction_inside_the_lookback_is_read_one_beyond_waits_for_the_full_read(
    om: OpenMeterEmulator, catalog: Catalog
) -> None:
    with freeze_time(NOW, tick=True):
        add_customers(om, range(5))
        pull_catalog(om, catalog)
        pull(om, catalog)
        late = OPEN - 5 * HOUR  # inside the 48 h lookback, long before the last pull
        om.ingest([event("late", "s3", late + 600, 100)])
        result, queries = pull(om, catalog)
        assert (queries, result.counts["windows_read"], result.counts["changed"]) == (2, 1, 1)
        assert figures(catalog)[("s3", late)] == 100
        # An event that arrives later than the lookback is left to the full re-read.
        older = OPEN - 72 * HOUR
        om.ingest([event("older", "s2", older + 60, 7)])
        assert pull(om, catalog)[1] == 1
        assert ("s2", older) not in figures(catalog)
        full, _ = pull(om, catalog, full=True)
        assert figures(catalog)[("s2", older)] == 7
        assert full.counts["changed"] == 1  # everything else was already right


def test_a_figure_that_vanished_upstream_falls_to_zero_where_the_total_fell(
    om: OpenMeterEmulator, catalog: Catalog
) -> None:
    with freeze_time(NOW, tick=True):
        add_customers(om, range(2))
        pull_catalog(om, catalog)
        pull(om, catalog)
        before = figures(catalog)
        assert before[("s1", OPEN - HOUR)] == 2 and before[("s1", OPEN)] == 1
        # The meter made again upstream under its slug (OpenMeter itself never drops events;
        # deleting a meter and making another one can), with only some of s0's usage: the
        # total 3 h ago vanished, the one an hour ago rose (3 to 5), the open one stayed 1.
        om.reset()
        om.add_meter("tokens", event_type="prompt", value_property="$.tokens")
        om.ingest([event("a", "s0", OPEN - HOUR + 60, 5), event("b", "s0", OPEN + 60, 1)])
        pull(om, catalog)
        tick = figures(catalog)
        assert tick[("s0", OPEN - 3 * HOUR)] == tick[("s1", OPEN - 3 * HOUR)] == 0
        assert tick[("s0", OPEN - HOUR)] == 5
        # Where a total did not fall, a vanished figure cannot be told from the totals: s1's
        # stay until the full read (an hour ago s0 outgrew it; in the open hour they cancel).
        assert (tick[("s1", OPEN - HOUR)], tick[("s1", OPEN)], tick[("s0", OPEN)]) == (2, 1, 0)
        pull(om, catalog, full=True)
        full = figures(catalog)
        assert (full[("s1", OPEN - HOUR)], full[("s1", OPEN)], full[("s0", OPEN)]) == (0, 0, 1)


def test_a_long_read_is_cut_into_time_slices(
    om: OpenMeterEmulator, catalog: Catalog, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(_usage_pull, "ROWS_PER_ANSWER", 4 * 5)
    with freeze_time(NOW, tick=True):
        for i in range(4):
            om.create_customer(f"c{i}", f"C{i}", subject_keys=[f"s{i}"])
        spread = [(f"s{i}", OPEN - h * HOUR) for i in range(4) for h in range(0, 30, 2)]
        om.ingest(event(f"e{n}", s, w + 60, n + 1) for n, (s, w) in enumerate(spread))
        pull_catalog(om, catalog)
        pull(om, catalog)
        per_subject = [r for r in om.requests(QUERY) if "groupBy=subject" in r["query"]]
        # 4 subjects, 20 rows an answer: 5 hours with usage a query (15 of them, every other
        # hour back to 28 h ago); the 34 quiet days before ride along with the first.
        assert len(per_subject) == 3
        assert figures(catalog) == {key: n + 1 for n, key in enumerate(spread)}


def test_changed_windows_and_their_runs() -> None:
    start, end = 0, 6 * HOUR
    recorded = {0: 5.0, HOUR: 3.0, 2 * HOUR: 0.5, 3 * HOUR: 7.0, 4 * HOUR: 1.0}
    observed = {
        0: 5.0,  # the same
        HOUR: 4.0,  # a late event
        2 * HOUR: 0.5 + 1e-13,  # the same events, added up in another order
        # 3 h vanished upstream
        4 * HOUR: 1.0,
        5 * HOUR: 2.0,  # new
        -HOUR: 9.0,  # before the range: not this pull's
    }
    changed = changed_windows(observed, recorded, start, end, HOUR)
    assert changed == [HOUR, 3 * HOUR, 5 * HOUR]
    assert runs(changed, HOUR) == [(HOUR, 2 * HOUR), (3 * HOUR, 4 * HOUR), (5 * HOUR, 6 * HOUR)]
    assert runs([0, HOUR, 2 * HOUR, 4 * HOUR], HOUR) == [(0, 3 * HOUR), (4 * HOUR, 5 * HOUR)]
    # Whole numbers compare exactly, however large; nothing recorded means every window.
    assert changed_windows({0: 1e12 + 1}, {0: 1e12}, start, end, HOUR) == [0]
    assert changed_windows({}, None, start, end, HOUR) == list(range(start, end, HOUR))
    assert changed_windows({}, {}, start, end, HOUR) == []
    assert fallen(observed, recorded) == {3 * HOUR}  # 2 h rose by a rounding error, 3 h vanished


def test_slices_hold_at_most_so_many_windows_with_usage() -> None:
    busy = {2 * HOUR, 3 * HOUR, 4 * HOUR, 8 * HOUR}
    assert slices(0, 10 * HOUR, HOUR, busy, 2) == [(0, 4 * HOUR), (4 * HOUR, 10 * HOUR)]
    assert slices(0, 10 * HOUR, HOUR, busy, 1) == [
        (0, 3 * HOUR),
        (3 * HOUR, 4 * HOUR),
        (4 * HOUR, 8 * HOUR),
        (8 * HOUR, 10 * HOUR),
    ]
    assert slices(0, 10 * HOUR, HOUR, set(), 1) == [(0, 10 * HOUR)]  # a vanished run: one read


def test_a_failed_pull_keeps_the_last_totals(om: OpenMeterEmulator, catalog: Catalog) -> None:
    with freeze_time(NOW, tick=True):
        add_customers(om, range(3))
        pull_catalog(om, catalog)
        pull(om, catalog)
        om.ingest([event("while-down", "s1", OPEN - 2 * HOUR, 40)])
        om.fail_next("503", count=2, path_prefix=QUERY)  # the totals query and its retry
        with pytest.raises(SourceUnavailable, match="503"):
            pull(om, catalog)
        result, queries = pull(om, catalog)
        assert (queries, result.counts["windows_read"]) == (2, 1)
        assert figures(catalog)[("s1", OPEN - 2 * HOUR)] == 40
