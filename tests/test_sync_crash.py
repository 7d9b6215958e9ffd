"""Crash safety, shown rather than argued: `metersync reconcile` is SIGKILLed at a random moment
of its apply phase, the catalog moves on, and the next run converges: exactly one Stripe
customer per live local key with the right fields, none for deleted keys, nothing unmanaged
touched. (bench/chaos_customers.py runs the long version.)"""

from __future__ import annotations

import random
from collections.abc import Iterator

import pytest

from metersync.catalog import Catalog
from metersync.chaos.customers import (
    converged,
    kill_mid_apply,
    mutate,
    reconcile_env,
    rerun_until_settled,
    unmanaged,
)
from metersync.testing import StripeEmulator


@pytest.fixture
def emulator() -> Iterator[StripeEmulator]:
    with StripeEmulator(latency_ms=40, jitter_ms=20) as running:
        yield running


def test_sigkill_at_random_moments_then_rerun_converges(
    catalog: Catalog, emulator: StripeEmulator, database_url: str, kill_trials: int
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
    env = reconcile_env(database_url, emulator)
    for trial in range(kill_trials):
        if trial:
            mutate(catalog, rng, trial)
        kill_mid_apply(env, emulator, rng)
        rerun_until_settled(catalog, emulator)
        assert converged(catalog, emulator, unmanaged_before=untouched) == [], f"trial {trial}"
