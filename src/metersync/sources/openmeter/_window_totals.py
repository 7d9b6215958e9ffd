"""Which windows changed upstream since the last pull, told by one small query.

OpenMeter keeps no list of the aggregates that changed: its meter query filters on when an
event happened, not on when it arrived, and its events list (which does filter on `ingestedAt`)
answers event by event, 100 to a page, which costs more than the aggregates as soon as a
window holds more than one event per subject. What one cheap query does tell is each window's
total over all subjects (no groupBy: one row per window), and a late event changes the total
of the window it falls in. So a pull asks for the totals over its whole lookback, compares
them with the totals the last pull recorded, and reads per subject only the windows whose
totals differ: the open window, and any window a late event reached.

What a total cannot show: late events that cancel out within one window's total between two
pulls (a SUM meter with negative values: +5 for one subject, -5 for another). A COUNT meter,
or a SUM of values that are never negative, cannot hide a change that way (a late event only
raises its window's total). The nightly full reconcile re-reads every window per subject and
repairs what a total hid.

The totals are recorded in the usage pull's sync_state summary (`windowTotals`), per meter and
window size: a pull that fails keeps the last good record (the summaries merge), so the next
pull compares with what was stored last and re-reads anything newer.
"""

from __future__ import annotations

import math
from collections.abc import Container, Iterable, Mapping
from typing import Any

from metersync.times import epoch_seconds

WINDOW_TOTALS = "windowTotals"  # the key of the record in the pull's summary
# Whole-number totals compare exactly. Fractional ones are float sums, which ClickHouse adds up
# in no fixed order (parallel threads, merged parts): the same events can differ in the last
# bits from one query to the next. A fractional change smaller than this share of the window's
# total over all subjects waits for the nightly full re-read.
FRACTION_TOLERANCE = 1e-9

Totals = dict[int, float]  # window start (unix seconds) → total over all subjects


def totals_key(meter: str, per: int) -> str:
    return f"{meter}/{per}"


def observed_totals(rows: Iterable[Mapping[str, Any]]) -> Totals:
    """A meter query's answer without groupBy, as window start → total."""
    return {epoch_seconds(row["windowStart"]): float(row.get("value") or 0) for row in rows}


def recorded_totals(record: Mapping[str, Any], meter: str, per: int) -> Totals | None:
    """The totals the last pull recorded for `meter` at window size `per`, or None when it
    recorded none (a first pull, a meter added since, another window size)."""
    found = record.get(totals_key(meter, per))
    if not isinstance(found, Mapping):
        return None
    return {int(window): float(value) for window, value in found.items()}


def totals_record(totals: Mapping[str, Totals]) -> dict[str, dict[str, float]]:
    """`totals` (key → window → total) in the summary's JSON form (keys are text)."""
    return {key: {str(window): value for window, value in t.items()} for key, t in totals.items()}


def changed_windows(
    observed: Mapping[int, float],
    recorded: Mapping[int, float] | None,
    start: int,
    end: int,
    per: int,
) -> list[int]:
    """The windows of [start, end) to read per subject: those whose total is not the one
    recorded (a window that appeared, or one that vanished upstream, counts as changed), or
    every window when nothing was recorded."""
    if recorded is None:
        return list(range(start, end, per))
    windows = {w for w in (*observed, *recorded) if start <= w < end}
    return sorted(w for w in windows if not _same(observed.get(w), recorded.get(w)))


def fallen(observed: Mapping[int, float], recorded: Mapping[int, float]) -> set[int]:
    """Windows whose total fell, or vanished, since it was recorded. Only there can a
    subject's figure have vanished upstream: events only add to a COUNT, or to a SUM of
    values that are never negative (a meter deleted and made again under its slug can drop
    them)."""
    return {w for w, before in recorded.items() if observed.get(w, 0.0) < before}


def runs(windows: Iterable[int], per: int) -> list[tuple[int, int]]:
    """Sorted window starts as [start, end) runs of adjacent windows: one query each."""
    found: list[tuple[int, int]] = []
    for window in windows:
        if found and found[-1][1] == window:
            found[-1] = (found[-1][0], window + per)
        else:
            found.append((window, window + per))
    return found


def slices(
    start: int, end: int, per: int, busy: Container[int], most: int
) -> list[tuple[int, int]]:
    """[start, end) cut into [start, end) slices that each hold at most `most` windows with
    usage (`busy`: those with a total). A window without usage costs a query nothing, so a
    quiet stretch rides along with the next busy window."""
    found: list[tuple[int, int]] = []
    at, held = start, 0
    for window in range(start, end, per):
        if window in busy:
            if held == most:
                found.append((at, window))
                at, held = window, 0
            held += 1
    found.append((at, end))
    return found


def _same(a: float | None, b: float | None) -> bool:
    if a is None or b is None:
        return a is b
    if a == b:
        return True
    if a.is_integer() and b.is_integer():
        return False
    return math.isclose(a, b, rel_tol=FRACTION_TOLERANCE)
