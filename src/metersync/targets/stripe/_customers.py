"""Stripe as a sync target: customers through stripe-python's StripeClient (async).

Facts this relies on (docs/design.md, "Stripe semantics we rely on"): test keys get 25 ops/s
and live keys 100; search has its own 20/s and is eventually consistent; metadata holds 50 keys
of ≤ 40 characters (no brackets) with values ≤ 500, and "" unsets a key; name ≤ 256, email
≤ 512, phone ≤ 20; idempotency keys live ≥ 24 h. Every call goes through the account's one
call path (`StripeAccount.call`, in _calls.py), which paces it and leaves retrying to the engine.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import stripe

from metersync.catalog.views import Customer
from metersync.clock import utcnow
from metersync.mechanics.limiter import AdaptiveLimiter
from metersync.stripe_facts import (
    CUSTOMER_EMAIL_MAX,
    CUSTOMER_NAME_MAX,
    CUSTOMER_PHONE_MAX,
    METADATA_KEY_MAX,
    METADATA_KEYS_MAX,
    METADATA_VALUE_MAX,
    SEARCH_REQUEST_RATE,
)
from metersync.sync.model import Change, Desired, External
from metersync.sync.plan import TargetRules
from metersync.sync.ports import (
    ARCHIVED_KEY,
    MANAGED_KEY,
    NO_CONTEXT,
    ContextNeeds,
    RenderContext,
    TargetError,
)
from metersync.targets.stripe._calls import StripeAccount, classify
from metersync.targets.stripe._customer_records import (
    create_params,
    decode_page,
    external,
    listed,
    update_params,
)


class StripeTarget:
    """The engine's Target for Stripe customers. The meter code of this package calls through
    its `account` too: one SDK client, one limiter, one request count per API key."""

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
        self.account = StripeAccount(
            api_key,
            api_base=api_base,
            rate=rate,
            search_rate=search_rate,
            timeout=timeout,
            http_client=http_client,
        )

    @property
    def limiter(self) -> AdaptiveLimiter:
        """The limiter of ordinary API calls (the service reports its waits)."""
        return self.account.limiter

    @property
    def requests(self) -> int:
        """Ordinary API calls made so far, by this target and the meter code alike."""
        return self.account.requests

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
            page = decode_page(
                await self.account.call(self.account.get_raw, "/v1/customers", params)
            )
            records.extend(listed(c) for c in page.data)
            if not page.has_more or not page.data:
                return records
            cursor = page.data[-1].id

    async def create(self, state: Mapping[str, Any], idempotency_key: str) -> str:
        params = create_params(state)
        customer = await self.account.call(
            self.account.client.v1.customers.create_async,
            params,  # type: ignore[arg-type]
            {"idempotency_key": idempotency_key},
        )
        return str(customer.id)

    async def update(
        self,
        external_id: str,
        changes: tuple[Change, ...],
        state: Mapping[str, Any],
        idempotency_key: str,
    ) -> None:
        params = update_params(changes, state)
        if not params:
            return
        await self.account.call(
            self.account.client.v1.customers.update_async,
            external_id,
            params,  # type: ignore[arg-type]
            {"idempotency_key": idempotency_key},
        )

    async def delete(self, external_id: str, idempotency_key: str) -> None:
        await self.account.call(
            self.account.client.v1.customers.delete_async,
            external_id,
            options={"idempotency_key": idempotency_key},
        )

    async def archive(self, external_id: str, idempotency_key: str) -> Mapping[str, str]:
        marker = {ARCHIVED_KEY: utcnow().isoformat(timespec="seconds")}
        await self.account.call(
            self.account.client.v1.customers.update_async,
            external_id,
            {"metadata": marker},
            {"idempotency_key": idempotency_key},
        )
        return marker

    async def release(self, external_id: str, idempotency_key: str) -> None:
        await self.account.call(
            self.account.client.v1.customers.update_async,
            external_id,
            {"metadata": {MANAGED_KEY: ""}},
            {"idempotency_key": idempotency_key},
        )

    async def retrieve(self, external_id: str) -> External | None:
        try:
            response = await self.account.call(
                self.account.client.raw_request_async, "get", f"/v1/customers/{external_id}"
            )
        except stripe.InvalidRequestError as exc:
            if exc.http_status == 404:
                return None
            raise
        data = response.data
        return None if data.get("deleted") else external(data)

    async def find(self, key: str) -> External | None:
        quote = "'" if "'" not in key else '"'
        if quote in key:  # both quote kinds: search cannot express it; list instead
            return next((r for r in await self.list_customers() if r.key == key), None)
        query = f"metadata['{MANAGED_KEY}']:{quote}{key}{quote}"

        async def search() -> Any:
            await self.account.search_limiter.acquire()
            return await self.account.client.raw_request_async(
                "get", "/v1/customers/search", query=query, limit=100
            )

        response = await self.account.call(search)
        found = [external(c) for c in response.data["data"] if not c.get("deleted")]
        found.sort(key=lambda r: (r.created, r.id))
        return found[0] if found else None

    async def close(self) -> None:
        await self.account.close()

    # -- errors ----------------------------------------------------------------------------------

    def classify(self, error: BaseException) -> TargetError:
        return classify(error)


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
