"""A customer as a HubSpot company: pure, no I/O.

The company carries the customer's fields, its Stripe customer id and, per configured meter, the
current month's usage with the time of the latest event counted (the same aggregation the usage
push sends to Stripe), and per configured feature the figures of the customer's live
entitlement to it (access, balance, usage in the usage period, the period's end). Those come
from the render context (sync/context.py), so a new Stripe id, new usage or a new grant
re-renders the company on the next tick without a catalog change.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import UTC, datetime
from decimal import Decimal
from typing import Any

from metersync.catalog.meters import Meter
from metersync.catalog.views import Customer
from metersync.sync.model import Desired
from metersync.sync.ports import MANAGED_KEY, EntitlementFigures, PeriodUsage, RenderContext
from metersync.targets.hubspot._properties import (
    ADDRESS,
    EMAIL,
    STRIPE_ID,
    entitlement_property,
    usage_property,
    usage_time_property,
)

VALUE_MAX = 65_536  # HubSpot's limit for a string property value


def render_company(
    customer: Customer,
    context: RenderContext,
    meters: Sequence[Meter],
    features: Sequence[str] = (),
) -> Desired:
    address = customer.billing_address
    fields: dict[str, Any] = {
        "name": customer.name,
        "description": customer.description,
        "phone": address.phone_number,
        **{prop: getattr(address, attr) for prop, attr in ADDRESS.items()},
        EMAIL: customer.primary_email,
        STRIPE_ID: context.external_id("stripe", customer.key),
    }
    usage = context.usage_of(customer.key)
    for meter in meters:
        figure: PeriodUsage | None = usage.get(meter.slug)
        fields[usage_property(meter.slug)] = _number(figure.value) if figure else None
        fields[usage_time_property(meter.slug)] = timestamp(figure.latest) if figure else None
    entitlements = context.entitlements_of(customer.key)
    for feature in features:
        fields.update(entitlement_fields(feature, entitlements.get(feature)))
    blocked = [
        f"{name} is longer than HubSpot's {VALUE_MAX} characters"
        for name, value in fields.items()
        if isinstance(value, str) and len(value) > VALUE_MAX
    ]
    if len(customer.key) > VALUE_MAX:
        blocked.append(f"the key is longer than HubSpot's {VALUE_MAX} characters")
    return Desired(customer.key, fields, {MANAGED_KEY: customer.key}, tuple(blocked))


def entitlement_fields(feature: str, figures: EntitlementFigures | None) -> dict[str, Any]:
    """A feature's properties: all empty without a live entitlement; a boolean or static one
    has access only."""
    access = None if figures is None else ("true" if figures.has_access else "false")
    balance = None if figures is None else figures.balance
    usage = None if figures is None else figures.usage
    period_end = None if figures is None else figures.period_end
    return {
        entitlement_property(feature, "access"): access,
        entitlement_property(feature, "balance"): None if balance is None else decimal(balance),
        entitlement_property(feature, "usage"): None if usage is None else decimal(usage),
        entitlement_property(feature, "period_end"): (
            None if period_end is None else timestamp(period_end)
        ),
    }


def timestamp(moment: datetime) -> str:
    """ISO 8601 with milliseconds and Z, the form HubSpot answers datetime properties in."""
    return moment.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.") + (
        f"{moment.microsecond // 1000:03d}Z"
    )


def _number(value: float) -> str:
    """A meter value as HubSpot shows it: whole numbers without a decimal point."""
    if float(value).is_integer():
        return str(int(value))
    return format(Decimal(repr(value)).normalize(), "f")


def decimal(value: Decimal) -> str:
    """An amount as HubSpot shows a number: no exponent, no trailing zeros, whole numbers
    without a decimal point."""
    if value == value.to_integral_value():
        return str(int(value))
    return format(value.normalize(), "f")
