"""A pull's outcome and its record: what each half counted, and the sync_state rows that keep
when it last ran and last succeeded (what the next usage pull's lookback and `source_status`
read)."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from metersync.clock import utcnow
from metersync.store import Store
from metersync.store.sync_state import SyncStateTable

SOURCE = "openmeter"  # its name in the upstream_* rows and in status
# Rows in sync_state: each half's last pull, last success and outcome.
CATALOG_STATE = "source:openmeter:catalog"
USAGE_STATE = "source:openmeter:usage"
ENTITLEMENT_STATE = "source:openmeter:entitlements"  # pulled only with features configured


@dataclass
class PullResult:
    counts: dict[str, int] = field(default_factory=dict)
    problems: list[str] = field(default_factory=list)  # upstream records that were refused

    def add(self, name: str, n: int = 1) -> None:
        if n:
            self.counts[name] = self.counts.get(name, 0) + n

    def to_json(self) -> dict[str, Any]:
        return {"counts": self.counts, "problems": self.problems}


def _last_success(store: Store, name: str) -> datetime | None:
    when = SyncStateTable(store, name).last_success_at()
    if when is not None and when.tzinfo is None:
        when = when.replace(tzinfo=UTC)
    return when


def _last_summary(store: Store, name: str) -> dict[str, Any]:
    """What the pulls recorded (each key as the last pull that wrote it left it)."""
    row = SyncStateTable(store, name).read()
    return dict(row.last_summary or {}) if row else {}


def _record(store: Store, name: str, *, ok: bool, summary: Mapping[str, Any]) -> None:
    """A pull's outcome, for status and for the next pull: when it ran and last succeeded,
    and what it saw (or the error)."""
    SyncStateTable(store, name).record_pull(ok=ok, summary=summary)


def source_status(store: Store) -> dict[str, Any]:
    now = utcnow()
    parts: dict[str, Any] = {}
    errors = []
    for part, name in (
        ("catalog", CATALOG_STATE),
        ("usage", USAGE_STATE),
        ("entitlements", ENTITLEMENT_STATE),
    ):
        row = SyncStateTable(store, name).read()
        if row is None and name == ENTITLEMENT_STATE:
            continue  # never pulled: no entitlement features are configured
        success = _last_success(store, name)
        summary = (row.last_summary if row else None) or {}
        if summary.get("error"):
            errors.append(f"{part}: {summary['error']}")
        parts[part] = {
            "lastPullAt": row.last_tick_at.isoformat(timespec="seconds")
            if row and row.last_tick_at
            else None,
            "lastSuccessAt": success.isoformat(timespec="seconds") if success else None,
            "lagSeconds": round((now - success).total_seconds(), 1) if success else None,
            "error": summary.get("error"),
        }
    lags = [p["lagSeconds"] for p in parts.values() if p["lagSeconds"] is not None]
    return {
        "source": SOURCE,
        "lagSeconds": max(lags) if lags else None,
        "error": "; ".join(errors) or None,
        **parts,
    }
