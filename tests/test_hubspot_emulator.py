"""The HubSpot emulator over real HTTP with httpx: auth, properties, batch upsert/update/archive,
207 partial failures, unique keys under concurrency, list/read/search, rate limits and faults."""

from __future__ import annotations

import threading
import time
import uuid
from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from metersync.testing import HubSpotEmulator

KEY = "metersync_key"
COMPANIES = "/crm/v3/objects/companies"
CONTACTS = "/crm/v3/objects/contacts"
PROPERTIES = "/crm/v3/properties/companies"
ASSOCIATE = "/crm/v4/associations/companies/contacts/batch/associate/default"
RATE_HEADERS = (
    "x-hubspot-ratelimit-daily",
    "x-hubspot-ratelimit-daily-remaining",
    "x-hubspot-ratelimit-interval-milliseconds",
    "x-hubspot-ratelimit-max",
    "x-hubspot-ratelimit-remaining",
)


@pytest.fixture
def hs() -> Iterator[HubSpotEmulator]:
    with HubSpotEmulator(rate_limit_per_10s=None) as running:
        yield running


@pytest.fixture
def api(hs: HubSpotEmulator) -> Iterator[httpx.Client]:
    with client_for(hs) as client:
        define_properties(client)
        yield client


def client_for(hs: HubSpotEmulator, token: str | None = None) -> httpx.Client:
    headers = {"Authorization": f"Bearer {token or hs.token}"}
    return httpx.Client(base_url=hs.url, headers=headers, timeout=10)


def define_properties(api: httpx.Client) -> None:
    group = api.post(f"{PROPERTIES}/groups", json={"name": "metersync", "label": "metersync"})
    assert group.status_code == 201
    created = api.post(
        f"{PROPERTIES}/batch/create",
        json={
            "inputs": [
                prop(KEY, unique=True),
                prop("seats", kind="number", field_type="number"),
                prop("renewed_at", kind="datetime", field_type="date"),
            ]
        },
    )
    assert created.status_code == 201, created.text


def prop(
    name: str, *, kind: str = "string", field_type: str = "text", unique: bool = False
) -> dict[str, Any]:
    spec: dict[str, Any] = {
        "name": name,
        "label": name.title(),
        "type": kind,
        "fieldType": field_type,
        "groupName": "metersync",
    }
    if unique:
        spec["hasUniqueValue"] = True
    return spec


def upsert(api: httpx.Client, *records: tuple[str, dict[str, Any]]) -> httpx.Response:
    inputs = [{"idProperty": KEY, "id": key, "properties": props} for key, props in records]
    return api.post(f"{COMPANIES}/batch/upsert", json={"inputs": inputs})


def error_of(response: httpx.Response) -> dict[str, Any]:
    body: dict[str, Any] = response.json()
    assert body["status"] == "error"
    uuid.UUID(body["correlationId"])
    return body


# -- auth ----------------------------------------------------------------------------------------


def test_a_bearer_token_is_required(hs: HubSpotEmulator) -> None:
    for headers in ({}, {"Authorization": "Bearer wrong"}, {"Authorization": f"Basic {hs.token}"}):
        answer = httpx.get(f"{hs.url}{COMPANIES}", headers=headers, timeout=10)
        assert answer.status_code == 401
        body = error_of(answer)
        assert body["category"] == "INVALID_AUTHENTICATION"
        assert body["message"].startswith("Authentication credentials not found")
        assert "x-hubspot-ratelimit-daily" not in answer.headers  # no app to count against
    with client_for(hs) as api:
        assert api.get(COMPANIES).status_code == 200
    assert hs.calls() == 4


# -- properties ----------------------------------------------------------------------------------


def test_built_in_properties(hs: HubSpotEmulator) -> None:
    with client_for(hs) as api:
        companies = {p["name"]: p for p in api.get(PROPERTIES).json()["results"]}
        contacts = {p["name"] for p in api.get("/crm/v3/properties/contacts").json()["results"]}
        assert {"name", "domain", "hs_object_id"} <= set(companies)
        assert {"email", "firstname", "lastname"} <= contacts
        assert companies["hs_object_id"]["modificationMetadata"]["readOnlyValue"] is True
        assert api.get(f"{PROPERTIES}/domain").json()["type"] == "string"
        missing = api.get(f"{PROPERTIES}/nope")
        assert missing.status_code == 404 and error_of(missing)["category"] == "OBJECT_NOT_FOUND"
        unknown_type = api.get("/crm/v3/properties/deals")
        assert unknown_type.status_code == 400
        assert error_of(unknown_type)["message"] == "Unable to infer object type from: deals"
    assert [p["name"] for p in hs.properties("contacts")][:2] == ["hs_object_id", "createdate"]


def test_property_create_conflict_batch_create_and_patch(api: httpx.Client) -> None:
    created = api.post(PROPERTIES, json=prop("plan"))
    assert created.status_code == 201
    assert created.json()["hasUniqueValue"] is False and created.json()["archived"] is False
    again = api.post(PROPERTIES, json=prop("plan"))
    assert again.status_code == 409
    assert error_of(again)["category"] == "OBJECT_ALREADY_EXISTS"
    assert again.json()["message"] == "Property named 'plan' already exists."

    batch = api.post(f"{PROPERTIES}/batch/create", json={"inputs": [prop("plan"), prop("tier")]})
    assert batch.status_code == 207
    assert [r["name"] for r in batch.json()["results"]] == ["tier"]
    assert batch.json()["errors"][0]["category"] == "OBJECT_ALREADY_EXISTS"

    patched = api.patch(f"{PROPERTIES}/plan", json={"label": "Plan", "description": "v2"})
    assert patched.status_code == 200
    assert (patched.json()["label"], patched.json()["description"]) == ("Plan", "v2")
    assert api.get(f"{PROPERTIES}/plan").json()["description"] == "v2"
    assert api.patch(f"{PROPERTIES}/plan", json={"hasUniqueValue": True}).status_code == 400
    assert api.patch(f"{PROPERTIES}/nope", json={"label": "x"}).status_code == 404

    no_group = api.post(PROPERTIES, json={**prop("orphan"), "groupName": "nowhere"})
    assert no_group.status_code == 400
    bad_type = api.post(PROPERTIES, json=prop("flag", kind="bool", field_type="text"))
    assert bad_type.status_code == 400
    unique_date = api.post(
        PROPERTIES, json=prop("d", kind="datetime", field_type="date", unique=True)
    )
    assert unique_date.status_code == 400
    group_again = api.post(f"{PROPERTIES}/groups", json={"name": "metersync", "label": "m"})
    assert group_again.status_code == 409
    groups = {g["name"] for g in api.get(f"{PROPERTIES}/groups").json()["results"]}
    assert groups == {"companyinformation", "metersync"}


# -- batch upsert --------------------------------------------------------------------------------


def test_upsert_creates_then_updates(api: httpx.Client, hs: HubSpotEmulator) -> None:
    first = upsert(api, ("k1", {"name": "ACME", "seats": 5}), ("k2", {"name": "Globex"}))
    assert first.status_code == 200
    body = first.json()
    assert body["status"] == "COMPLETE" and "errors" not in body
    created = {r["properties"][KEY]: r for r in body["results"]}
    assert all(r["new"] is True for r in created.values())
    one = created["k1"]
    assert int(created["k2"]["id"]) > int(one["id"]) >= 1_000_001
    assert one["properties"]["seats"] == "5"  # numbers come back as strings
    assert one["properties"]["hs_object_id"] == one["id"]
    assert one["createdAt"].endswith("Z") and len(one["createdAt"]) == 24

    time.sleep(0.002)  # a later millisecond for the modification date
    second = upsert(api, ("k1", {"name": "ACME Corp", "seats": "7.5"}))
    again = second.json()["results"][0]
    assert (again["id"], again["new"]) == (one["id"], False)
    assert again["properties"]["name"] == "ACME Corp" and again["properties"]["seats"] == "7.5"
    assert again["createdAt"] == one["createdAt"] and again["updatedAt"] > one["updatedAt"]

    unchanged = upsert(api, ("k1", {"name": "ACME Corp"})).json()["results"][0]
    assert unchanged["updatedAt"] == again["updatedAt"]  # nothing changed, nothing stamped
    assert len(hs.companies()) == 2


def test_batch_limits_duplicates_and_id_property_are_checked_whole(
    api: httpx.Client, hs: HubSpotEmulator
) -> None:
    too_many = upsert(api, *[(f"k{i}", {}) for i in range(101)])
    assert too_many.status_code == 400
    assert error_of(too_many)["category"] == "VALIDATION_ERROR"
    duplicates = upsert(api, ("k1", {"name": "a"}), ("k1", {"name": "b"}))
    assert duplicates.status_code == 400
    assert "Duplicate IDs found in batch input: [k1]" in duplicates.json()["message"]
    not_unique = api.post(
        f"{COMPANIES}/batch/upsert",
        json={"inputs": [{"idProperty": "name", "id": "ACME", "properties": {}}]},
    )
    assert not_unique.status_code == 400
    assert hs.companies() == []
    assert upsert(api, *[(f"k{i}", {}) for i in range(100)]).status_code == 200


def test_a_unique_key_holds_under_concurrent_upserts(
    api: httpx.Client, hs: HubSpotEmulator
) -> None:
    hs.configure(latency_ms=5, jitter_ms=5)
    answers: list[dict[str, Any]] = []
    start = threading.Barrier(20)

    def race(n: int) -> None:
        with client_for(hs) as own:
            start.wait()
            answer = upsert(own, ("same", {"name": f"writer {n}"}))
            answers.append(answer.json()["results"][0])

    threads = [threading.Thread(target=race, args=(n,)) for n in range(20)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    companies = hs.companies()
    assert len(companies) == 1
    assert {a["id"] for a in answers} == {companies[0]["id"]}
    assert sum(a["new"] for a in answers) == 1


def test_rejected_records_fail_alone_with_a_207(api: httpx.Client, hs: HubSpotEmulator) -> None:
    hs.reject_records(lambda properties: properties.get("name") == "bad")
    answer = upsert(api, ("good", {"name": "fine"}), ("evil", {"name": "bad"}))
    assert answer.status_code == 207
    body = answer.json()
    assert body["numErrors"] == 1
    assert [r["properties"][KEY] for r in body["results"]] == ["good"]
    error = body["errors"][0]
    assert (error["status"], error["category"]) == ("error", "VALIDATION_ERROR")
    assert error["context"] == {"ids": ["evil"]}
    assert [c["properties"][KEY] for c in hs.companies()] == ["good"]
    hs.reject_records(None)
    assert upsert(api, ("evil", {"name": "bad"})).status_code == 200


def test_unknown_properties_and_bad_values_fail_their_record(api: httpx.Client) -> None:
    answer = upsert(
        api,
        ("a", {"nmae": "typo"}),
        ("b", {"seats": "twelve"}),
        ("c", {"renewed_at": 1_700_000_000_000}),
        ("d", {"hs_object_id": "42"}),
    )
    assert answer.status_code == 207
    errors = {e["context"]["ids"][0]: e for e in answer.json()["errors"]}
    assert errors["a"]["errors"][0]["code"] == "PROPERTY_DOESNT_EXIST"
    assert errors["a"]["message"].startswith("Property values were not valid: [")
    assert errors["b"]["errors"][0] == {
        "message": "twelve was not a valid number.",
        "code": "INVALID_INTEGER",
        "context": {"propertyName": ["seats"]},
    }
    assert errors["d"]["errors"][0]["code"] == "READ_ONLY_VALUE"
    (written,) = answer.json()["results"]
    assert written["properties"]["renewed_at"] == "2023-11-14T22:13:20.000Z"


def test_multi_status_can_require_trace_ids(api: httpx.Client, hs: HubSpotEmulator) -> None:
    hs.configure(multi_status_needs_trace_id=True)
    whole = upsert(api, ("ok", {"name": "x"}), ("bad", {"seats": "x"}))
    assert whole.status_code == 400 and hs.companies() == []
    inputs = [
        {"idProperty": KEY, "id": "ok", "properties": {}, "objectWriteTraceId": "t1"},
        {"idProperty": KEY, "id": "bad", "properties": {"seats": "x"}, "objectWriteTraceId": "t2"},
    ]
    partial = api.post(f"{COMPANIES}/batch/upsert", json={"inputs": inputs})
    assert partial.status_code == 207
    assert partial.json()["results"][0]["objectWriteTraceId"] == "t1"
    assert partial.json()["errors"][0]["context"] == {"ids": ["bad"], "objectWriteTraceId": ["t2"]}


# -- batch update and archive --------------------------------------------------------------------


def test_batch_update_reports_missing_and_archived_ids(
    api: httpx.Client, hs: HubSpotEmulator
) -> None:
    ids = [r["id"] for r in upsert(api, ("k1", {}), ("k2", {})).json()["results"]]
    hs.delete_company(ids[1])
    inputs = [
        {"id": ids[0], "properties": {"name": "Renamed"}},
        {"id": ids[1], "properties": {"name": "Ghost"}},
        {"id": "999", "properties": {"name": "Nobody"}},
    ]
    answer = api.post(f"{COMPANIES}/batch/update", json={"inputs": inputs})
    assert answer.status_code == 207
    assert [r["id"] for r in answer.json()["results"]] == [ids[0]]
    assert "new" not in answer.json()["results"][0]
    errors = answer.json()["errors"]
    assert [e["context"]["ids"] for e in errors] == [[ids[1]], ["999"]]
    assert {(e["status"], e["category"]) for e in errors} == {("error", "OBJECT_NOT_FOUND")}
    assert hs.companies()[0]["properties"]["name"] == "Renamed"
    clear = api.post(
        f"{COMPANIES}/batch/update", json={"inputs": [{"id": ids[0], "properties": {"name": ""}}]}
    )
    assert "name" not in clear.json()["results"][0]["properties"]  # "" unsets


def test_archive_frees_the_unique_value(api: httpx.Client, hs: HubSpotEmulator) -> None:
    first = upsert(api, ("k1", {"name": "Old"})).json()["results"][0]["id"]
    archived = api.post(
        f"{COMPANIES}/batch/archive", json={"inputs": [{"id": first}, {"id": "424242"}]}
    )
    assert archived.status_code == 204 and archived.content == b""
    assert hs.companies() == []
    assert [c["id"] for c in hs.companies(archived=True)] == [first]
    assert api.get(f"{COMPANIES}/{first}").status_code == 404
    assert api.get(f"{COMPANIES}/{first}", params={"archived": "true"}).json()["archived"] is True
    again = upsert(api, ("k1", {"name": "New"})).json()["results"][0]
    assert again["new"] is True and again["id"] != first


# -- reads ---------------------------------------------------------------------------------------


def test_list_pages_and_properties(api: httpx.Client) -> None:
    for start in (0, 100):
        upsert(
            api, *[(f"k{n:03d}", {"name": f"C{n}", "seats": n}) for n in range(start, start + 100)]
        )
    seen: list[str] = []
    after: str | None = None
    pages = 0
    while True:
        params: dict[str, Any] = {"limit": 100, "properties": f"{KEY},seats,domain"}
        if after:
            params["after"] = after
        page = api.get(COMPANIES, params=params).json()
        pages += 1
        seen += [r["properties"][KEY] for r in page["results"]]
        if "paging" not in page:
            break
        after = page["paging"]["next"]["after"]
        assert page["paging"]["next"]["link"].endswith(f"{COMPANIES}?after={after}")
    assert pages == 2 and seen == [f"k{n:03d}" for n in range(200)]

    first = api.get(COMPANIES, params=[("limit", "1"), ("properties", KEY)]).json()["results"][0]
    assert set(first["properties"]) == {KEY, "hs_object_id", "createdate", "hs_lastmodifieddate"}
    with_unset = api.get(COMPANIES, params={"limit": 1, "properties": "domain"}).json()
    assert with_unset["results"][0]["properties"]["domain"] is None
    defaults = api.get(COMPANIES, params={"limit": 1}).json()["results"][0]["properties"]
    assert {"name", "domain", "hs_object_id"} <= set(defaults) and KEY not in defaults
    assert api.get(COMPANIES, params={"limit": 101}).status_code == 400


def test_get_by_id_or_unique_value(api: httpx.Client) -> None:
    company = upsert(api, ("k1", {"name": "ACME"})).json()["results"][0]
    by_id = api.get(f"{COMPANIES}/{company['id']}", params={"properties": "name"})
    assert by_id.json()["properties"]["name"] == "ACME"
    by_key = api.get(f"{COMPANIES}/k1", params={"idProperty": KEY, "properties": "name"})
    assert by_key.json()["id"] == company["id"]
    missing = api.get(f"{COMPANIES}/k2", params={"idProperty": KEY})
    assert missing.status_code == 404
    assert error_of(missing)["category"] == "OBJECT_NOT_FOUND"
    assert api.get(f"{COMPANIES}/ACME", params={"idProperty": "name"}).status_code == 400


def test_search_filters_and_pages(api: httpx.Client) -> None:
    upsert(api, *[(f"k{n}", {"name": f"C{n}", "seats": n}) for n in range(30)])
    upsert(api, ("nokey-seats", {"name": "no seats"}))

    def search(filters: list[dict[str, Any]], **extra: Any) -> dict[str, Any]:
        body = {"filterGroups": [{"filters": filters}], "properties": [KEY], **extra}
        answer = api.post(f"{COMPANIES}/search", json=body)
        assert answer.status_code == 200, answer.text
        result: dict[str, Any] = answer.json()
        return result

    eq = search([{"propertyName": KEY, "operator": "EQ", "value": "K3"}])  # text: any case
    assert eq["total"] == 1 and eq["results"][0]["properties"][KEY] == "k3"
    in_ = search([{"propertyName": KEY, "operator": "IN", "values": ["k1", "k2", "zz"]}])
    assert sorted(r["properties"][KEY] for r in in_["results"]) == ["k1", "k2"]
    has = search([{"propertyName": "seats", "operator": "HAS_PROPERTY"}], limit=20)
    assert (
        has["total"] == 30 and len(has["results"]) == 20 and has["paging"]["next"]["after"] == "20"
    )
    rest = search([{"propertyName": "seats", "operator": "HAS_PROPERTY"}], limit=20, after="20")
    assert len(rest["results"]) == 10 and "paging" not in rest
    ranged = search([{"propertyName": "seats", "operator": "GTE", "value": "25"}])
    assert ranged["total"] == 5
    bad = api.post(
        f"{COMPANIES}/search", json={"filterGroups": [{"filters": [{"propertyName": "x"}]}]}
    )
    assert bad.status_code == 400


def test_search_lags_behind_writes(api: httpx.Client, hs: HubSpotEmulator) -> None:
    hs.configure(search_lag_s=0.3)
    upsert(api, ("k1", {"name": "Before"}))
    body = {
        "filterGroups": [{"filters": [{"propertyName": KEY, "operator": "EQ", "value": "k1"}]}],
        "properties": ["name"],
    }
    assert api.post(f"{COMPANIES}/search", json=body).json()["total"] == 0
    time.sleep(0.35)
    seen = api.post(f"{COMPANIES}/search", json=body).json()
    assert seen["results"][0]["properties"]["name"] == "Before"
    upsert(api, ("k1", {"name": "After"}))
    stale = api.post(f"{COMPANIES}/search", json=body).json()
    assert stale["results"][0]["properties"]["name"] == "Before"
    time.sleep(0.35)
    fresh = api.post(f"{COMPANIES}/search", json=body).json()
    assert fresh["results"][0]["properties"]["name"] == "After"


# -- rate limits ---------------------------------------------------------------------------------


def test_rolling_window_headers_and_429(hs: HubSpotEmulator) -> None:
    hs.configure(rate_limit_per_10s=3, daily_limit=1000)
    properties_before = len(hs.properties())
    with client_for(hs) as api:
        answers = [api.get(COMPANIES) for _ in range(3)]
        assert [a.headers["x-hubspot-ratelimit-remaining"] for a in answers] == ["2", "1", "0"]
        assert all(name in answers[0].headers for name in RATE_HEADERS)
        assert answers[0].headers["x-hubspot-ratelimit-interval-milliseconds"] == "10000"
        assert answers[0].headers["x-hubspot-ratelimit-max"] == "3"
        assert answers[2].headers["x-hubspot-ratelimit-daily-remaining"] == "997"
        refused = api.post(PROPERTIES, json={**prop("plan"), "groupName": "companyinformation"})
    assert refused.status_code == 429
    body = refused.json()
    assert body["policyName"] == "TEN_SECONDLY_ROLLING"
    assert body["errorType"] == "RATE_LIMIT"
    assert body["message"] == "You have reached your ten_secondly_rolling limit."
    assert body["groupName"] and uuid.UUID(body["correlationId"])
    assert refused.headers["x-hubspot-ratelimit-daily-remaining"] == "997"  # not admitted
    assert len(hs.properties()) == properties_before and hs.calls() == 4  # 429: no change


def test_daily_limit(hs: HubSpotEmulator) -> None:
    hs.configure(daily_limit=2)
    with client_for(hs) as api:
        assert [api.get(COMPANIES).status_code for _ in range(2)] == [200, 200]
        refused = api.get(COMPANIES)
    assert refused.status_code == 429
    assert refused.json()["policyName"] == "DAILY"
    assert refused.json()["message"] == "You have reached your daily limit."
    assert refused.headers["x-hubspot-ratelimit-daily-remaining"] == "0"


# -- faults --------------------------------------------------------------------------------------


def test_fail_next_answers_429s_and_500s_without_doing_the_work(
    api: httpx.Client, hs: HubSpotEmulator
) -> None:
    hs.fail_next("429_ten_secondly", endpoint="companies.batch_upsert")
    hs.fail_next("429_daily", endpoint="companies.batch_upsert")
    hs.fail_next("500", count=2, endpoint="companies.*")
    assert api.get(PROPERTIES).status_code == 200  # another endpoint: untouched
    statuses = [upsert(api, ("k1", {})).status_code for _ in range(5)]
    assert statuses == [429, 429, 500, 500, 200]
    policies = [r.get("error") for r in hs.requests("companies.batch_upsert")]
    assert policies == ["TEN_SECONDLY_ROLLING", "DAILY", "INTERNAL_ERROR", "INTERNAL_ERROR", None]
    assert len(hs.companies()) == 1


def test_reset_and_commit_then_drop(api: httpx.Client, hs: HubSpotEmulator) -> None:
    hs.fail_next("reset", endpoint="companies.batch_upsert")
    with pytest.raises(httpx.TransportError):
        upsert(api, ("lost", {}))
    assert hs.companies() == []

    hs.fail_next("commit_then_drop", endpoint="companies.batch_upsert")
    with pytest.raises(httpx.TransportError):
        upsert(api, ("done", {}))
    assert [c["properties"][KEY] for c in hs.companies()] == ["done"]  # the work was done

    retried = upsert(api, ("done", {})).json()["results"][0]
    assert retried["new"] is False  # an upsert is safe to retry
    statuses = [r["status"] for r in hs.requests("companies.batch_upsert")]
    assert statuses == ["reset", "drop", 200]


def test_fault_rules_and_seeded_chaos(api: httpx.Client, hs: HubSpotEmulator) -> None:
    hs.configure(faults=[{"kind": "500", "probability": 1.0, "endpoint": "companies.list"}])
    assert api.get(COMPANIES).status_code == 500
    assert api.get(PROPERTIES).status_code == 200

    def chaos_run() -> list[Any]:
        hs.configure(faults=[], fault_rate=0.5, fault_kinds=["500", "429_ten_secondly"], seed=7)
        return [api.get(PROPERTIES).status_code for _ in range(12)]

    first = chaos_run()
    assert set(first) == {200, 429, 500}
    assert chaos_run() == first  # a seed replays the same faults
    with pytest.raises(ValueError, match="unknown HubSpot emulator setting"):
        hs.configure(rate_limit=5)


def test_latency_is_added(hs: HubSpotEmulator) -> None:
    hs.configure(latency_ms=60)
    with client_for(hs) as api:
        api.get(COMPANIES)  # connect first
        started = time.perf_counter()
        api.get(COMPANIES)
    assert time.perf_counter() - started >= 0.055


# -- contacts and associations -------------------------------------------------------------------


def test_contacts_upsert_by_email_and_idempotent_associations(
    api: httpx.Client, hs: HubSpotEmulator
) -> None:
    company = upsert(api, ("k1", {})).json()["results"][0]["id"]

    def contact(email: str) -> dict[str, Any]:
        inputs = [{"idProperty": "email", "id": email, "properties": {"firstname": "Ann"}}]
        answer = api.post(f"{CONTACTS}/batch/upsert", json={"inputs": inputs})
        assert answer.status_code == 200, answer.text
        result: dict[str, Any] = answer.json()["results"][0]
        return result

    first = contact("Ann@Example.com")
    assert first["new"] is True and first["properties"]["email"] == "ann@example.com"
    assert contact("ann@example.com")["id"] == first["id"]
    assert len(hs.contacts()) == 1

    link = {"inputs": [{"from": {"id": company}, "to": {"id": first["id"]}}]}
    for _ in range(2):
        answer = api.post(ASSOCIATE, json=link)
        assert answer.status_code == 200
    assert answer.json()["results"] == [
        {
            "from": {"id": company},
            "to": {"id": first["id"]},
            "associationSpec": {"associationCategory": "HUBSPOT_DEFINED", "associationTypeId": 280},
        }
    ]
    assert hs.associations() == [(company, first["id"])]

    unknown = api.post(ASSOCIATE, json={"inputs": [{"from": {"id": company}, "to": {"id": "9"}}]})
    assert unknown.status_code == 207
    assert unknown.json()["errors"][0]["category"] == "OBJECT_NOT_FOUND"
    assert unknown.json()["errors"][0]["context"]["ids"] == [company, "9"]


# -- out of band and inspection ------------------------------------------------------------------


def test_out_of_band_changes(api: httpx.Client, hs: HubSpotEmulator) -> None:
    one, two = (r["id"] for r in upsert(api, ("k1", {}), ("k2", {})).json()["results"])
    hs.set_company_property(one, "name", "Edited by a user")
    assert api.get(f"{COMPANIES}/{one}").json()["properties"]["name"] == "Edited by a user"
    with pytest.raises(ValueError, match="not a valid number"):
        hs.set_company_property(one, "seats", "many")
    with pytest.raises(ValueError, match="already the value"):
        hs.set_company_property(one, KEY, "k2")
    hs.delete_company(two)
    assert [c["id"] for c in hs.companies()] == [one]
    with pytest.raises(KeyError):
        hs.delete_company(two)


def test_request_log_calls_and_reset(api: httpx.Client, hs: HubSpotEmulator) -> None:
    upsert(api, ("k1", {}), ("k2", {}))
    api.get(f"{COMPANIES}/nope")
    (logged,) = hs.requests("companies.batch_upsert")
    assert logged["method"] == "POST" and logged["status"] == 200 and logged["inputs"] == 2
    assert logged["path"] == f"{COMPANIES}/batch/upsert"
    assert hs.requests("companies.get")[0]["status"] == 404
    assert hs.calls() == len(hs.requests()) == 4  # group, properties, upsert, get
    hs.reset()
    assert hs.companies() == [] and hs.calls() == 0 and hs.requests() == []
    assert KEY not in {p["name"] for p in hs.properties()}


@pytest.mark.slow  # a load case; bench/emulator_load.py times it
def test_ten_thousand_companies_in_batches_of_a_hundred(
    api: httpx.Client, hs: HubSpotEmulator
) -> None:
    for batch in range(100):
        records = [(f"c{batch}-{n}", {"name": f"Company {n}", "seats": n}) for n in range(100)]
        assert upsert(api, *records).status_code == 200
    companies = hs.companies()
    assert len(companies) == 10_000
    assert len({c["properties"][KEY] for c in companies}) == 10_000
