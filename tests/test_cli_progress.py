"""The long commands' progress bar: drawn only when stderr is a terminal; off a terminal,
reconcile logs and verify stays quiet; nothing with --json."""

from __future__ import annotations

import io

import pytest

from metersync.cli.progress import ProgressBar


class Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_quiet_or_off_a_terminal_there_is_nothing_to_call(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("sys.stderr", io.StringIO())
    with ProgressBar("verifying", quiet=False) as progress:
        assert progress is None
    with ProgressBar("applying", quiet=True, log=True) as progress:
        assert progress is None
    with ProgressBar("applying", quiet=False, log=True) as progress:
        assert progress is not None  # reconcile logs a line every few seconds instead


def test_on_a_terminal_the_bar_counts_on_stderr(monkeypatch: pytest.MonkeyPatch) -> None:
    stderr, stdout = Terminal(), Terminal()
    monkeypatch.setattr("sys.stderr", stderr)
    monkeypatch.setattr("sys.stdout", stdout)
    bar = ProgressBar("verifying", quiet=False)
    with bar as progress:
        assert progress is not None and bar.bar is not None
        progress(3, 8)
        task = bar.bar.tasks[0]
        assert (task.completed, task.total) == (3, 8)
    assert "verifying" in stderr.getvalue() and stdout.getvalue() == ""
