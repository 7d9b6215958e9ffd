"""The [hubspot] section: the CRM target's token, its request allowances and what it writes."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import Field, SecretStr, field_validator

from metersync.settings._section import Section
from metersync.settings._values import http_url, read_secret_file


class HubSpotSettings(Section):
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
