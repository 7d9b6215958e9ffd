"""One reconcile over every configured target, in the order data flows between them: Stripe's
customers, then the usage push to Stripe's meters, then the CRM, whose companies show the
Stripe customer ids and the usage just pushed. `metersync reconcile` calls this; the service
runs the same steps as separate jobs.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

from metersync.catalog import Catalog
from metersync.errors import ConfigError, ExitCode
from metersync.settings import Settings
from metersync.sources.openmeter import OpenMeterSource, PullResult
from metersync.sync.reconcile import RunResult, sync_customers
from metersync.targets.factory import (
    hubspot_target,
    openmeter_source,
    stripe_target,
    sync_options,
    usage_pusher,
)
from metersync.usage.push import PushResult, UsagePusher

TARGETS = ("stripe", "hubspot")


@dataclass
class ReconcileResult:
    customers: dict[str, RunResult] = field(default_factory=dict)  # by target, in run order
    usage: PushResult | None = None
    pulled: dict[str, PullResult] = field(default_factory=dict)  # "catalog", "usage"

    @property
    def exit_code(self) -> ExitCode:
        codes = [r.exit_code for r in self.customers.values()]
        if self.usage is not None and self.usage.failed:
            codes.append(ExitCode.SOME_FAILED)
        # The guard outranks a failed item: it means "look before anything is deleted".
        if any(p.problems for p in self.pulled.values()):
            codes.append(ExitCode.SOME_FAILED)
        for code in (ExitCode.MASS_DELETE_GUARD, ExitCode.SOME_FAILED):
            if code in codes:
                return code
        return ExitCode.OK

    def to_json(self) -> dict[str, Any]:
        # Stripe's run at the top level (as before there were two targets), the others under
        # "targets".
        stripe = self.customers.get("stripe")
        data: dict[str, Any] = stripe.to_json() if stripe else {}
        others = {name: r.to_json() for name, r in self.customers.items() if name != "stripe"}
        if others:
            data["targets"] = others
        if self.usage is not None:
            data["usage"] = self.usage.to_json()
        if self.pulled:
            data["source"] = {name: p.to_json() for name, p in self.pulled.items()}
        data["exitCode"] = int(self.exit_code)
        return data


def check_targets(settings: Settings, only_target: str | None) -> None:
    if only_target is not None and only_target not in TARGETS:
        raise ConfigError(f"--target {only_target!r}: use one of {', '.join(TARGETS)}")
    if only_target == "hubspot" and not settings.hubspot.enabled:
        raise ConfigError(
            "--target hubspot: HubSpot is not configured; set METERSYNC_HUBSPOT_ACCESS_TOKEN "
            "(or hubspot.access_token_file)"
        )


async def reconcile(
    catalog: Catalog,
    settings: Settings,
    *,
    full: bool = False,
    dry_run: bool = False,
    allow_mass_delete: bool = False,
    only: str | None = None,
    only_target: str | None = None,
    progress: Callable[[int, int], None] | None = None,
) -> ReconcileResult:
    """`only`: "customers" or "usage" (None: both). `only_target`: "stripe" or "hubspot"."""
    check_targets(settings, only_target)
    result = ReconcileResult()
    stripe = stripe_target(settings)
    pusher = usage_pusher(settings, stripe, catalog.store)
    if only == "usage" and not pusher.configured:
        raise ConfigError("--only usage: no [[meters]] with a stripe section are configured")
    hubspot = hubspot_target(settings) if only_target in (None, "hubspot") else None
    source = openmeter_source(settings)
    try:
        if source is not None and not dry_run:
            # Pull before planning: the catalog and usage the targets get are OpenMeter's now.
            if only in (None, "customers"):
                result.pulled["catalog"] = await source.pull_catalog(
                    catalog, allow_mass_delete=allow_mass_delete
                )
            # Usage for the Stripe push, and for the CRM's usage properties.
            wants_usage = pusher.configured or (hubspot is not None and hubspot.needs.usage)
            if only in (None, "usage") and wants_usage:
                result.pulled["usage"] = await source.pull_usage(catalog.store, full=full)
        if only in (None, "customers") and only_target in (None, "stripe"):
            result.customers["stripe"] = await sync_customers(
                catalog,
                stripe,
                _options(settings, "stripe", full, dry_run, allow_mass_delete),
                progress=progress,
                before_delete=_owed(source, pusher, catalog) if pusher.configured else None,
            )
        if only_target in (None, "stripe") and (
            only == "usage" or (only is None and pusher.configured)
        ):
            result.usage = await pusher.run(dry_run=dry_run)
        if hubspot is not None and only in (None, "customers"):
            result.customers["hubspot"] = await sync_customers(
                catalog,
                hubspot,
                _options(settings, "hubspot", full, dry_run, allow_mass_delete),
                progress=progress,
            )
        return result
    finally:
        await stripe.close()
        if hubspot is not None:
            await hubspot.close()
        if source is not None:
            await source.close()


def _owed(
    source: OpenMeterSource | None, pusher: UsagePusher, catalog: Catalog
) -> Callable[[str], Awaitable[bool]]:
    """What runs before a Stripe customer is deleted: read what it still owes from the source
    (when there is one), then push it."""

    async def flush(key: str) -> bool:
        if source is not None:
            await source.pull_owed(catalog.store, key, target=pusher.target)
        return await pusher.flush(key)

    return flush


def _options(settings: Settings, target: str, full: bool, dry_run: bool, allow: bool) -> Any:
    return sync_options(
        settings, full=full, dry_run=dry_run, allow_mass_delete=allow, target=target
    )
