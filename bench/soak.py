"""Soak: `metersync run` for a long time under steady change, against the Stripe emulator.

Every second: one new customer, one renamed customer, and a batch of usage events posted to the
service's own OpenMeter-compatible API. The service's memory (VmRSS) is sampled every 10 s.
At the end the load stops, the service catches up, and the run checks that every change and
every event made it: the emulator holds exactly the live customers with their current names,
and `usage verify` finds Stripe's event summaries equal to the local aggregates.

Target (issue 6): RSS growth < 10% (the median of the last 3 minutes against the median of
minutes 2 to 5, after warm-up), every change and event synced.

    .venv/bin/python bench/soak.py [--minutes 30] [--events-per-second 50]

Writes bench/results/soak.json and .md; exits 1 if a target is missed.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import tomllib
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
from chaos_customers import machine

from metersync.catalog import Catalog
from metersync.catalog.meters import Meter, MeterSettings
from metersync.logs import configure_logging
from metersync.settings import LogLevel
from metersync.store import Store
from metersync.targets.stripe import StripeMeterFigures, StripeTarget, ensure_meters
from metersync.testing import StripeEmulator
from metersync.usage.verify import verify_usage

RESULTS = Path(__file__).resolve().parent / "results"
TOKEN = "soak-token"
CONFIG = """
[usage]
window = "1h"

[[meters]]
slug = "tokens"
event_type = "prompt"
aggregation = "SUM"
value_property = "$.tokens"
[meters.stripe]
event_name = "soak_tokens"
"""


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--minutes", type=float, default=30.0)
    parser.add_argument("--events-per-second", type=int, default=50)
    parser.add_argument("--seed", type=int, default=int(time.time()))
    args = parser.parse_args()
    configure_logging(LogLevel.WARNING)
    rng = random.Random(args.seed)
    started = time.monotonic()
    with (
        tempfile.TemporaryDirectory(prefix="soak-") as scratch,
        StripeEmulator(latency_ms=20, jitter_ms=10) as emulator,
    ):
        db = f"sqlite:///{Path(scratch) / 'soak.db'}"
        config = Path(scratch) / "metersync.toml"
        config.write_text(CONFIG)
        catalog = Catalog(Store.open(db))
        port = free_port()
        env = {
            **{k: v for k, v in os.environ.items() if not k.startswith("METERSYNC_")},
            "METERSYNC_CONFIG": str(config),
            "METERSYNC_DATABASE_URL": db,
            "STRIPE_API_KEY": "sk_test_soak",
            "METERSYNC_STRIPE_API_BASE": emulator.url,
            "METERSYNC_SYNC_RATE_LIMIT": "200",
            "METERSYNC_USAGE_METER_EVENT_RATE": "500",
            "METERSYNC_SERVICE_CUSTOMER_TICK_S": "2",
            "METERSYNC_SERVICE_USAGE_TICK_S": "5",
            "METERSYNC_HTTP_BIND": f"127.0.0.1:{port}",
            "METERSYNC_HTTP_TOKENS": json.dumps([TOKEN]),
            "METERSYNC_LOG_LEVEL": "warning",
        }
        asyncio.run(_ensure_meters(emulator))
        log = (Path(scratch) / "service.log").open("wb")
        service = subprocess.Popen(
            [sys.executable, "-m", "metersync", "run"], env=env, stdout=log, stderr=log
        )
        api = httpx.Client(
            base_url=f"http://127.0.0.1:{port}",
            headers={"Authorization": f"Bearer {TOKEN}"},
            timeout=30,
        )
        try:
            _wait(lambda: _up(api), 30)
            samples, counts = _load(api, catalog, service.pid, rng, args)
            settled_s = _settle(emulator, catalog, 300)
            differences = asyncio.run(_verify(catalog, emulator))
            stripe_names = {
                c["metadata"].get("metersync_key"): c["name"] for c in emulator.customers()
            }
            local_names = {c.key: c.name for c in catalog.list_customers()}
            service.send_signal(signal.SIGTERM)
            exit_code = service.wait(timeout=60)
        finally:
            service.kill()
            service.wait()
            api.close()
    elapsed = [t for t, _ in samples]
    warm = [rss for t, rss in samples if 120 <= t <= 300] or [samples[0][1]]
    end = elapsed[-1] if elapsed else 0
    last = [rss for t, rss in samples if t >= end - 180] or [samples[-1][1]]
    growth = statistics.median(last) / statistics.median(warm) - 1
    synced = stripe_names == local_names
    ok = growth < 0.10 and synced and not differences and exit_code == 0
    report = {
        "benchmark": "soak",
        "date": datetime.now(UTC).isoformat(timespec="seconds"),
        "machine": machine(),
        "minutes": args.minutes,
        "seed": args.seed,
        "load": counts,
        "rss_mb": {
            "warm_median": round(statistics.median(warm), 1),
            "last_3_min_median": round(statistics.median(last), 1),
            "max": round(max(rss for _, rss in samples), 1),
            "growth_pct": round(growth * 100, 2),
            "samples": [(round(t), round(r, 1)) for t, r in samples],
        },
        "settled_after_load_s": settled_s,
        "customers": {"local": len(local_names), "stripe": len(stripe_names), "match": synced},
        "usage_differences": differences[:10],
        "service_exit_code": exit_code,
        "result": "PASS" if ok else "FAIL",
        "wall_s": round(time.monotonic() - started, 1),
    }
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "soak.json").write_text(json.dumps(report, indent=2) + "\n")
    (RESULTS / "soak.md").write_text(_markdown(report))
    print(
        f"{report['result']}: RSS {report['rss_mb']['warm_median']} → "
        f"{report['rss_mb']['last_3_min_median']} MB ({report['rss_mb']['growth_pct']:+.2f}%, "
        f"target < 10%); customers match: {synced}; usage differences: {len(differences)}; "
        f"load {counts}"
    )
    return 0 if ok else 1


async def _ensure_meters(emulator: StripeEmulator) -> None:
    target = StripeTarget("sk_test_soak", api_base=emulator.url, rate=1000)
    try:
        meters = [MeterSettings(**m) for m in tomllib.loads(CONFIG)["meters"]]
        await ensure_meters(target, meters)
    finally:
        await target.close()


def _up(api: httpx.Client) -> bool:
    try:
        return api.get("/readyz").status_code == 200
    except httpx.TransportError:
        return False


def _wait(check: Any, seconds: float) -> float:
    started = time.monotonic()
    while not check():
        if time.monotonic() - started > seconds:
            raise TimeoutError("timed out")
        time.sleep(0.5)
    return round(time.monotonic() - started, 1)


def _load(
    api: httpx.Client, catalog: Catalog, pid: int, rng: random.Random, args: argparse.Namespace
) -> tuple[list[tuple[float, float]], dict[str, int]]:
    samples: list[tuple[float, float]] = []
    counts = {"customers_created": 0, "customers_renamed": 0, "events": 0}
    started = time.monotonic()
    next_sample = 0.0
    second = 0
    while (elapsed := time.monotonic() - started) < args.minutes * 60:
        key = f"c{second:06d}"
        created = api.post(
            "/api/v1/customers",
            json={
                "key": key,
                "name": f"Customer {second}",
                "usageAttribution": {"subjectKeys": [f"s{second}"]},
            },
        )
        created.raise_for_status()
        counts["customers_created"] += 1
        if second:
            renamed = f"c{rng.randrange(second):06d}"
            catalog.update_customer(renamed, {"name": f"Renamed {second}"})
            counts["customers_renamed"] += 1
        now = datetime.now(UTC).isoformat().replace("+00:00", "Z")
        events = [
            {
                "specversion": "1.0",
                "id": f"e{second}-{i}",
                "source": "soak",
                "type": "prompt",
                "subject": f"s{rng.randrange(second + 1)}",
                "time": now,
                "data": {"tokens": rng.randrange(1, 100)},
            }
            for i in range(args.events_per_second)
        ]
        api.post(
            "/api/v1/events",
            content=json.dumps(events),
            headers={"Content-Type": "application/cloudevents-batch+json"},
        ).raise_for_status()
        counts["events"] += len(events)
        if elapsed >= next_sample:
            samples.append((elapsed, rss_mb(pid)))
            next_sample += 10
        second += 1
        time.sleep(max(0.0, started + second - time.monotonic()))
    return samples, counts


def _settle(emulator: StripeEmulator, catalog: Catalog, seconds: float) -> float:
    def caught_up() -> bool:
        stripe = {c["metadata"].get("metersync_key"): c["name"] for c in emulator.customers()}
        return stripe == {c.key: c.name for c in catalog.list_customers()}

    return _wait(caught_up, seconds)


async def _verify(catalog: Catalog, emulator: StripeEmulator) -> list[dict[str, Any]]:
    meters = [Meter.of(MeterSettings(**m)) for m in tomllib.loads(CONFIG)["meters"]]
    target = StripeTarget("sk_test_soak", api_base=emulator.url, rate=1000)
    now = int(time.time())
    try:
        for _ in range(30):  # the last usage tick may still be on its way
            result = await verify_usage(
                catalog.store,
                StripeMeterFigures(target),
                meters,
                window_s=3600,
                start=now - 86400,
                end=now + 3600,
            )
            if not result.differences:
                return []
            await asyncio.sleep(2)
        return [d.to_json() for d in result.differences]
    finally:
        await target.close()


def _markdown(report: dict[str, Any]) -> str:
    rss = report["rss_mb"]
    return (
        f"# Soak: the service under steady change\n\nRun {report['date']} with "
        f"`python bench/soak.py --minutes {report['minutes']:g}`: **{report['result']}**.\n\n"
        f"- Load: {report['load']}.\n"
        f"- Service RSS: {rss['warm_median']} MB (median of minutes 2 to 5) → "
        f"{rss['last_3_min_median']} MB (median of the last 3 minutes): "
        f"{rss['growth_pct']:+.2f}% (target < 10%); max {rss['max']} MB.\n"
        f"- After the load stopped, the service caught up in {report['settled_after_load_s']} s: "
        f"{report['customers']['local']} local customers, {report['customers']['stripe']} in "
        f"Stripe, names match: {report['customers']['match']}.\n"
        f"- Usage: Stripe's event summaries against the local aggregates: "
        f"{len(report['usage_differences'])} difference(s).\n"
        f"- The service exited {report['service_exit_code']} on SIGTERM.\n\n"
        f"Machine: {report['machine']['cpu']}, {report['machine']['cores']} cores, Python "
        f"{report['machine']['python']}. Wall time {report['wall_s']} s.\n"
    )


if __name__ == "__main__":
    sys.exit(main())
