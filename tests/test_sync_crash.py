"""Crash safety, shown rather than argued: `metersync reconcile` is SIGKILLed at a random moment
of its apply phase, the catalog moves on, and the next run converges: exactly one Stripe
customer per live local key with the right fields, none for deleted keys, nothing unmanaged
touched. (bench/chaos_customers.py runs the long version.)"""

from __future__ import annotations

import asyncio
import os
import random
import signal
import subprocess
import sys
import time
from collections.abc import Iterator

import pytest

from metersync.catalog import Catalog
from metersync.sync.apply import RetryPolicy
from metersync.sync.reconcile import SyncOptions, sync_customers
from metersync.targets.stripe import StripeTarget
from metersync.testing import StripeEmulator
from metersync.testing.chaos import converged, unmanaged

TRIALS = {"sqlite": 20, "postgresql": 10}


@pytest.fixture
def emulator() -> Iterator[StripeEmulator]:
    with StripeEmulator(latency_ms=40, jitter_ms=20) as running:
        yield running


def mutate(catalog: Catalog, rng: random.Random, trial: int) -> None:
    live = [c.key for c in catalog.list_customers()]
    for key in rng.sample(live, min(6, len(live))):
        catalog.update_customer(
            key, {"name": f"{key} trial {trial}", "metadata": {"trial": str(trial)}}
        )
    for key in rng.sample(live, min(2, len(live))):
        catalog.delete_customer(key)
    for i in range(3):
        catalog.create_customer(
            {
                "key": f"t{trial}-{i}",
                "name": f"New {trial}/{i}",
                "primaryEmail": f"n{trial}{i}@x.test",
            }
        )


def kill_mid_apply(env: dict[str, str], emulator: StripeEmulator, rng: random.Random) -> None:
    """Start a reconcile; once it has sent its first request, SIGKILL it at a random moment."""
    before = len(emulator.requests())
    process = subprocess.Popen(
        [sys.executable, "-m", "metersync", "reconcile"],
        env={**os.environ, **env},
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    deadline = time.monotonic() + 20
    while len(emulator.requests()) == before and process.poll() is None:
        assert time.monotonic() < deadline, "the reconcile never reached Stripe"
        time.sleep(0.005)
    time.sleep(rng.uniform(0.0, 0.35))
    process.send_signal(signal.SIGKILL)
    process.wait()


def rerun(catalog: Catalog, emulator: StripeEmulator) -> dict[str, int]:
    async def go() -> dict[str, int]:
        target = StripeTarget("sk_test_crash", api_base=emulator.url, rate=1000)
        try:
            result = await sync_customers(
                catalog, target, SyncOptions(concurrency=4, retry=RetryPolicy(base_delay_s=0.01))
            )
            return result.counts
        finally:
            await target.close()

    return asyncio.run(go())


def test_sigkill_at_random_moments_then_rerun_converges(
    catalog: Catalog, emulator: StripeEmulator, database_url: str, request: pytest.FixtureRequest
) -> None:
    rng = random.Random(20261121)
    emulator.client().v1.customers.create({"name": "Not ours", "metadata": {"crm": "1"}})
    untouched = unmanaged(emulator)
    for i in range(24):
        catalog.create_customer(
            {
                "key": f"c{i}",
                "name": f"Customer {i}",
                "billingAddress": {"country": "DE", "city": "Berlin"},
            }
        )
    env = {
        "METERSYNC_DATABASE_URL": database_url,
        "STRIPE_API_KEY": "sk_test_crash",
        "METERSYNC_STRIPE_API_BASE": emulator.url,
        "METERSYNC_SYNC_CONCURRENCY": "4",
        "METERSYNC_SYNC_RATE_LIMIT": "1000",
        "METERSYNC_LOG_LEVEL": "error",
    }
    trials = TRIALS[request.node.callspec.params["database_url"]]
    for trial in range(trials):
        if trial:
            mutate(catalog, rng, trial)
        kill_mid_apply(env, emulator, rng)
        # The killed run may have left intents behind; their retry backoff is short but real.
        # Move past it by re-running until nothing is left to do.
        for _ in range(5):
            counts = rerun(catalog, emulator)
            if not counts.get("skip") and not counts.get("failed"):
                break
            with_backoff_over(catalog)
        assert converged(catalog, emulator, unmanaged_before=untouched) == [], f"trial {trial}"


def with_backoff_over(catalog: Catalog) -> None:
    """Clear retry backoffs so the next run retries now (a test shortcut for waiting)."""
    from sqlmodel import update

    from metersync.store import LinkRow

    with catalog.store.session() as session:
        session.exec(update(LinkRow).values(next_attempt_at=None))  # type: ignore[call-overload]
