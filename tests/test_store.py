"""The store on both databases: migrations, schema checks, column types, the link table and the
change sequence."""

from __future__ import annotations

import sqlite3
import threading
from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path

import pytest
import sqlalchemy as sa
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext
from sqlmodel import Session, select

from metersync.errors import DatabaseUnavailable
from metersync.store import LinkKind, LinkRow, LinkState, Store, SubjectRow
from metersync.store.engine import build_engine
from metersync.store.links import LinkTable
from metersync.store.migrate import head_revision
from metersync.store.models import metadata

EXPECTED_TABLES = {
    "subject",
    "customer",
    "attribution",
    "link",
    "catalog_sequence",
    "alembic_version",
}


def test_upgrade_from_empty_then_models_match_migrations(database_url: str) -> None:
    store = Store(build_engine(database_url))
    try:
        assert store.current_revision() is None
        before, after = store.upgrade()
        assert (before, after) == (None, head_revision())
        with store.engine.connect() as conn:
            assert set(sa.inspect(conn).get_table_names()) >= EXPECTED_TABLES
            # Autogenerate against the migrated schema: any difference means a model changed
            # without a migration (or the reverse).
            diff = compare_metadata(
                MigrationContext.configure(conn, opts={"compare_type": True}), metadata
            )
        assert diff == []
        # Running it again is harmless.
        assert store.upgrade() == (head_revision(), head_revision())
    finally:
        store.dispose()


def test_new_sqlite_file_is_migrated_on_first_use(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path}/new.db"
    store = Store.open(url)
    try:
        assert store.current_revision() == head_revision()
    finally:
        store.dispose()
    # Opening it again does not migrate again (and does not fail).
    Store.open(url).dispose()


def test_concurrent_openers_of_a_new_sqlite_file_all_succeed(tmp_path: Path) -> None:
    """Several openers race on a brand-new file: switching it to WAL and migrating it must
    happen once, with every opener waiting rather than failing with "database is locked"."""
    errors: list[BaseException] = []

    def open_it(url: str) -> None:
        try:
            Store.open(url).dispose()
        except BaseException as exc:  # noqa: BLE001 - collected and asserted below
            errors.append(exc)

    for attempt in range(10):
        url = f"sqlite:///{tmp_path}/race{attempt}.db"
        threads = [threading.Thread(target=open_it, args=(url,)) for _ in range(6)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        store = Store.open(url)
        assert store.current_revision() == head_revision()
        store.dispose()
    assert errors == []


def test_opening_waits_for_a_lock_held_on_a_new_file(tmp_path: Path) -> None:
    """Deterministic form of the race above: another process holds the write lock on the new
    file while we open it. We must wait for it, not fail with "database is locked"."""
    path = tmp_path / "held.db"
    holder = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
    holder.execute("BEGIN IMMEDIATE")
    releaser = threading.Timer(0.3, holder.execute, args=("COMMIT",))
    releaser.start()
    try:
        store = Store.open(f"sqlite:///{path}")
        assert store.current_revision() == head_revision()
        store.dispose()
    finally:
        releaser.join()
        holder.close()


def test_postgresql_is_never_migrated_implicitly(postgres_url: str) -> None:
    with pytest.raises(DatabaseUnavailable, match="run `metersync db upgrade`"):
        Store.open(postgres_url)


def test_old_or_unknown_revision_is_refused(database_url: str) -> None:
    store = Store(build_engine(database_url))
    store.upgrade()
    with store.engine.begin() as conn:
        conn.exec_driver_sql("UPDATE alembic_version SET version_num = 'ffff_future'")
    store.dispose()
    with pytest.raises(DatabaseUnavailable, match="migrated by a newer metersync"):
        Store.open(database_url)


def test_unreachable_database_is_a_clear_error() -> None:
    with pytest.raises(DatabaseUnavailable, match="cannot connect to database postgresql"):
        Store.open("postgresql+psycopg://nobody:pw@127.0.0.1:1/none")


def test_missing_sqlite_directory_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(DatabaseUnavailable, match="does not exist"):
        Store.open(f"sqlite:///{tmp_path}/no/such/dir/x.db")


def test_timestamps_come_back_as_aware_utc(store: Store) -> None:
    moment = datetime(2026, 3, 29, 1, 30, tzinfo=timezone(timedelta(hours=2)))
    with store.session() as session:
        session.add(
            SubjectRow(
                id="01J0000000000000000000000A",
                key="s",
                change_seq=1,
                created_at=moment,
                updated_at=moment,
            )
        )
    with store.read_session() as session:
        row = session.exec(select(SubjectRow).where(SubjectRow.key == "s")).one()
    assert row.created_at == moment
    assert row.created_at.tzinfo is not None and row.created_at.utcoffset() == timedelta(0)


def test_naive_timestamps_are_refused(store: Store) -> None:
    with pytest.raises(sa.exc.StatementError, match="naive datetime"), store.session() as session:
        session.add(
            SubjectRow(
                id="01J0000000000000000000000B",
                key="n",
                change_seq=1,
                created_at=datetime(2026, 1, 1),
                updated_at=datetime.now(UTC),
            )
        )
        session.flush()


def _link(local_key: str, external_id: str | None, target: str = "stripe") -> LinkRow:
    return LinkRow(
        target=target,
        kind=LinkKind.CUSTOMER,
        local_key=local_key,
        external_id=external_id,
        state=LinkState.SYNCED,
    )


def test_link_is_unique_per_local_key_and_per_external_id(store: Store) -> None:
    with store.session() as session:
        session.add(_link("acme", "cus_1"))
        # Creates in flight have no external id yet; several may coexist.
        session.add(_link("globex", None))
        session.add(_link("initech", None))
        # The same keys in another target are independent.
        session.add(_link("acme", "cus_1", target="hubspot"))
    with pytest.raises(sa.exc.IntegrityError), store.session() as session:
        session.add(_link("acme", "cus_2"))
    with pytest.raises(sa.exc.IntegrityError), store.session() as session:
        session.add(_link("umbrella", "cus_1"))
    with store.read_session() as session:
        row = session.exec(
            select(LinkRow).where(LinkRow.local_key == "acme", LinkRow.target == "stripe")
        ).one()
    assert (row.generation, row.attempts, row.owned_metadata_keys) == (1, 0, [])


def test_usage_routes_only_to_linked_customers_in_a_routable_state(store: Store) -> None:
    states = {
        "synced": (LinkState.SYNCED, "cus_1"),
        "updating": (LinkState.UPDATING, "cus_2"),
        "archived": (LinkState.ARCHIVED, "cus_3"),
        "creating": (LinkState.CREATING, None),
        "pending": (LinkState.PENDING, None),
        "deleting": (LinkState.DELETING, "cus_4"),
        "deleted": (LinkState.DELETED, "cus_5"),
        "missing": (LinkState.MISSING, "cus_6"),
        "released": (LinkState.RELEASED, "cus_7"),
        "no-id": (LinkState.SYNCED, None),
    }
    with store.session() as session:
        for key, (state, external_id) in states.items():
            row = _link(key, external_id)
            row.state = state
            session.add(row)
        # A subject's link under a customer's key is not that customer's.
        session.add(
            LinkRow(
                target="stripe",
                kind=LinkKind.SUBJECT,
                local_key="subject-only",
                external_id="cus_9",
                state=LinkState.SYNCED,
            )
        )
    routable = {"synced": "cus_1", "updating": "cus_2", "archived": "cus_3"}
    links = LinkTable(store, "stripe")
    assert links.routable_external_ids() == routable
    asked = [*states, "subject-only", "unknown"]
    assert links.routable_external_ids(asked) == routable
    assert links.routable_external_ids(["updating", "deleted"]) == {"updating": "cus_2"}
    assert LinkTable(store, "hubspot").routable_external_ids(asked) == {}


def test_change_numbers_are_handed_out_in_commit_order(store: Store) -> None:
    """A writer that took its number first commits first: the number is held under a lock until
    commit, so a reader never sees 42 while 41 is still to come."""
    taken = threading.Event()
    release = threading.Event()
    order: list[tuple[str, int]] = []

    def slow_writer() -> None:
        with store.session() as session:
            seq = store.next_change_seq(session)
            taken.set()
            release.wait(timeout=10)
            # Noted before the commit: once it commits, the fast writer may note its own first.
            order.append(("slow", seq))

    def fast_writer() -> None:
        with store.session() as session:
            seq = store.next_change_seq(session)
        order.append(("fast", seq))

    slow = threading.Thread(target=slow_writer)
    slow.start()
    try:
        assert taken.wait(timeout=10)
        fast = threading.Thread(target=fast_writer)
        fast.start()
        fast.join(timeout=0.5)
        assert fast.is_alive(), "the second writer must wait for the first to commit"
    finally:
        release.set()  # a failed assert must not leave the first writer's transaction open
    slow.join(timeout=10)
    fast.join(timeout=10)
    assert order[0][0] == "slow" and order[1][0] == "fast"
    assert order[0][1] < order[1][1]


def test_a_read_session_is_one_snapshot(store: Store) -> None:
    """Everything a read session reads is from one moment: a change feed assembled from several
    queries must never mix states (PostgreSQL's default READ COMMITTED would)."""

    def count(session: Session) -> int:
        return len(session.exec(select(SubjectRow)).all())

    with store.read_session() as reader:
        before = count(reader)
        with store.session() as writer:
            writer.add(
                SubjectRow(
                    id="01J0000000000000000000000C",
                    key="late",
                    change_seq=1,
                    created_at=datetime.now(UTC),
                    updated_at=datetime.now(UTC),
                )
            )
        assert count(reader) == before
    with store.read_session() as reader:
        assert count(reader) == before + 1
