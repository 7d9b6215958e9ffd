"""The SDK's HTTP clients, with connection pools that leave the bounding to the engine.

Both of stripe-python's async clients pool at most 100 connections (aiohttp's TCPConnector and
httpx's AsyncClient defaults). One request holds one connection for its round trip, so a pool
of 100 silently caps whatever concurrency is configured above it: at Stripe's ~200 ms, 100
connections carry at most 500 v1 meter events/s, half of the live rate, however many lanes
the sender runs. What is in flight is bounded where it is configured (`sync.concurrency`,
`usage.concurrency`, each with its rate limiter), so the pools here have no cap of their own.
"""

from __future__ import annotations

import ssl
from typing import Any

import aiohttp
import httpx
import stripe


class _AIOHTTPClient(stripe.AIOHTTPClient):
    """stripe.AIOHTTPClient whose connector opens as many connections as requests run."""

    @property
    def _session(self) -> Any:
        if self._cached_session is None and self._user_connector is None:
            # aiohttp builds a connector inside a running loop only: on first use, then. The
            # session the SDK makes around it owns it and closes it with itself.
            self._user_connector = aiohttp.TCPConnector(
                limit=0, ssl=ssl.create_default_context(cafile=stripe.ca_bundle_path)
            )
        return super()._session


def http_client(kind: str, timeout: float) -> stripe.HTTPClient:
    """The SDK's HTTP client of that kind ("aiohttp" or "httpx")."""
    if kind == "aiohttp":
        return _AIOHTTPClient(timeout=aiohttp.ClientTimeout(total=timeout))
    if kind == "httpx":
        client = stripe.HTTPXClient(timeout=timeout)
        # The SDK builds its AsyncClient with httpx's default limits; the same client with
        # an unbounded pool takes its place (nothing has been sent yet).
        client._client_async = httpx.AsyncClient(
            verify=ssl.create_default_context(cafile=stripe.ca_bundle_path),
            limits=httpx.Limits(max_connections=None, max_keepalive_connections=None),
        )
        return client
    raise ValueError(f"http_client must be 'aiohttp' or 'httpx', got {kind!r}")
