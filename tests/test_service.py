"""`metersync run` as a real process: jobs fire on schedule, SIGTERM stops it cleanly with
nothing half-written, one leader per database and a standby that takes over when the leader is
killed; `reconcile` exits 3 while a service leads. On SQLite and PostgreSQL."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import httpx
import pytest
from sqlalchemy import insert, select

from metersync.catalog import Catalog
from metersync.chaos.usage import METERS_TOML, setup_usage
from metersync.store import LedgerRow, LedgerState, LinkRow, UsageRow
from metersync.sync.ports import MANAGED_KEY
from metersync.targets.hubspot import STRIPE_ID
from metersync.testing import OpenMeterEmulator, StripeEmulator
from metersync.testing.hubspot import HubSpotEmulator

FAST = {
    "METERSYNC_SERVICE_CUSTOMER_TICK_S": "0.5",
    "METERSYNC_SERVICE_USAGE_TICK_S": "0.5",
    "METERSYNC_SERVICE_STANDBY_POLL_S": "0.2",
    "METERSYNC_SYNC_CONCURRENCY": "2",
    "METERSYNC_LOG_LEVEL": "info",
    "METERSYNC_LOG_FORMAT": "json",
}


@pytest.fixture
def emulator() -> Iterator[StripeEmulator]:
    with StripeEmulator(latency_ms=10, jitter_ms=5) as running:
        yield running


@pytest.fixture
def env(database_url: str, emulator: StripeEmulator, tmp_path: Path) -> dict[str, str]:
    config = tmp_path / "metersync.toml"
    config.write_text(METERS_TOML)
    return {
        **{k: v for k, v in os.environ.items() if not k.startswith("METERSYNC_")},
        "METERSYNC_CONFIG": str(config),
        "METERSYNC_DATABASE_URL": database_url,
        "STRIPE_API_KEY": "sk_test_service",
        "METERSYNC_STRIPE_API_BASE": emulator.url,
        "METERSYNC_SYNC_RATE_LIMIT": "1000",
        "METERSYNC_USAGE_METER_EVENT_RATE": "1000",
        **FAST,
    }


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def start(env: dict[str, str], log: Path, *, port: int | None = None) -> subprocess.Popen[bytes]:
    bind = f"127.0.0.1:{port or free_port()}"
    return subprocess.Popen(
        [sys.executable, "-m", "metersync", "run"],
        env={**env, "METERSYNC_HTTP_BIND": bind},
        stdout=subprocess.DEVNULL,
        stderr=log.open("wb"),
    )


def get(port: int, path: str) -> httpx.Response | None:
    try:
        return httpx.get(f"http://127.0.0.1:{port}{path}", timeout=2)
    except httpx.TransportError:
        return None


def wait_for(check: Callable[[], bool], seconds: float = 20.0) -> None:
    deadline = time.monotonic() + seconds
    while not check():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.05)


def stripe_keys(emulator: StripeEmulator) -> set[str]:
    return {c["metadata"].get("metersync_key", "") for c in emulator.customers()}


def add_usage(catalog: Catalog, subject: str, value: float, event_id: str) -> None:
    now_us = int(time.time()) * 1_000_000
    with catalog.store.session() as session:
        session.execute(
            insert(UsageRow.__table__),  # type: ignore[attr-defined]
            {
                "source": "t",
                "event_id": event_id,
                "meter": "tokens",
                "subject": subject,
                "time_us": now_us,
                "value": value,
            },
        )


def half_written(catalog: Catalog) -> list[str]:
    with catalog.store.read_session() as session:
        links = session.execute(
            select(LinkRow.local_key, LinkRow.state).where(  # type: ignore[call-overload]
                LinkRow.state.in_(["creating", "updating", "deleting"])  # type: ignore[attr-defined]
            )
        ).all()
        pending = session.execute(
            select(LedgerRow.identifier).where(LedgerRow.state == LedgerState.PENDING)  # type: ignore[call-overload]
        ).all()
    return [f"link {k} {s}" for k, s in links] + [f"pending {i}" for (i,) in pending]


def test_jobs_run_on_schedule_and_sigterm_stops_cleanly(
    catalog: Catalog, emulator: StripeEmulator, env: dict[str, str], tmp_path: Path
) -> None:
    setup_usage(catalog, emulator, customers=2)  # synced in process; meters ensured
    service = start(env, tmp_path / "service.log")
    try:
        catalog.create_customer({"key": "later", "name": "Later"})
        wait_for(lambda: "later" in stripe_keys(emulator))  # the customer tick
        add_usage(catalog, "s0", 7.0, "u1")
        wait_for(lambda: any(e["event_name"] == "tokens" for e in emulator.meter_events()))
        # A busy tick (slow Stripe), and SIGTERM in the middle of it.
        emulator.configure(latency_ms=100, jitter_ms=0)
        for i in range(40):
            catalog.create_customer({"key": f"busy{i}", "name": f"Busy {i}"})
        wait_for(lambda: any(k.startswith("busy") for k in stripe_keys(emulator)))
        service.send_signal(signal.SIGTERM)
        assert service.wait(timeout=30) == 0
    finally:
        service.kill()
        service.wait()
    assert half_written(catalog) == []  # calls in flight finished; nothing else was begun
    busy = {k for k in stripe_keys(emulator) if k.startswith("busy")}
    assert 0 < len(busy) < 40, "the stop landed mid-tick"
    log = (tmp_path / "service.log").read_text()
    assert '"leading' in log and '"stopped"' in log
    # After a restart, the rest goes out: nothing was lost.
    emulator.configure(latency_ms=10, jitter_ms=5)
    again = start(env, tmp_path / "again.log")
    try:
        wait_for(lambda: len({k for k in stripe_keys(emulator) if k.startswith("busy")}) == 40)
        again.send_signal(signal.SIGTERM)
        assert again.wait(timeout=30) == 0
    finally:
        again.kill()
        again.wait()
    assert half_written(catalog) == []
    assert len(emulator.customers()) == 43  # 2 + later + 40 busy: none twice


def test_a_standby_takes_over_when_the_leader_is_killed(
    catalog: Catalog, emulator: StripeEmulator, env: dict[str, str], tmp_path: Path
) -> None:
    setup_usage(catalog, emulator, customers=1)
    leader = start(env, tmp_path / "leader.log")
    try:
        catalog.create_customer({"key": "first", "name": "First"})
        wait_for(lambda: "first" in stripe_keys(emulator))
        standby = start(env, tmp_path / "standby.log")
        try:
            wait_for(lambda: "standby" in (tmp_path / "standby.log").read_text())
            # While a service leads, a one-shot reconcile is refused (exit 3).
            refused = subprocess.run(
                [sys.executable, "-m", "metersync", "reconcile"], env=env, capture_output=True
            )
            assert refused.returncode == 3, refused.stderr
            leader.send_signal(signal.SIGKILL)
            leader.wait()
            catalog.create_customer({"key": "second", "name": "Second"})
            wait_for(lambda: "second" in stripe_keys(emulator))  # the standby leads now
            assert "leading" in (tmp_path / "standby.log").read_text()
            standby.send_signal(signal.SIGTERM)
            assert standby.wait(timeout=30) == 0
        finally:
            standby.kill()
            standby.wait()
    finally:
        leader.kill()
        leader.wait()


def test_health_readiness_and_metrics(
    catalog: Catalog, emulator: StripeEmulator, env: dict[str, str], tmp_path: Path
) -> None:
    setup_usage(catalog, emulator, customers=1)
    port, standby_port = free_port(), free_port()
    leader = start(env, tmp_path / "leader.log", port=port)
    standby = None
    try:
        wait_for(lambda: (r := get(port, "/healthz")) is not None and r.status_code == 200)
        wait_for(lambda: (r := get(port, "/readyz")) is not None and r.status_code == 200)
        ready = get(port, "/readyz")
        assert ready is not None and ready.json()["role"] == "leader"
        assert ready.json()["lastTickAgeSeconds"] < 5
        wait_for(
            lambda: 'job="usage",result="ok"' in (get(port, "/metrics") or httpx.Response(500)).text
        )
        metrics = get(port, "/metrics")
        assert metrics is not None and metrics.headers["content-type"].startswith("text/plain")
        assert 'metersync_job_runs_total{job="customers",result="ok"}' in metrics.text
        assert "metersync_leader 1.0" in metrics.text
        assert "metersync_ledger_lag_seconds" in metrics.text
        assert "metersync_job_last_success_timestamp_seconds" in metrics.text
        assert 'metersync_rate_limiter_wait_seconds_total{limiter="stripe_customers"}' in (
            metrics.text
        )
        standby = start(env, tmp_path / "standby.log", port=standby_port)
        wait_for(lambda: (r := get(standby_port, "/readyz")) is not None and r.status_code == 200)
        standby_ready = get(standby_port, "/readyz")
        assert standby_ready is not None and standby_ready.json()["role"] == "standby"
        leader.send_signal(signal.SIGTERM)
        assert leader.wait(timeout=30) == 0
        wait_for(
            lambda: (r := get(standby_port, "/readyz")) is not None and r.json()["role"] == "leader"
        )
        standby.send_signal(signal.SIGTERM)
        assert standby.wait(timeout=30) == 0
    finally:
        for process in (leader, standby):
            if process is not None:
                process.kill()
                process.wait()


def test_past_the_shutdown_deadline_the_service_leaves_and_the_next_run_finishes(
    catalog: Catalog, emulator: StripeEmulator, env: dict[str, str], tmp_path: Path
) -> None:
    emulator.configure(latency_ms=8000, jitter_ms=0)  # every call in flight for 8 s
    for i in range(3):
        catalog.create_customer({"key": f"slow{i}", "name": f"Slow {i}"})
    slow = {**env, "METERSYNC_SERVICE_SHUTDOWN_DEADLINE_S": "0.5"}
    service = start(slow, tmp_path / "service.log")
    try:
        # The request log holds finished calls only: wait for one still in flight.
        wait_for(lambda: emulator.in_flight() > 0)
        service.send_signal(signal.SIGTERM)
        assert service.wait(timeout=30) == 0
        # It left at its 0.5 s deadline: the calls it abandoned are still being answered.
        assert emulator.in_flight() > 0, "the service waited for its slow calls to end"
    finally:
        service.kill()
        service.wait()
    assert "shutdown deadline" in (tmp_path / "service.log").read_text()
    emulator.configure(latency_ms=10, jitter_ms=5)
    again = start(env, tmp_path / "again.log")
    try:
        # Finished: every customer in Stripe and no link left mid-create. (The abandoned calls
        # may still be in flight when it starts: its own creates meet a 409 and retry.)
        wait_for(
            lambda: (
                {f"slow{i}" for i in range(3)} <= stripe_keys(emulator)
                and half_written(catalog) == []
            )
        )
        again.send_signal(signal.SIGTERM)
        assert again.wait(timeout=30) == 0
    finally:
        again.kill()
        again.wait()
    assert half_written(catalog) == []
    assert len(emulator.customers()) == 3  # the call cut short did not become a duplicate


def test_the_service_keeps_hubspot_companies_in_step(
    catalog: Catalog, emulator: StripeEmulator, env: dict[str, str], tmp_path: Path
) -> None:
    token = "pat-na1-33333333-3333-3333-3333-333333333333"
    with HubSpotEmulator(token=token, rate_limit_per_10s=None) as hubspot:
        both = {
            **env,
            "METERSYNC_HUBSPOT_ACCESS_TOKEN": token,
            "METERSYNC_HUBSPOT_API_BASE": hubspot.url,
            "METERSYNC_HUBSPOT_REQUESTS_PER_10S": "1000",
            "METERSYNC_SERVICE_HUBSPOT_TICK_S": "0.5",
        }
        catalog.create_customer({"key": "acme", "name": "Acme"})
        service = start(both, tmp_path / "service.log")
        try:

            def company() -> dict[str, str]:
                found = [
                    c["properties"]
                    for c in hubspot.companies()
                    if c["properties"].get(MANAGED_KEY) == "acme"
                ]
                return found[0] if found else {}

            # The company carries the Stripe id, which only exists once Stripe's tick ran.
            wait_for(lambda: bool(company().get(STRIPE_ID)))
            [stripe_customer] = emulator.customers()
            assert company()[STRIPE_ID] == stripe_customer["id"]
            catalog.update_customer("acme", {"name": "Acme GmbH"})
            wait_for(lambda: company().get("name") == "Acme GmbH")
            service.send_signal(signal.SIGTERM)
            assert service.wait(timeout=30) == 0
        finally:
            service.kill()
            service.wait()


def test_the_service_pulls_from_openmeter_before_it_syncs(
    catalog: Catalog, emulator: StripeEmulator, env: dict[str, str], tmp_path: Path
) -> None:
    with OpenMeterEmulator(token="om-service") as openmeter:
        config = tmp_path / "source.toml"
        config.write_text(
            '[[meters]]\nslug = "tokens"\nevent_type = "prompt"\naggregation = "SUM"\n'
            'value_property = "$.tokens"\n[meters.stripe]\nevent_name = "tokens"\n'
        )
        openmeter.add_meter("tokens", event_type="prompt", value_property="$.tokens")
        openmeter.create_customer("acme", "Acme", subject_keys=["acme-api"])
        pulled = {
            **env,
            "METERSYNC_CONFIG": str(config),
            "METERSYNC_OPENMETER_URL": openmeter.url,
            "METERSYNC_OPENMETER_TOKEN": "om-service",
        }
        service = start(pulled, tmp_path / "service.log")
        try:
            wait_for(lambda: stripe_keys(emulator) == {"acme"})
            openmeter.create_customer("globex", "Globex")
            openmeter.delete_customer("acme")
            wait_for(lambda: stripe_keys(emulator) == {"globex"})
            service.send_signal(signal.SIGTERM)
            assert service.wait(timeout=30) == 0
        finally:
            service.kill()
            service.wait()
