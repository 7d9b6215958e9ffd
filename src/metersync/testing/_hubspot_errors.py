"""HubSpot's error bodies: `{"status": "error", "message", "category", "correlationId", …}`.

Two kinds: HubSpotError fails a whole request (the pipeline turns it into a response), and
RecordError fails one input of a batch (it becomes an entry of the 207 answer's `errors`).
"""

from __future__ import annotations

import json
import uuid
from typing import Any

# The portal the emulator pretends to be; HubSpot puts it in property validation messages.
PORTAL_ID = 12345678


def correlation_id() -> str:
    return str(uuid.uuid4())


class HubSpotError(Exception):
    """Fails the whole request with `status` and HubSpot's error body."""

    def __init__(
        self,
        status: int,
        message: str,
        *,
        category: str = "VALIDATION_ERROR",
        **extra: Any,  # context, errors, subCategory, … (HubSpot's own field names)
    ) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.category = category
        self.extra = extra

    def body(self, correlation: str) -> dict[str, Any]:
        return {
            "status": "error",
            "message": self.message,
            "correlationId": correlation,
            "category": self.category,
            **self.extra,
        }


class RateLimited(HubSpotError):
    """A 429, whose body names the policy hit (errorType and policyName, no category)."""

    def __init__(self, *, daily: bool) -> None:
        self.policy = "DAILY" if daily else "TEN_SECONDLY_ROLLING"
        message = (
            "You have reached your daily limit."
            if daily
            else "You have reached your ten_secondly_rolling limit."
        )
        super().__init__(429, message, category="RATE_LIMIT")

    def body(self, correlation: str) -> dict[str, Any]:
        return {
            "status": "error",
            "message": self.message,
            "errorType": "RATE_LIMIT",
            "correlationId": correlation,
            "policyName": self.policy,
            # The docs show no value for groupName; this one names the app's limit group.
            "groupName": f"private-app:{PORTAL_ID}:{self.policy.lower()}",
        }


def invalid_request(message: str, **extra: Any) -> HubSpotError:
    return HubSpotError(400, message, category="VALIDATION_ERROR", **extra)


def not_found(message: str, object_id: str) -> HubSpotError:
    return HubSpotError(404, message, category="OBJECT_NOT_FOUND", context={"id": [object_id]})


class RecordError(Exception):
    """Fails one input of a batch; `ids` are what HubSpot echoes in the entry's context."""

    def __init__(
        self,
        message: str,
        ids: list[str],
        *,
        category: str = "VALIDATION_ERROR",
        details: list[dict[str, Any]] | None = None,
    ) -> None:
        super().__init__(message)
        self.message = message
        self.ids = ids
        self.category = category
        self.details = details or []
        self.trace_id: str | None = None  # the input's objectWriteTraceId, echoed when given

    def entry(self) -> dict[str, Any]:
        context: dict[str, list[str]] = {"ids": self.ids}
        if self.trace_id is not None:
            context["objectWriteTraceId"] = [self.trace_id]
        entry: dict[str, Any] = {
            "status": "error",
            "category": self.category,
            "message": self.message,
            "context": context,
        }
        if self.details:
            entry["errors"] = self.details
        return entry


def property_value_error(ids: list[str], problems: list[dict[str, Any]]) -> RecordError:
    """HubSpot's "Property values were not valid" error, `problems` being its validation results
    (`{"isValid": false, "message", "error": "INVALID_INTEGER", "name", …}`), which it serialises
    into the message as JSON and repeats, per property, in `errors`."""
    results = [
        {**p, "localizedErrorMessage": p["message"], "portalId": PORTAL_ID} for p in problems
    ]
    message = "Property values were not valid: " + json.dumps(results, separators=(",", ":"))
    details = [
        {"message": p["message"], "code": p["error"], "context": {"propertyName": [p["name"]]}}
        for p in problems
    ]
    return RecordError(message, ids, details=details)


def validation_problem(name: str, code: str, message: str, value: str | None) -> dict[str, Any]:
    problem: dict[str, Any] = {"isValid": False, "message": message, "error": code, "name": name}
    if value is not None:
        problem["propertyValue"] = value
    return problem
