"""The Responses API's hosted `web_search` tool (Codex sends it) at a deployment that gets the request translated
for a provider with no search of its own (Bedrock, DeepSeek, a Chat Completions server): the translation leaves the
tool out and names it dropped (`tools[web_search]`), so no search can run there, and neither that attempt's worst
case nor its charge may hold searches (Claude on Anthropic and Gemini run it as their own search, and are held and
charged its searches: test_hosted_search.py). Before, every attempt of the plan was reserved for `max_tool_calls`
searches (10 when unset) at `web_search_usd`: at the fleet's $0.01 a search, a request whose own worst case is some
$0.00004 was held $0.100042, refused under `x-gateway-max-cost-usd: 0.01` and on a key with $0.05 left; and a
translated reasoning stream cut by its deadline was charged $0.10201, $0.10 of it for searches (review). A
deployment that passes the request through (OpenAI's Responses API) is sent the tool, and still reserved for every
search it allows."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import httpx
import pytest

from adapters.providers.registry import REGISTRY
from handler.config import parse_config
from handler.pipeline.charges import DEFAULT_SEARCHES
from tests.functional.conftest import Running, serving
from tests.functional.responses.fleet import PRICE, SEARCH_USD

SEARCH: Any = [{"type": "web_search"}]


def bearer(key: str, **more: str) -> dict[str, str]:
    return {"authorization": f"Bearer {key}", **more}


@pytest.mark.parametrize("model", ["bedrock-claude", "deepseek", "gpt-chat"])
def test_a_search_the_deployment_cannot_run_is_not_held_against_the_max_cost(fleet: Running, model: str) -> None:
    key = fleet.mint(name=f"search-max-cost-{model}")
    body = {"model": model, "input": "Hi", "max_output_tokens": 16, "tools": SEARCH}
    headers = bearer(key, **{"x-gateway-max-cost-usd": "0.01"})
    answer = httpx.post(f"{fleet.url}/v1/responses", json=body, headers=headers, timeout=30)
    # (It was the 402 "worst-case cost $0.100042 exceeds x-gateway-max-cost-usd $0.01".)
    assert answer.status_code == 200, answer.text
    assert "tools[web_search]" in answer.headers["x-gateway-dropped-params"].split(",")  # (the provider had none)


def test_a_search_the_deployment_runs_is_still_held_against_the_max_cost(fleet: Running) -> None:
    """OpenAI's Responses API is sent the tool: the searches it allows at $0.01 are in its worst case."""
    key = fleet.mint(name="search-max-cost-native")
    body = {"model": "gpt", "input": "Hi", "max_output_tokens": 16, "tools": SEARCH}
    headers = bearer(key, **{"x-gateway-max-cost-usd": "0.05"})
    refused = httpx.post(f"{fleet.url}/v1/responses", json=body, headers=headers, timeout=30)
    assert refused.status_code == 402 and "worst-case cost $0.1" in refused.json()["error"]["message"], refused.text
    four = {**body, "max_tool_calls": 4}
    assert httpx.post(f"{fleet.url}/v1/responses", json=four, headers=headers, timeout=30).status_code == 200


@pytest.mark.parametrize("model", ["bedrock-claude", "deepseek"])
def test_a_search_the_deployment_cannot_run_does_not_refuse_a_key_with_budget_left(fleet: Running, model: str) -> None:
    key = fleet.mint(name=f"search-budget-{model}", budget_usd=0.05)
    body = {"model": model, "input": "Hi", "max_output_tokens": 16, "tools": SEARCH}
    answer = httpx.post(f"{fleet.url}/v1/responses", json=body, headers=bearer(key), timeout=30)
    assert answer.status_code == 200, answer.text  # (a 402: ten searches at $0.01 held against $0.05)


def test_a_translated_request_cut_in_flight_is_charged_the_searches_it_could_run(fleet: Running) -> None:
    """Cut before Claude answered (its deadline), the request is charged its reserved worst case: Claude's own, 5
    input tokens and 16 output at $1 and $2 a million, with the ten searches its search tool was sent (`max_uses`),
    which Anthropic may have run and billed. (When the translation sent Claude no search, none was in it.)"""
    key = fleet.mint(name="search-cut", budget_usd=1.0)
    body = {"model": "claude", "input": "Hi", "max_output_tokens": 16, "tools": SEARCH, "user": "slow"}
    headers = bearer(key, **{"x-gateway-deadline-ms": "300"})
    cut = httpx.post(f"{fleet.url}/v1/responses", json=body, headers=headers, timeout=30)
    assert cut.status_code == 504, cut.text
    [line] = fleet.ledger(key)
    assert (line.cost_source, line.status) == ("reserved", 504)
    tokens = (line.input_tokens * PRICE["input"] + 16 * PRICE["output"]) / 1e6
    assert line.cost_usd == pytest.approx(tokens + DEFAULT_SEARCHES * SEARCH_USD)


def test_a_translated_reasoning_stream_cut_by_its_deadline_is_not_charged_searches(
    upstream: tuple[Any, dict[str, Any]], tmp_path: Path
) -> None:
    """A reasoning model on a Chat Completions server (sent the translation, without the tool) streams slowly, and
    its deadline cuts it: a reasoning stream cut short is charged its reserved worst case, its 1,000 output tokens
    with no search in it (it was $0.10201, ten searches of it)."""
    server, _ = upstream
    config = parse_config(
        {
            "gateway": {"priced_options": {"web_search_usd": SEARCH_USD}},
            "providers": {
                "chat": {"type": "openai", "api_key": "env:OPENAI_API_KEY", "base_url": f"{server.url}/openai/v1"}
            },
            # The fake's `drip`: a stream whose chunks come seconds apart.
            "models": {"o4-drip": {"deployments": [{"provider": "chat", "model": "o4-mini-drip"}], "price": PRICE}},
        },
        set(REGISTRY),
    )
    for running in serving(config, f"sqlite:///{tmp_path / 'gateway.db'}", upstream):
        key = running.mint(name="search-deadline", budget_usd=1.0)
        body = {
            "model": "o4-drip",
            "input": "Hi",
            "max_output_tokens": 1000,
            "reasoning": {"effort": "low"},
            "tools": SEARCH,
            "stream": True,
        }
        headers = bearer(key, **{"x-gateway-deadline-ms": "2500"})
        with httpx.stream("POST", f"{running.url}/v1/responses", json=body, headers=headers, timeout=30) as answer:
            text = b"".join(answer.iter_bytes()).decode()
        assert answer.status_code == 200 and "response.failed" in text
        [line] = running.ledger(key)
        assert (line.cost_source, line.status, line.output_tokens) == ("reserved", 504, 1000), line
        assert line.cost_usd == pytest.approx((line.input_tokens * PRICE["input"] + 1000 * PRICE["output"]) / 1e6)


WEATHER: Any = {
    "type": "function",
    "name": "get_weather",
    "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]},
}


def test_gemini_beside_function_tools_is_not_held_the_search_it_is_not_sent(fleet: Running) -> None:
    """Codex sends `web_search` beside its function tools on every turn. Gemini takes no search beside functions:
    the translation leaves it out and names it dropped, so no search can run, and none is held. It was held ten at
    $0.01 all the same (`hosts_search` asked of the provider alone): $0.100192 for a request whose own worst case
    is $0.000192, the 402 under `x-gateway-max-cost-usd: 0.05` (review)."""
    key = fleet.mint(name="search-max-cost-gemini-functions")
    body = {"model": "gemini", "input": "Hi", "max_output_tokens": 16, "tools": [WEATHER, *SEARCH]}
    answer = httpx.post(
        f"{fleet.url}/v1/responses", json=body, headers=bearer(key, **{"x-gateway-max-cost-usd": "0.05"}), timeout=30
    )
    assert answer.status_code == 200, answer.text
    assert "tools[web_search]" in answer.headers["x-gateway-dropped-params"].split(",")


def test_gemini_beside_function_tools_does_not_refuse_a_key_with_budget_left(fleet: Running) -> None:
    key = fleet.mint(name="search-budget-gemini-functions", budget_usd=0.05)
    body = {"model": "gemini", "input": "Hi", "max_output_tokens": 16, "tools": [WEATHER, *SEARCH]}
    answer = httpx.post(f"{fleet.url}/v1/responses", json=body, headers=bearer(key), timeout=30)
    assert answer.status_code == 200, answer.text  # (a 402: ten searches at $0.01 held against $0.05)


def test_gemini_beside_function_tools_cut_in_flight_is_not_charged_searches(
    upstream: tuple[Any, dict[str, Any]], tmp_path: Path
) -> None:
    """A Codex turn to Gemini 2.5 cut by its deadline before Gemini answered is charged its reserved worst case:
    its tokens alone, Gemini having been sent no search (it was $0.100192, $0.10 of it for ten searches)."""
    server, _ = upstream
    config = parse_config(
        {
            "gateway": {"priced_options": {"web_search_usd": SEARCH_USD}},
            "providers": {
                "gemini": {"type": "gemini", "api_key": "env:GEMINI_API_KEY", "base_url": f"{server.url}/gemini"}
            },
            # (The fake's `slow` model: an answer that comes after the deadline.)
            "models": {
                "gemini-slow": {
                    "deployments": [{"provider": "gemini", "model": "gemini-2.5-flash-slow"}],
                    "price": PRICE,
                }
            },
        },
        set(REGISTRY),
    )
    for running in serving(config, f"sqlite:///{tmp_path / 'gateway.db'}", upstream):
        key = running.mint(name="search-cut-gemini-functions", budget_usd=1.0)
        body = {"model": "gemini-slow", "input": "Hi", "max_output_tokens": 16, "tools": [WEATHER, *SEARCH]}
        headers = bearer(key, **{"x-gateway-deadline-ms": "300"})
        cut = httpx.post(f"{running.url}/v1/responses", json=body, headers=headers, timeout=30)
        assert cut.status_code == 504, cut.text
        [line] = running.ledger(key)
        assert (line.cost_source, line.status) == ("reserved", 504)
        assert line.cost_usd == pytest.approx((line.input_tokens * PRICE["input"] + 16 * PRICE["output"]) / 1e6)


@pytest.mark.parametrize(
    ("model", "tools"), [("bedrock-claude", SEARCH), ("deepseek", SEARCH), ("gemini", [WEATHER, *SEARCH])]
)
def test_the_search_limit_is_named_with_the_search_where_it_is_not_sent(
    fleet: Running, model: str, tools: list[Any]
) -> None:
    """`max_tool_calls` is the search's limit where a provider runs the search (Claude's `max_uses`), and not named
    there; where the search is left out, its limit goes with it, and is named as it. It went unnamed everywhere."""
    key = fleet.mint(name=f"search-limit-{model}")
    body = {"model": model, "input": "Hi", "max_output_tokens": 16, "tools": tools, "max_tool_calls": 2}
    answer = httpx.post(f"{fleet.url}/v1/responses", json=body, headers=bearer(key), timeout=30)
    assert answer.status_code == 200, answer.text
    named = answer.headers["x-gateway-dropped-params"].split(",")
    assert "tools[web_search]" in named and "max_tool_calls" in named


def test_the_search_limit_goes_with_the_search_where_it_is_sent(fleet: Running) -> None:
    key = fleet.mint(name="search-limit-claude")
    body = {"model": "claude", "input": "Hi", "max_output_tokens": 16, "tools": SEARCH, "max_tool_calls": 2}
    answer = httpx.post(f"{fleet.url}/v1/responses", json=body, headers=bearer(key), timeout=30)
    assert answer.status_code == 200, answer.text
    assert "max_tool_calls" not in answer.headers.get("x-gateway-dropped-params", "").split(",")


def test_a_chat_search_beside_function_tools_on_gemini_is_held_no_search_fee(fleet: Running) -> None:
    """Chat Completions' `web_search_options` beside function tools, to Gemini: sent no search (named dropped), and
    billed none, per search or per request. It was held OpenAI's per-request fee before its request was built:
    $0.010147 for its own $0.000147, a 402 under `x-gateway-max-cost-usd: 0.005`."""
    key = fleet.mint(name="chat-search-gemini-functions")
    body = {
        "model": "gemini",
        "messages": [{"role": "user", "content": "Hi"}],
        "max_tokens": 16,
        "tools": [{"type": "function", "function": {"name": "f", "parameters": {"type": "object"}}}],
        "web_search_options": {},
    }
    headers = bearer(key, **{"x-gateway-max-cost-usd": "0.005"})
    answer = httpx.post(f"{fleet.url}/v1/chat/completions", json=body, headers=headers, timeout=30)
    assert answer.status_code == 200, answer.text
    assert answer.headers["x-gateway-dropped-params"].split(",") == ["web_search_options"]
    [line] = fleet.ledger(key)
    usage = answer.json()["usage"]
    tokens = (usage["prompt_tokens"] * PRICE["input"] + usage["completion_tokens"] * PRICE["output"]) / 1e6
    assert line.cost_usd == pytest.approx(tokens)


@pytest.mark.parametrize("stream", [False, True])
def test_chat_search_options_to_deepseek_are_left_out_and_not_charged(fleet: Running, stream: bool) -> None:
    """Chat Completions' `web_search_options` to DeepSeek, which has no such member (its API ignores what it does not
    know: no search runs): left out, named dropped, and neither held nor charged OpenAI's per-request fee. It was
    sent as written and held and charged the fee: $0.010067 for a request of $0.000067, a 402 under
    `x-gateway-max-cost-usd: 0.005`."""
    key = fleet.mint(name=f"chat-search-deepseek-{stream}")
    body = {
        "model": "deepseek",
        "messages": [{"role": "user", "content": "Hi"}],
        "max_tokens": 16,
        "web_search_options": {},
        "stream": stream,
        **({"stream_options": {"include_usage": True}} if stream else {}),
    }
    headers = bearer(key, **{"x-gateway-max-cost-usd": "0.005"})
    answer = httpx.post(f"{fleet.url}/v1/chat/completions", json=body, headers=headers, timeout=30)
    assert answer.status_code == 200, answer.text
    assert answer.headers["x-gateway-dropped-params"].split(",") == ["web_search_options"]
    assert "web_search_options" not in fleet.fakes["openai"].state.requests[-1]["json"]
    [line] = fleet.ledger(key)
    tokens = (line.input_tokens * PRICE["input"] + line.output_tokens * PRICE["output"]) / 1e6
    assert line.cost_usd == pytest.approx(tokens)
