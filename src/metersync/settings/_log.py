"""The [log] section: level and format, case-insensitive (the values are metersync.logs')."""

from __future__ import annotations

from typing import Any

from pydantic import field_validator

from metersync.logs import LogFormat, LogLevel
from metersync.settings._section import Section


class LogSettings(Section):
    level: LogLevel = LogLevel.INFO
    format: LogFormat = LogFormat.AUTO

    @field_validator("level", "format", mode="before")
    @classmethod
    def _lowercase(cls, value: Any) -> Any:
        return value.lower() if isinstance(value, str) else value
