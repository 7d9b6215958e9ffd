"""Reading a document: the text of a file, framed as a JSON array, NDJSON or one object, and
JSON errors placed by line and column."""

from __future__ import annotations

import re
from collections.abc import Iterator
from typing import Any

import msgspec

from metersync.errors import InvalidInput
from metersync.usage.ingest._reasons import Rejected

# What a position counts: NDJSON lines (from 1), or items of an array (from 0).
LINE = "line"
INDEX = "index"

_decode = msgspec.json.decode


def text_of(content: bytes | str) -> str:
    if isinstance(content, str):
        return content.removeprefix("\ufeff")
    try:
        # utf-8-sig: a byte-order mark, as some editors on Windows write, is not part of the JSON.
        return content.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        raise InvalidInput(
            [], record=f"the input is not UTF-8 text ({exc.reason} at byte {exc.start})"
        ) from None


def read_document(text: str) -> tuple[str, Iterator[tuple[int, str | msgspec.Raw]]]:
    """What positions count, and (position, the event's JSON text) for each event.

    Events are decoded as their batch comes up, so a whole file is never held as Python
    objects. Raises InvalidInput when the document as a whole is unusable.
    """
    start = len(text) - len(text.lstrip())
    if start == len(text):
        raise InvalidInput([], record="the input holds no events")
    if text[start] == "[":
        return INDEX, _array_items(text)
    try:
        _decode(text)
    except msgspec.DecodeError as exc:
        first_line = text[start:].split("\n", 1)[0].rstrip()
        if first_line.endswith(("{", "[")):
            # A pretty-printed object: read line by line, every line would be rejected.
            raise InvalidInput([], record=_json_error(exc, text, whole_document=True)) from None
        return LINE, _ndjson_lines(text)
    return LINE, iter([(text.count("\n", 0, start) + 1, text)])


def _array_items(text: str) -> Iterator[tuple[int, msgspec.Raw]]:
    try:
        # Raw slices, not dicts: each element is decoded when its batch comes up.
        items = _decode(text, type=list[msgspec.Raw])
    except msgspec.DecodeError as exc:
        raise InvalidInput([], record=_json_error(exc, text, whole_document=True)) from None
    return enumerate(items)


def _ndjson_lines(text: str) -> Iterator[tuple[int, str]]:
    # Split on "\n" only: str.splitlines() would also split on U+2028 and other characters
    # that JSON allows unescaped inside strings.
    for number, line in enumerate(text.split("\n"), start=1):
        if line and not line.isspace():
            yield number, line


def decode_json(item: str | msgspec.Raw) -> Any:
    try:
        return _decode(item)
    except msgspec.DecodeError as exc:
        # An array's items parsed as JSON already (a number too large can still fail here).
        text = item if isinstance(item, str) else None
        raise Rejected(_json_error(exc, text, whole_document=False)) from None


_AT_BYTE = re.compile(r" \(byte (\d+)\)$")


def _json_error(exc: msgspec.DecodeError, text: str | None, *, whole_document: bool) -> str:
    """msgspec's message, placed as people count: by line and column, not by byte."""
    message = str(exc)
    if message == "Input data was truncated":
        # msgspec also says this of an invalid escape such as a lone surrogate "\ud800".
        return "not valid JSON: it ends early (something is not closed), or holds a bad escape"
    message = message.removeprefix("JSON is malformed: ")
    match = _AT_BYTE.search(message)
    if match is None or text is None:
        return f"not valid JSON: {message if match is None else message[: match.start()]}"
    # msgspec counts bytes of the UTF-8 encoding from 0; the column is in characters, from 1.
    before = text.encode("utf-8")[: int(match.group(1))].decode("utf-8", "ignore")
    column = len(before) - (before.rfind("\n") + 1) + 1
    line = before.count("\n") + 1
    where = f"line {line} column {column}" if whole_document else f"column {column}"
    return f"not valid JSON at {where}: {message[: match.start()]}"
