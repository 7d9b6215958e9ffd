"""OpenMeter's entitlement API: features, customer entitlements (v2), grants, values, history,
resets and customer access, and the deprecated subject endpoints (v1).

Thin, like service/api.py: each route reads the request (service/guard.py), calls the
EntitlementBook (writes and records) or the entitlement values, and renders OpenMeter's JSON
(the entitlements package's shapes, shared with the CLI), amounts with their exact digits
(`ExactJSONResponse`). Errors are problem+json: 400 naming the field, 404 for an
unknown customer, feature, entitlement or grant, 409 for a second live entitlement of a
customer and feature, 412 for a deleted customer or a subject without one. With OpenMeter as
the source (`upstream`), every write answers 409 naming it.

The subject endpoints (`/api/v1/subjects/{subjectIdOrKey}/entitlements…`, deprecated by
OpenMeter) resolve the subject to its customer and serve the same functions in the v1 shapes.
Each answer carries `Deprecation` (RFC 9745), `Sunset` (RFC 8594) and a `Link` to the customer
endpoint that replaces it, and each caller (token and host) is warned once in the log. With
`service.legacy_subject_entitlements = false` they answer 404.
"""

from __future__ import annotations

import hashlib
from collections import OrderedDict
from collections.abc import Awaitable, Callable, Sequence
from datetime import UTC, datetime
from typing import Any, Literal, cast
from urllib.parse import quote
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from metersync.catalog import Catalog
from metersync.catalog.views import Subject
from metersync.entitlements import (
    Entitlement,
    EntitlementBook,
    EntitlementGrant,
    EntitlementValues,
    Feature,
    Kind,
    access_json,
    entitlement_json,
    exact_json,
    feature_json,
    grant_json,
    history_json,
    last_reset,
    value_json,
)
from metersync.errors import FieldProblem, InvalidInput, PreconditionFailed
from metersync.logs import get_logger
from metersync.service.api import by_id_or_key
from metersync.service.guard import (
    Guard,
    Handler,
    RouteSpec,
    bearer_token,
    choice,
    flag,
    guard,
    identifier,
    identifiers,
    json_object,
    merge,
    moment,
    positive,
    shown,
    writes_refused,
)
from metersync.service.problems import problem

_log = get_logger("metersync.api")

Window = Literal["HOUR", "DAY", "MONTH"]
WINDOWS: tuple[Window, ...] = ("HOUR", "DAY", "MONTH")
ORDERS = ("ASC", "DESC")

# The subject endpoints' retirement, as OpenMeter announced it: deprecated since 2025-09-01,
# gone after 2025-10-31.
DEPRECATION = "@1756684800"  # RFC 9745: 2025-09-01T00:00:00Z in unix seconds
SUNSET = "Sat, 01 Nov 2025 00:00:00 GMT"  # RFC 8594: an HTTP-date
WARNED_CALLERS = 1024  # callers remembered as warned; the oldest is forgotten first

JSON = dict[str, Any]


class ExactJSONResponse(JSONResponse):
    """JSON whose Decimal amounts go out as numbers of the same digits (`0.1` as `0.1`, never
    a float's nearest), encoded as the CLI's `--json` encodes them."""

    def render(self, content: Any) -> bytes:
        return exact_json(content)


# A customer route's work: the request, the customer (id or key), and the subject's key when
# it is called through a subject endpoint (the answer then takes the v1 shape).
CustomerHandler = Callable[[Request, str, str | None], Awaitable[Response]]


def entitlement_routes(
    catalog: Catalog,
    book: EntitlementBook,
    values: EntitlementValues,
    tokens: Callable[[], list[str]],
    *,
    upstream: str | None = None,
    legacy_subjects: bool = True,
) -> list[Route]:
    guarded = guard(tokens)

    def call(fn: Callable[..., Any], *args: Any, **kwargs: Any) -> Awaitable[Any]:
        return run_in_threadpool(fn, *args, **kwargs)

    def entitlement_view(entitlement: Entitlement, subject_key: str | None = None) -> JSON:
        resets = book.resets_of(entitlement.id) if entitlement.kind is Kind.METERED else []
        return entitlement_json(entitlement, resets, _now(), subject_key=subject_key)

    async def render(entitlement: Entitlement, subject_key: str | None = None) -> JSON:
        view: JSON = await call(entitlement_view, entitlement, subject_key)
        return view

    async def render_all(
        entitlements: Sequence[Entitlement], subject_key: str | None = None
    ) -> list[JSON]:
        def views() -> list[JSON]:
            return [entitlement_view(e, subject_key) for e in entitlements]

        rendered: list[JSON] = await call(views)
        return rendered

    # -- features ------------------------------------------------------------------------------

    async def list_features(request: Request) -> Response:
        slugs = set(identifiers(request, "meterSlug"))
        archived = flag(request, "includeArchived")
        features: list[Feature] = await call(book.list_features, include_archived=archived)
        if slugs:
            features = [f for f in features if f.meter_slug in slugs]
        features = _ordered(request, features, FEATURE_ORDER, "createdAt")
        if "page" in request.query_params or "pageSize" in request.query_params:
            return ExactJSONResponse(_page(request, features, feature_json))
        return ExactJSONResponse([feature_json(f) for f in _limited(request, features)])

    async def create_feature(request: Request) -> Response:
        body = await json_object(request, "a feature")
        feature = await call(book.create_feature, body)
        return ExactJSONResponse(feature_json(feature), status_code=201)

    async def get_feature(request: Request) -> Response:
        feature = await call(book.get_feature, _path(request, "featureId"))
        return ExactJSONResponse(feature_json(feature))

    async def archive_feature(request: Request) -> Response:
        await call(book.archive_feature, _path(request, "featureId"))
        return Response(status_code=204)

    # -- a customer's entitlements (v2, and v1 through a subject) -----------------------------

    async def list_customer_entitlements(
        request: Request, customer: str, subject_key: str | None
    ) -> Response:
        deleted = flag(request, "includeDeleted")
        found = await call(book.list_entitlements, customer=customer, include_deleted=deleted)
        if subject_key is not None:  # v1: a plain list
            return ExactJSONResponse(await render_all(found, subject_key))
        found = _ordered(request, found, ENTITLEMENT_ORDER, "createdAt")
        page = _page(request, found, lambda e: e)
        page["items"] = await render_all(page["items"])
        return ExactJSONResponse(page)

    async def create_entitlement(
        request: Request, customer: str, subject_key: str | None
    ) -> Response:
        body = await json_object(request, "an entitlement")
        if subject_key is not None:
            body = _v1_entitlement_input(body)
        created = await call(book.create_entitlement, customer, body)
        return ExactJSONResponse(await render(created, subject_key), status_code=201)

    async def get_customer_entitlement(
        request: Request, customer: str, subject_key: str | None
    ) -> Response:
        found = await call(book.get_entitlement, _entitlement(request), customer=customer)
        return ExactJSONResponse(await render(found, subject_key))

    async def delete_entitlement(
        request: Request, customer: str, subject_key: str | None
    ) -> Response:
        found = await call(book.get_entitlement, _entitlement(request), customer=customer)
        await call(book.delete_entitlement, found.id, customer=customer)
        return Response(status_code=204)

    async def override_entitlement(
        request: Request, customer: str, subject_key: str | None
    ) -> Response:
        body = await json_object(request, "an entitlement")
        if subject_key is not None:
            body = _v1_entitlement_input(body)
        created = await call(book.override_entitlement, customer, _entitlement(request), body)
        return ExactJSONResponse(await render(created, subject_key), status_code=201)

    async def list_entitlement_grants(
        request: Request, customer: str, subject_key: str | None
    ) -> Response:
        deleted = flag(request, "includeDeleted")
        found: list[EntitlementGrant] = await call(
            book.list_grants,
            customer=customer,
            entitlement=_entitlement(request),
            include_deleted=deleted,
        )
        now = _now()
        if subject_key is not None:  # v1: a plain list, by updatedAt unless told otherwise
            found = _ordered(request, found, GRANT_ORDER, "updatedAt")
            return ExactJSONResponse([grant_json(g, now) for g in found])
        found = _ordered(request, found, GRANT_ORDER, "createdAt")
        return ExactJSONResponse(_page(request, found, lambda g: grant_json(g, now)))

    async def create_grant(request: Request, customer: str, subject_key: str | None) -> Response:
        body = await json_object(request, "a grant")
        if subject_key is not None and "expiration" not in body:
            raise InvalidInput(
                [
                    FieldProblem(
                        "expiration", "is required here (v1); the v2 endpoint has it optional"
                    )
                ]
            )
        grant = await call(book.create_grant, customer, _entitlement(request), body)
        return ExactJSONResponse(grant_json(grant, _now()), status_code=201)

    async def entitlement_value(
        request: Request, customer: str, subject_key: str | None
    ) -> Response:
        at = moment(request, "time")
        value = await call(values.value, customer, _entitlement(request), at)
        return ExactJSONResponse(value_json(value))

    async def entitlement_history(
        request: Request, customer: str, subject_key: str | None
    ) -> Response:
        raw_window = request.query_params.get("windowSize")
        if raw_window is None:
            raise InvalidInput([FieldProblem("windowSize", "is required (HOUR, DAY or MONTH)")])
        window = cast(Window, choice(request, "windowSize", WINDOWS, "HOUR"))
        tz = _time_zone(request)
        start, end = moment(request, "from"), moment(request, "to")
        end = end or _now()
        entitlement = _entitlement(request)
        if start is None:  # OpenMeter: from the last reset (or the start of measurement)
            start = await call(_last_reset, customer, entitlement)
        if start >= end:
            given = "to" if "to" in request.query_params else "to (now, when not given)"
            raise InvalidInput([FieldProblem("from", f"must be before {given}")])
        history = await call(
            values.history, customer, entitlement, start=start, end=end, window=window, tz=tz
        )
        return ExactJSONResponse(history_json(history))

    def _last_reset(customer: str, entitlement: str) -> datetime:
        found = book.get_entitlement(entitlement, customer=customer)
        if found.kind is not Kind.METERED:
            raise InvalidInput(
                [FieldProblem("entitlement", f"a {found.kind} entitlement has no history")]
            )
        return last_reset(found, book.resets_of(found.id))

    async def reset_usage(request: Request, customer: str, subject_key: str | None) -> Response:
        body: Any = {}
        if (await request.body()).strip():  # OpenMeter requires a body; {} is all it needs
            body = await json_object(request, "a reset")
        await call(book.record_reset, customer, _entitlement(request), body)
        return Response(status_code=204)

    # -- across customers ------------------------------------------------------------------------

    async def list_entitlements(request: Request) -> Response:
        features = set(identifiers(request, "feature"))
        keys = set(identifiers(request, "customerKeys"))
        ids = set(identifiers(request, "customerIds"))
        kinds = set(request.query_params.getlist("entitlementType"))
        unknown = sorted(kinds - {k.value for k in Kind})
        if unknown:
            raise InvalidInput(
                [FieldProblem("entitlementType", f"metered, boolean or static, got {unknown[0]!r}")]
            )
        inactive = flag(request, "excludeInactive")
        found: list[Entitlement] = await call(book.list_entitlements)
        now = _now()
        found = [
            e
            for e in found
            if (not features or features & {e.feature_key, e.feature_id})
            and (not keys or e.customer_key in keys)
            and (not ids or e.customer_id in ids)
            and (not kinds or e.kind.value in kinds)
            and (not inactive or e.active_at(now))
        ]
        found = _ordered(request, found, ENTITLEMENT_ORDER, "createdAt")
        page = _page(request, found, lambda e: e)
        page["items"] = await render_all(page["items"])
        return ExactJSONResponse(page)

    async def get_entitlement(request: Request) -> Response:
        found = await call(book.get_entitlement, _path(request, "entitlementId"))
        return ExactJSONResponse(await render(found))

    async def list_grants(request: Request) -> Response:
        features = set(identifiers(request, "feature"))
        customers = identifiers(request, "customer")
        deleted = flag(request, "includeDeleted")

        def read() -> list[EntitlementGrant]:
            if not customers:
                grants = book.list_grants(include_deleted=deleted)
            else:
                seen: dict[str, EntitlementGrant] = {}
                for customer in customers:
                    for g in book.list_grants(customer=customer, include_deleted=deleted):
                        seen[g.id] = g
                grants = list(seen.values())
            if features:
                of_feature = {
                    e.id
                    for e in book.list_entitlements(include_deleted=True)
                    if features & {e.feature_key, e.feature_id}
                }
                grants = [g for g in grants if g.entitlement_id in of_feature]
            return grants

        found: list[EntitlementGrant] = await call(read)
        found = _ordered(request, found, GRANT_ORDER, "createdAt")
        now = _now()
        return ExactJSONResponse(_page(request, found, lambda g: grant_json(g, now)))

    async def void_grant(request: Request) -> Response:
        if "at" in request.query_params:
            moment(request, "at")  # a bad time is named as such first
            raise InvalidInput([FieldProblem("at", "a grant is voided now; another time is not")])
        await call(book.void_grant, _path(request, "grantId"))
        return Response(status_code=204)

    async def customer_access(request: Request) -> Response:
        customer = _path(request, "customerIdOrKey")
        found = await call(values.access, customer)
        return ExactJSONResponse(access_json(found))

    async def customer_value(request: Request) -> Response:
        at = moment(request, "time")
        customer = _path(request, "customerIdOrKey")
        value = await call(values.value, customer, _path(request, "featureKey"), at)
        return ExactJSONResponse(value_json(value))

    # -- the doors -------------------------------------------------------------------------------

    def by_customer(handler: CustomerHandler) -> Handler:
        async def run(request: Request) -> Response:
            return await handler(request, _path(request, "customerIdOrKey"), None)

        return run

    warned: OrderedDict[str, None] = OrderedDict()

    def warn_once(request: Request, subject: Subject, successor: str) -> None:
        host = request.client.host if request.client is not None else "unknown"
        token = hashlib.sha256(bearer_token(request)).hexdigest()[:12]
        caller = f"{token}@{host}"
        if caller in warned:
            warned.move_to_end(caller)
            return
        warned[caller] = None
        if len(warned) > WARNED_CALLERS:
            warned.popitem(last=False)
        _log.warning(
            "api.deprecated_subject_entitlements",
            caller_token=token,
            client=host,
            path=request.url.path,
            subject=subject.key,
            successor=successor,
            sunset=SUNSET,
        )

    def by_subject(handler: CustomerHandler) -> Handler:
        async def run(request: Request) -> Response:
            subject_ref = _path(request, "subjectIdOrKey")
            subject: Subject = await call(
                by_id_or_key, catalog.get_subject, catalog.list_subjects, subject_ref
            )
            if subject.customer_key is None:
                raise PreconditionFailed(
                    f"subject {subject.key!r} belongs to no customer: entitlements are a "
                    "customer's (attribute the subject to one)"
                )
            # The same path under the customer: /api/v1/subjects/{subject}/entitlements/…
            # becomes /api/v2/customers/{customer}/entitlements/….
            rest = request.url.path.removeprefix(f"/api/v1/subjects/{subject_ref}")
            customer = quote(subject.customer_key, safe="")
            successor = f"/api/v2/customers/{customer}{quote(rest, safe='/')}"
            request.scope.setdefault("state", {})["successor"] = successor
            warn_once(request, subject, successor)
            return await handler(request, subject.customer_key, subject.key)

        return run

    customer_routes: list[tuple[str, CustomerHandler, list[str]]] = [
        ("", list_customer_entitlements, ["GET"]),
        ("", create_entitlement, ["POST"]),
        ("/{entitlement}", get_customer_entitlement, ["GET"]),
        ("/{entitlement}", delete_entitlement, ["DELETE"]),
        ("/{entitlement}/grants", list_entitlement_grants, ["GET"]),
        ("/{entitlement}/grants", create_grant, ["POST"]),
        ("/{entitlement}/history", entitlement_history, ["GET"]),
        ("/{entitlement}/override", override_entitlement, ["PUT"]),
        ("/{entitlement}/reset", reset_usage, ["POST"]),
        ("/{entitlement}/value", entitlement_value, ["GET"]),
    ]
    v2_prefix = "/api/v2/customers/{customerIdOrKey}/entitlements"
    routes: list[RouteSpec] = [
        ("/api/v1/features", list_features, ["GET"]),
        ("/api/v1/features", create_feature, ["POST"]),
        ("/api/v1/features/{featureId}", get_feature, ["GET"]),
        ("/api/v1/features/{featureId}", archive_feature, ["DELETE"]),
        *((v2_prefix + path, by_customer(h), methods) for path, h, methods in customer_routes),
        ("/api/v2/entitlements", list_entitlements, ["GET"]),
        ("/api/v2/entitlements/{entitlementId}", get_entitlement, ["GET"]),
        ("/api/v2/grants", list_grants, ["GET"]),
        ("/api/v1/grants/{grantId}", void_grant, ["DELETE"]),
        ("/api/v1/customers/{customerIdOrKey}/access", customer_access, ["GET"]),
        (
            "/api/v1/customers/{customerIdOrKey}/entitlements/{featureKey}/value",
            customer_value,
            ["GET"],
        ),
    ]
    mounted = merge(writes_refused(routes, upstream), guarded)
    v1_prefix = "/api/v1/subjects/{subjectIdOrKey}/entitlements"
    legacy: list[RouteSpec] = [
        (v1_prefix + path, by_subject(h), methods) for path, h, methods in customer_routes
    ]
    if legacy_subjects:
        mounted += merge(writes_refused(legacy, upstream), _deprecated(guarded))
    else:
        mounted += merge(legacy, lambda _h: _turned_off)
    return mounted


# -- the deprecated subject endpoints ----------------------------------------------------------


def _deprecated(guarded: Guard) -> Guard:
    """The guard, and the deprecation headers on every answer (a problem too)."""

    def wrap(handler: Handler) -> Handler:
        inner = guarded(handler)

        async def run(request: Request) -> Response:
            response = await inner(request)
            response.headers["Deprecation"] = DEPRECATION
            response.headers["Sunset"] = SUNSET
            successor = request.scope.get("state", {}).get("successor")
            if successor is not None:
                response.headers["Link"] = f'<{successor}>; rel="successor-version"'
            return response

        return run

    return wrap


async def _turned_off(request: Request) -> Response:
    return problem(
        request,
        404,
        "Not Found",
        f"no such path: {request.url.path} (the subject entitlement endpoints are turned off by "
        "service.legacy_subject_entitlements: use /api/v2/customers/…/entitlements)",
    )


def _v1_entitlement_input(body: dict[str, Any]) -> dict[str, Any]:
    """The v1 create input is v2's but for the deprecated isUnlimited (false, or refused)."""
    unlimited = body.get("isUnlimited", False)
    if unlimited is not False:
        raise InvalidInput(
            [FieldProblem("isUnlimited", "unlimited entitlements are not supported")]
        )
    return {k: v for k, v in body.items() if k != "isUnlimited"}


# -- request values ------------------------------------------------------------------------------


def _now() -> datetime:
    return datetime.now(UTC)


def _path(request: Request, name: str) -> str:
    return identifier(request.path_params[name], name)


def _entitlement(request: Request) -> str:
    return identifier(request.path_params["entitlement"], "entitlementIdOrFeatureKey")


def _time_zone(request: Request) -> str:
    raw = request.query_params.get("windowTimeZone", "UTC")
    try:
        ZoneInfo(identifier(raw, "windowTimeZone"))
    except (ZoneInfoNotFoundError, ValueError):
        raise InvalidInput(
            [FieldProblem("windowTimeZone", f"{shown(raw)} is not an IANA time zone")]
        ) from None
    return raw


Order = dict[str, Callable[[Any], Any]]
FEATURE_ORDER: Order = {
    "id": lambda f: f.id,
    "key": lambda f: f.key,
    "name": lambda f: f.name,
    "createdAt": lambda f: (f.created_at, f.id),
    "updatedAt": lambda f: (f.updated_at, f.id),
}
ENTITLEMENT_ORDER: Order = {
    "createdAt": lambda e: (e.created_at, e.id),
    "updatedAt": lambda e: (e.updated_at, e.id),
}
GRANT_ORDER: Order = {
    "id": lambda g: g.id,
    "createdAt": lambda g: (g.created_at, g.id),
    "updatedAt": lambda g: (g.updated_at, g.id),
}


def _ordered(request: Request, items: list[Any], orders: Order, default: str) -> list[Any]:
    by = choice(request, "orderBy", tuple(orders), default)
    direction = choice(request, "order", ORDERS, "ASC")
    return sorted(items, key=orders[by], reverse=direction == "DESC")


def _limited(request: Request, items: list[Any]) -> list[Any]:
    """OpenMeter's offset and limit (1 to 1000, 100 unless told)."""
    offset = positive(request, "offset", 0, at_least=0)
    limit = _size(request, "limit")
    return items[offset : offset + limit]


def _size(request: Request, name: str) -> int:
    size = positive(request, name, 100)
    if size > 1000:
        raise InvalidInput([FieldProblem(name, f"at most 1000, got {size}")])
    return size


def _page(request: Request, items: list[Any], render: Callable[[Any], Any]) -> dict[str, Any]:
    """OpenMeter's paginated response: by page and pageSize, or by offset and limit when
    those are given instead."""
    if "page" not in request.query_params and (
        "offset" in request.query_params or "limit" in request.query_params
    ):
        offset = positive(request, "offset", 0, at_least=0)
        size = _size(request, "limit")
        page = offset // size + 1
    else:
        page = positive(request, "page", 1)
        size = _size(request, "pageSize")
        offset = (page - 1) * size
    return {
        "page": page,
        "pageSize": size,
        "totalCount": len(items),
        "items": [render(item) for item in items[offset : offset + size]],
    }
