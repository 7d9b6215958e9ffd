"""The OpenMeter emulator's entitlements: figures a test seeds per customer and feature, served
as OpenMeter's customer access (v1) and customer entitlement list (v2).

The emulator does not compute balances: no grants, no burn-down, no usage read from the
meters. A test says what OpenMeter would answer (`set_entitlement`): the value (hasAccess,
balance, usage, overage, …) and, for a metered entitlement, its current usage period; the
emulator serves exactly that until the test says otherwise.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from metersync.testing._openmeter_store import BadRequest, rfc3339

TYPES = ("metered", "boolean", "static")
INTERVALS = {"DAY": "P1D", "WEEK": "P1W", "MONTH": "P1M", "YEAR": "P1Y"}
FEATURE_KEY = re.compile(r"^[a-z0-9]+(?:_[a-z0-9]+)*$")
# EntitlementValue's fields; the metered figures are numbers.
VALUE_FIELDS = ("hasAccess", "balance", "usage", "overage", "totalAvailableGrantAmount", "config")
_NUMBERS = ("balance", "usage", "overage", "totalAvailableGrantAmount")


@dataclass
class SeededEntitlement:
    id: str
    customer_id: str
    customer_key: str | None
    feature_key: str
    feature_id: str
    type: str
    value: dict[str, Any]  # EntitlementValue, as seeded
    created_at: datetime
    updated_at: datetime
    period: tuple[datetime, datetime] | None = None  # the current usage period (metered)
    interval: str = "MONTH"  # the usage period's interval (metered)
    config: str | None = None  # static

    def value_json(self) -> dict[str, Any]:
        return dict(self.value)

    def as_json(self) -> dict[str, Any]:
        """EntitlementV2, by its type."""
        body: dict[str, Any] = {
            "type": self.type,
            "id": self.id,
            "featureKey": self.feature_key,
            "featureId": self.feature_id,
            "customerId": self.customer_id,
            "createdAt": rfc3339(self.created_at),
            "updatedAt": rfc3339(self.updated_at),
            "activeFrom": rfc3339(self.created_at),
        }
        if self.customer_key is not None:
            body["customerKey"] = self.customer_key
        if self.type == "static":
            body["config"] = self.config or "{}"
        if self.type == "metered":
            assert self.period is not None
            start, end = self.period
            body.update(
                {
                    "isSoftLimit": False,
                    "lastReset": rfc3339(start),
                    "currentUsagePeriod": {"from": rfc3339(start), "to": rfc3339(end)},
                    "measureUsageFrom": rfc3339(self.created_at),
                    "usagePeriod": {
                        "interval": self.interval,
                        "intervalISO": INTERVALS[self.interval],
                        "anchor": rfc3339(start),
                    },
                }
            )
        return body


class Entitlements:
    """Seeded entitlements: customer id → feature key → entitlement."""

    def __init__(self, new_id: Callable[[], str], clock: Callable[[], datetime]) -> None:
        self.new_id = new_id
        self.clock = clock
        self.by_customer: dict[str, dict[str, SeededEntitlement]] = {}
        self.feature_ids: dict[str, str] = {}  # feature key → its id

    def set(
        self,
        customer_id: str,
        customer_key: str | None,
        feature_key: str,
        *,
        type: str,
        value: Mapping[str, Any],
        period: tuple[datetime, datetime] | None,
        interval: str,
        config: str | None,
    ) -> SeededEntitlement:
        """Create the customer's entitlement to the feature, or replace its figures (its id
        and createdAt stay; updatedAt moves)."""
        if not FEATURE_KEY.fullmatch(feature_key) or len(feature_key) > 64:
            raise BadRequest(f"invalid feature key {feature_key!r}")
        if type not in TYPES:
            raise BadRequest(f"invalid entitlement type {type!r}; one of {', '.join(TYPES)}")
        if interval not in INTERVALS:
            raise BadRequest(f"invalid interval {interval!r}; one of {', '.join(INTERVALS)}")
        unknown = sorted(set(value) - set(VALUE_FIELDS))
        if unknown:
            raise BadRequest(f"unknown EntitlementValue field {unknown[0]!r}")
        figures: dict[str, Any] = {"hasAccess": bool(value.get("hasAccess", True))}
        for name in _NUMBERS:
            if value.get(name) is not None:
                if type != "metered":
                    raise BadRequest(f"{name} is only for metered entitlements")
                figures[name] = value[name]
        if type == "static":
            figures["config"] = config or value.get("config") or "{}"
        if type == "metered" and period is None:
            raise BadRequest("a metered entitlement needs its current usage period")
        if type != "metered":
            period = None
        now = self.clock()
        held = self.by_customer.setdefault(customer_id, {})
        before = held.get(feature_key)
        feature_id = self.feature_ids.setdefault(feature_key, self.new_id())
        held[feature_key] = SeededEntitlement(
            id=before.id if before is not None else self.new_id(),
            customer_id=customer_id,
            customer_key=customer_key,
            feature_key=feature_key,
            feature_id=feature_id,
            type=type,
            value=figures,
            created_at=before.created_at if before is not None else now,
            updated_at=now,
            period=period,
            interval=interval,
            config=figures.get("config"),
        )
        return held[feature_key]

    def delete(self, customer_id: str, feature_key: str) -> None:
        """KeyError when the customer has no entitlement to the feature."""
        held = self.by_customer.get(customer_id, {})
        if feature_key not in held:
            raise KeyError(f"no entitlement to {feature_key} for customer {customer_id}")
        del held[feature_key]

    def of(self, customer_id: str) -> list[SeededEntitlement]:
        """The customer's entitlements, oldest first."""
        held = self.by_customer.get(customer_id, {}).values()
        return sorted(held, key=lambda e: (e.created_at, e.id))
