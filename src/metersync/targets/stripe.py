"""Stripe as a sync target: customers through stripe-python's StripeClient (async).

Facts this relies on (docs/design.md, "Stripe semantics we rely on"): test keys get 25 ops/s
and live keys 100; search has its own 20/s and is eventually consistent; metadata holds 50 keys
of ≤ 40 characters (no brackets) with values ≤ 500, and "" unsets a key; name ≤ 256, email
≤ 512, phone ≤ 20; idempotency keys live ≥ 24 h. The SDK's own retries are switched off: they
would bypass our rate limiter, so the engine retries, and every attempt waits its turn.

HTTP goes through the SDK's aiohttp client by default, its httpx client on request
(`stripe.http_client`). Both are the SDK's own; aiohttp costs ~0.6 ms of CPU per request here
against httpx's ~1.4 ms, which decides whether a full reconcile's 1,000 list pages fit its
CPU budget (bench/customers.py).
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Mapping
from typing import Any, TypeVar

import aiohttp
import msgspec
import stripe

from metersync.catalog.views import Customer
from metersync.clock import utcnow
from metersync.mechanics.limiter import AdaptiveLimiter
from metersync.stripe_facts import (
    CUSTOMER_ADDRESS_FIELDS,
    CUSTOMER_EMAIL_MAX,
    CUSTOMER_NAME_MAX,
    CUSTOMER_PHONE_MAX,
    LIVE_REQUEST_RATE,
    METADATA_KEY_MAX,
    METADATA_KEYS_MAX,
    METADATA_VALUE_MAX,
    SEARCH_REQUEST_RATE,
    TEST_REQUEST_RATE,
)
from metersync.sync.model import Change, Desired, External
from metersync.sync.plan import TargetRules
from metersync.sync.ports import (
    ARCHIVED_KEY,
    MANAGED_KEY,
    NO_CONTEXT,
    ContextNeeds,
    ErrorKind,
    RenderContext,
    TargetError,
)

T = TypeVar("T")


# A list page as the engine reads it: msgspec decodes the JSON straight into these and skips
# every other field, several times cheaper than json.loads and dicts over 1,000 pages.
class _ListedAddress(msgspec.Struct):
    line1: str | None = None
    line2: str | None = None
    city: str | None = None
    state: str | None = None
    postal_code: str | None = None
    country: str | None = None


class _ListedCustomer(msgspec.Struct):
    id: str
    created: int = 0
    name: str | None = None
    email: str | None = None
    description: str | None = None
    phone: str | None = None
    address: _ListedAddress | None = None
    metadata: dict[str, str] = msgspec.field(default_factory=dict)


class _CustomerPage(msgspec.Struct):
    data: list[_ListedCustomer]
    has_more: bool = False


_decode_page = msgspec.json.Decoder(_CustomerPage).decode


def default_rate(api_key: str) -> float:
    return LIVE_REQUEST_RATE if api_key.startswith(("sk_live_", "rk_live_")) else TEST_REQUEST_RATE


class StripeTarget:
    name = "stripe"
    rules = TargetRules(metadata_max_keys=METADATA_KEYS_MAX)
    render_version = "stripe-customer/1"  # tests/test_stripe_target.py pins its output
    needs = ContextNeeds()  # a Stripe customer shows nothing but the customer

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

    # -- rendering (pure) ------------------------------------------------------------------------

    def render(self, customer: Customer, context: RenderContext = NO_CONTEXT) -> Desired:
        address = customer.billing_address
        address_fields = {
            "line1": address.line1,
            "line2": address.line2,
            "city": address.city,
            "state": address.state,
            "postal_code": address.postal_code,
            "country": address.country,
        }
        fields: dict[str, Any] = {
            "name": customer.name,
            "email": customer.primary_email,
            "description": customer.description,
            "phone": address.phone_number,
            "address": address_fields if any(address_fields.values()) else None,
        }
        # Stripe cannot hold an empty metadata value ("" unsets the key): leave such keys out,
        # or every full reconcile would see them missing and "repair" them forever.
        metadata = {k: v for k, v in customer.metadata.items() if v != ""}
        blocked = list(_limits(fields, metadata))
        metadata[MANAGED_KEY] = customer.key
        if len(metadata) > METADATA_KEYS_MAX:
            blocked.append(
                f"metadata has {len(metadata)} keys with {MANAGED_KEY}; Stripe allows "
                f"{METADATA_KEYS_MAX}"
            )
        if len(customer.key) > METADATA_VALUE_MAX:
            blocked.append(
                f"the key is longer than Stripe's {METADATA_VALUE_MAX}-character metadata values"
            )
        return Desired(customer.key, fields, metadata, tuple(blocked))

    # -- calls -----------------------------------------------------------------------------------

    async def list_customers(self) -> list[External]:
        records: list[External] = []
        cursor: str | None = None
        while True:
            params: dict[str, Any] = {"limit": 100}
            if cursor:
                params["starting_after"] = cursor

            async def fetch(params: dict[str, Any] = params) -> bytes | str:
                return await self._get_raw("/v1/customers", params)

            page = _decode_page(await self._call(fetch))
            records.extend(_listed(c) for c in page.data)
            if not page.has_more or not page.data:
                return records
            cursor = page.data[-1].id

    async def create(self, state: Mapping[str, Any], idempotency_key: str) -> str:
        params = _create_params(state)
        customer = await self._call(
            lambda: self.client.v1.customers.create_async(
                params,  # type: ignore[arg-type]
                {"idempotency_key": idempotency_key},
            )
        )
        return str(customer.id)

    async def update(
        self,
        external_id: str,
        changes: tuple[Change, ...],
        state: Mapping[str, Any],
        idempotency_key: str,
    ) -> None:
        params = _update_params(changes, state)
        if not params:
            return
        await self._call(
            lambda: self.client.v1.customers.update_async(
                external_id,
                params,  # type: ignore[arg-type]
                {"idempotency_key": idempotency_key},
            )
        )

    async def delete(self, external_id: str, idempotency_key: str) -> None:
        await self._call(
            lambda: self.client.v1.customers.delete_async(
                external_id, options={"idempotency_key": idempotency_key}
            )
        )

    async def archive(self, external_id: str, idempotency_key: str) -> Mapping[str, str]:
        marker = {ARCHIVED_KEY: utcnow().isoformat(timespec="seconds")}
        await self._call(
            lambda: self.client.v1.customers.update_async(
                external_id, {"metadata": marker}, {"idempotency_key": idempotency_key}
            )
        )
        return marker

    async def release(self, external_id: str, idempotency_key: str) -> None:
        await self._call(
            lambda: self.client.v1.customers.update_async(
                external_id, {"metadata": {MANAGED_KEY: ""}}, {"idempotency_key": idempotency_key}
            )
        )

    async def retrieve(self, external_id: str) -> External | None:
        try:
            response = await self._call(
                lambda: self.client.raw_request_async("get", f"/v1/customers/{external_id}")
            )
        except stripe.InvalidRequestError as exc:
            if exc.http_status == 404:
                return None
            raise
        data = response.data
        return None if data.get("deleted") else _external(data)

    async def find(self, key: str) -> External | None:
        quote = "'" if "'" not in key else '"'
        if quote in key:  # both quote kinds: search cannot express it; list instead
            return next((r for r in await self.list_customers() if r.key == key), None)
        query = f"metadata['{MANAGED_KEY}']:{quote}{key}{quote}"

        async def search() -> Any:
            await self.search_limiter.acquire()
            return await self.client.raw_request_async(
                "get", "/v1/customers/search", query=query, limit=100
            )

        response = await self._call(search)
        found = [_external(c) for c in response.data["data"] if not c.get("deleted")]
        found.sort(key=lambda r: (r.created, r.id))
        return found[0] if found else None

    async def close(self) -> None:
        # StripeClient has no close; its HTTP client (aiohttp or httpx) does.
        http = self.client._requestor._get_http_client()
        closer = getattr(http, "close_async", None)
        if closer is not None:
            await closer()

    async def _get_raw(self, path: str, params: dict[str, Any]) -> bytes | str:
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

    async def _call(self, call: Callable[[], Awaitable[T]]) -> T:
        await self.limiter.acquire()
        self.requests += 1
        try:
            return await call()
        except stripe.RateLimitError:
            self.limiter.throttled()
            raise

    # -- errors ----------------------------------------------------------------------------------

    def classify(self, error: BaseException) -> TargetError:
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


def _http_client(kind: str, timeout: float) -> stripe.HTTPClient:
    if kind == "aiohttp":
        return stripe.AIOHTTPClient(timeout=aiohttp.ClientTimeout(total=timeout))
    if kind == "httpx":
        return stripe.HTTPXClient(timeout=timeout)
    raise ValueError(f"http_client must be 'aiohttp' or 'httpx', got {kind!r}")


def _limits(fields: Mapping[str, Any], metadata: Mapping[str, str]) -> list[str]:
    reasons = []
    for name, limit in (
        ("name", CUSTOMER_NAME_MAX),
        ("email", CUSTOMER_EMAIL_MAX),
        ("phone", CUSTOMER_PHONE_MAX),
    ):
        value = fields.get(name)
        if value is not None and len(value) > limit:
            reasons.append(f"{name} has {len(value)} characters; Stripe allows {limit}")
    if MANAGED_KEY in metadata:
        reasons.append(f"metadata key {MANAGED_KEY!r} is reserved for metersync")
    for key, value in metadata.items():
        if len(key) > METADATA_KEY_MAX:
            reasons.append(
                f"metadata key {key[:50]!r} is longer than {METADATA_KEY_MAX} characters"
            )
        if "[" in key or "]" in key:
            reasons.append(f"metadata key {key!r} contains square brackets")
        if len(value) > METADATA_VALUE_MAX:
            reasons.append(
                f"metadata value of {key[:50]!r} is longer than {METADATA_VALUE_MAX} characters"
            )
    return reasons


def _external(customer: Mapping[str, Any]) -> External:
    metadata = dict(customer.get("metadata") or {})
    address = customer.get("address")
    return External(
        id=customer["id"],
        key=metadata.get(MANAGED_KEY),
        fields={
            "name": customer.get("name"),
            "email": customer.get("email"),
            "description": customer.get("description"),
            "phone": customer.get("phone"),
            "address": {f: address.get(f) for f in CUSTOMER_ADDRESS_FIELDS} if address else None,
        },
        metadata=metadata,
        created=int(customer.get("created") or 0),
        archived=ARCHIVED_KEY in metadata,
    )


def _listed(customer: _ListedCustomer) -> External:
    """The same record as _external() makes of a full customer object."""
    metadata = customer.metadata
    address = customer.address
    return External(
        id=customer.id,
        key=metadata.get(MANAGED_KEY),
        fields={
            "name": customer.name,
            "email": customer.email,
            "description": customer.description,
            "phone": customer.phone,
            "address": {
                "line1": address.line1,
                "line2": address.line2,
                "city": address.city,
                "state": address.state,
                "postal_code": address.postal_code,
                "country": address.country,
            }
            if address
            else None,
        },
        metadata=metadata,
        created=customer.created,
        archived=ARCHIVED_KEY in metadata,
    )


def _create_params(state: Mapping[str, Any]) -> dict[str, Any]:
    params: dict[str, Any] = {}
    for name, value in state["fields"].items():
        if name == "address":
            if value:
                params["address"] = {k: v for k, v in value.items() if v}
        elif value is not None and value != "":
            params[name] = value
    params["metadata"] = dict(state["metadata"])
    return params


def _update_params(changes: tuple[Change, ...], state: Mapping[str, Any]) -> dict[str, Any]:
    """Only what changed; "" unsets (Stripe's convention), for fields and metadata keys alike."""
    params: dict[str, Any] = {}
    metadata: dict[str, str] = {}
    for change in changes:
        if change.field.startswith("metadata."):
            metadata[change.field.removeprefix("metadata.")] = change.after or ""
        elif change.field == "address":
            address = state["fields"].get("address")
            params["address"] = (
                {f: (address or {}).get(f) or "" for f in CUSTOMER_ADDRESS_FIELDS}
                if address
                else ""
            )
        else:
            params[change.field] = "" if change.after is None else change.after
    if metadata:
        params["metadata"] = metadata
    return params
