"""Entitlement records and values as OpenMeter's JSON (openapi.yaml), for both doors: the API's
responses and the CLI's `--json`. Feature, EntitlementV2 and the deprecated v1 Entitlement
(subjectKey in place of the customer), EntitlementGrantV2 (the v1 EntitlementGrant is the same
object), EntitlementValue, CustomerAccess, WindowedBalanceHistory, and a usage reset.

Pure: each function renders what it is given as a plain dict. Compact: an optional field that
is unset (None, or empty metadata) is left out. Amounts stay Decimal, with their exact digits
and without an exponent (`1E+3` becomes `1000`); `exact_json` writes them as JSON numbers of
the same digits (the spec's `format: double`, never a float's nearest). Times are RFC 3339 in
UTC, to the millisecond (`metersync.times.rfc3339`).

The usage period in force and the current one are the engine's (`current_period`): a manual
reset that does not retain the anchor starts the periods again from its time, and any manual
reset starts a period.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from datetime import datetime
from decimal import Decimal
from typing import Any

import msgspec

from metersync.entitlements._engine import MeteredTerms, Reset, current_period
from metersync.entitlements._model import (
    BurnDownSegment,
    Entitlement,
    EntitlementGrant,
    EntitlementValue,
    Feature,
    HistoryWindow,
    Kind,
    UsageReset,
    WindowedHistory,
)
from metersync.entitlements._periods import Period, UsagePeriod
from metersync.times import rfc3339

JSON = dict[str, Any]

_encoder = msgspec.json.Encoder(decimal_format="number")


def exact_json(data: Any) -> bytes:
    """JSON (UTF-8, compact) with Decimal amounts as numbers of the same digits."""
    return _encoder.encode(data)


def _amount(value: Decimal) -> Decimal:
    # 1E+3 (a normalized 1000) is a valid JSON number, but not how an API writes one.
    return Decimal(format(value, "f"))


def _stamps(out: JSON, **moments: datetime | None) -> None:
    """The optional times that are set."""
    for name, moment in moments.items():
        if moment is not None:
            out[name] = rfc3339(moment)


def _metadata(out: JSON, metadata: Mapping[str, str]) -> None:
    if metadata:
        out["metadata"] = dict(metadata)


def _period(period: Period) -> JSON:
    """OpenMeter's Period."""
    return {"from": rfc3339(period.start), "to": rfc3339(period.end)}


def _recurring(period: UsagePeriod) -> JSON:
    """OpenMeter's RecurringPeriod."""
    return {
        "interval": period.interval.name,
        "intervalISO": period.interval.iso,
        "anchor": rfc3339(period.anchor),
    }


# -- features --------------------------------------------------------------------------------


def feature_json(feature: Feature) -> JSON:
    """OpenMeter's Feature."""
    out: JSON = {"id": feature.id, "key": feature.key, "name": feature.name}
    _metadata(out, feature.metadata)
    if feature.meter_slug is not None:
        out["meterSlug"] = feature.meter_slug
    if feature.group_filters:
        out["meterGroupByFilters"] = dict(feature.group_filters)
        out["advancedMeterGroupByFilters"] = {
            name: {"$eq": value} for name, value in feature.group_filters.items()
        }
    out["createdAt"] = rfc3339(feature.created_at)
    out["updatedAt"] = rfc3339(feature.updated_at)
    _stamps(out, archivedAt=feature.archived_at)
    return out


# -- entitlements ----------------------------------------------------------------------------


def usage_period_in_force(
    entitlement: Entitlement, resets: Sequence[UsageReset]
) -> UsagePeriod | None:
    """The usage period as the resets left it: a reset that does not retain the anchor moves
    it to the reset's time (OpenMeter's retainAnchor: false). None without a usage period."""
    period = entitlement.usage_period
    if period is None:
        return None
    moved = [r.at for r in resets if not r.retain_anchor]
    return period if not moved else UsagePeriod(period.interval, max(moved))


def current_usage_period(
    entitlement: Entitlement, resets: Sequence[UsageReset], at: datetime
) -> Period | None:
    """The usage period holding `at`, as the engine figures it (from the latest reset, a
    boundary or a manual one, to the next). None without a usage period."""
    period = entitlement.usage_period
    if period is None:
        return None
    terms = MeteredTerms(
        usage_period=period,
        measure_usage_from=entitlement.measure_usage_from or entitlement.created_at,
        resets=[Reset(r.at, r.preserve_overage, r.retain_anchor) for r in resets],
        preserve_overage_at_reset=entitlement.preserve_overage_at_reset,
        is_soft_limit=entitlement.is_soft_limit,
    )
    return current_period(terms, at)


def last_reset(entitlement: Entitlement, resets: Sequence[UsageReset]) -> datetime:
    """The latest manual reset, or the start of measuring when there is none."""
    measured = entitlement.measure_usage_from or entitlement.created_at
    return max([measured, *(r.at for r in resets)])


def entitlement_json(
    entitlement: Entitlement,
    resets: Sequence[UsageReset],
    now: datetime,
    *,
    subject_key: str | None = None,
) -> JSON:
    """EntitlementV2 (the customer's id and key), or with `subject_key` the deprecated v1
    Entitlement (the subject's key in their place, and no `issue`, which v1 does not have)."""
    e = entitlement
    out: JSON = {"id": e.id, "type": e.kind.value, "featureKey": e.feature_key}
    out["featureId"] = e.feature_id
    if subject_key is None:
        out["customerId"] = e.customer_id
        out["customerKey"] = e.customer_key
    else:
        out["subjectKey"] = subject_key
    _metadata(out, e.metadata)
    out["createdAt"] = out["activeFrom"] = rfc3339(e.created_at)
    out["updatedAt"] = rfc3339(e.updated_at)
    _stamps(out, deletedAt=e.deleted_at, activeTo=e.deleted_at)
    in_force = usage_period_in_force(e, resets)
    current = current_usage_period(e, resets, now)
    if in_force is not None and current is not None:
        out["usagePeriod"] = _recurring(in_force)
        out["currentUsagePeriod"] = _period(current)
    if e.kind is Kind.METERED:
        out["isSoftLimit"] = e.is_soft_limit
        out["preserveOverageAtReset"] = e.preserve_overage_at_reset
        out["measureUsageFrom"] = rfc3339(e.measure_usage_from or e.created_at)
        out["lastReset"] = rfc3339(last_reset(e, resets))
        if e.issue is not None:
            issued = _amount(e.issue.amount)
            out["issueAfterReset"] = issued
            out["issueAfterResetPriority"] = e.issue.priority
            if subject_key is None:
                out["issue"] = {"amount": issued, "priority": e.issue.priority}
    elif e.kind is Kind.STATIC and e.config is not None:
        out["config"] = e.config
    return out


# -- grants and resets -----------------------------------------------------------------------


def grant_json(grant: EntitlementGrant, now: datetime) -> JSON:
    """EntitlementGrantV2; the v1 EntitlementGrant is the same object (the v1 shape requires an
    expiration, which a grant made through v1 always has)."""
    g = grant
    out: JSON = {
        "id": g.id,
        "entitlementId": g.entitlement_id,
        "amount": _amount(g.amount),
        "priority": g.priority,
        "effectiveAt": rfc3339(g.effective_at),
        "minRolloverAmount": _amount(g.min_rollover),
        # None means "the amount": said explicitly, since v1 reads a missing one as 0.
        "maxRolloverAmount": _amount(g.amount if g.max_rollover is None else g.max_rollover),
    }
    _metadata(out, g.metadata)
    out["createdAt"], out["updatedAt"] = rfc3339(g.created_at), rfc3339(g.updated_at)
    _stamps(out, expiresAt=g.expires_at, voidedAt=g.voided_at)
    if g.expiration is not None:
        out["expiration"] = {"duration": g.expiration.duration, "count": g.expiration.count}
    if g.recurrence is not None:
        out["recurrence"] = _recurring(g.recurrence)
        # A grant recurs only after it takes effect.
        _stamps(out, nextRecurrence=g.next_recurrence(max(now, g.effective_at)))
    return out


def reset_json(reset: UsageReset) -> JSON:
    """A usage reset as made (OpenMeter answers a reset with no body: the fields are its
    ResetEntitlementUsageInput's, with the reset's id, entitlement and creation)."""
    return {
        "id": reset.id,
        "entitlementId": reset.entitlement_id,
        "effectiveAt": rfc3339(reset.at),
        "preserveOverage": reset.preserve_overage,
        "retainAnchor": reset.retain_anchor,
        "createdAt": rfc3339(reset.created_at),
    }


# -- values and history ----------------------------------------------------------------------


def value_json(value: EntitlementValue) -> JSON:
    """OpenMeter's EntitlementValue: the figures a metered entitlement has, a static one's
    config."""
    out: JSON = {"hasAccess": value.has_access}
    figures = {
        "balance": value.balance,
        "usage": value.usage,
        "overage": value.overage,
        "totalAvailableGrantAmount": value.total_available_grant_amount,
    }
    out.update({name: _amount(v) for name, v in figures.items() if v is not None})
    if value.config is not None:
        out["config"] = value.config
    return out


def access_json(values: Mapping[str, EntitlementValue]) -> JSON:
    """OpenMeter's CustomerAccess: feature key → value."""
    return {"entitlements": {key: value_json(v) for key, v in sorted(values.items())}}


def _balances(balances: Mapping[str, Decimal]) -> JSON:
    return {grant: _amount(amount) for grant, amount in balances.items()}


def _window(window: HistoryWindow) -> JSON:
    return {
        "period": _period(Period(window.start, window.end)),
        "usage": _amount(window.usage),
        "balanceAtStart": _amount(window.balance_at_start),
    }


def _segment(segment: BurnDownSegment) -> JSON:
    return {
        "period": _period(Period(segment.start, segment.end)),
        "usage": _amount(segment.usage),
        "overage": _amount(segment.overage),
        "balanceAtStart": _amount(segment.balance_at_start),
        "grantBalancesAtStart": _balances(segment.grant_balances_at_start),
        "balanceAtEnd": _amount(segment.balance_at_end),
        "grantBalancesAtEnd": _balances(segment.grant_balances_at_end),
        "grantUsages": [
            {"grantId": grant, "usage": _amount(usage)}
            for grant, usage in segment.grant_usages.items()
        ],
    }


def history_json(history: WindowedHistory) -> JSON:
    """OpenMeter's WindowedBalanceHistory."""
    return {
        "windowedHistory": [_window(w) for w in history.windows],
        "burndownHistory": [_segment(s) for s in history.segments],
    }
