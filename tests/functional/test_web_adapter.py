"""The streaming function: uvicorn behind the Lambda Web Adapter, whose invocation ends with the response. The
response's last byte waits for its settlement, so a frozen (or reclaimed) environment cannot take it along.
In-process: the gateway's app over raw ASGI, the upstream an `httpx.MockTransport`."""

from __future__ import annotations

import asyncio
import contextlib
import sqlite3
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import httpx
import orjson
import pytest

from adapters.providers.registry import REGISTRY
from handler.api import app as app_module
from handler.api.app import serving_app
from handler.config import parse_config
from handler.pipeline.budgets import CANCELLED
from handler.pipeline.gateway import Gateway, build_gateway
from handler.pipeline.key_admin import KeyAdmin
from handler.pipeline.keys import KeyService
from handler.pipeline.spool import ENV
from handler.ports import KeyRecord, Settlement, StoreError
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


async def behind_the_adapter(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> tuple[Gateway, Path, str]:
    """A gateway as the streaming function runs it (behind the adapter), on a SQLite file; and a budgeted key."""
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
    return gateway, store, (await KeyAdmin(KeyService(gateway.store, 0)).mint(record)).key


def lines(store: Path) -> int:
    # As another process, or this one once thawed, reads it. (A connection's `with` ends a transaction, not the
    # connection: Python 3.13 warns of one left to the garbage collector.)
    with contextlib.closing(sqlite3.connect(store)) as other:
        count: int = other.execute("SELECT count(*) FROM ledger").fetchone()[0]
        return count


def call(key: str, stream: bool) -> tuple[dict[str, Any], Callable[[], Awaitable[dict[str, Any]]], asyncio.Event]:
    """The scope and `receive` of one chat call from the adapter (on loopback); setting the event makes the
    client leave."""
    body = orjson.dumps({"model": "m", "messages": HI, "stream": stream})
    headers = [(b"authorization", f"Bearer {key}".encode()), (b"content-type", b"application/json")]
    scope = post_scope("/v1/chat/completions", headers, ("127.0.0.1", 5000))
    received = False
    disconnected = asyncio.Event()

    async def receive() -> dict[str, Any]:
        nonlocal received
        if not received:
            received = True
            return {"type": "http.request", "body": body, "more_body": False}
        await disconnected.wait()  # as a server's `receive` waits for the client to leave
        return {"type": "http.disconnect"}

    return scope, receive, disconnected


@pytest.mark.parametrize("stream", [False, True])
async def test_the_last_byte_waits_for_the_settlement(
    stream: bool, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Its ledger line is written, as another process reads the store, when the adapter gets the last byte."""
    gateway, store, key = await behind_the_adapter(tmp_path, monkeypatch)
    scope, receive, _ = call(key, stream)
    at_the_end: list[int] = []
    statuses: list[int] = []

    async def send(message: dict[str, Any]) -> None:
        if message["type"] == "http.response.start":
            statuses.append(message["status"])
        elif not message.get("more_body", False):
            at_the_end.append(lines(store))

    try:
        await serving_app(gateway)(scope, receive, send)
        assert statuses == [200] and at_the_end == [1]
    finally:
        await gateway.aclose()


async def test_a_stream_its_client_left_is_settled_before_the_app_returns(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A stream whose client left never sends its end: the server ends the response, and with it the invocation,
    once the app returns, which it does only with the stream's line written."""
    gateway, store, key = await behind_the_adapter(tmp_path, monkeypatch)
    scope, receive, disconnected = call(key, stream=True)
    sent: list[bool] = []

    async def send(message: dict[str, Any]) -> None:
        if message["type"] == "http.response.body":
            sent.append(message.get("more_body", False))
            disconnected.set()  # the client leaves after the first piece
            await asyncio.sleep(0.01)  # (a write that waits on the socket)

    try:
        await serving_app(gateway)(scope, receive, send)
        assert sent == [True] and lines(store) == 1
    finally:
        await gateway.aclose()


@pytest.mark.parametrize("stream", [False, True])
async def test_a_settlement_the_store_does_not_take_is_spooled_before_the_deadline(
    stream: bool, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The last byte waited on the store however long it stalled: past the invocation's deadline, where Lambda kills
    the environment, the settlement unwritten and not spooled. Now it goes to the spool at the deadline less the
    margin, the answer ends, and the spool lands it once."""
    monkeypatch.delenv(ENV, raising=False)
    gateway, store, key = await behind_the_adapter(tmp_path, monkeypatch)
    answering = asyncio.Event()

    async def stalls(settlement: Settlement) -> None:  # DynamoDB browning out: no answer
        await answering.wait()
        raise StoreError("stalled")

    monkeypatch.setattr(gateway.store, "settle", stalls)
    monkeypatch.setattr(gateway.store, "settle_soon", lambda settlement: None)  # as DynamoDB's: a task each
    scope, receive, _ = call(key, stream)
    deadline_ms = time.time() * 1000 + 2500
    scope["headers"].append((b"x-amzn-lambda-context", orjson.dumps({"request_id": "r", "deadline": deadline_ms})))
    ended: list[float] = []

    async def send(message: dict[str, Any]) -> None:
        if message["type"] == "http.response.body" and not message.get("more_body", False):
            ended.append(time.time() * 1000)

    try:
        async with asyncio.timeout(10):
            await serving_app(gateway)(scope, receive, send)
        assert len(ended) == 1 and ended[0] < deadline_ms - 300  # (the margin is 500 ms)
        assert lines(store) == 0 and gateway.spool.count() == 1
        monkeypatch.undo()  # the store answers again
        assert await gateway.spool.redrive(gateway.store) == 1
        assert lines(store) == 1 and gateway.spool.count() == 0
    finally:
        answering.set()
        await gateway.aclose()


@pytest.mark.parametrize("stream", [False, True])
@pytest.mark.parametrize("store", ["stalls", "throttles"])
async def test_the_last_byte_waits_for_the_settlement_a_few_seconds_then_it_is_spooled(
    store: str, stream: bool, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """With the invocation's deadline far off (the template's 900 s), the last byte waited on the store until then:
    through the Web Adapter's emulation a stream's end came 77 s after its last event with DynamoDB stalled, 11.5 s
    throttled, for every stream of the function. Now it waits `LAST_BYTE_SETTLE_S` at most, the settlement is
    spooled (its reason says so), the response ends, and the spool lands it once."""
    monkeypatch.delenv(ENV, raising=False)
    monkeypatch.setattr(app_module, "LAST_BYTE_SETTLE_S", 0.3)
    gateway, db, key = await behind_the_adapter(tmp_path, monkeypatch)
    answering = asyncio.Event()
    calls: list[float] = []

    async def refuses(settlement: Settlement) -> None:
        calls.append(time.perf_counter())
        if store == "stalls":  # DynamoDB browning out: no answer
            await answering.wait()
        raise StoreError("ThrottlingException")  # (refused at once, each of the meter's attempts)

    monkeypatch.setattr(gateway.store, "settle", refuses)
    monkeypatch.setattr(gateway.store, "settle_soon", lambda settlement: None)  # as DynamoDB's: a task each
    scope, receive, _ = call(key, stream)
    deadline_ms = time.time() * 1000 + 900_000
    scope["headers"].append((b"x-amzn-lambda-context", orjson.dumps({"request_id": "r", "deadline": deadline_ms})))
    ended: list[float] = []
    at_the_end: list[int] = []

    async def send(message: dict[str, Any]) -> None:
        if message["type"] == "http.response.body" and not message.get("more_body", False):
            ended.append(time.perf_counter())
            at_the_end.append(gateway.spool.count())

    try:
        async with asyncio.timeout(10):
            await serving_app(gateway)(scope, receive, send)
        assert len(ended) == 1 and ended[0] - calls[0] < 0.3 + 0.2, ended[0] - calls[0]
        assert at_the_end == [1] and lines(db) == 0  # spooled before the last byte went
        assert gateway.spool.path is not None
        [spooled] = [orjson.loads(raw) for raw in gateway.spool.path.read_bytes().splitlines()]
        assert spooled["reason"] == f"{CANCELLED}: {app_module.LAST_BYTE_SPOOLED}"
        monkeypatch.undo()  # the store answers again
        answering.set()
        assert await gateway.spool.redrive(gateway.store) == 1
        assert lines(db) == 1 and gateway.spool.count() == 0
    finally:
        answering.set()
        await gateway.aclose()
