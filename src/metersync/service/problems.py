"""problem+json answers (RFC 9457, OpenMeter's error shape) and the id of each request.

Every HTTP request gets an id: the caller's (or its proxy's) `X-Request-Id` when that is a
plain token, otherwise a new ULID. The id is echoed in the `X-Request-Id` response header, bound
to the log lines written while the request is served, and names the problem's `instance` as
`urn:request:<id>`, as OpenMeter does (the spec wants a URI there; a bare path is not one).

`RequestContext` is also the last line of defence: an exception nothing else handled becomes a
logged 500 problem+json (never Starlette's text/plain), and `http_problem` turns Starlette's own
404 and 405 into problem+json.
"""

from __future__ import annotations

import re
from http import HTTPStatus

import structlog
from starlette.datastructures import Headers, MutableHeaders
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.types import ASGIApp, Message, Receive, Scope, Send
from ulid import ULID

from metersync.logs import get_logger

PROBLEM = "application/problem+json"
REQUEST_ID_HEADER = "x-request-id"
# A caller's id is kept only when it can stand in a URN as it is (RFC 8141's unreserved subset).
_GIVEN_ID = re.compile(r"[A-Za-z0-9._~-]{1,128}")

log = get_logger("metersync.http")


def request_id(request: Request) -> str:
    """The request's id (set by RequestContext; a new one when the app runs without it)."""
    current = request.scope.setdefault("state", {})
    if "request_id" not in current:
        current["request_id"] = str(ULID())
    rid: str = current["request_id"]
    return rid


def problem(request: Request, status: int, title: str | None, detail: str) -> JSONResponse:
    return JSONResponse(
        {
            "type": "about:blank",
            "title": title or HTTPStatus(status).phrase,
            "status": status,
            "detail": detail,
            "instance": f"urn:request:{request_id(request)}",
        },
        status_code=status,
        media_type=PROBLEM,
    )


async def http_problem(request: Request, exc: Exception) -> Response:
    """Starlette's HTTPException (no route: 404, wrong method: 405) as problem+json."""
    assert isinstance(exc, HTTPException)
    if exc.status_code in (204, 304):  # no body allowed
        return Response(status_code=exc.status_code, headers=exc.headers)
    detail = exc.detail
    if exc.status_code == 404:
        detail = f"no such path: {request.url.path}"
    elif exc.status_code == 405:
        allowed = (exc.headers or {}).get("Allow", "")
        detail = f"{request.method} is not allowed here (allowed: {allowed})"
    response = problem(request, exc.status_code, None, detail)
    response.headers.update(exc.headers or {})
    return response


class RequestContext:
    """ASGI middleware: the request id (state, response header, log context) and the catch-all
    that answers an unhandled exception with a 500 problem+json."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        given = Headers(scope=scope).get(REQUEST_ID_HEADER, "")
        rid = given if _GIVEN_ID.fullmatch(given) else str(ULID())
        scope.setdefault("state", {})["request_id"] = rid
        started = False

        async def send_with_id(message: Message) -> None:
            nonlocal started
            if message["type"] == "http.response.start":
                started = True
                MutableHeaders(scope=message)[REQUEST_ID_HEADER] = rid
            await send(message)

        with structlog.contextvars.bound_contextvars(request_id=rid):
            try:
                await self.app(scope, receive, send_with_id)
            except Exception:
                log.exception(
                    "http.unhandled_error", method=scope.get("method"), path=scope.get("path")
                )
                if started:  # too late for a problem: the client sees the connection drop
                    raise
                answer = problem(
                    Request(scope),
                    500,
                    "Internal Server Error",
                    f"unexpected error; the service log has the details (request id {rid})",
                )
                await answer(scope, receive, send_with_id)
