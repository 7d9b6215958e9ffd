"""Long crash test for the customer sync: `metersync reconcile` SIGKILLed at random moments.

Each trial moves the catalog on (renames, deletes, new customers), starts `metersync reconcile`
as a subprocess against the emulator, kills it with SIGKILL at a random moment of its apply
phase, re-runs the sync until it settles, and checks convergence: exactly one Stripe customer
per live local key with the right fields, none for deleted keys, unmanaged customers untouched.

    .venv/bin/python bench/chaos_customers.py [--trials 50] [--database-url URL] [--seed N]

Writes bench/results/chaos_customers.json and .md; exits 1 if any trial did not converge.
"""

from __future__ import annotations

import argparse
import json
import platform
import random
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from metersync.catalog import Catalog
from metersync.chaos.customers import (
    converged,
    kill_mid_apply,
    mutate,
    reconcile_env,
    rerun_until_settled,
    unmanaged,
)
from metersync.logs import configure_logging
from metersync.settings import LogLevel
from metersync.store import Store
from metersync.store.engine import build_engine
from metersync.testing import StripeEmulator

RESULTS = Path(__file__).resolve().parent / "results"


def machine() -> dict[str, Any]:
    cpu = "unknown"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    import os

    return {
        "cpu": cpu,
        "cores": os.cpu_count(),
        "python": platform.python_version(),
        "os": platform.platform(),
    }


def open_catalog(url: str | None, scratch: Path) -> tuple[Catalog, str]:
    if url is None:
        url = f"sqlite:///{scratch / 'chaos.db'}"
        return Catalog(Store.open(url)), url
    store = Store(build_engine(url))
    store.upgrade()
    return Catalog(store), url


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--trials", type=int, default=50)
    parser.add_argument("--customers", type=int, default=30)
    parser.add_argument("--seed", type=int, default=int(time.time()))
    parser.add_argument(
        "--database-url",
        default=None,
        help="an empty, migratable database; default: a new SQLite file",
    )
    args = parser.parse_args()
    configure_logging(LogLevel.WARNING)  # the trials' own lines are the report
    rng = random.Random(args.seed)
    started = time.monotonic()
    trials: list[dict[str, Any]] = []
    with (
        tempfile.TemporaryDirectory(prefix="chaos-") as scratch,
        StripeEmulator(latency_ms=40, jitter_ms=20) as emulator,
    ):
        catalog, url = open_catalog(args.database_url, Path(scratch))
        emulator.client().v1.customers.create({"name": "Not ours", "metadata": {"crm": "1"}})
        untouched = unmanaged(emulator)
        for i in range(args.customers):
            catalog.create_customer(
                {
                    "key": f"c{i}",
                    "name": f"Customer {i}",
                    "billingAddress": {"country": "DE", "city": "Berlin"},
                }
            )
        env = reconcile_env(url, emulator)
        for trial in range(args.trials):
            if trial:
                mutate(catalog, rng, trial)
            requests_before = len(emulator.requests())
            delay = kill_mid_apply(env, emulator, rng)
            requests_by_killed_run = len(emulator.requests()) - requests_before
            runs = rerun_until_settled(catalog, emulator)
            problems = converged(catalog, emulator, unmanaged_before=untouched)
            trials.append(
                {
                    "trial": trial,
                    "kill_after_first_request_s": round(delay, 3),
                    "requests_by_killed_run": requests_by_killed_run,
                    "reruns_to_settle": runs,
                    "problems": problems,
                }
            )
            mark = "ok" if not problems else "DIVERGED: " + "; ".join(problems[:3])
            print(
                f"trial {trial:3d}: killed {delay:.3f} s after its first request "
                f"({requests_by_killed_run} requests), settled in {runs} run(s): {mark}",
                flush=True,
            )
        live = len(catalog.list_customers())
        stripe_total = len(emulator.customers())
    failed = [t for t in trials if t["problems"]]
    report = {
        "date": datetime.now(UTC).isoformat(timespec="seconds"),
        "machine": machine(),
        "database": url.split(":", 1)[0],
        "seed": args.seed,
        "trials": len(trials),
        "diverged": len(failed),
        "live_customers_at_end": live,
        "stripe_customers_at_end": stripe_total,
        "wall_s": round(time.monotonic() - started, 1),
        "per_trial": trials,
    }
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "chaos_customers.json").write_text(json.dumps(report, indent=2) + "\n")
    verdict = "PASS" if not failed else "FAIL"
    (RESULTS / "chaos_customers.md").write_text(
        f"# Customer sync under SIGKILL\n\nRun {report['date']} with "
        f"`python bench/chaos_customers.py --trials {args.trials} --seed {args.seed}` on "
        f"{report['database']}.\n\n**{verdict}**: {len(trials) - len(failed)} of {len(trials)} "
        f"trials converged (exactly one Stripe customer per live key with the right fields, none "
        f"for deleted keys, the unmanaged customer untouched). At the end: {live} live local "
        f"customers, {stripe_total} Stripe customers (one unmanaged).\n\n"
        f"Machine: {report['machine']['cpu']}, {report['machine']['cores']} cores, Python "
        f"{report['machine']['python']}. Wall time {report['wall_s']} s.\n"
    )
    print(
        f"\n{verdict}: {len(trials) - len(failed)}/{len(trials)} trials converged; "
        f"{live} live customers, {stripe_total} in Stripe (1 unmanaged); "
        f"results in {RESULTS / 'chaos_customers.md'}"
    )
    return 0 if not failed else 1


if __name__ == "__main__":
    sys.exit(main())
