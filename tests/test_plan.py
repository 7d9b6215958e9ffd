"""The sync planner as a pure function: desired × links × (optionally) a snapshot → Plan.

No server, no database, no network: every input is built here. `now` is fixed.
"""

from __future__ import annotations

import random
from collections.abc import Iterable, Mapping
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from metersync.catalog.views import BillingAddress, Customer
from metersync.states import LinkState
from metersync.sync.model import (
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
)
from metersync.sync.plan import TargetRules, confirm_in_sync, plan_customers
from metersync.sync.ports import MANAGED_KEY
from metersync.targets.stripe import StripeTarget

NOW = datetime(2024, 5, 1, 12, 0, tzinfo=UTC)
ADDRESS = {
    "line1": "1 Main St",
    "line2": None,
    "city": "Berlin",
    "state": None,
    "postal_code": "10115",
    "country": "DE",
}

# -- builders ------------------------------------------------------------------------------------


def base_fields(key: str) -> dict[str, Any]:
    return {
        "name": f"Customer {key}",
        "email": f"{key}@example.test",
        "description": None,
        "phone": None,
        "address": None,
    }


def desired(
    key: str,
    *,
    metadata: Mapping[str, str] | None = None,
    blocked: Iterable[str] = (),
    **fields: Any,
) -> Desired:
    """What a target renders for local `key`: Stripe's field set, our marker in metadata."""
    return Desired(
        key,
        {**base_fields(key), **fields},
        {**(metadata or {}), MANAGED_KEY: key},
        tuple(blocked),
    )


def external(
    id: str,
    key: str | None,
    *,
    created: int = 0,
    metadata: Mapping[str, str] | None = None,
    **fields: Any,
) -> External:
    """A record in the target; managed (carries our marker) unless `key` is None."""
    meta = dict(metadata or {})
    if key is not None:
        meta[MANAGED_KEY] = key
    return External(id, key, {**base_fields(key or id), **fields}, meta, created)


def matching(id: str, want: Desired, *, created: int = 0) -> External:
    """A managed record holding exactly what `want` asks for."""
    return External(id, want.key, dict(want.fields), dict(want.metadata), created)


def link(
    key: str,
    external_id: str | None = None,
    state: LinkState = LinkState.SYNCED,
    *,
    pushed: Desired | None = None,
    **extra: Any,
) -> LinkView:
    """A link row; `pushed` is the Desired last synced (sets synced_state/hash, owned keys)."""
    if pushed is not None:
        extra.setdefault("synced_state", pushed.state())
        extra.setdefault("synced_hash", pushed.hash)
        extra.setdefault("owned_metadata_keys", tuple(sorted(pushed.metadata)))
    return LinkView(key=key, external_id=external_id, state=state, **extra)


def run(
    local: Mapping[str, Desired | None] | Iterable[Desired],
    links: Iterable[LinkView] = (),
    records: Iterable[External] | None = None,
    *,
    policy: DeletePolicy | None = None,
    rules: TargetRules | None = None,
) -> Plan:
    """Plan; `records` None is an incremental tick, a list is a full reconcile's listing."""
    if not isinstance(local, Mapping):
        local = {d.key: d for d in local}
    return plan_customers(
        target="stripe",
        local=local,
        links={view.key: view for view in links},
        snapshot=None if records is None else Snapshot.of(list(records)),
        policy=policy or DeletePolicy(),
        now=NOW,
        rules=rules or TargetRules(),
    )


def only(plan: Plan) -> Action:
    assert len(plan.actions) == 1, plan.to_json()
    return plan.actions[0]


def only_kind(plan: Plan, key: str) -> ActionKind:
    found = [a.kind for a in plan.actions if a.key == key]
    assert len(found) == 1, plan.to_json()
    return found[0]


def kinds(plan: Plan) -> list[tuple[ActionKind, str, str | None]]:
    return [(a.kind, a.key, a.external_id) for a in plan.actions]


def customer(key: str, **overrides: Any) -> Customer:
    values: dict[str, Any] = {
        "id": "01HZZZZZZZZZZZZZZZZZZZZZZZ",
        "key": key,
        "name": f"Customer {key}",
        "description": None,
        "primary_email": f"{key}@example.test",
        "currency": "EUR",
        "billing_address": BillingAddress(),
        "metadata": {},
        "subject_keys": (),
        "auto_created": False,
        "change_seq": 1,
        "created_at": NOW,
        "updated_at": NOW,
        "deleted_at": None,
    }
    values.update(overrides)
    return Customer(**values)


@pytest.fixture(scope="module")
def stripe_target() -> StripeTarget:
    return StripeTarget("sk_test_x")  # no network call until used; render is pure


# -- create and nothing to do --------------------------------------------------------------------


def test_full_create_when_no_link_and_nothing_in_the_snapshot() -> None:
    want = desired("acme")
    plan = run([want], records=[])
    action = only(plan)
    assert action.kind is ActionKind.CREATE
    assert action.key == "acme"
    assert action.external_id is None
    assert action.desired == want
    assert action.generation == 1
    assert not action.resume
    assert plan.full
    assert plan.writes() == [action]


def test_incremental_create_without_a_link() -> None:
    plan = run([desired("acme")])
    action = only(plan)
    assert (action.kind, action.key, action.external_id) == (ActionKind.CREATE, "acme", None)
    assert not plan.full


def test_incremental_create_for_a_pending_link() -> None:
    action = only(run([desired("acme")], [link("acme", None, LinkState.PENDING)]))
    assert action.kind is ActionKind.CREATE
    assert not action.resume


def test_incremental_in_sync_is_a_skip_and_makes_no_calls() -> None:
    want = desired("acme")
    plan = run([want], [link("acme", "cus_1", pushed=want)])
    action = only(plan)
    assert (action.kind, action.external_id, action.reason) == (
        ActionKind.SKIP,
        "cus_1",
        "in sync",
    )
    assert action.changes == ()
    assert plan.writes() == []


def test_full_in_sync_is_a_skip_and_makes_no_calls() -> None:
    want = desired("acme")
    plan = run([want], [link("acme", "cus_1", pushed=want)], [matching("cus_1", want)])
    action = only(plan)
    assert (action.kind, action.reason) == (ActionKind.SKIP, "in sync")
    assert plan.writes() == []


# -- incremental updates -------------------------------------------------------------------------


def test_incremental_update_lists_only_the_changed_fields() -> None:
    before = desired("acme", name="Old Name", phone="+4930123")
    after = desired("acme", name="New Name", phone="+4930123")
    action = only(run([after], [link("acme", "cus_1", pushed=before)]))
    assert action.kind is ActionKind.UPDATE
    assert action.external_id == "cus_1"
    assert action.changes == (Change("name", "Old Name", "New Name"),)
    assert action.desired == after
    assert not action.drift
    assert action.reason == ""
    assert action.calls_target


def test_incremental_update_adds_and_changes_metadata() -> None:
    before = desired("acme", metadata={"tier": "silver"})
    after = desired("acme", metadata={"tier": "gold", "region": "eu"})
    action = only(run([after], [link("acme", "cus_1", pushed=before)]))
    assert action.kind is ActionKind.UPDATE
    assert set(action.changes) == {
        Change("metadata.tier", "silver", "gold"),
        Change("metadata.region", None, "eu"),
    }


def test_incremental_metadata_key_removed_locally_and_owned_is_unset() -> None:
    before = desired("acme", metadata={"tier": "gold", "region": "eu"})
    after = desired("acme", metadata={"region": "eu"})
    view = link("acme", "cus_1", pushed=before)
    assert "tier" in view.owned_metadata_keys
    action = only(run([after], [view]))
    assert action.kind is ActionKind.UPDATE
    assert action.changes == (Change("metadata.tier", "gold", None),)


def test_incremental_metadata_not_owned_is_never_touched() -> None:
    # synced_state somehow holds a key we do not own (written by someone else): leave it alone.
    want = desired("acme")
    state = {"fields": dict(want.fields), "metadata": {**want.metadata, "crm_id": "42"}}
    view = link(
        "acme",
        "cus_1",
        synced_state=state,
        synced_hash=want.hash,
        owned_metadata_keys=tuple(sorted(want.metadata)),
    )
    action = only(run([want], [view]))
    assert (action.kind, action.reason) == (ActionKind.SKIP, "in sync")


def test_full_metadata_written_by_others_is_never_touched() -> None:
    before = desired("acme", name="Old")
    after = desired("acme", name="New")
    record = external(
        "cus_1", "acme", name="Old", metadata={"crm_id": "42", "hubspot": "x"}
    )  # keys written in the target by someone else
    action = only(run([after], [link("acme", "cus_1", pushed=before)], [record]))
    assert action.kind is ActionKind.UPDATE
    assert action.changes == (Change("name", "Old", "New"),)
    assert not any(c.field in ("metadata.crm_id", "metadata.hubspot") for c in action.changes)


def test_full_owned_metadata_removed_locally_is_unset_in_the_target() -> None:
    before = desired("acme", metadata={"tier": "gold"})
    after = desired("acme")
    record = matching("cus_1", before)
    action = only(run([after], [link("acme", "cus_1", pushed=before)], [record]))
    assert action.kind is ActionKind.UPDATE
    assert action.changes == (Change("metadata.tier", "gold", None),)
    assert not action.drift  # a local change, not drift


def test_incremental_updating_link_resumes_the_update() -> None:
    want = desired("acme")
    action = only(run([want], [link("acme", "cus_1", LinkState.UPDATING, pushed=want)]))
    assert action.kind is ActionKind.UPDATE
    assert action.resume
    assert action.changes == ()


# -- full reconcile: drift and normalisation -----------------------------------------------------


def test_full_drift_is_repaired_when_local_did_not_change() -> None:
    want = desired("acme", name="ACME Inc")
    record = external("cus_1", "acme", name="Hacked Name")
    action = only(run([want], [link("acme", "cus_1", pushed=want)], [record]))
    assert action.kind is ActionKind.UPDATE
    assert action.drift
    assert action.reason == "repairing drift"
    assert action.changes == (Change("name", "Hacked Name", "ACME Inc"),)
    assert action.to_json()["drift"] is True


def test_full_local_change_is_not_drift() -> None:
    before = desired("acme", name="Old")
    after = desired("acme", name="New")
    action = only(run([after], [link("acme", "cus_1", pushed=before)], [matching("cus_1", before)]))
    assert action.kind is ActionKind.UPDATE
    assert not action.drift
    assert action.reason == ""


def test_full_drift_in_owned_metadata_is_repaired() -> None:
    want = desired("acme", metadata={"tier": "gold"})
    record = external("cus_1", "acme", metadata={"tier": "bronze"})
    action = only(run([want], [link("acme", "cus_1", pushed=want)], [record]))
    assert action.kind is ActionKind.UPDATE
    assert action.drift
    assert action.changes == (Change("metadata.tier", "bronze", "gold"),)


def test_full_none_empty_and_missing_fields_are_equal() -> None:
    want = desired("acme", description=None, phone="", address=None)
    fields = {"name": "Customer acme", "email": "acme@example.test", "description": ""}
    record = External("cus_1", "acme", fields, dict(want.metadata))  # phone, address missing
    action = only(run([want], [link("acme", "cus_1", pushed=want)], [record]))
    assert (action.kind, action.reason) == (ActionKind.SKIP, "in sync")
    assert action.changes == ()


def test_full_address_sub_fields_are_normalised() -> None:
    want = desired("acme", address=dict(ADDRESS))
    target_address = {**ADDRESS, "line2": "", "state": ""}  # Stripe's empty sub-fields
    record = external("cus_1", "acme", address=target_address)
    action = only(run([want], [link("acme", "cus_1", pushed=want)], [record]))
    assert (action.kind, action.reason) == (ActionKind.SKIP, "in sync")


def test_full_empty_address_equals_no_address() -> None:
    want = desired("acme", address=None)
    empty = {name: None for name in ADDRESS} | {"line1": ""}
    record = external("cus_1", "acme", address=empty)
    action = only(run([want], [link("acme", "cus_1", pushed=want)], [record]))
    assert action.kind is ActionKind.SKIP


def test_full_address_sub_field_change_is_one_address_change() -> None:
    want = desired("acme", address=dict(ADDRESS))
    moved = {**ADDRESS, "city": "Hamburg", "line2": ""}
    record = external("cus_1", "acme", address=moved)
    action = only(run([want], [link("acme", "cus_1", pushed=want)], [record]))
    assert action.kind is ActionKind.UPDATE
    assert action.changes == (Change("address", moved, ADDRESS),)
    assert action.drift


def test_full_empty_metadata_value_equals_a_missing_key(stripe_target: StripeTarget) -> None:
    want = stripe_target.render(customer("acme", metadata={"note": ""}))
    assert want.blocked == ()
    held = {k: v for k, v in want.metadata.items() if v != ""}  # what Stripe kept
    record = External("cus_1", "acme", dict(want.fields), held)
    action = only(run([want], [link("acme", "cus_1", pushed=want)], [record]))
    assert action.kind is ActionKind.SKIP, action.to_json()


# -- adoption and relinking ----------------------------------------------------------------------


def test_adopt_a_managed_record_when_the_link_is_lost() -> None:
    want = desired("acme", name="ACME Inc")
    record = external("cus_9", "acme", name="ACME (old)")
    plan = run([want], [], [record])
    action = only(plan)
    assert action.kind is ActionKind.ADOPT
    assert action.external_id == "cus_9"
    assert action.changes == (Change("name", "ACME (old)", "ACME Inc"),)
    assert not action.drift  # no link: nothing was pushed to drift from
    assert action.calls_target
    assert plan.counts() == {"adopt": 1}


def test_adopt_without_differences_makes_no_call() -> None:
    want = desired("acme")
    plan = run([want], [], [matching("cus_9", want)])
    action = only(plan)
    assert action.kind is ActionKind.ADOPT
    assert action.external_id == "cus_9"
    assert action.changes == ()
    assert not action.calls_target
    assert plan.writes() == []


def test_empty_link_table_adopts_every_managed_record_and_creates_nothing() -> None:
    wants = [desired(f"c{i:02}") for i in range(8)]
    records = [matching(f"cus_{i:02}", w, created=i) for i, w in enumerate(wants)]
    plan = run(wants, [], records)
    assert plan.counts() == {"adopt": 8}
    assert not any(a.kind is ActionKind.CREATE for a in plan.actions)
    assert {(a.key, a.external_id) for a in plan.actions} == {
        (w.key, f"cus_{i:02}") for i, w in enumerate(wants)
    }
    assert plan.writes() == []


def test_relink_when_the_link_points_to_a_missing_record() -> None:
    want = desired("acme", email="new@acme.test")
    record = external("cus_new", "acme", email="old@acme.test")
    action = only(run([want], [link("acme", "cus_gone", pushed=want)], [record]))
    assert action.kind is ActionKind.RELINK
    assert action.external_id == "cus_new"
    assert action.changes == (Change("email", "old@acme.test", "new@acme.test"),)
    assert action.calls_target


def test_relink_without_differences_makes_no_call() -> None:
    want = desired("acme")
    action = only(run([want], [link("acme", "cus_gone", pushed=want)], [matching("cus_new", want)]))
    assert action.kind is ActionKind.RELINK
    assert action.external_id == "cus_new"
    assert not action.calls_target


# -- recreate and resume -------------------------------------------------------------------------


def test_full_recreate_when_our_record_was_deleted_out_of_band() -> None:
    want = desired("acme")
    other = external("cus_other", "someone-else")
    plan = run(
        [want, desired("someone-else")],
        [link("acme", "cus_1", generation=3, pushed=want)],
        [other],
    )
    action = next(a for a in plan.actions if a.key == "acme")
    assert action.kind is ActionKind.RECREATE
    assert action.external_id == "cus_1"
    assert action.generation == 4
    assert action.desired == want
    assert "out of band" in action.reason


def test_full_missing_record_is_reported_with_on_missing_report() -> None:
    want = desired("acme")
    plan = run(
        [want],
        [link("acme", "cus_1", pushed=want)],
        [],
        policy=DeletePolicy(on_missing="report"),
    )
    action = only(plan)
    assert action.kind is ActionKind.BLOCKED
    assert action.external_id == "cus_1"
    assert "on_missing = report" in action.reason
    assert plan.writes() == []


def test_incremental_missing_link_is_recreated() -> None:
    want = desired("acme")
    view = link("acme", "cus_1", LinkState.MISSING, generation=2, pushed=want)
    action = only(run([want], [view]))
    assert action.kind is ActionKind.RECREATE
    assert action.generation == 3


def test_incremental_missing_link_respects_on_missing_report() -> None:
    want = desired("acme")
    view = link("acme", "cus_1", LinkState.MISSING, pushed=want)
    action = only(run([want], [view], policy=DeletePolicy(on_missing="report")))
    assert action.kind is ActionKind.BLOCKED, action.to_json()


def test_incremental_resume_of_a_create_with_unknown_outcome() -> None:
    want = desired("acme")
    view = link(
        "acme",
        None,
        LinkState.CREATING,
        generation=2,
        idempotency_key="idem-1",
        intent_state={"state": want.state(), "hash": want.hash},
        intent_at=NOW - timedelta(minutes=5),
    )
    action = only(run([want], [view]))
    assert action.kind is ActionKind.CREATE
    assert action.resume
    assert action.generation == 2
    assert action.external_id is None
    assert action.to_json()["resume"] is True


def test_full_resume_adopts_the_record_the_create_made() -> None:
    want = desired("acme")
    view = link("acme", None, LinkState.CREATING, idempotency_key="idem-1")
    plan = run([want], [view], [matching("cus_1", want)])
    action = only(plan)
    assert action.kind is ActionKind.ADOPT
    assert action.external_id == "cus_1"
    assert not any(a.kind is ActionKind.CREATE for a in plan.actions)


def test_full_resume_without_a_record_finishes_the_create() -> None:
    action = only(run([desired("acme")], [link("acme", None, LinkState.CREATING)], []))
    assert action.kind is ActionKind.CREATE
    assert action.resume


# -- duplicates, orphans, unmanaged records ------------------------------------------------------


def test_duplicates_keep_the_oldest_and_report_the_rest() -> None:
    want = desired("acme")
    # ids sort the other way round: "created" decides, not the id.
    oldest = matching("cus_b", want, created=100)
    newer = matching("cus_a", want, created=200)
    plan = run([want], [], [newer, oldest], policy=DeletePolicy(on_orphan="delete"))
    assert kinds(plan) == [
        (ActionKind.ADOPT, "acme", "cus_b"),
        (ActionKind.DUPLICATE, "acme", "cus_a"),
    ]
    duplicate = plan.actions[1]
    assert "cus_b" in duplicate.reason
    assert not duplicate.calls_target
    assert not any(a.kind in (ActionKind.DELETE, ActionKind.GUARDED) for a in plan.actions)


def test_duplicates_keep_the_linked_record() -> None:
    want = desired("acme")
    oldest = matching("cus_old", want, created=100)
    linked = matching("cus_new", want, created=200)
    plan = run([want], [link("acme", "cus_new", pushed=want)], [oldest, linked])
    assert kinds(plan) == [
        (ActionKind.SKIP, "acme", "cus_new"),
        (ActionKind.DUPLICATE, "acme", "cus_old"),
    ]


def test_orphan_is_reported_by_default() -> None:
    ghost = external("cus_ghost", "ghost")
    plan = run([], [], [ghost])
    action = only(plan)
    assert (action.kind, action.key, action.external_id) == (
        ActionKind.ORPHAN,
        "ghost",
        "cus_ghost",
    )
    assert "unknown locally" in action.reason
    assert plan.writes() == []


def test_orphan_is_deleted_with_on_orphan_delete() -> None:
    want = desired("acme")
    records = [matching(f"cus_{i}", desired(f"c{i}")) for i in range(20)]
    records.append(external("cus_ghost", "ghost"))
    local = {f"c{i}": desired(f"c{i}") for i in range(20)} | {"acme": want}
    plan = run(local, [], records, policy=DeletePolicy(on_orphan="delete"))
    deletes = [a for a in plan.actions if a.kind is ActionKind.DELETE]
    assert [(a.key, a.external_id) for a in deletes] == [("ghost", "cus_ghost")]
    assert deletes[0].reason.startswith("orphan")
    assert not plan.guard_tripped


def test_orphan_with_a_released_link_is_left_alone() -> None:
    ghost = external("cus_ghost", "ghost")
    plan = run([], [link("ghost", "cus_ghost", LinkState.RELEASED)], [ghost])
    assert plan.actions == ()


UNMANAGED = [
    external("cus_u1", None, name="Customer acme", email="acme@example.test"),
    external("cus_u2", None, metadata={"crm_id": "7"}),
]


@pytest.mark.parametrize(
    "policy",
    [
        DeletePolicy(),
        DeletePolicy(on_orphan="delete", on_delete="delete", allow_mass_delete=True),
        DeletePolicy(on_delete="archive"),
        DeletePolicy(on_delete="keep"),
    ],
)
def test_unmanaged_records_are_never_touched(policy: DeletePolicy) -> None:
    want = desired("acme")  # same name and email as cus_u1: still not adopted
    local: dict[str, Desired | None] = {"acme": want, "gone": None, "other": desired("other")}
    links = [link("other", "cus_o", pushed=desired("other"))]
    records = [*UNMANAGED, external("cus_ghost", "ghost"), external("cus_o", "other", name="X")]
    plan = run(local, links, records, policy=policy)
    mentioned = {a.external_id for a in plan.actions}
    assert not mentioned & {"cus_u1", "cus_u2"}
    assert only_kind(plan, "acme") is ActionKind.CREATE
    assert plan.managed == 2


# -- tombstones ----------------------------------------------------------------------------------


def test_tombstone_delete_policy_deletes_the_linked_record() -> None:
    action = only(run({"acme": None}, [link("acme", "cus_1")]))
    assert (action.kind, action.key, action.external_id) == (ActionKind.DELETE, "acme", "cus_1")
    assert action.reason == "local record deleted (delete)"
    assert action.calls_target


def test_tombstone_archive_policy_archives() -> None:
    action = only(run({"acme": None}, [link("acme", "cus_1")], policy=DeletePolicy("archive")))
    assert (action.kind, action.external_id) == (ActionKind.ARCHIVE, "cus_1")
    assert action.calls_target


def test_tombstone_already_archived_is_not_archived_again() -> None:
    archived = link("acme", "cus_1", LinkState.ARCHIVED)
    policy = DeletePolicy("archive")
    assert run({"acme": None}, [archived], policy=policy).actions == ()
    record = external("cus_1", "acme", metadata={"metersync_archived_at": "2024-04-01"})
    assert run({"acme": None}, [archived], [record], policy=policy).actions == ()


def test_tombstone_keep_policy_releases() -> None:
    plan = run({"acme": None}, [link("acme", "cus_1")], policy=DeletePolicy("keep"))
    action = only(plan)
    assert (action.kind, action.external_id) == (ActionKind.RELEASE, "cus_1")
    assert not action.calls_target  # RELEASE is not in WRITES
    assert not plan.guard_tripped


def test_tombstone_already_released_is_left_alone() -> None:
    released = link("acme", "cus_1", LinkState.RELEASED)
    policy = DeletePolicy("keep")
    assert run({"acme": None}, [released], policy=policy).actions == ()
    assert run({"acme": None}, [released], [external("cus_1", "acme")], policy=policy).actions == ()


def test_tombstone_already_deleted_is_left_alone() -> None:
    deleted = link("acme", "cus_1", LinkState.DELETED)
    assert run({"acme": None}, [deleted]).actions == ()
    assert run({"acme": None}, [deleted], []).actions == ()


def test_tombstone_without_a_link_incremental_does_nothing() -> None:
    assert run({"acme": None}).actions == ()


def test_full_tombstone_deletes_a_managed_record_still_in_the_target() -> None:
    plan = run({"acme": None}, [], [external("cus_1", "acme")])
    action = only(plan)
    assert (action.kind, action.key, action.external_id) == (ActionKind.DELETE, "acme", "cus_1")


def test_full_tombstone_whose_record_is_already_gone_does_nothing() -> None:
    assert run({"acme": None}, [link("acme", "cus_1")], []).actions == ()


def test_tombstone_during_an_unfinished_create_resumes_it() -> None:
    action = only(run({"acme": None}, [link("acme", None, LinkState.CREATING)]))
    assert action.kind is ActionKind.DELETE
    assert action.external_id is None
    assert action.resume


# -- limits --------------------------------------------------------------------------------------


def test_blocked_desired_is_blocked_with_its_reasons() -> None:
    want = desired("acme", blocked=("name too long", "phone too long"))
    plan = run([want], [link("acme", "cus_1", pushed=desired("acme"))])
    action = only(plan)
    assert action.kind is ActionKind.BLOCKED
    assert action.external_id == "cus_1"
    assert action.reason == "name too long; phone too long"
    assert plan.writes() == []


def test_stripe_limits_block_the_record(stripe_target: StripeTarget) -> None:
    want = stripe_target.render(
        customer("acme", name="x" * 300, metadata={MANAGED_KEY: "spoofed", "ok": "1"})
    )
    assert want.metadata[MANAGED_KEY] == "acme"
    action = only(run([want], records=[]))
    assert action.kind is ActionKind.BLOCKED
    assert action.external_id is None
    assert action.reason == "; ".join(want.blocked)
    assert "name has 300 characters; Stripe allows 256" in action.reason
    assert f"metadata key {MANAGED_KEY!r} is reserved for metersync" in action.reason


def test_stripe_rendered_customer_in_sync(stripe_target: StripeTarget) -> None:
    want = stripe_target.render(
        customer("acme", billing_address=BillingAddress(country="DE", city="Berlin"))
    )
    assert want.blocked == ()
    held = {"line1": "", "line2": "", "city": "Berlin", "state": "", "postal_code": None}
    fields = {**want.fields, "address": {**held, "country": "DE"}}
    record = External("cus_1", "acme", fields, dict(want.metadata))
    action = only(run([want], [link("acme", "cus_1", pushed=want)], [record]))
    assert action.kind is ActionKind.SKIP


def test_metadata_written_by_others_plus_ours_over_the_limit_is_blocked() -> None:
    want = desired("acme", metadata={"tier": "gold"})  # 2 keys with the marker
    others = {f"other_{i}": "x" for i in range(4)}
    record = external("cus_1", "acme", metadata={"tier": "gold", **others})
    plan = run(
        [want],
        [link("acme", "cus_1", pushed=want)],
        [record],
        rules=TargetRules(metadata_max_keys=5),
    )
    action = only(plan)
    assert action.kind is ActionKind.BLOCKED
    assert action.external_id == "cus_1"
    assert "6 keys (4 written by others)" in action.reason
    assert "limit of 5" in action.reason


def test_metadata_at_the_limit_is_not_blocked() -> None:
    want = desired("acme", metadata={"tier": "gold"})
    record = external("cus_1", "acme", metadata={"tier": "gold", "a": "1", "b": "2", "c": "3"})
    rules = TargetRules(metadata_max_keys=5)
    action = only(run([want], [link("acme", "cus_1", pushed=want)], [record], rules=rules))
    assert action.kind is ActionKind.SKIP


def test_owned_metadata_being_removed_does_not_count_against_the_limit() -> None:
    before = desired("acme", metadata={"old": "1", "older": "2"})
    after = desired("acme", metadata={"tier": "gold"})
    record = matching("cus_1", before)
    rules = TargetRules(metadata_max_keys=2)
    action = only(run([after], [link("acme", "cus_1", pushed=before)], [record], rules=rules))
    assert action.kind is ActionKind.UPDATE
    assert Change("metadata.old", "1", None) in action.changes


def test_stripe_rules_metadata_limit_is_fifty() -> None:
    want = desired("acme", metadata={"tier": "gold"})
    record = external(
        "cus_1", "acme", metadata={"tier": "gold"} | {f"k{i}": "v" for i in range(49)}
    )
    plan = run([want], [link("acme", "cus_1", pushed=want)], [record], rules=StripeTarget.rules)
    assert only(plan).kind is ActionKind.BLOCKED
    assert "limit of 50" in only(plan).reason


# -- backoff -------------------------------------------------------------------------------------


def failed_link(pushed: Desired, failed: Desired, *, until: datetime) -> LinkView:
    return link(
        pushed.key,
        "cus_1",
        pushed=pushed,
        attempts=3,
        last_error="StripeError 400: invalid email",
        next_attempt_at=until,
        intent_state={"hash": failed.hash},
    )


def test_backing_off_after_a_permanent_error() -> None:
    before = desired("acme")
    bad = desired("acme", email="not-an-email")
    plan = run([bad], [failed_link(before, bad, until=NOW + timedelta(minutes=10))])
    action = only(plan)
    assert action.kind is ActionKind.SKIP
    assert action.external_id == "cus_1"
    assert action.reason.startswith("backing off")
    assert plan.writes() == []


def test_backing_off_also_in_a_full_reconcile() -> None:
    before = desired("acme")
    bad = desired("acme", email="not-an-email")
    view = failed_link(before, bad, until=NOW + timedelta(minutes=10))
    plan = run([bad], [view], [matching("cus_1", before)])
    assert only(plan).kind is ActionKind.SKIP
    assert only(plan).reason.startswith("backing off")


def test_fixed_data_is_retried_during_backoff() -> None:
    before = desired("acme")
    bad = desired("acme", email="not-an-email")
    fixed = desired("acme", email="billing@acme.test")
    action = only(run([fixed], [failed_link(before, bad, until=NOW + timedelta(minutes=10))]))
    assert action.kind is ActionKind.UPDATE
    assert action.changes == (Change("email", "acme@example.test", "billing@acme.test"),)


def test_backoff_over_is_retried() -> None:
    before = desired("acme")
    bad = desired("acme", email="not-an-email")
    action = only(run([bad], [failed_link(before, bad, until=NOW)]))
    assert action.kind is ActionKind.UPDATE


# -- the mass-delete guard -----------------------------------------------------------------------


def linked_world(n: int, deleted: int) -> tuple[dict[str, Desired | None], list[LinkView]]:
    """n linked customers, the first `deleted` of them tombstones."""
    local: dict[str, Desired | None] = {}
    links = []
    for i in range(n):
        key = f"c{i:03}"
        local[key] = None if i < deleted else desired(key)
        links.append(link(key, f"cus_{i:03}", pushed=desired(key)))
    return local, links


def test_guard_withholds_every_delete_over_the_fraction() -> None:
    local, links = linked_world(10, deleted=3)  # 30% > 10%, and 3 ≥ the floor of 3
    plan = run(local, links)
    assert plan.guard_tripped
    assert "3 deletes" in plan.guard_reason
    assert "max_delete_fraction" in plan.guard_reason
    assert plan.managed == 10
    guarded = [a for a in plan.actions if a.kind is ActionKind.GUARDED]
    assert [(a.key, a.external_id) for a in guarded] == [
        ("c000", "cus_000"),
        ("c001", "cus_001"),
        ("c002", "cus_002"),
    ]
    assert all(a.reason == plan.guard_reason for a in guarded)
    assert not any(a.kind is ActionKind.DELETE for a in plan.actions)
    assert not any(a.calls_target for a in guarded)
    assert plan.counts() == {"guarded": 3, "skip": 7}
    assert plan.to_json()["guard"] == {
        "tripped": True,
        "reason": plan.guard_reason,
        "managed": 10,
    }


def test_guard_in_a_full_reconcile_counts_managed_records() -> None:
    local: dict[str, Desired | None] = {f"c{i}": None for i in range(4)}
    records = [external(f"cus_{i}", f"c{i}") for i in range(4)]
    records += [external(f"cus_x{i}", f"x{i}") for i in range(6)]  # orphans, reported
    plan = run(local, [], records)
    assert plan.managed == 10
    assert plan.guard_tripped
    assert plan.counts() == {"guarded": 4, "orphan": 6}


def test_guard_max_deletes() -> None:
    local, links = linked_world(100, deleted=3)  # 3% is under the fraction
    plan = run(local, links, policy=DeletePolicy(max_deletes=2))
    assert plan.guard_tripped
    assert plan.guard_reason == "3 deletes exceed max_deletes = 2"
    assert plan.counts()["guarded"] == 3


def test_guard_not_tripped_below_the_floor() -> None:
    local, links = linked_world(5, deleted=1)  # 20% > 10%, but 1 < the floor of 3
    plan = run(local, links)
    assert not plan.guard_tripped
    assert plan.guard_reason == ""
    assert [a.key for a in plan.actions if a.kind is ActionKind.DELETE] == ["c000"]


def test_guard_not_tripped_under_the_fraction() -> None:
    local, links = linked_world(100, deleted=5)
    plan = run(local, links)
    assert not plan.guard_tripped
    assert plan.counts()["delete"] == 5


def test_guard_allow_mass_delete() -> None:
    local, links = linked_world(5, deleted=5)
    plan = run(local, links, policy=DeletePolicy(allow_mass_delete=True, max_deletes=1))
    assert not plan.guard_tripped
    assert plan.counts() == {"delete": 5}


def test_guard_leaves_archives_alone() -> None:
    local, links = linked_world(5, deleted=5)
    plan = run(local, links, policy=DeletePolicy("archive"))
    assert not plan.guard_tripped
    assert plan.counts() == {"archive": 5}


# -- determinism ---------------------------------------------------------------------------------


def mixed_world() -> tuple[dict[str, Desired | None], list[LinkView], list[External]]:
    local: dict[str, Desired | None] = {
        "new": desired("new"),
        "adopted": desired("adopted"),
        "changed": desired("changed", name="Now"),
        "same": desired("same"),
        "dup": desired("dup"),
        "gone": None,
        "missing": desired("missing"),
        "blocked": desired("blocked", blocked=("too long",)),
    }
    links = [
        link("changed", "cus_changed", pushed=desired("changed", name="Then")),
        link("same", "cus_same", pushed=desired("same")),
        link("gone", "cus_gone", pushed=desired("gone")),
        link("missing", "cus_missing", pushed=desired("missing")),
        link("dup", "cus_dup1", pushed=desired("dup")),
    ]
    records = [
        matching("cus_adopted", desired("adopted"), created=5),
        external("cus_changed", "changed", name="Then"),
        matching("cus_same", desired("same")),
        matching("cus_dup1", desired("dup"), created=1),
        matching("cus_dup2", desired("dup"), created=2),
        matching("cus_dup0", desired("dup"), created=0),
        external("cus_gone", "gone"),
        external("cus_ghost", "ghost"),
        external("cus_ghost2", "ghost"),
        *UNMANAGED,
    ]
    return local, links, records


def shuffled_run(seed: int, *, full: bool) -> Plan:
    local, links, records = mixed_world()
    rng = random.Random(seed)
    items = list(local.items())
    rng.shuffle(items)
    rng.shuffle(links)
    rng.shuffle(records)
    return run(dict(items), links, records if full else None)


@pytest.mark.parametrize("full", [True, False])
def test_shuffled_inputs_give_an_identical_plan(full: bool) -> None:
    reference = shuffled_run(0, full=full).to_json()
    for seed in range(1, 8):
        assert shuffled_run(seed, full=full).to_json() == reference


def test_plan_is_ordered_by_kind_then_key() -> None:
    plan = shuffled_run(3, full=True)
    order = list(ActionKind)
    sort_keys = [(order.index(a.kind), a.key, a.external_id or "") for a in plan.actions]
    assert sort_keys == sorted(sort_keys)
    assert kinds(plan) == [
        (ActionKind.CREATE, "new", None),
        (ActionKind.ADOPT, "adopted", "cus_adopted"),
        (ActionKind.UPDATE, "changed", "cus_changed"),
        (ActionKind.RECREATE, "missing", "cus_missing"),
        (ActionKind.DELETE, "gone", "cus_gone"),
        (ActionKind.SKIP, "dup", "cus_dup1"),
        (ActionKind.SKIP, "same", "cus_same"),
        (ActionKind.BLOCKED, "blocked", None),
        (ActionKind.ORPHAN, "ghost", "cus_ghost"),
        (ActionKind.ORPHAN, "ghost", "cus_ghost2"),
        (ActionKind.DUPLICATE, "dup", "cus_dup0"),
        (ActionKind.DUPLICATE, "dup", "cus_dup2"),
    ]


def test_archive_skips_records_already_archived_in_the_target() -> None:
    view = link("acme", "cus_1", LinkState.ARCHIVED)
    archived = External("cus_1", "acme", {}, {"metersync_key": "acme"}, archived=True)
    duplicate = External("cus_2", "acme", {}, {"metersync_key": "acme"}, created=5, archived=True)
    fresh = External("cus_3", "acme", {}, {"metersync_key": "acme"}, created=9)
    plan = plan_customers(
        target="stripe",
        local={"acme": None},
        links={"acme": view},
        snapshot=Snapshot.of([archived, duplicate, fresh]),
        policy=DeletePolicy(on_delete="archive"),
        now=NOW,
    )
    assert [(a.kind, a.external_id) for a in plan.actions] == [(ActionKind.ARCHIVE, "cus_3")]


# -- the full reconcile's fast path: fingerprints -------------------------------------------------

V = "test-render/1"


def pushed_fingerprint(want: Desired, version: str = V) -> str:
    return fingerprint(version, want.fields, want.metadata)


def test_fingerprint_ignores_key_order_and_empty_values() -> None:
    want = desired("acme", address=ADDRESS)
    reordered = {k: want.fields[k] for k in reversed(list(want.fields))}
    reordered["address"] = dict(reversed(list(ADDRESS.items())))
    reordered["description"] = ""  # "" and None are the same to a target field
    assert fingerprint(V, reordered, dict(reversed(list(want.metadata.items())))) == (
        pushed_fingerprint(want)
    )


@pytest.mark.parametrize(
    "change",
    [
        {"fields": {"name": "Renamed"}},
        {"fields": {"address": {**ADDRESS, "city": "Hamburg"}}},
        {"metadata": {"crm_id": "written by someone else"}},
        {"metadata": {MANAGED_KEY: "other"}},
        {"version": "test-render/2"},
    ],
)
def test_fingerprint_changes_with_anything_the_planner_compares(change: dict[str, Any]) -> None:
    want = desired("acme", address=ADDRESS)
    fields = {**want.fields, **change.get("fields", {})}
    metadata = {**want.metadata, **change.get("metadata", {})}
    assert fingerprint(change.get("version", V), fields, metadata) != pushed_fingerprint(want)


def test_confirm_in_sync_takes_only_records_that_still_fingerprint_as_pushed() -> None:
    wants = {key: desired(key) for key in ("same", "drifted", "gone", "twice", "moved")}
    snapshot = Snapshot.of(
        [
            matching("cus_same", wants["same"]),
            external("cus_drifted", "drifted", name="Edited in the dashboard"),
            matching("cus_twice_1", wants["twice"], created=1),
            matching("cus_twice_2", wants["twice"], created=2),  # a duplicate: plan it fully
            matching("cus_moved", desired("elsewhere")),  # another key than its link's
        ]
    )
    candidates = [
        ("same", "cus_same", pushed_fingerprint(wants["same"])),
        ("drifted", "cus_drifted", pushed_fingerprint(wants["drifted"])),
        ("gone", "cus_gone", pushed_fingerprint(wants["gone"])),
        ("twice", "cus_twice_1", pushed_fingerprint(wants["twice"])),
        ("moved", "cus_moved", pushed_fingerprint(wants["moved"])),
    ]
    assert confirm_in_sync(candidates, snapshot, V) == {"same"}
    assert confirm_in_sync(candidates, snapshot, "test-render/2") == frozenset()


def test_keys_in_sync_are_counted_not_planned_and_never_orphans() -> None:
    kept, changed = desired("kept"), desired("changed", name="New name")
    records = [matching("cus_kept", kept), external("cus_changed", "changed")]
    plan = plan_customers(
        target="stripe",
        local={"changed": changed},
        links={"changed": link("changed", "cus_changed")},
        snapshot=Snapshot.of(records),
        policy=DeletePolicy(on_orphan="delete"),
        now=NOW,
        in_sync=frozenset({"kept"}),
    )
    assert [(a.kind, a.key) for a in plan.actions] == [(ActionKind.UPDATE, "changed")]
    assert plan.in_sync == 1
    assert plan.counts() == {"skip": 1, "update": 1}
    assert plan.to_json()["inSync"] == 1
    assert plan.managed == 2  # the guard still measures against every managed record


def test_a_full_plan_marks_skips_found_in_sync() -> None:
    want = desired("acme")
    action = only(run([want], [link("acme", "cus_1", pushed=want)], [matching("cus_1", want)]))
    assert action.kind is ActionKind.SKIP and action.in_sync
    incremental = only(run([want], [link("acme", "cus_1", pushed=want)]))
    assert incremental.kind is ActionKind.SKIP and not incremental.in_sync
