"""Subject links: each subject's link row points at the external customer its usage goes to
(through its customer's link), or at nothing yet."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from sqlalchemy import and_, case, insert, literal, or_, update
from sqlalchemy.orm import aliased
from sqlmodel import col, select

from metersync.clock import utcnow
from metersync.states import LinkKind, LinkState
from metersync.store.engine import Store
from metersync.store.links._rows import ROUTABLE, in_batches
from metersync.store.models import AttributionRow, LinkRow, SubjectRow

# -- subject links ---------------------------------------------------------------------------


def route_subjects(store: Store, target: str, subject_keys: Iterable[str] | None = None) -> int:
    """Point each subject's link row at the external customer its usage goes to (through its
    customer's link), or at nothing yet. Returns how many rows changed.

    `subject_keys` None means every subject (a full reconcile); a tick passes only the few
    it touched. The database compares what each row says with what it should say and hands
    back only the rows that differ: a full reconcile over 100,000 settled subjects reads
    nothing into Python.
    """
    wanted = None if subject_keys is None else sorted(set(subject_keys))
    if wanted == []:
        return 0
    owner = aliased(LinkRow)  # the subject's customer's link
    row = aliased(LinkRow)  # the subject's own link row
    routed_to = owner.external_id
    state = case(
        (col(SubjectRow.deleted_at).is_not(None), literal(LinkState.DELETED.value)),
        (col(routed_to).is_not(None), literal(LinkState.SYNCED.value)),
        else_=literal(LinkState.PENDING.value),
    )
    query = (
        select(SubjectRow.key, routed_to, state, row.id)
        .select_from(SubjectRow)
        .outerjoin(AttributionRow, col(AttributionRow.subject_key) == col(SubjectRow.key))
        .outerjoin(
            owner,
            and_(
                col(owner.target) == target,
                col(owner.kind) == LinkKind.CUSTOMER,
                col(owner.local_key) == col(AttributionRow.customer_key),
                col(owner.external_id).is_not(None),
                col(owner.state).in_([s.value for s in ROUTABLE]),
            ),
        )
        .outerjoin(
            row,
            and_(
                col(row.target) == target,
                col(row.kind) == LinkKind.SUBJECT,
                col(row.local_key) == col(SubjectRow.key),
            ),
        )
        .where(
            or_(
                col(row.id).is_(None),
                col(row.external_id).is_distinct_from(routed_to),
                col(row.state) != state,
            )
        )
    )
    with store.session() as session:
        differing = in_batches(session, query, col(SubjectRow.key), wanted)
        now = utcnow()
        inserts: list[dict[str, Any]] = []
        updates: list[dict[str, Any]] = []
        for key, external_id, new_state, row_id in differing:
            if row_id is None:
                inserts.append(
                    {
                        "target": target,
                        "kind": LinkKind.SUBJECT,
                        "local_key": key,
                        "external_id": external_id,
                        "state": new_state,
                        "owned_metadata_keys": [],
                        "generation": 1,
                        "attempts": 0,
                        "created_at": now,
                        "updated_at": now,
                        "synced_at": now if external_id else None,
                    }
                )
            else:
                updates.append(
                    {
                        "id": row_id,
                        "external_id": external_id,
                        "state": new_state,
                        "updated_at": now,
                    }
                )
        if inserts:
            session.execute(insert(LinkRow), inserts)
        if updates:
            session.execute(update(LinkRow), updates)
        return len(inserts) + len(updates)
