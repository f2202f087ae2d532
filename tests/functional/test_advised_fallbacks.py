"""Anthropic's advisor tool on a plan whose fallback gets the request translated (here OpenAI's Chat Completions):
the translation leaves the tool out and names it dropped, so that attempt's model calls no advisor, and neither its
worst case nor its charge may hold advisor calls. Before, every attempt of the plan was reserved for them: a Sonnet
request with an Opus advisor, behind a fallback at o1-pro's $150/$600 a million, was held $3.46 for the fallback's
own $2.47 (and $22.81 with an advisor the gateway has no price for, its calls at the fallback's prices), so a $3
budget or `x-gateway-max-cost-usd` refused what it could serve; and the fallback, cut unanswered, was charged the
advisor's worst case beside its own ($0.94 for $0.07). A message thread goes to no translation at all, and was
reserved at it still: a `continue` of a thread this process did not relay, for its model's context window at the
fallback's prices ($152.47 for Sonnet's $12.09)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import anthropic
import pytest

from adapters.providers.registry import REGISTRY
from handler.config import parse_config
from tests.functional.conftest import Running, anthropic_client, serving
from tests.functional.test_search_and_cache_prices import (
    ADVISOR_BETA,
    THREADS_BETA,
    advised_settings,
    continue_of,
    sent,
)
from tests.support.servers import ServerThread

PRO_PRICE = {"input": 150.0, "output": 600.0}  # o1-pro's: a fallback dearer than Sonnet and its advisor together
DROPPED = ("tools.advisor_20260301", f"anthropic-beta[{ADVISOR_BETA}]")


def config(url: str) -> dict[str, Any]:
    return {
        "providers": {
            "anthropic": {"type": "anthropic", "api_key": "env:ANTHROPIC_API_KEY", "base_url": f"{url}/anthropic"},
            "openai": {"type": "openai", "api_key": "env:OPENAI_API_KEY", "base_url": f"{url}/openai/v1"},
        },
        "models": {
            # Sonnet on Anthropic (the built-in table's $3/$15), then a dearer model on OpenAI.
            "sonnet": {
                "deployments": [{"provider": "anthropic", "model": "claude-sonnet-4-5-20250929"}],
                "fallbacks": ["pro"],
            },
            "pro": {"deployments": [{"provider": "openai", "model": "gpt-pro-x"}], "price": PRO_PRICE},
            # The same, whose fallback answers only after the fake's 2 seconds.
            "hasty": {
                "deployments": [{"provider": "anthropic", "model": "claude-sonnet-4-5-20250929"}],
                "fallbacks": ["pro-slow"],
            },
            "pro-slow": {"deployments": [{"provider": "openai", "model": "gpt-pro-x-slow"}], "price": PRO_PRICE},
        },
    }


@pytest.fixture(scope="module")
def falling_back(
    upstream: tuple[ServerThread, dict[str, Any]], tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Running]:
    store = f"sqlite:///{Path(tmp_path_factory.mktemp('advfb')) / 'gateway.db'}"
    yield from serving(parse_config(config(upstream[0].url), set(REGISTRY)), store, upstream)


def worst(sdk: Any, settings: Any, **headers: str) -> float:
    """The worst case a request is reserved at, as a `x-gateway-max-cost-usd` too low for it tells (nothing sent): a
    402, or for a thread's `continue` Anthropic's `thread_unsupported_request`, which says it too."""
    with pytest.raises(anthropic.APIStatusError) as refused:
        sdk.create(**settings, extra_headers={"x-gateway-max-cost-usd": "0.000000001", **headers})
    return float(str(refused.value.body).split("worst-case cost $")[1].split(" ")[0])


def pro_usd(line: Any) -> float:
    return (line.input_tokens * PRO_PRICE["input"] + line.output_tokens * PRO_PRICE["output"]) / 1e6


@pytest.mark.parametrize("advisor", ["claude-opus-4-6", "claude-nobody-prices"], ids=["priced", "unpriced"])
def test_the_advisor_is_reserved_only_at_the_deployments_it_is_sent_to(falling_back: Running, advisor: str) -> None:
    """The plan's worst case is its dearest attempt's: Sonnet's with its advisor's calls ($1.05 with Opus), or the
    fallback's own ($2.47 for 4,096 tokens at $600 a million), which is sent no advisor. It was the fallback's with
    the advisor's calls on top ($3.46; with an unpriced advisor, its calls at the fallback's prices: $22.81)."""
    sdk = anthropic_client(falling_back, falling_back.mint(name=f"advfb-worst-{advisor}")).beta.messages
    settings = {**advised_settings(advisor), "max_tokens": 4096}
    advised = worst(sdk, settings)
    unadvised = worst(sdk, {**settings, "tools": [], "betas": []})
    sonnet_advised = worst(sdk, settings, **{"x-gateway-fallbacks": "none"})
    assert sonnet_advised < unadvised, (sonnet_advised, unadvised)  # (the fallback's own is the dearer)
    # (The tool's own bytes are in the fallback's worst case, a token a byte: about 100 tokens at $150 a million.)
    assert advised == pytest.approx(unadvised, abs=0.02), (advised, unadvised)


@pytest.mark.parametrize("bound", ["budget", "x-gateway-max-cost-usd"])
def test_a_bound_the_advisors_calls_at_a_translated_fallback_passed_serves_the_request(
    falling_back: Running, bound: str
) -> None:
    """$3, between the plan's worst case ($2.47) and what it was reserved for with the advisor's calls at the
    fallback ($3.46): the request was refused (402), and is served, by Sonnet and its advisor, within it."""
    key = falling_back.mint(name=f"advfb-bound-{bound}", **({"budget_usd": 3.0} if bound == "budget" else {}))
    headers = {"x-gateway-max-cost-usd": "3.00"} if bound != "budget" else {}
    sdk = anthropic_client(falling_back, key).beta.messages
    message = sdk.create(**{**advised_settings(), "max_tokens": 4096}, extra_headers=headers)
    assert [block.type for block in message.content][:2] == ["server_tool_use", "advisor_tool_result"]
    [line] = falling_back.ledger(key)
    assert line.provider == "anthropic" and line.cost_source == "provider"
    assert 0.15 < line.cost_usd < 3.0, line.cost_usd  # (a 7,600-token advice at Opus's $25 a million)


@pytest.mark.parametrize("stream", [False, True], ids=["whole", "streamed"])
def test_a_translated_fallback_is_sent_no_advisor_names_it_and_is_charged_none(
    falling_back: Running, stream: bool
) -> None:
    """Anthropic fails (a 500, not billed), and the fallback answers the translation: it was sent no advisor tool,
    the answer names it dropped (with its beta), and it is charged its own tokens at its own prices alone."""
    key = falling_back.mint(name=f"advfb-answered-{stream}", budget_usd=5.0)
    sdk = anthropic_client(falling_back, key).beta.messages
    settings = {**advised_settings(), "metadata": {"user_id": "fail-500"}}
    if stream:
        with sdk.with_streaming_response.create(**settings, stream=True) as raw:
            headers = raw.headers
            assert b"message_stop" in raw.read()
    else:
        raw = sdk.with_raw_response.create(**settings)
        headers = raw.headers
        assert raw.parse().content
    assert headers["x-gateway-route"].endswith("=200") and "=500" in headers["x-gateway-route"]
    assert set(DROPPED) <= set(headers["x-gateway-dropped-params"].split(","))
    assert "tools" not in sent(falling_back, "openai")
    [line] = falling_back.ledger(key)
    assert (line.provider, line.cost_source) == ("openai", "provider")
    assert line.cost_usd == pytest.approx(pro_usd(line)), (line.cost_usd, pro_usd(line))


def test_a_translated_fallback_cut_unanswered_is_charged_no_advisor(falling_back: Running) -> None:
    """Anthropic fails at once, and the request's deadline cuts the fallback before it answers: it may still run to
    the end at OpenAI, so it is charged its reserved worst case, which holds no advisor (it was sent none). It was
    charged the advisor's calls at Opus's prices too: $0.94, for the $0.07 of the same request without the tool."""
    key = falling_back.mint(name="advfb-cut", budget_usd=5.0)
    sdk = anthropic_client(falling_back, key).beta.messages
    settings = {**advised_settings(), "model": "hasty", "metadata": {"user_id": "fail-500"}}
    for asked in (settings, {**settings, "tools": [], "betas": []}):
        with pytest.raises(anthropic.APIStatusError) as cut:
            sdk.create(**asked, extra_headers={"x-gateway-deadline-ms": "1000"})
        assert cut.value.status_code == 504
    plain, advised = falling_back.ledger(key)  # (newest first)
    assert {line.cost_source for line in (plain, advised)} == {"reserved"}
    assert advised.provider == "openai"
    # (The tool's own bytes are in the worst case charged, a token a byte: about 100 tokens at $150 a million.)
    assert advised.cost_usd == pytest.approx(plain.cost_usd, abs=0.02), (advised.cost_usd, plain.cost_usd)


@pytest.mark.parametrize("advised", [False, True], ids=["plain", "advised"])
def test_a_thread_is_reserved_at_the_deployments_that_can_keep_it(falling_back: Running, advised: bool) -> None:
    """A request with `thread` goes only to a deployment that speaks Anthropic's API; the translated fallback is
    passed over unsent (`=unsupported`), so the plan's worst case is Sonnet's, as with no fallback. A `continue` of a
    thread this process did not relay was reserved for the context window at the fallback's prices ($152.47, and
    $622.78 with the advisor beta, for Sonnet's $12.09 and $49.09), and refused on any smaller budget. (A thread
    relayed elsewhere holds the advisor its record keeps: Opus's here.)"""
    key = falling_back.mint(name=f"advfb-thread-{advised}")
    betas = [THREADS_BETA, ADVISOR_BETA] if advised else [THREADS_BETA]
    advisors = (("claude-opus-4-6", 3, 8192),) if advised else ()
    falling_back.answered_elsewhere(key, "msg_01elsewhere", advisors)
    sdk = anthropic_client(falling_back, key).beta.messages
    following = continue_of("msg_01elsewhere", betas, max_tokens=4096)
    assert worst(sdk, following) == worst(sdk, following, **{"x-gateway-fallbacks": "none"})
    first = {**advised_settings(), "max_tokens": 4096, "betas": betas, "thread": {"type": "create"}}
    assert worst(sdk, first) == worst(sdk, first, **{"x-gateway-fallbacks": "none"})


def test_a_continue_of_an_advised_thread_behind_a_translated_fallback_is_served_within_a_budget(
    falling_back: Running,
) -> None:
    """A thread created here with an Opus advisor: its `continue` is reserved for that advisor again
    (`ThreadAnswer.advisors`), at Anthropic alone, where the thread is. It was reserved at the fallback too,
    the advisor's calls at Opus's prices on the fallback's own worst case ($3.22 for Anthropic's $1.25), and the
    $1.31 this budget had left refused it as a request Anthropic cannot thread (400 `thread_unsupported_request`)."""
    key = falling_back.mint(name="advfb-continue", budget_usd=1.5)
    sdk = anthropic_client(falling_back, key).beta.messages
    betas = [ADVISOR_BETA, THREADS_BETA]
    first = sdk.create(**{**advised_settings(), "betas": betas}, thread={"type": "create"})
    following = continue_of(first.id, betas, max_tokens=1024, metadata={"user_id": "long-advice"})
    reserved = worst(sdk, following)
    assert reserved == worst(sdk, following, **{"x-gateway-fallbacks": "none"})
    message = sdk.create(**following)
    [advice] = [entry for entry in message.usage.iterations or () if entry.type == "advisor_message"]
    assert advice.output_tokens > 7000  # (the thread's advisor advised the continue too)
    following_line, _ = falling_back.ledger(key)
    assert following_line.cost_source == "provider" and following_line.cost_usd <= reserved
