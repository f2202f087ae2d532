"""Every shape of key on both stores, checked where the money is: the ledger and `/v1/usage`.

Budget only, rpm only, tpm only, per-model limits only, and each of those as a child under a parent with a
budget. Each key is used through the running gateway (the fake upstream answers); then its line items are
read from the store, its report from `/v1/usage`, and its meter's spend from the store.
"""

from __future__ import annotations

import asyncio
import time
from typing import Any

import httpx
import pytest

from adapters.store import open_store
from adapters.store.dynamodb import DynamoDBStore
from handler.api.app import create_app
from handler.pipeline.gateway import build_gateway
from handler.ports import LedgerItem, UsageQuery
from tests.functional.conftest import FAKE_KEYS, Running, fresh_minute, gateway_config
from tests.support.contention import FlakyClient
from tests.support.dynamo import DynamoServer

HI = [{"role": "user", "content": "Hi"}]
MODEL = "gpt-4o-mini"
PARENT_BUDGET = 5.0
# Per shape: the key's limits, and how many of four requests it serves (the fifth minute's requests wait).
SHAPES: dict[str, tuple[dict[str, Any], int]] = {
    "budget": ({"budget_usd": 1.0}, 4),
    "rpm": ({"rpm": 2}, 2),
    "tpm": ({"tpm": 100_000}, 4),
    "per-model": ({"model_limits": {MODEL: {"rpm": 3, "tpm": 100_000}}}, 3),
}


def headers(key: str) -> dict[str, str]:
    return {"authorization": f"Bearer {key}"}


def chat(running: Running, key: str) -> httpx.Response:
    body = {"model": MODEL, "messages": HI, "max_tokens": 20}
    return httpx.post(f"{running.url}/v1/chat/completions", json=body, headers=headers(key), timeout=15)


def key_id(key: str) -> str:
    return key.split("_")[1]


def ledger(running: Running, key_ids: list[str], expected: int) -> tuple[list[LedgerItem], dict[str, float]]:
    """The keys' line items once `expected` have landed (settlements follow the answers), and each key's spend."""

    async def read() -> tuple[list[LedgerItem], dict[str, float]]:
        store = open_store(running.store_url)
        try:
            for _ in range(100):
                items = await store.usage(UsageQuery(key_ids, 0, time.time() + 1))
                if len(items) >= expected:
                    break
                await asyncio.sleep(0.05)
            spent = {k: (await store.meter(k, "total")).spent_usd.get("total", 0.0) for k in key_ids}
            return items, spent
        finally:
            await store.close()

    return asyncio.run(read())


def report(running: Running, key: str) -> dict[str, Any]:
    rows = httpx.get(f"{running.url}/v1/usage", headers=headers(key), timeout=15).json()["data"]
    return rows[0] if rows else {"requests": 0, "total_usd": 0.0}


@pytest.mark.parametrize("child", [False, True], ids=["alone", "child-of-budgeted-parent"])
@pytest.mark.parametrize("shape", list(SHAPES))
def test_every_key_shape_is_served_limited_and_recorded(on_each_store: Running, shape: str, child: bool) -> None:
    running = on_each_store
    limits, served = SHAPES[shape]
    family: dict[str, Any] = {}
    parent = None
    if child:
        parent = running.mint(name="parent", budget_usd=PARENT_BUDGET)
        family = {"parent_id": key_id(parent), "ancestors": [key_id(parent)]}
    key = running.mint(name=shape, **limits, **family)
    fresh_minute()
    answers = [chat(running, key) for _ in range(4)]
    assert [a.status_code for a in answers] == [200] * served + [429] * (4 - served), [a.text for a in answers]
    charged = sum(float(a.headers["x-gateway-cost-usd"]) for a in answers if a.status_code == 200)
    ids = [key_id(key), *([key_id(parent)] if parent else [])]
    items, spent = ledger(running, [key_id(key)], served)
    # One line per served request, none for a refused one, each with its tokens and what it cost.
    assert len(items) == served and all(i.key_id == key_id(key) and i.status == 200 for i in items)
    assert all(i.input_tokens > 0 and i.output_tokens > 0 and i.cost_source == "provider" for i in items)
    assert sum((i.cost_usd or 0) + i.fee_usd for i in items) == pytest.approx(charged, abs=1e-12)
    mine = report(running, key)
    assert mine["requests"] == served and mine["total_usd"] == pytest.approx(charged, abs=1e-12)
    if "budget_usd" in limits:
        assert spent[key_id(key)] == pytest.approx(charged, abs=1e-12)
    if parent is not None:
        _, spent = ledger(running, ids, served)
        assert spent[key_id(parent)] == pytest.approx(charged, abs=1e-12)  # the parent's budget paid it too
        theirs = report(running, parent)  # a parent's report includes its children's lines
        assert theirs["requests"] == served and theirs["total_usd"] == pytest.approx(charged, abs=1e-12)


def test_a_child_of_an_rpm_limited_parent_is_limited(on_each_store: Running) -> None:
    running = on_each_store
    parent = running.mint(name="parent", rpm=2)
    family = {"parent_id": key_id(parent), "ancestors": [key_id(parent)]}
    first, second = running.mint(name="a", **family), running.mint(name="b", **family)
    fresh_minute()
    statuses = [chat(running, k).status_code for k in (first, second, first, second)]
    assert statuses == [200, 200, 429, 429]  # the children share the parent's two a minute
    items, _ = ledger(running, [key_id(first), key_id(second)], 2)
    assert len(items) == 2


def test_contention_on_dynamodb_answers_200_and_every_line_lands(
    dynamo: DynamoServer, upstream: tuple[Any, dict[str, Any]]
) -> None:
    """DynamoDB refuses a quarter of the writes for contention (injected at the client): no request answers
    503, every settlement lands once, and the budget's spend equals the ledger's."""
    server, fakes = upstream
    client = FlakyClient(dynamo)
    store = DynamoDBStore(client, dynamo.create_table(), owned=[client])
    config = gateway_config(server.url, set(fakes))
    gateway = build_gateway(config=config, store=store, environ={**FAKE_KEYS, "GATEWAY_REGION": "us-east-1"})

    async def go() -> None:
        from handler.pipeline.key_admin import KeyAdmin
        from handler.pipeline.keys import KeyService
        from handler.ports import KeyRecord

        keys = KeyAdmin(KeyService(store, 0))
        parent = await keys.mint(KeyRecord(id="", name="p", secret_hash="", created_at=0, budget_usd=PARENT_BUDGET))
        template = KeyRecord(
            id="",
            name="c",
            secret_hash="",
            created_at=0,
            budget_usd=1.0,
            tpm=1_000_000,
            parent_id=parent.record.id,
            ancestors=[parent.record.id],
        )
        child = await keys.mint(template)
        client.fail_randomly(0.25, "TransactionCanceledException")
        transport = httpx.ASGITransport(app=create_app(gateway))
        async with httpx.AsyncClient(transport=transport, base_url="http://gw", timeout=30) as http:
            body = {"model": MODEL, "messages": HI, "max_tokens": 20}
            answers = await asyncio.gather(
                *(http.post("/v1/chat/completions", json=body, headers=headers(child.key)) for _ in range(12))
            )
        await gateway.drain()
        assert [a.status_code for a in answers] == [200] * 12
        assert client.refused["TransactWriteItems"] > 0
        client.fail_randomly(0.0, "")
        charged = sum(float(a.headers["x-gateway-cost-usd"]) for a in answers)
        items = await store.usage(UsageQuery([child.record.id], 0, time.time() + 1))
        assert sorted(i.request_id for i in items) == sorted(a.headers["x-request-id"] for a in answers)
        for key in (child.record.id, parent.record.id):
            meter = await store.meter(key, "total")
            assert meter.spent_usd["total"] == pytest.approx(charged, abs=1e-12)
            assert meter.committed_usd["total"] == pytest.approx(charged, abs=1e-12)  # no reservation left
        assert gateway.spool.pending == 0
        await gateway.aclose()

    asyncio.run(go())
