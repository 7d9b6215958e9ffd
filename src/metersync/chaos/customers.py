"""Crash testing: kill a sync at random moments, re-run it, and check the target converged.

Used by metersync's own tests and benchmarks; usable for yours:

    differences = converged(catalog, emulator)      # [] when Stripe matches the catalog
    kill_after(["metersync", "reconcile"], env, seconds=0.4)
"""

from __future__ import annotations

import asyncio
import os
import random
import signal
import subprocess
import sys
import time
from collections.abc import Mapping, Sequence
from typing import Any

from sqlmodel import update

from metersync.catalog import Catalog
from metersync.store import LinkRow
from metersync.stripe_facts import CUSTOMER_ADDRESS_FIELDS as ADDRESS_FIELDS
from metersync.sync.apply import RetryPolicy
from metersync.sync.customer_sync import SyncOptions, sync_customers
from metersync.sync.ports import MANAGED_KEY
from metersync.targets.stripe import StripeTarget
from metersync.testing.emulator import StripeEmulator


def converged(
    catalog: Catalog,
    emulator: StripeEmulator,
    *,
    unmanaged_before: Mapping[str, Mapping[str, Any]] | None = None,
) -> list[str]:
    """Every difference between the catalog and the emulator, in words; [] when converged.

    Converged means: exactly one live Stripe customer per live local key, holding the owned
    fields and metadata the catalog asks for; none for a deleted local key (delete policy
    `delete`); and every unmanaged customer exactly as it was (`unmanaged_before`, by id).
    """
    render = StripeTarget("sk_test_render").render
    live = {c["id"]: c for c in emulator.customers()}
    by_key: dict[str, list[Mapping[str, Any]]] = {}
    for record in live.values():
        key = (record.get("metadata") or {}).get(MANAGED_KEY)
        if key is not None:
            by_key.setdefault(key, []).append(record)
    problems = []
    for customer in catalog.list_customers(include_deleted=True):
        found = by_key.pop(customer.key, [])
        if customer.is_deleted:
            if found:
                problems.append(
                    f"{customer.key}: deleted locally, still in Stripe "
                    f"({', '.join(c['id'] for c in found)})"
                )
            continue
        if len(found) != 1:
            problems.append(f"{customer.key}: {len(found)} Stripe customers, expected 1")
            continue
        desired = render(customer)
        actual = found[0]
        for name, value in desired.fields.items():
            have = actual.get(name)
            if name == "address":
                have = {f: have.get(f) for f in ADDRESS_FIELDS} if have else None
                value = {f: v for f, v in (value or {}).items() if v} or None
                have = {f: v for f, v in (have or {}).items() if v} or None
            if (have or None) != (value or None):
                problems.append(f"{customer.key}: {name} is {have!r}, expected {value!r}")
        metadata = actual.get("metadata") or {}
        for name, value in desired.metadata.items():
            if metadata.get(name) != value:
                problems.append(
                    f"{customer.key}: metadata.{name} is {metadata.get(name)!r}, expected {value!r}"
                )
    for key, extra in by_key.items():
        problems.append(
            f"{key}: managed in Stripe ({', '.join(c['id'] for c in extra)}) but unknown locally"
        )
    for customer_id, before in (unmanaged_before or {}).items():
        if live.get(customer_id) != before:
            problems.append(f"unmanaged customer {customer_id} was changed or deleted")
    return problems


def unmanaged(emulator: StripeEmulator) -> dict[str, dict[str, Any]]:
    """Stripe customers metersync does not manage, by id: to prove they are never touched."""
    return {
        c["id"]: c for c in emulator.customers() if MANAGED_KEY not in (c.get("metadata") or {})
    }


def kill_after(
    command: Sequence[str], env: Mapping[str, str], seconds: float, *, cwd: str | None = None
) -> int | None:
    """Start `command`, SIGKILL it after `seconds` unless it ended first; its exit code, or
    None when it was killed."""
    process = subprocess.Popen(  # noqa: S603 - the caller's own command line
        list(command),
        env={**os.environ, **env},
        cwd=cwd,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        code = process.poll()
        if code is not None:
            return code
        time.sleep(0.005)
    process.send_signal(signal.SIGKILL)
    process.wait()
    return None


def mutate(catalog: Catalog, rng: random.Random, trial: int) -> None:
    """Move the catalog on between runs: renames, deletes and new customers, so that creates,
    updates and deletes are all in flight when the next run is killed."""
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


def kill_mid_apply(
    env: Mapping[str, str],
    emulator: StripeEmulator,
    rng: random.Random,
    *,
    window_s: float = 0.35,
    args: Sequence[str] = ("reconcile",),
    endpoint: str | None = None,
) -> float:
    """Start `metersync reconcile` (or `args`); once it has sent its first request to the
    emulator (to `endpoint`, when given), so that the kill cannot land in Python's start-up,
    SIGKILL it after a random delay within `window_s`. Returns the delay used."""
    before = len(emulator.requests(endpoint))
    process = subprocess.Popen(  # noqa: S603 - our own CLI, arguments from the caller's test
        [sys.executable, "-m", "metersync", *args],
        env={**os.environ, **env},
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    deadline = time.monotonic() + 30
    while len(emulator.requests(endpoint)) == before and process.poll() is None:
        if time.monotonic() > deadline:
            process.kill()
            raise TimeoutError("the reconcile never reached the emulator")
        time.sleep(0.005)
    delay = rng.uniform(0.0, window_s)
    time.sleep(delay)
    process.send_signal(signal.SIGKILL)
    process.wait()
    return delay


def rerun_until_settled(catalog: Catalog, emulator: StripeEmulator, *, attempts: int = 5) -> int:
    """Run the sync in-process until nothing is left to do; returns how many runs it took.

    Intents a killed run left behind wait out a short retry backoff; clearing next_attempt_at
    here stands in for waiting it out."""
    for run in range(1, attempts + 1):
        counts = asyncio.run(_run_once(catalog, emulator))
        if not counts.get("skip") and not counts.get("failed"):
            return run
        with catalog.store.session() as session:
            session.exec(update(LinkRow).values(next_attempt_at=None))
    return attempts


async def _run_once(catalog: Catalog, emulator: StripeEmulator) -> dict[str, int]:
    target = StripeTarget("sk_test_chaos", api_base=emulator.url, rate=1000)
    try:
        result = await sync_customers(
            catalog, target, SyncOptions(concurrency=4, retry=RetryPolicy(base_delay_s=0.01))
        )
        return result.counts
    finally:
        await target.close()


def reconcile_env(database_url: str, emulator: StripeEmulator) -> dict[str, str]:
    return {
        "METERSYNC_DATABASE_URL": database_url,
        "STRIPE_API_KEY": "sk_test_chaos",
        "METERSYNC_STRIPE_API_BASE": emulator.url,
        "METERSYNC_SYNC_CONCURRENCY": "4",
        "METERSYNC_SYNC_RATE_LIMIT": "1000",
        "METERSYNC_LOG_LEVEL": "error",
    }
