"""Decoding Stripe's form-encoded nested parameters, as stripe-python writes them.

`metadata[plan]=pro&address[line1]=1 Main St&expand[0]=data.customer` becomes
`{"metadata": {"plan": "pro"}, "address": {"line1": "1 Main St"}, "expand": ["data.customer"]}`.
Values stay strings: each endpoint decides what a string means (Stripe does the same).
"""

from __future__ import annotations

import re
from typing import Any
from urllib.parse import parse_qsl

from metersync.testing._errors import invalid

_KEY = re.compile(r"^([^\[\]]+)((?:\[[^\[\]]*\])*)$")
_PART = re.compile(r"\[([^\[\]]*)\]")


def decode_form(text: str) -> dict[str, Any]:
    root: dict[str, Any] = {}
    for raw_key, value in parse_qsl(text, keep_blank_values=True, strict_parsing=False):
        match = _KEY.match(raw_key)
        if match is None:
            raise invalid(f"Invalid parameter name: {raw_key}", param=raw_key)
        path = [match.group(1), *_PART.findall(match.group(2))]
        _insert(root, path, value, raw_key)
    decoded: dict[str, Any] = _listify(root)
    return decoded


def _insert(node: dict[str, Any], path: list[str], value: str, raw_key: str) -> None:
    for part in path[:-1]:
        child = node.setdefault(part, {})
        if not isinstance(child, dict):
            raise invalid(
                f"Invalid parameter: {raw_key} mixes a value and an object", param=raw_key
            )
        node = child
    last = path[-1]
    if isinstance(node.get(last), dict):
        raise invalid(f"Invalid parameter: {raw_key} mixes a value and an object", param=raw_key)
    node[last] = value


def _listify(node: Any) -> Any:
    """Objects whose keys are 0, 1, 2 … (or empty, `a[]=x`) are arrays."""
    if not isinstance(node, dict):
        return node
    converted = {k: _listify(v) for k, v in node.items()}
    if converted and all(k.isdigit() for k in converted):
        return [converted[k] for k in sorted(converted, key=int)]
    return converted
