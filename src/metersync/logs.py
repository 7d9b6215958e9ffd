"""Logging: structlog for our own events, the standard library's records routed through it.

Every line, ours or a library's (SQLAlchemy, Alembic, httpx), passes the same processor chain,
and `redact_secrets` sits just before the renderer so nothing that reaches a log line can carry
a Stripe key, a webhook secret, a bearer token or a database password.
"""

from __future__ import annotations

import logging
import re
import sys
from collections.abc import Mapping
from enum import StrEnum
from typing import Any, TextIO

import structlog
from structlog.types import EventDict, Processor, WrappedLogger

REDACTED = "[REDACTED]"


class LogLevel(StrEnum):
    DEBUG = "debug"
    INFO = "info"
    WARNING = "warning"
    ERROR = "error"


class LogFormat(StrEnum):
    AUTO = "auto"
    JSON = "json"
    CONSOLE = "console"


# What a secret looks like wherever it appears in text: keep the prefix so a reader can still
# tell a test key from a live one, drop everything that would let someone use it.
_SECRET_PATTERNS: tuple[tuple[re.Pattern[str], str], ...] = (
    (re.compile(r"\b((?:sk|rk|pk)_(?:live|test)_)[A-Za-z0-9]+"), rf"\g<1>{REDACTED}"),
    (re.compile(r"\b(whsec_)[A-Za-z0-9+/=]+"), rf"\g<1>{REDACTED}"),
    # HubSpot private-app access tokens: pat-<region>-<uuid>.
    (re.compile(r"\b(pat-[a-z0-9]+-)[A-Za-z0-9\-]+"), rf"\g<1>{REDACTED}"),
    (re.compile(r"(?i)\b(bearer\s+)[A-Za-z0-9\-._~+/]+=*"), rf"\g<1>{REDACTED}"),
    # scheme://user:password@host: the password is the part between ':' and the last '@'
    # before the host, and may itself contain ':' or '@' when it was never URL-encoded.
    # A password SQLAlchemy already masked as *** is left as it is.
    (
        re.compile(r"([a-zA-Z][a-zA-Z0-9+.\-]*://[^\s:/@]*:)(?!\*\*\*@)[^\s/]*(@)"),
        rf"\g<1>{REDACTED}\g<2>",
    ),
)

# Keys whose string values are secret whatever they look like. Anchored at the end of the key
# so that usage figures such as `input_tokens` or `secret_count` stay readable.
_SECRET_KEY = re.compile(
    r"(?i)(?:^|[_\-])(?:password|passwd|secret|api_?key|token|authorization|credentials?|cookie)$"
)


def redact_text(text: str) -> str:
    for pattern, replacement in _SECRET_PATTERNS:
        text = pattern.sub(replacement, text)
    return text


def _redact(value: Any, key: str | None = None) -> Any:
    if key is not None and isinstance(value, str) and value and _SECRET_KEY.search(key):
        return REDACTED
    if isinstance(value, str):
        return redact_text(value)
    if isinstance(value, Mapping):
        return {k: _redact(v, str(k)) for k, v in value.items()}
    if isinstance(value, list | tuple | set | frozenset):
        return [_redact(v) for v in value]
    if isinstance(value, int | float | bool) or value is None:
        return value
    # Anything else (exceptions, URLs, SecretStr, models) is logged as its text, so redact that.
    return redact_text(str(value))


def redact_secrets(_: WrappedLogger, __: str, event_dict: EventDict) -> EventDict:
    """structlog processor: scrub secrets from every value of the event, however deep."""
    # The message itself ("event") is scrubbed as text, never blanked for its key's name.
    return {k: _redact(v, k if k != "event" else None) for k, v in event_dict.items()}


def _drop_color_message(_: WrappedLogger, __: str, event_dict: EventDict) -> EventDict:
    # uvicorn and others add a copy of the message with ANSI codes for their own formatter.
    event_dict.pop("color_message", None)
    return event_dict


def _shared_processors() -> list[Processor]:
    return [
        structlog.contextvars.merge_contextvars,
        structlog.stdlib.add_log_level,
        structlog.stdlib.add_logger_name,
        structlog.processors.TimeStamper(fmt="iso", utc=True),
        _drop_color_message,
        structlog.processors.StackInfoRenderer(),
        # Render tracebacks to text *before* redaction, so a secret in an exception message or
        # a local variable's repr is scrubbed too.
        structlog.processors.format_exc_info,
        redact_secrets,
    ]


def configure_logging(
    level: LogLevel = LogLevel.INFO,
    fmt: LogFormat = LogFormat.AUTO,
    stream: TextIO | None = None,
) -> None:
    """Set up structlog and the standard library once per process (idempotent)."""
    out = stream if stream is not None else sys.stderr
    use_json = fmt is LogFormat.JSON or (fmt is LogFormat.AUTO and not _isatty(out))
    renderer: Processor = (
        structlog.processors.JSONRenderer(sort_keys=False)
        if use_json
        else structlog.dev.ConsoleRenderer(colors=_isatty(out))
    )
    shared = _shared_processors()

    handler: logging.Handler = (
        logging.StreamHandler(stream) if stream is not None else _CurrentStderrHandler()
    )
    handler.setFormatter(
        structlog.stdlib.ProcessorFormatter(
            foreign_pre_chain=shared,
            processors=[structlog.stdlib.ProcessorFormatter.remove_processors_meta, renderer],
        )
    )
    root = logging.getLogger()
    for old in list(root.handlers):
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(level.value.upper())
    # SQLAlchemy repeats every statement and Alembic its context set-up at INFO, on every
    # command (and its plugin set-up when it is imported after this, as the CLI's commands
    # import it), and APScheduler every job start and end; keep them for --log-level debug.
    chatty_loggers = (
        "sqlalchemy.engine",
        "alembic.runtime.migration",
        "alembic.runtime.plugins",
        "stripe",
        "httpx",
        "apscheduler",
    )
    for chatty in chatty_loggers:
        logging.getLogger(chatty).setLevel(
            logging.DEBUG if level is LogLevel.DEBUG else logging.WARNING
        )

    structlog.configure(
        processors=[*shared, structlog.stdlib.ProcessorFormatter.wrap_for_formatter],
        logger_factory=structlog.stdlib.LoggerFactory(),
        wrapper_class=structlog.stdlib.BoundLogger,
        cache_logger_on_first_use=False,
    )


class _CurrentStderrHandler(logging.StreamHandler[TextIO]):
    """Writes to whatever sys.stderr is at the time of the write (test runners swap it)."""

    def __init__(self) -> None:
        super().__init__()

    @property
    def stream(self) -> TextIO:
        return sys.stderr

    @stream.setter
    def stream(self, _: TextIO) -> None:
        pass


def get_logger(name: str | None = None, **initial: Any) -> structlog.stdlib.BoundLogger:
    logger: structlog.stdlib.BoundLogger = structlog.stdlib.get_logger(name)
    return logger.bind(**initial) if initial else logger


def bind_context(**values: Any) -> None:
    """Attach values (run id, target, …) to every log line of this thread or task."""
    structlog.contextvars.bind_contextvars(**values)


def _isatty(stream: TextIO) -> bool:
    isatty = getattr(stream, "isatty", None)
    return bool(isatty and isatty())


__all__ = [
    "REDACTED",
    "LogFormat",
    "LogLevel",
    "bind_context",
    "configure_logging",
    "get_logger",
    "redact_secrets",
    "redact_text",
]
