"""Stripe's error responses: `{"error": {"type", "code", "message", "param"}}` with a status."""

from __future__ import annotations

from typing import Any


class StripeApiError(Exception):
    """Raised by a handler; the pipeline turns it into Stripe's error body and status."""

    def __init__(
        self,
        status: int,
        message: str,
        *,
        type: str = "invalid_request_error",  # Stripe's own field name
        code: str | None = None,
        param: str | None = None,
        should_retry: bool | None = None,
        stored: bool | None = None,
    ) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.type = type
        self.code = code
        self.param = param
        self.should_retry = should_retry
        # Stripe keeps no idempotent result for a request that failed validation (400) or was
        # rate limited; one that ran and failed (404 on a missing object, say) is kept.
        self.stored = stored if stored is not None else status not in (400, 401, 409, 429)

    def body(self) -> dict[str, Any]:
        error: dict[str, Any] = {"type": self.type, "message": self.message}
        if self.code is not None:
            error["code"] = self.code
        if self.param is not None:
            error["param"] = self.param
        return {"error": error}


def invalid(message: str, *, param: str | None = None, code: str | None = None) -> StripeApiError:
    return StripeApiError(400, message, param=param, code=code or "parameter_invalid")


def missing_param(param: str) -> StripeApiError:
    return StripeApiError(
        400, f"Missing required param: {param}.", param=param, code="parameter_missing"
    )


def unknown_param(param: str) -> StripeApiError:
    return StripeApiError(
        400, f"Received unknown parameter: {param}", param=param, code="parameter_unknown"
    )


def no_such(kind: str, object_id: str, *, param: str = "id") -> StripeApiError:
    return StripeApiError(
        404, f"No such {kind}: '{object_id}'", param=param, code="resource_missing"
    )
