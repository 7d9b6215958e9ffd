"""Targets built from settings: the one place that knows which settings each target needs."""

from __future__ import annotations

from metersync.errors import ConfigError
from metersync.settings import Settings
from metersync.store import Store
from metersync.sync.apply import RetryPolicy
from metersync.sync.model import DeletePolicy
from metersync.sync.reconcile import SyncOptions
from metersync.targets.stripe import StripeTarget
from metersync.targets.stripe_meters import meter_event_sender
from metersync.usage.meters import Meter
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


def sync_options(
    settings: Settings, *, full: bool, dry_run: bool, allow_mass_delete: bool
) -> SyncOptions:
    sync = settings.sync
    return SyncOptions(
        full=full,
        dry_run=dry_run,
        policy=DeletePolicy(
            on_delete=sync.delete_policy,
            on_missing=sync.missing_policy,
            on_orphan=sync.orphan_policy,
            max_delete_fraction=sync.max_delete_fraction,
            max_deletes=sync.max_deletes,
            mass_delete_floor=sync.mass_delete_floor,
            allow_mass_delete=allow_mass_delete,
        ),
        concurrency=sync.concurrency,
        retry=RetryPolicy(attempts=sync.retry_attempts),
    )


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
    )
