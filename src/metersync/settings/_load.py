"""The whole of the settings and how they are loaded: a TOML file, overridden by environment
variables, validated once at start, with every error named by its setting and origin.

Precedence, lowest first: built-in defaults, the TOML file (`--config` or `METERSYNC_CONFIG`),
`STRIPE_API_KEY`, then `METERSYNC_<SECTION>_<KEY>` variables (for example
`METERSYNC_DATABASE_URL`, `METERSYNC_STRIPE_API_BASE`, `METERSYNC_CATALOG_AUTO_CUSTOMER`).
"""

from __future__ import annotations

import os
import tomllib
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from pydantic import Field, ValidationError, field_validator
from pydantic_settings import (
    BaseSettings,
    EnvSettingsSource,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
)

from metersync.catalog.meters import MeterSettings, check_unique
from metersync.errors import ConfigError
from metersync.settings._database import DatabaseSettings, redact_database_url
from metersync.settings._engine import CatalogSettings, SyncSettings, UsageSettings
from metersync.settings._hubspot import HubSpotSettings
from metersync.settings._log import LogSettings
from metersync.settings._openmeter import OpenMeterSettings
from metersync.settings._service import HttpSettings, RetentionSettings, ServiceSettings
from metersync.settings._stripe import StripeSettings

ENV_PREFIX = "METERSYNC_"
CONFIG_ENV = "METERSYNC_CONFIG"
STRIPE_KEY_ENV = "STRIPE_API_KEY"


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
