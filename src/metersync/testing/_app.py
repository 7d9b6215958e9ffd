"""The request pipeline, in the order Stripe's own edge applies it:

    control endpoints → route → authenticate → rate limit → injected fault → idempotency
    (replay, conflict, in flight) → latency → handler → store the result → webhook events

Each step is a small method; the handlers behind it are plain functions over the state.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import random
import time
from collections import deque
from collections.abc import Callable, Mapping
from typing import Any

from metersync.testing._config import ENDPOINT_CLASSES, Counters, EmulatorConfig, FaultKind
from metersync.testing._errors import StripeApiError
from metersync.testing._forms import decode_form
from metersync.testing._ratelimit import TokenBucket
from metersync.testing._routes import Call, Route, match
from metersync.testing._server import Drop, Outcome, Request, Reset, Response
from metersync.testing._state import EmulatorState, StoredResponse

_TEST_KEY_PREFIXES = ("sk_test_", "rk_test_")
IDEMPOTENCY_TTL_S = 24 * 3600  # Stripe keeps idempotency keys at least 24 hours
_IDEMPOTENT_METHODS = ("POST", "DELETE")
# A control read: the state and the query's parameters in, a JSON-ready answer out.
ControlRead = Callable[[EmulatorState, dict[str, Any]], Any]


def _json(data: Any) -> bytes:
    return json.dumps(data, separators=(",", ":")).encode()


class EmulatorApp:
    def __init__(
        self,
        routes: list[Route],
        config: EmulatorConfig,
        *,
        loop_clock: Callable[[], float],
        on_events: Callable[[Call], None] | None = None,
        reads: Mapping[str, ControlRead] | None = None,
    ) -> None:
        self.routes = routes
        # `GET /_emulator/<name>`: reads of the state for tests and benchmarks, beside the API.
        self.reads = dict(reads or {})
        self.state = EmulatorState()
        self.loop_clock = loop_clock
        self.on_events = on_events
        self.counters = Counters()
        self.log: deque[dict[str, Any]] = deque(maxlen=config.request_log_size)
        self.in_flight: set[tuple[str, str]] = set()
        self._sweep_at = 10_000
        self.config = config
        self._apply_config(config)

    # -- configuration and inspection (called on the loop thread) --------------------------------

    def configure(self, changes: dict[str, Any]) -> EmulatorConfig:
        self._apply_config(self.config.updated(changes))
        return self.config

    def _apply_config(self, config: EmulatorConfig) -> None:
        self.config = config
        # Reproducible chaos, not cryptography: a seed replays the same fault sequence.
        self.faults_random = random.Random(config.seed)  # noqa: S311
        self.latency_random = random.Random(  # noqa: S311
            None if config.seed is None else config.seed + 1
        )
        self.buckets: dict[str, TokenBucket | None] = {}
        for endpoint_class in ENDPOINT_CLASSES:
            rate = config.limit_for(endpoint_class)
            self.buckets[endpoint_class] = (
                TokenBucket(rate, config.burst, self.loop_clock) if rate else None
            )
        if self.log.maxlen != config.request_log_size:
            self.log = deque(self.log, maxlen=config.request_log_size)

    def reset(self) -> None:
        self.state = EmulatorState()
        self.counters = Counters()
        self.log.clear()
        self.in_flight.clear()
        self._apply_config(self.config)

    def stats(self) -> dict[str, Any]:
        totals: dict[str, int] = {}
        for per in self.counters.by_endpoint.values():
            for outcome, count in per.items():
                totals[outcome] = totals.get(outcome, 0) + count
        return {"endpoints": self.counters.by_endpoint, "totals": totals}

    # -- the pipeline ----------------------------------------------------------------------------

    async def __call__(self, request: Request) -> Outcome:
        if request.path.startswith("/_emulator/"):
            return self._control(request)
        started = time.perf_counter()
        request_id = self.state.new_id("req_")
        entry: dict[str, Any] = {
            "time": time.time(),
            "method": request.method,
            "path": request.path,
            "request_id": request_id,
            "idempotency_key": request.headers.get("idempotency-key"),
            "replayed": False,
            "fault": None,
        }
        found = match(self.routes, request.method, request.path)
        endpoint = found[0].name if found else "unknown"
        entry["endpoint"] = endpoint
        try:
            outcome = await self._handle(request, found, request_id, entry)
        except StripeApiError as exc:
            outcome = self._error_response(exc, request_id)
        status = (
            outcome.status
            if isinstance(outcome, Response)
            else "reset"
            if isinstance(outcome, Reset)
            else "drop"
        )
        entry["status"] = status
        entry["duration_ms"] = round((time.perf_counter() - started) * 1000, 3)
        self.log.append(entry)
        self.counters.count(endpoint, str(status))
        return outcome

    async def _handle(
        self,
        request: Request,
        found: tuple[Route, dict[str, str]] | None,
        request_id: str,
        entry: dict[str, Any],
    ) -> Outcome:
        if found is None:
            raise StripeApiError(
                404,
                f"Unrecognized request URL ({request.method}: {request.path}). Please see "
                "https://stripe.com/docs or we can help at https://support.stripe.com/.",
            )
        route, path_params = found
        api_key = self._authenticate(request, route)
        self._rate_limit(route)

        fault = self._pick_fault(route.name)
        entry["fault"] = fault.value if fault else None
        if fault is FaultKind.RESET:
            return Reset()
        if fault is FaultKind.ERROR_500:
            raise StripeApiError(
                500, "An unknown error occurred (injected by the emulator).", type="api_error"
            )
        if fault is FaultKind.RATE_LIMIT:
            raise self._rate_limit_error()

        params = self._params(request, route)
        key = (
            request.headers.get("idempotency-key")
            if request.method in _IDEMPOTENT_METHODS
            else None
        )
        scope = (api_key, key) if key else None
        fingerprint = self._fingerprint(request, params)
        if scope is not None:
            replay = self._replay(scope, fingerprint, request_id)
            if replay is not None:
                entry["replayed"] = True
                # The network can lose a replay's answer as well as an original's.
                return self._deliver(replay, fault)
            if scope in self.in_flight:
                raise StripeApiError(
                    409,
                    "There is currently another in-progress request using this Idempotent Key "
                    "(that probably means you submitted twice, and the other request is still "
                    f"going through): {scope[1]}. Please try again later.",
                    code="idempotency_key_in_use",
                )
            self.in_flight.add(scope)
        try:
            await self._latency()
            call = Call(self.state, params, path_params, api_key, request_id, key, self.config)
            try:
                status, body = route.handler(call)
                stored = True
            except StripeApiError as exc:
                status, body, stored = exc.status, exc.body(), exc.stored
            raw = _json(body)
            if scope is not None and stored:
                self.state.idempotency[scope] = StoredResponse(
                    fingerprint, status, raw, request_id, time.time()
                )
        finally:
            if scope is not None:
                self.in_flight.discard(scope)
        if call.emitted and self.on_events is not None:
            self.on_events(call)

        return self._deliver(Response(status, raw, self._headers(request_id, key)), fault)

    def _deliver(self, response: Response, fault: FaultKind | None) -> Outcome:
        """Faults that strike after the work is done: the answer is lost, or comes too late."""
        if fault is FaultKind.COMMIT_THEN_DROP:
            return Drop()
        if fault is FaultKind.SLOW:
            return Response(
                response.status, response.body, response.headers, delay_s=self.config.slow_seconds
            )
        return response

    # -- steps -----------------------------------------------------------------------------------

    def _authenticate(self, request: Request, route: Route) -> str:
        header = request.headers.get("authorization", "")
        scheme, _, credential = header.partition(" ")
        credential = credential.strip()
        if scheme.lower() != "bearer" or not credential:
            raise StripeApiError(
                401,
                "You did not provide an API key. You need to provide your API key in the "
                "Authorization header, using Bearer auth (e.g. 'Authorization: Bearer "
                "YOUR_SECRET_KEY').",
            )
        if route.auth == "session_token":
            return credential  # the v2 stream handler checks the session itself
        if not credential.startswith(_TEST_KEY_PREFIXES):
            masked = credential[:8] + "*" * 4 + credential[-4:]
            raise StripeApiError(
                401,
                f"Invalid API Key provided: {masked}. The emulator accepts test-mode keys only "
                "(sk_test_… or rk_test_…).",
                code="api_key_invalid" if not credential.startswith(("sk_", "rk_")) else None,
            )
        return credential

    def _rate_limit(self, route: Route) -> None:
        bucket = self.buckets.get(route.endpoint_class)
        if bucket is not None and not bucket.take():
            raise self._rate_limit_error()

    @staticmethod
    def _rate_limit_error() -> StripeApiError:
        return StripeApiError(
            429,
            "Request rate limit exceeded. Learn more about rate limits here "
            "https://stripe.com/docs/rate-limits.",
            code="rate_limit",
        )

    def _pick_fault(self, endpoint: str) -> FaultKind | None:
        for rule in self.config.faults:
            if rule.matches(endpoint) and self.faults_random.random() < rule.probability:
                return rule.kind
        return None

    async def _latency(self) -> None:
        delay = self.config.latency_ms
        if self.config.jitter_ms:
            delay += self.latency_random.uniform(-self.config.jitter_ms, self.config.jitter_ms)
        if delay > 0:
            await asyncio.sleep(delay / 1000)

    @staticmethod
    def _params(request: Request, route: Route) -> dict[str, Any]:
        if route.body == "json" and request.method == "POST":
            if not request.body:
                return {}
            try:
                data = json.loads(request.body)
            except ValueError:
                raise StripeApiError(400, "The request body is not valid JSON.") from None
            if not isinstance(data, dict):
                raise StripeApiError(400, "The request body must be a JSON object.")
            return data
        text = request.query
        if request.body:
            try:
                body = request.body.decode("utf-8")
            except UnicodeDecodeError:
                raise StripeApiError(400, "The request body is not UTF-8.") from None
            text = f"{text}&{body}" if text else body
        return decode_form(text)

    @staticmethod
    def _fingerprint(request: Request, params: dict[str, Any]) -> str:
        canonical = json.dumps([request.method, request.path, params], sort_keys=True)
        return hashlib.sha256(canonical.encode()).hexdigest()

    def _replay(self, scope: tuple[str, str], fingerprint: str, request_id: str) -> Response | None:
        stored = self.state.idempotency.get(scope)
        if stored is not None and stored.stored_at < time.time() - IDEMPOTENCY_TTL_S:
            del self.state.idempotency[scope]  # expired: the key is free again
            stored = None
        if len(self.state.idempotency) > self._sweep_at:
            # Forget expired keys now and then, not on every request (that scan is O(keys)).
            self.state.expire_idempotency(IDEMPOTENCY_TTL_S)
            self._sweep_at = 2 * max(len(self.state.idempotency), 10_000)
        if stored is None:
            return None
        if stored.fingerprint != fingerprint:
            raise StripeApiError(
                400,
                "Keys for idempotent requests can only be used with the same parameters they "
                f"were first used with. Try using a key other than '{scope[1]}' if you meant to "
                "execute a different request.",
                type="idempotency_error",
            )
        headers = self._headers(request_id, scope[1])
        headers += [("idempotent-replayed", "true"), ("original-request", stored.request_id)]
        return Response(stored.status, stored.body, headers)

    @staticmethod
    def _headers(request_id: str, key: str | None) -> list[tuple[str, str]]:
        headers = [("request-id", request_id), ("stripe-version", "2025-09-30.clover")]
        if key:
            headers.append(("idempotency-key", key))
        return headers

    def _error_response(self, exc: StripeApiError, request_id: str) -> Response:
        headers = self._headers(request_id, None)
        if exc.should_retry is not None:
            headers.append(("stripe-should-retry", "true" if exc.should_retry else "false"))
        return Response(exc.status, _json(exc.body()), headers)

    # -- control endpoints -----------------------------------------------------------------------

    def _control(self, request: Request) -> Response:
        name = request.path.removeprefix("/_emulator/")
        try:
            if name == "config" and request.method == "GET":
                return Response(200, _json(self.config.to_dict()))
            if name == "config" and request.method == "POST":
                changes = json.loads(request.body or b"{}")
                if not isinstance(changes, dict):
                    raise ValueError("the body must be a JSON object of settings")
                return Response(200, _json(self.configure(changes).to_dict()))
            if name == "stats" and request.method == "GET":
                return Response(200, _json(self.stats()))
            if name == "requests" and request.method == "GET":
                return Response(200, _json({"data": list(self.log)}))
            if name == "reset" and request.method == "POST":
                self.reset()
                return Response(200, _json({"reset": True}))
            if name == "health" and request.method == "GET":
                return Response(200, _json({"ok": True}))
            if name in self.reads and request.method == "GET":
                answer = self.reads[name](self.state, decode_form(request.query))
                return Response(200, _json(answer))
        except StripeApiError as exc:  # a read's parameters, checked as the API checks them
            return Response(exc.status, _json(exc.body()))
        except (ValueError, TypeError, KeyError) as exc:
            return Response(
                400, _json({"error": {"type": "invalid_request_error", "message": str(exc)}})
            )
        return Response(
            404,
            _json(
                {
                    "error": {
                        "type": "invalid_request_error",
                        "message": f"no control endpoint {request.path}",
                    }
                }
            ),
        )
