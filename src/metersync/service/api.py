"""The OpenMeter-compatible API (v1 shapes of OpenMeter's openapi.yaml), so that existing
OpenMeter clients work against metersync unchanged: subjects, customers, events and meters.

Thin: each route parses the request, calls the catalog, ingest or aggregation function the CLI
calls too, and renders OpenMeter's JSON. Errors are problem+json (RFC 7807) with OpenMeter's
status codes. Every route needs a bearer token from `http.tokens`.
"""

from __future__ import annotations

import hashlib
import hmac
import json
from collections.abc import Awaitable, Callable, Sequence
from datetime import UTC, datetime
from typing import Any, TypeVar

from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route
from ulid import ULID

from metersync.catalog import Catalog
from metersync.catalog.views import Customer, Subject
from metersync.errors import Conflict, InvalidInput, MetersyncError, NotFound
from metersync.usage.aggregate import query_meter
from metersync.usage.ingest import ingest_events
from metersync.usage.meters import Meter

PROBLEM = "application/problem+json"
WINDOW_SIZES = {"MINUTE": 60, "HOUR": 3600, "DAY": 86400}
Handler = Callable[[Request], Awaitable[Response]]


def problem(request: Request, status: int, title: str, detail: str) -> JSONResponse:
    return JSONResponse(
        {
            "type": "about:blank",
            "title": title,
            "status": status,
            "detail": detail,
            "instance": request.url.path,
        },
        status_code=status,
        media_type=PROBLEM,
    )


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

    def guarded(handler: Handler) -> Handler:
        """Bearer-token check, and catalog errors as problem+json."""

        async def run(request: Request) -> Response:
            header = request.headers.get("authorization", "")
            given = header.removeprefix("Bearer ").strip() if header.startswith("Bearer ") else ""
            if not given or not any(hmac.compare_digest(given, t) for t in tokens()):
                return problem(request, 401, "Unauthorized", "a valid bearer token is required")
            try:
                return await handler(request)
            except InvalidInput as exc:
                return problem(request, 400, "Bad Request", str(exc))
            except NotFound as exc:
                return problem(request, 404, "Not Found", str(exc))
            except Conflict as exc:
                return problem(request, 409, "Conflict", str(exc))
            except json.JSONDecodeError as exc:
                return problem(request, 400, "Bad Request", f"the body is not JSON: {exc}")
            except MetersyncError as exc:
                return problem(request, 500, "Internal Server Error", str(exc))

        return run

    def call(fn: Callable[..., Any], *args: Any, **kwargs: Any) -> Awaitable[Any]:
        return run_in_threadpool(fn, *args, **kwargs)

    # -- subjects ----------------------------------------------------------------------------

    async def list_subjects(_: Request) -> Response:
        subjects = await call(catalog.list_subjects)
        return JSONResponse([s.to_openmeter() for s in subjects])

    async def upsert_subjects(request: Request) -> Response:
        body = json.loads(await request.body())
        items = body if isinstance(body, list) else [body]
        written = [await call(catalog.upsert_subject, item) for item in items]
        return JSONResponse([w.record.to_openmeter() for w in written])

    def find_subject(id_or_key: str) -> Subject:
        return _by_id_or_key(catalog.get_subject, catalog.list_subjects, id_or_key)

    async def get_subject(request: Request) -> Response:
        subject = await call(find_subject, request.path_params["key"])
        return JSONResponse(subject.to_openmeter())

    async def delete_subject(request: Request) -> Response:
        subject = await call(find_subject, request.path_params["key"])
        await call(catalog.delete_subject, subject.key)
        return Response(status_code=204)

    # -- customers ---------------------------------------------------------------------------

    def find_customer(id_or_key: str) -> Customer:
        return _by_id_or_key(catalog.get_customer, catalog.list_customers, id_or_key)

    async def list_customers(request: Request) -> Response:
        page = _positive(request, "page", 1)
        size = _positive(request, "pageSize", 100)
        if size > 1000:
            raise InvalidInput([], record="pageSize: at most 1000")
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
        written = await call(catalog.create_customer, json.loads(await request.body()))
        return JSONResponse(written.record.to_openmeter(), status_code=201)

    async def get_customer(request: Request) -> Response:
        customer = await call(find_customer, request.path_params["id_or_key"])
        return JSONResponse(customer.to_openmeter())

    async def replace_customer(request: Request) -> Response:
        existing = await call(find_customer, request.path_params["id_or_key"])
        body = json.loads(await request.body())
        if not isinstance(body, dict):
            raise InvalidInput([], record="the body must be a customer object")
        written = await call(catalog.put_customer, {**body, "key": existing.key})
        return JSONResponse(written.record.to_openmeter())

    async def delete_customer(request: Request) -> Response:
        existing = await call(find_customer, request.path_params["id_or_key"])
        await call(catalog.delete_customer, existing.key)
        return Response(status_code=204)

    # -- events and meters -------------------------------------------------------------------

    async def ingest(request: Request) -> Response:
        body = json.loads(await request.body())
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
        end = _time(request, "to", now)
        start = _time(request, "from", end - 86400)
        customer = None
        customer_id = request.query_params.get("filterCustomerId")
        if customer_id:
            found = await call(find_customer, customer_id)
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
    if upstream is not None:
        # The catalog and usage come from an upstream (OpenMeter): what is written here would
        # be overwritten by the next pull (a customer created here, deleted by it).
        routes = [
            (path, _refused(upstream) if methods != ["GET"] else handler, methods)
            for path, handler, methods in routes
        ]
    return _merge(routes, guarded)


def _refused(reason: str) -> Handler:
    async def refuse(request: Request) -> Response:
        return problem(request, 409, "Conflict", reason)

    return refuse


RecordT = TypeVar("RecordT", Subject, Customer)


def _by_id_or_key(
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


def _merge(
    routes: list[tuple[str, Handler, list[str]]], guarded: Callable[[Handler], Handler]
) -> list[Route]:
    """One Route per path, dispatching on the method (Starlette matches the first path)."""
    by_path: dict[str, dict[str, Handler]] = {}
    for path, handler, methods in routes:
        for method in methods:
            by_path.setdefault(path, {})[method] = guarded(handler)

    def dispatch(handlers: dict[str, Handler]) -> Handler:
        async def run(request: Request) -> Response:
            return await handlers[request.method](request)

        return run

    return [Route(path, dispatch(h), methods=list(h)) for path, h in by_path.items()]


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


def _positive(request: Request, name: str, default: int) -> int:
    raw = request.query_params.get(name)
    if raw is None:
        return default
    if not raw.isdigit() or int(raw) < 1:
        raise InvalidInput([], record=f"{name}: a whole number of at least 1, got {raw!r}")
    return int(raw)


def _time(request: Request, name: str, default: int) -> int:
    raw = request.query_params.get(name)
    if raw is None:
        return default
    try:
        moment = datetime.fromisoformat(raw.replace("Z", "+00:00"))
    except ValueError:
        raise InvalidInput([], record=f"{name}: {raw!r} is not an RFC 3339 time") from None
    if moment.tzinfo is None:
        raise InvalidInput([], record=f"{name}: {raw!r} has no time zone")
    return int(moment.timestamp())


def _stamp(seconds: int) -> str:
    return datetime.fromtimestamp(seconds, UTC).isoformat().replace("+00:00", "Z")
