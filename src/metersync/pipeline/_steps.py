"""The steps every door runs, in the order data flows: pull from the source, Stripe's
customers, the usage push to Stripe's meters, then the CRM (whose companies show the Stripe
customer ids and the usage just pushed).

`metersync reconcile` runs them in one go (pipeline._reconcile), the service as separate jobs,
the other commands one at a time; all of them through a `Pipeline`, so that each adapter is
built in one way, from one place (pipeline._build), and only when a step needs it: a run
limited to HubSpot builds no Stripe client and needs no Stripe key.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from types import TracebackType
from typing import TYPE_CHECKING, Any

from metersync.catalog import Catalog
from metersync.catalog.meters import Meter
from metersync.entitlements import EntitlementBook, EntitlementValues
from metersync.errors import ConfigError
from metersync.pipeline import _build
from metersync.pipeline._verification import Verification, verify
from metersync.pipeline._webhooks import process_pending
from metersync.settings import Settings
from metersync.sync.customer_sync import RunResult, sync_customers
from metersync.sync.ports import Target
from metersync.targets.stripe import MeterCheck, StripeMeterFigures, ensure_meters
from metersync.usage.verify import DEFAULT_CHUNK

if TYPE_CHECKING:
    from metersync.mechanics.limiter import AdaptiveLimiter
    from metersync.sources.openmeter import OpenMeterSource, PullResult
    from metersync.targets.hubspot import HubSpotTarget
    from metersync.targets.stripe import StripeTarget
    from metersync.usage.push import PushResult, UsagePusher


@dataclass(frozen=True)
class SyncRun:
    """How a customer sync of one target runs."""

    full: bool = False  # every record, against the target's listing; else what changed
    dry_run: bool = False  # plan only
    allow_mass_delete: bool = False  # past the mass-delete guard
    progress: Callable[[int, int], None] | None = None  # (done, total) as actions finish


class Pipeline:
    """One run's adapters, built from the settings on first use, and its steps. Use it as an
    async context manager (or call close()): what was built is closed at the end."""

    def __init__(
        self,
        settings: Settings,
        catalog: Catalog | None,
        *,
        should_stop: Callable[[], bool] | None = None,
    ) -> None:
        self.settings = settings
        self._catalog = catalog  # None for steps that only talk to Stripe (ensure_meters)
        self.should_stop = should_stop  # the service's stop signal: no new action starts
        self.meters = [Meter.of(m) for m in settings.meters]
        self._stripe: StripeTarget | None = None
        self._hubspot: HubSpotTarget | None = None
        self._source: OpenMeterSource | None = None
        self._pusher: UsagePusher | None = None

    async def __aenter__(self) -> Pipeline:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        await self.close()

    @property
    def catalog(self) -> Catalog:
        assert self._catalog is not None, "this step needs the catalog"
        return self._catalog

    # -- what is configured ----------------------------------------------------------------------

    @property
    def pushes_usage(self) -> bool:
        """Meters with a Stripe section: usage is pushed to Stripe."""
        return any(m.settings.stripe is not None for m in self.meters)

    # -- adapters, built on first use ------------------------------------------------------------

    def stripe(self) -> StripeTarget:
        if self._stripe is None:
            self._stripe = _build.stripe_target(self.settings)
        return self._stripe

    def hubspot(self) -> HubSpotTarget:
        if self._hubspot is None:
            built = _build.hubspot_target(self.settings)
            if built is None:
                raise ConfigError(
                    "HubSpot is not configured; set METERSYNC_HUBSPOT_ACCESS_TOKEN "
                    "(or hubspot.access_token_file)"
                )
            self._hubspot = built
        return self._hubspot

    def source(self) -> OpenMeterSource | None:
        if self._source is None and self.settings.openmeter.enabled:
            self._source = _build.openmeter_source(self.settings)
        return self._source

    def pusher(self) -> UsagePusher:
        """The usage push to Stripe's meters (builds the Stripe target)."""
        if self._pusher is None:
            self._pusher = _build.usage_pusher(self.settings, self.stripe(), self.catalog.store)
        return self._pusher

    def limiters(self) -> dict[str, AdaptiveLimiter]:
        """The rate limiters of what was built, by the name the service's metrics use."""
        found: dict[str, AdaptiveLimiter] = {}
        if self._stripe is not None:
            found["stripe_customers"] = self._stripe.limiter
        if self._pusher is not None:
            sink_limiter = getattr(self._pusher.sink, "limiter", None)
            if sink_limiter is not None:
                found["stripe_meter_events"] = sink_limiter
        if self._hubspot is not None:
            found["hubspot"] = self._hubspot.limiter
        return found

    async def close(self) -> None:
        built: list[Any] = [self._stripe, self._hubspot, self._source]
        self._stripe = self._hubspot = self._source = None
        self._pusher = None
        for adapter in built:
            if adapter is not None:
                await adapter.close()

    # -- the steps -------------------------------------------------------------------------------

    async def pull_catalog(self, *, allow_mass_delete: bool = False) -> PullResult | None:
        """Subjects and customers from the source (None when metersync is its own catalog)."""
        source = self.source()
        if source is None:
            return None
        return await source.pull_catalog(self.catalog, allow_mass_delete=allow_mass_delete)

    async def pull_usage(self, *, full: bool = False, crm: bool = True) -> PullResult | None:
        """Usage figures from the source, for the push and (unless `crm` is False) the CRM's
        usage properties. None when the usage is aggregated here, or nothing reads it."""
        source = self.source()
        crm_usage = crm and self.settings.hubspot.enabled and bool(self.meters)
        wanted = self.pushes_usage or crm_usage
        if source is None or not wanted:
            return None
        return await source.pull_usage(self.catalog.store, full=full)

    async def pull_entitlements(self) -> PullResult | None:
        """The CRM's entitlement figures from the source, for the configured features
        ([hubspot] entitlement_features). None when entitlements are kept here, or no CRM shows
        any."""
        source = self.source()
        features = self.settings.hubspot.entitlement_features
        if source is None or not self.settings.hubspot.enabled or not features:
            return None
        return await source.pull_entitlements(self.catalog.store, features)

    async def sync_stripe(self, run: SyncRun) -> RunResult:
        """Stripe's customers; a customer about to be deleted first pays what it owes."""
        before_delete = self.settle_owed if self.pushes_usage else None
        return await self._sync(self.stripe(), run, before_delete=before_delete)

    async def push_usage(self, *, dry_run: bool = False) -> PushResult:
        if not self.pushes_usage:
            raise ConfigError("no [[meters]] with a stripe section are configured")
        return await self.pusher().run(dry_run=dry_run, should_stop=self.should_stop)

    def fold_entitlement_usage(self) -> int:
        """Fold new usage into the metered features' hourly cells (entitlements.refresh)."""
        book = EntitlementBook(self.catalog.store, self.meters)
        return EntitlementValues(book, self.catalog.store, self.meters).refresh()

    async def sync_crm(self, run: SyncRun) -> RunResult:
        """HubSpot's companies, which show the Stripe customer ids and the usage pushed."""
        return await self._sync(self.hubspot(), run)

    async def _sync(
        self,
        target: Target,
        run: SyncRun,
        *,
        before_delete: Callable[[str], Awaitable[bool]] | None = None,
    ) -> RunResult:
        options = _build.sync_options(
            self.settings,
            full=run.full,
            dry_run=run.dry_run,
            allow_mass_delete=run.allow_mass_delete,
            target=target.name,
        )
        return await sync_customers(
            self.catalog,
            target,
            options,
            progress=run.progress,
            before_delete=before_delete,
            should_stop=self.should_stop,
        )

    async def process_webhooks(self, *, limit: int = 100) -> dict[str, int]:
        """Stripe webhook events stored and not processed yet (pipeline._webhooks)."""
        options = _build.sync_options(
            self.settings, full=True, dry_run=False, allow_mass_delete=False
        )
        return await process_pending(self.catalog, self.stripe(), options, limit=limit)

    async def ensure_meters(self, *, dry_run: bool) -> list[MeterCheck]:
        """Stripe's billing meters for the configured meters: created, reactivated, checked."""
        return await ensure_meters(self.stripe(), self.settings.meters, dry_run=dry_run)

    async def verify_usage(
        self,
        start: int,
        end: int,
        *,
        repair: bool,
        chunk_size: int = DEFAULT_CHUNK,
        progress: Callable[[int, int], None] | None = None,
    ) -> Verification:
        """Stripe's figures against the ledger against the usage figures over [start, end),
        `chunk_size` customers at a time; `progress(done, total)` counts customers."""
        if not self.pushes_usage:
            raise ConfigError("usage verify: no [[meters]] with a stripe section are configured")
        figures = StripeMeterFigures(self.stripe())
        return await verify(
            self.catalog.store,
            figures,
            self.pusher(),
            start,
            end,
            repair=repair,
            chunk_size=chunk_size,
            progress=progress,
        )

    async def settle_owed(self, customer_key: str) -> bool:
        """What runs before a Stripe customer is deleted: read what it still owes from the
        source (when there is one), then push it. True when nothing is left undelivered."""
        source = self.source()
        pusher = self.pusher()
        if source is not None:
            await source.pull_owed(self.catalog.store, customer_key, target=pusher.target)
        return await pusher.flush(customer_key)
