"""An aggregator's own routing members in a client's body are never sent. A member the gateway does not know goes
on to a provider that speaks the client's API as written, and OpenRouter (served as an OpenAI-compatible
deployment) reads `models` as fallback models, tried when the first fails (a prompt past its context among other
failures): a key limited to a cheap model sent it with `"models": ["anthropic/claude-opus-4"]` and was answered by
Opus, on the operator's account, charged at the cheap model's price. OpenRouter's `provider`, `route` and `plugins`
and LiteLLM's `fallbacks` and client-side `api_base`/`api_key` choose as much. They are left out and named in
`x-gateway-dropped-params`, a 400 under `x-gateway-strict`. Found by review."""

from __future__ import annotations

from typing import Any

import httpx
import orjson
import pytest

from handler.wire import ROUTING_MEMBERS
from tests.support.inprocess import serve

MODELS = {
    "llama-small": {
        "deployments": [{"provider": "openai", "model": "meta-llama/llama-3.1-8b-instruct"}],
        "price": {"input": 0.02, "output": 0.05},
    }
}
ROUTING = {
    "models": ["anthropic/claude-opus-4"],
    "provider": {"order": ["anthropic"]},
    "route": "fallback",
    "plugins": [{"id": "web"}],
    "fallbacks": ["gpt-4o"],
    "api_base": "http://elsewhere",
    "api_key": "sk-another",
}
NAMED = ",".join(sorted(ROUTING))
HI = [{"role": "user", "content": "hi"}]
COMPLETION = {
    "id": "gen-1",
    "object": "chat.completion",
    "created": 1,
    "model": "meta-llama/llama-3.1-8b-instruct",
    "choices": [{"index": 0, "message": {"role": "assistant", "content": "ok"}, "finish_reason": "stop"}],
    "usage": {"prompt_tokens": 3, "completion_tokens": 1, "total_tokens": 4},
}
RESPONSE = {
    "id": "resp_1",
    "object": "response",
    "status": "completed",
    "model": "gpt-4o",
    "output": [
        {
            "type": "message",
            "id": "msg_1",
            "role": "assistant",
            "status": "completed",
            "content": [{"type": "output_text", "text": "ok", "annotations": []}],
        }
    ],
    "usage": {"input_tokens": 3, "output_tokens": 1, "total_tokens": 4},
}


def recording(sent: list[dict[str, Any]]) -> Any:
    def upstream(request: httpx.Request) -> httpx.Response:
        sent.append(orjson.loads(request.content))
        return httpx.Response(200, json=RESPONSE if request.url.path.endswith("/responses") else COMPLETION)

    return upstream


@pytest.mark.parametrize(
    ("path", "body"),
    [
        ("/v1/chat/completions", {"model": "llama-small", "messages": HI}),
        ("/v1/messages", {"model": "llama-small", "max_tokens": 5, "messages": HI}),
        ("/v1/responses", {"model": "llama-small", "input": "hi"}),
    ],
    ids=["chat", "messages", "responses"],
)
async def test_an_aggregators_routing_members_are_never_sent_and_are_named(path: str, body: dict[str, Any]) -> None:
    sent: list[dict[str, Any]] = []
    served = await serve(recording(sent), MODELS)
    try:
        answer = await served.post(path, {**body, **ROUTING, "temperature": 0.5})
    finally:
        await served.gateway.aclose()
    assert answer.status_code == 200, answer.text
    [upstream_body] = sent
    assert not ROUTING_MEMBERS & set(upstream_body), upstream_body
    assert upstream_body["model"] == "meta-llama/llama-3.1-8b-instruct" and upstream_body["temperature"] == 0.5
    assert set(answer.headers["x-gateway-dropped-params"].split(",")) >= set(NAMED.split(","))


async def test_a_passed_through_responses_request_sends_no_routing_member() -> None:
    sent: list[dict[str, Any]] = []
    native = {"type": "openai", "api_key": "env:OPENAI_API_KEY", "base_url": "http://up/v1", "responses_api": "native"}
    models = {"m": {"deployments": [{"provider": "openai", "model": "gpt-4o"}], "price": {"input": 1, "output": 2}}}
    served = await serve(recording(sent), models, provider=native)
    try:
        answer = await served.post("/v1/responses", {"model": "m", "input": "hi", **ROUTING, "temperature": 0.5})
    finally:
        await served.gateway.aclose()
    assert answer.status_code == 200, answer.text
    [upstream_body] = sent
    assert not ROUTING_MEMBERS & set(upstream_body) and upstream_body["temperature"] == 0.5, upstream_body
    assert set(answer.headers["x-gateway-dropped-params"].split(",")) >= set(NAMED.split(","))


async def test_under_strict_a_routing_member_is_the_clients_400_and_nothing_is_sent() -> None:
    sent: list[dict[str, Any]] = []
    served = await serve(recording(sent), MODELS)
    try:
        answer = await served.http.post(
            "/v1/chat/completions",
            json={"model": "llama-small", "messages": HI, "models": ["anthropic/claude-opus-4"]},
            headers={"authorization": f"Bearer {served.key.key}", "x-gateway-strict": "true"},
        )
    finally:
        await served.gateway.aclose()
    assert answer.status_code == 400 and "models" in answer.json()["error"]["message"], answer.text
    assert sent == []


MESSAGE = {
    "id": "msg_1",
    "type": "message",
    "role": "assistant",
    "model": "claude-haiku-4-5",
    "content": [{"type": "text", "text": "ok"}],
    "stop_reason": "end_turn",
    "stop_sequence": None,
    "usage": {"input_tokens": 3, "output_tokens": 1},
}


@pytest.mark.parametrize("path", ["/v1/messages", "/v1/messages/count_tokens"])
async def test_a_passed_through_messages_request_sends_no_routing_member(path: str) -> None:
    """A Messages request passed through to an `anthropic`-type deployment went as written, its routing members with
    it: LiteLLM's proxy serves `/v1/messages` (its `fallbacks`, `api_base`, `api_key`), and OpenRouter has an
    Anthropic-compatible endpoint reading `models` and `provider`. Found by review (mergerev35)."""
    sent: list[dict[str, Any]] = []

    def upstream(request: httpx.Request) -> httpx.Response:
        sent.append(orjson.loads(request.content))
        return httpx.Response(200, json={"input_tokens": 3} if request.url.path.endswith("count_tokens") else MESSAGE)

    anthropic = {"type": "anthropic", "api_key": "env:OPENAI_API_KEY", "base_url": "http://up"}
    models = {
        "haiku": {
            "deployments": [{"provider": "openai", "model": "claude-haiku-4-5"}],
            "price": {"input": 1, "output": 5},
        }
    }
    served = await serve(upstream, models, provider=anthropic)
    try:
        answer = await served.http.post(
            path,
            json={"model": "haiku", "max_tokens": 5, "messages": HI, **ROUTING},
            headers={"x-api-key": served.key.key, "anthropic-version": "2023-06-01"},
        )
    finally:
        await served.gateway.aclose()
    assert answer.status_code == 200, answer.text
    [body] = sent
    assert not ROUTING_MEMBERS & set(body) and body["model"] == "claude-haiku-4-5", body
    # (A count named them too: it was sent without them, the header left out. Found by own read, thirty-fifth.)
    assert set(answer.headers["x-gateway-dropped-params"].split(",")) >= set(ROUTING)


async def test_vercels_provider_options_are_not_sent() -> None:
    """Vercel's AI Gateway (OpenAI-compatible) reads fallback models from `providerOptions.gateway.models` and the
    providers from `providerOptions.gateway.order` and `only`. Found by review (mergerev35)."""
    sent: list[dict[str, Any]] = []
    served = await serve(recording(sent), MODELS)
    try:
        options = {"gateway": {"models": ["anthropic/claude-opus-4.1"], "order": ["anthropic"]}}
        answer = await served.post(
            "/v1/chat/completions", {"model": "llama-small", "messages": HI, "providerOptions": options}
        )
    finally:
        await served.gateway.aclose()
    assert answer.status_code == 200 and "providerOptions" not in sent[0], sent
    assert "providerOptions" in answer.headers["x-gateway-dropped-params"].split(",")
