"""`POST /v1/messages/count_tokens` beside the requests it counts for: which deployment counts, what a count does to
the deployments' circuit breakers, and the budget its answer tells. In-process (`tests.support.inprocess`)."""

from __future__ import annotations

import asyncio
import time
from typing import Any

import httpx
import pytest

from adapters.providers.registry import REGISTRY
from handler.api.app import create_app
from handler.config import parse_config
from handler.pipeline.gateway import build_gateway
from handler.pipeline.key_admin import KeyAdmin
from handler.pipeline.keys import KeyService
from handler.ports import KeyRecord, MeterSnapshot, UsageQuery
from tests.support.inprocess import Served, serve

HI = [{"role": "user", "content": "Hi"}]
COUNT = "/v1/messages/count_tokens"
ANTHROPIC = {"type": "anthropic", "api_key": "env:ANTHROPIC_API_KEY", "base_url": "http://up"}
ANTHROPIC_ENV = {"ANTHROPIC_API_KEY": "sk-ant-test-0000000000"}
CLAUDE = {
    "claude": {
        "deployments": [{"provider": "openai", "model": "claude-sonnet-4-5"}],
        "price": {"input": 3, "output": 15},
    }
}


def claude_message(request: httpx.Request) -> httpx.Response:
    return httpx.Response(
        200,
        json={
            "id": "msg_1",
            "type": "message",
            "role": "assistant",
            "model": "claude-sonnet-4-5",
            "content": [{"type": "text", "text": "hi"}],
            "stop_reason": "end_turn",
            "stop_sequence": None,
            "usage": {"input_tokens": 5, "output_tokens": 2},
        },
    )


def anthropic_headers(served: Served) -> dict[str, str]:
    return {"x-api-key": served.key.key, "anthropic-version": "2023-06-01"}


# --- the deployments' breakers ---------------------------------------------------------------------------------------


async def test_anthropics_count_limit_does_not_shut_the_deployment_to_messages() -> None:
    """Anthropic limits token counting apart from message creation, and a count it refuses is answered with an
    estimate (docs/messages-api.md). Each count's 429 was counted on the deployment's circuit breaker, the one
    `/v1/messages` is judged on: five counts refused by the count limit opened it, and for 30 s every key's
    `/v1/messages` to the deployment was refused (429 "every deployment of 'claude' is rate-limiting the gateway ...
    nothing was sent") though Anthropic answered every message (found by review). The count limit now shuts only the
    counting: once a breaker of the counts' own opens, counts are estimated without asking Anthropic."""
    sent: list[str] = []

    def upstream(request: httpx.Request) -> httpx.Response:
        sent.append(request.url.path)
        if request.url.path.endswith("/count_tokens"):
            error = {"type": "error", "error": {"type": "rate_limit_error", "message": "token counting rate limit"}}
            return httpx.Response(429, json=error, headers={"retry-after": "0"})
        return claude_message(request)

    served = await serve(upstream, CLAUDE, provider=ANTHROPIC, environ=ANTHROPIC_ENV, max_retries_per_deployment=0)
    body = {"model": "claude", "messages": HI}
    breakers = served.gateway.router.breakers
    for _ in range(breakers.threshold):
        counted = await served.http.post(COUNT, json=body, headers=anthropic_headers(served))
        assert counted.status_code == 200 and counted.json()["estimate"] is True  # (as documented)
    assert breakers.state("openai/claude-sonnet-4-5@global") == "closed"
    answer = await served.http.post("/v1/messages", json={**body, "max_tokens": 10}, headers=anthropic_headers(served))
    assert answer.status_code == 200, (answer.status_code, answer.text, answer.headers.get("x-gateway-route"))
    assert sent[-1].endswith("/v1/messages")
    # The counts' own breaker open, the next count is an estimate that asks Anthropic nothing.
    asked = len(sent)
    estimated = await served.http.post(COUNT, json=body, headers=anthropic_headers(served))
    assert estimated.headers["x-gateway-estimate"] == "true" and len(sent) == asked
    assert estimated.headers["x-gateway-route"] == "openai/claude-sonnet-4-5@global=breaker-open"
    await served.gateway.aclose()


async def test_counts_anthropic_makes_do_not_keep_a_failing_deployments_breaker_closed() -> None:
    """The shared breaker the other way (found by review): a count Anthropic answered was the deployment's success,
    which forgot the failures `/v1/messages` had there. Every message answered 500 and every count 200, with a count
    after every four messages the breaker never opened: 12 of 12 messages were sent to the failing deployment and
    waited on, where without the counts its breaker opens at the fifth failure and the rest are refused at once."""
    messages = 0

    def upstream(request: httpx.Request) -> httpx.Response:
        nonlocal messages
        if request.url.path.endswith("/count_tokens"):
            return httpx.Response(200, json={"input_tokens": 9})
        messages += 1
        return httpx.Response(500, json={"type": "error", "error": {"type": "api_error", "message": "Internal error"}})

    served = await serve(upstream, CLAUDE, provider=ANTHROPIC, environ=ANTHROPIC_ENV, max_retries_per_deployment=0)
    body = {"model": "claude", "messages": HI}
    for _ in range(3):
        for _ in range(4):
            failed = await served.http.post(
                "/v1/messages", json={**body, "max_tokens": 10}, headers=anthropic_headers(served)
            )
            assert failed.status_code >= 500
        counted = await served.http.post(COUNT, json=body, headers=anthropic_headers(served))
        assert counted.status_code == 200
    await served.gateway.aclose()
    assert messages == served.gateway.router.breakers.threshold  # twelve failed in a row; five opened the breaker


# --- which model counts ----------------------------------------------------------------------------------------------

LLAMA = "meta.llama3-3-70b-instruct-v1:0"  # a Bedrock model CountTokens does not take
BEDROCK_CLAUDE = "us.anthropic.claude-sonnet-4-5-20250929-v1:0"


async def counted_on_bedrock(open_breakers: tuple[str, ...] = ()) -> tuple[httpx.Response, list[str], list[Any]]:
    """A count for `llama` (on Bedrock, which cannot count it), whose fallback `claude` is on Bedrock too, with the
    breakers of `open_breakers` open: the answer, the upstream paths asked, and the key's ledger lines."""
    sent: list[str] = []

    def upstream(request: httpx.Request) -> httpx.Response:
        sent.append(request.url.path)
        if request.url.path.endswith("/count-tokens"):
            return httpx.Response(200, json={"inputTokens": 7})
        return httpx.Response(500, json={"message": "unexpected"})

    config = {
        "providers": {"bedrock": {"type": "bedrock", "base_url": "http://bedrock", "region": "us-east-1"}},
        "models": {
            "llama": {
                "deployments": [{"provider": "bedrock", "model": LLAMA}],
                "price": {"input": 1, "output": 2},
                "fallbacks": ["claude"],
            },
            "claude": {
                "deployments": [{"provider": "bedrock", "model": BEDROCK_CLAUDE}],
                "price": {"input": 3, "output": 15},
            },
        },
    }
    gateway = build_gateway(
        config=parse_config(config, set(REGISTRY)),
        store_url="sqlite://",
        environ={},
        transport=httpx.MockTransport(upstream),
    )
    breakers = gateway.router.breakers
    for label in open_breakers:
        for _ in range(breakers.threshold):
            breakers.failure(label)
    key = await KeyAdmin(KeyService(gateway.store, 0)).mint(KeyRecord(id="", name="k", secret_hash="", created_at=0))
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=create_app(gateway)), base_url="http://gw") as http:
        answer = await http.post(
            COUNT,
            json={"model": "llama", "messages": HI},
            headers={"x-api-key": key.key, "anthropic-version": "2023-06-01"},
        )
    await gateway.drain()
    lines = await gateway.store.usage(UsageQuery([key.record.id], 0, time.time() + 60))
    await gateway.aclose()
    return answer, sent, lines


async def test_a_count_for_a_model_its_deployment_cannot_count_is_an_estimate_not_a_fallbacks_count() -> None:
    """docs/messages-api.md: the count is the provider's own "for a Claude model on Bedrock", "elsewhere ... an
    estimate ... marked as one", and a fallback counts only with the model's own deployments passed over for their
    open breakers. Every deployment of the plan of the first one's provider type that counts was asked: for a Llama
    model on Bedrock with a Claude-on-Bedrock fallback, breakers closed, Claude's CountTokens was asked and its
    count answered as the Llama prompt's own (no `x-gateway-estimate`), with a ledger line for the fallback and a
    request of the key's minute (found by review)."""
    answer, sent, lines = await counted_on_bedrock()
    assert answer.status_code == 200, answer.text
    assert answer.headers.get("x-gateway-estimate") == "true", (answer.json(), sent, [line.model for line in lines])
    assert answer.json()["estimate"] is True
    assert sent == [] and lines == []


async def test_a_fallback_counts_only_with_the_models_own_deployments_passed_over_and_says_it_did() -> None:
    """Llama's deployment passed over for its open breaker, its fallback serves it, as `/v1/messages` would be: the
    count is Claude's own, on Bedrock, and the answer says whose (`counted_by`), its line the fallback's."""
    answer, sent, lines = await counted_on_bedrock((f"bedrock/{LLAMA}@us-east-1",))
    assert answer.status_code == 200, answer.text
    assert "x-gateway-estimate" not in answer.headers
    assert answer.json() == {"input_tokens": 7, "counted_by": "claude"}
    assert answer.headers["x-gateway-route"] == (
        f"bedrock/{LLAMA}@us-east-1=breaker-open, bedrock/{BEDROCK_CLAUDE}@us-east-1=200"
    )
    assert [path.rsplit("/", 1)[1] for path in sent] == ["count-tokens"]
    assert [(line.model, line.cost_usd) for line in lines] == [("claude", 0.0)]


async def test_a_count_made_by_a_fallback_names_the_fallback_the_key_may_not_use() -> None:
    """A key limited to `claude-down` and `claude-open` asks `claude-down`, whose one deployment's breaker is open,
    with `x-gateway-fallbacks: claude-secret,claude-open`. `/v1/messages` names the fallback out of scope where the
    plan reaches it (`claude-secret=model_not_allowed`, keys-and-budgets.md: "No request control widens that: a
    fallback ... is skipped and named in x-gateway-route"); `/v1/messages/count_tokens`, counted by the same
    `claude-open`, left it out, its route the open breaker then `claude-open`, nothing between (review): its
    counting attempts went to the failover as a list, not the plan that knows where the skipped ones were. So did
    an estimate made with `claude-open`'s counting shut too (every counting deployment passed over)."""

    def upstream(request: httpx.Request) -> httpx.Response:
        if request.url.path.endswith("/count_tokens"):
            return httpx.Response(200, json={"input_tokens": 9})
        return claude_message(request)

    price = {"input": 3, "output": 15}
    models = {
        name: {"deployments": [{"provider": "openai", "model": model}], "price": price}
        for name, model in [
            ("claude-down", "claude-haiku-4-5-down"),
            ("claude-secret", "claude-sonnet-4-5"),
            ("claude-open", "claude-haiku-4-5"),
        ]
    }
    served = await serve(upstream, models, provider=ANTHROPIC, environ=ANTHROPIC_ENV)
    breakers = served.gateway.router.breakers
    for _ in range(breakers.threshold):
        breakers.failure("openai/claude-haiku-4-5-down@global")
    record = KeyRecord(id="", name="scoped", secret_hash="", created_at=0, models=["claude-down", "claude-open"])
    key = (await KeyAdmin(KeyService(served.gateway.store, 0)).mint(record)).key
    headers = {
        "x-api-key": key,
        "anthropic-version": "2023-06-01",
        "x-gateway-fallbacks": "claude-secret,claude-open",
    }
    asked = {"model": "claude-down", "messages": HI}
    answered = await served.http.post("/v1/messages", json={**asked, "max_tokens": 20}, headers=headers)
    counted = await served.http.post(COUNT, json=asked, headers=headers)
    # The fallback's counting shut too (its counts' own breaker): the count is an estimate, its route the same plan.
    for _ in range(breakers.threshold):
        served.gateway.router.count_breakers.failure("openai/claude-haiku-4-5@global")
    estimated = await served.http.post(COUNT, json=asked, headers=headers)
    await served.gateway.aclose()
    assert answered.status_code == 200, answered.text
    route = (
        "openai/claude-haiku-4-5-down@global=breaker-open, claude-secret=model_not_allowed, "
        "openai/claude-haiku-4-5@global=200"
    )
    assert answered.headers["x-gateway-route"] == route
    assert counted.status_code == 200 and counted.json() == {"input_tokens": 9, "counted_by": "claude-open"}
    assert counted.headers["x-gateway-route"] == route
    assert estimated.status_code == 200 and estimated.headers.get("x-gateway-estimate") == "true", estimated.text
    assert estimated.headers["x-gateway-route"] == route.replace("=200", "=breaker-open")


# --- the budget its answer tells -------------------------------------------------------------------------------------


async def counting(meters: list[str], at_once: list[int]) -> Served:
    """A gateway whose provider counts every prompt 9 tokens (and answers its messages), its store's meter reads
    noted in `meters` (the key of each) and the most of them under way together in `at_once`."""

    def upstream(request: httpx.Request) -> httpx.Response:
        if request.url.path.endswith("/count_tokens"):
            return httpx.Response(200, json={"input_tokens": 9})
        return claude_message(request)

    served = await serve(upstream, CLAUDE, provider=ANTHROPIC, environ=ANTHROPIC_ENV)
    store = served.gateway.store
    read = store.meter
    under_way = 0

    async def meter(key_id: str, period: str) -> MeterSnapshot:
        nonlocal under_way
        meters.append(key_id)
        under_way += 1
        at_once[0] = max(at_once[0], under_way)
        try:
            await asyncio.sleep(0.05)  # (a DynamoDB round trip)
            return await read(key_id, period)
        finally:
            under_way -= 1

    store.meter = meter  # type: ignore[method-assign]
    return served


async def test_a_count_the_provider_made_tells_the_budget_left() -> None:
    """docs/interface.md: `x-gateway-budget-remaining-usd` on every proxied answer "where the key or an ancestor has
    a budget". A count Anthropic made carried its provider, route, cost and rate-limit headers, but no budget: the
    count reserves nothing, so nothing was read (found by review). It is read now, one meter read, after the key's
    spend."""
    meters: list[str] = []
    served = await counting(meters, [0])
    spent = await served.http.post(
        "/v1/messages", json={"model": "claude", "messages": HI, "max_tokens": 10}, headers=anthropic_headers(served)
    )
    assert spent.status_code == 200, spent.text
    left = (await served.get("/v1/key")).json()["remaining_usd"]  # (as the key's own read says it)
    assert 0 < left < 10.0
    meters.clear()
    counted = await served.http.post(COUNT, json={"model": "claude", "messages": HI}, headers=anthropic_headers(served))
    assert counted.json() == {"input_tokens": 9}, counted.text
    assert float(counted.headers["x-gateway-budget-remaining-usd"]) == left  # (a count spends nothing)
    assert meters == [served.key.record.id]
    await served.gateway.aclose()


async def test_a_count_tells_the_least_budget_of_the_chain_and_reads_no_meter_without_one() -> None:
    """A child's own $5 under a parent with $1 has $1 to spend: the least any budget of the chain leaves, each read
    at once (one round trip). A key whose chain has no budget is told none, and no meter is read for it; nor for an
    estimate, which reached no provider."""
    meters: list[str] = []
    at_once = [0]
    served = await counting(meters, at_once)
    admin = KeyAdmin(KeyService(served.gateway.store, 0))
    parent = await admin.mint(KeyRecord(id="", name="p", secret_hash="", created_at=0, budget_usd=1.0))
    record = KeyRecord(
        id="", name="c", secret_hash="", created_at=0, budget_usd=5.0, parent_id=parent.record.id,
        ancestors=[parent.record.id],
    )  # fmt: skip
    child = await admin.mint(record)
    plain = await admin.mint(KeyRecord(id="", name="n", secret_hash="", created_at=0))
    body = {"model": "claude", "messages": HI}
    as_child = {"x-api-key": child.key, "anthropic-version": "2023-06-01"}
    counted = await served.http.post(COUNT, json=body, headers=as_child)
    assert counted.status_code == 200, counted.text
    assert counted.headers["x-gateway-budget-remaining-usd"] == "1"
    assert sorted(meters) == sorted([child.record.id, parent.record.id]) and at_once == [2]
    meters.clear()
    as_plain = {"x-api-key": plain.key, "anthropic-version": "2023-06-01"}
    unbudgeted = await served.http.post(COUNT, json=body, headers=as_plain)
    assert unbudgeted.status_code == 200 and "x-gateway-estimate" not in unbudgeted.headers
    assert "x-gateway-budget-remaining-usd" not in unbudgeted.headers and meters == []
    breakers = served.gateway.router.breakers
    for _ in range(breakers.threshold):
        breakers.failure("openai/claude-sonnet-4-5@global")
    estimated = await served.http.post(COUNT, json=body, headers=as_child)
    assert estimated.headers["x-gateway-estimate"] == "true"
    assert "x-gateway-budget-remaining-usd" not in estimated.headers and meters == []
    await served.gateway.aclose()


# --- the count as the provider wrote it ------------------------------------------------------------------------------

COUNTING_PROVIDERS = {
    "anthropic": (ANTHROPIC, "claude-sonnet-4-5", "input_tokens"),
    "bedrock": ({"type": "bedrock", "base_url": "http://up", "region": "us-east-1"}, BEDROCK_CLAUDE, "inputTokens"),
    "gemini": ({"type": "gemini", "api_key": "env:GEMINI_API_KEY", "base_url": "http://up"}, "gemini-2.5-flash",
               "totalTokens"),
}  # fmt: skip


@pytest.mark.parametrize("count", [True, 12.0, "12", -5], ids=["true", "float", "numeral", "negative"])
@pytest.mark.parametrize("provider", sorted(COUNTING_PROVIDERS))
async def test_a_count_that_is_not_an_integer_is_the_providers_malformed_answer_and_the_count_an_estimate(
    provider: str, count: Any
) -> None:
    """A counting answer whose count is `true` (or `12.0`, `"12"`, `-5`) is none the gateway can read, as a usage's
    is (`handler.wire.usage_count`): the provider's malformed answer, so the count is the gateway's estimate, marked
    as one. Anthropic's, Bedrock's and Gemini's readers took `true` for an integer, and answered 1 token as the
    provider's count, and `-5` as -5 tokens (found by review)."""
    config, model, name = COUNTING_PROVIDERS[provider]
    asked: list[str] = []

    def upstream(request: httpx.Request) -> httpx.Response:
        asked.append(request.url.path)
        return httpx.Response(200, json={name: count})

    models = {"m": {"deployments": [{"provider": "openai", "model": model}], "price": {"input": 3, "output": 15}}}
    environ = {**ANTHROPIC_ENV, "GEMINI_API_KEY": "gemini-test-0000000000"}
    served = await serve(upstream, models, provider=config, environ=environ)
    counted = await served.http.post(COUNT, json={"model": "m", "messages": HI}, headers=anthropic_headers(served))
    await served.gateway.aclose()
    assert asked, "the provider was not asked to count"
    assert counted.status_code == 200, counted.text
    assert counted.headers.get("x-gateway-estimate") == "true", counted.json()
    assert counted.json()["estimate"] is True and counted.json()["input_tokens"] not in (1, -5)
    assert counted.headers["x-gateway-route"].endswith("=invalid_response"), counted.headers["x-gateway-route"]
