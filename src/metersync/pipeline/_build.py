"""Adapters and options built from settings: the one place that knows which settings each
target, source and push needs (the composition root; pipeline._steps builds through it)."""

from __future__ import annotations

from metersync.catalog.meters import Meter
from metersync.errors import ConfigError
from metersync.settings import Settings
from metersync.sources.openmeter import (
    OpenMeterAggregates,
    OpenMeterEntitlements,
    OpenMeterSource,
)
from metersync.store import Store
from metersync.sync.apply import RetryPolicy
from metersync.sync.customer_sync import SyncOptions
from metersync.sync.model import DeletePolicy
from metersync.sync.ports import EntitlementSource
from metersync.targets.hubspot import HubSpotTarget
from metersync.targets.stripe import StripeTarget, meter_event_sender
from metersync.usage.local_aggregates import LOCAL
from metersync.usage.ports import UsageAggregates
from metersync.usage.push import UsagePusher


def stripe_target(settings: Settings) -> StripeTarget:
    key = settings.stripe.resolved_api_key()
    if key is None:
        raise ConfigError(
            "stripe.api_key is not set: set STRIPE_API_KEY (or stripe.api_key_file) to a Stripe "
            "secret or restricted key"
        )
    return StripeTarget(
        key.get_secret_value(),
        api_base=settings.stripe.api_base,
        rate=settings.sync.rate_limit,
        search_rate=settings.sync.search_rate_limit,
        timeout=settings.sync.request_timeout_s,
        http_client=settings.stripe.http_client,
    )


def hubspot_target(settings: Settings) -> HubSpotTarget | None:
    """The CRM target, or None when no HubSpot access token is configured."""
    hubspot = settings.hubspot
    if not hubspot.enabled:
        return None
    token = hubspot.resolved_token()
    if token is None:
        raise ConfigError(
            "hubspot.access_token_file is empty: put a HubSpot private-app access token in it"
        )
    return HubSpotTarget(
        token.get_secret_value(),
        api_base=hubspot.api_base,
        meters=[Meter.of(m) for m in settings.meters],
        requests_per_10s=hubspot.requests_per_10s,
        daily_limit=hubspot.daily_limit,
        daily_reserve=hubspot.daily_reserve,
        batch_size=hubspot.batch_size,
        timeout=hubspot.request_timeout_s,
        contacts=hubspot.contacts,
        entitlement_features=hubspot.entitlement_features,
    )


def sync_options(
    settings: Settings,
    *,
    full: bool,
    dry_run: bool,
    allow_mass_delete: bool,
    target: str = "stripe",
) -> SyncOptions:
    """How a run of `target` goes: the [sync] section, with [hubspot]'s own delete policy and
    concurrency for HubSpot (its writes are batched: many actions in flight fill a batch)."""
    sync = settings.sync
    hubspot = target == "hubspot"
    return SyncOptions(
        full=full,
        dry_run=dry_run,
        policy=DeletePolicy(
            on_delete=settings.hubspot.delete_policy if hubspot else sync.delete_policy,
            on_missing=sync.missing_policy,
            on_orphan=sync.orphan_policy,
            max_delete_fraction=sync.max_delete_fraction,
            max_deletes=sync.max_deletes,
            mass_delete_floor=sync.mass_delete_floor,
            allow_mass_delete=allow_mass_delete,
        ),
        concurrency=settings.hubspot.concurrency if hubspot else sync.concurrency,
        retry=RetryPolicy(attempts=sync.retry_attempts),
        meters=tuple(Meter.of(m) for m in settings.meters),
        # Usage binds to customers when it is pushed to Stripe; with no Stripe meter to push
        # to, the HubSpot sync binds it.
        bind_usage=hubspot and not any(m.stripe for m in settings.meters),
        aggregates=usage_aggregates(settings),
        entitlements=entitlement_source(settings) if hubspot else None,
    )


def entitlement_source(settings: Settings) -> EntitlementSource | None:
    """Where the CRM's entitlement figures come from: OpenMeter's, as pulled, when it is the
    source (it keeps the entitlements); None: the local entitlement engine."""
    return OpenMeterEntitlements() if settings.openmeter.enabled else None


def openmeter_source(settings: Settings) -> OpenMeterSource | None:
    """The OpenMeter source, or None when metersync aggregates its own events."""
    if not settings.openmeter.enabled:
        return None
    return OpenMeterSource(
        settings.openmeter,
        [Meter.of(m) for m in settings.meters],
        window_s=settings.usage.window_s,
        max_delete_fraction=settings.sync.max_delete_fraction,
        mass_delete_floor=settings.sync.mass_delete_floor,
    )


def usage_aggregates(settings: Settings) -> UsageAggregates:
    """Where meter values come from: OpenMeter's query when it is the source, else local."""
    return OpenMeterAggregates() if settings.openmeter.enabled else LOCAL


def usage_pusher(settings: Settings, target: StripeTarget, store: Store) -> UsagePusher:
    """The usage push to Stripe's meters, with its own meter-event rate limit."""
    usage = settings.usage
    return UsagePusher(
        store=store,
        target=target.name,
        sink=meter_event_sender(settings, target),
        meters=[Meter.of(m) for m in settings.meters],
        window_s=usage.window_s,
        late_usage=usage.late_usage,
        aggregates=usage_aggregates(settings),
    )
