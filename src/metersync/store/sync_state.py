"""The sync state table's one owner: per target, the change cursor, the render context's
watermark and the last runs' times and summary; per source, its last pulls."""

from __future__ import annotations

from collections.abc import Mapping
from datetime import datetime
from typing import Any

from metersync.clock import utcnow
from metersync.store.engine import Store
from metersync.store.models import SyncStateRow


class SyncStateTable:
    """The sync state row of one target."""

    def __init__(self, store: Store, target: str) -> None:
        self.store = store
        self.target = target

    def read(self) -> SyncStateRow | None:
        with self.store.read_session() as session:
            return session.get(SyncStateRow, self.target)

    def cursor(self) -> int:
        """The catalog change number this target has applied up to."""
        row = self.read()
        return row.change_cursor if row else 0

    def context_since(self) -> datetime | None:
        """When the run that last rendered every changed context started."""
        row = self.read()
        return row.context_since if row else None

    def last_success_at(self) -> datetime | None:
        row = self.read()
        return row.last_success_at if row else None

    def record_pull(self, *, ok: bool, summary: Mapping[str, Any]) -> None:
        """A source's pull (its row is named after the source, not a target): when it ran and
        last succeeded, and what it saw merged over what earlier pulls saw; an error is kept
        only until the next pull."""
        now = utcnow()
        with self.store.session() as session:
            row = session.get(SyncStateRow, self.target) or SyncStateRow(target=self.target)
            row.last_tick_at = now
            merged = {k: v for k, v in (row.last_summary or {}).items() if k != "error"}
            merged.update(summary)
            if ok:
                row.last_success_at = now
            row.last_summary = merged
            session.add(row)

    def advance(
        self,
        *,
        cursor: int | None,
        full: bool,
        summary: Mapping[str, Any],
        context_since: datetime | None = None,
    ) -> None:
        """Record a finished run: the cursor only moves forward; a run without failures is
        the last success."""
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
