"""One syncer at a time per database.

PostgreSQL: a session advisory lock, held by a dedicated connection and released by the server
when that connection ends, including when the process is killed. SQLite: an exclusive flock on
a file next to the database, released by the kernel when the process dies. Both free themselves
after a crash, so a SIGKILLed run never blocks the next one.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import os
from collections.abc import Iterator
from pathlib import Path
from typing import IO

from sqlalchemy import text

from metersync.errors import ExitCode, MetersyncError
from metersync.store.engine import Store


class LockHeld(MetersyncError):
    exit_code = ExitCode.LOCKED


def _lock_id(name: str) -> int:
    # pg_advisory_lock takes a signed 64-bit key.
    return int.from_bytes(
        hashlib.sha256(f"metersync:{name}".encode()).digest()[:8], "big", signed=True
    )


@contextlib.contextmanager
def run_lock(store: Store, name: str = "sync") -> Iterator[None]:
    if store.is_sqlite:
        with _file_lock(store, name):
            yield
    else:
        with _advisory_lock(store, name):
            yield


@contextlib.contextmanager
def _advisory_lock(store: Store, name: str) -> Iterator[None]:
    key = _lock_id(name)
    with store.engine.connect() as conn:
        got = conn.execute(text("SELECT pg_try_advisory_lock(:k)"), {"k": key}).scalar()
        conn.commit()
        if not got:
            raise LockHeld(f"another metersync run holds the {name} lock on this database")
        try:
            yield
        finally:
            conn.execute(text("SELECT pg_advisory_unlock(:k)"), {"k": key})
            conn.commit()


@contextlib.contextmanager
def _file_lock(store: Store, name: str) -> Iterator[None]:
    database = store.engine.url.database
    if not database or database == ":memory:":
        yield  # one process by definition
        return
    path = Path(f"{database}.{name}.lock")
    handle: IO[str] = path.open("a")
    try:
        try:
            fcntl.flock(handle.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise LockHeld(f"another metersync run holds the {name} lock ({path})") from None
        handle.seek(0)
        handle.truncate()
        handle.write(f"{os.getpid()}\n")
        handle.flush()
        yield
    finally:
        handle.close()
