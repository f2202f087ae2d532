"""A non-streamed call is watched for the client leaving only where a client can leave before the answer."""

from __future__ import annotations

import asyncio
from typing import Any

from starlette.requests import Request

from handler.api.streaming import WATCH_AFTER_S, until_client_leaves


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
