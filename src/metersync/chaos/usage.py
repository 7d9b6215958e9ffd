"""Usage chaos helpers, shared by tests/test_usage_crash.py and bench/chaos_usage.py: a catalog with
four meters (SUM, COUNT, MAX, UNIQUE_COUNT), random usage, an in-process push, and the check
that Stripe's event summaries equal the local aggregates exactly."""

from __future__ import annotations

import asyncio
import random
import tomllib
from datetime import UTC, datetime
from itertools import count
from typing import Any

from sqlalchemy import insert

from metersync.catalog import Catalog
from metersync.catalog.meters import Meter, MeterSettings
from metersync.store import UsageRow
from metersync.sync.apply import RetryPolicy
from metersync.sync.customer_sync import SyncOptions, sync_customers
from metersync.targets.stripe import (
    MeterEventSender,
    StripeMeterFigures,
    StripeTarget,
    ensure_meters,
)
from metersync.testing import StripeEmulator
from metersync.usage.push import UsagePusher
from metersync.usage.verify import verify_usage

HOUR = 3600
WINDOWS = 6  # usage lands in the last six hours
METERS_TOML = """
[usage]
window = "1h"

[[meters]]
slug = "tokens"
event_type = "prompt"
aggregation = "SUM"
value_property = "$.tokens"
[meters.stripe]
event_name = "tokens"

[[meters]]
slug = "calls"
event_type = "prompt"
aggregation = "COUNT"
[meters.stripe]
event_name = "calls"

[[meters]]
slug = "peak"
event_type = "prompt"
aggregation = "MAX"
value_property = "$.tokens"
[meters.stripe]
event_name = "peak"

[[meters]]
slug = "users"
event_type = "prompt"
aggregation = "UNIQUE_COUNT"
value_property = "$.user"
[meters.stripe]
event_name = "users"
"""
_ids = count(1)


def meters() -> list[Meter]:
    data = tomllib.loads(METERS_TOML)
    return [Meter.of(MeterSettings(**m)) for m in data["meters"]]


def target(emulator: StripeEmulator) -> StripeTarget:
    return StripeTarget("sk_test_chaos", api_base=emulator.url, rate=1000)


def window_range() -> tuple[int, int]:
    now = int(datetime.now(UTC).timestamp())
    return now // HOUR * HOUR - WINDOWS * HOUR, now // HOUR * HOUR + HOUR


def setup_usage(catalog: Catalog, emulator: StripeEmulator, *, customers: int) -> None:
    for i in range(customers):
        catalog.create_customer(
            {"key": f"c{i}", "name": f"C{i}", "usageAttribution": {"subjectKeys": [f"s{i}"]}}
        )

    async def go() -> None:
        t = target(emulator)
        try:
            await sync_customers(
                catalog, t, SyncOptions(retry=RetryPolicy(attempts=5, base_delay_s=0.01))
            )
            await ensure_meters(t, [m.settings for m in meters()])
        finally:
            await t.close()

    asyncio.run(go())


def add_random_usage(catalog: Catalog, rng: random.Random, *, events: int) -> None:
    """`events` prompt events (one usage row per meter each), spread over customers and the
    last WINDOWS hours, as ingest writes them."""
    start, _ = window_range()
    subjects = sorted({k for c in catalog.list_customers() for k in c.subject_keys})
    now = int(datetime.now(UTC).timestamp())
    rows: list[dict[str, Any]] = []
    for _ in range(events):
        event_id = f"e{next(_ids)}-{rng.random()}"
        subject = rng.choice(subjects)
        moment = min(now - 1, start + rng.randrange(WINDOWS * HOUR))
        tokens = rng.randrange(1, 50)
        user = f"u{rng.randrange(8)}"
        for meter, value, text in (
            ("tokens", float(tokens), None),
            ("calls", 1.0, None),
            ("peak", float(tokens), None),
            ("users", None, user),
        ):
            rows.append(
                {
                    "source": "chaos",
                    "event_id": event_id,
                    "meter": meter,
                    "subject": subject,
                    "time_us": moment * 1_000_000,
                    "value": value,
                    "value_text": text,
                }
            )
    with catalog.store.session() as session:
        session.execute(insert(UsageRow.__table__), rows)  # type: ignore[attr-defined]


def push_in_process(catalog: Catalog, emulator: StripeEmulator) -> Any:
    async def go() -> Any:
        t = target(emulator)
        try:
            pusher = UsagePusher(
                store=catalog.store,
                target="stripe",
                sink=MeterEventSender(t, api="v1", rate=1000, retry_delay_s=0.01),
                meters=meters(),
                window_s=HOUR,
                late_usage="report",
            )
            return await pusher.run()
        finally:
            await t.close()

    return asyncio.run(go())


def usage_differences(
    catalog: Catalog, emulator: StripeEmulator, start: int, end: int
) -> list[dict[str, Any]]:
    """Every (customer, meter, hour or month) where Stripe's event summaries, the ledger and
    the local aggregates are not all equal."""

    async def go() -> list[dict[str, Any]]:
        t = target(emulator)
        try:
            result = await verify_usage(
                catalog.store, StripeMeterFigures(t), meters(), window_s=HOUR, start=start, end=end
            )
            return [d.to_json() for d in result.differences]
        finally:
            await t.close()

    return asyncio.run(go())
