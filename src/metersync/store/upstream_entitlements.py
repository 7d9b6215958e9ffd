"""The `upstream_entitlement` table's one owner: entitlement figures per customer and feature as
an upstream source (OpenMeter) answered them, which the CRM shows with that source.

A pull hands over what it read per customer (`store_figures`); a row is rewritten, and its
`changed_at` stamped, only when a figure differs from the stored one, so that finding the
customers whose figures changed since a run (`changed_customers`) is one indexed read. An
entitlement that is gone stays as a row that is no longer `held` (its change is seen too);
a customer the source no longer has loses its rows.

Amounts are decimal text in one canonical form (no exponent, no trailing zeros), so that the
same figure is the same text whichever way it was written upstream.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from decimal import Decimal

from sqlalchemy import Table, delete, select, update

from metersync.clock import utcnow
from metersync.store.engine import Store
from metersync.store.models import UpstreamEntitlementRow

UPSTREAM_ENTITLEMENTS: Table = UpstreamEntitlementRow.__table__  # type: ignore[attr-defined]
_e = UPSTREAM_ENTITLEMENTS.c
_CHUNK = 500  # customers per statement (a short IN list) and per transaction


@dataclass(frozen=True)
class UpstreamFigures:
    """An entitlement's figures as the source answered them: its kind (metered, boolean,
    static), access and, for a metered one, balance, usage and overage in the current usage
    period and when that period ends."""

    kind: str
    has_access: bool
    balance: Decimal | None = None
    usage: Decimal | None = None
    overage: Decimal | None = None
    period_end: datetime | None = None


def decimal_text(value: Decimal | None) -> str | None:
    """A figure as stored: plain decimal text, no exponent and no trailing zeros."""
    if value is None:
        return None
    text = format(value.normalize(), "f")
    return "0" if text in ("-0", "0") else text


def _figure(text: str | None) -> Decimal | None:
    return None if text is None else Decimal(text)


def _columns(figures: UpstreamFigures | None) -> dict[str, object]:
    if figures is None:
        return {
            "held": False,
            "kind": None,
            "has_access": False,
            "balance": None,
            "usage": None,
            "overage": None,
            "period_end": None,
        }
    return {
        "held": True,
        "kind": figures.kind,
        "has_access": figures.has_access,
        "balance": decimal_text(figures.balance),
        "usage": decimal_text(figures.usage),
        "overage": decimal_text(figures.overage),
        "period_end": figures.period_end,
    }


def store_figures(
    store: Store,
    source: str,
    answered: Mapping[str, Mapping[str, UpstreamFigures]],
) -> int:
    """Store what the source answered for each customer it was asked about (customer key →
    feature key → figures; a customer with no entitlement to a configured feature maps to
    {}). A stored feature the answer no longer shows becomes not held. Returns how many rows
    were written (inserted or changed); rows whose figures are unchanged are not touched."""
    written = 0
    stamp = utcnow()
    for part in _chunks(sorted(answered), _CHUNK):
        with store.session() as session:
            stored = {
                (str(row.customer_key), str(row.feature_key)): row
                for row in session.execute(
                    select(UPSTREAM_ENTITLEMENTS).where(
                        _e.source == source, _e.customer_key.in_(part)
                    )
                )
            }
            for key in part:
                features = answered[key]
                wanted = set(features) | {f for k, f in stored if k == key}
                for feature in sorted(wanted):
                    columns = _columns(features.get(feature))
                    before = stored.get((key, feature))
                    if before is None:
                        if not columns["held"]:
                            continue
                        session.add(
                            UpstreamEntitlementRow(
                                source=source,
                                customer_key=key,
                                feature_key=feature,
                                changed_at=stamp,
                                **columns,  # type: ignore[arg-type]
                            )
                        )
                    elif any(getattr(before, name) != value for name, value in columns.items()):
                        session.execute(
                            update(UPSTREAM_ENTITLEMENTS)
                            .where(
                                _e.source == source,
                                _e.customer_key == key,
                                _e.feature_key == feature,
                            )
                            .values(changed_at=stamp, **columns)
                        )
                    else:
                        continue
                    written += 1
    return written


def forget_customers(store: Store, source: str, keep: Sequence[str]) -> int:
    """Delete the rows of customers not in `keep` (those the source no longer has); returns
    how many were deleted."""
    kept = set(keep)
    with store.session() as session:
        present = set(
            session.execute(select(_e.customer_key).where(_e.source == source).distinct()).scalars()
        )
        gone = sorted(present - kept)
        deleted = 0
        for part in _chunks(gone, _CHUNK):
            result = session.execute(
                delete(UPSTREAM_ENTITLEMENTS).where(_e.source == source, _e.customer_key.in_(part))
            )
            deleted += int(result.rowcount or 0)  # type: ignore[attr-defined]
    return deleted


def figures_of(
    store: Store, source: str, features: Sequence[str], keys: Sequence[str] | None
) -> dict[str, dict[str, UpstreamFigures]]:
    """The held entitlements to `features` of the customers `keys` (None: of every customer):
    customer key → feature key → figures."""
    if not features:
        return {}
    query = select(UPSTREAM_ENTITLEMENTS).where(
        _e.source == source, _e.feature_key.in_(list(features)), _e.held.is_(True)
    )
    found: dict[str, dict[str, UpstreamFigures]] = {}
    with store.read_session() as session:
        parts: list[Sequence[str] | None] = [None] if keys is None else list(_chunks(keys, _CHUNK))
        for part in parts:
            chunk = query if part is None else query.where(_e.customer_key.in_(list(part)))
            for row in session.execute(chunk):
                found.setdefault(str(row.customer_key), {})[str(row.feature_key)] = UpstreamFigures(
                    kind=str(row.kind),
                    has_access=bool(row.has_access),
                    balance=_figure(row.balance),
                    usage=_figure(row.usage),
                    overage=_figure(row.overage),
                    period_end=row.period_end,
                )
    return found


def changed_customers(
    store: Store, source: str, features: Sequence[str], after: datetime
) -> set[str]:
    """Customers with a row of `features` written at or after `after` (held or not)."""
    if not features:
        return set()
    with store.read_session() as session:
        return set(
            session.execute(
                select(_e.customer_key)
                .where(
                    _e.source == source,
                    _e.changed_at >= after,
                    _e.feature_key.in_(list(features)),
                )
                .distinct()
            ).scalars()
        )


def _chunks(items: Sequence[str], size: int) -> Iterator[list[str]]:
    for i in range(0, len(items), size):
        yield list(items[i : i + size])
