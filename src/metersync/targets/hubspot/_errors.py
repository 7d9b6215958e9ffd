"""HubSpot's failures: `HubSpotError`, the kind each answer is, and a batch answer's errors by
the record each names."""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

from metersync.mechanics.retry import kind_of_status
from metersync.sync.ports import ErrorKind

# HubSpot's answer for a property it does not have: 'Property "metersync_key" does not exist'
# (quotes escaped when it is nested in a JSON message).
MISSING_PROPERTY = re.compile(r'Property \\?"([A-Za-z0-9_]+)\\?" does not exist')


class HubSpotError(Exception):
    """An answer from HubSpot, for the whole request or for one record of a batch."""

    def __init__(
        self,
        kind: ErrorKind,
        message: str,
        *,
        status: int | None = None,
        category: str | None = None,
        correlation_id: str | None = None,
        throttled: bool = False,
    ) -> None:
        super().__init__(message)
        self.kind = kind
        self.status = status
        self.category = category
        self.correlation_id = correlation_id
        self.throttled = throttled


def error_kind(status: int, category: str | None) -> ErrorKind:
    if category == "OBJECT_NOT_FOUND" or status == 404:
        return ErrorKind.GONE
    if category in ("INVALID_AUTHENTICATION", "MISSING_SCOPES"):
        return ErrorKind.FATAL
    return kind_of_status(status)


def record_errors(answer: Mapping[str, Any]) -> dict[str, HubSpotError]:
    """A 207's `errors[]`, by the input each names: its objectWriteTraceId (which we set to the
    input's id or unique value; HubSpot answers a partly failed batch with 207 only when every
    input carries one, and fails the whole batch otherwise), else the ids in the context."""
    errors: dict[str, HubSpotError] = {}
    for error in answer.get("errors", []) or []:
        category = error.get("category")
        status = 404 if category == "OBJECT_NOT_FOUND" else 400
        failure = HubSpotError(
            error_kind(status, category),
            f"HubSpot {category or 'error'}: {error.get('message', '')}",
            status=status,
            category=category,
        )
        context = error.get("context") or {}
        for ident in context.get("objectWriteTraceId") or context.get("ids") or []:
            errors[str(ident)] = failure
    return errors


def no_answer(ident: str) -> HubSpotError:
    return HubSpotError(
        ErrorKind.RETRYABLE, f"HubSpot's batch answer said nothing about {ident}; retrying"
    )
