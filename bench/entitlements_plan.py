"""The features, entitlements and grants of bench/entitlements.py, and the figure the main
entitlement must show, worked out by hand.

Twenty entitlements for one customer: ten metered (the `tokens` SUM meter, all models and each
model through a group filter; the `requests` COUNT meter likewise), five boolean and five
static. The main one, `tokens`, carries ten grants:

  1  recurring   priority 1, every month restored to its amount (recurrence MONTH on the
                 periods' anchor), from the start of measuring
  2  rollover    priority 3, no expiry, minRollover r, maxRollover 2r
  3  capped      priority 2, expires in two years, minRollover 0, maxRollover 500
  4-8 expired    priorities 1-5, taking effect mid-month in the first half of the year and
                 expiring after 36 hours to two months (HOUR, DAY, WEEK, MONTH)
  9  this month  priority 4, taking effect halfway through the current period, expiring in
                 three months
  10 future      priority 1, taking effect 30 days after the history ends

Sized from the usage the events put in the previous period (P) and in the current one (U),
which the script knows before it creates them: 1 holds P/8, 2 holds P/4 with r = P/16, 3
holds P/8. In the previous period nothing takes effect or expires, and P is more than 1, 2
and 3 can hold then (at most P/8 + P/8 + 500), so all three end it empty, and the current
period starts with 1 restored to P/8, 2 rolled over to min(2r, max(0, r)) = r and 3 to
min(500, max(0, 0)) = 0. Overage carried within a period is paid by a grant taking effect
later in it, so at any time in the current period after 9 took effect:

    T (total available) = P/8 + r + amount of 9,   balance = max(0, T - U),
    overage = max(0, U - T),   usage = U.

9's amount is max(0, U - P/8 - r) + P/4 + 1000, so the balance is positive and not trivial.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import asdict, dataclass
from typing import Any

from dateutil.relativedelta import relativedelta
from entitlements_events import MODELS, Expected

MAIN_FEATURE = "tokens"
BOOLEAN_FEATURES = ("sso", "audit_log", "priority_support", "custom_domain", "api_access")
STATIC_FEATURES = ("plan_limits", "rate_limits", "regions", "retention", "support_tier")


def iso(moment: dt.datetime) -> str:
    return moment.astimezone(dt.UTC).isoformat().replace("+00:00", "Z")


def month_start(moment: dt.datetime) -> dt.datetime:
    return moment.astimezone(dt.UTC).replace(day=1, hour=0, minute=0, second=0, microsecond=0)


def ceil_minute(moment: dt.datetime) -> dt.datetime:
    floor = moment.replace(second=0, microsecond=0)
    return floor if floor == moment else floor + dt.timedelta(minutes=1)


def feature_part(model: str) -> str:
    return model.replace("-", "_")


@dataclass(frozen=True)
class Hand:
    """The main entitlement's figures in the current period, worked out by hand."""

    period_start: str
    previous_usage: int  # P
    usage: int  # U
    total_available: int  # T
    balance: int
    overage: int
    applies: bool  # the configuration's conditions hold (P large enough, nothing in between)
    why_not: str


@dataclass(frozen=True)
class Plan:
    anchor: dt.datetime
    features: list[dict[str, Any]]
    entitlements: list[dict[str, Any]]  # create inputs, the main one first
    hand: Hand
    expected_usage: dict[str, int]  # metered feature key -> usage of the current period

    def to_json(self) -> dict[str, Any]:
        return {
            "anchor": iso(self.anchor),
            "features": self.features,
            "entitlements": self.entitlements,
            "hand": asdict(self.hand),
            "expected_usage": self.expected_usage,
        }


def plan(history_start: dt.datetime, history_end: dt.datetime, expected: Expected) -> Plan:
    """Everything to create, for a history of [history_start, history_end) whose events
    `expected` added up; the current period is the month holding history_end."""
    anchor = month_start(history_start)
    period = month_start(history_end)
    previous = period - relativedelta(months=1)
    p = expected.month_tokens(previous.strftime("%Y-%m"))
    u = expected.month_tokens(period.strftime("%Y-%m"))
    month = relativedelta(months=1)
    recurring, rollover, capped = p // 8, p // 4, p // 8
    r = p // 16
    new_at = ceil_minute(period + (history_end - period) / 2)
    new_amount = max(0, u - recurring - r) + p // 4 + 1000
    period_anchor = {"interval": "MONTH", "anchor": iso(anchor)}

    def at(months: int, **delta: float) -> str:
        return iso(anchor + relativedelta(months=months) + dt.timedelta(**delta))

    expired = [
        (50_000, 1, at(1, days=10), {"duration": "DAY", "count": 10}),
        (2_000_000, 2, at(2, days=1, hours=12), {"duration": "WEEK", "count": 2}),
        (10_000_000, 5, at(3, days=15), {"duration": "MONTH", "count": 1}),
        (1_000_000, 4, at(4, days=2, hours=3, minutes=17), {"duration": "MONTH", "count": 2}),
        (300_000, 1, at(5, days=20), {"duration": "HOUR", "count": 36}),
    ]
    grants: list[dict[str, Any]] = [
        {
            "amount": recurring,
            "priority": 1,
            "effectiveAt": iso(anchor),
            "recurrence": period_anchor,
            "metadata": {"bench": "recurring"},
        },
        {
            "amount": rollover,
            "priority": 3,
            "effectiveAt": at(1, days=3, hours=7),
            "minRolloverAmount": r,
            "maxRolloverAmount": 2 * r,
            "metadata": {"bench": "rollover"},
        },
        {
            "amount": capped,
            "priority": 2,
            "effectiveAt": at(2, days=5),
            "expiration": {"duration": "YEAR", "count": 2},
            "minRolloverAmount": 0,
            "maxRolloverAmount": 500,
            "metadata": {"bench": "capped"},
        },
        *[
            {
                "amount": amount,
                "priority": priority,
                "effectiveAt": effective,
                "expiration": expiration,
                "minRolloverAmount": 1000 if priority == 5 else 0,
                "maxRolloverAmount": 5000 if priority == 5 else amount,
                "metadata": {"bench": "expired"},
            }
            for amount, priority, effective, expiration in expired
        ],
        {
            "amount": new_amount,
            "priority": 4,
            "effectiveAt": iso(new_at),
            "expiration": {"duration": "MONTH", "count": 3},
            "metadata": {"bench": "this period"},
        },
        {
            "amount": 1_000_000_000,
            "priority": 1,
            "effectiveAt": iso(ceil_minute(history_end + dt.timedelta(days=30))),
            "metadata": {"bench": "future"},
        },
    ]
    # The conditions the figure by hand rests on.
    last_expiry = anchor + relativedelta(months=6, days=20) + month  # past every expired one
    problems = []
    if p < recurring + 2 * r + 500 or p < 10_000:
        problems.append(f"the previous period's usage {p:,} is too small to empty grants 1-3")
    if last_expiry > previous:
        problems.append("the history is too short: grants 4-8 expire after the previous period")
    t = recurring + r + new_amount
    hand = Hand(
        period_start=iso(period),
        previous_usage=p,
        usage=u,
        total_available=t,
        balance=max(0, t - u),
        overage=max(0, u - t),
        applies=not problems,
        why_not="; ".join(problems),
    )

    metered = {
        "type": "metered",
        "usagePeriod": period_anchor,
        "measureUsageFrom": iso(anchor),
    }
    features: list[dict[str, Any]] = [
        {"key": MAIN_FEATURE, "name": "Tokens", "meterSlug": "tokens"},
        {"key": "requests", "name": "Requests", "meterSlug": "requests"},
    ]
    entitlements: list[dict[str, Any]] = [
        {**metered, "featureKey": MAIN_FEATURE, "grants": grants},
        {
            **metered,
            "featureKey": "requests",
            "isSoftLimit": True,
            "grants": [{"amount": 10_000, "effectiveAt": iso(anchor), "recurrence": period_anchor}],
        },
    ]
    expected_usage = {
        MAIN_FEATURE: u,
        "requests": expected.month_requests(period.strftime("%Y-%m")),
    }
    for index, model in enumerate(MODELS):
        for slug, count in (
            ("tokens", expected.month_tokens),
            ("requests", expected.month_requests),
        ):
            key = f"{slug}_{feature_part(model)}"
            features.append(
                {
                    "key": key,
                    "name": f"{slug.title()} of {model}",
                    "meterSlug": slug,
                    "meterGroupByFilters": {"model": model},
                }
            )
            grant = {"amount": 100_000 * (index + 1), "effectiveAt": iso(anchor)}
            extra = {
                "amount": 5_000,
                "priority": 2,
                "effectiveAt": at(index + 2),
                "expiration": {"duration": "MONTH", "count": 1},
            }
            entitlements.append(
                {
                    **metered,
                    "featureKey": key,
                    "issue": {"amount": 1_000 * (index + 1)} if index % 2 else None,
                    "grants": [{**grant, "recurrence": period_anchor}, extra],
                }
            )
            expected_usage[key] = count(period.strftime("%Y-%m"), model)
    for key in BOOLEAN_FEATURES:
        features.append({"key": key, "name": key.replace("_", " ").title()})
        entitlements.append({"type": "boolean", "featureKey": key})
    for index, key in enumerate(STATIC_FEATURES):
        features.append({"key": key, "name": key.replace("_", " ").title()})
        config = f'{{"limit": {100 * (index + 1)}, "feature": "{key}"}}'
        entitlements.append({"type": "static", "featureKey": key, "config": config})
    for given in entitlements:
        if given.get("issue", 0) is None:
            del given["issue"]
    return Plan(anchor, features, entitlements, hand, expected_usage)
