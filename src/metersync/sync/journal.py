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

from sqlalchemy import or_
from sqlmodel import Session, col, select
from sqlmodel.sql.expression import SelectOfScalar

from metersync.clock import utcnow
from metersync.store import AttributionRow, LinkKind, LinkRow, LinkState, Store, SubjectRow
from metersync.store.models import SyncStateRow
from metersync.sync.model import LinkView, digest

_BATCH = 500  # keys per IN (…) query: far below any database's bound-parameter limit
# Looked at again by every tick until resolved: intents whose outcome is unknown, and records
# found deleted out of band (recreated, or reported, by policy).
_UNFINISHED = (LinkState.CREATING, LinkState.UPDATING, LinkState.DELETING, LinkState.MISSING)


def backoff(attempts: int, *, base_s: float = 30.0, cap_s: float = 3600.0) -> timedelta:
    """Exponential, capped, with jitter so that failures do not retry in lockstep."""
    seconds = min(cap_s, base_s * 2 ** max(0, attempts - 1))
    return timedelta(seconds=seconds * random.uniform(0.8, 1.2))  # noqa: S311 - jitter only


def view(row: LinkRow) -> LinkView:
    return LinkView(
        key=row.local_key,
        external_id=row.external_id,
        state=row.state,
        generation=row.generation,
        synced_hash=row.synced_hash,
        synced_state=row.synced_state,
        owned_metadata_keys=tuple(row.owned_metadata_keys or ()),
        idempotency_key=row.idempotency_key,
        intent_state=row.intent_state,
        intent_at=row.intent_at,
        attempts=row.attempts,
        last_error=row.last_error,
        next_attempt_at=row.next_attempt_at,
    )


class Journal:
    def __init__(self, store: Store, target: str) -> None:
        self.store = store
        self.target = target

    # -- reads -----------------------------------------------------------------------------------

    def links(self, keys: Iterable[str] | None = None) -> dict[str, LinkView]:
        with self.store.read_session() as session:
            rows: list[LinkRow] = []
            if keys is None:
                rows = list(session.exec(self._customers()))
            else:
                wanted = sorted(set(keys))
                for start in range(0, len(wanted), _BATCH):
                    chunk = wanted[start : start + _BATCH]
                    rows += session.exec(self._customers().where(col(LinkRow.local_key).in_(chunk)))
        return {row.local_key: view(row) for row in rows}

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
            row = session.exec(self._customers().where(LinkRow.external_id == external_id)).first()
            return view(row) if row else None

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
        customer's link), or at nothing yet. Returns how many rows changed."""
        with self.store.session() as session:
            customer_ids = {
                key: external_id
                for key, external_id, state in session.exec(
                    select(LinkRow.local_key, LinkRow.external_id, LinkRow.state).where(
                        LinkRow.target == self.target, LinkRow.kind == LinkKind.CUSTOMER
                    )
                )
                if external_id
                and state in (LinkState.SYNCED, LinkState.UPDATING, LinkState.ARCHIVED)
            }
            query = select(
                SubjectRow.key, SubjectRow.deleted_at, AttributionRow.customer_key
            ).outerjoin(AttributionRow, col(AttributionRow.subject_key) == col(SubjectRow.key))
            wanted_keys = None if subject_keys is None else set(subject_keys)
            current = {
                row.local_key: row
                for row in session.exec(
                    select(LinkRow).where(
                        LinkRow.target == self.target, LinkRow.kind == LinkKind.SUBJECT
                    )
                )
                if wanted_keys is None or row.local_key in wanted_keys
            }
            changed = 0
            for key, deleted_at, customer_key in session.exec(query):
                if wanted_keys is not None and key not in wanted_keys:
                    continue
                external_id = customer_ids.get(customer_key) if customer_key else None
                state = (
                    LinkState.DELETED
                    if deleted_at is not None
                    else LinkState.SYNCED
                    if external_id
                    else LinkState.PENDING
                )
                row = current.get(key)
                if row is None:
                    row = LinkRow(
                        target=self.target, kind=LinkKind.SUBJECT, local_key=key, state=state
                    )
                elif row.external_id == external_id and row.state == state:
                    continue
                row.external_id = external_id
                row.state = state
                row.synced_at = utcnow() if external_id else row.synced_at
                row.updated_at = utcnow()
                session.add(row)
                changed += 1
            return changed
