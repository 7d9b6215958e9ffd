"""Printing features, entitlements, grants, values and histories: a table for people,
OpenMeter-shaped JSON for programs (`--json`, the API's own shapes from the entitlements
package).

Amounts are Decimal all the way: a table shows their exact digits (`1000`, `0.1`, never
`1E+3` or a float's nearest), and JSON writes them as numbers with the same digits
(`metersync.entitlements.exact_json`, as the API does).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from datetime import datetime
from decimal import Decimal
from typing import TYPE_CHECKING, Any

import typer

from metersync.cli.output import print_details, print_table

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
    """JSON with Decimal amounts as numbers of the same digits, indented."""
    import msgspec

    from metersync.entitlements import exact_json

    typer.echo(msgspec.json.format(exact_json(data), indent=2).decode())


def amount(value: Decimal | None) -> str:
    """A Decimal's exact digits, without an exponent; "" for none."""
    return "" if value is None else format(value, "f")


def _time(moment: datetime | None) -> str:
    return "" if moment is None else moment.isoformat(timespec="seconds")


def _metadata(metadata: Mapping[str, str]) -> str:
    return ", ".join(f"{k}={v}" for k, v in sorted(metadata.items()))


def _every(period: UsagePeriod | None) -> str:
    if period is None:
        return ""
    return f"{period.interval.name} from {_time(period.anchor)}"


# -- features ------------------------------------------------------------------------------------


def print_features(features: Sequence[Feature], *, as_json: bool) -> None:
    if as_json:
        from metersync.entitlements import feature_json

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
        from metersync.entitlements import feature_json

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
    from metersync.clock import utcnow
    from metersync.entitlements import entitlement_json, usage_period_in_force

    if as_json:
        now = utcnow()
        print_exact_json([entitlement_json(e, resets.get(e.id, ()), now) for e in entitlements])
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
                _every(usage_period_in_force(e, resets.get(e.id, ()))),
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
    from metersync.entitlements import (
        current_usage_period,
        entitlement_json,
        usage_period_in_force,
    )

    now = utcnow()
    if as_json:
        print_exact_json(entitlement_json(entitlement, resets, now))
        return
    metered = entitlement.kind.value == "metered"
    last_reset = max((r.at for r in resets), default=None)
    print_details(
        f"entitlement {entitlement.id}",
        [
            ("id", entitlement.id),
            ("customer", entitlement.customer_key),
            ("feature", entitlement.feature_key),
            ("type", entitlement.kind.value),
            ("usage period", _every(usage_period_in_force(entitlement, resets))),
            ("current period", _span(current_usage_period(entitlement, resets, now))),
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


def _rollover(grant: EntitlementGrant) -> str:
    top = grant.amount if grant.max_rollover is None else grant.max_rollover
    return f"{amount(grant.min_rollover)}–{amount(top)}"


def print_grants(grants: Sequence[EntitlementGrant], *, as_json: bool) -> None:
    if as_json:
        from metersync.clock import utcnow
        from metersync.entitlements import grant_json

        now = utcnow()
        print_exact_json([grant_json(g, now) for g in grants])
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
        from metersync.clock import utcnow
        from metersync.entitlements import grant_json

        print_exact_json(grant_json(grant, utcnow()))
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


# -- values and history --------------------------------------------------------------------------


def print_value(title: str, value: EntitlementValue, *, as_json: bool) -> None:
    if as_json:
        from metersync.entitlements import value_json

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
        from metersync.entitlements import access_json

        print_exact_json(access_json(values))
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


def _grant_figures(figures: Mapping[str, Decimal]) -> str:
    return ", ".join(f"{grant}={amount(v)}" for grant, v in figures.items())


def print_history(title: str, history: WindowedHistory, *, as_json: bool) -> None:
    if as_json:
        from metersync.entitlements import history_json

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
