"""The route table: which handler serves which method and path, its name, its rate-limit
class, and how it authenticates. Handlers take a Call and return (status, JSON body)."""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from metersync.testing._state import EmulatorState


@dataclass
class Call:
    """One API call as a handler sees it."""

    state: EmulatorState
    params: dict[str, Any]
    path_params: dict[str, str]
    api_key: str
    request_id: str
    idempotency_key: str | None
    config: Any = None  # EmulatorConfig; typed loosely to avoid an import cycle
    emitted: list[dict[str, Any]] = field(default_factory=list)  # webhook events to send


HandlerResult = tuple[int, dict[str, Any]]
HandlerFn = Callable[[Call], HandlerResult]


@dataclass(frozen=True)
class Route:
    method: str
    pattern: re.Pattern[str]
    name: str  # e.g. customers.create: what fault rules and stats refer to
    handler: HandlerFn
    endpoint_class: str = "default"
    auth: str = "secret_key"  # or "session_token" (v2 meter event stream)
    body: str = "form"  # or "json" (v2)
    mutates: bool = False


def route(
    method: str,
    path: str,
    name: str,
    handler: HandlerFn,
    **options: Any,
) -> Route:
    # /v1/customers/{id} → a regex with named groups
    regex = "^" + re.sub(r"\{(\w+)\}", r"(?P<\1>[^/]+)", path) + "$"
    return Route(method, re.compile(regex), name, handler, **options)


def match(routes: list[Route], method: str, path: str) -> tuple[Route, dict[str, str]] | None:
    for candidate in routes:
        if candidate.method != method:
            continue
        found = candidate.pattern.match(path)
        if found is not None:
            return candidate, found.groupdict()
    return None
