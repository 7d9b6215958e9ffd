"""Customer links of one target: the reads the planner needs, the journal's writes (intent
before a call, outcome after), group commit, and link health.

Every write is one short transaction (or one shared one inside `group`), so what is written
survives a SIGKILL the instant after.
"""

from __future__ import annotations

import threading
from collections.abc import Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import case, func, or_, update
from sqlmodel import Session, col, select
from sqlmodel.sql.expression import SelectOfScalar

from metersync.clock import utcnow
from metersync.mechanics.backoff import backoff
from metersync.states import LinkKind, LinkState
from metersync.store.engine import Store
from metersync.store.links._rows import ROUTABLE, in_batches, link_columns
from metersync.store.models import CustomerRow, LinkRow

_ERROR_MAX = 2000  # characters of an error kept on a link
# Looked at again by every tick until resolved: intents whose outcome is unknown, and records
# found deleted out of band (recreated, or reported, by policy).
_UNFINISHED = (LinkState.CREATING, LinkState.UPDATING, LinkState.DELETING, LinkState.MISSING)

# The columns of a customer link the planner reads, in this order (see LinkTable.customers).
VIEW_COLUMNS = (
    "local_key",
    "external_id",
    "state",
    "generation",
    "synced_hash",
    "owned_metadata_keys",
    "idempotency_key",
    "intent_state",
    "intent_at",
    "attempts",
    "last_error",
    "next_attempt_at",
    "synced_seq",
    "synced_fingerprint",
    "synced_state",
)


@dataclass(frozen=True)
class Pushed:
    """What a target record now holds, as the link remembers it: the state, its digest, the
    metadata keys we own, and the fingerprint the planner compares against."""

    state: Mapping[str, Any]
    digest: str
    fingerprint: str

    @property
    def owned_metadata_keys(self) -> list[str]:
        return sorted(self.state.get("metadata", {}))


@dataclass(frozen=True)
class Confirmed:
    """A link a full reconcile found in sync: what it should record (see confirm_synced)."""

    pushed: Pushed
    seq: int | None


class LinkTable:
    """The link rows of one target."""

    def __init__(self, store: Store, target: str) -> None:
        self.store = store
        self.target = target
        self._group = threading.local()  # the shared session and rows of `group`, per thread

    # -- customer links: reads -------------------------------------------------------------------

    def customers(self, keys: Iterable[str] | None = None, *, with_state: bool = True) -> list[Any]:
        """Customer link rows as tuples of VIEW_COLUMNS (all, or for `keys`). Plain column
        reads, not ORM objects: a full reconcile reads 100,000 of them. `with_state=False`
        leaves out what we last pushed (the last column), which only an incremental plan
        compares against."""
        names = VIEW_COLUMNS if with_state else VIEW_COLUMNS[:-1]
        columns = [getattr(LinkRow, name) for name in names]
        query = select(*columns).where(
            LinkRow.target == self.target, LinkRow.kind == LinkKind.CUSTOMER
        )
        wanted = None if keys is None else sorted(set(keys))
        with self.store.read_session() as session:
            return in_batches(session, query, col(LinkRow.local_key), wanted)

    def in_sync_candidates(self) -> list[tuple[str, str, str]]:
        """(local key, external id, fingerprint) of every synced link whose customer is live and
        unchanged since it was pushed: in sync unless the target's record changed, which the
        full reconcile checks against its listing. One join in the database: the fast path
        reads no customer and no JSON."""
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
                    col(LinkRow.state).in_([s.value for s in ROUTABLE]),
                )
            ).one()
        return int(count)

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

    def key_of(self, external_id: str) -> str | None:
        """The local key of the customer linked to `external_id`."""
        with self.store.read_session() as session:
            return session.exec(
                select(LinkRow.local_key).where(
                    LinkRow.target == self.target,
                    LinkRow.kind == LinkKind.CUSTOMER,
                    LinkRow.external_id == external_id,
                )
            ).first()

    def external_ids(self, keys: Sequence[str] | None = None) -> dict[str, str]:
        """Customer key → external id, for linked customers (all, or `keys`)."""
        link = link_columns()
        query = select(link.local_key, link.external_id).where(
            link.target == self.target,
            link.kind == LinkKind.CUSTOMER,
            link.external_id.is_not(None),
        )
        if keys is not None:
            query = query.where(link.local_key.in_(keys))
        with self.store.read_session() as session:
            return {k: str(v) for k, v in session.execute(query)}

    def routable_external_ids(self, keys: Sequence[str] | None = None) -> dict[str, str]:
        """Customer key → external id, for customers usage can be pushed to (all, or `keys`)."""
        link = link_columns()
        routable = [s.value for s in ROUTABLE]
        if keys is None:
            query = select(link.local_key, link.external_id).where(
                link.target == self.target,
                link.kind == LinkKind.CUSTOMER,
                link.external_id.is_not(None),
                link.state.in_(routable),
            )
            with self.store.read_session() as session:
                return {key: external_id for key, external_id in session.execute(query)}
        # By key only, the rest checked here: given the state or external-id conditions too,
        # SQLite walks another index over every customer instead of looking each key up.
        by_key = select(link.local_key, link.external_id, link.state).where(
            link.target == self.target, link.kind == LinkKind.CUSTOMER
        )
        with self.store.read_session() as session:
            rows = in_batches(session, by_key, link.local_key, list(keys))
        return {
            key: external_id
            for key, external_id, state in rows
            if external_id is not None and state in routable
        }

    def customer_page(self, after: str | None, limit: int) -> list[tuple[str, str | None]]:
        """One page of a walk over every customer link, in key order, the keys after `after`:
        (key, external id when usage can be routed to it, else None). A keyset walk, so that a
        caller can visit 100,000 customers holding one page at a time."""
        link = link_columns()
        routable = link.external_id.is_not(None) & link.state.in_([s.value for s in ROUTABLE])
        query = (
            select(link.local_key, case((routable, link.external_id), else_=None))
            .where(link.target == self.target, link.kind == LinkKind.CUSTOMER)
            .order_by(link.local_key)
            .limit(limit)
        )
        if after is not None:
            query = query.where(link.local_key > after)
        with self.store.read_session() as session:
            return [(key, external_id) for key, external_id in session.execute(query)]

    def customer_count(self) -> int:
        """Customer links of this target, whatever their state (what customer_page walks)."""
        link = link_columns()
        with self.store.read_session() as session:
            count = session.execute(
                select(func.count()).where(
                    link.target == self.target, link.kind == LinkKind.CUSTOMER
                )
            ).scalar_one()
        return int(count)

    def subjects_routed_to(self, customer_key: str) -> set[str]:
        """Subjects whose link points at the customer's record (their usage goes there)."""
        link = link_columns()
        customer_link = (
            select(link.external_id)
            .where(
                link.target == self.target,
                link.kind == LinkKind.CUSTOMER,
                link.local_key == customer_key,
            )
            .scalar_subquery()
        )
        with self.store.read_session() as session:
            return set(
                session.execute(
                    select(link.local_key).where(
                        link.target == self.target,
                        link.kind == LinkKind.SUBJECT,
                        link.external_id.is_not(None),
                        link.external_id == customer_link,
                    )
                ).scalars()
            )

    def linked_keys(self) -> set[str]:
        """Every customer with a link row in this target, whatever its state."""
        link = link_columns()
        with self.store.read_session() as session:
            return set(
                session.execute(
                    select(link.local_key).where(
                        link.target == self.target, link.kind == LinkKind.CUSTOMER
                    )
                ).scalars()
            )

    # -- customer links: writes ------------------------------------------------------------------

    def write_intent(
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
        """Before the call: what we are about to do, and with which key."""
        with self._session() as session:
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

    def write_synced(
        self,
        key: str,
        *,
        external_id: str,
        pushed: Pushed,
        state: LinkState,
        generation: int | None,
        seq: int | None,
    ) -> None:
        """After a call succeeded: the record holds `pushed`; the intent is done."""
        now = utcnow()
        with self._session() as session:
            row = self._row(session, key)
            row.external_id = external_id
            row.state = state
            row.synced_state = dict(pushed.state)
            row.synced_hash = pushed.digest
            row.owned_metadata_keys = pushed.owned_metadata_keys
            row.synced_fingerprint = pushed.fingerprint
            row.synced_seq = seq
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

    def confirm_synced(self, confirmed: Mapping[str, Confirmed]) -> int:
        """Record these links, where still SYNCED, as holding what `confirmed` says; touch
        only rows where something differs. Bulk reads and writes: after an upgrade this runs
        over every link once. Returns how many rows changed."""
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
            rows = in_batches(session, query, col(LinkRow.local_key), sorted(confirmed))
            updates = []
            for row_id, key, seq, digest, fingerprint in rows:
                wanted = confirmed[key]
                pushed = wanted.pushed
                if (seq, digest, fingerprint) == (wanted.seq, pushed.digest, pushed.fingerprint):
                    continue
                updates.append(
                    {
                        "id": row_id,
                        "synced_state": dict(pushed.state),
                        "synced_hash": pushed.digest,
                        "owned_metadata_keys": pushed.owned_metadata_keys,
                        "synced_fingerprint": pushed.fingerprint,
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

    def write_failure(
        self,
        key: str,
        message: str,
        *,
        state: LinkState | None,
        forget_intent: bool,
        failed_hash: str | None,
        retry_soon: bool,
    ) -> None:
        """The call failed: why, and when to try again (a backoff on the attempts so far)."""
        now = utcnow()
        with self._session() as session:
            row = self._row(session, key)
            row.attempts += 1
            row.last_error = message[:_ERROR_MAX]
            row.next_attempt_at = now + backoff(row.attempts, base_s=5.0 if retry_soon else 30.0)
            if state is not None:
                row.state = state
            if forget_intent:
                row.idempotency_key = None
                row.intent_at = None
                row.intent_state = {"hash": failed_hash} if failed_hash else None
            row.updated_at = now
            session.add(row)

    def write_state(self, key: str, state: LinkState, *, note: str | None = None) -> None:
        """Move the link to `state`, with no intent left open."""
        with self._session() as session:
            row = self._row(session, key)
            row.state = state
            row.idempotency_key = None
            row.intent_state = None
            row.intent_at = None
            if note is not None:
                row.last_error = note
            row.updated_at = utcnow()
            session.add(row)

    def write_note(self, key: str, note: str) -> None:
        """Say on the link why it is not moving (nothing else changes)."""
        with self._session() as session:
            row = self._row(session, key)
            row.last_error = note[:_ERROR_MAX]
            row.updated_at = utcnow()
            session.add(row)

    def delete(self, key: str) -> bool:
        with self.store.session() as session:
            row = session.exec(self._customer_rows().where(LinkRow.local_key == key)).first()
            if row is None:
                return False
            session.delete(row)
            return True

    # -- group commit ----------------------------------------------------------------------------

    @contextmanager
    def group(self, keys: Sequence[str]) -> Iterator[None]:
        """Writes inside share one transaction, which commits when the block ends: one commit
        for many actions' intents and outcomes. The rows of `keys` (the customers the writes
        name) are read in one query first; a write for another key reads its own row."""
        with self.store.session() as session:
            try:
                self._group.session = session
                self._group.keys = set(keys)
                self._group.rows = {
                    r.local_key: r
                    for r in in_batches(
                        session, self._customer_rows(), LinkRow.local_key, sorted(set(keys))
                    )
                }
                yield
            finally:
                # Whatever failed, the writes after (and this thread's next group) must not
                # find a session that will never commit.
                self._group.session = None
                self._group.rows = None
                self._group.keys = None

    @contextmanager
    def _session(self) -> Iterator[Session]:
        """The session a write goes into: the group's, inside `group`; else its own."""
        shared: Session | None = getattr(self._group, "session", None)
        if shared is not None:
            yield shared
            return
        with self.store.session() as session:
            yield session

    def _row(self, session: Session, key: str) -> LinkRow:
        rows: dict[str, LinkRow] | None = getattr(self._group, "rows", None)
        row = rows.get(key) if rows is not None else None
        if row is None and (rows is None or key not in self._group.keys):
            # Not read ahead by the group (a key it read ahead and did not find has no row).
            row = session.exec(self._customer_rows().where(LinkRow.local_key == key)).first()
        if row is None:
            row = LinkRow(
                target=self.target, kind=LinkKind.CUSTOMER, local_key=key, state=LinkState.PENDING
            )
        if rows is not None:
            rows[key] = row
        return row

    def _customer_rows(self) -> SelectOfScalar[LinkRow]:
        return select(LinkRow).where(
            LinkRow.target == self.target, LinkRow.kind == LinkKind.CUSTOMER
        )

    # -- health ----------------------------------------------------------------------------------

    def counts(self) -> dict[str, dict[str, int]]:
        """Links by kind, then state."""
        counts: dict[str, dict[str, int]] = {}
        with self.store.read_session() as session:
            for kind, state, count in session.exec(
                select(LinkRow.kind, LinkRow.state, func.count())
                .where(LinkRow.target == self.target)
                .group_by(col(LinkRow.kind), col(LinkRow.state))
            ):
                counts.setdefault(kind, {})[state] = int(count)
        return counts

    def failing(self, limit: int) -> list[LinkRow]:
        """The links with an error, newest first."""
        with self.store.read_session() as session:
            return list(
                session.exec(
                    select(LinkRow)
                    .where(LinkRow.target == self.target, col(LinkRow.last_error).is_not(None))
                    .order_by(col(LinkRow.updated_at).desc())
                    .limit(limit)
                )
            )
