"""The link table as the sync engine's journal: intent before a call, outcome after it.

Every method is one short transaction, so what is written survives a SIGKILL the instant after.
A later run reads back exactly where each item stood (CREATING with its payload and idempotency
key, UPDATING, DELETING) and finishes it.
"""

from __future__ import annotations

import random
from collections.abc import Iterable, Mapping
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import func, insert, or_, update
from sqlmodel import Session, col, select
from sqlmodel.sql.expression import SelectOfScalar

from metersync.clock import utcnow
from metersync.store import AttributionRow, LinkKind, LinkRow, LinkState, Store, SubjectRow
from metersync.store.models import SyncStateRow
from metersync.sync.model import LinkView, digest

_BATCH = 500  # keys per IN (…) query: far below any database's bound-parameter limit
# Customer links whose external record usage can be routed to.
_ROUTABLE = (LinkState.SYNCED, LinkState.UPDATING, LinkState.ARCHIVED)
# Looked at again by every tick until resolved: intents whose outcome is unknown, and records
# found deleted out of band (recreated, or reported, by policy).
_UNFINISHED = (LinkState.CREATING, LinkState.UPDATING, LinkState.DELETING, LinkState.MISSING)


def backoff(attempts: int, *, base_s: float = 30.0, cap_s: float = 3600.0) -> timedelta:
    """Exponential, capped, with jitter so that failures do not retry in lockstep."""
    seconds = min(cap_s, base_s * 2 ** max(0, attempts - 1))
    return timedelta(seconds=seconds * random.uniform(0.8, 1.2))  # noqa: S311 - jitter only


class Journal:
    def __init__(self, store: Store, target: str) -> None:
        self.store = store
        self.target = target

    # -- reads -----------------------------------------------------------------------------------

    def links(
        self, keys: Iterable[str] | None = None, *, with_state: bool = True
    ) -> dict[str, LinkView]:
        """Customer links, all or for `keys`. Plain column reads, not ORM objects: a full
        reconcile reads 100,000 of them. `with_state=False` skips what we last pushed, which
        only an incremental plan compares against."""
        columns = [
            LinkRow.local_key,
            LinkRow.external_id,
            LinkRow.state,
            LinkRow.generation,
            LinkRow.synced_hash,
            LinkRow.owned_metadata_keys,
            LinkRow.idempotency_key,
            LinkRow.intent_state,
            LinkRow.intent_at,
            LinkRow.attempts,
            LinkRow.last_error,
            LinkRow.next_attempt_at,
        ]
        if with_state:
            columns.append(LinkRow.synced_state)
        query = select(*columns).where(  # type: ignore[type-var]
            LinkRow.target == self.target, LinkRow.kind == LinkKind.CUSTOMER
        )
        with self.store.read_session() as session:
            wanted = None if keys is None else sorted(set(keys))
            rows = self._in_batches(session, query, col(LinkRow.local_key), wanted)
        return {
            row[0]: LinkView(
                key=row[0],
                external_id=row[1],
                state=row[2],
                generation=row[3],
                synced_hash=row[4],
                owned_metadata_keys=tuple(row[5] or ()),
                idempotency_key=row[6],
                intent_state=row[7],
                intent_at=row[8],
                attempts=row[9],
                last_error=row[10],
                next_attempt_at=row[11],
                synced_state=row[12] if with_state else None,
            )
            for row in rows
        }

    def managed_count(self) -> int:
        """Customers this target holds for us: what the mass-delete guard measures against."""
        with self.store.read_session() as session:
            count = session.exec(
                select(func.count())
                .select_from(LinkRow)
                .where(
                    LinkRow.target == self.target,
                    LinkRow.kind == LinkKind.CUSTOMER,
                    col(LinkRow.external_id).is_not(None),
                    col(LinkRow.state).in_([s.value for s in _ROUTABLE]),
                )
            ).one()
        return int(count)

    def link(self, key: str) -> LinkView | None:
        return self.links([key]).get(key)

    def due(self, now: datetime) -> list[str]:
        """Customers to look at again: backoff over, or an intent whose outcome is unknown."""
        with self.store.read_session() as session:
            query = select(LinkRow.local_key).where(
                LinkRow.target == self.target,
                LinkRow.kind == LinkKind.CUSTOMER,
                or_(
                    col(LinkRow.state).in_([s.value for s in _UNFINISHED]),
                    col(LinkRow.next_attempt_at) <= now,
                ),
            )
            return sorted(session.exec(query))

    def by_external_id(self, external_id: str) -> LinkView | None:
        with self.store.read_session() as session:
            key = session.exec(
                select(LinkRow.local_key).where(
                    LinkRow.target == self.target,
                    LinkRow.kind == LinkKind.CUSTOMER,
                    LinkRow.external_id == external_id,
                )
            ).first()
        return self.link(key) if key is not None else None

    def cursor(self) -> int:
        with self.store.read_session() as session:
            row = session.get(SyncStateRow, self.target)
            return row.change_cursor if row else 0

    def state(self) -> SyncStateRow | None:
        with self.store.read_session() as session:
            return session.get(SyncStateRow, self.target)

    def _customers(self) -> SelectOfScalar[LinkRow]:
        return select(LinkRow).where(
            LinkRow.target == self.target, LinkRow.kind == LinkKind.CUSTOMER
        )

    # -- writes ----------------------------------------------------------------------------------

    def intend(
        self,
        key: str,
        state: LinkState,
        *,
        idempotency_key: str,
        intent_state: Mapping[str, Any],
        generation: int,
        external_id: str | None = None,
        replace_external: bool = False,
    ) -> None:
        """Written before the call: what we are about to do, and with which key."""
        with self.store.session() as session:
            row = self._row(session, key)
            row.state = state
            row.idempotency_key = idempotency_key
            row.intent_state = dict(intent_state)
            row.intent_at = utcnow()
            row.generation = generation
            if external_id is not None or replace_external:
                row.external_id = external_id
            row.updated_at = utcnow()
            session.add(row)

    def synced(
        self,
        key: str,
        *,
        external_id: str,
        pushed: Mapping[str, Any],
        generation: int | None = None,
        state: LinkState = LinkState.SYNCED,
    ) -> None:
        """Written after the call succeeded: the record now holds `pushed`."""
        now = utcnow()
        with self.store.session() as session:
            row = self._row(session, key)
            row.external_id = external_id
            row.state = state
            row.synced_state = dict(pushed)
            row.synced_hash = digest(pushed)
            row.owned_metadata_keys = sorted(pushed.get("metadata", {}))
            if generation is not None:
                row.generation = generation
            row.idempotency_key = None
            row.intent_state = None
            row.intent_at = None
            row.attempts = 0
            row.last_error = None
            row.next_attempt_at = None
            row.synced_at = now
            row.updated_at = now
            session.add(row)

    def failed(
        self,
        key: str,
        message: str,
        *,
        state: LinkState | None,
        forget_intent: bool,
        failed_hash: str | None,
        retry_soon: bool,
    ) -> None:
        """The call failed: record why and when to try again; never lose the intent of a write
        whose outcome is unknown (`forget_intent` only when the target refused it outright)."""
        now = utcnow()
        with self.store.session() as session:
            row = self._row(session, key)
            row.attempts += 1
            row.last_error = message[:2000]
            delay = backoff(row.attempts, base_s=5.0 if retry_soon else 30.0)
            row.next_attempt_at = now + delay
            if state is not None:
                row.state = state
            if forget_intent:
                row.idempotency_key = None
                row.intent_at = None
                row.intent_state = {"hash": failed_hash} if failed_hash else None
            row.updated_at = now
            session.add(row)

    def set_state(self, key: str, state: LinkState, *, note: str | None = None) -> None:
        with self.store.session() as session:
            row = self._row(session, key)
            row.state = state
            row.idempotency_key = None
            row.intent_state = None
            row.intent_at = None
            if note is not None:
                row.last_error = note
            row.updated_at = utcnow()
            session.add(row)

    def blocked(self, key: str, reason: str) -> None:
        with self.store.session() as session:
            row = self._row(session, key)
            row.last_error = f"blocked: {reason}"[:2000]
            row.updated_at = utcnow()
            session.add(row)

    def unlink(self, key: str) -> bool:
        with self.store.session() as session:
            row = session.exec(self._customers().where(LinkRow.local_key == key)).first()
            if row is None:
                return False
            session.delete(row)
            return True

    def advance(self, *, cursor: int | None, full: bool, summary: Mapping[str, Any]) -> None:
        now = utcnow()
        with self.store.session() as session:
            row = session.get(SyncStateRow, self.target) or SyncStateRow(target=self.target)
            if cursor is not None:
                row.change_cursor = max(row.change_cursor, cursor)
            if full:
                row.last_full_at = now
            else:
                row.last_tick_at = now
            if not summary.get("failed"):
                row.last_success_at = now
            row.last_summary = dict(summary)
            session.add(row)

    def _row(self, session: Session, key: str) -> LinkRow:
        row = session.exec(self._customers().where(LinkRow.local_key == key)).first()
        if row is None:
            row = LinkRow(
                target=self.target, kind=LinkKind.CUSTOMER, local_key=key, state=LinkState.PENDING
            )
        return row

    # -- subject routing -------------------------------------------------------------------------

    def route_subjects(self, subject_keys: Iterable[str] | None = None) -> int:
        """Point each subject's link row at the external customer its usage goes to (through its
        customer's link), or at nothing yet. Returns how many rows changed.

        `subject_keys` None means every subject (a full reconcile); a tick passes only the few
        it touched, and then reads only those rows. Plain column reads and bulk writes: this
        runs over 100,000 subjects in a full reconcile.
        """
        wanted = None if subject_keys is None else sorted(set(subject_keys))
        if wanted == []:
            return 0
        with self.store.session() as session:
            subjects = self._in_batches(
                session,
                select(
                    SubjectRow.key, SubjectRow.deleted_at, AttributionRow.customer_key
                ).outerjoin(AttributionRow, col(AttributionRow.subject_key) == col(SubjectRow.key)),
                col(SubjectRow.key),
                wanted,
            )
            owners = None if wanted is None else sorted({c for _, _, c in subjects if c})
            customer_ids = {
                key: external_id
                for key, external_id, state in self._in_batches(
                    session,
                    select(LinkRow.local_key, LinkRow.external_id, LinkRow.state).where(
                        LinkRow.target == self.target, LinkRow.kind == LinkKind.CUSTOMER
                    ),
                    col(LinkRow.local_key),
                    owners,
                )
                if external_id and state in _ROUTABLE
            }
            current = {
                key: (row_id, external_id, state)
                for row_id, key, external_id, state in self._in_batches(
                    session,
                    select(LinkRow.id, LinkRow.local_key, LinkRow.external_id, LinkRow.state).where(
                        LinkRow.target == self.target, LinkRow.kind == LinkKind.SUBJECT
                    ),
                    col(LinkRow.local_key),
                    wanted,
                )
            }
            now = utcnow()
            inserts: list[dict[str, Any]] = []
            updates: list[dict[str, Any]] = []
            for key, deleted_at, customer_key in subjects:
                external_id = customer_ids.get(customer_key) if customer_key else None
                state = (
                    LinkState.DELETED
                    if deleted_at is not None
                    else LinkState.SYNCED
                    if external_id
                    else LinkState.PENDING
                )
                existing = current.get(key)
                if existing is None:
                    inserts.append(
                        {
                            "target": self.target,
                            "kind": LinkKind.SUBJECT,
                            "local_key": key,
                            "external_id": external_id,
                            "state": state,
                            "owned_metadata_keys": [],
                            "generation": 1,
                            "attempts": 0,
                            "created_at": now,
                            "updated_at": now,
                            "synced_at": now if external_id else None,
                        }
                    )
                elif existing[1:] != (external_id, state):
                    updates.append(
                        {
                            "id": existing[0],
                            "external_id": external_id,
                            "state": state,
                            "updated_at": now,
                        }
                    )
            if inserts:
                session.execute(insert(LinkRow), inserts)
            if updates:
                session.execute(update(LinkRow), updates)
            return len(inserts) + len(updates)

    @staticmethod
    def _in_batches(session: Session, query: Any, column: Any, keys: list[str] | None) -> list[Any]:
        if keys is None:
            return list(session.exec(query))
        rows: list[Any] = []
        for start in range(0, len(keys), _BATCH):
            rows += session.exec(query.where(column.in_(keys[start : start + _BATCH])))
        return rows
