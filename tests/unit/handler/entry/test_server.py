"""`gateway serve`'s HTTP protocol (handler/entry/server.py), driven byte by byte over a transport that records what
is written to it."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

import uvicorn
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response, StreamingResponse
from starlette.routing import Route
from uvicorn.server import ServerState

from handler.entry.server import BoundedHttpToolsProtocol

BODY = b'{"ok": true}'


async def whole(request: Request) -> Response:
    return Response(BODY, media_type="application/json")


async def streamed(request: Request) -> StreamingResponse:
    async def events() -> AsyncIterator[bytes]:
        yield b"data: one\n\n"
        await asyncio.sleep(0.01)
        yield b"data: two\n\n"

    return StreamingResponse(events(), media_type="text/event-stream")


APP = Starlette(routes=[Route("/whole", whole, methods=["GET", "HEAD"]), Route("/stream", streamed)])


class Recorded(asyncio.Transport):
    """What the protocol writes, write by write."""

    def __init__(self) -> None:
        super().__init__()
        self.writes: list[bytes] = []
        self.closed = False

    def write(self, data: Any) -> None:
        self.writes.append(bytes(data))

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        return {"sockname": ("127.0.0.1", 8080), "peername": ("127.0.0.1", 40000)}.get(name, default)

    def is_closing(self) -> bool:
        return self.closed

    def close(self) -> None:
        self.closed = True

    def pause_reading(self) -> None:
        pass

    def resume_reading(self) -> None:
        pass

    def get_write_buffer_size(self) -> int:
        return 0


async def answered(head: bytes) -> list[bytes]:
    """The writes of the answer to the request `head` (a request without a body)."""
    config = uvicorn.Config(APP, lifespan="off", log_level="warning")
    protocol = BoundedHttpToolsProtocol(config=config, server_state=ServerState(), app_state={})
    transport = Recorded()
    protocol.connection_made(transport)
    protocol.data_received(head)
    for _ in range(100):
        if protocol.cycle is not None and protocol.cycle.response_complete:
            break
        await asyncio.sleep(0.005)
    protocol.connection_lost(None)
    return transport.writes


async def test_a_head_requests_answer_is_its_head_alone() -> None:
    """A HEAD answer writes no body: its head alone goes."""
    [written] = await answered(b"HEAD /whole HTTP/1.1\r\nhost: gateway\r\n\r\n")
    assert written.startswith(b"HTTP/1.1 200 OK\r\n") and written.endswith(b"\r\n\r\n")


async def test_a_streams_head_goes_before_its_first_event() -> None:
    """A stream (no content-length) is written as it comes: its head at once, each event then."""
    writes = await answered(b"GET /stream HTTP/1.1\r\nhost: gateway\r\n\r\n")
    assert writes[0].startswith(b"HTTP/1.1 200 OK\r\n") and writes[0].endswith(b"\r\n\r\n")
    assert b"data: one" in writes[1] and b"data: two" in b"".join(writes[2:])


async def test_a_head_answers_head_goes_before_a_431_pipelined_behind_it() -> None:
    """A request refused for its head (431) pipelined behind a HEAD: the HEAD's answer first, then the 431 (a head
    held to go with a body, which a HEAD answer has not, went after the 431 had closed the connection: found by
    review of a change since taken back)."""
    refused = b"GET /whole HTTP/1.1\r\nhost: gateway\r\nconnection: close\r\nx-big: " + b"a" * 120_000 + b"\r\n\r\n"
    writes = await answered(b"HEAD /whole HTTP/1.1\r\nhost: gateway\r\n\r\n" + refused)
    assert writes[0].startswith(b"HTTP/1.1 200 OK\r\n"), [w[:40] for w in writes]
    assert writes[1].startswith(b"HTTP/1.1 431 "), [w[:40] for w in writes]
