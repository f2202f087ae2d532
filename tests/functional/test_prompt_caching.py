"""Prompt caching and reasoning controls from Chat Completions clients (the official openai SDK).

`cache_control` on content parts (the convention other gateways accept) reaches Anthropic as `cache_control`
and Bedrock as cache points; `prompt_cache_key` reaches OpenAI; cache writes and reads come back in the
chat usage and are priced. `reasoning_effort` becomes each provider's own reasoning control.
"""

from __future__ import annotations

import csv
import io
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest

from tests.functional.agents_gateway import CLAUDE_PRICE, agents_gateway
from tests.functional.conftest import Running
from tests.functional.test_costs_edges import completion
from tests.support.inprocess import serve

CACHED = {"type": "ephemeral"}
RULES = "Follow the house style. " * 60


@pytest.fixture(scope="module")
def agents(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Running]:
    with agents_gateway(Path(tmp_path_factory.mktemp("caching-store"))) as running:
        yield running


@pytest.fixture
def client(agents: Running) -> Iterator[openai.OpenAI]:
    with openai.OpenAI(base_url=f"{agents.url}/v1", api_key=agents.mint(name="chat"), max_retries=0) as sdk:
        yield sdk


def cached_messages(question: str) -> Any:
    return [
        {"role": "system", "content": [{"type": "text", "text": RULES, "cache_control": CACHED}]},
        {"role": "user", "content": question},
    ]


def test_cache_markers_reach_anthropic_and_cache_reads_are_reported_and_priced(
    agents: Running, client: openai.OpenAI
) -> None:
    first = client.chat.completions.create(model="claude", messages=cached_messages("One?"), max_tokens=50)
    sent = agents.fakes["anthropic"].state.requests[-1]["json"]
    assert sent["system"] == [{"type": "text", "text": RULES, "cache_control": CACHED}]
    assert first.usage is not None and first.usage.prompt_tokens_details is not None
    written = first.usage.model_dump()["prompt_tokens_details"]["cache_write_tokens"]
    assert written > 0
    raw = client.chat.completions.with_raw_response.create(
        model="claude", messages=cached_messages("Two?"), max_tokens=50
    )
    usage = raw.parse().usage
    assert usage is not None and usage.prompt_tokens_details is not None
    assert usage.prompt_tokens_details.cached_tokens == written
    uncached = usage.prompt_tokens - written
    expected = (
        uncached * CLAUDE_PRICE["input"]
        + written * CLAUDE_PRICE["cached_input"]
        + usage.completion_tokens * CLAUDE_PRICE["output"]
    ) / 1_000_000
    assert float(raw.headers["x-gateway-cost-usd"]) == pytest.approx(expected, rel=1e-6)

    # The ledger says what caching saved: the write paid its premium, the read saved the discount.
    deadline = time.monotonic() + 10
    while len(lines := sorted(agents.ledger(client.api_key), key=lambda line: line.ts)) < 2:
        assert time.monotonic() < deadline, "both lines settle"
        time.sleep(0.05)
    premium = CLAUDE_PRICE.get("cache_write", CLAUDE_PRICE["input"]) - CLAUDE_PRICE["input"]
    discount = CLAUDE_PRICE["input"] - CLAUDE_PRICE["cached_input"]
    assert [line.cache_write_tokens for line in lines] == [written, 0]
    assert lines[0].cache_savings_usd == pytest.approx(-written * premium / 1e6, abs=1e-15)
    assert lines[1].cache_savings_usd == pytest.approx(written * discount / 1e6, rel=1e-9)


def test_cache_markers_become_bedrock_cache_points(agents: Running, client: openai.OpenAI) -> None:
    client.chat.completions.create(model="bedrock-claude", messages=cached_messages("One?"), max_tokens=50)
    sent = agents.fakes["bedrock"].state.requests[-1]["json"]
    assert sent["system"] == [{"text": RULES}, {"cachePoint": {"type": "default"}}]


def test_openai_gets_its_prompt_cache_key_and_no_markers(agents: Running, client: openai.OpenAI) -> None:
    raw = client.chat.completions.with_raw_response.create(
        model="gpt", messages=cached_messages("One?"), prompt_cache_key="tenant-7"
    )
    sent = agents.fakes["openai"].state.requests[-1]["json"]
    assert sent["prompt_cache_key"] == "tenant-7"
    assert sent["messages"][0]["content"] == [{"type": "text", "text": RULES}]
    assert "x-gateway-dropped-params" not in raw.headers


@pytest.mark.parametrize(("model", "provider"), [("claude", "anthropic"), ("bedrock-claude", "bedrock")])
def test_a_prompt_cache_key_gets_claude_breakpoints_and_the_next_turn_reads_the_prefix(
    agents: Running, client: openai.OpenAI, model: str, provider: str
) -> None:
    """OpenAI's way of asking for caching, `prompt_cache_key` and no marker, was dropped (named) on Claude, and each
    turn paid its whole prompt at the input price: now the gateway places the breakpoints, and the next turn reads."""
    rules = RULES * 5  # some 1,800 tokens: past Sonnet 4.5's 1,024
    turn = [{"role": "system", "content": rules}, {"role": "user", "content": "One?"}]
    first = client.chat.completions.with_raw_response.create(
        model=model, messages=turn, prompt_cache_key="tenant-7", max_tokens=50
    )
    sent = agents.fakes[provider].state.requests[-1]["json"]
    if provider == "anthropic":
        assert sent["system"] == [{"type": "text", "text": rules, "cache_control": CACHED}]
        assert sent["messages"][-1]["content"][-1]["cache_control"] == CACHED and "prompt_cache_key" not in sent
    else:  # (no point after the system prompt: Bedrock makes none a few tokens before another)
        assert sent["system"] == [{"text": rules}]
        assert sent["messages"][-1]["content"] == [{"text": "One?"}, {"cachePoint": {"type": "default"}}]
    answer = first.parse().choices[0].message.content
    again = [*turn, {"role": "assistant", "content": answer}, {"role": "user", "content": "Two?"}]
    second = client.chat.completions.with_raw_response.create(
        model=model, messages=again, prompt_cache_key="tenant-7", max_tokens=50
    )
    usage = second.parse().usage
    assert usage is not None and usage.prompt_tokens_details is not None
    assert usage.prompt_tokens_details.cached_tokens and usage.prompt_tokens_details.cached_tokens > 1000
    assert float(second.headers["x-gateway-cost-usd"]) < float(first.headers["x-gateway-cost-usd"]) / 2
    assert "x-gateway-dropped-params" not in first.headers and "x-gateway-dropped-params" not in second.headers


@pytest.mark.parametrize(
    ("model", "provider", "control", "expected"),
    [
        ("o4", "openai", lambda body: body["reasoning_effort"], "high"),
        # `claude` is configured to write 3,000 tokens at most: the client's 20,000 is lowered to it, and "high"'s
        # 16,384 of thinking with it, to half of it, the answer keeping the other half.
        ("claude", "anthropic", lambda body: body["thinking"], {"type": "enabled", "budget_tokens": 1500}),
        # Gemini's thoughts count against its cap too: of the 20,000, the answer keeps 4,096.
        ("gemini", "gemini", lambda body: body["generationConfig"]["thinkingConfig"], {"thinkingBudget": 15904}),
        (
            "bedrock-claude",
            "bedrock",
            lambda body: body["additionalModelRequestFields"],
            # Of the client's 20,000, the answer keeps 4,096 beside the thinking.
            {"thinking": {"type": "enabled", "budget_tokens": 15904}},
        ),
    ],
)
def test_reasoning_effort_becomes_each_providers_control(
    agents: Running, client: openai.OpenAI, model: str, provider: str, control: Callable[[Any], Any], expected: Any
) -> None:
    raw = client.chat.completions.with_raw_response.create(
        model=model,
        messages=[{"role": "user", "content": "Think."}],
        reasoning_effort="high",
        max_completion_tokens=20000,
    )
    assert control(agents.fakes[provider].state.requests[-1]["json"]) == expected
    assert "x-gateway-dropped-params" not in raw.headers


async def test_what_caching_saved_carries_no_float_noise_on_the_line_or_in_the_csv() -> None:
    """gpt-4o-mini, 22 of 1,000 prompt tokens read from the cache: $0.00000165 saved (22 × ($0.15 − $0.075) per
    million). The cost was kept `exact`, the saving raw: 1.6499999999999999e-06 on the line, and
    0.0000016499999999999999 in `/v1/usage?format=csv` (found by review)."""

    def cached(request: httpx.Request) -> httpx.Response:
        usage = {"prompt_tokens": 1000, "completion_tokens": 10, "prompt_tokens_details": {"cached_tokens": 22}}
        return httpx.Response(200, json={**completion(), "usage": usage})

    served = await serve(cached, {"m": {"deployments": [{"provider": "openai", "model": "gpt-4o-mini"}]}})
    answer = await served.post("/v1/chat/completions", {"model": "m", "messages": [{"role": "user", "content": "hi"}]})
    assert answer.status_code == 200 and answer.headers["x-gateway-cost-usd"] == "0.00015435"
    [line] = await served.ledger()
    [row] = list(csv.DictReader(io.StringIO((await served.get("/v1/usage?format=csv")).text)))
    await served.gateway.aclose()
    assert (line.cache_savings_usd, row["cache_savings_usd"]) == (1.65e-06, "0.00000165")
