"""The application: builds the adapters the settings configure and runs the steps in the order
data flows (pull from the source → Stripe's customers → the usage push → the CRM). The CLI and
the service are doors into these same steps; nothing else builds a target or a source.

    async with Pipeline(settings, catalog) as pipeline:
        await pipeline.sync_stripe(SyncRun(full=False))
        await pipeline.push_usage()

Names load on first use (PEP 562): each CLI command imports this package, and `metersync
status` should not pay for the Stripe SDK and aiohttp that `Pipeline` brings.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from metersync.pipeline._reconcile import TARGETS, ReconcileResult, check_targets, reconcile
    from metersync.pipeline._steps import Pipeline, SyncRun
    from metersync.pipeline._verification import Verification
    from metersync.pipeline._webhooks import replay_webhooks
    from metersync.sources.openmeter import source_status
    from metersync.targets.stripe import MeterCheck

# Each public name and the module that defines it.
_HOMES = {
    "TARGETS": "metersync.pipeline._reconcile",
    "ReconcileResult": "metersync.pipeline._reconcile",
    "check_targets": "metersync.pipeline._reconcile",
    "reconcile": "metersync.pipeline._reconcile",
    "Pipeline": "metersync.pipeline._steps",
    "SyncRun": "metersync.pipeline._steps",
    "Verification": "metersync.pipeline._verification",
    "replay_webhooks": "metersync.pipeline._webhooks",
    "source_status": "metersync.sources.openmeter",
    "MeterCheck": "metersync.targets.stripe",
}

__all__ = [
    "TARGETS",
    "MeterCheck",
    "Pipeline",
    "ReconcileResult",
    "SyncRun",
    "Verification",
    "check_targets",
    "reconcile",
    "replay_webhooks",
    "source_status",
]


def __getattr__(name: str) -> Any:
    home = _HOMES.get(name)
    if home is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(home), name)
    globals()[name] = value  # the next lookup is a plain attribute
    return value
