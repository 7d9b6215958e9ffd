"""OpenMeter as the source: its subjects and customers become the local catalog, its meter
query becomes the usage the push sends to Stripe, its entitlement values the figures the CRM
shows."""

from metersync.sources.openmeter._aggregates import OpenMeterAggregates
from metersync.sources.openmeter._catalog_pull import SourceMassDelete
from metersync.sources.openmeter._client import OpenMeterClient, SourceUnavailable
from metersync.sources.openmeter._entitlements import OpenMeterEntitlements
from metersync.sources.openmeter._source import OpenMeterSource
from metersync.sources.openmeter._state import PullResult, source_status
from metersync.sources.openmeter._usage_pull import SourceMismatch

__all__ = [
    "OpenMeterAggregates",
    "OpenMeterClient",
    "OpenMeterEntitlements",
    "OpenMeterSource",
    "PullResult",
    "SourceMassDelete",
    "SourceMismatch",
    "SourceUnavailable",
    "source_status",
]
