"""Meter event push throughput, and a 100,000-customer push checked customer by customer.

The push under test is metersync's own (`Pipeline.pusher()`, the `UsagePusher` that
`metersync reconcile` runs, built from settings as the CLI builds it), sending through the real
stripe SDK over HTTP to the Stripe emulator in a process of its own. Three cases:

1. **v1** (`/v1/billing/meter_events`, one request per event), the emulator at 200 ms and with
   Stripe's live limits, metersync configured for 1,000 meter events/s and 256 lanes (Stripe
   takes one concurrent v1 call per customer and meter: 5,000 customers × 5 meters, one
   window, keep ~200 in flight): the rate achieved while sending ≥ 0.9 × 1,000/s.
2. **v2** (a meter event session and `/v2/billing/meter_event_stream`, ≤ 100 events a
   request) at 200 ms: ≥ 14,000 meter events/s from one metersync process while it sends,
   with that process's CPU time and share of one core.
3. **End to end**: 100,000 customers × 5 meters × one hour of usage, ingested through the
   real ingest path (`ingest_file`; each subject brings its customer, as the catalog's
   auto-customer rule makes it), synced to the emulator by metersync's customer sync (latency
   0, timed apart), then ONE push through the v2 stream at 200 ms: its wall and CPU time; then
   Stripe's hourly summaries must equal, for every customer and meter, the figures this script
   computes from the events it generated (not from metersync's aggregates). The summaries are
   read from the emulator's own summary computation, one read per meter
   (`GET /_emulator/meter_event_summaries`): through the summaries endpoint, 500,000 reads
   each scanning 500,000 events would take hours. A sample is also read through the endpoint
   itself, and must agree.

Which push: the push measured in cases 1 to 3 is a tick. Each meter's first push runs during
set-up, before any usage exists (as a deployment's first tick does), and sets the meter's
cursor; the usage then ingested is pushed by one push that walks the changed cells chunk by
chunk (usage.due sizes them), each chunk planned, written and sent (one `send`, all its
requests at once) before the next. A fourth case, **first**, measures a meter's first push
over usage already there, for context: it walks every customer with usage instead.

Processes: the emulator runs in a process of its own (bench/emulator.py --serve) and every
metersync step in a fresh process of this script (--worker setup|push), so the CPU time of a
push (time.process_time: every thread) and its peak RSS (VmHWM) are that process's alone. The
send phase is timed around the push's sink (`MeterEventSink.send`, the port the push sends
through): from the first event handed to the sender to the last answer.

Emulator limits during each push: Stripe's live ones (100 ordinary calls/s, 1,000 v1 meter
events/s, 10,000 stream requests/s, each with a bucket of one second); during set-up none,
and latency 0. The emulator does not enforce Stripe's one-concurrent-v1-call per customer and
meter; the sender keeps it by construction (its lanes).

    .venv/bin/python bench/usage_throughput.py           # the full run, about 15 minutes
    .venv/bin/python bench/usage_throughput.py --quick   # small sizes, seconds; writes nothing

Writes bench/results/usage_throughput.json and .md; exits 1 if a target is missed.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import dataclasses
import datetime as dt
import json
import os
import random
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

# bench/emulator.py and bench/customers.py: the emulator process, the machine, process CPU,
# the emulator's control endpoints and the request counts.
sys.path.insert(0, str(Path(__file__).resolve().parent))
from customers import Emulator, delta, non_2xx, peak_rss_mb, source_state
from emulator import emulator_process, machine, machine_line, process_cpu_seconds, versions

API_KEY = "sk_test_bench"  # customers.Emulator reads the emulator with this key too
RESULTS_DIR = Path(__file__).resolve().parent / "results"
RESULT_MARKER = "WORKER-RESULT "
HOUR = 3600

TARGET_V1_SHARE = 0.9  # of the configured meter event rate
TARGET_V2_EVENTS_PER_S = 14_000.0

# Stripe's live limits (docs/design.md, "Stripe semantics"), set on the emulator for the pushes.
LIVE_LIMITS = {
    "rate_limit": 100,
    "meter_event_rate_limit": 1000,
    "meter_event_stream_rate_limit": 10_000,
    "burst": None,  # one second's worth per class
}
NO_LIMITS = {
    "latency_ms": 0,
    "jitter_ms": 0,
    "rate_limit": None,
    "meter_event_rate_limit": None,
    "meter_event_stream_rate_limit": None,
    "burst": None,
}

# The five meters: (slug, aggregation, the event's data field, the largest value). One event
# type carries all four fields, so each event counts on every meter. Values start at 1, so
# every customer has a non-zero total, hence exactly one report, on each meter.
METERS: tuple[tuple[str, str, str | None, int], ...] = (
    ("tokens", "SUM", "tokens", 5000),
    ("input_kb", "SUM", "input_kb", 2000),
    ("output_kb", "SUM", "output_kb", 800),
    ("images", "SUM", "images", 4),
    ("calls", "COUNT", None, 0),
)
EVENT_TYPE = "api_call"


def config_toml() -> str:
    parts = ['[usage]\nwindow = "1h"\n']
    for slug, aggregation, field, _ in METERS:
        parts.append(
            f'\n[[meters]]\nslug = "{slug}"\nevent_type = "{EVENT_TYPE}"\n'
            f'aggregation = "{aggregation}"\n'
            + (f'value_property = "$.{field}"\n' if field else "")
            + f'[meters.stripe]\nevent_name = "bench_{slug}"\n'
        )
    return "".join(parts)


@dataclasses.dataclass(frozen=True)
class Case:
    name: str  # v1 | v2 | e2e
    customers: int
    api: str  # v1 | v2
    rate: float  # metersync's usage.meter_event_rate (events/s on v1, requests/s on v2)
    concurrency: int  # usage.concurrency
    # The measured push is each meter's first (it walks every customer with usage); else a
    # push before the usage arrived set the meters' cursors and it walks the changed cells.
    first_push: bool = False


# -- the workload ---------------------------------------------------------------------------------


def customer_key(index: int) -> str:
    return f"cust-{index:06d}"


def write_events(
    path: Path, customers: int, per_customer: int, hour: int, seed: int
) -> dict[str, list[int]]:
    """`per_customer` events per customer at random seconds of the hour starting at `hour`, as
    NDJSON at `path`; returns what each meter should total per customer (by customer index),
    computed from these events alone."""
    rng = random.Random(seed)
    expected = {slug: [0] * customers for slug, *_ in METERS}
    with path.open("w") as out:
        for index in range(customers):
            key = customer_key(index)
            for n in range(per_customer):
                data = {field: rng.randint(1, top) for _, _, field, top in METERS if field}
                for slug, aggregation, field, _ in METERS:
                    expected[slug][index] += 1 if aggregation == "COUNT" else data[str(field)]
                moment = dt.datetime.fromtimestamp(hour + rng.randrange(HOUR), dt.UTC)
                event = {
                    "specversion": "1.0",
                    "id": f"{key}-{n}",
                    "source": "bench/usage_throughput",
                    "type": EVENT_TYPE,
                    "subject": key,
                    "time": moment.isoformat().replace("+00:00", "Z"),
                    "data": data,
                }
                out.write(json.dumps(event, separators=(",", ":")) + "\n")
    return expected


# -- the workers: each a fresh metersync process --------------------------------------------------


def _settings() -> Any:
    from metersync.logs import configure_logging
    from metersync.settings import LogLevel, load_settings

    settings = load_settings()  # METERSYNC_CONFIG and METERSYNC_* from run_worker, as the CLI
    configure_logging(LogLevel.WARNING)
    return settings


def _catalog(settings: Any) -> Any:
    from metersync.catalog import Catalog
    from metersync.store import Store

    return Catalog(Store.open(settings.database.url), auto_customer=settings.catalog.auto_customer)


def _timed(figures: dict[str, Any], name: str, started: float, cpu: float) -> None:
    figures[name] = {
        "wall_s": round(time.perf_counter() - started, 3),
        "cpu_s": round(time.process_time() - cpu, 3),
    }


def setup_worker(events_path: Path, first_push: bool) -> dict[str, Any]:
    """Make the meters exist and, unless the case measures a meter's first push, push once
    before any usage exists (which sets each meter's cursor, as a deployment's first tick
    does); then ingest the events and sync the customers they brought."""
    from metersync.catalog.meters import Meter
    from metersync.pipeline import Pipeline, SyncRun
    from metersync.usage.ingest import ingest_file

    settings = _settings()
    catalog = _catalog(settings)
    figures: dict[str, Any] = {}

    async def before_usage() -> None:
        async with Pipeline(settings, catalog) as pipeline:
            started, cpu = time.perf_counter(), time.process_time()
            checks = await pipeline.ensure_meters(dry_run=False)
            _timed(figures, "ensure_meters", started, cpu)
            figures["ensure_meters"]["outcomes"] = [str(c.outcome) for c in checks]
            if not first_push:
                started, cpu = time.perf_counter(), time.process_time()
                primed = await pipeline.push_usage()
                _timed(figures, "push_before_usage", started, cpu)
                figures["push_before_usage"]["counts"] = primed.counts()

    async def customers() -> None:
        async with Pipeline(settings, catalog) as pipeline:
            started, cpu = time.perf_counter(), time.process_time()
            synced = await pipeline.sync_stripe(SyncRun())
            _timed(figures, "customer_sync", started, cpu)
            figures["customer_sync"]["outcomes"] = synced.counts

    asyncio.run(before_usage())
    started, cpu = time.perf_counter(), time.process_time()
    with events_path.open("rb") as events:  # as `metersync events ingest FILE` reads it
        report = ingest_file(catalog, [Meter.of(m) for m in settings.meters], events)
    _timed(figures, "ingest", started, cpu)
    figures["ingest"].update(
        accepted=report.accepted,
        rejected=len(report.rejections),
        subjects_created=len(report.subjects_created),
    )
    asyncio.run(customers())
    catalog.close()
    figures["peak_rss_mb"] = peak_rss_mb()
    return figures


class TimedSink:
    """The push's meter event sink, timed: how long its sends took, what they cost this
    process and the emulator, and how many events went through."""

    def __init__(self, sink: Any, emulator_pid: int) -> None:
        self.sink = sink
        self.emulator_pid = emulator_pid
        self.calls = 0
        self.events = 0
        self.wall_s = 0.0
        self.cpu_s = 0.0
        self.emulator_cpu_s: float | None = 0.0

    async def send(self, events: Sequence[Any]) -> list[Any]:
        emulator_before = process_cpu_seconds(self.emulator_pid)
        started, cpu = time.perf_counter(), time.process_time()
        try:
            return list(await self.sink.send(events))
        finally:
            self.wall_s += time.perf_counter() - started
            self.cpu_s += time.process_time() - cpu
            emulator_after = process_cpu_seconds(self.emulator_pid)
            if emulator_before is None or emulator_after is None or self.emulator_cpu_s is None:
                self.emulator_cpu_s = None
            else:
                self.emulator_cpu_s += emulator_after - emulator_before
            self.calls += 1
            self.events += len(events)


def push_worker(emulator_pid: int) -> dict[str, Any]:
    """One push, as `metersync reconcile --only usage` runs it, its sink timed."""
    from metersync.pipeline import Pipeline
    from metersync.targets.stripe import MeterEventSender

    settings = _settings()
    catalog = _catalog(settings)
    figures: dict[str, Any] = {}

    async def push() -> None:
        async with Pipeline(settings, catalog) as pipeline:
            pusher = pipeline.pusher()
            sender = pusher.sink
            assert isinstance(sender, MeterEventSender)
            timed = TimedSink(sender, emulator_pid)
            started, cpu = time.perf_counter(), time.process_time()
            result = await dataclasses.replace(pusher, sink=timed).run()
            _timed(figures, "push", started, cpu)
            limiter = sender.limiter.stats
            figures.update(
                counts=result.counts(),
                failures=result.failures[:3],
                skipped=len(result.skipped),
                send={
                    "calls": timed.calls,
                    "events": timed.events,
                    "wall_s": round(timed.wall_s, 3),
                    "cpu_s": round(timed.cpu_s, 3),
                    "emulator_cpu_s": (
                        None if timed.emulator_cpu_s is None else round(timed.emulator_cpu_s, 3)
                    ),
                },
                sender={
                    "api": sender.api,
                    "rate": sender.limiter.rate,
                    "concurrency": sender.concurrency,
                    "sessions_created": sender.sessions_created,
                    "limiter_waited_s": round(limiter.waited_s, 2),
                    "throttled": limiter.throttled,
                },
            )

    asyncio.run(push())
    catalog.close()
    figures["peak_rss_mb"] = peak_rss_mb()
    return figures


def worker(args: argparse.Namespace) -> int:
    if args.worker == "setup":
        figures = setup_worker(Path(args.events), args.first_push)
    else:
        figures = push_worker(args.emulator_pid)
    print(RESULT_MARKER + json.dumps(figures), flush=True)
    return 0


def run_worker(kind: str, env: dict[str, str], extra: list[str], timeout: float) -> dict[str, Any]:
    command = [sys.executable, str(Path(__file__).resolve()), "--worker", kind, *extra]
    done = subprocess.run(
        command, env=env, stdout=subprocess.PIPE, text=True, timeout=timeout, check=False
    )
    lines = [x for x in done.stdout.splitlines() if x.startswith(RESULT_MARKER)]
    if done.returncode != 0 or not lines:
        raise RuntimeError(f"the {kind} worker failed (exit code {done.returncode})")
    figures: dict[str, Any] = json.loads(lines[-1][len(RESULT_MARKER) :])
    return figures


def worker_env(case: Case, scratch: Path, emulator_url: str) -> dict[str, str]:
    """The settings of a run, as a deployment gives them: the TOML file and METERSYNC_*."""
    config = scratch / "metersync.toml"
    config.write_text(config_toml())
    base = {k: v for k, v in os.environ.items() if not k.startswith(("METERSYNC_", "STRIPE_"))}
    return {
        **base,
        "METERSYNC_CONFIG": str(config),
        "METERSYNC_DATABASE_URL": f"sqlite:///{scratch / 'metersync.db'}",
        "STRIPE_API_KEY": API_KEY,
        "METERSYNC_STRIPE_API_BASE": emulator_url,
        # Set-up runs at latency 0 with the emulator's limits off: the engine's out of the way.
        "METERSYNC_SYNC_RATE_LIMIT": "1000000",
        "METERSYNC_SYNC_CONCURRENCY": "64",
        "METERSYNC_USAGE_STRIPE_API": case.api,
        "METERSYNC_USAGE_METER_EVENT_RATE": str(case.rate),
        "METERSYNC_USAGE_CONCURRENCY": str(case.concurrency),
        "METERSYNC_LOG_LEVEL": "warning",
    }


# -- what the emulator saw ------------------------------------------------------------------------

PUSH_ENDPOINTS = ("billing.meter_events.create", "v2.billing.meter_event_stream.create")


def arrivals(emulator: Emulator, requests: int) -> dict[str, Any]:
    """The last `requests` meter event requests as the emulator logged them: when the first
    arrived and the last was answered, how long each took inside the emulator (the latency it
    adds, and its handling), and how many it held at once on average: a sender that keeps its
    lanes full holds about its concurrency."""
    log = emulator.http.get("/_emulator/requests")
    log.raise_for_status()
    entries = [e for e in log.json()["data"] if e["endpoint"] in PUSH_ENDPOINTS][-requests:]
    if not entries:
        return {}
    first = min(e["time"] for e in entries)
    last = max(e["time"] + e["duration_ms"] / 1000 for e in entries)
    durations = sorted(e["duration_ms"] for e in entries)
    span = last - first
    return {
        "requests": len(entries),
        "span_s": round(span, 3),
        "server_ms_p50": durations[len(durations) // 2],
        "server_ms_p99": durations[min(len(durations) - 1, int(len(durations) * 0.99))],
        "held_on_average": round(sum(durations) / 1000 / span, 1) if span else None,
    }


# -- what Stripe holds ----------------------------------------------------------------------------


def stripe_keys(emulator: Emulator) -> dict[str, int]:
    """Stripe customer id → the index of the local customer its metersync_key names."""
    keys = {}
    for customer in emulator.customers():
        key = (customer.get("metadata") or {}).get("metersync_key", "")
        if key.startswith("cust-"):
            keys[customer["id"]] = int(key.removeprefix("cust-"))
    return keys


def meter_ids(emulator: Emulator) -> dict[str, str]:
    listed = emulator.http.get(
        "/v1/billing/meters",
        params={"limit": 100},
        headers={"Authorization": f"Bearer {API_KEY}"},
    )
    listed.raise_for_status()
    return {m["event_name"]: m["id"] for m in listed.json()["data"]}


def hourly_summaries(emulator: Emulator, meter_id: str, hour: int) -> list[dict[str, Any]]:
    """Every customer's hourly summaries of the meter from the hour before to the hour after
    the usage hour (usage stamped into a wrong window shows up as a second summary)."""
    read = emulator.http.get(
        "/_emulator/meter_event_summaries",
        params={
            "meter": meter_id,
            "start_time": hour - HOUR,
            "end_time": hour + 2 * HOUR,
            "value_grouping_window": "hour",
        },
    )
    read.raise_for_status()
    data: list[dict[str, Any]] = read.json()["data"]
    return data


def compare(
    emulator: Emulator, expected: dict[str, list[int]], hour: int, sample: int, seed: int
) -> dict[str, Any]:
    """Stripe's hourly summaries against the expected figures, every customer and meter."""
    started = time.perf_counter()
    keys = stripe_keys(emulator)
    listed_s = time.perf_counter() - started
    ids = meter_ids(emulator)
    customers = len(next(iter(expected.values())))
    mismatches: list[dict[str, Any]] = []
    pairs: list[tuple[str, str, int]] = []  # (meter id, Stripe customer id, expected)
    started = time.perf_counter()
    for slug, wanted in expected.items():
        meter_id = ids.get(f"bench_{slug}")
        if meter_id is None:
            mismatches.append({"meter": slug, "problem": "no such meter in Stripe"})
            continue
        seen = set()
        for entry in hourly_summaries(emulator, meter_id, hour):
            index = keys.get(entry["customer"])
            got = [(s["start_time"], s["aggregated_value"]) for s in entry["summaries"]]
            if index is None:
                mismatches.append({"meter": slug, "stripe_customer": entry["customer"], "got": got})
                continue
            seen.add(index)
            pairs.append((meter_id, entry["customer"], wanted[index]))
            if got != [(hour, wanted[index])]:
                mismatches.append(
                    {
                        "meter": slug,
                        "customer": customer_key(index),
                        "want": wanted[index],
                        "got": got,
                    }
                )
        for index in sorted(set(range(customers)) - seen):
            mismatches.append(
                {"meter": slug, "customer": customer_key(index), "want": wanted[index], "got": []}
            )
    read_s = time.perf_counter() - started
    # The bulk read must say what the summaries endpoint says: a sample, through the endpoint.
    rng = random.Random(seed)
    endpoint_disagrees = []
    started = time.perf_counter()
    for meter_id, customer, wanted_value in rng.sample(pairs, min(sample, len(pairs))):
        answer = emulator.http.get(
            f"/v1/billing/meters/{meter_id}/event_summaries",
            params={"customer": customer, "start_time": hour, "end_time": hour + HOUR},
            headers={"Authorization": f"Bearer {API_KEY}"},
        )
        answer.raise_for_status()
        [summary] = answer.json()["data"]
        if summary["aggregated_value"] != wanted_value:
            endpoint_disagrees.append(
                {"meter": meter_id, "customer": customer, "want": wanted_value, "got": summary}
            )
    return {
        "customers_in_stripe": len(keys),
        "cells_checked": customers * len(expected),
        "mismatches": len(mismatches),
        "mismatch_samples": mismatches[:10],
        "endpoint_sample": min(sample, len(pairs)),
        "endpoint_disagrees": endpoint_disagrees[:10],
        "list_customers_s": round(listed_s, 2),
        "read_summaries_s": round(read_s, 2),
        "endpoint_sample_s": round(time.perf_counter() - started, 2),
    }


# -- a case ---------------------------------------------------------------------------------------


def run_case(
    case: Case, emulator: Emulator, scratch: Path, args: argparse.Namespace
) -> dict[str, Any]:
    folder = scratch / case.name
    folder.mkdir()
    hour = int(time.time()) // HOUR * HOUR - HOUR  # the last whole hour
    events_path = folder / "events.ndjson"
    started = time.perf_counter()
    expected = write_events(events_path, case.customers, args.events_per_customer, hour, args.seed)
    generated_s = time.perf_counter() - started
    events = case.customers * args.events_per_customer
    print(
        f"  {events:,} events for {case.customers:,} customers × {len(METERS)} meters in the "
        f"hour from {dt.datetime.fromtimestamp(hour, dt.UTC):%H:%M} UTC ({generated_s:.1f} s)",
        flush=True,
    )
    env = worker_env(case, folder, emulator.url)
    emulator.reset()
    emulator.configure(**NO_LIMITS)
    extra = ["--events", str(events_path)] + (["--first-push"] if case.first_push else [])
    setup = run_worker("setup", env, extra, args.timeout)
    print(
        "  set-up (latency 0): ingest {i[wall_s]:.1f} s ({i[accepted]:,} events, "
        "{i[subjects_created]:,} subjects and customers); customer sync {s[wall_s]:.1f} s "
        "(CPU {s[cpu_s]:.1f} s, {o}); meters {m[wall_s]:.1f} s".format(
            i=setup["ingest"],
            s=setup["customer_sync"],
            o=setup["customer_sync"]["outcomes"],
            m=setup["ensure_meters"],
        ),
        flush=True,
    )
    emulator.configure(latency_ms=args.latency_ms, jitter_ms=0, **LIVE_LIMITS)
    before = emulator.counts()
    emulator_before = emulator.cpu()
    push = run_worker("push", env, ["--emulator-pid", str(emulator.pid)], args.timeout)
    emulator_after = emulator.cpu()
    requests = delta(before, emulator.counts())
    seen = arrivals(emulator, sum(sum(requests.get(e, {}).values()) for e in PUSH_ENDPOINTS))
    emulator.configure(**NO_LIMITS)
    send = push["send"]
    send_rate = send["events"] / send["wall_s"] if send["wall_s"] else 0.0
    push_rate = send["events"] / push["push"]["wall_s"] if push["push"]["wall_s"] else 0.0
    emulator_share = (
        send["emulator_cpu_s"] / send["wall_s"]
        if send["emulator_cpu_s"] is not None and send["wall_s"]
        else None
    )
    print(
        f"  push at {args.latency_ms:g} ms: {push['counts']}; sending {send['events']:,} events "
        f"({send['calls']} sends) took {send['wall_s']:.2f} s = {send_rate:,.0f} events/s "
        f"(CPU {send['cpu_s']:.2f} s = "
        f"{send['cpu_s'] / send['wall_s'] * 100 if send['wall_s'] else 0:.0f}% of a core; "
        f"emulator {emulator_share * 100 if emulator_share is not None else float('nan'):.0f}%"
        f"); whole push {push['push']['wall_s']:.2f} s, CPU {push['push']['cpu_s']:.2f} s = "
        f"{push_rate:,.0f} events/s; requests {requests}",
        flush=True,
    )
    if seen:
        print(
            f"  the emulator saw {seen['requests']:,} meter event requests over "
            f"{seen['span_s']:.2f} s, each {seen['server_ms_p50']:.0f} ms inside it (p50; p99 "
            f"{seen['server_ms_p99']:.0f} ms), {seen['held_on_average']} held at once on average",
            flush=True,
        )
    check = compare(emulator, expected, hour, args.endpoint_sample, args.seed)
    print(
        f"  Stripe's hourly summaries against the generated events: {check['cells_checked']:,} "
        f"(customer, meter) figures, {check['mismatches']} mismatches; "
        f"{len(check['endpoint_disagrees'])} of {check['endpoint_sample']} sampled through the "
        f"summaries endpoint disagree (read in {check['read_summaries_s']:.1f} s, customers "
        f"listed in {check['list_customers_s']:.1f} s)",
        flush=True,
    )
    for sample in check["mismatch_samples"][:3]:
        print(f"    mismatch: {sample}", flush=True)
    return {
        "case": dataclasses.asdict(case),
        "hour": hour,
        "events": events,
        "generate_s": round(generated_s, 2),
        "setup": setup,
        "push": push,
        "send_rate": round(send_rate, 1),
        "push_rate": round(push_rate, 1),
        "send_cpu_share": round(send["cpu_s"] / send["wall_s"], 3) if send["wall_s"] else None,
        "emulator_cpu_share_while_sending": (
            None if emulator_share is None else round(emulator_share, 3)
        ),
        "emulator_cpu_during_push_s": (
            None
            if emulator_before is None or emulator_after is None
            else round(emulator_after - emulator_before, 2)
        ),
        "requests": requests,
        "non_2xx": non_2xx(requests),
        "emulator_saw": seen,
        "check": check,
    }


# -- verdicts and the report ----------------------------------------------------------------------


def verdicts(results: dict[str, dict[str, Any]], args: argparse.Namespace) -> list[dict[str, Any]]:
    """One row per figure: PASS or FAIL against its target, or INFO (no target; and the rates
    of a --quick run, whose sizes are too small for a rate to mean anything)."""
    rows: list[dict[str, Any]] = []

    def add(metric: str, value: str, target: str, ok: bool | None) -> None:
        result = "INFO" if ok is None else "PASS" if ok else "FAIL"
        rows.append({"metric": metric, "value": value, "target": target, "result": result})

    def rate(ok: bool) -> bool | None:
        return None if args.quick else ok

    for name, result in results.items():
        counts = result["push"]["counts"]
        reports = result["case"]["customers"] * len(METERS)  # one per customer and meter
        complete = (
            counts.get("delivered", 0) == reports
            and not counts.get("failed")
            and result["check"]["mismatches"] == 0
            and not result["check"]["endpoint_disagrees"]
        )
        add(
            f"{name}: every report delivered, Stripe's summaries equal the generated figures",
            f"{counts}; {result['check']['mismatches']} mismatches of "
            f"{result['check']['cells_checked']:,}",
            f"{reports:,} delivered, 0 failed, 0 mismatches",
            complete,
        )
    if "v1" in results:
        v1 = results["v1"]
        target = TARGET_V1_SHARE * args.v1_rate
        add(
            "v1: meter events/s while sending",
            f"{v1['send_rate']:,.0f}/s ({v1['push']['send']['events']:,} in "
            f"{v1['push']['send']['wall_s']:.2f} s)",
            f"≥ {target:,.0f}/s (0.9 × {args.v1_rate:,.0f}/s)",
            rate(v1["send_rate"] >= target),
        )
    for name in ("v2", "first", "e2e"):
        if name not in results:
            continue
        case = results[name]
        send = case["push"]["send"]
        add(
            f"{name}: meter events/s while sending on the v2 stream, one process",
            f"{case['send_rate']:,.0f}/s ({send['events']:,} in {send['wall_s']:.2f} s; CPU "
            f"{send['cpu_s']:.2f} s = {case['send_cpu_share'] * 100:.0f}% of one core)",
            f"≥ {TARGET_V2_EVENTS_PER_S:,.0f}/s" if name == "v2" else "",
            rate(case["send_rate"] >= TARGET_V2_EVENTS_PER_S) if name == "v2" else None,
        )
    if "e2e" in results:
        e2e = results["e2e"]
        push, setup = e2e["push"]["push"], e2e["setup"]
        add(
            "e2e: the one push, wall and CPU",
            f"{push['wall_s']:.1f} s wall, CPU {push['cpu_s']:.1f} s "
            f"({push['cpu_s'] / push['wall_s'] * 100:.0f}% of a core), {e2e['push_rate']:,.0f} "
            f"reports/s overall; peak RSS {e2e['push']['peak_rss_mb']} MB",
            "",
            None,
        )
        add(
            "e2e: set-up (latency 0), ingest and customer sync",
            f"ingest {setup['ingest']['wall_s']:.1f} s (CPU {setup['ingest']['cpu_s']:.1f} s), "
            f"customer sync {setup['customer_sync']['wall_s']:.1f} s (CPU "
            f"{setup['customer_sync']['cpu_s']:.1f} s)",
            "",
            None,
        )
    return rows


def markdown(report: dict[str, Any]) -> str:
    p = report["parameters"]
    lines = [
        "# Meter event push throughput",
        "",
        f"Run {report['date']} with `{report['command']}`, {report['wall_s']:.0f} s in all, on "
        f"the engine at commit `{report['source']['commit']}`"
        + (" (src/ had local changes)" if report["source"]["src_changes"] else "")
        + ".",
        "",
        f"**{report['result']}**"
        + (": every target met." if report["result"] == "PASS" else ": a target was missed."),
        "",
        "| metric | value | target | result |",
        "|---|---|---|---|",
    ]
    lines += [
        f"| {r['metric']} | {r['value']} | {r['target']} | {r['result']} |"
        for r in report["verdict"]
    ]
    lines += [
        "",
        machine_line(report["machine"]) + f"; at the end {report['load_average_at_end']}.",
    ]
    lines += [
        "",
        "## How",
        "",
        f"- The push is metersync's own: `Pipeline.pusher()` built from a TOML file and "
        f"`METERSYNC_*` variables as the CLI builds it, run in a fresh process per push "
        f"(`UsagePusher.run`, its `MeterEventSink` wrapped to time the sends), through the "
        f"stripe SDK ({report['versions'].get('stripe', '?')}, aiohttp) to the emulator in its "
        f"own process, over HTTP on 127.0.0.1. SQLite catalog.",
        f"- Workload: {p['events_per_customer']} `{EVENT_TYPE}` events per customer at random "
        f"seconds of the last whole hour, each counting on {len(METERS)} meters "
        f"({', '.join(f'{s} {a}' for s, a, *_ in METERS)}; Stripe `sum` meters, hourly "
        "windows): one report per customer and meter.",
        "- Set-up of each case (timed apart, not measured against a target), with the emulator "
        "at latency 0 and no limits: `ensure_meters`; each meter's first push, before any usage "
        "exists (it sets the meter's cursor, as a deployment's first tick does; not in case "
        "`first`); the events through `ingest_file` (as `metersync events ingest` reads a "
        "file; each new subject brings its customer); `sync_stripe` (customer sync, 64 at "
        "once, the engine's limiter out of the way).",
        "- So the measured push of v1, v2 and e2e is a tick over changed cells, chunk by chunk "
        "(`usage.due` sizes the chunks), each planned, written and sent (one `send`, all its "
        "requests at once) before the next; each send waits for its last answer, so at 200 ms "
        "a chunk takes at least one round trip (the table gives the number of sends: one a "
        "chunk). Case `first` is a meter's first push over usage already stored: it "
        "walks every customer with usage, chunk after chunk.",
        f"- Each push: the emulator at {p['latency_ms']:g} ms (no jitter) with Stripe's live "
        "limits (100 ordinary calls/s, 1,000 v1 meter events/s, 10,000 stream requests/s). "
        "Rate while sending = events ÷ the time inside the sink's `send` (the first event "
        "handed to the sender to the last answer); CPU is the push process's "
        "(`time.process_time`, every thread) over the same span.",
        "- The check: Stripe customers listed (their `metersync_key`), then one read per meter "
        "of every customer's hourly summaries from the hour before to the hour after "
        "(`GET /_emulator/meter_event_summaries`, the emulator's own summary computation; "
        "500,000 reads through the summaries endpoint, each scanning every event, would take "
        "hours), each customer must hold exactly one summary, in the usage hour, equal to the "
        "figure computed from the generated events. A random sample is also read through "
        "`/v1/billing/meters/{id}/event_summaries` and must agree.",
        "",
        "## Cases",
        "",
        "| case | customers × meters | API, rate, lanes | set-up: ingest / customer sync | "
        "push wall / CPU | sending: sends, wall, events/s, CPU (% core) | emulator while sending | "
        "requests | mismatches |",
        "|---|--:|---|---|---|---|--:|---|--:|",
    ]
    for name, r in report["cases"].items():
        c, s, push, send = r["case"], r["setup"], r["push"]["push"], r["push"]["send"]
        emulator_share = r["emulator_cpu_share_while_sending"]
        lines.append(
            f"| {name} | {c['customers']:,} × {len(METERS)} | {c['api']}, {c['rate']:g}/s, "
            f"{c['concurrency']} | {s['ingest']['wall_s']:.1f} s / "
            f"{s['customer_sync']['wall_s']:.1f} s | {push['wall_s']:.2f} s / "
            f"{push['cpu_s']:.2f} s | {send['calls']}, {send['wall_s']:.2f} s, "
            f"{r['send_rate']:,.0f}/s, "
            f"{send['cpu_s']:.2f} s ({r['send_cpu_share'] * 100:.0f}%) | "
            f"{'?' if emulator_share is None else f'{emulator_share * 100:.0f}%'} | "
            f"{r['requests']} | {r['check']['mismatches']} |"
        )
    lines.append("")
    for name, r in report["cases"].items():
        s = r["setup"]
        saw = r["emulator_saw"]
        lines.append(
            f"- **{name}**: push counts {r['push']['counts']}; sender {r['push']['sender']}; "
            + (
                f"the emulator saw {saw['requests']:,} meter event requests over "
                f"{saw['span_s']:.2f} s, each {saw['server_ms_p50']:.0f} ms inside it (p50; "
                f"p99 {saw['server_ms_p99']:.0f} ms), {saw['held_on_average']} at once on "
                "average; "
                if saw
                else ""
            )
            + f"push process peak RSS {r['push']['peak_rss_mb']} MB; set-up: ingest "
            f"{s['ingest']['wall_s']:.1f} s (CPU {s['ingest']['cpu_s']:.1f} s), customer sync "
            f"{s['customer_sync']['wall_s']:.1f} s (CPU {s['customer_sync']['cpu_s']:.1f} s, "
            f"{s['customer_sync']['outcomes']}), peak RSS {s['peak_rss_mb']} MB; the check: "
            f"{r['check']['customers_in_stripe']:,} Stripe customers listed in "
            f"{r['check']['list_customers_s']:.1f} s, summaries read in "
            f"{r['check']['read_summaries_s']:.1f} s, {r['check']['endpoint_sample']} sampled "
            f"through the endpoint ({len(r['check']['endpoint_disagrees'])} disagree)."
        )
    return "\n".join(lines) + "\n"


# -- main -----------------------------------------------------------------------------------------


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description="Meter event push throughput (v1, v2) and a 100,000-customer push checked "
        "customer by customer."
    )
    parser.add_argument(
        "--quick", action="store_true", help="small sizes, seconds; writes no files"
    )
    parser.add_argument(
        "--cases",
        default="v1,v2,first,e2e",
        help="which cases, comma-separated (default v1,v2,first,e2e)",
    )
    parser.add_argument("--v1-customers", type=int, default=None, help="default 5,000")
    parser.add_argument("--v1-rate", type=float, default=1000.0, help="events/s (default 1,000)")
    parser.add_argument("--v1-concurrency", type=int, default=256, help="lanes (default 256)")
    parser.add_argument("--v2-customers", type=int, default=None, help="default 20,000")
    parser.add_argument(
        "--v2-rate", type=float, default=10_000.0, help="stream requests/s (default 10,000)"
    )
    parser.add_argument(
        "--v2-concurrency", type=int, default=256, help="stream requests at once (default 256)"
    )
    parser.add_argument(
        "--first-customers", type=int, default=None, help="a meter's first push (2,000)"
    )
    parser.add_argument("--e2e-customers", type=int, default=None, help="default 100,000")
    parser.add_argument(
        "--events-per-customer", type=int, default=3, help="usage events per customer (3)"
    )
    parser.add_argument("--latency-ms", type=float, default=200.0, help="during pushes (200)")
    parser.add_argument(
        "--endpoint-sample",
        type=int,
        default=None,
        help="figures also read through the summaries endpoint (default 20)",
    )
    parser.add_argument("--seed", type=int, default=20_260_101)
    parser.add_argument(
        "--timeout", type=float, default=1800.0, help="seconds per worker process (1,800)"
    )
    parser.add_argument(
        "--output",
        type=Path,
        default=None,
        help=f"results directory (default {RESULTS_DIR}; --quick writes only when given)",
    )
    parser.add_argument("--worker", choices=("setup", "push"), help=argparse.SUPPRESS)
    parser.add_argument("--events", help=argparse.SUPPRESS)
    parser.add_argument("--first-push", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--emulator-pid", type=int, default=0, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    quick = args.quick
    args.v1_customers = args.v1_customers or (100 if quick else 5000)
    args.first_customers = args.first_customers or (100 if quick else 2000)
    args.v2_customers = args.v2_customers or (400 if quick else 20_000)
    args.e2e_customers = args.e2e_customers or (1000 if quick else 100_000)
    args.endpoint_sample = (
        args.endpoint_sample if args.endpoint_sample is not None else 5 if quick else 20
    )
    args.cases = [c.strip() for c in args.cases.split(",") if c.strip()]
    unknown = sorted(set(args.cases) - {"v1", "v2", "first", "e2e"})
    if unknown or not args.cases:
        parser.error(
            f"--cases: choose among v1, v2, first, e2e (got {', '.join(unknown) or 'none'})"
        )
    for name in (
        "v1_customers",
        "v2_customers",
        "first_customers",
        "e2e_customers",
        "events_per_customer",
    ):
        if getattr(args, name) < 1:
            parser.error(f"--{name.replace('_', '-')} must be at least 1")
    for name in ("v1_concurrency", "v2_concurrency"):
        if not 1 <= getattr(args, name) <= 256:
            parser.error(f"--{name.replace('_', '-')} must be within 1..256 (usage.concurrency)")
    if args.v1_rate <= 0 or args.v2_rate <= 0 or args.latency_ms < 0:
        parser.error("--v1-rate and --v2-rate must be positive, --latency-ms not negative")
    return args


def cases(args: argparse.Namespace) -> list[Case]:
    known = {
        "v1": Case("v1", args.v1_customers, "v1", args.v1_rate, args.v1_concurrency),
        "v2": Case("v2", args.v2_customers, "v2", args.v2_rate, args.v2_concurrency),
        "first": Case("first", args.first_customers, "v2", args.v2_rate, args.v2_concurrency, True),
        "e2e": Case("e2e", args.e2e_customers, "v2", args.v2_rate, args.v2_concurrency),
    }
    return [known[name] for name in args.cases]


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.worker:
        return worker(args)

    def on_sigterm(*_: Any) -> None:
        raise SystemExit(143)  # unwind, so the emulator process is stopped

    signal.signal(signal.SIGTERM, on_sigterm)
    info = machine()
    print("Meter event push throughput (bench/usage_throughput.py)")
    print(machine_line(info), flush=True)
    source = source_state()
    started = time.monotonic()
    results: dict[str, dict[str, Any]] = {}
    with (
        tempfile.TemporaryDirectory(prefix="bench-usage-") as scratch,
        emulator_process() as (url, pid),
    ):
        print(f"emulator: {url} (pid {pid}, its own process)", flush=True)
        emulator = Emulator(url, pid)
        try:
            for case in cases(args):
                print(
                    f"\n[{case.name}] {case.customers:,} customers × {len(METERS)} meters, "
                    f"{case.api}, meter event rate {case.rate:g}/s, concurrency "
                    f"{case.concurrency}",
                    flush=True,
                )
                results[case.name] = run_case(case, emulator, Path(scratch), args)
        finally:
            emulator.close()
    rows = verdicts(results, args)
    result = "FAIL" if any(r["result"] == "FAIL" for r in rows) else "PASS"
    report: dict[str, Any] = {
        "benchmark": "usage_throughput",
        "date": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        "command": " ".join(
            ["python", "bench/usage_throughput.py", *(sys.argv[1:] if argv is None else argv)]
        ),
        "machine": info,
        "load_average_at_end": [round(x, 2) for x in os.getloadavg()],
        "versions": versions(),
        "source": source,
        "parameters": {
            "quick": args.quick,
            "latency_ms": args.latency_ms,
            "events_per_customer": args.events_per_customer,
            "emulator_limits_during_pushes": LIVE_LIMITS,
            "seed": args.seed,
        },
        "cases": results,
        "verdict": rows,
        "result": result,
        "wall_s": round(time.monotonic() - started, 1),
    }
    print()
    for row in rows:
        target = f" (target {row['target']})" if row["target"] else ""
        print(f"{row['result']:4}  {row['metric']}: {row['value']}{target}")
    print(f"{result} in {report['wall_s']:.0f} s")
    if not args.quick or args.output is not None:
        directory = args.output or RESULTS_DIR
        directory.mkdir(parents=True, exist_ok=True)
        (directory / "usage_throughput.json").write_text(json.dumps(report, indent=2) + "\n")
        (directory / "usage_throughput.md").write_text(markdown(report))
        print(f"wrote {directory / 'usage_throughput.json'} and usage_throughput.md")
    return 0 if result == "PASS" else 1


if __name__ == "__main__":
    with contextlib.suppress(KeyboardInterrupt):
        sys.exit(main())
    sys.exit(130)
