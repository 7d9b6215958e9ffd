"""Customer sync to Stripe: how close the engine comes to the rate limit, and what it costs locally.

The targets (the issue), against the Stripe emulator at 200 ms ± 50 ms latency and 100 ops/s:

* cold sync of 5,000 customers (5,000 creates): efficiency = (requests ÷ 100/s) ÷ wall time
  ≥ 0.9, and ≥ 18× faster than a naive one-request-at-a-time loop measured in the same run;
* incremental tick, 100 changes among 100,000 synced customers: exactly 100 writes, 0 list
  calls, < 1 s local;
* no-op full reconcile of 100,000: 1,000 list pages, 0 writes, ≤ 3 s local CPU, peak RSS
  ≤ 300 MB.

The two 100,000 cases run with the emulator's latency and rate limit scaled to zero (0 ms, no
limit; the engine's limiter set out of the way), so what is measured is local: the engine's CPU
and memory, not the network. The report says so.

Processes: the emulator runs in a subprocess of its own (bench/emulator.py --serve), and every
engine run (cold sync, tick, full reconcile) in a fresh subprocess of this script (--worker), so
its CPU time (time.process_time, all threads) and peak RSS (getrusage ru_maxrss) are the engine's
alone. The naive loop and the seeding run in the parent. Requests are counted by the emulator
(GET /_emulator/stats, before/after each run).

Seeding the 100,000: customers are bulk-inserted into the catalog (the rows Catalog.create_customer
writes, checked against it on a sample); each is rendered by StripeTarget.render and created in
the emulator with the engine's own create parameters (raw HTTP, latency 0); then the link rows
and the sync cursor are written as Journal.synced/advance would. The recipe is checked against
the link rows the engine itself wrote in the cold sync. A failed engine case is re-run under
cProfile (every thread of the worker) and its top functions go to the report.

    .venv/bin/python bench/customers.py            # the full run, a few minutes
    .venv/bin/python bench/customers.py --quick    # small sizes, under a minute, writes nothing
    .venv/bin/python bench/customers.py --profile  # also profile the cases that pass
"""

# ruff: noqa: T201 - a benchmark reports on stdout

from __future__ import annotations

import argparse
import asyncio
import contextlib
import cProfile
import datetime as dt
import io
import json
import math
import os
import pstats
import random
import resource
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections import defaultdict
from collections.abc import Iterable
from pathlib import Path
from typing import Any
from urllib.parse import quote

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parent))
from emulator import (  # noqa: E402 - bench/emulator.py: the emulator subprocess, the machine
    emulator_process,
    machine,
    percentiles,
    process_cpu_seconds,
)

API_KEY = "sk_test_bench"
TARGET_NAME = "stripe"
RESULTS_DIR = Path(__file__).resolve().parent / "results"
RESULT_MARKER = "WORKER-RESULT "
UNLIMITED_RATE = 1e6  # the engine's limiter out of the way (latency-0 cases)

TARGET_EFFICIENCY = 0.9
TARGET_SPEEDUP = 18.0
TARGET_TICK_S = 1.0
TARGET_NOOP_CPU_S = 3.0
TARGET_NOOP_RSS_MB = 300.0
WRITE_ENDPOINTS = ("customers.create", "customers.update", "customers.delete")


# -- the records ----------------------------------------------------------------------------------

PLANS = ("free", "pro", "enterprise")
REGIONS = ("eu", "us", "apac")


def customer_record(i: int) -> dict[str, Any]:
    """A customer as a person would import it (OpenMeter's shape); values already canonical."""
    return {
        "key": f"cust-{i:06d}",
        "name": f"Customer {i:06d} Ltd",
        "primaryEmail": f"billing-{i:06d}@example.com",
        "description": f"benchmark customer {i}",
        "metadata": {"plan": PLANS[i % 3], "region": REGIONS[i % 5 % 3]},
    }


# -- small helpers --------------------------------------------------------------------------------


def rss_mb() -> float:
    """This process's resident set now (Linux /proc)."""
    with contextlib.suppress(OSError, ValueError, IndexError):
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return round(int(line.split()[1]) / 1024, 1)
    return float("nan")


def peak_rss_mb() -> float:
    """Peak resident set of this process since it started (getrusage; KiB on Linux)."""
    return round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)


def versions() -> dict[str, str]:
    from importlib.metadata import PackageNotFoundError, version

    found = {}
    for name in ("metersync", "stripe", "httpx", "sqlalchemy", "sqlmodel", "pydantic"):
        try:
            found[name] = version(name)
        except PackageNotFoundError:
            found[name] = "?"
    return found


class Emulator:
    """The emulator's control endpoints (reset, config, stats), and a listing of its customers."""

    def __init__(self, url: str, pid: int) -> None:
        self.url = url
        self.pid = pid
        self.http = httpx.Client(base_url=url, timeout=60)

    def close(self) -> None:
        self.http.close()

    def reset(self) -> None:
        self.http.post("/_emulator/reset").raise_for_status()

    def configure(self, **knobs: Any) -> dict[str, Any]:
        response = self.http.post("/_emulator/config", json=knobs)
        response.raise_for_status()
        config: dict[str, Any] = response.json()
        return config

    def realistic(self, latency_ms: float, jitter_ms: float, rate: float, burst: float) -> None:
        self.configure(latency_ms=latency_ms, jitter_ms=jitter_ms, rate_limit=rate, burst=burst)

    def instant(self) -> None:
        self.configure(latency_ms=0, jitter_ms=0, rate_limit=None, burst=None)

    def counts(self) -> dict[str, dict[str, int]]:
        response = self.http.get("/_emulator/stats")
        response.raise_for_status()
        endpoints: dict[str, dict[str, int]] = response.json()["endpoints"]
        return endpoints

    def cpu(self) -> float | None:
        return process_cpu_seconds(self.pid)

    def customers(self) -> list[dict[str, Any]]:
        """Every live customer, listed 100 at a time (call with latency and limits off)."""
        out: list[dict[str, Any]] = []
        params: dict[str, Any] = {"limit": 100}
        auth = {"Authorization": f"Bearer {API_KEY}"}
        while True:
            page = self.http.get("/v1/customers", params=params, headers=auth)
            page.raise_for_status()
            body = page.json()
            out += body["data"]
            if not body["has_more"] or not body["data"]:
                return out
            params["starting_after"] = body["data"][-1]["id"]


def delta(
    before: dict[str, dict[str, int]], after: dict[str, dict[str, int]]
) -> dict[str, dict[str, int]]:
    """Requests per endpoint and status between two stats readings."""
    out: dict[str, dict[str, int]] = {}
    for endpoint, per in after.items():
        for status, n in per.items():
            d = n - before.get(endpoint, {}).get(status, 0)
            if d:
                out.setdefault(endpoint, {})[status] = d
    return out


def total(counts: dict[str, dict[str, int]], endpoints: Iterable[str] | None = None) -> int:
    wanted = None if endpoints is None else set(endpoints)
    return sum(
        n
        for endpoint, per in counts.items()
        if wanted is None or endpoint in wanted
        for n in per.values()
    )


def non_2xx(counts: dict[str, dict[str, int]]) -> dict[str, int]:
    out: dict[str, int] = defaultdict(int)
    for per in counts.values():
        for status, n in per.items():
            if not status.startswith("2"):
                out[status] += n
    return dict(out)


# -- seeding --------------------------------------------------------------------------------------


def open_catalog(path: Path) -> Any:
    from metersync.catalog import Catalog
    from metersync.store import Store

    return Catalog(Store.open(f"sqlite:///{path}"))


def seed_catalog_api(catalog: Any, n: int) -> float:
    """n customers through Catalog.create_customer, one transaction each."""
    started = time.perf_counter()
    for i in range(n):
        catalog.create_customer(customer_record(i))
    return time.perf_counter() - started


def seed_catalog_bulk(catalog: Any, n: int) -> float:
    """n customers as Catalog.create_customer would write them (change_seq 1..n), in bulk."""
    from sqlalchemy import insert, select, update
    from ulid import ULID

    from metersync.clock import utcnow
    from metersync.store import CatalogSequenceRow, CustomerRow
    from metersync.store.engine import CATALOG_SEQUENCE

    started = time.perf_counter()
    now = utcnow()
    table = CustomerRow.__table__  # type: ignore[attr-defined]
    sequence = CatalogSequenceRow.__table__  # type: ignore[attr-defined]
    with catalog.store.session() as session:
        base = session.execute(
            select(sequence.c.value).where(sequence.c.name == CATALOG_SEQUENCE)
        ).scalar_one()
        for start in range(0, n, 5000):
            rows = []
            for i in range(start, min(n, start + 5000)):
                record = customer_record(i)
                rows.append(
                    {
                        "id": str(ULID()),
                        "key": record["key"],
                        "name": record["name"],
                        "description": record["description"],
                        "primary_email": record["primaryEmail"],
                        "currency": None,
                        "address_country": None,
                        "address_postal_code": None,
                        "address_state": None,
                        "address_city": None,
                        "address_line1": None,
                        "address_line2": None,
                        "address_phone_number": None,
                        "metadata": dict(record["metadata"]),
                        "auto_created": False,
                        "change_seq": base + i + 1,
                        "created_at": now,
                        "updated_at": now,
                        "deleted_at": None,
                    }
                )
            session.execute(insert(table), rows)
        session.execute(
            update(sequence).where(sequence.c.name == CATALOG_SEQUENCE).values(value=base + n)
        )
    return time.perf_counter() - started


def check_bulk_matches_api(bulk: Any, sample: int = 20) -> bool:
    """The bulk rows read back as the same customers Catalog.create_customer makes."""
    from metersync.catalog import Catalog
    from metersync.store import Store

    reference = Catalog(Store.open("sqlite://"))
    try:
        seed_catalog_api(reference, sample)
        ignore = {"id", "created_at", "updated_at", "change_seq"}

        def shape(c: Any) -> dict[str, Any]:
            return {k: v for k, v in vars(c).items() if k not in ignore}

        ours = {c.key: shape(c) for c in bulk.customers_by_keys(customer_record(i)["key"] for i in range(sample))}
        theirs = {c.key: shape(c) for c in reference.list_customers()}
        return ours == theirs
    finally:
        reference.close()


def expected_link(customer: Any, target: Any) -> dict[str, Any]:
    """What Journal.synced writes after the create of `customer` (minus ids and times)."""
    from metersync.sync.model import digest

    state = target.render(customer).state()
    return {
        "state": "synced",
        "synced_state": state,
        "synced_hash": digest(state),
        "owned_metadata_keys": sorted(state["metadata"]),
        "generation": 1,
        "idempotency_key": None,
        "intent_state": None,
        "attempts": 0,
        "last_error": None,
    }


def check_link_recipe(catalog: Any) -> dict[str, Any]:
    """Compare the engine's own link rows (after the cold sync) with the seeding recipe."""
    from sqlmodel import select

    from metersync.store import LinkRow
    from metersync.targets.stripe import StripeTarget

    target = StripeTarget(API_KEY, api_base="http://127.0.0.1:9")  # rendering only
    customers = {c.key: c for c in catalog.list_customers()}
    with catalog.store.read_session() as session:
        rows = list(session.exec(select(LinkRow).where(LinkRow.kind == "customer")))
    mismatched = []
    for row in rows:
        want = expected_link(customers[row.local_key], target)
        got = {k: getattr(row, k) for k in want}
        if got != want or not row.external_id:
            mismatched.append(row.local_key)
    return {"links": len(rows), "customers": len(customers), "mismatched": mismatched[:5],
            "matches": not mismatched and len(rows) == len(customers)}


def form_encode(params: dict[str, Any]) -> bytes:
    """Stripe's form encoding for flat values and one level of objects (metadata, address)."""
    parts = []
    for name, value in params.items():
        if isinstance(value, dict):
            for sub, v in value.items():
                parts.append(f"{quote(name)}%5B{quote(str(sub), safe='')}%5D={quote(str(v), safe='')}")
        else:
            parts.append(f"{quote(name)}={quote(str(value), safe='')}")
    return "&".join(parts).encode()


async def post_creates(url: str, bodies: list[bytes], connections: int) -> list[str]:
    """POST /v1/customers for every body over raw keep-alive connections; the ids, in order."""
    parsed = httpx.URL(url)
    host, port = parsed.host, parsed.port or 80
    head = (
        f"POST /v1/customers HTTP/1.1\r\nHost: {host}:{port}\r\nConnection: keep-alive\r\n"
        f"Authorization: Bearer {API_KEY}\r\n"
        "Content-Type: application/x-www-form-urlencoded\r\nContent-Length: {length}\r\n\r\n"
    )
    ids: list[str] = [""] * len(bodies)
    cursor = iter(range(len(bodies)))

    async def connection() -> None:
        reader, writer = await asyncio.open_connection(host, port)
        try:
            for index in cursor:
                body = bodies[index]
                writer.write(head.format(length=len(body)).encode() + body)
                response_head = await reader.readuntil(b"\r\n\r\n")
                status = int(response_head[9:12])
                length = 0
                for line in response_head.split(b"\r\n")[1:]:
                    name, _, value = line.partition(b":")
                    if name.strip().lower() == b"content-length":
                        length = int(value)
                payload = await reader.readexactly(length)
                if status != 200:
                    raise RuntimeError(f"seeding create: HTTP {status}: {payload[:300]!r}")
                ids[index] = json.loads(payload)["id"]
        finally:
            writer.close()
            with contextlib.suppress(OSError):
                await writer.wait_closed()

    await asyncio.gather(*(connection() for _ in range(connections)))
    return ids


def seed_synced(catalog: Any, emulator: Emulator, n: int) -> dict[str, float]:
    """n customers in the catalog, the same n in the emulator, linked and synced."""
    from sqlalchemy import insert

    from metersync.clock import utcnow
    from metersync.store import LinkRow
    from metersync.sync.journal import Journal
    from metersync.targets.stripe import StripeTarget, _create_params

    timings: dict[str, float] = {}
    timings["catalog_insert_s"] = seed_catalog_bulk(catalog, n)

    started = time.perf_counter()
    target = StripeTarget(API_KEY, api_base=emulator.url)  # rendering only
    customers = catalog.list_customers()
    states = [target.render(c).state() for c in customers]
    bodies = [form_encode(_create_params(s)) for s in states]
    timings["render_s"] = time.perf_counter() - started

    started = time.perf_counter()
    emulator.instant()
    ids = asyncio.run(post_creates(emulator.url, bodies, connections=16))
    timings["emulator_creates_s"] = time.perf_counter() - started

    started = time.perf_counter()
    now = utcnow()
    table = LinkRow.__table__  # type: ignore[attr-defined]
    with catalog.store.session() as session:
        for start in range(0, n, 5000):
            rows = []
            for customer, external_id in zip(
                customers[start : start + 5000], ids[start : start + 5000], strict=True
            ):
                link = expected_link(customer, target)
                rows.append(
                    {
                        **link,
                        "target": TARGET_NAME,
                        "kind": "customer",
                        "local_key": customer.key,
                        "external_id": external_id,
                        "next_attempt_at": None,
                        "intent_at": None,
                        "synced_at": now,
                        "created_at": now,
                        "updated_at": now,
                    }
                )
            session.execute(insert(table), rows)
    high_water = catalog.changes_since(n).high_water  # cheap: nothing after n
    Journal(catalog.store, TARGET_NAME).advance(
        cursor=high_water, full=True, summary={"created": n}
    )
    timings["links_s"] = time.perf_counter() - started
    return {k: round(v, 2) for k, v in timings.items()}


def change_customers(catalog: Any, n: int, big: int, round_: int, rng: random.Random) -> float:
    """Rename n random customers through Catalog.update_customer."""
    started = time.perf_counter()
    for i in rng.sample(range(big), n):
        record = customer_record(i)
        catalog.update_customer(record["key"], {"name": f"{record['name']} (rev {round_})"})
    return time.perf_counter() - started


# -- the engine worker (its own process) ----------------------------------------------------------


def worker(args: argparse.Namespace) -> int:
    """Run one sync_customers in this fresh process; print its figures as one JSON line."""
    from metersync.catalog import Catalog
    from metersync.logs import configure_logging
    from metersync.settings import LogLevel
    from metersync.store import Store
    from metersync.sync.reconcile import SyncOptions, sync_customers
    from metersync.targets.stripe import StripeTarget

    configure_logging(LogLevel.WARNING)
    catalog = Catalog(Store.open(args.db))
    target = StripeTarget(API_KEY, api_base=args.emulator, rate=args.rate, timeout=60)
    options = SyncOptions(full=args.full, concurrency=args.concurrency)

    profilers: list[cProfile.Profile] = []
    main_profiler = cProfile.Profile() if args.profile_to else None
    if main_profiler is not None:
        # cProfile sees one thread; the journal's writes run in asyncio.to_thread workers, so
        # give each worker thread a profiler of its own and merge them afterwards.
        original = asyncio.to_thread
        local = threading.local()

        async def profiled_to_thread(func: Any, /, *a: Any, **k: Any) -> Any:
            def run() -> Any:
                profiler = getattr(local, "profiler", None)
                if profiler is None:
                    profiler = local.profiler = cProfile.Profile()
                    profilers.append(profiler)
                profiler.enable()
                try:
                    return func(*a, **k)
                finally:
                    profiler.disable()

            return await original(run)

        asyncio.to_thread = profiled_to_thread  # type: ignore[assignment]

    figures: dict[str, Any] = {}

    async def run() -> Any:
        rss_before = rss_mb()
        cpu_before, thread_before = time.process_time(), time.thread_time()
        started = time.perf_counter()
        if main_profiler is not None:
            main_profiler.enable()
        try:
            result = await sync_customers(catalog, target, options)
        finally:
            if main_profiler is not None:
                main_profiler.disable()
        figures.update(
            wall_s=time.perf_counter() - started,
            cpu_s=time.process_time() - cpu_before,
            main_thread_cpu_s=time.thread_time() - thread_before,
            rss_before_mb=rss_before,
            rss_after_mb=rss_mb(),
        )
        await target.close()
        return result

    result = asyncio.run(run())
    figures["peak_rss_mb"] = peak_rss_mb()
    figures = {k: round(v, 4) if isinstance(v, float) else v for k, v in figures.items()}
    limiter = target.limiter.stats
    figures.update(
        planned=result.plan.counts(),
        outcomes=result.counts,
        failures=len(result.applied.failures) if result.applied else 0,
        failure_samples=(result.applied.failures[:3] if result.applied else []),
        target_requests=target.requests,
        limiter={
            "acquired": limiter.acquired,
            "waited_s": round(limiter.waited_s, 2),
            "throttled": limiter.throttled,
        },
    )
    if main_profiler is not None:
        stats = pstats.Stats(main_profiler)
        for profiler in profilers:
            stats.add(profiler)
        stats.dump_stats(args.profile_to)
        figures["profiled_threads"] = 1 + len(profilers)
    catalog.close()
    print(RESULT_MARKER + json.dumps(figures), flush=True)
    return 0


def run_worker(
    db: Path,
    emulator: Emulator,
    *,
    full: bool,
    concurrency: int,
    rate: float,
    timeout: float,
    profile_to: Path | None = None,
) -> dict[str, Any]:
    """Run the engine once in a fresh process; returns its figures plus the emulator's count of
    the requests it sent (and the emulator's CPU meanwhile)."""
    command = [
        sys.executable,
        str(Path(__file__).resolve()),
        "--worker",
        "--db",
        f"sqlite:///{db}",
        "--emulator",
        emulator.url,
        "--concurrency",
        str(concurrency),
        "--rate",
        str(rate),
    ]
    if full:
        command.append("--full")
    if profile_to is not None:
        command += ["--profile-to", str(profile_to)]
    before, emulator_cpu = emulator.counts(), emulator.cpu()
    done = subprocess.run(  # noqa: S603 - our own interpreter and script
        command, stdout=subprocess.PIPE, text=True, timeout=timeout, check=False
    )
    after, emulator_cpu_after = emulator.counts(), emulator.cpu()
    lines = [x for x in done.stdout.splitlines() if x.startswith(RESULT_MARKER)]
    if done.returncode != 0 or not lines:
        raise RuntimeError(f"the engine worker failed (exit code {done.returncode})")
    figures: dict[str, Any] = json.loads(lines[-1][len(RESULT_MARKER) :])
    requests = delta(before, after)
    figures["requests"] = requests
    figures["requests_total"] = total(requests)
    figures["non_2xx"] = non_2xx(requests)
    figures["emulator_cpu_s"] = (
        None
        if emulator_cpu is None or emulator_cpu_after is None
        else round(emulator_cpu_after - emulator_cpu, 2)
    )
    return figures


# -- profiles -------------------------------------------------------------------------------------


def profile_summary(path: Path, limit: int = 30) -> dict[str, Any]:
    def top(order: str) -> str:
        out = io.StringIO()
        pstats.Stats(str(path), stream=out).sort_stats(order).print_stats(limit)
        lines = out.getvalue().splitlines()
        start = next((i for i, line in enumerate(lines) if "ncalls" in line), 0)
        return "\n".join(_short(line) for line in lines[start:]).rstrip() + "\n"

    # Own time by package: where the CPU goes, in a few lines.
    raw = pstats.Stats(str(path)).stats  # type: ignore[attr-defined]
    by_area: dict[str, float] = defaultdict(float)
    total_tt = 0.0
    for (filename, _, _), (_, _, tottime, _, _) in raw.items():
        by_area[_area(filename)] += tottime
        total_tt += tottime
    areas = sorted(by_area.items(), key=lambda kv: -kv[1])[:15]
    return {
        "top_cumulative": top("cumulative"),
        "top_own_time": top("tottime"),
        "own_time_by_area": {k: round(v, 3) for k, v in areas},
        "own_time_total_s": round(total_tt, 3),
    }


def _area(filename: str) -> str:
    """metersync.sync.apply, sqlalchemy, stripe, asyncio, … for a profiled function's file."""
    path = filename.replace("\\", "/")
    if "/metersync/" in path:
        tail = path.split("/metersync/", 1)[1].removesuffix(".py")
        return "metersync." + tail.replace("/", ".")
    if "site-packages/" in path:
        return path.split("site-packages/", 1)[1].split("/", 1)[0].removesuffix(".py")
    if path.startswith("~") or path.startswith("<"):
        return "builtins"
    if "/lib/python" in path:
        rest = path.split("/lib/python", 1)[1].split("/", 1)
        return "stdlib." + (rest[1].split("/", 1)[0].removesuffix(".py") if len(rest) > 1 else "")
    return path


def _short(line: str) -> str:
    for marker in ("site-packages/", "/src/metersync/", "/lib/python3"):
        if marker in line:
            head, _, tail = line.partition(marker)
            cut = head.rfind(" ")
            prefix = "metersync/" if marker == "/src/metersync/" else ""
            if marker == "/lib/python3":
                tail = tail.split("/", 1)[1] if "/" in tail else tail
            return head[: cut + 1] + prefix + tail
    return line


# -- the run --------------------------------------------------------------------------------------


def row(metric: str, value: Any, shown: str, target: str, passed: bool) -> dict[str, Any]:
    return {
        "metric": metric,
        "value": value,
        "shown": shown,
        "target": target,
        "result": "PASS" if passed else "FAIL",
    }


def run_all(args: argparse.Namespace, emulator: Emulator, scratch: Path) -> dict[str, Any]:
    from metersync.targets.stripe import StripeTarget, _create_params

    report: dict[str, Any] = {}
    rows: list[dict[str, Any]] = []
    realistic = (args.latency_ms, args.jitter_ms, args.rate, args.burst)
    profiles: dict[str, Any] = {}

    def profile_case(name: str, again: Any) -> None:
        path = scratch / f"{name}.prof"
        figures = again(path)
        profiles[name] = {"figures": _brief(figures), **profile_summary(path)}
        print(f"  profiled {name} (cProfile, all threads): CPU {figures['cpu_s']:.2f} s, "
              f"wall {figures['wall_s']:.2f} s; top by cumulative time:")
        for line in profiles[name]["top_cumulative"].splitlines()[:22]:
            print("    " + line)
        print("    own time by area: " + ", ".join(
            f"{k} {v:.2f}s" for k, v in list(profiles[name]["own_time_by_area"].items())[:8]))

    # 1. cold sync ------------------------------------------------------------------------------
    n = args.customers
    print(f"\n[1] cold sync: {n} customers, emulator {args.latency_ms:g} ± {args.jitter_ms:g} ms, "
          f"{args.rate:g} ops/s (burst {args.burst:g}); engine rate {args.rate:g}/s, "
          f"concurrency {args.concurrency}", flush=True)
    cold_db = scratch / "cold.sqlite"
    catalog = open_catalog(cold_db)
    seed_s = seed_catalog_api(catalog, n)
    print(f"  seeded {n} customers through Catalog.create_customer in {seed_s:.1f} s", flush=True)
    emulator.reset()
    emulator.realistic(*realistic)

    def cold(profile_to: Path | None = None) -> dict[str, Any]:
        return run_worker(cold_db, emulator, full=False, concurrency=args.concurrency,
                          rate=args.rate, timeout=args.timeout, profile_to=profile_to)

    c = cold()
    ideal_s = c["requests_total"] / args.rate
    efficiency = ideal_s / c["wall_s"]
    emulator.instant()
    listed = emulator.customers()
    keys = [x.get("metadata", {}).get("metersync_key") for x in listed]
    distinct = len(set(k for k in keys if k))
    recipe = check_link_recipe(catalog)
    catalog.close()
    cold_ok = (
        len(listed) == n and distinct == n and c["failures"] == 0
        and c["outcomes"].get("created") == n and not c["non_2xx"]
    )
    c.update(
        customers=n, seed_s=round(seed_s, 1), ideal_s=round(ideal_s, 2),
        efficiency=round(efficiency, 3), emulator_customers=len(listed),
        emulator_distinct_keys=distinct, link_recipe_check=recipe,
        achieved_ops_per_s=round(c["requests_total"] / c["wall_s"], 1),
    )
    report["cold"] = c
    print(f"  {c['requests_total']} requests ({_fmt_counts(c['requests'])}) in "
          f"{c['wall_s']:.2f} s = {c['achieved_ops_per_s']:.1f} req/s; ideal {ideal_s:.1f} s; "
          f"efficiency {efficiency:.3f}; engine CPU {c['cpu_s']:.1f} s "
          f"({c['cpu_s'] / c['wall_s']:.0%} of a core), emulator CPU {c['emulator_cpu_s']} s; "
          f"429s seen by the limiter {c['limiter']['throttled']}")
    print(f"  emulator holds {len(listed)} customers ({distinct} distinct keys); engine failures "
          f"{c['failures']}; link rows match the seeding recipe: {recipe['matches']}", flush=True)
    rows.append(row("cold sync efficiency", round(efficiency, 3),
                    f"{efficiency:.3f} ({c['requests_total']} req in {c['wall_s']:.1f} s)",
                    f"≥ {TARGET_EFFICIENCY}", efficiency >= TARGET_EFFICIENCY))
    rows.append(row("cold sync result", len(listed),
                    f"{len(listed)} customers, {distinct} keys, {c['failures']} failed, "
                    f"non-2xx {c['non_2xx'] or 0}",
                    f"{n} customers, 0 errors", cold_ok))

    # 2. naive loop -----------------------------------------------------------------------------
    sample = min(args.naive_sample, n)
    print(f"\n[2] naive loop: stripe SDK, one create at a time, {sample} customers, same "
          "emulator settings", flush=True)
    import stripe

    emulator.reset()
    emulator.realistic(*realistic)
    render_target = StripeTarget(API_KEY, api_base=emulator.url)
    catalog = open_catalog(cold_db)
    params = [_create_params(render_target.render(x).state())
              for x in catalog.list_customers()[:sample]]
    catalog.close()
    client = stripe.StripeClient(
        API_KEY, base_addresses={"api": emulator.url, "meter_events": emulator.url},
        max_network_retries=0, http_client=stripe.HTTPXClient(allow_sync_methods=True, timeout=60),
    )
    latencies = []
    before = emulator.counts()
    started = time.perf_counter()
    for p in params:
        t0 = time.perf_counter()
        client.v1.customers.create(p)  # type: ignore[arg-type]
        latencies.append(time.perf_counter() - t0)
    naive_s = time.perf_counter() - started
    naive_requests = delta(before, emulator.counts())
    per_customer = naive_s / sample
    extrapolated = per_customer * n
    speedup = extrapolated / c["wall_s"]
    report["naive"] = {
        "sample": sample, "wall_s": round(naive_s, 2), "per_customer_ms": round(per_customer * 1000, 1),
        "latency_ms": percentiles(latencies), "extrapolated_s": round(extrapolated, 1),
        "requests": naive_requests, "speedup": round(speedup, 2),
    }
    print(f"  {sample} creates in {naive_s:.1f} s = {per_customer * 1000:.0f} ms each "
          f"(p50 {report['naive']['latency_ms'].get('p50', 0):.0f} ms); {n} would take "
          f"{extrapolated:.0f} s; the engine took {c['wall_s']:.1f} s: {speedup:.1f}× faster",
          flush=True)
    rows.append(row("speedup over the naive loop", round(speedup, 2),
                    f"{speedup:.1f}× ({extrapolated:.0f} s vs {c['wall_s']:.1f} s)",
                    f"≥ {TARGET_SPEEDUP:g}×", speedup >= TARGET_SPEEDUP))
    if args.profile or (not cold_ok or efficiency < TARGET_EFFICIENCY or speedup < TARGET_SPEEDUP):
        # A fresh catalog and emulator, the same settings, under cProfile.
        def cold_again(path: Path) -> dict[str, Any]:
            nonlocal cold_db
            cold_db = scratch / "cold-profile.sqlite"
            cat = open_catalog(cold_db)
            seed_catalog_api(cat, n)
            cat.close()
            emulator.reset()
            emulator.realistic(*realistic)
            return cold(path)

        profile_case("cold", cold_again)

    # 3. seed 100,000 synced --------------------------------------------------------------------
    big = args.big
    print(f"\n[3] seeding {big} synced customers (bulk catalog insert, emulator creates at "
          "latency 0, link rows as Journal.synced writes them)", flush=True)
    emulator.reset()
    emulator.instant()
    big_db = scratch / "big.sqlite"
    catalog = open_catalog(big_db)
    timings = seed_synced(catalog, emulator, big)
    same_as_api = check_bulk_matches_api(catalog)
    print(f"  {timings}; bulk rows equal Catalog.create_customer's: {same_as_api}", flush=True)
    report["seed"] = {"customers": big, **timings, "bulk_matches_api": same_as_api,
                      "link_recipe_checked_in_cold_sync": recipe["matches"]}
    rng = random.Random(20240607)  # noqa: S311 - which customers change, reproducibly

    # 4. incremental tick -----------------------------------------------------------------------
    k = args.changes
    print(f"\n[4] incremental tick: {k} changes among {big}; emulator latency 0, no rate limit "
          "(local cost)", flush=True)
    change_s = change_customers(catalog, k, big, 1, rng)

    def tick(profile_to: Path | None = None) -> dict[str, Any]:
        return run_worker(big_db, emulator, full=False, concurrency=args.concurrency,
                          rate=UNLIMITED_RATE, timeout=args.timeout, profile_to=profile_to)

    t = tick()
    updates = total(t["requests"], ["customers.update"])
    writes = total(t["requests"], WRITE_ENDPOINTS)
    lists = total(t["requests"], ["customers.list"])
    t.update(changes=k, change_s=round(change_s, 2), updates=updates, writes=writes, lists=lists)
    report["tick"] = t
    print(f"  requests {_fmt_counts(t['requests'])}; wall {t['wall_s']:.3f} s, engine CPU "
          f"{t['cpu_s']:.3f} s (main thread {t['main_thread_cpu_s']:.3f} s); planned "
          f"{t['planned']}; peak RSS {t['peak_rss_mb']:.0f} MB", flush=True)
    tick_rows = [
        row("tick: customers.update requests", updates, str(updates), f"= {k}", updates == k),
        row("tick: all writes", writes, str(writes), f"= {k}", writes == k and not t["non_2xx"]),
        row("tick: customers.list requests", lists, str(lists), "= 0", lists == 0),
        row("tick: local wall (latency 0)", t["wall_s"], f"{t['wall_s']:.3f} s",
            f"< {TARGET_TICK_S:g} s", t["wall_s"] < TARGET_TICK_S),
        row("tick: engine CPU", t["cpu_s"], f"{t['cpu_s']:.3f} s", f"< {TARGET_TICK_S:g} s",
            t["cpu_s"] < TARGET_TICK_S),
    ]
    rows += tick_rows
    if args.profile or any(r["result"] == "FAIL" for r in tick_rows):
        round_ = [1]

        def tick_again(path: Path) -> dict[str, Any]:
            round_[0] += 1
            change_customers(catalog, k, big, round_[0] + 10, rng)
            return tick(path)

        profile_case("tick", tick_again)

    # 4b. the same tick at the realistic latency (context, no target)
    if not args.skip_realistic_tick:
        change_customers(catalog, k, big, 2, rng)
        emulator.realistic(*realistic)
        r = run_worker(big_db, emulator, full=False, concurrency=args.concurrency,
                       rate=args.rate, timeout=args.timeout)
        emulator.instant()
        report["tick_realistic"] = r
        print(f"  for context, a {k}-change tick at {args.latency_ms:g} ± {args.jitter_ms:g} ms "
              f"and {args.rate:g}/s: wall {r['wall_s']:.2f} s, requests "
              f"{_fmt_counts(r['requests'])}", flush=True)

    # 5. no-op full reconcile -------------------------------------------------------------------
    print(f"\n[5] no-op full reconcile of {big}; emulator latency 0, no rate limit", flush=True)
    catalog.close()

    def noop(profile_to: Path | None = None) -> dict[str, Any]:
        return run_worker(big_db, emulator, full=True, concurrency=args.concurrency,
                          rate=UNLIMITED_RATE, timeout=args.timeout, profile_to=profile_to)

    f = noop()
    pages = total(f["requests"], ["customers.list"])
    writes = total(f["requests"], WRITE_ENDPOINTS)
    want_pages = math.ceil(big / 100)
    f.update(pages=pages, writes=writes)
    report["noop"] = f
    print(f"  requests {_fmt_counts(f['requests'])}; wall {f['wall_s']:.2f} s (emulator CPU "
          f"{f['emulator_cpu_s']} s); engine CPU {f['cpu_s']:.2f} s (main thread "
          f"{f['main_thread_cpu_s']:.2f} s); RSS {f['rss_before_mb']:.0f} MB before, peak "
          f"{f['peak_rss_mb']:.0f} MB; planned {f['planned']}", flush=True)
    noop_rows = [
        row("no-op full: customers.list pages", pages, str(pages), f"= {want_pages}",
            pages == want_pages),
        row("no-op full: writes", writes, str(writes), "= 0",
            writes == 0 and not f["non_2xx"] and f["planned"].get("skip") == big),
        row("no-op full: engine CPU", f["cpu_s"], f"{f['cpu_s']:.2f} s",
            f"≤ {TARGET_NOOP_CPU_S:g} s", f["cpu_s"] <= TARGET_NOOP_CPU_S),
        row("no-op full: peak RSS", f["peak_rss_mb"], f"{f['peak_rss_mb']:.0f} MB",
            f"≤ {TARGET_NOOP_RSS_MB:g} MB", f["peak_rss_mb"] <= TARGET_NOOP_RSS_MB),
    ]
    rows += noop_rows
    if args.profile or any(r["result"] == "FAIL" for r in noop_rows):
        profile_case("noop", noop)

    report["verdict"] = rows
    report["profiles"] = profiles
    return report


def _brief(figures: dict[str, Any]) -> dict[str, Any]:
    keys = ("wall_s", "cpu_s", "main_thread_cpu_s", "peak_rss_mb", "requests_total",
            "profiled_threads")
    return {k: figures.get(k) for k in keys}


def _fmt_counts(counts: dict[str, dict[str, int]]) -> str:
    if not counts:
        return "none"
    return ", ".join(
        f"{endpoint} " + "/".join(f"{n}×{status}" for status, n in sorted(per.items()))
        for endpoint, per in sorted(counts.items())
    )


def verdict_table(rows: list[dict[str, Any]]) -> list[str]:
    width = max(len(r["metric"]) for r in rows)
    vwidth = max(len(r["shown"]) for r in rows)
    twidth = max(len(r["target"]) for r in rows)
    lines = [f"{'metric':{width}}  {'value':{vwidth}}  {'target':{twidth}}  result"]
    lines += [
        f"{r['metric']:{width}}  {r['shown']:{vwidth}}  {r['target']:{twidth}}  {r['result']}"
        for r in rows
    ]
    return lines


def markdown(report: dict[str, Any]) -> str:
    m = report["machine"]
    p = report["parameters"]
    c = report["cold"]
    n = report["naive"]
    t = report["tick"]
    f = report["noop"]
    s = report["seed"]
    passed = report["result"] == "PASS"
    lines = [
        "# Customer sync to Stripe",
        "",
        f"Run {report['date']} with `{report['command']}`"
        + (" (a --quick smoke run: small sizes)" if p["quick"] else "")
        + ".",
        "",
        f"**{report['result']}**: "
        + ("every target met." if passed else
           f"{sum(r['result'] == 'FAIL' for r in report['verdict'])} of "
           f"{len(report['verdict'])} figures miss their target."),
        "",
        "| metric | value | target | result |",
        "|---|---|---|---|",
    ]
    lines += [
        f"| {r['metric']} | {r['shown']} | {r['target']} | {r['result']} |"
        for r in report["verdict"]
    ]
    lines += [
        "",
        f"Machine: {m['cpu_model']}, {m['cpu_count']} cores ({m['usable_cpus']} usable), "
        f"{m['memory_gib']} GiB, {m['python']}, {m['os']}; load average at start "
        f"{m['load_average_at_start']}.",
        "",
        "## How",
        "",
        f"- The emulator runs in its own process; each engine run (`sync_customers` with "
        f"`StripeTarget`, SQLite catalog) in a fresh process of its own, so its CPU "
        f"(`time.process_time`, all threads) and peak RSS (`getrusage` ru_maxrss, the whole "
        f"process including its ~{f['rss_before_mb']:.0f} MB of imports and store) are the "
        f"engine's. Requests are counted by the emulator (`/_emulator/stats`).",
        f"- **Cold sync**: {c['customers']} customers created through `Catalog.create_customer` "
        f"({c['seed_s']} s), then one incremental `sync_customers` (= {c['customers']} creates) "
        f"with the emulator at {p['latency_ms']:g} ± {p['jitter_ms']:g} ms and "
        f"{p['rate']:g} ops/s (burst {p['burst']:g}), engine `rate={p['rate']:g}`, "
        f"`concurrency={p['concurrency']}` (default 16). Efficiency = (requests ÷ "
        f"{p['rate']:g}/s) ÷ wall = {c['ideal_s']} s ÷ {c['wall_s']:.2f} s. Engine CPU "
        f"{c['cpu_s']:.1f} s ({c['cpu_s'] / c['wall_s']:.0%} of a core); emulator CPU "
        f"{c['emulator_cpu_s']} s; requests: {_fmt_counts(c['requests'])}.",
        f"- **Naive loop**: stripe-python `StripeClient` (sync, HTTPX), one "
        f"`customers.create` at a time with the engine's create parameters, {n['sample']} "
        f"customers against the reset emulator at the same settings: {n['wall_s']} s, "
        f"{n['per_customer_ms']} ms each (p50 {n['latency_ms'].get('p50', 0):.0f} ms), "
        f"extrapolated to {c['customers']}: {n['extrapolated_s']} s.",
        f"- **100,000 seeding** ({s['customers']}): bulk insert of the rows "
        f"`Catalog.create_customer` writes (checked equal on a sample: {s['bulk_matches_api']}); "
        f"`StripeTarget.render` → the engine's create parameters → `POST /v1/customers` at "
        f"latency 0; link rows and cursor as `Journal.synced`/`advance` write them (checked "
        f"against the engine's own rows from the cold sync: "
        f"{s['link_recipe_checked_in_cold_sync']}). Timings: catalog {s['catalog_insert_s']} s, "
        f"render {s['render_s']} s, emulator creates {s['emulator_creates_s']} s, links "
        f"{s['links_s']} s.",
        f"- **Scaled for the 100,000 cases**: the tick and the no-op reconcile run with the "
        f"emulator at latency 0 and no rate limit (engine limiter at {UNLIMITED_RATE:g}/s), so "
        f"wall and CPU are local cost. Tick: {t['changes']} customers renamed through "
        f"`Catalog.update_customer`; planned {t['planned']}; wall {t['wall_s']:.3f} s, CPU "
        f"{t['cpu_s']:.3f} s, peak RSS {t['peak_rss_mb']:.0f} MB. No-op full: planned "
        f"{f['planned']}; wall {f['wall_s']:.2f} s (emulator CPU {f['emulator_cpu_s']} s), "
        f"engine CPU {f['cpu_s']:.2f} s (main thread {f['main_thread_cpu_s']:.2f} s), RSS "
        f"{f['rss_before_mb']:.0f} MB before the call, peak {f['peak_rss_mb']:.0f} MB.",
    ]
    r = report.get("tick_realistic")
    if r:
        lines.append(
            f"- For context (no target): a {t['changes']}-change tick at "
            f"{p['latency_ms']:g} ± {p['jitter_ms']:g} ms and {p['rate']:g}/s took "
            f"{r['wall_s']:.2f} s wall ({_fmt_counts(r['requests'])})."
        )
    for name, prof in report.get("profiles", {}).items():
        fig = prof["figures"]
        lines += [
            "",
            f"## Profile: {name} (cProfile, every thread of the engine process)",
            "",
            f"Profiled re-run: wall {fig['wall_s']:.2f} s, CPU {fig['cpu_s']:.2f} s (profiler "
            f"overhead included), {fig['profiled_threads']} threads. Own time by area: "
            + ", ".join(f"{k} {v:.2f} s" for k, v in prof["own_time_by_area"].items())
            + ".",
            "",
            "Top functions by cumulative time:",
            "",
            "```",
            *prof["top_cumulative"].rstrip().splitlines(),
            "```",
            "",
            "Top functions by own time:",
            "",
            "```",
            *prof["top_own_time"].rstrip().splitlines(),
            "```",
        ]
    return "\n".join(lines) + "\n"


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description="Benchmark metersync's customer sync to Stripe against the emulator."
    )
    parser.add_argument("--customers", type=int, default=None, help="cold sync size (5000)")
    parser.add_argument("--naive-sample", type=int, default=None,
                        help="customers the naive loop creates, extrapolated (200)")
    parser.add_argument("--big", type=int, default=None,
                        help="customers for the tick and the no-op reconcile (100000)")
    parser.add_argument("--changes", type=int, default=None, help="changes in the tick (100)")
    parser.add_argument("--concurrency", type=int, default=32,
                        help="SyncOptions.concurrency (default 32)")
    parser.add_argument("--latency-ms", type=float, default=200.0)
    parser.add_argument("--jitter-ms", type=float, default=50.0)
    parser.add_argument("--rate", type=float, default=100.0,
                        help="emulator rate limit and StripeTarget rate, ops/s (default 100)")
    parser.add_argument("--burst", type=float, default=10.0, help="emulator burst (default 10)")
    parser.add_argument("--timeout", type=float, default=900.0,
                        help="seconds an engine run may take before it is killed (default 900)")
    parser.add_argument("--skip-realistic-tick", action="store_true",
                        help="skip the context tick at the realistic latency")
    parser.add_argument("--quick", action="store_true",
                        help="small sizes (300 / 20 / 2,000 / 20); writes no files")
    parser.add_argument("--profile", action="store_true",
                        help="profile every engine case (failed ones are always profiled)")
    parser.add_argument("--output", type=Path, default=None,
                        help=f"results directory (default {RESULTS_DIR}; --quick writes only "
                        "when given)")
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--db", help=argparse.SUPPRESS)
    parser.add_argument("--emulator", help=argparse.SUPPRESS)
    parser.add_argument("--full", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--profile-to", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    sizes = (300, 20, 2000, 20) if args.quick else (5000, 200, 100_000, 100)
    for name, default in zip(("customers", "naive_sample", "big", "changes"), sizes, strict=True):
        if getattr(args, name) is None:
            setattr(args, name, default)
    if args.changes > args.big or min(args.customers, args.naive_sample, args.big) < 1:
        parser.error("sizes must be positive, and --changes at most --big")
    if args.big > 200_000 or args.customers > 50_000:
        parser.error("sizes are capped (--big 200,000, --customers 50,000)")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.worker:
        return worker(args)

    def on_sigterm(*_: Any) -> None:
        raise SystemExit(143)  # unwind, so the subprocesses are stopped

    signal.signal(signal.SIGTERM, on_sigterm)
    from metersync.logs import configure_logging
    from metersync.settings import LogLevel

    configure_logging(LogLevel.WARNING)
    info = machine()
    print("Customer sync to Stripe (bench/customers.py)")
    print(f"machine: {info['cpu_model']}; {info['cpu_count']} cores ({info['usable_cpus']} "
          f"usable); {info['memory_gib']} GiB; {info['python']}; {info['os']}; load average "
          f"{info['load_average_at_start']}", flush=True)
    started = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="bench-customers-") as scratch:
        with emulator_process() as (url, pid):
            print(f"emulator: {url} (pid {pid}, its own process)", flush=True)
            emulator = Emulator(url, pid)
            try:
                report = run_all(args, emulator, Path(scratch))
            finally:
                emulator.close()
    rows = report["verdict"]
    result = "PASS" if all(r["result"] == "PASS" for r in rows) else "FAIL"
    full_report: dict[str, Any] = {
        "benchmark": "customers",
        "date": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        "command": " ".join(
            ["python", "bench/customers.py", *(sys.argv[1:] if argv is None else argv)]
        ),
        "machine": info,
        "load_average_at_end": [round(x, 2) for x in os.getloadavg()],
        "versions": versions(),
        "parameters": {
            "customers": args.customers,
            "naive_sample": args.naive_sample,
            "big": args.big,
            "changes": args.changes,
            "concurrency": args.concurrency,
            "latency_ms": args.latency_ms,
            "jitter_ms": args.jitter_ms,
            "rate": args.rate,
            "burst": args.burst,
            "quick": args.quick,
            "scaled_for_big_cases": {"latency_ms": 0, "rate_limit": None,
                                     "engine_rate": UNLIMITED_RATE},
        },
        **report,
        "result": result,
        "wall_seconds": round(time.monotonic() - started, 1),
    }
    print("\n" + "\n".join(verdict_table(rows)))
    print(f"VERDICT: {result} ({sum(r['result'] == 'PASS' for r in rows)}/{len(rows)} targets "
          f"met) in {full_report['wall_seconds']:.0f} s")
    if not args.quick or args.output is not None:
        directory = args.output or RESULTS_DIR
        directory.mkdir(parents=True, exist_ok=True)
        json_path, md_path = directory / "customers.json", directory / "customers.md"
        json_path.write_text(json.dumps(full_report, indent=2) + "\n")
        md_path.write_text(markdown(full_report))
        print(f"wrote {json_path}\nwrote {md_path}")
    return 0 if result == "PASS" else 1


if __name__ == "__main__":
    with contextlib.suppress(KeyboardInterrupt):
        sys.exit(main())
    sys.exit(130)
