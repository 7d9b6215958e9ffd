"""Planning: catalog × links × (optionally) a target snapshot → Plan. Pure: no I/O, no clock
reads (the caller passes `now`), deterministic order.

With a snapshot (a full reconcile) the plan compares against what the target really holds:
it adopts instead of creating, repairs drift, recreates what was deleted out of band and reports
orphans. Without one (an incremental tick) it compares against what we last pushed, which is
enough to push local changes and costs no listing.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, replace
from datetime import datetime
from typing import Any

from metersync.states import LinkState
from metersync.sync.model import (
    IN_SYNC,
    Action,
    ActionKind,
    Change,
    DeletePolicy,
    Desired,
    External,
    LinkView,
    Plan,
    Snapshot,
    fingerprint,
    normalise,
)

# Links whose external record we treat as ours and present (or presumed present).
_HOLDING = {
    LinkState.SYNCED,
    LinkState.UPDATING,
    LinkState.DELETING,
    LinkState.ARCHIVED,
    LinkState.MISSING,
}
# Links whose record is gone or no longer ours.
_LET_GO = {LinkState.DELETED, LinkState.RELEASED}


@dataclass(frozen=True)
class TargetRules:
    """Limits that depend on the record as the target holds it (known only with a snapshot)."""

    metadata_max_keys: int | None = None


def plan_customers(
    *,
    target: str,
    local: Mapping[str, Desired | None],
    links: Mapping[str, LinkView],
    snapshot: Snapshot | None,
    policy: DeletePolicy,
    now: datetime,
    rules: TargetRules = TargetRules(),
    managed: int | None = None,
    in_sync: frozenset[str] = frozenset(),
) -> Plan:
    """`local` maps every local key to plan for to its Desired record, or None for a tombstone.

    `managed` is how many records the mass-delete guard measures deletes against. A full
    reconcile counts the snapshot's managed records itself; an incremental tick sees only the
    links of what changed, so its caller must pass the count of every managed link.

    `in_sync` (full reconcile only): local keys `confirm_in_sync` found in sync, left out of
    `local` and `links`; their records are accounted for, and only counted.
    """
    actions: list[Action] = []
    # External ids accounted for by a local key. Those of `in_sync` keys are left out: each is
    # the only record with its key and its link's own, so no other key can claim it.
    claimed: set[str] = set()
    for key in sorted(local):
        link = links.get(key)
        desired = local[key]
        if desired is None:
            actions += _plan_tombstone(key, link, snapshot, policy, claimed)
        else:
            actions += _plan_live(desired, link, snapshot, policy, now, rules, claimed)
    if snapshot is not None:
        actions += _plan_unclaimed(snapshot, local, links, policy, claimed, in_sync)
    if snapshot is not None:
        managed = snapshot.managed
    elif managed is None:
        managed = sum(
            1
            for link in links.values()
            if link.external_id and link.state in (LinkState.SYNCED, LinkState.UPDATING)
        )
    plan = Plan(target, snapshot is not None, Plan.ordered(actions), managed, in_sync=len(in_sync))
    return _guard(plan, policy)


def confirm_in_sync(
    candidates: Iterable[tuple[str, str, str]], snapshot: Snapshot, render_version: str
) -> frozenset[str]:
    """The full reconcile's fast path: of the (local key, external id, fingerprint) candidates
    (links whose customer has not changed since it was pushed, see Journal.in_sync_candidates),
    the keys whose listed record still fingerprints as pushed and is the only managed record
    with that key. The planner would skip each of them; anything else goes through it."""
    confirmed = []
    for key, external_id, pushed in candidates:
        record = snapshot.by_id.get(external_id)
        if (
            record is not None
            and record.key == key
            and len(snapshot.by_key.get(key, ())) == 1
            and fingerprint(render_version, record.fields, record.metadata) == pushed
        ):
            confirmed.append(key)
    return frozenset(confirmed)


# -- live records -------------------------------------------------------------------------------


def _plan_live(
    desired: Desired,
    link: LinkView | None,
    snapshot: Snapshot | None,
    policy: DeletePolicy,
    now: datetime,
    rules: TargetRules,
    claimed: set[str],
) -> list[Action]:
    key = desired.key
    if desired.blocked:
        return [
            Action(
                ActionKind.BLOCKED,
                key,
                link.external_id if link else None,
                desired,
                reason="; ".join(desired.blocked),
            )
        ]
    waiting = _backing_off(desired, link, now)
    if waiting is not None:
        if link is not None and link.external_id:
            claimed.add(link.external_id)
        return [waiting]
    generation = link.generation if link else 1
    if snapshot is None:
        return [_incremental(desired, link, generation, policy)]

    candidates = snapshot.by_key.get(key, ())
    current = snapshot.by_id.get(link.external_id) if link and link.external_id else None
    if current is not None and link is not None and link.state not in _LET_GO:
        claimed.add(current.id)
        out = [_update(desired, current, link, rules, ActionKind.UPDATE)]
        return out + _duplicates(key, candidates, current.id, claimed)
    if candidates:
        # A managed record with our key: the create happened (we crashed before recording it),
        # or the link table was lost. Take it over; never create a second one.
        chosen = candidates[0]
        claimed.add(chosen.id)
        kind = ActionKind.RELINK if link and link.external_id else ActionKind.ADOPT
        action = _update(desired, chosen, link, rules, kind)
        return [action, *_duplicates(key, candidates, chosen.id, claimed)]
    if link is not None and link.external_id and link.state in _HOLDING:
        # Ours, linked, and gone from the target: deleted out of band.
        return [_missing(desired, link, policy)]
    if link is not None and link.state == LinkState.CREATING:
        return [_resume_create(desired, generation)]
    if link is not None and link.state in _LET_GO:
        return [_recreate(desired, link, "the record was deleted earlier")]
    return [Action(ActionKind.CREATE, key, None, desired, generation=generation)]


def _missing(desired: Desired, link: LinkView, policy: DeletePolicy) -> Action:
    """Our record was deleted in the target out of band: recreate it, or only report it."""
    if policy.on_missing == "recreate":
        return _recreate(desired, link, "deleted in the target out of band; recreating")
    return Action(
        ActionKind.BLOCKED,
        desired.key,
        link.external_id,
        desired,
        reason="deleted in the target out of band (on_missing = report)",
    )


def _recreate(desired: Desired, link: LinkView, reason: str) -> Action:
    # A new generation: a new idempotency key, so the old record's keys cannot replay.
    return Action(
        ActionKind.RECREATE,
        desired.key,
        link.external_id,
        desired,
        generation=link.generation + 1,
        reason=reason,
    )


def _resume_create(desired: Desired, generation: int) -> Action:
    return Action(
        ActionKind.CREATE,
        desired.key,
        None,
        desired,
        generation=generation,
        resume=True,
        reason="an earlier create's outcome is unknown; finishing it",
    )


def _incremental(
    desired: Desired, link: LinkView | None, generation: int, policy: DeletePolicy
) -> Action:
    key = desired.key
    if (
        link is None
        or link.state == LinkState.PENDING
        or not (link.external_id or link.state == LinkState.CREATING)
    ):
        return Action(ActionKind.CREATE, key, None, desired, generation=generation)
    if link.state == LinkState.CREATING:
        return _resume_create(desired, generation)
    if link.state == LinkState.MISSING:
        return _missing(desired, link, policy)
    if link.state in _LET_GO:
        return _recreate(desired, link, f"link is {link.state}")
    changes = changes_from_pushed(desired, link.synced_state, link.owned_metadata_keys)
    if link.state in (LinkState.ARCHIVED, LinkState.UPDATING) or changes:
        return Action(
            ActionKind.UPDATE,
            key,
            link.external_id,
            desired,
            changes,
            resume=link.state == LinkState.UPDATING,
        )
    return Action(ActionKind.SKIP, key, link.external_id, desired, reason=IN_SYNC)


def _update(
    desired: Desired,
    record: External,
    link: LinkView | None,
    rules: TargetRules,
    kind: ActionKind,
) -> Action:
    owned = link.owned_metadata_keys if link else ()
    changes = _changes(desired, record, owned)
    if rules.metadata_max_keys is not None:
        theirs = set(record.metadata) - set(owned) - set(desired.metadata)
        if len(theirs) + len(desired.metadata) > rules.metadata_max_keys:
            return Action(
                ActionKind.BLOCKED,
                desired.key,
                record.id,
                desired,
                reason=(
                    f"metadata would have {len(theirs) + len(desired.metadata)} keys "
                    f"({len(theirs)} written by others), over the target's limit of "
                    f"{rules.metadata_max_keys}"
                ),
            )
    unarchive = link is not None and link.state == LinkState.ARCHIVED
    if kind == ActionKind.UPDATE and not changes and not unarchive:
        return Action(
            ActionKind.SKIP, desired.key, record.id, desired, reason=IN_SYNC, in_sync=True
        )
    drift = bool(changes) and link is not None and link.synced_hash == desired.hash
    return Action(
        kind,
        desired.key,
        record.id,
        desired,
        changes,
        drift=drift,
        reason="repairing drift" if drift else "",
    )


def changes_from_pushed(
    desired: Desired, pushed: Mapping[str, Any] | None, owned_metadata: tuple[str, ...]
) -> tuple[Change, ...]:
    """The changes from what we last pushed (a Desired.state()) to what is desired now."""
    state = pushed or {}
    record = External("", desired.key, state.get("fields", {}), state.get("metadata", {}))
    return _changes(desired, record, owned_metadata)


def _changes(
    desired: Desired, record: External, owned_metadata: tuple[str, ...]
) -> tuple[Change, ...]:
    out = []
    for name, value in desired.fields.items():
        before = record.fields.get(name)
        if normalise(before) != normalise(value):
            out.append(Change(name, before, value))
    for name, value in desired.metadata.items():
        if record.metadata.get(name) != value:
            out.append(Change(f"metadata.{name}", record.metadata.get(name), value))
    for name in sorted(set(owned_metadata) - set(desired.metadata)):
        if name in record.metadata:  # ours once, no longer wanted: unset exactly it
            out.append(Change(f"metadata.{name}", record.metadata[name], None))
    return tuple(out)


def _backing_off(desired: Desired, link: LinkView | None, now: datetime) -> Action | None:
    """A record that failed permanently waits for its backoff, unless it changed since."""
    if link is None or link.next_attempt_at is None or link.next_attempt_at <= now:
        return None
    if link.last_error is None:
        return None
    failed = (link.intent_state or {}).get("hash")
    if failed is not None and failed != desired.hash:
        return None
    return Action(
        ActionKind.SKIP,
        desired.key,
        link.external_id,
        desired,
        reason=f"backing off after an error until {link.next_attempt_at.isoformat()}",
    )


def _duplicates(
    key: str, candidates: tuple[External, ...], kept: str, claimed: set[str]
) -> list[Action]:
    out = []
    for record in candidates:
        if record.id != kept and record.id not in claimed:
            claimed.add(record.id)
            out.append(
                Action(
                    ActionKind.DUPLICATE,
                    key,
                    record.id,
                    reason=(f"a second managed record for {key!r}; {kept} is the one kept in sync"),
                )
            )
    return out


# -- tombstones and the unclaimed ---------------------------------------------------------------


def _plan_tombstone(
    key: str,
    link: LinkView | None,
    snapshot: Snapshot | None,
    policy: DeletePolicy,
    claimed: set[str],
) -> list[Action]:
    targets: list[str] = []
    if (
        link is not None
        and link.external_id
        and link.state not in _LET_GO
        and (snapshot is None or link.external_id in snapshot.by_id)
    ):
        targets.append(link.external_id)
    if snapshot is not None:
        if link is not None and link.state == LinkState.RELEASED:
            claimed.update(r.id for r in snapshot.by_key.get(key, ()))
            return []
        targets += [r.id for r in snapshot.by_key.get(key, ()) if r.id not in targets]
    if link is not None and link.state == LinkState.CREATING and not targets:
        # A create may have happened: finish it to learn the id, then act on the delete.
        return [
            Action(
                _tombstone_kind(policy),
                key,
                None,
                resume=True,
                reason="local record deleted while its create was in flight",
            )
        ]
    claimed.update(targets)
    out = []
    for external_id in targets:
        kind = _tombstone_kind(policy)
        if kind == ActionKind.ARCHIVE and _already_archived(external_id, link, snapshot):
            continue
        out.append(
            Action(kind, key, external_id, reason=f"local record deleted ({policy.on_delete})")
        )
    return out


def _already_archived(external_id: str, link: LinkView | None, snapshot: Snapshot | None) -> bool:
    marked = (
        snapshot is not None
        and external_id in snapshot.by_id
        and snapshot.by_id[external_id].archived
    )
    recorded = (
        link is not None and link.state == LinkState.ARCHIVED and external_id == link.external_id
    )
    return marked or recorded


def _tombstone_kind(policy: DeletePolicy) -> ActionKind:
    return {"delete": ActionKind.DELETE, "archive": ActionKind.ARCHIVE, "keep": ActionKind.RELEASE}[
        policy.on_delete
    ]


def _plan_unclaimed(
    snapshot: Snapshot,
    local: Mapping[str, Desired | None],
    links: Mapping[str, LinkView],
    policy: DeletePolicy,
    claimed: set[str],
    in_sync: frozenset[str],
) -> list[Action]:
    out = []
    for key, records in snapshot.by_key.items():
        if key in local or key in in_sync:
            continue  # planned above, or confirmed in sync
        link = links.get(key)
        for record in records:
            if record.id in claimed:
                continue
            if link is not None and link.state == LinkState.RELEASED:
                continue  # kept on purpose when the local record was deleted
            if policy.on_orphan == "delete":
                out.append(
                    Action(
                        ActionKind.DELETE,
                        key,
                        record.id,
                        reason="orphan: managed in the target, unknown locally",
                    )
                )
            else:
                out.append(
                    Action(
                        ActionKind.ORPHAN,
                        key,
                        record.id,
                        reason="managed in the target, unknown locally; kept",
                    )
                )
    return out


def _guard(plan: Plan, policy: DeletePolicy) -> Plan:
    """Withhold every delete when a run would delete too much at once."""
    deletes = [a for a in plan.actions if a.kind == ActionKind.DELETE]
    if not deletes or policy.allow_mass_delete:
        return plan
    count, managed = len(deletes), max(plan.managed, 1)
    reason = ""
    if policy.max_deletes is not None and count > policy.max_deletes:
        reason = f"{count} deletes exceed max_deletes = {policy.max_deletes}"
    elif count >= policy.mass_delete_floor and count / managed > policy.max_delete_fraction:
        reason = (
            f"{count} deletes are {count / managed:.0%} of {plan.managed} managed records, "
            f"over max_delete_fraction = {policy.max_delete_fraction:.0%}"
        )
    if not reason:
        return plan
    guarded = [
        Action(ActionKind.GUARDED, a.key, a.external_id, a.desired, reason=reason)
        if a.kind == ActionKind.DELETE
        else a
        for a in plan.actions
    ]
    return replace(plan, actions=Plan.ordered(guarded), guard_tripped=True, guard_reason=reason)
