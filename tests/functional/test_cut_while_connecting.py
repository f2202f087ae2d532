"""A request cut while the gateway is still opening its connection to the provider (nothing sent) is charged
nothing: its provider never saw it, as one the connect timeout ends (`=connect_timeout`, free). Cut at the same point
by its deadline (`x-gateway-deadline-ms`; on Lambda, the invocation's time left) or by its client leaving, it was a
ledger line charged the reserved worst case, as if the provider had been sent it and might run it to the end: a
tight deadline in front of an unreachable region cost every request its worst case. Found by review
(streamrev36)."""

from __future__ import annotations

import asyncio
import socket
import time
from collections.abc import Iterator
from typing import Any

import httpx
import orjson
import pytest

from adapters.providers.registry import REGISTRY
from handler.api.app import create_app
from handler.config import parse_config
from handler.pipeline.budgets import period_of
from handler.pipeline.gateway import build_gateway
from handler.pipeline.key_admin import KeyAdmin
from handler.pipeline.keys import KeyService
from handler.ports import KeyRecord
from tests.support.inprocess import PROVIDER_KEYS, Served

HI = [{"role": "user", "content": "hi"}]


@pytest.fixture
def unconnectable() -> Iterator[int]:
    """A loopback port whose accept queue is full: a connection to it hangs in its handshake (nothing is sent)."""
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(0)
    port = listener.getsockname()[1]
    queued = []
    for _ in range(3):
        filler = socket.socket()
        filler.setblocking(False)
        try:
            filler.connect(("127.0.0.1", port))
        except BlockingIOError:
            pass
        queued.append(filler)
    yield port
    for filler in queued:
        filler.close()
    listener.close()


async def gateway(port: int, kind: str = "openai", connect_s: float = 5) -> Served:
    """The gateway over its own HTTP/1.1 client, its provider (of type `kind`) at `port`, a key with one request a
    minute."""
    base_url = f"http://127.0.0.1:{port}" + ("/v1" if kind == "openai" else "")
    timeouts = {"connect": connect_s, "first_byte": 5, "between_chunks": 5}
    data: dict[str, Any] = {
        "gateway": {"timeouts": timeouts, "max_retries_per_deployment": 0},
        "providers": {"up": {"type": kind, "api_key": "env:OPENAI_API_KEY", "base_url": base_url}},
        "models": {"m": {"deployments": [{"provider": "up", "model": "m"}], "price": {"input": 1.0, "output": 2.0}}},
    }
    built = build_gateway(config=parse_config(data, set(REGISTRY)), store_url="sqlite://", environ=dict(PROVIDER_KEYS))
    record = KeyRecord(id="", name="k", secret_hash="", created_at=0, budget_usd=1.0, budget_period="month", rpm=1)
    key = await KeyAdmin(KeyService(built.store, 0)).mint(record)
    client = httpx.AsyncClient(transport=httpx.ASGITransport(app=create_app(built)), base_url="http://gw")
    return Served(built, client, key)


@pytest.mark.parametrize("cut", ["deadline", "client_left"])
@pytest.mark.parametrize("stream", [True, False], ids=["streamed", "whole"])
async def test_a_request_cut_before_its_connection_opened_is_charged_nothing(
    unconnectable: int, cut: str, stream: bool
) -> None:
    await asyncio.sleep(0.1)  # (the queued connections settle in the accept queue)
    served = await gateway(unconnectable)
    body = {"model": "m", "messages": HI, "max_tokens": 100, "stream": stream}
    headers = {"authorization": f"Bearer {served.key.key}", "x-gateway-deadline-ms": "300"}
    if cut == "client_left":
        await served.left("/v1/chat/completions", body, after_s=0.3)
    # (Cut by its deadline; after a cut one, with `rpm: 1`, a 504 again: the minute's request was given back.)
    answer = await served.http.post("/v1/chat/completions", json=body, headers=headers)
    lines = await served.ledger()
    meter = await served.gateway.store.meter(served.key.record.id, period_of("month", time.time()))
    await served.gateway.aclose()
    assert answer.status_code == 504, answer.text
    message = orjson.loads(answer.content)["error"]["message"]
    assert "nothing was sent, nothing is charged" in message, message
    assert answer.headers["x-gateway-route"] == "up/m@global=connect_timeout"
    assert lines == []
    assert not any(meter.committed_usd.values()), meter


async def test_a_token_count_cut_while_connecting_gives_back_its_count(unconnectable: int) -> None:
    """A count's own count (and a fallback's), taken out of those to give back as its attempt went out, was not put
    back when the attempt was cut while connecting: with `rpm: 1`, the next count was a 429 for the rest of the
    minute. Found by review (mergerev36)."""
    await asyncio.sleep(0.1)
    served = await gateway(unconnectable, "anthropic")
    headers = {"x-api-key": served.key.key, "anthropic-version": "2023-06-01", "x-gateway-deadline-ms": "300"}
    body = {"model": "m", "messages": HI}
    try:
        first = await served.http.post("/v1/messages/count_tokens", json=body, headers=headers)
        await served.gateway.drain()
        second = await served.http.post("/v1/messages/count_tokens", json=body, headers=headers)
    finally:
        await served.gateway.aclose()
    assert first.headers["x-gateway-route"] == "up/m@global=connect_timeout", first.headers
    assert second.status_code != 429, second.text


async def test_a_client_gone_while_connecting_gives_back_the_half_open_breakers_probe(unconnectable: int) -> None:
    """A half-open breaker lets one probe through, taken as the attempt goes out: one whose client left while its
    connection opened (nothing sent, nothing the deployment did wrong) kept it, and every key passed the deployment
    over as `=breaker-open` for a cooldown. Found by review (mergerev36b)."""
    await asyncio.sleep(0.1)
    served = await gateway(unconnectable)
    breakers, label, now = served.gateway.router.breakers, "up/m@global", [1000.0]
    breakers.clock = lambda: now[0]
    for _ in range(breakers.threshold):
        breakers.failure(label)
    now[0] += breakers.cooldown + 1  # (past its cooldown: half-open)
    assert breakers.gate(label) == "half-open"
    try:
        await served.left("/v1/chat/completions", {"model": "m", "messages": HI, "max_tokens": 100}, after_s=0.3)
        await served.gateway.drain()
    finally:
        await served.gateway.aclose()
    assert breakers.gate(label) == "half-open"  # (the next request may probe it)
