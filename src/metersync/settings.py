"""Settings: a TOML file, overridden by environment variables, validated once at start.

Precedence, lowest first: built-in defaults, the TOML file (`--config` or `METERSYNC_CONFIG`),
`STRIPE_API_KEY`, then `METERSYNC_<SECTION>_<KEY>` variables (for example
`METERSYNC_DATABASE_URL`, `METERSYNC_STRIPE_API_BASE`, `METERSYNC_CATALOG_AUTO_CUSTOMER`).
Secrets are `SecretStr`, so neither `repr()` nor a log line can show them.
"""

from __future__ import annotations

import os
import tomllib
from collections.abc import Mapping
from enum import StrEnum
from pathlib import Path
from typing import Any, Literal
from urllib.parse import urlsplit

from pydantic import BaseModel, ConfigDict, Field, SecretStr, ValidationError, field_validator
from pydantic_settings import (
    BaseSettings,
    EnvSettingsSource,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
)
from sqlalchemy.engine import make_url
from sqlalchemy.exc import ArgumentError

from metersync.errors import ConfigError

ENV_PREFIX = "METERSYNC_"
CONFIG_ENV = "METERSYNC_CONFIG"
STRIPE_KEY_ENV = "STRIPE_API_KEY"

# Stripe secret and restricted keys; publishable keys (pk_) cannot write and are refused.
_STRIPE_KEY_PREFIXES = ("sk_test_", "sk_live_", "rk_test_", "rk_live_")
_SUPPORTED_DRIVERS = {
    "sqlite": "sqlite",
    "sqlite+pysqlite": "sqlite",
    "postgres": "postgresql+psycopg",
    "postgresql": "postgresql+psycopg",
    "postgresql+psycopg": "postgresql+psycopg",
}


class _Section(BaseModel):
    # A misspelt key in the file or the environment is an error, not a silent default.
    model_config = ConfigDict(extra="forbid", validate_default=True)


class DatabaseSettings(_Section):
    # Not in repr(): a PostgreSQL URL may carry a password. Settings.redacted() is the safe view.
    url: str = Field(default="sqlite:///./metersync.db", repr=False)

    @field_validator("url")
    @classmethod
    def _supported_url(cls, value: str) -> str:
        return normalize_database_url(value)


class StripeSettings(_Section):
    api_key: SecretStr | None = None
    api_key_file: Path | None = None
    api_base: str | None = None

    @field_validator("api_key")
    @classmethod
    def _key_shape(cls, value: SecretStr | None) -> SecretStr | None:
        if value is None or value.get_secret_value() == "":
            return None
        check_stripe_key(value.get_secret_value())
        return value

    @field_validator("api_base")
    @classmethod
    def _http_url(cls, value: str | None) -> str | None:
        if value is None or value == "":
            return None
        parts = urlsplit(value)
        if parts.scheme not in ("http", "https") or not parts.netloc:
            raise ValueError(f"must be an http:// or https:// URL, got {value!r}")
        return value.rstrip("/")

    def resolved_api_key(self) -> SecretStr | None:
        """The key itself, or the contents of `api_key_file` when only the file is given."""
        if self.api_key is not None:
            return self.api_key
        if self.api_key_file is None:
            return None
        try:
            text = self.api_key_file.read_text(encoding="utf-8").strip()
        except OSError as exc:
            raise ConfigError(
                f"stripe.api_key_file: cannot read {str(self.api_key_file)!r}: {exc.strerror}"
            ) from None
        try:
            check_stripe_key(text)
        except ValueError as exc:
            raise ConfigError(f"stripe.api_key_file: {exc}") from None
        return SecretStr(text)


class SyncSettings(_Section):
    concurrency: int = Field(default=16, ge=1, le=256)
    # Requests/s to the target; unset: Stripe's own limit for the key (25 test, 100 live).
    rate_limit: float | None = Field(default=None, gt=0)
    search_rate_limit: float = Field(default=20.0, gt=0)
    request_timeout_s: float = Field(default=30.0, gt=0)
    retry_attempts: int = Field(default=5, ge=1, le=20)
    delete_policy: Literal["delete", "archive", "keep"] = "delete"
    missing_policy: Literal["recreate", "report"] = "recreate"
    orphan_policy: Literal["report", "delete"] = "report"
    max_delete_fraction: float = Field(default=0.1, ge=0.0, le=1.0)
    max_deletes: int | None = Field(default=None, ge=0)
    mass_delete_floor: int = Field(default=3, ge=1)


class CatalogSettings(_Section):
    auto_customer: bool = True


class LogLevel(StrEnum):
    DEBUG = "debug"
    INFO = "info"
    WARNING = "warning"
    ERROR = "error"


class LogFormat(StrEnum):
    AUTO = "auto"
    JSON = "json"
    CONSOLE = "console"


class LogSettings(_Section):
    level: LogLevel = LogLevel.INFO
    format: LogFormat = LogFormat.AUTO

    @field_validator("level", "format", mode="before")
    @classmethod
    def _lowercase(cls, value: Any) -> Any:
        return value.lower() if isinstance(value, str) else value


class Settings(BaseSettings):
    model_config = SettingsConfigDict(
        env_prefix=ENV_PREFIX,
        env_nested_delimiter="_",
        # METERSYNC_STRIPE_API_BASE is stripe.api_base, not stripe.api.base.
        env_nested_max_split=1,
        case_sensitive=False,
        extra="ignore",
    )

    database: DatabaseSettings = Field(default_factory=DatabaseSettings)
    stripe: StripeSettings = Field(default_factory=StripeSettings)
    catalog: CatalogSettings = Field(default_factory=CatalogSettings)
    sync: SyncSettings = Field(default_factory=SyncSettings)
    log: LogSettings = Field(default_factory=LogSettings)

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        # Init kwargs carry the TOML file, so they rank below the environment.
        return (env_settings, _StripeKeyEnvSource(settings_cls), init_settings)

    def redacted(self) -> dict[str, Any]:
        """The effective settings as plain data, safe to print."""
        data = self.model_dump(mode="json")
        data["database"]["url"] = redact_database_url(self.database.url)
        data["stripe"]["api_key"] = "**********" if self.stripe.api_key else None
        return data


class _StripeKeyEnvSource(EnvSettingsSource):
    """`STRIPE_API_KEY`, the name Stripe's own tools use, below `METERSYNC_STRIPE_API_KEY`."""

    def __call__(self) -> dict[str, Any]:
        value = os.environ.get(STRIPE_KEY_ENV)
        return {"stripe": {"api_key": value}} if value else {}


def check_stripe_key(value: str) -> None:
    # The message never echoes the value: it is a secret even when malformed.
    if not value.startswith(_STRIPE_KEY_PREFIXES):
        raise ValueError(
            "must be a Stripe secret or restricted key (sk_test_…, sk_live_…, rk_test_…, "
            f"rk_live_…); the value given starts with {value[:3]!r}"
        )


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


def load_settings(
    config_path: Path | None = None, environ: Mapping[str, str] | None = None
) -> Settings:
    """Read the TOML file (if any) and the environment; raise ConfigError naming the bad key."""
    env = os.environ if environ is None else environ
    if config_path is None and env.get(CONFIG_ENV):
        config_path = Path(env[CONFIG_ENV])
    file_data = _read_toml(config_path) if config_path is not None else {}
    try:
        return Settings(**file_data)
    except ValidationError as exc:
        raise ConfigError(_describe(exc, env)) from None


def _read_toml(path: Path) -> dict[str, Any]:
    try:
        with path.open("rb") as fh:
            data = tomllib.load(fh)
    except FileNotFoundError:
        raise ConfigError(f"config file {str(path)!r} does not exist") from None
    except OSError as exc:
        raise ConfigError(f"config file {str(path)!r} cannot be read: {exc.strerror}") from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"config file {str(path)!r} is not valid TOML: {exc}") from None
    unknown = sorted(set(data) - set(Settings.model_fields))
    if unknown:
        known = ", ".join(Settings.model_fields)
        raise ConfigError(
            f"config file {str(path)!r}: unknown section {unknown[0]!r} (known: {known})"
        )
    for section, value in data.items():
        if not isinstance(value, dict):
            raise ConfigError(f"config file {str(path)!r}: {section!r} must be a [{section}] table")
    return data


def _describe(exc: ValidationError, env: Mapping[str, str]) -> str:
    lines = []
    for error in exc.errors():
        key = ".".join(str(part) for part in error["loc"])
        env_name = ENV_PREFIX + "_".join(str(part) for part in error["loc"]).upper()
        origin = f" (from {env_name})" if env_name in env else ""
        if key == "stripe.api_key" and env_name not in env and STRIPE_KEY_ENV in env:
            origin = f" (from {STRIPE_KEY_ENV})"
        message = error["msg"].removeprefix("Value error, ")
        if error["type"] == "extra_forbidden":
            message = "is not a known setting"
        lines.append(f"invalid setting {key}{origin}: {message}")
    return "; ".join(lines)
