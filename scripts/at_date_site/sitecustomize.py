"""Imported by every Python process that scripts/at_date.py starts, directly or not (it is on
their PYTHONPATH): moves this process's wall clock by the offset the run was started with, so
the whole process tree shares one moved clock that keeps running. Monotonic clocks stay real."""

import os

_offset = os.environ.get("AT_DATE_OFFSET_S")
if _offset:
    import time

    import time_machine

    time_machine.travel(time.time() + float(_offset), tick=True).start()
