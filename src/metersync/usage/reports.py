"""Planning usage reports, a pure function: aggregates × ledger × links → reports to send.

- SUM and COUNT go to `sum` meters per window: each report is the delta between the window's
  scaled total and what the ledger already holds for it, stamped at the window's start so that
  Stripe's hourly or daily event summaries line up with our windows.
- UNIQUE_COUNT goes to a `sum` meter as month-to-date deltas (a distinct count cannot be
  summed across windows, only its growth over the month).
- MAX and LATEST go to `last` meters as the month-to-date value, re-sent when it changes, each
  stamped later than the one before (Stripe keeps the last value by timestamp).

Values are scaled by the meter's `stripe.scale` and rounded half up once, on the total, so
that rounding never accumulates across reports.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime
from decimal import ROUND_HALF_UP, Decimal

from metersync.catalog.meters import Aggregation, Meter
from metersync.stripe_facts import METER_EVENT_PAST_LIMIT_S, PLAN_PAST_MARGIN_S
from metersync.times import month_end
from metersync.usage.windows import WindowValue

# The largest scaled value a single event may carry (exact in a double), and the largest total
# a window may reach (ledger columns are 64-bit).
STRIPE_VALUE_LIMIT = 2**53
TOTAL_LIMIT = 2**62


@dataclass(frozen=True)
class Base:
    """What the ledger holds for one (customer, meter, window): the scaled total reported so
    far (pending and delivered alike: for sum meters the sum of their values, for last meters
    the newest value), the last revision, the last stamp, and whether the window waits after
    a refusal."""

    total: int
    revision: int
    timestamp: int = 0
    waiting: bool = False


NEVER_REPORTED = Base(total=0, revision=0)


@dataclass(frozen=True)
class Report:
    customer_key: str
    meter: str
    window_start: int
    window_s: int
    revision: int
    value: int  # sent: a delta (sum meters) or the month-to-date value (last meters)
    total: int  # the scaled total this report brings the window to
    identifier: str
    external_customer_id: str
    event_name: str
    timestamp: int
    late: bool = False  # older than Stripe accepts; held (late_usage = "report")
    scale: float = 1.0


@dataclass(frozen=True)
class Skipped:
    customer_key: str
    meter: str
    window_start: int
    reason: str
    not_before: int | None = None  # when the reason passes by itself (unix seconds), if known


def identifier(customer_key: str, meter: str, window_start: int, revision: int) -> str:
    """hash(customer, meter, window start, revision): the same report always carries the same
    identifier, so a re-send after a crash is a duplicate Stripe recognises."""
    digest = hashlib.sha256(f"{customer_key}\x1f{meter}\x1f{window_start}\x1f{revision}".encode())
    return "msu_" + digest.hexdigest()[:40]


def scaled(value: float, scale: float) -> int:
    """Half up, on the total, in decimal: 2.5 tokens at scale 1 bill as 3, 0.285 at scale 100
    as 29. The total is first rounded to 9 decimals: a SQL SUM of doubles depends on the order
    it adds rows in (in the last bits), and a window's total must not flip across a half
    between two pushes with no new events."""
    if scale == 1.0 and value.is_integer() and abs(value) <= STRIPE_VALUE_LIMIT:
        # The common case, and the same answer: a whole number below 2**53 is exact as a
        # double, and rounding it changes nothing (the Decimal path costs a report 3 µs).
        return int(value)
    exact = Decimal(repr(round(value, 9))) * Decimal(repr(scale))
    return int(exact.quantize(Decimal(1), rounding=ROUND_HALF_UP))


def plan_reports(
    meter: Meter,
    windows: list[WindowValue],
    bases: Mapping[tuple[str, int], Base],
    external_ids: Mapping[str, str],
    *,
    window_s: int,
    now: datetime,
    late_usage: str,
) -> tuple[list[Report], list[Skipped]]:
    """`windows` are the meter's bound customer windows (per `window_s`, or per month for
    UNIQUE_COUNT, MAX and LATEST: window_s 0). Deterministic order: customer, window."""
    stripe = meter.settings.stripe
    if stripe is None:
        return [], []
    moment = int(now.timestamp())
    oldest = moment - METER_EVENT_PAST_LIMIT_S + PLAN_PAST_MARGIN_S
    monthly = window_s == 0
    last_meter = meter.aggregation in (Aggregation.MAX, Aggregation.LATEST)
    reports: list[Report] = []
    skipped: list[Skipped] = []
    for window in sorted(windows, key=lambda w: (w.customer_key, w.window_start)):
        key = (window.customer_key, window.window_start)
        base = bases.get(key, NEVER_REPORTED)
        external_id = external_ids.get(window.customer_key)
        if external_id is None:
            skipped.append(Skipped(*key[:1], meter.slug, window.window_start, "no target link"))
            continue
        if base.waiting:
            skipped.append(
                Skipped(
                    window.customer_key, meter.slug, window.window_start, "waiting after an error"
                )
            )
            continue
        total = scaled(window.value, stripe.scale)
        if total > TOTAL_LIMIT:
            skipped.append(
                Skipped(
                    window.customer_key,
                    meter.slug,
                    window.window_start,
                    f"total {total} is beyond what can be billed exactly",
                )
            )
            continue
        if window.window_start > moment:
            skipped.append(
                Skipped(
                    window.customer_key,
                    meter.slug,
                    window.window_start,
                    "in the future",
                    not_before=window.window_start,
                )
            )
            continue
        if last_meter:
            if base.revision and total == base.total:
                continue
            value = total
            latest = window.latest_us // 1_000_000
            # Later than the last report (Stripe keeps the newest), inside its own month.
            end = month_end(window.window_start) - 1
            stamp = min(max(latest, base.timestamp + 1, window.window_start), end, moment)
            if stamp <= base.timestamp:
                skipped.append(
                    Skipped(
                        window.customer_key,
                        meter.slug,
                        window.window_start,
                        "no later stamp left in its month for a new value (or in this second)",
                    )
                )
                continue
        else:
            value = total - base.total
            if value == 0:
                continue
            if value < 0:
                skipped.append(
                    Skipped(
                        window.customer_key,
                        meter.slug,
                        window.window_start,
                        f"total fell from {base.total} to {total}: Stripe meters take no "
                        "negative values",
                    )
                )
                continue
            if monthly:
                latest = window.latest_us // 1_000_000
                end = month_end(window.window_start) - 1
                stamp = min(max(latest, window.window_start), end, moment)
            else:
                stamp = window.window_start
        late = stamp < oldest
        # push_now re-stamps late sums into the current period. Not a last meter's value: stamped
        # now, it would replace the current period's own last value.
        if late and late_usage == "push_now" and not last_meter:
            stamp, late = moment, False
        revision = base.revision + 1
        reports.append(
            Report(
                customer_key=window.customer_key,
                meter=meter.slug,
                window_start=window.window_start,
                window_s=window_s,
                revision=revision,
                value=value,
                total=total,
                identifier=identifier(
                    window.customer_key, meter.slug, window.window_start, revision
                ),
                external_customer_id=external_id,
                event_name=stripe.event_name,
                timestamp=stamp,
                late=late,
                scale=stripe.scale,
            )
        )
    return reports, skipped


def push_window_s(meter: Meter, window_s: int) -> int:
    """The window a meter is pushed per: the configured one for SUM and COUNT, the calendar
    month (0) for the period-to-date meters."""
    if meter.aggregation in (Aggregation.SUM, Aggregation.COUNT):
        return window_s
    return 0
