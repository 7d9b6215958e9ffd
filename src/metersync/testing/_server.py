"""A small HTTP/1.1 server (asyncio streams + h11) that can misbehave on purpose.

An ASGI server would be less code, but it hides the connection: the emulator must be able to
reset a connection before answering, close it after doing the work without answering
(commit-then-drop), or answer after the client has given up. Keep-alive is supported, as
stripe-python's httpx client reuses connections.

BackgroundServer runs such a server on a thread of its own with its own event loop, for
emulators that synchronous tests start and stop (StripeEmulator, HubSpotEmulator).
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import socket
import struct
import threading
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from types import TracebackType
from typing import Self, TypeVar

import h11

MAX_BODY = 8 * 1024 * 1024
T = TypeVar("T")


@dataclass(frozen=True)
class Request:
    method: str
    path: str
    query: str
    headers: dict[str, str]  # lower-case names; the last value wins
    body: bytes


@dataclass(frozen=True)
class Response:
    status: int
    body: bytes
    headers: list[tuple[str, str]] = field(default_factory=list)
    delay_s: float = 0.0  # answer this much later (a response slower than the client waits)


@dataclass(frozen=True)
class Drop:
    """Close the connection without a response (the work, if any, is done)."""


@dataclass(frozen=True)
class Reset:
    """Reset the connection (TCP RST) without a response."""


Outcome = Response | Drop | Reset
Handler = Callable[[Request], Awaitable[Outcome]]


async def start_server(handler: Handler, host: str, port: int) -> asyncio.Server:
    async def on_connection(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            await _serve_connection(handler, reader, writer)
        except asyncio.CancelledError:
            # Shutdown cancels idle keep-alive connections. Python 3.11's stream callback calls
            # task.exception() on the task, which raises for a cancelled one: end normally.
            return

    return await asyncio.start_server(on_connection, host, port, backlog=2048)


async def _serve_connection(
    handler: Handler, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
) -> None:
    conn = h11.Connection(h11.SERVER, max_incomplete_event_size=64 * 1024)
    try:
        while True:
            request = await _read_request(conn, reader)
            if request is None:
                return
            outcome = await handler(request)
            if isinstance(outcome, Reset):
                _reset(writer)
                return
            if isinstance(outcome, Drop):
                writer.close()
                return
            if outcome.delay_s > 0:
                await asyncio.sleep(outcome.delay_s)
            headers = [("content-length", str(len(outcome.body))), *outcome.headers]
            if not any(name.lower() == "content-type" for name, _ in outcome.headers):
                headers.insert(0, ("content-type", "application/json"))  # unless it sets one
            writer.write(conn.send(h11.Response(status_code=outcome.status, headers=headers)))
            writer.write(conn.send(h11.Data(data=outcome.body)))
            writer.write(conn.send(h11.EndOfMessage()))
            await writer.drain()
            if conn.our_state is h11.MUST_CLOSE or conn.their_state is h11.MUST_CLOSE:
                return
            conn.start_next_cycle()
    except (ConnectionError, h11.ProtocolError, asyncio.IncompleteReadError):
        return
    finally:
        with contextlib.suppress(Exception):
            writer.close()


async def _read_request(conn: h11.Connection, reader: asyncio.StreamReader) -> Request | None:
    head: h11.Request | None = None
    body = bytearray()
    while True:
        event = conn.next_event()
        if event is h11.NEED_DATA:
            data = await reader.read(65536)
            conn.receive_data(data)  # b"" tells h11 the peer closed
            continue
        if isinstance(event, h11.Request):
            head = event
        elif isinstance(event, h11.Data):
            body += event.data
            if len(body) > MAX_BODY:
                raise h11.RemoteProtocolError("request body too large")
        elif isinstance(event, h11.EndOfMessage):
            assert head is not None
            target = head.target.decode("latin-1")
            path, _, query = target.partition("?")
            headers = {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in head.headers}
            return Request(head.method.decode("ascii"), path, query, headers, bytes(body))
        elif isinstance(event, h11.ConnectionClosed) or event is h11.PAUSED:
            return None


def _reset(writer: asyncio.StreamWriter) -> None:
    # SO_LINGER with a zero timeout makes close() send RST instead of FIN: the client sees
    # "connection reset by peer", as when a load balancer kills a connection mid-request.
    sock = writer.get_extra_info("socket")
    if sock is not None:
        with contextlib.suppress(OSError):
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    writer.transport.abort()


# -- running a server in the background ----------------------------------------------------------


class RealTimeLoop(asyncio.SelectorEventLoop):
    """An event loop on CLOCK_MONOTONIC read directly: freezegun patches time.monotonic (and
    any module attribute that refers to it), never clock_gettime."""

    def time(self) -> float:
        return time.clock_gettime(time.CLOCK_MONOTONIC)


class BackgroundServer:
    """Serves the handler that `setup` returns on its own thread and RealTimeLoop.

    `setup` runs on the loop before the port opens (so what it builds can use the loop's clock);
    `teardown` runs on the loop after the port has closed. `call` runs a function on the loop
    thread, which is how callers read or change the handler's state without locks.
    """

    def __init__(
        self,
        setup: Callable[[], Awaitable[Handler]],
        *,
        host: str,
        port: int,
        name: str,
        teardown: Callable[[], Awaitable[None]] | None = None,
    ) -> None:
        self.host = host
        self.port = port  # the bound port once started (0 asks the OS for a free one)
        self._setup = setup
        self._teardown = teardown
        self._name = name
        self._loop: RealTimeLoop | None = None
        self._thread: threading.Thread | None = None
        self._stopping: asyncio.Event | None = None

    @property
    def running(self) -> bool:
        return self._thread is not None

    def start(self) -> None:
        """Bind and serve; errors while binding (port in use, …) are raised here."""
        if self._thread is not None:
            raise RuntimeError("the emulator is already running")
        ready = threading.Event()
        failure: list[BaseException] = []
        self._loop = RealTimeLoop()
        self._thread = threading.Thread(
            target=self._run, args=(ready, failure), name=self._name, daemon=True
        )
        self._thread.start()
        ready.wait()
        if failure:
            self._thread.join()
            self._thread = None
            raise failure[0]

    def stop(self) -> None:
        if self._loop is None or self._thread is None:
            return
        if self._stopping is not None:
            self._loop.call_soon_threadsafe(self._stopping.set)
        self._thread.join(timeout=10)
        self._thread = None
        self._loop = None

    def call(self, fn: Callable[[], T]) -> T:
        """Run `fn` on the loop thread and return its result."""
        if self._loop is None:
            raise RuntimeError("the emulator is not running; call start() or use `with`")

        async def run() -> T:
            return fn()

        future: concurrent.futures.Future[T] = asyncio.run_coroutine_threadsafe(run(), self._loop)
        return future.result(timeout=30)

    def _run(self, ready: threading.Event, failure: list[BaseException]) -> None:
        loop = self._loop
        assert loop is not None
        asyncio.set_event_loop(loop)
        try:
            loop.run_until_complete(self._serve(ready))
        except BaseException as exc:  # noqa: BLE001 - handed to start() to raise
            failure.append(exc)
            ready.set()
        finally:
            loop.close()

    async def _serve(self, ready: threading.Event) -> None:
        self._stopping = asyncio.Event()
        handler = await self._setup()
        server = await start_server(handler, self.host, self.port)
        self.port = server.sockets[0].getsockname()[1]
        ready.set()
        try:
            await self._stopping.wait()
        finally:
            server.close()
            if self._teardown is not None:
                await self._teardown()
            # Keep-alive connections are tasks of their own; end them before the loop closes.
            others = [t for t in asyncio.all_tasks() if t is not asyncio.current_task()]
            for task in others:
                task.cancel()
            await asyncio.gather(*others, return_exceptions=True)


class ServedEmulator:
    """What every emulator does with its BackgroundServer: start, stop, `with`, its URL."""

    _server: BackgroundServer

    @property
    def host(self) -> str:
        return self._server.host

    @property
    def port(self) -> int:
        """The bound port once started (0 before, if the constructor asked for any free port)."""
        return self._server.port

    @property
    def url(self) -> str:
        """The base URL: the emulated API's paths go after it."""
        if not self._server.running:
            raise RuntimeError("the emulator is not running; call start() or use `with`")
        return f"http://{self.host}:{self.port}"

    def start(self) -> Self:
        self._server.start()
        return self

    def stop(self) -> None:
        self._server.stop()

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()
