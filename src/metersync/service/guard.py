"""What every OpenMeter-compatible route shares: the bearer-token guard and the mapping of
errors to problem+json, the one reader of request bodies (`json_body`), the readers of query
values, and the merging of routes into one Starlette Route per path.

Bad input of any kind is a 4xx naming the field or the problem: bodies are read by `json_body`
alone, query values are matched in full before they are converted.
"""

from __future__ import annotations

import hmac
import json
import re
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime
from typing import Any

from sqlalchemy.exc import OperationalError
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from metersync.errors import (
    Conflict,
    DatabaseUnavailable,
    FieldProblem,
    InvalidInput,
    MetersyncError,
    NotFound,
    PreconditionFailed,
)
from metersync.logs import get_logger
from metersync.service.problems import problem

_log = get_logger("metersync.api")
Handler = Callable[[Request], Awaitable[Response]]
Guard = Callable[[Handler], Handler]
RouteSpec = tuple[str, Handler, list[str]]


class UnsupportedMediaType(MetersyncError):
    """A request body in a media type the API does not read (415)."""


def bearer_token(request: Request) -> bytes:
    """The bearer token sent, as bytes (empty when there is none). Starlette reads header
    bytes as Latin-1, so this gets back what was sent."""
    header = request.headers.get("authorization", "")
    given = header.removeprefix("Bearer ").strip() if header.startswith("Bearer ") else ""
    return given.encode("latin-1")


def guard(tokens: Callable[[], list[str]]) -> Guard:
    """The wrapper every route runs in: a bearer token from `tokens`, and errors as
    problem+json with OpenMeter's status codes."""

    def guarded(handler: Handler) -> Handler:
        async def run(request: Request) -> Response:
            sent = bearer_token(request)
            # As bytes: compare_digest refuses non-ASCII str (a TypeError, that was a 500).
            if not sent or not any(hmac.compare_digest(sent, t.encode()) for t in tokens()):
                return problem(request, 401, "Unauthorized", "a valid bearer token is required")
            try:
                return await handler(request)
            except InvalidInput as exc:
                return problem(request, 400, "Bad Request", str(exc))
            except NotFound as exc:
                return problem(request, 404, "Not Found", str(exc))
            except Conflict as exc:
                return problem(request, 409, "Conflict", str(exc))
            except PreconditionFailed as exc:
                return problem(request, 412, "Precondition Failed", str(exc))
            except UnsupportedMediaType as exc:
                return problem(request, 415, "Unsupported Media Type", str(exc))
            except DatabaseUnavailable as exc:
                return problem(request, 503, "Service Unavailable", str(exc))
            except OperationalError as exc:  # unreachable, or (SQLite) locked for too long
                _log.warning("api.database_unavailable", error=str(exc.orig or exc))
                return problem(request, 503, "Service Unavailable", "the database is unavailable")
            except MetersyncError as exc:
                _log.error("api.error", error=str(exc), kind=type(exc).__name__)
                return problem(request, 500, "Internal Server Error", str(exc))
            # Anything else is answered by RequestContext (service/problems.py): a logged 500.

        return run

    return guarded


def refused(reason: str) -> Handler:
    """A write refused because the records come from an upstream (409 naming it)."""

    async def refuse(request: Request) -> Response:
        return problem(request, 409, "Conflict", reason)

    return refuse


def writes_refused(routes: list[RouteSpec], upstream: str | None) -> list[RouteSpec]:
    """With an upstream (OpenMeter) as the source, only the GETs serve: what is written here
    would be overwritten, or contradicted, by the next pull."""
    if upstream is None:
        return routes
    return [
        (path, refused(upstream) if methods != ["GET"] else handler, methods)
        for path, handler, methods in routes
    ]


def merge(routes: list[RouteSpec], guarded: Guard) -> list[Route]:
    """One Route per path, dispatching on the method (Starlette matches the first path)."""
    by_path: dict[str, dict[str, Handler]] = {}
    for path, handler, methods in routes:
        for method in methods:
            by_path.setdefault(path, {})[method] = guarded(handler)

    def dispatch(handlers: dict[str, Handler]) -> Handler:
        async def run(request: Request) -> Response:
            return await handlers[request.method](request)

        return run

    return [Route(path, dispatch(h), methods=list(h)) for path, h in by_path.items()]


# -- bodies ----------------------------------------------------------------------------------


def _is_json_media_type(media_type: str) -> bool:
    # application/json, and its structured-syntax suffix: OpenMeter's
    # application/cloudevents+json and application/cloudevents-batch+json.
    return media_type == "application/json" or (
        media_type.startswith("application/") and media_type.endswith("+json")
    )


def _reject_constant(name: str) -> Any:
    raise ValueError(f"{name} is not a JSON value")


async def json_body(request: Request) -> Any:
    """The request's body as JSON: the one place the API reads a body, so that every malformed
    one is a 4xx naming what is wrong. JSON is UTF-8 (RFC 8259): the bytes are decoded as such
    and nothing else (json.loads alone would guess UTF-16 or UTF-32, and its UnicodeDecodeError
    on bad bytes is not a JSONDecodeError: that was a 500)."""
    content_type = request.headers.get("content-type")
    if content_type is not None:  # a body without a Content-Type is read as JSON
        media_type, _, parameters = content_type.partition(";")
        media_type = media_type.strip().lower()
        if not _is_json_media_type(media_type):
            raise UnsupportedMediaType(
                f"Content-Type {media_type or content_type!r} is not JSON: send application/json"
            )
        for parameter in parameters.split(";"):
            name, _, value = parameter.partition("=")
            charset = value.strip().strip('"').lower()
            if name.strip().lower() == "charset" and charset not in ("utf-8", "utf8"):
                raise UnsupportedMediaType(f"charset {charset!r}: JSON bodies are UTF-8")
    raw = await request.body()
    if not raw.strip():
        raise InvalidInput([FieldProblem("body", "a JSON body is required")])
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise InvalidInput(
            [FieldProblem("body", f"not valid UTF-8 ({exc.reason} at byte {exc.start})")]
        ) from None
    try:
        return json.loads(text, parse_constant=_reject_constant)
    except RecursionError:
        raise InvalidInput([FieldProblem("body", "not JSON: nested too deeply")]) from None
    except ValueError as exc:  # JSONDecodeError, NaN or Infinity, an integer too long to read
        raise InvalidInput([FieldProblem("body", f"not JSON: {exc}")]) from None


async def json_object(request: Request, what: str) -> dict[str, Any]:
    """The body as one JSON object (`what` names it in the problem)."""
    body = await json_body(request)
    if not isinstance(body, dict):
        raise InvalidInput([FieldProblem("body", f"must be {what} object")])
    return body


# -- query values ----------------------------------------------------------------------------
# Query parameters arrive as any text at all: each is matched in full before it is converted
# (str.isdigit() says yes to "²", which int() refuses; int() refuses 5,000 digits; a date near
# year 1 or 9999 is readable but its window, or the day before it, is not).
_WHOLE = re.compile(r"[0-9]{1,9}")  # at most 999,999,999: pages and sizes have no use for more
_RFC3339 = re.compile(
    r"[0-9]{4}-[0-9]{2}-[0-9]{2}[Tt][0-9]{2}:[0-9]{2}:[0-9]{2}"  # date and time
    r"(?:\.[0-9]{1,9})?"  # fraction
    r"(?:[Zz]|[+-][0-9]{2}:[0-9]{2})"  # offset (a "+" must be sent as %2B in a query)
)
EARLIEST = datetime(1970, 1, 1, tzinfo=UTC)  # no usage is older (ingest refuses it)
LATEST = datetime(9999, 1, 1, tzinfo=UTC)  # leaves room for a window and a day either side
# Identifiers (keys, ids) in a path or a query: printable text of a sane length. A NUL byte is
# refused by PostgreSQL's driver (that was a 500), and no key or id is longer.
_IDENTIFIER = re.compile(r"[^\x00-\x1f\x7f]{1,256}")


def shown(raw: str) -> str:
    """A query value quoted in a problem's detail, cut short when it is long."""
    return repr(raw) if len(raw) <= 40 else repr(raw[:40]) + "…"


def positive(request: Request, name: str, default: int, *, at_least: int = 1) -> int:
    raw = request.query_params.get(name)
    if raw is None:
        return default
    if not _WHOLE.fullmatch(raw) or int(raw) < at_least:
        raise InvalidInput(
            [FieldProblem(name, f"a whole number from {at_least} to 999999999, got {shown(raw)}")]
        )
    return int(raw)


def moment(request: Request, name: str) -> datetime | None:
    """An RFC 3339 time from the query, as an aware datetime in UTC (None when absent)."""
    raw = request.query_params.get(name)
    if raw is None:
        return None
    if not _RFC3339.fullmatch(raw):
        raise InvalidInput(
            [FieldProblem(name, f"{shown(raw)} is not an RFC 3339 time (2024-01-31T00:00:00Z)")]
        )
    # fromisoformat reads at most 6 fractional digits; RFC 3339 allows more.
    trimmed = re.sub(r"(\.[0-9]{6})[0-9]+", r"\1", raw.upper().replace("Z", "+00:00"))
    try:
        parsed = datetime.fromisoformat(trimmed)
        if not EARLIEST <= parsed < LATEST:
            raise ValueError("out of range")
    except (ValueError, OverflowError):
        raise InvalidInput(
            [FieldProblem(name, f"{shown(raw)} is not a time between 1970 and 9999")]
        ) from None
    return parsed.astimezone(UTC)


def epoch(request: Request, name: str, default: int) -> int:
    """An RFC 3339 time from the query, as unix seconds."""
    found = moment(request, name)
    return default if found is None else int(found.timestamp())


def flag(request: Request, name: str, default: bool = False) -> bool:
    raw = request.query_params.get(name)
    if raw is None:
        return default
    if raw.lower() not in ("true", "false"):
        raise InvalidInput([FieldProblem(name, f"true or false, got {shown(raw)}")])
    return raw.lower() == "true"


def choice(request: Request, name: str, allowed: tuple[str, ...], default: str) -> str:
    raw = request.query_params.get(name)
    if raw is None:
        return default
    if raw not in allowed:
        raise InvalidInput([FieldProblem(name, f"one of {', '.join(allowed)}, got {shown(raw)}")])
    return raw


def identifier(raw: str, name: str) -> str:
    """A key or id from the path or the query: printable, 1 to 256 characters."""
    if not _IDENTIFIER.fullmatch(raw):
        raise InvalidInput(
            [FieldProblem(name, f"{shown(raw)} is not a key or id (1 to 256 printable characters)")]
        )
    return raw


def identifiers(request: Request, name: str) -> list[str]:
    """A list from the query, repeated (`?a=x&a=y`: OpenMeter's form style, exploded)."""
    return [identifier(v, name) for v in request.query_params.getlist(name)]
