"""The OpenMeter usage pull's cost: requests, bytes and wall time per pull at 1,000 and 10,000
subjects, against the OpenMeter emulator (in this process, latency 0), on a SQLite file.

Each subject (one per customer) has usage in 6 of the last 48 hours, and one subject in ten in
the open hour. Per size, the pulls are:

* first: the first usage pull (the 35-day backfill);
* tick: one subject in a hundred sends new usage in the open hour;
* idle: nothing changed upstream;
* late: a correction five hours back for one subject, and new usage in the open hour;
* full: `--full`, every window re-read.

The script drives `OpenMeterSource` (`pull_catalog`, `pull_usage`) and nothing newer, so the
same script measures any version of the pull: run it once per version, each under its label.

    .venv/bin/python bench/openmeter_pull.py --label after
    PYTHONPATH=../other-checkout/src .venv/bin/python bench/openmeter_pull.py --label before

Requests are the client's (every attempt); bytes are the answers' bodies; wall time includes
the emulator's own work, which shares this process's interpreter. A pull that runs across the
end of an hour sees one more window change; the table shows the windows each pull read per
subject, and how many of them had usage. Results: bench/results/openmeter_pull.json (every
run, kept per label) and .md; the .md also extrapolates to 1,000,000 subjects (see
`extrapolated`).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import sys
import tempfile
import time
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from emulator import machine, machine_line  # bench/ is on sys.path when run as a script

from metersync.catalog import Catalog
from metersync.catalog.meters import Meter, MeterSettings
from metersync.logs import configure_logging
from metersync.settings import LogLevel, OpenMeterSettings
from metersync.sources.openmeter import OpenMeterSource
from metersync.store import Store
from metersync.testing import OpenMeterEmulator

RESULTS = Path(__file__).resolve().parent / "results"
TOKEN = "om-bench-token"
HOUR = 3600
SCALE_TO = 1_000_000
METER = MeterSettings(
    slug="tokens", event_type="prompt", aggregation="SUM", value_property="$.tokens"
)
STEPS = ("first", "tick", "idle", "late", "full")


def event(name: str, subject: str, at: int, tokens: int) -> dict[str, Any]:
    return {
        "specversion": "1.0",
        "id": name,
        "source": "bench",
        "type": "prompt",
        "subject": subject,
        "time": datetime.fromtimestamp(at, UTC).isoformat().replace("+00:00", "Z"),
        "data": {"tokens": tokens},
    }


def seed(om: OpenMeterEmulator, subjects: int, open_hour: int) -> int:
    """Customers c{i} with subject s{i}, and their usage; returns how many events."""
    for i in range(subjects):
        om.create_customer(f"c{i}", f"C{i}", subject_keys=[f"s{i}"])
    events = [
        event(f"e{i}-{k}", f"s{i}", open_hour - (1 + (i * 7 + k * 8) % 48) * HOUR + 60, 1 + k)
        for i in range(subjects)
        for k in range(6)
    ]
    events += [event(f"o{i}", f"s{i}", open_hour + 30, 2) for i in range(0, subjects, 10)]
    for batch in _batches(events, 5000):
        om.ingest(batch)
    return len(events)


def _batches(items: list[dict[str, Any]], size: int) -> Iterator[list[dict[str, Any]]]:
    for i in range(0, len(items), size):
        yield items[i : i + size]


def new_usage(om: OpenMeterEmulator, subjects: int, open_hour: int, tag: str, offset: int) -> None:
    """One subject in a hundred sends usage in the open hour."""
    om.ingest(event(f"{tag}{i}", f"s{i}", open_hour + 60, 3) for i in range(offset, subjects, 100))


async def measure(
    source: OpenMeterSource, catalog: Catalog, *, full: bool = False
) -> dict[str, Any]:
    """One usage pull: its requests, answer bytes, wall time and counts, and how many windows
    with usage its per-subject answers held (read after the clock stops)."""
    http = source.client.http
    bodies: list[bytes] = []
    per_subject: list[bytes] = []
    original = http.get

    async def counted(*args: Any, **kwargs: Any) -> Any:
        response = await original(*args, **kwargs)
        bodies.append(response.content)
        if ("groupBy", "subject") in list(kwargs.get("params") or ()):
            per_subject.append(response.content)
        return response

    http.get = counted  # type: ignore[method-assign]
    sent = source.client.requests
    started = time.monotonic()
    try:
        result = await source.pull_usage(catalog.store, full=full)
    finally:
        http.get = original  # type: ignore[method-assign]
    wall = time.monotonic() - started
    busy = {row["windowStart"] for body in per_subject for row in json.loads(body)["data"]}
    return {
        "requests": source.client.requests - sent,
        "bytes": sum(len(body) for body in bodies),
        "wall_s": round(wall, 3),
        "windows_with_usage_read": len(busy),
        "counts": dict(result.counts),
    }


async def run_size(subjects: int, scratch: Path) -> dict[str, Any]:
    now = int(time.time())
    open_hour = now // HOUR * HOUR
    with OpenMeterEmulator(token=TOKEN, latency_ms=0) as om:
        om.add_meter("tokens", event_type="prompt", value_property="$.tokens")
        seeded = seed(om, subjects, open_hour)
        store = Store.open(f"sqlite:///{scratch / f'pull-{subjects}.db'}")
        catalog = Catalog(store)
        settings = OpenMeterSettings(url=om.url, token=TOKEN, retries=1, timeout_s=120)
        source = OpenMeterSource(settings, [Meter.of(METER)], window_s=HOUR)
        try:
            await source.pull_catalog(catalog)
            steps = {"first": await measure(source, catalog)}
            new_usage(om, subjects, open_hour, "t", 1)
            steps["tick"] = await measure(source, catalog)
            steps["idle"] = await measure(source, catalog)
            om.ingest([event("late", "s3", open_hour - 5 * HOUR + 120, 100)])
            new_usage(om, subjects, open_hour, "l", 2)
            steps["late"] = await measure(source, catalog)
            steps["full"] = await measure(source, catalog, full=True)
        finally:
            await source.close()
            store.dispose()
    for name, step in steps.items():
        print(
            f"  {subjects:>6} subjects, {name:<5}: {step['requests']:>5} requests, "
            f"{step['bytes'] / 1e6:8.3f} MB, {step['wall_s']:7.3f} s, {step['counts']}",
            flush=True,
        )
    return {"subjects": subjects, "events": seeded, "steps": steps}


def extrapolated(sizes: dict[str, Any]) -> dict[str, Any]:
    """Each step at SCALE_TO subjects, from the smallest and the largest size measured.

    Requests and bytes: the largest size's, plus what grew between the two sizes grown on in
    proportion to the subjects. Requests that batch subjects grow so (before). A pull that
    reads windows per subject (it counts `windows_read`) cuts its reads into time slices of
    fewer windows with usage the more subjects there are, down to one such window a query
    from ROWS_PER_ANSWER subjects on: its requests there are the meters list, the totals, and
    one per window with usage it read (or what it measured, if more). Wall time: the largest
    size's, in proportion to the bytes (reading, parsing and storing rows is most of it)."""
    ordered = sorted(sizes.values(), key=lambda size: int(size["subjects"]))
    small, large = ordered[0], ordered[-1]
    span = large["subjects"] - small["subjects"]

    def grown(name: str, figure: str) -> float:
        a, b = small["steps"][name][figure], large["steps"][name][figure]
        slope = (b - a) / span if span else 0.0
        # Never below the largest size's figure: noise can make a constant dip.
        return float(b + max(slope, 0.0) * (SCALE_TO - large["subjects"]))

    out: dict[str, Any] = {}
    for name in STEPS:
        last = large["steps"][name]
        requests = grown(name, "requests")
        if "windows_read" in last["counts"]:
            requests = 2 + max(last["requests"] - 2, last["windows_with_usage_read"])
        answered = grown(name, "bytes")
        out[name] = {
            "requests": round(requests),
            "bytes": round(answered),
            "wall_s": round(last["wall_s"] * answered / max(last["bytes"], 1), 1),
        }
    return out


def markdown(report: dict[str, Any]) -> str:
    lines = [
        "# OpenMeter usage pull: requests, bytes and wall time per pull",
        "",
        "`python bench/openmeter_pull.py --label LABEL`, one meter (SUM, hourly), one subject "
        "per customer with usage in 6 of the last 48 hours (one in ten in the open hour too), "
        "against the OpenMeter emulator in process on a SQLite file. Steps: **first** (the "
        "35-day backfill), **tick** (1% of subjects send usage in the open hour), **idle** "
        "(nothing changed), **late** (a correction 5 h back and 1% new usage), **full** "
        "(`--full`). Requests include the meters list (1 a pull).",
        "",
        "| label | subjects | step | requests | MB answered | wall s | windows read "
        "per subject | of them with usage | figures changed |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for label, run in report["runs"].items():
        for size in run["sizes"].values():
            for name, step in size["steps"].items():
                counts = step["counts"]
                lines.append(
                    f"| {label} | {size['subjects']:,} | {name} | {step['requests']:,} | "
                    f"{step['bytes'] / 1e6:.3f} | {step['wall_s']:.3f} | "
                    f"{counts.get('windows_read', '-')} | "
                    f"{step.get('windows_with_usage_read', '-')} | {counts.get('changed', 0):,} |"
                )
    lines += [
        "",
        f"## Extrapolated to {SCALE_TO:,} subjects (same usage per subject)",
        "",
        "Requests and bytes: the largest size's, plus what grew between the two sizes grown "
        "on in proportion to the subjects (requests that batch subjects grow so). A pull that "
        "reads windows per subject cuts a long read into time slices of fewer windows with "
        "usage the more subjects there are, down to one such window a query from 100,000 "
        "subjects on: its requests at 1,000,000 are the meters list, the totals and one per "
        "window with usage read. Wall time: the largest size's, in proportion to the bytes. "
        "None of it counts OpenMeter's own time per query (the emulator answers in "
        "milliseconds; ClickHouse behind a real OpenMeter takes tens to hundreds of "
        "milliseconds a query).",
        "",
        "| label | step | requests | GB answered | wall s |",
        "|---|---|---|---|---|",
    ]
    for label, run in report["runs"].items():
        for name, step in run["extrapolated"].items():
            lines.append(
                f"| {label} | {name} | {step['requests']:,} | {step['bytes'] / 1e9:.2f} | "
                f"{step['wall_s']:,} |"
            )
    lines += [""]
    for label, run in report["runs"].items():
        lines.append(
            f"- **{label}**: {run['date']}, {run['machine_line']}; {run['wall_s']} s in all."
            + (f" {run['note']}" if run["note"] else "")
        )
    return "\n".join(lines) + "\n"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--label", default="run", help="stored under this name (before, after)")
    parser.add_argument("--subjects", default="1000,10000", help="sizes, comma-separated")
    parser.add_argument("--output", type=Path, default=RESULTS)
    parser.add_argument("--note", default="", help="stored with the run: what was measured")
    args = parser.parse_args()
    sizes = [int(s) for s in args.subjects.split(",")]
    if any(s < 1 for s in sizes):
        parser.error("--subjects: every size must be at least 1")
    configure_logging(LogLevel.WARNING)
    info = machine()
    print(machine_line(info), flush=True)
    started = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="bench-openmeter-pull-") as scratch:
        measured = {str(n): asyncio.run(run_size(n, Path(scratch))) for n in sizes}
    run = {
        "date": datetime.now(UTC).isoformat(timespec="seconds"),
        "note": args.note,
        "machine": info,
        "machine_line": machine_line(info),
        "sizes": measured,
        "extrapolated": extrapolated(measured),
        "wall_s": round(time.monotonic() - started, 1),
    }
    path = args.output / "openmeter_pull.json"
    report: dict[str, Any] = {"benchmark": "openmeter_pull", "runs": {}}
    if path.exists():
        with contextlib.suppress(ValueError):
            report["runs"] = json.loads(path.read_text()).get("runs", {})
    report["runs"][args.label] = run
    args.output.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(report, indent=2) + "\n")
    (args.output / "openmeter_pull.md").write_text(markdown(report))
    for name, step in run["extrapolated"].items():
        print(
            f"at {SCALE_TO:,} subjects, {name}: {step['requests']:,} requests, "
            f"{step['bytes'] / 1e9:.2f} GB, {step['wall_s']:,} s"
        )
    print(f"results in {path} [{args.label}]")
    return 0


if __name__ == "__main__":
    sys.exit(main())
