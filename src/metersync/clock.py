"""One place that reads the wall clock, so tests can freeze or move it (freezegun)."""

from __future__ import annotations

from datetime import UTC, datetime


def utcnow() -> datetime:
    return datetime.now(UTC)
