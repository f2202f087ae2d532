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
from adapters.sigv4 import Credentials
from adapters.store.dynamo_client import DynamoDBClient
from adapters.store.dynamodb import DynamoDBStore
from handler.api import app as app_module
from handler.api.app import serving_app
from handler.config import parse_config
from handler.pipeline.budgets import CANCELLED, period_of
from handler.pipeline.budgets import SPOOL_ENV as ENV
from handler.pipeline.gateway import Gateway, build_gateway
from handler.pipeline.key_admin import KeyAdmin
from handler.pipeline.keys import KeyService
from handler.ports import STORE_DEADLINE, KeyRecord, MeterSnapshot, Settlement, StoreError
from tests.conftest import clear_of_period_end
from tests.support.asgi import post_scope
from tests.support.dynamo import DynamoServer, SlowAnswers

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
    store = tmp_path / "gateway.db"
    gateway = adapted(monkeypatch, store_url=f"sqlite:///{store}")
    record = KeyRecord(id="", name="k", secret_hash="", created_at=0, budget_usd=10.0)
    return gateway, store, (await KeyAdmin(KeyService(gateway.store, 0)).mint(record)).key


def adapted(monkeypatch: pytest.MonkeyPatch, **store: Any) -> Gateway:
    """A gateway as the streaming function runs it (behind the adapter), on `store` (`build_gateway`'s)."""
    monkeypatch.setattr(app_module, "BEHIND_WEB_ADAPTER", True)
    model = {"deployments": [{"provider": "openai", "model": "gpt-4o-mini"}], "price": {"input": 1.0, "output": 2.0}}
    data = {
        "providers": {"openai": {"type": "openai", "api_key": "env:OPENAI_API_KEY", "base_url": "http://up/v1"}},
        "models": {"m": model},
    }
    return build_gateway(
        config=parse_config(data, set(REGISTRY)),
        environ={"OPENAI_API_KEY": "sk-test-000000000000"},
        transport=httpx.MockTransport(upstream),
        **store,
    )


def lines(store: Path) -> int:
    # As another process, or this one once thawed, reads it. (A connection's `with` ends a transaction, not the
    # connection: Python 3.13 warns of one left to the garbage collector.)
    with contextlib.closing(sqlite3.connect(store)) as other:
        count: int = other.execute("SELECT count(*) FROM ledger").fetchone()[0]
        return count


def call(
    key: str, stream: bool, **fields: Any
) -> tuple[dict[str, Any], Callable[[], Awaitable[dict[str, Any]]], asyncio.Event]:
    """The scope and `receive` of one chat call from the adapter (on loopback), `fields` added to its body; setting
    the event makes the client leave."""
    body = orjson.dumps({"model": "m", "messages": HI, "stream": stream, **fields})
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


async def held(store: DynamoDBStore, key_id: str) -> tuple[float, dict[str, int]]:
    """What `key_id` holds this month: committed, and the rate counters that count anything this minute (none, once
    it has ended); read under no request's deadline."""
    period = period_of("month", time.time())

    async def read() -> MeterSnapshot:
        STORE_DEADLINE.set(None)  # (this task's own context)
        return await store.meter(key_id, period)

    meter = await asyncio.ensure_future(read())
    return round(meter.committed_usd[period], 9), {name: count for name, count in meter.rates.items() if count}


@pytest.mark.parametrize("bound", ["none", "last_byte", "deadline"])
async def test_the_last_byte_waits_for_a_late_admissions_answer_and_its_release(
    bound: str, dynamo: DynamoServer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A 503 whose DynamoDB admission landed and was answered 1 s past `x-gateway-deadline-ms: 300`: its last byte
    went at once, the environment was frozen with the answer still to come, and the reservation the admission wrote
    was released only at the next thaw, or never (the environment reclaimed): $0.02001 of the key's $1 budget, its
    minute's request and tokens held until it expired (960 s). Now the last byte waits for the answer, then for the
    release, within `LAST_BYTE_SETTLE_S` in all: nothing is held when it goes. An answer that has not come by the
    bound (`last_byte`, 0.3 s here), or by the invocation's deadline less the margins (`deadline`), does not hold the
    end; the release comes with the answer (through the spool, past the invocation's deadline)."""
    clear_of_period_end("month", 30)  # (what the key holds is read in the month its request reserved in)
    monkeypatch.setenv(ENV, str(tmp_path / "settlements.jsonl"))
    transport = SlowAnswers()
    dynamodb = DynamoDBClient("us-east-1", Credentials("testing", "testing"), dynamo.url, transport=transport)
    store = DynamoDBStore(dynamodb, dynamo.create_table(), owned=[dynamodb])
    gateway = adapted(monkeypatch, store=store)
    limited = KeyRecord(
        id="", name="l", secret_hash="", created_at=0, budget_usd=1.0, budget_period="month", rpm=10, tpm=100_000
    )
    key = await KeyAdmin(KeyService(store, 0)).mint(limited)
    scope, receive, _ = call(key.key, False, max_tokens=10_000)  # (a worst case of $0.02001)
    # The invocation's deadline: 900 s off (the template's), or 2 s, its late answers waited for until 1 s before it.
    left_ms = 2000 if bound == "deadline" else 900_000
    lambda_context = orjson.dumps({"request_id": "r", "deadline": time.time() * 1000 + left_ms})
    scope["headers"] += [(b"x-gateway-deadline-ms", b"300"), (b"x-amzn-lambda-context", lambda_context)]
    if bound == "last_byte":
        monkeypatch.setattr(app_module, "LAST_BYTE_SETTLE_S", 0.3)
    transport.slowed, transport.delay = 1, 1.0 if bound == "none" else 2.5
    statuses: list[int] = []
    at_the_end: list[tuple[float, tuple[float, dict[str, int]]]] = []

    async def send(message: dict[str, Any]) -> None:
        if message["type"] == "http.response.start":
            statuses.append(message["status"])
        elif not message.get("more_body", False):
            at_the_end.append((time.perf_counter() - started, await held(store, key.record.id)))

    started = time.perf_counter()
    try:
        async with asyncio.timeout(10):
            await serving_app(gateway)(scope, receive, send)
        [(ended, held_then)] = at_the_end
        assert statuses == [503]
        if bound == "none":
            assert held_then == (0, {}) and 1.0 < ended < 1.5, at_the_end
        else:  # (the 503 at 0.3 s; the bound 0.3 s later, or 1 s before the invocation's deadline)
            assert held_then[0] == 0.02001 and ended < (0.8 if bound == "last_byte" else 1.2), at_the_end
            await asyncio.sleep(2.7 - ended)  # the answer comes (at the next thaw)
            await gateway.drain()
            await gateway.spool.redrive(gateway.store)
            assert await held(store, key.record.id) == (0, {}) and gateway.spool.count() == 0
    finally:
        await gateway.aclose()
