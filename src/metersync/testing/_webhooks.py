"""Webhook events: built from what the handlers emitted, signed as Stripe signs them, and
delivered in the background with retries and exponential backoff."""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import hmac
import json
import time
from typing import Any

import httpx
import structlog

from metersync.testing._state import EmulatorState, now

API_VERSION = "2025-09-30.clover"
_log = structlog.stdlib.get_logger("metersync.testing.webhooks")


def sign(payload: bytes, secret: str, timestamp: int | None = None) -> str:
    """`Stripe-Signature: t=…,v1=…`: HMAC-SHA256 of f"{t}.{payload}" with the endpoint secret."""
    stamp = int(time.time()) if timestamp is None else timestamp
    signed = f"{stamp}.".encode() + payload
    digest = hmac.new(secret.encode(), signed, hashlib.sha256).hexdigest()
    return f"t={stamp},v1={digest}"


def build_events(
    state: EmulatorState,
    emitted: list[dict[str, Any]],
    request_id: str | None,
    idempotency_key: str | None,
) -> list[dict[str, Any]]:
    events = []
    for item in emitted:
        data: dict[str, Any] = {"object": item["object"]}
        if item.get("previous_attributes"):
            data["previous_attributes"] = item["previous_attributes"]
        event = {
            "id": state.new_id("evt_", 24),
            "object": "event",
            "api_version": API_VERSION,
            "created": now(),
            "data": data,
            "livemode": False,
            "pending_webhooks": 1,
            "request": {"id": request_id, "idempotency_key": idempotency_key},
            "type": item["type"],
        }
        state.events.append(event)
        events.append(event)
    return events


class WebhookSender:
    """Delivers events one endpoint at a time, in order, retrying each until it gets a 2xx."""

    def __init__(self) -> None:
        self.queue: asyncio.Queue[tuple[dict[str, Any], str, str, int, float]] = asyncio.Queue()
        self.deliveries: list[dict[str, Any]] = []
        self._client: httpx.AsyncClient | None = None
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        self._client = httpx.AsyncClient(timeout=10.0)
        self._task = asyncio.get_running_loop().create_task(self._run())

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        if self._client is not None:
            await self._client.aclose()

    def enqueue(
        self, event: dict[str, Any], url: str, secret: str, max_attempts: int, delay_s: float
    ) -> None:
        self.queue.put_nowait((event, url, secret, max_attempts, delay_s))

    async def _run(self) -> None:
        while True:
            event, url, secret, max_attempts, delay_s = await self.queue.get()
            await self._deliver(event, url, secret, max_attempts, delay_s)

    async def _deliver(
        self, event: dict[str, Any], url: str, secret: str, max_attempts: int, delay_s: float
    ) -> None:
        assert self._client is not None
        payload = json.dumps(event).encode()
        for attempt in range(1, max_attempts + 1):
            record: dict[str, Any] = {
                "event": event["id"],
                "type": event["type"],
                "attempt": attempt,
            }
            try:
                response = await self._client.post(
                    url,
                    content=payload,
                    headers={
                        "Content-Type": "application/json",
                        "Stripe-Signature": sign(payload, secret),
                        "User-Agent": "Stripe/1.0 (+https://stripe.com/docs/webhooks)",
                    },
                )
                record["status"] = response.status_code
            except httpx.HTTPError as exc:
                record["status"] = None
                record["error"] = type(exc).__name__
            self.deliveries.append(record)
            if record["status"] is not None and 200 <= record["status"] < 300:
                return
            if attempt < max_attempts:
                await asyncio.sleep(delay_s * 2 ** (attempt - 1))
        _log.warning(
            "webhook delivery gave up", event_id=event["id"], url=url, attempts=max_attempts
        )
