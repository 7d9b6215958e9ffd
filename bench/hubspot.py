"""HubSpot at its rate limit: 10,000 new customers to companies, in batches of 100, against the
HubSpot emulator enforcing 100 requests per rolling 10 seconds.

The bound: N companies need ceil(N / 100) batch upserts, plus the property check (one listing,
one group, one batch create on a fresh portal). At 100 requests per 10 s, evenly paced, R
requests take at least (R - 1) / 10 s. The run passes when it made no more requests than that,
met no 429, took at most 20% over the bound's wall time, and left exactly one company per
customer. Then a second run with nothing changed must make no request at all.

    .venv/bin/python bench/hubspot.py [--companies 10000] [--database-url URL]

Writes bench/results/hubspot.json and .md; exits 1 if a target is missed.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import math
import sys
import tempfile
import time
from collections import Counter
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from chaos_customers import machine

from metersync.catalog import Catalog
from metersync.chaos.hubspot import hubspot_converged
from metersync.logs import configure_logging
from metersync.settings import LogLevel
from metersync.store import Store
from metersync.sync.customer_sync import RunResult, SyncOptions, sync_customers
from metersync.targets.hubspot import HubSpotTarget
from metersync.testing.hubspot import HubSpotEmulator

RESULTS = Path(__file__).resolve().parent / "results"
TOKEN = "pat-na1-22222222-2222-2222-2222-222222222222"
RATE_PER_10S = 100
PROPERTY_CALLS = 3  # list properties, create the group, batch-create the properties


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--companies", type=int, default=10_000)
    parser.add_argument("--database-url", default=None, help="default: a fresh SQLite file")
    args = parser.parse_args()
    configure_logging(LogLevel.WARNING)
    started = time.monotonic()
    with (
        tempfile.TemporaryDirectory(prefix="bench-hubspot-") as scratch,
        HubSpotEmulator(token=TOKEN, rate_limit_per_10s=RATE_PER_10S) as hubspot,
    ):
        url = args.database_url or f"sqlite:///{Path(scratch) / 'bench.db'}"
        catalog = Catalog(Store.open(url))
        rows = [
            {"key": f"acct-{i:05d}", "name": f"Account {i}", "primaryEmail": f"a{i}@x.test"}
            for i in range(args.companies)
        ]
        for row in rows:
            catalog.create_customer(row)
        first_s, first = _timed(catalog, hubspot)
        calls = Counter(r["endpoint"] for r in hubspot.requests())
        throttled = sum(1 for r in hubspot.requests() if r["status"] == 429)
        differences = hubspot_converged(catalog, hubspot)
        before = hubspot.calls()
        _, second = _timed(catalog, hubspot)
        idle_calls = hubspot.calls() - before
    upserts = math.ceil(args.companies / 100)
    bound_calls = upserts + PROPERTY_CALLS
    bound_s = (bound_calls - 1) / (RATE_PER_10S / 10)
    made = sum(calls.values())
    ok = (
        made <= bound_calls
        and throttled == 0
        and first_s <= bound_s * 1.2
        and not differences
        and first.counts.get("created") == args.companies
        and idle_calls == 0
    )
    report: dict[str, Any] = {
        "benchmark": "hubspot",
        "date": datetime.now(UTC).isoformat(timespec="seconds"),
        "machine": machine(),
        "database": "sqlite" if args.database_url is None else "postgresql",
        "companies": args.companies,
        "rate_limit": f"{RATE_PER_10S} requests per 10 s",
        "calls": {"made": made, "bound": bound_calls, "by_endpoint": dict(calls)},
        "throttled_429": throttled,
        "wall_s": {"first_run": round(first_s, 2), "bound": round(bound_s, 2)},
        "first_run_counts": first.counts,
        "second_run": {"counts": second.counts, "calls": idle_calls},
        "differences": differences[:10],
        "result": "PASS" if ok else "FAIL",
        "total_s": round(time.monotonic() - started, 1),
    }
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "hubspot.json").write_text(json.dumps(report, indent=2) + "\n")
    (RESULTS / "hubspot.md").write_text(_markdown(report))
    print(
        f"{report['result']}: {args.companies} companies in {first_s:.1f} s (bound "
        f"{bound_s:.1f} s); {made} calls (bound {bound_calls}); 429s {throttled}; "
        f"idle re-run calls {idle_calls}; differences {len(differences)}"
    )
    return 0 if ok else 1


def _timed(catalog: Catalog, hubspot: HubSpotEmulator) -> tuple[float, RunResult]:
    async def go() -> RunResult:
        target = HubSpotTarget(TOKEN, api_base=hubspot.url, requests_per_10s=RATE_PER_10S)
        try:
            return await sync_customers(catalog, target, SyncOptions(concurrency=200))
        finally:
            await target.close()

    started = time.monotonic()
    result = asyncio.run(go())
    return time.monotonic() - started, result


def _markdown(report: dict[str, Any]) -> str:
    calls, wall = report["calls"], report["wall_s"]
    return (
        f"# HubSpot: {report['companies']:,} companies at {report['rate_limit']}\n\n"
        f"Run {report['date']} with `python bench/hubspot.py` on {report['database']}: "
        f"**{report['result']}**.\n\n"
        f"| figure | measured | bound |\n|---|---|---|\n"
        f"| requests | {calls['made']} | ≤ {calls['bound']} |\n"
        f"| wall time, first run | {wall['first_run']} s | ≥ {wall['bound']} s "
        f"(pass ≤ 1.2 × bound) |\n"
        f"| 429 answers | {report['throttled_429']} | 0 |\n"
        f"| requests of a re-run with nothing changed | {report['second_run']['calls']} | 0 |\n"
        f"| differences after the run | {len(report['differences'])} | 0 |\n\n"
        f"Requests by endpoint: {calls['by_endpoint']}.\n\n"
        f"Machine: {report['machine']['cpu']}, {report['machine']['cores']} cores, Python "
        f"{report['machine']['python']}.\n"
    )


if __name__ == "__main__":
    sys.exit(main())
