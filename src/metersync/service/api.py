"""The OpenMeter-compatible API (v1 shapes of OpenMeter's openapi.yaml), so that existing
OpenMeter clients work against metersync unchanged: subjects, customers, events and meters.

Thin: each route parses the request, calls the catalog, ingest or aggregation function the CLI
calls too, and renders OpenMeter's JSON. Errors are problem+json (RFC 7807) with OpenMeter's
status codes, and 415 for a body that is not JSON; each names its request (`instance`,
service/problems.py). Bad input of any kind is a 4xx naming the field or the problem: bodies
are read by `json_body` alone, query values are matched in full before they are converted.
Every route needs a bearer token from `http.tokens`. With OpenMeter as the source (`upstream`),
only the GETs serve: every write answers 409 naming OpenMeter, since the next pull would undo
it. The meter query reads local events, not OpenMeter's figures.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import re
from collections.abc import Awaitable, Callable, Sequence
from datetime import UTC, datetime
from typing import Any, TypeVar

from sqlalchemy.exc import OperationalError
from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route
from ulid import ULID

from metersync.catalog import Catalog
from metersync.catalog.meters import Meter
from metersync.catalog.views import Customer, Subject
from metersync.errors import (
    Conflict,
    DatabaseUnavailable,
    FieldProblem,
    InvalidInput,
    MetersyncError,
    NotFound,
)
from metersync.logs import get_logger
from metersync.service.problems import problem
from metersync.usage.aggregate import query_meter
from metersync.usage.ingest import ingest_events
from metersync.usage.retention import pruned_problem

_log = get_logger("metersync.api")
WINDOW_SIZES = {"MINUTE": 60, "HOUR": 3600, "DAY": 86400}
Handler = Callable[[Request], Awaitable[Response]]


class UnsupportedMediaType(MetersyncError):
    """A request body in a media type the API does not read (415)."""


def _is_json_media_type(media_type: str) -> bool:
    # application/json, and its structured-syntax suffix: OpenMeter's
    # application/cloudevents+json and application/cloudevents-batch+json.
    return media_type == "application/json" or (
        media_type.startswith("application/") and media_type.endswith("+json")
    )


def _reject_constant(name: str) -> Any:
    raise ValueError(f"{name} is not a JSON value")


async def json_body(request: Request) -> Any:
    """The request's body as JSON: the one place the API reads a body, so that every malformed
    one is a 4xx naming what is wrong. JSON is UTF-8 (RFC 8259): the bytes are decoded as such
    and nothing else (json.loads alone would guess UTF-16 or UTF-32, and its UnicodeDecodeError
    on bad bytes is not a JSONDecodeError: that was a 500)."""
    content_type = request.headers.get("content-type")
    if content_type is not None:  # a body without a Content-Type is read as JSON
        media_type, _, parameters = content_type.partition(";")
        media_type = media_type.strip().lower()
        if not _is_json_media_type(media_type):
            raise UnsupportedMediaType(
                f"Content-Type {media_type or content_type!r} is not JSON: send application/json"
            )
        for parameter in parameters.split(";"):
            name, _, value = parameter.partition("=")
            charset = value.strip().strip('"').lower()
            if name.strip().lower() == "charset" and charset not in ("utf-8", "utf8"):
                raise UnsupportedMediaType(f"charset {charset!r}: JSON bodies are UTF-8")
    raw = await request.body()
    if not raw.strip():
        raise InvalidInput([FieldProblem("body", "a JSON body is required")])
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise InvalidInput(
            [FieldProblem("body", f"not valid UTF-8 ({exc.reason} at byte {exc.start})")]
        ) from None
    try:
        return json.loads(text, parse_constant=_reject_constant)
    except RecursionError:
        raise InvalidInput([FieldProblem("body", "not JSON: nested too deeply")]) from None
    except ValueError as exc:  # JSONDecodeError, NaN or Infinity, an integer too long to read
        raise InvalidInput([FieldProblem("body", f"not JSON: {exc}")]) from None


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

    def guarded(handler: Handler) -> Handler:
        """Bearer-token check, and catalog errors as problem+json."""

        async def run(request: Request) -> Response:
            header = request.headers.get("authorization", "")
            given = header.removeprefix("Bearer ").strip() if header.startswith("Bearer ") else ""
            # As bytes: compare_digest refuses non-ASCII str (a TypeError, that was a 500), and
            # Starlette reads header bytes as Latin-1, so this gets back what was sent.
            sent = given.encode("latin-1")
            if not sent or not any(hmac.compare_digest(sent, t.encode()) for t in tokens()):
                return problem(request, 401, "Unauthorized", "a valid bearer token is required")
            try:
                return await handler(request)
            except InvalidInput as exc:
                return problem(request, 400, "Bad Request", str(exc))
            except NotFound as exc:
                return problem(request, 404, "Not Found", str(exc))
            except Conflict as exc:
                return problem(request, 409, "Conflict", str(exc))
            except UnsupportedMediaType as exc:
                return problem(request, 415, "Unsupported Media Type", str(exc))
            except DatabaseUnavailable as exc:
                return problem(request, 503, "Service Unavailable", str(exc))
            except OperationalError as exc:  # unreachable, or (SQLite) locked for too long
                _log.warning("api.database_unavailable", error=str(exc.orig or exc))
                return problem(request, 503, "Service Unavailable", "the database is unavailable")
            except MetersyncError as exc:
                _log.error("api.error", error=str(exc), kind=type(exc).__name__)
                return problem(request, 500, "Internal Server Error", str(exc))
            # Anything else is answered by RequestContext (service/problems.py): a logged 500.

        return run

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
        end = _time(request, "to", now)
        start = _time(request, "from", end - 86400)
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


# Query parameters arrive as any text at all: each is matched in full before it is converted
# (str.isdigit() says yes to "²", which int() refuses; int() refuses 5,000 digits; a date near
# year 1 or 9999 is readable but its window, or the day before it, is not).
_WHOLE = re.compile(r"[0-9]{1,9}")  # at most 999,999,999: pages and sizes have no use for more
_RFC3339 = re.compile(
    r"[0-9]{4}-[0-9]{2}-[0-9]{2}[Tt][0-9]{2}:[0-9]{2}:[0-9]{2}"  # date and time
    r"(?:\.[0-9]{1,9})?"  # fraction
    r"(?:[Zz]|[+-][0-9]{2}:[0-9]{2})"  # offset (a "+" must be sent as %2B in a query)
)
EARLIEST = datetime(1970, 1, 1, tzinfo=UTC)  # no usage is older (ingest refuses it)
LATEST = datetime(9999, 1, 1, tzinfo=UTC)  # leaves room for a window and a day either side


def _shown(raw: str) -> str:
    """A query value quoted in a problem's detail, cut short when it is long."""
    return repr(raw) if len(raw) <= 40 else repr(raw[:40]) + "…"


def _positive(request: Request, name: str, default: int) -> int:
    raw = request.query_params.get(name)
    if raw is None:
        return default
    if not _WHOLE.fullmatch(raw) or int(raw) < 1:
        raise InvalidInput(
            [FieldProblem(name, f"a whole number from 1 to 999999999, got {_shown(raw)}")]
        )
    return int(raw)


def _time(request: Request, name: str, default: int) -> int:
    raw = request.query_params.get(name)
    if raw is None:
        return default
    if not _RFC3339.fullmatch(raw):
        raise InvalidInput(
            [FieldProblem(name, f"{_shown(raw)} is not an RFC 3339 time (2024-01-31T00:00:00Z)")]
        )
    # fromisoformat reads at most 6 fractional digits; RFC 3339 allows more.
    trimmed = re.sub(r"(\.[0-9]{6})[0-9]+", r"\1", raw.upper().replace("Z", "+00:00"))
    try:
        moment = datetime.fromisoformat(trimmed)
        if not EARLIEST <= moment < LATEST:
            raise ValueError("out of range")
    except (ValueError, OverflowError):
        raise InvalidInput(
            [FieldProblem(name, f"{_shown(raw)} is not a time between 1970 and 9999")]
        ) from None
    return int(moment.timestamp())


def _stamp(seconds: int) -> str:
    return datetime.fromtimestamp(seconds, UTC).isoformat().replace("+00:00", "Z")
