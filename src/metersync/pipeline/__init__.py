"""The application: builds the adapters the settings configure and runs the steps in the order
data flows (pull from the source → Stripe's customers → the usage push → the CRM). The CLI and
the service are doors into these same steps; nothing else builds a target or a source.

    async with Pipeline(settings, catalog) as pipeline:
        await pipeline.sync_stripe(SyncRun(full=False))
        await pipeline.push_usage()
"""

from metersync.pipeline._reconcile import TARGETS, ReconcileResult, check_targets, reconcile
from metersync.pipeline._steps import Pipeline, SyncRun
from metersync.pipeline._verification import Verification
from metersync.pipeline._webhooks import replay_webhooks
from metersync.sources.openmeter import source_status
from metersync.targets.stripe import MeterCheck

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
