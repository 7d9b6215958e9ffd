"""Requests to HubSpot's CRM API over httpx: paced, within the daily allowance, every answer's
rate-limit headers read, every failure a `HubSpotError`.

Limits (HubSpot's private-app rules): 100 requests per rolling 10 seconds by default, paced
evenly; the `X-HubSpot-RateLimit-*` headers are read on every answer: a spent window pauses
requests, a 429 naming the ten-second policy slows the limiter, and the daily allowance is
kept (`_allowance.py`).
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Mapping
from typing import Any
from urllib.parse import quote

import httpx

from metersync.mechanics.limiter import AdaptiveLimiter
from metersync.sync.ports import ErrorKind, TargetError
from metersync.targets.hubspot._allowance import DailyAllowance
from metersync.targets.hubspot._errors import HubSpotError, error_kind

COMPANIES = "/crm/v3/objects/companies"
CONTACTS = "/crm/v3/objects/contacts"
PROPERTIES = "/crm/v3/properties/companies"
ASSOCIATE = "/crm/v4/associations/companies/contacts/batch/associate/default"
READ_ATTEMPTS = 5


class HubSpotApi:
    """One portal's API: the client, its limiter and daily allowance, and the requests sent.
    `classify` is the target's: it decides which failed reads are worth retrying."""

    def __init__(
        self,
        http: httpx.AsyncClient,
        limiter: AdaptiveLimiter,
        daily: DailyAllowance,
        classify: Callable[[BaseException], TargetError],
    ) -> None:
        self.http = http
        self.limiter = limiter
        self.daily = daily
        self._classify = classify
        self.requests = 0

    async def read(self, path: str, params: Mapping[str, str]) -> dict[str, Any]:
        """A GET, retried while HubSpot's answer is worth retrying (reads are idempotent;
        writes are retried by the engine, one record at a time)."""
        for attempt in range(READ_ATTEMPTS):
            try:
                return await self.request("GET", path, params=params)
            except (HubSpotError, httpx.TransportError) as exc:
                if self._classify(exc).kind is not ErrorKind.RETRYABLE:
                    raise
                if attempt == READ_ATTEMPTS - 1:
                    raise
                await asyncio.sleep(min(8.0, 0.5 * 2**attempt))
        raise AssertionError("unreachable")  # pragma: no cover

    async def request(
        self,
        method: str,
        path: str,
        *,
        params: Mapping[str, str] | None = None,
        json: Any = None,
        paced: bool = False,
    ) -> dict[str, Any]:
        """`paced`: the caller already waited for the limiter (a batcher's `ready`)."""
        self.daily.check()
        if not paced:
            await self.limiter.acquire()
        self.requests += 1
        response = await self.http.request(method, path, params=params, json=json)
        self._read_limits(response.headers)
        if response.status_code == 204:
            return {}
        body = _json(response)
        if response.status_code == 429:
            raise self._throttled(body, response.headers)
        if response.status_code >= 400:
            category = body.get("category")
            raise HubSpotError(
                error_kind(response.status_code, category),
                f"HubSpot {response.status_code} {category or ''}: "
                f"{body.get('message') or response.text[:200]}".replace("  ", " "),
                status=response.status_code,
                category=category,
                correlation_id=body.get("correlationId"),
            )
        return body

    def _read_limits(self, headers: httpx.Headers) -> None:
        daily = _int(headers.get("x-hubspot-ratelimit-daily-remaining"))
        if daily is not None:
            self.daily.remaining = daily
        remaining = _int(headers.get("x-hubspot-ratelimit-remaining"))
        interval_ms = _int(headers.get("x-hubspot-ratelimit-interval-milliseconds")) or 10_000
        if remaining is not None and remaining <= 0:
            # The rolling window is spent (other traffic shares it): let a tenth of it pass.
            self.limiter.pause(interval_ms / 10_000)

    def _throttled(self, body: Mapping[str, Any], headers: httpx.Headers) -> HubSpotError:
        policy = str(body.get("policyName") or "")
        message = str(body.get("message") or "rate limited")
        if policy.upper() == "DAILY":
            self.daily.remaining = 0
            return HubSpotError(
                ErrorKind.FATAL,
                f"HubSpot's daily API limit is reached ({message}); syncing resumes after "
                "HubSpot's daily reset",
                status=429,
                correlation_id=body.get("correlationId"),
            )
        self.limiter.throttled()
        interval_ms = _int(headers.get("x-hubspot-ratelimit-interval-milliseconds")) or 10_000
        self.limiter.pause(interval_ms / 10_000)
        return HubSpotError(
            ErrorKind.RETRYABLE,
            f"HubSpot 429 ({policy or 'rate limit'}): {message}",
            status=429,
            correlation_id=body.get("correlationId"),
            throttled=True,
        )


def path_segment(segment: str) -> str:
    return quote(segment, safe="")


def _int(text: str | None) -> int | None:
    try:
        return int(text) if text is not None else None
    except ValueError:
        return None


def _json(response: httpx.Response) -> dict[str, Any]:
    try:
        body = response.json()
    except ValueError:
        return {}
    return body if isinstance(body, dict) else {}
