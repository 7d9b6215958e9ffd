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
its CPU time (time.process_time, all threads) and peak RSS (VmHWM of /proc/self/status; on
Linux getrusage's ru_maxrss carries the parent's peak across fork and exec) are the engine's
alone. The naive loop and the seeding run in the parent. Requests are counted by the emulator
(GET /_emulator/stats, before/after each run). The tick runs several times (each after its own
changes); its verdict is on the median run.

Seeding the 100,000: customers are bulk-inserted into the catalog (the rows Catalog.create_customer
writes, checked against it on a sample); each is rendered by StripeTarget.render and created in
the emulator with the engine's own create parameters (raw HTTP, latency 0); then the link rows
and the sync cursor are written as Journal.mark_synced/advance would. The recipe is checked against
the link rows the engine itself wrote in the cold sync. A failed engine case is re-run under
cProfile (every thread of the worker) and its top functions go to the report.

    .venv/bin/python bench/customers.py            # the full run, a few minutes
    .venv/bin/python bench/customers.py --quick    # small sizes, under a minute, writes nothing
    .venv/bin/python bench/customers.py --profile  # also profile the cases that pass
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import cProfile
import datetime as dt
import functools
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

# bench/emulator.py: the emulator subprocess, the machine's description, CPU of a process.
sys.path.insert(0, str(Path(__file__).resolve().parent))
from emulator import (
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
    """Peak resident set of this process: VmHWM, the high-water mark of its own address space.

    Not getrusage's ru_maxrss: on Linux that survives fork and exec, so a worker started by a
    parent holding 400 MB reports at least 400 MB before it has done anything.
    """
    with contextlib.suppress(OSError, ValueError, IndexError):
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return round(int(line.split()[1]) / 1024, 1)
    return round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)


def ru_maxrss_mb() -> float:
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


def source_state() -> dict[str, Any]:
    """Which engine was measured: the commit, and whether src/ differs from it."""
    root = Path(__file__).resolve().parent.parent

    def git(*args: str) -> str:
        try:
            done = subprocess.run(
                ["git", "-C", str(root), *args], capture_output=True, text=True, timeout=30
            )
        except (OSError, subprocess.TimeoutExpired):
            return "?"
        return done.stdout.strip() if done.returncode == 0 else "?"

    status = git("status", "--porcelain", "--", "src")
    return {
        "commit": git("rev-parse", "--short", "HEAD"),
        "src_changes": status.splitlines() if status and status != "?" else [],
    }


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

        ours = {
            c.key: shape(c)
            for c in bulk.customers_by_keys(customer_record(i)["key"] for i in range(sample))
        }
        theirs = {c.key: shape(c) for c in reference.list_customers()}
        return ours == theirs
    finally:
        reference.close()


def expected_link(customer: Any, target: Any) -> dict[str, Any]:
    """What Journal.mark_synced writes after the create of `customer` (minus ids and times)."""
    from metersync.sync.model import digest, fingerprint

    state = target.render(customer).state()
    return {
        "state": "synced",
        "synced_state": state,
        "synced_hash": digest(state),
        "owned_metadata_keys": sorted(state["metadata"]),
        "synced_seq": customer.change_seq,
        "synced_fingerprint": fingerprint(
            target.render_version, state["fields"], state["metadata"]
        ),
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
    return {
        "links": len(rows),
        "customers": len(customers),
        "mismatched": mismatched[:5],
        "matches": not mismatched and len(rows) == len(customers),
    }


def form_encode(params: dict[str, Any]) -> bytes:
    """Stripe's form encoding for flat values and one level of objects (metadata, address)."""
    parts = []
    for name, value in params.items():
        if isinstance(value, dict):
            for sub, v in value.items():
                parts.append(
                    f"{quote(name)}%5B{quote(str(sub), safe='')}%5D={quote(str(v), safe='')}"
                )
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
    from metersync.targets.stripe import StripeTarget
    from metersync.targets.stripe._customer_records import create_params

    timings: dict[str, float] = {}
    timings["catalog_insert_s"] = seed_catalog_bulk(catalog, n)

    started = time.perf_counter()
    target = StripeTarget(API_KEY, api_base=emulator.url)  # rendering only
    customers = catalog.list_customers()
    states = [target.render(c).state() for c in customers]
    bodies = [form_encode(create_params(s)) for s in states]
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


class Phases:
    """Wall, CPU and memory of the coarse steps of sync_customers, measured from outside.

    The worker wraps a few functions that sync_customers calls once each (the catalog read, the
    target listing, the links, the plan, the apply, …). A call made while another phase is
    running (the applier's per-item journal reads) counts towards that phase. Cheap enough for
    the measured runs (about ten readings of /proc/self/status). With `trace`, tracemalloc runs
    and the allocation sites are kept at the phase boundary holding the most memory.
    """

    def __init__(self, *, trace: bool = False) -> None:
        self.rows: dict[str, dict[str, Any]] = {}
        self.active: str | None = None
        self.trace = trace
        self.best: tuple[int, str, Any] | None = None  # (traced bytes, phase, snapshot)
        self.traced_peak = 0

    def install(self) -> None:
        from metersync.catalog import Catalog
        from metersync.sync import customer_sync
        from metersync.sync.apply import Applier
        from metersync.sync.journal import Journal
        from metersync.sync.model import Snapshot
        from metersync.targets.stripe import StripeTarget

        self._wrap(Catalog, "changes_since", "catalog.changes_since")
        self._wrap(Catalog, "customers_by_keys", "catalog.customers_by_keys")
        self._wrap(StripeTarget, "list_customers", "target.list_customers", is_async=True)
        self._wrap(Snapshot, "of", "Snapshot.of")
        self._wrap(Journal, "cursor", "journal.cursor")
        self._wrap(Journal, "due", "journal.due")
        self._wrap(Journal, "links", "journal.links")
        self._wrap(customer_sync, "plan_customers", "plan_customers")
        self._wrap(Applier, "run", "Applier.run (apply)", is_async=True)
        self._wrap(Journal, "route_subjects", "journal.route_subjects")
        self._wrap(Journal, "advance", "journal.advance")

    def _wrap(self, owner: Any, attr: str, name: str, *, is_async: bool = False) -> None:
        original = getattr(owner, attr)
        phases = self
        if is_async:

            async def wrapped_async(*a: Any, **k: Any) -> Any:
                if phases.active is not None:
                    return await original(*a, **k)
                mark = phases.begin(name)
                try:
                    return await original(*a, **k)
                finally:
                    phases.end(name, mark)

            setattr(owner, attr, functools.wraps(original)(wrapped_async))
        else:

            def wrapped(*a: Any, **k: Any) -> Any:
                if phases.active is not None:
                    return original(*a, **k)
                mark = phases.begin(name)
                try:
                    return original(*a, **k)
                finally:
                    phases.end(name, mark)

            setattr(owner, attr, functools.wraps(original)(wrapped))

    def begin(self, name: str) -> tuple[float, float, float]:
        self.active = name
        if self.trace:
            import tracemalloc

            tracemalloc.reset_peak()
        return time.perf_counter(), time.process_time(), rss_mb()

    def end(self, name: str, mark: tuple[float, float, float]) -> None:
        wall, cpu, rss = mark
        now_rss = rss_mb()
        row = self.rows.setdefault(
            name, {"calls": 0, "wall_s": 0.0, "cpu_s": 0.0, "rss_growth_mb": 0.0}
        )
        row["calls"] += 1
        row["wall_s"] += time.perf_counter() - wall
        row["cpu_s"] += time.process_time() - cpu
        row["rss_growth_mb"] += now_rss - rss
        row["rss_after_mb"] = now_rss
        row["peak_rss_after_mb"] = peak_rss_mb()
        if self.trace:
            import tracemalloc

            current, peak = tracemalloc.get_traced_memory()
            self.traced_peak = max(self.traced_peak, peak)
            row["traced_mb"] = round(current / 2**20, 1)
            row["traced_peak_in_phase_mb"] = round(peak / 2**20, 1)
            if self.best is None or current > self.best[0]:
                self.best = (current, name, tracemalloc.take_snapshot())
        self.active = None

    def report(self, total_wall: float, total_cpu: float) -> dict[str, Any]:
        rows = {
            k: {m: round(v, 3) if isinstance(v, float) else v for m, v in r.items()}
            for k, r in self.rows.items()
        }
        wall = sum(r["wall_s"] for r in self.rows.values())
        cpu = sum(r["cpu_s"] for r in self.rows.values())
        rows["rest of sync_customers (render, glue)"] = {
            "calls": 1,
            "wall_s": round(total_wall - wall, 3),
            "cpu_s": round(total_cpu - cpu, 3),
        }
        out: dict[str, Any] = {"phases": rows}
        if self.trace and self.best is not None:
            size, phase, snapshot = self.best
            top = snapshot.statistics("lineno")[:15]
            out["tracemalloc"] = {
                "at_end_of": phase,
                "traced_mb": round(size / 2**20, 1),
                "traced_peak_mb": round(self.traced_peak / 2**20, 1),
                "top": [
                    {
                        "where": _short_path(str(stat.traceback[0].filename))
                        + f":{stat.traceback[0].lineno}",
                        "mb": round(stat.size / 2**20, 1),
                        "blocks": stat.count,
                    }
                    for stat in top
                ],
            }
        return out


def _short_path(path: str) -> str:
    for marker in ("site-packages/", "/src/"):
        if marker in path:
            return path.split(marker, 1)[1]
    return path.rsplit("/lib/", 1)[-1]


def worker(args: argparse.Namespace) -> int:
    """Run one sync_customers in this fresh process; print its figures as one JSON line."""
    from metersync.catalog import Catalog
    from metersync.logs import configure_logging
    from metersync.settings import LogLevel
    from metersync.store import Store
    from metersync.sync.customer_sync import SyncOptions, sync_customers
    from metersync.targets.stripe import StripeTarget

    configure_logging(LogLevel.WARNING)
    catalog = Catalog(Store.open(args.db))
    target = StripeTarget(API_KEY, api_base=args.emulator, rate=args.rate, timeout=60)
    options = SyncOptions(full=args.full, concurrency=args.concurrency)
    phases = Phases(trace=args.tracemalloc)
    phases.install()
    if args.tracemalloc:
        import tracemalloc

        tracemalloc.start()

    profilers: list[cProfile.Profile] = []
    # CPU time per thread (time.thread_time), so waiting for the emulator does not show.
    main_profiler = cProfile.Profile(time.thread_time) if args.profile_to else None
    if main_profiler is not None:
        # cProfile sees one thread; the journal's writes run in asyncio.to_thread workers, so
        # give each worker thread a profiler of its own and merge them afterwards.
        original = asyncio.to_thread
        local = threading.local()

        async def profiled_to_thread(func: Any, /, *a: Any, **k: Any) -> Any:
            def run() -> Any:
                profiler = getattr(local, "profiler", None)
                if profiler is None:
                    profiler = local.profiler = cProfile.Profile(time.thread_time)
                    profilers.append(profiler)
                profiler.enable()
                try:
                    return func(*a, **k)
                finally:
                    profiler.disable()

            return await original(run)

        asyncio.to_thread = profiled_to_thread

    figures: dict[str, Any] = {}

    async def run() -> Any:
        rss_before = rss_mb()
        times_before = os.times()
        cpu_before, thread_before = time.process_time(), time.thread_time()
        figures["started_epoch"] = time.time()
        started = time.perf_counter()
        if main_profiler is not None:
            main_profiler.enable()
        try:
            result = await sync_customers(catalog, target, options)
        finally:
            if main_profiler is not None:
                main_profiler.disable()
        wall, cpu = time.perf_counter() - started, time.process_time() - cpu_before
        times_after = os.times()
        figures.update(
            ended_epoch=time.time(),
            wall_s=wall,
            cpu_s=cpu,
            cpu_user_s=times_after.user - times_before.user,
            cpu_system_s=times_after.system - times_before.system,
            main_thread_cpu_s=time.thread_time() - thread_before,
            rss_before_mb=rss_before,
            rss_after_mb=rss_mb(),
        )
        figures.update(phases.report(wall, cpu))
        await target.close()
        return result

    result = asyncio.run(run())
    figures["peak_rss_mb"] = peak_rss_mb()
    figures["ru_maxrss_mb"] = ru_maxrss_mb()  # for reference: includes the parent's peak
    figures = {
        k: round(v, 4) if isinstance(v, float) and not k.endswith("epoch") else v
        for k, v in figures.items()
    }
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
            "rate_at_end": round(target.limiter.current, 1),
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
    tracemalloc: bool = False,
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
    if tracemalloc:
        command.append("--tracemalloc")
    before, emulator_cpu = emulator.counts(), emulator.cpu()
    done = subprocess.run(command, stdout=subprocess.PIPE, text=True, timeout=timeout, check=False)
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


def timeline(entries: list[dict[str, Any]], figures: dict[str, Any], rate: float) -> dict[str, Any]:
    """Where a rate-limited run's wall time went, from the emulator's request log (arrival
    times) and the worker's start and end: wall = ideal + lost before the first request + lost
    in the middle (below the rate) + lost after the last one."""
    start, end = figures["started_epoch"], figures["ended_epoch"]
    calls = sorted(
        (e for e in entries if str(e.get("endpoint", "")).startswith("customers.")),
        key=lambda e: e["time"],
    )
    if not calls:
        return {}
    times = [e["time"] - start for e in calls]
    n = len(times)
    per_second: dict[int, int] = defaultdict(int)
    for t in times:
        per_second[int(t)] += 1
    seconds = range(int(times[0]), int(times[-1]) + 1)
    ideal = n / rate
    span = times[-1] - times[0]
    before = times[0]
    after = (end - start) - times[-1]
    return {
        "requests": n,
        "ideal_s": round(ideal, 2),
        "before_first_request_s": round(before, 2),
        "request_span_s": round(span, 2),
        "after_last_request_s": round(after, 2),
        "lost_in_span_s": round(span - (n - 1) / rate, 2),
        "rate_in_span": round((n - 1) / span, 1) if span else None,
        "throttled_at_s": [round(e["time"] - start, 2) for e in calls if e["status"] == 429],
        "slow_seconds": [
            [s, per_second.get(s, 0)]
            for s in seconds
            if per_second.get(s, 0) < 0.9 * rate and s not in (seconds[0], seconds[-1])
        ][:30],
        "per_second": [per_second.get(s, 0) for s in seconds],
    }


def print_phases(figures: dict[str, Any], indent: str = "    ") -> None:
    phases = figures.get("phases") or {}
    if not phases:
        return
    print(
        f"{indent}{'phase':42} {'calls':>5} {'wall s':>8} {'CPU s':>8} {'RSS +MB':>8} "
        f"{'peak MB':>8}"
    )
    for name, r in phases.items():
        growth = r.get("rss_growth_mb")
        peak = r.get("peak_rss_after_mb")
        print(
            f"{indent}{name:42} {r['calls']:>5} {r['wall_s']:>8.3f} {r['cpu_s']:>8.3f} "
            f"{'' if growth is None else f'{growth:8.1f}':>8} "
            f"{'' if peak is None else f'{peak:8.0f}':>8}"
        )


def run_all(args: argparse.Namespace, emulator: Emulator, scratch: Path) -> dict[str, Any]:
    from metersync.targets.stripe import StripeTarget
    from metersync.targets.stripe._customer_records import create_params

    report: dict[str, Any] = {}
    rows: list[dict[str, Any]] = []
    realistic = (args.latency_ms, args.jitter_ms, args.rate, args.burst)
    profiles: dict[str, Any] = {}

    def profile_case(name: str, again: Any, *, memory: bool) -> None:
        """Re-run a case under cProfile (CPU time of every thread), and with `memory` once more
        under tracemalloc; the measured figures are not these runs'."""
        path = scratch / f"{name}.prof"
        figures = again(profile_to=path)
        entry: dict[str, Any] = {"figures": _brief(figures), **profile_summary(path)}
        print(
            f"  profiled {name} (cProfile on thread CPU time, all threads): CPU "
            f"{figures['cpu_s']:.2f} s with the profiler; top by cumulative time:"
        )
        for line in entry["top_cumulative"].splitlines()[:26]:
            print("    " + line)
        print(
            "    own CPU time by area: "
            + ", ".join(f"{k} {v:.2f}s" for k, v in list(entry["own_time_by_area"].items())[:10])
        )
        if memory:
            traced = again(tracemalloc=True)
            entry["tracemalloc"] = traced.get("tracemalloc")
            entry["tracemalloc_phases"] = traced.get("phases")
            tm = traced.get("tracemalloc") or {}
            print(
                f"  memory of {name} (tracemalloc): {tm.get('traced_mb')} MB live at the end "
                f"of {tm.get('at_end_of')} (traced peak {tm.get('traced_peak_mb')} MB); top "
                "allocation sites:"
            )
            for site in tm.get("top", [])[:12]:
                print(f"    {site['mb']:8.1f} MB {site['blocks']:>9} blocks  {site['where']}")
            print(
                "    live after / peak within each phase, MB: "
                + ", ".join(
                    f"{k} {v.get('traced_mb')}/{v.get('traced_peak_in_phase_mb')}"
                    for k, v in (traced.get("phases") or {}).items()
                    if v.get("traced_mb") is not None
                )
            )
        profiles[name] = entry

    # 1. cold sync ------------------------------------------------------------------------------
    n = args.customers
    print(
        f"\n[1] cold sync: {n} customers, emulator {args.latency_ms:g} ± {args.jitter_ms:g} ms, "
        f"{args.rate:g} ops/s (burst {args.burst:g}); engine rate {args.rate:g}/s, "
        f"concurrency {args.concurrency}",
        flush=True,
    )
    cold_db = scratch / "cold.sqlite"
    catalog = open_catalog(cold_db)
    seed_s = seed_catalog_api(catalog, n)
    print(f"  seeded {n} customers through Catalog.create_customer in {seed_s:.1f} s", flush=True)
    emulator.reset()
    emulator.realistic(*realistic)

    def cold(**kw: Any) -> dict[str, Any]:
        return run_worker(
            cold_db,
            emulator,
            full=False,
            concurrency=args.concurrency,
            rate=args.rate,
            timeout=args.timeout,
            **kw,
        )

    c = cold()
    log = emulator.http.get("/_emulator/requests").json()["data"]
    c["timeline"] = timeline(log, c, args.rate)
    ideal_s = c["requests_total"] / args.rate
    efficiency = ideal_s / c["wall_s"]
    emulator.instant()
    listed = emulator.customers()
    keys = [x.get("metadata", {}).get("metersync_key") for x in listed]
    distinct = len(set(k for k in keys if k))
    recipe = check_link_recipe(catalog)
    catalog.close()
    other_errors = {k: v for k, v in c["non_2xx"].items() if k != "429"}
    cold_ok = (
        len(listed) == n
        and distinct == n
        and c["failures"] == 0
        and c["outcomes"].get("created") == n
        and not other_errors
    )
    c.update(
        customers=n,
        seed_s=round(seed_s, 1),
        ideal_s=round(ideal_s, 2),
        efficiency=round(efficiency, 3),
        emulator_customers=len(listed),
        emulator_distinct_keys=distinct,
        link_recipe_check=recipe,
        achieved_ops_per_s=round(c["requests_total"] / c["wall_s"], 1),
    )
    report["cold"] = c
    tl = c["timeline"]
    print(
        f"  {c['requests_total']} requests ({_fmt_counts(c['requests'])}) in "
        f"{c['wall_s']:.2f} s = {c['achieved_ops_per_s']:.1f} req/s; ideal {ideal_s:.1f} s; "
        f"efficiency {efficiency:.3f}"
    )
    print(
        f"  engine CPU {c['cpu_s']:.1f} s ({c['cpu_s'] / c['wall_s']:.0%} of a core; user "
        f"{c['cpu_user_s']:.1f}, system {c['cpu_system_s']:.1f}); emulator CPU "
        f"{c['emulator_cpu_s']} s; limiter: {c['limiter']}"
    )
    if tl:
        print(
            f"  wall {c['wall_s']:.2f} s = ideal {tl['ideal_s']} s + before the first request "
            f"{tl['before_first_request_s']} s + below the rate while sending "
            f"{tl['lost_in_span_s']} s + after the last request {tl['after_last_request_s']} s; "
            f"429s at {tl['throttled_at_s']} s; seconds under 90% of the rate: "
            f"{tl['slow_seconds'][:12]}"
        )
    print(
        f"  emulator holds {len(listed)} customers ({distinct} distinct keys); engine failures "
        f"{c['failures']}; link rows match the seeding recipe: {recipe['matches']}",
        flush=True,
    )
    print_phases(c, "  ")
    rows.append(
        row(
            "cold sync efficiency",
            round(efficiency, 3),
            f"{efficiency:.3f} ({c['requests_total']} req in {c['wall_s']:.1f} s)",
            f"≥ {TARGET_EFFICIENCY}",
            efficiency >= TARGET_EFFICIENCY,
        )
    )
    throttled = c["non_2xx"].get("429", 0)
    rows.append(
        row(
            "cold sync result",
            len(listed),
            f"{len(listed)} customers, {distinct} keys, {c['failures']} failed, "
            f"{throttled}×429 retried" + (f", other {other_errors}" if other_errors else ""),
            f"{n} customers, 0 errors",
            cold_ok,
        )
    )

    # 2. naive loop -----------------------------------------------------------------------------
    sample = min(args.naive_sample, n)
    print(
        f"\n[2] naive loop: stripe SDK, one create at a time, {sample} customers, same "
        "emulator settings",
        flush=True,
    )
    import stripe

    emulator.reset()
    emulator.realistic(*realistic)
    render_target = StripeTarget(API_KEY, api_base=emulator.url)
    catalog = open_catalog(cold_db)
    params = [
        create_params(render_target.render(x).state()) for x in catalog.list_customers()[:sample]
    ]
    catalog.close()
    client = stripe.StripeClient(
        API_KEY,
        base_addresses={"api": emulator.url, "meter_events": emulator.url},
        max_network_retries=0,
        http_client=stripe.HTTPXClient(allow_sync_methods=True, timeout=60),
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
        "sample": sample,
        "wall_s": round(naive_s, 2),
        "per_customer_ms": round(per_customer * 1000, 1),
        "latency_ms": percentiles(latencies),
        "extrapolated_s": round(extrapolated, 1),
        "requests": naive_requests,
        "speedup": round(speedup, 2),
        "ceiling": round(n * per_customer / (n / args.rate), 2),
    }
    print(
        f"  {sample} creates in {naive_s:.1f} s = {per_customer * 1000:.0f} ms each "
        f"(p50 {report['naive']['latency_ms'].get('p50', 0):.0f} ms); {n} would take "
        f"{extrapolated:.0f} s; the engine took {c['wall_s']:.1f} s: {speedup:.1f}× faster "
        f"(the rate limit caps it at {report['naive']['ceiling']:.1f}×)",
        flush=True,
    )
    rows.append(
        row(
            "speedup over the naive loop",
            round(speedup, 2),
            f"{speedup:.1f}× ({extrapolated:.0f} s vs {c['wall_s']:.1f} s)",
            f"≥ {TARGET_SPEEDUP:g}×",
            speedup >= TARGET_SPEEDUP,
        )
    )
    cold_failed = not cold_ok or efficiency < TARGET_EFFICIENCY or speedup < TARGET_SPEEDUP
    if args.profile or (cold_failed and not args.no_diagnose):
        # A fresh catalog and emulator, the same settings, under cProfile.
        def cold_again(**kw: Any) -> dict[str, Any]:
            nonlocal cold_db
            cold_db = scratch / f"cold-{time.monotonic_ns()}.sqlite"
            cat = open_catalog(cold_db)
            seed_catalog_api(cat, n)
            cat.close()
            emulator.reset()
            emulator.realistic(*realistic)
            return cold(**kw)

        profile_case("cold", cold_again, memory=False)

    # 3. seed 100,000 synced --------------------------------------------------------------------
    big = args.big
    print(
        f"\n[3] seeding {big} synced customers (bulk catalog insert, emulator creates at "
        "latency 0, link rows as Journal.mark_synced writes them)",
        flush=True,
    )
    emulator.reset()
    emulator.instant()
    big_db = scratch / "big.sqlite"
    catalog = open_catalog(big_db)
    timings = seed_synced(catalog, emulator, big)
    same_as_api = check_bulk_matches_api(catalog)
    print(f"  {timings}; bulk rows equal Catalog.create_customer's: {same_as_api}", flush=True)
    report["seed"] = {
        "customers": big,
        **timings,
        "bulk_matches_api": same_as_api,
        "link_recipe_checked_in_cold_sync": recipe["matches"],
    }
    rng = random.Random(20240607)

    # 4. incremental tick -----------------------------------------------------------------------
    k = args.changes
    print(
        f"\n[4] incremental tick: {k} changes among {big}; emulator latency 0, no rate limit "
        "(local cost)",
        flush=True,
    )

    def tick(**kw: Any) -> dict[str, Any]:
        return run_worker(
            big_db,
            emulator,
            full=False,
            concurrency=args.concurrency,
            rate=UNLIMITED_RATE,
            timeout=args.timeout,
            **kw,
        )

    # Several ticks, each after its own k changes: a single sub-second run is noisy. The verdict
    # is on the median run; every run must make exactly k writes and no list call.
    ticks = []
    for run in range(args.tick_runs):
        change_s = change_customers(catalog, k, big, run + 1, rng)
        one = tick()
        one.update(
            changes=k,
            change_s=round(change_s, 2),
            updates=total(one["requests"], ["customers.update"]),
            writes=total(one["requests"], WRITE_ENDPOINTS),
            lists=total(one["requests"], ["customers.list"]),
        )
        ticks.append(one)
        print(
            f"  tick {run + 1}: requests {_fmt_counts(one['requests'])}; wall "
            f"{one['wall_s']:.3f} s, engine CPU {one['cpu_s']:.3f} s (main thread "
            f"{one['main_thread_cpu_s']:.3f} s); planned {one['planned']}; RSS "
            f"{one['rss_before_mb']:.0f} MB before, peak {one['peak_rss_mb']:.0f} MB",
            flush=True,
        )
    t = sorted(ticks, key=lambda x: x["wall_s"])[len(ticks) // 2]
    t["runs"] = [
        {key: x[key] for key in ("wall_s", "cpu_s", "updates", "writes", "lists")} for x in ticks
    ]
    report["tick"] = t
    walls = [x["wall_s"] for x in ticks]
    cpus = sorted(x["cpu_s"] for x in ticks)
    median_cpu = cpus[len(cpus) // 2]
    tick_updates = [x["updates"] for x in ticks]
    tick_writes = [x["writes"] for x in ticks]
    tick_lists = [x["lists"] for x in ticks]
    print(f"  phases of the median tick (wall {t['wall_s']:.3f} s):")
    print_phases(t, "  ")

    def joined(values: list[Any], fmt: str = "{}") -> str:
        return ", ".join(fmt.format(v) for v in values)

    tick_rows = [
        row(
            "tick: customers.update requests",
            tick_updates,
            joined(tick_updates),
            f"= {k}",
            all(u == k for u in tick_updates),
        ),
        row(
            "tick: all writes",
            tick_writes,
            joined(tick_writes),
            f"= {k}",
            all(w == k for w in tick_writes) and not any(x["non_2xx"] for x in ticks),
        ),
        row(
            "tick: customers.list requests",
            tick_lists,
            joined(tick_lists),
            "= 0",
            all(x == 0 for x in tick_lists),
        ),
        row(
            "tick: local wall (latency 0), median",
            t["wall_s"],
            f"{t['wall_s']:.3f} s (runs {joined(walls, '{:.3f}')})",
            f"< {TARGET_TICK_S:g} s",
            t["wall_s"] < TARGET_TICK_S,
        ),
        row(
            "tick: engine CPU, median",
            median_cpu,
            f"{median_cpu:.3f} s (runs {joined([x['cpu_s'] for x in ticks], '{:.3f}')})",
            f"< {TARGET_TICK_S:g} s",
            median_cpu < TARGET_TICK_S,
        ),
    ]
    rows += tick_rows
    tick_failed = any(r["result"] == "FAIL" for r in tick_rows)
    if args.profile or (tick_failed and not args.no_diagnose):
        round_ = [100]

        def tick_again(**kw: Any) -> dict[str, Any]:
            round_[0] += 1
            change_customers(catalog, k, big, round_[0], rng)
            return tick(**kw)

        profile_case("tick", tick_again, memory=args.profile)

    # 4b. the same tick at the realistic latency (context, no target)
    if not args.skip_realistic_tick:
        change_customers(catalog, k, big, 99, rng)
        emulator.realistic(*realistic)
        r = run_worker(
            big_db,
            emulator,
            full=False,
            concurrency=args.concurrency,
            rate=args.rate,
            timeout=args.timeout,
        )
        emulator.instant()
        report["tick_realistic"] = r
        print(
            f"  for context, a {k}-change tick at {args.latency_ms:g} ± {args.jitter_ms:g} ms "
            f"and {args.rate:g}/s: wall {r['wall_s']:.2f} s, requests "
            f"{_fmt_counts(r['requests'])}",
            flush=True,
        )

    # 5. no-op full reconcile -------------------------------------------------------------------
    print(f"\n[5] no-op full reconcile of {big}; emulator latency 0, no rate limit", flush=True)
    catalog.close()

    def noop(**kw: Any) -> dict[str, Any]:
        return run_worker(
            big_db,
            emulator,
            full=True,
            concurrency=args.concurrency,
            rate=UNLIMITED_RATE,
            timeout=args.timeout,
            **kw,
        )

    f = noop()
    pages = total(f["requests"], ["customers.list"])
    writes = total(f["requests"], WRITE_ENDPOINTS)
    want_pages = math.ceil(big / 100)
    f.update(pages=pages, writes=writes)
    report["noop"] = f
    print(
        f"  requests {_fmt_counts(f['requests'])}; wall {f['wall_s']:.2f} s (emulator CPU "
        f"{f['emulator_cpu_s']} s); engine CPU {f['cpu_s']:.2f} s (user {f['cpu_user_s']:.2f}, "
        f"system {f['cpu_system_s']:.2f}; main thread {f['main_thread_cpu_s']:.2f} s); RSS "
        f"{f['rss_before_mb']:.0f} MB before, peak {f['peak_rss_mb']:.0f} MB; planned "
        f"{f['planned']}",
        flush=True,
    )
    print_phases(f, "  ")
    noop_rows = [
        row(
            "no-op full: customers.list pages",
            pages,
            str(pages),
            f"= {want_pages}",
            pages == want_pages,
        ),
        row(
            "no-op full: writes",
            writes,
            str(writes),
            "= 0",
            writes == 0 and not f["non_2xx"] and f["planned"].get("skip") == big,
        ),
        row(
            "no-op full: engine CPU",
            f["cpu_s"],
            f"{f['cpu_s']:.2f} s",
            f"≤ {TARGET_NOOP_CPU_S:g} s",
            f["cpu_s"] <= TARGET_NOOP_CPU_S,
        ),
        row(
            "no-op full: peak RSS",
            f["peak_rss_mb"],
            f"{f['peak_rss_mb']:.0f} MB",
            f"≤ {TARGET_NOOP_RSS_MB:g} MB",
            f["peak_rss_mb"] <= TARGET_NOOP_RSS_MB,
        ),
    ]
    rows += noop_rows
    noop_failed = any(r["result"] == "FAIL" for r in noop_rows)
    if args.profile or (noop_failed and not args.no_diagnose):
        profile_case("noop", noop, memory=args.profile or noop_rows[3]["result"] == "FAIL")

    report["verdict"] = rows
    report["profiles"] = profiles
    return report


def _brief(figures: dict[str, Any]) -> dict[str, Any]:
    keys = (
        "wall_s",
        "cpu_s",
        "main_thread_cpu_s",
        "peak_rss_mb",
        "requests_total",
        "profiled_threads",
    )
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


def _phase_table(figures: dict[str, Any]) -> list[str]:
    phases = figures.get("phases") or {}
    if not phases:
        return []
    lines = [
        "| phase | calls | wall s | CPU s | RSS growth MB | peak RSS after, MB |",
        "|---|--:|--:|--:|--:|--:|",
    ]
    for name, r in phases.items():
        lines.append(
            f"| {name} | {r['calls']} | {r['wall_s']:.3f} | {r['cpu_s']:.3f} | "
            f"{r.get('rss_growth_mb', '')} | {r.get('peak_rss_after_mb', '')} |"
        )
    return lines


def markdown(report: dict[str, Any]) -> str:
    m = report["machine"]
    p = report["parameters"]
    c = report["cold"]
    n = report["naive"]
    t = report["tick"]
    f = report["noop"]
    s = report["seed"]
    tl = c.get("timeline") or {}
    passed = report["result"] == "PASS"
    fails = sum(r["result"] == "FAIL" for r in report["verdict"])
    lines = [
        "# Customer sync to Stripe",
        "",
        f"Run {report['date']} with `{report['command']}`"
        + (" (a --quick smoke run: small sizes)" if p["quick"] else "")
        + f", {report['wall_seconds']:.0f} s in all, on the engine at commit "
        + f"`{report['source']['commit']}`"
        + (
            f" with uncommitted changes in src/ ({', '.join(report['source']['src_changes'])})"
            if report["source"]["src_changes"]
            else ""
        )
        + (
            " (**the engine changed during the run: the figures mix versions**)"
            if report["source_changed_during_run"]
            else ""
        )
        + ".",
        "",
        f"**{report['result']}**: "
        + (
            "every target met."
            if passed
            else f"{fails} of {len(report['verdict'])} figures miss their target."
        ),
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
        "**Scaled**: the two 100,000-customer cases run with the emulator at latency 0 and no "
        f"rate limit (engine limiter at {UNLIMITED_RATE:g}/s), so their wall and CPU are the "
        "local cost; the cold sync and the naive loop run at the issue's "
        f"{p['latency_ms']:g} ± {p['jitter_ms']:g} ms and {p['rate']:g} ops/s.",
        "",
        "## How",
        "",
        f"- The emulator runs in its own process; each engine run (`sync_customers` with "
        f"`StripeTarget`, SQLite catalog) in a fresh process of its own, so its CPU "
        f"(`time.process_time`, all threads, user + system) and peak RSS (VmHWM, the high-water "
        f"mark of that process's own memory in `/proc/self/status`, including its "
        f"~{f['rss_before_mb']:.0f} MB of imports and open store before the call) are the "
        f"engine's. Not `getrusage` ru_maxrss: on Linux it carries the parent's peak across "
        f"fork and exec (in the tick it read {t.get('ru_maxrss_mb')} MB, the parent's size, "
        f"against a VmHWM of {t['peak_rss_mb']:.0f} MB). Requests are counted by the emulator "
        f"(`/_emulator/stats`).",
        f"- **Cold sync**: {c['customers']} customers created through `Catalog.create_customer` "
        f"({c['seed_s']} s), then one incremental `sync_customers` (= {c['customers']} creates) "
        f"with the emulator at {p['latency_ms']:g} ± {p['jitter_ms']:g} ms and "
        f"{p['rate']:g} ops/s (burst {p['burst']:g}), `StripeTarget(rate={p['rate']:g})`, "
        f"`SyncOptions(concurrency={p['concurrency']})` (the default is 16; at 200 ms and "
        f"100/s at least 20 must be in flight). Efficiency = (requests ÷ {p['rate']:g}/s) ÷ "
        f"wall = {c['ideal_s']} s ÷ {c['wall_s']:.2f} s. Engine CPU {c['cpu_s']:.1f} s "
        f"({c['cpu_s'] / c['wall_s']:.0%} of a core); emulator CPU {c['emulator_cpu_s']} s; "
        f"requests: {_fmt_counts(c['requests'])}; limiter: {c['limiter']}.",
    ]
    if tl:
        lines.append(
            f"- Where the cold sync's wall time went (emulator's arrival times): ideal "
            f"{tl['ideal_s']} s + before the first request {tl['before_first_request_s']} s + "
            f"below the rate while sending {tl['lost_in_span_s']} s + after the last request "
            f"{tl['after_last_request_s']} s; 429s at {tl['throttled_at_s']} s into the run; "
            f"seconds below 90% of the rate (second, requests): {tl['slow_seconds'][:15]}."
        )
    lines += [
        f"- **Naive loop**: stripe-python `StripeClient` (sync, HTTPX), one "
        f"`customers.create` at a time with the engine's create parameters, {n['sample']} "
        f"customers against the reset emulator at the same settings: {n['wall_s']} s, "
        f"{n['per_customer_ms']} ms each (p50 {n['latency_ms'].get('p50', 0):.0f} ms), "
        f"extrapolated to {c['customers']}: {n['extrapolated_s']} s. At 100/s the best any "
        f"engine can do is {n['ceiling']}× this loop.",
        f"- **Seeding the {s['customers']}**: bulk insert of the rows `Catalog.create_customer` "
        f"writes (read back equal to its output on a sample: {s['bulk_matches_api']}); "
        f"`StripeTarget.render` → the engine's create parameters → `POST /v1/customers` at "
        f"latency 0; link rows and cursor as `Journal.mark_synced`/`advance` write them "
        f"(the recipe equals the engine's own rows from the cold sync: "
        f"{s['link_recipe_checked_in_cold_sync']}). Catalog {s['catalog_insert_s']} s, render "
        f"{s['render_s']} s, emulator creates {s['emulator_creates_s']} s, links "
        f"{s['links_s']} s.",
        f"- **Tick** ({len(t.get('runs', [])) or 1} runs, each after its own changes; the "
        f"median by wall is shown): {t['changes']} random customers renamed through "
        f"`Catalog.update_customer`, then an incremental `sync_customers` in a fresh process "
        f"(so it pays the stripe SDK's lazy imports on its first call, as `metersync reconcile` "
        f"does): planned {t['planned']}; requests {_fmt_counts(t['requests'])}; wall "
        f"{t['wall_s']:.3f} s, CPU {t['cpu_s']:.3f} s (main thread "
        f"{t['main_thread_cpu_s']:.3f} s), RSS {t['rss_before_mb']:.0f} MB before, peak "
        f"{t['peak_rss_mb']:.0f} MB. All runs (wall s, CPU s, updates, writes, lists): "
        + "; ".join(
            f"{x['wall_s']:.3f}, {x['cpu_s']:.3f}, {x['updates']}, {x['writes']}, {x['lists']}"
            for x in t.get("runs", [])
        )
        + ".",
    ]
    r = report.get("tick_realistic")
    if r:
        lines.append(
            f"- For context (no target): another {t['changes']}-change tick at "
            f"{p['latency_ms']:g} ± {p['jitter_ms']:g} ms and {p['rate']:g}/s took "
            f"{r['wall_s']:.2f} s wall ({_fmt_counts(r['requests'])})."
        )
    lines += [
        f"- **No-op full reconcile**: `SyncOptions(full=True)` over the synced "
        f"{s['customers']}: planned {f['planned']}; requests {_fmt_counts(f['requests'])}; wall "
        f"{f['wall_s']:.2f} s (most of it the emulator's listing: {f['emulator_cpu_s']} s of "
        f"its CPU); engine CPU {f['cpu_s']:.2f} s (user {f['cpu_user_s']:.2f}, system "
        f"{f['cpu_system_s']:.2f}), RSS {f['rss_before_mb']:.0f} MB before the call, peak "
        f"{f['peak_rss_mb']:.0f} MB.",
        "",
        "## Phases of sync_customers",
        "",
        "Measured in the runs above by wrapping the functions `sync_customers` calls once "
        "(calls made inside another phase count towards it). CPU is the whole process's; "
        "RSS growth is the change of VmRSS over the phase; peak is VmHWM after it.",
        "",
    ]
    for title, figures in (("Cold sync", c), ("Tick", t), ("No-op full reconcile", f)):
        lines += [f"{title}:", "", *_phase_table(figures), ""]
    for name, prof in report.get("profiles", {}).items():
        fig = prof["figures"]
        lines += [
            f"## Profile: {name}",
            "",
            f"A re-run under cProfile timed by each thread's CPU clock (`time.thread_time`), "
            f"every thread of the engine process that ran Python ({fig['profiled_threads']} "
            f"profiled: the main thread and its `asyncio.to_thread` workers, merged); "
            f"CPU {fig['cpu_s']:.2f} s with the profiler's overhead. Own CPU time by area: "
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
            "",
        ]
        tm = prof.get("tracemalloc")
        if tm:
            lines += [
                f"Memory (a third run under tracemalloc): {tm['traced_mb']} MB of Python "
                f"allocations live at the end of `{tm['at_end_of']}` (traced peak "
                f"{tm['traced_peak_mb']} MB). Top allocation sites at that point:",
                "",
                "| MB | blocks | where |",
                "|--:|--:|---|",
                *[f"| {x['mb']} | {x['blocks']} | `{x['where']}` |" for x in tm["top"]],
                "",
            ]
            traced = prof.get("tracemalloc_phases") or {}
            if traced:
                lines += [
                    "Python allocations live after each phase, and the peak within it "
                    "(tracemalloc): "
                    + ", ".join(
                        f"{k} {v.get('traced_mb')} MB (peak {v.get('traced_peak_in_phase_mb')})"
                        for k, v in traced.items()
                        if v.get("traced_mb") is not None
                    )
                    + ".",
                    "",
                ]
    return "\n".join(lines).rstrip() + "\n"


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description="Benchmark metersync's customer sync to Stripe against the emulator."
    )
    parser.add_argument("--customers", type=int, default=None, help="cold sync size (5000)")
    parser.add_argument(
        "--naive-sample",
        type=int,
        default=None,
        help="customers the naive loop creates, extrapolated (200)",
    )
    parser.add_argument(
        "--big",
        type=int,
        default=None,
        help="customers for the tick and the no-op reconcile (100000)",
    )
    parser.add_argument("--changes", type=int, default=None, help="changes in the tick (100)")
    parser.add_argument(
        "--concurrency", type=int, default=32, help="SyncOptions.concurrency (default 32)"
    )
    parser.add_argument("--latency-ms", type=float, default=200.0)
    parser.add_argument("--jitter-ms", type=float, default=50.0)
    parser.add_argument(
        "--rate",
        type=float,
        default=100.0,
        help="emulator rate limit and StripeTarget rate, ops/s (default 100)",
    )
    parser.add_argument("--burst", type=float, default=10.0, help="emulator burst (default 10)")
    parser.add_argument(
        "--timeout",
        type=float,
        default=900.0,
        help="seconds an engine run may take before it is killed (default 900)",
    )
    parser.add_argument(
        "--skip-realistic-tick",
        action="store_true",
        help="skip the context tick at the realistic latency",
    )
    parser.add_argument(
        "--quick", action="store_true", help="small sizes (300 / 20 / 2,000 / 20); writes no files"
    )
    parser.add_argument(
        "--tick-runs", type=int, default=3, help="incremental ticks to run (default 3; median)"
    )
    parser.add_argument(
        "--no-diagnose",
        action="store_true",
        help="do not re-run failed cases under cProfile and tracemalloc",
    )
    parser.add_argument(
        "--profile",
        action="store_true",
        help="profile every engine case (failed ones are always profiled)",
    )
    parser.add_argument(
        "--output",
        type=Path,
        default=None,
        help=f"results directory (default {RESULTS_DIR}; --quick writes only when given)",
    )
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--db", help=argparse.SUPPRESS)
    parser.add_argument("--emulator", help=argparse.SUPPRESS)
    parser.add_argument("--full", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--profile-to", default=None, help=argparse.SUPPRESS)
    parser.add_argument("--tracemalloc", action="store_true", help=argparse.SUPPRESS)
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
    print(
        f"machine: {info['cpu_model']}; {info['cpu_count']} cores ({info['usable_cpus']} "
        f"usable); {info['memory_gib']} GiB; {info['python']}; {info['os']}; load average "
        f"{info['load_average_at_start']}",
        flush=True,
    )
    started = time.monotonic()
    source = source_state()
    print(
        f"engine: commit {source['commit']}"
        + (f", src/ differs from it: {source['src_changes']}" if source["src_changes"] else ""),
        flush=True,
    )
    with (
        tempfile.TemporaryDirectory(prefix="bench-customers-") as scratch,
        emulator_process() as (url, pid),
    ):
        print(f"emulator: {url} (pid {pid}, its own process)", flush=True)
        emulator = Emulator(url, pid)
        try:
            report = run_all(args, emulator, Path(scratch))
        finally:
            emulator.close()
    source_after = source_state()
    if source_after != source:
        print(
            f"WARNING: the engine changed during the run ({source} -> {source_after}); "
            "the figures mix versions",
            flush=True,
        )
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
        "source": source,
        "source_changed_during_run": source_after != source,
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
            "scaled_for_big_cases": {
                "latency_ms": 0,
                "rate_limit": None,
                "engine_rate": UNLIMITED_RATE,
            },
        },
        **report,
        "result": result,
        "wall_seconds": round(time.monotonic() - started, 1),
    }
    print("\n" + "\n".join(verdict_table(rows)))
    print(
        f"VERDICT: {result} ({sum(r['result'] == 'PASS' for r in rows)}/{len(rows)} targets "
        f"met) in {full_report['wall_seconds']:.0f} s"
    )
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
