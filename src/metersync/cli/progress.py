"""A progress bar for the long commands (reconcile, usage verify): drawn on stderr when it is
a terminal. Elsewhere (a pipe, a cron job's log) the command either logs a line every few
seconds or stays quiet."""

from __future__ import annotations

import sys
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # the commands import what they use when they run: see metersync.cli
    from rich.progress import Progress

_LOG_EVERY_S = 5


class ProgressBar:
    """`with ProgressBar("applying", quiet=as_json) as progress:` gives a `progress(done,
    total)` callback, or None when there is nothing to show: with `quiet` (JSON output), or
    off a terminal unless `log` asks for a log line every few seconds there."""

    def __init__(self, label: str, *, quiet: bool, log: bool = False) -> None:
        self.label = label
        self.quiet = quiet
        self.log = log
        self.bar: Progress | None = None
        self.task: Any = None
        self.last_log = 0.0

    def __enter__(self) -> Callable[[int, int], None] | None:
        if self.quiet:
            return None
        if sys.stderr.isatty():
            from rich.console import Console
            from rich.progress import (
                BarColumn,
                MofNCompleteColumn,
                Progress,
                TextColumn,
                TimeElapsedColumn,
            )

            self.bar = Progress(
                TextColumn(self.label),
                BarColumn(),
                MofNCompleteColumn(),
                TimeElapsedColumn(),
                # On stderr, the terminal that was checked: stdout may be a pipe or a file
                # taking the command's report.
                console=Console(stderr=True),
                transient=True,
            )
            self.bar.start()
            self.task = self.bar.add_task(self.label, total=None)
        elif not self.log:
            return None
        return self.update

    def update(self, done: int, total: int) -> None:
        if self.bar is not None:
            self.bar.update(self.task, completed=done, total=total)
        elif time.monotonic() - self.last_log > _LOG_EVERY_S or done == total:
            from metersync.logs import get_logger

            self.last_log = time.monotonic()
            get_logger("metersync.cli").info("progress", done=done, total=total)

    def __exit__(self, *exc: object) -> None:
        if self.bar is not None:
            self.bar.stop()
