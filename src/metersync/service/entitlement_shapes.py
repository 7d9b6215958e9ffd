"""Entitlement records and values as OpenMeter's JSON (openapi.yaml): Feature, EntitlementV2
and the v1 Entitlement (subjectKey instead of the customer), EntitlementGrantV2 and the v1
EntitlementGrant, EntitlementValue, WindowedBalanceHistory.

Pure: each function renders what it is given. Amounts are Decimal inside and JSON numbers on
the wire (the spec's `format: double`); times are RFC 3339 in UTC, to the millisecond.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from datetime import datetime
from decimal import Decimal
from typing import Any

from metersync.entitlements import (
    BurnDownSegment,
    Entitlement,
    EntitlementGrant,
    EntitlementValue,
    Feature,
    HistoryWindow,
    Kind,
    UsagePeriod,
    UsageReset,
    WindowedHistory,
)
from metersync.times import rfc3339

JSON = dict[str, Any]


def number(amount: Decimal) -> float:
    return float(amount)


def _stamps(out: JSON, **moments: datetime | None) -> None:
    for name, moment in moments.items():
        if moment is not None:
            out[name] = rfc3339(moment)


def _period(start: datetime, end: datetime) -> JSON:
    return {"from": rfc3339(start), "to": rfc3339(end)}


def _recurring(period: UsagePeriod) -> JSON:
    return {
        "interval": period.interval.name,
        "anchor": rfc3339(period.anchor),
        "intervalISO": period.interval.iso,
    }


# -- features --------------------------------------------------------------------------------


def feature_json(feature: Feature) -> JSON:
    out: JSON = {
        "id": feature.id,
        "key": feature.key,
        "name": feature.name,
        "metadata": dict(feature.metadata),
    }
    if feature.meter_slug is not None:
        out["meterSlug"] = feature.meter_slug
    if feature.group_filters:
        out["meterGroupByFilters"] = dict(feature.group_filters)
        out["advancedMeterGroupByFilters"] = {
            name: {"$eq": value} for name, value in feature.group_filters.items()
        }
    _stamps(
        out,
        createdAt=feature.created_at,
        updatedAt=feature.updated_at,
        archivedAt=feature.archived_at,
    )
    return out


# -- entitlements ----------------------------------------------------------------------------


def current_usage_period(entitlement: Entitlement, resets: Sequence[UsageReset]) -> UsagePeriod:
    """The usage period as it stands after the resets: a reset that does not retain the anchor
    moves it to the reset's time (OpenMeter's retainAnchor)."""
    period = entitlement.usage_period
    assert period is not None
    moved = [r.at for r in resets if not r.retain_anchor]
    return period if not moved else UsagePeriod(period.interval, max(moved))


def entitlement_json(
    entitlement: Entitlement,
    resets: Sequence[UsageReset],
    now: datetime,
    *,
    subject_key: str | None = None,
) -> JSON:
    """EntitlementV2 (the customer's id and key), or with `subject_key` the deprecated v1
    Entitlement (the subject's key in their place)."""
    e = entitlement
    out: JSON = {"type": e.kind.value, "id": e.id, "featureKey": e.feature_key}
    out["featureId"] = e.feature_id
    if subject_key is None:
        out["customerId"] = e.customer_id
        out["customerKey"] = e.customer_key
    else:
        out["subjectKey"] = subject_key
    out["metadata"] = dict(e.metadata)
    _stamps(
        out,
        createdAt=e.created_at,
        updatedAt=e.updated_at,
        deletedAt=e.deleted_at,
        activeFrom=e.created_at,
        activeTo=e.deleted_at,
    )
    if e.usage_period is not None:
        current = current_usage_period(e, resets)
        out["usagePeriod"] = _recurring(current)
        window = current.period_at(now)
        out["currentUsagePeriod"] = _period(window.start, window.end)
    if e.kind is Kind.METERED:
        out["isSoftLimit"] = e.is_soft_limit
        out["preserveOverageAtReset"] = e.preserve_overage_at_reset
        measured = e.measure_usage_from or e.created_at
        out["measureUsageFrom"] = rfc3339(measured)
        out["lastReset"] = rfc3339(max([measured, *(r.at for r in resets)]))
        if e.issue is not None:
            out["issueAfterReset"] = number(e.issue.amount)
            out["issueAfterResetPriority"] = e.issue.priority
            if subject_key is None:
                out["issue"] = {"amount": number(e.issue.amount), "priority": e.issue.priority}
    elif e.kind is Kind.STATIC and e.config is not None:
        out["config"] = e.config
    return out


# -- grants ----------------------------------------------------------------------------------


def grant_json(grant: EntitlementGrant, now: datetime) -> JSON:
    """EntitlementGrantV2; the v1 EntitlementGrant is the same object (the v1 shape requires an
    expiration, which a grant made through v1 always has)."""
    g = grant
    out: JSON = {
        "id": g.id,
        "entitlementId": g.entitlement_id,
        "amount": number(g.amount),
        "priority": g.priority,
        "minRolloverAmount": number(g.min_rollover),
        # None means "the amount": said explicitly, since v1 reads a missing one as 0.
        "maxRolloverAmount": number(g.amount if g.max_rollover is None else g.max_rollover),
        "metadata": dict(g.metadata),
    }
    _stamps(
        out,
        createdAt=g.created_at,
        updatedAt=g.updated_at,
        effectiveAt=g.effective_at,
        expiresAt=g.expires_at,
        voidedAt=g.voided_at,
    )
    if g.expiration is not None:
        out["expiration"] = {"duration": g.expiration.duration, "count": g.expiration.count}
    if g.recurrence is not None:
        out["recurrence"] = _recurring(g.recurrence)
        _stamps(out, nextRecurrence=g.next_recurrence(max(now, g.effective_at)))
    return out


# -- values ----------------------------------------------------------------------------------


def value_json(value: EntitlementValue) -> JSON:
    out: JSON = {"hasAccess": value.has_access}
    figures = {
        "balance": value.balance,
        "usage": value.usage,
        "overage": value.overage,
        "totalAvailableGrantAmount": value.total_available_grant_amount,
    }
    out.update({name: number(v) for name, v in figures.items() if v is not None})
    if value.config is not None:
        out["config"] = value.config
    return out


def access_json(values: Mapping[str, EntitlementValue]) -> JSON:
    return {"entitlements": {key: value_json(v) for key, v in sorted(values.items())}}


def _balances(balances: Mapping[str, Decimal]) -> JSON:
    return {grant: number(amount) for grant, amount in balances.items()}


def _window(window: HistoryWindow) -> JSON:
    return {
        "period": _period(window.start, window.end),
        "usage": number(window.usage),
        "balanceAtStart": number(window.balance_at_start),
    }


def _segment(segment: BurnDownSegment) -> JSON:
    return {
        "period": _period(segment.start, segment.end),
        "usage": number(segment.usage),
        "overage": number(segment.overage),
        "balanceAtStart": number(segment.balance_at_start),
        "grantBalancesAtStart": _balances(segment.grant_balances_at_start),
        "balanceAtEnd": number(segment.balance_at_end),
        "grantBalancesAtEnd": _balances(segment.grant_balances_at_end),
        "grantUsages": [
            {"grantId": grant, "usage": number(usage)}
            for grant, usage in segment.grant_usages.items()
        ],
    }


def history_json(history: WindowedHistory) -> JSON:
    return {
        "windowedHistory": [_window(w) for w in history.windows],
        "burndownHistory": [_segment(s) for s in history.segments],
    }
