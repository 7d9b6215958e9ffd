"""The one way to Stripe's API: the SDK client, the limiters that pace ordinary API calls, the
call path every such call takes, and the sorting of what a failed call raised.

Customers, meters, event summaries and meter event sessions all go through `StripeAccount.call`
(test keys get 25 ops/s and live keys 100; search has its own 20/s). The SDK's own retries are
switched off: they would bypass our rate limiter, so the engine retries, and every attempt
waits its turn. Meter events themselves have a budget of their own at Stripe and a limiter of
their own (`MeterEventSender`).

HTTP goes through the SDK's aiohttp client by default, its httpx client on request
(`stripe.http_client`). Both are the SDK's own (_transport sizes their pools); aiohttp costs
~0.6 ms of CPU per request here against httpx's ~1.4 ms, which decides whether a full
reconcile's 1,000 list pages fit its CPU budget (bench/customers.py).
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Any, Literal, ParamSpec, TypeVar

import aiohttp
import stripe
from stripe._request_options import merge_options

from metersync.errors import ExitCode, MetersyncError
from metersync.mechanics.limiter import AdaptiveLimiter
from metersync.stripe_facts import LIVE_REQUEST_RATE, SEARCH_REQUEST_RATE, TEST_REQUEST_RATE
from metersync.sync.ports import ErrorKind, TargetError
from metersync.targets.stripe._transport import http_client as _http_client

P = ParamSpec("P")
T = TypeVar("T")

# What a failed call can raise: Stripe's answers, and the transport's own failures (a body cut
# off while read arrives unwrapped). classify() sorts all of them.
CALL_ERRORS = (stripe.StripeError, asyncio.TimeoutError, ConnectionError, aiohttp.ClientError)

# Meter setup (ensure_meters, event_summaries) retries what is retryable a few times: a
# command run by a person should not fail on one 500.
SETUP_ATTEMPTS = 4
SETUP_BASE_DELAY_S = 0.5


def default_rate(api_key: str) -> float:
    return LIVE_REQUEST_RATE if api_key.startswith(("sk_live_", "rk_live_")) else TEST_REQUEST_RATE


class StripeAccount:
    """One Stripe account (one API key) as this package calls it: the SDK client, and the
    limiters and the request count of its ordinary API calls. StripeTarget holds one
    (`target.account`), and the meter code calls through the same one, so customer sync and
    meter setup share the account's budget. Package-internal: other code never needs it."""

    def __init__(
        self,
        api_key: str,
        *,
        api_base: str | None = None,
        rate: float | None = None,
        search_rate: float = SEARCH_REQUEST_RATE,
        timeout: float = 30.0,
        http_client: str = "aiohttp",
    ) -> None:
        # The emulator (or a proxy) answers for both of Stripe's API hosts.
        bases: Any = {"api": api_base, "meter_events": api_base} if api_base else {}
        self.client = stripe.StripeClient(
            api_key,
            base_addresses=bases,
            max_network_retries=0,
            http_client=_http_client(http_client, timeout),
        )
        write_rate = rate if rate is not None else default_rate(api_key)
        # Burst 1: requests leave evenly spaced, so Stripe's own bucket never sees a clump.
        self.limiter = AdaptiveLimiter(write_rate, burst=1.0)
        self.search_limiter = AdaptiveLimiter(search_rate, burst=1.0)
        self.requests = 0

    async def call(self, fn: Callable[P, Awaitable[T]], *args: P.args, **kwargs: P.kwargs) -> T:
        """`await fn(*args, **kwargs)` as one ordinary API call: it waits its turn at the
        limiter and is counted; a 429 slows the limiter down. Errors pass through as the SDK
        raised them (classify() sorts them). A search also waits at `search_limiter`, inside
        `fn`."""
        await self.limiter.acquire()
        self.requests += 1
        try:
            return await fn(*args, **kwargs)
        except stripe.RateLimitError:
            self.limiter.throttled()
            raise

    async def get_raw(self, path: str, params: dict[str, Any]) -> bytes | str:
        """A GET's body, unparsed. The listing of a full reconcile reads a few fields of
        100,000 customers: SDK objects, or even the SDK's raw response (parsed into
        OrderedDicts), would cost most of its CPU. Errors still go through the SDK's own
        mapping to StripeError classes."""
        requestor = self.client._requestor  # stripe-python 16: the raw request path
        body, code, headers = await requestor.request_raw_async(
            "get",
            path,
            params=params,
            options={},
            base_address="api",
            api_mode="V1",
            usage=["metersync_list"],
        )
        if code != 200:
            requestor._interpret_response(body, code, headers, "V1")  # raises the StripeError
        return body  # type: ignore[return-value]  # not a stream: str or bytes

    async def post_meter_events_raw(
        self, path: str, body: str | bytes, *, api: Literal["V1", "V2"], api_key: str | None = None
    ) -> None:
        """POST a body the caller encoded (a form for v1, JSON for v2) to the meter events
        host; the answer is checked, not parsed. The meter event sender's fast path: per
        request, stripe-python 16 formats log lines whatever the log level, parses the answer
        into objects nobody reads, and form-encodes the params even of a v2 POST, which it then
        discards to send JSON (on the stream's 100 events a request, three quarters of the
        sender's CPU). The headers are the SDK's own, and an error answer goes through the
        SDK's mapping to StripeError classes, so it is classified as any other call's.
        `api_key`: another credential than the account's (the stream's session token)."""
        requestor = self.client._requestor  # stripe-python 16: the raw request path
        options = merge_options(requestor._options, {"api_key": api_key} if api_key else None)
        headers = requestor.request_headers("post", api, options)
        url = f"{requestor._options.base_addresses.get('meter_events')}{path}"
        http = requestor._get_http_client()
        answer, code, answer_headers = await http.request_with_retries_async(
            "post", url, headers, body, max_network_retries=0, _usage=["metersync_meter_events"]
        )
        if not 200 <= code < 300:
            requestor._interpret_response(answer, code, answer_headers, api)  # raises

    async def close(self) -> None:
        # StripeClient has no close; its HTTP client (aiohttp or httpx) does.
        http = self.client._requestor._get_http_client()
        closer = getattr(http, "close_async", None)
        if closer is not None:
            await closer()


def classify(error: BaseException) -> TargetError:
    """What a failed call means for the engine. Anything that is neither Stripe's answer nor a
    failure of the transport is a bug, and is raised again."""
    if not isinstance(error, stripe.StripeError):
        # The SDK wraps failures of sending; a body cut off while read arrives raw.
        if isinstance(error, asyncio.TimeoutError | ConnectionError | aiohttp.ClientError):
            return TargetError(ErrorKind.RETRYABLE, f"{type(error).__name__}: {error}")
        raise error  # not Stripe's answer: a bug, let it surface
    status = error.http_status
    request_id = error.request_id
    message = (
        f"{type(error).__name__}"
        + (f" {status}" if status else "")
        + f": {error.user_message or error}"
    )
    headers = error.headers or {}
    if isinstance(error, stripe.RateLimitError) or status == 429:
        return TargetError(ErrorKind.RETRYABLE, message, throttled=True, request_id=request_id)
    if isinstance(error, stripe.AuthenticationError | stripe.PermissionError):
        return TargetError(ErrorKind.FATAL, message, request_id=request_id)
    if headers.get("stripe-should-retry") == "true":
        return TargetError(ErrorKind.RETRYABLE, message, request_id=request_id)
    if (
        isinstance(error, stripe.APIConnectionError)
        or status is None
        or status == 409
        or status >= 500
    ):
        return TargetError(ErrorKind.RETRYABLE, message, request_id=request_id)
    if status == 404 and getattr(error, "code", None) == "resource_missing":
        return TargetError(ErrorKind.GONE, message, request_id=request_id)
    return TargetError(ErrorKind.PERMANENT, message, request_id=request_id)


class StripeCallFailed(MetersyncError):
    """A meter call to Stripe failed for good (after the retries a setup call gets)."""

    def __init__(self, what: str, error: TargetError, code: str | None = None) -> None:
        super().__init__(f"stripe: {what} failed: {error.message}")
        self.error = error
        self.code = code
        # Bad credentials are a configuration problem (2); anything else is a failed item (1).
        self.exit_code = (
            ExitCode.BAD_INPUT if error.kind is ErrorKind.FATAL else ExitCode.SOME_FAILED
        )


async def setup_call(
    account: StripeAccount,
    what: str,
    fn: Callable[P, Awaitable[T]],
    *args: P.args,
    **kwargs: P.kwargs,
) -> T:
    """One call on the account's own limiter (meter CRUD and summaries are ordinary API calls),
    retried while retryable; StripeCallFailed when it gives up. `what` names the call in the
    error, e.g. "listing billing meters"."""
    for attempt in range(SETUP_ATTEMPTS):
        try:
            return await account.call(fn, *args, **kwargs)
        except CALL_ERRORS as exc:
            error = classify(exc)
            if error.kind is not ErrorKind.RETRYABLE or attempt == SETUP_ATTEMPTS - 1:
                raise StripeCallFailed(what, error, getattr(exc, "code", None)) from None
        await asyncio.sleep(SETUP_BASE_DELAY_S * 2**attempt)
    raise AssertionError("unreachable")  # the loop returns or raises
