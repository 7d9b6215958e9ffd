"""The HubSpot request pipeline, in the order HubSpot's edge applies it:

    authenticate → rate limits (daily, rolling 10 s) → injected fault → latency → route →
    handler → answer with the rate-limit headers

The handler runs without awaiting, so each request's reads and writes are atomic with respect
to the others (the event loop is the lock): what makes unique properties hold under concurrent
batches.
"""

from __future__ import annotations

import asyncio
import json
import random
import re
import time
import urllib.parse
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from metersync.testing import _hubspot_objects as objects
from metersync.testing import _hubspot_schema as schema
from metersync.testing._hubspot_call import HandlerResult, HubSpotCall, RecordPredicate
from metersync.testing._hubspot_config import (
    HubSpotConfig,
    HubSpotFaultKind,
    endpoint_matches,
)
from metersync.testing._hubspot_errors import HubSpotError, RateLimited, correlation_id
from metersync.testing._hubspot_search import search
from metersync.testing._hubspot_store import Portal
from metersync.testing._server import Drop, Outcome, Request, Reset, Response

WINDOW_S = 10.0
AUTH_MESSAGE = (
    "Authentication credentials not found. This API supports OAuth 2.0 authentication and you "
    "can find more details at https://developers.hubspot.com/docs/methods/auth/oauth-overview"
)


# -- routes --------------------------------------------------------------------------------------


@dataclass(frozen=True)
class HubSpotRoute:
    method: str
    pattern: re.Pattern[str]
    name: str  # may name a path parameter: "{object_type}.batch_upsert"
    handler: Callable[[HubSpotCall], HandlerResult]

    def endpoint(self, params: dict[str, str]) -> str:
        return self.name.format(**params)


def _route(
    method: str, path: str, name: str, handler: Callable[[HubSpotCall], HandlerResult]
) -> HubSpotRoute:
    regex = "^" + re.sub(r"\{(\w+)\}", r"(?P<\1>[^/]+)", path) + "$"
    return HubSpotRoute(method, re.compile(regex), name, handler)


PROPERTIES = "/crm/v3/properties/{object_type}"
OBJECTS = "/crm/v3/objects/{object_type}"
ROUTES = [
    _route("GET", PROPERTIES, "properties.list", schema.list_properties),
    _route("POST", PROPERTIES, "properties.create", schema.create_property),
    _route(
        "POST",
        PROPERTIES + "/batch/create",
        "properties.batch_create",
        schema.batch_create_properties,
    ),
    _route("GET", PROPERTIES + "/groups", "properties.groups_list", schema.list_groups),
    _route("POST", PROPERTIES + "/groups", "properties.groups_create", schema.create_group),
    _route("GET", PROPERTIES + "/{name}", "properties.get", schema.get_property),
    _route("PATCH", PROPERTIES + "/{name}", "properties.update", schema.update_property),
    _route("POST", OBJECTS + "/batch/upsert", "{object_type}.batch_upsert", objects.batch_upsert),
    _route("POST", OBJECTS + "/batch/update", "{object_type}.batch_update", objects.batch_update),
    _route(
        "POST", OBJECTS + "/batch/archive", "{object_type}.batch_archive", objects.batch_archive
    ),
    _route("POST", OBJECTS + "/search", "{object_type}.search", search),
    _route("GET", OBJECTS, "{object_type}.list", objects.list_objects),
    _route("GET", OBJECTS + "/{object_id}", "{object_type}.get", objects.get_object),
    _route(
        "POST",
        "/crm/v4/associations/{from_type}/{to_type}/batch/associate/default",
        "associations.batch_create",
        objects.associate_default,
    ),
]


def match(method: str, path: str) -> tuple[HubSpotRoute, dict[str, str]] | None:
    for route in ROUTES:
        if route.method == method:
            found = route.pattern.match(path)
            if found is not None:
                return route, found.groupdict()
    return None


# -- faults --------------------------------------------------------------------------------------


@dataclass
class PendingFault:
    """A `fail_next` order: the next `remaining` requests to `endpoint` get `kind`."""

    kind: HubSpotFaultKind
    remaining: int
    endpoint: str | None


def _json(data: Any) -> bytes:
    return json.dumps(data, separators=(",", ":")).encode()


_RATE_LIMIT_FAULTS = frozenset({HubSpotFaultKind.TEN_SECONDLY, HubSpotFaultKind.DAILY})


class HubSpotApp:
    def __init__(
        self, token: str, config: HubSpotConfig, *, loop_clock: Callable[[], float]
    ) -> None:
        self.token = token
        self.loop_clock = loop_clock
        self.config = config
        self.rejects: dict[str, RecordPredicate] = {}
        self.pending: list[PendingFault] = []
        self.log: deque[dict[str, Any]] = deque(maxlen=config.request_log_size)
        self._forget_everything()
        self._apply_config(config)

    # -- configuration and inspection (called on the loop thread) --------------------------------

    def configure(self, changes: dict[str, Any]) -> HubSpotConfig:
        self._apply_config(self.config.updated(changes))
        return self.config

    def _apply_config(self, config: HubSpotConfig) -> None:
        self.config = config
        # Reproducible chaos, not cryptography: a seed replays the same faults and jitter.
        self.faults_random = random.Random(config.seed)  # noqa: S311
        self.latency_random = random.Random(  # noqa: S311
            None if config.seed is None else config.seed + 1
        )
        self.portal.set_search_lag(config.search_lag_s)
        if self.log.maxlen != config.request_log_size:
            self.log = deque(self.log, maxlen=config.request_log_size)

    def reset(self) -> None:
        """Forget every record, property, request and counter; keep the knobs."""
        self._forget_everything()
        self._apply_config(self.config)

    def _forget_everything(self) -> None:
        self.portal = Portal(self.loop_clock)
        self.log.clear()
        self.calls = 0
        self.window: deque[float] = deque()  # admission times within the rolling window
        self.daily_used = 0
        self.pending.clear()
        self.rejects.clear()

    def fail_next(self, kind: HubSpotFaultKind, count: int, endpoint: str | None) -> None:
        self.pending.append(PendingFault(kind, count, endpoint))

    # -- the pipeline ----------------------------------------------------------------------------

    async def __call__(self, request: Request) -> Outcome:
        started = time.perf_counter()
        found = match(request.method, request.path)
        entry: dict[str, Any] = {
            "time": time.time(),
            "endpoint": found[0].endpoint(found[1]) if found else "unknown",
            "method": request.method,
            "path": request.path,
            "query": request.query,
            "correlation_id": correlation_id(),
            "fault": None,
        }
        self.calls += 1
        try:
            outcome = await self._handle(request, found, entry)
        except Exception as exc:  # noqa: BLE001 - a bug in the emulator answers 500, not a hang
            error = HubSpotError(500, f"Emulator error: {exc!r}", category="INTERNAL_ERROR")
            outcome = self._error(error, entry, [])
        entry["status"] = (
            outcome.status
            if isinstance(outcome, Response)
            else ("reset" if isinstance(outcome, Reset) else "drop")
        )
        entry["duration_ms"] = round((time.perf_counter() - started) * 1000, 3)
        self.log.append(entry)
        return outcome

    async def _handle(
        self,
        request: Request,
        found: tuple[HubSpotRoute, dict[str, str]] | None,
        entry: dict[str, Any],
    ) -> Outcome:
        if not self._authenticated(request):
            # No app to count against, so no rate-limit headers on a 401.
            error = HubSpotError(401, AUTH_MESSAGE, category="INVALID_AUTHENTICATION")
            return self._error(error, entry, [])
        try:
            self._check_limits()
            fault = self._pick_fault(entry["endpoint"]) if found else None
            entry["fault"] = fault.value if fault else None
            if fault in _RATE_LIMIT_FAULTS:
                raise RateLimited(daily=fault is HubSpotFaultKind.DAILY)
            self._admit()  # from here on it reached HubSpot, so it counts, answered or not
            if fault is HubSpotFaultKind.RESET:
                return Reset()
            await self._latency()
            if fault is HubSpotFaultKind.ERROR_500:
                raise HubSpotError(
                    500, "internal error (injected by the emulator)", category="INTERNAL_ERROR"
                )
            status, body = self._run(request, found, entry)
        except HubSpotError as exc:
            return self._error(exc, entry, self._rate_headers())
        if fault is HubSpotFaultKind.COMMIT_THEN_DROP:
            return Drop()
        headers = [*self._rate_headers(), ("x-hubspot-correlation-id", entry["correlation_id"])]
        return Response(status, b"" if body is None else _json(body), headers)

    def _run(
        self,
        request: Request,
        found: tuple[HubSpotRoute, dict[str, str]] | None,
        entry: dict[str, Any],
    ) -> HandlerResult:
        if found is None:
            raise HubSpotError(
                404,
                f"Unknown path {request.method} {request.path} (not emulated).",
                category="OBJECT_NOT_FOUND",
            )
        route, path_params = found
        body = _body(request)
        if isinstance(body, dict) and isinstance(body.get("inputs"), list):
            entry["inputs"] = len(body["inputs"])
        call = HubSpotCall(
            portal=self.portal,
            config=self.config,
            path_params=path_params,
            query=urllib.parse.parse_qs(request.query, keep_blank_values=True),
            body=body,
            base_url=f"http://{request.headers.get('host', 'localhost')}",
            path=request.path,
            rejects=self.rejects,
        )
        return route.handler(call)

    # -- steps -----------------------------------------------------------------------------------

    def _authenticated(self, request: Request) -> bool:
        scheme, _, credential = request.headers.get("authorization", "").partition(" ")
        return scheme.lower() == "bearer" and credential.strip() == self.token

    def _check_limits(self) -> None:
        """Daily first: when both are spent, HubSpot names the daily policy. A refused request
        is not admitted, so it does not lengthen the wait."""
        if self.config.daily_limit is not None and self.daily_used >= self.config.daily_limit:
            raise RateLimited(daily=True)
        limit = self.config.rate_limit_per_10s
        if limit is not None and self._in_window() >= limit:
            raise RateLimited(daily=False)

    def _admit(self) -> None:
        self.daily_used += 1
        self.window.append(self.loop_clock())

    def _in_window(self) -> int:
        horizon = self.loop_clock() - WINDOW_S
        while self.window and self.window[0] <= horizon:
            self.window.popleft()
        return len(self.window)

    def _rate_headers(self) -> list[tuple[str, str]]:
        # On every authenticated answer, search included, though users report real search
        # answers without them: a client should not need them to pace search.
        headers = []
        daily = self.config.daily_limit
        if daily is not None:
            headers += [
                ("X-HubSpot-RateLimit-Daily", str(daily)),
                ("X-HubSpot-RateLimit-Daily-Remaining", str(max(0, daily - self.daily_used))),
            ]
        limit = self.config.rate_limit_per_10s
        if limit is not None:
            headers += [
                ("X-HubSpot-RateLimit-Interval-Milliseconds", str(int(WINDOW_S * 1000))),
                ("X-HubSpot-RateLimit-Max", str(limit)),
                ("X-HubSpot-RateLimit-Remaining", str(max(0, limit - self._in_window()))),
            ]
        return headers

    def _pick_fault(self, endpoint: str) -> HubSpotFaultKind | None:
        for pending in self.pending:
            if endpoint_matches(pending.endpoint, endpoint):
                pending.remaining -= 1
                if pending.remaining <= 0:
                    self.pending.remove(pending)
                return pending.kind
        for rule in self.config.faults:
            matched = endpoint_matches(rule.endpoint, endpoint)
            if matched and self.faults_random.random() < rule.probability:
                return rule.kind
        config = self.config
        if config.fault_kinds and self.faults_random.random() < config.fault_rate:
            return self.faults_random.choice(config.fault_kinds)
        return None

    async def _latency(self) -> None:
        delay = self.config.latency_ms
        if self.config.jitter_ms:
            delay += self.latency_random.uniform(-self.config.jitter_ms, self.config.jitter_ms)
        if delay > 0:
            await asyncio.sleep(delay / 1000)

    def _error(
        self, exc: HubSpotError, entry: dict[str, Any], headers: list[tuple[str, str]]
    ) -> Response:
        body = exc.body(entry["correlation_id"])
        entry["error"] = body.get("policyName") or body["category"]
        headers = [*headers, ("x-hubspot-correlation-id", entry["correlation_id"])]
        return Response(exc.status, _json(body), headers)


def _body(request: Request) -> Any:
    if not request.body:
        return {}
    try:
        return json.loads(request.body)
    except ValueError as exc:
        raise HubSpotError(400, f"Invalid input JSON: {exc}") from None
