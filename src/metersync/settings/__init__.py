"""Settings: a TOML file, overridden by environment variables, validated once at start.

One model per section ([database], [stripe], [hubspot], ...) under `Settings`; `load_settings`
reads the file and the environment (`METERSYNC_<SECTION>_<KEY>`) and names any bad key.
Secrets are `SecretStr`, so neither `repr()` nor a log line can show them.
"""

from metersync.logs import LogFormat, LogLevel
from metersync.settings._database import (
    DatabaseSettings,
    normalize_database_url,
    redact_database_url,
)
from metersync.settings._engine import CatalogSettings, SyncSettings, UsageSettings
from metersync.settings._hubspot import HubSpotSettings
from metersync.settings._load import (
    CONFIG_ENV,
    ENV_PREFIX,
    STRIPE_KEY_ENV,
    Settings,
    load_settings,
)
from metersync.settings._log import LogSettings
from metersync.settings._openmeter import OpenMeterSettings
from metersync.settings._service import HttpSettings, RetentionSettings, ServiceSettings
from metersync.settings._stripe import StripeSettings, check_stripe_key
from metersync.settings._values import duration_seconds, http_url, read_secret_file

__all__ = [
    "CONFIG_ENV",
    "ENV_PREFIX",
    "STRIPE_KEY_ENV",
    "CatalogSettings",
    "DatabaseSettings",
    "HttpSettings",
    "HubSpotSettings",
    "LogFormat",
    "LogLevel",
    "LogSettings",
    "OpenMeterSettings",
    "RetentionSettings",
    "ServiceSettings",
    "Settings",
    "StripeSettings",
    "SyncSettings",
    "UsageSettings",
    "check_stripe_key",
    "duration_seconds",
    "http_url",
    "load_settings",
    "normalize_database_url",
    "read_secret_file",
    "redact_database_url",
]
