"""A non-streamed call is watched for the client leaving only where a client can leave before the answer."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

from starlette.requests import Request

from handler.api.streaming import WATCH_AFTER_S, DisconnectWatch, EventStream, until_client_leaves


def request(scope: dict[str, Any], asked: list[str]) -> Request:
    async def receive() -> dict[str, Any]:
        asked.append("receive")
        await asyncio.sleep(10)  # a client that stays
        return {"type": "http.disconnect"}

    return Request({"type": "http", "method": "POST", "path": "/v1/chat/completions", "headers": [], **scope}, receive)


async def slow() -> str:
    await asyncio.sleep(WATCH_AFTER_S * 2)
    return "answer"


async def test_a_server_connection_is_watched_once_the_call_is_slow() -> None:
    asked: list[str] = []
    assert await until_client_leaves(request({}, asked), slow()) == "answer"
    assert asked == ["receive"]


async def test_a_buffered_lambda_invocation_is_not_watched() -> None:
    # Mangum answers `receive` with the disconnect only after the answer: a watch would be a task for nothing.
    asked: list[str] = []
    scope = {"aws.event": {"version": "2.0"}, "aws.context": None}
    assert await until_client_leaves(request(scope, asked), slow()) == "answer"
    assert asked == []


async def test_a_stream_whose_client_leaves_during_a_paused_write_closes_its_events_at_once() -> None:
    """The client leaving cancels the writer. While it waits on a paused write (a slow client's full buffer), its
    events' generator sits at a `yield`: nothing closed it (so nothing closed the upstream or settled what was
    used) until it was collected, whenever that was."""
    closed: list[str] = []
    written: list[bytes] = []

    async def events() -> AsyncIterator[bytes]:
        try:
            for n in range(100):
                yield f"data: {n}\n\n".encode()
        finally:
            closed.append("closed")

    async def receive() -> dict[str, Any]:
        await asyncio.sleep(0.05)
        return {"type": "http.disconnect"}

    async def send(message: dict[str, Any]) -> None:
        if message["type"] == "http.response.body":
            written.append(message["body"])
            if len(written) == 2:
                await asyncio.sleep(10)  # the second write is paused: the client reads no more

    stream = events()

    async def answer() -> None:  # (the watch cancels the task it is made in: the one writing)
        await EventStream(stream, {}, DisconnectWatch(receive))({"type": "http"}, receive, send)

    await asyncio.wait_for(answer(), 5)
    assert closed == ["closed"]  # the response (and this test) still hold the generator: closed all the same
    assert len(written) == 2
