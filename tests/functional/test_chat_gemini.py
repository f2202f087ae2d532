"""The official openai SDK against the gateway, with the fake Gemini API behind it."""

from __future__ import annotations

import base64
import json
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import anthropic
import httpx
import openai
import orjson
import pytest

from adapters.providers.params import SIGNATURE_MARK, call_signature, wire_call_id
from adapters.providers.registry import REGISTRY
from handler.config import parse_config
from tests.fakes import gemini as gemini_fake
from tests.fakes.gemini import CALL_SIGNATURE, TEXT
from tests.functional.conftest import Running, anthropic_client, serve_gateway
from tests.support.servers import ServerThread
from tests.support.tools import (
    MCP_TOOL_NAME,
    allowed_tools,
    called_names,
    mcp_tool_use,
    named_call,
    named_tool,
)

pytestmark = pytest.mark.skipif("gemini" not in REGISTRY, reason="no gemini adapter registered")

WEATHER_TOOL: Any = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "Weather in a city",
        "parameters": {
            "type": "object",
            "properties": {"city": {"type": "string"}},
            "required": ["city"],
            "additionalProperties": False,
        },
    },
}
HI: Any = [{"role": "user", "content": "Hi"}]
PRICE = {"input": 1, "output": 2}


_clients: list[openai.OpenAI] = []


@pytest.fixture(autouse=True)
def _close_clients() -> Iterator[None]:
    """Close every SDK client after its test, so no keep-alive socket outlives the servers."""
    yield
    while _clients:
        _clients.pop().close()


def client(running: Running, key: str) -> openai.OpenAI:
    oa = openai.OpenAI(base_url=f"{running.url}/v1", api_key=key, max_retries=0)
    _clients.append(oa)
    return oa


def sent(running: Running) -> dict[str, Any]:
    requests: list[dict[str, Any]] = running.fakes["gemini"].state.requests
    return requests[-1]


def test_completion_translates_both_ways(running: Running, key: str) -> None:
    raw = client(running, key).chat.completions.with_raw_response.create(model="gemini-2.5-flash", messages=HI)
    completion = raw.parse()
    assert completion.choices[0].message.content == TEXT
    assert completion.choices[0].finish_reason == "stop"
    assert completion.usage is not None and completion.usage.completion_tokens == 7  # 5 answer + 2 thinking
    assert raw.headers["x-gateway-route"] == "gemini/gemini-2.5-flash@global=200"
    upstream = sent(running)
    assert upstream["path"].endswith("/v1beta/models/gemini-2.5-flash:generateContent")
    assert upstream["headers"]["x-goog-api-key"] == "test-gemini-key"
    assert key not in str(upstream) and "key=" not in upstream["query"]
    assert upstream["json"]["contents"] == [{"role": "user", "parts": [{"text": "Hi"}]}]
    (line,) = running.ledger(key)
    assert (line.output_tokens, line.reasoning_tokens) == (7, 2), "thinking reaches the ledger as reasoning"


def test_system_messages_reach_gemini_as_system_instruction(running: Running, key: str) -> None:
    messages: Any = [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": "Hi"},
        {"role": "user", "content": "Still there?"},
    ]
    client(running, key).chat.completions.create(
        model="gemini-2.5-flash", messages=messages, max_tokens=50, stop="END", temperature=0.5
    )
    body = sent(running)["json"]
    assert body["systemInstruction"] == {"parts": [{"text": "Be brief."}]}
    assert body["contents"] == [{"role": "user", "parts": [{"text": "Hi"}, {"text": "Still there?"}]}]
    assert body["generationConfig"] == {"maxOutputTokens": 50, "temperature": 0.5, "stopSequences": ["END"]}


def test_stream_assembles_text_and_ends_with_usage(running: Running, key: str) -> None:
    stream = client(running, key).chat.completions.create(
        model="gemini-2.5-flash", messages=HI, stream=True, stream_options={"include_usage": True}
    )
    chunks = list(stream)
    assert chunks[0].choices[0].delta.role == "assistant"
    assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices) == TEXT
    assert [c.choices[0].finish_reason for c in chunks if c.choices][-1] == "stop"
    last = chunks[-1]
    assert last.choices == [] and last.usage is not None and last.usage.completion_tokens == 7
    assert sent(running)["path"].endswith(":streamGenerateContent") and sent(running)["query"] == "alt=sse"


@pytest.mark.parametrize("stream", [False, True], ids=["whole", "stream"])
def test_n_answers_with_each_candidate_and_a_stop_sequence_ends_them(running: Running, key: str, stream: bool) -> None:
    """`n` is Gemini's `candidateCount` and `stop` its `stopSequences`: each candidate comes back as a choice of its
    index, its text ended before the stop sequence, its tokens in the usage (the fake answered one candidate, the
    whole text, whatever was asked: it hid how the gateway reads several)."""
    settings: Any = {"model": "gemini-2.5-flash", "messages": HI, "n": 2, "stop": [" fake"]}
    oa = client(running, key)
    if stream:
        chunks = list(oa.chat.completions.create(**settings, stream=True, stream_options={"include_usage": True}))
        texts = ["".join(c.choices[0].delta.content or "" for c in chunks if c.choices and c.choices[0].index == i)
                 for i in (0, 1)]  # fmt: skip
        reasons = [c.choices[0].finish_reason for c in chunks if c.choices and c.choices[0].finish_reason]
        usage = chunks[-1].usage
    else:
        completion = oa.chat.completions.create(**settings)
        texts = [choice.message.content or "" for choice in sorted(completion.choices, key=lambda c: c.index)]
        reasons = [choice.finish_reason for choice in completion.choices]
        usage = completion.usage
    assert texts == ["Hello from", "Hello from"] and reasons == ["stop", "stop"]
    assert usage is not None and usage.completion_tokens == 14  # (5 answer and 2 thinking tokens, twice)
    config = sent(running)["json"]["generationConfig"]
    assert (config["candidateCount"], config["stopSequences"]) == (2, [" fake"])


def test_tools_return_tool_calls_stream_and_not(running: Running, key: str) -> None:
    oa = client(running, key)
    messages: Any = [{"role": "user", "content": "Weather in Paris?"}]
    completion = oa.chat.completions.create(
        model="gemini-2.5-flash", messages=messages, tools=[WEATHER_TOOL], tool_choice="required"
    )
    assert completion.choices[0].finish_reason == "tool_calls"
    calls = completion.choices[0].message.tool_calls or []
    call: Any = calls[0]
    assert call.function.name == "get_weather" and call.function.arguments == '{"city":"Paris"}'
    tools = sent(running)["json"]["tools"][0]["functionDeclarations"]
    assert tools[0]["name"] == "get_weather" and tools[0]["parametersJsonSchema"]["required"] == ["city"]
    assert sent(running)["json"]["toolConfig"] == {"functionCallingConfig": {"mode": "ANY"}}

    chunks = list(
        oa.chat.completions.create(
            model="gemini-2.5-flash",
            messages=messages,
            tools=[WEATHER_TOOL],
            tool_choice={"type": "function", "function": {"name": "get_weather"}},
            stream=True,
        )
    )
    deltas = [tc for c in chunks if c.choices for tc in c.choices[0].delta.tool_calls or []]
    assert len(deltas) == 1 and deltas[0].function is not None
    assert deltas[0].function.name == "get_weather" and deltas[0].function.arguments == '{"city":"Paris"}'
    assert [c.choices[0].finish_reason for c in chunks if c.choices][-1] == "tool_calls"

    # the tool result goes back as a functionResponse named after the call
    answer: Any = [
        *messages,
        {"role": "assistant", "tool_calls": [call.model_dump()]},
        {"role": "tool", "tool_call_id": call.id, "content": "21C"},
    ]
    assert oa.chat.completions.create(model="gemini-2.5-flash", messages=answer).choices[0].message.content == TEXT
    contents = sent(running)["json"]["contents"]
    assert contents[1] == {
        "role": "model",
        "parts": [{"functionCall": {"id": call.id, "name": "get_weather", "args": {"city": "Paris"}}}],
    }
    assert contents[2] == {
        "role": "user",
        "parts": [{"functionResponse": {"id": call.id, "name": "get_weather", "response": {"result": "21C"}}}],
    }


def test_parallel_calls_answered_out_of_order_reach_gemini_paired_with_their_results(
    running: Running, key: str
) -> None:
    """OpenAI pairs a tool message with its call by `tool_call_id`, so a client may answer parallel calls in the
    order they finished; Gemini pairs them by position: Paris's weather must not come back as Rome's."""
    calls: Any = [
        {"id": "call_paris", "type": "function", "function": {"name": "get_weather", "arguments": '{"city":"Paris"}'}},
        {"id": "call_rome", "type": "function", "function": {"name": "get_weather", "arguments": '{"city":"Rome"}'}},
    ]
    messages: Any = [
        {"role": "user", "content": "Weather in Paris and Rome?"},
        {"role": "assistant", "content": None, "tool_calls": calls},
        {"role": "tool", "tool_call_id": "call_rome", "content": "25C in Rome"},
        {"role": "tool", "tool_call_id": "call_paris", "content": "18C in Paris"},
    ]
    answer = client(running, key).chat.completions.create(
        model="gemini-2.5-flash", messages=messages, tools=[WEATHER_TOOL]
    )
    assert answer.choices[0].message.content == (
        'get_weather({"city":"Paris"}) = 18C in Paris; get_weather({"city":"Rome"}) = 25C in Rome'
    )


def test_a_thought_signature_sent_back_in_extra_content_reaches_gemini(running: Running, key: str) -> None:
    """A client that got the signature the way Google's OpenAI-compatible API hands it out (a tool call's
    `extra_content.google.thought_signature`, docs/interface.md) sends it back so: Gemini gets it as the
    call's `thoughtSignature`, not a stand-in."""
    signed: Any = {
        "id": "call_1",
        "type": "function",
        "function": {"name": "get_weather", "arguments": '{"city": "Paris"}'},
        "extra_content": {"google": {"thought_signature": CALL_SIGNATURE}},
    }
    messages: Any = [
        {"role": "user", "content": "Weather in Paris?"},
        {"role": "assistant", "content": None, "tool_calls": [signed]},
        {"role": "tool", "tool_call_id": "call_1", "content": "21C"},
    ]
    client(running, key).chat.completions.create(model="gemini-2.5-flash", messages=messages, tools=[WEATHER_TOOL])
    call = sent(running)["json"]["contents"][1]["parts"][0]
    assert call == {
        "functionCall": {"id": "call_1", "name": "get_weather", "args": {"city": "Paris"}},
        "thoughtSignature": CALL_SIGNATURE,
    }


GEMINI_NAME = re.compile(r"[a-zA-Z_][a-zA-Z0-9_.:-]{0,63}")  # what Gemini takes for a function's name


def declared_names(running: Running) -> list[str]:
    return [declaration["name"] for declaration in sent(running)["json"]["tools"][0]["functionDeclarations"]]


@pytest.mark.parametrize("stream", [False, True], ids=["whole", "stream"])
@pytest.mark.parametrize("name", [MCP_TOOL_NAME, "3d_render"], ids=["long", "digit-first"])
def test_a_function_name_gemini_refuses_goes_as_an_alias_and_the_call_comes_back_by_the_clients_name(
    running: Running, key: str, name: str, stream: bool
) -> None:
    """Gemini takes a function's name of at most 64 characters, a letter or `_` first: Claude Code's MCP tools (83
    characters here), and a name OpenAI and Anthropic take that opens with a digit, went as written, and Gemini refused
    the whole request. The function, and the choice of it, now go by an alias; the call comes back by the client's
    name."""
    choice: Any = {"type": "function", "function": {"name": name}}
    settings: Any = {"model": "gemini-2.5-flash", "messages": HI, "tools": [named_tool(name)], "tool_choice": choice}
    if stream:
        chunks = list(client(running, key).chat.completions.create(**settings, stream=True))
        calls = [d.function for c in chunks if c.choices for d in c.choices[0].delta.tool_calls or [] if d.function]
    else:
        calls = [
            c.function
            for c in client(running, key).chat.completions.create(**settings).choices[0].message.tool_calls or []
        ]  # type: ignore[union-attr]
    assert [(call.name, call.arguments) for call in calls] == [(name, '{"city":"Paris"}')]
    (alias,) = declared_names(running)
    assert GEMINI_NAME.fullmatch(alias) and alias != name
    assert sent(running)["json"]["toolConfig"]["functionCallingConfig"]["allowedFunctionNames"] == [alias]


@pytest.mark.parametrize("stream", [False, True], ids=["whole", "stream"])
def test_a_messages_clients_mcp_tool_comes_back_by_its_name_past_geminis_limit(
    running: Running, key: str, stream: bool
) -> None:
    use = mcp_tool_use(anthropic_client(running, key), "gemini-2.5-flash", stream)
    assert use.type == "tool_use" and use.name == MCP_TOOL_NAME and use.input == {"city": "Paris"}
    assert GEMINI_NAME.fullmatch(declared_names(running)[0])


@pytest.mark.parametrize("stream", [False, True], ids=["whole", "stream"])
def test_a_responses_clients_long_function_name_comes_back_as_its_own_from_gemini(
    running: Running, key: str, stream: bool
) -> None:
    tool = {"type": "function", **named_tool(MCP_TOOL_NAME)["function"]}
    body = {"model": "gemini-2.5-flash", "input": "Hi", "tools": [tool], "tool_choice": "required", "stream": stream}
    answer = httpx.post(f"{running.url}/v1/responses", json=body, headers={"authorization": f"Bearer {key}"})
    assert answer.status_code == 200, answer.text
    if stream:
        done = [json.loads(line[6:]) for line in answer.text.splitlines() if line.startswith("data: {")]
        output = next(event["response"]["output"] for event in done if event["type"] == "response.completed")
        assert MCP_TOOL_NAME in answer.text and declared_names(running)[0] not in answer.text  # (no alias shown)
    else:
        output = answer.json()["output"]
    assert [item["name"] for item in output if item["type"] == "function_call"] == [MCP_TOOL_NAME]


def test_a_call_of_a_long_named_function_and_its_response_go_by_its_alias(running: Running, key: str) -> None:
    """The client sends its call and the result back by its own name: Gemini gets the alias the function is declared
    by, in the call and in the `functionResponse`."""
    history: Any = [
        *HI,
        {"role": "assistant", "content": None, "tool_calls": [named_call(MCP_TOOL_NAME)]},
        {"role": "tool", "tool_call_id": "call_1", "content": "21C"},
    ]
    oa = client(running, key)
    answer = oa.chat.completions.create(model="gemini-2.5-flash", messages=history, tools=[named_tool(MCP_TOOL_NAME)])
    assert answer.choices[0].message.content == TEXT
    (alias,) = declared_names(running)
    contents = sent(running)["json"]["contents"]
    assert contents[1]["parts"][0]["functionCall"]["name"] == alias
    assert contents[2]["parts"][0]["functionResponse"]["name"] == alias


def test_two_long_names_alike_for_64_characters_are_two_functions(running: Running, key: str) -> None:
    """Two MCP tools whose names differ past the 64th character get two aliases, and the one chosen is called."""
    first, second = MCP_TOOL_NAME, MCP_TOOL_NAME + "AndAuthor"
    choice: Any = {"type": "function", "function": {"name": second}}
    answer = client(running, key).chat.completions.create(
        model="gemini-2.5-flash", messages=HI, tools=[named_tool(first), named_tool(second)], tool_choice=choice
    )
    assert [call.function.name for call in answer.choices[0].message.tool_calls or []] == [second]  # type: ignore[union-attr]
    aliases = declared_names(running)
    assert len(set(aliases)) == 2 and all(GEMINI_NAME.fullmatch(alias) for alias in aliases)


def test_dropped_parameters_are_named(running: Running, key: str) -> None:
    raw = client(running, key).chat.completions.with_raw_response.create(
        model="gemini-2.5-flash", messages=HI, logit_bias={"1": 1}, user="u-1"
    )
    assert set(raw.headers["x-gateway-dropped-params"].split(",")) == {"logit_bias", "user"}


def test_a_strict_schemas_keywords_gemini_does_not_enforce_are_named_and_refused_under_strict(
    running: Running, key: str
) -> None:
    """`responseJsonSchema` constrains an answer by the keywords Gemini's reference lists (`type`, `properties`,
    `enum`, `minimum`, `items`, `anyOf`, `$ref`, ...) and ignores the others. A strict format's `pattern`,
    `minLength`, `uniqueItems`, `multipleOf`, `exclusiveMinimum` went as written with nothing named, even under
    `x-gateway-strict`. The schema still goes whole, and what Gemini leaves unenforced is named, once each (a
    property named like a keyword, an annotation like `$schema`, are not); a 400 under `x-gateway-strict`."""
    schema: Any = {
        "$schema": "https://json-schema.org/draft/2020-12/schema",
        "type": "object",
        "properties": {
            "code": {"type": "string", "pattern": "^[A-Z]{3}$", "minLength": 3, "maxLength": 3},
            "tags": {"type": "array", "items": {"type": "string", "pattern": "^#"}, "uniqueItems": True},
            "qty": {"anyOf": [{"type": "integer", "multipleOf": 5, "exclusiveMinimum": 0}, {"type": "null"}]},
            "pattern": {"$ref": "#/$defs/shape"},
        },
        "$defs": {"shape": {"type": "object", "properties": {"x": {"type": "number"}}, "minProperties": 1}},
        "required": ["code", "tags", "qty", "pattern"],
        "additionalProperties": False,
    }
    fmt: Any = {"type": "json_schema", "json_schema": {"name": "order", "schema": schema, "strict": True}}
    raw = client(running, key).chat.completions.with_raw_response.create(
        model="gemini-2.5-flash", messages=HI, response_format=fmt
    )
    assert json.loads(raw.parse().choices[0].message.content or "")["code"] == "Paris"
    unenforced = ("exclusiveMinimum", "maxLength", "minLength", "minProperties", "multipleOf", "pattern", "uniqueItems")
    named = raw.headers["x-gateway-dropped-params"].split(",")
    assert named == [f"response_format.json_schema.schema[{keyword}]" for keyword in unenforced]
    assert sent(running)["json"]["generationConfig"]["responseJsonSchema"] == schema
    requests = running.fakes["gemini"].state.requests
    before = len(requests)
    with pytest.raises(openai.BadRequestError) as refused:
        client(running, key).chat.completions.create(
            model="gemini-2.5-flash", messages=HI, response_format=fmt, extra_headers={"x-gateway-strict": "true"}
        )
    assert refused.value.param is not None and refused.value.param.startswith("response_format.json_schema.schema[")
    assert len(requests) == before
    # Without `strict` nothing was promised beyond what Gemini enforces; supported keywords alone name nothing.
    supported = {"type": "object", "properties": {"x": {"type": "number", "minimum": 0}}, "required": ["x"]}
    loose: Any = {"type": "json_schema", "json_schema": {"name": "order", "schema": schema}}
    plain: Any = {"type": "json_schema", "json_schema": {"name": "x", "schema": supported, "strict": True}}
    for format_ in (loose, plain):
        raw = client(running, key).chat.completions.with_raw_response.create(
            model="gemini-2.5-flash", messages=HI, response_format=format_, extra_headers={"x-gateway-strict": "true"}
        )
        assert raw.parse().choices[0].message.content and "x-gateway-dropped-params" not in raw.headers


def test_penalties_gemini_2_5_refuses_are_dropped_and_named(running: Running, key: str) -> None:
    """Gemini 2.5 answers a non-zero penalty with 400 INVALID_ARGUMENT "Penalty is not enabled for
    models/gemini-2.5-flash"; the request is answered without them, and they are named. A 0 asks for nothing."""
    raw = client(running, key).chat.completions.with_raw_response.create(
        model="gemini-2.5-flash", messages=HI, presence_penalty=0.5, frequency_penalty=0.3
    )
    assert raw.parse().choices[0].message.content == TEXT
    assert set(raw.headers["x-gateway-dropped-params"].split(",")) == {"presence_penalty", "frequency_penalty"}
    config = sent(running)["json"].get("generationConfig") or {}
    assert "presencePenalty" not in config and "frequencyPenalty" not in config
    raw = client(running, key).chat.completions.with_raw_response.create(
        model="gemini-2.5-flash", messages=HI, presence_penalty=0
    )
    assert raw.parse().choices[0].message.content == TEXT and "x-gateway-dropped-params" not in raw.headers


@pytest.mark.parametrize("stream", [False, True], ids=["whole", "stream"])
def test_high_effort_under_a_small_cap_still_answers(running: Running, key: str, stream: bool) -> None:
    """Gemini counts its thoughts against `maxOutputTokens`: high effort's 16,384 tokens of thinking under a cap of
    1,000 were thought to the cap, and the answer came back empty, cut off (`finish_reason: length`). Thinking
    leaves the answer its room, as Claude's does: half of a cap this small."""
    sdk = client(running, key)
    asked: Any = {"model": "gemini-2.5-flash", "messages": HI, "max_tokens": 1000, "reasoning_effort": "high"}
    if stream:
        chunks = list(sdk.chat.completions.create(stream=True, **asked))
        text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
        finish = next(c.choices[0].finish_reason for c in chunks if c.choices and c.choices[0].finish_reason)
    else:
        choice = sdk.chat.completions.create(**asked).choices[0]
        text, finish = choice.message.content or "", choice.finish_reason
    assert (text, finish) == (TEXT, "stop")
    config = sent(running)["json"]["generationConfig"]
    assert config["thinkingConfig"] == {"thinkingBudget": 500} and config["maxOutputTokens"] == 1000


def test_a_conversation_with_nothing_to_send_is_refused_before_the_upstream(running: Running, key: str) -> None:
    recorded = running.fakes["gemini"].state.requests
    before = len(recorded)
    with pytest.raises(openai.BadRequestError) as rejected:
        client(running, key).chat.completions.create(
            model="gemini-2.5-flash", messages=[{"role": "system", "content": "Only a system prompt."}]
        )
    assert "at least one user or assistant message" in rejected.value.message
    assert len(recorded) == before


# --- fault models, on a gateway of their own (the shared config has one Gemini model) -----------

# The finish reasons the fake ends an empty candidate with (`ends-<reason>`): Gemini's tool loop cut short, a
# thought signature missing, a reason that says nothing, an image withheld.
ENDINGS = ("too-many-tool-calls", "missing-thought-signature", "other", "image-other")
# Reasons of Gemini's for no answer that a `said-ends-` deployment gives after its preamble.
SAID_ENDINGS = ("malformed-function-call", "too-many-tool-calls")


@pytest.fixture(scope="module")
def faulty(
    upstream: tuple[ServerThread, dict[str, Any]], tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Running]:
    server, fakes = upstream
    provider = {"provider": "gemini"}
    data = {
        "gateway": {"timeouts": {"connect": 2, "first_byte": 1.5, "between_chunks": 1.5}},
        "providers": {
            "gemini": {"type": "gemini", "api_key": "env:GEMINI_API_KEY", "base_url": f"{server.url}/gemini"}
        },
        "models": {
            "gemini-ok": {"deployments": [{**provider, "model": "gemini-2.5-flash"}], "price": PRICE},
            # No price: the built-in table's (audio input at $1.00 a million, text at $0.30).
            "gemini-table": {"deployments": [{**provider, "model": "gemini-2.5-flash"}]},
            "gemini-limited": {
                "deployments": [{**provider, "model": "fail-429"}],
                "price": PRICE,
                "fallbacks": ["gemini-ok"],
            },
            "gemini-broken": {"deployments": [{**provider, "model": "fail-500"}], "price": PRICE},
            "gemini-rejects": {"deployments": [{**provider, "model": "fail-400"}], "price": PRICE},
            "gemini-garbage": {
                "deployments": [{**provider, "model": "bad-json"}],
                "price": PRICE,
                "fallbacks": ["gemini-ok"],
            },
            "gemini-miscalls": {
                "deployments": [{**provider, "model": "malformed-call"}],
                "price": PRICE,
                "fallbacks": ["gemini-ok"],
            },
            "gemini-miscalls-alone": {"deployments": [{**provider, "model": "malformed-call"}], "price": PRICE},
            # A candidate without content ending with each of `ENDINGS`, with the working model as fallback, and
            # alone (a deployment for whole answers and one for streams: each test's failures open no breaker).
            **{
                f"gemini-{ending}": {
                    "deployments": [{**provider, "model": f"ends-{ending}"}],
                    "price": PRICE,
                    "fallbacks": ["gemini-ok"],
                }
                for ending in ENDINGS
            },
            **{
                f"gemini-said-{ending}": {
                    "deployments": [{**provider, "model": f"said-ends-{ending}"}],
                    "price": PRICE,
                    "fallbacks": ["gemini-ok"],
                }
                for ending in SAID_ENDINGS
            },
            **{
                f"gemini-{ending}-alone-{way}": {
                    "deployments": [{**provider, "model": f"ends-{ending}.{way}"}],
                    "price": PRICE,
                }
                for ending in ENDINGS
                for way in ("whole", "stream")
            },
            "gemini-embedding-001": {
                "kind": "embedding",
                "deployments": [{**provider, "model": "gemini-embedding-001"}],
                "price": {"input": 0.15},
            },
            # (priced so that a few hundred tokens are cents, against a budget of a few cents)
            "gemini-embedding-dear": {
                "kind": "embedding",
                "deployments": [{**provider, "model": "gemini-embedding-001"}],
                "price": {"input": 100.0},
            },
        },
    }
    store_url = f"sqlite:///{Path(tmp_path_factory.mktemp('gemini-store')) / 'gateway.db'}"
    running, gateway_server = serve_gateway(parse_config(data, set(REGISTRY)), store_url, server, fakes)
    yield running
    gateway_server.stop()


def test_rate_limit_falls_back_and_bad_json_fails_over(faulty: Running) -> None:
    oa = client(faulty, faulty.mint(name="gemini-faults"))
    raw = oa.chat.completions.with_raw_response.create(model="gemini-limited", messages=HI)
    assert raw.parse().choices[0].message.content == TEXT
    route = raw.headers["x-gateway-route"]
    assert route.startswith("gemini/fail-429@global=429") and route.endswith("gemini/gemini-2.5-flash@global=200")
    raw = oa.chat.completions.with_raw_response.create(model="gemini-garbage", messages=HI)
    assert raw.parse().choices[0].message.content == TEXT
    assert raw.headers["x-gateway-route"].startswith("gemini/bad-json@global=invalid_json")


def billed_with_the_fallback(running: Running, failed_output: int = 0) -> float:
    """What Gemini billed for the last two requests, an attempt that failed and the fallback that answered: both
    prompts (the fake counts a prompt's bytes / 4), the failed attempt's `failed_output` tokens, and the answer's 7
    (5, and 2 of thinking)."""
    failed, answered = (r["json"] for r in running.fakes["gemini"].state.requests[-2:])
    prompts = [max(1, len(orjson.dumps(r["contents"])) // 4) for r in (failed, answered)]
    return (sum(prompts) * PRICE["input"] + (failed_output + 7) * PRICE["output"]) / 1e6


@pytest.mark.parametrize("stream", [False, True], ids=["whole", "stream"])
def test_an_invalid_function_call_fails_over_and_its_billed_prompt_is_charged(faulty: Running, stream: bool) -> None:
    """Gemini's `MALFORMED_FUNCTION_CALL` (a call it could not parse: no content, its prompt billed) came back as an
    empty answer with `finish_reason: stop`, a clean success to the client and the ledger (found by review). Now
    it is the provider's malformed answer: another deployment is tried, and what Gemini billed is on the line."""
    key = faulty.mint(name="gemini-miscalls")
    oa = client(faulty, key)
    tools: Any = [{"type": "function", "function": {"name": "lookup", "parameters": {"type": "object"}}}]
    if stream:
        with oa.chat.completions.with_streaming_response.create(
            model="gemini-miscalls", messages=HI, tools=tools, stream=True
        ) as streamed:
            route = streamed.headers["x-gateway-route"]
            text = "".join(c.choices[0].delta.content or "" for c in streamed.parse() if c.choices)
    else:
        raw = oa.chat.completions.with_raw_response.create(model="gemini-miscalls", messages=HI, tools=tools)
        route, text = raw.headers["x-gateway-route"], raw.parse().choices[0].message.content
    assert route.startswith("gemini/malformed-call@global=invalid_response") and route.endswith("=200")
    assert text == TEXT
    # (A stream's miscall was not charged: its error carried no usage; it does, from the event that brought it.)
    [line] = faulty.ledger(key)
    assert line.cost_usd == pytest.approx(billed_with_the_fallback(faulty)) and line.status == 200
    with pytest.raises(openai.APIStatusError) as alone:
        oa.chat.completions.create(model="gemini-miscalls-alone", messages=HI, tools=tools)
    assert alone.value.status_code == 502 and "invalid function call" in alone.value.message
    # With nothing else to try, the line of the 502 carries the tokens it charges for (it said 0 in, 0 out at
    # $0.00001: review).
    [failed] = [line for line in faulty.ledger(key) if line.status == 502]
    prompt = max(1, len(orjson.dumps(faulty.fakes["gemini"].state.requests[-1]["json"]["contents"])) // 4)
    assert (failed.input_tokens, failed.output_tokens) == (prompt, 0)
    assert failed.cost_usd == pytest.approx(prompt * PRICE["input"] / 1e6)


def routed_text(running: Running, key: str, model: str, stream: bool) -> tuple[str, str]:
    """The route and the text of `model`'s answer to `HI` through the openai SDK, streamed or whole."""
    oa = client(running, key)
    if stream:
        with oa.chat.completions.with_streaming_response.create(model=model, messages=HI, stream=True) as streamed:
            route = streamed.headers["x-gateway-route"]
            return route, "".join(c.choices[0].delta.content or "" for c in streamed.parse() if c.choices)
    raw = oa.chat.completions.with_raw_response.create(model=model, messages=HI)
    return raw.headers["x-gateway-route"], raw.parse().choices[0].message.content or ""


@pytest.mark.parametrize("ending", ["too-many-tool-calls", "missing-thought-signature", "other"])
@pytest.mark.parametrize("stream", [False, True], ids=["whole", "stream"])
def test_a_finish_with_no_answer_fails_over_and_its_billed_prompt_is_charged(
    faulty: Running, ending: str, stream: bool
) -> None:
    """A candidate without content ending `TOO_MANY_TOOL_CALLS`, `MISSING_THOUGHT_SIGNATURE` or `OTHER` (its prompt
    billed) came back as an empty answer with `finish_reason: stop`, a clean success to the client and the ledger
    (review). Now, as `MALFORMED_FUNCTION_CALL`, the provider's malformed answer: the fallback is tried, and what
    Gemini billed is on the line."""
    key = faulty.mint(name=f"gemini-{ending}-{stream}")
    route, text = routed_text(faulty, key, f"gemini-{ending}", stream)
    assert route == f"gemini/ends-{ending}@global=invalid_response, gemini/gemini-2.5-flash@global=200"
    assert text == TEXT
    [line] = faulty.ledger(key)
    assert line.cost_usd == pytest.approx(billed_with_the_fallback(faulty)) and line.status == 200


@pytest.mark.parametrize("ending", SAID_ENDINGS)
@pytest.mark.parametrize("stream", [False, True], ids=["whole", "stream"])
def test_a_preamble_before_a_finish_with_no_answer_fails_over_and_is_charged_once(
    faulty: Running, ending: str, stream: bool
) -> None:
    """The model's preamble (`PREAMBLE`, 5 tokens billed) and then `MALFORMED_FUNCTION_CALL` or
    `TOO_MANY_TOOL_CALLS`: whole, it was answered 200 with the preamble as the finished answer, `finish_reason:
    stop`, and no fallback tried (review). Now whole as streamed, the provider's malformed answer: the fallback
    answers, and the one line charges what Gemini billed for both, the preamble's output once."""
    key = faulty.mint(name=f"gemini-said-{ending}-{stream}")
    route, text = routed_text(faulty, key, f"gemini-said-{ending}", stream)
    assert route == f"gemini/said-ends-{ending}@global=invalid_response, gemini/gemini-2.5-flash@global=200"
    assert text == TEXT
    [line] = faulty.ledger(key)
    billed = billed_with_the_fallback(faulty, gemini_fake.PREAMBLE_TOKENS)
    assert line.cost_usd == pytest.approx(billed) and line.status == 200
    assert line.output_tokens == gemini_fake.PREAMBLE_TOKENS + 7


@pytest.mark.parametrize("stream", [False, True], ids=["whole", "stream"])
@pytest.mark.parametrize("ending", ["too-many-tool-calls", "other"])
def test_a_finish_with_no_answer_is_no_finished_answer_in_any_clients_api(
    faulty: Running, ending: str, stream: bool
) -> None:
    """With nothing else to try, the empty answer was Chat Completions' `stop` with content '', Anthropic's
    `end_turn`, a `completed` response: each API now answers the provider's failure (a 502 naming Gemini's
    reason), and each line charges the prompt Gemini billed."""
    key = faulty.mint(name=f"gemini-{ending}-alone-{stream}")
    model = f"gemini-{ending}-alone-{'stream' if stream else 'whole'}"
    reason = ending.upper().replace("-", "_")
    with pytest.raises(openai.APIStatusError) as chat:
        if stream:
            list(client(faulty, key).chat.completions.create(model=model, messages=HI, stream=True))
        else:
            client(faulty, key).chat.completions.create(model=model, messages=HI)
    assert chat.value.status_code == 502 and reason in chat.value.message
    claude = anthropic_client(faulty, key)
    with pytest.raises(anthropic.APIStatusError) as messages:
        if stream:
            with claude.messages.stream(model=model, max_tokens=50, messages=HI) as events:
                events.get_final_message()
        else:
            claude.messages.create(model=model, max_tokens=50, messages=HI)
    assert messages.value.status_code == 502 and reason in messages.value.message
    answer = httpx.post(
        f"{faulty.url}/v1/responses",
        json={"model": model, "input": "Hi", "stream": stream},
        headers={"authorization": f"Bearer {key}"},
    )
    assert answer.status_code == 502 and reason in answer.text and "completed" not in answer.text
    lines = faulty.ledger(key)
    assert [line.status for line in lines] == [502, 502, 502] and all(line.input_tokens > 0 for line in lines)


@pytest.mark.parametrize("stream", [False, True], ids=["whole", "stream"])
def test_an_image_withheld_is_a_filtered_answer_in_every_clients_api(faulty: Running, stream: bool) -> None:
    """`IMAGE_OTHER` ended as `stop` (`end_turn`, `completed`) where `IMAGE_SAFETY` and its siblings end as
    `content_filter` (review): each API now says the answer was withheld."""
    key = faulty.mint(name=f"gemini-image-other-{stream}")
    model = f"gemini-image-other-alone-{'stream' if stream else 'whole'}"
    oa = client(faulty, key)
    if stream:
        chunks = list(oa.chat.completions.create(model=model, messages=HI, stream=True))
        finishes = [c.choices[0].finish_reason for c in chunks if c.choices and c.choices[0].finish_reason]
    else:
        finishes = [oa.chat.completions.create(model=model, messages=HI).choices[0].finish_reason]
    assert finishes == ["content_filter"]
    claude = anthropic_client(faulty, key)
    if stream:
        with claude.messages.stream(model=model, max_tokens=50, messages=HI) as events:
            message = events.get_final_message()
    else:
        message = claude.messages.create(model=model, max_tokens=50, messages=HI)
    assert message.stop_reason == "refusal"
    answer = httpx.post(
        f"{faulty.url}/v1/responses",
        json={"model": model, "input": "Hi", "stream": stream},
        headers={"authorization": f"Bearer {key}"},
    )
    if stream:
        ended = [line for line in answer.text.splitlines() if line.startswith("event: ")][-1]
        assert ended == "event: response.incomplete" and '"reason":"content_filter"' in answer.text
    else:
        response = answer.json()
        assert response["status"] == "incomplete" and response["incomplete_details"] == {"reason": "content_filter"}


def test_server_errors_and_rejections_are_mapped(faulty: Running) -> None:
    oa = client(faulty, faulty.mint(name="gemini-faults"))
    with pytest.raises(openai.APIStatusError) as broken:
        oa.chat.completions.create(model="gemini-broken", messages=HI)
    assert broken.value.status_code == 502
    assert broken.value.body["upstream_status"] == 500  # type: ignore[index]
    assert broken.value.body["upstream_type"] == "INTERNAL"  # type: ignore[index]
    with pytest.raises(openai.BadRequestError) as rejected:
        oa.chat.completions.create(model="gemini-rejects", messages=HI)
    assert "required oneof field" in rejected.value.message


def test_embeddings(faulty: Running) -> None:
    oa = client(faulty, faulty.mint(name="gemini-embed"))
    result = oa.embeddings.create(model="gemini-embedding-001", input=["a", "b"], dimensions=4)
    assert [d.index for d in result.data] == [0, 1] and result.data[0].embedding == pytest.approx([0.1, 0.2, 0.3, 0.4])
    body = sent(faulty)["json"]
    assert body["requests"][1] == {
        "model": "models/gemini-embedding-001",
        "content": {"parts": [{"text": "b"}]},
        "outputDimensionality": 4,
    }


def test_embeddings_name_the_fields_gemini_has_no_place_for(faulty: Running) -> None:
    """A field `batchEmbedContents` has no place for (a `task_type`, Mistral's `metadata` and `output_dtype`) was left
    out without a word: no `x-gateway-dropped-params`, though a field a provider does not take is named as dropped
    (docs/interface.md), as Mistral's embeddings and Gemini's chat name theirs (review). `user` alone was named."""
    key = faulty.mint(name="gemini-embed-fields")
    extra = {"task_type": "RETRIEVAL_QUERY", "metadata": {"a": "b"}, "output_dtype": "float", "user": "ann"}
    answer = httpx.post(
        f"{faulty.url}/v1/embeddings",
        json={"model": "gemini-embedding-001", "input": "hi", **extra},
        headers={"authorization": f"Bearer {key}"},
    )
    assert answer.status_code == 200, answer.text
    [item] = sent(faulty)["json"]["requests"]
    assert set(sent(faulty)["json"]) == {"requests"} and set(item) == {"model", "content"}
    assert answer.headers["x-gateway-dropped-params"] == "user,task_type,metadata,output_dtype"


def test_an_embeddings_request_of_more_inputs_than_openai_takes_is_refused_before_anything_is_sent(
    faulty: Running,
) -> None:
    """OpenAI takes at most 2,048 inputs a request; the gateway took any number and sent Gemini 100 a call: 20,000
    one-letter inputs (80 KB of body) were 200 upstream calls from one request (review). Refused as OpenAI refuses
    it, a 400 naming `input`; 2,048 are taken, and a list of token ids is one input, however long."""
    key = faulty.mint(name="gemini-embed-bound")
    fake = faulty.fakes["gemini"].state.requests
    before = len(fake)
    with pytest.raises(openai.BadRequestError) as refused:
        client(faulty, key).embeddings.create(model="gemini-embedding-001", input=["a"] * 20_000)
    assert refused.value.code == "invalid_request" and refused.value.param == "input"  # type: ignore[attr-defined]
    assert "at most 2048 inputs" in refused.value.message and len(fake) == before
    assert faulty.ledger(key) == []
    result = client(faulty, key).embeddings.create(model="gemini-embedding-001", input=["a"] * 2048)
    assert len(result.data) == 2048 and len(fake) == before + 21


def gemini_tokens(texts: list[str]) -> int:
    """What the adapter counts for ASCII texts Gemini embedded (it reports no usage): about four characters a token."""
    return sum(len(text) // 4 + 1 for text in texts)


def test_embeddings_gemini_counts_none_of_are_an_estimate_on_the_line(faulty: Running) -> None:
    """Gemini's `batchEmbedContents` reports no tokens: the adapter's count went on the line as the provider's
    (`cost_source: provider`), and 1,000 Chinese characters were counted 251 tokens, at four characters a token,
    where a tokenizer gives about one a character (cost review)."""
    key = faulty.mint(name="gemini-embed-estimate")
    chinese = "语言模型" * 250
    result = client(faulty, key).embeddings.create(model="gemini-embedding-001", input=[chinese, "plain text here!"])
    assert result.usage.prompt_tokens == (250 + 1000 + 1) + (4 + 1)
    [line] = faulty.ledger(key)
    assert line.cost_source == "estimate" and line.input_tokens == 1256


def test_embeddings_past_100_inputs_go_in_batches_of_100_joined_in_order(faulty: Running) -> None:
    """Gemini takes at most 100 embeddings a `batchEmbedContents` call; OpenAI takes 2,048 an embeddings request.
    250 inputs went as one call of 250, refused (review: 101 inputs, one call of 101). Now three calls of 100, 100
    and 50, answered in the order asked, on one ledger line with all their tokens."""
    key = faulty.mint(name="gemini-batches")
    fake = faulty.fakes["gemini"].state.requests
    before = len(fake)
    texts = ["x" * (i + 1) for i in range(250)]  # (the fake's vectors scale with their text's length)
    raw = client(faulty, key).embeddings.with_raw_response.create(model="gemini-embedding-001", input=texts)
    result = raw.parse()
    calls = [r["json"]["requests"] for r in fake[before:]]
    assert sorted(len(call) for call in calls) == [50, 100, 100]
    assert sorted(item["content"]["parts"][0]["text"] for call in calls for item in call) == sorted(texts)
    assert [d.index for d in result.data] == list(range(250))
    assert [d.embedding[0] for d in result.data] == pytest.approx([0.1 * len(text) for text in texts])
    assert result.usage.prompt_tokens == gemini_tokens(texts)
    assert raw.headers["x-gateway-route"] == "gemini/gemini-embedding-001@global=200"
    [line] = faulty.ledger(key)
    assert (line.status, line.input_tokens) == (200, gemini_tokens(texts))
    assert line.cost_usd == pytest.approx(gemini_tokens(texts) * 0.15 / 1e6)


def test_a_batch_that_fails_fails_the_request_and_the_batches_answered_are_charged(faulty: Running) -> None:
    """One batch's failure is the request's one error (no partial answer); the batch Gemini did answer was billed,
    and is on the request's line."""
    key = faulty.mint(name="gemini-batch-fails")
    fake = faulty.fakes["gemini"].state.requests
    before = len(fake)
    texts = [f"text {i}" for i in range(150)]
    texts[120] = gemini_fake.FAIL_EMBED
    with pytest.raises(openai.APIStatusError) as failed:
        client(faulty, key).embeddings.create(model="gemini-embedding-001", input=texts)
    assert failed.value.status_code == 502 and failed.value.body["upstream_status"] == 500  # type: ignore[index]
    assert sorted(len(r["json"]["requests"]) for r in fake[before:]) == [50, 100]
    [line] = faulty.ledger(key)
    assert line.status == 502 and line.route == "gemini/gemini-embedding-001@global=500"
    assert line.cost_usd == pytest.approx(gemini_tokens(texts[:100]) * 0.15 / 1e6)


@pytest.mark.parametrize("budget", [0.04, 1.0])
def test_a_batch_limited_is_sent_again_alone_and_charged_once(faulty: Running, budget: float) -> None:
    """Three batches (100, 100 and 100 inputs), the third answered 429 (a quota, retry delay 0s) then 200. The gateway
    waited the 429 out and sent the whole attempt again to the same deployment: Gemini billed the two batches it had
    answered a second time (six calls, the line the first two batches twice over), and on a $0.04 budget, which the
    second try could not be covered within, the request ended in the 429, charged for batches it never returned. The
    limited batch is sent again alone, the answered ones kept: four calls, each batch charged once, within the one
    reservation the request was admitted with, on either budget."""
    key = faulty.mint(name=f"gemini-batch-limited-{budget}", budget_usd=budget)
    fake = faulty.fakes["gemini"].state.requests
    before = len(fake)
    texts = ["x"] * 300  # (a token each, the bound as the estimate: the reservation is about what is billed)
    texts[250] = f"{gemini_fake.LIMITED_ONCE_EMBED}-{budget}"
    whole = gemini_tokens(texts)
    reserved = sum(len(text) for text in texts)
    assert (gemini_tokens(texts[:200]) + whole) * 100 / 1e6 > 0.04 >= reserved * 100 / 1e6  # (what was refused)
    raw = httpx.post(
        f"{faulty.url}/v1/embeddings",
        json={"model": "gemini-embedding-dear", "input": texts},
        headers={"authorization": f"Bearer {key}"},
    )
    [line] = faulty.ledger(key)
    label = "gemini/gemini-embedding-001@global"
    assert raw.status_code == 200, raw.text
    assert [item["embedding"][0] for item in raw.json()["data"]] == pytest.approx([0.1 * len(text) for text in texts])
    calls = [sorted({item["content"]["parts"][0]["text"] for item in r["json"]["requests"]}) for r in fake[before:]]
    assert len(calls) == 4 and calls[-1] == calls[-2] == sorted(set(texts[200:]))  # (the limited batch, twice)
    assert raw.headers["x-gateway-route"] == line.route == f"{label}=429, {label}=200"
    assert line.input_tokens == whole and raw.json()["usage"]["prompt_tokens"] == whole
    assert line.cost_usd == pytest.approx(whole * 100 / 1e6) and line.cost_usd <= budget


def test_a_batch_limited_past_its_retries_ends_the_attempt_without_sending_it_again_whole(faulty: Running) -> None:
    """The third batch limited twice, past the one retry `max_retries_per_deployment` allows: it is sent again alone
    once, and the attempt ends in the 429 (the only deployment), the two batches answered charged once. The whole
    attempt was sent again: six calls, the line the first two batches twice over. The gateway spent its retry, so the
    429 says `x-should-retry: false`, as any the gateway retried does: it said `true`, and that the gateway "did not
    retry it (the batch ... had been sent again alone 1 time(s) already)"."""
    key = faulty.mint(name="gemini-batch-limited-twice")
    fake = faulty.fakes["gemini"].state.requests
    before = len(fake)
    texts = ["x"] * 300
    texts[250] = f"{gemini_fake.LIMITED_TWICE_EMBED}-past-its-retries"
    raw = httpx.post(
        f"{faulty.url}/v1/embeddings",
        json={"model": "gemini-embedding-dear", "input": texts},
        headers={"authorization": f"Bearer {key}"},
    )
    [line] = faulty.ledger(key)
    assert raw.status_code == 429, raw.text
    said = raw.json()["error"]["message"]
    assert said.startswith("the provider rate-limited this request, after the gateway's own retries"), said
    assert "sent again alone 1 time(s)" in said and "did not retry" not in said
    assert raw.headers["x-should-retry"] == "false"
    assert len(fake) - before == 4
    label = "gemini/gemini-embedding-001@global"
    assert line.route == f"{label}=429, {label}=429"
    assert line.input_tokens == gemini_tokens(texts[:200])
    assert line.cost_usd == pytest.approx(gemini_tokens(texts[:200]) * 100 / 1e6)


def test_a_batch_whose_error_answer_cannot_be_read_fails_as_any_failed_batch(
    faulty: Running, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A later batch's error answer its adapter could not read escaped as it was: a 500 of the gateway's, where the
    first batch's (and every other attempt's) is read by `wire.error_answer` as its status."""

    def unreadable(*_: Any) -> Any:
        raise ValueError("an error body the adapter cannot read")

    monkeypatch.setattr(REGISTRY["gemini"], "error", unreadable)
    texts = [f"text {i}" for i in range(150)]
    texts[120] = gemini_fake.FAIL_EMBED
    with pytest.raises(openai.APIStatusError) as failed:
        client(faulty, faulty.mint(name="gemini-batch-unread")).embeddings.create(
            model="gemini-embedding-001", input=texts
        )
    assert failed.value.status_code == 502 and failed.value.body["upstream_status"] == 500  # type: ignore[index]


def test_audio_input_is_priced_at_its_own_rate(faulty: Running) -> None:
    """Gemini counts a prompt's audio apart (`promptTokensDetails`), and 2.5 Flash bills it at $1.00 a million
    against text's $0.30: it was charged as text. Stream and not, the ledger has the audio at its rate."""
    key = faulty.mint(name="gemini-audio")
    audio = base64.b64encode(b"RIFF" + bytes(64 * 1024)).decode()
    parts: Any = [
        {"type": "text", "text": "Transcribe this."},
        {"type": "input_audio", "input_audio": {"data": audio, "format": "wav"}},
    ]
    messages: Any = [{"role": "user", "content": parts}]
    for stream in (False, True):
        answer = client(faulty, key).chat.completions.create(
            model="gemini-table",
            messages=messages,
            stream=stream,
            stream_options={"include_usage": True} if stream else None,
        )
        if stream:
            usage = [chunk.usage for chunk in answer if chunk.usage][-1]  # type: ignore[union-attr]
        else:
            usage = answer.usage  # type: ignore[union-attr]
        assert usage is not None and usage.prompt_tokens_details is not None
        heard = usage.prompt_tokens_details.audio_tokens
        assert heard == 64 * gemini_fake.AUDIO_TOKENS_PER_KB + 1  # (the header's 4 bytes round up)
        expected = ((usage.prompt_tokens - heard) * 0.30 + heard * 1.00 + usage.completion_tokens * 2.50) / 1e6
        lines = [line for line in faulty.ledger(key)]
        while len(lines) < (2 if stream else 1):
            lines = faulty.ledger(key)
        assert max(lines, key=lambda line: line.ts).cost_usd == pytest.approx(expected)


PNG = "iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAYAAAAfFcSJAAAADUlEQVR42mNk+M9QDwADhgGAWjR9awAAAABJRU5ErkJggg=="


def looking_at(url: str, detail: str | None = None) -> Any:
    image: dict[str, Any] = {"url": url} if detail is None else {"url": url, "detail": detail}
    return [
        {
            "role": "user",
            "content": [{"type": "text", "text": "What is it?"}, {"type": "image_url", "image_url": image}],
        }
    ]


def test_an_image_gemini_cannot_take_is_the_clients_400_and_jpg_is_jpeg(running: Running, key: str) -> None:
    """A GIF went to Gemini as `inlineData` `image/gif`, not among its image types (PNG, JPEG, WEBP, HEIC, HEIF), and
    `image/jpg` as written."""
    oa = client(running, key)
    oa.chat.completions.create(model="gemini-2.5-flash", messages=looking_at(f"data:image/jpg;base64,{PNG}"))
    assert sent(running)["json"]["contents"][0]["parts"][1] == {"inlineData": {"mimeType": "image/jpeg", "data": PNG}}
    before = len(running.fakes["gemini"].state.requests)
    for written in ("image/gif", ""):
        with pytest.raises(openai.BadRequestError) as refused:
            oa.chat.completions.create(model="gemini-2.5-flash", messages=looking_at(f"data:{written};base64,{PNG}"))
        assert "it takes image/png, image/jpeg, image/webp, image/heic and image/heif" in refused.value.message
    assert len(running.fakes["gemini"].state.requests) == before


def test_an_images_detail_gemini_cannot_honour_is_named(running: Running, key: str) -> None:
    raw = client(running, key).chat.completions.with_raw_response.create(
        model="gemini-2.5-flash", messages=looking_at(f"data:image/png;base64,{PNG}", "low")
    )
    assert raw.headers["x-gateway-dropped-params"] == "messages.image_url.detail"


@pytest.mark.parametrize("stream", [False, True], ids=["whole", "stream"])
def test_an_allowed_tools_choice_goes_as_the_aliases_gemini_is_allowed_to_call(
    running: Running, key: str, stream: bool
) -> None:
    """A `tool_choice` of type `allowed_tools` was the gateway's 400. In mode `required` it is Gemini's `ANY` with
    `allowedFunctionNames`, which name each function by the alias it is declared by (the client's 83 characters are
    Gemini's 400); every tool is still declared. The call comes back by the client's name."""
    tools = [WEATHER_TOOL, named_tool(MCP_TOOL_NAME)]
    settings: Any = {"model": "gemini-2.5-flash", "messages": HI, "tools": tools}
    settings["tool_choice"] = allowed_tools("required", MCP_TOOL_NAME)
    gemini = client(running, key)
    assert called_names(gemini, settings, stream) == [MCP_TOOL_NAME]
    weather, alias = declared_names(running)
    assert weather == "get_weather" and GEMINI_NAME.fullmatch(alias) and alias != MCP_TOOL_NAME
    config = sent(running)["json"]["toolConfig"]["functionCallingConfig"]
    assert config == {"mode": "ANY", "allowedFunctionNames": [alias]}


def test_an_allowed_tools_choice_in_mode_auto_declares_gemini_the_allowed_functions_alone(
    running: Running, key: str
) -> None:
    """Gemini takes `allowedFunctionNames` in mode `ANY` only (and `VALIDATED`, which not every model has): a choice
    left to the model among some tools declares those alone, each by the name Gemini takes."""
    tools = [WEATHER_TOOL, named_tool(MCP_TOOL_NAME)]
    settings: Any = {"model": "gemini-2.5-flash", "messages": HI, "tools": tools}
    answer = client(running, key).chat.completions.create(**settings, tool_choice=allowed_tools("auto", MCP_TOOL_NAME))
    assert answer.choices[0].message.content == TEXT
    (alias,) = declared_names(running)
    assert GEMINI_NAME.fullmatch(alias) and alias != MCP_TOOL_NAME
    assert sent(running)["json"]["toolConfig"]["functionCallingConfig"] == {"mode": "AUTO"}


def test_a_responses_allowed_tools_choice_reaches_gemini_as_its_allowed_function_names(
    running: Running, key: str
) -> None:
    """A Responses request's `allowed_tools` choice was translated to its mode alone, the list named as dropped
    (`tool_choice.tools`): the model could call any tool. It is the Chat Completions choice of the same tools, which
    Gemini gets as `allowedFunctionNames`, by the alias of a name it refuses."""
    tools = [{"type": "function", **tool["function"]} for tool in (WEATHER_TOOL, named_tool(MCP_TOOL_NAME))]
    choice = {"type": "allowed_tools", "mode": "required", "tools": [{"type": "function", "name": MCP_TOOL_NAME}]}
    body = {"model": "gemini-2.5-flash", "input": "Hi", "tools": tools, "tool_choice": choice}
    answer = httpx.post(f"{running.url}/v1/responses", json=body, headers={"authorization": f"Bearer {key}"})
    assert answer.status_code == 200, answer.text
    assert "x-gateway-dropped-params" not in answer.headers
    assert [item["name"] for item in answer.json()["output"] if item["type"] == "function_call"] == [MCP_TOOL_NAME]
    alias = declared_names(running)[1]
    assert sent(running)["json"]["toolConfig"]["functionCallingConfig"] == {
        "mode": "ANY",
        "allowedFunctionNames": [alias],
    }


# --- Gemini reached two ways: its own API and its OpenAI-compatible endpoint (`profile: google`) ----------------

NATIVE, COMPATIBLE = "gemini-3-native", "gemini-3-compatible"
WEATHER_CALL = 'Weather in Paris? CALL get_weather {"city":"Paris"}'  # (the fakes' script: the model calls it)
CLAUDE_WEATHER_TOOL: Any = {
    "name": "get_weather",
    "description": "Weather in a city",
    "input_schema": WEATHER_TOOL["function"]["parameters"],
}
RESPONSES_WEATHER_TOOL: Any = {"type": "function", **WEATHER_TOOL["function"]}


@pytest.fixture(scope="module")
def both_ways(
    upstream: tuple[ServerThread, dict[str, Any]], tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Running]:
    """Gemini 3 on Gemini's own API and on its OpenAI-compatible endpoint, as a fallback, a routing rule or a client
    switching deployment moves a conversation between them."""
    server, fakes = upstream
    compatible = {"type": "openai", "profile": "google", "api_key": "env:GEMINI_API_KEY"}
    data = {
        "providers": {
            "gemini": {"type": "gemini", "api_key": "env:GEMINI_API_KEY", "base_url": f"{server.url}/gemini"},
            "gemini-openai": {**compatible, "base_url": f"{server.url}/gemini/v1beta/openai"},
        },
        "models": {
            NATIVE: {"deployments": [{"provider": "gemini", "model": "gemini-3-pro-preview"}], "price": PRICE},
            COMPATIBLE: {
                "deployments": [{"provider": "gemini-openai", "model": "gemini-3-pro-preview"}],
                "price": PRICE,
            },
        },
    }
    store_url = f"sqlite:///{Path(tmp_path_factory.mktemp('gemini-both-store')) / 'gateway.db'}"
    running, gateway_server = serve_gateway(parse_config(data, set(REGISTRY)), store_url, server, fakes)
    yield running
    gateway_server.stop()


def sse_data(raw: str) -> list[Any]:
    return [json.loads(line[6:]) for line in raw.splitlines() if line.startswith("data: {")]


def weather_call(running: Running, key: str, model: str, api: str, stream: bool) -> str:
    """The id of the call `model` answers the weather question with, as a client of `api` gets it (`chat`: the
    OpenAI SDK, `messages`: the Anthropic SDK, `responses`: the Responses API's `call_id`), whole or streamed."""
    if api == "chat":
        settings: Any = {
            "model": model,
            "messages": [{"role": "user", "content": WEATHER_CALL}],
            "tools": [WEATHER_TOOL],
        }
        if not stream:
            calls = client(running, key).chat.completions.create(**settings).choices[0].message.tool_calls or []
            return calls[0].id
        chunks = client(running, key).chat.completions.create(**settings, stream=True)
        return [d.id for c in chunks if c.choices for d in c.choices[0].delta.tool_calls or () if d.id][0]
    if api == "messages":
        sdk = anthropic_client(running, key)
        asked: Any = {"model": model, "max_tokens": 200, "tools": [CLAUDE_WEATHER_TOOL]}
        asked["messages"] = [{"role": "user", "content": WEATHER_CALL}]
        if not stream:
            return next(block.id for block in sdk.messages.create(**asked).content if block.type == "tool_use")
        with sdk.messages.stream(**asked) as events:
            return next(block.id for block in events.get_final_message().content if block.type == "tool_use")
    body = {"model": model, "input": WEATHER_CALL, "tools": [RESPONSES_WEATHER_TOOL], "stream": stream}
    answer = httpx.post(f"{running.url}/v1/responses", json=body, headers={"authorization": f"Bearer {key}"})
    assert answer.status_code == 200, answer.text
    if stream:
        done = [e["item"] for e in sse_data(answer.text) if e["type"] == "response.output_item.done"]
        return str(next(item["call_id"] for item in done if item["type"] == "function_call"))
    return str(next(item["call_id"] for item in answer.json()["output"] if item["type"] == "function_call"))


def answered_call(running: Running, key: str, model: str, api: str, call_id: str) -> None:
    """The call sent back to `model` with its result, as a client of `api` keeps it: its id, name and arguments,
    none of the fields Chat Completions does not define."""
    ask: Any = {"role": "user", "content": WEATHER_CALL}
    if api == "chat":
        messages: Any = [
            ask,
            {"role": "assistant", "content": None, "tool_calls": [named_call("get_weather", call_id)]},
            {"role": "tool", "tool_call_id": call_id, "content": "18C"},
        ]
        answer = client(running, key).chat.completions.create(model=model, messages=messages, tools=[WEATHER_TOOL])
        assert answer.choices[0].message.content == "DONE: 18C"
    elif api == "messages":
        use = {"type": "tool_use", "id": call_id, "name": "get_weather", "input": {"city": "Paris"}}
        history: Any = [
            ask,
            {"role": "assistant", "content": [use]},
            {"role": "user", "content": [{"type": "tool_result", "tool_use_id": call_id, "content": "18C"}]},
        ]
        asked = anthropic_client(running, key).messages.create(
            model=model, max_tokens=200, tools=[CLAUDE_WEATHER_TOOL], messages=history
        )
        assert asked.content[0].type == "text" and asked.content[0].text == "DONE: 18C"
    else:
        items = [
            ask,
            {"type": "function_call", "call_id": call_id, "name": "get_weather", "arguments": '{"city":"Paris"}'},
            {"type": "function_call_output", "call_id": call_id, "output": "18C"},
        ]
        body = {"model": model, "input": items, "tools": [RESPONSES_WEATHER_TOOL]}
        answer = httpx.post(f"{running.url}/v1/responses", json=body, headers={"authorization": f"Bearer {key}"})
        assert answer.status_code == 200, answer.text
        assert answer.json()["output"][0]["content"][0]["text"] == "DONE: 18C"


def call_as_sent(running: Running) -> tuple[str | None, str | None, str | None]:
    """The history's call as Gemini got it last, by either API: its thought signature, its id and its result's."""
    request = sent(running)
    if request["method"] == "chat/completions":
        messages = request["json"]["messages"]
        call = messages[1]["tool_calls"][0]
        signature = ((call.get("extra_content") or {}).get("google") or {}).get("thought_signature")
        return signature, call["id"], messages[2]["tool_call_id"]
    contents = request["json"]["contents"]
    part, result = contents[1]["parts"][0], contents[2]["parts"][0]["functionResponse"]
    return part.get("thoughtSignature"), part["functionCall"].get("id"), result.get("id")


@pytest.mark.parametrize("stream", [False, True], ids=["whole", "stream"])
@pytest.mark.parametrize("api", ["chat", "messages", "responses"])
@pytest.mark.parametrize(
    ("first", "then"),
    [(NATIVE, COMPATIBLE), (COMPATIBLE, NATIVE), (COMPATIBLE, COMPATIBLE), (NATIVE, NATIVE)],
    ids=["native-then-compatible", "compatible-then-native", "compatible", "native"],
)
def test_a_calls_thought_signature_goes_back_to_gemini_whichever_way_it_is_reached(
    both_ways: Running, first: str, then: str, api: str, stream: bool
) -> None:
    """A Gemini 3 call's signature rides in its id, which every client sends back, from either API: Gemini's
    OpenAI-compatible endpoint read none there (its `google` profile sent Gemini's stand-in,
    `skip_thought_signature_validator`, and Gemini lost its reasoning) and gave clients none there (a client keeping
    Chat Completions' fields, a Messages or a Responses client, lost the `extra_content` it came in). Each API gets
    the call's id as Gemini gave it, the signature where it reads one."""
    key = both_ways.mint(name="signatures")
    call_id = weather_call(both_ways, key, first, api, stream)
    assert call_signature(call_id) == CALL_SIGNATURE
    answered_call(both_ways, key, then, api, call_id)
    bare = wire_call_id(call_id)
    assert call_as_sent(both_ways) == (CALL_SIGNATURE, bare, bare)
    assert SIGNATURE_MARK not in bare and bare.startswith("function-call-" if first == COMPATIBLE else "call_")


@pytest.mark.parametrize("stream", [False, True], ids=["whole", "stream"])
def test_a_chat_client_gets_the_compatible_endpoints_extra_content_beside_the_signed_id(
    both_ways: Running, stream: bool
) -> None:
    """Gemini's OpenAI-compatible endpoint hands a call's signature out in its `extra_content`, as Google documents
    it: a Chat client written for it still finds it there, and one that sends both back sends one signature."""
    key = both_ways.mint(name="extra-content")
    settings: Any = {
        "model": COMPATIBLE,
        "messages": [{"role": "user", "content": WEATHER_CALL}],
        "tools": [WEATHER_TOOL],
    }
    oa = client(both_ways, key)
    if stream:
        chunks = oa.chat.completions.create(**settings, stream=True)
        call: Any = [d for c in chunks if c.choices for d in c.choices[0].delta.tool_calls or ()][0]
    else:
        call = (oa.chat.completions.create(**settings).choices[0].message.tool_calls or [])[0]
    extra = {"google": {"thought_signature": CALL_SIGNATURE}}
    assert call.model_extra["extra_content"] == extra and call_signature(call.id) == CALL_SIGNATURE
    back = {**named_call("get_weather", call.id), "extra_content": extra}
    messages: Any = [
        *settings["messages"],
        {"role": "assistant", "content": None, "tool_calls": [back]},
        {"role": "tool", "tool_call_id": call.id, "content": "18C"},
    ]
    for model in (COMPATIBLE, NATIVE):
        assert oa.chat.completions.create(model=model, messages=messages).choices[0].message.content == "DONE: 18C"
        assert call_as_sent(both_ways) == (CALL_SIGNATURE, wire_call_id(call.id), wire_call_id(call.id))
