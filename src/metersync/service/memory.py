"""Keep a months-long service's resident memory flat on glibc.

Measured with tracemalloc in bench/soak.py: the Python heap of a busy service stays flat (81.1
→ 81.7 MB traced over minutes), yet its RSS kept climbing, more slowly each minute. That is
glibc's allocator, not a leak: every thread that allocates (uvicorn's thread pool, each job's
event loop and its resolver threads) may get its own malloc arena, up to eight per core, and
memory freed inside an arena's heap is not handed back to the kernel. Two standard remedies:
cap the arenas (`M_ARENA_MAX`, what `MALLOC_ARENA_MAX=2` does, set here because the process
is already running when we could read an environment variable for it), and after each job ask
glibc to return free pages (`malloc_trim`, which also releases pages inside arenas since
glibc 2.8).

On anything but glibc (musl, macOS) both are skipped: they are tuning, not correctness.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import sys

from metersync.logs import get_logger
from metersync.store import Store

_log = get_logger("metersync.service")
_M_ARENA_MAX = -8  # from glibc's malloc.h
ARENAS = 2


def _libc() -> ctypes.CDLL | None:
    if not sys.platform.startswith("linux"):
        return None
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
    except OSError:
        return None
    # musl has neither function.
    if not hasattr(libc, "mallopt") or not hasattr(libc, "malloc_trim"):
        return None
    return libc


_LIBC = _libc()


def limit_arenas() -> bool:
    """Call once, early, before the service starts its threads."""
    if _LIBC is None:
        return False
    done = bool(_LIBC.mallopt(_M_ARENA_MAX, ARENAS))
    _log.debug("malloc arenas capped", arenas=ARENAS, ok=done)
    return done


# SQLite's page caches, all connections together (the service holds several pools of them:
# the API's thread pool, the jobs, the read engine). Without a bound each connection's cache
# grows towards its own 2 MB as the database grows, which is RSS growth for hours.
SQLITE_HEAP_LIMIT = 8 * 1024 * 1024


def limit_sqlite_heap(store: Store) -> None:
    """A process-wide soft limit on SQLite's heap: past it, SQLite recycles cached pages
    instead of allocating more. Only for a SQLite store; PostgreSQL caches in its server."""
    if store.engine.dialect.name != "sqlite":
        return
    with store.engine.connect() as connection:
        connection.exec_driver_sql(f"PRAGMA soft_heap_limit={SQLITE_HEAP_LIMIT}")


def release_free_memory() -> None:
    """Hand free heap pages back to the kernel (after a job, when its garbage is gone)."""
    if _LIBC is not None:
        _LIBC.malloc_trim(0)
