"""Stripe webhooks: signatures (valid, forged, stale, a rolled secret), each event stored and
processed once, targeted reconciles, and end to end through a running service: a customer
deleted in Stripe is recreated within seconds, long before any scheduled run."""

from __future__ import annotations

import asyncio
import json
import signal
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from sqlalchemy import select

from metersync.catalog import Catalog
from metersync.pipeline import replay_webhooks as replay
from metersync.pipeline._webhooks import process_pending
from metersync.service.http import HttpServer, Readiness, ServiceMetrics, Webhooks, build_app
from metersync.store import WebhookEventRow
from metersync.sync.apply import RetryPolicy
from metersync.sync.customer_sync import SyncOptions, sync_customers
from metersync.sync.model import DeletePolicy
from metersync.sync.ports import MANAGED_KEY
from metersync.targets.stripe import StripeTarget
from metersync.testing import StripeEmulator
from metersync.testing._webhooks import sign
from test_service import env as service_env  # noqa: F401 - the fixture, reused
from test_service import free_port, get, start, stripe_keys, wait_for

SECRET, OLD_SECRET = "whsec_test_current", "whsec_test_previous"
OPTIONS = SyncOptions(full=True, policy=DeletePolicy(), retry=RetryPolicy(base_delay_s=0.01))


@pytest.fixture
def emulator() -> Iterator[StripeEmulator]:
    with StripeEmulator() as running:
        yield running


class Endpoint:
    """The service's HTTP face, served for real on 127.0.0.1 (uvicorn in a thread)."""

    def __init__(self, catalog: Catalog, woken: list[int]) -> None:
        app = build_app(
            catalog.store,
            ServiceMetrics(),
            Readiness(role=lambda: "leader", last_tick_success=lambda: None, stale_after_s=60),
            "stripe",
            Webhooks(secrets=lambda: [SECRET, OLD_SECRET], on_event=lambda: woken.append(1)),
        )
        self.port = free_port()
        self.server = HttpServer(app, "127.0.0.1", self.port)
        self.server.start()
        wait_for(lambda: get(self.port, "/healthz") is not None)

    def post(self, path: str, *, content: bytes, headers: dict[str, str]) -> httpx.Response:
        return httpx.post(
            f"http://127.0.0.1:{self.port}{path}", content=content, headers=headers, timeout=5
        )

    def get(self, path: str) -> httpx.Response:
        return httpx.get(f"http://127.0.0.1:{self.port}{path}", timeout=5)


@pytest.fixture
def endpoints() -> Iterator[list[Endpoint]]:
    started: list[Endpoint] = []
    yield started
    for endpoint in started:
        endpoint.server.stop()


def client(catalog: Catalog, woken: list[int], endpoints: list[Endpoint]) -> Endpoint:
    endpoint = Endpoint(catalog, woken)
    endpoints.append(endpoint)
    return endpoint


def event(event_id: str, event_type: str, customer_id: str) -> bytes:
    body = {"id": event_id, "type": event_type, "data": {"object": {"id": customer_id}}}
    return json.dumps(body).encode()


def post(http: Endpoint, payload: bytes, signature: str | None) -> Any:
    headers = {"Stripe-Signature": signature} if signature is not None else {}
    return http.post("/webhooks/stripe", content=payload, headers=headers)


def stored(catalog: Catalog) -> list[tuple[str, str | None]]:
    with catalog.store.read_session() as session:
        return list(session.execute(select(WebhookEventRow.id, WebhookEventRow.outcome)).all())  # type: ignore[call-overload]


def test_signatures_are_checked_and_each_event_stored_once(
    catalog: Catalog, endpoints: list[Endpoint]
) -> None:
    woken: list[int] = []
    http = client(catalog, woken, endpoints)
    payload = event("evt_1", "customer.updated", "cus_x")
    assert post(http, payload, None).status_code == 400
    forged = post(http, payload, sign(payload, "whsec_someone_else"))
    assert forged.status_code == 400 and "signature check failed" in forged.json()["error"]
    stale = post(http, payload, sign(payload, SECRET, timestamp=int(time.time()) - 301))
    assert stale.status_code == 400
    tampered = post(http, payload + b" ", sign(payload, SECRET))
    assert tampered.status_code == 400
    assert stored(catalog) == []
    valid = post(http, payload, sign(payload, SECRET))
    assert valid.status_code == 200 and valid.json() == {"received": True, "duplicate": False}
    again = post(http, payload, sign(payload, SECRET))  # Stripe delivers it again
    assert again.json() == {"received": True, "duplicate": True}
    rolled = event("evt_2", "invoice.paid", "in_1")  # signed with the previous secret
    assert post(http, rolled, sign(rolled, OLD_SECRET)).status_code == 200
    # Several v1 signatures in one header (Stripe during a roll): any one may match.
    both = event("evt_3", "customer.updated", "cus_y")
    header = sign(both, SECRET) + "," + sign(both, "whsec_other").split(",")[1]
    assert post(http, both, header).status_code == 200
    assert sorted(i for i, _ in stored(catalog)) == ["evt_1", "evt_2", "evt_3"]
    assert len(woken) == 3
    metrics = http.get("/metrics").text
    assert 'metersync_webhooks_total{result="refused"} 4.0' in metrics
    assert 'metersync_webhooks_total{result="duplicate"} 1.0' in metrics


def test_processing_reconciles_our_customers_and_ignores_the_rest(
    catalog: Catalog, emulator: StripeEmulator, endpoints: list[Endpoint]
) -> None:
    catalog.create_customer({"key": "acme", "name": "Acme"})

    async def sync() -> None:
        target = StripeTarget("sk_test_hooks", api_base=emulator.url, rate=1000)
        try:
            await sync_customers(catalog, target, SyncOptions())
        finally:
            await target.close()

    asyncio.run(sync())
    [acme] = emulator.customers()
    emulator.client().v1.customers.delete(acme["id"])
    http = client(catalog, [], endpoints)
    for payload in (
        event("evt_del", "customer.deleted", acme["id"]),
        event("evt_other", "customer.updated", "cus_not_ours"),
        event("evt_inv", "invoice.paid", "in_1"),
    ):
        assert post(http, payload, sign(payload, SECRET)).status_code == 200

    async def process() -> dict[str, int]:
        target = StripeTarget("sk_test_hooks", api_base=emulator.url, rate=1000)
        try:
            return await process_pending(catalog, target, OPTIONS)
        finally:
            await target.close()

    assert asyncio.run(process()) == {"reconciled": 1, "ignored": 2}
    [recreated] = emulator.customers()
    assert recreated["id"] != acme["id"] and recreated["metadata"][MANAGED_KEY] == "acme"
    outcomes = dict(stored(catalog))
    assert outcomes["evt_other"] == "ignored: cus_not_ours is not a customer metersync manages"
    assert asyncio.run(process()) == {}  # processed once
    assert replay(catalog.store, event_ids=["evt_inv"]) == 1
    assert asyncio.run(process()) == {"ignored": 1}


def test_a_customer_deleted_in_stripe_is_recreated_within_seconds(
    catalog: Catalog,
    emulator: StripeEmulator,
    service_env: dict[str, str],  # noqa: F811 - the fixture
    tmp_path: Path,
) -> None:
    catalog.create_customer({"key": "acme", "name": "Acme"})
    port = free_port()
    env = {
        **service_env,
        "METERSYNC_STRIPE_WEBHOOK_SECRET": SECRET,
        # No scheduled run would notice before the test ends: only the webhook can.
        "METERSYNC_SERVICE_CUSTOMER_TICK_S": "3600",
        "METERSYNC_SERVICE_USAGE_TICK_S": "3600",
    }
    service = start(env, tmp_path / "service.log", port=port)
    try:
        wait_for(lambda: "acme" in stripe_keys(emulator))  # the first tick runs at start
        wait_for(lambda: (r := get(port, "/readyz")) is not None and r.status_code == 200)
        emulator.configure(
            webhook_url=f"http://127.0.0.1:{port}/webhooks/stripe", webhook_secret=SECRET
        )
        [acme] = emulator.customers()
        emulator.client().v1.customers.delete(acme["id"])
        # Ticks are an hour apart: only the webhook can bring the customer back.
        wait_for(lambda: [c["id"] for c in emulator.customers()] not in ([], [acme["id"]]))
        [recreated] = emulator.customers()
        assert recreated["metadata"][MANAGED_KEY] == "acme"
        service.send_signal(signal.SIGTERM)
        assert service.wait(timeout=30) == 0
    finally:
        service.kill()
        service.wait()
