"""The sections of `metersync run`: [service] (when its jobs run, how it stops and hands over),
[http] (where it listens and the tokens its API accepts) and [retention] (what its daily
clean-up deletes)."""

from __future__ import annotations

from pydantic import Field, SecretStr, field_validator, model_validator

from metersync.settings._section import Section
from metersync.settings._values import check_crontab


class HttpSettings(Section):
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


class RetentionSettings(Section):
    """What the service's daily retention job deletes (0: keep forever)."""

    webhook_days: int = Field(default=30, ge=0)  # processed Stripe webhook events
    event_days: int = Field(default=0, ge=0)  # raw usage events (their meter values stay)
    cron: str = "41 4 * * *"  # when, UTC

    @field_validator("cron")
    @classmethod
    def _crontab(cls, value: str) -> str:
        return check_crontab(value)


class ServiceSettings(Section):
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
    # OpenMeter's deprecated subject entitlement endpoints (/api/v1/subjects/{subject}/
    # entitlements…), served through the subject's customer with Deprecation and Sunset
    # headers; false answers them 404.
    legacy_subject_entitlements: bool = True

    @field_validator("full_reconcile_cron")
    @classmethod
    def _crontab(cls, value: str) -> str:
        return check_crontab(value)
