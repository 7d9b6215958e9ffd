"""What the sync engine needs from a target: render, list, apply one write, classify errors.

The engine (plan, apply, journal) sees only this protocol and the records of sync.model, so a
second target is a second implementation of it, not a change to the engine.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from enum import StrEnum
from typing import Any, Protocol

from metersync.catalog.views import Customer
from metersync.sync.context import ContextNeeds, RenderContext
from metersync.sync.model import Change, Desired, External
from metersync.sync.plan import TargetRules


class ErrorKind(StrEnum):
    RETRYABLE = "retryable"  # try again soon (connection, timeout, 409, 429, 5xx)
    PERMANENT = "permanent"  # this item is wrong for the target; retry after backoff
    FATAL = "fatal"  # nothing will work (bad credentials): stop the run
    GONE = "gone"  # the record no longer exists (a delete's goal, or an update's end)


@dataclass(frozen=True)
class TargetError:
    kind: ErrorKind
    message: str
    throttled: bool = False  # a 429: the limiter slows down
    request_id: str | None = None


class Target(Protocol):
    name: str
    rules: TargetRules
    # Names the rendering below. Change it whenever render() would give another Desired for
    # the same customer: links fingerprinted under an old version are then re-planned.
    render_version: str
    # What render() needs besides the customer: other targets' ids, period usage.
    needs: ContextNeeds

    def render(self, customer: Customer, context: RenderContext) -> Desired:
        """The record this target should hold for a local customer (pure)."""
        ...

    def classify(self, error: BaseException) -> TargetError: ...

    async def list_customers(self) -> list[External]: ...

    async def create(self, state: Mapping[str, Any], idempotency_key: str) -> str:
        """Create from a Desired.state(); returns the external id."""
        ...

    async def update(
        self,
        external_id: str,
        changes: tuple[Change, ...],
        state: Mapping[str, Any],
        idempotency_key: str,
    ) -> None: ...

    async def delete(self, external_id: str, idempotency_key: str) -> None: ...

    async def archive(self, external_id: str, idempotency_key: str) -> Mapping[str, str]:
        """Mark the record archived (kept); returns the metadata it wrote."""
        ...

    async def release(self, external_id: str, idempotency_key: str) -> None:
        """Remove the managed marker: the record stays, metersync no longer claims it."""
        ...

    async def find(self, key: str) -> External | None:
        """The managed record for a local key, if the target can find it (may lag writes)."""
        ...

    async def retrieve(self, external_id: str) -> External | None:
        """The record, or None if it does not exist or was deleted."""
        ...

    async def close(self) -> None: ...
