"""Why an event is rejected: the exception that carries a reason out of the parser, and how the
values a reason quotes are shown in it."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import msgspec

encode = msgspec.json.Encoder().encode


class Rejected(Exception):
    """An event refused: the reason, and the event's id once it is known."""

    def __init__(self, reason: str, event_id: str | None = None) -> None:
        super().__init__(reason)
        self.reason = reason
        self.event_id = event_id


def encodable(value: str) -> bool:
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def kind_of(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, (int, float)):
        return "a number"
    if isinstance(value, str):
        return "a string"
    if isinstance(value, (list, tuple)):
        return "an array"
    if isinstance(value, Mapping):
        return "an object"
    return type(value).__name__


def show(value: Any) -> str:
    """A value as it would appear in the JSON, shortened: "abc", -5, true, null, an object."""
    if isinstance(value, str):
        return quote(value, 60)
    if value is None or isinstance(value, (bool, int, float)):
        text = repr(value) if isinstance(value, float) else encode(value).decode()
        return text if len(text) <= 60 else text[:59] + "…"
    return kind_of(value)


def quote(value: str, limit: int) -> str:
    shown = value if len(value) <= limit else value[: limit - 1] + "…"
    return encode(shown).decode("utf-8") if encodable(shown) else repr(shown)
