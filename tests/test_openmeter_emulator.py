"""The OpenMeter emulator over real HTTP with httpx: auth, subjects, customer paging and soft
deletes, meters, the meter query (aggregations, windows, bounds, late events, re-attribution),
dedup, faults and outages; responses checked against OpenMeter's openapi.yaml (openapi-core)."""

from __future__ import annotations

import json
import re
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from functools import cache
from typing import Any

import httpx
import pytest
from openapi_core import OpenAPI
from openapi_core.testing import MockRequest, MockResponse

from metersync.testing import OpenMeterEmulator
from specs import openmeter_openapi

ULID = re.compile(r"^[0-7][0-9A-HJKMNP-TV-Z]{25}$")
T0 = datetime(2025, 3, 1, tzinfo=UTC)
QUERY = "/api/v1/meters/{}/query"


@pytest.fixture(scope="module")
def server() -> Iterator[OpenMeterEmulator]:
    with OpenMeterEmulator(token="om-test-token", latency_ms=0) as running:
        yield running


@pytest.fixture
def om(server: OpenMeterEmulator) -> Iterator[OpenMeterEmulator]:
    server.reset()
    server.configure(down=False, latency_ms=0, timeout_delay_s=35.0)
    yield server


@pytest.fixture
def api(om: OpenMeterEmulator) -> Iterator[httpx.Client]:
    headers = {"Authorization": f"Bearer {om.token}"}
    with httpx.Client(base_url=om.url, headers=headers, timeout=5) as client:
        yield client


# -- helpers -------------------------------------------------------------------------------------


@cache
def openapi(base_url: str) -> OpenAPI:
    """OpenMeter's spec, served from the emulator's address."""
    return openmeter_openapi(base_url)


def check(om: OpenMeterEmulator, response: httpx.Response, *, request: bool = True) -> Any:
    """Validate the answer (and, unless told not to, the request) against the spec; returns
    the answer's JSON (None for no body)."""
    sent = response.request
    wrapped = MockRequest(
        om.url,
        sent.method,
        sent.url.path,
        args=list(sent.url.params.multi_items()),  # type: ignore[arg-type]
        headers=dict(sent.headers),
        data=sent.content,
        content_type=sent.headers.get("content-type", "application/json"),
    )
    spec = openapi(om.url)
    if request:
        spec.validate_request(wrapped)
    answer = MockResponse(
        response.content,
        response.status_code,
        headers=dict(response.headers),
        content_type=response.headers.get("content-type", "application/json"),
    )
    spec.validate_response(wrapped, answer)
    return response.json() if response.content else None


def event(
    i: int | str,
    subject: str,
    at: datetime,
    *,
    type_: str = "prompt",
    source: str = "app",
    **data: Any,
) -> dict[str, Any]:
    return {
        "specversion": "1.0",
        "id": f"e{i}",
        "source": source,
        "type": type_,
        "subject": subject,
        "time": at.isoformat().replace("+00:00", "Z"),
        "data": data,
    }


def z(moment: datetime) -> str:
    return moment.isoformat().replace("+00:00", "Z")


def values(result: dict[str, Any]) -> list[tuple[str, float]]:
    return [(row["windowStart"], row["value"]) for row in result["data"]]


def query(api: httpx.Client, meter: str, **params: Any) -> dict[str, Any]:
    response = api.get(QUERY.format(meter), params=params)
    assert response.status_code == 200, response.text
    result: dict[str, Any] = response.json()
    return result


def assert_problem(response: httpx.Response, status: int, mentions: str = "") -> None:
    assert response.status_code == status, response.text
    assert response.headers["content-type"] == "application/problem+json"
    body = response.json()
    assert {"type", "title", "status", "detail", "instance"} <= set(body)
    assert body["status"] == status
    assert mentions in body["detail"]


# -- auth, subjects, customers, meters -----------------------------------------------------------


def test_a_bearer_token_is_required(om: OpenMeterEmulator) -> None:
    with httpx.Client(base_url=om.url, timeout=5) as client:
        for headers in ({}, {"Authorization": "Bearer wrong"}, {"Authorization": om.token}):
            refused = client.get("/api/v1/subjects", headers=headers)
            assert_problem(refused, 401)
            check(om, refused, request=False)
        allowed = client.get("/api/v1/subjects", headers={"Authorization": f"Bearer {om.token}"})
        assert allowed.status_code == 200


def test_subjects(om: OpenMeterEmulator, api: httpx.Client) -> None:
    om.upsert_subject("s-b", display_name="B", metadata={"tier": "pro"})
    created = om.upsert_subject("s-a")
    assert ULID.match(created["id"]) and created["key"] == "s-a"
    om.upsert_subject("s-a", display_name="A")  # an update keeps the id
    listed = check(om, api.get("/api/v1/subjects"))
    assert [(s["key"], s["displayName"]) for s in listed] == [("s-a", "A"), ("s-b", "B")]
    assert listed[0]["id"] == created["id"] and listed[1]["metadata"] == {"tier": "pro"}
    assert check(om, api.get("/api/v1/subjects/s-b"))["displayName"] == "B"
    assert api.get(f"/api/v1/subjects/{created['id']}").json()["key"] == "s-a"
    upserted = api.post("/api/v1/subjects", json=[{"key": "s-c", "displayName": "C"}])
    assert [s["key"] for s in check(om, upserted)] == ["s-c"]
    om.delete_subject("s-b")
    assert_problem(api.get("/api/v1/subjects/s-b"), 404, "s-b")
    with pytest.raises(KeyError):
        om.delete_subject("s-b")


def test_customers_page_by_created_at_then_id(om: OpenMeterEmulator, api: httpx.Client) -> None:
    created = [
        om.create_customer(f"cus-{i:03d}", f"Customer {i}", subject_keys=[f"s{i}"])
        for i in range(250)
    ]
    assert all(ULID.match(c["id"]) and len(c["id"]) == 26 for c in created)
    pages = [
        check(
            om,
            api.get(
                "/api/v1/customers", params={"page": page, "pageSize": 100, "orderBy": "createdAt"}
            ),
        )
        for page in (1, 2, 3)
    ]
    assert [len(p["items"]) for p in pages] == [100, 100, 50]
    assert {(p["totalCount"], p["pageSize"]) for p in pages} == {(250, 100)}
    assert [p["page"] for p in pages] == [1, 2, 3]
    keys = [c["key"] for p in pages for c in p["items"]]
    assert keys == [c["key"] for c in created]  # creation order, no gaps or repeats
    first = pages[0]["items"][0]
    assert first["usageAttribution"] == {"subjectKeys": ["s0"]} and "deletedAt" not in first
    beyond = api.get("/api/v1/customers", params={"page": 4, "pageSize": 100}).json()
    assert beyond["items"] == [] and beyond["totalCount"] == 250
    assert_problem(api.get("/api/v1/customers", params={"pageSize": 1001}), 400, "pageSize")
    assert_problem(api.get("/api/v1/customers", params={"page": 0}), 400, "page")


def test_a_deleted_customer(om: OpenMeterEmulator, api: httpx.Client) -> None:
    kept = om.create_customer(
        "keep",
        "Keep Ltd",
        subject_keys=["k1"],
        primary_email="billing@keep.example",
        currency="EUR",
        billing_address={"country": "DE", "postal_code": "10115", "city": "Berlin"},
        metadata={"crm": "42"},
    )
    gone = om.create_customer("gone", "Gone Inc", subject_keys=["g1"])
    om.delete_customer("gone")
    listed = check(om, api.get("/api/v1/customers"))
    assert [c["key"] for c in listed["items"]] == ["keep"] and listed["totalCount"] == 1
    assert listed["items"][0] == kept
    assert kept["billingAddress"] == {"country": "DE", "postalCode": "10115", "city": "Berlin"}
    everyone = check(
        om, api.get("/api/v1/customers", params={"includeDeleted": "true", "orderBy": "createdAt"})
    )
    assert [c["key"] for c in everyone["items"]] == ["keep", "gone"]
    assert "deletedAt" in everyone["items"][1]
    by_id = check(om, api.get(f"/api/v1/customers/{gone['id']}"))
    assert by_id["key"] == "gone" and by_id["deletedAt"] >= gone["createdAt"]
    assert check(om, api.get("/api/v1/customers/keep"))["id"] == kept["id"]
    assert_problem(api.get("/api/v1/customers/gone"), 404)  # keys name live customers
    # The key is free again; updating bumps updatedAt.
    again = om.create_customer("gone", "Gone Again", subject_keys=["g1"])
    assert again["id"] != gone["id"]
    time.sleep(0.002)
    renamed = om.update_customer("gone", name="Back", primary_email="a@b.example")
    assert renamed["name"] == "Back" and renamed["updatedAt"] > again["updatedAt"]
    with pytest.raises(KeyError):
        om.delete_customer("nobody")
    with pytest.raises(ValueError, match="k1"):  # one subject, one live customer
        om.create_customer("thief", "Thief", subject_keys=["k1"])


def test_customers_over_http(om: OpenMeterEmulator, api: httpx.Client) -> None:
    body = {"key": "acme", "name": "Acme", "usageAttribution": {"subjectKeys": ["acme-api"]}}
    created = check(om, api.post("/api/v1/customers", json=body))
    assert_problem(api.post("/api/v1/customers", json=body), 409, "acme")
    replaced = api.put("/api/v1/customers/acme", json={"name": "Acme 2", "key": "acme"})
    assert check(om, replaced)["usageAttribution"] == {"subjectKeys": []}
    deleted = api.delete(f"/api/v1/customers/{created['id']}")
    assert deleted.status_code == 204 and check(om, deleted) is None
    assert_problem(api.delete(f"/api/v1/customers/{created['id']}"), 404)


def test_meters(om: OpenMeterEmulator, api: httpx.Client) -> None:
    tokens = om.add_meter("tokens_total", event_type="prompt", group_by={"model": "$.model"})
    calls = om.add_meter("api_calls", event_type="request", aggregation="COUNT")
    assert ULID.match(tokens["id"]) and tokens["windowSize"] == "MINUTE"
    assert "valueProperty" not in calls  # COUNT ignores it
    listed = check(om, api.get("/api/v1/meters"))
    assert [(m["slug"], m["aggregation"], m["eventType"]) for m in listed] == [
        ("tokens_total", "SUM", "prompt"),
        ("api_calls", "COUNT", "request"),
    ]
    assert listed[0]["valueProperty"] == "$.tokens"
    assert listed[0]["groupBy"] == {"model": "$.model"}
    assert check(om, api.get("/api/v1/meters/api_calls")) == calls
    assert api.get(f"/api/v1/meters/{tokens['id']}").json() == tokens
    assert_problem(api.get("/api/v1/meters/nope"), 404, "nope")
    with pytest.raises(ValueError, match="slug"):
        om.add_meter("tokens_total", event_type="prompt")
    with pytest.raises(ValueError, match="slug"):
        om.add_meter("Bad-Slug", event_type="prompt")


# -- the meter query -----------------------------------------------------------------------------


@pytest.fixture
def usage(om: OpenMeterEmulator) -> dict[str, str]:
    """Two customers (acme: subjects a1, a2; beta: b1), an unattributed subject, four meters."""
    om.add_meter("tokens_total", event_type="prompt", group_by={"model": "$.model"})
    om.add_meter("prompts", event_type="prompt", aggregation="COUNT")
    om.add_meter("tokens_max", event_type="prompt", aggregation="MAX")
    om.add_meter(
        "models", event_type="prompt", aggregation="UNIQUE_COUNT", value_property="$.model"
    )
    acme = om.create_customer("acme", "Acme", subject_keys=["a1", "a2"])
    beta = om.create_customer("beta", "Beta", subject_keys=["b1"])
    om.ingest(
        [
            event(1, "a1", T0 + timedelta(minutes=5), tokens=10, model="m1"),
            event(2, "a2", T0 + timedelta(minutes=50), tokens=30, model="m2"),
            event(3, "a1", T0 + timedelta(hours=1, minutes=1), tokens="5", model="m1"),
            event(4, "b1", T0 + timedelta(minutes=7), tokens=100, model="m1"),
            event(5, "a1", T0 + timedelta(days=1, hours=3), tokens=1, model="m3"),
            event(6, "stray", T0 + timedelta(minutes=9), tokens=1000, model="m9"),
            event(7, "a1", T0 + timedelta(minutes=6), type_="other", tokens=999),
        ]
    )
    return {"acme": acme["id"], "beta": beta["id"]}


def test_query_per_customer_and_window(
    om: OpenMeterEmulator, api: httpx.Client, usage: dict[str, str]
) -> None:
    h0, h1, d1 = z(T0), z(T0 + timedelta(hours=1)), z(T0 + timedelta(days=1, hours=3))
    acme = {"filterCustomerId": usage["acme"], "windowSize": "HOUR"}
    assert values(query(api, "tokens_total", **acme)) == [(h0, 40.0), (h1, 5.0), (d1, 1.0)]
    assert values(query(api, "prompts", **acme)) == [(h0, 2.0), (h1, 1.0), (d1, 1.0)]
    assert values(query(api, "tokens_max", **acme)) == [(h0, 30.0), (h1, 5.0), (d1, 1.0)]
    assert values(query(api, "models", **acme)) == [(h0, 2.0), (h1, 1.0), (d1, 1.0)]
    daily = query(api, "tokens_total", filterCustomerId=usage["acme"], windowSize="DAY")
    assert values(daily) == [(z(T0), 45.0), (z(T0 + timedelta(days=1)), 1.0)]
    row = daily["data"][0]
    assert row["windowEnd"] == z(T0 + timedelta(days=1))
    assert row["customerId"] == usage["acme"] and row["subject"] is None
    assert row["groupBy"] == {}
    # Two customers: one row per customer and window.
    both = api.get(
        QUERY.format("tokens_total"),
        params=[
            ("filterCustomerId", usage["acme"]),
            ("filterCustomerId", usage["beta"]),
            ("windowSize", "DAY"),
            ("windowTimeZone", "UTC"),
        ],
    )
    # openapi-core cannot read this operation's deepObject parameter (filterGroupBy) even when
    # absent: the request goes unchecked, the answer is checked.
    result = check(om, both, request=False)
    assert result["windowSize"] == "DAY"
    assert usage["acme"] < usage["beta"]  # rows: by window, then customer
    assert [(r["customerId"], r["value"]) for r in result["data"]] == [
        (usage["acme"], 45.0),
        (usage["beta"], 100.0),
        (usage["acme"], 1.0),
    ]
    # Without a customer filter every subject counts, the unattributed one too.
    assert values(query(api, "tokens_total", windowSize="DAY")) == [
        (z(T0), 1145.0),
        (z(T0 + timedelta(days=1)), 1.0),
    ]
    by_customer = query(api, "tokens_total", windowSize="DAY", groupBy="customer_id")
    assert [(r.get("customerId"), r["value"]) for r in by_customer["data"]] == [
        (None, 1000.0),  # the unattributed subject: no customerId
        (usage["acme"], 45.0),
        (usage["beta"], 100.0),
        (usage["acme"], 1.0),
    ]


def test_query_per_subject_without_a_filter_adds_up_to_the_totals(
    om: OpenMeterEmulator, api: httpx.Client, usage: dict[str, str]
) -> None:
    """What the usage pull relies on: groupBy=subject with no subject filter answers every
    subject (the unattributed one too), and per window its rows add up to the total that the
    same query without groupBy answers."""
    hours = {"windowSize": "HOUR", "from": z(T0), "to": z(T0 + timedelta(days=2))}
    answer = api.get(QUERY.format("tokens_total"), params={**hours, "groupBy": "subject"})
    per_subject = check(om, answer, request=False)["data"]  # see above: deepObject
    h0, h1, d1 = z(T0), z(T0 + timedelta(hours=1)), z(T0 + timedelta(days=1, hours=3))
    assert [(r["windowStart"], r["subject"], r["value"]) for r in per_subject] == [
        (h0, "a1", 10.0),
        (h0, "a2", 30.0),
        (h0, "b1", 100.0),
        (h0, "stray", 1000.0),
        (h1, "a1", 5.0),
        (d1, "a1", 1.0),
    ]
    assert all("customerId" not in r and r["groupBy"] == {} for r in per_subject)
    totals = check(om, api.get(QUERY.format("tokens_total"), params=hours), request=False)
    assert values(totals) == [(h0, 1140.0), (h1, 5.0), (d1, 1.0)]
    assert all(r["subject"] is None for r in totals["data"])
    # A late event moves its window's total, and its subject's row with it.
    om.ingest([event("late", "b1", T0 + timedelta(minutes=30), tokens=7)])
    assert values(query(api, "tokens_total", **hours))[0] == (h0, 1147.0)
    again = query(api, "tokens_total", **hours, groupBy="subject")["data"]
    assert [r["value"] for r in again if r["subject"] == "b1"] == [107.0]


def test_query_bounds_groups_and_bad_parameters(api: httpx.Client, usage: dict[str, str]) -> None:
    acme = {"filterCustomerId": usage["acme"], "windowSize": "HOUR"}
    # from is inclusive, to exclusive; neither needs to be aligned.
    bounded = query(
        api,
        "tokens_total",
        **acme,
        **{"from": z(T0 + timedelta(minutes=5)), "to": z(T0 + timedelta(hours=1, minutes=1))},
    )
    assert values(bounded) == [(z(T0), 40.0)]
    assert bounded["from"] == z(T0 + timedelta(minutes=5))
    later = query(api, "tokens_total", **acme, **{"from": z(T0 + timedelta(minutes=6))})
    assert values(later)[0] == (z(T0), 30.0)
    whole = query(
        api,
        "tokens_total",
        filterCustomerId=usage["acme"],
        **{"from": z(T0), "to": z(T0 + timedelta(days=2))},
    )
    assert [(r["windowStart"], r["windowEnd"], r["value"]) for r in whole["data"]] == [
        (z(T0), z(T0 + timedelta(days=2)), 46.0)
    ]
    per_model = query(api, "tokens_total", **acme, groupBy=["model", "subject"])
    assert [(r["subject"], r["groupBy"], r["value"]) for r in per_model["data"][:2]] == [
        ("a1", {"model": "m1"}, 10.0),
        ("a2", {"model": "m2"}, 30.0),
    ]
    m1 = query(api, "tokens_total", windowSize="DAY", **{"filterGroupBy[model]": "m1"})
    assert values(m1) == [(z(T0), 115.0)]
    berlin = query(
        api, "tokens_total", **{**acme, "windowSize": "DAY"}, windowTimeZone="Europe/Berlin"
    )
    assert [r["windowStart"] for r in berlin["data"]] == [
        "2025-02-28T23:00:00Z",
        "2025-03-01T23:00:00Z",
    ]
    for params, name in [
        ({"from": "yesterday"}, "from"),
        ({"to": "2025-03-01"}, "to"),
        ({"from": z(T0), "to": z(T0)}, "from"),
        ({"windowSize": "WEEK"}, "windowSize"),
        ({"windowTimeZone": "Mars/Olympus"}, "windowTimeZone"),
        ({"filterCustomerId": "01J" + "Z" * 23}, "filterCustomerId"),
        ({"groupBy": "color"}, "groupBy"),
    ]:
        assert_problem(api.get(QUERY.format("tokens_total"), params=params), 400, name)
    assert_problem(api.get(QUERY.format("nope")), 404, "nope")


def test_avg_min_latest_and_month_windows(om: OpenMeterEmulator, api: httpx.Client) -> None:
    for aggregation in ("AVG", "MIN", "LATEST"):
        om.add_meter(f"t_{aggregation.lower()}", event_type="prompt", aggregation=aggregation)
    customer = om.create_customer("c", "C", subject_keys=["s1", "s2"])
    minute = timedelta(minutes=1)
    april = {**event(4, "s1", T0, tokens=7), "time": T0 + timedelta(days=40)}  # a datetime
    om.ingest(
        [
            event(1, "s1", T0 + minute, tokens=4),
            event(2, "s2", T0 + 3 * minute, tokens=10),
            event(3, "s1", T0 + 2 * minute, tokens=1.5),
            event(5, "s1", T0 + 4 * minute, tokens="n/a"),  # not a number: does not count
            april,
        ]
    )
    # Late, but not the latest by time: LATEST is the value of the last event in time.
    om.ingest([event(6, "s1", T0 + 2.5 * minute, tokens=99)])
    month = {"filterCustomerId": customer["id"], "windowSize": "MONTH"}
    march, april_start = z(T0), z(datetime(2025, 4, 1, tzinfo=UTC))
    assert values(query(api, "t_avg", **month)) == [(march, 28.625), (april_start, 7.0)]
    assert values(query(api, "t_min", **month)) == [(march, 1.5), (april_start, 7.0)]
    assert values(query(api, "t_latest", **month)) == [(march, 10.0), (april_start, 7.0)]
    assert query(api, "t_latest", **month)["data"][0]["windowEnd"] == april_start


def test_a_late_event_changes_its_window(
    om: OpenMeterEmulator, api: httpx.Client, usage: dict[str, str]
) -> None:
    acme = {"filterCustomerId": usage["acme"], "windowSize": "HOUR"}
    assert values(query(api, "tokens_total", **acme))[0] == (z(T0), 40.0)
    assert om.ingest([event("late", "a2", T0 + timedelta(minutes=59, seconds=59), tokens=2)]) == 1
    assert values(query(api, "tokens_total", **acme))[0] == (z(T0), 42.0)
    assert values(query(api, "prompts", **acme))[0] == (z(T0), 3.0)


def test_usage_follows_the_current_attribution(
    om: OpenMeterEmulator, api: httpx.Client, usage: dict[str, str]
) -> None:
    day = {"windowSize": "DAY", "to": z(T0 + timedelta(days=1))}
    assert values(query(api, "tokens_total", filterCustomerId=usage["beta"], **day)) == [
        (z(T0), 100.0)
    ]
    om.update_customer("acme", subject_keys=["a1"])  # a2 leaves acme…
    om.update_customer("beta", subject_keys=["b1", "a2"])  # …and its past usage moves to beta
    assert values(query(api, "tokens_total", filterCustomerId=usage["beta"], **day)) == [
        (z(T0), 130.0)
    ]
    assert values(query(api, "tokens_total", filterCustomerId=usage["acme"], **day)) == [
        (z(T0), 15.0)
    ]


def test_events_are_deduplicated_on_source_and_id(
    om: OpenMeterEmulator, api: httpx.Client, usage: dict[str, str]
) -> None:
    again = event(1, "a1", T0 + timedelta(minutes=5), tokens=10, model="m1")
    assert om.ingest([again]) == 0
    one = api.post(
        "/api/v1/events",
        content=json.dumps(again),
        headers={"Content-Type": "application/cloudevents+json"},
    )
    assert one.status_code == 204 and check(om, one) is None
    other_source = {**again, "source": "other"}
    batch = api.post(
        "/api/v1/events",
        content=json.dumps([again, other_source, other_source]),
        headers={"Content-Type": "application/cloudevents-batch+json"},
    )
    assert batch.status_code == 204 and check(om, batch) is None
    acme = {"filterCustomerId": usage["acme"], "windowSize": "HOUR"}
    assert values(query(api, "tokens_total", **acme))[0] == (z(T0), 50.0)  # +10, once
    bad = api.post("/api/v1/events", json={**again, "id": ""})
    assert_problem(bad, 400, "id")
    check(om, bad, request=False)
    with pytest.raises(ValueError, match="time"):
        om.ingest([{**again, "id": "x", "time": "not a time"}])


@pytest.mark.slow  # a load case; bench/emulator_load.py times it
def test_a_month_of_100k_events_queries_exactly(om: OpenMeterEmulator, api: httpx.Client) -> None:
    om.add_meter("tokens_total", event_type="prompt")
    customer = om.create_customer("big", "Big", subject_keys=["big-1", "big-2"])
    step = timedelta(days=31) / 100_000
    om.ingest(event(i, f"big-{i % 2 + 1}", T0 + i * step, tokens=i % 7) for i in range(100_000))
    params = {
        "filterCustomerId": customer["id"],
        "windowSize": "HOUR",
        "from": z(T0),
        "to": z(T0 + timedelta(days=31)),
    }
    query(api, "tokens_total", **params)  # builds the value columns
    result = query(api, "tokens_total", **params)
    assert len(result["data"]) == 31 * 24
    assert sum(r["value"] for r in result["data"]) == sum(i % 7 for i in range(100_000))


# -- faults and outages --------------------------------------------------------------------------


def test_injected_faults(om: OpenMeterEmulator, api: httpx.Client) -> None:
    om.fail_next("500", path_prefix="/api/v1/meters")
    assert api.get("/api/v1/subjects").status_code == 200  # another path: untouched
    assert_problem(api.get("/api/v1/meters"), 500)
    assert api.get("/api/v1/meters").status_code == 200
    om.fail_next("503", count=2)
    assert [api.get("/api/v1/meters").status_code for _ in range(3)] == [503, 503, 200]
    om.fail_next("reset")
    with pytest.raises(httpx.TransportError):
        api.get("/api/v1/customers")
    assert api.get("/api/v1/customers").status_code == 200
    statuses = [(r["path"], r["status"], r["fault"]) for r in om.requests("/api/v1/customers")]
    assert statuses == [("/api/v1/customers", "reset", "reset"), ("/api/v1/customers", 200, None)]


def test_a_timeout_answers_after_the_client_gave_up(om: OpenMeterEmulator) -> None:
    om.configure(timeout_delay_s=10.0)
    om.fail_next("timeout", path_prefix="/api/v1/meters")
    headers = {"Authorization": f"Bearer {om.token}"}
    with pytest.raises(httpx.ReadTimeout):
        httpx.get(f"{om.url}/api/v1/meters", headers=headers, timeout=0.3)
    # The server goes on answering while the slow answer waits: a server held by it would
    # leave this request unanswered past its own timeout, half the held answer's delay.
    assert httpx.get(f"{om.url}/api/v1/subjects", headers=headers, timeout=5).status_code == 200
    assert om.requests("/api/v1/meters")[-1]["fault"] == "timeout"


def test_down_answers_503_to_everything(om: OpenMeterEmulator, api: httpx.Client) -> None:
    om.configure(down=True)
    for path in ("/api/v1/subjects", "/api/v1/customers", "/api/v1/nowhere"):
        down = api.get(path)
        assert_problem(down, 503)
    check(om, api.get("/api/v1/meters"), request=False)
    om.configure(down=False)
    assert api.get("/api/v1/subjects").status_code == 200
    assert [r["status"] for r in om.requests()][-2:] == [503, 200]
    with pytest.raises(ValueError, match="unknown"):
        om.configure(donw=True)


def test_seeded_entitlements_answer_as_access_and_the_v2_list(
    om: OpenMeterEmulator, api: httpx.Client
) -> None:
    acme = om.create_customer("acme", "Acme", subject_keys=["acme-api"])
    period = (T0, datetime(2025, 4, 1, tzinfo=UTC))
    om.set_entitlement(
        "acme",
        "gpt_4",
        value={"hasAccess": True, "balance": 900.5, "usage": 99.5, "overage": 0},
        current_period=period,
    )
    om.set_entitlement("acme", "sso", type="boolean")
    om.set_entitlement("acme", "limits", type="static", config='{"seats": 5}')

    access = check(om, api.get("/api/v1/customers/acme/access"))
    assert access == {
        "entitlements": {
            "gpt_4": {"hasAccess": True, "balance": 900.5, "usage": 99.5, "overage": 0},
            "sso": {"hasAccess": True},
            "limits": {"hasAccess": True, "config": '{"seats": 5}'},
        }
    }
    # By id too; the list carries each one's type and the metered one's usage period.
    listed = check(om, api.get(f"/api/v2/customers/{acme['id']}/entitlements"))
    assert listed["totalCount"] == 3
    assert [(e["featureKey"], e["type"]) for e in listed["items"]] == [
        ("gpt_4", "metered"),
        ("sso", "boolean"),
        ("limits", "static"),
    ]
    assert listed["items"][0]["currentUsagePeriod"] == {
        "from": "2025-03-01T00:00:00Z",
        "to": "2025-04-01T00:00:00Z",
    }
    page = check(
        om, api.get("/api/v2/customers/acme/entitlements", params={"pageSize": 2, "page": 2})
    )
    assert [e["featureKey"] for e in page["items"]] == ["limits"]

    # New figures replace the old (the same entitlement); a deleted one is gone.
    first = listed["items"][0]["id"]
    om.set_entitlement(
        "acme",
        "gpt_4",
        value={"hasAccess": False, "balance": 0, "usage": 1000, "overage": 10},
        current_period=period,
    )
    om.delete_entitlement("acme", "sso")
    access = check(om, api.get("/api/v1/customers/acme/access"))
    assert sorted(access["entitlements"]) == ["gpt_4", "limits"]
    assert access["entitlements"]["gpt_4"]["hasAccess"] is False
    again = check(om, api.get("/api/v2/customers/acme/entitlements"))
    assert again["items"][0]["id"] == first

    assert_problem(api.get("/api/v1/customers/nobody/access"), 404)
    assert_problem(api.get("/api/v2/customers/nobody/entitlements"), 404)
    with pytest.raises(ValueError, match="only for metered"):
        om.set_entitlement("acme", "sso", type="boolean", value={"balance": 1})
