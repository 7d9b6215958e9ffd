"""Fixtures: every store test runs on SQLite and on PostgreSQL.

PostgreSQL comes from METERSYNC_TEST_POSTGRES_URL (default: the local server, database `test`).
Each test gets a schema of its own (search_path), dropped afterwards, so tests never see each
other's rows and can run in parallel. Under CI=true an unreachable PostgreSQL fails the test
instead of skipping it: a green run must mean both databases were exercised.
"""

from __future__ import annotations

import asyncio
import inspect
import os
import sys
import uuid
from collections.abc import Iterator
from contextlib import AbstractContextManager, contextmanager
from functools import cache
from types import FrameType

import pytest
import sqlalchemy as sa
from sqlalchemy.engine import make_url

from metersync.catalog import Catalog
from metersync.store import Store
from metersync.store.engine import build_engine

PG_URL = os.environ.get(
    "METERSYNC_TEST_POSTGRES_URL", "postgresql+psycopg://postgres@127.0.0.1:5432/test"
)
IN_CI = os.environ.get("CI", "").lower() in ("1", "true", "yes")
DATABASES = ["sqlite", "postgresql"]


@pytest.fixture(autouse=True)
def _clean_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    # Settings read the environment; a developer's own METERSYNC_* must not leak into tests.
    for name in list(os.environ):
        if (name.startswith("METERSYNC_") and name != "METERSYNC_TEST_POSTGRES_URL") or (
            name == "STRIPE_API_KEY"
        ):
            monkeypatch.delenv(name)


@pytest.fixture(autouse=True)
def _no_store_on_the_event_loop(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """The engine's rule for async code (metersync.sync, metersync.usage): database work runs
    in a worker thread, never on the event loop. Every store session a test opens checks it:
    opened on a thread with a running loop, under a coroutine of the product, is a breach. The
    test fails at teardown, even if the product caught the error and went on."""
    breaches: list[str] = []

    def guard(opener: object) -> object:
        def open_checked(self: Store) -> AbstractContextManager[object]:
            caller = _product_coroutine_on_the_loop(sys._getframe(1))
            if caller is not None:
                breaches.append(caller)
                raise AssertionError(f"{caller} used the store on the event loop")
            return opener(self)  # type: ignore[operator, no-any-return]

        return open_checked

    monkeypatch.setattr(Store, "session", guard(Store.session))
    monkeypatch.setattr(Store, "read_session", guard(Store.read_session))
    yield
    assert not breaches, f"the store was used on the event loop by: {sorted(set(breaches))}"


def _product_coroutine_on_the_loop(frame: FrameType | None) -> str | None:
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return None  # a worker thread, or no loop at all
    while frame is not None:
        name = frame.f_globals.get("__name__", "")
        is_async = frame.f_code.co_flags & (inspect.CO_COROUTINE | inspect.CO_ASYNC_GENERATOR)
        # The emulators run their own servers; tests may use the store from their coroutines.
        if is_async and name.startswith("metersync.") and not name.startswith("metersync.testing"):
            return f"{name}.{frame.f_code.co_name}"
        frame = frame.f_back
    return None


@cache
def _postgres_problem() -> str | None:
    engine = sa.create_engine(PG_URL, connect_args={"connect_timeout": 3})
    try:
        with engine.connect() as conn:
            conn.exec_driver_sql("SELECT 1")
    except sa.exc.OperationalError as exc:
        return str(exc.orig).strip().splitlines()[0] if exc.orig else str(exc)
    finally:
        engine.dispose()
    return None


def require_postgres() -> None:
    problem = _postgres_problem()
    if problem is None:
        return
    message = f"PostgreSQL at {make_url(PG_URL).render_as_string()} is unreachable: {problem}"
    if IN_CI:
        pytest.fail(message + " (CI=true: the PostgreSQL half of the suite must run)")
    pytest.skip(message)


@contextmanager
def fresh_postgres_schema() -> Iterator[str]:
    """A URL whose search_path is a new, empty schema, dropped afterwards."""
    require_postgres()
    schema = f"t_{uuid.uuid4().hex[:16]}"
    admin = sa.create_engine(PG_URL)
    with admin.begin() as conn:
        conn.exec_driver_sql(f'CREATE SCHEMA "{schema}"')
    # application_name tags the test's connections, so teardown can find any left open.
    url = make_url(PG_URL).update_query_dict(
        {"options": f"-csearch_path={schema}", "application_name": schema}
    )
    try:
        yield url.render_as_string(hide_password=False)
    finally:
        with admin.begin() as conn:
            # A failed test can leave a connection idle in a transaction (a thread that never
            # got to commit); its locks would hold DROP SCHEMA forever.
            conn.exec_driver_sql(
                "SELECT pg_terminate_backend(pid) FROM pg_stat_activity"
                " WHERE application_name = %s AND pid <> pg_backend_pid()",
                (schema,),
            )
            conn.exec_driver_sql(f'DROP SCHEMA "{schema}" CASCADE')
        admin.dispose()


@pytest.fixture
def postgres_url() -> Iterator[str]:
    """A URL whose search_path is a fresh, empty schema."""
    with fresh_postgres_schema() as url:
        yield url


@pytest.fixture(params=DATABASES)
def database_url(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> str:
    """An empty database of each kind: a new SQLite file, or a new PostgreSQL schema."""
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path_factory.mktemp('db')}/metersync.db"
    url: str = request.getfixturevalue("postgres_url")
    return url


@pytest.fixture
def store(database_url: str) -> Iterator[Store]:
    """A migrated store (SQLite migrates itself; PostgreSQL needs the explicit upgrade)."""
    if database_url.startswith("sqlite"):
        opened = Store.open(database_url)
    else:
        opened = Store(build_engine(database_url))
        opened.upgrade()
    yield opened
    opened.dispose()


@pytest.fixture
def catalog(store: Store) -> Catalog:
    return Catalog(store)


# -- crash trials: a smoke count in `make test`, the full count in `make test-slow` -----------
# The full counts are the ones the crash-safety work was shown with: at least 20 SIGKILLs per
# sync path on SQLite and 10 on PostgreSQL. The smoke count keeps every path exercised on every
# run without spending the normal suite's time budget on it.
SMOKE_KILLS = 3
FULL_KILLS = {"sqlite": 20, "postgresql": 10}


def database_kind(url: str) -> str:
    return "sqlite" if url.startswith("sqlite") else "postgresql"


@pytest.fixture(
    params=["smoke", pytest.param("full", marks=[pytest.mark.slow, pytest.mark.timeout(1200)])]
)
def kill_trials(request: pytest.FixtureRequest, database_url: str) -> int:
    """How many SIGKILL trials a crash test runs: smoke, or (marked slow) the full count."""
    if request.param == "smoke":
        return SMOKE_KILLS
    return FULL_KILLS[database_kind(database_url)]
