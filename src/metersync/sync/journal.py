"""The sync engine's journal: intent before a call, outcome after it, kept on each link.

A later run reads back exactly where each item stood (CREATING with its payload and idempotency
key, UPDATING, DELETING) and finishes it. The journal decides what each step records (the
state a target now holds, its fingerprint under the target's render version); the link table's
owner (store.links) does the writing, each write one short transaction, so what is written
survives a SIGKILL the instant after.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from metersync.states import LinkState
from metersync.store import Store, SyncStateRow
from metersync.store.links import Confirmed, LinkTable, Pushed, route_subjects
from metersync.store.sync_state import SyncStateTable
from metersync.sync.model import Desired, LinkView, digest, fingerprint


@dataclass(frozen=True)
class JournalWrite:
    """One journal write for a group commit: the customer it is about, and the write."""

    key: str
    write: Callable[[], Any]


class Journal:
    def __init__(self, store: Store, target: str, *, render_version: str = "") -> None:
        self.store = store
        self.target = target
        # The target's render version, folded into every fingerprint written: a new version
        # of the rendering makes old fingerprints mismatch, so nothing is trusted across it.
        self.render_version = render_version
        self.table = LinkTable(store, target)
        self.sync_state = SyncStateTable(store, target)

    # -- reads -----------------------------------------------------------------------------------

    def links(
        self, keys: Iterable[str] | None = None, *, with_state: bool = True
    ) -> dict[str, LinkView]:
        """Customer links, all or for `keys`. `with_state=False` skips what we last pushed,
        which only an incremental plan compares against."""
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
            for row in self.table.customers(keys, with_state=with_state)
        }

    def link(self, key: str) -> LinkView | None:
        return self.links([key]).get(key)

    def by_external_id(self, external_id: str) -> LinkView | None:
        key = self.table.key_of(external_id)
        return self.link(key) if key is not None else None

    def in_sync_candidates(self) -> list[tuple[str, str, str]]:
        """(local key, external id, fingerprint) of links in sync unless the target's record
        changed, which the full reconcile checks against its listing (plan.confirm_in_sync)."""
        return self.table.in_sync_candidates()

    def managed_count(self) -> int:
        return self.table.managed_count()

    def due(self, now: datetime) -> list[str]:
        """Customers to look at again: backoff over, or an intent whose outcome is unknown."""
        return self.table.due(now)

    def cursor(self) -> int:
        return self.sync_state.cursor()

    def state(self) -> SyncStateRow | None:
        return self.sync_state.read()

    def context_since(self) -> datetime | None:
        return self.sync_state.context_since()

    # -- writes ----------------------------------------------------------------------------------

    def record_intent(
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
        self.table.write_intent(
            key,
            state,
            idempotency_key=idempotency_key,
            intent_state=intent_state,
            generation=generation,
            external_id=external_id,
            replace_external=replace_external,
        )

    def mark_synced(
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
        self.table.write_synced(
            key,
            external_id=external_id,
            pushed=self._pushed(pushed),
            state=state,
            generation=generation,
            seq=seq,
        )

    def confirm_in_sync(self, desired: list[Desired]) -> int:
        """A full reconcile found these records in sync in the target: record them as pushed
        (state, fingerprint, change number), so the next full reconcile confirms them by
        fingerprint alone. Only links still SYNCED are touched, and only where something
        differs."""
        return self.table.confirm_synced(
            {d.key: Confirmed(self._pushed(d.state()), d.seq) for d in desired}
        )

    def mark_failed(
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
        self.table.write_failure(
            key,
            message,
            state=state,
            forget_intent=forget_intent,
            failed_hash=failed_hash,
            retry_soon=retry_soon,
        )

    def mark_state(self, key: str, state: LinkState, *, note: str | None = None) -> None:
        self.table.write_state(key, state, note=note)

    def mark_blocked(self, key: str, reason: str) -> None:
        self.table.write_note(key, f"blocked: {reason}")

    def unlink(self, key: str) -> bool:
        return self.table.delete(key)

    def route_subjects(self, subject_keys: Iterable[str] | None = None) -> int:
        """Point each subject's link at the external customer its usage goes to (store.links)."""
        return route_subjects(self.store, self.target, subject_keys)

    def advance(
        self,
        *,
        cursor: int | None,
        full: bool,
        summary: Mapping[str, Any],
        context_since: datetime | None = None,
    ) -> None:
        self.sync_state.advance(
            cursor=cursor, full=full, summary=summary, context_since=context_since
        )

    def _pushed(self, state: Mapping[str, Any]) -> Pushed:
        return Pushed(
            state=state,
            digest=digest(state),
            fingerprint=fingerprint(
                self.render_version, state.get("fields", {}), state.get("metadata", {})
            ),
        )

    # -- group commit ----------------------------------------------------------------------------

    def run_group(self, writes: Sequence[JournalWrite]) -> list[Any]:
        """Run journal writes in one transaction: one commit for many actions' intents and
        outcomes. Each returns only after the commit, so an intent is still durable before its
        call. If the group fails, each write runs alone, so one bad write sinks nobody else."""
        try:
            with self.table.group([w.key for w in writes]):
                return [w.write() for w in writes]
        except Exception:  # noqa: BLE001 - retried one by one below, each error its own
            alone: list[Any] = []
            for w in writes:
                try:
                    alone.append(w.write())
                except Exception as exc:  # noqa: BLE001 - handed to that write's caller
                    alone.append(exc)
            return alone
