"""Reservations of requests that died (their environment killed, never settled) free once a refusal looks: on
every budget of the chain, and whichever process frees them first (DynamoDB on moto)."""

from __future__ import annotations

import asyncio
import time
import uuid
from typing import Any

import httpx

from adapters.sigv4 import Credentials
from adapters.store.dynamo_client import DynamoDBClient
from adapters.store.dynamodb import DynamoDBStore
from handler.api.app import create_app
from handler.pipeline.gateway import build_gateway
from handler.pipeline.key_admin import KeyAdmin
from handler.pipeline.keys import KeyService
from handler.ports import Admission, BudgetCharge, KeyRecord
from tests.functional.conftest import FAKE_KEYS, gateway_config
from tests.support.dynamo import DynamoServer

HI = [{"role": "user", "content": "Hi"}]
MODEL = "gpt-4o-mini"
BUDGET = 0.01
DEAD = 0.00999  # what a request that died (its environment killed) reserved on both budgets


def test_a_request_that_died_on_a_child_and_its_parent_holds_no_budget_once_a_refusal_looks(
    dynamo: DynamoServer, upstream: tuple[Any, dict[str, Any]]
) -> None:
    """docs/architecture.md: reservations of requests that died hold budget until they expire; a refusal frees them
    and retries once. A child and its parent each hold a dead request's reservation, long expired: nothing is in
    flight, $0.01 of each budget is free, and a request of ~$0.00002 must be served."""
    server, fakes = upstream
    client = DynamoDBClient("us-east-1", Credentials("testing", "testing"), dynamo.url)
    store = DynamoDBStore(client, dynamo.create_table(), owned=[client])
    config = gateway_config(server.url, set(fakes))
    gateway = build_gateway(config=config, store=store, environ={**FAKE_KEYS, "GATEWAY_REGION": "us-east-1"})

    async def go() -> list[httpx.Response]:
        keys = KeyAdmin(KeyService(store, 0))
        parent = await keys.mint(KeyRecord(id="", name="p", secret_hash="", created_at=0, budget_usd=BUDGET))
        pid = parent.record.id
        child = await keys.mint(
            KeyRecord(id="", name="c", secret_hash="", created_at=0, budget_usd=BUDGET, parent_id=pid, ancestors=[pid])
        )
        cid = child.record.id
        charges = [
            BudgetCharge(cid, "total", BUDGET, DEAD, child.record.home_region),
            BudgetCharge(pid, "total", BUDGET, DEAD, parent.record.home_region),
        ]
        # Admitted, then its process died: never settled; its reservation expired a few minutes ago.
        await store.admit(Admission(uuid.uuid4().hex, cid, charges, [], time.time() - 300, child.record.home_region))
        transport = httpx.ASGITransport(app=create_app(gateway))
        answers = []
        async with httpx.AsyncClient(transport=transport, base_url="http://gw", timeout=30) as http:
            body = {"model": MODEL, "messages": HI, "max_tokens": 20}
            for _ in range(2):
                answers.append(
                    await http.post("/v1/chat/completions", json=body, headers={"authorization": f"Bearer {child.key}"})
                )
        await gateway.drain()
        await gateway.aclose()
        return answers

    answers = asyncio.run(go())
    # The second request is served (both releases have happened by then): the first was refused with the budget free.
    assert answers[1].status_code == 200, answers[1].text
    assert answers[0].status_code == 200, answers[0].text


def test_a_request_refused_while_another_released_the_dead_reservation_is_served(
    dynamo: DynamoServer, upstream: tuple[Any, dict[str, Any]]
) -> None:
    """One key, $0.01 budget, a dead request's $0.00999 reservation long expired. Two requests (~$0.00002 each) are
    refused by the counter as it was; each asks the store to release what expired, then retries once. The first's
    release comes a moment after the second's (two processes, or just the order of their store calls): it finds
    nothing left to release, and its refusal stands, a 402 "($0.000010 left)" with $0.01 free."""
    server, fakes = upstream
    client = DynamoDBClient("us-east-1", Credentials("testing", "testing"), dynamo.url)
    store = DynamoDBStore(client, dynamo.create_table(), owned=[client])
    config = gateway_config(server.url, set(fakes))
    gateway = build_gateway(config=config, store=store, environ={**FAKE_KEYS, "GATEWAY_REGION": "us-east-1"})
    released = asyncio.Event()
    calls = []
    release_held = store.release_held

    async def in_order(charge: BudgetCharge, now: float) -> float:
        calls.append(charge)
        if len(calls) == 1:  # the first refused: its release goes out just after the second's
            await asyncio.wait_for(released.wait(), 10)
            return await release_held(charge, time.time())
        try:
            return await release_held(charge, now)
        finally:
            released.set()

    store.release_held = in_order  # type: ignore[method-assign]

    async def go() -> list[httpx.Response]:
        keys = KeyAdmin(KeyService(store, 0))
        key = await keys.mint(KeyRecord(id="", name="k", secret_hash="", created_at=0, budget_usd=BUDGET))
        kid = key.record.id
        charge = BudgetCharge(kid, "total", BUDGET, DEAD, key.record.home_region)
        await store.admit(Admission(uuid.uuid4().hex, kid, [charge], [], time.time() - 300, key.record.home_region))
        transport = httpx.ASGITransport(app=create_app(gateway))
        async with httpx.AsyncClient(transport=transport, base_url="http://gw", timeout=30) as http:
            body = {"model": MODEL, "messages": HI, "max_tokens": 20}
            answers = await asyncio.gather(
                *(
                    http.post("/v1/chat/completions", json=body, headers={"authorization": f"Bearer {key.key}"})
                    for _ in range(2)
                )
            )
        await gateway.drain()
        await gateway.aclose()
        return list(answers)

    answers = asyncio.run(go())
    assert len(calls) == 2  # both were refused by the dead reservation
    refused = [a.json()["error"]["message"] for a in answers if a.status_code != 200]
    assert not refused, refused
