"""HubSpot as a sync target: one company per customer, through CRM v3 over httpx.

`HubSpotTarget` is the engine's Target protocol over its parts: the company it renders
(`_render.py`), the batched writes that keep one company per customer (`_batches.py`), the
paced requests and limits (`_http.py`, `_allowance.py`) and the custom properties
(`_property_check.py`). Search is never used: it lags writes.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import httpx

from metersync.catalog.meters import Meter
from metersync.catalog.views import Customer
from metersync.clock import utcnow
from metersync.mechanics.limiter import AdaptiveLimiter
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
from metersync.targets.hubspot._allowance import DailyAllowance
from metersync.targets.hubspot._batches import BATCH_MAX, CompanyBatches, Update, Upsert
from metersync.targets.hubspot._errors import HubSpotError
from metersync.targets.hubspot._http import COMPANIES, HubSpotApi, path_segment
from metersync.targets.hubspot._properties import EMAIL, owned_properties
from metersync.targets.hubspot._property_check import PropertyCheck
from metersync.targets.hubspot._records import as_properties, external
from metersync.targets.hubspot._render import render_company, timestamp


class HubSpotTarget:
    name = "hubspot"
    rules = TargetRules()  # no metadata limit: HubSpot properties are fields
    # tests/test_hubspot_render.py pins its output. Entitlement properties fold the features
    # into it (below): without any, a company renders, and fingerprints, as it always did.
    RENDER_VERSION = "hubspot-company/1"

    def __init__(
        self,
        token: str,
        *,
        api_base: str = "https://api.hubapi.com",
        meters: Sequence[Meter] = (),
        requests_per_10s: int = 100,
        daily_limit: int = 250_000,
        daily_reserve: int = 1_000,
        batch_size: int = BATCH_MAX,
        timeout: float = 30.0,
        contacts: bool = False,
        linger_s: float = 0.2,
        entitlement_features: Sequence[str] = (),
    ) -> None:
        self.meters = list(meters)
        self.features = tuple(dict.fromkeys(entitlement_features))
        self.needs = ContextNeeds(
            links=("stripe",), usage=bool(self.meters), entitlements=self.features
        )
        self.render_version = self.RENDER_VERSION
        if self.features:
            self.render_version += "+entitlements/1:" + ",".join(sorted(self.features))
        self.contacts = contacts
        self.http = httpx.AsyncClient(
            base_url=api_base,
            headers={"Authorization": f"Bearer {token}"},
            timeout=timeout,
        )
        # Evenly paced: 100 per 10 s is one request every 100 ms, never a clump at the start
        # of a window that other traffic could push over.
        self.limiter = AdaptiveLimiter(requests_per_10s / 10.0, burst=1.0)
        self.daily = DailyAllowance(daily_limit, daily_reserve)
        self._api = HubSpotApi(self.http, self.limiter, self.daily, self.classify)
        self._batches = CompanyBatches(
            self._api, size=min(batch_size, BATCH_MAX), linger_s=linger_s
        )
        self._properties = PropertyCheck(
            self._api, self.meters, self.features, api_base=api_base, token=token
        )

    @property
    def requests(self) -> int:
        """Requests sent to HubSpot so far."""
        return self._api.requests

    def render(self, customer: Customer, context: RenderContext = NO_CONTEXT) -> Desired:
        return render_company(customer, context, self.meters, self.features)

    # -- the protocol ----------------------------------------------------------------------------

    def classify(self, error: BaseException) -> TargetError:
        if isinstance(error, HubSpotError) and self._properties.names_a_missing_property(error):
            # Someone deleted one of our properties in HubSpot (or this is another portal
            # behind the same address): the once-per-process check is stale. Forget it, so the
            # retry creates the properties again instead of failing every record until restart.
            self._properties.forget()
            return TargetError(ErrorKind.RETRYABLE, str(error), request_id=error.correlation_id)
        if isinstance(error, HubSpotError):
            return TargetError(
                error.kind,
                str(error),
                throttled=error.throttled,
                request_id=error.correlation_id,
            )
        if isinstance(error, httpx.TransportError):
            return TargetError(ErrorKind.RETRYABLE, f"{type(error).__name__}: {error}")
        return TargetError(ErrorKind.PERMANENT, f"{type(error).__name__}: {error}")

    async def list_customers(self) -> list[External]:
        await self._properties.ready()
        records: list[External] = []
        after: str | None = None
        properties = ",".join(owned_properties(self.meters, self.features))
        while True:
            params = {"limit": "100", "properties": properties, "archived": "false"}
            if after:
                params["after"] = after
            page = await self._api.read(COMPANIES, params)
            records.extend(external(c) for c in page.get("results", []))
            after = page.get("paging", {}).get("next", {}).get("after")
            if not after:
                return records

    async def create(self, state: Mapping[str, Any], idempotency_key: str) -> str:
        await self._properties.ready()
        key = state["metadata"][MANAGED_KEY]
        properties = as_properties(state, clearing=False)
        return await self._batches.upsert(Upsert(key, properties, self._contact(state)))

    async def update(
        self,
        external_id: str,
        changes: tuple[Change, ...],
        state: Mapping[str, Any],
        idempotency_key: str,
    ) -> None:
        await self._properties.ready()
        # The whole owned state, not only the changes: idempotent, and it clears an archive
        # marker (an update of an archived company is its unarchiving).
        properties = {**as_properties(state, clearing=True), ARCHIVED_KEY: ""}
        email_changed = any(c.field == f"fields.{EMAIL}" or c.field == EMAIL for c in changes)
        email = self._contact(state) if email_changed else None
        await self._batches.update(Update(external_id, properties, email))

    async def delete(self, external_id: str, idempotency_key: str) -> None:
        # HubSpot's delete is an archive, restorable for 90 days.
        await self._batches.archive(external_id)

    async def archive(self, external_id: str, idempotency_key: str) -> Mapping[str, str]:
        await self._properties.ready()
        marker = {ARCHIVED_KEY: timestamp(utcnow())}
        await self._batches.update(Update(external_id, dict(marker), None))
        return marker

    async def release(self, external_id: str, idempotency_key: str) -> None:
        await self._batches.update(Update(external_id, {MANAGED_KEY: ""}, None))

    async def find(self, key: str) -> External | None:
        return await self._get(key, id_property=MANAGED_KEY)

    async def retrieve(self, external_id: str) -> External | None:
        return await self._get(external_id, id_property=None)

    async def close(self) -> None:
        await self.http.aclose()

    async def ensure_properties(self) -> dict[str, int]:
        """Create or upgrade the custom properties now (the protocol's calls do it once)."""
        return await self._properties.ensure()

    # -- helpers ---------------------------------------------------------------------------------

    def _contact(self, state: Mapping[str, Any]) -> str | None:
        if not self.contacts:
            return None
        email = state.get("fields", {}).get(EMAIL)
        return str(email) if email else None

    async def _get(self, id_or_key: str, *, id_property: str | None) -> External | None:
        params = {"properties": ",".join(owned_properties(self.meters, self.features))}
        if id_property is not None:
            params["idProperty"] = id_property
        try:
            company = await self._api.read(f"{COMPANIES}/{path_segment(id_or_key)}", params)
        except HubSpotError as exc:
            if exc.kind is ErrorKind.GONE:
                return None
            raise
        return external(company)
