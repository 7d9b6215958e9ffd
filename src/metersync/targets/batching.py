"""Coalesce one-record calls into batch requests.

The engine applies one action at a time per record (an intent before, an outcome after), which
is what makes it crash-safe. Some targets are cheap per request but strict on requests: HubSpot
allows 100 requests per 10 seconds and takes 100 records per batch. The engine's concurrent
actions each hand their record to a `Batcher`; it sends them together, up to `max_size` per
request, after waiting at most `linger_s` for more, and gives each caller its own record's
answer or error. A record that fails in a batch fails alone.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import Generic, TypeVar

In = TypeVar("In")
Out = TypeVar("Out")

# One result per input, in order: the record's answer, or the error for that record alone.
SendBatch = Callable[[Sequence[In]], Awaitable[Sequence[Out | BaseException]]]


@dataclass
class _Pending(Generic[In, Out]):
    item: In
    future: asyncio.Future[Out]


class Batcher(Generic[In, Out]):
    def __init__(self, send: SendBatch[In, Out], *, max_size: int, linger_s: float) -> None:
        self.send = send
        self.max_size = max_size
        self.linger_s = linger_s
        self._queue: list[_Pending[In, Out]] = []
        self._timer: asyncio.TimerHandle | None = None
        self._tasks: set[asyncio.Task[None]] = set()

    async def submit(self, item: In) -> Out:
        future: asyncio.Future[Out] = asyncio.get_running_loop().create_future()
        self._queue.append(_Pending(item, future))
        if len(self._queue) >= self.max_size:
            self._flush()
        elif self._timer is None:
            self._timer = asyncio.get_running_loop().call_later(self.linger_s, self._flush)
        return await future

    def _flush(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        while self._queue:
            batch, self._queue = self._queue[: self.max_size], self._queue[self.max_size :]
            task = asyncio.get_running_loop().create_task(self._send(batch))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)

    async def _send(self, batch: list[_Pending[In, Out]]) -> None:
        # Callers that gave up (cancelled) are not sent: their action was not begun.
        batch = [p for p in batch if not p.future.done()]
        if not batch:
            return
        try:
            results = await self.send([p.item for p in batch])
        except BaseException as exc:
            for pending in batch:
                if not pending.future.done():
                    pending.future.set_exception(exc)
            if not isinstance(exc, Exception):
                raise
            return
        for pending, result in zip(batch, results, strict=True):
            if pending.future.done():
                continue
            if isinstance(result, BaseException):
                pending.future.set_exception(result)
            else:
                pending.future.set_result(result)
