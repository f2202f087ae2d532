"""Faults: upstream 429/500/timeouts/refused/cut/drip, and a DynamoDB store that throttles or times out."""

from __future__ import annotations

import asyncio
import dataclasses
import time
from typing import Any

import httpx
import pytest
from botocore.exceptions import ClientError, ReadTimeoutError

from adapters.providers.registry import REGISTRY
from adapters.store.dynamodb import DynamoDBStore
from adapters.store.slices import IDLE_S, SWEEP_S
from handler.api.app import create_app
from handler.pipeline.gateway import build_gateway
from handler.pipeline.key_admin import KeyAdmin
from handler.pipeline.keys import KeyService
from handler.ports import KeyRecord, Settlement, UsageQuery
from tests.functional.conftest import FAKE_KEYS, Running, gateway_config
from tests.support.dynamo import DynamoServer

HI = [{"role": "user", "content": "Hi"}]


def chat(running: Running, key: str, model: str, stream: bool = False, **headers: str) -> httpx.Response:
    body = {"model": model, "messages": HI, "stream": stream}
    sent = {"authorization": f"Bearer {key}", **headers}
    return httpx.post(f"{running.url}/v1/chat/completions", json=body, headers=sent, timeout=30)


@pytest.mark.parametrize(
    ("model", "status", "code", "route"),
    [
        ("limited", 200, None, "fail-429@global=429"),  # 429, retried, then the fallback
        ("flaky", 200, None, "fail-500@global=500"),
        ("rejects", 400, "invalid_value", "fail-400@global=400"),  # the provider's own code, relayed
        ("refused", 200, None, "=connect_error"),
        ("slow-then-ok", 200, None, "slow@global=upstream_timeout"),
        ("cut-then-ok", 200, None, "stream-cut@global=200"),
        ("garbage", 200, None, "bad-json@global=invalid_json"),
    ],
)
def test_upstream_faults(running: Running, key: str, model: str, status: int, code: str | None, route: str) -> None:
    answer = chat(running, key, model)
    assert answer.status_code == status, answer.text
    assert route in answer.headers["x-gateway-route"]
    if code:
        assert answer.json()["error"]["code"] == code and "test-openai-key" not in answer.text


def test_a_slow_upstream_is_504_and_a_cut_stream_ends_with_an_error_event(running: Running, key: str) -> None:
    broken = chat(running, key, "broken", **{"x-gateway-fallbacks": "none"})
    assert broken.status_code == 502 and broken.json()["error"]["upstream_status"] == 500
    slow = chat(running, key, "slow", **{"x-gateway-fallbacks": "none"})
    assert slow.status_code == 504 and slow.json()["error"]["code"] == "upstream_timeout"
    deadline = chat(running, key, "slow", **{"x-gateway-deadline-ms": "300"})
    assert deadline.status_code == 504
    cut = chat(running, key, "cut", stream=True)
    assert cut.status_code == 200 and cut.text.rstrip().endswith("data: [DONE]")
    assert '"error"' in cut.text or '"cost"' in cut.text


class ThrottledClient:
    """A boto3 DynamoDB client whose chosen operations fail as DynamoDB fails under load."""

    def __init__(self, client: Any) -> None:
        self._client = client
        self.failing: dict[str, int] = {}
        self.calls: dict[str, int] = {}

    def __getattr__(self, name: str) -> Any:
        real = getattr(self._client, name)

        def call(**kwargs: Any) -> Any:
            self.calls[name] = self.calls.get(name, 0) + 1
            if self.failing.get(name, 0) > 0:
                self.failing[name] -= 1
                if name == "get_item":
                    raise ReadTimeoutError(endpoint_url="http://dynamodb")
                error = {"Error": {"Code": "ProvisionedThroughputExceededException", "Message": "slow down"}}
                raise ClientError(error, name)
            return real(**kwargs)

        return call


@pytest.fixture
def throttled(dynamo: DynamoServer, running: Running) -> Any:
    client = ThrottledClient(dynamo.client())
    store = DynamoDBStore(client, dynamo.create_table())
    config = gateway_config(running.upstream.url, set(running.fakes))
    gateway = build_gateway(config=config, store=store, environ={**FAKE_KEYS, "GATEWAY_REGION": "us-east-1"})
    assert set(REGISTRY)
    return client, store, gateway


async def asgi(gateway: Any, key: str, model: str = "gpt-4o-mini") -> httpx.Response:
    transport = httpx.ASGITransport(app=create_app(gateway))
    async with httpx.AsyncClient(transport=transport, base_url="http://gw") as client:
        body = {"model": model, "messages": HI}
        return await client.post("/v1/chat/completions", json=body, headers={"authorization": f"Bearer {key}"})


def test_budgeted_keys_fail_closed_when_the_store_throttles(throttled: Any) -> None:
    client, store, gateway = throttled

    async def go() -> None:
        minted = await KeyAdmin(KeyService(store, 0)).mint(
            KeyRecord(id="", name="b", secret_hash="", created_at=0, budget_usd=1)
        )
        free = await KeyAdmin(KeyService(store, 0)).mint(KeyRecord(id="", name="f", secret_hash="", created_at=0))
        client.failing["update_item"] = 100
        answer = await asgi(gateway, minted.key)
        assert answer.status_code == 503 and answer.json()["error"]["code"] == "store_unavailable"
        assert "slow down" not in answer.text
        assert (await asgi(gateway, free.key)).status_code == 200  # no budget, no limits: no store call needed
        client.failing["update_item"] = 0
        assert (await asgi(gateway, minted.key)).status_code == 200
        client.failing["get_item"] = 100  # key lookups time out: nobody gets in
        gateway.keys._cache.clear()
        answer = await asgi(gateway, minted.key)
        assert answer.status_code == 503 and answer.json()["error"]["code"] == "store_unavailable", answer.text
        client.failing["get_item"] = 0
        await gateway.aclose()

    asyncio.run(go())


def test_a_failed_settlement_is_retried_and_counted_once(throttled: Any) -> None:
    client, store, gateway = throttled

    async def go() -> None:
        minted = await KeyAdmin(KeyService(store, 0)).mint(
            KeyRecord(id="", name="s", secret_hash="", created_at=0, budget_usd=1)
        )
        client.failing["transact_write_items"] = 3  # the first settlements are throttled, the retry lands
        answer = await asgi(gateway, minted.key)
        assert answer.status_code == 200
        await gateway.drain()
        cost = float(answer.headers["x-gateway-cost-usd"])
        items = await store.usage(UsageQuery([minted.record.id], 0, time.time() + 60))
        assert len(items) == 1 and items[0].cost_usd == pytest.approx(cost, abs=1e-12)
        meter = await store.meter(minted.record.id, "total")
        assert meter.spent_usd["total"] == pytest.approx(cost, abs=1e-12)
        assert meter.committed_usd["total"] == pytest.approx(cost, abs=1e-12)  # nothing left reserved
        # Settling the same reservation again (a retry after a lost answer) changes nothing.
        item = items[0]
        again = Settlement(item.request_id, [], 0.0, [], dataclasses.replace(item))
        await store.settle(again)
        assert len(await store.usage(UsageQuery([minted.record.id], 0, time.time() + 60))) == 1
        await gateway.aclose()

    asyncio.run(go())


def test_no_reservation_stays_stuck(throttled: Any) -> None:
    """A request that died after admission holds its reservation until it expires; the next refusal frees it."""
    client, store, gateway = throttled
    gateway.config.gateway.reservation_ttl_seconds = 0.5

    async def go() -> None:
        from handler.pipeline.pipeline import Pipeline

        minted = await KeyAdmin(KeyService(store, 0)).mint(
            KeyRecord(id="", name="r", secret_hash="", created_at=0, budget_usd=0.05)
        )
        pipeline = Pipeline(gateway)
        reservation = await pipeline.meter.admit([minted.record], "gpt-4o-mini", 0.04, 10, "req_dead")
        assert reservation.admission is not None  # ... and the request never settles
        refused = await asgi(gateway, minted.key)
        assert refused.status_code in (200, 402)
        await asyncio.sleep(0.6)
        answer = await asgi(gateway, minted.key)
        assert answer.status_code == 200, answer.text  # the expired reservation was released
        await gateway.aclose()

    asyncio.run(go())


def test_a_client_that_hangs_up_mid_stream_is_settled_at_once(running: Running, mint: Any) -> None:
    """The gateway notices the hang-up while waiting on the upstream (whose next chunk is 2 s away), closes
    the upstream and settles the estimate: a 499 line in the ledger, no reservation left behind."""
    from adapters.store import open_store
    from handler.pipeline.keys import split_key

    key = mint(budget_usd=1.0)
    key_id = split_key(key)[0]  # type: ignore[index]
    body = {"model": "drip", "messages": HI, "stream": True}
    with httpx.Client(timeout=10) as client:
        with client.stream(
            "POST", f"{running.url}/v1/chat/completions", json=body, headers={"authorization": f"Bearer {key}"}
        ) as answer:
            assert answer.status_code == 200
            request_id = answer.headers["x-request-id"]
            next(answer.iter_raw())  # the first chunk, then hang up with the rest still coming
        hung_up = time.monotonic()

    async def settled() -> tuple[list[Any], Any]:
        store = open_store(running.store_url)
        try:
            items = await store.usage(UsageQuery([key_id], 0, time.time() + 60))
            return items, await store.meter(key_id, "total")
        finally:
            await store.close()

    items: list[Any] = []
    while time.monotonic() - hung_up < 1.2 and not items:  # before the drip's next chunk or any timeout
        time.sleep(0.05)
        items, meter = asyncio.run(settled())
    assert [(i.request_id, i.status) for i in items] == [(request_id, 499)]
    assert items[0].output_tokens >= 0 and items[0].cost_usd is not None
    # The reservation is gone. What it did not spend went back to the gateway's lease of the budget, which
    # this process (not the gateway's) sees as committed until the idle lease is returned.
    returned = time.monotonic() + IDLE_S + SWEEP_S + 2
    while meter.committed_usd["total"] != pytest.approx(meter.spent_usd["total"]) and time.monotonic() < returned:
        time.sleep(0.1)
        _, meter = asyncio.run(settled())
    assert meter.committed_usd["total"] == pytest.approx(meter.spent_usd["total"])
