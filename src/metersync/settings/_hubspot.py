"""The [hubspot] section: the CRM target's token, its request allowances and what it writes."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Literal

from pydantic import Field, SecretStr, field_validator

from metersync.settings._section import Section
from metersync.settings._values import http_url, read_secret_file

# A feature key as the entitlements API takes it (metersync.entitlements validates the same).
_FEATURE_KEY = re.compile(r"[a-z0-9]+(?:_[a-z0-9]+)*")
_FEATURE_KEY_MAX = 64


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
    # Feature keys whose entitlement figures each company carries: has access, balance, usage
    # and the usage period's end, as metersync_ent_<feature>_… properties.
    entitlement_features: list[str] = Field(default_factory=list)

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

    @field_validator("entitlement_features")
    @classmethod
    def _feature_keys(cls, value: list[str]) -> list[str]:
        for key in value:
            if len(key) > _FEATURE_KEY_MAX or not _FEATURE_KEY.fullmatch(key):
                raise ValueError(
                    f"{key!r} is not a feature key (lowercase letters and digits in words joined "
                    f"by single underscores, at most {_FEATURE_KEY_MAX} characters, e.g. gpt_4)"
                )
        repeated = sorted({k for k in value if value.count(k) > 1})
        if repeated:
            raise ValueError(f"{', '.join(repeated)} given more than once")
        return value

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
