"""Long crash test for the usage push: `metersync reconcile --only usage` SIGKILLed at random
moments of its push.

Each trial adds random usage (events over six hourly windows, four meters: SUM, COUNT, MAX,
UNIQUE_COUNT), starts the push as a subprocess against the emulator, kills it with SIGKILL at a
random moment after its first meter event, pushes again in-process, and checks that Stripe's
event summaries equal the local aggregates exactly for every customer, meter and window (and
that the ledger agrees with both), through `usage verify`'s comparison.

    .venv/bin/python bench/chaos_usage.py [--trials 50] [--database-url URL] [--seed N]

Writes bench/results/chaos_usage.json and .md; exits 1 if any trial did not converge.
"""

from __future__ import annotations

import argparse
import json
import random
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from chaos_customers import machine, open_catalog  # bench/ is on sys.path when run as a script
from sqlalchemy import update

from metersync.chaos.customers import kill_mid_apply, reconcile_env
from metersync.chaos.usage import (
    METERS_TOML,
    add_random_usage,
    push_in_process,
    setup_usage,
    usage_differences,
    window_range,
)
from metersync.logs import configure_logging
from metersync.settings import LogLevel
from metersync.store import LedgerRow
from metersync.testing import StripeEmulator

RESULTS = Path(__file__).resolve().parent / "results"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--trials", type=int, default=50)
    parser.add_argument("--customers", type=int, default=8)
    parser.add_argument("--events", type=int, default=40, help="new events per trial")
    parser.add_argument("--seed", type=int, default=int(time.time()))
    parser.add_argument(
        "--database-url", default=None, help="an empty, migratable database; default: SQLite"
    )
    args = parser.parse_args()
    configure_logging(LogLevel.WARNING)
    rng = random.Random(args.seed)
    started = time.monotonic()
    trials: list[dict[str, Any]] = []
    with (
        tempfile.TemporaryDirectory(prefix="chaos-usage-") as scratch,
        StripeEmulator(latency_ms=15, jitter_ms=10) as emulator,
    ):
        catalog, url = open_catalog(args.database_url, Path(scratch))
        config = Path(scratch) / "metersync.toml"
        config.write_text(METERS_TOML)
        setup_usage(catalog, emulator, customers=args.customers)
        env = {
            **reconcile_env(url, emulator),
            "METERSYNC_CONFIG": str(config),
            "METERSYNC_USAGE_CONCURRENCY": "4",
        }
        start, end = window_range()
        for trial in range(args.trials):
            add_random_usage(catalog, rng, events=args.events)
            before = len(emulator.meter_events())
            delay = kill_mid_apply(
                env,
                emulator,
                rng,
                window_s=0.5,
                args=("reconcile", "--only", "usage"),
                endpoint="billing.meter_events.create",
            )
            by_killed_run = len(emulator.meter_events()) - before
            with catalog.store.session() as session:
                session.execute(update(LedgerRow).values(next_attempt_at=None))
            rerun = push_in_process(catalog, emulator)
            problems = usage_differences(catalog, emulator, start, end)
            trials.append(
                {
                    "trial": trial,
                    "kill_after_first_event_s": round(delay, 3),
                    "events_by_killed_run": by_killed_run,
                    "rerun": rerun.counts(),
                    "problems": problems,
                }
            )
            mark = "ok" if not problems else f"DIVERGED: {problems[:2]}"
            print(
                f"trial {trial:3d}: killed {delay:.3f} s after its first meter event "
                f"({by_killed_run} events landed); the re-run {rerun.counts()}: {mark}",
                flush=True,
            )
        events_total = len(emulator.meter_events())
    failed = [t for t in trials if t["problems"]]
    report = {
        "date": datetime.now(UTC).isoformat(timespec="seconds"),
        "machine": machine(),
        "database": url.split(":", 1)[0],
        "seed": args.seed,
        "trials": len(trials),
        "diverged": len(failed),
        "meter_events_at_end": events_total,
        "wall_s": round(time.monotonic() - started, 1),
        "per_trial": trials,
    }
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "chaos_usage.json").write_text(json.dumps(report, indent=2) + "\n")
    verdict = "PASS" if not failed else "FAIL"
    duplicates = sum(t["rerun"].get("duplicates", 0) for t in trials)
    (RESULTS / "chaos_usage.md").write_text(
        f"# Usage push under SIGKILL\n\nRun {report['date']} with "
        f"`python bench/chaos_usage.py --trials {args.trials} --seed {args.seed}` on "
        f"{report['database']}.\n\n**{verdict}**: {len(trials) - len(failed)} of {len(trials)} "
        "trials converged: Stripe's hourly (and, for MAX and UNIQUE_COUNT, monthly) event "
        "summaries equal the local aggregates and the ledger exactly, for every customer, meter "
        f"and window. The re-runs re-sent {duplicates} reports the killed runs had already "
        f"delivered; Stripe answered each as a duplicate identifier. {events_total} meter events "
        f"accepted in all.\n\nMachine: {report['machine']['cpu']}, {report['machine']['cores']} "
        f"cores, Python {report['machine']['python']}. Wall time {report['wall_s']} s.\n"
    )
    print(
        f"\n{verdict}: {len(trials) - len(failed)}/{len(trials)} trials converged; results in "
        f"{RESULTS / 'chaos_usage.md'}"
    )
    return 0 if not failed else 1


if __name__ == "__main__":
    sys.exit(main())
