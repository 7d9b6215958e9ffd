"""Customer sync end to end: catalog on SQLite and PostgreSQL, the emulator over real HTTP."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from freezegun import freeze_time
from sqlmodel import delete, select

from metersync.catalog import Catalog
from metersync.chaos.customers import converged, unmanaged
from metersync.store import LinkKind, LinkRow, LinkState, Store
from metersync.sync.apply import RetryPolicy
from metersync.sync.customer_sync import RunResult, SyncOptions, sync_customers
from metersync.sync.manual import link_customer, unlink_customer
from metersync.sync.model import ActionKind, DeletePolicy
from metersync.sync.ports import MANAGED_KEY
from metersync.targets.stripe import StripeTarget
from metersync.testing import FaultKind, FaultRule, StripeEmulator

FAST_RETRY = RetryPolicy(attempts=6, base_delay_s=0.01, max_delay_s=0.05)


@pytest.fixture
def emulator() -> Iterator[StripeEmulator]:
    with StripeEmulator() as running:
        yield running


def run(
    catalog: Catalog,
    emulator: StripeEmulator,
    *,
    full: bool = False,
    timeout: float = 10.0,
    http_client: str = "aiohttp",
    **policy: Any,
) -> RunResult:
    options = SyncOptions(full=full, policy=DeletePolicy(**policy), concurrency=8, retry=FAST_RETRY)

    async def go() -> RunResult:
        target = StripeTarget(
            "sk_test_sync",
            api_base=emulator.url,
            rate=1000,
            timeout=timeout,
            http_client=http_client,
        )
        try:
            return await sync_customers(catalog, target, options)
        finally:
            await target.close()

    return asyncio.run(go())


def seed(catalog: Catalog, count: int = 6) -> None:
    for i in range(count):
        catalog.create_customer(
            {
                "key": f"c{i}",
                "name": f"Customer {i}",
                "primaryEmail": f"billing{i}@c.test",
                "billingAddress": {"country": "US", "city": "Phoenix", "phoneNumber": "+1 555 01"},
                "metadata": {"plan": "pro"},
                "usageAttribution": {"subjectKeys": [f"c{i}-a", f"c{i}-b"]},
            }
        )


def links(store: Store, kind: str = LinkKind.CUSTOMER) -> dict[str, LinkRow]:
    with store.read_session() as session:
        rows = session.exec(select(LinkRow).where(LinkRow.kind == kind)).all()
    return {row.local_key: row for row in rows}


def test_create_update_delete_converge(catalog: Catalog, emulator: StripeEmulator) -> None:
    seed(catalog)
    first = run(catalog, emulator)
    assert first.counts == {"created": 6} and first.exit_code == 0
    assert converged(catalog, emulator) == []
    calls = len(emulator.requests())
    assert run(catalog, emulator).counts == {}
    assert len(emulator.requests()) == calls, "a tick with nothing to do makes zero calls"

    catalog.update_customer(
        "c1", {"name": "Renamed", "metadata": {"tier": "gold"}, "billingAddress": {"city": ""}}
    )
    catalog.delete_customer("c2")
    second = run(catalog, emulator)
    assert second.counts == {"updated": 1, "deleted": 1}
    assert converged(catalog, emulator) == []
    renamed = next(c for c in emulator.customers() if c["metadata"][MANAGED_KEY] == "c1")
    assert renamed["metadata"] == {"tier": "gold", MANAGED_KEY: "c1"}  # "plan" unset: ours
    assert renamed["address"]["city"] is None and renamed["address"]["country"] == "US"
    update = emulator.requests("customers.update")[-1]
    assert update["status"] == 200
    assert links(catalog.store)["c2"].state == LinkState.DELETED
    assert run(catalog, emulator, full=True).counts == {"skip": 5}


def test_metadata_written_by_others_is_left_alone(
    catalog: Catalog, emulator: StripeEmulator
) -> None:
    seed(catalog, 1)
    run(catalog, emulator)
    client = emulator.client()
    stripe_id = emulator.customers()[0]["id"]
    client.v1.customers.update(stripe_id, {"metadata": {"crm_id": "hs-42"}})
    catalog.update_customer("c0", {"metadata": {}})
    run(catalog, emulator)
    assert emulator.customers()[0]["metadata"] == {"crm_id": "hs-42", MANAGED_KEY: "c0"}
    run(catalog, emulator, full=True)  # a full reconcile does not touch it either
    assert emulator.customers()[0]["metadata"]["crm_id"] == "hs-42"


def test_full_reconcile_repairs_drift_and_recreates(
    catalog: Catalog, emulator: StripeEmulator
) -> None:
    seed(catalog, 3)
    run(catalog, emulator)
    client = emulator.client()
    by_key = {c["metadata"][MANAGED_KEY]: c["id"] for c in emulator.customers()}
    client.v1.customers.update(
        by_key["c0"], {"name": "Edited in the dashboard", "metadata": {MANAGED_KEY: "c0"}}
    )
    client.v1.customers.delete(by_key["c1"])
    # An incremental tick does not list Stripe: it sees neither.
    assert run(catalog, emulator).counts == {}
    full = run(catalog, emulator, full=True)
    kinds = {a.key: a for a in full.plan.actions}
    assert kinds["c0"].kind == ActionKind.UPDATE and kinds["c0"].drift
    assert kinds["c1"].kind == ActionKind.RECREATE
    assert full.counts == {"updated": 1, "drift_repaired": 1, "recreated": 1, "skip": 1}
    assert converged(catalog, emulator) == []
    assert links(catalog.store)["c1"].generation == 2
    assert links(catalog.store)["c1"].external_id != by_key["c1"]


def test_lost_link_table_is_readopted_without_creates(
    catalog: Catalog, emulator: StripeEmulator
) -> None:
    seed(catalog, 8)
    run(catalog, emulator)
    before = {c["id"] for c in emulator.customers()}
    with catalog.store.session() as session:
        session.exec(delete(LinkRow))  # type: ignore[call-overload]
    catalog.update_customer("c3", {"name": "Changed meanwhile"})
    result = run(catalog, emulator, full=True)
    assert result.counts.get("created", 0) == 0
    assert result.counts["adopted"] == 8
    assert {c["id"] for c in emulator.customers()} == before
    assert converged(catalog, emulator) == []
    assert all(row.state == LinkState.SYNCED for row in links(catalog.store).values())


def test_orphans_reported_and_unmanaged_never_touched(
    catalog: Catalog, emulator: StripeEmulator
) -> None:
    client = emulator.client()
    client.v1.customers.create({"name": "Someone else's", "metadata": {"owner": "billing-team"}})
    ghost = client.v1.customers.create({"name": "Ghost", "metadata": {MANAGED_KEY: "ghost"}})
    untouched = unmanaged(emulator)
    seed(catalog, 2)
    result = run(catalog, emulator, full=True)
    orphan = [a for a in result.plan.actions if a.kind == ActionKind.ORPHAN]
    assert [(a.key, a.external_id) for a in orphan] == [("ghost", ghost.id)]
    assert result.exit_code == 0
    assert any(c["id"] == ghost.id for c in emulator.customers())
    assert converged(catalog, emulator, unmanaged_before=untouched) == [
        f"ghost: managed in Stripe ({ghost.id}) but unknown locally"
    ]
    deleting = run(catalog, emulator, full=True, on_orphan="delete")
    assert deleting.counts.get("deleted") == 1
    assert converged(catalog, emulator, unmanaged_before=untouched) == []


def test_mass_delete_guard(catalog: Catalog, emulator: StripeEmulator) -> None:
    seed(catalog, 10)
    run(catalog, emulator)
    for i in range(4):
        catalog.delete_customer(f"c{i}")
    guarded = run(catalog, emulator)
    assert guarded.plan.guard_tripped and guarded.exit_code == 4
    assert guarded.counts == {"guarded": 4}
    assert len(emulator.customers()) == 10
    assert emulator.requests("customers.delete") == []
    allowed = run(catalog, emulator, allow_mass_delete=True)
    assert allowed.counts == {"deleted": 4} and len(emulator.customers()) == 6
    catalog.delete_customer("c9")  # one of six is not a mass delete (below the floor)
    assert run(catalog, emulator).counts == {"deleted": 1}


def test_archive_and_keep_policies(catalog: Catalog, emulator: StripeEmulator) -> None:
    seed(catalog, 2)
    run(catalog, emulator)
    catalog.delete_customer("c0")
    assert run(catalog, emulator, on_delete="archive").counts == {"archived": 1}
    archived = next(c for c in emulator.customers() if c["metadata"][MANAGED_KEY] == "c0")
    assert "metersync_archived_at" in archived["metadata"]
    catalog.delete_customer("c1")
    assert run(catalog, emulator, on_delete="keep").counts == {"released": 1}
    assert len(emulator.customers()) == 2
    full = run(catalog, emulator, full=True, on_delete="keep")
    assert ActionKind.ORPHAN not in {a.kind for a in full.plan.actions}


def test_blocked_items_are_reported_with_reasons(
    catalog: Catalog, emulator: StripeEmulator
) -> None:
    seed(catalog, 1)
    catalog.create_customer(
        {
            "key": "long-phone",
            "name": "Phone",
            "billingAddress": {"phoneNumber": "+1 555 0100 0100 0100 99"},
        }
    )
    catalog.create_customer(
        {
            "key": "bad-meta",
            "name": "Meta",
            "metadata": {"a-very-long-metadata-key-over-forty-chars": "x"},
        }
    )
    result = run(catalog, emulator)
    blocked = {a.key: a.reason for a in result.plan.actions if a.kind == ActionKind.BLOCKED}
    assert set(blocked) == {"long-phone", "bad-meta"}
    assert "phone has 24 characters; Stripe allows 20" in blocked["long-phone"]
    assert "longer than 40 characters" in blocked["bad-meta"]
    assert result.exit_code == 1 and result.counts == {"created": 1, "blocked": 2}
    assert links(catalog.store)["bad-meta"].last_error.startswith("blocked: ")


def test_a_delete_out_of_band_seen_by_a_tick_is_recreated(
    catalog: Catalog, emulator: StripeEmulator
) -> None:
    seed(catalog, 1)
    run(catalog, emulator)
    emulator.client().v1.customers.delete(emulator.customers()[0]["id"])
    catalog.update_customer("c0", {"name": "New name"})
    failed = run(catalog, emulator)
    assert failed.counts == {"failed": 1} and failed.exit_code == 1
    assert links(catalog.store)["c0"].state == LinkState.MISSING
    assert run(catalog, emulator).counts == {"recreated": 1}
    assert converged(catalog, emulator) == []


def test_retryable_failures_are_recorded_then_resumed(
    catalog: Catalog, emulator: StripeEmulator
) -> None:
    seed(catalog, 3)
    emulator.configure(faults=[FaultRule(FaultKind.COMMIT_THEN_DROP, 1.0, "customers.create")])
    result = run(catalog, emulator)  # every attempt, and every replay, loses its answer
    assert result.counts == {"failed": 3}
    assert len(emulator.customers()) == 3  # the creates happened; we could not know
    row = links(catalog.store)["c0"]
    assert row.state == LinkState.CREATING and row.idempotency_key and row.attempts == 1
    assert row.next_attempt_at is not None and row.last_error
    emulator.configure(faults=[])
    assert run(catalog, emulator).counts == {"skip": 3}  # waiting out the retry backoff
    # tick=True: the run's own event loop needs time to pass (the limiter sleeps).
    with freeze_time(datetime.now(UTC) + timedelta(minutes=5), tick=True):
        resumed = run(catalog, emulator)
    assert resumed.counts == {"created": 3}
    assert len(emulator.customers()) == 3, "resumed with the same keys: replays, no duplicates"
    assert converged(catalog, emulator) == []


def test_fault_mix_converges_exactly(catalog: Catalog, emulator: StripeEmulator) -> None:
    emulator.configure(
        seed=11,
        slow_seconds=1.0,
        faults=[
            {"kind": "error_500", "probability": 0.10},
            {"kind": "rate_limit", "probability": 0.05},
            {"kind": "reset", "probability": 0.02},
            {"kind": "commit_then_drop", "probability": 0.02},
            {"kind": "slow", "probability": 0.01},
        ],
    )
    untouched = unmanaged(emulator)
    seed(catalog, 40)
    for round_ in range(3):
        for i in range(round_, 40, 7):
            catalog.update_customer(f"c{i}", {"name": f"Round {round_} #{i}"})
        if round_:
            catalog.delete_customer(f"c{round_ * 10}")
        for _ in range(6):
            result = run(catalog, emulator, timeout=0.5)
            if not result.counts.get("failed"):
                break
    full = run(catalog, emulator, full=True, timeout=0.5)
    assert not full.counts.get("failed")
    assert converged(catalog, emulator, unmanaged_before=untouched) == []
    outcomes = emulator.stats()["totals"]
    assert outcomes.get("500") and outcomes.get("429") and outcomes.get("drop")


def test_manual_link_and_unlink(catalog: Catalog, emulator: StripeEmulator) -> None:
    seed(catalog, 2)
    existing = emulator.client().v1.customers.create(
        {"name": "Pre-existing", "metadata": {"legacy": "yes"}}
    )

    async def call(work: Any) -> Any:
        target = StripeTarget("sk_test_sync", api_base=emulator.url, rate=1000)
        try:
            return await work(target)
        finally:
            await target.close()

    asyncio.run(call(lambda t: link_customer(catalog, t, "c0", existing.id)))
    result = run(catalog, emulator)
    assert result.counts == {"updated": 1, "created": 1}
    linked = next(c for c in emulator.customers() if c["id"] == existing.id)
    assert linked["name"] == "Customer 0" and linked["metadata"][MANAGED_KEY] == "c0"
    assert linked["metadata"]["legacy"] == "yes"
    from metersync.errors import Conflict, NotFound

    other = next(c for c in emulator.customers() if c["metadata"].get(MANAGED_KEY) == "c1")
    with pytest.raises(Conflict, match="already linked"):
        asyncio.run(call(lambda t: link_customer(catalog, t, "c0", other["id"])))
    catalog.create_customer({"key": "fresh", "name": "Fresh"})
    with pytest.raises(NotFound, match="does not exist"):
        asyncio.run(call(lambda t: link_customer(catalog, t, "fresh", "cus_missing")))
    with pytest.raises(Conflict, match="linked to customer 'c1'"):
        asyncio.run(call(lambda t: link_customer(catalog, t, "fresh", other["id"])))
    asyncio.run(call(lambda t: unlink_customer(catalog, t, "c0")))
    released = next(c for c in emulator.customers() if c["id"] == existing.id)
    assert MANAGED_KEY not in released["metadata"]
    assert "c0" not in links(catalog.store)
    # c0 no longer has a Stripe customer: the next full run creates one (and "fresh" too).
    assert run(catalog, emulator, full=True).counts.get("created") == 2


def test_subjects_route_to_their_customers_stripe_id(
    catalog: Catalog, emulator: StripeEmulator
) -> None:
    seed(catalog, 2)
    run(catalog, emulator)
    ids = {k: row.external_id for k, row in links(catalog.store).items()}
    subjects = links(catalog.store, LinkKind.SUBJECT)
    assert {k: r.external_id for k, r in subjects.items()} == {
        "c0-a": ids["c0"],
        "c0-b": ids["c0"],
        "c1-a": ids["c1"],
        "c1-b": ids["c1"],
    }
    catalog.update_customer("c0", {"usageAttribution": {"subjectKeys": ["c0-b"]}})
    catalog.update_customer("c1", {"usageAttribution": {"subjectKeys": ["c1-b", "c0-a"]}})
    catalog.upsert_subject({"key": "loner"})  # gets a placeholder customer of its own
    run(catalog, emulator)
    subjects = links(catalog.store, LinkKind.SUBJECT)
    assert subjects["c0-a"].external_id == ids["c1"]
    assert subjects["c1-a"].external_id is None and subjects["c1-a"].state == LinkState.PENDING
    assert subjects["loner"].external_id == links(catalog.store)["loner"].external_id
    catalog.delete_customer("c1")
    run(catalog, emulator)
    assert links(catalog.store, LinkKind.SUBJECT)["c1-b"].state == LinkState.PENDING


def test_the_guard_measures_a_tick_against_every_managed_customer(
    catalog: Catalog, emulator: StripeEmulator
) -> None:
    seed(catalog, 40)
    run(catalog, emulator)
    for i in range(3):  # 3 of 40 is 7.5%: under the 10% guard, whatever the tick itself loads
        catalog.delete_customer(f"c{i}")
    result = run(catalog, emulator)
    assert not result.plan.guard_tripped
    assert result.counts == {"deleted": 3}
    assert result.plan.managed == 40


# -- the full reconcile's fast path --------------------------------------------------------------


def test_full_reconcile_confirms_unchanged_customers_by_fingerprint(
    catalog: Catalog, emulator: StripeEmulator
) -> None:
    seed(catalog, 6)
    run(catalog, emulator)
    settled = run(catalog, emulator, full=True)
    assert (settled.plan.in_sync, settled.plan.actions, settled.counts) == (6, (), {"skip": 6})

    client = emulator.client()
    by_key = {c["metadata"][MANAGED_KEY]: c["id"] for c in emulator.customers()}
    client.v1.customers.update(by_key["c0"], {"name": "Edited in the dashboard"})
    client.v1.customers.update(by_key["c2"], {"metadata": {"crm_id": "hs-42"}})
    catalog.update_customer("c1", {"name": "Changed, no tick since"})
    client.v1.customers.delete(by_key["c3"])
    full = run(catalog, emulator, full=True)
    planned = {a.key: a for a in full.plan.actions}
    assert full.plan.in_sync == 2  # c4, c5
    assert planned["c0"].kind == ActionKind.UPDATE and planned["c0"].drift
    assert planned["c1"].kind == ActionKind.UPDATE and not planned["c1"].drift
    assert planned["c2"].kind == ActionKind.SKIP and planned["c2"].in_sync  # others' metadata
    assert planned["c3"].kind == ActionKind.RECREATE
    assert converged(catalog, emulator) == []
    # Repaired and recreated records are fingerprinted as pushed; c2 carries metadata that is
    # not ours, so it always takes the planner's path (and is always found in sync).
    assert run(catalog, emulator, full=True).plan.in_sync == 5


def test_links_without_fingerprints_are_confirmed_once_then_fast(
    catalog: Catalog, emulator: StripeEmulator, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Links written before the fast path existed (or under another render version) are
    planned one by one, found in sync, and recorded, so the next full run is fast again."""
    seed(catalog, 4)
    run(catalog, emulator)
    with catalog.store.session() as session:
        for row in session.exec(select(LinkRow).where(LinkRow.kind == LinkKind.CUSTOMER)):
            row.synced_fingerprint, row.synced_seq = None, None
            session.add(row)
    first = run(catalog, emulator, full=True)
    assert (first.plan.in_sync, first.counts) == (0, {"skip": 4})
    assert run(catalog, emulator, full=True).plan.in_sync == 4

    monkeypatch.setattr(StripeTarget, "render_version", "stripe-customer/next")
    assert run(catalog, emulator, full=True).plan.in_sync == 0
    assert run(catalog, emulator, full=True).plan.in_sync == 4
    assert len(emulator.customers()) == 4


def test_the_httpx_client_works_the_same(catalog: Catalog, emulator: StripeEmulator) -> None:
    seed(catalog, 3)
    assert run(catalog, emulator, http_client="httpx").counts == {"created": 3}
    catalog.update_customer("c1", {"name": "Renamed"})
    full = run(catalog, emulator, full=True, http_client="httpx")
    assert full.counts == {"updated": 1, "skip": 2}
    assert converged(catalog, emulator) == []


def test_a_failed_group_commit_leaves_no_session_behind(
    catalog: Catalog, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The writes of a group that could not even start run alone, and are committed."""
    from functools import partial

    from metersync.store.links import _table
    from metersync.sync.journal import Journal, JournalWrite

    journal = Journal(catalog.store, "stripe")

    def broken(*_: Any, **__: Any) -> list[Any]:
        raise RuntimeError("database is locked")

    monkeypatch.setattr(_table, "in_batches", broken)
    write = JournalWrite("acme", partial(journal.mark_blocked, "acme", "a reason"))
    results = journal.run_group([write])
    assert results == [None]
    monkeypatch.undo()
    link = journal.link("acme")
    assert link is not None and link.last_error == "blocked: a reason"
