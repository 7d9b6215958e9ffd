"""Usage crash safety, shown rather than argued: `metersync reconcile --only usage` is SIGKILLed
at a random moment of its push, more usage arrives, and the next push converges: Stripe's
event summaries equal the local aggregates exactly, for every customer, meter and window, and
the ledger agrees with both. (bench/chaos_usage.py runs the long version.)"""

from __future__ import annotations

import random
from collections.abc import Iterator
from pathlib import Path

import pytest
from sqlalchemy import update

from metersync.catalog import Catalog
from metersync.chaos.customers import kill_mid_apply, reconcile_env
from metersync.chaos.usage import (
    HOUR,
    METERS_TOML,
    add_random_usage,
    push_in_process,
    setup_usage,
    usage_differences,
    window_range,
)
from metersync.store import LedgerRow
from metersync.testing import StripeEmulator


@pytest.fixture
def emulator() -> Iterator[StripeEmulator]:
    with StripeEmulator(latency_ms=15, jitter_ms=10) as running:
        yield running


def test_sigkill_during_the_push_then_rerun_converges_exactly(
    catalog: Catalog,
    emulator: StripeEmulator,
    database_url: str,
    tmp_path: Path,
    kill_trials: int,
) -> None:
    rng = random.Random(20261121)
    config = tmp_path / "metersync.toml"
    config.write_text(METERS_TOML)
    setup_usage(catalog, emulator, customers=6)
    env = {
        **reconcile_env(database_url, emulator),
        "METERSYNC_CONFIG": str(config),
        "METERSYNC_USAGE_CONCURRENCY": "4",
    }
    start, end = window_range()
    for trial in range(kill_trials):
        add_random_usage(catalog, rng, events=30)
        kill_mid_apply(
            env,
            emulator,
            rng,
            window_s=0.4,
            args=("reconcile", "--only", "usage"),
            endpoint="billing.meter_events.create",
        )
        # What the killed run left PENDING is re-sent; backoffs are waited out here.
        with catalog.store.session() as session:
            session.execute(update(LedgerRow).values(next_attempt_at=None))
        push_in_process(catalog, emulator)
        assert usage_differences(catalog, emulator, start, end) == [], f"trial {trial}"
    assert start < end - HOUR
