"""A search is charged at its own model's price (`price.web_search`), in the unit its provider bills, else at the
gateway's `priced_options.web_search_usd`. One gateway-wide price billed at least one provider wrong: Anthropic
charges $10 a thousand searches, Gemini 2.5 $35 a thousand grounded prompts, Gemini 3 $14 a thousand queries; at
$0.01 a Gemini 2.5 grounded answer was charged $0.01 for Google's $0.035, reserved so too. Found by review
(gemrev36)."""

from __future__ import annotations

from typing import Any

import httpx
import orjson
import pytest

from tests.support.inprocess import serve

HI = [{"role": "user", "content": "What is new today?"}]
GATEWAY_SEARCH_USD = 0.02
SEARCH = {"type": "web_search_20250305", "name": "web_search"}


def claude_answer(searches: int) -> dict[str, Any]:
    return {
        "id": "msg_1",
        "type": "message",
        "role": "assistant",
        "model": "claude-sonnet-4-5-20250929",
        "content": [{"type": "text", "text": "news"}],
        "stop_reason": "end_turn",
        "stop_sequence": None,
        "usage": {"input_tokens": 10, "output_tokens": 2, "server_tool_use": {"web_search_requests": searches}},
    }


GEMINI_ANSWER = {
    "candidates": [
        {
            "content": {"role": "model", "parts": [{"text": "news"}]},
            "finishReason": "STOP",
            "groundingMetadata": {
                "webSearchQueries": ["a", "b", "c"],
                "groundingChunks": [{"web": {"uri": "https://example.com/", "title": "example"}}],
            },
        }
    ],
    "usageMetadata": {"promptTokenCount": 10, "candidatesTokenCount": 2, "totalTokenCount": 12},
    "modelVersion": "gemini-2.5-flash",
}


@pytest.mark.parametrize(
    ("price", "per_search"),
    [(None, 0.01), ({"input": 3.0, "output": 15.0, "web_search": 0.05}, 0.05), ({"input": 3.0, "output": 15.0}, 0.02)],
    ids=["built_in", "configured", "gateways"],
)
async def test_claudes_searches_are_charged_at_its_own_price(price: dict[str, Any] | None, per_search: float) -> None:
    def upstream(request: httpx.Request) -> httpx.Response:
        return httpx.Response(200, json=claude_answer(3))

    provider = {"type": "anthropic", "api_key": "env:OPENAI_API_KEY", "base_url": "http://up", "web_search": True}
    model: dict[str, Any] = {"deployments": [{"provider": "openai", "model": "claude-sonnet-4-5-20250929"}]}
    if price is not None:
        model["price"] = price
    served = await serve(
        upstream, {"sonnet": model}, provider=provider, priced_options={"web_search_usd": GATEWAY_SEARCH_USD}
    )
    try:
        answer = await served.http.post(
            "/v1/messages",
            json={"model": "sonnet", "max_tokens": 50, "messages": HI, "tools": [SEARCH]},
            headers={"x-api-key": served.key.key, "anthropic-version": "2023-06-01"},
        )
        assert answer.status_code == 200, answer.text
        [line] = await served.ledger()
    finally:
        await served.gateway.aclose()
    tokens = (10 * 3.0 + 2 * 15.0) / 1e6
    assert line.cost_usd == pytest.approx(tokens + 3 * per_search)


async def test_a_gemini_25_grounded_answer_is_charged_googles_price_for_a_grounded_prompt() -> None:
    def upstream(request: httpx.Request) -> httpx.Response:
        return httpx.Response(200, json=GEMINI_ANSWER)

    provider = {"type": "gemini", "api_key": "env:OPENAI_API_KEY", "base_url": "http://up/v1beta"}
    models = {"flash": {"deployments": [{"provider": "openai", "model": "gemini-2.5-flash"}]}}
    served = await serve(upstream, models, provider=provider, priced_options={"web_search_usd": GATEWAY_SEARCH_USD})
    asked = {"model": "flash", "messages": HI, "max_tokens": 50, "web_search_options": {}}
    headers = {"authorization": f"Bearer {served.key.key}"}
    try:
        # Reserved at Google's price too, and for the one grounded prompt it bills (not the ten searches a request
        # may run: $0.35 held for $0.035; found by review, mergerev36): $0.035 passes no $0.034 cap, but a $0.036 one.
        for cap, status in (("0.034", 402), ("0.036", 200)):
            capped = {**headers, "x-gateway-max-cost-usd": cap}
            answer = await served.http.post("/v1/chat/completions", json=asked, headers=capped)
            assert answer.status_code == status, answer.text
        [line] = await served.ledger()
    finally:
        await served.gateway.aclose()
    # Three queries, one grounded prompt, at $35 a thousand.
    assert line.cost_usd == pytest.approx((10 * 0.30 + 2 * 2.50) / 1e6 + 0.035)
    assert orjson.loads(answer.content)["choices"][0]["message"]["content"] == "news"


async def test_a_compatible_servers_per_request_search_fee_is_the_gateways_price() -> None:
    """`web_search_options` sent to an OpenAI-compatible server (a LiteLLM or OpenRouter proxy) serving Claude is
    billed once a request at the gateway's `web_search_usd`: the built-in table's Claude price is Anthropic's, per
    search of its own tool, and was charged in its place. Found by review (mergerev36)."""
    answer = {
        "id": "c1",
        "object": "chat.completion",
        "created": 1,
        "model": "claude-sonnet-4-5",
        "choices": [{"index": 0, "message": {"role": "assistant", "content": "news"}, "finish_reason": "stop"}],
        "usage": {"prompt_tokens": 10, "completion_tokens": 2, "total_tokens": 12},
    }
    models = {"sonnet": {"deployments": [{"provider": "openai", "model": "claude-sonnet-4-5"}]}}
    served = await serve(
        lambda request: httpx.Response(200, json=answer), models, priced_options={"web_search_usd": 0.025}
    )
    asked = {"model": "sonnet", "messages": HI, "max_tokens": 50, "web_search_options": {}}
    try:
        answered = await served.http.post(
            "/v1/chat/completions", json=asked, headers={"authorization": f"Bearer {served.key.key}"}
        )
        assert answered.status_code == 200, answered.text
        [line] = await served.ledger()
    finally:
        await served.gateway.aclose()
    assert line.cost_usd == pytest.approx((10 * 3.0 + 2 * 15.0) / 1e6 + 0.025)
