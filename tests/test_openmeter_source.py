"""OpenMeter as the source, end to end: the OpenMeter emulator → metersync → the Stripe emulator,
over real HTTP, on SQLite and PostgreSQL. Upstream creates, updates and deletes reach Stripe;
Stripe's event summaries equal OpenMeter's meter query for every customer and hour, also
after a late correction upstream and after SIGKILLs mid-run; an unreachable or failing
source is reported, pushes nothing, and the next run recovers."""

from __future__ import annotations

import asyncio
import json
import os
import random
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest
from sqlalchemy import func, select
from typer.testing import CliRunner

from metersync.catalog import Catalog
from metersync.cli import app
from metersync.store import LedgerRow
from metersync.sync.ports import MANAGED_KEY
from metersync.targets.stripe import StripeTarget, event_summaries, meters_by_event_name
from metersync.targets.stripe import list_meters as list_stripe_meters
from metersync.testing import OpenMeterEmulator, StripeEmulator

TOKEN = "om-test-token"
HOUR = 3600
CONFIG = """
[[meters]]
slug = "tokens"
event_type = "prompt"
aggregation = "SUM"
value_property = "$.tokens"
[meters.stripe]
event_name = "tokens"
"""


@pytest.fixture
def openmeter() -> Iterator[OpenMeterEmulator]:
    with OpenMeterEmulator(token=TOKEN) as running:
        running.add_meter("tokens", event_type="prompt", value_property="$.tokens")
        yield running


@pytest.fixture
def stripe() -> Iterator[StripeEmulator]:
    with StripeEmulator() as running:
        yield running


@pytest.fixture
def env(
    database_url: str, openmeter: OpenMeterEmulator, stripe: StripeEmulator, tmp_path: Path
) -> dict[str, str]:
    config = tmp_path / "metersync.toml"
    config.write_text(CONFIG)
    return {
        "METERSYNC_CONFIG": str(config),
        "METERSYNC_DATABASE_URL": database_url,
        "STRIPE_API_KEY": "sk_test_source",
        "METERSYNC_STRIPE_API_BASE": stripe.url,
        "METERSYNC_SYNC_RATE_LIMIT": "1000",
        "METERSYNC_USAGE_METER_EVENT_RATE": "1000",
        "METERSYNC_OPENMETER_URL": openmeter.url,
        "METERSYNC_OPENMETER_TOKEN": TOKEN,
        # Fail fast in tests: one retry, short backoff.
        "METERSYNC_OPENMETER_RETRIES": "1",
        "METERSYNC_OPENMETER_TIMEOUT_S": "5",
    }


def cli(env: dict[str, str], *args: str) -> Any:
    return CliRunner().invoke(app, list(args), env=env)


def event(i: int, subject: str, when: datetime, tokens: int) -> dict[str, Any]:
    return {
        "specversion": "1.0",
        "id": f"e{i}",
        "source": "app",
        "type": "prompt",
        "subject": subject,
        "time": when.isoformat().replace("+00:00", "Z"),
        "data": {"tokens": tokens},
    }


def upstream_hours(
    openmeter: OpenMeterEmulator, start: int, end: int
) -> dict[tuple[str, int], int]:
    """OpenMeter's meter query: (customer key, hour) → value."""
    headers = {"Authorization": f"Bearer {TOKEN}"}
    customers = httpx.get(
        f"{openmeter.url}/api/v1/customers", params={"pageSize": "1000"}, headers=headers
    ).json()["items"]
    keys = {c["id"]: c["key"] for c in customers}
    params: list[tuple[str, str]] = [
        ("from", _rfc3339(start)),
        ("to", _rfc3339(end)),
        ("windowSize", "HOUR"),
        ("groupBy", "customer_id"),
    ] + [("filterCustomerId", i) for i in keys]
    rows = httpx.get(
        f"{openmeter.url}/api/v1/meters/tokens/query", params=params, headers=headers
    ).json()["data"]
    return {
        (keys[r["customerId"]], _epoch(r["windowStart"])): int(r["value"])
        for r in rows
        if r.get("customerId") in keys and r["value"]
    }


def stripe_hours(stripe: StripeEmulator, start: int, end: int) -> dict[tuple[str, int], int]:
    """Stripe's event summaries per hour: (customer key, hour) → value."""

    async def go() -> dict[tuple[str, int], int]:
        target = StripeTarget("sk_test_source", api_base=stripe.url, rate=1000)
        try:
            meter = meters_by_event_name(await list_stripe_meters(target))["tokens"]
            out: dict[tuple[str, int], int] = {}
            for customer in stripe.customers():
                key = customer["metadata"][MANAGED_KEY]
                for summary in await event_summaries(
                    target, meter.id, customer["id"], start, end, "hour"
                ):
                    if summary.aggregated_value:
                        out[(key, summary.start_time)] = int(summary.aggregated_value)
            return out
        finally:
            await target.close()

    return asyncio.run(go())


def stripe_names(stripe: StripeEmulator) -> dict[str, str]:
    return {c["metadata"][MANAGED_KEY]: c["name"] for c in stripe.customers()}


def seed(openmeter: OpenMeterEmulator, now: datetime) -> None:
    openmeter.create_customer("acme", "Acme", subject_keys=["acme-api"])
    openmeter.create_customer("globex", "Globex", subject_keys=["globex-api", "globex-web"])
    openmeter.ingest(
        [
            event(1, "acme-api", now - timedelta(hours=5), 10),
            event(2, "acme-api", now - timedelta(hours=5), 5),
            event(3, "acme-api", now - timedelta(hours=1), 7),
            event(4, "globex-api", now - timedelta(hours=3), 20),
            event(5, "globex-web", now - timedelta(hours=3), 1),
            event(6, "globex-web", now, 2),
        ]
    )


def test_upstream_changes_and_usage_reach_stripe_exactly(
    env: dict[str, str], openmeter: OpenMeterEmulator, stripe: StripeEmulator, catalog: Catalog
) -> None:
    now = datetime.now(UTC).replace(microsecond=0) - timedelta(minutes=1)
    seed(openmeter, now)
    assert cli(env, "meters", "ensure").exit_code == 0
    first = cli(env, "reconcile", "--json")
    assert first.exit_code == 0, first.output
    report = json.loads(first.stdout)
    assert report["source"]["catalog"]["counts"]["customers_created"] == 2
    assert stripe_names(stripe) == {"acme": "Acme", "globex": "Globex"}
    hour = int(now.timestamp()) // HOUR * HOUR
    start, end = hour - 6 * HOUR, hour + HOUR
    expected = upstream_hours(openmeter, start, end)
    assert expected  # the test means something
    assert stripe_hours(stripe, start, end) == expected

    # Upstream: a rename, a delete, a new customer, and a late event for an old hour.
    openmeter.update_customer("acme", name="Acme GmbH")
    openmeter.delete_customer("globex")
    openmeter.create_customer("initech", "Initech", subject_keys=["initech-api"])
    openmeter.ingest(
        [
            event(7, "acme-api", now - timedelta(hours=5), 100),  # late: a correction
            event(8, "initech-api", now - timedelta(hours=2), 3),
        ]
    )
    second = cli(env, "reconcile", "--json")
    assert second.exit_code == 0, second.output
    assert stripe_names(stripe) == {"acme": "Acme GmbH", "initech": "Initech"}
    assert catalog.get_customer("globex", include_deleted=True).is_deleted
    expected = upstream_hours(openmeter, start, end)
    got = stripe_hours(stripe, start, end)
    # globex's usage went to Stripe before it was deleted there; compare the live ones.
    assert {k: v for k, v in got.items() if k[0] != "globex"} == expected
    assert got[("acme", int(now.timestamp()) // HOUR * HOUR - 5 * HOUR)] == 115

    # Local ingest is off with a source.
    events = Path(env["METERSYNC_CONFIG"]).with_name("events.ndjson")
    events.write_text(json.dumps(event(99, "acme-api", now, 1)))
    refused = cli(env, "events", "ingest", str(events))
    assert refused.exit_code == 2
    assert "OpenMeter" in refused.output
    # So are catalog writes: the next pull would undo them (a customer made here, deleted).
    made_here = cli(env, "customers", "create", "--key", "local", "--name", "Local")
    assert made_here.exit_code == 2 and "OpenMeter" in made_here.output

    status = cli(env, "status", "--json")
    assert status.exit_code == 0, status.output
    source = json.loads(status.stdout)["source"]
    assert source["error"] is None and source["lagSeconds"] is not None


def test_a_failing_source_is_reported_pushes_nothing_and_recovers(
    env: dict[str, str], openmeter: OpenMeterEmulator, stripe: StripeEmulator, catalog: Catalog
) -> None:
    now = datetime.now(UTC).replace(microsecond=0) - timedelta(minutes=1)
    seed(openmeter, now)
    assert cli(env, "meters", "ensure").exit_code == 0
    assert cli(env, "reconcile").exit_code == 0
    reports = _ledger_rows(catalog)
    openmeter.ingest([event(10, "acme-api", now, 50)])

    openmeter.configure(down=True)
    down = cli(env, "reconcile")
    assert down.exit_code == 1
    assert "OpenMeter" in down.output and "503" in down.output
    assert _ledger_rows(catalog) == reports  # nothing pushed from a source it could not read
    status = json.loads(cli(env, "status", "--json").stdout)["source"]
    assert "503" in status["error"]

    openmeter.configure(down=False)
    openmeter.fail_next("reset")  # a flaky connection is retried
    back = cli(env, "reconcile")
    assert back.exit_code == 0, back.output
    hour = int(now.timestamp()) // HOUR * HOUR
    start, end = hour - 6 * HOUR, hour + HOUR
    assert stripe_hours(stripe, start, end) == upstream_hours(openmeter, start, end)
    assert json.loads(cli(env, "status", "--json").stdout)["source"]["error"] is None


def test_sigkill_mid_run_then_rerun_converges(
    env: dict[str, str],
    openmeter: OpenMeterEmulator,
    stripe: StripeEmulator,
    catalog: Catalog,
    kill_trials: int,
) -> None:
    rng = random.Random(8)
    now = datetime.now(UTC).replace(microsecond=0) - timedelta(minutes=1)
    for i in range(12):
        openmeter.create_customer(f"c{i}", f"C{i}", subject_keys=[f"s{i}"])
    assert cli(env, "meters", "ensure").exit_code == 0
    stripe.configure(latency_ms=30, jitter_ms=15)
    for trial in range(kill_trials):
        openmeter.ingest(
            [
                event(
                    1000 * trial + j,
                    f"s{rng.randrange(12)}",
                    now - timedelta(hours=rng.randrange(6)),
                    rng.randrange(1, 50),
                )
                for j in range(40)
            ]
        )
        if 0 < trial < 12:  # each trial renames one more of the 12 customers
            openmeter.update_customer(f"c{trial}", name=f"C{trial} v{trial}")
        before = len(stripe.requests())
        process = subprocess.Popen(
            [sys.executable, "-m", "metersync", "reconcile"],
            env={**os.environ, **env},
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        deadline = time.monotonic() + 30
        while len(stripe.requests()) == before and process.poll() is None:
            assert time.monotonic() < deadline
            time.sleep(0.005)
        time.sleep(rng.uniform(0.0, 0.5))
        process.send_signal(signal.SIGKILL)
        process.wait()
        rerun = cli(env, "reconcile")
        assert rerun.exit_code == 0, rerun.output
    stripe.configure(latency_ms=0, jitter_ms=0)
    hour = int(now.timestamp()) // HOUR * HOUR
    start, end = hour - 6 * HOUR, hour + HOUR
    assert stripe_hours(stripe, start, end) == upstream_hours(openmeter, start, end)
    assert stripe_names(stripe) == {
        f"c{i}": (f"C{i} v{i}" if 0 < i < kill_trials else f"C{i}") for i in range(12)
    }


def _ledger_rows(catalog: Catalog) -> int:
    with catalog.store.read_session() as session:
        return int(session.execute(select(func.count()).select_from(LedgerRow)).scalar_one())


def _rfc3339(seconds: int) -> str:
    return datetime.fromtimestamp(seconds, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def _epoch(text: str) -> int:
    return int(datetime.fromisoformat(text.replace("Z", "+00:00")).timestamp())


def test_an_upstream_that_lost_its_customers_deletes_nothing(
    env: dict[str, str], openmeter: OpenMeterEmulator, stripe: StripeEmulator, catalog: Catalog
) -> None:
    for i in range(10):
        openmeter.create_customer(f"c{i}", f"C{i}")
    assert cli(env, "reconcile").exit_code == 0
    for i in range(6):
        openmeter.delete_customer(f"c{i}")
    guarded = cli(env, "reconcile")
    assert guarded.exit_code == 4
    assert "--allow-mass-delete" in guarded.output
    assert len(catalog.list_customers()) == 10
    assert len(stripe.customers()) == 10
    allowed = cli(env, "reconcile", "--allow-mass-delete")
    assert allowed.exit_code == 0, allowed.output
    assert sorted(c["metadata"][MANAGED_KEY] for c in stripe.customers()) == [
        f"c{i}" for i in range(6, 10)
    ]


def test_an_unreachable_source_is_named_and_nothing_is_written(
    env: dict[str, str], stripe: StripeEmulator, catalog: Catalog
) -> None:
    with socket.socket() as probe:  # a port nothing listens on
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    unreachable = {**env, "METERSYNC_OPENMETER_URL": f"http://127.0.0.1:{port}"}
    result = cli(unreachable, "reconcile")
    assert result.exit_code == 1
    assert f"127.0.0.1:{port}" in result.output and "ConnectError" in result.output
    assert "Traceback" not in result.output
    assert catalog.list_customers() == [] and stripe.customers() == []


def _billed(catalog: Catalog) -> dict[str, int]:
    """What the ledger says Stripe was sent, per customer."""
    with catalog.store.read_session() as session:
        rows = session.execute(
            select(LedgerRow.customer_key, func.sum(LedgerRow.value))
            .where(LedgerRow.state == "delivered")
            .group_by(LedgerRow.customer_key)
        )
        return {str(k): int(v) for k, v in rows}


def test_a_subject_moved_upstream_takes_no_billed_history_along(
    env: dict[str, str], openmeter: OpenMeterEmulator, stripe: StripeEmulator, catalog: Catalog
) -> None:
    now = datetime.now(UTC).replace(microsecond=0) - timedelta(minutes=1)
    seed(openmeter, now)
    assert cli(env, "meters", "ensure").exit_code == 0
    assert cli(env, "reconcile").exit_code == 0
    assert _billed(catalog) == {"acme": 22, "globex": 23}
    # OpenMeter attributes by the current owner: its per-customer query would now move
    # acme's history to globex. Billed usage stays where it went; new usage follows.
    openmeter.update_customer("acme", subject_keys=[])
    openmeter.update_customer("globex", subject_keys=["globex-api", "globex-web", "acme-api"])
    openmeter.ingest([event(20, "acme-api", now, 4)])
    assert cli(env, "reconcile").exit_code == 0
    assert _billed(catalog) == {"acme": 22, "globex": 23 + 4}


def test_a_customer_deleted_upstream_is_billed_its_last_usage_first(
    env: dict[str, str], openmeter: OpenMeterEmulator, stripe: StripeEmulator, catalog: Catalog
) -> None:
    now = datetime.now(UTC).replace(microsecond=0) - timedelta(minutes=1)
    seed(openmeter, now)
    assert cli(env, "meters", "ensure").exit_code == 0
    assert cli(env, "reconcile").exit_code == 0
    openmeter.ingest([event(30, "globex-api", now, 500)])
    openmeter.delete_customer("globex")
    result = cli(env, "reconcile")
    assert result.exit_code == 0, result.output
    assert _billed(catalog)["globex"] == 23 + 500
    assert "globex" not in stripe_names(stripe)


def test_an_outage_longer_than_the_lookback_loses_nothing(
    env: dict[str, str], openmeter: OpenMeterEmulator, stripe: StripeEmulator, catalog: Catalog
) -> None:
    now = datetime.now(UTC).replace(microsecond=0) - timedelta(minutes=1)
    seed(openmeter, now)
    short = {**env, "METERSYNC_OPENMETER_LOOKBACK": "1h"}
    assert cli(short, "meters", "ensure").exit_code == 0
    assert cli(short, "reconcile").exit_code == 0
    # Pretend the last successful usage pull was six hours ago, then an event lands five
    # hours back: past the 1 h lookback, but after the last pull.
    with catalog.store.session() as session:
        from metersync.store import SyncStateRow

        row = session.get(SyncStateRow, "source:openmeter:usage")
        assert row is not None
        row.last_success_at = datetime.now(UTC) - timedelta(hours=6)
    openmeter.ingest([event(40, "acme-api", now - timedelta(hours=5), 300)])
    assert cli(short, "reconcile").exit_code == 0
    assert _billed(catalog)["acme"] == 22 + 300
