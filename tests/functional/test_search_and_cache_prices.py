"""What the providers bill besides tokens, and at what rate: web searches their own tools run (Anthropic's
`web_search_*` server tool, the Responses API's hosted `web_search`), audio output, Anthropic's hour-long cache
writes, the options of a Messages request that multiply its model's prices at Anthropic (`speed: fast`,
`inference_geo: us`), at the speed the answer was served at, and the tokens of Anthropic's server-side compaction
and of its advisor tool's model, which its usage counts apart from the top level.

The official SDKs through gateways in front of the fakes: one that prices searches
(`priced_options.web_search_usd`), one that does not. Before, a search was neither priced nor refused, and an
hour's cache write was charged at the 5-minute rate (100k such tokens on Sonnet 4.5: $0.375 instead of $0.60),
fast mode passed through at the standard prices (Opus 4.6: $5/$25 per million instead of $30/$150), its worst
case reserved at them too, and a compaction's tokens (the whole conversation read, the summary written) not at all.
Then fast mode served at standard speed was still charged six times over, and an advisor's tokens not at all; and a
Chat Completions or Responses request translated for Anthropic had none of its answer's usage read for how it was
served (a `us` workspace's answers charged at the global prices, a tenth short). Audio
output (`completion_tokens_details.audio_tokens`) was charged and reserved at the text output price ($0.60 a million
for gpt-4o-mini-audio-preview's, whose audio costs $20), with no price to put it at.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import anthropic
import openai
import orjson
import pytest
from starlette.testclient import TestClient

from adapters.providers.registry import REGISTRY
from handler.config import parse_config
from handler.pipeline.charges import DEFAULT_ADVICE_TOKENS, DEFAULT_ADVISOR_USES, DEFAULT_SEARCHES, Charges
from handler.ports import KeyRecord
from tests.fakes import anthropic as fake_anthropic
from tests.fakes import openai as fake_openai
from tests.functional.conftest import Running, anthropic_client, openai_client, serve_gateway, serving
from tests.support.servers import ServerThread

SEARCH_USD = 0.01
SEARCH: Any = {"type": "web_search_20250305", "name": "web_search"}
CLAUDE_PRICE = {"input": 3.0, "output": 15.0, "cached_input": 0.3, "cache_write": 3.75, "cache_write_1h": 6.0}
GPT_PRICE = {"input": 1.0, "output": 2.0}
OPUS = "claude-opus-4-6"  # the upstream id the config's `opus` deploys, advised_settings' advisor
HI: Any = [{"role": "user", "content": "What is new today?"}]
FAST_BETA = "fast-mode-2026-02-01"
COMPACT_BETA = "compact-2026-01-12"
ADVISOR_BETA = "advisor-tool-2026-03-01"
THREADS_BETA = "message-threads-2026-08-12"
ADVISOR_PRICE = {"input": 7.0, "output": 35.0}
SPEAKS: Any = {"modalities": ["text", "audio"], "audio": {"voice": "alloy", "format": "wav"}}


def config(url: str, searches: float | None) -> dict[str, Any]:
    return {
        "gateway": {"priced_options": {"web_search_usd": searches, "audio_output": True}}
        if searches is not None
        else {},
        "providers": {
            "anthropic": {
                "type": "anthropic",
                "api_key": "env:ANTHROPIC_API_KEY",
                "base_url": f"{url}/anthropic",
                "web_search": True,  # (the fake runs Anthropic's web search tool)
            },
            "openai": {
                "type": "openai",
                "api_key": "env:OPENAI_API_KEY",
                "base_url": f"{url}/openai/v1",
                "responses_api": "native",
            },
        },
        "models": {
            "claude": {"deployments": [{"provider": "anthropic", "model": "claude-x"}], "price": CLAUDE_PRICE},
            # No price: the built-in table's, by the upstream model.
            "sonnet": {"deployments": [{"provider": "anthropic", "model": "claude-sonnet-4-5-20250929"}]},
            "opus": {"deployments": [{"provider": "anthropic", "model": "claude-opus-4-6"}]},
            # A model the config prices, which Anthropic's advisor tool may name by its upstream id.
            "advisor": {
                "deployments": [{"provider": "anthropic", "model": "claude-advisor-x"}],
                "price": ADVISOR_PRICE,
            },
            "gpt": {"deployments": [{"provider": "openai", "model": "gpt-4o-mini"}], "price": GPT_PRICE},
            # The same, answering after the fake's 2 seconds.
            "gpt-slow": {"deployments": [{"provider": "openai", "model": "gpt-4o-mini-slow"}], "price": GPT_PRICE},
            # No price: the built-in table's, audio in and out at their own rates.
            "voice": {"deployments": [{"provider": "openai", "model": "gpt-4o-mini-audio-preview"}]},
            # A price with no audio output: such a request goes to its fallback.
            "mute": {
                "deployments": [{"provider": "openai", "model": "gpt-voice-x"}],
                "price": GPT_PRICE,
                "fallbacks": ["voice"],
            },
        },
    }


def gateway_pricing(
    upstream: tuple[ServerThread, dict[str, Any]], tmp_path_factory: pytest.TempPathFactory, searches: float | None
) -> Iterator[Running]:
    if "anthropic" not in REGISTRY:
        pytest.skip("the anthropic provider type is not registered")
    store = f"sqlite:///{Path(tmp_path_factory.mktemp('prices')) / 'gateway.db'}"
    yield from serving(parse_config(config(upstream[0].url, searches), set(REGISTRY)), store, upstream)


@pytest.fixture(scope="module")
def priced(
    upstream: tuple[ServerThread, dict[str, Any]], tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Running]:
    """The gateway with searches priced at SEARCH_USD."""
    yield from gateway_pricing(upstream, tmp_path_factory, SEARCH_USD)


@pytest.fixture(scope="module")
def unpriced(
    upstream: tuple[ServerThread, dict[str, Any]], tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Running]:
    """The gateway with no price for searches."""
    yield from gateway_pricing(upstream, tmp_path_factory, None)


def sent(running: Running, provider: str) -> dict[str, Any]:
    body: dict[str, Any] = running.fakes[provider].state.requests[-1]["json"]
    return body


def claude_tokens_usd(usage: anthropic.types.Usage) -> float:
    """A Messages answer's tokens at CLAUDE_PRICE, each cache write at the rate of how long it is kept."""
    hour = usage.cache_creation.ephemeral_1h_input_tokens if usage.cache_creation else 0
    written = usage.cache_creation_input_tokens or 0
    return (
        usage.input_tokens * 3.0
        + (usage.cache_read_input_tokens or 0) * 0.3
        + (written - hour) * 3.75
        + hour * 6.0
        + usage.output_tokens * 15.0
    ) / 1e6


# --- Anthropic's web search tool -------------------------------------------------------------------------


def test_a_priced_search_is_charged_per_search_and_capped(priced: Running) -> None:
    key = priced.mint(name="search")
    raw = anthropic_client(priced, key).messages.with_raw_response.create(
        model="claude", max_tokens=500, messages=HI, tools=[SEARCH]
    )
    message = raw.parse()
    assert [block.type for block in message.content] == ["server_tool_use", "web_search_tool_result", "text"]
    assert message.usage.server_tool_use is not None and message.usage.server_tool_use.web_search_requests == 1
    # The request set no limit: Anthropic is told the one the reservation covers.
    assert sent(priced, "anthropic")["tools"] == [{**SEARCH, "max_uses": DEFAULT_SEARCHES}]
    assert "x-gateway-dropped-params" not in raw.headers
    expected = claude_tokens_usd(message.usage) + SEARCH_USD
    assert float(raw.headers["x-gateway-cost-usd"]) == pytest.approx(expected)
    [line] = priced.ledger(key)
    assert line.cost_usd == pytest.approx(expected) and line.cost_source == "provider"


def test_a_streamed_search_is_charged_from_the_final_usage(priced: Running) -> None:
    key = priced.mint(name="search-stream")
    with anthropic_client(priced, key).messages.stream(
        model="claude", max_tokens=500, messages=HI, tools=[{**SEARCH, "max_uses": 3}]
    ) as stream:
        message = stream.get_final_message()
    assert sent(priced, "anthropic")["tools"] == [{**SEARCH, "max_uses": 3}]  # the client's own limit, kept
    [line] = priced.ledger(key)
    assert line.cost_usd == pytest.approx(claude_tokens_usd(message.usage) + SEARCH_USD)


def test_the_worst_case_covers_every_search_the_request_allows(priced: Running) -> None:
    """x-gateway-max-cost-usd is held against the tokens and the searches: ten allowed at $0.01 pass $0.05."""
    sdk = anthropic_client(priced, priced.mint(name="worst"))
    ceiling = {"x-gateway-max-cost-usd": "0.05"}
    with pytest.raises(anthropic.APIStatusError) as refused:
        sdk.messages.create(model="claude", max_tokens=100, messages=HI, tools=[SEARCH], extra_headers=ceiling)
    assert refused.value.status_code == 402 and "exceeds x-gateway-max-cost-usd" in str(refused.value.body)
    two = [{**SEARCH, "max_uses": 2}]
    assert sdk.messages.create(model="claude", max_tokens=100, messages=HI, tools=two, extra_headers=ceiling).content


def test_a_search_tool_choice_none_forbids_is_passed_on_and_not_reserved(priced: Running) -> None:
    """Anthropic's `tool_choice: {"type": "none"}` forbids its server tools too: the web search tool beside it is sent
    as written (a pass-through), and none of its ten searches is held, so the request passes a $0.05 ceiling its own
    tokens are far under (held, they made it a 402 at $0.1027)."""
    sdk = anthropic_client(priced, priced.mint(name="search-none"))
    none = {"type": "none"}
    ceiling = {"x-gateway-max-cost-usd": "0.05"}
    message = sdk.messages.create(
        model="claude", max_tokens=100, messages=HI, tools=[SEARCH], tool_choice=none, extra_headers=ceiling
    )
    assert [block.type for block in message.content] == ["text"]
    sent_body = sent(priced, "anthropic")
    assert sent_body["tools"] == [SEARCH] and sent_body["tool_choice"] == none


def test_a_search_a_translated_deployment_cannot_run_is_neither_reserved_nor_charged(priced: Running) -> None:
    """A deployment that gets the Messages request translated (OpenAI's) is sent no web search tool (it is named
    dropped), and no search can run there. Its ten searches at $0.01 were reserved all the same ($0.10023 for a
    request whose own worst case is $0.00023: a 402 under `x-gateway-max-cost-usd: 0.05`), and charged to it cut
    unanswered ($0.10023; review)."""
    sdk = anthropic_client(priced, priced.mint(name="search-translated"))
    ceiling = {"x-gateway-max-cost-usd": "0.05"}
    raw = sdk.messages.with_raw_response.create(
        model="gpt", max_tokens=100, messages=HI, tools=[SEARCH], extra_headers=ceiling
    )
    assert raw.parse().content and raw.headers["x-gateway-dropped-params"] == "tools.web_search_20250305"
    key = priced.mint(name="search-translated-cut", budget_usd=1.0)
    cut = anthropic_client(priced, key).with_options(max_retries=0).messages
    deadline = {"x-gateway-deadline-ms": "300"}
    with pytest.raises(anthropic.APIStatusError) as timed_out:
        cut.create(model="gpt-slow", max_tokens=100, messages=HI, tools=[SEARCH], extra_headers=deadline)
    assert timed_out.value.status_code == 504
    [line] = priced.ledger(key)
    assert (line.cost_source, line.output_tokens) == ("reserved", 100)
    assert line.cost_usd == pytest.approx((line.input_tokens * 1.0 + 100 * 2.0) / 1e6)  # GPT_PRICE, no search


@pytest.mark.parametrize(("model", "searches"), [("claude", DEFAULT_SEARCHES * SEARCH_USD), ("gpt-slow", SEARCH_USD)])
def test_a_chat_search_cut_unanswered_is_charged_where_it_was_sent(
    priced: Running, model: str, searches: float
) -> None:
    """Chat Completions' `web_search_options` is sent to OpenAI's Chat Completions, billed once per request, and to
    Claude as its own search tool, billed per search (up to `DEFAULT_SEARCHES`, its `max_uses`): an attempt cut
    unanswered is charged its reserved worst case, with the search as it is billed where it was sent. (When Claude
    was sent none, its cut attempt was charged the per-request fee all the same, its dropped parameters known only
    from an answer: $0.01159 for $0.00159, review.)"""
    key = priced.mint(name=f"chat-search-cut-{model}", budget_usd=1.0)
    sdk = openai_client(priced, key).with_options(max_retries=0)
    with pytest.raises(openai.APIStatusError) as timed_out:
        sdk.chat.completions.create(
            model=model,
            max_tokens=100,
            messages=HI,
            user="slow",  # (Claude's fake waits 2 seconds for it; OpenAI's for `gpt-slow`)
            extra_body={"web_search_options": {}},
            extra_headers={"x-gateway-deadline-ms": "300"},
        )
    assert timed_out.value.status_code == 504
    [line] = priced.ledger(key)
    assert (line.cost_source, line.output_tokens) == ("reserved", 100)
    price = GPT_PRICE if model.startswith("gpt") else CLAUDE_PRICE
    tokens = (line.input_tokens * price["input"] + 100 * price["output"]) / 1e6
    assert line.cost_usd == pytest.approx(tokens + searches)


def test_a_null_search_limit_is_no_limit_set(priced: Running) -> None:
    """The SDKs' types allow `max_uses: null` and `max_tool_calls: null`: no limit set, so the default is sent
    and reserved for (it was the client's 400)."""
    key = priced.mint(name="null-limits")
    tools: Any = [{**SEARCH, "max_uses": None}]
    assert anthropic_client(priced, key).messages.create(model="claude", max_tokens=100, messages=HI, tools=tools)
    assert sent(priced, "anthropic")["tools"] == [{**SEARCH, "max_uses": DEFAULT_SEARCHES}]
    web: Any = [{"type": "web_search"}]
    openai_client(priced, key).responses.create(model="gpt", input="Hi", tools=web, extra_body={"max_tool_calls": None})
    assert sent(priced, "openai")["max_tool_calls"] == DEFAULT_SEARCHES


@pytest.mark.parametrize("uses", [0, -1, "3", True, 1.5])
def test_a_search_limit_that_is_not_a_positive_integer_is_the_clients_400(priced: Running, uses: Any) -> None:
    sdk = anthropic_client(priced, priced.mint(name="uses"))
    with pytest.raises(anthropic.BadRequestError) as caught:
        sdk.messages.create(model="claude", max_tokens=100, messages=HI, tools=[{**SEARCH, "max_uses": uses}])
    assert caught.value.body["error"]["message"] == "tools.0.max_uses must be a positive integer"  # type: ignore[index]


def test_an_unpriced_search_is_left_out_and_named(unpriced: Running) -> None:
    key = unpriced.mint(name="unpriced")
    weather = {"name": "weather", "input_schema": {"type": "object"}}
    raw = anthropic_client(unpriced, key).messages.with_raw_response.create(
        model="claude", max_tokens=500, messages=HI, tools=[SEARCH, weather]
    )
    message = raw.parse()
    assert [block.type for block in message.content] == ["text"]  # no search ran
    assert sent(unpriced, "anthropic")["tools"] == [weather]
    assert raw.headers["x-gateway-dropped-params"] == "tools.web_search_20250305"
    strict = {"x-gateway-strict": "true"}
    with pytest.raises(anthropic.BadRequestError) as caught:
        anthropic_client(unpriced, key).messages.create(
            model="claude", max_tokens=500, messages=HI, tools=[SEARCH], extra_headers=strict
        )
    assert "web search is not priced" in str(caught.value.body)


def test_a_tool_choice_left_without_its_tool_goes_too(unpriced: Running) -> None:
    """Anthropic refuses a `tool_choice` without tools, or naming a tool not offered: one that chose the search
    tool left out (or had no tool left) is left out too, and named (the request failed upstream with a 400)."""
    sdk = anthropic_client(unpriced, unpriced.mint(name="choice"))
    choice: Any = {"type": "tool", "name": "web_search"}
    raw = sdk.messages.with_raw_response.create(
        model="claude", max_tokens=100, messages=HI, tools=[SEARCH], tool_choice=choice
    )
    assert raw.parse().content
    assert "tools" not in sent(unpriced, "anthropic") and "tool_choice" not in sent(unpriced, "anthropic")
    assert raw.headers["x-gateway-dropped-params"] == "tools.web_search_20250305,tool_choice"
    weather: Any = {"name": "weather", "input_schema": {"type": "object"}}
    auto: Any = {"type": "auto"}
    sdk.messages.create(model="claude", max_tokens=100, messages=HI, tools=[SEARCH, weather], tool_choice=auto)
    assert sent(unpriced, "anthropic")["tool_choice"] == auto  # a tool is left to choose from: kept
    raw_r = openai_client(unpriced, unpriced.mint(name="choice-r")).responses.with_raw_response.create(
        model="gpt", input="Hi", tools=[{"type": "web_search"}], tool_choice="required"
    )
    assert raw_r.parse().output
    assert "tool_choice" not in sent(unpriced, "openai")
    assert raw_r.headers["x-gateway-dropped-params"] == "tools[web_search],tool_choice"


# --- Anthropic's fast mode and US-only inference ---------------------------------------------------------


def opus_usd(usage: Any, times: float) -> float:
    """A Messages answer's tokens at the table's Opus 4.6 prices ($5 in, $25 out per million) times `times`."""
    return (usage.input_tokens * 5.0 + usage.output_tokens * 25.0) * times / 1e6


@pytest.mark.parametrize(
    ("options", "times"),
    [({"speed": "fast"}, 6.0), ({"inference_geo": "us"}, 1.1), ({"speed": "fast", "inference_geo": "us"}, 6.6)],
    ids=["fast", "us", "fast-in-the-us"],
)
@pytest.mark.parametrize("stream", [False, True], ids=["whole", "streamed"])
def test_fast_mode_and_us_inference_are_charged_at_the_tables_multipliers(
    priced: Running, options: dict[str, str], times: float, stream: bool
) -> None:
    """Opus 4.6 passed through with `speed: fast` costs six times its prices, with `inference_geo: us` 1.1 times,
    with both 6.6 times (Anthropic stacks them); the header and the ledger line say the same."""
    key = priced.mint(name=f"fast-{'-'.join(options)}-{stream}")
    sdk = anthropic_client(priced, key).beta.messages
    if stream:
        with sdk.stream(model="opus", max_tokens=100, messages=HI, betas=[FAST_BETA], **options) as events:
            message = events.get_final_message()
    else:
        raw = sdk.with_raw_response.create(model="opus", max_tokens=100, messages=HI, betas=[FAST_BETA], **options)
        message = raw.parse()
        assert float(raw.headers["x-gateway-cost-usd"]) == pytest.approx(opus_usd(message.usage, times))
        assert "x-gateway-dropped-params" not in raw.headers
    assert {name: sent(priced, "anthropic")[name] for name in options} == options
    assert {name: getattr(message.usage, name) for name in options} == options  # as Anthropic reports it ran
    [line] = priced.ledger(key)
    assert line.cost_usd == pytest.approx(opus_usd(message.usage, times))


@pytest.mark.parametrize("stream", [False, True], ids=["whole", "streamed"])
def test_fast_mode_served_at_standard_speed_is_charged_at_the_standard_prices(priced: Running, stream: bool) -> None:
    """Fast mode asked for and served at standard speed (its capacity short), as the answer's `usage.speed` says:
    charged at Opus 4.6's standard prices, not six times them (the worst case was reserved at fast, below)."""
    key = priced.mint(name=f"fast-served-standard-{stream}")
    sdk = anthropic_client(priced, key).beta.messages
    settings: Any = {"model": "opus", "max_tokens": 100, "messages": HI, "speed": "fast", "betas": [FAST_BETA]}
    served_standard: Any = {"user_id": "standard-speed"}  # (the fake's fault)
    if stream:
        with sdk.stream(**settings, metadata=served_standard) as events:
            message = events.get_final_message()
    else:
        raw = sdk.with_raw_response.create(**settings, metadata=served_standard)
        message = raw.parse()
        assert float(raw.headers["x-gateway-cost-usd"]) == pytest.approx(opus_usd(message.usage, 1.0))
    assert sent(priced, "anthropic")["speed"] == "fast" and message.usage.speed == "standard"
    [line] = priced.ledger(key)
    assert line.cost_usd == pytest.approx(opus_usd(message.usage, 1.0)) and line.cost_source == "provider"


@pytest.mark.parametrize("stream", [False, True], ids=["whole", "streamed"])
def test_us_inference_a_workspace_applies_unasked_is_charged_as_served(priced: Running, stream: bool) -> None:
    """A workspace whose default inference geo is `us` runs a request that sets none US-only, its usage says so
    (`inference_geo: us`), and Anthropic bills it 1.1 times: it was charged at the global prices (cost review)."""
    key = priced.mint(name=f"us-workspace-{stream}")
    sdk = anthropic_client(priced, key).beta.messages
    settings: Any = {"model": "opus", "max_tokens": 100, "messages": HI, "metadata": {"user_id": "us-workspace"}}
    if stream:
        with sdk.stream(**settings) as events:
            message = events.get_final_message()
    else:
        raw = sdk.with_raw_response.create(**settings)
        message = raw.parse()
        assert float(raw.headers["x-gateway-cost-usd"]) == pytest.approx(opus_usd(message.usage, 1.1))
    assert "inference_geo" not in sent(priced, "anthropic") and message.usage.inference_geo == "us"
    [line] = priced.ledger(key)
    assert line.cost_usd == pytest.approx(opus_usd(message.usage, 1.1))


def translated_cost(running: Running, key: str, api: str, stream: bool, user: str) -> float:
    """What an answer of `opus` (on Anthropic) to an OpenAI SDK client speaking `api` (Chat Completions or the
    Responses API) was said to cost (`x-gateway-cost-usd`; a stream's last event), `user` naming the fake's faults."""
    sdk = openai_client(running, key)
    if api == "chat" and stream:
        chunks = list(
            sdk.chat.completions.create(
                model="opus", messages=HI, user=user, stream=True, stream_options={"include_usage": True}
            )
        )
        return float((chunks[-1].model_extra or {})["cost"]["provider_usd"])
    if api == "chat":
        raw = sdk.chat.completions.with_raw_response.create(model="opus", messages=HI, user=user)
        return float(raw.headers["x-gateway-cost-usd"])
    if stream:
        with sdk.responses.stream(model="opus", input="What is new today?", user=user) as events:
            return float((events.get_final_response().model_extra or {})["cost"]["provider_usd"])
    answer = sdk.responses.with_raw_response.create(model="opus", input="What is new today?", user=user)
    return float(answer.headers["x-gateway-cost-usd"])


@pytest.mark.parametrize(("user", "times"), [("us-workspace", 1.1), ("global-workspace", 1.0)], ids=["us", "global"])
@pytest.mark.parametrize("api", ["chat", "responses"])
@pytest.mark.parametrize("stream", [False, True], ids=["whole", "streamed"])
def test_us_inference_a_workspace_applies_is_charged_as_served_where_the_request_is_translated(
    priced: Running, user: str, times: float, api: str, stream: bool
) -> None:
    """A Chat Completions or Responses client's request translated for Anthropic, in a workspace whose default
    inference geo is `us`: Anthropic bills it 1.1 times, as its usage says (`inference_geo: us`), and so does the
    gateway, as it does the request passed through; elsewhere, the plain prices. The translation read only OpenAI's
    service tier: it was charged at the global prices ($0.000275 for the fake's 20 tokens in and 7 out, which
    Anthropic bills $0.0003025)."""
    key = priced.mint(name=f"{user}-{api}-{stream}")
    told = translated_cost(priced, key, api, stream, user)
    body = sent(priced, "anthropic")
    assert body["metadata"] == {"user_id": user} and "inference_geo" not in body
    [line] = priced.ledger(key)
    expected = (line.input_tokens * 5.0 + line.output_tokens * 25.0) * times / 1e6
    assert line.cost_usd == pytest.approx(expected) and line.cost_source == "provider"
    assert told == pytest.approx(expected)


def test_the_worst_case_is_reserved_at_the_fast_price(priced: Running) -> None:
    """x-gateway-max-cost-usd is held against fast mode's prices: 1,000 output tokens at $150 a million pass
    $0.10, at the standard $25 they do not."""
    sdk = anthropic_client(priced, priced.mint(name="fast-worst")).beta.messages
    ceiling = {"x-gateway-max-cost-usd": "0.10"}
    assert sdk.create(model="opus", max_tokens=1000, messages=HI, extra_headers=ceiling).content
    with pytest.raises(anthropic.APIStatusError) as refused:
        sdk.create(model="opus", max_tokens=1000, messages=HI, speed="fast", betas=[FAST_BETA], extra_headers=ceiling)
    assert refused.value.status_code == 402 and "exceeds x-gateway-max-cost-usd" in str(refused.value.body)


@pytest.mark.parametrize(("name", "value"), [("speed", "fast"), ("inference_geo", "us"), ("speed", "turbo")])
def test_an_option_the_models_price_has_no_multiplier_for_is_refused(priced: Running, name: str, value: str) -> None:
    """`claude`'s configured price sets no multiplier for fast mode or US-only inference: the request is refused in
    Anthropic's shape, naming the option, before anything is sent; the standard values pass."""
    sdk = anthropic_client(priced, priced.mint(name=f"unpriced-{name}-{value}"))
    requests = priced.fakes["anthropic"].state.requests
    before = len(requests)
    with pytest.raises(anthropic.BadRequestError) as caught:
        sdk.messages.create(model="claude", max_tokens=100, messages=HI, extra_body={name: value})
    error: Any = caught.value.body
    assert error["type"] == "error" and error["error"]["type"] == "invalid_request_error"
    assert error["error"]["message"].startswith(f"{name} '{value}' is not priced for model 'claude'")
    assert len(requests) == before
    standard: Any = {"speed": "standard", "inference_geo": "global"}
    assert sdk.messages.create(model="claude", max_tokens=100, messages=HI, extra_body=standard).content


def test_fast_mode_is_named_dropped_where_the_request_is_translated(priced: Running) -> None:
    """A provider that gets the Messages request translated is sent no `speed`: named dropped (with the beta that
    turns it on), priced as usual."""
    key = priced.mint(name="fast-translated")
    raw = anthropic_client(priced, key).beta.messages.with_raw_response.create(
        model="gpt", max_tokens=100, messages=HI, speed="fast", betas=[FAST_BETA]
    )
    assert raw.parse().content
    assert "speed" not in sent(priced, "openai")
    assert raw.headers["x-gateway-dropped-params"] == f"speed,anthropic-beta[{FAST_BETA}]"
    [line] = priced.ledger(key)
    assert line.cost_usd == pytest.approx((line.input_tokens * 1.0 + line.output_tokens * 2.0) / 1e6)


# --- Anthropic's server-side compaction -----------------------------------------------------------------


@pytest.mark.parametrize("stream", [False, True], ids=["whole", "streamed"])
def test_a_compactions_tokens_are_charged_beside_the_answers_own(priced: Running, stream: bool) -> None:
    """A conversation past its compaction trigger is compacted first: the compaction reads all of it and writes the
    summary, tokens Anthropic bills though its top-level usage leaves them out (they are in `usage.iterations`).
    The header, the ledger line and its token counts have them."""
    key = priced.mint(name=f"compaction-{stream}")
    # About 52,000 tokens as the fake counts them: past the trigger's documented minimum, set here.
    conversation: Any = [{"role": "user", "content": "Tell me more about the layout. " * 6700}]
    edits: Any = {"edits": [{"type": "compact_20260112", "trigger": {"type": "input_tokens", "value": 50_000}}]}
    sdk = anthropic_client(priced, key).beta.messages
    if stream:
        with sdk.stream(
            model="claude", max_tokens=100, messages=conversation, context_management=edits, betas=[COMPACT_BETA]
        ) as events:
            message = events.get_final_message()
    else:
        raw = sdk.with_raw_response.create(
            model="claude", max_tokens=100, messages=conversation, context_management=edits, betas=[COMPACT_BETA]
        )
        message = raw.parse()
    assert message.content[0].type == "compaction"
    usage = message.usage
    [compaction] = [entry for entry in usage.iterations or () if entry.type == "compaction"]
    assert compaction.input_tokens > 50_000 > usage.input_tokens
    input_tokens = usage.input_tokens + compaction.input_tokens
    output_tokens = usage.output_tokens + compaction.output_tokens
    expected = (input_tokens * 3.0 + output_tokens * 15.0) / 1e6
    if not stream:
        assert float(raw.headers["x-gateway-cost-usd"]) == pytest.approx(expected)
    [line] = priced.ledger(key)
    assert (line.input_tokens, line.output_tokens) == (input_tokens, output_tokens)
    assert line.cost_usd == pytest.approx(expected) and line.cost_source == "provider"


@pytest.mark.parametrize("stream", [False, True], ids=["whole", "streamed"])
def test_a_compaction_and_the_answer_each_under_the_long_context_threshold_are_priced_at_the_base_tier(
    priced: Running, stream: bool
) -> None:
    """A conversation of 199,990 tokens is compacted (that sampling reads it, under Sonnet 4.5's 200k threshold) and
    the answer's sampling reads the 21-token summary: each is billed at $3/$15, as Anthropic bills a sampling under
    200k. Their sum, 200,011, was priced at the long tier: $1.200696 where Anthropic bills $0.600453, on the header,
    the stream's cost, the line and the budget alike (found by review)."""
    key = priced.mint(name=f"compaction-tier-{stream}", budget_usd=20.0)  # (its worst case $9.60: a token a byte)
    # A conversation the fake counts 199,990 tokens (its bytes / 4).
    frame = len(orjson.dumps([None, [{"role": "user", "content": ""}]]))
    conversation: Any = [{"role": "user", "content": "a" * (199_990 * 4 - frame)}]
    edits: Any = {"edits": [{"type": "compact_20260112", "trigger": {"type": "input_tokens", "value": 150_000}}]}
    settings: Any = {"model": "sonnet", "max_tokens": 100, "messages": conversation, "context_management": edits}
    sdk = anthropic_client(priced, key).beta.messages
    if stream:
        with sdk.stream(**settings, betas=[COMPACT_BETA]) as events:
            [cost] = [event.model_extra["cost"] for event in events if event.type == "message_delta"]
            message = events.get_final_message()
    else:
        raw = sdk.with_raw_response.create(**settings, betas=[COMPACT_BETA])
        message = raw.parse()
        cost = (message.model_extra or {})["cost"]
        assert float(raw.headers["x-gateway-cost-usd"]) == cost["provider_usd"]
        assert float(raw.headers["x-gateway-budget-remaining-usd"]) == cost["budget_remaining_usd"]
    usage = message.usage
    [compaction] = [entry for entry in usage.iterations or () if entry.type == "compaction"]
    assert 150_000 < compaction.input_tokens < 200_000 < compaction.input_tokens + usage.input_tokens
    input_tokens = compaction.input_tokens + usage.input_tokens
    output_tokens = compaction.output_tokens + usage.output_tokens
    billed = (input_tokens * 3.0 + output_tokens * 15.0) / 1e6  # each sampling at the base tier
    assert cost["provider_usd"] == pytest.approx(billed, abs=1e-12)
    assert cost["budget_remaining_usd"] == pytest.approx(20.0 - billed, abs=1e-12)
    [line] = priced.ledger(key)
    assert line.cost_usd == cost["provider_usd"] and line.cost_source == "provider"
    assert (line.input_tokens, line.output_tokens) == (input_tokens, output_tokens)


@pytest.mark.parametrize("stream", [False, True], ids=["whole", "streamed"])
def test_a_compaction_past_the_long_context_threshold_saves_at_its_own_tier(priced: Running, stream: bool) -> None:
    """A cached conversation of some 210,000 tokens is compacted twice: the compaction, past Sonnet 4.5's 200k
    threshold, is charged at the long tier ($6 in, $0.60 a cache read, $7.50 a cache write), the answer's own
    sampling of the summary at the base tier. What caching saved is each sampling's at the prices it was charged,
    and the `cost` object gives each sampling's unit prices. The saving was valued at the answer's tier for both
    (the write's premium $0.75 a million for $1.50, the read's saving $2.70 for $5.40), and the cost object's one
    set of unit prices was the base tier's, though most of the cost was at the long one (found by review)."""
    key = priced.mint(name=f"compaction-savings-{stream}")
    frame = len(orjson.dumps([None, [{"role": "user", "content": [{"type": "text", "text": ""}]}]]))
    letter = "s" if stream else "w"  # (a conversation of its own: the fake's cache outlives a test)
    text = {"type": "text", "text": letter * (210_000 * 4 - frame), "cache_control": {"type": "ephemeral"}}
    conversation: Any = [{"role": "user", "content": [text]}]
    edits: Any = {"edits": [{"type": "compact_20260112", "trigger": {"type": "input_tokens", "value": 150_000}}]}
    settings: Any = {"model": "sonnet", "max_tokens": 100, "messages": conversation, "context_management": edits}
    sdk = anthropic_client(priced, key).beta.messages
    costs, compactions = [], []
    for _ in range(2):  # (the first writes the conversation to the cache, the second reads it)
        if stream:
            with sdk.stream(**settings, betas=[COMPACT_BETA]) as events:
                [cost] = [event.model_extra["cost"] for event in events if event.type == "message_delta"]
                message = events.get_final_message()
        else:
            message = sdk.create(**settings, betas=[COMPACT_BETA])
            cost = (message.model_extra or {})["cost"]
        costs.append(cost)
        compactions += [entry for entry in message.usage.iterations or () if entry.type == "compaction"]
    written, read = compactions[0].cache_creation_input_tokens, compactions[1].cache_read_input_tokens
    assert written > 200_000 and read == written
    long = {"input": 6.0, "output": 22.5, "cached_input": 0.6, "cache_write": 7.5}
    base = {"input": 3.0, "output": 15.0, "cached_input": 0.3, "cache_write": 3.75, "cache_write_1h": 6.0}
    for cost, compaction in zip(costs, compactions, strict=True):
        assert [sampling["unit_prices_per_million"] for sampling in cost["samplings"]] == [long, base]
        assert cost["unit_prices_per_million"] == base  # (the answer's own sampling's, the last)
        assert cost["samplings"][0]["input_tokens"] > 200_000 > cost["samplings"][1]["input_tokens"]
        assert cost["samplings"][0]["cached_tokens"] == (compaction.cache_read_input_tokens or 0)
    first, second = priced.ledger(key)
    assert first.cache_savings_usd == pytest.approx(-written * (7.5 - 6.0) / 1e6, abs=1e-12)
    assert second.cache_savings_usd == pytest.approx(read * (6.0 - 0.6) / 1e6, abs=1e-12)
    assert [first.cost_source, second.cost_source] == ["provider", "provider"]


# --- Anthropic's advisor tool ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("advisor", "rates"),
    [("claude-advisor-x", (7.0, 35.0)), ("claude-opus-4-6", (5.0, 25.0)), ("claude-nobody-prices", (3.0, 15.0))],
    ids=["the-configs-price", "the-tables-price", "no-price-the-executors"],
)
@pytest.mark.parametrize("stream", [False, True], ids=["whole", "streamed"])
def test_an_advisors_tokens_are_charged_at_its_own_models_price(
    priced: Running, advisor: str, rates: tuple[float, float], stream: bool
) -> None:
    """The advisor tool runs another model inside the answer: its tokens are in `usage.iterations` alone (an
    `advisor_message` entry naming that model), billed at that model's rates. They are charged at its price, the
    config's for a model it deploys, else the built-in table's; with neither, at the price of the model it advised
    (never free: an advisor is at least as capable), and logged. The line's token counts are the answer's own."""
    key = priced.mint(name=f"advisor-{advisor}-{stream}")
    sdk = anthropic_client(priced, key).beta.messages
    tool: Any = {"type": "advisor_20260301", "name": "advisor", "model": advisor}
    settings: Any = {"model": "sonnet", "max_tokens": 100, "messages": HI, "tools": [tool], "betas": [ADVISOR_BETA]}
    if stream:
        with sdk.stream(**settings) as events:
            message = events.get_final_message()
    else:
        raw = sdk.with_raw_response.create(**settings)
        message = raw.parse()
    assert [block.type for block in message.content] == ["server_tool_use", "advisor_tool_result", "text"]
    usage = message.usage
    [advice] = [entry for entry in usage.iterations or () if entry.type == "advisor_message"]
    assert advice.model == advisor and advice.output_tokens > 1000
    expected = (usage.input_tokens * 3.0 + usage.output_tokens * 15.0) / 1e6  # Sonnet 4.5, the table's
    expected += (advice.input_tokens * rates[0] + advice.output_tokens * rates[1]) / 1e6
    if not stream:
        assert float(raw.headers["x-gateway-cost-usd"]) == pytest.approx(expected)
    [line] = priced.ledger(key)
    assert line.cost_usd == pytest.approx(expected) and line.cost_source == "provider"
    assert (line.input_tokens, line.output_tokens) == (usage.input_tokens, usage.output_tokens)


def advised_settings(advisor: str = "claude-opus-4-6", **limits: Any) -> Any:
    """A Sonnet request whose advisor (`advisor`, with the tool's `limits`) the fake makes write about 7,600 tokens."""
    tool = {"type": "advisor_20260301", "name": "advisor", "model": advisor, **limits}
    return {
        "model": "sonnet",
        "max_tokens": 100,
        "messages": HI,
        "tools": [tool],
        "metadata": {"user_id": "long-advice"},
        "betas": [ADVISOR_BETA],
    }


def continue_of(previous: str, betas: list[str], max_tokens: int = 100, **more: Any) -> Any:
    """A Sonnet `continue` of the thread whose answer was `previous` (its `messages` the turn's alone), naming
    `betas`, with the request's `more` fields."""
    asked = [{"role": "user", "content": "And now?"}]
    thread = {"type": "continue", "previous_message_id": previous}
    return {"model": "sonnet", "max_tokens": max_tokens, "messages": asked, **more, "thread": thread, "betas": betas}


def worst_case(sdk: Any, settings: Any) -> float:
    """The worst case a request is reserved at, as a `x-gateway-max-cost-usd` too low for it tells (nothing sent)."""
    with pytest.raises(anthropic.APIStatusError) as refused:
        sdk.create(**settings, extra_headers={"x-gateway-max-cost-usd": "0.000000001"})
    assert refused.value.status_code == 402
    return float(str(refused.value.body).split("worst-case cost $")[1].split(" ")[0])


@pytest.mark.parametrize("stream", [False, True], ids=["whole", "streamed"])
def test_an_advisors_calls_are_in_the_worst_case_a_budget_holds(priced: Running, stream: bool) -> None:
    """The advisor's tokens are billed after the answer, at its own model's prices, and no worst case held them:
    a Sonnet request sent 100 output tokens was reserved $0.001944 and billed $0.1917 (a 7,600-token advice at
    Opus's $25 a million), and a key with $0.10 spent $0.19. Each call the tool allows (`max_uses`, else the default,
    sent) is reserved for: what it reads (the conversation, the executor's output, the advice before it) and the
    most it writes (`max_tokens`, else the default, sent), at the advisor model's prices. A budget that cannot hold
    that refuses the request before anything is sent; one that can admits it, and it is billed within its reserve."""
    settings = advised_settings()
    small = anthropic_client(priced, priced.mint(name=f"advised-small-{stream}", budget_usd=0.10)).beta.messages
    sent_before = len(priced.fakes["anthropic"].state.requests)
    with pytest.raises(anthropic.APIStatusError) as refused:
        if stream:
            with small.stream(**settings) as events:
                events.get_final_message()
        else:
            small.create(**settings)
    assert refused.value.status_code == 402 and "budget" in str(refused.value.body)
    assert len(priced.fakes["anthropic"].state.requests) == sent_before  # nothing sent

    key = priced.mint(name=f"advised-{stream}", budget_usd=2.0)
    sdk = anthropic_client(priced, key).beta.messages
    reserved = worst_case(sdk, settings)
    without = worst_case(sdk, {**settings, "tools": [], "betas": []})
    assert reserved > without + DEFAULT_ADVISOR_USES * DEFAULT_ADVICE_TOKENS * 25.0 / 1e6  # (Opus's output price)
    if stream:
        with sdk.stream(**settings) as events:
            message = events.get_final_message()
    else:
        message = sdk.create(**settings)
    [advice] = [entry for entry in message.usage.iterations or () if entry.type == "advisor_message"]
    assert advice.output_tokens > 7000
    tool = {**settings["tools"][0], "max_uses": DEFAULT_ADVISOR_USES, "max_tokens": DEFAULT_ADVICE_TOKENS}
    assert sent(priced, "anthropic")["tools"] == [tool]  # the limits reserved for, which Anthropic holds it to
    [line] = priced.ledger(key)
    assert line.cost_source == "provider" and 0.15 < line.cost_usd <= reserved, (line.cost_usd, reserved)


def test_an_advised_request_cut_before_its_answer_is_charged_its_advisors_worst_case(priced: Running) -> None:
    """A request cut by its deadline before any answer may still run to the end at Anthropic, its advisor's calls
    with it: it is charged its reserved worst case, the advisor's included (it was charged $0.001872, the executor's
    tokens alone, against $0.869124 reserved)."""
    key = priced.mint(name="advised-cut", budget_usd=2.0)
    sdk = anthropic_client(priced, key).beta.messages
    settings = advised_settings()
    settings["metadata"] = {"user_id": "long-advice slow"}  # (the fake answers after 2 seconds)
    reserved = worst_case(sdk, settings)
    with pytest.raises(anthropic.APIStatusError) as cut:
        sdk.create(**settings, extra_headers={"x-gateway-deadline-ms": "500"})
    assert cut.value.status_code == 504
    [line] = priced.ledger(key)
    # (Its executor's input is charged at the input price; reserved at the dearest, an hour's cache write.)
    advice = DEFAULT_ADVISOR_USES * DEFAULT_ADVICE_TOKENS * 25.0 / 1e6  # (the advisor's output alone)
    assert line.cost_source == "reserved" and advice < line.cost_usd <= reserved, (line.cost_usd, reserved)


def test_an_advisors_own_limits_are_kept_and_reserved_for(priced: Running) -> None:
    """A tool's own `max_uses` and `max_tokens` are sent as written and reserved for: one call of 2,048 tokens is
    less than the default's three of 8,192, and more than none."""
    sdk = anthropic_client(priced, priced.mint(name="advisor-limits")).beta.messages
    own = advised_settings(max_uses=1, max_tokens=2048)
    default = worst_case(sdk, advised_settings())
    limited = worst_case(sdk, own)
    none = worst_case(sdk, {**own, "tools": [], "betas": []})
    assert none + 2048 * 25.0 / 1e6 < limited < default
    assert sdk.create(**own).content
    assert sent(priced, "anthropic")["tools"] == own["tools"]


def test_an_unpriced_advisor_is_reserved_at_its_executors_price(priced: Running) -> None:
    """An advisor model the gateway has no price for is charged at the executor's price (Sonnet's), and so reserved."""
    sdk = anthropic_client(priced, priced.mint(name="advisor-unpriced")).beta.messages
    settings = advised_settings("claude-nobody-prices")
    reserved = worst_case(sdk, settings)
    none = worst_case(sdk, {**settings, "tools": [], "betas": []})
    assert reserved > none + DEFAULT_ADVISOR_USES * DEFAULT_ADVICE_TOKENS * 15.0 / 1e6


def worst_case_of_continue(sdk: Any, settings: Any) -> float:
    """The worst case a thread's `continue` is reserved at: refused by a `x-gateway-max-cost-usd` too low for it, it
    is Anthropic's `thread_unsupported_request` (the SDK's helpers then send the whole conversation), which says it."""
    with pytest.raises(anthropic.APIStatusError) as refused:
        sdk.create(**settings, extra_headers={"x-gateway-max-cost-usd": "0.000000001"})
    return float(str(refused.value.body).split("worst-case cost $")[1].split(" ")[0])


def test_a_continue_of_an_advised_thread_is_reserved_for_its_advisors_calls(priced: Running) -> None:
    """A thread's `continue` carries no `tools`: Anthropic keeps the thread's, and its advisor may be called again.
    Nothing reserved for it: a continue reserved $0.00 was billed $0.19 (another 7,600-token advice at Opus's
    price). The advisor the thread's first request offered (its model, its calls, its bound, as sent) is reserved
    for again, as it was then, and the continue is billed within its reserve."""
    key = priced.mint(name="advised-thread", budget_usd=5.0)
    sdk = anthropic_client(priced, key).beta.messages
    betas = [ADVISOR_BETA, THREADS_BETA]
    first = sdk.create(**{**advised_settings(), "betas": betas}, thread={"type": "create"})
    following = continue_of(first.id, betas, metadata={"user_id": "long-advice"})
    reserved = worst_case_of_continue(sdk, following)
    message = sdk.create(**following)
    assert "tools" not in sent(priced, "anthropic")
    [advice] = [entry for entry in message.usage.iterations or () if entry.type == "advisor_message"]
    assert advice.output_tokens > 7000  # (the fake's advisor answered the continue too)
    _, line = priced.ledger(key)
    assert line.cost_source == "provider" and 0.15 < line.cost_usd <= reserved, (line.cost_usd, reserved)


def test_a_continue_served_by_another_instance_is_reserved_for_its_threads_advisor(
    priced: Running, upstream: tuple[ServerThread, dict[str, Any]]
) -> None:
    """A thread created here with an Opus advisor, continued through another instance on the same store (another
    server, or another Lambda invocation): only this one's memory held the thread's advisor, so the other reserved
    the `continue` for none ($12.003246, as a thread without an advisor), or, where it named the advisor's beta, for
    the default advisor at Sonnet's price ($48.857706: over the window's million tokens, Sonnet's long-context input
    price is above Opus's), and Anthropic called Opus's either way. The advisor is kept with the thread's owner in
    the store: every instance reserves for it, as the thread's `create` sent it (its model, its calls, its bound per
    call), from the one read that checks the owner, beta or not ($42.868896); and the `continue`'s own answer keeps
    it for the next."""
    key = priced.mint(name="advised-thread-elsewhere")
    sdk = anthropic_client(priced, key).beta.messages
    betas = [ADVISOR_BETA, THREADS_BETA]
    first = sdk.create(**{**advised_settings(), "betas": betas}, thread={"type": "create"})
    plain_id, opus_id = (name.ljust(len(first.id), "0") for name in ("msg_01plain", "msg_01opus"))  # (as long)
    priced.answered_elsewhere(key, plain_id)
    priced.answered_elsewhere(key, opus_id, ((OPUS, DEFAULT_ADVISOR_USES, DEFAULT_ADVICE_TOKENS),))

    def following(previous: str, named: list[str] = betas) -> Any:
        return continue_of(previous, named)

    server, fakes = upstream
    other, other_server = serve_gateway(priced.gateway.config, priced.store_url, server, fakes)
    try:
        elsewhere = anthropic_client(other, key).beta.messages
        plain = worst_case_of_continue(elsewhere, following(plain_id))  # (a thread without an advisor)
        advised = worst_case_of_continue(elsewhere, following(first.id))
        assert advised > plain + DEFAULT_ADVISOR_USES * DEFAULT_ADVICE_TOKENS * 25.0 / 1e6, (plain, advised)
        assert worst_case_of_continue(elsewhere, following(first.id, [THREADS_BETA])) == advised
        assert worst_case_of_continue(elsewhere, following(opus_id)) == advised  # (Opus's, as sent)
        message = elsewhere.create(**{**following(first.id), "metadata": {"user_id": "long-advice"}})
        [advice] = [entry for entry in message.usage.iterations or () if entry.type == "advisor_message"]
        assert advice.output_tokens > 7000  # (the thread's advisor advised the continue)
        line = other.ledger(key)[0]
        assert line.cost_source == "provider" and 0.15 < line.cost_usd <= advised, (line.cost_usd, advised)
    finally:
        other_server.stop()
    # Neither has this instance relayed that answer: it reads the advisor the continue's answer keeps.
    assert worst_case_of_continue(sdk, following(message.id, [THREADS_BETA])) == advised


def test_an_advised_stream_cut_before_its_usage_is_charged_each_advisor_call_it_saw(priced: Running) -> None:
    """A stream cut after the advisor ran, before its final usage (which alone counts the advisor's tokens), was
    charged the executor's estimate alone ($0.0008; Anthropic billed the advice, $0.19, too). Each advisor call the
    stream showed (its `server_tool_use` block) is charged its reserved bound: what it reads and the most it writes,
    at the advisor model's price."""
    key = priced.mint(name="advised-cut-stream", budget_usd=5.0)
    sdk = anthropic_client(priced, key).beta.messages
    settings = {**advised_settings(), "metadata": {"user_id": "long-advice stream-cut"}}
    reserved = worst_case(sdk, settings)
    seen = []
    with pytest.raises(anthropic.APIStatusError), sdk.stream(**settings) as events:
        seen.extend(event.content_block.type for event in events if event.type == "content_block_start")
    assert seen[:2] == ["server_tool_use", "advisor_tool_result"]
    [line] = priced.ledger(key)
    assert line.cost_source == "estimate"
    bound = DEFAULT_ADVICE_TOKENS * 25.0 / 1e6  # (one call's most output, at Opus's price)
    assert bound < line.cost_usd < min(2 * bound, reserved), (line.cost_usd, reserved)


@pytest.mark.parametrize("limit", ["max_uses", "max_tokens"])
def test_an_advisor_limit_that_is_not_a_positive_integer_is_the_clients_400(priced: Running, limit: str) -> None:
    sdk = anthropic_client(priced, priced.mint(name="advisor-400")).beta.messages
    with pytest.raises(anthropic.BadRequestError) as caught:
        sdk.create(**advised_settings(**{limit: 0}))
    assert caught.value.body["error"]["message"] == f"tools.0.{limit} must be a positive integer"  # type: ignore[index]


# --- the Responses API's hosted web search -------------------------------------------------------------


def test_a_hosted_search_is_charged_per_call(priced: Running) -> None:
    key = priced.mint(name="hosted")
    raw = openai_client(priced, key).responses.with_raw_response.create(
        model="gpt", input="What is new today?", tools=[{"type": "web_search"}], extra_body={"max_tool_calls": 4}
    )
    response = raw.parse()
    assert [item.type for item in response.output] == ["web_search_call", "message"]
    assert sent(priced, "openai")["max_tool_calls"] == 4
    usage = response.usage
    assert usage is not None
    expected = (usage.input_tokens * 1.0 + usage.output_tokens * 2.0) / 1e6 + SEARCH_USD
    assert float(raw.headers["x-gateway-cost-usd"]) == pytest.approx(expected)
    [line] = priced.ledger(key)
    assert line.cost_usd == pytest.approx(expected)


def test_a_streamed_hosted_search_is_charged_per_call(priced: Running) -> None:
    key = priced.mint(name="hosted-stream")
    stream = openai_client(priced, key).responses.create(
        model="gpt", input="What is new today?", tools=[{"type": "web_search"}], stream=True
    )
    events = list(stream)
    assert "response.web_search_call.completed" in [event.type for event in events]
    final = events[-1]
    assert final.type == "response.completed" and final.response.usage is not None
    usage = final.response.usage
    assert sent(priced, "openai")["max_tool_calls"] == DEFAULT_SEARCHES
    [line] = priced.ledger(key)
    assert line.cost_usd == pytest.approx((usage.input_tokens + usage.output_tokens * 2.0) / 1e6 + SEARCH_USD)


def test_an_unpriced_hosted_search_is_left_out_and_named(unpriced: Running) -> None:
    raw = openai_client(unpriced, unpriced.mint(name="hosted-unpriced")).responses.with_raw_response.create(
        model="gpt", input="Hi", tools=[{"type": "web_search"}]
    )
    assert [item.type for item in raw.parse().output] == ["message"]
    assert "tools" not in sent(unpriced, "openai") or sent(unpriced, "openai")["tools"] == []
    assert "max_tool_calls" not in sent(unpriced, "openai")
    assert raw.headers["x-gateway-dropped-params"] == "tools[web_search]"


# --- hosted tools billed beyond tokens that the gateway does not price -------------------------------------


def test_hosted_tools_billed_per_container_call_or_image_are_left_out_and_named(priced: Running) -> None:
    """OpenAI bills `file_search` per call, `code_interpreter` per container and `image_generation` per image,
    and Anthropic code execution per container-hour: none was priced, and each passed through, so the provider
    billed what no ledger line showed. They are left out (with a choice of one) and named; strict: a 400."""
    sdk = openai_client(priced, priced.mint(name="unpriced-tools"))
    weather: Any = {"type": "function", "name": "weather", "parameters": {"type": "object"}}
    tools: Any = [
        {"type": "code_interpreter", "container": {"type": "auto"}},
        weather,
        {"type": "file_search", "vector_store_ids": ["vs_1"]},
        {"type": "image_generation"},
    ]
    raw = sdk.responses.with_raw_response.create(
        model="gpt", input="Chart it", tools=tools, tool_choice={"type": "code_interpreter"}
    )
    assert raw.parse().output
    assert sent(priced, "openai")["tools"] == [weather] and "tool_choice" not in sent(priced, "openai")
    assert raw.headers["x-gateway-dropped-params"] == (
        "tools[code_interpreter],tools[file_search],tools[image_generation],tool_choice"
    )
    with pytest.raises(openai.BadRequestError) as refused:
        sdk.responses.create(model="gpt", input="Chart it", tools=tools, extra_headers={"x-gateway-strict": "true"})
    assert refused.value.body["param"] == "tools[code_interpreter]"  # type: ignore[index]

    claude = anthropic_client(priced, priced.mint(name="unpriced-server-tools"))
    execution: Any = {"type": "code_execution_20250825", "name": "code_execution"}
    choice: Any = {"type": "tool", "name": "code_execution"}
    raw_m = claude.messages.with_raw_response.create(
        model="claude", max_tokens=100, messages=HI, tools=[execution, SEARCH], tool_choice=choice
    )
    assert raw_m.parse().content
    assert [tool["type"] for tool in sent(priced, "anthropic")["tools"]] == [SEARCH["type"]]  # searches are priced
    assert "tool_choice" not in sent(priced, "anthropic")
    assert raw_m.headers["x-gateway-dropped-params"] == "tools.code_execution_20250825,tool_choice"
    with pytest.raises(anthropic.BadRequestError) as refused_m:
        claude.messages.create(
            model="claude", max_tokens=100, messages=HI, tools=[execution], extra_headers={"x-gateway-strict": "true"}
        )
    assert "tools.code_execution_20250825" in refused_m.value.message


ALLOWED_F: Any = {"type": "function", "name": "weather"}


@pytest.mark.parametrize(
    ("running", "hosted", "choice", "sent_choice", "named"),
    [
        # An `allowed_tools` choice keeps the tools still sent, and names what it lost.
        (
            "priced",
            {"type": "image_generation"},
            {"type": "allowed_tools", "mode": "required", "tools": [{"type": "image_generation"}, ALLOWED_F]},
            {"type": "allowed_tools", "mode": "required", "tools": [ALLOWED_F]},
            "tools[image_generation],tool_choice.tools",
        ),
        (
            "priced",
            {"type": "file_search", "vector_store_ids": ["vs_1"]},
            {"type": "allowed_tools", "mode": "auto", "tools": [ALLOWED_F, {"type": "file_search"}]},
            {"type": "allowed_tools", "mode": "auto", "tools": [ALLOWED_F]},
            "tools[file_search],tool_choice.tools",
        ),
        (
            "unpriced",
            {"type": "web_search"},
            {"type": "allowed_tools", "mode": "auto", "tools": [{"type": "web_search"}, ALLOWED_F]},
            {"type": "allowed_tools", "mode": "auto", "tools": [ALLOWED_F]},
            "tools[web_search],tool_choice.tools",
        ),
        # One that allowed nothing else goes, named; as does a choice of the left-out tool itself.
        (
            "priced",
            {"type": "code_interpreter", "container": {"type": "auto"}},
            {"type": "allowed_tools", "mode": "required", "tools": [{"type": "code_interpreter"}]},
            None,
            "tools[code_interpreter],tool_choice",
        ),
        (
            "priced",
            {"type": "image_generation"},
            {"type": "image_generation"},
            None,
            "tools[image_generation],tool_choice",
        ),
        ("unpriced", {"type": "web_search"}, {"type": "web_search_preview"}, None, "tools[web_search],tool_choice"),
    ],
    ids=["image-generation", "file-search", "unpriced-search", "none-left", "chosen", "chosen-search"],
)
def test_a_tool_choice_leaves_out_the_hosted_tools_left_out_of_the_tools(
    running: str, hosted: Any, choice: Any, sent_choice: Any, named: str, request: pytest.FixtureRequest
) -> None:
    """A hosted tool the gateway leaves out of `tools` stayed in an `allowed_tools` choice, which went upstream
    allowing a tool the body no longer had: OpenAI refused the request (400 on `tool_choice.tools[0]`, found by
    review). The choice keeps the tools still sent and names `tool_choice.tools`, as the translation does; one that
    allowed none of them, or chose the left-out tool itself, goes (`tool_choice`). The request is served."""
    gateway: Running = request.getfixturevalue(running)
    weather: Any = {**ALLOWED_F, "parameters": {"type": "object"}}
    raw = openai_client(gateway, gateway.mint(name="hosted-choice")).responses.with_raw_response.create(
        model="gpt", input="Chart it", tools=[hosted, weather], tool_choice=choice
    )
    assert raw.parse().status == "completed"
    body = sent(gateway, "openai")
    assert body["tools"] == [weather] and body.get("tool_choice") == sent_choice
    assert raw.headers["x-gateway-dropped-params"] == named


def test_a_container_goes_with_code_execution(priced: Running) -> None:
    """A Messages `container` (a container's id from an earlier answer, or a new one's skills) went to Anthropic as
    sent. A container is code execution's, which Anthropic keeps under the one account for every key (and bills per
    container-hour): the gateway keeps no owner of one, so an id another key was given reached it. Code execution is
    always left out, and its container now goes with it: named, and under `x-gateway-strict` a 400."""
    claude = anthropic_client(priced, priced.mint(name="contained"))
    named: Any = {"container": "container_011another_keys"}
    raw = claude.messages.with_raw_response.create(model="claude", max_tokens=100, messages=HI, extra_body=named)
    assert raw.parse().content
    assert "container" not in sent(priced, "anthropic")
    assert raw.headers["x-gateway-dropped-params"] == "container"
    with pytest.raises(anthropic.BadRequestError) as refused:
        claude.messages.create(
            model="claude", max_tokens=100, messages=HI, extra_body=named, extra_headers={"x-gateway-strict": "true"}
        )
    assert "container" in refused.value.message


# --- Anthropic's cache writes by how long they are kept ------------------------------------------------


@pytest.mark.parametrize(("ttl", "rate"), [("1h", 6.0), (None, 3.75)], ids=["hour", "five-minutes"])
@pytest.mark.parametrize("stream", [False, True], ids=["whole", "streamed"])
def test_a_cache_write_is_priced_at_the_rate_of_how_long_it_is_kept(
    priced: Running, ttl: str | None, rate: float, stream: bool
) -> None:
    key = priced.mint(name=f"cache-{ttl}-{stream}")
    marker = {"type": "ephemeral", **({"ttl": ttl} if ttl else {})}
    # A system prompt no other test writes, so this request writes it.
    system: Any = [{"type": "text", "text": f"Cache me {ttl} {stream}. " * 200, "cache_control": marker}]
    sdk = anthropic_client(priced, key)
    if stream:
        with sdk.messages.stream(model="claude", max_tokens=100, messages=HI, system=system) as events:
            message = events.get_final_message()
    else:
        message = sdk.messages.create(model="claude", max_tokens=100, messages=HI, system=system)
    usage = message.usage
    written = usage.cache_creation_input_tokens or 0
    assert written > 500 and usage.cache_creation is not None
    expected = (usage.input_tokens * 3.0 + written * rate + usage.output_tokens * 15.0) / 1e6
    [line] = priced.ledger(key)
    assert line.cost_usd == pytest.approx(expected) and line.cache_write_tokens == written


def test_the_built_in_prices_have_anthropics_hour_rate(priced: Running) -> None:
    """Sonnet 4.5 at the table's prices: an hour's write at $6 per million, twice the input price."""
    key = priced.mint(name="table")
    system: Any = [
        {"type": "text", "text": "Table prices. " * 400, "cache_control": {"type": "ephemeral", "ttl": "1h"}}
    ]
    message = anthropic_client(priced, key).messages.create(model="sonnet", max_tokens=100, messages=HI, system=system)
    usage = message.usage
    expected = usage.input_tokens * 3.0 + (usage.cache_creation_input_tokens or 0) * 6.0 + usage.output_tokens * 15.0
    [line] = priced.ledger(key)
    assert line.cost_usd == pytest.approx(expected / 1e6)


def test_the_fake_counts_searches_and_hour_writes_as_anthropic_documents() -> None:
    """The fake's usage has Anthropic's documented fields (`cache_creation`, `server_tool_use`)."""
    app = fake_anthropic.create_app()
    body = {"model": "m", "max_tokens": 10, "messages": HI, "tools": [SEARCH]}
    headers = {"x-api-key": fake_anthropic.API_KEY, "anthropic-version": "2023-06-01"}
    with TestClient(app) as http:
        usage = http.post("/v1/messages", json=body, headers=headers).json()["usage"]
    assert usage["server_tool_use"] == {"web_search_requests": 1}
    assert set(usage["cache_creation"]) == {"ephemeral_5m_input_tokens", "ephemeral_1h_input_tokens"}


def test_audio_output_is_charged_and_reserved_at_its_own_rate(priced: Running) -> None:
    """gpt-4o-mini-audio-preview's audio output costs $20 a million, its text $0.60 (OpenAI's model page): the audio
    tokens of the answer's usage are charged at the audio rate, and the worst case reserved at it (the request asks
    for audio). A model whose price names no audio output cannot take such a request: its fallback does."""
    key = priced.mint(name="voice")
    oa = openai_client(priced, key)
    raw = oa.chat.completions.with_raw_response.create(model="voice", messages=HI, max_tokens=1000, **SPEAKS)
    answer = raw.parse()
    usage = answer.usage
    assert usage is not None and usage.completion_tokens_details is not None
    spoken = usage.completion_tokens_details.audio_tokens or 0
    assert spoken == fake_openai.AUDIO_OUTPUT_TOKENS and answer.choices[0].message.audio is not None
    expected = (usage.prompt_tokens * 0.15 + (usage.completion_tokens - spoken) * 0.60 + spoken * 20.0) / 1e6
    assert float(raw.headers["x-gateway-cost-usd"]) == pytest.approx(expected, abs=1e-12)
    assert priced.ledger(key)[-1].cost_usd == pytest.approx(expected, abs=1e-12)
    # 1,000 tokens of audio may cost $0.02, more than the $0.01 allowed; as text, $0.0006 (and so it passes).
    limit = {"x-gateway-max-cost-usd": "0.01"}
    with pytest.raises(openai.APIStatusError) as capped:
        oa.chat.completions.create(model="voice", messages=HI, max_tokens=1000, extra_headers=limit, **SPEAKS)
    assert capped.value.status_code == 402
    assert oa.chat.completions.create(model="voice", messages=HI, max_tokens=1000, extra_headers=limit).usage
    # No audio output price: the request goes to the fallback that has one, the first named unsupported.
    passed = oa.chat.completions.with_raw_response.create(model="mute", messages=HI, **SPEAKS)
    assert passed.parse().model == "gpt-4o-mini-audio-preview"
    assert passed.headers["x-gateway-route"].startswith("openai/gpt-voice-x@global=unsupported, ")
    with pytest.raises(openai.BadRequestError) as refused:
        oa.chat.completions.create(model="mute", messages=HI, extra_headers={"x-gateway-fallbacks": "none"}, **SPEAKS)
    assert refused.value.param == "modalities" and "audio_output" in refused.value.message


def test_an_advisors_output_bound_reserved_from_the_config_is_the_one_sent() -> None:
    """A tool without `max_tokens` whose model the config deploys with `max_output_tokens: 2048` is reserved 2,048
    tokens a call, and sent that bound: untold, Anthropic held the advisor to its own (the model's whole output), so
    a call could write past what the budget held (found by review)."""
    config = parse_config(
        {
            "providers": {"anthropic": {"type": "anthropic", "api_key": "env:ANTHROPIC_API_KEY"}},
            "models": {
                "advisor": {
                    "deployments": [{"provider": "anthropic", "model": "claude-advisor-x"}],
                    "max_output_tokens": 2048,
                    "price": {"input": 7.0, "output": 35.0},
                }
            },
        },
        set(REGISTRY),
    )
    charges: Any = Charges()
    charges.gateway = SimpleNamespace(config=config)
    ex: Any = SimpleNamespace(advisors=(), lineage=[KeyRecord(id="k", name="k", secret_hash="", created_at=0)])
    tool = {"type": "advisor_20260301", "name": "advisor", "model": "claude-advisor-x"}
    Charges.allow_advisors(charges, ex, [tool])
    assert ex.advisors == (("claude-advisor-x", 3, 2048),)  # reserved for 2,048 a call
    assert tool.get("max_tokens") == 2048, tool  # and held to it
