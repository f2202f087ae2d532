"""Usage reports' filters (found by review, usagerev37): an empty `key=` or `tag=` is a 400, as an empty `user=` is
(read as no filter, a script's `?key=$KEY_ID` with the variable unset was answered every key's spend as that key's);
a filter holding the caller's own secret is matched and echoed as its lines keep it (redacted), and a tag name
holding it refused, as the header refuses it; a key family's listing on DynamoDB reads a query a key of the family."""

from __future__ import annotations

import time
import uuid
from pathlib import Path
from typing import Any

import httpx
import pytest

import adapters.store.dynamodb as dynamodb
from adapters.providers.registry import REGISTRY
from handler.api.app import create_app
from handler.config import parse_config
from handler.pipeline.gateway import build_gateway
from handler.pipeline.key_admin import KeyAdmin
from handler.pipeline.keys import KeyService
from handler.ports import KeyRecord, LedgerItem, Settlement
from tests.support.dynamo import DynamoServer
from tests.support.inprocess import serve

MODELS = {"m": {"deployments": [{"provider": "openai", "model": "gpt-4o-mini"}], "price": {"input": 1, "output": 2}}}


def line(key_id: str, cost: float, tags: dict[str, str]) -> LedgerItem:
    return LedgerItem(
        request_id=f"req_{uuid.uuid4().hex}",
        ts=time.time(),
        key_id=key_id,
        ancestors=[],
        model="m",
        provider="openai",
        region="global",
        upstream_model="gpt-4o-mini",
        input_tokens=10,
        cached_tokens=0,
        cache_write_tokens=0,
        output_tokens=5,
        cost_usd=cost,
        fee_usd=0.0,
        status=200,
        tags=tags,
    )


@pytest.mark.parametrize(
    ("path", "query"),
    [
        ("/admin/usage", "key="),
        ("/admin/usage", "key=&group_by=key"),
        ("/admin/usage", "tag="),
        ("/v1/usage", "tag="),
    ],
)
async def test_an_empty_key_or_tag_is_refused_as_an_empty_user_is(tmp_path: Path, path: str, query: str) -> None:
    data = {
        "providers": {"openai": {"type": "openai", "api_key": "env:OPENAI_API_KEY", "base_url": "http://up/v1"}},
        "models": MODELS,
    }
    gateway = build_gateway(
        config=parse_config(data, set(REGISTRY)),
        store_url=f"sqlite:///{tmp_path / 'gateway.db'}",
        environ={"OPENAI_API_KEY": "sk-test-000000000000"},
        transport=httpx.MockTransport(lambda request: httpx.Response(500)),
    )
    http = httpx.AsyncClient(transport=httpx.ASGITransport(app=create_app(gateway)), base_url="http://gw")
    try:
        admin_key = KeyAdmin(KeyService(gateway.store, 0))
        admin = await admin_key.mint(KeyRecord(id="", name="admin", secret_hash="", created_at=0, admin=True))
        mine = await admin_key.mint(KeyRecord(id="", name="mine", secret_hash="", created_at=0))
        theirs = await admin_key.mint(KeyRecord(id="", name="theirs", secret_hash="", created_at=0))
        for item in (line(mine.record.id, 1.0, {"team": "a"}), line(theirs.record.id, 2.0, {"team": "b"})):
            await gateway.store.settle(Settlement(item.request_id, [], 0.0, [], item))
        await gateway.drain()
        caller = admin if path == "/admin/usage" else mine
        headers = {"authorization": f"Bearer {caller.key}"}
        empty_user = await http.get(f"{path}?user=", headers=headers)
        assert empty_user.status_code == 400  # (as documented)
        answer = await http.get(f"{path}?{query}", headers=headers)
        assert answer.status_code == 400, (
            f"{path}?{query} answered {answer.status_code} with {answer.json().get('data')}: "
            "an empty filter read as none"
        )
    finally:
        await http.aclose()
        await gateway.aclose()


def answer(request: httpx.Request) -> httpx.Response:
    return httpx.Response(
        200,
        json={
            "id": "chatcmpl-1",
            "object": "chat.completion",
            "created": 1,
            "model": "gpt-4o-mini",
            "choices": [{"index": 0, "message": {"role": "assistant", "content": "ok"}, "finish_reason": "stop"}],
            "usage": {"prompt_tokens": 10, "completion_tokens": 3, "total_tokens": 13},
        },
    )


@pytest.mark.parametrize("filter_name", ["tag", "user", "session"])
async def test_a_filter_holding_the_callers_secret_is_echoed_and_matched_as_the_line_keeps_it(
    tmp_path: Path, filter_name: str
) -> None:
    data = {
        "providers": {"openai": {"type": "openai", "api_key": "env:OPENAI_API_KEY", "base_url": "http://up/v1"}},
        "models": MODELS,
    }
    gateway = build_gateway(
        config=parse_config(data, set(REGISTRY)),
        store_url=f"sqlite:///{tmp_path / 'gateway.db'}",
        environ={"OPENAI_API_KEY": "sk-test-000000000000"},
        transport=httpx.MockTransport(answer),
    )
    http = httpx.AsyncClient(transport=httpx.ASGITransport(app=create_app(gateway)), base_url="http://gw")
    try:
        minted = await KeyAdmin(KeyService(gateway.store, 0)).mint(
            KeyRecord(id="", name="k", secret_hash="", created_at=0)
        )
        secret = minted.key.split("_", 2)[2]
        headers = {"authorization": f"Bearer {minted.key}"}
        sent = await http.post(
            "/v1/chat/completions",
            json={"model": "m", "messages": [{"role": "user", "content": "hi"}], "user": secret},
            headers={**headers, "x-gateway-tags": f"note={secret}", "x-session-id": secret},
        )
        assert sent.status_code == 200
        await gateway.drain()
        (line,) = (await http.get("/v1/usage", params={"group_by": "request"}, headers=headers)).json()["data"]
        assert line["user"] == line["session"] == line["tags"]["note"] == "[REDACTED]"  # (as documented)
        value = f"note={secret}" if filter_name == "tag" else secret
        report = await http.get("/v1/usage", params={filter_name: value}, headers=headers)
        assert report.status_code == 200
        assert secret not in report.text, f"the report echoes the key's secret: {report.json()['filter']}"
        assert report.json()["data"] and report.json()["data"][0]["requests"] == 1, "the line is not matched"
    finally:
        await http.aclose()
        await gateway.aclose()


@pytest.mark.parametrize("param", ["tag", "group_by"])
async def test_a_tag_name_that_is_the_callers_secret_is_refused_in_a_report_as_in_the_header(
    tmp_path: Path, param: str
) -> None:
    """docs/usage.md: "A tag *name* holding one is a `400 invalid_request` that does not repeat it ..., on every path
    that takes tag names: the header, a key's default tags, a report's `tag=` and `group_by=tag:`". The header refuses
    the caller's own secret as a name; a report takes it, and answers it back in `group_by` or `filter`."""
    data = {
        "providers": {"openai": {"type": "openai", "api_key": "env:OPENAI_API_KEY", "base_url": "http://up/v1"}},
        "models": MODELS,
    }
    gateway = build_gateway(
        config=parse_config(data, set(REGISTRY)),
        store_url=f"sqlite:///{tmp_path / 'gateway.db'}",
        environ={"OPENAI_API_KEY": "sk-test-000000000000"},
        transport=httpx.MockTransport(answer),
    )
    http = httpx.AsyncClient(transport=httpx.ASGITransport(app=create_app(gateway)), base_url="http://gw")
    try:
        minted = await KeyAdmin(KeyService(gateway.store, 0)).mint(
            KeyRecord(id="", name="k", secret_hash="", created_at=0)
        )
        secret = minted.key.split("_", 2)[2]
        headers = {"authorization": f"Bearer {minted.key}"}
        header = await http.post(
            "/v1/chat/completions",
            json={"model": "m", "messages": [{"role": "user", "content": "hi"}]},
            headers={**headers, "x-gateway-tags": f"{secret}=1"},
        )
        assert header.status_code == 400 and secret not in header.text  # (the header's rule, as documented)
        value = f"{secret}=1" if param == "tag" else f"tag:{secret}"
        report = await http.get("/v1/usage", params={param: value}, headers=headers)
        assert report.status_code == 400, (
            f"{param}: answered {report.status_code}, secret echoed: {secret in report.text}"
        )
        assert secret not in report.text
    finally:
        await http.aclose()
        await gateway.aclose()


CHILDREN = 40
LINES_EACH = 3


def family_line(key_id: str, parent_id: str, ts: float) -> LedgerItem:
    return LedgerItem(
        request_id=f"req_{uuid.uuid4().hex}",
        ts=ts,
        key_id=key_id,
        ancestors=[parent_id],
        model="m",
        provider="openai",
        region="global",
        upstream_model="gpt-4o-mini",
        input_tokens=10,
        cached_tokens=0,
        cache_write_tokens=0,
        output_tokens=5,
        cost_usd=0.001,
        fee_usd=0.0,
        status=200,
    )


async def test_a_family_listing_page_reads_a_query_a_key_of_the_family(
    dynamo: DynamoServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    """docs/usage.md said a page of 10 read at most 40 items on DynamoDB, a key family's listing too: a parent with 40
    children read 41 queries and 120 to 160 items a page. The docs now say what a family's page costs."""
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "testing")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "testing")
    data = {
        "providers": {"openai": {"type": "openai", "api_key": "env:OPENAI_API_KEY", "base_url": "http://up/v1"}},
        "models": MODELS,
    }
    gateway = build_gateway(
        config=parse_config(data, set(REGISTRY)),
        store_url=dynamo.store_url(dynamo.create_table()),
        environ={"OPENAI_API_KEY": "sk-test-000000000000"},
        transport=httpx.MockTransport(lambda request: httpx.Response(500)),
    )
    http = httpx.AsyncClient(transport=httpx.ASGITransport(app=create_app(gateway)), base_url="http://gw", timeout=60)
    try:
        admin = KeyAdmin(KeyService(gateway.store, 0))
        parent = await admin.mint(KeyRecord(id="", name="parent", secret_hash="", created_at=0))
        now = time.time() - 600
        for n in range(CHILDREN):
            child = await admin.mint(
                KeyRecord(
                    id="",
                    name=f"c{n}",
                    secret_hash="",
                    created_at=0,
                    parent_id=parent.record.id,
                    ancestors=[parent.record.id],
                )
            )
            for i in range(LINES_EACH):
                item = family_line(child.record.id, parent.record.id, now + i * 60 + n * 0.01)
                await gateway.store.settle(Settlement(item.request_id, [], 0.0, [], item))
        await gateway.drain()

        read = {"queries": 0, "items": 0}
        original = dynamodb.call  # type: ignore[attr-defined]

        async def counted(client: Any, operation: str, **request: Any) -> Any:
            answer = await original(client, operation, **request)
            if operation == "query" and "LEDGER#" in str(request.get("ExpressionAttributeValues")):
                read["queries"] += 1
                read["items"] += len(answer.get("Items", []))
            return answer

        monkeypatch.setattr(dynamodb, "call", counted)
        page = await http.get(
            "/v1/usage",
            params={"group_by": "request", "limit": "10"},
            headers={"authorization": f"Bearer {parent.key}"},
        )
        assert page.status_code == 200 and len(page.json()["data"]) == 10
        # A query a key of the family, each reading at most `NEWEST_FIRST_PAGE` lines for a page of 10 (docs/usage.md).
        family = CHILDREN + 1
        assert read["queries"] == family, read
        assert read["items"] <= dynamodb.NEWEST_FIRST_PAGE * family, f"a page of 10 read {read['items']} items"
    finally:
        await http.aclose()
        await gateway.aclose()


def completion() -> dict[str, Any]:
    return {
        "id": "c1",
        "object": "chat.completion",
        "created": 1,
        "model": "gpt-4o-mini",
        "choices": [{"index": 0, "message": {"role": "assistant", "content": "hi"}, "finish_reason": "stop"}],
        "usage": {"prompt_tokens": 10, "completion_tokens": 5, "total_tokens": 15},
    }


MODELS = {
    "m": {"deployments": [{"provider": "openai", "model": "gpt-4o-mini"}], "price": {"input": 1.0, "output": 2.0}}
}


async def test_a_tag_filter_given_twice_is_refused_or_matches_both() -> None:
    """`?tag=team=a&tag=env=prod` was read as its last, `env=prod` alone: every team's spend reported (found by
    review, mergerev37)."""
    s = await serve(lambda request: httpx.Response(200, json=completion()), MODELS)
    try:
        auth = {"authorization": f"Bearer {s.key.key}"}
        body = {"model": "m", "messages": [{"role": "user", "content": "hi"}]}
        for tags in ("team=a,env=prod", "team=b,env=prod"):
            answer = await s.http.post("/v1/chat/completions", json=body, headers={**auth, "x-gateway-tags": tags})
            assert answer.status_code == 200, answer.text
        await s.gateway.drain()
        report = await s.http.get("/v1/usage", params=[("tag", "team=a"), ("tag", "env=prod")], headers=auth)
        if report.status_code == 400:
            return  # refused, as `key` given twice is
        assert report.status_code == 200, report.text
        requests = sum(row["requests"] for row in report.json()["data"])
        assert requests == 1, (
            f"tag=team=a&tag=env=prod reported {requests} requests (filter {report.json().get('filter')})"
        )
    finally:
        await s.http.aclose()
        await s.gateway.aclose()
