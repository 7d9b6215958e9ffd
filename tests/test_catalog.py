"""Catalog rules on both databases (OpenMeter subjects, Konnect customers and attribution)."""

from __future__ import annotations

import sqlite3
import threading
from datetime import UTC, datetime
from typing import Any

import pytest
from sqlalchemy import event, insert

from metersync.catalog import Catalog, Outcome
from metersync.errors import Conflict, InvalidInput, NotFound
from metersync.store import (
    AttributionRow,
    CustomerRow,
    LinkKind,
    LinkRow,
    LinkState,
    Store,
    SubjectRow,
)


def acme(**extra: Any) -> dict[str, Any]:
    return {
        "key": "acme",
        "name": "ACME Inc",
        "primaryEmail": "billing@acme.test",
        "currency": "USD",
        "usageAttribution": {"subjectKeys": ["department1", "department2"]},
        **extra,
    }


# -- subjects ------------------------------------------------------------------------------------


def test_subject_upsert_is_partial(catalog: Catalog) -> None:
    created = catalog.upsert_subject({"key": "s1", "displayName": "One", "metadata": {"a": "1"}})
    assert created.outcome is Outcome.CREATED
    only_name = catalog.upsert_subject({"key": "s1", "displayName": "Uno"})
    assert only_name.outcome is Outcome.UPDATED
    assert only_name.record.display_name == "Uno"
    assert only_name.record.metadata == {"a": "1"}
    only_meta = catalog.upsert_subject({"key": "s1", "metadata": {"b": "2"}})
    assert only_meta.record.display_name == "Uno"
    assert only_meta.record.metadata == {"b": "2"}
    assert catalog.upsert_subject({"key": "s1"}).outcome is Outcome.UNCHANGED
    cleared = catalog.upsert_subject({"key": "s1", "displayName": None, "metadata": None})
    assert (cleared.record.display_name, cleared.record.metadata) == (None, {})
    assert cleared.record.id == created.record.id


def test_lone_subject_gets_a_customer_of_the_same_key_and_name(catalog: Catalog) -> None:
    result = catalog.upsert_subject({"key": "device-1", "displayName": "Edge device"})
    assert result.record.customer_key == "device-1"
    customer = catalog.get_customer("device-1")
    assert customer.name == "Edge device"
    assert customer.subject_keys == ("device-1",)
    assert customer.auto_created
    # The placeholder follows its subject's name while nobody has edited it.
    catalog.upsert_subject({"key": "device-1", "displayName": "Edge device (Berlin)"})
    assert catalog.get_customer("device-1").name == "Edge device (Berlin)"
    catalog.upsert_subject({"key": "device-1", "displayName": None})
    assert catalog.get_customer("device-1").name == "device-1"


def test_auto_customer_can_be_turned_off(store: Store) -> None:
    catalog = Catalog(store, auto_customer=False)
    result = catalog.upsert_subject({"key": "device-1"})
    assert result.record.customer_key is None
    with pytest.raises(NotFound):
        catalog.get_customer("device-1")


def test_lone_subject_joins_the_existing_customer_of_its_key(catalog: Catalog) -> None:
    catalog.create_customer({"key": "kong-air", "name": "Kong Air"})
    result = catalog.upsert_subject({"key": "kong-air"})
    assert result.record.customer_key == "kong-air"
    customer = catalog.get_customer("kong-air")
    assert customer.subject_keys == ("kong-air",)
    assert customer.name == "Kong Air" and not customer.auto_created


def test_subject_key_limits(catalog: Catalog) -> None:
    catalog.upsert_subject({"key": "k" * 256})
    for bad, message in [
        ("k" * 257, "at most 256"),
        ("", "must not be empty"),
        (" padded", "white space"),
        ("tab\there", "control characters"),
    ]:
        with pytest.raises(InvalidInput, match=message) as info:
            catalog.upsert_subject({"key": bad})
        assert info.value.problems[0].field == "key"


def test_subject_delete_leaves_a_tombstone_and_detaches(catalog: Catalog) -> None:
    catalog.create_customer(acme())
    deleted = catalog.delete_subject("department1")
    assert deleted.outcome is Outcome.DELETED
    assert deleted.record.is_deleted and deleted.record.customer_key is None
    assert catalog.get_customer("acme").subject_keys == ("department2",)
    with pytest.raises(NotFound):
        catalog.get_subject("department1")
    assert catalog.get_subject("department1", include_deleted=True).is_deleted
    assert [s.key for s in catalog.list_subjects()] == ["department2"]
    assert catalog.delete_subject("department1").outcome is Outcome.ALREADY_DELETED
    with pytest.raises(NotFound):
        catalog.delete_subject("never-existed")


def test_deleted_subject_comes_back_as_a_new_record(catalog: Catalog) -> None:
    first = catalog.upsert_subject({"key": "s", "displayName": "old", "metadata": {"a": "b"}})
    catalog.delete_subject("s")
    again = catalog.upsert_subject({"key": "s"})
    assert again.outcome is Outcome.CREATED
    assert again.record.id != first.record.id
    assert (again.record.display_name, again.record.metadata) == (None, {})
    assert again.record.customer_key == "s"


# -- customers -----------------------------------------------------------------------------------


def test_customer_create_creates_its_subjects(catalog: Catalog) -> None:
    result = catalog.create_customer(acme())
    assert result.outcome is Outcome.CREATED
    assert result.record.subject_keys == ("department1", "department2")
    subjects = {s.key: s for s in catalog.list_subjects()}
    assert subjects["department1"].customer_key == "acme"
    assert subjects["department2"].customer_key == "acme"
    # Subjects created for a customer get no placeholder customers of their own.
    assert [c.key for c in catalog.list_customers()] == ["acme"]


def test_subject_upsert_keeps_the_attribution(catalog: Catalog) -> None:
    catalog.create_customer(acme())
    catalog.upsert_subject({"key": "department1", "displayName": "Dept 1"})
    assert catalog.get_customer("acme").subject_keys == ("department1", "department2")
    assert catalog.get_subject("department1").customer_key == "acme"


def test_claiming_another_customers_subject_is_a_conflict_and_writes_nothing(
    catalog: Catalog,
) -> None:
    catalog.create_customer(acme())
    before = catalog.changes_since(0).high_water
    with pytest.raises(Conflict) as info:
        catalog.create_customer(
            {
                "key": "globex",
                "name": "Globex",
                "usageAttribution": {"subjectKeys": ["brand-new", "department1"]},
            }
        )
    assert "'department1'" in str(info.value)
    assert "'acme'" in str(info.value) and "'globex'" in str(info.value)
    with pytest.raises(NotFound):
        catalog.get_customer("globex")
    with pytest.raises(NotFound):
        catalog.get_subject("brand-new")
    assert catalog.changes_since(before).subjects == []
    assert catalog.changes_since(before).customers == []
    # The same through an update of an existing customer: its own subjects stay as they were.
    catalog.create_customer(
        {"key": "globex", "name": "Globex", "usageAttribution": {"subjectKeys": ["g1"]}}
    )
    with pytest.raises(Conflict, match="'acme'"):
        catalog.update_customer("globex", {"usageAttribution": {"subjectKeys": ["department2"]}})
    assert catalog.get_customer("globex").subject_keys == ("g1",)
    assert catalog.get_customer("acme").subject_keys == ("department1", "department2")


def test_placeholder_customer_gives_its_subject_up(catalog: Catalog) -> None:
    catalog.upsert_subject({"key": "department1"})
    assert catalog.get_customer("department1").auto_created
    result = catalog.create_customer(acme())
    assert result.record.subject_keys == ("department1", "department2")
    assert any("'department1'" in note and "removed" in note for note in result.notes)
    with pytest.raises(NotFound):
        catalog.get_customer("department1")
    assert catalog.get_customer("department1", include_deleted=True).is_deleted


def test_placeholder_known_to_a_target_is_kept(catalog: Catalog, store: Store) -> None:
    catalog.upsert_subject({"key": "department1"})
    with store.session() as session:
        session.add(
            LinkRow(
                target="stripe",
                kind=LinkKind.CUSTOMER,
                local_key="department1",
                external_id="cus_123",
                state=LinkState.SYNCED,
            )
        )
    result = catalog.create_customer(acme())
    assert any("kept" in note for note in result.notes)
    kept = catalog.get_customer("department1")
    assert kept.subject_keys == ()


def test_edited_placeholder_is_a_real_customer(catalog: Catalog) -> None:
    catalog.upsert_subject({"key": "department1"})
    catalog.update_customer("department1", {"primaryEmail": "ops@dept.test"})
    assert not catalog.get_customer("department1").auto_created
    with pytest.raises(Conflict, match="already belongs to customer 'department1'"):
        catalog.create_customer(acme())


def test_duplicate_customer_key_is_a_conflict(catalog: Catalog) -> None:
    catalog.create_customer(acme())
    with pytest.raises(Conflict, match="customer 'acme' already exists"):
        catalog.create_customer({"key": "acme", "name": "Again"})


def test_customer_update_replaces_only_given_fields(catalog: Catalog) -> None:
    catalog.create_customer(
        acme(
            description="d",
            billingAddress={"country": "US", "city": "Phoenix"},
            metadata={"plan": "pro"},
        )
    )
    result = catalog.update_customer(
        "acme", {"name": "ACME Corp", "billingAddress": {"city": "Tucson"}}
    )
    customer = result.record
    assert result.outcome is Outcome.UPDATED
    assert customer.name == "ACME Corp"
    assert customer.description == "d"
    assert customer.primary_email == "billing@acme.test"
    assert customer.billing_address.country == "US"
    assert customer.billing_address.city == "Tucson"
    assert customer.metadata == {"plan": "pro"}
    assert customer.subject_keys == ("department1", "department2")
    cleared = catalog.update_customer("acme", {"description": "", "primaryEmail": None}).record
    assert (cleared.description, cleared.primary_email) == (None, None)
    assert catalog.update_customer("acme", {"name": "ACME Corp"}).outcome is Outcome.UNCHANGED


def test_customer_update_replaces_the_subject_set(catalog: Catalog) -> None:
    catalog.create_customer(acme())
    result = catalog.update_customer(
        "acme", {"usageAttribution": {"subjectKeys": ["department2", "department3"]}}
    )
    assert result.record.subject_keys == ("department2", "department3")
    # The subject that left stays, without a customer.
    assert catalog.get_subject("department1").customer_key is None
    cleared = catalog.update_customer("acme", {"usageAttribution": {"subjectKeys": []}})
    assert cleared.record.subject_keys == ()


def test_customer_update_errors(catalog: Catalog) -> None:
    catalog.create_customer(acme())
    with pytest.raises(Conflict, match="immutable"):
        catalog.update_customer("acme", {"key": "acme2"})
    with pytest.raises(InvalidInput, match="name cannot be cleared"):
        catalog.update_customer("acme", {"name": None})
    with pytest.raises(NotFound):
        catalog.update_customer("nobody", {"name": "x"})


def test_customer_delete_leaves_a_tombstone_and_frees_its_subjects(catalog: Catalog) -> None:
    created = catalog.create_customer(acme())
    deleted = catalog.delete_customer("acme")
    assert deleted.outcome is Outcome.DELETED and deleted.record.is_deleted
    assert deleted.record.subject_keys == ()
    assert all(s.customer_key is None for s in catalog.list_subjects())
    assert [c.key for c in catalog.list_customers()] == []
    assert [c.key for c in catalog.list_customers(include_deleted=True)] == ["acme"]
    assert catalog.delete_customer("acme").outcome is Outcome.ALREADY_DELETED
    # Freed subjects can go to another customer now.
    catalog.create_customer(
        {"key": "globex", "name": "Globex", "usageAttribution": {"subjectKeys": ["department1"]}}
    )
    again = catalog.create_customer({"key": "acme", "name": "ACME again"})
    assert again.record.id != created.record.id
    assert again.record.primary_email is None


def test_put_customer_replaces_whole_and_is_idempotent(catalog: Catalog) -> None:
    record = acme(billingAddress={"country": "US", "city": "Phoenix"}, metadata={"plan": "pro"})
    assert catalog.put_customer(record).outcome is Outcome.CREATED
    assert catalog.put_customer(record).outcome is Outcome.UNCHANGED
    slimmer = {"key": "acme", "name": "ACME Inc", "billingAddress": {"city": "Phoenix"}}
    replaced = catalog.put_customer(slimmer)
    assert replaced.outcome is Outcome.UPDATED
    customer = replaced.record
    assert customer.primary_email is None and customer.currency is None
    assert customer.billing_address.country is None and customer.billing_address.city == "Phoenix"
    assert customer.metadata == {} and customer.subject_keys == ()


def test_customer_key_from_single_subject(catalog: Catalog) -> None:
    # OpenMeter: either key or usageAttribution.subjectKeys must be provided.
    result = catalog.create_customer(
        {"name": "Solo", "usageAttribution": {"subjectKeys": ["solo-1"]}}
    )
    assert result.record.key == "solo-1"
    with pytest.raises(InvalidInput, match="key is required unless"):
        catalog.create_customer({"name": "Duo", "usageAttribution": {"subjectKeys": ["a", "b"]}})


# -- change feed ---------------------------------------------------------------------------------


def test_changes_since_sees_every_change_once_and_no_op_writes_none(catalog: Catalog) -> None:
    start = catalog.changes_since(0)
    assert (start.subjects, start.customers, start.high_water) == ([], [], 0)

    catalog.create_customer(acme())
    first = catalog.changes_since(0)
    assert [c.key for c in first.customers] == ["acme"]
    assert sorted(s.key for s in first.subjects) == ["department1", "department2"]

    # Writing the same data again wakes nobody.
    catalog.put_customer(acme())
    catalog.upsert_subject({"key": "department1"})
    quiet = catalog.changes_since(first.high_water)
    assert (quiet.subjects, quiet.customers) == ([], [])

    # Re-attribution changes the subject (its usage goes elsewhere) and both customers.
    catalog.create_customer({"key": "globex", "name": "Globex"})
    mark = catalog.changes_since(0).high_water
    catalog.update_customer("acme", {"usageAttribution": {"subjectKeys": ["department2"]}})
    catalog.update_customer("globex", {"usageAttribution": {"subjectKeys": ["department1"]}})
    moved = catalog.changes_since(mark)
    assert [s.key for s in moved.subjects] == ["department1"]
    assert {c.key for c in moved.customers} == {"acme", "globex"}
    assert moved.subjects[0].customer_key == "globex"

    # Deletes show up as tombstones, in change order.
    mark = moved.high_water
    catalog.delete_customer("globex")
    gone = catalog.changes_since(mark)
    assert [(c.key, c.is_deleted) for c in gone.customers] == [("globex", True)]
    assert [(s.key, s.customer_key) for s in gone.subjects] == [("department1", None)]
    assert gone.high_water > mark


def test_concurrent_claims_of_one_subject_one_wins(catalog: Catalog) -> None:
    catalog.create_customer({"key": "a", "name": "A"})
    catalog.create_customer({"key": "b", "name": "B"})
    barrier = threading.Barrier(2)
    results: dict[str, object] = {}

    def claim(customer: str) -> None:
        barrier.wait()
        try:
            catalog.update_customer(customer, {"usageAttribution": {"subjectKeys": ["shared"]}})
            results[customer] = "ok"
        except Conflict as exc:
            results[customer] = exc

    threads = [threading.Thread(target=claim, args=(key,)) for key in ("a", "b")]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=30)
    assert sorted(type(v).__name__ for v in results.values()) == ["Conflict", "str"]
    owners = [c.key for c in catalog.list_customers() if c.subject_keys == ("shared",)]
    assert len(owners) == 1 and results[owners[0]] == "ok"


def test_change_feed_is_not_bounded_by_sqlite_bind_limits(catalog: Catalog, store: Store) -> None:
    """Reading a big change feed must not bind one parameter per row. Stock SQLite allows 32,766
    (999 before 3.32); Debian raises it to 250,000, so the test imposes 999 itself."""
    if store.is_sqlite:
        store.engine.dispose()

        @event.listens_for(store.engine, "connect")
        def _stock_limit(dbapi_connection: Any, _: Any) -> None:
            dbapi_connection.setlimit(sqlite3.SQLITE_LIMIT_VARIABLE_NUMBER, 999)

    count = 1_500
    now = datetime.now(UTC)
    with store.session() as session:
        seq = store.next_change_seq(session)
        for table, rows in (
            (
                CustomerRow,
                [
                    {
                        "id": f"{i:026d}",
                        "key": f"c{i:05d}",
                        "name": f"C {i}",
                        "meta": {},
                        "auto_created": False,
                        "change_seq": seq,
                        "created_at": now,
                        "updated_at": now,
                    }
                    for i in range(count)
                ],
            ),
            (
                SubjectRow,
                [
                    {
                        "id": f"{i:026d}",
                        "key": f"s{i:05d}",
                        "meta": {},
                        "change_seq": seq,
                        "created_at": now,
                        "updated_at": now,
                    }
                    for i in range(count)
                ],
            ),
            (
                AttributionRow,
                [
                    {"subject_key": f"s{i:05d}", "customer_key": f"c{i:05d}", "created_at": now}
                    for i in range(count)
                ],
            ),
        ):
            session.execute(insert(table), rows)
    changes = catalog.changes_since(0)
    assert len(changes.customers) == count and len(changes.subjects) == count
    assert changes.customers[1_234].subject_keys == ("s01234",)
    assert changes.high_water == seq


def test_deleting_a_lone_subject_removes_its_placeholder(catalog: Catalog) -> None:
    catalog.upsert_subject({"key": "p", "displayName": "Printer"})
    result = catalog.delete_subject("p")
    assert any("'p'" in note and "removed" in note for note in result.notes)
    assert catalog.get_customer("p", include_deleted=True).is_deleted
    # The subject comes back: a fresh placeholder, named after it.
    catalog.upsert_subject({"key": "p", "displayName": "Printer 2"})
    assert catalog.get_customer("p").name == "Printer 2"


def test_placeholder_known_to_a_target_outlives_its_subject_and_is_renamed_on_return(
    catalog: Catalog, store: Store
) -> None:
    catalog.upsert_subject({"key": "p"})
    with store.session() as session:
        session.add(
            LinkRow(
                target="stripe",
                kind=LinkKind.CUSTOMER,
                local_key="p",
                external_id="cus_p",
                state=LinkState.SYNCED,
            )
        )
    result = catalog.delete_subject("p")
    assert any("kept" in note for note in result.notes)
    kept = catalog.get_customer("p")
    assert kept.subject_keys == () and kept.auto_created
    catalog.upsert_subject({"key": "p", "displayName": "New name"})
    back = catalog.get_customer("p")
    assert back.id == kept.id
    assert back.subject_keys == ("p",) and back.name == "New name"


def test_creating_a_customer_takes_over_its_subjects_placeholder(catalog: Catalog) -> None:
    placeholder = catalog.upsert_subject({"key": "dev1"})
    placeholder_id = catalog.get_customer("dev1").id
    # OpenMeter's "key or subjectKeys" flow: the key comes from the single subject.
    result = catalog.create_customer(
        {"name": "Dev owner", "usageAttribution": {"subjectKeys": ["dev1"]}}
    )
    assert result.outcome is Outcome.CREATED
    assert any("takes over" in note for note in result.notes)
    customer = result.record
    assert (customer.key, customer.name, customer.auto_created) == ("dev1", "Dev owner", False)
    assert customer.id == placeholder_id  # same record: a target updates it, never duplicates it
    assert customer.subject_keys == ("dev1",)
    assert customer.change_seq > placeholder.record.change_seq
    # Now it is a real customer: a second create is a conflict.
    with pytest.raises(Conflict, match="already exists"):
        catalog.create_customer({"key": "dev1", "name": "Again"})


def test_create_subjects_creates_only_the_unknown_in_one_change(catalog: Catalog) -> None:
    catalog.upsert_subject({"key": "known", "displayName": "Known"})
    catalog.upsert_subject({"key": "gone"})
    catalog.delete_subject("gone")
    before = catalog.high_water()
    created = catalog.create_subjects(["new-b", "known", "gone", "new-a", "new-a"])
    assert created == ["new-a", "new-b"]
    assert catalog.high_water() == before + 1  # one transaction, one change number
    assert catalog.get_subject("known").display_name == "Known"
    assert catalog.get_subject("gone", include_deleted=True).is_deleted
    # Each new subject got its customer by the catalog rule, as an upsert would.
    assert catalog.get_customer("new-a").subject_keys == ("new-a",)
