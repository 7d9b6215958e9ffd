"""The [openmeter] section: an OpenMeter instance as the source of subjects, customers and
usage, and how far back each pull re-reads."""

from __future__ import annotations

from pathlib import Path

from pydantic import Field, SecretStr, field_validator

from metersync.settings._section import Section
from metersync.settings._values import duration_seconds, http_url, read_secret_file


class OpenMeterSettings(Section):
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
