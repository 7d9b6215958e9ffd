"""The Stripe emulator's wire protocol, customers, idempotency, faults, rate limits, webhooks
and control endpoint, all through the real stripe SDK over HTTP on 127.0.0.1."""

from __future__ import annotations

import json
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, ClassVar

import httpx
import pytest
import stripe
from freezegun import freeze_time

from metersync.testing import FaultKind, FaultRule, StripeEmulator


@pytest.fixture
def emulator() -> Iterator[StripeEmulator]:
    with StripeEmulator() as running:
        yield running


@pytest.fixture
def client(emulator: StripeEmulator) -> stripe.StripeClient:
    return emulator.client()


def raw(emulator: StripeEmulator, method: str, path: str, **kwargs: Any) -> httpx.Response:
    headers = kwargs.pop("headers", {"Authorization": "Bearer sk_test_raw"})
    return httpx.request(method, emulator.url + path, headers=headers, timeout=10, **kwargs)


# -- wire protocol --------------------------------------------------------------------------------


def test_authentication_is_required(emulator: StripeEmulator) -> None:
    for headers in ({}, {"Authorization": "Basic abc"}, {"Authorization": "Bearer"}):
        response = raw(emulator, "GET", "/v1/customers", headers=headers)
        assert response.status_code == 401
        assert response.json()["error"]["type"] == "invalid_request_error"
        assert response.headers["request-id"].startswith("req_")
    live = stripe.StripeClient(
        "sk_live_realkey123",
        base_addresses={"api": emulator.url},
        http_client=stripe.HTTPXClient(allow_sync_methods=True),
    )
    with pytest.raises(stripe.AuthenticationError) as info:
        live.v1.customers.list()
    assert "realkey123" not in str(info.value)  # the key itself is never echoed whole
    assert emulator.client("rk_test_restricted").v1.customers.list().data == []


def test_every_response_has_a_request_id_and_errors_have_stripes_shape(
    emulator: StripeEmulator,
) -> None:
    ok = raw(emulator, "POST", "/v1/customers", data={"name": "A"})
    assert ok.status_code == 200 and ok.headers["request-id"].startswith("req_")
    assert ok.json()["id"].startswith("cus_") and ok.json()["livemode"] is False
    missing = raw(emulator, "GET", "/v1/customers/cus_nope")
    assert missing.status_code == 404
    assert missing.json() == {
        "error": {
            "type": "invalid_request_error",
            "message": "No such customer: 'cus_nope'",
            "code": "resource_missing",
            "param": "id",
        }
    }
    unknown = raw(emulator, "POST", "/v1/customers", data={"nmae": "typo"})
    assert unknown.status_code == 400
    assert unknown.json()["error"]["param"] == "nmae"
    assert raw(emulator, "GET", "/v1/nothing").status_code == 404
    ids = {ok.headers["request-id"], missing.headers["request-id"], unknown.headers["request-id"]}
    assert len(ids) == 3


def test_nested_form_parameters(client: stripe.StripeClient) -> None:
    customer = client.v1.customers.create(
        {
            "name": "ACME",
            "address": {"line1": "1 Main St", "country": "US", "postal_code": "85001"},
            "metadata": {"metersync_key": "acme", "plan": "pro"},
            "preferred_locales": ["en", "de"],
        }
    )
    assert customer.address is not None and customer.address.line1 == "1 Main St"
    assert customer.address.city is None
    assert customer.metadata.to_dict() == {"metersync_key": "acme", "plan": "pro"}
    assert customer.preferred_locales == ["en", "de"]


# -- customers ------------------------------------------------------------------------------------


def test_update_merges_metadata_and_empty_strings_unset(client: stripe.StripeClient) -> None:
    customer = client.v1.customers.create(
        {"name": "ACME", "email": "a@acme.test", "metadata": {"a": "1", "b": "2"}}
    )
    updated = client.v1.customers.update(
        customer.id, {"metadata": {"a": "", "c": "3"}, "email": "", "phone": "+1 555 0100"}
    )
    assert updated.metadata.to_dict() == {"b": "2", "c": "3"}
    assert updated.email is None and updated.name == "ACME" and updated.phone == "+1 555 0100"
    cleared = client.v1.customers.update(customer.id, {"metadata": ""})
    assert cleared.metadata.to_dict() == {}


def test_deleted_customer(client: stripe.StripeClient, emulator: StripeEmulator) -> None:
    customer = client.v1.customers.create({"name": "Gone"})
    deleted = client.v1.customers.delete(customer.id)
    assert deleted.to_dict() == {"id": customer.id, "object": "customer", "deleted": True}
    again = client.v1.customers.retrieve(customer.id)
    assert again.to_dict() == {"id": customer.id, "object": "customer", "deleted": True}
    with pytest.raises(stripe.InvalidRequestError) as info:
        client.v1.customers.update(customer.id, {"name": "Back"})
    assert (info.value.http_status, info.value.code) == (404, "resource_missing")
    with pytest.raises(stripe.InvalidRequestError):
        client.v1.customers.delete(customer.id)
    assert client.v1.customers.list().data == []
    assert emulator.customers(include_deleted=True) == [deleted.to_dict()]


def test_field_limits(client: stripe.StripeClient, emulator: StripeEmulator) -> None:
    cases: list[tuple[dict[str, Any], str]] = [
        ({"name": "n" * 257}, "name"),
        ({"email": "e" * 513}, "email"),
        ({"phone": "1" * 21}, "phone"),
        ({"metadata": {f"k{i}": "v" for i in range(51)}}, "metadata"),
        ({"metadata": {"k" * 41: "v"}}, "metadata[" + "k" * 41 + "]"),
        ({"metadata": {"k": "v" * 501}}, "metadata[k]"),
        ({"metadata": {"a[b": "v"}}, "metadata[a[b]"),
    ]
    for params, param in cases:
        with pytest.raises(stripe.InvalidRequestError) as info:
            client.v1.customers.create(params)
        assert info.value.http_status == 400
        assert info.value.param == param, params
    ok = client.v1.customers.create(
        {
            "name": "n" * 256,
            "email": "e" * 512,
            "phone": "1" * 20,
            "metadata": {f"k{i:02d}" + "x" * 36: "v" * 500 for i in range(50)},
        }
    )
    assert len(ok.metadata.to_dict()) == 50
    assert len(emulator.customers()) == 1
    # 49 keys plus two new ones is 51: refused, and nothing changes.
    with pytest.raises(stripe.InvalidRequestError):
        client.v1.customers.update(
            ok.id, {"metadata": {"n1": "v", "n2": "v", "k00" + "x" * 36: ""}}
        )
    assert len(client.v1.customers.retrieve(ok.id).metadata.to_dict()) == 50


def test_list_pagination_filters_and_order(client: stripe.StripeClient) -> None:
    start = datetime(2026, 11, 1, tzinfo=UTC)
    ids = []
    with freeze_time(start) as frozen:
        for i in range(25):
            ids.append(
                client.v1.customers.create({"name": f"c{i}", "email": f"c{i % 3}@x.test"}).id
            )
            frozen.tick(timedelta(minutes=1))
    newest_first = list(reversed(ids))
    assert [c.id for c in client.v1.customers.list().data] == newest_first[:10]
    seen: list[str] = []
    page = client.v1.customers.list({"limit": 7})
    while True:
        seen += [c.id for c in page.data]
        if not page.has_more:
            break
        page = client.v1.customers.list({"limit": 7, "starting_after": page.data[-1].id})
    assert seen == newest_first
    back = client.v1.customers.list({"limit": 5, "ending_before": newest_first[10]})
    assert [c.id for c in back.data] == newest_first[5:10] and back.has_more
    assert [
        c.id for c in client.v1.customers.list({"limit": 100}).auto_paging_iter()
    ] == newest_first
    by_email = client.v1.customers.list({"email": "c1@x.test", "limit": 100})
    assert [c.id for c in by_email.data] == [i for n, i in enumerate(ids) if n % 3 == 1][::-1]
    created_from = int((start + timedelta(minutes=20)).timestamp())
    recent = client.v1.customers.list({"created": {"gte": created_from}, "limit": 100})
    assert [c.id for c in recent.data] == newest_first[:5]
    for bad in (0, 101):
        with pytest.raises(stripe.InvalidRequestError) as info:
            client.v1.customers.list({"limit": bad})
        assert info.value.param == "limit"


def test_search_subset_and_eventual_consistency(emulator: StripeEmulator) -> None:
    emulator.configure(search_delay_s=60)
    client = emulator.client()
    with freeze_time("2026-11-21 10:00:00") as frozen:
        acme = client.v1.customers.create(
            {
                "name": "ACME Inc",
                "email": "billing@acme.test",
                "metadata": {"metersync_key": "acme"},
            }
        )
        client.v1.customers.create({"name": "Globex", "metadata": {"metersync_key": "globex"}})
        query = "metadata['metersync_key']:'acme'"
        assert client.v1.customers.search({"query": query}).data == []  # not indexed yet
        frozen.tick(timedelta(seconds=61))
        assert [c.id for c in client.v1.customers.search({"query": query}).data] == [acme.id]
        both = client.v1.customers.search(
            {"query": "metadata['metersync_key']:'acme' OR name:'globex'"}
        )
        assert len(both.data) == 2
        assert (
            client.v1.customers.search({"query": 'email:"BILLING@acme.test" AND name~"acme"'})
            .data[0]
            .id
            == acme.id
        )
        with pytest.raises(stripe.InvalidRequestError):
            client.v1.customers.search({"query": "name:'a' AND email:'b' OR name:'c'"})
        # Search is not read-after-write: a delete shows only after the delay too.
        client.v1.customers.delete(acme.id)
        assert len(client.v1.customers.search({"query": query}).data) == 1
        frozen.tick(timedelta(seconds=61))
        assert client.v1.customers.search({"query": query}).data == []


def test_search_pages_and_has_its_own_rate_limit(emulator: StripeEmulator) -> None:
    client = emulator.client()
    for i in range(5):
        client.v1.customers.create({"name": f"n{i}", "metadata": {"group": "g"}})
    first = client.v1.customers.search({"query": "metadata['group']:'g'", "limit": 3})
    assert len(first.data) == 3 and first.has_more and first.next_page
    rest = client.v1.customers.search(
        {"query": "metadata['group']:'g'", "limit": 3, "page": first.next_page}
    )
    assert len(rest.data) == 2 and not rest.has_more
    emulator.configure(search_rate_limit=2, burst=2)
    client.v1.customers.search({"query": "name:'n1'"})
    client.v1.customers.search({"query": "name:'n1'"})
    with pytest.raises(stripe.RateLimitError):
        client.v1.customers.search({"query": "name:'n1'"})
    client.v1.customers.list()  # ordinary endpoints are not limited by the search budget


# -- idempotency ----------------------------------------------------------------------------------


def test_idempotent_replay_returns_the_same_customer(
    client: stripe.StripeClient, emulator: StripeEmulator
) -> None:
    first = client.v1.customers.create({"name": "Once"}, {"idempotency_key": "create-once"})
    again = client.v1.customers.create({"name": "Once"}, {"idempotency_key": "create-once"})
    assert again.id == first.id
    assert again.last_response is not None
    assert again.last_response.headers["idempotent-replayed"] == "true"
    assert len(emulator.customers()) == 1
    with pytest.raises(stripe.IdempotencyError) as info:
        client.v1.customers.create({"name": "Other"}, {"idempotency_key": "create-once"})
    assert info.value.http_status == 400
    assert [r["replayed"] for r in emulator.requests("customers.create")] == [False, True, False]


def test_same_key_in_flight_is_409(emulator: StripeEmulator) -> None:
    emulator.configure(latency_ms=1000)
    client = emulator.client()  # no retries: the 409 surfaces
    outcomes: list[object] = []

    def create() -> None:
        try:
            outcomes.append(
                client.v1.customers.create({"name": "Race"}, {"idempotency_key": "k"}).id
            )
        except stripe.StripeError as exc:
            outcomes.append(exc.http_status)

    threads = [threading.Thread(target=create) for _ in range(2)]
    threads[0].start()
    # The second call goes once the first is being handled (on a loaded machine the first
    # thread can take longer than any fixed pause to send it).
    deadline = time.monotonic() + 10
    while emulator.in_flight() == 0 and time.monotonic() < deadline:
        time.sleep(0.005)
    threads[1].start()
    for thread in threads:
        thread.join()
    assert sorted(map(str, outcomes))[0] == "409"
    assert len(emulator.customers()) == 1


def test_rate_limited_and_invalid_requests_are_not_stored(emulator: StripeEmulator) -> None:
    client = emulator.client()
    with pytest.raises(stripe.InvalidRequestError):
        client.v1.customers.create({"name": "n" * 300}, {"idempotency_key": "fix-and-retry"})
    fixed = client.v1.customers.create({"name": "ok"}, {"idempotency_key": "fix-and-retry"})
    assert fixed.name == "ok"
    emulator.configure(faults=[FaultRule(FaultKind.RATE_LIMIT, 1.0, "customers.create")])
    with pytest.raises(stripe.RateLimitError):
        client.v1.customers.create({"name": "later"}, {"idempotency_key": "limited"})
    emulator.configure(faults=[])
    created = client.v1.customers.create({"name": "later"}, {"idempotency_key": "limited"})
    assert created.last_response is not None
    assert "idempotent-replayed" not in created.last_response.headers


def test_idempotency_keys_expire_after_24_hours(emulator: StripeEmulator) -> None:
    client = emulator.client()
    with freeze_time("2026-11-21 10:00:00") as frozen:
        first = client.v1.customers.create({"name": "Day"}, {"idempotency_key": "daily"})
        frozen.tick(timedelta(hours=23, minutes=59))
        assert (
            client.v1.customers.create({"name": "Day"}, {"idempotency_key": "daily"}).id == first.id
        )
        frozen.tick(timedelta(minutes=2))
        later = client.v1.customers.create({"name": "Day"}, {"idempotency_key": "daily"})
    assert later.id != first.id


# -- faults, latency, rate limits -----------------------------------------------------------------


def test_commit_then_drop_applies_the_write_but_the_client_sees_a_connection_error(
    emulator: StripeEmulator,
) -> None:
    emulator.configure(
        faults=[{"kind": "commit_then_drop", "probability": 1.0, "endpoint": "customers.create"}]
    )
    client = emulator.client()
    with pytest.raises(stripe.APIConnectionError):
        client.v1.customers.create({"name": "Dropped"}, {"idempotency_key": "drop-1"})
    assert [c["name"] for c in emulator.customers()] == ["Dropped"]
    # The client retries with the same key once the network heals: same customer, no duplicate.
    emulator.configure(faults=[])
    retried = client.v1.customers.create({"name": "Dropped"}, {"idempotency_key": "drop-1"})
    assert [c["id"] for c in emulator.customers()] == [retried.id]
    assert emulator.requests("customers.create")[0]["status"] == "drop"


def test_reset_and_500_do_nothing(emulator: StripeEmulator) -> None:
    client = emulator.client()
    emulator.configure(faults=[FaultRule(FaultKind.RESET, 1.0, "customers.*")])
    with pytest.raises(stripe.APIConnectionError):
        client.v1.customers.create({"name": "Reset"})
    emulator.configure(faults=[FaultRule(FaultKind.ERROR_500, 1.0)])
    with pytest.raises(stripe.APIError) as info:
        client.v1.customers.create({"name": "Boom"})
    assert info.value.http_status == 500
    assert emulator.customers() == []
    assert emulator.stats()["endpoints"]["customers.create"] == {"reset": 1, "500": 1}


def test_sdk_retries_through_a_fault_mix_without_duplicates(
    emulator: StripeEmulator, monkeypatch: pytest.MonkeyPatch
) -> None:
    emulator.configure(
        seed=7,
        faults=[
            {"kind": "error_500", "probability": 0.2},
            {"kind": "reset", "probability": 0.1},
            {"kind": "commit_then_drop", "probability": 0.1},
        ],
    )
    # The SDK's own backoff (0.5 s doubling) would make this slow; the behaviour is the same.
    monkeypatch.setattr(stripe.HTTPClient, "INITIAL_DELAY", 0.001)
    monkeypatch.setattr(stripe.HTTPClient, "MAX_DELAY", 0.02)
    client = emulator.client(max_network_retries=10)
    created = [client.v1.customers.create({"name": f"c{i}"}).id for i in range(30)]
    # Every create carries an idempotency key the SDK reuses on retry: a dropped-after-commit
    # create is replayed, never repeated.
    assert sorted(c["id"] for c in emulator.customers()) == sorted(created)
    outcomes = emulator.stats()["endpoints"]["customers.create"]
    assert outcomes.get("500", 0) and outcomes.get("reset", 0) and outcomes.get("drop", 0)


def test_slow_response_outlasts_the_client_timeout(emulator: StripeEmulator) -> None:
    emulator.configure(
        slow_seconds=2.0, faults=[FaultRule(FaultKind.SLOW, 1.0, "customers.create")]
    )
    client = emulator.client(timeout=0.3)
    with pytest.raises(stripe.APIConnectionError):
        client.v1.customers.create({"name": "Slow"})
    assert [c["name"] for c in emulator.customers()] == ["Slow"]


def test_requests_past_the_rate_get_429(emulator: StripeEmulator) -> None:
    emulator.configure(rate_limit=5, burst=5)
    client = emulator.client()
    for _ in range(5):
        client.v1.customers.list()
    with pytest.raises(stripe.RateLimitError) as info:
        client.v1.customers.list()
    assert info.value.http_status == 429
    assert info.value.json_body is not None
    assert info.value.json_body["error"]["code"] == "rate_limit"
    time.sleep(0.45)  # the bucket refills at 5/s: two more tokens
    client.v1.customers.list()
    assert emulator.stats()["endpoints"]["customers.list"]["429"] == 1


def test_latency_is_added(emulator: StripeEmulator) -> None:
    client = emulator.client()
    client.v1.customers.list()  # connection set up
    emulator.configure(latency_ms=150, jitter_ms=20)
    started = time.perf_counter()
    client.v1.customers.list()
    assert time.perf_counter() - started >= 0.125


def test_time_frozen_by_freezegun_does_not_freeze_the_server(emulator: StripeEmulator) -> None:
    emulator.configure(latency_ms=50, rate_limit=100)
    with freeze_time("2030-01-01"):
        customer = emulator.client().v1.customers.create({"name": "Frozen"})
    assert customer.created == int(datetime(2030, 1, 1, tzinfo=UTC).timestamp())


# -- control endpoint, reset, webhooks, CLI -------------------------------------------------------


def test_control_endpoint(emulator: StripeEmulator) -> None:
    config = httpx.post(
        emulator.url + "/_emulator/config",
        json={
            "latency_ms": 5,
            "faults": [{"kind": "error_500", "probability": 0.5, "endpoint": "billing.*"}],
        },
    )
    assert config.status_code == 200
    assert config.json()["faults"] == [
        {"kind": "error_500", "probability": 0.5, "endpoint": "billing.*"}
    ]
    assert emulator.config.latency_ms == 5
    bad = httpx.post(emulator.url + "/_emulator/config", json={"latencyy": 5})
    assert bad.status_code == 400 and "latencyy" in bad.json()["error"]["message"]
    bad = httpx.post(
        emulator.url + "/_emulator/config", json={"faults": [{"kind": "meteor", "probability": 1}]}
    )
    assert bad.status_code == 400
    emulator.client().v1.customers.create({"name": "x"})
    stats = httpx.get(emulator.url + "/_emulator/stats").json()
    assert stats["endpoints"]["customers.create"] == {"200": 1}
    log = httpx.get(emulator.url + "/_emulator/requests").json()["data"]
    assert [(r["endpoint"], r["status"]) for r in log] == [("customers.create", 200)]
    assert httpx.post(emulator.url + "/_emulator/reset").json() == {"reset": True}
    assert emulator.customers() == [] and emulator.requests() == []


class _Receiver(BaseHTTPRequestHandler):
    received: ClassVar[list[tuple[str, bytes]]] = []
    fail_first: ClassVar[int] = 0

    def do_POST(self) -> None:
        body = self.rfile.read(int(self.headers["Content-Length"]))
        cls = type(self)
        if cls.fail_first > 0:
            cls.fail_first -= 1
            self.send_response(500)
        else:
            cls.received.append((self.headers["Stripe-Signature"], body))
            self.send_response(200)
        self.end_headers()

    def log_message(self, *args: Any) -> None:
        pass


def test_webhooks_are_signed_and_retried(emulator: StripeEmulator) -> None:
    _Receiver.received = []
    _Receiver.fail_first = 1
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Receiver)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    secret = "whsec_test_secret"
    emulator.configure(
        webhook_url=f"http://127.0.0.1:{server.server_address[1]}/hook",
        webhook_secret=secret,
        webhook_retry_delay_s=0.05,
    )
    client = emulator.client()
    customer = client.v1.customers.create({"name": "Hooked"}, {"idempotency_key": "hook-1"})
    client.v1.customers.update(customer.id, {"name": "Hooked 2"})
    client.v1.customers.delete(customer.id)
    deadline = time.monotonic() + 10
    while len(_Receiver.received) < 3 and time.monotonic() < deadline:
        time.sleep(0.05)
    server.shutdown()
    events = [
        stripe.Webhook.construct_event(body.decode(), signature, secret)
        for signature, body in _Receiver.received
    ]
    assert [e.type for e in events] == ["customer.created", "customer.updated", "customer.deleted"]
    assert events[1].data.previous_attributes.to_dict() == {"name": "Hooked"}
    assert all(e.data.object.id == customer.id for e in events)
    # Each event names the request that caused it (not the one before).
    assert customer.last_response is not None
    assert events[0].request.id == customer.last_response.request_id
    assert events[0].request.idempotency_key == "hook-1"
    attempts = [d["attempt"] for d in emulator.webhook_deliveries()]
    assert attempts == [1, 2, 1, 1]  # the first event was retried after a 500
    with pytest.raises(stripe.SignatureVerificationError):
        stripe.Webhook.construct_event(
            _Receiver.received[0][1].decode(), _Receiver.received[0][0], "whsec_wrong"
        )


def test_standalone_command(tmp_path: Any) -> None:
    process = subprocess.Popen(
        [sys.executable, "-m", "metersync", "emulator", "--port", "0"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        cwd=tmp_path,
    )
    try:
        assert process.stdout is not None
        line = process.stdout.readline()
        assert line.startswith("Stripe emulator listening on http://127.0.0.1:")
        url = line.split()[-1]
        client = stripe.StripeClient(
            "sk_test_cli",
            base_addresses={"api": url},
            http_client=stripe.HTTPXClient(allow_sync_methods=True),
        )
        assert client.v1.customers.create({"name": "CLI"}).id.startswith("cus_")
        assert json.loads(httpx.get(url + "/_emulator/stats").text)["totals"] == {"200": 1}
    finally:
        process.terminate()
        assert process.wait(timeout=10) == 0


def test_webhook_delivery_gives_up_after_max_attempts(emulator: StripeEmulator) -> None:
    _Receiver.received = []
    _Receiver.fail_first = 100
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Receiver)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    emulator.configure(
        webhook_url=f"http://127.0.0.1:{server.server_address[1]}/hook",
        webhook_secret="whsec_x",
        webhook_max_attempts=3,
        webhook_retry_delay_s=0.01,
    )
    emulator.client().v1.customers.create({"name": "Unheard"})
    deadline = time.monotonic() + 10
    while len(emulator.webhook_deliveries()) < 3 and time.monotonic() < deadline:
        time.sleep(0.02)
    time.sleep(0.1)  # no fourth attempt follows
    server.shutdown()
    assert [(d["attempt"], d["status"]) for d in emulator.webhook_deliveries()] == [
        (1, 500),
        (2, 500),
        (3, 500),
    ]
    assert _Receiver.received == []
