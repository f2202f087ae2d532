"""The streaming function: uvicorn behind the Lambda Web Adapter, whose invocation ends with the response. The
response's last byte waits for its settlement, so a frozen (or reclaimed) environment cannot take it along.
In-process: the gateway's app over raw ASGI, the upstream an `httpx.MockTransport`."""

from __future__ import annotations

import asyncio
import sqlite3
from pathlib import Path
from typing import Any

import httpx
import orjson
import pytest

from adapters.providers.registry import REGISTRY
from handler.api import app as app_module
from handler.api.app import serving_app
from handler.config import parse_config
from handler.pipeline.gateway import build_gateway
from handler.pipeline.keys import KeyService
from handler.ports import KeyRecord
from tests.support.asgi import post_scope

HI = [{"role": "user", "content": "hi"}]
USAGE = {"prompt_tokens": 10, "completion_tokens": 5, "total_tokens": 15}


def upstream(request: httpx.Request) -> httpx.Response:
    if orjson.loads(request.content).get("stream"):
        chunk = {"id": "c1", "object": "chat.completion.chunk", "created": 1, "model": "gpt-4o-mini"}
        events = [
            {
                **chunk,
                "choices": [{"index": 0, "delta": {"role": "assistant", "content": "hi"}, "finish_reason": None}],
            },
            {**chunk, "choices": [{"index": 0, "delta": {}, "finish_reason": "stop"}]},
            {**chunk, "choices": [], "usage": USAGE},
        ]
        body = b"".join(b"data: " + orjson.dumps(e) + b"\n\n" for e in events) + b"data: [DONE]\n\n"
        return httpx.Response(200, content=body, headers={"content-type": "text/event-stream"})
    message = {"role": "assistant", "content": "hi"}
    choice = {"index": 0, "message": message, "finish_reason": "stop"}
    completion = {"id": "c1", "object": "chat.completion", "created": 1, "model": "gpt-4o-mini", "choices": [choice]}
    return httpx.Response(200, json={**completion, "usage": USAGE})


@pytest.mark.parametrize("stream", [False, True])
async def test_the_last_byte_waits_for_the_settlement(
    stream: bool, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Its ledger line is written, as another process reads the store, when the adapter gets the last byte."""
    monkeypatch.setattr(app_module, "BEHIND_WEB_ADAPTER", True)
    store = tmp_path / "gateway.db"
    model = {"deployments": [{"provider": "openai", "model": "gpt-4o-mini"}], "price": {"input": 1.0, "output": 2.0}}
    data = {
        "providers": {"openai": {"type": "openai", "api_key": "env:OPENAI_API_KEY", "base_url": "http://up/v1"}},
        "models": {"m": model},
    }
    gateway = build_gateway(
        config=parse_config(data, set(REGISTRY)),
        store_url=f"sqlite:///{store}",
        environ={"OPENAI_API_KEY": "sk-test-000000000000"},
        transport=httpx.MockTransport(upstream),
    )
    record = KeyRecord(id="", name="k", secret_hash="", created_at=0, budget_usd=10.0)
    key = (await KeyService(gateway.store, 0).mint(record)).key
    body = orjson.dumps({"model": "m", "messages": HI, "stream": stream})
    headers = [(b"authorization", f"Bearer {key}".encode()), (b"content-type", b"application/json")]
    scope = post_scope("/v1/chat/completions", headers, ("127.0.0.1", 5000))  # the adapter, on loopback
    received = False
    disconnected = asyncio.Event()  # (never set: the client stays)
    at_the_end: list[int] = []
    statuses: list[int] = []

    async def receive() -> dict[str, Any]:
        nonlocal received
        if not received:
            received = True
            return {"type": "http.request", "body": body, "more_body": False}
        await disconnected.wait()  # as a server's `receive` waits for the client to leave
        return {"type": "http.disconnect"}

    async def send(message: dict[str, Any]) -> None:
        if message["type"] == "http.response.start":
            statuses.append(message["status"])
        elif not message.get("more_body", False):
            with sqlite3.connect(store) as other:  # as another process, or this one once thawed, reads it
                at_the_end.append(other.execute("SELECT count(*) FROM ledger").fetchone()[0])

    try:
        await serving_app(gateway)(scope, receive, send)
        assert statuses == [200] and at_the_end == [1]
    finally:
        await gateway.aclose()
