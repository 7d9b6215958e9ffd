"""The OpenMeter and HubSpot emulators under load: the two figures the test suite used to assert.

1. OpenMeter: a month of 100,000 events for one customer (meter `tokens_total`, SUM of
   $.tokens over event type `prompt`; customer "big" with subjects big-1 and big-2; events
   e0..e99999 spread evenly over the 31 days from 2025-03-01 UTC, tokens = i % 7, alternating
   subjects), stored through `OpenMeterEmulator.ingest`, then
   `GET /api/v1/meters/tokens_total/query?filterCustomerId=…&windowSize=HOUR&from=…&to=…`.
   The first query builds the emulator's value columns (cold); the target is on the queries
   after it: **median warm query < 0.25 s**. Each answer must hold 744 hourly rows whose values
   add up to sum(i % 7 for i in range(100_000)).
2. HubSpot: the metersync property group and properties defined, then 100 batch upserts
   (`POST /crm/v3/objects/companies/batch/upsert`, idProperty metersync_key) of 100 companies
   each, rate limit off. Target: **the 100 upserts in < 10 s**, every answer 200, 10,000
   companies in the emulator afterwards.

Both emulators run in this process (as in the tests), on their own loop thread, so client and
server share one GIL: the figures are what a test sees, not the emulators' own ceilings.

    .venv/bin/python bench/emulator_load.py [--queries 20] [--output DIR]

Writes bench/results/emulator_load.json and .md; exits 0 when both targets are met, 1 otherwise.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import statistics
import sys
import time
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
from emulator import machine, machine_line  # bench/ is on sys.path when run as a script

from metersync.testing import HubSpotEmulator, OpenMeterEmulator

RESULTS = Path(__file__).resolve().parent / "results"

# -- OpenMeter: as tests/test_openmeter_emulator.py set it up -------------------------------------
OM_TOKEN = "om-test-token"  # the emulator's test token, as in the tests
T0 = datetime(2025, 3, 1, tzinfo=UTC)
DAYS = 31
EVENTS = 100_000
METER = "tokens_total"
QUERY = "/api/v1/meters/{}/query"
OM_TARGET_S = 0.25  # median warm query

# -- HubSpot: as tests/test_hubspot_emulator.py set it up -----------------------------------------
KEY = "metersync_key"
COMPANIES = "/crm/v3/objects/companies"
PROPERTIES = "/crm/v3/properties/companies"
BATCHES = 100
BATCH_SIZE = 100
HS_TARGET_S = 10.0  # the 100 upserts

MAX_QUERIES = 500  # keeps the run bounded whatever --queries says


# -- helpers, the tests' own ---------------------------------------------------------------------


def event(
    i: int | str,
    subject: str,
    at: datetime,
    *,
    type_: str = "prompt",
    source: str = "app",
    **data: Any,
) -> dict[str, Any]:
    return {
        "specversion": "1.0",
        "id": f"e{i}",
        "source": source,
        "type": type_,
        "subject": subject,
        "time": at.isoformat().replace("+00:00", "Z"),
        "data": data,
    }


def z(moment: datetime) -> str:
    return moment.isoformat().replace("+00:00", "Z")


def query(api: httpx.Client, meter: str, **params: Any) -> dict[str, Any]:
    response = api.get(QUERY.format(meter), params=params)
    if response.status_code != 200:
        raise RuntimeError(f"query answered {response.status_code}: {response.text[:300]}")
    result: dict[str, Any] = response.json()
    return result


def prop(
    name: str, *, kind: str = "string", field_type: str = "text", unique: bool = False
) -> dict[str, Any]:
    spec: dict[str, Any] = {
        "name": name,
        "label": name.title(),
        "type": kind,
        "fieldType": field_type,
        "groupName": "metersync",
    }
    if unique:
        spec["hasUniqueValue"] = True
    return spec


def define_properties(api: httpx.Client) -> None:
    group = api.post(f"{PROPERTIES}/groups", json={"name": "metersync", "label": "metersync"})
    if group.status_code != 201:
        raise RuntimeError(f"property group answered {group.status_code}: {group.text[:300]}")
    created = api.post(
        f"{PROPERTIES}/batch/create",
        json={
            "inputs": [
                prop(KEY, unique=True),
                prop("seats", kind="number", field_type="number"),
                prop("renewed_at", kind="datetime", field_type="date"),
            ]
        },
    )
    if created.status_code != 201:
        raise RuntimeError(f"properties answered {created.status_code}: {created.text[:300]}")


def upsert(api: httpx.Client, *records: tuple[str, dict[str, Any]]) -> httpx.Response:
    inputs = [{"idProperty": KEY, "id": key, "properties": props} for key, props in records]
    return api.post(f"{COMPANIES}/batch/upsert", json={"inputs": inputs})


# -- measuring -----------------------------------------------------------------------------------


def timed(fn: Callable[[], Any]) -> tuple[float, float, Any]:
    """(wall s, CPU s of this process, result). The emulator's thread is in this process, so
    the CPU is client and server together."""
    wall, cpu = time.perf_counter(), time.process_time()
    result = fn()
    return time.perf_counter() - wall, time.process_time() - cpu, result


def percentile(values: list[float], share: float) -> float:
    """Nearest-rank percentile."""
    ordered = sorted(values)
    return ordered[max(0, math.ceil(share * len(ordered)) - 1)]


def spread(values: list[float]) -> dict[str, float]:
    return {
        "min": round(min(values), 4),
        "median": round(statistics.median(values), 4),
        "p95": round(percentile(values, 0.95), 4),
        "max": round(max(values), 4),
    }


def openmeter_case(queries: int) -> dict[str, Any]:
    step = timedelta(days=DAYS) / EVENTS
    moments = [T0 + i * step for i in range(EVENTS)]
    expected_rows = len({m.replace(minute=0, second=0, microsecond=0) for m in moments})
    expected_sum = sum(i % 7 for i in range(EVENTS))
    problems: list[str] = []
    with OpenMeterEmulator(token=OM_TOKEN, latency_ms=0) as om:
        om.add_meter(METER, event_type="prompt")
        customer = om.create_customer("big", "Big", subject_keys=["big-1", "big-2"])
        build_s, _, events = timed(
            lambda: [event(i, f"big-{i % 2 + 1}", m, tokens=i % 7) for i, m in enumerate(moments)]
        )
        ingest_s, ingest_cpu_s, stored = timed(lambda: om.ingest(events))
        if stored != EVENTS:
            problems.append(f"ingest stored {stored} of {EVENTS} events")
        params = {
            "filterCustomerId": customer["id"],
            "windowSize": "HOUR",
            "from": z(T0),
            "to": z(T0 + timedelta(days=DAYS)),
        }
        headers = {"Authorization": f"Bearer {om.token}"}
        with httpx.Client(base_url=om.url, headers=headers, timeout=30) as api:

            def one() -> dict[str, Any]:
                return query(api, METER, **params)

            def verify(label: str, result: dict[str, Any]) -> None:
                rows = len(result["data"])
                total = sum(r["value"] for r in result["data"])
                if rows != expected_rows:
                    problems.append(f"{label}: {rows} rows, expected {expected_rows}")
                if total != expected_sum:
                    problems.append(f"{label}: values add up to {total}, expected {expected_sum}")

            cold_s, cold_cpu_s, result = timed(one)
            verify("cold query", result)
            warm: list[float] = []
            warm_cpu: list[float] = []
            for n in range(queries):
                wall, cpu, result = timed(one)
                warm.append(wall)
                warm_cpu.append(cpu)
                verify(f"warm query {n + 1}", result)
    median = statistics.median(warm)
    ok = median < OM_TARGET_S and not problems
    return {
        "target": f"median warm query < {OM_TARGET_S} s",
        "result": "PASS" if ok else "FAIL",
        "events": EVENTS,
        "days": DAYS,
        "build_events_s": round(build_s, 3),
        "ingest_s": round(ingest_s, 3),
        "ingest_cpu_s": round(ingest_cpu_s, 3),
        "ingest_events_per_s": round(EVENTS / ingest_s),
        "cold_query_s": round(cold_s, 4),
        "cold_query_cpu_s": round(cold_cpu_s, 4),
        "warm_queries": queries,
        "warm_query_s": spread(warm),
        "warm_query_cpu_s": spread(warm_cpu),
        "warm_query_all_s": [round(x, 4) for x in warm],
        "rows": {"expected": expected_rows, "sum_expected": expected_sum},
        "problems": problems[:20],
    }


def hubspot_case() -> dict[str, Any]:
    problems: list[str] = []
    with HubSpotEmulator(rate_limit_per_10s=None) as hs:
        headers = {"Authorization": f"Bearer {hs.token}"}
        with httpx.Client(base_url=hs.url, headers=headers, timeout=30) as api:
            properties_s, _, _ = timed(lambda: define_properties(api))

            def run() -> list[int]:
                statuses = []
                for batch in range(BATCHES):
                    records = [
                        (f"c{batch}-{n}", {"name": f"Company {n}", "seats": n})
                        for n in range(BATCH_SIZE)
                    ]
                    statuses.append(upsert(api, *records).status_code)
                return statuses

            total_s, cpu_s, statuses = timed(run)
        companies = len(hs.companies())
    failed = [s for s in statuses if s != 200]
    if failed:
        problems.append(f"{len(failed)} upserts not answered 200: {sorted(set(failed))}")
    expected = BATCHES * BATCH_SIZE
    if companies != expected:
        problems.append(f"{companies} companies in the emulator, expected {expected}")
    ok = total_s < HS_TARGET_S and not problems
    return {
        "target": f"{BATCHES} batch upserts of {BATCH_SIZE} in < {HS_TARGET_S:g} s",
        "result": "PASS" if ok else "FAIL",
        "batches": BATCHES,
        "batch_size": BATCH_SIZE,
        "define_properties_s": round(properties_s, 3),
        "total_s": round(total_s, 3),
        "cpu_s": round(cpu_s, 3),
        "requests_per_s": round(BATCHES / total_s, 1),
        "records_per_s": round(expected / total_s),
        "ms_per_request": round(total_s / BATCHES * 1000, 2),
        "companies": companies,
        "problems": problems,
    }


# -- the report ----------------------------------------------------------------------------------


def markdown(report: dict[str, Any]) -> str:
    om, hs, mach = report["openmeter"], report["hubspot"], report["machine"]
    warm = om["warm_query_s"]
    problems = om["problems"] + hs["problems"]
    return (
        "# Emulator load: OpenMeter meter query, HubSpot batch upserts\n\n"
        f"Run {report['date']} with `{report['command']}`, {report['total_s']} s in all: "
        f"**{report['result']}**.\n\n"
        "| case | figure | measured | target | result |\n|---|---|--:|--:|---|\n"
        f"| OpenMeter, {om['events']:,} events over {om['days']} days | warm hourly query, "
        f"median of {om['warm_queries']} | **{warm['median']:.3f} s** | < {OM_TARGET_S} s "
        f"| {om['result']} |\n"
        f"| | warm min / p95 / max | {warm['min']:.3f} / {warm['p95']:.3f} / "
        f"{warm['max']:.3f} s | | |\n"
        f"| | cold (first) query | {om['cold_query_s']:.3f} s | | |\n"
        f"| | ingest ({om['ingest_events_per_s']:,} events/s) | {om['ingest_s']:.2f} s | | |\n"
        f"| HubSpot, {hs['batches']} × {hs['batch_size']} companies | batch upserts, total "
        f"| **{hs['total_s']:.2f} s** | < {HS_TARGET_S:g} s | {hs['result']} |\n"
        f"| | requests/s, records/s | {hs['requests_per_s']:,} / {hs['records_per_s']:,} "
        f"| | |\n"
        f"| | companies afterwards | {hs['companies']:,} | {hs['batches'] * hs['batch_size']:,} "
        f"| |\n\n"
        f"Checks: every OpenMeter answer holds {om['rows']['expected']} hourly rows adding up to "
        f"{om['rows']['sum_expected']:,}; every upsert answered 200. "
        + (f"Problems: {'; '.join(problems)}.\n\n" if problems else "No problem found.\n\n")
        + "Both emulators run in the benchmark's process, on their own loop thread, as in the "
        "tests these figures came from; times are wall times around each request (httpx, "
        "keep-alive), answer parsed.\n\n"
        f"Machine: {mach['cpu_model']}, {mach['cpu_count']} cores ({mach['usable_cpus']} usable), "
        f"{mach['memory_gib']} GiB, {mach['python']}, {mach['os']}; load average at start "
        f"{mach['load_average_at_start']}, at end {report['load_average_at_end']}.\n"
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__.splitlines()[0],
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="\n".join(__doc__.splitlines()[1:]),
    )
    parser.add_argument(
        "--queries",
        type=int,
        default=20,
        help=f"warm OpenMeter queries after the cold one (1..{MAX_QUERIES}, default 20)",
    )
    parser.add_argument(
        "--output", type=Path, default=RESULTS, help="where to write emulator_load.json and .md"
    )
    args = parser.parse_args(argv)
    if not 1 <= args.queries <= MAX_QUERIES:
        parser.error(f"--queries must be within 1..{MAX_QUERIES}")
    started = time.monotonic()
    info = machine()
    print(machine_line(info), flush=True)

    print(f"OpenMeter: {EVENTS:,} events over {DAYS} days, hourly query …", flush=True)
    om = openmeter_case(args.queries)
    warm = om["warm_query_s"]
    print(
        f"  ingest {om['ingest_s']:.2f} s ({om['ingest_events_per_s']:,} events/s; building the "
        f"event dicts {om['build_events_s']:.2f} s more)\n"
        f"  cold query {om['cold_query_s']:.3f} s\n"
        f"  {om['warm_queries']} warm queries: min {warm['min']:.3f}  median {warm['median']:.3f}"
        f"  p95 {warm['p95']:.3f}  max {warm['max']:.3f} s\n"
        f"  {om['result']}: median warm query {warm['median']:.3f} s against < {OM_TARGET_S} s"
        + "".join(f"\n  problem: {p}" for p in om["problems"]),
        flush=True,
    )

    print(f"HubSpot: {BATCHES} batch upserts of {BATCH_SIZE} companies …", flush=True)
    hs = hubspot_case()
    print(
        f"  defining properties {hs['define_properties_s']:.3f} s\n"
        f"  upserts {hs['total_s']:.2f} s: {hs['requests_per_s']:,} requests/s, "
        f"{hs['records_per_s']:,} records/s, {hs['ms_per_request']} ms per request; "
        f"{hs['companies']:,} companies\n"
        f"  {hs['result']}: {hs['total_s']:.2f} s against < {HS_TARGET_S:g} s"
        + "".join(f"\n  problem: {p}" for p in hs["problems"]),
        flush=True,
    )

    ok = om["result"] == "PASS" and hs["result"] == "PASS"
    report: dict[str, Any] = {
        "benchmark": "emulator_load",
        "date": datetime.now(UTC).isoformat(timespec="seconds"),
        "command": " ".join(
            ["python", "bench/emulator_load.py", *(sys.argv[1:] if argv is None else argv)]
        ),
        "machine": info,
        "load_average_at_end": [round(x, 2) for x in os.getloadavg()],
        "parameters": {
            "openmeter": {
                "meter": METER,
                "event_type": "prompt",
                "customer": "big",
                "subjects": ["big-1", "big-2"],
                "events": EVENTS,
                "from": z(T0),
                "days": DAYS,
                "window_size": "HOUR",
                "warm_queries": args.queries,
                "target_median_warm_query_s": OM_TARGET_S,
            },
            "hubspot": {
                "batches": BATCHES,
                "batch_size": BATCH_SIZE,
                "rate_limit_per_10s": None,
                "target_total_s": HS_TARGET_S,
            },
        },
        "openmeter": om,
        "hubspot": hs,
        "result": "PASS" if ok else "FAIL",
        "total_s": round(time.monotonic() - started, 1),
    }
    args.output.mkdir(parents=True, exist_ok=True)
    (args.output / "emulator_load.json").write_text(json.dumps(report, indent=2) + "\n")
    (args.output / "emulator_load.md").write_text(markdown(report))
    print(
        f"{report['result']}: OpenMeter median warm query {warm['median']:.3f} s "
        f"(< {OM_TARGET_S} s) {om['result']}; HubSpot {hs['total_s']:.2f} s (< {HS_TARGET_S:g} s) "
        f"{hs['result']}; {report['total_s']} s in all; wrote {args.output / 'emulator_load.json'}"
        f" and .md",
        flush=True,
    )
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
