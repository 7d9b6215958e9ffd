"""The sync engine's vocabulary, independent of any target.

A target (Stripe, HubSpot) renders each local customer into a `Desired` record in its own terms
(fields plus the metadata keys we own), lists what it holds as `External` records, and applies
`Action`s. The planner compares the three sources (desired, links, external) and never knows
which target it serves.
"""

from __future__ import annotations

import hashlib
import json
import marshal
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime
from enum import StrEnum
from typing import Any


def digest(data: Any) -> str:
    """A stable hash of JSON-able data: what a target record holds, as we see it."""
    canonical = json.dumps(data, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    return hashlib.sha256(canonical.encode()).hexdigest()


def normalise(value: Any) -> Any:
    """Absent, null and "" mean the same to a target field; so do empty sub-fields."""
    if value == "" or value is None:
        return None
    if isinstance(value, Mapping):
        inner = {k: normalise(v) for k, v in value.items() if normalise(v) is not None}
        return inner or None
    return value


def fingerprint(render_version: str, fields: Mapping[str, Any], metadata: Mapping[str, str]) -> str:
    """A short hash of a record's owned state as the planner compares it: fields normalised,
    metadata exact. Equal fingerprints under the same render version mean the planner would
    find nothing to change. Anything more on the record (metadata written by others, an archive
    marker) fingerprints differently and sends it through the planner's full path, which is
    always right, only slower: a false mismatch costs time, never correctness.

    The canonical form is marshal's format 2 of sorted lists, not JSON: a full reconcile
    fingerprints every listed record, and this is several times cheaper. Format 2 writes no
    back-references and no interning flags, so equal values give equal bytes whatever objects
    hold them. It only has to be stable between runs of one installation; a Python upgrade
    that changed it would cost one slow run."""
    canonical = marshal.dumps(
        (
            render_version,
            sorted([(k, _canonical(v)) for k, v in fields.items()]),
            sorted(metadata.items()),
        ),
        2,
    )
    return hashlib.blake2b(canonical, digest_size=16).hexdigest()


def _canonical(value: Any) -> Any:
    """normalise(), with dicts as sorted tuples so that key order cannot matter. (Exact type
    checks, not isinstance against Mapping: this runs for every field of every listed record.
    Another mapping type would only fingerprint differently, which is safe.)"""
    if value is None or value == "":
        return None
    if type(value) is dict:
        inner = tuple(sorted((k, c) for k, v in value.items() if (c := _canonical(v)) is not None))
        return inner or None
    return value


@dataclass(frozen=True, slots=True)
class Desired:
    """What the target's record for local `key` should hold: owned fields and owned metadata."""

    key: str
    fields: Mapping[str, Any]
    metadata: Mapping[str, str]
    blocked: tuple[str, ...] = ()  # why the target cannot take it (its limits, missing data)
    seq: int | None = None  # the catalog change number of the local record it was rendered from

    def state(self) -> dict[str, Any]:
        return {"fields": dict(self.fields), "metadata": dict(self.metadata)}

    @property
    def hash(self) -> str:
        return digest(self.state())


@dataclass(frozen=True, slots=True)
class External:
    """A record as the target holds it. `key` is the managed marker, None when unmanaged."""

    id: str
    key: str | None
    fields: Mapping[str, Any]
    metadata: Mapping[str, str]
    created: int = 0
    archived: bool = False  # carries the target's archive marker (delete policy `archive`)


@dataclass(frozen=True)
class Snapshot:
    """Everything a full listing of the target returned, indexed for the planner."""

    by_id: Mapping[str, External]
    by_key: Mapping[str, tuple[External, ...]]  # managed records per local key, oldest first
    total: int

    @classmethod
    def of(cls, records: list[External]) -> Snapshot:
        by_key: dict[str, tuple[External, ...]] = {}
        for record in records:
            if record.key is not None:
                same = by_key.get(record.key)
                by_key[record.key] = (record,) if same is None else (*same, record)
        for key, same in by_key.items():
            if len(same) > 1:  # duplicates are rare: sort only those
                by_key[key] = tuple(sorted(same, key=lambda r: (r.created, r.id)))
        return cls(by_id={r.id: r for r in records}, by_key=by_key, total=len(records))

    @property
    def managed(self) -> int:
        return sum(len(v) for v in self.by_key.values())


@dataclass(frozen=True, slots=True)
class LinkView:
    """A link row as the planner needs it."""

    key: str
    external_id: str | None
    state: str
    generation: int = 1
    synced_hash: str | None = None
    synced_state: Mapping[str, Any] | None = None
    owned_metadata_keys: tuple[str, ...] = ()
    idempotency_key: str | None = None
    intent_state: Mapping[str, Any] | None = None
    intent_at: datetime | None = None
    attempts: int = 0
    last_error: str | None = None
    next_attempt_at: datetime | None = None
    synced_seq: int | None = None
    synced_fingerprint: str | None = None


class ActionKind(StrEnum):
    CREATE = "create"  # no record yet
    ADOPT = "adopt"  # a managed record exists with our key but no link: take it over
    RELINK = "relink"  # the link points elsewhere than the managed record with our key
    UPDATE = "update"  # owned fields or owned metadata differ
    RECREATE = "recreate"  # our record was deleted in the target out of band
    DELETE = "delete"  # local record deleted (policy delete), or an orphan (orphan policy)
    ARCHIVE = "archive"  # local record deleted (policy archive): mark it, keep it
    RELEASE = "release"  # local record deleted (policy keep): stop managing it
    SKIP = "skip"  # nothing to do, or waiting (reason says which)
    BLOCKED = "blocked"  # the target cannot take the record (reason says why)
    ORPHAN = "orphan"  # managed in the target, unknown locally: reported, kept
    DUPLICATE = "duplicate"  # a second managed record with the same key: reported, kept
    GUARDED = "guarded"  # a delete withheld by the mass-delete guard


# The reason of a SKIP whose record needs nothing: equal to what the target holds (a full
# reconcile) or to what we last pushed (a tick).
IN_SYNC = "in sync"

# What makes calls to the target (ADOPT and RELINK only when they carry changes).
WRITES = frozenset(
    {
        ActionKind.CREATE,
        ActionKind.UPDATE,
        ActionKind.RECREATE,
        ActionKind.DELETE,
        ActionKind.ARCHIVE,
        ActionKind.ADOPT,
        ActionKind.RELINK,
    }
)


@dataclass(frozen=True, slots=True)
class Change:
    """One field (or `metadata.<key>`) and its value before and after."""

    field: str
    before: Any
    after: Any


@dataclass(frozen=True, slots=True)
class Action:
    kind: ActionKind
    key: str
    external_id: str | None = None
    desired: Desired | None = None
    changes: tuple[Change, ...] = ()
    reason: str = ""
    generation: int = 1
    resume: bool = False  # an earlier intent's outcome is unknown: finish it first
    drift: bool = False  # the target differs from what we last pushed (changed out of band)
    in_sync: bool = False  # a SKIP because the target's record equals the desired one

    @property
    def calls_target(self) -> bool:
        if self.kind in (ActionKind.ADOPT, ActionKind.RELINK):
            return bool(self.changes)
        return self.kind in WRITES

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {"action": self.kind.value, "key": self.key}
        if self.external_id:
            out["externalId"] = self.external_id
        if self.changes:
            out["changes"] = [
                {"field": c.field, "before": c.before, "after": c.after} for c in self.changes
            ]
        if self.reason:
            out["reason"] = self.reason
        if self.kind in (ActionKind.CREATE, ActionKind.RECREATE):
            out["generation"] = self.generation
        if self.resume:
            out["resume"] = True
        if self.drift:
            out["drift"] = True
        return out


# The order a plan lists (and applies) actions in: creates and repairs before destructive ones.
_ORDER = {kind: index for index, kind in enumerate(ActionKind)}


@dataclass(frozen=True)
class Plan:
    target: str
    full: bool
    actions: tuple[Action, ...]
    managed: int  # managed records the delete guard measures against
    guard_tripped: bool = False
    guard_reason: str = ""
    # Records a full reconcile found in sync by their fingerprints without planning them one
    # by one: counted as skips, not listed as actions.
    in_sync: int = 0

    @staticmethod
    def ordered(actions: list[Action]) -> tuple[Action, ...]:
        return tuple(sorted(actions, key=lambda a: (_ORDER[a.kind], a.key, a.external_id or "")))

    def counts(self) -> dict[str, int]:
        counts: dict[str, int] = {}
        if self.in_sync:
            counts[ActionKind.SKIP.value] = self.in_sync
        for action in self.actions:
            counts[action.kind.value] = counts.get(action.kind.value, 0) + 1
        return counts

    def writes(self) -> list[Action]:
        return [a for a in self.actions if a.calls_target]

    def to_json(self) -> dict[str, Any]:
        return {
            "target": self.target,
            "mode": "full" if self.full else "incremental",
            "counts": self.counts(),
            "guard": {
                "tripped": self.guard_tripped,
                "reason": self.guard_reason,
                "managed": self.managed,
            },
            "inSync": self.in_sync,
            "actions": [a.to_json() for a in self.actions],
        }


@dataclass(frozen=True)
class DeletePolicy:
    """What happens to the target's record when the local one is deleted, and the guard."""

    on_delete: str = "delete"  # delete | archive | keep
    on_missing: str = "recreate"  # our record deleted in the target: recreate | report
    on_orphan: str = "report"  # managed in the target, unknown locally: report | delete
    max_delete_fraction: float = 0.1
    max_deletes: int | None = None
    # The fraction guard ignores runs deleting fewer records than this: removing one customer
    # out of five is not a mass delete.
    mass_delete_floor: int = 3
    allow_mass_delete: bool = False
