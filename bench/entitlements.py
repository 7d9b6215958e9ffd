"""Entitlement values over a long usage history: in process, and over HTTP.

Targets (the issue), per database (SQLite, PostgreSQL):

* with a year of history (10,000,000 `prompt` events of ONE customer on a SUM meter, over
  365 days, from two subjects) and ten grants on one metered entitlement (monthly usage
  period; mixed priorities, some expiring, one recurring, rollover settings), the value of
  that entitlement, `EntitlementValues.value(customer, feature)`, has p99 ≤ 5 ms in process
  (≥ 1,000 calls after one warm-up call; the first, cold call reported apart);
* `GET /api/v1/customers/{key}/access` for that customer, who has 20 entitlements (10 metered
  over a SUM and a COUNT meter and their group filters, 5 boolean, 5 static), has p99 ≤ 20 ms
  over HTTP on loopback against a running `metersync run` (httpx, keep-alive, ≥ 1,000
  requests after warm-up);
* the value's cost does not grow with history: p99 at 10,000,000 events ≤ 1.5 × p99 at
  1,000,000;
* exact: the value's usage is what the generated events put in the current period (added up
  by this script while generating them), and its balance, overage and total available are the
  figures worked out by hand for the configuration (bench/entitlements_plan.py); over HTTP,
  every metered entitlement's usage is its events' sum.

Per database and size (--small-events, then --events), a new store (SQLite file, WAL; or a
PostgreSQL schema, dropped afterwards) and a Stripe emulator of its own (bench/emulator.py
--serve), metersync's own code paths: the customer through Catalog.create_customer, synced to
the emulator by the customer sync (so it has a live link); the history through ingest_json a
chunk at a time; the usage bound (`bind_usage`, the push's binding step); the features and
entitlements through EntitlementBook. Then the in-process measurement in a fresh process
(bench/entitlements_step.py), and `metersync run` as a subprocess for the HTTP one.

    .venv/bin/python bench/entitlements.py               # the full run: an hour or more
    .venv/bin/python bench/entitlements.py --quick       # a smoke run, writes nothing
    .venv/bin/python bench/entitlements.py --events 2000000 --small-events 200000 --db sqlite

Writes bench/results/entitlements.json and .md; exits 0 when every target is met.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import datetime as dt
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
from entitlements_events import (
    CUSTOMER,
    METERS_TOML,
    SPLIT,
    SUBJECTS,
    EventStream,
    Expected,
    customer_record,
    lines_for,
)
from entitlements_plan import MAIN_FEATURE, Plan, ceil_minute, iso, plan
from usage_history import child_env, postgres_url, sqlite_url, store_mb, vacuum_analyze
from usage_history_step import RESULT_MARKER

HISTORY_DAYS = 365
DAY = 86400
API_KEY = "sk_test_bench_entitlements"
TOKEN = "bench-entitlements-token"
RESULTS_DIR = Path(__file__).resolve().parent / "results"
STEP_SCRIPT = Path(__file__).resolve().parent / "entitlements_step.py"
DATABASES = ("sqlite", "postgresql")
SIZES = ("small", "large")

TARGET_VALUE_P99_MS = 5.0
TARGET_ACCESS_P99_MS = 20.0
TARGET_RATIO = 1.5
SQLITE_BYTES_PER_EVENT = 500  # a stored event and its meter value: about 430 B, measured at 22,000


# -- set-up, in this process ---------------------------------------------------------------------


def write_config(path: Path, database_url: str, emulator_url: str) -> None:
    """The settings the CLI and the service read: the store, the emulator as Stripe."""
    path.write_text(
        f"""
[database]
url = {json.dumps(database_url)}

[stripe]
api_key = "{API_KEY}"
api_base = {json.dumps(emulator_url)}

[log]
level = "warning"
{METERS_TOML}"""
    )


def set_up(
    config: Path, events: int, args: argparse.Namespace, history_end: dt.datetime, workdir: Path
) -> tuple[dict[str, Any], Plan]:
    """The customer (synced), its history (ingested, bound), its 20 entitlements."""
    from metersync.catalog import Catalog
    from metersync.catalog.meters import Meter
    from metersync.entitlements import EntitlementBook, EntitlementValues
    from metersync.logs import configure_logging
    from metersync.pipeline import Pipeline, SyncRun
    from metersync.settings import load_settings
    from metersync.store import Store
    from metersync.usage.aggregate import bind_usage
    from metersync.usage.ingest import ingest_json

    settings = load_settings(config)
    configure_logging(settings.log.level, settings.log.format)
    meters = [Meter.of(m) for m in settings.meters]
    catalog = Catalog(
        Store.open(settings.database.url), auto_customer=settings.catalog.auto_customer
    )
    figures: dict[str, Any] = {}
    try:
        catalog.create_customer(customer_record())

        async def sync() -> Any:
            async with Pipeline(settings, catalog) as pipeline:
                return await pipeline.sync_stripe(SyncRun())

        started = time.perf_counter()
        synced = asyncio.run(sync())
        figures["sync_s"] = round(time.perf_counter() - started, 3)
        figures["synced"] = synced.counts

        end_s = int(history_end.timestamp())
        total = lines_for(events)
        stream = EventStream("h-", total, end_s - HISTORY_DAYS * DAY, HISTORY_DAYS * DAY, args.seed)
        expected = Expected()
        ingest_s = generating_s = 0.0
        accepted = rejected = 0
        rejections: list[str] = []
        chunks = stream.chunks(args.chunk, expected)
        while True:
            started = time.perf_counter()
            content = next(chunks, None)
            generating_s += time.perf_counter() - started
            if content is None:
                break
            started = time.perf_counter()
            report = ingest_json(catalog, meters, content)
            ingest_s += time.perf_counter() - started
            accepted += report.accepted
            rejected += report.rejected
            rejections += [r.reason for r in report.rejections[: 3 - len(rejections)]]
        expected.save(workdir / "expected.json")
        figures["ingest"] = {
            "events": total,
            "prompts": expected.prompts,
            "requests": expected.request_events,
            "accepted": accepted,
            "rejected": rejected,
            "rejections": rejections,
            "ingest_s": round(ingest_s, 2),
            "events_per_s": round(total / ingest_s) if ingest_s else None,
            "generating_s": round(generating_s, 2),
        }
        started = time.perf_counter()
        figures["bound"] = bind_usage(catalog.store, "stripe")
        figures["bind_s"] = round(time.perf_counter() - started, 2)

        the_plan = plan(history_end - dt.timedelta(days=HISTORY_DAYS), history_end, expected)
        book = EntitlementBook(catalog.store, meters)
        started = time.perf_counter()
        for feature in the_plan.features:
            book.create_feature(feature)
        for given in the_plan.entitlements:
            book.create_entitlement(CUSTOMER, given)
        figures["entitlements_s"] = round(time.perf_counter() - started, 3)
        figures["entitlements"] = len(the_plan.entitlements)
        # What the service's usage tick does after the push binds (Pipeline.
        # fold_entitlement_usage): the metered features' hourly cells, which reads then use.
        started = time.perf_counter()
        figures["cells"] = EntitlementValues(book, catalog.store, meters).refresh()
        figures["fold_s"] = round(time.perf_counter() - started, 2)
    finally:
        catalog.close()
    return figures, the_plan


# -- the in-process measurement, in a fresh process ----------------------------------------------


def run_values(config: Path, at: dt.datetime, args: argparse.Namespace, workdir: Path) -> Any:
    spec = {
        "config": str(config),
        "customer": CUSTOMER,
        "feature": MAIN_FEATURE,
        "at": at.isoformat(),
        "calls": args.calls,
    }
    spec_path = workdir / "values.json"
    spec_path.write_text(json.dumps(spec))
    started = time.perf_counter()
    done = subprocess.run(
        [sys.executable, str(STEP_SCRIPT), str(spec_path)],
        capture_output=True,
        text=True,
        env=child_env(),
        timeout=args.step_timeout,
    )
    lines = [x for x in done.stdout.splitlines() if x.startswith(RESULT_MARKER)]
    if done.returncode != 0 or not lines:
        said = [x[:300] for x in done.stderr.splitlines() if x.strip()]
        raise RuntimeError(
            f"the value step failed (exit code {done.returncode}): "
            + (said[-1] if said else "nothing on stderr")
        )
    figures: dict[str, Any] = json.loads(lines[-1][len(RESULT_MARKER) :])
    figures["process_s"] = round(time.perf_counter() - started, 2)
    return figures


# -- the HTTP measurement, against `metersync run` ------------------------------------------------


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


@contextlib.contextmanager
def service(config: Path, log: Path) -> Any:
    """`metersync run` on the store, its API on a free loopback port; SIGTERM afterwards."""
    import httpx

    port = free_port()
    env = {
        **child_env(),
        "METERSYNC_CONFIG": str(config),
        "METERSYNC_HTTP_BIND": f"127.0.0.1:{port}",
        "METERSYNC_HTTP_TOKENS": json.dumps([TOKEN]),
        # Quiet: one customer tick at start, then nothing scheduled during the measurement.
        "METERSYNC_SERVICE_CUSTOMER_TICK_S": "3600",
        "METERSYNC_SERVICE_USAGE_TICK_S": "3600",
    }
    proc = subprocess.Popen(
        [sys.executable, "-m", "metersync", "run"],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=log.open("wb"),
    )
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 60
        while True:
            if proc.poll() is not None:
                tail = log.read_text().splitlines()[-3:]
                raise RuntimeError(f"metersync run exited ({proc.returncode}): {tail}")
            with contextlib.suppress(httpx.TransportError):
                if httpx.get(f"{url}/readyz", timeout=2).status_code == 200:
                    break
            if time.monotonic() > deadline:
                raise RuntimeError("metersync run was not ready within 60 s")
            time.sleep(0.1)
        yield url, proc.pid
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(timeout=40)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()


def access_values(body: Any) -> dict[str, dict[str, Any]]:
    """featureKey -> its value, from a CustomerAccess answer."""
    found = body.get("entitlements", {}) if isinstance(body, dict) else {}
    return found if isinstance(found, dict) else {}


def run_http(
    config: Path, the_plan: Plan, args: argparse.Namespace, workdir: Path
) -> dict[str, Any]:
    import httpx
    from emulator import percentiles, process_cpu_seconds

    path = f"/api/v1/customers/{CUSTOMER}/access"
    with (
        service(config, workdir / "service.log") as (url, pid),
        httpx.Client(
            base_url=url, headers={"Authorization": f"Bearer {TOKEN}"}, timeout=60
        ) as http,
    ):
        started = time.perf_counter()
        first = http.get(path)
        cold = time.perf_counter() - started
        if first.status_code != 200:
            raise RuntimeError(f"GET {path}: {first.status_code} {first.text[:300]}")
        for _ in range(args.warmup):
            http.get(path).raise_for_status()
        samples: list[float] = []
        statuses: dict[int, int] = {}
        cpu = process_cpu_seconds(pid)
        began = time.perf_counter()
        last = first
        for _ in range(args.requests):
            started = time.perf_counter()
            last = http.get(path)
            samples.append(time.perf_counter() - started)
            statuses[last.status_code] = statuses.get(last.status_code, 0) + 1
        wall = time.perf_counter() - began
        cpu_after = process_cpu_seconds(pid)
        month = dt.datetime.now(dt.UTC).strftime("%Y-%m")
    values = access_values(last.json())
    # Over HTTP the value is at the service's clock: its period is the month of now.
    problems = []
    if len(values) != len(the_plan.entitlements):
        problems.append(f"{len(values)} entitlements answered, {len(the_plan.entitlements)} made")
    checked = 0
    if month == the_plan.hand.period_start[:7]:
        for key, usage in sorted(the_plan.expected_usage.items()):
            got = values.get(key, {}).get("usage")
            checked += 1
            if got is None or float(got) != float(usage):
                problems.append(f"{key}: usage {got}, the events add up to {usage:,}")
    return {
        "requests": len(samples),
        "statuses": {str(k): v for k, v in statuses.items()},
        "latency_ms": percentiles(samples),
        "first_ms": round(cold * 1000, 3),
        "requests_per_s": round(len(samples) / wall, 1) if wall else None,
        "service_cpu_s": (
            round(cpu_after - cpu, 3) if cpu is not None and cpu_after is not None else None
        ),
        "entitlements": len(values),
        "usage_checked": checked,
        "problems": problems,
        "main_value": values.get(MAIN_FEATURE),
    }


# -- one scenario: a database at one size ---------------------------------------------------------


def value_problems(figures: dict[str, Any], the_plan: Plan, at: dt.datetime) -> list[str]:
    """The main entitlement's value against the events' sum and the figures by hand."""
    hand = the_plan.hand
    value = figures["value"]
    problems = []
    if not figures["same_value"]:
        problems.append(f"the cold call gave {figures['first_value']}, the last {value}")
    in_period = iso(ceil_minute(at))[:7] == hand.period_start[:7]  # the value's minute
    if not in_period:
        return [*problems, f"the value's period is not {hand.period_start[:7]}: not checked"]
    wanted = {"usage": hand.usage}
    if hand.applies:
        wanted |= {
            "balance": hand.balance,
            "overage": hand.overage,
            "total_available_grant_amount": hand.total_available,
        }
    for name, figure in wanted.items():
        got = value.get(name)
        if got is None or float(got) != float(figure):
            problems.append(f"{name} {got}, by hand {figure:,}")
    if value.get("has_access") is not (hand.balance > 0):
        problems.append(f"has_access {value.get('has_access')}, balance by hand {hand.balance:,}")
    return problems


def run_scenario(
    database: str, size: str, events: int, args: argparse.Namespace, scratch: Path
) -> dict[str, Any]:
    from emulator import emulator_process

    workdir = scratch / f"{database}-{size}"
    workdir.mkdir()
    scenario: dict[str, Any] = {"database": database, "size": size, "events": events}
    scenario["errors"] = errors = []
    started = time.monotonic()
    history_end = dt.datetime.now(dt.UTC).replace(second=0, microsecond=0)
    scenario["history_end"] = iso(history_end)
    store = sqlite_url(workdir) if database == "sqlite" else postgres_url(args.postgres_url)
    say = f"  {database} {size}"
    with store as url, emulator_process() as (emulator_url, _pid):
        config = workdir / "metersync.toml"
        write_config(config, url, emulator_url)
        try:
            setup, the_plan = set_up(config, events, args, history_end, workdir)
            scenario["setup"] = setup
            scenario["plan"] = the_plan.to_json()
            ing = setup["ingest"]
            print(
                f"{say} setup: synced {setup['synced']} in {setup['sync_s']:.1f} s; "
                f"{ing['accepted']:,} events stored in {ing['ingest_s']:.1f} s "
                f"({ing['events_per_s'] or 0:,}/s), rejected {ing['rejected']:,}; bound "
                f"{setup['bound']:,} in {setup['bind_s']:.1f} s; {setup['entitlements']} "
                f"entitlements in {setup['entitlements_s']:.2f} s; {setup['cells']:,} hourly "
                f"cells folded in {setup['fold_s']:.1f} s",
                flush=True,
            )
            if database == "postgresql":
                # This cluster runs with autovacuum off: what it would do after bulk writes.
                seconds = vacuum_analyze(url)
                scenario["vacuum_s"] = seconds
                print(f"{say} VACUUM (ANALYZE): {seconds:.1f} s", flush=True)
        except Exception as exc:  # noqa: BLE001 - recorded, and the next scenario runs
            errors.append(f"set-up: {type(exc).__name__}: {exc}"[:500])
            print(f"{say} FAILED: {errors[-1]}", flush=True)
        else:
            measure(scenario, config, the_plan, args, workdir)
        scenario["store_mb"] = store_mb(url)
    scenario["wall_s"] = round(time.monotonic() - started, 1)
    return scenario


def measure(
    scenario: dict[str, Any], config: Path, the_plan: Plan, args: argparse.Namespace, workdir: Path
) -> None:
    """The value in process, then GET /access over HTTP; each failure recorded apart."""
    say = f"  {scenario['database']} {scenario['size']}"
    errors = scenario["errors"]
    try:
        at = dt.datetime.now(dt.UTC)
        scenario["at"] = iso(at)
        values = run_values(config, at, args, workdir)
        values["problems"] = value_problems(values, the_plan, at)
        scenario["values"] = values
        lat = values["latency_ms"]
        print(
            f"{say} value in process: cold {values['cold_ms']:.1f} ms, then "
            f"{values['calls']:,} calls p50 {lat['p50']:.3f} p95 {lat['p95']:.3f} p99 "
            f"{lat['p99']:.3f} max {lat['max']:.3f} ms; {values['value']}; "
            + ("; ".join(values["problems"]) or "exact"),
            flush=True,
        )
    except Exception as exc:  # noqa: BLE001 - recorded; the HTTP part still runs
        errors.append(f"value: {type(exc).__name__}: {exc}"[:500])
        print(f"{say} FAILED: {errors[-1]}", flush=True)
    try:
        http = run_http(config, the_plan, args, workdir)
        scenario["http"] = http
        lat = http["latency_ms"]
        print(
            f"{say} GET /access ({http['entitlements']} entitlements): first "
            f"{http['first_ms']:.1f} ms, then {http['requests']:,} requests p50 "
            f"{lat['p50']:.3f} p95 {lat['p95']:.3f} p99 {lat['p99']:.3f} max "
            f"{lat['max']:.3f} ms, statuses {http['statuses']}; "
            + ("; ".join(http["problems"]) or f"usage exact ({http['usage_checked']})"),
            flush=True,
        )
    except Exception as exc:  # noqa: BLE001 - recorded, and the next scenario runs
        errors.append(f"HTTP: {type(exc).__name__}: {exc}"[:500])
        print(f"{say} FAILED: {errors[-1]}", flush=True)


# -- the verdict ---------------------------------------------------------------------------------


def row(
    database: str, figure: str, value: float | None, shown: str, target: str, passed: bool
) -> dict[str, Any]:
    return {
        "database": database,
        "figure": figure,
        "value": value,
        "shown": shown if value is not None else "not measured",
        "target": target,
        "result": "PASS" if passed and value is not None else "FAIL",
    }


def p99(scenario: dict[str, Any], part: str) -> float | None:
    found = scenario.get(part, {}).get("latency_ms", {})
    return found.get("p99")


def verdict_rows(
    database: str, small: dict[str, Any], large: dict[str, Any]
) -> list[dict[str, Any]]:
    at = f"{large['events']:,} events"
    value, access = p99(large, "values"), p99(large, "http")
    small_value = p99(small, "values")
    ratio = value / small_value if value is not None and small_value else None
    problems = [
        f"{s['size']}: {p}"
        for s in (small, large)
        for p in (
            s["errors"]
            + s.get("values", {}).get("problems", [])
            + s.get("http", {}).get("problems", [])
        )
    ]
    bad = [
        f"{s['size']}: HTTP {code} ×{n}"
        for s in (small, large)
        for code, n in s.get("http", {}).get("statuses", {}).items()
        if code != "200"
    ]
    problems += bad
    return [
        row(
            database,
            f"value of the 10-grant entitlement in process, p99, {at}",
            value,
            f"{value or 0:.3f} ms",
            f"≤ {TARGET_VALUE_P99_MS:g} ms",
            value is not None and value <= TARGET_VALUE_P99_MS,
        ),
        row(
            database,
            f"GET /customers/{{key}}/access, 20 entitlements, p99, {at}",
            access,
            f"{access or 0:.3f} ms",
            f"≤ {TARGET_ACCESS_P99_MS:g} ms",
            access is not None and access <= TARGET_ACCESS_P99_MS,
        ),
        row(
            database,
            f"value p99, {large['events']:,} / {small['events']:,} events",
            ratio,
            f"{ratio or 0:.2f}× ({value or 0:.3f} / {small_value or 0:.3f} ms)",
            f"≤ {TARGET_RATIO:g}×",
            ratio is not None and ratio <= TARGET_RATIO,
        ),
        row(
            database,
            "figures exact (usage vs the events; balance, overage, total by hand)",
            float(len(problems)),
            "; ".join(problems[:3]) or "exact",
            "no difference",
            not problems,
        ),
    ]


# -- the report ----------------------------------------------------------------------------------


def lat_cells(figures: dict[str, Any] | None, first: str) -> list[str]:
    if not figures:
        return ["", "", "", "", "", ""]
    lat = figures["latency_ms"]
    return [
        f"{figures[first]:,.1f}",
        f"{figures.get('calls', figures.get('requests')):,}",
        f"{lat['p50']:.3f}",
        f"{lat['p95']:.3f}",
        f"{lat['p99']:.3f}",
        f"{lat['max']:.3f}",
    ]


def markdown(report: dict[str, Any]) -> str:
    p = report["parameters"]
    v = report["versions"]
    lines = [
        "# Entitlement values over a year of usage",
        "",
        f"Run {report['date']} with `{report['command']}`, {report['wall_s']:,.0f} s in all, on "
        f"commit {report['source']['commit']}"
        + (" with changes in src/" if report["source"]["src_changes"] else "")
        + ".",
        "",
        report["machine_line"],
        "",
        f"SQLite {v.get('sqlite')}, PostgreSQL server {v.get('postgresql_server')}, "
        f"SQLAlchemy {v.get('sqlalchemy')}, psycopg {v.get('psycopg')}, httpx {v.get('httpx')}.",
        "",
        f"**{report['result']}**",
        "",
        "| database | figure | measured | target | result |",
        "|---|---|--:|---|---|",
    ]
    lines += [
        f"| {r['database']} | {r['figure']} | {r['shown']} | {r['target']} | {r['result']} |"
        for r in report["verdict"]
    ]
    lines += [f"| {db} | not run: {why} | | | NOT RUN |" for db, why in report["not_run"].items()]
    lines += [
        "",
        "## Latency (ms)",
        "",
        "| database | size | what | first (cold) | calls | p50 | p95 | p99 | max |",
        "|---|---|---|--:|--:|--:|--:|--:|--:|",
    ]
    for per_size in report["scenarios"].values():
        for s in per_size.values():
            head = f"| {s['database']} | {s['events']:,} events |"
            lines.append(
                head
                + " value in process | "
                + " | ".join(lat_cells(s.get("values"), "cold_ms"))
                + " |"
            )
            lines.append(
                head
                + " GET /access over HTTP | "
                + " | ".join(lat_cells(s.get("http"), "first_ms"))
                + " |"
            )
    lines += [
        "",
        "## Exactness (the 10-grant entitlement, current period)",
        "",
        "| database | size | at | usage: value / events | balance: value / by hand | "
        "overage: value / by hand | total available: value / by hand | HTTP usage checks |",
        "|---|---|---|--:|--:|--:|--:|---|",
    ]
    for per_size in report["scenarios"].values():
        for s in per_size.values():
            if "values" not in s:
                continue
            got, hand = s["values"]["value"], s["plan"]["hand"]
            http = s.get("http", {})
            lines.append(
                f"| {s['database']} | {s['events']:,} | {s['at']} | {got['usage']} / "
                f"{hand['usage']:,} | {got['balance']} / {hand['balance']:,} | "
                f"{got['overage']} / {hand['overage']:,} | "
                f"{got['total_available_grant_amount']} / {hand['total_available']:,} | "
                + (
                    "; ".join(http.get("problems", []))
                    or f"{http.get('usage_checked', 0)} metered usages exact"
                )
                + (
                    " (by hand: not applicable, " + hand["why_not"] + ")"
                    if not hand["applies"]
                    else ""
                )
                + " |"
            )
    lines += [
        "",
        "## The scenario",
        "",
        f"- One customer (`{CUSTOMER}`, subjects {', '.join(SUBJECTS)}) created through "
        "`Catalog.create_customer` and synced to the Stripe emulator (its own process, latency "
        "0) by metersync's customer sync, so it has a live link.",
        f"- Its history: {p['events']:,} `prompt` events (the small size: "
        f"{p['small_events']:,}) over the {HISTORY_DAYS} days before the run's start, in time "
        f"order, plus a `request` after every ten; {SPLIT}. Generated as NDJSON "
        f"{p['chunk']:,} events a chunk, each through `ingest_json`; then the usage bound to "
        'the customer (`bind_usage(store, "stripe")`, the usage push\'s binding step). Meters: '
        "`tokens` SUM of $.tokens, `requests` COUNT, both grouped by model; not billed on "
        "Stripe, so the service's usage tick has nothing to push.",
        "- 20 entitlements through `EntitlementBook` (bench/entitlements_plan.py): `tokens` "
        "with ten grants (one recurring monthly, two with rollover settings, five that expired "
        "during the year, one taking effect halfway through the current month, one in the "
        "future; priorities 1-5), 9 more metered (`requests`, and each model's tokens and "
        "requests through meterGroupByFilters), 5 boolean, 5 static. Usage period MONTH, "
        "anchored on the first of the month the history starts in, measured from then.",
        "- Then the metered features' hourly cells folded (`EntitlementValues.refresh`, what "
        "the service's usage tick does after the push binds; its time is in the set-up table): "
        "without it every read figures the year from raw rows.",
        f"- In process: a fresh process (bench/entitlements_step.py) opens the store, builds "
        f"`EntitlementValues`, times the first call (cold: it builds the caches), one warm-up "
        f'call, then {p["calls"]:,} calls of `value(customer, "tokens", at=…)`, `at` fixed '
        "to the moment the set-up ended, each timed alone.",
        f"- Over HTTP: `metersync run` as a subprocess on the same store (ticks an hour apart: "
        f"one customer tick at start), then one httpx client with keep-alive: a first request, "
        f"{p['warmup']} warm-up requests, then {p['requests']:,} "
        "`GET /api/v1/customers/ent-bench/access`, one at a time, each timed at the client "
        "(its httpx overhead included). The service computes at its wall clock.",
        "- By hand: the main entitlement's usage is the events' sum over the current month "
        "(added up while generating them, not read back from metersync); its balance, overage "
        "and total available are worked out from the grants as bench/entitlements_plan.py "
        "explains. Over HTTP, each metered entitlement's usage against its events' sum.",
        "- PostgreSQL only: after the bulk writes, `VACUUM (ANALYZE)` of the schema's tables, "
        "as autovacuum would (the benchmark machine's cluster runs with `autovacuum = off`); "
        "timed apart, in the set-up table below.",
        "",
        "## Set-up (not measured against a target)",
        "",
        "| database | size | events stored | ingest s | events/s | bind s | rows bound | "
        "fold s | cells | VACUUM s | store MB | scenario s | errors |",
        "|---|---|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|---|",
    ]
    for per_size in report["scenarios"].values():
        for s in per_size.values():
            setup = s.get("setup", {})
            ing = setup.get("ingest", {})
            lines.append(
                f"| {s['database']} | {s['size']} | {ing.get('accepted', 0):,} | "
                f"{ing.get('ingest_s', 0):,.1f} | {ing.get('events_per_s') or 0:,} | "
                f"{setup.get('bind_s', 0):,.1f} | {setup.get('bound', 0):,} | "
                f"{setup.get('fold_s', 0):,.1f} | {setup.get('cells', 0):,} | "
                f"{s.get('vacuum_s', '')} | {s.get('store_mb', 0):,.0f} | {s['wall_s']:,.0f} | "
                f"{'; '.join(s['errors']) or 'none'} |"
            )
    return "\n".join(lines) + "\n"


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--events", type=int, default=10_000_000, help="prompts, large size")
    parser.add_argument("--small-events", type=int, default=1_000_000, help="the small size")
    parser.add_argument("--calls", type=int, default=2_000, help="value calls, in process")
    parser.add_argument("--requests", type=int, default=2_000, help="GET /access requests")
    parser.add_argument("--warmup", type=int, default=20, help="HTTP warm-up requests")
    parser.add_argument("--db", choices=(*DATABASES, "both"), default="both")
    parser.add_argument("--chunk", type=int, default=100_000, help="events per ingest_json call")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--postgres-url", default=None, help="default: the test database")
    parser.add_argument(
        "--scratch", type=Path, default=Path(tempfile.gettempdir()), help="SQLite files"
    )
    parser.add_argument("--step-timeout", type=int, default=3600, help="s, the value step")
    parser.add_argument("--quick", action="store_true", help="tiny sizes, writes nothing")
    parser.add_argument("--output", type=Path, default=None, help="results directory")
    args = parser.parse_args(argv)
    if args.quick:
        args.events, args.small_events, args.chunk = 20_000, 5_000, 5_000
        args.calls, args.requests = 1_000, 1_000
    for name in ("events", "small_events", "calls", "requests", "chunk", "step_timeout"):
        if getattr(args, name) < 1:
            parser.error(f"--{name.replace('_', '-')} must be at least 1")
    if not args.scratch.is_dir():
        parser.error(f"--scratch {args.scratch}: not a directory")
    if args.db in ("sqlite", "both"):
        need = lines_for(args.events + args.small_events) * SQLITE_BYTES_PER_EVENT
        free = shutil.disk_usage(args.scratch).free
        if free < need:
            parser.error(
                f"--scratch {args.scratch}: {free / 1e9:.1f} GB free, the SQLite stores need "
                f"about {need / 1e9:.1f} GB"
            )
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    from customers import source_state
    from emulator import machine, machine_line
    from ingest import POSTGRES_URL, postgres_problem, postgres_version
    from ingest import versions as package_versions

    info = machine()
    print(machine_line(info), flush=True)
    started = time.monotonic()
    databases = DATABASES if args.db == "both" else (args.db,)
    args.postgres_url = args.postgres_url or POSTGRES_URL
    print(
        f"entitlements: {args.small_events:,} then {args.events:,} prompts of one customer "
        f"over {HISTORY_DAYS} days; {args.calls:,} value calls, {args.requests:,} requests; "
        f"{', '.join(databases)}",
        flush=True,
    )
    scenarios: dict[str, dict[str, Any]] = {}
    not_run: dict[str, str] = {}
    pg_version = None
    with tempfile.TemporaryDirectory(prefix="entitlements-", dir=args.scratch) as scratch:
        for database in databases:
            if database == "postgresql":
                problem = postgres_problem(args.postgres_url)
                if problem is not None:
                    print(f"postgresql not run: {problem}", flush=True)
                    not_run[database] = problem
                    continue
                pg_version = postgres_version(args.postgres_url)
            scenarios[database] = {
                size: run_scenario(database, size, events, args, Path(scratch))
                for size, events in zip(SIZES, (args.small_events, args.events), strict=True)
            }
    verdict = [
        r
        for database, per in scenarios.items()
        for r in verdict_rows(database, per["small"], per["large"])
    ]
    results = {r["result"] for r in verdict}
    result = "FAIL" if "FAIL" in results or not verdict else ("NOT RUN" if not_run else "PASS")
    versions = package_versions(pg_version)
    with contextlib.suppress(Exception):
        from importlib.metadata import version

        versions["httpx"] = version("httpx")
    print()
    print(machine_line(info))
    print(
        f"SQLite {versions['sqlite']}, PostgreSQL server {versions['postgresql_server']}, "
        f"Python {info['python']}"
    )
    for r in verdict:
        print(
            f"{r['database']:10}  {r['figure']:70}  {r['shown']:>30}  {r['target']:>14}  "
            f"{r['result']}"
        )
    for database, why in not_run.items():
        print(f"{database:10}  NOT RUN ({why})")
    print(f"VERDICT: {result}")
    report = {
        "benchmark": "entitlements",
        "date": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        "command": " ".join(
            ["python", "bench/entitlements.py", *(sys.argv[1:] if argv is None else argv)]
        ),
        "machine": info,
        "machine_line": machine_line(info),
        "load_average_at_end": [round(x, 2) for x in os.getloadavg()],
        "source": source_state(),
        "versions": versions,
        "parameters": {
            **{
                k: v
                for k, v in vars(args).items()
                if k not in ("scratch", "output", "postgres_url")
            },
            "history_days": HISTORY_DAYS,
            "split": SPLIT,
        },
        "targets": {
            "value_p99_ms": TARGET_VALUE_P99_MS,
            "access_p99_ms": TARGET_ACCESS_P99_MS,
            "value_p99_ratio": TARGET_RATIO,
        },
        "verdict": verdict,
        "not_run": not_run,
        "result": result,
        "scenarios": scenarios,
        "wall_s": round(time.monotonic() - started, 1),
    }
    if not args.quick or args.output is not None:
        directory = args.output or RESULTS_DIR
        directory.mkdir(parents=True, exist_ok=True)
        (directory / "entitlements.json").write_text(json.dumps(report, indent=2) + "\n")
        (directory / "entitlements.md").write_text(markdown(report))
        print(f"wrote {directory / 'entitlements.json'}\nwrote {directory / 'entitlements.md'}")
    return 0 if result == "PASS" else 1


if __name__ == "__main__":
    with contextlib.suppress(KeyboardInterrupt):
        sys.exit(main())
    sys.exit(130)
