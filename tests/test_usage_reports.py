"""Planning usage reports as a pure function: aggregates × ledger × links → reports."""

from __future__ import annotations

import calendar
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from metersync.catalog.meters import Meter, MeterSettings
from metersync.times import month_start
from metersync.usage.reports import Base, identifier, plan_reports, push_window_s, scaled
from metersync.usage.windows import WindowValue

NOW = datetime(2024, 5, 20, 12, 30, tzinfo=UTC)
HOUR = 3600
T = calendar.timegm((2024, 5, 20, 10, 0, 0))  # a window start two hours before NOW
IDS = {"acme": "cus_acme", "beta": "cus_beta"}


def meter(aggregation: str = "SUM", scale: float = 1.0, **extra: Any) -> Meter:
    value = None if aggregation == "COUNT" else "$.v"
    return Meter.of(
        MeterSettings(
            slug="m",
            event_type="e",
            aggregation=aggregation,  # type: ignore[arg-type]
            value_property=value,
            stripe={"event_name": "m_event", "scale": scale},  # type: ignore[arg-type]
            **extra,
        )
    )


def plan(
    m: Meter,
    windows: list[WindowValue],
    bases: dict[tuple[str, int], Base] | None = None,
    *,
    late_usage: str = "report",
    now: datetime = NOW,
) -> Any:
    return plan_reports(
        m,
        windows,
        bases or {},
        IDS,
        window_s=push_window_s(m, HOUR),
        now=now,
        late_usage=late_usage,
    )


def test_a_new_window_is_reported_whole_at_its_start() -> None:
    reports, skipped = plan(meter(), [WindowValue("acme", T, 42.0, (T + 5) * 10**6)])
    assert skipped == []
    [report] = reports
    assert (report.value, report.total, report.revision, report.timestamp) == (42, 42, 1, T)
    assert report.identifier == identifier("acme", "m", T, 1)
    assert (report.external_customer_id, report.event_name) == ("cus_acme", "m_event")


def test_a_grown_window_sends_only_the_delta_as_a_new_revision() -> None:
    reports, _ = plan(
        meter(), [WindowValue("acme", T, 50.0, T * 10**6)], {("acme", T): Base(42, 1)}
    )
    [report] = reports
    assert (report.value, report.total, report.revision) == (8, 50, 2)
    assert report.identifier != identifier("acme", "m", T, 1)


def test_nothing_new_is_nothing_sent() -> None:
    reports, skipped = plan(meter(), [WindowValue("acme", T, 42.0, 0)], {("acme", T): Base(42, 3)})
    assert (reports, skipped) == ([], [])


def test_identifiers_are_stable_and_distinct() -> None:
    assert identifier("a", "m", T, 1) == identifier("a", "m", T, 1)
    distinct = {
        identifier("a", "m", T, 1),
        identifier("a", "m", T, 2),
        identifier("a", "m", T + HOUR, 1),
        identifier("a", "n", T, 1),
        identifier("b", "m", T, 1),
    }
    assert len(distinct) == 5
    assert all(len(i) <= 100 for i in distinct)


def test_scale_rounds_the_total_half_up_once() -> None:
    assert scaled(2.5, 1) == 3 and scaled(0.0004, 1000) == 0 and scaled(0.0005, 1000) == 1
    m = meter(scale=10)
    first, _ = plan(m, [WindowValue("acme", T, 0.26, 0)])
    assert first[0].value == 3  # 2.6 → 3
    second, _ = plan(m, [WindowValue("acme", T, 0.52, 0)], {("acme", T): Base(3, 1)})
    assert second[0].value == 2  # total 5.2 → 5, minus 3 already sent: no drift


def test_a_customer_without_a_link_waits() -> None:
    reports, skipped = plan(meter(), [WindowValue("nolink", T, 5.0, 0)])
    assert reports == []
    assert [s.reason for s in skipped] == ["no target link"]


def test_a_window_waits_out_a_refusal() -> None:
    reports, skipped = plan(
        meter(), [WindowValue("acme", T, 5.0, 0)], {("acme", T): Base(0, 1, waiting=True)}
    )
    assert reports == [] and skipped[0].reason == "waiting after an error"


def test_a_falling_total_is_not_sent_and_says_why() -> None:
    reports, skipped = plan(meter(), [WindowValue("acme", T, 4.0, 0)], {("acme", T): Base(5, 1)})
    assert reports == []
    assert "negative" in skipped[0].reason


@pytest.mark.parametrize("days, late", [(34, False), (35, True), (40, True)])
def test_the_35_day_boundary(days: int, late: bool) -> None:
    start = calendar.timegm((NOW - timedelta(days=days)).utctimetuple()) // HOUR * HOUR
    held, _ = plan(meter(), [WindowValue("acme", start, 1.0, 0)])
    assert held[0].late is late
    assert held[0].timestamp == start
    pushed, _ = plan(meter(), [WindowValue("acme", start, 1.0, 0)], late_usage="push_now")
    assert not pushed[0].late
    assert pushed[0].timestamp == (int(NOW.timestamp()) if late else start)


def test_max_goes_as_a_month_to_date_value_stamped_after_the_last() -> None:
    m = meter("MAX")
    month = month_start(T)
    reports, _ = plan(m, [WindowValue("acme", month, 7.0, (T + 10) * 10**6)])
    assert (reports[0].value, reports[0].total, reports[0].timestamp) == (7, 7, T + 10)
    # The month's max went up through an event stamped earlier: still sent after the last.
    again, _ = plan(
        m,
        [WindowValue("acme", month, 9.0, (T + 10) * 10**6)],
        {("acme", month): Base(7, 1, timestamp=T + 10)},
    )
    assert (again[0].value, again[0].revision, again[0].timestamp) == (9, 2, T + 11)
    same, _ = plan(
        m,
        [WindowValue("acme", month, 9.0, 0)],
        {("acme", month): Base(9, 2, timestamp=T + 11)},
    )
    assert same == []


def test_unique_count_goes_as_month_to_date_deltas() -> None:
    m = meter("UNIQUE_COUNT")
    month = month_start(T)
    reports, _ = plan(
        m, [WindowValue("acme", month, 5.0, T * 10**6)], {("acme", month): Base(3, 1)}
    )
    assert (reports[0].value, reports[0].total, reports[0].window_s) == (2, 5, 0)
    assert month <= reports[0].timestamp <= int(NOW.timestamp())


def test_order_is_deterministic() -> None:
    windows = [
        WindowValue("beta", T, 1.0, 0),
        WindowValue("acme", T + HOUR, 1.0, 0),
        WindowValue("acme", T, 1.0, 0),
    ]
    reports, _ = plan(meter(), windows)
    assert [(r.customer_key, r.window_start) for r in reports] == [
        ("acme", T),
        ("acme", T + HOUR),
        ("beta", T),
    ]


def test_scaling_is_decimal_half_up_and_stable_under_summation_order() -> None:
    assert scaled(0.285, 100) == 29 and scaled(1.005, 100) == 101
    forwards = sum([0.1] * 5 + [0.2] * 5)
    backwards = sum([0.2] * 5 + [0.1] * 5)
    assert forwards != backwards  # doubles: the order shows in the last bits
    assert scaled(forwards, 1) == scaled(backwards, 1) == 2


def test_a_last_meter_stamp_stays_inside_its_month() -> None:
    m = meter("MAX")
    january = calendar.timegm((2024, 1, 1, 0, 0, 0))
    end_of_january = calendar.timegm((2024, 2, 1, 0, 0, 0)) - 1
    now = datetime(2024, 2, 10, tzinfo=UTC)
    # The last report took the month's last second: a new January max has no later stamp.
    reports, skipped = plan(
        m,
        [WindowValue("acme", january, 9.0, end_of_january * 10**6)],
        {("acme", january): Base(7, 1, timestamp=end_of_january)},
        now=now,
    )
    assert reports == [] and "no later stamp" in skipped[0].reason
    reports, _ = plan(m, [WindowValue("acme", january, 9.0, (january + 5) * 10**6)], now=now)
    assert january <= reports[0].timestamp <= end_of_january


def test_usage_stamped_in_the_future_waits() -> None:
    future = int(NOW.timestamp()) + 2 * HOUR
    reports, skipped = plan(meter(), [WindowValue("acme", future, 3.0, future * 10**6)])
    assert reports == [] and skipped[0].reason == "in the future"


def test_a_total_beyond_exact_billing_is_skipped_not_fatal() -> None:
    reports, skipped = plan(
        meter(), [WindowValue("acme", T, 2.0**63, 0), WindowValue("beta", T, 4.0, 0)]
    )
    assert [r.customer_key for r in reports] == ["beta"]
    assert "beyond what can be billed exactly" in skipped[0].reason
