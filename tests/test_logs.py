from __future__ import annotations

import io
import json
import logging

import pytest
from pydantic import SecretStr

from metersync.logs import (
    REDACTED,
    LogFormat,
    LogLevel,
    configure_logging,
    get_logger,
    redact_secrets,
)

SECRETS = {
    "sk_test_51HqLyjWDarjtT1zdp7dcXyz": "sk_test_",
    "sk_live_51HqLyjWDarjtT1zdp7dcXyz": "sk_live_",
    "rk_live_abcDEF123456": "rk_live_",
    "rk_test_abcDEF123456": "rk_test_",
    "pk_test_TYooMQauvdEDq54NiTphI7jx": "pk_test_",
    "pk_live_TYooMQauvdEDq54NiTphI7jx": "pk_live_",
    "whsec_a1b2C3d4e5F6g7h8/+==": "whsec_",
}


def scrub(event: dict[str, object]) -> dict[str, object]:
    return redact_secrets(None, "info", dict(event))


@pytest.mark.parametrize(("secret", "kept_prefix"), SECRETS.items())
def test_stripe_keys_and_webhook_secrets_are_redacted_anywhere(
    secret: str, kept_prefix: str
) -> None:
    out = scrub(
        {
            "event": f"calling stripe with {secret}",
            "nested": {"deeper": [f"x {secret} y", {"k": secret}]},
            "tuple": (secret,),
        }
    )
    text = json.dumps(out)
    assert secret not in text
    assert f"{kept_prefix}{REDACTED}" in text


def test_bearer_tokens_are_redacted() -> None:
    out = scrub({"event": "request", "headers": "Authorization: Bearer eyJhbGciOi.JIUzI1Ni.J9-_x"})
    assert "eyJhbGciOi" not in json.dumps(out)
    assert f"Bearer {REDACTED}" in str(out["headers"])


@pytest.mark.parametrize(
    "url",
    [
        "postgresql://app:hunter2@db.internal:5432/metersync",
        "postgresql+psycopg://app:hunter2@db/x?sslmode=require",
        "redis://:hunter2@cache:6379/0",
        "postgresql://app:hun:ter@2@db/x",
    ],
)
def test_passwords_in_urls_are_redacted(url: str) -> None:
    out = scrub({"event": f"connecting to {url}", "url": url})
    text = json.dumps(out)
    assert "hunter2" not in text and "hun:ter" not in text
    assert REDACTED in str(out["url"])
    assert "db" in str(out["url"]) or "cache" in str(out["url"])


def test_urls_without_password_are_left_alone() -> None:
    out = scrub({"event": "x", "url": "postgresql://app@db/x", "api": "http://127.0.0.1:12111/v1"})
    assert out["url"] == "postgresql://app@db/x"
    assert out["api"] == "http://127.0.0.1:12111/v1"


def test_secret_named_keys_are_redacted_but_usage_figures_are_not() -> None:
    out = scrub(
        {
            "event": "x",
            "password": "plain-words",
            "webhook_secret": "abc",
            "session_token": "tok",
            "input_tokens": 1234,
            "idempotency_key": "metersync:stripe:create:acme:1:abcd",
            "secret_count": 3,
        }
    )
    assert out["password"] == REDACTED
    assert out["webhook_secret"] == REDACTED
    assert out["session_token"] == REDACTED
    assert out["input_tokens"] == 1234
    assert out["idempotency_key"] == "metersync:stripe:create:acme:1:abcd"
    assert out["secret_count"] == 3


def test_objects_are_redacted_through_their_text() -> None:
    out = scrub(
        {"event": "x", "error": ValueError("bad key sk_live_abcdef123"), "s": SecretStr("v")}
    )
    assert "abcdef123" not in json.dumps(out)
    assert out["s"] == "**********"


def test_json_lines_when_not_a_tty_and_secrets_gone_from_tracebacks() -> None:
    stream = io.StringIO()
    configure_logging(LogLevel.INFO, LogFormat.AUTO, stream=stream)
    log = get_logger("metersync.test", run_id="r1")
    log.info("stripe call", key="sk_test_abcdefghijkl", customer="acme")
    try:
        raise RuntimeError("connect failed: postgresql://u:topsecret@db/x")
    except RuntimeError:
        log.exception("boom")
    lines = [json.loads(line) for line in stream.getvalue().splitlines()]
    assert lines[0]["event"] == "stripe call"
    assert lines[0]["run_id"] == "r1"
    assert lines[0]["customer"] == "acme"
    assert lines[0]["key"] == f"sk_test_{REDACTED}"
    assert lines[1]["level"] == "error"
    assert "RuntimeError" in lines[1]["exception"]
    assert "topsecret" not in stream.getvalue()


def test_standard_library_loggers_are_redacted_too() -> None:
    stream = io.StringIO()
    configure_logging(LogLevel.INFO, LogFormat.JSON, stream=stream)
    logging.getLogger("some.library").warning("using key %s", "rk_live_zzzzzzzzzzzz")
    line = json.loads(stream.getvalue().splitlines()[-1])
    assert line["logger"] == "some.library"
    assert line["event"] == f"using key rk_live_{REDACTED}"


def test_console_format_is_readable_and_redacted() -> None:
    stream = io.StringIO()
    configure_logging(LogLevel.INFO, LogFormat.CONSOLE, stream=stream)
    get_logger("metersync.test").info("hello", token="whsec_abcdef")
    text = stream.getvalue()
    assert "hello" in text and not text.lstrip().startswith("{")
    assert "whsec_abcdef" not in text


def test_level_filters() -> None:
    stream = io.StringIO()
    configure_logging(LogLevel.WARNING, LogFormat.JSON, stream=stream)
    get_logger("metersync.test").info("quiet")
    get_logger("metersync.test").warning("loud")
    assert [json.loads(x)["event"] for x in stream.getvalue().splitlines()] == ["loud"]
