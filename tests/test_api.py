"""The OpenMeter-compatible API over real HTTP, every request and response validated against
OpenMeter's own openapi.yaml (openapi-core): subjects, customers, events, meters and the meter
query; bearer tokens; problem+json errors. The calls the seed documents show work unchanged."""

from __future__ import annotations

import calendar
import json
import os
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from functools import cache
from pathlib import Path
from typing import Any

import pytest
import requests
from openapi_core import OpenAPI
from openapi_core.contrib.requests import RequestsOpenAPIRequest, RequestsOpenAPIResponse
from openmeter import Client
from sqlalchemy import select
from ulid import ULID

from metersync.catalog import Catalog
from metersync.catalog.meters import Meter, MeterSettings
from metersync.service.api import api_routes
from metersync.service.http import HttpServer, Readiness, ServiceMetrics, build_app
from metersync.store import UsageRow
from metersync.store.usage_retention import raise_floor
from specs import openmeter_openapi
from test_service import free_port, get, start, wait_for

PROBLEM = "application/problem+json"
TOKEN = "om_test_token"
TOKENS = {"Authorization": f"Bearer {TOKEN}"}
TOKENS_METER = Meter.of(
    MeterSettings(
        slug="tokens",
        event_type="prompt",
        aggregation="SUM",  # type: ignore[arg-type]
        value_property="$.tokens",
        group_by={"model": "$.model"},
    )
)


@cache
def openapi(base_url: str) -> OpenAPI:
    # The test server's own address; any port.
    return openmeter_openapi(base_url + ":{port}", {"port": {"default": "8888"}})


class Api:
    def __init__(self, base: str) -> None:
        self.base = base

    def call(
        self,
        method: str,
        path: str,
        *,
        token: str | None = TOKEN,
        check: bool | str = True,
        **kwargs: Any,
    ) -> requests.Response:
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        headers.update(kwargs.pop("headers", {}))
        response = requests.request(method, self.base + path, headers=headers, timeout=10, **kwargs)
        if check:  # both sides of the exchange (or, for a bad request, the answer), by the spec
            spec = openapi("http://127.0.0.1")
            wrapped = RequestsOpenAPIRequest(response.request)
            if check != "response":
                spec.validate_request(wrapped)
            spec.validate_response(wrapped, RequestsOpenAPIResponse(response))
        return response


@pytest.fixture
def api(catalog: Catalog) -> Iterator[Api]:
    port = free_port()
    app = build_app(
        catalog.store,
        ServiceMetrics(),
        Readiness(role=lambda: "leader", last_tick_success=lambda: None, stale_after_s=60),
        "stripe",
        api=api_routes(catalog, [TOKENS_METER], lambda: [TOKEN]),
    )
    server = HttpServer(app, "127.0.0.1", port)
    server.start()
    wait_for(lambda: get(port, "/healthz") is not None)
    yield Api(f"http://127.0.0.1:{port}")
    server.stop()


def test_subjects_as_the_sdk_upserts_them(api: Api) -> None:
    upserted = api.call(
        "POST",
        "/api/v1/subjects",
        json=[{"key": "department1", "displayName": "Department 1", "metadata": {"a": "b"}}],
    )
    assert upserted.status_code == 200
    assert upserted.json()[0]["key"] == "department1"
    assert [s["key"] for s in api.call("GET", "/api/v1/subjects").json()] == ["department1"]
    assert api.call("GET", "/api/v1/subjects/department1").json()["displayName"] == "Department 1"
    by_id = api.call("GET", f"/api/v1/subjects/{upserted.json()[0]['id']}")
    assert by_id.json()["key"] == "department1"
    assert api.call("DELETE", "/api/v1/subjects/department1").status_code == 204
    missing = api.call("GET", "/api/v1/subjects/department1")
    assert missing.status_code == 404
    assert missing.headers["content-type"] == "application/problem+json"


def test_customers_with_usage_attribution(api: Api) -> None:
    body = {
        "key": "acme",
        "name": "ACME, Inc.",
        "currency": "USD",
        "usageAttribution": {"subjectKeys": ["department1", "department2"]},
    }
    created = api.call("POST", "/api/v1/customers", json=body)
    assert created.status_code == 201
    customer = created.json()
    assert customer["usageAttribution"]["subjectKeys"] == ["department1", "department2"]
    by_id = api.call("GET", f"/api/v1/customers/{customer['id']}").json()
    assert by_id["key"] == "acme"
    page = api.call("GET", "/api/v1/customers", params={"page": 1, "pageSize": 10}).json()
    assert (page["totalCount"], [c["key"] for c in page["items"]]) == (1, ["acme"])
    replaced = api.call(
        "PUT",
        "/api/v1/customers/acme",
        json={"name": "ACME Corporation", "usageAttribution": {"subjectKeys": ["department1"]}},
    )
    assert replaced.status_code == 200 and replaced.json()["name"] == "ACME Corporation"
    taken = api.call("POST", "/api/v1/customers", json={**body, "key": "other"})
    assert taken.status_code == 409  # department1 belongs to acme
    assert "already belongs to customer 'acme'" in taken.json()["detail"]
    invalid = api.call("POST", "/api/v1/customers", json={"key": "x"}, check="response")
    assert invalid.status_code == 400 and "name" in invalid.json()["detail"]
    assert api.call("DELETE", "/api/v1/customers/acme").status_code == 204


def test_events_and_the_meter_query(api: Api) -> None:
    api.call(
        "POST",
        "/api/v1/customers",
        json={"key": "acme", "name": "Acme", "usageAttribution": {"subjectKeys": ["acme-api"]}},
    )
    hour = datetime.now(UTC).replace(minute=0, second=0, microsecond=0) - timedelta(hours=1)
    events = [
        {
            "specversion": "1.0",
            "id": f"e{i}",
            "source": "app",
            "type": "prompt",
            "subject": "acme-api",
            "time": (hour + timedelta(minutes=i)).isoformat().replace("+00:00", "Z"),
            "data": {"tokens": tokens, "model": model},
        }
        for i, (tokens, model) in enumerate([(5, "a"), (7, "b")])
    ]
    one = api.call(
        "POST",
        "/api/v1/events",
        data=json.dumps(events[0]),
        headers={"Content-Type": "application/cloudevents+json"},
    )
    assert one.status_code == 204
    batch = api.call(
        "POST",
        "/api/v1/events",
        data=json.dumps(events),
        headers={"Content-Type": "application/cloudevents-batch+json"},
    )
    assert batch.status_code == 204  # e0 again: deduplicated
    meters = api.call("GET", "/api/v1/meters").json()
    assert [m["slug"] for m in meters] == ["tokens"]
    start = hour.isoformat().replace("+00:00", "Z")
    result = api.call(
        "GET",
        "/api/v1/meters/tokens/query",
        params={"from": start, "windowSize": "HOUR", "filterCustomerId": "acme"},
        # openapi-core cannot read this operation's deepObject parameter (filterGroupBy) even
        # when absent: the request goes unchecked, the response is checked.
        check="response",
    ).json()
    assert [(w["windowStart"], w["value"]) for w in result["data"]] == [(start, 12.0)]
    bad = api.call(
        "POST",
        "/api/v1/events",
        json={**events[0], "id": "bad", "data": {"tokens": "many"}},
        check="response",
    )
    assert bad.status_code == 400 and "not a number" in bad.json()["detail"]
    assert calendar.timegm(hour.utctimetuple()) > 0


def test_a_bearer_token_is_required(api: Api) -> None:
    for token in (None, "wrong"):
        refused = api.call("GET", "/api/v1/subjects", token=token, check="response")
        assert refused.status_code == 401
        assert refused.headers["content-type"] == "application/problem+json"


def test_the_official_openmeter_client_works_against_a_running_service(
    catalog: Catalog, database_url: str, tmp_path: Path
) -> None:
    """openmeter (PyPI, pinned in pyproject's dev extra) against `metersync run` itself."""
    config = tmp_path / "metersync.toml"
    config.write_text(
        '[[meters]]\nslug = "tokens"\nevent_type = "prompt"\naggregation = "SUM"\n'
        'value_property = "$.tokens"\n'
    )
    port = free_port()
    env = {
        **{k: v for k, v in os.environ.items() if not k.startswith("METERSYNC_")},
        "METERSYNC_CONFIG": str(config),
        "METERSYNC_DATABASE_URL": database_url,
        "STRIPE_API_KEY": "sk_test_client",
        "METERSYNC_STRIPE_API_BASE": "http://127.0.0.1:9",  # no Stripe needed here
        "METERSYNC_HTTP_TOKENS": json.dumps([TOKEN]),
        "METERSYNC_SERVICE_CUSTOMER_TICK_S": "3600",
        "METERSYNC_SERVICE_USAGE_TICK_S": "3600",
    }
    service = start(env, tmp_path / "service.log", port=port)
    try:
        wait_for(lambda: get(port, "/healthz") is not None)
        client = Client(endpoint=f"http://127.0.0.1:{port}", token=TOKEN)
        subjects = client.subjects.upsert(
            [{"key": "department1", "displayName": "Department 1"}, {"key": "department2"}]
        )
        assert [s.key for s in subjects] == ["department1", "department2"]
        customer = client.customers.create(
            {
                "key": "acme",
                "name": "ACME, Inc.",
                "usageAttribution": {"subjectKeys": ["department1", "department2"]},
            }
        )
        assert customer.key == "acme"
        now = datetime.now(UTC).replace(microsecond=0)
        client.events.ingest_events(
            [
                {
                    "specversion": "1.0",
                    "id": "e1",
                    "source": "client",
                    "type": "prompt",
                    "subject": "department1",
                    "time": now,
                    "data": {"tokens": 42},
                }
            ]
        )
        assert [s.key for s in client.subjects.list()] == ["department1", "department2"]
        assert client.customers.get("acme").usage_attribution.subject_keys == [
            "department1",
            "department2",
        ]
    finally:
        service.kill()
        service.wait()
    with catalog.store.read_session() as session:
        assert session.execute(select(UsageRow.value)).scalars().all() == [42.0]  # type: ignore[call-overload]


# -- bad input: a 4xx problem+json naming what is wrong, never a 5xx ---------------------------


@pytest.mark.parametrize("path", ["/api/v1/customers", "/api/v1/subjects", "/api/v1/events"])
def test_a_body_that_is_not_utf8_is_a_400(api: Api, path: str) -> None:
    refused = api.call(
        "POST",
        path,
        data=b'{"key": "caf\xe9", "name": "Caf\xe9"}',  # Latin-1, not UTF-8
        headers={"Content-Type": "application/json"},
        check="response",
    )
    assert refused.status_code == 400
    assert refused.headers["content-type"] == "application/problem+json"
    assert "UTF-8" in refused.json()["detail"]


def test_bodies_that_are_not_json_are_4xx(api: Api) -> None:
    cases: list[tuple[bytes, str, int, str]] = [
        (b"", "application/json", 400, "a JSON body is required"),
        (b"{", "application/json", 400, "not JSON"),
        (b'{"n": NaN}', "application/json", 400, "NaN is not a JSON value"),
        (b"[" * 100_000, "application/json", 400, "nested too deeply"),
        (b"1" * 5000, "application/json", 400, "not JSON"),
        ('{"key": "a"}'.encode("utf-16"), "application/json", 400, "UTF-8"),
        (b'{"key": "a"}', "text/plain", 415, "'text/plain' is not JSON"),
        (b'{"key": "a"}', "application/json; charset=latin-1", 415, "JSON bodies are UTF-8"),
    ]
    for body, content_type, status, detail in cases:
        refused = api.call(
            "POST",
            "/api/v1/customers",
            data=body,
            headers={"Content-Type": content_type},
            check="response",
        )
        assert (refused.status_code, refused.headers["content-type"]) == (status, PROBLEM)
        assert detail in refused.json()["detail"], (body[:20], refused.json())


def test_json_of_the_wrong_shape_is_a_400(api: Api) -> None:
    subjects = api.call("POST", "/api/v1/subjects", json=[{"key": "a"}, 1], check="response")
    assert subjects.status_code == 400
    assert subjects.json()["detail"] == "[1]: must be a subject object"
    customer = api.call("POST", "/api/v1/customers", json=["acme"], check="response")
    assert customer.status_code == 400
    assert customer.json()["detail"] == "body: must be a customer object"
    events = api.call("POST", "/api/v1/events", json=[7], check="response")
    assert events.status_code == 400
    assert "must be a JSON object, got a number" in events.json()["detail"]


def test_absurd_query_values_are_400s(api: Api) -> None:
    refusals = [
        ("/api/v1/customers", {"page": "²"}, "page: a whole number"),  # isdigit() says yes
        ("/api/v1/customers", {"page": "9" * 5000}, "page: a whole number"),
        ("/api/v1/customers", {"pageSize": "0"}, "pageSize: a whole number"),
        ("/api/v1/customers", {"pageSize": "1001"}, "pageSize: at most 1000"),
        ("/api/v1/meters/tokens/query", {"to": "0001-01-01T00:00:00Z"}, "to: '0001-01-01"),
        ("/api/v1/meters/tokens/query", {"from": "9999-12-31T23:59:59-14:00"}, "from: '9999"),
        ("/api/v1/meters/tokens/query", {"from": "2024-01-01T00:00:00"}, "not an RFC 3339"),
        ("/api/v1/meters/tokens/query", {"from": "2024-01-01T00:00:00\x00Z"}, "not an RFC 3339"),
        (
            "/api/v1/meters/tokens/query",
            {"from": "2024-01-02T00:00:00Z", "to": "2024-01-01T00:00:00Z"},
            "from: must not be after to",
        ),
        ("/api/v1/meters/tokens/query", {"filterCustomerId": "a\x00"}, "filterCustomerId: key"),
    ]
    for path, params, detail in refusals:
        # The meter query's request cannot be checked by openapi-core (test_events_and_...).
        refused = api.call("GET", path, params=params, check="response")
        assert (refused.status_code, refused.headers["content-type"]) == (400, PROBLEM)
        assert detail in refused.json()["detail"], (params, refused.json())
    fine = api.call(
        "GET",
        "/api/v1/meters/tokens/query",
        params={"from": "2024-01-01T00:00:00.123456789+02:00", "to": "2024-01-02T00:00:00z"},
        check="response",
    )
    assert fine.status_code == 200


def test_the_meter_query_refuses_a_range_below_the_retention_floor(
    api: Api, catalog: Catalog
) -> None:
    """Raw usage below the floor was pruned (`usage prune`): a window there would show part
    of its total, or none, so the query is refused rather than answered short."""
    raise_floor(catalog.store, calendar.timegm((2024, 2, 1, 0, 0, 0)), lambda _s, _c: True)
    params = {"from": "2024-01-15T00:00:00Z", "to": "2024-03-01T00:00:00Z", "windowSize": "DAY"}
    refused = api.call("GET", "/api/v1/meters/tokens/query", params=params, check="response")
    assert (refused.status_code, refused.headers["content-type"]) == (400, PROBLEM)
    assert refused.json()["detail"].startswith(
        "from: 2024-01-15T00:00:00Z is before 2024-02-01T00:00:00Z, the retention floor"
    )
    kept = api.call(
        "GET",
        "/api/v1/meters/tokens/query",
        params={**params, "from": "2024-02-01T00:00:00Z"},
        check="response",
    )
    assert kept.status_code == 200 and kept.json()["data"] == []


def test_a_token_of_any_bytes_is_a_401(api: Api) -> None:
    for header in (b"Bearer \xe9t\xe9", f"Bearer {TOKEN}\xff".encode("latin-1"), b"\xff"):
        refused = api.call(
            "GET",
            "/api/v1/subjects",
            token=None,
            headers={"Authorization": header},
            check="response",
        )
        assert (refused.status_code, refused.headers["content-type"]) == (401, PROBLEM)


def test_problems_name_their_request(api: Api) -> None:
    missing = api.call("GET", "/api/v1/customers/nobody")
    assert missing.status_code == 404
    request_id = missing.headers["x-request-id"]
    assert missing.json()["instance"] == f"urn:request:{request_id}"
    assert str(ULID.from_str(request_id)) == request_id
    # A caller's (or its proxy's) id is kept when it is a plain token, replaced otherwise.
    given = api.call("GET", "/api/v1/customers/nobody", headers={"X-Request-Id": "lb-42.a_b~c"})
    assert given.json()["instance"] == "urn:request:lb-42.a_b~c"
    odd = api.call("GET", "/api/v1/customers/nobody", headers={"X-Request-Id": "a b/c"})
    assert odd.headers["x-request-id"] != "a b/c"
    assert odd.json()["instance"] == f"urn:request:{odd.headers['x-request-id']}"
    assert "x-request-id" in requests.get(api.base + "/healthz", timeout=5).headers


def test_unknown_paths_and_methods_are_problems(api: Api) -> None:
    # Neither is in OpenMeter's spec (for the second, not this method): nothing to check by it.
    nowhere = api.call("GET", "/api/v1/nowhere", check=False)
    assert (nowhere.status_code, nowhere.headers["content-type"]) == (404, PROBLEM)
    assert nowhere.json()["detail"] == "no such path: /api/v1/nowhere"
    patch = api.call("PATCH", "/api/v1/customers/acme", json={}, check=False)
    assert (patch.status_code, patch.headers["content-type"]) == (405, PROBLEM)
    assert patch.json()["detail"].startswith("PATCH is not allowed here (allowed: ")
    assert set(patch.headers["allow"].replace(" ", "").split(",")) >= {"GET", "PUT", "DELETE"}


def test_an_unexpected_error_is_a_500_problem(
    api: Api, catalog: Catalog, monkeypatch: pytest.MonkeyPatch
) -> None:
    def broken() -> None:
        raise RuntimeError("the disk is on fire")

    monkeypatch.setattr(catalog, "list_subjects", broken)
    failed = api.call("GET", "/api/v1/subjects")  # a 500 problem is in the spec too
    assert (failed.status_code, failed.headers["content-type"]) == (500, PROBLEM)
    problem = failed.json()
    assert "fire" not in problem["detail"]  # the log has it, not the client
    assert failed.headers["x-request-id"] in problem["detail"]
