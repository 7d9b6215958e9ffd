"""The [database] section: which URLs are supported, how they are normalised to a driver, and
how they are shown without their password."""

from __future__ import annotations

from pydantic import Field, field_validator
from sqlalchemy.engine import make_url
from sqlalchemy.exc import ArgumentError

from metersync.settings._section import Section

_SUPPORTED_DRIVERS = {
    "sqlite": "sqlite",
    "sqlite+pysqlite": "sqlite",
    "postgres": "postgresql+psycopg",
    "postgresql": "postgresql+psycopg",
    "postgresql+psycopg": "postgresql+psycopg",
}


class DatabaseSettings(Section):
    # Not in repr(): a PostgreSQL URL may carry a password. Settings.redacted() is the safe view.
    url: str = Field(default="sqlite:///./metersync.db", repr=False)

    @field_validator("url")
    @classmethod
    def _supported_url(cls, value: str) -> str:
        return normalize_database_url(value)


def normalize_database_url(value: str) -> str:
    try:
        url = make_url(value)
    except ArgumentError:
        raise ValueError(
            f"must be a database URL such as sqlite:///./metersync.db or "
            f"postgresql://user@host/db, got {redact_database_url(value)!r}"
        ) from None
    driver = _SUPPORTED_DRIVERS.get(url.drivername)
    if driver is None:
        raise ValueError(
            f"database {url.drivername!r} is not supported: use sqlite:/// or postgresql://"
        )
    return url.set(drivername=driver).render_as_string(hide_password=False)


def redact_database_url(value: str) -> str:
    try:
        return make_url(value).render_as_string(hide_password=True)
    except ArgumentError:
        return "<unparsable URL>"
