"""Link queries across targets, for the catalog, the render context and usage binding."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime
from typing import Any

from sqlalchemy import Select
from sqlmodel import Session, select

from metersync.states import LinkKind, LinkState
from metersync.store.engine import Store
from metersync.store.links._rows import ROUTABLE, link_columns
from metersync.store.models import AttributionRow, LinkRow


def changed_customers(store: Store, targets: Sequence[str], after: datetime) -> set[str]:
    """Customers whose link in any of `targets` changed at or after `after`."""
    link = link_columns()
    with store.read_session() as session:
        return set(
            session.execute(
                select(link.local_key).where(
                    link.kind == LinkKind.CUSTOMER,
                    link.target.in_(targets),
                    link.updated_at >= after,
                )
            ).scalars()
        )


def has_live_link(session: Session, customer_key: str) -> bool:
    """Whether any target holds a record for the customer (a link not DELETED), read in the
    caller's transaction."""
    found = session.exec(
        select(LinkRow.id).where(
            LinkRow.kind == LinkKind.CUSTOMER,
            LinkRow.local_key == customer_key,
            LinkRow.state != LinkState.DELETED,
        )
    ).first()
    return found is not None


def routable_subjects(target: str) -> Select[Any]:
    """A subquery: subjects whose customer has a live link in `target`, which usage can bind
    for (aggregate.bind_usage)."""
    link = link_columns()
    attribution = AttributionRow.__table__.c  # type: ignore[attr-defined]
    return (
        select(attribution.subject_key)
        .join(link.local_key.table, link.local_key == attribution.customer_key)
        .where(
            link.target == target,
            link.kind == LinkKind.CUSTOMER,
            link.external_id.is_not(None),
            link.state.in_([s.value for s in ROUTABLE]),
        )
    )
