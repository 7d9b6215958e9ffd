"""Coalesce one-record calls into batch requests.

The engine applies one action at a time per record (an intent before, an outcome after), which
is what makes it crash-safe. Some things are cheap per record but dear per request: HubSpot
allows 100 requests per 10 seconds and takes 100 records per batch; a database commit costs
the same for one row as for fifty. Concurrent callers each hand their record to a `Batcher`; it
sends them together and gives each caller its own record's answer or error. A record that
fails in a batch fails alone.

When a batch leaves: as soon as `max_size` records wait, or when the oldest has waited
`linger_s`, and only once `ready` lets it (a rate limiter's next slot): records that arrive
while it waits ride along. With `serial`, one batch at a time: the next is cut only when the
previous one is answered, so a slow send gathers a bigger next batch (group commit).
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
    arrived: float


class Batcher(Generic[In, Out]):
    def __init__(
        self,
        send: SendBatch[In, Out],
        *,
        max_size: int,
        linger_s: float = 0.0,
        ready: Callable[[], Awaitable[None]] | None = None,
        serial: bool = False,
    ) -> None:
        self.send = send
        self.max_size = max_size
        self.linger_s = linger_s
        self.ready = ready
        self.serial = serial
        self._queue: list[_Pending[In, Out]] = []
        self._more = asyncio.Event()
        self._drainer: asyncio.Task[None] | None = None
        self._tasks: set[asyncio.Task[None]] = set()

    async def submit(self, item: In) -> Out:
        loop = asyncio.get_running_loop()
        future: asyncio.Future[Out] = loop.create_future()
        self._queue.append(_Pending(item, future, loop.time()))
        self._more.set()
        if self._drainer is None or self._drainer.done():
            self._drainer = loop.create_task(self._drain())
        return await future

    async def _drain(self) -> None:
        while self._queue:
            await self._gather()
            if self.ready is not None:
                await self.ready()
            batch, self._queue = self._queue[: self.max_size], self._queue[self.max_size :]
            if self.serial:
                await self._send(batch)
            else:
                task = asyncio.get_running_loop().create_task(self._send(batch))
                self._tasks.add(task)
                task.add_done_callback(self._tasks.discard)

    async def _gather(self) -> None:
        """Wait until a batch is full or its oldest record has waited `linger_s`."""
        loop = asyncio.get_running_loop()
        deadline = self._queue[0].arrived + self.linger_s
        while len(self._queue) < self.max_size:
            left = deadline - loop.time()
            if left <= 0:
                return
            self._more.clear()
            try:
                await asyncio.wait_for(self._more.wait(), left)
            except TimeoutError:
                return

    async def _send(self, batch: list[_Pending[In, Out]]) -> None:
        # Callers that gave up (cancelled) are not sent: their action was not begun.
        batch = [p for p in batch if not p.future.done()]
        if not batch:
            return
        try:
            results = await self.send([p.item for p in batch])
        except Exception as exc:  # noqa: BLE001 - the whole request failed: each caller's error
            for pending in batch:
                if not pending.future.done():
                    pending.future.set_exception(exc)
            return
        for pending, result in zip(batch, results, strict=True):
            if pending.future.done():
                continue
            if isinstance(result, BaseException):
                pending.future.set_exception(result)
            else:
                pending.future.set_result(result)
