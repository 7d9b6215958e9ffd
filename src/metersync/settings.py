"""Settings: a TOML file, overridden by environment variables, validated once at start.

Precedence, lowest first: built-in defaults, the TOML file (`--config` or `METERSYNC_CONFIG`),
`STRIPE_API_KEY`, then `METERSYNC_<SECTION>_<KEY>` variables (for example
`METERSYNC_DATABASE_URL`, `METERSYNC_STRIPE_API_BASE`, `METERSYNC_CATALOG_AUTO_CUSTOMER`).
Secrets are `SecretStr`, so neither `repr()` nor a log line can show them.
"""

from __future__ import annotations

import os
import re
import tomllib
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Literal
from urllib.parse import urlsplit

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    SecretStr,
    ValidationError,
    field_validator,
    model_validator,
)
from pydantic_settings import (
    BaseSettings,
    EnvSettingsSource,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
)
from sqlalchemy.engine import make_url
from sqlalchemy.exc import ArgumentError

from metersync.catalog.meters import MeterSettings, check_unique
from metersync.errors import ConfigError
from metersync.logs import LogFormat, LogLevel

ENV_PREFIX = "METERSYNC_"
CONFIG_ENV = "METERSYNC_CONFIG"
STRIPE_KEY_ENV = "STRIPE_API_KEY"

# Defined with the logging they configure, and still importable from here.
__all__ = ["LogFormat", "LogLevel"]

# Stripe secret and restricted keys; publishable keys (pk_) cannot write and are refused.
_STRIPE_KEY_PREFIXES = ("sk_test_", "sk_live_", "rk_test_", "rk_live_")
_SUPPORTED_DRIVERS = {
    "sqlite": "sqlite",
    "sqlite+pysqlite": "sqlite",
    "postgres": "postgresql+psycopg",
    "postgresql": "postgresql+psycopg",
    "postgresql+psycopg": "postgresql+psycopg",
}


def http_url(value: str) -> str:
    """An http(s) base URL without a trailing slash, or a ValueError naming the problem."""
    parts = urlsplit(value)
    if parts.scheme not in ("http", "https") or not parts.netloc:
        raise ValueError(f"must be an http:// or https:// URL, got {value!r}")
    return value.rstrip("/")


def read_secret_file(path: Path, field: str) -> str | None:
    """A secret kept in a file (a mounted Kubernetes or Docker secret): its stripped text, or
    None when the file is empty. An unreadable file is a ConfigError naming the setting."""
    try:
        return path.read_text(encoding="utf-8").strip() or None
    except OSError as exc:
        raise ConfigError(f"{field}: cannot read {str(path)!r}: {exc.strerror}") from None


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
    # The SDK's HTTP client: aiohttp (default, less CPU per request) or httpx.
    http_client: Literal["aiohttp", "httpx"] = "aiohttp"
    # The webhook endpoint's signing secret (whsec_…), and the previous one while rolling it.
    webhook_secret: SecretStr | None = None
    webhook_secret_previous: SecretStr | None = None

    def webhook_secrets(self) -> list[str]:
        return [
            s.get_secret_value()
            for s in (self.webhook_secret, self.webhook_secret_previous)
            if s is not None and s.get_secret_value()
        ]

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
        return http_url(value) if value else None

    def resolved_api_key(self) -> SecretStr | None:
        """The key itself, or the contents of `api_key_file` when only the file is given."""
        if self.api_key is not None:
            return self.api_key
        if self.api_key_file is None:
            return None
        text = read_secret_file(self.api_key_file, "stripe.api_key_file") or ""
        try:
            check_stripe_key(text)
        except ValueError as exc:
            raise ConfigError(f"stripe.api_key_file: {exc}") from None
        return SecretStr(text)


class HubSpotSettings(_Section):
    """The CRM target. Off unless a private-app access token is given
    (METERSYNC_HUBSPOT_ACCESS_TOKEN or hubspot.access_token_file)."""

    access_token: SecretStr | None = None
    access_token_file: Path | None = None
    api_base: str = "https://api.hubapi.com"
    # HubSpot's private-app limits: 100 requests per rolling 10 s (Free/Starter; 190 on
    # Professional and Enterprise) and a daily allowance (250,000 to 1,000,000). The daily
    # reserve is left for the account's other integrations: metersync stops before it.
    requests_per_10s: int = Field(default=100, ge=1, le=1000)
    daily_limit: int = Field(default=250_000, ge=1)
    daily_reserve: int = Field(default=1_000, ge=0)
    batch_size: int = Field(default=100, ge=1, le=100)
    # Engine actions in flight: enough to fill two batches while one is on its way.
    concurrency: int = Field(default=200, ge=1, le=1000)
    request_timeout_s: float = Field(default=30.0, gt=0)
    # HubSpot's delete is an archive (restorable for 90 days): "delete" archives the company
    # in HubSpot; "archive" keeps it and stamps metersync_archived_at; "keep" lets it go.
    delete_policy: Literal["delete", "archive", "keep"] = "delete"
    # Also upsert a contact for the customer's primary email, associated with the company.
    contacts: bool = False

    @field_validator("access_token")
    @classmethod
    def _empty_is_none(cls, value: SecretStr | None) -> SecretStr | None:
        if value is None or value.get_secret_value() == "":
            return None
        return value

    @field_validator("api_base")
    @classmethod
    def _base_url(cls, value: str) -> str:
        return http_url(value)

    def resolved_token(self) -> SecretStr | None:
        if self.access_token is not None:
            return self.access_token
        if self.access_token_file is None:
            return None
        text = read_secret_file(self.access_token_file, "hubspot.access_token_file")
        return SecretStr(text) if text else None

    @property
    def enabled(self) -> bool:
        return self.access_token is not None or self.access_token_file is not None


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


class HttpSettings(_Section):
    # Where `metersync run` serves /healthz, /readyz, /metrics, the webhook and the
    # OpenMeter-compatible API: "host:port" (env METERSYNC_HTTP_BIND). "" turns it off.
    bind: str = "127.0.0.1:8888"
    # Bearer tokens the API accepts (env METERSYNC_HTTP_TOKENS, a JSON list). With none, the
    # service binds only to loopback.
    tokens: list[SecretStr] = Field(default_factory=list)

    def token_values(self) -> list[str]:
        return [t.get_secret_value() for t in self.tokens if t.get_secret_value()]

    @model_validator(mode="after")
    def _loopback_without_tokens(self) -> HttpSettings:
        address = self.address
        if address is not None and not self.token_values():
            host = address[0]
            if host not in ("127.0.0.1", "::1", "localhost"):
                raise ValueError(
                    f"bind {self.bind!r} is beyond loopback and no http.tokens are set: the API "
                    "would be open to anyone who can reach it; set http.tokens "
                    "(METERSYNC_HTTP_TOKENS) or bind to 127.0.0.1"
                )
        return self

    @field_validator("bind")
    @classmethod
    def _host_port(cls, value: str) -> str:
        if value == "":
            return value
        host, sep, port = value.rpartition(":")
        if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
            raise ValueError(f"{value!r} must be host:port, such as 127.0.0.1:8888")
        return value

    @property
    def address(self) -> tuple[str, int] | None:
        if not self.bind:
            return None
        host, _, port = self.bind.rpartition(":")
        return host.strip("[]"), int(port)


class RetentionSettings(_Section):
    """What the service's daily retention job deletes (0: keep forever)."""

    webhook_days: int = Field(default=30, ge=0)  # processed Stripe webhook events
    event_days: int = Field(default=0, ge=0)  # raw usage events (their meter values stay)
    cron: str = "41 4 * * *"  # when, UTC

    @field_validator("cron")
    @classmethod
    def _crontab(cls, value: str) -> str:
        return _check_crontab(value)


def _check_crontab(value: str) -> str:
    from apscheduler.triggers.cron import CronTrigger

    try:
        CronTrigger.from_crontab(value)
    except ValueError as exc:
        raise ValueError(f"{value!r} is not a crontab expression: {exc}") from None
    return value


class ServiceSettings(_Section):
    """`metersync run`: how often each job runs, and how the service stops and hands over."""

    customer_tick_s: float = Field(default=30.0, gt=0)  # incremental customer sync
    usage_tick_s: float = Field(default=60.0, gt=0)  # usage push
    # HubSpot companies (when configured): customer changes, new Stripe ids, usage figures.
    hubspot_tick_s: float = Field(default=60.0, gt=0)
    # Full reconcile (lists Stripe): a crontab expression, UTC.
    full_reconcile_cron: str = "17 3 * * *"
    # A job that could not start on time (the previous one ran long) still starts within this.
    misfire_grace_s: float = Field(default=60.0, gt=0)
    # On SIGTERM: calls in flight finish; work not yet started is left for the next run. The
    # process exits after at most this long.
    shutdown_deadline_s: float = Field(default=30.0, gt=0)
    # How often a standby tries to take the lock over from a leader that died.
    standby_poll_s: float = Field(default=5.0, gt=0)

    @field_validator("full_reconcile_cron")
    @classmethod
    def _crontab(cls, value: str) -> str:
        return _check_crontab(value)


_DURATION = re.compile(r"^(\d+)\s*([smhd])$")
_UNIT_S = {"s": 1, "m": 60, "h": 3600, "d": 86400}


class UsageSettings(_Section):
    # Tumbling aggregation window, UTC: "1h" (default), "15m", "1d"... It must divide a day, so
    # windows line up with Stripe's hourly and daily event summaries.
    window: str = "1h"
    # Usage older than Stripe's 35-day window: "report" (held, shown by status) or "push_now"
    # (sent with the current time, so it lands in the current billing period).
    late_usage: Literal["report", "push_now"] = "report"
    # Stripe's meter event API: "v1" (one request per event) or "v2" (the high-throughput stream,
    # up to 100 events per request).
    stripe_api: Literal["v1", "v2"] = "v1"
    # Meter event requests/s, separate from customer calls; unset: 100 for test keys, 1,000 live.
    meter_event_rate: float | None = Field(default=None, gt=0)
    concurrency: int = Field(default=16, ge=1, le=256)

    @field_validator("window")
    @classmethod
    def _window(cls, value: str) -> str:
        seconds = duration_seconds(value)
        if seconds <= 0 or 86400 % seconds:
            raise ValueError(f"{value!r} must divide a day (for example 1m, 15m, 1h, 1d)")
        return value

    @property
    def window_s(self) -> int:
        return duration_seconds(self.window)


def duration_seconds(value: str) -> int:
    match = _DURATION.match(value.strip())
    if not match:
        raise ValueError(f"{value!r} is not a duration such as 30s, 15m, 1h or 1d")
    return int(match.group(1)) * _UNIT_S[match.group(2)]


class OpenMeterSettings(_Section):
    """An OpenMeter instance as the source of subjects, customers and usage. Off unless `url`
    is set; then local event ingest is off and usage comes from OpenMeter's meter query."""

    url: str | None = None
    token: SecretStr | None = None  # prefer METERSYNC_OPENMETER_TOKEN
    token_file: Path | None = None
    timeout_s: float = Field(default=30.0, gt=0)
    retries: int = Field(default=5, ge=0, le=20)
    page_size: int = Field(default=100, ge=1, le=1000)
    # Customers per meter query (filterCustomerId repeated).
    customers_per_query: int = Field(default=100, ge=1, le=500)
    # How far back each pull re-reads usage, for events that arrive late upstream. The first
    # pull, and every full reconcile, reads back 35 days (Stripe's window for meter events).
    lookback: str = "48h"

    @field_validator("url")
    @classmethod
    def _http_url(cls, value: str | None) -> str | None:
        return http_url(value) if value else None

    @field_validator("lookback")
    @classmethod
    def _lookback(cls, value: str) -> str:
        if duration_seconds(value) < 3600:
            raise ValueError(f"{value!r} must be at least 1h")
        return value

    @property
    def enabled(self) -> bool:
        return self.url is not None

    @property
    def lookback_s(self) -> int:
        return duration_seconds(self.lookback)

    def resolved_token(self) -> str | None:
        if self.token is not None and self.token.get_secret_value():
            return self.token.get_secret_value()
        if self.token_file is None:
            return None
        return read_secret_file(self.token_file, "openmeter.token_file")


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
    hubspot: HubSpotSettings = Field(default_factory=HubSpotSettings)
    openmeter: OpenMeterSettings = Field(default_factory=OpenMeterSettings)
    catalog: CatalogSettings = Field(default_factory=CatalogSettings)
    sync: SyncSettings = Field(default_factory=SyncSettings)
    log: LogSettings = Field(default_factory=LogSettings)
    usage: UsageSettings = Field(default_factory=UsageSettings)
    service: ServiceSettings = Field(default_factory=ServiceSettings)
    http: HttpSettings = Field(default_factory=HttpSettings)
    retention: RetentionSettings = Field(default_factory=RetentionSettings)
    # [[meters]] tables, in the config file only.
    meters: list[MeterSettings] = Field(default_factory=list)

    @field_validator("meters")
    @classmethod
    def _unique_meters(cls, value: list[MeterSettings]) -> list[MeterSettings]:
        check_unique(value)
        return value

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
        for name in ("webhook_secret", "webhook_secret_previous"):
            data["stripe"][name] = "**********" if getattr(self.stripe, name) else None
        data["http"]["tokens"] = ["**********" for _ in self.http.tokens]
        data["hubspot"]["access_token"] = "**********" if self.hubspot.access_token else None
        data["openmeter"]["token"] = "**********" if self.openmeter.token else None
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
        if section == "meters":
            if not isinstance(value, list):
                raise ConfigError(f"config file {str(path)!r}: meters must be [[meters]] tables")
            continue
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
