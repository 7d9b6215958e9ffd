"""One syncer at a time per database.

PostgreSQL: a session advisory lock, held by a dedicated connection and released by the server
when that connection ends, including when the process is killed. SQLite: a lease row
(store/lease.py), renewed while the run works, free once it expires, or at once when its holder
was a process on this host that no longer exists. Both free themselves after a crash, so a
SIGKILLed run never blocks the next one for long.
"""

from __future__ import annotations

import contextlib
import hashlib
import threading
import time
from collections.abc import Iterator

from sqlalchemy import Connection, text

from metersync.errors import ExitCode, MetersyncError
from metersync.store.engine import Store
from metersync.store.lease import Lease


class LockHeld(MetersyncError):
    exit_code = ExitCode.LOCKED


def _lock_id(name: str, schema: str = "") -> int:
    # pg_advisory_lock takes a signed 64-bit key. Advisory locks are per database; the schema
    # is part of the key so that metersync installations in two schemas of one database do
    # not hold each other up.
    return int.from_bytes(
        hashlib.sha256(f"metersync:{schema}:{name}".encode()).digest()[:8], "big", signed=True
    )


@contextlib.contextmanager
def run_lock(store: Store, name: str = "sync", *, wait_s: float = 0.0) -> Iterator[None]:
    """Hold the lock for a one-shot run; when another holds it, wait up to `wait_s` for it,
    then fail with LockHeld (exit 3)."""
    lock = RunLock(store, name)
    deadline = time.monotonic() + wait_s
    while not lock.try_acquire():
        if time.monotonic() >= deadline:
            holder = lock.holder()
            lock.close()
            waited = f" (waited {wait_s:g} s)" if wait_s else ""
            raise LockHeld(f"another metersync run holds the {name} lock{waited}: {holder}")
        time.sleep(min(0.5, max(0.0, deadline - time.monotonic())))
    with lock.hold():
        yield


class RunLock:
    """The lock as an object, for a holder that waits for it (the service's standby) as well
    as for one that fails fast (run_lock). PostgreSQL: a session advisory lock on a connection
    of its own; SQLite: a lease row (an in-memory database needs no lock)."""

    def __init__(self, store: Store, name: str = "sync") -> None:
        self.store = store
        self.name = name
        self._lease = Lease(store, f"run:{name}") if store.is_sqlite else None
        self._conn: Connection | None = None
        self._key = 0

    @property
    def _unlocked(self) -> bool:
        return self.store.is_sqlite and self.store.engine.url.database in (None, "", ":memory:")

    def try_acquire(self) -> bool:
        if self._unlocked:
            return True
        if self._lease is not None:
            return self._lease.try_acquire()
        if self._conn is None:
            self._conn = self.store.engine.connect()
            schema = self._conn.execute(text("SELECT current_schema()")).scalar() or ""
            self._key = _lock_id(self.name, schema)
            self._conn.commit()
        got = bool(
            self._conn.execute(text("SELECT pg_try_advisory_lock(:k)"), {"k": self._key}).scalar()
        )
        self._conn.commit()
        return got

    def close(self) -> None:
        """Give up waiting: close the advisory lock's connection (not held)."""
        if self._conn is not None:
            self._conn.close()
            self._conn = None

    def holder(self) -> str:
        if self._lease is not None:
            return self._lease.describe_holder()
        return "another session on this database"

    @contextlib.contextmanager
    def hold(self, check_every_s: float = 5.0) -> Iterator[threading.Event]:
        """Keep the lock (renewing a lease; checking the advisory lock's connection) until the
        block ends, then release it. Yields an event set if the lock was lost meanwhile."""
        if self._unlocked:
            yield threading.Event()
            return
        if self._lease is not None:
            with self._lease.keep() as lost:
                yield lost
            return
        assert self._conn is not None
        conn, lost, stop = self._conn, threading.Event(), threading.Event()
        lock = threading.Lock()  # one connection: never used by two threads at once

        def watch() -> None:
            while not stop.wait(check_every_s):
                try:
                    with lock:
                        conn.execute(text("SELECT 1"))
                        conn.commit()
                except Exception:  # noqa: BLE001 - any failure: the session and its lock are gone
                    lost.set()
                    return

        thread = threading.Thread(target=watch, name=f"lock-{self.name}", daemon=True)
        thread.start()
        try:
            yield lost
        finally:
            stop.set()
            thread.join()
            with contextlib.suppress(Exception), lock:
                conn.execute(text("SELECT pg_advisory_unlock(:k)"), {"k": self._key})
                conn.commit()
            conn.close()
            self._conn = None
