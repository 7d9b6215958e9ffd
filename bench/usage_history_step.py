"""One step of bench/usage_history.py, in a fresh process of its own, so that its peak RSS
(VmHWM) is its own:

    python bench/usage_history_step.py STEP SPEC.json

STEP is `customers`, `ingest`, `bind` or `push`; SPEC.json says what to do (the parent writes
it). The step prints one line, RESULT_MARKER followed by its figures as JSON. Its engine time
is measured around metersync's call only: not the interpreter's start, the imports, opening
the store, or generating events. This module imports only what the step itself needs, so that
the peak RSS is metersync's and not the benchmark's.
"""

from __future__ import annotations

import asyncio
import json
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from usage_history_events import EventStream, Expected, customer_record

from metersync.catalog import Catalog
from metersync.catalog.meters import Meter
from metersync.logs import configure_logging
from metersync.pipeline import Pipeline, SyncRun
from metersync.settings import Settings, load_settings
from metersync.store import Store
from metersync.usage.ingest import ingest_json

RESULT_MARKER = "STEP-RESULT "


def status_mb(pid: int | str, field: str) -> float | None:
    """A size from /proc/<pid>/status (VmRSS, VmHWM) in MB; None once the process is gone."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith(field + ":"):
                return round(int(line.split()[1]) / 1024, 1)
    except (OSError, ValueError, IndexError):
        return None
    return None


class Clock:
    """Wall and CPU time (every thread of the process) of the calls it times, added up."""

    def __init__(self) -> None:
        self.wall = 0.0
        self.cpu = 0.0

    def __enter__(self) -> Clock:
        self._wall, self._cpu = time.perf_counter(), time.process_time()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.wall += time.perf_counter() - self._wall
        self.cpu += time.process_time() - self._cpu

    def figures(self) -> dict[str, float]:
        return {"engine_s": round(self.wall, 4), "cpu_s": round(self.cpu, 4)}


def customers(spec: dict[str, Any], settings: Settings, catalog: Catalog) -> dict[str, Any]:
    """The customers, one subject each, synced to Stripe; and the billing meters."""
    created = Clock()
    with created:
        for index in range(spec["customers"]):
            catalog.create_customer(customer_record(index))

    async def sync() -> dict[str, Any]:
        synced, meters = Clock(), Clock()
        async with Pipeline(settings, catalog) as pipeline:
            with synced:
                result = await pipeline.sync_stripe(SyncRun())
            with meters:
                checks = await pipeline.ensure_meters(dry_run=False)
        return {
            **synced.figures(),
            "catalog_s": round(created.wall, 3),
            "meters_s": round(meters.wall, 3),
            "synced": result.counts,
            "failures": (result.applied.failures[:3] if result.applied else []),
            "meters": [c.to_json() for c in checks],
        }

    return asyncio.run(sync())


def ingest(spec: dict[str, Any], settings: Settings, catalog: Catalog) -> dict[str, Any]:
    """`events` events of the stream the spec describes, through ingest_json a chunk at a time;
    what they bill is added to the expected figures."""
    meters = [Meter.of(m) for m in settings.meters]
    expected_path = Path(spec["expected"])
    expected = Expected.load(expected_path, spec["customers"])
    pool = spec.get("pool") or range(spec["customers"])
    stream = EventStream(
        spec["prefix"], spec["events"], spec["start_s"], spec["span_s"], pool, spec["seed"]
    )
    engine, generating = Clock(), Clock()
    totals = {"accepted": 0, "duplicates": 0, "rejected": 0, "subjects_created": 0}
    rejections: list[str] = []
    marks: list[tuple[int, float]] = []  # (events ingested so far, engine seconds so far)
    chunks = stream.chunks(spec["chunk"], expected)
    done = 0
    while True:
        with generating:
            content = next(chunks, None)
        if content is None:
            break
        with engine:
            report = ingest_json(catalog, meters, content)
        done += report.received
        totals["accepted"] += report.accepted
        totals["duplicates"] += report.duplicates
        totals["rejected"] += report.rejected
        totals["subjects_created"] += len(report.subjects_created)
        rejections += [r.reason for r in report.rejections[: 3 - len(rejections)]]
        marks.append((done, round(engine.wall, 4)))
    expected.save(expected_path)
    return {
        **engine.figures(),
        **totals,
        "events": spec["events"],
        "events_per_s": round(spec["events"] / engine.wall) if engine.wall else None,
        "generating_s": round(generating.wall, 3),
        "rejections": rejections,
        "marks": marks,
    }


def bind(spec: dict[str, Any], settings: Settings, catalog: Catalog) -> dict[str, Any]:
    """Usage bound to customers: what a push does first, and a dry run does not."""

    async def run() -> dict[str, Any]:
        async with Pipeline(settings, catalog) as pipeline:
            pusher = pipeline.pusher()
            with Clock() as clock:
                bound = await asyncio.to_thread(
                    pusher.aggregates.bind, catalog.store, pusher.target
                )
        return {**clock.figures(), "bound": bound}

    return asyncio.run(run())


def push(spec: dict[str, Any], settings: Settings, catalog: Catalog) -> dict[str, Any]:
    """One usage push as the CLI runs it (`reconcile --only usage`, with `--dry-run` for a
    plan)."""

    async def run() -> dict[str, Any]:
        async with Pipeline(settings, catalog) as pipeline:
            pipeline.pusher()  # built before the clock starts: the SDK client and the sender
            with Clock() as clock:
                result = await pipeline.push_usage(dry_run=spec["dry_run"])
        return {
            **clock.figures(),
            "counts": result.counts(),
            "bound": result.bound,
            "skipped": len(result.skipped),
            "skipped_reasons": sorted({s.reason for s in result.skipped})[:3],
            "waiting_subjects": result.waiting_subjects,
            "failures": result.failures[:3],
        }

    return asyncio.run(run())


STEPS: dict[str, Callable[[dict[str, Any], Settings, Catalog], dict[str, Any]]] = {
    "customers": customers,
    "ingest": ingest,
    "bind": bind,
    "push": push,
}


def main(argv: list[str]) -> int:
    if len(argv) != 3 or argv[1] not in STEPS:
        print(f"usage: {argv[0]} {{{','.join(STEPS)}}} SPEC.json", file=sys.stderr)
        return 2
    spec = json.loads(Path(argv[2]).read_text())
    settings = load_settings(Path(spec["config"]))
    configure_logging(settings.log.level, settings.log.format)
    catalog = Catalog(
        Store.open(settings.database.url), auto_customer=settings.catalog.auto_customer
    )
    try:
        figures = STEPS[argv[1]](spec, settings, catalog)
    finally:
        catalog.close()
    figures["peak_rss_mb"] = status_mb("self", "VmHWM")
    print(RESULT_MARKER + json.dumps(figures), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
