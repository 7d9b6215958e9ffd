"""The OpenMeter emulator's knobs and request pipeline:

    outage (`down`) → authenticate → injected fault → latency → route → handler → answer

Handlers run without awaiting, so each request sees and changes the store atomically (the event
loop is the lock). Errors are RFC 7807 problems (application/problem+json), as OpenMeter's.
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
import random
import re
import secrets
import urllib.parse
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, fields, replace
from enum import StrEnum
from typing import Any

from metersync.testing._openmeter_entitlements import Entitlements
from metersync.testing._openmeter_query import MeterQuery, run_query
from metersync.testing._openmeter_store import BadRequest, NotFound, Problem, Store
from metersync.testing._server import Outcome, Request, Reset, Response

API = "/api/v1"
API_V2 = "/api/v2"
PROBLEM_JSON = "application/problem+json"
MAX_PAGE_SIZE = 1000  # Pagination.pageSize's maximum in the spec


class OpenMeterFaultKind(StrEnum):
    ERROR_500 = "500"  # a 500 problem; nothing was done
    ERROR_503 = "503"  # a 503 problem; nothing was done
    RESET = "reset"  # the connection is closed (RST) without an answer; nothing was done
    TIMEOUT = "timeout"  # the request is done; the answer comes `timeout_delay_s` later


@dataclass(frozen=True)
class OpenMeterConfig:
    latency_ms: float = 0.0
    jitter_ms: float = 0.0
    down: bool = False  # every request is answered 503 while True
    # Longer than clients wait (httpx's default is 5 s, most SDKs 30 s). The delay is slept by
    # the connection's own task, so the server keeps answering other requests meanwhile.
    timeout_delay_s: float = 35.0
    seed: int | None = None  # replays the same jitter
    request_log_size: int = 100_000

    def updated(self, changes: dict[str, Any]) -> OpenMeterConfig:
        """A copy with `changes` applied; unknown keys and bad values raise ValueError."""
        known = {f.name for f in fields(self)}
        unknown = sorted(set(changes) - known)
        if unknown:
            raise ValueError(
                f"unknown OpenMeter emulator setting {unknown[0]!r}; known: {sorted(known)}"
            )
        for name in ("latency_ms", "jitter_ms", "timeout_delay_s"):
            if name in changes and float(changes[name]) < 0:
                raise ValueError(f"{name} must not be negative")
        if "request_log_size" in changes and int(changes["request_log_size"]) < 1:
            raise ValueError("request_log_size must be at least 1")
        return replace(self, **changes)


@dataclass
class PendingFault:
    """A `fail_next` order: the next `remaining` requests whose path starts with `prefix`."""

    kind: OpenMeterFaultKind
    remaining: int
    prefix: str | None


@dataclass(frozen=True)
class Call:
    store: Store
    path_params: dict[str, str]
    query: dict[str, list[str]]
    headers: dict[str, str]
    body: bytes
    entitlements: Entitlements

    def one(self, name: str) -> str | None:
        values = self.query.get(name)
        return values[0] if values else None

    def integer(self, name: str, default: int, minimum: int, maximum: int) -> int:
        text = self.one(name)
        if text is None:
            return default
        try:
            value = int(text)
        except ValueError:
            raise BadRequest(f"invalid {name}: {text!r} is not an integer") from None
        if not minimum <= value <= maximum:
            raise BadRequest(f"invalid {name}: {value} is not within {minimum}..{maximum}")
        return value

    def boolean(self, name: str) -> bool:
        text = self.one(name)
        if text is None or text.lower() == "false":
            return False
        if text.lower() == "true":
            return True
        raise BadRequest(f"invalid {name}: {text!r} is not true or false")

    def json(self) -> Any:
        try:
            return json.loads(self.body)
        except ValueError as exc:
            raise BadRequest(f"the request body is not JSON: {exc}") from None


HandlerResult = tuple[int, Any]  # (status, JSON body or None for no body)


# -- handlers ------------------------------------------------------------------------------------


def list_subjects(call: Call) -> HandlerResult:
    subjects = sorted(call.store.subjects.values(), key=lambda s: s.key)
    return 200, [s.as_json() for s in subjects]


def upsert_subjects(call: Call) -> HandlerResult:
    body = call.json()
    if not isinstance(body, list) or not all(isinstance(item, dict) for item in body):
        raise BadRequest("the request body must be an array of SubjectUpsert objects")
    changes = [
        (item.get("key"), {k: item[k] for k in ("displayName", "metadata") if k in item})
        for item in body
    ]
    return 200, [call.store.upsert_subject(key, change).as_json() for key, change in changes]


def get_subject(call: Call) -> HandlerResult:
    return 200, call.store.subject(call.path_params["id"]).as_json()


def delete_subject(call: Call) -> HandlerResult:
    call.store.delete_subject(call.path_params["id"])
    return 204, None


def list_customers(call: Call) -> HandlerResult:
    order_by = call.one("orderBy") or "name"  # OpenMeter's default order
    if order_by not in ("id", "name", "createdAt"):
        raise BadRequest(f"invalid orderBy {order_by!r}; one of id, name, createdAt")
    order = (call.one("order") or "ASC").upper()
    if order not in ("ASC", "DESC"):
        raise BadRequest(f"invalid order {order!r}; ASC or DESC")
    filters = {
        name: value
        for name in ("key", "name", "primaryEmail", "subject")
        if (value := call.one(name)) is not None
    }
    page = call.store.customer_page(
        page=call.integer("page", 1, 1, 2**31 - 1),
        page_size=call.integer("pageSize", 100, 1, MAX_PAGE_SIZE),
        include_deleted=call.boolean("includeDeleted"),
        filters=filters,
        order_by=order_by,
        descending=order == "DESC",
    )
    return 200, page


def create_customer(call: Call) -> HandlerResult:
    body = call.json()
    if not isinstance(body, dict):
        raise BadRequest("the request body must be a CustomerCreate object")
    return 201, call.store.create_customer(body).as_json()


def get_customer(call: Call) -> HandlerResult:
    return 200, call.store.customer(call.path_params["id"]).as_json()


def replace_customer(call: Call) -> HandlerResult:
    customer = _live_customer(call)
    body = call.json()
    if not isinstance(body, dict):
        raise BadRequest("the request body must be a CustomerReplaceUpdate object")
    return 200, call.store.replace_customer(customer, body).as_json()


def delete_customer(call: Call) -> HandlerResult:
    call.store.delete_customer(_live_customer(call))
    return 204, None


def _live_customer(call: Call) -> Any:
    customer = call.store.customer(call.path_params["id"])
    if customer.deleted_at is not None:
        raise NotFound(f"customer not found: {call.path_params['id']}")
    return customer


def list_meters(call: Call) -> HandlerResult:
    return 200, [m.as_json() for m in call.store.meters.values()]


def create_meter(call: Call) -> HandlerResult:
    body = call.json()
    if not isinstance(body, dict):
        raise BadRequest("the request body must be a MeterCreate object")
    return 201, call.store.add_meter(body).as_json()


def get_meter(call: Call) -> HandlerResult:
    return 200, call.store.meter(call.path_params["id"]).as_json()


def query_meter(call: Call) -> HandlerResult:
    meter = call.store.meter(call.path_params["id"])
    return 200, run_query(call.store, meter, MeterQuery.from_params(call.query))


def ingest_events(call: Call) -> HandlerResult:
    content_type = call.headers.get("content-type", "").partition(";")[0].strip().lower()
    if content_type not in (
        "application/cloudevents+json",
        "application/cloudevents-batch+json",
        "application/json",
    ):
        raise BadRequest(f"invalid content type {content_type!r} for events")
    body = call.json()
    if content_type == "application/cloudevents+json" and not isinstance(body, dict):
        raise BadRequest("application/cloudevents+json takes one event (an object)")
    if content_type == "application/cloudevents-batch+json" and not isinstance(body, list):
        raise BadRequest("application/cloudevents-batch+json takes an array of events")
    call.store.ingest(body if isinstance(body, list) else [body])
    return 204, None


def customer_access(call: Call) -> HandlerResult:
    """CustomerAccess: every entitlement of the customer, by feature key, with its value."""
    customer = _live_customer(call)
    held = call.entitlements.of(customer.id)
    return 200, {"entitlements": {e.feature_key: e.value_json() for e in held}}


def list_customer_entitlements(call: Call) -> HandlerResult:
    """EntitlementV2PaginatedResponse, oldest first (deleted entitlements are forgotten, so
    includeDeleted changes nothing)."""
    customer = _live_customer(call)
    call.boolean("includeDeleted")  # checked, as upstream
    page = call.integer("page", 1, 1, 2**31 - 1)
    size = call.integer("pageSize", 100, 1, MAX_PAGE_SIZE)
    held = call.entitlements.of(customer.id)
    start = (page - 1) * size
    return 200, {
        "totalCount": len(held),
        "page": page,
        "pageSize": size,
        "items": [e.as_json() for e in held[start : start + size]],
    }


Route = tuple[str, re.Pattern[str], Callable[[Call], HandlerResult]]


def _route(
    method: str, path: str, handler: Callable[[Call], HandlerResult], *, api: str = API
) -> Route:
    return method, re.compile("^" + api + path.replace("{id}", "(?P<id>[^/]+)") + "$"), handler


ROUTES: list[Route] = [
    _route("GET", "/subjects", list_subjects),
    _route("POST", "/subjects", upsert_subjects),
    _route("GET", "/subjects/{id}", get_subject),
    _route("DELETE", "/subjects/{id}", delete_subject),
    _route("GET", "/customers", list_customers),
    _route("POST", "/customers", create_customer),
    _route("GET", "/customers/{id}", get_customer),
    _route("PUT", "/customers/{id}", replace_customer),
    _route("DELETE", "/customers/{id}", delete_customer),
    _route("GET", "/meters", list_meters),
    _route("POST", "/meters", create_meter),
    _route("GET", "/meters/{id}", get_meter),
    _route("GET", "/meters/{id}/query", query_meter),
    _route("POST", "/events", ingest_events),
    _route("GET", "/customers/{id}/access", customer_access),
    _route("GET", "/customers/{id}/entitlements", list_customer_entitlements, api=API_V2),
]


# -- the pipeline --------------------------------------------------------------------------------


class OpenMeterApp:
    def __init__(self, token: str, config: OpenMeterConfig) -> None:
        self.token = token
        self.config = config
        self.store = Store()
        self.entitlements = Entitlements(self.store.ids.new, self.store.clock)
        self.log: deque[dict[str, Any]] = deque(maxlen=config.request_log_size)
        self.pending: list[PendingFault] = []
        self.random = random.Random(config.seed)  # noqa: S311 - jitter, not cryptography
        self._request_prefix = secrets.token_hex(5)
        self._requests = 0

    def configure(self, changes: dict[str, Any]) -> OpenMeterConfig:
        config = self.config.updated(changes)
        if config.seed != self.config.seed:
            self.random = random.Random(config.seed)  # noqa: S311
        if config.request_log_size != self.config.request_log_size:
            self.log = deque(self.log, maxlen=config.request_log_size)
        self.config = config
        return config

    def reset(self) -> None:
        """Forget every entity, event, request and pending fault; keep the knobs."""
        self.store = Store()
        self.entitlements = Entitlements(self.store.ids.new, self.store.clock)
        self.log.clear()
        self.pending.clear()

    def fail_next(self, kind: OpenMeterFaultKind, count: int, prefix: str | None) -> None:
        self.pending.append(PendingFault(kind, count, prefix))

    async def __call__(self, request: Request) -> Outcome:
        self._requests += 1
        entry: dict[str, Any] = {
            "method": request.method,
            "path": request.path,
            "query": request.query,
            "status": None,
            "fault": None,
        }
        try:
            outcome = await self._handle(request, entry)
        except Exception as exc:  # noqa: BLE001 - a bug in the emulator answers 500, not a hang
            outcome = self._problem(500, f"emulator error: {exc!r}")
        entry["status"] = outcome.status if isinstance(outcome, Response) else "reset"
        self.log.append(entry)
        return outcome

    async def _handle(self, request: Request, entry: dict[str, Any]) -> Outcome:
        if self.config.down:
            return self._problem(503, "OpenMeter is unavailable (an outage, emulated)")
        if not self._authenticated(request):
            return self._problem(401, "missing or invalid bearer token")
        fault = self._pick_fault(request.path)
        entry["fault"] = None if fault is None else fault.value
        if fault is OpenMeterFaultKind.RESET:
            return Reset()
        await self._latency()
        if fault is OpenMeterFaultKind.ERROR_500:
            return self._problem(500, "internal server error (injected by the emulator)")
        if fault is OpenMeterFaultKind.ERROR_503:
            return self._problem(503, "service unavailable (injected by the emulator)")
        response = self._run(request)
        if fault is OpenMeterFaultKind.TIMEOUT:
            response = dataclasses.replace(response, delay_s=self.config.timeout_delay_s)
        return response

    def _run(self, request: Request) -> Response:
        try:
            for method, pattern, handler in ROUTES:
                found = pattern.match(request.path)
                if found is not None and method == request.method:
                    params = found.groupdict().items()
                    call = Call(
                        store=self.store,
                        path_params={k: urllib.parse.unquote(v) for k, v in params},
                        query=urllib.parse.parse_qs(request.query, keep_blank_values=True),
                        headers=request.headers,
                        body=request.body,
                        entitlements=self.entitlements,
                    )
                    status, body = handler(call)
                    if body is None:
                        return Response(status, b"")
                    return Response(status, json.dumps(body, separators=(",", ":")).encode())
            raise NotFound(f"{request.method} {request.path} is not an OpenMeter path (emulated)")
        except Problem as exc:
            return self._problem(exc.status, exc.detail)

    def _authenticated(self, request: Request) -> bool:
        scheme, _, credential = request.headers.get("authorization", "").partition(" ")
        return scheme.lower() == "bearer" and credential.strip() == self.token

    def _pick_fault(self, path: str) -> OpenMeterFaultKind | None:
        for pending in self.pending:
            if pending.prefix is None or path.startswith(pending.prefix):
                pending.remaining -= 1
                if pending.remaining <= 0:
                    self.pending.remove(pending)
                return pending.kind
        return None

    async def _latency(self) -> None:
        delay = self.config.latency_ms
        if self.config.jitter_ms:
            delay += self.random.uniform(-self.config.jitter_ms, self.config.jitter_ms)
        if delay > 0:
            await asyncio.sleep(delay / 1000)

    def _problem(self, status: int, detail: str) -> Response:
        problem = Problem(detail, status)
        body = {
            "type": "about:blank",
            "title": problem.title,
            "status": status,
            "detail": detail,
            # OpenMeter names the occurrence by its request id.
            "instance": f"urn:request:openmeter-emulator/{self._request_prefix}-"
            f"{self._requests:06d}",
        }
        return Response(status, json.dumps(body).encode(), [("content-type", PROBLEM_JSON)])
