"""The entitlement half of a pull: with OpenMeter as the source, the CRM shows OpenMeter's
entitlement figures, read here into `upstream_entitlement` (store.upstream_entitlements).

Which customers: those OpenMeter holds (the live rows of `upstream_customer`, which the catalog
pull keeps). Which entitlements: those to the configured features (hubspot.entitlement_features)
only; nothing is read when none is configured.

The cost, per pull: one `GET /api/v1/customers/{id}/access` per customer (its values: access,
balance, usage, overage), and one `GET /api/v2/customers/{id}/entitlements` (one page of up to
1000) only for a customer holding a configured feature whose value is metered, for the end of
its current usage period, which the access answer lacks. So at most two requests per customer,
CONCURRENCY of them in flight; OpenMeter has no endpoint that answers for many customers at once.
Answers are stored CHUNK customers a transaction, and a row is rewritten only when its figures
changed (its `changed_at` stamped then), so the CRM tick that follows re-renders the customers
whose figures moved and no others. A failed request fails the pull (SourceUnavailable); the
chunks stored before it stand, each customer's figures whole.
"""

from __future__ import annotations

import asyncio
from collections.abc import Mapping, Sequence
from datetime import datetime
from decimal import Decimal, InvalidOperation
from typing import Any

from metersync.logs import get_logger
from metersync.sources.openmeter._client import OpenMeterClient, SourceUnavailable
from metersync.sources.openmeter._state import ENTITLEMENT_STATE, SOURCE, PullResult, _record
from metersync.sources.openmeter._usage_store import _customer_ids
from metersync.store import Store
from metersync.store.upstream_entitlements import (
    UpstreamFigures,
    forget_customers,
    store_figures,
)

_log = get_logger("metersync.sources.openmeter")

CONCURRENCY = 8  # customers read at once
CHUNK = 200  # customers per store transaction
_METERED = ("balance", "usage", "overage")

Figures = dict[str, UpstreamFigures]  # feature key → figures


class EntitlementPull:
    """`OpenMeterSource.pull_entitlements`: each customer's access (and, for a metered
    entitlement, its usage period), then the figures that changed."""

    def __init__(self, client: OpenMeterClient) -> None:
        self.client = client

    async def pull_entitlements(self, store: Store, features: Sequence[str]) -> PullResult:
        """The figures of `features` for every customer OpenMeter holds. The OpenMeter calls
        stay on the event loop; the database work runs in a worker thread."""
        result = PullResult()
        wanted = tuple(dict.fromkeys(features))
        if not wanted:
            return result
        sent = self.client.requests
        ids = await asyncio.to_thread(_customer_ids, store)
        keys = sorted(ids)
        limit = asyncio.Semaphore(CONCURRENCY)

        async def read(key: str) -> tuple[str, Figures | None]:
            async with limit:
                return key, await self._read(ids[key], wanted)

        try:
            for start in range(0, len(keys), CHUNK):
                answers = await asyncio.gather(*(read(k) for k in keys[start : start + CHUNK]))
                # A customer OpenMeter no longer knows (deleted since the catalog pull) is left
                # as it was: the next catalog pull deletes it.
                answered = {key: figures for key, figures in answers if figures is not None}
                written = await asyncio.to_thread(store_figures, store, SOURCE, answered)
                result.add("customers", len(answered))
                result.add("changed", written)
            result.add("forgotten", await asyncio.to_thread(forget_customers, store, SOURCE, keys))
        except SourceUnavailable as exc:
            await asyncio.to_thread(
                _record, store, ENTITLEMENT_STATE, ok=False, summary={"error": exc.message}
            )
            raise
        await asyncio.to_thread(
            _record, store, ENTITLEMENT_STATE, ok=True, summary={"entitlements": result.counts}
        )
        _log.info(
            "pulled entitlements from OpenMeter",
            counts=result.counts,
            requests=self.client.requests - sent,
        )
        return result

    async def _read(self, customer_id: str, features: Sequence[str]) -> Figures | None:
        """One customer's figures of `features` ({} without any), or None when OpenMeter does
        not know the customer."""
        access = await self.client.customer_access(customer_id)
        if access is None:
            return None
        values = {f: access[f] for f in features if f in access}
        metered = [f for f, v in values.items() if any(v.get(n) is not None for n in _METERED)]
        kinds: dict[str, str] = {}
        ends: dict[str, datetime | None] = {}
        if metered:
            listed = await self.client.customer_entitlements(customer_id)
            if listed is None:
                return None
            for item in listed:
                feature = str(item.get("featureKey") or "")
                if feature in values:
                    kinds[feature] = str(item.get("type") or "")
                    ends[feature] = _period_end(item)
        return {
            feature: _figures(value, kinds.get(feature), ends.get(feature))
            for feature, value in values.items()
        }


def _figures(value: Mapping[str, Any], kind: str | None, end: datetime | None) -> UpstreamFigures:
    metered = any(value.get(n) is not None for n in _METERED)
    if not kind:
        kind = "metered" if metered else ("static" if value.get("config") else "boolean")
    return UpstreamFigures(
        kind=kind,
        has_access=bool(value.get("hasAccess")),
        balance=_amount(value.get("balance")),
        usage=_amount(value.get("usage")),
        overage=_amount(value.get("overage")),
        period_end=end if kind == "metered" else None,
    )


def _amount(value: Any) -> Decimal | None:
    """A JSON number as Decimal (the client parses them as Decimal already; an int stays
    exact); anything else is no figure."""
    if value is None or isinstance(value, bool):
        return None
    try:
        return Decimal(value) if isinstance(value, (Decimal, int)) else Decimal(str(value))
    except InvalidOperation:
        return None


def _period_end(item: Mapping[str, Any]) -> datetime | None:
    period = item.get("currentUsagePeriod")
    if not isinstance(period, Mapping) or not period.get("to"):
        return None
    try:
        return datetime.fromisoformat(str(period["to"]).replace("Z", "+00:00"))
    except ValueError:
        return None
