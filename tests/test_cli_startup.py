"""`metersync --version` and `metersync --help` start without the commands' dependencies.

Cron jobs and scripts start the CLI once per call, so its start-up must not import the settings
(pydantic), the database (SQLAlchemy, the store), the Stripe SDK, the service's web stack or
the emulators: each command imports those when it runs. These tests check which modules a fresh
interpreter has loaded after --version or --help; how long it takes is bench/startup.py's job
(tests never assert wall-clock figures).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any, get_args

import pytest

import metersync.cli
from metersync.settings import CONFIG_ENV, LogFormat, LogLevel

# Packages and metersync modules only the commands may import (with their submodules).
HEAVY = (
    "sqlalchemy",
    "alembic",
    "psycopg",
    "stripe",
    "httpx",
    "aiohttp",
    "uvicorn",
    "starlette",
    "pydantic",
    "pydantic_settings",
    "structlog",
    "apscheduler",
    "asyncio",
    "metersync.settings",
    "metersync.logs",
    "metersync.catalog",
    "metersync.store",
    "metersync.sync",
    "metersync.targets",
    "metersync.usage",
    "metersync.sources",
    "metersync.service",
    "metersync.testing",
)

# Runs the installed CLI's entry point in a fresh interpreter, then writes the exit code and
# every module loaded to the file named by its first argument.
PROBE = """
import json, sys
report, args = sys.argv[1], sys.argv[2:]
sys.argv = ["metersync", *args]
from metersync.cli import main
code = 0
try:
    main()
except SystemExit as exc:
    code = exc.code or 0
with open(report, "w") as out:
    json.dump({"code": code, "modules": sorted(sys.modules)}, out)
"""


def start(tmp_path: Path, *args: str) -> tuple[dict[str, Any], str]:
    report = tmp_path / "modules.json"
    env = {k: v for k, v in os.environ.items() if not k.startswith("METERSYNC_")}
    done = subprocess.run(
        [sys.executable, "-c", PROBE, str(report), *args],
        env=env | {"COLUMNS": "100", "NO_COLOR": "1"},
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    result: dict[str, Any] = json.loads(report.read_text())
    assert result["code"] == 0, done.stderr
    return result, done.stdout


def heavy(modules: list[str], also: tuple[str, ...] = ()) -> list[str]:
    """Which of HEAVY (and `also`) were loaded, themselves or a submodule."""
    return [n for n in (*HEAVY, *also) if any(m == n or m.startswith(n + ".") for m in modules)]


def test_version_imports_nothing_heavy(tmp_path: Path) -> None:
    result, out = start(tmp_path, "--version")
    assert out.startswith("metersync ")
    # --version prints one line: not even rich, which only help and tables use.
    assert heavy(result["modules"], also=("rich",)) == []


@pytest.mark.parametrize("option", ["--help", "-h"])
def test_help_imports_nothing_heavy_and_lists_everything(tmp_path: Path, option: str) -> None:
    result, out = start(tmp_path, option)
    assert heavy(result["modules"]) == []
    for command in metersync.cli.app.registered_commands:
        assert f" {command.name} " in out
    for group in metersync.cli.app.registered_groups:
        assert f" {group.name} " in out
    for root_option in ("--config", "--log-level", "--log-format", "--version", "--help"):
        assert root_option in out


def test_root_options_spell_out_the_settings_choices() -> None:
    # The root command names these without importing metersync.settings; they must agree.
    assert metersync.cli.CONFIG_ENV == CONFIG_ENV
    assert get_args(metersync.cli.LogLevelName) == tuple(level.value for level in LogLevel)
    assert get_args(metersync.cli.LogFormatName) == tuple(fmt.value for fmt in LogFormat)
