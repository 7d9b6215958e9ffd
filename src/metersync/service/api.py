"""The OpenMeter-compatible API (v1 shapes of OpenMeter's openapi.yaml), so that existing
OpenMeter clients work against metersync unchanged: subjects, customers, events and meters.

Thin: each route parses the request, calls the catalog, ingest or aggregation function the CLI
calls too, and renders OpenMeter's JSON. Errors are problem+json (RFC 7807) with OpenMeter's
status codes, and 415 for a body that is not JSON; each names its request (`instance`,
service/problems.py). Bad input of any kind is a 4xx naming the field or the problem: bodies
are read by `json_body` alone, query values are matched in full before they are converted
(service/guard.py, shared with the entitlement routes). Every route needs a bearer token from
`http.tokens`. With OpenMeter as the source (`upstream`),
only the GETs serve: every write answers 409 naming OpenMeter, since the next pull would undo
it. The meter query reads local events, not OpenMeter's figures.
"""

from __future__ import annotations

import hashlib
from collections.abc import Awaitable, Callable, Sequence
from datetime import UTC, datetime
from typing import Any, TypeVar

from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route
from ulid import ULID

from metersync.catalog import Catalog
from metersync.catalog.meters import Meter
from metersync.catalog.views import Customer, Subject
from metersync.errors import FieldProblem, InvalidInput, NotFound
from metersync.service.guard import (
    Handler,
    epoch,
    guard,
    json_body,
    merge,
    positive,
    writes_refused,
)
from metersync.service.problems import problem
from metersync.usage.aggregate import query_meter
from metersync.usage.ingest import ingest_events
from metersync.usage.retention import pruned_problem

WINDOW_SIZES = {"MINUTE": 60, "HOUR": 3600, "DAY": 86400}


def _objects(body: Any, what: str) -> list[dict[str, Any]]:
    """One JSON object or a list of them (upsert's batch form)."""
    items = body if isinstance(body, list) else [body]
    wrong = [
        FieldProblem(f"[{i}]" if isinstance(body, list) else "body", f"must be {what} object")
        for i, item in enumerate(items)
        if not isinstance(item, dict)
    ]
    if wrong:
        raise InvalidInput(wrong)
    return items


def api_routes(
    catalog: Catalog,
    meters: Sequence[Meter],
    tokens: Callable[[], list[str]],
    *,
    loaded_at: datetime | None = None,
    upstream: str | None = None,
) -> list[Route]:
    """`loaded_at`: when the meters' configuration was read (their createdAt and updatedAt:
    meters live in the configuration, not in the database)."""
    configured = loaded_at or datetime.now(UTC)

    guarded = guard(tokens)

    def call(fn: Callable[..., Any], *args: Any, **kwargs: Any) -> Awaitable[Any]:
        return run_in_threadpool(fn, *args, **kwargs)

    # -- subjects ----------------------------------------------------------------------------

    async def list_subjects(_: Request) -> Response:
        subjects = await call(catalog.list_subjects)
        return JSONResponse([s.to_openmeter() for s in subjects])

    async def upsert_subjects(request: Request) -> Response:
        items = _objects(await json_body(request), "a subject")
        written = [await call(catalog.upsert_subject, item) for item in items]
        return JSONResponse([w.record.to_openmeter() for w in written])

    def find_subject(id_or_key: str) -> Subject:
        return by_id_or_key(catalog.get_subject, catalog.list_subjects, id_or_key)

    async def get_subject(request: Request) -> Response:
        subject = await call(find_subject, request.path_params["key"])
        return JSONResponse(subject.to_openmeter())

    async def delete_subject(request: Request) -> Response:
        subject = await call(find_subject, request.path_params["key"])
        await call(catalog.delete_subject, subject.key)
        return Response(status_code=204)

    # -- customers ---------------------------------------------------------------------------

    def find_customer(id_or_key: str) -> Customer:
        return by_id_or_key(catalog.get_customer, catalog.list_customers, id_or_key)

    async def list_customers(request: Request) -> Response:
        page = positive(request, "page", 1)
        size = positive(request, "pageSize", 100)
        if size > 1000:
            raise InvalidInput([FieldProblem("pageSize", f"at most 1000, got {size}")])
        customers = await call(catalog.list_customers)
        start = (page - 1) * size
        return JSONResponse(
            {
                "page": page,
                "pageSize": size,
                "totalCount": len(customers),
                "items": [c.to_openmeter() for c in customers[start : start + size]],
            }
        )

    async def create_customer(request: Request) -> Response:
        body = await json_body(request)
        if not isinstance(body, dict):
            raise InvalidInput([FieldProblem("body", "must be a customer object")])
        written = await call(catalog.create_customer, body)
        return JSONResponse(written.record.to_openmeter(), status_code=201)

    async def get_customer(request: Request) -> Response:
        customer = await call(find_customer, request.path_params["id_or_key"])
        return JSONResponse(customer.to_openmeter())

    async def replace_customer(request: Request) -> Response:
        existing = await call(find_customer, request.path_params["id_or_key"])
        body = await json_body(request)
        if not isinstance(body, dict):
            raise InvalidInput([FieldProblem("body", "must be a customer object")])
        written = await call(catalog.put_customer, {**body, "key": existing.key})
        return JSONResponse(written.record.to_openmeter())

    async def delete_customer(request: Request) -> Response:
        existing = await call(find_customer, request.path_params["id_or_key"])
        await call(catalog.delete_customer, existing.key)
        return Response(status_code=204)

    # -- events and meters -------------------------------------------------------------------

    async def ingest(request: Request) -> Response:
        body = await json_body(request)
        # Each event is checked on its own (ingest_events rejects a non-object, naming it).
        events = body if isinstance(body, list) else [body]
        report = await call(ingest_events, catalog, list(meters), events)
        if report.rejections:
            reasons = "; ".join(str(r) for r in report.rejections)
            return problem(request, 400, "Bad Request", reasons)
        return Response(status_code=204)

    async def list_meters(_: Request) -> Response:
        return JSONResponse([_meter_json(m, configured) for m in meters])

    async def query(request: Request) -> Response:
        slug = request.path_params["slug"]
        meter = next((m for m in meters if slug in (m.slug, meter_id(m.slug))), None)
        if meter is None:
            raise NotFound(f"meter {slug!r} is not configured")
        window_name = request.query_params.get("windowSize", "HOUR").upper()
        if window_name not in WINDOW_SIZES:
            raise InvalidInput([], record=f"windowSize: one of {', '.join(WINDOW_SIZES)}")
        window_s = WINDOW_SIZES[window_name]
        now = int(datetime.now(UTC).timestamp())
        end = epoch(request, "to", now)
        start = epoch(request, "from", end - 86400)
        if start > end:
            given = "to" if "to" in request.query_params else "to (now, when not given)"
            raise InvalidInput([FieldProblem("from", f"must not be after {given}")])
        pruned = await call(pruned_problem, catalog.store, start // window_s * window_s)
        if pruned is not None:
            raise InvalidInput([FieldProblem("from", pruned)])
        customer = None
        customer_id = request.query_params.get("filterCustomerId")
        if customer_id:
            try:
                found = await call(find_customer, customer_id)
            except InvalidInput as exc:
                raise InvalidInput([FieldProblem("filterCustomerId", str(exc))]) from None
            customer = (found.key, list(found.subject_keys))
        rows = await call(
            query_meter,
            catalog.store,
            meter,
            customer=customer,
            start=start // window_s * window_s,
            end=end,
            window_s=window_s,
            group=bool(request.query_params.getlist("groupBy")),
        )
        return JSONResponse(
            {
                "from": _stamp(start),
                "to": _stamp(end),
                "windowSize": window_name,
                "data": [r.to_openmeter(customer_id) for r in rows],
            }
        )

    routes: list[tuple[str, Handler, list[str]]] = [
        ("/api/v1/subjects", list_subjects, ["GET"]),
        ("/api/v1/subjects", upsert_subjects, ["POST"]),
        ("/api/v1/subjects/{key}", get_subject, ["GET"]),
        ("/api/v1/subjects/{key}", delete_subject, ["DELETE"]),
        ("/api/v1/customers", list_customers, ["GET"]),
        ("/api/v1/customers", create_customer, ["POST"]),
        ("/api/v1/customers/{id_or_key}", get_customer, ["GET"]),
        ("/api/v1/customers/{id_or_key}", replace_customer, ["PUT"]),
        ("/api/v1/customers/{id_or_key}", delete_customer, ["DELETE"]),
        ("/api/v1/events", ingest, ["POST"]),
        ("/api/v1/meters", list_meters, ["GET"]),
        ("/api/v1/meters/{slug}/query", query, ["GET"]),
    ]
    # With OpenMeter as the source, the catalog and usage come from it: what is written here
    # would be overwritten by the next pull (a customer created here, deleted by it).
    return merge(writes_refused(routes, upstream), guarded)


RecordT = TypeVar("RecordT", Subject, Customer)


def by_id_or_key(
    get: Callable[[str], RecordT], list_all: Callable[[], list[RecordT]], id_or_key: str
) -> RecordT:
    """OpenMeter's {idOrKey}: the key first, then the id (a ULID)."""
    try:
        return get(id_or_key)
    except NotFound:
        for record in list_all():
            if record.id == id_or_key:
                return record
        raise


def meter_id(slug: str) -> str:
    """A stable ULID for a configured meter: OpenMeter's meters have one, ours have a slug."""
    return str(ULID.from_bytes(bytes(6) + hashlib.sha256(slug.encode()).digest()[:10]))


def _meter_json(meter: Meter, configured: datetime) -> dict[str, Any]:
    settings = meter.settings
    stamp = configured.isoformat(timespec="milliseconds").replace("+00:00", "Z")
    out: dict[str, Any] = {
        "id": meter_id(settings.slug),
        "createdAt": stamp,
        "updatedAt": stamp,
        "key": settings.slug,
        "slug": settings.slug,
        "name": settings.slug,
        "eventType": settings.event_type,
        "aggregation": settings.aggregation.value,
        "groupBy": dict(settings.group_by),
        "windowSize": "HOUR",
    }
    if settings.value_property:
        out["valueProperty"] = settings.value_property
    if settings.description:
        out["description"] = settings.description
    return out


def _stamp(seconds: int) -> str:
    return datetime.fromtimestamp(seconds, UTC).isoformat().replace("+00:00", "Z")
