"""Leases: locks kept in the database that expire unless their holder renews them.

A holder renews its lease while it works (`Lease.keep`, a background heartbeat). One that dies
stops renewing, and the lease is free once it expires; when the dead holder was a process on
this very host, at once (its pid no longer exists). Unlike a file lock, a lease also works when
the database file sits on a shared volume, and it says who holds it.
"""

from __future__ import annotations

import contextlib
import os
import socket
import threading
import uuid
from collections.abc import Iterator
from datetime import datetime, timedelta

from sqlalchemy import delete, update

from metersync.clock import utcnow
from metersync.logs import get_logger
from metersync.store.engine import Store
from metersync.store.models import LeaseRow

_log = get_logger("metersync.lease")
DEFAULT_DURATION = timedelta(seconds=30)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's process: alive
        return True
    return True


class Lease:
    def __init__(self, store: Store, name: str, *, duration: timedelta = DEFAULT_DURATION) -> None:
        self.store = store
        self.name = name
        self.duration = duration
        self.host = socket.gethostname()
        self.pid = os.getpid()
        # Unique per Lease object: two holders in one process are two holders.
        self.holder = f"{self.host}:{self.pid}:{uuid.uuid4().hex[:8]}"

    def try_acquire(self) -> bool:
        """Take the lease if it is free, expired, ours, or held by a dead process on this host.
        One write transaction, so two contenders cannot both win."""
        now = utcnow()
        with self.store.session() as session:
            row = session.get(LeaseRow, self.name)
            if row is not None and not self._takeable(row, now):
                return False
            if row is None:
                row = LeaseRow(
                    name=self.name,
                    holder=self.holder,
                    host=self.host,
                    pid=self.pid,
                    acquired_at=now,
                    expires_at=now + self.duration,
                )
            else:
                row.holder, row.host, row.pid = self.holder, self.host, self.pid
                row.acquired_at, row.expires_at = now, now + self.duration
            session.add(row)
        return True

    def renew(self) -> bool:
        """Extend it; False when it is no longer ours (it expired and someone took it)."""
        with self.store.session() as session:
            result = session.execute(
                update(LeaseRow)
                .where(LeaseRow.name == self.name, LeaseRow.holder == self.holder)  # type: ignore[arg-type]
                .values(expires_at=utcnow() + self.duration)
            )
            return bool(result.rowcount)  # type: ignore[attr-defined]

    def release(self) -> None:
        with self.store.session() as session:
            session.execute(
                delete(LeaseRow).where(
                    LeaseRow.name == self.name,  # type: ignore[arg-type]
                    LeaseRow.holder == self.holder,  # type: ignore[arg-type]
                )
            )

    def current(self) -> LeaseRow | None:
        with self.store.read_session() as session:
            return session.get(LeaseRow, self.name)

    def describe_holder(self) -> str:
        row = self.current()
        if row is None:
            return "nobody"
        return f"pid {row.pid} on {row.host} (until {row.expires_at.isoformat(timespec='seconds')})"

    @contextlib.contextmanager
    def keep(self) -> Iterator[threading.Event]:
        """Renew the lease every third of its duration until the block ends, then release it.
        Yields an event that is set if the lease was lost meanwhile."""
        stop, lost = threading.Event(), threading.Event()

        def heartbeat() -> None:
            while not stop.wait(self.duration.total_seconds() / 3):
                try:
                    if not self.renew():
                        lost.set()
                        _log.error("lease lost: another holder took it", lease=self.name)
                        return
                except Exception as exc:  # noqa: BLE001 - keep trying; expiry is the backstop
                    _log.warning("lease renewal failed", lease=self.name, error=str(exc))

        thread = threading.Thread(target=heartbeat, name=f"lease-{self.name}", daemon=True)
        thread.start()
        try:
            yield lost
        finally:
            stop.set()
            thread.join()
            if not lost.is_set():
                self.release()

    def _takeable(self, row: LeaseRow, now: datetime) -> bool:
        if row.holder == self.holder or row.expires_at <= now:
            return True
        return row.host == self.host and row.pid != self.pid and not _alive(row.pid)
