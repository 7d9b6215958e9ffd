"""HubSpot as a sync target: one company per customer, through CRM v3 over httpx.

    from metersync.targets.hubspot import HubSpotTarget

    target = HubSpotTarget(token, meters=meters, contacts=True)

Each private module holds one part: `_target.py` the target, `_render.py` what a company
carries, `_batches.py` the batched writes, `_http.py` the paced requests, `_property_check.py`
the custom properties.
"""

from metersync.targets.hubspot._allowance import DailyAllowance
from metersync.targets.hubspot._errors import HubSpotError
from metersync.targets.hubspot._properties import (
    EMAIL,
    GROUP,
    SCHEMA_VERSION,
    STRIPE_ID,
    entitlement_property,
    property_definitions,
    usage_property,
    usage_time_property,
)
from metersync.targets.hubspot._target import HubSpotTarget

__all__ = [
    "EMAIL",
    "GROUP",
    "SCHEMA_VERSION",
    "STRIPE_ID",
    "DailyAllowance",
    "HubSpotError",
    "HubSpotTarget",
    "entitlement_property",
    "property_definitions",
    "usage_property",
    "usage_time_property",
]
