"""The official openai SDK against the gateway, with the Anthropic Messages API behind it."""

from __future__ import annotations

import json
import re
from typing import Any

import httpx
import openai
import orjson
import pytest
from openai.types.chat import ChatCompletionMessageFunctionToolCall

from tests.fakes.anthropic import (
    OUTPUT_TOKENS,
    REDACTED,
    SIGNATURE,
    SIGNATURE_AGAIN,
    TEXT,
    THINKING,
    THINKING_AGAIN,
    TOOL_INPUT,
)
from tests.functional.conftest import Running
from tests.support.tools import (
    ASK_THE_TIME,
    CLOCK_TOOL,
    WEATHER_TOOL,
    allowed_tools,
    called_names,
    named_call,
    named_tool,
    streamed_arguments,
)

MODEL = "claude-haiku-4-5"
HI: Any = [{"role": "user", "content": "Hi"}]


def client(running: Running, key: str) -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{running.url}/v1", api_key=key, max_retries=0)


def sent(running: Running) -> dict[str, Any]:
    request: dict[str, Any] = running.fakes["anthropic"].state.requests[-1]
    return request


def test_completion_is_translated_both_ways(running: Running, key: str) -> None:
    raw = client(running, key).chat.completions.with_raw_response.create(model=MODEL, messages=HI, stop="END")
    completion = raw.parse()
    assert completion.choices[0].message.content == TEXT
    assert completion.choices[0].finish_reason == "stop"
    assert completion.usage is not None and completion.usage.completion_tokens == OUTPUT_TOKENS
    assert raw.headers["x-gateway-provider"] == "anthropic"
    assert raw.headers["x-gateway-route"] == f"anthropic/{MODEL}@global=200"
    upstream = sent(running)
    assert upstream["path"].endswith("/v1/messages")
    assert upstream["headers"]["x-api-key"] == "test-anthropic-key" and key not in str(upstream)
    assert upstream["headers"]["anthropic-version"] == "2023-06-01"
    body = upstream["json"]
    assert body["model"] == MODEL and body["max_tokens"] > 0 and body["stop_sequences"] == ["END"]
    assert body["messages"] == [{"role": "user", "content": [{"type": "text", "text": "Hi"}]}]


def test_system_prompt_reaches_the_system_field(running: Running, key: str) -> None:
    messages: Any = [
        {"role": "system", "content": "You are terse."},
        {"role": "user", "content": "Hi"},
        {"role": "user", "content": "Still there?"},
    ]
    client(running, key).chat.completions.create(model=MODEL, messages=messages)
    body = sent(running)["json"]
    assert body["system"] == "You are terse."
    assert [m["role"] for m in body["messages"]] == ["user"] and len(body["messages"][0]["content"]) == 2


def test_stream_assembles_text_and_ends_with_usage(running: Running, key: str) -> None:
    chunks = list(
        client(running, key).chat.completions.create(
            model=MODEL, messages=HI, stream=True, stream_options={"include_usage": True}
        )
    )
    assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices) == TEXT
    assert [c.choices[0].finish_reason for c in chunks if c.choices][-1] == "stop"
    last = chunks[-1]
    assert last.choices == [] and last.usage is not None and last.usage.completion_tokens == OUTPUT_TOKENS
    assert last.usage.prompt_tokens > 0
    assert sent(running)["json"]["stream"] is True


def test_tool_call_returned_and_streamed(running: Running, key: str) -> None:
    oa = client(running, key)
    completion = oa.chat.completions.create(
        model=MODEL, messages=HI, tools=[WEATHER_TOOL], tool_choice="required", parallel_tool_calls=False
    )
    assert sent(running)["json"]["tool_choice"] == {"type": "any", "disable_parallel_tool_use": True}
    call = (completion.choices[0].message.tool_calls or [])[0]
    assert isinstance(call, ChatCompletionMessageFunctionToolCall)
    assert call.function.name == "get_weather" and json.loads(call.function.arguments) == TOOL_INPUT
    assert completion.choices[0].finish_reason == "tool_calls"
    chunks = list(
        oa.chat.completions.create(
            model=MODEL,
            messages=HI,
            tools=[WEATHER_TOOL],
            tool_choice={"type": "function", "function": {"name": "get_weather"}},
            stream=True,
        )
    )
    calls = [tc for c in chunks if c.choices for tc in c.choices[0].delta.tool_calls or []]
    assert calls[0].id and calls[0].function and calls[0].function.name == "get_weather"
    args = "".join(tc.function.arguments or "" for tc in calls if tc.function)
    assert json.loads(args) == TOOL_INPUT
    assert [c.choices[0].finish_reason for c in chunks if c.choices][-1] == "tool_calls"


def test_a_streamed_call_without_arguments_has_an_empty_object_as_when_whole(running: Running, key: str) -> None:
    """Anthropic streams a call without arguments with an empty `partial_json`: its arguments are `{}`, as the
    whole answer's empty `input` gives them, not `""` (which no client can parse)."""
    oa = client(running, key)
    whole = oa.chat.completions.create(model=MODEL, messages=ASK_THE_TIME, tools=[CLOCK_TOOL])
    call = (whole.choices[0].message.tool_calls or [])[0]
    assert isinstance(call, ChatCompletionMessageFunctionToolCall) and call.function.arguments == "{}"
    stream = oa.chat.completions.create(model=MODEL, messages=ASK_THE_TIME, tools=[CLOCK_TOOL], stream=True)
    assert streamed_arguments(stream) == ["{}"]


@pytest.mark.parametrize("call_id", ["functions.get_weather:0", "call 1", ""], ids=["kimi", "spaced", "empty"])
def test_a_call_id_of_characters_anthropic_refuses_goes_as_a_stand_in_paired_with_its_result(
    running: Running, key: str, call_id: str
) -> None:
    """Anthropic takes a `tool_use.id` and a `tool_result.tool_use_id` of `[a-zA-Z0-9_-]` alone; another provider's
    call went as it wrote it (Kimi K2 names its calls `functions.get_weather:0`) and Anthropic refused every later
    turn of the session: 400 "String should match pattern '^[a-zA-Z0-9_-]+$'"."""
    call = {"id": call_id, "type": "function", "function": {"name": "get_weather", "arguments": '{"city":"Paris"}'}}
    history: Any = [
        *HI,
        {"role": "assistant", "content": None, "tool_calls": [call]},
        {"role": "tool", "tool_call_id": call_id, "content": "18 C and clear"},
    ]
    answer = client(running, key).chat.completions.create(model=MODEL, messages=history, tools=[WEATHER_TOOL])
    assert answer.choices[0].message.content == TEXT
    use, result = (sent(running)["json"]["messages"][i]["content"][0] for i in (1, 2))
    assert re.fullmatch(r"[a-zA-Z0-9_-]+", use["id"]) and use["id"] == result["tool_use_id"]


def test_thinking_is_left_off_a_tool_loop_whose_turn_carries_no_signed_thinking(running: Running, key: str) -> None:
    """An OpenAI-SDK agent loop on Claude with `reasoning_effort`: Chat Completions never hands Claude's signed
    thinking back, and Anthropic refuses thinking on a tool-use turn that does not open with it (a 400, its own
    advice being to disable thinking). Thinking is not sent on that loop, and the wish is named; a turn that hands
    the thinking back, or a new question, is thought through as asked."""
    call = {"id": "toolu_1", "type": "function", "function": {"name": "get_weather", "arguments": '{"city":"Paris"}'}}
    loop: Any = [
        *HI,
        {"role": "assistant", "content": None, "tool_calls": [call]},
        {"role": "tool", "tool_call_id": "toolu_1", "content": "18 C and clear"},
    ]
    settings: Any = {"model": MODEL, "tools": [WEATHER_TOOL], "reasoning_effort": "low"}
    raw = client(running, key).chat.completions.with_raw_response.create(messages=loop, **settings)
    assert raw.parse().choices[0].message.content == TEXT
    assert raw.headers["x-gateway-dropped-params"] == "reasoning_effort"
    assert "thinking" not in sent(running)["json"]

    signed = {"type": "thinking", "thinking": THINKING, "signature": SIGNATURE}
    handed_back: Any = [loop[0], {**loop[1], "thinking_blocks": [signed]}, loop[2]]
    raw = client(running, key).chat.completions.with_raw_response.create(messages=handed_back, **settings)
    assert raw.parse().choices[0].message.content == TEXT and "x-gateway-dropped-params" not in raw.headers
    body = sent(running)["json"]
    assert body["thinking"]["type"] == "enabled" and body["messages"][1]["content"][0] == signed

    closed: Any = [*loop, {"role": "assistant", "content": "18 C."}, {"role": "user", "content": "And Rome?"}]
    raw = client(running, key).chat.completions.with_raw_response.create(messages=closed, **settings)
    assert "x-gateway-dropped-params" not in raw.headers and sent(running)["json"]["thinking"]["type"] == "enabled"


def test_the_sdks_stream_helper_accumulates_interleaved_thinking_as_the_whole_answer_has_it(
    running: Running, key: str
) -> None:
    """A Claude answer with two or more thinking blocks (interleaved thinking around a tool call, a redacted block)
    broke the OpenAI SDK's `chat.completions.stream()` helper (`RuntimeError: Expected list delta entry to have an
    'index' key`): each block came as its own `thinking_blocks` list delta, which the SDK merges by `index`. Each
    entry carries its position among the answer's thinking blocks, so the accumulated message has the whole answer's
    blocks, in order; handed back next turn, they reach Claude as it wrote them, without the `index`."""
    oa = client(running, key)
    asked: Any = {
        "model": MODEL,
        "messages": HI,
        "tools": [WEATHER_TOOL],
        "reasoning_effort": "low",
        "user": "think-between",
    }
    whole = oa.chat.completions.create(**asked).choices[0].message
    with oa.chat.completions.stream(**asked) as events:
        streamed = events.get_final_completion().choices[0].message
    blocks = (whole.model_extra or {})["thinking_blocks"]
    assert (streamed.model_extra or {})["thinking_blocks"] == blocks
    assert blocks == [
        {"type": "thinking", "thinking": THINKING, "signature": SIGNATURE, "index": 0},
        {"type": "thinking", "thinking": THINKING_AGAIN, "signature": SIGNATURE_AGAIN, "index": 1},
        {"type": "redacted_thinking", "data": REDACTED, "index": 2},
    ]
    reasoning = [(m.model_extra or {})["reasoning_content"] for m in (whole, streamed)]
    assert reasoning == [THINKING + THINKING_AGAIN] * 2
    (call_id,), (other_id,) = ([c.id for c in m.tool_calls or []] for m in (streamed, whole))
    assert call_id.startswith("toolu_") and other_id != call_id  # (each answer's own, as Anthropic's are)

    calls: Any = [{"id": call_id, "type": "function", "function": {"name": "get_weather", "arguments": "{}"}}]
    handed = (streamed.model_extra or {})["thinking_blocks"]
    turn = {"role": "assistant", "content": streamed.content, "tool_calls": calls, "thinking_blocks": handed}
    result = {"role": "tool", "tool_call_id": call_id, "content": "18 C"}
    again: Any = {**{k: v for k, v in asked.items() if k != "user"}, "messages": [*HI, turn, result]}
    answer = oa.chat.completions.create(**again)
    assert answer.choices[0].message.content == TEXT
    handed_back = sent(running)["json"]["messages"][1]["content"]
    assert handed_back[:3] == [{k: v for k, v in block.items() if k != "index"} for block in blocks]


def test_json_schema_is_answered_through_a_forced_tool(running: Running, key: str) -> None:
    schema: Any = {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}
    completion = client(running, key).chat.completions.create(
        model=MODEL,
        messages=HI,
        response_format={"type": "json_schema", "json_schema": {"name": "place", "schema": schema}},
    )
    assert json.loads(completion.choices[0].message.content or "") == TOOL_INPUT
    assert completion.choices[0].finish_reason == "stop"


def test_a_strict_json_schema_goes_as_a_strict_forced_tool(running: Running, key: str) -> None:
    """A `json_schema` format with `strict: true` went as a forced tool without `strict` (a client's own strict tool
    keeps it), so Claude's answer was not held to the schema, and nothing was named even under `x-gateway-strict`.
    The forced tool is now strict, as Claude's strict tool use holds its input, the answer, to the schema; a
    format that is not strict goes as before."""
    schema: Any = {
        "type": "object",
        "properties": {"city": {"type": "string"}},
        "required": ["city"],
        "additionalProperties": False,
    }
    for strict in (True, False):
        fmt: Any = {"type": "json_schema", "json_schema": {"name": "place", "schema": schema, "strict": strict}}
        raw = client(running, key).chat.completions.with_raw_response.create(
            model=MODEL,
            messages=HI,
            response_format=fmt,
            extra_headers={"x-gateway-strict": "true"},
        )
        assert json.loads(raw.parse().choices[0].message.content or "") == TOOL_INPUT
        assert "x-gateway-dropped-params" not in raw.headers
        [tool] = sent(running)["json"]["tools"]
        assert tool["input_schema"] == schema and tool.get("strict") is (True if strict else None)


def test_dropped_parameters_are_reported(running: Running, key: str) -> None:
    raw = client(running, key).chat.completions.with_raw_response.create(
        model=MODEL, messages=HI, seed=3, presence_penalty=0.5
    )
    assert set(raw.headers["x-gateway-dropped-params"].split(",")) == {"seed", "presence_penalty"}
    assert "seed" not in sent(running)["json"]


def test_a_whitespace_only_stop_sequence_is_dropped_and_named(running: Running, key: str) -> None:
    """Anthropic refuses a request with a whitespace-only stop sequence ("stop_sequences: each stop sequence must
    contain non-whitespace"): `stop: ["\\n"]`, common from OpenAI clients, was a 400. It is dropped and named, the
    other sequences kept."""
    for stop, kept in ((["\n", "END"], ["END"]), ("\n\n", None)):
        raw = client(running, key).chat.completions.with_raw_response.create(model=MODEL, messages=HI, stop=stop)
        assert raw.parse().choices[0].message.content == TEXT
        assert raw.headers["x-gateway-dropped-params"] == "stop"
        assert sent(running)["json"].get("stop_sequences") == kept


def test_upstream_errors_are_mapped(running: Running, key: str) -> None:
    oa = client(running, key)
    with pytest.raises(openai.APIStatusError) as overloaded:
        oa.chat.completions.create(
            model=MODEL, messages=HI, user="fail-529", extra_headers={"x-gateway-fallbacks": "none"}
        )
    assert overloaded.value.status_code == 502
    assert overloaded.value.body["upstream_status"] == 529  # type: ignore[index]
    assert overloaded.value.body["upstream_type"] == "overloaded_error"  # type: ignore[index]
    assert "test-anthropic-key" not in str(overloaded.value.body)
    with pytest.raises(openai.BadRequestError) as rejected:
        oa.chat.completions.create(model=MODEL, messages=HI, user="fail-400")
    assert "text content blocks must be non-empty" in rejected.value.message


PNG = "iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAYAAAAfFcSJAAAADUlEQVR42mNk+M9QDwADhgGAWjR9awAAAABJRU5ErkJggg=="


def looking_at(url: str, detail: str | None = None) -> Any:
    image: dict[str, Any] = {"url": url} if detail is None else {"url": url, "detail": detail}
    return [
        {
            "role": "user",
            "content": [{"type": "text", "text": "What is it?"}, {"type": "image_url", "image_url": image}],
        }
    ]


@pytest.mark.parametrize(
    ("written", "media_type"),
    [("image/png;name=a.png", "image/png"), ("image/jpg", "image/jpeg"), ("IMAGE/PNG", "image/png")],
)
def test_an_images_data_url_reaches_claude_as_a_media_type_it_takes(
    running: Running, key: str, written: str, media_type: str
) -> None:
    """The data URL's header went to Anthropic as written (`image/png;name=a.png`, `image/jpg`): Anthropic takes
    only image/jpeg, image/png, image/gif and image/webp, by those names."""
    client(running, key).chat.completions.create(model=MODEL, messages=looking_at(f"data:{written};base64,{PNG}"))
    source = sent(running)["json"]["messages"][0]["content"][1]["source"]
    assert source == {"type": "base64", "media_type": media_type, "data": PNG}


@pytest.mark.parametrize("written", ["image/heic", ""])
def test_an_image_claude_cannot_take_is_the_clients_400(running: Running, key: str, written: str) -> None:
    """An image of another type, or of none (`data:;base64,`, sent as media type `""`), reached Anthropic."""
    before = len(running.fakes["anthropic"].state.requests)
    with pytest.raises(openai.BadRequestError) as refused:
        client(running, key).chat.completions.create(model=MODEL, messages=looking_at(f"data:{written};base64,{PNG}"))
    assert "it takes image/jpeg, image/png, image/gif and image/webp" in refused.value.message
    assert len(running.fakes["anthropic"].state.requests) == before


def test_an_images_detail_claude_cannot_honour_is_named(running: Running, key: str) -> None:
    """`detail: low` (OpenAI's cheaper image) was left out without a word, even under x-gateway-strict."""
    oa = client(running, key)
    raw = oa.chat.completions.with_raw_response.create(model=MODEL, messages=looking_at("https://x.test/a.png", "low"))
    assert raw.headers["x-gateway-dropped-params"] == "messages.image_url.detail"
    assert "detail" not in orjson.dumps(sent(running)["json"]).decode()
    raw = oa.chat.completions.with_raw_response.create(model=MODEL, messages=looking_at("https://x.test/a.png", "auto"))
    assert "x-gateway-dropped-params" not in raw.headers  # the default asks for nothing
    with pytest.raises(openai.BadRequestError) as refused:
        oa.chat.completions.create(
            model=MODEL, messages=looking_at("https://x.test/a.png", "high"), extra_headers={"x-gateway-strict": "true"}
        )
    assert "messages.image_url.detail" in refused.value.message


CLAUDE_NAME = re.compile(r"[a-zA-Z0-9_-]{1,128}")  # what Anthropic takes for a tool's name


@pytest.mark.parametrize("stream", [False, True], ids=["whole", "stream"])
def test_a_tool_name_anthropic_refuses_goes_as_an_alias_and_the_call_comes_back_by_the_clients_name(
    running: Running, key: str, stream: bool
) -> None:
    """Anthropic refuses a tool's name outside `^[a-zA-Z0-9_-]{1,128}$` with a 400 for the whole request: an MCP
    server's dotted names (`weather.get`), aliased for OpenAI and Bedrock's Claude, went to an `anthropic` deployment
    as written (review). The tool, the named choice of it and the history's call go by an alias; the model's call of
    the alias comes back by the client's name."""
    name = "weather.get"
    history: Any = [
        *HI,
        {"role": "assistant", "content": None, "tool_calls": [named_call(name, "toolu_1")]},
        {"role": "tool", "tool_call_id": "toolu_1", "content": "18 C and clear"},
        {"role": "user", "content": "And tomorrow?"},
    ]
    choice: Any = {"type": "function", "function": {"name": name}}
    settings: Any = {"model": MODEL, "messages": history, "tools": [named_tool(name)], "tool_choice": choice}
    assert called_names(client(running, key), settings, stream) == [name]
    body = sent(running)["json"]
    (alias,) = [tool["name"] for tool in body["tools"]]
    assert CLAUDE_NAME.fullmatch(alias) and alias != name
    assert body["tool_choice"] == {"type": "tool", "name": alias}
    assert body["messages"][1]["content"][0]["name"] == alias


def test_a_messages_clients_tool_names_pass_through_as_written(running: Running, key: str) -> None:
    """A Messages client's request passed through to Anthropic keeps its names: they are already Anthropic's."""
    tool: Any = {"name": "get_weather", "input_schema": {"type": "object", "properties": {"city": {"type": "string"}}}}
    answer = httpx.post(
        f"{running.url}/v1/messages",
        json={"model": MODEL, "max_tokens": 100, "messages": HI, "tools": [tool], "tool_choice": {"type": "any"}},
        headers={"x-api-key": key, "anthropic-version": "2023-06-01"},
    )
    assert answer.status_code == 200, answer.text
    assert [tool["name"] for tool in sent(running)["json"]["tools"]] == ["get_weather"]
    assert [block["name"] for block in answer.json()["content"] if block["type"] == "tool_use"] == ["get_weather"]


@pytest.mark.parametrize("mode", ["auto", "required"])
def test_an_allowed_tools_choice_offers_claude_the_allowed_tools_by_their_aliases(
    running: Running, key: str, mode: str
) -> None:
    """A `tool_choice` of type `allowed_tools` was the gateway's 400. Anthropic has no list of tools the model may
    call: the tools it allows are offered alone (the model can call no other), each by the name Anthropic takes (an
    MCP server's dotted name by its alias), and its mode is Anthropic's choice (`required`: `any`)."""
    name = "weather.get"
    settings: Any = {"model": MODEL, "messages": HI, "tools": [WEATHER_TOOL, named_tool(name)]}
    settings["tool_choice"] = allowed_tools(mode, name)
    assert called_names(client(running, key), settings, False) == ([name] if mode == "required" else [])
    body = sent(running)["json"]
    (alias,) = [tool["name"] for tool in body["tools"]]
    assert CLAUDE_NAME.fullmatch(alias) and alias != name
    assert body["tool_choice"] == {"type": "any" if mode == "required" else "auto"}
