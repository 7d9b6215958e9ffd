"""Printing features, entitlements, grants, values and histories: a table for people,
OpenMeter-shaped JSON for programs (`--json`).

Amounts are Decimal all the way: a table shows their exact digits (`1000`, `0.1`, never
`1E+3` or a float's nearest), and JSON writes them as numbers with the same digits (msgspec
encodes a Decimal as a number; the standard library's json cannot without a float).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from datetime import datetime
from decimal import Decimal
from typing import TYPE_CHECKING, Any

import typer

from metersync.cli.output import print_details, print_table
from metersync.times import rfc3339

if TYPE_CHECKING:  # imported when first used: see the start-up note in metersync.cli
    from metersync.entitlements import (
        Entitlement,
        EntitlementGrant,
        EntitlementValue,
        Feature,
        Period,
        UsagePeriod,
        UsageReset,
        WindowedHistory,
    )


def print_exact_json(data: Any) -> None:
    """JSON with Decimal amounts as numbers of the same digits."""
    import msgspec

    encoded = msgspec.json.Encoder(decimal_format="number").encode(_plain(data))
    typer.echo(msgspec.json.format(encoded, indent=2).decode())


def _plain(value: Any) -> Any:
    # 1E+3 (a normalized 1000) is a valid JSON number, but not how an API writes one.
    if isinstance(value, Decimal):
        return Decimal(format(value, "f"))
    if isinstance(value, Mapping):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_plain(v) for v in value]
    return value


def amount(value: Decimal | None) -> str:
    """A Decimal's exact digits, without an exponent; "" for none."""
    return "" if value is None else format(value, "f")


def _time(moment: datetime | None) -> str:
    return "" if moment is None else moment.isoformat(timespec="seconds")


def _stamp(moment: datetime | None) -> str | None:
    return None if moment is None else rfc3339(moment)


def _compact(data: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in data.items() if v is not None}


def _metadata(metadata: Mapping[str, str]) -> str:
    return ", ".join(f"{k}={v}" for k, v in sorted(metadata.items()))


def _recurring(period: UsagePeriod | None) -> dict[str, Any] | None:
    """OpenMeter's RecurringPeriod."""
    if period is None:
        return None
    return {
        "interval": period.interval.name,
        "intervalISO": period.interval.iso,
        "anchor": rfc3339(period.anchor),
    }


def _every(period: UsagePeriod | None) -> str:
    if period is None:
        return ""
    return f"{period.interval.name} from {_time(period.anchor)}"


# -- features ------------------------------------------------------------------------------------


def feature_json(feature: Feature) -> dict[str, Any]:
    """OpenMeter's Feature."""
    return _compact(
        {
            "id": feature.id,
            "key": feature.key,
            "name": feature.name,
            "metadata": dict(feature.metadata) or None,
            "meterSlug": feature.meter_slug,
            "meterGroupByFilters": dict(feature.group_filters) or None,
            "createdAt": rfc3339(feature.created_at),
            "updatedAt": rfc3339(feature.updated_at),
            "archivedAt": _stamp(feature.archived_at),
        }
    )


def print_features(features: Sequence[Feature], *, as_json: bool) -> None:
    if as_json:
        print_exact_json([feature_json(f) for f in features])
        return
    archived = any(f.archived_at for f in features)
    print_table(
        f"features ({len(features)})",
        ["key", "name", "meter", "filters", "metadata", "id"] + (["archived"] if archived else []),
        [
            [f.key, f.name, f.meter_slug, _metadata(f.group_filters), _metadata(f.metadata), f.id]
            + ([_time(f.archived_at)] if archived else [])
            for f in features
        ],
    )


def print_feature(feature: Feature, *, as_json: bool) -> None:
    if as_json:
        print_exact_json(feature_json(feature))
        return
    print_details(
        f"feature {feature.key}",
        [
            ("id", feature.id),
            ("key", feature.key),
            ("name", feature.name),
            ("meter", feature.meter_slug),
            ("filters", _metadata(feature.group_filters)),
            ("metadata", _metadata(feature.metadata)),
            ("created", _time(feature.created_at)),
            ("updated", _time(feature.updated_at)),
            *([("archived", _time(feature.archived_at))] if feature.archived_at else []),
        ],
    )


# -- entitlements --------------------------------------------------------------------------------


def entitlement_json(
    entitlement: Entitlement, resets: Sequence[UsageReset] = (), *, now: datetime | None = None
) -> dict[str, Any]:
    """OpenMeter's EntitlementV2 (metered, boolean or static)."""
    from metersync.clock import utcnow

    moment = now or utcnow()
    out: dict[str, Any] = {
        "id": entitlement.id,
        "type": entitlement.kind.value,
        "featureKey": entitlement.feature_key,
        "featureId": entitlement.feature_id,
        "customerKey": entitlement.customer_key,
        "customerId": entitlement.customer_id,
        "metadata": dict(entitlement.metadata) or None,
        "createdAt": rfc3339(entitlement.created_at),
        "updatedAt": rfc3339(entitlement.updated_at),
        "deletedAt": _stamp(entitlement.deleted_at),
        "activeFrom": rfc3339(entitlement.created_at),
        "activeTo": _stamp(entitlement.deleted_at),
    }
    period = current_usage_period(entitlement, resets)
    if period is not None:
        out["usagePeriod"] = _recurring(period)
        current = current_period_at(entitlement, resets, moment)
        if current is not None:
            out["currentUsagePeriod"] = {
                "from": rfc3339(current.start),
                "to": rfc3339(current.end),
            }
    if entitlement.kind.value == "metered":
        last_reset = resets[-1].at if resets else entitlement.measure_usage_from
        out |= {
            "measureUsageFrom": _stamp(entitlement.measure_usage_from),
            "lastReset": _stamp(last_reset),
            "isSoftLimit": entitlement.is_soft_limit,
            "preserveOverageAtReset": entitlement.preserve_overage_at_reset,
        }
        if entitlement.issue is not None:
            out |= {
                "issueAfterReset": entitlement.issue.amount,
                "issueAfterResetPriority": entitlement.issue.priority,
                "issue": {
                    "amount": entitlement.issue.amount,
                    "priority": entitlement.issue.priority,
                },
            }
    if entitlement.config is not None:
        out["config"] = entitlement.config
    return _compact(out)


def current_usage_period(
    entitlement: Entitlement, resets: Sequence[UsageReset]
) -> UsagePeriod | None:
    """The usage period as it runs now: a reset that does not retain the anchor starts the
    periods again from its own time (OpenMeter's retainAnchor: false)."""
    period = entitlement.usage_period
    if period is None:
        return None
    moved = [r.at for r in resets if not r.retain_anchor]
    if not moved:
        return period
    from dataclasses import replace

    return replace(period, anchor=max(moved))


def current_period_at(
    entitlement: Entitlement, resets: Sequence[UsageReset], moment: datetime
) -> Period | None:
    """The usage period holding `moment`: the engine's, for a metered entitlement (a manual
    reset starts one, whether or not it keeps the anchor)."""
    period = entitlement.usage_period
    if period is None:
        return None
    if entitlement.measure_usage_from is None:
        return period.period_at(moment)
    from metersync.entitlements import MeteredTerms, Reset, current_period

    terms = MeteredTerms(
        usage_period=period,
        measure_usage_from=entitlement.measure_usage_from,
        resets=[Reset(r.at, r.preserve_overage, r.retain_anchor) for r in resets],
        preserve_overage_at_reset=entitlement.preserve_overage_at_reset,
        is_soft_limit=entitlement.is_soft_limit,
    )
    return current_period(terms, moment)


def _limit(entitlement: Entitlement) -> str:
    if entitlement.kind.value != "metered":
        return ""
    parts = ["soft" if entitlement.is_soft_limit else "hard"]
    if entitlement.preserve_overage_at_reset:
        parts.append("overage kept at reset")
    if entitlement.issue is not None:
        parts.append(
            f"issue {amount(entitlement.issue.amount)} (priority {entitlement.issue.priority})"
        )
    return ", ".join(parts)


def print_entitlements(
    entitlements: Sequence[Entitlement],
    resets: Mapping[str, Sequence[UsageReset]],
    *,
    as_json: bool,
) -> None:
    if as_json:
        print_exact_json([entitlement_json(e, resets.get(e.id, ())) for e in entitlements])
        return
    deleted = any(e.deleted_at for e in entitlements)
    print_table(
        f"entitlements ({len(entitlements)})",
        ["id", "customer", "feature", "type", "usage period", "terms"]
        + (["deleted"] if deleted else []),
        [
            [
                e.id,
                e.customer_key,
                e.feature_key,
                e.kind.value,
                _every(current_usage_period(e, resets.get(e.id, ()))),
                _limit(e) if e.kind.value == "metered" else (e.config or ""),
            ]
            + ([_time(e.deleted_at)] if deleted else [])
            for e in entitlements
        ],
    )


def _span(period: Period | None) -> str:
    return "" if period is None else f"{_time(period.start)} – {_time(period.end)}"


def print_entitlement(
    entitlement: Entitlement, resets: Sequence[UsageReset] = (), *, as_json: bool
) -> None:
    from metersync.clock import utcnow

    if as_json:
        print_exact_json(entitlement_json(entitlement, resets))
        return
    metered = entitlement.kind.value == "metered"
    last_reset = resets[-1].at if resets else None
    print_details(
        f"entitlement {entitlement.id}",
        [
            ("id", entitlement.id),
            ("customer", entitlement.customer_key),
            ("feature", entitlement.feature_key),
            ("type", entitlement.kind.value),
            ("usage period", _every(current_usage_period(entitlement, resets))),
            ("current period", _span(current_period_at(entitlement, resets, utcnow()))),
            *(
                [
                    ("measured from", _time(entitlement.measure_usage_from)),
                    ("last reset", _time(last_reset) or "never"),
                    ("terms", _limit(entitlement)),
                ]
                if metered
                else []
            ),
            *([("config", entitlement.config)] if entitlement.config is not None else []),
            ("metadata", _metadata(entitlement.metadata)),
            ("created", _time(entitlement.created_at)),
            *([("deleted", _time(entitlement.deleted_at))] if entitlement.deleted_at else []),
        ],
    )


# -- grants --------------------------------------------------------------------------------------


def grant_json(grant: EntitlementGrant, *, now: datetime | None = None) -> dict[str, Any]:
    """OpenMeter's EntitlementGrantV2."""
    from metersync.clock import utcnow

    expiration = grant.expiration
    return _compact(
        {
            "id": grant.id,
            "entitlementId": grant.entitlement_id,
            "amount": grant.amount,
            "priority": grant.priority,
            "effectiveAt": rfc3339(grant.effective_at),
            "minRolloverAmount": grant.min_rollover,
            "maxRolloverAmount": grant.max_rollover,
            "expiration": None
            if expiration is None
            else {"duration": expiration.duration, "count": expiration.count},
            "expiresAt": _stamp(grant.expires_at),
            "recurrence": _recurring(grant.recurrence),
            "nextRecurrence": _stamp(grant.next_recurrence(now or utcnow())),
            "metadata": dict(grant.metadata) or None,
            "createdAt": rfc3339(grant.created_at),
            "updatedAt": rfc3339(grant.updated_at),
            "voidedAt": _stamp(grant.voided_at),
        }
    )


def _rollover(grant: EntitlementGrant) -> str:
    top = grant.amount if grant.max_rollover is None else grant.max_rollover
    return f"{amount(grant.min_rollover)}–{amount(top)}"


def print_grants(grants: Sequence[EntitlementGrant], *, as_json: bool) -> None:
    if as_json:
        print_exact_json([grant_json(g) for g in grants])
        return
    voided = any(g.voided_at for g in grants)
    print_table(
        f"grants ({len(grants)})",
        [
            "id",
            "entitlement",
            "amount",
            "priority",
            "effective",
            "expires",
            "rollover",
            "recurs",
        ]
        + (["voided"] if voided else []),
        [
            [
                g.id,
                g.entitlement_id,
                amount(g.amount),
                g.priority,
                _time(g.effective_at),
                _time(g.expires_at),
                _rollover(g),
                _every(g.recurrence),
            ]
            + ([_time(g.voided_at)] if voided else [])
            for g in grants
        ],
    )


def print_grant(grant: EntitlementGrant, *, as_json: bool) -> None:
    if as_json:
        print_exact_json(grant_json(grant))
        return
    expiration = grant.expiration
    print_details(
        f"grant {grant.id}",
        [
            ("id", grant.id),
            ("entitlement", grant.entitlement_id),
            ("amount", amount(grant.amount)),
            ("priority", grant.priority),
            ("effective", _time(grant.effective_at)),
            (
                "expiration",
                "" if expiration is None else f"{expiration.count} × {expiration.duration}",
            ),
            ("expires", _time(grant.expires_at)),
            ("rollover", _rollover(grant)),
            ("recurs", _every(grant.recurrence)),
            ("metadata", _metadata(grant.metadata)),
            *([("voided", _time(grant.voided_at))] if grant.voided_at else []),
        ],
    )


def reset_json(reset: UsageReset) -> dict[str, Any]:
    return {
        "id": reset.id,
        "entitlementId": reset.entitlement_id,
        "effectiveAt": rfc3339(reset.at),
        "preserveOverage": reset.preserve_overage,
        "retainAnchor": reset.retain_anchor,
        "createdAt": rfc3339(reset.created_at),
    }


# -- values and history --------------------------------------------------------------------------


def value_json(value: EntitlementValue) -> dict[str, Any]:
    """OpenMeter's EntitlementValue."""
    return _compact(
        {
            "hasAccess": value.has_access,
            "balance": value.balance,
            "usage": value.usage,
            "overage": value.overage,
            "totalAvailableGrantAmount": value.total_available_grant_amount,
            "config": value.config,
        }
    )


def print_value(title: str, value: EntitlementValue, *, as_json: bool) -> None:
    if as_json:
        print_exact_json(value_json(value))
        return
    rows: list[tuple[str, Any]] = [("has access", "yes" if value.has_access else "no")]
    if value.balance is not None or value.usage is not None:
        rows += [
            ("balance", amount(value.balance)),
            ("usage", amount(value.usage)),
            ("overage", amount(value.overage)),
            ("granted", amount(value.total_available_grant_amount)),
        ]
    if value.config is not None:
        rows.append(("config", value.config))
    print_details(title, rows)


def print_access(customer: str, values: Mapping[str, EntitlementValue], *, as_json: bool) -> None:
    if as_json:
        # OpenMeter's CustomerAccess.
        print_exact_json({"entitlements": {k: value_json(v) for k, v in values.items()}})
        return
    print_table(
        f"access of {customer} ({len(values)})",
        ["feature", "access", "balance", "usage", "overage", "granted", "config"],
        [
            [
                key,
                "yes" if v.has_access else "no",
                amount(v.balance),
                amount(v.usage),
                amount(v.overage),
                amount(v.total_available_grant_amount),
                v.config,
            ]
            for key, v in sorted(values.items())
        ],
    )


def history_json(history: WindowedHistory) -> dict[str, Any]:
    """OpenMeter's WindowedBalanceHistory."""
    return {
        "windowedHistory": [
            {
                "period": {"from": rfc3339(w.start), "to": rfc3339(w.end)},
                "usage": w.usage,
                "balanceAtStart": w.balance_at_start,
            }
            for w in history.windows
        ],
        "burndownHistory": [
            {
                "period": {"from": rfc3339(s.start), "to": rfc3339(s.end)},
                "usage": s.usage,
                "overage": s.overage,
                "balanceAtStart": s.balance_at_start,
                "grantBalancesAtStart": dict(s.grant_balances_at_start),
                "balanceAtEnd": s.balance_at_end,
                "grantBalancesAtEnd": dict(s.grant_balances_at_end),
                "grantUsages": [
                    {"grantId": grant, "usage": used} for grant, used in s.grant_usages.items()
                ],
            }
            for s in history.segments
        ],
    }


def _grant_figures(figures: Mapping[str, Decimal]) -> str:
    return ", ".join(f"{grant}={amount(v)}" for grant, v in figures.items())


def print_history(title: str, history: WindowedHistory, *, as_json: bool) -> None:
    if as_json:
        print_exact_json(history_json(history))
        return
    print_table(
        f"{title}: windows ({len(history.windows)})",
        ["from", "to", "usage", "balance at start"],
        [
            [_time(w.start), _time(w.end), amount(w.usage), amount(w.balance_at_start)]
            for w in history.windows
        ],
    )
    print_table(
        f"{title}: burn-down ({len(history.segments)})",
        ["from", "to", "usage", "overage", "balance at start", "balance at end", "grant usage"],
        [
            [
                _time(s.start),
                _time(s.end),
                amount(s.usage),
                amount(s.overage),
                amount(s.balance_at_start),
                amount(s.balance_at_end),
                _grant_figures(s.grant_usages),
            ]
            for s in history.segments
        ],
    )
