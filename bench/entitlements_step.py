"""The in-process measurement of bench/entitlements.py, in a fresh process of its own:

    python bench/entitlements_step.py SPEC.json

SPEC.json (the parent writes it) names the config file, the customer, the feature, the moment
`at` and how many calls. The step opens the store as the CLI would, builds
`EntitlementValues`, times the first call (cold: it builds the caches), one warm-up call, then
`calls` calls, each timed alone with perf_counter. It prints one line, RESULT_MARKER and its
figures as JSON: the latencies' percentiles, the first call, the process's CPU time, its peak
RSS, and the value the last call returned (decimals as text).
"""

from __future__ import annotations

import datetime as dt
import json
import sys
import time
from pathlib import Path
from typing import Any

from emulator import percentiles
from usage_history_step import RESULT_MARKER, status_mb

from metersync.catalog.meters import Meter
from metersync.entitlements import EntitlementBook, EntitlementValues
from metersync.logs import configure_logging
from metersync.settings import load_settings
from metersync.store import Store


def figures_of(value: Any) -> dict[str, Any]:
    """An EntitlementValue's fields, decimals as text (exact)."""
    names = ("has_access", "balance", "usage", "overage", "total_available_grant_amount", "config")
    out: dict[str, Any] = {}
    for name in names:
        found = getattr(value, name, None)
        out[name] = found if found is None or isinstance(found, bool | str) else str(found)
    return out


def measure(spec: dict[str, Any]) -> dict[str, Any]:
    settings = load_settings(Path(spec["config"]))
    configure_logging(settings.log.level, settings.log.format)
    meters = [Meter.of(m) for m in settings.meters]
    store = Store.open(settings.database.url)
    try:
        book = EntitlementBook(store, meters)
        values = EntitlementValues(book, store, meters)
        customer, feature = spec["customer"], spec["feature"]
        at = dt.datetime.fromisoformat(spec["at"])
        cpu = time.process_time()
        started = time.perf_counter()
        first = values.value(customer, feature, at=at)
        cold = time.perf_counter() - started
        cold_cpu = time.process_time() - cpu
        warm = time.perf_counter()
        values.value(customer, feature, at=at)  # the warm-up call
        warmup = time.perf_counter() - warm
        samples = []
        cpu = time.process_time()
        for _ in range(spec["calls"]):
            started = time.perf_counter()
            last = values.value(customer, feature, at=at)
            samples.append(time.perf_counter() - started)
        calls_cpu = time.process_time() - cpu
    finally:
        store.dispose()
    return {
        "calls": len(samples),
        "latency_ms": percentiles(samples),
        "cold_ms": round(cold * 1000, 3),
        "cold_cpu_ms": round(cold_cpu * 1000, 3),
        "warmup_ms": round(warmup * 1000, 3),
        "calls_s": round(sum(samples), 3),
        "calls_cpu_s": round(calls_cpu, 3),
        "first_value": figures_of(first),
        "value": figures_of(last),
        "same_value": figures_of(first) == figures_of(last),
    }


def main(argv: list[str]) -> int:
    if len(argv) != 2:
        print(f"usage: {argv[0]} SPEC.json", file=sys.stderr)
        return 2
    figures = measure(json.loads(Path(argv[1]).read_text()))
    figures["peak_rss_mb"] = status_mb("self", "VmHWM")
    print(RESULT_MARKER + json.dumps(figures), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
