"""Crash safety for HubSpot, shown: `metersync reconcile --target hubspot` is SIGKILLed at a
random moment after its first HubSpot request, the catalog moves on, and the re-run converges
on exactly one live company per live customer (none for deleted ones)."""

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
from sqlmodel import update

from metersync.catalog import Catalog
from metersync.chaos.customers import mutate
from metersync.chaos.hubspot import hubspot_converged
from metersync.store import LinkRow
from metersync.sync.apply import RetryPolicy
from metersync.sync.customer_sync import SyncOptions, sync_customers
from metersync.targets.hubspot import HubSpotTarget
from metersync.testing.hubspot import HubSpotEmulator

TOKEN = "pat-na1-11111111-1111-1111-1111-111111111111"


@pytest.fixture
def hubspot() -> Iterator[HubSpotEmulator]:
    with HubSpotEmulator(
        token=TOKEN, latency_ms=40, jitter_ms=20, rate_limit_per_10s=None
    ) as running:
        yield running


def kill_mid_run(env: dict[str, str], hubspot: HubSpotEmulator, rng: random.Random) -> None:
    before = hubspot.calls()
    process = subprocess.Popen(
        [sys.executable, "-m", "metersync", "reconcile", "--target", "hubspot"],
        env={**os.environ, **env},
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    deadline = time.monotonic() + 30
    # Wait for the first HubSpot request, so the kill lands in the sync, not in start-up.
    while hubspot.calls() == before and process.poll() is None:
        assert time.monotonic() < deadline, "the reconcile never reached HubSpot"
        time.sleep(0.005)
    time.sleep(rng.uniform(0.0, 0.4))
    process.send_signal(signal.SIGKILL)
    process.wait()


def rerun(catalog: Catalog, hubspot: HubSpotEmulator) -> None:
    async def once() -> dict[str, int]:
        target = HubSpotTarget(TOKEN, api_base=hubspot.url, requests_per_10s=1000)
        try:
            options = SyncOptions(concurrency=200, retry=RetryPolicy(base_delay_s=0.01))
            return (await sync_customers(catalog, target, options)).counts
        finally:
            await target.close()

    for _ in range(4):
        counts = asyncio.run(once())
        if not counts.get("failed") and not counts.get("skip"):
            return
        with catalog.store.session() as session:  # backoffs waited out
            session.exec(update(LinkRow).values(next_attempt_at=None))


def test_sigkill_at_random_moments_then_rerun_leaves_one_company_per_customer(
    catalog: Catalog, hubspot: HubSpotEmulator, database_url: str, kill_trials: int
) -> None:
    rng = random.Random(20261121)
    for i in range(60):
        catalog.create_customer({"key": f"c{i}", "name": f"Customer {i}"})
    env = {
        "METERSYNC_DATABASE_URL": database_url,
        "STRIPE_API_KEY": "sk_test_unused",
        "METERSYNC_HUBSPOT_ACCESS_TOKEN": TOKEN,
        "METERSYNC_HUBSPOT_API_BASE": hubspot.url,
        "METERSYNC_HUBSPOT_REQUESTS_PER_10S": "1000",
        "METERSYNC_LOG_LEVEL": "error",
    }
    for trial in range(kill_trials):
        if trial:
            mutate(catalog, rng, trial)
        kill_mid_run(env, hubspot, rng)
        rerun(catalog, hubspot)
        assert hubspot_converged(catalog, hubspot) == [], f"trial {trial}"
