"""The [stripe] section: the account's key (and which keys are accepted), its API base, the
SDK's HTTP client and the webhook signing secrets."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import SecretStr, field_validator

from metersync.errors import ConfigError
from metersync.settings._section import Section
from metersync.settings._values import http_url, read_secret_file

# Stripe secret and restricted keys; publishable keys (pk_) cannot write and are refused.
_STRIPE_KEY_PREFIXES = ("sk_test_", "sk_live_", "rk_test_", "rk_live_")


class StripeSettings(Section):
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


def check_stripe_key(value: str) -> None:
    # The message never echoes the value: it is a secret even when malformed.
    if not value.startswith(_STRIPE_KEY_PREFIXES):
        raise ValueError(
            "must be a Stripe secret or restricted key (sk_test_…, sk_live_…, rk_test_…, "
            f"rk_live_…); the value given starts with {value[:3]!r}"
        )
