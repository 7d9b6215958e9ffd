"""One reconcile over every configured target, in the order data flows between them (the
steps of pipeline._steps): `metersync reconcile`. The service runs the same steps as separate
jobs."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from metersync.catalog import Catalog
from metersync.errors import ConfigError, ExitCode
from metersync.pipeline._steps import Pipeline, SyncRun
from metersync.settings import Settings
from metersync.sources.openmeter import PullResult
from metersync.sync.customer_sync import RunResult
from metersync.usage.push import PushResult

TARGETS = ("stripe", "hubspot")


@dataclass
class ReconcileResult:
    customers: dict[str, RunResult] = field(default_factory=dict)  # by target, in run order
    usage: PushResult | None = None
    # "catalog", "usage", "entitlements"
    pulled: dict[str, PullResult] = field(default_factory=dict)

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
    stripe = only_target in (None, "stripe")
    crm = only_target in (None, "hubspot") and settings.hubspot.enabled
    customers, usage = only in (None, "customers"), only in (None, "usage")
    async with Pipeline(settings, catalog) as pipeline:
        if only == "usage" and not pipeline.pushes_usage:
            raise ConfigError("--only usage: no [[meters]] with a stripe section are configured")
        # Build the targets this run writes to before anything runs: a missing key or token
        # is a configuration error, said before a pull or a sync has done half the work.
        if stripe and (customers or pipeline.pushes_usage):
            pipeline.stripe()
        if crm and customers:
            pipeline.hubspot()
        if not dry_run:
            # Pull before planning: the catalog and usage the targets get are the source's now.
            if customers and (
                pulled := await pipeline.pull_catalog(allow_mass_delete=allow_mass_delete)
            ):
                result.pulled["catalog"] = pulled
            if usage and (pulled := await pipeline.pull_usage(full=full, crm=crm)):
                result.pulled["usage"] = pulled
            if crm and customers and (pulled := await pipeline.pull_entitlements()):
                result.pulled["entitlements"] = pulled
        run = SyncRun(
            full=full, dry_run=dry_run, allow_mass_delete=allow_mass_delete, progress=progress
        )
        if customers and stripe:
            result.customers["stripe"] = await pipeline.sync_stripe(run)
        if stripe and usage and pipeline.pushes_usage:
            result.usage = await pipeline.push_usage(dry_run=dry_run)
        if crm and customers:
            result.customers["hubspot"] = await pipeline.sync_crm(run)
    return result
