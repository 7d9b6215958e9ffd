"""OpenMeter's entitlement API over real HTTP, every request and response checked against
OpenMeter's own openapi.yaml (as tests/test_api.py checks the rest): features, customer
entitlements (v2), grants, values, history, resets, customer access, the lists across
customers, and the deprecated subject endpoints with their deprecation headers. Errors are
problem+json with OpenMeter's codes; bad input is a 400 naming the field, never a 5xx. The
official `openmeter` client drives a running `metersync run` through the v2 calls."""

from __future__ import annotations

import calendar
import json
import os
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
import requests
from openmeter import Client
from structlog.testing import capture_logs

from metersync.catalog import Catalog
from metersync.entitlements import EntitlementBook, EntitlementValues
from metersync.service.api import api_routes
from metersync.service.entitlement_api import entitlement_routes
from metersync.service.http import HttpServer, Readiness, ServiceMetrics, build_app
from metersync.store import Store
from test_api import PROBLEM, TOKEN, TOKENS_METER, Api
from test_service import free_port, get, start, wait_for

ULID_ZERO = "01ARZ3NDEKTSV4RRFFQ69G5FAV"


Serve = Callable[..., Api]


@pytest.fixture
def serve(catalog: Catalog) -> Iterator[Serve]:
    """Start the API (the catalog's routes and the entitlement routes) on a free port."""
    servers: list[HttpServer] = []

    def run(*, upstream: str | None = None, legacy: bool = True) -> Api:
        book = EntitlementBook(catalog.store, [TOKENS_METER])
        values = EntitlementValues(book, catalog.store, [TOKENS_METER])
        routes = api_routes(catalog, [TOKENS_METER], lambda: [TOKEN], upstream=upstream)
        routes += entitlement_routes(
            catalog, book, values, lambda: [TOKEN], upstream=upstream, legacy_subjects=legacy
        )
        port = free_port()
        app = build_app(
            catalog.store,
            ServiceMetrics(),
            Readiness(role=lambda: "leader", last_tick_success=lambda: None, stale_after_s=60),
            "stripe",
            api=routes,
        )
        server = HttpServer(app, "127.0.0.1", port)
        server.start()
        servers.append(server)
        wait_for(lambda: get(port, "/healthz") is not None)
        return Api(f"http://127.0.0.1:{port}")

    yield run
    for server in servers:
        server.stop()


@pytest.fixture
def api(serve: Serve) -> Api:
    return serve()


def stamp(moment: datetime) -> str:
    return moment.isoformat().replace("+00:00", "Z")


def minute_ago(minutes: int = 1) -> datetime:
    return datetime.now(UTC).replace(second=0, microsecond=0) - timedelta(minutes=minutes)


def customer(api: Api, key: str, subjects: list[str] | None = None) -> dict[str, Any]:
    body: dict[str, Any] = {"key": key, "name": key.title()}
    if subjects is not None:
        body["usageAttribution"] = {"subjectKeys": subjects}
    created = api.call("POST", "/api/v1/customers", json=body)
    assert created.status_code == 201, created.text
    result: dict[str, Any] = created.json()
    return result


def feature(api: Api, key: str, meter: str | None = "tokens") -> dict[str, Any]:
    body: dict[str, Any] = {"key": key, "name": key.title()}
    if meter is not None:
        body["meterSlug"] = meter
    created = api.call("POST", "/api/v1/features", json=body)
    assert created.status_code == 201, created.text
    result: dict[str, Any] = created.json()
    return result


def metered(feature_key: str, **extra: Any) -> dict[str, Any]:
    return {
        "type": "metered",
        "featureKey": feature_key,
        "usagePeriod": {"interval": "MONTH", "anchor": "2024-01-01T00:00:00Z"},
        "measureUsageFrom": stamp(minute_ago(60)),
        **extra,
    }


def ingest(api: Api, subject: str, tokens: int, at: datetime, event_id: str) -> None:
    event = {
        "specversion": "1.0",
        "id": event_id,
        "source": "test",
        "type": "prompt",
        "subject": subject,
        "time": stamp(at),
        "data": {"tokens": tokens, "model": "a"},
    }
    assert api.call("POST", "/api/v1/events", json=event).status_code == 204


def problem_of(response: requests.Response, status: int) -> str:
    assert (response.status_code, response.headers["content-type"]) == (status, PROBLEM), (
        response.status_code,
        response.text,
    )
    detail: str = response.json()["detail"]
    return detail


# -- features --------------------------------------------------------------------------------


def test_features(api: Api) -> None:
    created = feature(api, "gpt_tokens")
    assert (created["key"], created["meterSlug"]) == ("gpt_tokens", "tokens")
    assert api.call("GET", f"/api/v1/features/{created['id']}").json()["key"] == "gpt_tokens"
    assert api.call("GET", "/api/v1/features/gpt_tokens").json()["id"] == created["id"]
    flag = feature(api, "sso", meter=None)
    listed = api.call("GET", "/api/v1/features").json()
    assert [f["key"] for f in listed] == ["gpt_tokens", "sso"]  # no page asked: a plain list
    page = api.call("GET", "/api/v1/features", params={"page": 2, "pageSize": 1}).json()
    assert (page["totalCount"], [f["key"] for f in page["items"]]) == (2, ["sso"])
    by_meter = api.call("GET", "/api/v1/features", params={"meterSlug": "tokens"}).json()
    assert [f["key"] for f in by_meter] == ["gpt_tokens"]
    desc = api.call("GET", "/api/v1/features", params={"orderBy": "key", "order": "DESC"})
    assert [f["key"] for f in desc.json()] == ["sso", "gpt_tokens"]
    assert api.call("DELETE", f"/api/v1/features/{flag['id']}").status_code == 204
    assert "archivedAt" in api.call("GET", f"/api/v1/features/{flag['id']}").json()
    assert [f["key"] for f in api.call("GET", "/api/v1/features").json()] == ["gpt_tokens"]
    every = api.call("GET", "/api/v1/features", params={"includeArchived": "true"}).json()
    assert len(every) == 2
    again = api.call("POST", "/api/v1/features", json={"key": "gpt_tokens", "name": "Again"})
    assert "already exists" in problem_of(again, 409)
    assert "does not exist" in problem_of(api.call("GET", "/api/v1/features/nothing"), 404)
    assert "does not exist" in problem_of(api.call("DELETE", "/api/v1/features/nothing"), 404)
    bad = api.call("POST", "/api/v1/features", json={"key": "Bad Key"}, check="response")
    detail = problem_of(bad, 400)
    assert "key:" in detail and "name:" in detail
    no_meter = api.call(
        "POST", "/api/v1/features", json={"key": "x", "name": "X", "meterSlug": "nope"}
    )
    assert "meterSlug: no meter 'nope'" in problem_of(no_meter, 400)


# -- a customer's entitlements ---------------------------------------------------------------


def test_a_customer_entitlement_from_creation_to_deletion(api: Api) -> None:
    acme = customer(api, "acme", ["acme_api"])
    feature(api, "gpt_tokens")
    base = "/api/v2/customers/acme/entitlements"
    created = api.call("POST", base, json=metered("gpt_tokens", issue={"amount": 100}))
    assert created.status_code == 201, created.text
    ent = created.json()
    assert (ent["type"], ent["customerId"], ent["customerKey"]) == ("metered", acme["id"], "acme")
    assert ent["issue"] == {"amount": 100.0, "priority": 1}
    assert ent["usagePeriod"]["interval"] == "MONTH"
    assert ent["lastReset"] == ent["measureUsageFrom"]
    second = api.call("POST", base, json=metered("gpt_tokens"))
    assert "already has an entitlement" in problem_of(second, 409)
    by_id = api.call("GET", f"/api/v2/customers/{acme['id']}/entitlements/{ent['id']}").json()
    assert by_id["id"] == api.call("GET", f"{base}/gpt_tokens").json()["id"] == ent["id"]
    page = api.call("GET", base).json()
    assert (page["totalCount"], page["items"][0]["id"]) == (1, ent["id"])

    effective = stamp(minute_ago(30))
    grant = api.call(
        "POST",
        f"{base}/gpt_tokens/grants",
        json={
            "amount": 0.1,
            "effectiveAt": effective,
            "expiration": {"duration": "DAY", "count": 3},
        },
    )
    assert grant.status_code == 201, grant.text
    assert (grant.json()["amount"], grant.json()["effectiveAt"]) == (0.1, effective[:-1] + ".000Z")
    assert '"amount":0.1,' in grant.text  # the exact digits, not a float's nearest
    grants = api.call("GET", f"{base}/gpt_tokens/grants").json()
    assert grants["totalCount"] == 2  # the issue's grant and this one
    ingest(api, "acme_api", 7, minute_ago(20), "e1")

    answer = api.call("GET", f"{base}/gpt_tokens/value")
    value = answer.json()
    assert value["hasAccess"] is True and value["usage"] == 7.0
    assert value["balance"] == 93.1 and '"balance":93.1,' in answer.text
    earlier = api.call("GET", f"{base}/gpt_tokens/value", params={"time": stamp(minute_ago(40))})
    assert earlier.json()["usage"] == 0.0
    history = api.call(
        "GET",
        f"{base}/gpt_tokens/history",
        params={"windowSize": "HOUR", "from": stamp(minute_ago(60)), "windowTimeZone": "UTC"},
    ).json()
    assert sum(w["usage"] for w in history["windowedHistory"]) == 7.0
    assert history["burndownHistory"]

    assert api.call("POST", f"{base}/gpt_tokens/reset", json={}).status_code == 204
    after = api.call("GET", f"{base}/gpt_tokens").json()
    assert after["lastReset"] > ent["lastReset"]
    assert api.call("GET", f"{base}/gpt_tokens/value").json()["usage"] == 0.0

    overridden = api.call(
        "PUT", f"{base}/gpt_tokens/override", json=metered("gpt_tokens", isSoftLimit=True)
    )
    assert overridden.status_code == 201 and overridden.json()["isSoftLimit"] is True
    assert overridden.json()["id"] != ent["id"]
    with_deleted = api.call("GET", base, params={"includeDeleted": "true"}).json()
    assert with_deleted["totalCount"] == 2
    assert api.call("DELETE", f"{base}/gpt_tokens").status_code == 204
    assert api.call("GET", base).json()["totalCount"] == 0
    gone = api.call("GET", f"{base}/gpt_tokens")
    assert "does not exist" in problem_of(gone, 404)


def test_boolean_and_static_entitlements_and_customer_access(api: Api) -> None:
    customer(api, "acme")
    feature(api, "sso", meter=None)
    feature(api, "limits", meter=None)
    base = "/api/v2/customers/acme/entitlements"
    boolean = api.call("POST", base, json={"type": "boolean", "featureKey": "sso"})
    assert boolean.status_code == 201 and boolean.json()["type"] == "boolean"
    config = json.dumps({"seats": 5})
    static = api.call(
        "POST", base, json={"type": "static", "featureKey": "limits", "config": config}
    )
    assert static.status_code == 201 and static.json()["config"] == config
    access = api.call("GET", "/api/v1/customers/acme/access").json()
    assert access == {
        "entitlements": {
            "limits": {"hasAccess": True, "config": config},
            "sso": {"hasAccess": True},
        }
    }
    value = api.call("GET", "/api/v1/customers/acme/entitlements/limits/value").json()
    assert value == {"hasAccess": True, "config": config}
    refused = api.call(
        "POST", f"{base}/sso/grants", json={"amount": 1, "effectiveAt": stamp(minute_ago())}
    )
    assert "entitlement: a boolean entitlement has no grants" in problem_of(refused, 400)


def test_lists_across_customers_and_voiding_a_grant(api: Api) -> None:
    acme = customer(api, "acme")
    customer(api, "globex")
    feature(api, "gpt_tokens")
    feature(api, "sso", meter=None)
    for key in ("acme", "globex"):
        made = api.call("POST", f"/api/v2/customers/{key}/entitlements", json=metered("gpt_tokens"))
        assert made.status_code == 201
    api.call(
        "POST", "/api/v2/customers/acme/entitlements", json={"type": "boolean", "featureKey": "sso"}
    )
    every = api.call("GET", "/api/v2/entitlements").json()
    assert every["totalCount"] == 3
    only = api.call(
        "GET",
        "/api/v2/entitlements",
        params={"customerKeys": "acme", "entitlementType": "metered"},
    ).json()
    assert [(e["customerKey"], e["featureKey"]) for e in only["items"]] == [("acme", "gpt_tokens")]
    by_id = api.call("GET", "/api/v2/entitlements", params={"customerIds": acme["id"]}).json()
    assert by_id["totalCount"] == 2
    one = api.call("GET", f"/api/v2/entitlements/{only['items'][0]['id']}").json()
    assert one["customerKey"] == "acme"
    assert "does not exist" in problem_of(api.call("GET", f"/api/v2/entitlements/{ULID_ZERO}"), 404)

    body = {"amount": 10, "effectiveAt": stamp(minute_ago())}
    for key in ("acme", "globex"):
        made = api.call(
            "POST", f"/api/v2/customers/{key}/entitlements/gpt_tokens/grants", json=body
        )
        assert made.status_code == 201
    grants = api.call("GET", "/api/v2/grants").json()
    assert grants["totalCount"] == 2
    mine = api.call("GET", "/api/v2/grants", params={"customer": "acme", "feature": "gpt_tokens"})
    assert mine.json()["totalCount"] == 1
    grant_id = mine.json()["items"][0]["id"]
    assert api.call("DELETE", f"/api/v1/grants/{grant_id}").status_code == 204
    assert "voided already" in problem_of(api.call("DELETE", f"/api/v1/grants/{grant_id}"), 409)
    assert api.call("GET", "/api/v2/grants").json()["totalCount"] == 1
    voided = api.call("GET", "/api/v2/grants", params={"includeDeleted": "true"}).json()
    assert any("voidedAt" in g for g in voided["items"])
    assert "does not exist" in problem_of(api.call("DELETE", f"/api/v1/grants/{ULID_ZERO}"), 404)
    limited = api.call("GET", "/api/v2/grants", params={"limit": 1, "offset": 1}).json()
    assert (limited["page"], limited["pageSize"], len(limited["items"])) == (2, 1, 0)


# -- what is refused -------------------------------------------------------------------------


def test_unknown_records_are_404s_and_a_deleted_customer_412(api: Api) -> None:
    feature(api, "gpt_tokens")
    missing = [
        ("GET", "/api/v2/customers/nobody/entitlements"),
        ("GET", "/api/v2/customers/nobody/entitlements/gpt_tokens/value"),
        ("GET", "/api/v1/customers/nobody/access"),
        ("GET", "/api/v1/customers/nobody/entitlements/gpt_tokens/value"),
    ]
    for method, path in missing:
        assert "customer 'nobody' does not exist" in problem_of(api.call(method, path), 404)
    nobody = api.call("POST", "/api/v2/customers/nobody/entitlements", json=metered("gpt_tokens"))
    assert "customer 'nobody' does not exist" in problem_of(nobody, 404)
    customer(api, "acme")
    unknown_feature = api.call("POST", "/api/v2/customers/acme/entitlements", json=metered("nope"))
    assert "feature 'nope' does not exist" in problem_of(unknown_feature, 404)
    for path in ("gpt_tokens", "gpt_tokens/value", "gpt_tokens/grants"):
        found = api.call("GET", f"/api/v2/customers/acme/entitlements/{path}")
        assert "entitlement 'gpt_tokens' of customer 'acme' does not exist" in problem_of(
            found, 404
        )
    assert api.call("DELETE", "/api/v1/customers/acme").status_code == 204
    deleted = api.call("POST", "/api/v2/customers/acme/entitlements", json=metered("gpt_tokens"))
    assert "customer 'acme' is deleted" in problem_of(deleted, 412)


def test_bad_bodies_and_query_values_are_400s_naming_the_field(api: Api) -> None:
    customer(api, "acme")
    feature(api, "gpt_tokens")
    base = "/api/v2/customers/acme/entitlements"
    assert api.call("POST", base, json=metered("gpt_tokens")).status_code == 201
    bodies = [
        ("POST", base, {"type": "metered", "featureKey": "gpt_tokens"}, "usagePeriod"),
        ("POST", base, {"type": "unlimited"}, "type: must be metered, boolean or static"),
        ("POST", base, [1], "body: must be an entitlement object"),
        ("POST", f"{base}/gpt_tokens/grants", {"amount": -1, "effectiveAt": "x"}, "amount:"),
        ("POST", f"{base}/gpt_tokens/grants", {"amount": 1}, "effectiveAt"),
        (
            "POST",
            f"{base}/gpt_tokens/reset",
            {"effectiveAt": "2999-01-01T00:00:00Z"},
            "effectiveAt",
        ),
        ("PUT", f"{base}/gpt_tokens/override", {"type": "metered"}, "usagePeriod"),
        ("POST", "/api/v1/features", {"key": "k", "name": "K", "extra": 1}, "extra"),
    ]
    for method, path, body, detail in bodies:
        refused = api.call(method, path, json=body, check="response")
        assert detail in problem_of(refused, 400), (path, body)
    queries = [
        (f"{base}/gpt_tokens/history", {}, "windowSize: is required"),
        (f"{base}/gpt_tokens/history", {"windowSize": "MINUTE"}, "windowSize: one of HOUR"),
        (
            f"{base}/gpt_tokens/history",
            {"windowSize": "DAY", "windowTimeZone": "Mars/Olympus"},
            "windowTimeZone: 'Mars/Olympus' is not an IANA time zone",
        ),
        (
            f"{base}/gpt_tokens/history",
            {"windowSize": "DAY", "from": "2030-01-02T00:00:00Z", "to": "2030-01-01T00:00:00Z"},
            "from: must be before to",
        ),
        (f"{base}/gpt_tokens/value", {"time": "yesterday"}, "time: 'yesterday' is not an RFC"),
        (base, {"includeDeleted": "maybe"}, "includeDeleted: true or false"),
        (base, {"page": "0"}, "page: a whole number"),
        (base, {"pageSize": "5000"}, "pageSize: at most 1000"),
        (base, {"orderBy": "name"}, "orderBy: one of createdAt, updatedAt"),
        ("/api/v2/entitlements", {"entitlementType": "gold"}, "entitlementType:"),
        ("/api/v2/grants", {"order": "sideways"}, "order: one of ASC, DESC"),
        ("/api/v1/features", {"offset": "-1"}, "offset: a whole number from 0"),
        ("/api/v2/grants", {"customer": "a\x00"}, "customer: 'a\\x00' is not a key or id"),
    ]
    for path, params, detail in queries:
        refused = api.call("GET", path, params=params, check="response")
        assert detail in problem_of(refused, 400), (path, params)
    nul = api.call("GET", "/api/v2/customers/a%00b/entitlements", check="response")
    assert "customerIdOrKey:" in problem_of(nul, 400)
    at = api.call("DELETE", f"/api/v1/grants/{ULID_ZERO}", params={"at": stamp(minute_ago())})
    assert "at: a grant is voided now" in problem_of(at, 400)


def test_an_interval_longer_than_a_year_is_a_400(api: Api) -> None:
    """Found by the fuzzer: isodate overflowed on a huge duration (a 500), and P99999Y was
    stored, after which every read of the entitlement overflowed the calendar (500s)."""
    customer(api, "acme")
    feature(api, "gpt_tokens")
    base = "/api/v2/customers/acme/entitlements"
    too_long = ("P9888534.578501199Y28578982290755WT", "P99999Y", "P13M", "P366D")
    for interval in too_long:
        body = metered("gpt_tokens", usagePeriod={"interval": interval})
        refused = api.call("POST", base, json=body, check="response")
        assert "usagePeriod.interval: " in problem_of(refused, 400), interval
        assert "is longer than a year" in problem_of(refused, 400), interval
    yearly = api.call("POST", base, json=metered("gpt_tokens", usagePeriod={"interval": "P1Y"}))
    assert yearly.status_code == 201, yearly.text
    assert api.call("GET", f"{base}/gpt_tokens").status_code == 200
    for interval in too_long:
        grant = {
            "amount": 1,
            "effectiveAt": stamp(minute_ago()),
            "recurrence": {"interval": interval},
        }
        refused = api.call("POST", f"{base}/gpt_tokens/grants", json=grant, check="response")
        assert "recurrence.interval: " in problem_of(refused, 400), interval


def test_a_grant_expiring_after_the_year_9999_is_a_400(api: Api) -> None:
    """Found by the fuzzer: the effective time ceiled to its minute, or its expiration added,
    overflowed the calendar (a 500)."""
    customer(api, "acme")
    feature(api, "gpt_tokens")
    base = "/api/v2/customers/acme/entitlements"
    assert api.call("POST", base, json=metered("gpt_tokens")).status_code == 201
    late = [
        {"effectiveAt": "9999-12-31T23:59:30Z"},
        {"effectiveAt": "9999-12-31T00:00:00Z", "expiration": {"duration": "YEAR", "count": 1000}},
    ]
    for body in late:
        refused = api.call(
            "POST", f"{base}/gpt_tokens/grants", json={"amount": 5, **body}, check="response"
        )
        assert "ends after the year 9999" in problem_of(refused, 400), body
        inline = metered("gpt_tokens", grants=[{"amount": 5, **body}])
        refused = api.call("PUT", f"{base}/gpt_tokens/override", json=inline, check="response")
        assert "grants[0]: effectiveAt 9999-12-31" in problem_of(refused, 400), body


def test_a_time_far_ahead_is_a_400_not_minutes_of_work(api: Api) -> None:
    """Found by the fuzzer: a value or history is figured a usage period at a time, and a
    time centuries ahead (9998 with a yearly period; 2100 with an hourly one took 3 minutes)
    kept the request busy past the client's timeout."""
    customer(api, "acme")
    feature(api, "gpt_tokens")
    base = "/api/v2/customers/acme/entitlements"
    hourly = metered("gpt_tokens", usagePeriod={"interval": "PT1H"})
    assert api.call("POST", base, json=hourly).status_code == 201
    far = "2100-12-31T23:59:00Z"
    value = api.call("GET", f"{base}/gpt_tokens/value", params={"time": far}, check="response")
    assert "time: 2100-12-31T23:59:00+00:00 is " in problem_of(value, 400)
    assert "usage periods ahead: at most 250 (PT1H each)" in problem_of(value, 400)
    history = api.call(
        "GET",
        f"{base}/gpt_tokens/history",
        params={"windowSize": "DAY", "from": "2100-12-01T00:00:00Z", "to": far},
        check="response",
    )
    assert "to: 2100-12-31T23:59:00+00:00 is " in problem_of(history, 400)
    soon = stamp(datetime.now(UTC) + timedelta(days=3))
    assert api.call("GET", f"{base}/gpt_tokens/value", params={"time": soon}).status_code == 200


def test_writes_are_409s_with_openmeter_as_the_source(serve: Serve) -> None:
    reason = "entitlements come from OpenMeter (openmeter.url is set): write them there"
    api = serve(upstream=reason)
    writes = [
        ("POST", "/api/v1/features", {"key": "a", "name": "A"}),
        ("DELETE", "/api/v1/features/a", None),
        ("POST", "/api/v2/customers/acme/entitlements", metered("a")),
        ("PUT", "/api/v2/customers/acme/entitlements/a/override", metered("a")),
        ("DELETE", "/api/v2/customers/acme/entitlements/a", None),
        (
            "POST",
            "/api/v2/customers/acme/entitlements/a/grants",
            {"amount": 1, "effectiveAt": stamp(minute_ago())},
        ),
        ("POST", "/api/v2/customers/acme/entitlements/a/reset", {}),
        ("DELETE", f"/api/v1/grants/{ULID_ZERO}", None),
        ("POST", "/api/v1/subjects/acme/entitlements", metered("a")),
    ]
    for method, path, body in writes:
        refused = api.call(method, path, json=body)
        assert problem_of(refused, 409) == reason, path
    assert api.call("GET", "/api/v1/features").json() == []


# -- the deprecated subject endpoints --------------------------------------------------------

SUBJECT_HEADERS = {
    "deprecation": "@1756684800",
    "sunset": "Sat, 01 Nov 2025 00:00:00 GMT",
}


def test_subject_endpoints_answer_through_the_customer_with_deprecation_headers(
    api: Api, catalog: Catalog
) -> None:
    assert calendar.timegm((2025, 9, 1, 0, 0, 0)) == 1756684800
    customer(api, "acme", ["department1"])
    catalog.upsert_subject({"key": "loner"}, auto_customer=False)
    feature(api, "gpt_tokens")
    base = "/api/v1/subjects/department1/entitlements"
    with capture_logs() as logs:
        created = api.call("POST", base, json=metered("gpt_tokens"))
        assert created.status_code == 201, created.text
        ent = created.json()
        assert ent["subjectKey"] == "department1"
        assert "customerId" not in ent
        for name, value in SUBJECT_HEADERS.items():
            assert created.headers[name] == value
        assert created.headers["link"] == (
            '</api/v2/customers/acme/entitlements>; rel="successor-version"'
        )
        listed = api.call("GET", base)
        assert [e["id"] for e in listed.json()] == [ent["id"]]
        grant = api.call(
            "POST",
            f"{base}/gpt_tokens/grants",
            json={
                "amount": 10,
                "effectiveAt": stamp(minute_ago()),
                "expiration": {"duration": "MONTH", "count": 1},
            },
        )
        assert grant.status_code == 201
        assert grant.headers["link"] == (
            '</api/v2/customers/acme/entitlements/gpt_tokens/grants>; rel="successor-version"'
        )
        no_expiry = api.call(
            "POST",
            f"{base}/gpt_tokens/grants",
            json={"amount": 1, "effectiveAt": stamp(minute_ago())},
            check="response",
        )
        assert "expiration: is required" in problem_of(no_expiry, 400)
        assert len(api.call("GET", f"{base}/gpt_tokens/grants").json()) == 1
        assert api.call("GET", f"{base}/{ent['id']}").json()["id"] == ent["id"]
        value = api.call("GET", f"{base}/gpt_tokens/value").json()
        assert value["hasAccess"] is True
        history = api.call("GET", f"{base}/{ent['id']}/history", params={"windowSize": "DAY"})
        assert history.status_code == 200
        assert api.call("POST", f"{base}/{ent['id']}/reset", json={}).status_code == 204
        overridden = api.call(
            "PUT", f"{base}/gpt_tokens/override", json=metered("gpt_tokens", issueAfterReset=5)
        )
        assert overridden.status_code == 201
        assert overridden.json()["issueAfterReset"] == 5.0
        assert api.call("DELETE", f"{base}/{overridden.json()['id']}").status_code == 204
        # The same caller from the same host: warned once.
        warnings = [e for e in logs if e["event"] == "api.deprecated_subject_entitlements"]
        assert len(warnings) == 1 and warnings[0]["log_level"] == "warning"
        assert warnings[0]["successor"] == "/api/v2/customers/acme/entitlements"
        assert TOKEN not in json.dumps(warnings[0], default=str)

    orphan = api.call("GET", "/api/v1/subjects/loner/entitlements")
    assert "subject 'loner' belongs to no customer" in problem_of(orphan, 412)
    assert orphan.headers["deprecation"] == SUBJECT_HEADERS["deprecation"]
    assert "link" not in orphan.headers  # no customer, no successor
    unknown = api.call("GET", "/api/v1/subjects/nobody/entitlements")
    assert "subject 'nobody' does not exist" in problem_of(unknown, 404)
    assert unknown.headers["sunset"] == SUBJECT_HEADERS["sunset"]
    subject_id = api.call("GET", "/api/v1/subjects/department1").json()["id"]
    by_id = api.call("GET", f"/api/v1/subjects/{subject_id}/entitlements")
    assert by_id.status_code == 200


def test_subject_endpoints_are_404s_when_turned_off(serve: Serve) -> None:
    api = serve(legacy=False)
    customer(api, "acme", ["department1"])
    off = api.call("GET", "/api/v1/subjects/department1/entitlements")
    assert "legacy_subject_entitlements" in problem_of(off, 404)
    assert "deprecation" not in off.headers
    assert api.call("GET", "/api/v2/customers/acme/entitlements").status_code == 200


# -- the official client ---------------------------------------------------------------------


def test_the_official_openmeter_client_works_against_a_running_service(
    store: Store, database_url: str, tmp_path: Path
) -> None:
    """openmeter (PyPI, pinned) through its v2 calls, against `metersync run` itself (the
    `store` fixture migrates the database first: the service does so only for a new SQLite
    file)."""
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
        client.customers.create(
            {"key": "acme", "name": "ACME", "usageAttribution": {"subjectKeys": ["acme_api"]}}
        )
        made = client.features.create({"key": "gpt_tokens", "name": "GPT", "meterSlug": "tokens"})
        assert made.key == "gpt_tokens"
        start_at = datetime.now(UTC).replace(second=0, microsecond=0) - timedelta(hours=1)
        entitlement = client.customer_entitlements_v2.post(
            "acme",
            {
                "type": "metered",
                "featureKey": "gpt_tokens",
                "usagePeriod": {"interval": "DAY"},
                "measureUsageFrom": start_at,
            },
        )
        assert entitlement["customerKey"] == "acme"  # a union: the client gives a dict
        grant = client.customer_entitlement_v2.create_customer_entitlement_grant(
            "acme", "gpt_tokens", {"amount": 100, "effectiveAt": start_at}
        )
        assert grant.amount == 100
        client.events.ingest_events(
            [
                {
                    "specversion": "1.0",
                    "id": "e1",
                    "source": "client",
                    "type": "prompt",
                    "subject": "acme_api",
                    "time": start_at + timedelta(minutes=5),
                    "data": {"tokens": 42},
                }
            ]
        )
        value = client.customer_entitlement_v2.get_customer_entitlement_value("acme", "gpt_tokens")
        assert (value.has_access, value.usage, value.balance) == (True, 42, 58)
        history = client.customer_entitlement_v2.get_customer_entitlement_history(
            "acme", "gpt_tokens", window_size="HOUR", from_parameter=start_at
        )
        assert sum(w.usage for w in history.windowed_history) == 42
        client.customer_entitlement_v2.reset_customer_entitlement("acme", "gpt_tokens", {})
        after = client.customer_entitlement_v2.get_customer_entitlement_value("acme", "gpt_tokens")
        assert after.usage == 0
    finally:
        service.kill()
        service.wait()
