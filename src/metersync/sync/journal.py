"""The link table as the sync engine's journal: intent before a call, outcome after it.

Every method is one short transaction, so what is written survives a SIGKILL the instant after.
A later run reads back exactly where each item stood (CREATING with its payload and idempotency
key, UPDATING, DELETING) and finishes it.
"""

from __future__ import annotations

import functools
import threading
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from datetime import datetime
from typing import Any

from sqlalchemy import and_, case, func, insert, literal, or_, update
from sqlalchemy.orm import aliased
from sqlmodel import Session, col, select
from sqlmodel.sql.expression import SelectOfScalar

from metersync.clock import utcnow
from metersync.mechanics.backoff import backoff
from metersync.store import AttributionRow, LinkKind, LinkRow, LinkState, Store, SubjectRow
from metersync.store.models import CustomerRow, SyncStateRow
from metersync.sync.model import Desired, LinkView, digest, fingerprint

_BATCH = 500  # keys per IN (…) query: far below any database's bound-parameter limit
# Customer links whose external record usage can be routed to.
_ROUTABLE = (LinkState.SYNCED, LinkState.UPDATING, LinkState.ARCHIVED)
# Looked at again by every tick until resolved: intents whose outcome is unknown, and records
# found deleted out of band (recreated, or reported, by policy).
_UNFINISHED = (LinkState.CREATING, LinkState.UPDATING, LinkState.DELETING, LinkState.MISSING)


class Journal:
    def __init__(self, store: Store, target: str, *, render_version: str = "") -> None:
        self.store = store
        self.target = target
        # The target's render version, folded into every fingerprint written: a new version
        # of the rendering makes old fingerprints mismatch, so nothing is trusted across it.
        self.render_version = render_version
        self._group = threading.local()  # the shared session of run_group, per thread

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
            LinkRow.synced_seq,
            LinkRow.synced_fingerprint,
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
                synced_seq=row[12],
                synced_fingerprint=row[13],
                synced_state=row[14] if with_state else None,
            )
            for row in rows
        }

    def in_sync_candidates(self) -> list[tuple[str, str, str]]:
        """(local key, external id, fingerprint) of every synced link whose customer is live and
        unchanged since it was pushed: in sync unless the target's record changed, which the
        full reconcile checks against its listing (plan.confirm_in_sync). One join in the
        database: the fast path reads no customer and no JSON."""
        query = (
            select(LinkRow.local_key, LinkRow.external_id, LinkRow.synced_fingerprint)
            .join(CustomerRow, col(CustomerRow.key) == col(LinkRow.local_key))
            .where(
                LinkRow.target == self.target,
                LinkRow.kind == LinkKind.CUSTOMER,
                LinkRow.state == LinkState.SYNCED,
                col(LinkRow.external_id).is_not(None),
                col(LinkRow.synced_fingerprint).is_not(None),
                col(LinkRow.last_error).is_(None),
                col(LinkRow.next_attempt_at).is_(None),
                col(LinkRow.synced_seq) == col(CustomerRow.change_seq),
                col(CustomerRow.deleted_at).is_(None),
            )
        )
        with self.store.read_session() as session:
            return list(session.exec(query))  # type: ignore[arg-type]

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
        with self._write() as session:
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
        seq: int | None = None,
    ) -> None:
        """Written after the call succeeded: the record now holds `pushed`, which is the local
        record at change number `seq` (None when not known to be: the fast path skips it)."""
        now = utcnow()
        with self._write() as session:
            row = self._row(session, key)
            row.external_id = external_id
            row.state = state
            self._pushed(row, pushed, seq)
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

    def confirm(self, desired: list[Desired]) -> int:
        """A full reconcile found these records in sync in the target: record them as pushed
        (state, fingerprint, change number), so the next full reconcile confirms them by
        fingerprint alone. Only links still SYNCED are touched, and only where something
        differs. Bulk reads and writes: after an upgrade this runs over every link once."""
        by_key = {d.key: d for d in desired}
        query = select(  # type: ignore[call-overload]  # sqlmodel types up to 4 columns
            LinkRow.id,
            LinkRow.local_key,
            LinkRow.synced_seq,
            LinkRow.synced_hash,
            LinkRow.synced_fingerprint,
        ).where(
            LinkRow.target == self.target,
            LinkRow.kind == LinkKind.CUSTOMER,
            LinkRow.state == LinkState.SYNCED,
        )
        now = utcnow()
        with self.store.session() as session:
            rows = self._in_batches(session, query, col(LinkRow.local_key), sorted(by_key))
            updates = []
            for row_id, key, seq, hash_, fingerprint_ in rows:
                wanted = by_key[key]
                state = wanted.state()
                new = self._fingerprint(state)
                if (seq, hash_, fingerprint_) == (wanted.seq, wanted.hash, new):
                    continue
                updates.append(
                    {
                        "id": row_id,
                        "synced_state": state,
                        "synced_hash": wanted.hash,
                        "owned_metadata_keys": sorted(state["metadata"]),
                        "synced_fingerprint": new,
                        "synced_seq": wanted.seq,
                        "attempts": 0,
                        "last_error": None,
                        "next_attempt_at": None,
                        "updated_at": now,
                    }
                )
            if updates:
                session.execute(update(LinkRow), updates)
        return len(updates)

    def _pushed(self, row: LinkRow, pushed: Mapping[str, Any], seq: int | None) -> None:
        row.synced_state = dict(pushed)
        row.synced_hash = digest(pushed)
        row.owned_metadata_keys = sorted(pushed.get("metadata", {}))
        row.synced_fingerprint = self._fingerprint(pushed)
        row.synced_seq = seq

    def _fingerprint(self, pushed: Mapping[str, Any]) -> str:
        return fingerprint(
            self.render_version, pushed.get("fields", {}), pushed.get("metadata", {})
        )

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
        with self._write() as session:
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
        with self._write() as session:
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
        with self._write() as session:
            row = self._row(session, key)
            row.last_error = f"blocked: {reason}"[:2000]
            row.updated_at = utcnow()
            session.add(row)

    # -- group commit ----------------------------------------------------------------------------

    @contextmanager
    def _write(self) -> Iterator[Session]:
        """The session a write goes into: the group's, inside run_group; else its own."""
        shared: Session | None = getattr(self._group, "session", None)
        if shared is not None:
            yield shared
            return
        with self.store.session() as session:
            yield session

    def run_group(self, writes: Sequence[Callable[[], Any]]) -> list[Any]:
        """Run journal writes in one transaction: one commit for many actions' intents and
        outcomes. Each returns only after the commit, so an intent is still durable before its
        call. If the group fails, each write runs alone, so one bad write sinks nobody else."""
        try:
            with self.store.session() as session:
                try:
                    self._group.session = session
                    # Every write names its local key first: read their rows in one query.
                    keys = [
                        w.args[0] for w in writes if isinstance(w, functools.partial) and w.args
                    ]
                    if len(keys) == len(writes):
                        self._group.rows = {
                            r.local_key: r
                            for r in self._in_batches(
                                session, self._customers(), LinkRow.local_key, keys
                            )
                        }
                    results = [write() for write in writes]
                finally:
                    # Whatever failed, the writes below (and this thread's next group) must
                    # not find a session that will never commit.
                    self._group.session = None
                    self._group.rows = None
            return results
        except Exception:  # noqa: BLE001 - retried one by one below, each error its own
            alone: list[Any] = []
            for write in writes:
                try:
                    alone.append(write())
                except Exception as exc:  # noqa: BLE001 - handed to that write's caller
                    alone.append(exc)
            return alone

    def unlink(self, key: str) -> bool:
        with self.store.session() as session:
            row = session.exec(self._customers().where(LinkRow.local_key == key)).first()
            if row is None:
                return False
            session.delete(row)
            return True

    def context_since(self) -> datetime | None:
        state = self.state()
        return state.context_since if state else None

    def advance(
        self,
        *,
        cursor: int | None,
        full: bool,
        summary: Mapping[str, Any],
        context_since: datetime | None = None,
    ) -> None:
        now = utcnow()
        with self.store.session() as session:
            row = session.get(SyncStateRow, self.target) or SyncStateRow(target=self.target)
            if cursor is not None:
                row.change_cursor = max(row.change_cursor, cursor)
            if context_since is not None:
                row.context_since = context_since
            if full:
                row.last_full_at = now
            else:
                row.last_tick_at = now
            if not summary.get("failed"):
                row.last_success_at = now
            row.last_summary = dict(summary)
            session.add(row)

    def _row(self, session: Session, key: str) -> LinkRow:
        rows: dict[str, LinkRow] | None = getattr(self._group, "rows", None)
        row = rows.get(key) if rows is not None else None
        if row is None and rows is None:
            row = session.exec(self._customers().where(LinkRow.local_key == key)).first()
        if row is None:
            row = LinkRow(
                target=self.target, kind=LinkKind.CUSTOMER, local_key=key, state=LinkState.PENDING
            )
            if rows is not None:
                rows[key] = row
        return row

    # -- subject routing -------------------------------------------------------------------------

    def route_subjects(self, subject_keys: Iterable[str] | None = None) -> int:
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
                    col(owner.target) == self.target,
                    col(owner.kind) == LinkKind.CUSTOMER,
                    col(owner.local_key) == col(AttributionRow.customer_key),
                    col(owner.external_id).is_not(None),
                    col(owner.state).in_([s.value for s in _ROUTABLE]),
                ),
            )
            .outerjoin(
                row,
                and_(
                    col(row.target) == self.target,
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
        with self.store.session() as session:
            differing = self._in_batches(session, query, col(SubjectRow.key), wanted)
            now = utcnow()
            inserts: list[dict[str, Any]] = []
            updates: list[dict[str, Any]] = []
            for key, external_id, new_state, row_id in differing:
                if row_id is None:
                    inserts.append(
                        {
                            "target": self.target,
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

    @staticmethod
    def _in_batches(session: Session, query: Any, column: Any, keys: list[str] | None) -> list[Any]:
        if keys is None:
            return list(session.exec(query))
        rows: list[Any] = []
        for start in range(0, len(keys), _BATCH):
            rows += session.exec(query.where(column.in_(keys[start : start + _BATCH])))
        return rows
