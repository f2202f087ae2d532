"""The anthropic SDK (betas, thinking, cache_control) through /v1/messages to every provider type.

An Anthropic deployment must receive the client's body unchanged but for `model` and a budget-capped
`max_tokens`, with its `anthropic-beta` and `anthropic-version` headers, and its answer and events must come
back as the provider sent them. Every other deployment gets a translation, with what it cannot carry named in
`x-gateway-dropped-params`.
"""

from __future__ import annotations

import math
import re
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import anthropic
import httpx
import orjson
import pytest

from adapters.providers.registry import REGISTRY
from handler.config import parse_config
from tests.fakes import anthropic as fake_anthropic
from tests.fakes import bedrock as fake_bedrock
from tests.fakes import gemini as fake_gemini
from tests.fakes import openai as fake_openai
from tests.functional.agents_gateway import CLAUDE, CLAUDE_PRICE, agents_gateway
from tests.functional.conftest import Running, fresh_minute, serving
from tests.support.servers import ServerThread

BETAS = ["interleaved-thinking-2025-05-14", "context-management-2025-06-27"]
CACHED = {"type": "ephemeral"}
SYSTEM: Any = [
    {"type": "text", "text": "You are a careful assistant. " * 40, "cache_control": CACHED},
    {"type": "text", "text": "Answer briefly."},
]
CONTEXT_MANAGEMENT: Any = {"edits": [{"type": "clear_thinking_20251015", "keep": "all"}]}
MANAGED = "anthropic-beta[context-management-2025-06-27]"  # (named beside `context_management` by a translation)
# The fakes' script (tests.fakes.script): a model offered `Bash` calls it as the task says.
TASK = 'Write hi into out.txt. CALL Bash {"command": "echo hi > out.txt"}'
BASH_TOOL: Any = {
    "name": "Bash",
    "input_schema": {"type": "object", "properties": {"command": {"type": "string"}}, "required": ["command"]},
}


@pytest.fixture(scope="module")
def agents(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Running]:
    with agents_gateway(Path(tmp_path_factory.mktemp("agents-store"))) as running:
        yield running


@pytest.fixture
def client(agents: Running) -> Iterator[anthropic.Anthropic]:
    with anthropic.Anthropic(base_url=agents.url, api_key=agents.mint(name="sdk"), max_retries=0) as sdk:
        yield sdk


def last(agents: Running, provider: str) -> dict[str, Any]:
    recorded: dict[str, Any] = agents.fakes[provider].state.requests[-1]
    return recorded


def claude_code_body(model: str) -> dict[str, Any]:
    """What Claude Code sends for a model it does not know (recorded from `claude -p`, 2.1.x)."""
    return {
        "model": model,
        "max_tokens": 1000,
        "system": SYSTEM,
        "messages": [
            {"role": "user", "content": [{"type": "text", "text": TASK}]},
            {"role": "system", "content": "# Environment\nPrimary working directory: /tmp/work"},
        ],
        "tools": [BASH_TOOL],
        "thinking": {"type": "adaptive", "display": "omitted"},
        "context_management": CONTEXT_MANAGEMENT,
        "output_config": {"effort": "high"},
        "metadata": {"user_id": "session-1"},
    }


# --- Anthropic: the body passes through ------------------------------------------------------------


def test_an_anthropic_deployment_gets_the_body_and_beta_headers_unchanged(
    agents: Running, client: anthropic.Anthropic
) -> None:
    params: dict[str, Any] = {
        "max_tokens": 2000,
        "system": SYSTEM,
        "thinking": {"type": "enabled", "budget_tokens": 1024},
        "context_management": CONTEXT_MANAGEMENT,
        "messages": [{"role": "user", "content": [{"type": "text", "text": "Hi", "cache_control": CACHED}]}],
        "metadata": {"user_id": "u-1"},
    }
    raw = client.beta.messages.with_raw_response.create(model="claude", betas=BETAS, **params)
    message = raw.parse()
    sent = last(agents, "anthropic")
    assert sent["json"] == {"model": CLAUDE, **params}
    assert sent["headers"]["anthropic-beta"] == ",".join(BETAS)
    assert sent["headers"]["anthropic-version"] == client.default_headers["anthropic-version"]
    assert raw.headers["x-gateway-provider"] == "anthropic" and "x-gateway-dropped-params" not in raw.headers
    thinking = message.content[0]
    assert thinking.type == "thinking" and thinking.signature == fake_anthropic.SIGNATURE
    assert message.usage.cache_creation_input_tokens and message.model == CLAUDE
    # The second call reads the prefix the first one wrote, and is priced at the cache-read rate.
    again = client.beta.messages.with_raw_response.create(model="claude", betas=BETAS, **params)
    usage = again.parse().usage
    assert usage.cache_read_input_tokens == message.usage.cache_creation_input_tokens
    assert usage.cache_creation_input_tokens == 0
    expected = (
        usage.input_tokens * 3.0 + (usage.cache_read_input_tokens or 0) * 0.3 + usage.output_tokens * 15.0
    ) / 1_000_000
    assert float(again.headers["x-gateway-cost-usd"]) == pytest.approx(expected, rel=1e-6)
    body = orjson.loads(again.http_response.content)
    assert body["cost"]["cached_tokens"] == usage.cache_read_input_tokens


def test_max_tokens_is_capped_to_what_the_budget_reserved(agents: Running) -> None:
    key = agents.mint(name="budgeted", budget_usd=5.0)
    with anthropic.Anthropic(base_url=agents.url, api_key=key, max_retries=0) as sdk:
        sdk.messages.create(model="claude", max_tokens=20000, messages=[{"role": "user", "content": "Hi"}])
    assert last(agents, "anthropic")["json"]["max_tokens"] == 3000


def stream_events(url: str, key: str, body: dict[str, Any]) -> tuple[list[str], dict[str, Any]]:
    """A Messages stream's event names, and each event's payload by name (the last of a name)."""
    headers = {"x-api-key": key, "anthropic-version": "2023-06-01", "anthropic-beta": BETAS[0]}
    with httpx.stream("POST", f"{url}/v1/messages?beta=true", json=body, headers=headers) as response:
        text = response.read().decode()
    assert response.status_code == 200
    events = [block.split("\n") for block in text.strip().split("\n\n")]
    names = [lines[0].removeprefix("event: ") for lines in events]
    payloads = {name: orjson.loads(lines[1].removeprefix("data: ")) for name, lines in zip(names, events, strict=True)}
    signature = [p for n, lines in zip(names, events, strict=True) if n == "content_block_delta" for p in lines]
    payloads["signed"] = any(fake_anthropic.SIGNATURE in line for line in signature)
    return names, payloads


def test_a_stream_comes_back_event_by_event_with_the_cost_on_message_delta(agents: Running) -> None:
    key = agents.mint(name="stream")
    body = {
        "model": "claude",
        "max_tokens": 2000,
        "stream": True,
        "system": SYSTEM,
        "thinking": {"type": "enabled", "budget_tokens": 1024},
        "messages": [{"role": "user", "content": "Hi"}],
    }
    names, payloads = stream_events(agents.url, key, body)
    assert names[:2] == ["message_start", "ping"] and names[-2:] == ["message_delta", "message_stop"]
    assert payloads["message_start"]["message"]["usage"]["cache_creation_input_tokens"] >= 0
    assert payloads["signed"]
    delta = payloads["message_delta"]
    assert delta["usage"] == {"output_tokens": fake_anthropic.OUTPUT_TOKENS} and delta["cost"]["provider_usd"] > 0
    assert last(agents, "anthropic")["headers"]["anthropic-beta"] == BETAS[0]
    assert last(agents, "anthropic")["json"] == {**body, "model": CLAUDE}


@pytest.mark.parametrize("thinking", [{"type": "enabled", "budget_tokens": 1024}, None], ids=["thinking", "plain"])
def test_a_stream_costs_what_the_provider_counted_as_the_same_answer_whole_does(
    agents: Running, thinking: dict[str, Any] | None
) -> None:
    """`message_delta` carries the final usage though `message_stop` is still to come: the stream is costed
    and settled from it, as the same request not streamed, not estimated (or, asking for thinking, charged
    the reserved worst case)."""
    body: dict[str, Any] = {"model": "claude", "max_tokens": 2000, "messages": [{"role": "user", "content": "Hi"}]}
    if thinking:
        body["thinking"] = thinking
    key = agents.mint(name="stream-cost")
    whole = httpx.post(
        f"{agents.url}/v1/messages", json=body, headers={"x-api-key": key, "anthropic-version": "2023-06-01"}
    ).json()
    _, payloads = stream_events(agents.url, key, {**body, "stream": True})
    assert payloads["message_delta"]["cost"] == whole["cost"]
    assert whole["cost"]["output_tokens"] == fake_anthropic.OUTPUT_TOKENS
    lines = agents.ledger(key)
    for _ in range(50):  # the stream's line is written in the background
        if len(lines) == 2:
            break
        time.sleep(0.05)
        lines = agents.ledger(key)
    assert [(line.cost_source, line.output_tokens, line.cost_usd) for line in lines] == [
        ("provider", fake_anthropic.OUTPUT_TOKENS, whole["cost"]["total_usd"])
    ] * 2


def test_an_mcp_connectors_toolset_reaches_anthropic_as_sent(agents: Running) -> None:
    """Anthropic's MCP connector: `mcp_servers` and a `mcp_toolset` tool, which has no `name`, pass through."""
    body = {
        "model": "claude",
        "max_tokens": 100,
        "messages": [{"role": "user", "content": "Hi"}],
        "mcp_servers": [{"type": "url", "url": "https://mcp.example.com/sse", "name": "docs"}],
        "tools": [{"type": "mcp_toolset", "mcp_server_name": "docs"}],
    }
    headers = {"x-api-key": agents.mint(name="mcp"), "anthropic-version": "2023-06-01"}
    answer = httpx.post(
        f"{agents.url}/v1/messages", json=body, headers={**headers, "anthropic-beta": "mcp-client-2025-11-20"}
    )
    assert answer.status_code == 200, answer.text
    assert last(agents, "anthropic")["json"] == {**body, "model": CLAUDE}


def test_a_forwarded_header_that_is_not_ascii_is_the_clients_400(agents: Running) -> None:
    """`anthropic-beta` goes upstream as sent: a value HTTP cannot carry on (Latin-1 `é`) is refused, not a 500."""
    headers = {"x-api-key": agents.mint(name="beta"), "anthropic-version": "2023-06-01", "anthropic-beta": b"caf\xe9"}
    body = {"model": "claude", "max_tokens": 10, "messages": [{"role": "user", "content": "Hi"}]}
    answer = httpx.post(f"{agents.url}/v1/messages", json=body, headers=headers)
    assert answer.status_code == 400 and answer.json()["error"]["type"] == "invalid_request_error"
    assert "anthropic-beta" in answer.json()["error"]["message"]


@pytest.mark.parametrize("path", ["/v1/messages", "/v1/messages/count_tokens"])
def test_repeated_beta_headers_all_reach_anthropic(agents: Running, path: str) -> None:
    """Anthropic takes `anthropic-beta` as a comma list or as the header repeated: every value is forwarded."""
    key = agents.mint(name="betas")
    headers = [("x-api-key", key), ("anthropic-version", "2023-06-01")]
    headers += [("anthropic-beta", BETAS[0]), ("anthropic-beta", f"{BETAS[1]}, files-api-2025-04-14")]
    body: dict[str, Any] = {"model": "claude", "messages": [{"role": "user", "content": "Hi"}]}
    if path == "/v1/messages":
        body["max_tokens"] = 10
    assert httpx.post(f"{agents.url}{path}", json=body, headers=headers).status_code == 200
    sent = last(agents, "anthropic")
    assert sent["path"].endswith(path)
    assert sent["headers"]["anthropic-beta"] == f"{BETAS[0]},{BETAS[1]}, files-api-2025-04-14"
    # `anthropic-version` names one version: the same one twice is that one, two different ones a 400.
    twice = [("anthropic-version", "2023-06-01"), ("x-api-key", key), ("anthropic-version", "2023-06-01")]
    assert httpx.post(f"{agents.url}{path}", json=body, headers=twice).status_code == 200
    assert last(agents, "anthropic")["headers"]["anthropic-version"] == "2023-06-01"
    clash = [*twice[:2], ("anthropic-version", "2023-01-01")]
    answer = httpx.post(f"{agents.url}{path}", json=body, headers=clash)
    assert answer.status_code == 400 and "anthropic-version" in answer.json()["error"]["message"]


@pytest.mark.parametrize("path", ["/v1/messages", "/v1/messages/count_tokens"])
def test_claude_codes_beta_query_reaches_anthropic_and_only_anthropic(agents: Running, path: str) -> None:
    """Claude Code calls `/v1/messages?beta=true`: the pass-through built Anthropic's URL without the query, so
    Anthropic got `/v1/messages` bare. Its `beta` goes, and nothing else of the query (a key a client put there
    stays with the gateway), and not to a translated provider, where it means nothing."""
    key = agents.mint(name="beta-query")
    headers = {"x-api-key": key, "anthropic-version": "2023-06-01", "anthropic-beta": BETAS[0]}
    body: dict[str, Any] = {"model": "claude", "messages": [{"role": "user", "content": "Hi"}]}
    if path == "/v1/messages":
        body["max_tokens"] = 10
    assert httpx.post(f"{agents.url}{path}?beta=true", json=body, headers=headers).status_code == 200
    sent = last(agents, "anthropic")
    assert sent["path"].endswith(path) and sent["query"] == "beta=true"
    odd = f"beta=true&next=/../../v1/models&api_key={key}"
    assert httpx.post(f"{agents.url}{path}?{odd}", json=body, headers=headers).status_code == 200
    sent = last(agents, "anthropic")
    assert sent["path"].endswith(path) and sent["query"] == "beta=true"  # Anthropic's parameter only
    if path == "/v1/messages":
        answer = httpx.post(f"{agents.url}{path}?beta=true", json={**body, "model": "gpt"}, headers=headers)
        assert answer.status_code == 200
        assert last(agents, "openai")["query"] == ""


@pytest.fixture(scope="module")
def beta_gateway(
    upstream: tuple[ServerThread, dict[str, Any]], tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Running]:
    """A gateway whose Anthropic provider turns a beta on for its clients (`anthropic_beta`)."""
    anthropic_url = f"{upstream[0].url}/anthropic"
    provider = {"type": "anthropic", "api_key": "env:ANTHROPIC_API_KEY", "base_url": anthropic_url}
    data = {
        "providers": {"anthropic": {**provider, "anthropic_beta": BETAS[1]}},
        "models": {"claude": {"deployments": [{"provider": "anthropic", "model": CLAUDE}], "price": CLAUDE_PRICE}},
    }
    store_url = f"sqlite:///{tmp_path_factory.mktemp('beta-store') / 'gateway.db'}"
    yield from serving(parse_config(data, set(REGISTRY)), store_url, upstream)


@pytest.mark.parametrize("path", ["/v1/messages", "/v1/messages/count_tokens"])
def test_the_configured_beta_goes_with_the_clients_betas(beta_gateway: Running, path: str) -> None:
    """docs/configuration.md: the provider's `anthropic_beta` is "sent with every request of the provider". A
    client sending betas of its own replaced it, and Anthropic refused the field the configured beta turns on
    ("context_management: Extra inputs are not permitted")."""
    headers = {"x-api-key": beta_gateway.mint(name="beta"), "anthropic-version": "2023-06-01"}
    body: dict[str, Any] = {
        "model": "claude",
        "messages": [{"role": "user", "content": "Hi"}],
        "context_management": {"edits": [{"type": "clear_tool_uses_20250919"}]},  # (clearing thinking needs it on)
    }
    if path == "/v1/messages":
        body["max_tokens"] = 10
    answer = httpx.post(f"{beta_gateway.url}{path}", json=body, headers={**headers, "anthropic-beta": BETAS[0]})
    assert answer.status_code == 200, answer.text
    sent = beta_gateway.fakes["anthropic"].state.requests[-1]
    assert sent["path"].endswith(path) and sent["headers"]["anthropic-beta"] == ",".join(BETAS)
    both = httpx.post(f"{beta_gateway.url}{path}", json=body, headers={**headers, "anthropic-beta": ",".join(BETAS)})
    assert both.status_code == 200, both.text
    assert beta_gateway.fakes["anthropic"].state.requests[-1]["headers"]["anthropic-beta"] == ",".join(BETAS)


def test_the_sdk_stream_accumulates_thinking_with_its_signature(client: anthropic.Anthropic) -> None:
    with client.beta.messages.stream(
        model="claude",
        betas=BETAS,
        max_tokens=2000,
        system=SYSTEM,
        thinking={"type": "enabled", "budget_tokens": 1024},
        messages=[{"role": "user", "content": "Hi"}],
    ) as stream:
        final = stream.get_final_message()
    assert final.content[0].type == "thinking" and final.content[0].signature == fake_anthropic.SIGNATURE
    assert final.content[1].type == "text" and final.content[1].text == fake_anthropic.TEXT


def test_failover_to_another_provider_translates_that_attempt(agents: Running, client: anthropic.Anthropic) -> None:
    raw = client.beta.messages.with_raw_response.create(
        model="claude-then-gpt",
        betas=BETAS,
        max_tokens=100,
        system=SYSTEM,
        context_management=CONTEXT_MANAGEMENT,
        messages=[{"role": "user", "content": "Hi"}],
    )
    assert raw.parse().content[0].text == fake_openai.TEXT  # type: ignore[union-attr]
    assert raw.headers["x-gateway-provider"] == "openai"
    assert raw.headers["x-gateway-route"].endswith("=500, openai/gpt-4o-mini@global=200")
    # The context management beta goes with the field it turns on, as on Bedrock.
    assert raw.headers["x-gateway-dropped-params"] == f"context_management,{MANAGED}"
    assert last(agents, "openai")["json"]["messages"][0]["role"] == "system"


def test_a_stream_failing_over_comes_back_translated(agents: Running, client: anthropic.Anthropic) -> None:
    with client.beta.messages.stream(
        model="claude-then-gpt", betas=BETAS, max_tokens=100, messages=[{"role": "user", "content": "Hi"}]
    ) as stream:
        text = "".join(stream.text_stream)
        final = stream.get_final_message()
    assert text == fake_openai.TEXT and final.stop_reason == "end_turn"


def relayed_output(text: str) -> str:
    """The generated output a Messages stream's deltas carried: text, thinking and tool input JSON."""
    fields = {"text_delta": "text", "thinking_delta": "thinking", "input_json_delta": "partial_json"}
    out = ""
    for block in text.strip().split("\n\n"):
        name, data = block.split("\n")
        if name == "event: content_block_delta":
            delta = orjson.loads(data.removeprefix("data: "))["delta"]
            out += delta.get(fields.get(delta["type"], ""), "")
    return out


@pytest.mark.parametrize(
    "extra",
    [{}, {"tools": [BASH_TOOL], "messages": [{"role": "user", "content": TASK}]}],
    ids=["text", "tool-call"],
)
def test_a_pass_through_stream_cut_short_is_charged_for_the_output_it_relayed(
    agents: Running, extra: dict[str, Any]
) -> None:
    """The estimate is the prompt and the output relayed (about three characters a token), not the JSON of the
    events around it, which is most of each small delta."""
    key = agents.mint(name="cut")
    body = {"model": "claude-cut", "max_tokens": 100, "stream": True, "messages": [{"role": "user", "content": "Hi"}]}
    headers = {"x-api-key": key, "anthropic-version": "2023-06-01"}
    with httpx.stream("POST", f"{agents.url}/v1/messages", json={**body, **extra}, headers=headers) as response:
        text = response.read().decode()
    assert "message_start" in text and "message_delta" not in text
    relayed = relayed_output(text)
    assert relayed
    # The client is told the stream was cut (it just stopped), and the line says so (it said 200; found by review).
    assert last_event(text) == ("error", "api_error")
    [line] = agents.ledger(key)
    assert line.output_tokens == math.ceil(len(relayed) / 3) and line.input_tokens > 0 and line.cost_usd > 0
    assert line.cost_source == "estimate" and line.status == 502


def last_event(text: str) -> tuple[str, str]:
    """The last SSE event's name, and its error's type (else its payload's)."""
    name, data = text.strip().split("\n\n")[-1].split("\n")
    payload = orjson.loads(data.removeprefix("data: "))
    return name.removeprefix("event: "), payload.get("error", payload)["type"]


def test_a_translated_stream_cut_short_ends_with_an_error_not_end_turn(agents: Running) -> None:
    """An OpenAI stream cut before its finish reason, relayed as Anthropic events, ended on a `message_delta` with
    `stop_reason: end_turn` and a `message_stop`: a truncated answer looked complete, and its line said 200 (found
    by review)."""
    key = agents.mint(name="cut-translated")
    body = {"model": "gpt-cut", "max_tokens": 100, "stream": True, "messages": [{"role": "user", "content": "Hi"}]}
    headers = {"x-api-key": key, "anthropic-version": "2023-06-01"}
    with httpx.stream("POST", f"{agents.url}/v1/messages", json=body, headers=headers) as response:
        text = response.read().decode()
    assert "message_start" in text and relayed_output(text)
    assert "message_stop" not in text and "end_turn" not in text
    assert last_event(text) == ("error", "api_error")
    [line] = agents.ledger(key)
    assert line.status == 502 and line.cost_source == "estimate" and line.cost_usd > 0


@pytest.mark.parametrize("fault", ["stream-overloaded", "stream-overloaded echo-auth"], ids=["plain", "echoed-key"])
def test_anthropics_own_error_event_comes_back_as_it_sent_it(agents: Running, fault: str) -> None:
    """Anthropic's `error` event mid-stream (an `overloaded_error`, with no 529 anywhere) reaches the client as
    Anthropic wrote it, credentials it quotes redacted, with what the stream was charged beside the error (the usage
    and cost of its ledger line: it said nothing of it); the gateway still records the stream as failed."""
    key = agents.mint(name="overloaded")
    body = {
        "model": "claude",
        "max_tokens": 100,
        "stream": True,
        "metadata": {"user_id": fault},
        "messages": [{"role": "user", "content": "Hi"}],
    }
    headers = {"x-api-key": key, "anthropic-version": "2023-06-01"}
    with httpx.stream("POST", f"{agents.url}/v1/messages", json=body, headers=headers) as response:
        text = response.read().decode()
    *_, last_event = text.strip().split("\n\n")
    name, data = last_event.split("\n")
    assert name == "event: error" and "content_block_delta" in text
    event = orjson.loads(data.removeprefix("data: "))
    assert event["type"] == "error" and event["error"]["type"] == "overloaded_error"
    if "echo-auth" in fault:
        assert event["error"]["message"].startswith("Overloaded (x-api-key: [REDACTED]")
        assert fake_anthropic.API_KEY not in text
    else:
        assert event["error"] == {"type": "overloaded_error", "message": "Overloaded"}
    [line] = agents.ledger(key)
    assert line.status == 502 and line.output_tokens > 0
    assert set(event) == {"type", "error", "usage", "cost"}
    assert (event["usage"]["input_tokens"], event["usage"]["output_tokens"]) == (line.input_tokens, line.output_tokens)
    cost = event["cost"]
    assert (cost["provider_usd"], cost["fee_usd"], cost["output_tokens"]) == (
        line.cost_usd,
        line.fee_usd,
        line.output_tokens,
    )


# --- every other provider: translated, with what is dropped named ---------------------------------


def test_claude_codes_request_reaches_openai_translated(agents: Running, client: anthropic.Anthropic) -> None:
    raw = client.beta.messages.with_raw_response.create(betas=BETAS, **claude_code_body("gpt"))
    assert raw.parse().content[0].type == "tool_use"
    sent = last(agents, "openai")["json"]
    assert [m["role"] for m in sent["messages"]] == ["system", "user", "system"]
    assert sent["messages"][0]["content"][0] == {"type": "text", "text": SYSTEM[0]["text"]}
    assert sent["tools"][0]["function"] == {"name": "Bash", "parameters": BASH_TOOL["input_schema"]}
    assert "thinking" not in sent and "reasoning_effort" not in sent and sent["max_tokens"] == 1000
    named = ["context_management", "thinking", "output_config.effort", MANAGED]
    assert raw.headers["x-gateway-dropped-params"].split(",") == named


def test_an_openai_reasoning_model_gets_reasoning_effort_and_max_completion_tokens(
    agents: Running, client: anthropic.Anthropic
) -> None:
    raw = client.beta.messages.with_raw_response.create(betas=BETAS, **claude_code_body("o4"))
    sent = last(agents, "openai")["json"]
    assert sent["reasoning_effort"] == "high" and sent["max_completion_tokens"] == 1000 and "max_tokens" not in sent
    assert raw.headers["x-gateway-dropped-params"] == f"context_management,{MANAGED}"


def test_an_openai_reasoning_model_gets_the_nearest_effort_it_takes(
    agents: Running, client: anthropic.Anthropic
) -> None:
    """A budget above 16384 is `xhigh` and `output_config.effort: max` is `xhigh` too, which o4-mini refuses (OpenAI's
    400: "Unsupported value: 'xhigh' is not supported with the 'o4-mini' model"): it gets `high`, the nearest it
    takes; the effort the client named is reported, the budget it only approximated is not."""
    body = {**claude_code_body("o4"), "max_tokens": 21000, "thinking": {"type": "enabled", "budget_tokens": 20000}}
    del body["output_config"]
    raw = client.beta.messages.with_raw_response.create(betas=BETAS, **body)
    assert raw.parse().content[0].type == "tool_use"
    assert last(agents, "openai")["json"]["reasoning_effort"] == "high"
    assert raw.headers["x-gateway-dropped-params"] == f"context_management,{MANAGED}"
    body = {**claude_code_body("o4"), "output_config": {"effort": "max"}}
    raw = client.beta.messages.with_raw_response.create(betas=BETAS, **body)
    assert last(agents, "openai")["json"]["reasoning_effort"] == "high"
    assert raw.headers["x-gateway-dropped-params"] == f"context_management,output_config.effort,{MANAGED}"


@pytest.mark.parametrize(("model", "effort", "sent"), [("gpt", "low", None), ("o4", "max", "high")])
def test_an_effort_sent_alone_is_named_as_the_client_sent_it(
    agents: Running, client: anthropic.Anthropic, model: str, effort: str, sent: str | None
) -> None:
    """Claude Code's effort setting, `output_config.effort` without `thinking`: left out for gpt-4o-mini, which does
    not reason, and sent to o4-mini as the nearest effort it takes. Both were named `thinking`, which the request
    does not have, in `x-gateway-dropped-params` and in the 400 under `x-gateway-strict` (found by review)."""
    body = {"model": model, "max_tokens": 100, "messages": [{"role": "user", "content": "Hi"}]}
    raw = client.messages.with_raw_response.create(**body, extra_body={"output_config": {"effort": effort}})
    assert last(agents, "openai")["json"].get("reasoning_effort") == sent
    assert raw.headers["x-gateway-dropped-params"] == "output_config.effort"
    with pytest.raises(anthropic.BadRequestError) as refused:
        client.messages.create(
            **body, extra_body={"output_config": {"effort": effort}}, extra_headers={"x-gateway-strict": "true"}
        )
    assert "openai cannot honour: output_config.effort (x-gateway-strict is on)" in refused.value.message


def test_strict_mode_refuses_what_a_translation_drops_but_not_a_pass_through(client: anthropic.Anthropic) -> None:
    strict = {"x-gateway-strict": "true"}
    with pytest.raises(anthropic.BadRequestError) as refused:
        client.beta.messages.create(betas=BETAS, **claude_code_body("gpt"), extra_headers=strict)
    assert "context_management" in refused.value.message
    client.beta.messages.create(betas=BETAS, **claude_code_body("claude"), extra_headers=strict)


def test_gemini_gets_a_thinking_config_and_the_system_instruction(agents: Running, client: anthropic.Anthropic) -> None:
    body = claude_code_body("gemini")
    body["max_tokens"] = 8000  # (Gemini's thoughts count against it: a budget must leave the answer room)
    body["thinking"] = {"type": "enabled", "budget_tokens": 4000}
    raw = client.beta.messages.with_raw_response.create(betas=BETAS, **body)
    sent = last(agents, "gemini")["json"]
    assert sent["generationConfig"]["thinkingConfig"] == {"thinkingBudget": 4000, "includeThoughts": True}
    texts = [part["text"] for part in sent["systemInstruction"]["parts"]]
    assert texts == [SYSTEM[0]["text"], SYSTEM[1]["text"], "# Environment\nPrimary working directory: /tmp/work"]
    # (Gemini has no end-user id.)
    assert raw.headers["x-gateway-dropped-params"] == f"context_management,metadata.user_id,{MANAGED}"
    # The thoughts `includeThoughts` asked for come first, as a thinking block.
    assert [block.type for block in raw.parse().content] == ["thinking", "tool_use"]


@pytest.mark.parametrize("model", ["gemini", "gemini-3"])
def test_an_effort_sent_alone_gets_gemini_thinking_no_thoughts_shown(
    agents: Running, client: anthropic.Anthropic, model: str
) -> None:
    """Claude Code's WebSearch sub-request sends `output_config.effort` without `thinking`: Anthropic answers it with
    no thinking blocks. Gemini thinks at that effort, and is not asked for its thoughts (`includeThoughts`), whole or
    streamed; asked, they came back as a `thinking` block with an empty signature the client never asked for."""
    body: Any = {"model": model, "max_tokens": 8000, "messages": [{"role": "user", "content": "Hi"}]}
    effort = {"output_config": {"effort": "high"}}
    whole = client.messages.create(**body, extra_body=effort)
    sent = last(agents, "gemini")["json"]["generationConfig"]["thinkingConfig"]
    assert "includeThoughts" not in sent and (sent.get("thinkingLevel") or sent.get("thinkingBudget"))
    with client.messages.stream(**body, extra_body=effort) as stream:
        streamed = stream.get_final_message()
    assert "includeThoughts" not in last(agents, "gemini")["json"]["generationConfig"]["thinkingConfig"]
    assert [block.type for block in whole.content] == [block.type for block in streamed.content] == ["text"]


def test_bedrock_gets_cache_points_and_a_thinking_budget(agents: Running, client: anthropic.Anthropic) -> None:
    raw = client.beta.messages.with_raw_response.create(
        model="bedrock-claude",
        betas=BETAS,
        max_tokens=4000,
        system=SYSTEM,
        thinking={"type": "enabled", "budget_tokens": 2000},
        context_management=CONTEXT_MANAGEMENT,
        messages=[{"role": "user", "content": [{"type": "text", "text": "Hi", "cache_control": CACHED}]}],
    )
    sent = last(agents, "bedrock")["json"]
    assert sent["system"] == [
        {"text": SYSTEM[0]["text"]},
        {"cachePoint": {"type": "default"}},
        {"text": "Answer briefly."},
    ]
    assert sent["messages"][0]["content"] == [{"text": "Hi"}, {"cachePoint": {"type": "default"}}]
    assert sent["additionalModelRequestFields"] == {
        "thinking": {"type": "enabled", "budget_tokens": 2000},
        "anthropic_beta": ["interleaved-thinking-2025-05-14"],
    }
    assert sent["inferenceConfig"]["maxTokens"] == 4000
    # The context management beta goes with the field it turns on.
    dropped = "context_management,anthropic-beta[context-management-2025-06-27]"
    assert raw.headers["x-gateway-dropped-params"] == dropped


def test_bedrock_caches_claude_codes_conversation_at_each_tool_result(
    agents: Running, client: anthropic.Anthropic
) -> None:
    """Claude Code marks the last block of each turn for the cache; on a tool turn that is its `tool_result`. The
    marker was dropped (no cache point in Converse's `messages`), and the conversation billed at the full input
    price every turn: a cache point follows the `toolResult` (Converse takes none inside one), the conversation
    is written once and read on the next turn. With the system prompt's, two cache points: within Bedrock's four."""
    call = {"type": "tool_use", "id": "toolu_cached", "name": "Bash", "input": {"command": "echo cached"}}
    result = {"type": "tool_result", "tool_use_id": "toolu_cached", "content": "cached", "cache_control": CACHED}
    turn: Any = {
        "model": "bedrock-claude",
        "max_tokens": 1000,
        "system": SYSTEM,
        "tools": [BASH_TOOL],
        "messages": [
            {"role": "user", "content": [{"type": "text", "text": TASK}]},
            {"role": "assistant", "content": [call]},
            {"role": "user", "content": [result]},
        ],
    }
    first = client.messages.create(**turn)
    sent = last(agents, "bedrock")["json"]
    assert sent["messages"][-1]["content"] == [
        {"toolResult": {"toolUseId": "toolu_cached", "content": [{"text": "cached"}]}},
        {"cachePoint": {"type": "default"}},
    ]
    blocks = [*sent["system"], *sent["toolConfig"]["tools"], *(b for m in sent["messages"] for b in m["content"])]
    assert len([block for block in blocks if "cachePoint" in block]) == 2
    written = first.usage.cache_creation_input_tokens
    assert written
    again = client.messages.create(**turn)
    assert again.usage.cache_read_input_tokens == written and not again.usage.cache_creation_input_tokens


def test_bedrock_gets_the_betas_it_takes_and_names_the_others(agents: Running, client: anthropic.Anthropic) -> None:
    """Claude Code's betas for a model given as `name[1m]` (recorded from `claude -p`, 2.1.x) were all lost on
    Bedrock, the 1M context with them: the ones Bedrock takes for Claude reach it in
    `additionalModelRequestFields.anthropic_beta`, for the answer and for counting; the others (a beta Bedrock does
    not know is its 400, "invalid beta flag") are named."""
    betas = [
        "claude-code-20250219",
        "context-1m-2025-08-07",
        "interleaved-thinking-2025-05-14",
        "context-management-2025-06-27",
        "effort-2025-11-24",
    ]
    asked: Any = {
        "model": "bedrock-claude",
        "max_tokens": 4000,
        "thinking": {"type": "enabled", "budget_tokens": 2000},
        "messages": [{"role": "user", "content": "Hi"}],
    }
    raw = client.beta.messages.with_raw_response.create(betas=betas, **asked)
    assert raw.parse().content[-1].type == "text"
    fields = last(agents, "bedrock")["json"]["additionalModelRequestFields"]
    assert fields["anthropic_beta"] == ["context-1m-2025-08-07", "interleaved-thinking-2025-05-14"]
    named = ["claude-code-20250219", "context-management-2025-06-27", "effort-2025-11-24"]
    assert raw.headers["x-gateway-dropped-params"] == ",".join(f"anthropic-beta[{beta}]" for beta in named)
    del asked["max_tokens"]
    client.beta.messages.count_tokens(betas=betas, **asked)
    counted = last(agents, "bedrock")["json"]["input"]["converse"]["additionalModelRequestFields"]
    assert counted["anthropic_beta"] == ["context-1m-2025-08-07", "interleaved-thinking-2025-05-14"]


# Claude Code's betas for a model given as `name[1m]` (recorded from `claude -p`, 2.1.x).
CLAUDE_CODE_BETAS = [
    "claude-code-20250219",
    "context-1m-2025-08-07",
    "interleaved-thinking-2025-05-14",
    "context-management-2025-06-27",
    "advanced-tool-use-2025-11-20",
    "effort-2025-11-24",
]


@pytest.mark.parametrize("model", ["gpt", "o4", "azure-gpt", "gemini"])
def test_a_translation_names_the_betas_whose_meaning_it_loses(
    agents: Running, client: anthropic.Anthropic, model: str
) -> None:
    """A Messages request to a deployment that is not Anthropic's lost its `anthropic-beta` values unnamed (only
    Bedrock named them). Named now: the betas whose feature the request uses and no translation carries (the 1M
    context window; context management, beside the field; a tool's `input_examples`, the advanced tool use beta's);
    not Claude Code's own, nor interleaved thinking (every model that reasons does so at each request), nor effort
    (carried as the model's reasoning effort). A beta the request does not use is not named; one the gateway does
    not know is."""
    body = claude_code_body(model)
    body["tools"] = [{**BASH_TOOL, "input_examples": [{"command": "ls"}]}]
    raw = client.beta.messages.with_raw_response.create(betas=CLAUDE_CODE_BETAS, **body)
    assert raw.parse().content[-1].type in ("text", "tool_use")
    named = raw.headers["x-gateway-dropped-params"].split(",")
    betas = [name for name in named if name.startswith("anthropic-beta[")]
    assert betas == [
        "anthropic-beta[context-1m-2025-08-07]",
        "anthropic-beta[context-management-2025-06-27]",
        "anthropic-beta[advanced-tool-use-2025-11-20]",
    ]
    assert "context_management" in named and "tools.input_examples" in named

    plain: Any = {"model": model, "max_tokens": 1000, "messages": [{"role": "user", "content": "Hi"}]}
    unused = ["claude-code-20250219", "context-management-2025-06-27", "advanced-tool-use-2025-11-20"]
    raw = client.beta.messages.with_raw_response.create(betas=unused, **plain)
    assert "x-gateway-dropped-params" not in raw.headers
    raw = client.beta.messages.with_raw_response.create(betas=["some-new-feature-2027-01-01"], **plain)
    assert raw.headers["x-gateway-dropped-params"] == "anthropic-beta[some-new-feature-2027-01-01]"
    with pytest.raises(anthropic.BadRequestError) as refused:
        client.beta.messages.create(
            betas=["context-1m-2025-08-07"], **plain, extra_headers={"x-gateway-strict": "true"}
        )
    assert "anthropic-beta[context-1m-2025-08-07]" in refused.value.message


def test_bedrock_claudes_thinking_comes_back_signed(client: anthropic.Anthropic) -> None:
    params: Any = {
        "model": "bedrock-claude",
        "max_tokens": 4000,
        "thinking": {"type": "enabled", "budget_tokens": 2000},
        "messages": [{"role": "user", "content": "Hi"}],
    }
    message = client.messages.create(**params)
    assert message.content[0].type == "thinking" and message.content[0].signature == fake_bedrock.SIGNATURE
    with client.messages.stream(**params) as stream:
        final = stream.get_final_message()
    thinking = final.content[0]
    assert thinking.type == "thinking" and thinking.thinking == fake_bedrock.THINKING
    assert thinking.signature == fake_bedrock.SIGNATURE


def test_signed_thinking_goes_back_to_claude_and_is_named_when_dropped(
    agents: Running, client: anthropic.Anthropic
) -> None:
    signature = fake_anthropic.signature_of("Plan: call Bash.")  # (Claude's; a made-up one Anthropic refuses)
    thinking = {"type": "thinking", "thinking": "Plan: call Bash.", "signature": signature}
    messages: Any = [
        {"role": "user", "content": "Write hi"},
        {
            "role": "assistant",
            "content": [thinking, {"type": "tool_use", "id": "toolu_1", "name": "Bash", "input": {"command": "x"}}],
        },
        {"role": "user", "content": [{"type": "tool_result", "tool_use_id": "toolu_1", "content": "ok"}]},
    ]
    common: Any = {"max_tokens": 2000, "tools": [BASH_TOOL], "messages": messages}
    client.messages.create(model="claude", thinking={"type": "enabled", "budget_tokens": 1024}, **common)
    assert last(agents, "anthropic")["json"]["messages"][1]["content"][0] == thinking
    client.messages.create(model="bedrock-claude", thinking={"type": "enabled", "budget_tokens": 1024}, **common)
    reasoning = last(agents, "bedrock")["json"]["messages"][1]["content"][0]
    assert reasoning == {"reasoningContent": {"reasoningText": {"text": "Plan: call Bash.", "signature": signature}}}
    raw = client.messages.with_raw_response.create(model="gpt", **common)
    assert raw.headers["x-gateway-dropped-params"] == "messages.thinking"
    assert "thinking_blocks" not in last(agents, "openai")["json"]["messages"][1]


def test_a_tool_loop_another_provider_began_goes_on_on_claude_without_thinking(
    agents: Running, client: anthropic.Anthropic
) -> None:
    """Turn 1 fails over to OpenAI, which calls the tool; turn 2 (the tool result) reaches Claude. Claude Code asks
    for thinking, and clears old thinking, on every turn, but turn 1 has no Claude thinking to hand back: Anthropic
    refuses thinking then ("a final `assistant` message must start with a thinking block"), and the clearing edit
    without thinking ("`clear_thinking_20251015` strategy requires `thinking` to be enabled"). Both are left out of
    that request and named; the next question is thought through again."""
    settings: Any = {
        "model": "claude-or-gpt",
        "betas": BETAS,
        "max_tokens": 2000,
        "tools": [BASH_TOOL],
        "thinking": {"type": "enabled", "budget_tokens": 1024},
        "context_management": CONTEXT_MANAGEMENT,
    }
    task: Any = [{"role": "user", "content": TASK}]
    first = client.beta.messages.with_raw_response.create(**settings, messages=task, metadata={"user_id": "fail-529"})
    assert first.headers["x-gateway-provider"] == "openai"
    call = first.parse().content[0]
    assert call.type == "tool_use"
    result = {"type": "tool_result", "tool_use_id": call.id, "content": "done"}
    turns = [*task, {"role": "assistant", "content": [call.model_dump()]}, {"role": "user", "content": [result]}]
    second = client.beta.messages.with_raw_response.create(**settings, messages=turns)
    assert second.headers["x-gateway-provider"] == "anthropic"
    assert second.parse().content[-1].type == "text"
    sent = last(agents, "anthropic")["json"]
    assert "thinking" not in sent and "context_management" not in sent and sent["messages"] == turns
    named = second.headers["x-gateway-dropped-params"].split(",")
    assert named == ["thinking", "context_management.edits[clear_thinking_20251015]"]
    ended = [*turns, {"role": "assistant", "content": "Done."}, {"role": "user", "content": "Thanks. Next?"}]
    client.beta.messages.create(**settings, messages=ended)
    assert last(agents, "anthropic")["json"]["thinking"] == settings["thinking"]


@pytest.fixture
def kimi_ids(monkeypatch: pytest.MonkeyPatch) -> None:
    """The OpenAI fake's calls named as Kimi K2 names them on an OpenAI-compatible server: `functions.<name>:<i>`."""
    served = fake_openai._tool_call

    def named_as_kimi(body: dict[str, Any]) -> dict[str, Any] | None:
        call = served(body)
        return call and {**call, "id": f"functions.{call['function']['name']}:0"}

    monkeypatch.setattr(fake_openai, "_tool_call", named_as_kimi)


KIMI_ID = "functions.Bash:0"


@pytest.mark.usefixtures("kimi_ids")
def test_a_tool_loop_kimi_began_goes_on_on_claude_with_call_ids_anthropic_takes(
    agents: Running, client: anthropic.Anthropic
) -> None:
    """Turn 1 on an OpenAI-compatible model that names its calls as Kimi K2 does (`functions.Bash:0`); Claude Code,
    switched to Claude, hands the loop back. The id reached the Messages client as the provider wrote it, and Claude
    as the client sent it back: Anthropic takes `[a-zA-Z0-9_-]` alone, and refused every later turn of the session
    (400 "String should match pattern '^[a-zA-Z0-9_-]+$'", review). The Messages front-end now gives the call an id
    the Messages API takes (whole and streamed alike), so the history is Claude's to take, through the gateway or
    not; and a history it handed out before goes to Claude with the same stand-in in the call and its result."""
    task: Any = [{"role": "user", "content": TASK}]
    asked: Any = {"model": "gpt", "max_tokens": 2000, "tools": [BASH_TOOL], "messages": task}
    (call,) = (block.model_dump(exclude_none=True) for block in client.messages.create(**asked).content)
    with client.messages.stream(**asked) as events:
        (streamed,) = events.get_final_message().content
    assert call["type"] == "tool_use" and re.fullmatch(r"[a-zA-Z0-9_-]+", call["id"]) and streamed.id == call["id"]

    for handed in (call, {**call, "id": KIMI_ID}):  # (the second: as the gateway handed it out before)
        result = {"type": "tool_result", "tool_use_id": handed["id"], "content": "done"}
        turns: Any = [*task, {"role": "assistant", "content": [handed]}, {"role": "user", "content": [result]}]
        answer = client.messages.create(model="claude", max_tokens=2000, tools=[BASH_TOOL], messages=turns)
        assert answer.content[-1].type == "text"
        sent = last(agents, "anthropic")["json"]["messages"]
        assert sent[1]["content"][0]["id"] == sent[2]["content"][0]["tool_use_id"] == call["id"]
        counted = client.messages.count_tokens(model="claude", tools=[BASH_TOOL], messages=turns)
        assert counted.input_tokens > 0 and last(agents, "anthropic")["json"]["messages"][1]["content"][0] == call
    assert turns[1]["content"][0]["id"] == KIMI_ID  # (the client's own messages are left as they are)


@pytest.mark.parametrize(("model", "provider"), [("claude", "anthropic"), ("bedrock-claude", "bedrock")])
def test_a_tool_loop_gemini_began_thinking_goes_on_on_claude_without_its_unsigned_thinking(
    agents: Running, client: anthropic.Anthropic, model: str, provider: str
) -> None:
    """Turn 1 on Gemini, thinking, calls the tool: its thoughts come back as a thinking block with an empty signature
    (Gemini signs nothing Claude can read). Claude Code, switched to Claude mid-loop, hands it back: it reached
    Anthropic as it was and Bedrock as `reasoningText.signature: ""`, with thinking on and nothing named, and both
    refuse an unsigned thinking block in any turn ("Invalid `signature` in `thinking` block": review). The block is
    left out, and with it thinking, which a tool-use turn without Claude's signed thinking cannot have; both named.
    With thinking off, the block is left out all the same."""
    thinking: Any = {"type": "enabled", "budget_tokens": 1024}
    task: Any = [{"role": "user", "content": TASK}]
    first = client.messages.create(model="gemini", max_tokens=2000, tools=[BASH_TOOL], thinking=thinking, messages=task)
    unsigned, call = (block.model_dump(exclude_none=True) for block in first.content)
    assert unsigned["type"] == "thinking" and unsigned["signature"] == "" and call["type"] == "tool_use"
    result = {"type": "tool_result", "tool_use_id": call["id"], "content": "done"}
    turns: Any = [*task, {"role": "assistant", "content": [unsigned, call]}, {"role": "user", "content": [result]}]
    for wish, named in ((thinking, ["messages.thinking", "thinking"]), ({"type": "disabled"}, ["messages.thinking"])):
        raw = client.messages.with_raw_response.create(
            model=model, max_tokens=2000, tools=[BASH_TOOL], thinking=wish, messages=turns
        )
        assert raw.parse().content[-1].type == "text"
        assert raw.headers["x-gateway-dropped-params"].split(",") == named
        sent = last(agents, provider)["json"]
        assert sent.get("thinking") in (None, {"type": "disabled"})
        assert "thinking" not in sent.get("additionalModelRequestFields", {})
        kinds = [block.get("type", next(iter(block))) for block in sent["messages"][1]["content"]]
        assert kinds in (["tool_use"], ["toolUse"]), "the tool call alone"
    assert turns[1]["content"][0] == unsigned, "the client's messages are not changed"


def test_a_turn_of_thinking_alone_reaches_openai_as_an_empty_answer(
    agents: Running, client: anthropic.Anthropic
) -> None:
    """A turn that was all thinking (an answer cut short while reasoning) has no text and no tool call: OpenAI
    wants an assistant message's content then (null is refused), so it goes as an empty answer."""
    messages: Any = [
        {"role": "user", "content": "Think hard"},
        {"role": "assistant", "content": [{"type": "thinking", "thinking": "Hmm.", "signature": ""}]},
        {"role": "user", "content": "Go on"},
    ]
    raw = client.messages.with_raw_response.create(model="gpt", max_tokens=100, messages=messages)
    assert raw.parse().content[0].type == "text"
    assert last(agents, "openai")["json"]["messages"][1] == {"role": "assistant", "content": ""}


# --- count_tokens and the model list ---------------------------------------------------------------


PDF = "JVBERi0xLjQKJSVFT0Y="  # `%PDF-1.4 %%EOF`, base64
CITED_DOCUMENTS: Any = [
    {
        "type": "document",
        "source": {"type": "base64", "media_type": "application/pdf", "data": PDF},
        "title": "report.pdf",
        "context": "Q3 figures",
        "citations": {"enabled": True},
    },
    {
        "type": "document",
        "source": {"type": "text", "media_type": "text/plain", "data": "The sky is green."},
        "title": "Facts",
        "citations": {"enabled": True},
    },
    {"type": "text", "text": "What colour is the sky?"},
]


def test_bedrock_gets_a_documents_title_context_and_text_and_citations_are_named(
    agents: Running, client: anthropic.Anthropic
) -> None:
    """Bedrock's Converse got every document as `format: pdf`, `name: document-N`, a text document as a bare text
    block, and neither context nor citations, without a word. Citations are named, not sent: their answer
    (`citationsContent`) has no way back to the client through the gateway's form."""
    raw = client.messages.with_raw_response.create(
        model="bedrock-claude", max_tokens=100, messages=[{"role": "user", "content": CITED_DOCUMENTS}]
    )
    assert raw.parse().content[0].type == "text"
    content = last(agents, "bedrock")["json"]["messages"][0]["content"]
    pdf = {"format": "pdf", "name": "report pdf", "source": {"bytes": PDF}, "context": "Q3 figures"}
    assert content[:2] == [
        {"document": pdf},
        {"document": {"format": "txt", "name": "Facts", "source": {"text": "The sky is green."}}},
    ]
    assert raw.headers["x-gateway-dropped-params"] == "messages.document.citations"
    with pytest.raises(anthropic.BadRequestError) as refused:
        client.messages.create(
            model="bedrock-claude",
            max_tokens=100,
            messages=[{"role": "user", "content": CITED_DOCUMENTS}],
            extra_headers={"x-gateway-strict": "true"},
        )
    assert "messages.document.citations" in refused.value.message


@pytest.mark.parametrize(
    ("model", "provider", "named"),
    [
        ("gemini", "gemini", "messages.document.title,messages.document.context,messages.document.citations"),
        # (the PDF's title goes as its file's `filename`)
        ("gpt", "openai", "messages.document.context,messages.document.citations,messages.document.title"),
    ],
)
def test_a_documents_title_context_and_citations_are_named_where_the_provider_has_no_place_for_them(
    agents: Running, client: anthropic.Anthropic, model: str, provider: str, named: str
) -> None:
    """They were lost without a word on every deployment but Anthropic's, even under `x-gateway-strict`."""
    raw = client.messages.with_raw_response.create(
        model=model, max_tokens=100, messages=[{"role": "user", "content": CITED_DOCUMENTS}]
    )
    assert raw.headers["x-gateway-dropped-params"] == named
    assert "citations" not in orjson.dumps(last(agents, provider)["json"]).decode()
    before = len(agents.fakes[provider].state.requests)
    with pytest.raises(anthropic.BadRequestError) as refused:
        client.messages.create(
            model=model,
            max_tokens=100,
            messages=[{"role": "user", "content": CITED_DOCUMENTS}],
            extra_headers={"x-gateway-strict": "true"},
        )
    assert named.replace(",", ", ") in refused.value.message
    assert len(agents.fakes[provider].state.requests) == before


def test_a_document_without_a_title_reaches_openai_with_a_file_name(
    agents: Running, client: anthropic.Anthropic
) -> None:
    """OpenAI requires a `filename` beside `file_data` (its 400 names `file_id`: "Missing required parameter:
    'messages[0].content[0].file.file_id'"), and a Messages document's `title` is optional."""
    document = {"type": "document", "source": {"type": "base64", "media_type": "application/pdf", "data": PDF}}
    raw = client.messages.with_raw_response.create(
        model="gpt",
        max_tokens=50,
        messages=[{"role": "user", "content": [document, {"type": "text", "text": "Sum up"}]}],
    )
    assert raw.parse().content[0].type == "text"
    part = last(agents, "openai")["json"]["messages"][0]["content"][0]
    assert part == {
        "type": "file",
        "file": {"file_data": f"data:application/pdf;base64,{PDF}", "filename": "document.pdf"},
    }
    assert "x-gateway-dropped-params" not in raw.headers


def test_an_openai_reasoning_model_gets_no_temperature_and_top_p_and_they_are_named(
    agents: Running, client: anthropic.Anthropic
) -> None:
    """A Messages client's sampling, valid for Claude, reached o4-mini, which refuses it (OpenAI's 400:
    "Unsupported parameter: 'temperature' is not supported with this model.")."""
    raw = client.messages.with_raw_response.create(
        model="o4",
        max_tokens=200,
        messages=[{"role": "user", "content": "Hi"}],
        extra_body={"temperature": 0.2, "top_p": 0.9},  # (this SDK version has no sampling arguments)
    )
    assert raw.parse().content[0].type == "text"
    sent = last(agents, "openai")["json"]
    assert "temperature" not in sent and "top_p" not in sent and sent["max_completion_tokens"] == 200
    assert raw.headers["x-gateway-dropped-params"] == "temperature,top_p"
    with pytest.raises(anthropic.BadRequestError) as refused:
        client.messages.create(
            model="o4",
            max_tokens=200,
            messages=[{"role": "user", "content": "Hi"}],
            extra_body={"temperature": 0.2},
            extra_headers={"x-gateway-strict": "true"},
        )
    assert "temperature" in refused.value.message
    # The default temperature asks for nothing: it is left out without a word.
    raw = client.messages.with_raw_response.create(
        model="o4", max_tokens=200, messages=[{"role": "user", "content": "Hi"}], extra_body={"temperature": 1}
    )
    assert "temperature" not in last(agents, "openai")["json"] and "x-gateway-dropped-params" not in raw.headers


def test_count_tokens_asks_anthropic_and_gemini_and_estimates_elsewhere(
    agents: Running, client: anthropic.Anthropic
) -> None:
    messages: Any = [{"role": "user", "content": "How many tokens is this?"}]
    counted = client.beta.messages.count_tokens(model="claude", betas=BETAS, system=SYSTEM, messages=messages)
    sent = last(agents, "anthropic")
    assert sent["path"].endswith("/v1/messages/count_tokens") and sent["headers"]["anthropic-beta"].startswith(
        ",".join(BETAS)
    )
    assert sent["json"] == {"model": CLAUDE, "system": SYSTEM, "messages": messages}
    assert counted.input_tokens == fake_anthropic.input_tokens(sent["json"])

    gemini = client.messages.count_tokens(model="gemini", messages=messages)
    request = last(agents, "gemini")
    assert request["method"] == "countTokens" and gemini.input_tokens > 0

    bedrock = client.messages.count_tokens(model="bedrock-claude", system=SYSTEM, messages=messages)
    request = last(agents, "bedrock")
    assert request["path"].endswith("/count-tokens") and request["json"]["input"]["converse"]["messages"] == [
        {"role": "user", "content": [{"text": "How many tokens is this?"}]}
    ]
    assert bedrock.input_tokens == len(orjson.dumps(request["json"]["input"]["converse"])) // 4

    raw = client.messages.with_raw_response.count_tokens(model="gpt", messages=messages)
    assert raw.headers["x-gateway-estimate"] == "true"
    assert raw.parse().input_tokens > 0 and orjson.loads(raw.http_response.content)["estimate"] is True
    # Anthropic failing to count: an estimate, said to be one, rather than an error.
    failed = client.messages.with_raw_response.count_tokens(model="claude-then-gpt", messages=messages)
    assert failed.headers["x-gateway-estimate"] == "true" and failed.headers["x-gateway-route"].endswith("=500")


def test_count_tokens_on_bedrock_counts_the_tools_and_takes_a_tool_history(
    agents: Running, client: anthropic.Anthropic
) -> None:
    """CountTokens takes the Converse request's `toolConfig` (botocore's `ConverseTokensRequest`): without it the
    tools went uncounted, and every tool-use history (each Claude Code turn) was refused with a 400."""
    asked: Any = [{"role": "user", "content": "Run it"}]
    bare = client.messages.count_tokens(model="bedrock-claude", messages=asked)
    with_tools = client.messages.count_tokens(model="bedrock-claude", tools=[BASH_TOOL], messages=asked)
    converse = last(agents, "bedrock")["json"]["input"]["converse"]
    assert converse["toolConfig"]["tools"][0]["toolSpec"]["name"] == BASH_TOOL["name"]
    assert with_tools.input_tokens > bare.input_tokens
    call = {"type": "tool_use", "id": "toolu_1", "name": BASH_TOOL["name"], "input": {"command": "ls"}}
    history: Any = [
        *asked,
        {"role": "assistant", "content": [call]},
        {"role": "user", "content": [{"type": "tool_result", "tool_use_id": "toolu_1", "content": "a.txt"}]},
    ]
    raw = client.messages.with_raw_response.count_tokens(model="bedrock-claude", tools=[BASH_TOOL], messages=history)
    assert "x-gateway-estimate" not in raw.headers
    assert raw.parse().input_tokens == len(orjson.dumps(last(agents, "bedrock")["json"]["input"]["converse"])) // 4


def test_count_tokens_is_not_charged(agents: Running) -> None:
    key = agents.mint(name="counting", budget_usd=1.0)
    with anthropic.Anthropic(base_url=agents.url, api_key=key, max_retries=0) as sdk:
        sdk.messages.count_tokens(model="claude", messages=[{"role": "user", "content": "Hi"}])
        sdk.messages.count_tokens(model="gpt", messages=[{"role": "user", "content": "Hi"}])
    me = httpx.get(f"{agents.url}/v1/key", headers={"authorization": f"Bearer {key}"}).json()
    assert me["spent_usd"] == 0
    # The count Anthropic gave reached a provider: one line, at no cost; the estimate for "gpt" reached none.
    deadline = time.monotonic() + 5
    while True:
        usage = httpx.get(f"{agents.url}/v1/usage", headers={"authorization": f"Bearer {key}"}).json()
        if usage["data"] or time.monotonic() > deadline:
            break
        time.sleep(0.05)
    [row] = usage["data"]
    assert row["requests"] == 1 and row["total_usd"] == 0


def test_a_count_a_provider_made_tells_the_budget_left_as_every_proxied_answer_does(agents: Running) -> None:
    """docs/interface.md: `x-gateway-budget-remaining-usd` rides on every proxied answer where the key (or an
    ancestor) has a budget. A count Anthropic or Gemini made carried its provider, route, cost and `x-ratelimit-*`,
    but a key with $1 was told no budget: the count reserves nothing, so none was read (found by review). An
    estimate reached no provider, and reads none."""
    key = agents.mint(name="counted", budget_usd=1.0, rpm=100)
    messages: Any = [{"role": "user", "content": "Hi"}]
    with anthropic.Anthropic(base_url=agents.url, api_key=key, max_retries=0) as sdk:
        for model, provider in (("claude", "anthropic"), ("gemini", "gemini")):
            raw = sdk.messages.with_raw_response.count_tokens(model=model, messages=messages)
            assert raw.parse().input_tokens > 0 and raw.headers["x-gateway-provider"] == provider
            assert "x-gateway-route" in raw.headers and "x-ratelimit-limit-requests" in raw.headers
            assert raw.headers.get("x-gateway-budget-remaining-usd") == "1", dict(raw.headers)
        estimated = sdk.messages.with_raw_response.count_tokens(model="gpt", messages=messages)
    assert estimated.headers["x-gateway-estimate"] == "true"
    assert "x-gateway-budget-remaining-usd" not in estimated.headers


def test_count_tokens_a_provider_makes_is_held_to_the_chains_rpm(agents: Running) -> None:
    """Counting was never admitted, yet it calls the provider on the operator's key, and Anthropic limits its
    counting per organisation: a key with its rpm spent had 20 of 20 counts answered and sent upstream. A count
    a provider makes now takes a request of the chain's rpm (a parent's here; no budget, no tpm); one the
    gateway estimates itself calls no provider and is not held."""
    parent = agents.mint(name="counted", rpm=2, budget_usd=0.000001)
    parent_id = parent.split("_")[1]
    key = agents.mint(name="counting", parent_id=parent_id, ancestors=[parent_id])
    messages: Any = [{"role": "user", "content": "Hi"}]
    fresh_minute()
    sent = len(agents.fakes["anthropic"].state.requests)
    with anthropic.Anthropic(base_url=agents.url, api_key=key, max_retries=0) as sdk:
        assert sdk.messages.count_tokens(model="claude", messages=messages).input_tokens > 0  # (budget: not drawn)
        second = sdk.messages.with_raw_response.count_tokens(model="claude", messages=messages)
        assert second.parse().input_tokens > 0
        with pytest.raises(anthropic.RateLimitError) as refused:
            sdk.messages.count_tokens(model="claude", messages=messages)
        estimated = sdk.messages.with_raw_response.count_tokens(model="gpt", messages=messages)
    assert len(agents.fakes["anthropic"].state.requests) == sent + 2
    body = refused.value.response.json()
    assert body["type"] == "error" and body["error"]["type"] == "rate_limit_error"
    assert body["error"]["message"].startswith("a parent key's rate limit rpm=2 per minute reached")
    assert int(refused.value.response.headers["retry-after"]) >= 1
    assert estimated.headers["x-gateway-estimate"] == "true"
    # The counted answer says where the limit stands, as any answer under a limit does (it said nothing).
    limits = {name: value for name, value in second.headers.items() if name.startswith("x-ratelimit-")}
    assert limits == {
        "x-ratelimit-limit-requests": "2",
        "x-ratelimit-remaining-requests": "0",
        "x-ratelimit-reset-requests": second.headers["x-ratelimit-reset-requests"],
    }
    assert "x-ratelimit-limit-requests" not in estimated.headers  # (not counted: no limit applied)


def test_count_tokens_keeps_to_the_keys_models(agents: Running) -> None:
    key = agents.mint(name="narrow", models=["gpt"])
    with anthropic.Anthropic(base_url=agents.url, api_key=key, max_retries=0) as sdk:
        with pytest.raises(anthropic.PermissionDeniedError):
            sdk.messages.count_tokens(model="claude", messages=[{"role": "user", "content": "Hi"}])
        models = sdk.models.list()
    assert [m.id for m in models.data] == ["gpt"]


def test_models_come_in_anthropics_shape_for_anthropic_clients(client: anthropic.Anthropic, agents: Running) -> None:
    page = client.models.list(limit=2)
    assert [m.id for m in page.data] == ["azure-gpt", "bedrock-claude"] and page.has_more
    assert page.data[0].type == "model" and page.data[0].display_name == "azure-gpt"
    following = client.models.list(limit=2, after_id="claude-cut")
    assert [m.id for m in following.data] == ["claude-or-gpt", "claude-overloaded"]
    earlier = client.models.list(limit=2, before_id="claude-cut")
    assert [m.id for m in earlier.data] == ["bedrock-claude", "claude"] and earlier.has_more
    key = client.api_key
    openai_shape = httpx.get(f"{agents.url}/v1/models", headers={"authorization": f"Bearer {key}"}).json()
    assert openai_shape["object"] == "list" and openai_shape["data"][0]["object"] == "model"


def test_gemini_3s_call_signature_comes_back_with_the_call(agents: Running, client: anthropic.Anthropic) -> None:
    ask: Any = [{"role": "user", "content": TASK}]
    first = client.messages.create(model="gemini-3", max_tokens=500, tools=[BASH_TOOL], messages=ask)
    call = first.content[0]
    assert call.type == "tool_use" and call.name == "Bash"
    history: Any = [
        *ask,
        {"role": "assistant", "content": [{"type": "tool_use", "id": call.id, "name": "Bash", "input": call.input}]},
        {"role": "user", "content": [{"type": "tool_result", "tool_use_id": call.id, "content": "done"}]},
    ]
    final = client.messages.create(model="gemini-3", max_tokens=500, tools=[BASH_TOOL], messages=history)
    assert final.content[0].type == "text"
    parts = last(agents, "gemini")["json"]["contents"][1]["parts"]
    assert parts[0]["thoughtSignature"] == fake_gemini.CALL_SIGNATURE


def test_the_anthropic_sdk_reads_the_gateways_request_id(agents: Running) -> None:
    """As Anthropic answers: `request-id`, which the SDK keeps as `_request_id` (it was None), on a message, a
    stream and an error, the same id as `x-request-id` and the ledger's."""
    key = agents.mint(name="ids")
    with anthropic.Anthropic(base_url=agents.url, api_key=key, max_retries=0) as sdk:
        message = sdk.messages.create(model="claude", max_tokens=16, messages=[{"role": "user", "content": "Hi"}])
        assert message._request_id is not None and message._request_id.startswith("req_")
        with sdk.messages.stream(model="claude", max_tokens=16, messages=[{"role": "user", "content": "Hi"}]) as stream:
            stream.get_final_message()
            assert stream.response.headers["request-id"] == stream.response.headers["x-request-id"]
        with pytest.raises(anthropic.NotFoundError) as missing:
            sdk.messages.create(model="no-such-model", max_tokens=16, messages=[{"role": "user", "content": "Hi"}])
        assert missing.value.request_id is not None and missing.value.request_id.startswith("req_")
    assert message._request_id in {line.request_id for line in agents.ledger(key)}


# --- the seal is read only where an answer is translated ----------------------------------------------------------


def searching_claude(request: httpx.Request) -> httpx.Response:
    """Anthropic's answer to a request offering its web search, which it did not run."""
    message: Any = {"id": "msg_1", "type": "message", "role": "assistant", "model": "m-x", "stop_reason": "end_turn"}
    message |= {"content": [{"type": "text", "text": "Hi"}], "stop_sequence": None}
    message["usage"] = {"input_tokens": 5, "output_tokens": 1, "server_tool_use": {"web_search_requests": 0}}
    return httpx.Response(200, content=orjson.dumps(message), headers={"content-type": "application/json"})


async def test_a_request_passed_through_to_claude_with_web_search_reads_no_seal() -> None:
    """Gemini 3's own parts of a search ride sealed in a translated answer's search blocks; a request offering the
    search read the seal's key from the store (and made it, the first time) before its deployment was known, so every
    one passed through to Claude, which seals its own, did too, waiting on a failing store and logging it each time
    (merge review). Now only a translated answer reads it."""
    from handler.api.reasoning_seal import SEAL_SECRET_ID
    from tests.support.inprocess import serve

    anthropic_api = {"type": "anthropic", "api_key": "env:OPENAI_API_KEY", "base_url": "http://up", "web_search": True}
    models = {"m": {"deployments": [{"provider": "openai", "model": "m-x"}], "price": {"input": 1, "output": 2}}}
    served = await serve(searching_claude, models, provider=anthropic_api, priced_options={"web_search_usd": 0.01})
    search = {"type": "web_search_20250305", "name": "web_search", "max_uses": 2}
    asked = [{"role": "user", "content": "What is new today?"}]
    answer = await served.post("/v1/messages", {"model": "m", "max_tokens": 100, "messages": asked, "tools": [search]})
    assert answer.status_code == 200, answer.text
    kept = await served.gateway.store.get_response(SEAL_SECRET_ID)
    await served.gateway.aclose()
    assert kept is None, "the seal's key was made for requests that sealed nothing"
