"""Value shapes that several sections share: http(s) base URLs, secrets kept in files,
durations such as 15m or 1h, and crontab expressions."""

from __future__ import annotations

import re
from pathlib import Path
from urllib.parse import urlsplit

from metersync.errors import ConfigError

_DURATION = re.compile(r"^(\d+)\s*([smhd])$")
_UNIT_S = {"s": 1, "m": 60, "h": 3600, "d": 86400}


def http_url(value: str) -> str:
    """An http(s) base URL without a trailing slash, or a ValueError naming the problem."""
    parts = urlsplit(value)
    if parts.scheme not in ("http", "https") or not parts.netloc:
        raise ValueError(f"must be an http:// or https:// URL, got {value!r}")
    return value.rstrip("/")


def read_secret_file(path: Path, field: str) -> str | None:
    """A secret kept in a file (a mounted Kubernetes or Docker secret): its stripped text, or
    None when the file is empty. An unreadable file is a ConfigError naming the setting."""
    try:
        return path.read_text(encoding="utf-8").strip() or None
    except OSError as exc:
        raise ConfigError(f"{field}: cannot read {str(path)!r}: {exc.strerror}") from None


def duration_seconds(value: str) -> int:
    match = _DURATION.match(value.strip())
    if not match:
        raise ValueError(f"{value!r} is not a duration such as 30s, 15m, 1h or 1d")
    return int(match.group(1)) * _UNIT_S[match.group(2)]


def check_crontab(value: str) -> str:
    from apscheduler.triggers.cron import CronTrigger

    try:
        CronTrigger.from_crontab(value)
    except ValueError as exc:
        raise ValueError(f"{value!r} is not a crontab expression: {exc}") from None
    return value
