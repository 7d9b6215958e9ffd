"""Apply: run a plan's actions through a target, concurrently, journaling each into links.

For every write: the intent (link state + deterministic idempotency key + exact payload) is
committed before the call and the outcome after it. Whatever moment a crash picks, the next
run finds either nothing (and plans the write again), a finished write, or an intent it can
finish with the same key and payload, so the target never sees two creates for one key.

Errors are per item: a retryable one is retried here (each attempt waits for the rate limiter,
with the same idempotency key); what is left is recorded on the link row with a backoff, and
the run goes on. Only a fatal error (bad credentials) stops the run.
"""

from __future__ import annotations

import asyncio
import functools
import hashlib
import random
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, TypeVar

from metersync.clock import utcnow
from metersync.logs import get_logger
from metersync.mechanics.batching import Batcher
from metersync.store import LinkState
from metersync.stripe_facts import IDEMPOTENCY_KEY_TRUST
from metersync.sync.journal import Journal, JournalWrite
from metersync.sync.model import Action, ActionKind, Change, Desired, Plan, digest
from metersync.sync.plan import changes_from_pushed
from metersync.sync.ports import ErrorKind, Target, TargetError

T = TypeVar("T")
_log = get_logger("metersync.sync.apply")

# How long a target's idempotency key can be trusted to replay a create (a target without
# keys, such as HubSpot's upsert on a unique property, replays safely at any age). Past this,
# the record is looked for before a create is sent again.
INTENT_KEY_TRUST = IDEMPOTENCY_KEY_TRUST
# Journal writes per transaction, at most.
_GROUP_MAX = 256


class ItemFailed(Exception):
    def __init__(self, error: TargetError) -> None:
        super().__init__(error.message)
        self.error = error


class FatalTargetError(Exception):
    """An error no item can get past (bad credentials): the run stops."""


@dataclass(frozen=True)
class RetryPolicy:
    attempts: int = 5
    base_delay_s: float = 0.5
    max_delay_s: float = 8.0


@dataclass
class ApplyResult:
    outcomes: dict[str, int] = field(default_factory=dict)
    failures: list[dict[str, str]] = field(default_factory=list)
    changed_customers: set[str] = field(default_factory=set)

    def count(self, outcome: str) -> None:
        self.outcomes[outcome] = self.outcomes.get(outcome, 0) + 1


def idempotency_key(target: str, action: str, key: str, generation: int, content: str) -> str:
    """Deterministic: the same write after a crash carries the same key (≤ 255 characters)."""
    local = hashlib.sha256(key.encode()).hexdigest()[:24]
    return f"metersync-{target}-{action}-{local}-g{generation}-{content[:24]}"


class Applier:
    def __init__(
        self,
        target: Target,
        journal: Journal,
        *,
        concurrency: int = 16,
        retry: RetryPolicy = RetryPolicy(),
        progress: Callable[[int, int], None] | None = None,
        before_delete: Callable[[str], Awaitable[bool]] | None = None,
        should_stop: Callable[[], bool] | None = None,
    ) -> None:
        self.target = target
        # Asked before each action starts: when the service is stopping, actions not yet begun
        # are left for the next run (no intent written, nothing half done); those in flight
        # finish.
        self.should_stop = should_stop
        self.journal = journal
        self.concurrency = concurrency
        self.retry = retry
        self.progress = progress
        # Called with the local key before its record is deleted in the target: the usage
        # push flushes what the customer still owes, while the target can still take it, and
        # answers whether everything was delivered.
        self.before_delete = before_delete
        self.result = ApplyResult()
        self._writes: Batcher[JournalWrite, Any] = Batcher(
            self._commit_group, max_size=_GROUP_MAX, serial=True
        )

    async def run(self, plan: Plan) -> ApplyResult:
        work = [a for a in plan.actions if a.kind not in _REPORT_ONLY]
        for action in plan.actions:
            if action.kind in _REPORT_ONLY:
                self.result.count(action.kind.value)
        semaphore = asyncio.Semaphore(self.concurrency)
        done = 0

        async def one(action: Action) -> None:
            nonlocal done
            async with semaphore:
                if self.should_stop is not None and self.should_stop():
                    self.result.count("postponed")
                    return
                await self._apply(action)
            done += 1
            if self.progress is not None:
                self.progress(done, len(work))

        tasks = [asyncio.create_task(one(a)) for a in work]
        try:
            await asyncio.gather(*tasks)
        except FatalTargetError:
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
            raise
        return self.result

    # -- one action ------------------------------------------------------------------------------

    async def _apply(self, action: Action) -> None:
        handler = _HANDLERS[action.kind]
        try:
            await handler(self, action)
        except ItemFailed as failure:
            if failure.error.kind is ErrorKind.FATAL:
                raise FatalTargetError(failure.error.message) from None
            self.result.count("failed")
            self.result.failures.append(
                {"key": action.key, "action": action.kind.value, "error": failure.error.message}
            )
            _log.warning(
                "item failed",
                key=action.key,
                action=action.kind.value,
                error=failure.error.message,
                request_id=failure.error.request_id,
            )

    async def _create(self, action: Action) -> None:
        desired = _need(action.desired)
        if action.resume:
            external_id = await self._finish_create(action.key)
            if external_id is not None:
                await self._converge(action, external_id, desired, outcome="created")
                return
        generation = action.generation
        payload = desired.state()
        key = idempotency_key(self.target.name, "create", action.key, generation, desired.hash)
        await self._record(
            self.journal.record_intent,
            action.key,
            LinkState.CREATING,
            idempotency_key=key,
            intent_state={"state": payload, "hash": desired.hash},
            generation=generation,
            external_id=None,
            replace_external=True,
        )
        try:
            external_id = await self._call(lambda: self.target.create(payload, key))
        except ItemFailed as failure:
            await self._failed(
                action.key,
                failure,
                in_flight=LinkState.CREATING,
                refused=LinkState.PENDING,
                failed_hash=desired.hash,
            )
            raise
        await self._record(
            self.journal.mark_synced,
            action.key,
            external_id=external_id,
            pushed=payload,
            generation=generation,
            seq=desired.seq,
        )
        self.result.changed_customers.add(action.key)
        self.result.count("recreated" if action.kind is ActionKind.RECREATE else "created")
        if action.kind is ActionKind.RECREATE:
            _log.warning(
                "recreated a customer deleted in the target",
                key=action.key,
                previous=action.external_id,
                external_id=external_id,
            )

    async def _finish_create(self, key: str) -> str | None:
        """Finish an intent whose outcome is unknown: replay it with its own key and payload
        while the target still holds the key, else look the record up. None: never created."""
        link = await self._journal(self.journal.link, key)
        if link is None or link.state != LinkState.CREATING or not link.intent_state:
            return link.external_id if link and link.external_id else None
        payload: Mapping[str, Any] | None = link.intent_state.get("state")
        fresh = link.intent_at is not None and utcnow() - link.intent_at < INTENT_KEY_TRUST
        if payload is not None and link.idempotency_key and fresh:
            key_, sent = link.idempotency_key, payload
            external_id = await self._call(lambda: self.target.create(sent, key_))
        else:
            found = await self._call(lambda: self.target.find(key))
            if found is None:
                return None
            external_id, payload = (
                found.id,
                {"fields": dict(found.fields), "metadata": dict(found.metadata)},
            )
        await self._record(
            self.journal.mark_synced,
            key,
            external_id=external_id,
            pushed=payload or {},
            generation=link.generation,
        )
        return external_id

    async def _converge(
        self, action: Action, external_id: str, desired: Desired, *, outcome: str
    ) -> None:
        """After finishing an old intent, bring the record to what is desired now."""
        link = await self._journal(self.journal.link, action.key)
        pushed = (link.synced_state if link else None) or {}
        if digest(pushed) != desired.hash:
            changes = changes_from_pushed(desired, pushed, tuple(pushed.get("metadata", {})))
            await self._write_update(
                action.key, external_id, changes, desired, generation=link.generation if link else 1
            )
        self.result.changed_customers.add(action.key)
        self.result.count(outcome)

    async def _update(self, action: Action) -> None:
        desired = _need(action.desired)
        external_id = _need(action.external_id)
        link = await self._journal(self.journal.link, action.key)
        generation = link.generation if link else 1
        if action.kind in (ActionKind.ADOPT, ActionKind.RELINK) and not action.changes:
            await self._record(
                self.journal.mark_synced,
                action.key,
                external_id=external_id,
                pushed=desired.state(),
                generation=generation,
                seq=desired.seq,
            )
        else:
            await self._write_update(
                action.key, external_id, action.changes, desired, generation=generation
            )
        self.result.changed_customers.add(action.key)
        outcome = {ActionKind.ADOPT: "adopted", ActionKind.RELINK: "relinked"}.get(
            action.kind, "updated"
        )
        self.result.count(outcome)
        if action.drift:
            self.result.count("drift_repaired")
            _log.info("drift repaired", key=action.key, fields=[c.field for c in action.changes])

    async def _write_update(
        self,
        key: str,
        external_id: str,
        changes: tuple[Change, ...],
        desired: Desired,
        *,
        generation: int,
    ) -> None:
        payload = desired.state()
        content = digest([external_id, payload])
        idem = idempotency_key(self.target.name, "update", key, generation, content)
        await self._record(
            self.journal.record_intent,
            key,
            LinkState.UPDATING,
            idempotency_key=idem,
            intent_state={"state": payload, "hash": desired.hash},
            generation=generation,
            external_id=external_id,
        )
        try:
            await self._call(lambda: self.target.update(external_id, changes, payload, idem))
        except ItemFailed as failure:
            if failure.error.kind is ErrorKind.GONE:
                await self._record(
                    self.journal.mark_state,
                    key,
                    LinkState.MISSING,
                    note="deleted in the target out of band",
                )
            else:
                await self._failed(
                    key,
                    failure,
                    in_flight=LinkState.UPDATING,
                    refused=LinkState.SYNCED,
                    failed_hash=desired.hash,
                )
            raise
        await self._record(
            self.journal.mark_synced, key, external_id=external_id, pushed=payload, seq=desired.seq
        )

    async def _delete(self, action: Action) -> None:
        external_id = action.external_id
        if external_id is None and action.resume:
            external_id = await self._finish_create(action.key)
            if external_id is None:
                await self._record(self.journal.mark_state, action.key, LinkState.DELETED)
                self.result.count("deleted")
                return
        external_id = _need(external_id)
        linked = await self._journal(self.journal.link, action.key)
        ours = linked is not None and linked.external_id == external_id
        if ours and self.before_delete is not None and not await self.before_delete(action.key):
            # Deleting now would strand usage the customer still owes: retry the delete later.
            note = "usage for this customer is not yet delivered; the delete waits for it"
            await self._record(
                self.journal.mark_failed,
                action.key,
                note,
                state=None,
                forget_intent=False,
                failed_hash=None,
                retry_soon=True,
            )
            raise ItemFailed(TargetError(ErrorKind.RETRYABLE, note))
        idem = idempotency_key(
            self.target.name, "delete", action.key, linked.generation if linked else 1, external_id
        )
        if ours:
            await self._record(
                self.journal.record_intent,
                action.key,
                LinkState.DELETING,
                idempotency_key=idem,
                intent_state={"external_id": external_id},
                generation=linked.generation if linked else 1,
            )
        try:
            await self._call(lambda: self.target.delete(external_id, idem))
        except ItemFailed as failure:
            if failure.error.kind is not ErrorKind.GONE:  # already gone is what we wanted
                if ours:
                    await self._failed(
                        action.key,
                        failure,
                        in_flight=LinkState.DELETING,
                        refused=LinkState.SYNCED,
                        failed_hash=None,
                    )
                raise
        if ours:
            await self._record(self.journal.mark_state, action.key, LinkState.DELETED)
        self.result.count("deleted")

    async def _archive(self, action: Action) -> None:
        external_id = _need(action.external_id)
        link = await self._journal(self.journal.link, action.key)
        idem = idempotency_key(
            self.target.name, "archive", action.key, link.generation if link else 1, external_id
        )
        try:
            marker = await self._call(lambda: self.target.archive(external_id, idem))
        except ItemFailed as failure:
            if link is not None and link.external_id == external_id:
                # On the link row, so that status shows it and the next tick tries again
                # (the tick's cursor moves past the catalog change that asked for it).
                await self._record(
                    self.journal.mark_failed,
                    action.key,
                    failure.error.message,
                    state=None,
                    forget_intent=False,
                    failed_hash=None,
                    retry_soon=failure.error.kind is ErrorKind.RETRYABLE,
                )
            raise
        if link is not None and link.external_id not in (None, external_id):
            self.result.count("archived")  # a duplicate: archived, the link stays where it is
            return
        pushed = dict((link.synced_state if link else None) or {"fields": {}, "metadata": {}})
        pushed["metadata"] = {**pushed.get("metadata", {}), **marker}
        await self._record(
            self.journal.mark_synced,
            action.key,
            external_id=external_id,
            pushed=pushed,
            state=LinkState.ARCHIVED,
        )
        self.result.count("archived")

    async def _release(self, action: Action) -> None:
        await self._record(self.journal.mark_state, action.key, LinkState.RELEASED)
        self.result.count("released")

    async def _blocked(self, action: Action) -> None:
        await self._record(self.journal.mark_blocked, action.key, action.reason)
        self.result.count("blocked")

    async def _failed(
        self,
        key: str,
        failure: ItemFailed,
        *,
        in_flight: LinkState,
        refused: LinkState,
        failed_hash: str | None,
    ) -> None:
        """Record a failed write. Retryable: it may have happened, so the intent stays (state
        `in_flight`) for the next run to finish with the same key. Refused outright: nothing
        happened, so the intent goes and the link returns to `refused`."""
        unknown = failure.error.kind is ErrorKind.RETRYABLE
        await self._record(
            self.journal.mark_failed,
            key,
            failure.error.message,
            state=in_flight if unknown else refused,
            forget_intent=not unknown,
            failed_hash=failed_hash,
            retry_soon=unknown,
        )

    # -- plumbing --------------------------------------------------------------------------------

    async def _call(self, call: Callable[[], Awaitable[T]]) -> T:
        """One target call with retries for retryable errors (same arguments, same key)."""
        for attempt in range(1, self.retry.attempts + 1):
            try:
                return await call()
            except Exception as exc:  # noqa: BLE001 - the target classifies; bugs re-raise there
                error = self.target.classify(exc)
                if error.kind is not ErrorKind.RETRYABLE or attempt == self.retry.attempts:
                    raise ItemFailed(error) from None
                delay = min(self.retry.max_delay_s, self.retry.base_delay_s * 2 ** (attempt - 1))
                await asyncio.sleep(delay * random.uniform(0.5, 1.5))  # noqa: S311 - jitter
        raise AssertionError("unreachable")

    @staticmethod
    async def _journal(fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
        # Database reads run in a worker thread: the event loop keeps other calls moving.
        return await asyncio.to_thread(fn, *args, **kwargs)

    async def _record(self, fn: Callable[..., T], key: str, *args: Any, **kwargs: Any) -> T:
        """A journal write about customer `key`, committed together with the writes of other
        actions in flight (one transaction at a time: those arriving meanwhile form the next
        group). Returns once committed, so an intent is durable before its call leaves."""
        write = JournalWrite(key, functools.partial(fn, key, *args, **kwargs))
        result: T = await self._writes.submit(write)
        return result

    async def _commit_group(self, writes: Sequence[JournalWrite]) -> list[Any]:
        return await asyncio.to_thread(self.journal.run_group, writes)


def _need(value: T | None) -> T:
    assert value is not None
    return value


_REPORT_ONLY = frozenset(
    {ActionKind.SKIP, ActionKind.ORPHAN, ActionKind.DUPLICATE, ActionKind.GUARDED}
)
_HANDLERS: Mapping[ActionKind, Callable[[Applier, Action], Awaitable[None]]] = {
    ActionKind.CREATE: Applier._create,
    ActionKind.RECREATE: Applier._create,
    ActionKind.UPDATE: Applier._update,
    ActionKind.ADOPT: Applier._update,
    ActionKind.RELINK: Applier._update,
    ActionKind.DELETE: Applier._delete,
    ActionKind.ARCHIVE: Applier._archive,
    ActionKind.RELEASE: Applier._release,
    ActionKind.BLOCKED: Applier._blocked,
}
