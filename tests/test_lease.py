"""Leases (the SQLite run lock, later the service's leader lease), on SQLite and PostgreSQL."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from datetime import timedelta
from pathlib import Path

import pytest
from freezegun import freeze_time

from metersync.store import Store
from metersync.store.lease import Lease
from metersync.store.lock import LockHeld, run_lock


def test_one_holder_at_a_time_until_release(store: Store) -> None:
    first, second = Lease(store, "job"), Lease(store, "job")
    assert first.try_acquire()
    assert not second.try_acquire()
    assert first.try_acquire()  # re-entrant for its own holder
    assert first.renew()
    assert f"pid {os.getpid()}" in second.describe_holder()
    first.release()
    assert second.try_acquire()
    assert not first.renew()  # no longer first's


def test_an_expired_lease_is_taken_over(store: Store) -> None:
    # Frozen time: a loaded machine must not expire the lease between two lines.
    with freeze_time("2026-11-21 10:00:00") as clock:
        stalled = Lease(store, "job", duration=timedelta(seconds=5))
        assert stalled.try_acquire()
        other = Lease(store, "job")
        assert not other.try_acquire()
        clock.tick(timedelta(seconds=6))  # the holder never renewed
        assert other.try_acquire()
        assert not stalled.renew()


def test_keep_renews_while_the_work_runs(store: Store) -> None:
    holder = Lease(store, "job", duration=timedelta(seconds=0.3))
    assert holder.try_acquire()
    with holder.keep() as lost:
        time.sleep(0.8)  # well past one duration: only renewals keep it
        assert not Lease(store, "job").try_acquire()
        assert not lost.is_set()
    assert Lease(store, "job").try_acquire()  # released at the end


def test_a_killed_holder_on_this_host_frees_it_at_once(store: Store, database_url: str) -> None:
    script = (
        "import sys, time\n"
        "from datetime import timedelta\n"
        "from metersync.store import Store\n"
        "from metersync.store.engine import build_engine\n"
        "from metersync.store.lease import Lease\n"
        "store = Store(build_engine(sys.argv[1]))\n"
        "assert Lease(store, 'job', duration=timedelta(hours=1)).try_acquire()\n"
        "print('held', flush=True)\n"
        "time.sleep(60)\n"
    )
    # database_url names the test's own database (on PostgreSQL, its own schema).
    child = subprocess.Popen(
        [sys.executable, "-c", script, database_url], stdout=subprocess.PIPE, text=True
    )
    try:
        assert child.stdout is not None and child.stdout.readline().strip() == "held"
        assert not Lease(store, "job").try_acquire()  # alive: an hour to go
        child.send_signal(signal.SIGKILL)
        child.wait()
        assert Lease(store, "job").try_acquire()  # its pid is gone: free at once
    finally:
        child.kill()
        child.wait()


def test_the_sqlite_run_lock_is_a_lease(tmp_path: Path) -> None:
    store = Store.open(f"sqlite:///{tmp_path / 'lock.db'}")
    with run_lock(store), pytest.raises(LockHeld, match=f"pid {os.getpid()}"), run_lock(store):
        pass
    with run_lock(store):  # released
        pass
    store.engine.dispose()
