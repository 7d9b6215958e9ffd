"""The company properties metersync owns in HubSpot: their names, and their definitions as the
properties API takes them.

Custom properties live in a `metersync` group and are versioned: each description ends with the
schema version (`_property_check.py` creates them, and upgrades an older one in place).
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from typing import Any

from metersync.catalog.meters import Meter
from metersync.sync.ports import ARCHIVED_KEY, MANAGED_KEY

STRIPE_ID = "stripe_customer_id"
EMAIL = "metersync_primary_email"
GROUP = "metersync"
SCHEMA_VERSION = "metersync-properties/1"

# The company's own fields we own, HubSpot's standard properties, from the customer.
ADDRESS = {
    "address": "line1",
    "address2": "line2",
    "city": "city",
    "state": "state",
    "zip": "postal_code",
    "country": "country",
}
STANDARD = ("name", "description", "phone", *ADDRESS)


def usage_property(meter: str) -> str:
    return f"metersync_usage_{_identifier(meter)}"


def usage_time_property(meter: str) -> str:
    return f"metersync_usage_{_identifier(meter)}_at"


# Per configured feature, the figures of the customer's live entitlement to it.
ENTITLEMENT_FIGURES = ("access", "balance", "usage", "period_end")


def entitlement_property(feature: str, figure: str) -> str:
    """metersync_ent_<feature>_<figure>, figure one of ENTITLEMENT_FIGURES."""
    return f"metersync_ent_{_identifier(feature)}_{figure}"


def _identifier(text: str) -> str:
    return re.sub(r"[^a-z0-9_]", "_", text.lower())


def owned_properties(meters: Sequence[Meter], features: Sequence[str] = ()) -> list[str]:
    """Every company property metersync writes and reads back, standard and custom."""
    names = [*STANDARD, EMAIL, STRIPE_ID, MANAGED_KEY, ARCHIVED_KEY]
    for meter in meters:
        names += [usage_property(meter.slug), usage_time_property(meter.slug)]
    for feature in features:
        names += [entitlement_property(feature, figure) for figure in ENTITLEMENT_FIGURES]
    return names


def property_definitions(
    meters: Sequence[Meter], features: Sequence[str] = ()
) -> list[dict[str, Any]]:
    """The custom properties metersync writes on companies, as the properties API takes them."""

    def text(name: str, label: str, about: str, *, unique: bool = False) -> dict[str, Any]:
        definition: dict[str, Any] = {
            "name": name,
            "label": label,
            "type": "string",
            "fieldType": "text",
            "groupName": GROUP,
            "description": f"{about} Written by metersync. [{SCHEMA_VERSION}]",
        }
        if unique:
            definition["hasUniqueValue"] = True
        return definition

    definitions = [
        text(MANAGED_KEY, "metersync key", "The customer's key in metersync.", unique=True),
        text(STRIPE_ID, "Stripe customer id", "The customer's id in Stripe (cus_…)."),
        text(EMAIL, "Primary email", "The customer's primary billing email."),
        text(ARCHIVED_KEY, "Archived by metersync", "When metersync archived the customer."),
    ]
    for meter in meters:
        definitions.append(
            {
                "name": usage_property(meter.slug),
                "label": f"Usage: {meter.slug} (this month)",
                "type": "number",
                "fieldType": "number",
                "groupName": GROUP,
                "description": (
                    f"{meter.aggregation.value} of meter {meter.slug} this calendar month (UTC). "
                    f"Written by metersync. [{SCHEMA_VERSION}]"
                ),
            }
        )
        definitions.append(
            {
                "name": usage_time_property(meter.slug),
                "label": f"Usage: {meter.slug} updated",
                "type": "datetime",
                "fieldType": "date",
                "groupName": GROUP,
                "description": (
                    f"Time of the latest {meter.slug} event counted. "
                    f"Written by metersync. [{SCHEMA_VERSION}]"
                ),
            }
        )
    for feature in features:
        definitions += _entitlement_definitions(feature)
    return definitions


def _entitlement_definitions(feature: str) -> list[dict[str, Any]]:
    def custom(figure: str, label: str, kind: str, field_type: str, about: str) -> dict[str, Any]:
        return {
            "name": entitlement_property(feature, figure),
            "label": f"Entitlement: {feature} {label}",
            "type": kind,
            "fieldType": field_type,
            "groupName": GROUP,
            "description": f"{about} Written by metersync. [{SCHEMA_VERSION}]",
        }

    return [
        # HubSpot's own boolean: a single checkbox whose options are "true" and "false".
        {
            **custom(
                "access",
                "has access",
                "bool",
                "booleancheckbox",
                f"Whether the customer has access to feature {feature} (empty: no entitlement).",
            ),
            "options": [
                {"label": "Yes", "value": "true", "displayOrder": 0, "hidden": False},
                {"label": "No", "value": "false", "displayOrder": 1, "hidden": False},
            ],
        },
        custom(
            "balance",
            "balance",
            "number",
            "number",
            f"What is left of feature {feature}'s grants (metered entitlements).",
        ),
        custom(
            "usage",
            "usage",
            "number",
            "number",
            f"Usage of feature {feature} in the current usage period (metered entitlements).",
        ),
        custom(
            "period_end",
            "period end",
            "datetime",
            "date",
            f"When the current usage period of feature {feature} ends (metered entitlements).",
        ),
    ]
