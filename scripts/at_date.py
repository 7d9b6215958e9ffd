"""Run a command with the wall clock of its whole Python process tree moved to another instant.

    .venv/bin/python scripts/at_date.py '2027-01-01 00:20:00' .venv/bin/pytest -n auto

Proves the suite depends on no calendar date: every Python process the command starts
(pytest's workers, the CLI subprocesses, the service, the emulators) sees the same moved wall
clock, which keeps running from the given instant (UTC). Monotonic clocks stay real: they have
no calendar meaning.

How: every such process imports scripts/at_date_site/sitecustomize.py (it is put on their
PYTHONPATH), which moves its clock with time-machine by one offset fixed here, so a process
started ten minutes into the run is ten minutes past the instant, as its parent is. A process
started with an environment of its own (no PYTHONPATH) runs on the real clock.

Why not libfaketime: Debian's 0.9.10 (`faketime`) fakes the monotonic clock but not
sem_clockwait, so on Python 3.11 every timed wait (Event.wait, Lock.acquire, queue.get with a
timeout) never returns; told to leave the monotonic clock alone, its clock_nanosleep wrapper
turns time.sleep into EINVAL. The build in the `libfaketime` package behaves the same.
"""

from __future__ import annotations

import os
import sys
import time
from datetime import UTC, datetime
from pathlib import Path

SITE = Path(__file__).resolve().parent / "at_date_site"


def main(argv: list[str]) -> int:
    if len(argv) < 2:
        print((__doc__ or "").strip(), file=sys.stderr)
        return 2
    instant, command = argv[0], argv[1:]
    try:
        moment = datetime.strptime(instant, "%Y-%m-%d %H:%M:%S").replace(tzinfo=UTC)
    except ValueError:
        print(f"instant: {instant!r} is not 'YYYY-MM-DD HH:MM:SS' (UTC)", file=sys.stderr)
        return 2
    path = os.pathsep.join(p for p in (str(SITE), os.environ.get("PYTHONPATH")) if p)
    env = {
        **os.environ,
        "PYTHONPATH": path,
        "AT_DATE_OFFSET_S": repr(moment.timestamp() - time.time()),
    }
    os.execvpe(command[0], command, env)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
