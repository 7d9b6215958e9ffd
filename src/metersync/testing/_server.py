"""A small HTTP/1.1 server (asyncio streams + h11) that can misbehave on purpose.

An ASGI server would be less code, but it hides the connection: the emulator must be able to
reset a connection before answering, close it after doing the work without answering
(commit-then-drop), or answer after the client has given up. Keep-alive is supported, as
stripe-python's httpx client reuses connections.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
import struct
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field

import h11

MAX_BODY = 8 * 1024 * 1024


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
            headers = [
                ("content-type", "application/json"),
                ("content-length", str(len(outcome.body))),
                *outcome.headers,
            ]
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
