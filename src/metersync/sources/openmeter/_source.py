"""`OpenMeterSource`, what a run or the service holds: one client, and the pull's two halves,
so that each job pulls what it is about to use: `pull_catalog` (subjects and customers into
the local catalog), `pull_usage` (meter figures into `upstream_usage`) and
`pull_entitlements` (the CRM's entitlement figures into `upstream_entitlement`), with
`pull_owed` before a customer's Stripe record is deleted.

When OpenMeter cannot be read, the pull raises SourceUnavailable before writing anything from
that answer: the run reports it and the next one starts over.
"""

from __future__ import annotations

from collections.abc import Sequence

from metersync.catalog import Catalog
from metersync.catalog.meters import Meter
from metersync.settings import OpenMeterSettings
from metersync.sources.openmeter._catalog_pull import CatalogPull
from metersync.sources.openmeter._client import OpenMeterClient
from metersync.sources.openmeter._entitlement_pull import EntitlementPull
from metersync.sources.openmeter._state import PullResult
from metersync.sources.openmeter._usage_pull import UsagePull
from metersync.store import Store


class OpenMeterSource:
    def __init__(
        self,
        settings: OpenMeterSettings,
        meters: Sequence[Meter],
        *,
        window_s: int,
        max_delete_fraction: float = 0.1,
        mass_delete_floor: int = 3,
    ) -> None:
        assert settings.url is not None
        self.client = OpenMeterClient(
            settings.url,
            settings.resolved_token(),
            timeout_s=settings.timeout_s,
            retries=settings.retries,
        )
        self._catalog = CatalogPull(
            self.client,
            settings,
            max_delete_fraction=max_delete_fraction,
            mass_delete_floor=mass_delete_floor,
        )
        self._usage = UsagePull(self.client, settings, meters, window_s=window_s)
        self._entitlements = EntitlementPull(self.client)

    async def close(self) -> None:
        await self.client.close()

    async def pull_catalog(
        self, catalog: Catalog, *, allow_mass_delete: bool = False
    ) -> PullResult:
        return await self._catalog.pull_catalog(catalog, allow_mass_delete=allow_mass_delete)

    async def pull_usage(self, store: Store, *, full: bool = False) -> PullResult:
        return await self._usage.pull_usage(store, full=full)

    async def pull_entitlements(self, store: Store, features: Sequence[str]) -> PullResult:
        return await self._entitlements.pull_entitlements(store, features)

    async def pull_owed(self, store: Store, customer_key: str, *, target: str) -> None:
        await self._usage.pull_owed(store, customer_key, target=target)
