"""The Anthropic adapter against recorded Messages API bodies, SSE transcripts and error bodies."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import httpx2
import orjson
import pytest
from anthropic._error_classes import make_status_error
from anthropic.types import (
    ThreadAlreadyContinuedError,
    ThreadContinueInFlightError,
    ThreadNotFoundError,
    ThreadUnsupportedRequestError,
)

from adapters.providers.anthropic import AnthropicAdapter
from adapters.providers.anthropic.adapter import DETAILS_BYTES, JSON_OBJECT_INSTRUCTION, JSON_TOOL, said_details
from adapters.providers.anthropic.stream import AnthropicStreamParser, MessagesMeter
from adapters.providers.registry import REGISTRY
from handler.errors import InvalidRequestError, ProviderRejectedError, UpstreamError
from handler.ports import MESSAGES_API, NativeCall, Target
from handler.schemas import ChatRequest, Usage
from handler.wire import SSEDecoder, StreamEvent

FIXTURES = Path(__file__).resolve().parents[3] / "fixtures" / "anthropic"
MODEL = "claude-sonnet-4-5-20250929"
WEATHER = {
    "type": "function",
    "function": {"name": "get_weather", "parameters": {"type": "object", "properties": {"city": {"type": "string"}}}},
}
SCHEMA = {"type": "object", "properties": {"answer": {"type": "integer"}}, "required": ["answer"]}


def target(model: str = MODEL, base_url: str = "https://api.anthropic.com", **options: Any) -> Target:
    return Target("claude", "anthropic", model, "global", base_url, options)


def adapter(**options: object) -> AnthropicAdapter:
    return AnthropicAdapter("claude", "sk-ant-test", options)


def request(**fields: object) -> ChatRequest:
    return ChatRequest.model_validate({"model": "public", "messages": [{"role": "user", "content": "hi"}], **fields})


def built(req: ChatRequest, t: Target | None = None, *, stream: bool = False) -> tuple[dict[str, Any], list[str]]:
    result = adapter().chat_request(req, t or target(), stream=stream)
    return orjson.loads(result.request.body), result.dropped


def fixture(name: str) -> bytes:
    return (FIXTURES / name).read_bytes()


def parse_stream(name: str, req: ChatRequest | None = None) -> tuple[list[dict[str, Any]], Usage | None]:
    decoder = adapter().frame_decoder()
    parser = adapter().stream_parser(req or request(), target())
    raw = fixture(name)
    chunks = []
    for i in range(0, len(raw), 29):  # odd-sized reads: frames split anywhere
        for event in decoder.feed(raw[i : i + 29]):
            chunks.extend(parser.feed(event))
    for event in decoder.finish():
        chunks.extend(parser.feed(event))
    chunks.extend(parser.finish())
    return [c.model_dump(exclude_none=True) for c in chunks], parser.usage


def feed(parser: AnthropicStreamParser, event: str, data: dict[str, Any]) -> list[dict[str, Any]]:
    chunks = parser.feed(StreamEvent(event, orjson.dumps(data)))
    return [c.model_dump(exclude_none=True) for c in chunks]


def deltas(chunks: list[dict[str, Any]], field: str) -> str:
    return "".join(str(ch["delta"].get(field) or "") for c in chunks for ch in c["choices"])


def arguments(chunks: list[dict[str, Any]]) -> str:
    return "".join(
        tc.get("function", {}).get("arguments", "")
        for c in chunks
        for ch in c["choices"]
        for tc in ch["delta"].get("tool_calls", [])
    )


# --- request -------------------------------------------------------------------------------------


def test_registry_maps_the_anthropic_type() -> None:
    assert REGISTRY["anthropic"] is AnthropicAdapter


def test_representative_request_becomes_the_recorded_messages_body() -> None:
    req = ChatRequest.model_validate_json(fixture("openai-request.json"))
    result = adapter().chat_request(req, target(), stream=False)
    assert orjson.loads(result.request.body) == orjson.loads(fixture("messages-request.json"))
    # Claude Sonnet 4.5 refuses temperature and top_p together; Claude has no image `detail` (the image's is "low").
    assert result.dropped == ["top_p", "messages.image_url.detail"]
    assert result.request.method == "POST" and result.request.url == "https://api.anthropic.com/v1/messages"
    assert result.request.headers["x-api-key"] == "sk-ant-test"
    assert result.request.headers["anthropic-version"] == "2023-06-01"
    assert result.request.headers["content-type"] == "application/json"
    assert "authorization" not in result.request.headers


def test_base_url_that_already_ends_in_v1_is_not_doubled() -> None:
    result = adapter().chat_request(request(), target(base_url="https://proxy.example/v1"), stream=False)
    assert result.request.url == "https://proxy.example/v1/messages"


def test_stream_request_asks_for_a_stream_without_openai_stream_options() -> None:
    body, dropped = built(request(stream=True, stream_options={"include_usage": True}), stream=True)
    assert body["stream"] is True and "stream_options" not in body and dropped == []


@pytest.mark.parametrize(
    ("fields", "model", "options", "expected"),
    [
        ({"max_tokens": 100}, MODEL, {}, 100),
        ({"max_completion_tokens": 200, "max_tokens": 100}, MODEL, {}, 200),
        ({}, "claude-opus-4-1-20250805", {}, 16384),
        ({}, "claude-sonnet-4-5", {}, 16384),
        ({}, "claude-haiku-4-5", {}, 8192),
        ({}, "claude-3-5-haiku-latest", {}, 8192),
        ({}, "some-future-model", {}, 4096),
        ({}, MODEL, {"max_output_tokens": 1000}, 1000),
    ],
)
def test_max_tokens_is_always_sent(fields: dict[str, Any], model: str, options: dict[str, Any], expected: int) -> None:
    body, _ = built(request(**fields), target(model, **options))
    assert body["max_tokens"] == expected


def test_provider_option_sets_the_default_max_tokens() -> None:
    result = adapter(max_output_tokens=777).chat_request(request(), target(), stream=False)
    assert orjson.loads(result.request.body)["max_tokens"] == 777


def test_single_stop_string_becomes_a_list_of_stop_sequences() -> None:
    body, _ = built(request(stop="END"))
    assert body["stop_sequences"] == ["END"] and "stop" not in body


@pytest.mark.parametrize(
    ("stop", "kept"), [(["\n", "END", " \t"], ["END"]), ("\n", None), (["\n\nHuman:"], ["\n\nHuman:"])]
)
def test_whitespace_only_stop_sequences_are_dropped_and_named(stop: object, kept: list[str] | None) -> None:
    """Anthropic answers 400 "stop_sequences: each stop sequence must contain non-whitespace"; a sequence with
    some non-whitespace in it is kept whole."""
    body, dropped = built(request(stop=stop))
    assert body.get("stop_sequences") == kept
    assert dropped == ([] if kept == stop else ["stop"])


def test_temperature_above_one_is_clamped_and_reported() -> None:
    body, dropped = built(request(temperature=1.7, top_p=0.5), target("claude-3-7-sonnet-latest"))
    assert body["temperature"] == 1.0 and body["top_p"] == 0.5 and dropped == ["temperature"]


@pytest.mark.parametrize("model", ["claude-sonnet-4-5-20250929", "claude-haiku-4-5", "claude-opus-4-1-20250805"])
def test_claude_4_5_and_opus_4_get_temperature_or_top_p_never_both(model: str) -> None:
    body, dropped = built(request(temperature=0.3, top_p=0.5), target(model))
    assert body["temperature"] == 0.3 and "top_p" not in body and dropped == ["top_p"]
    body, dropped = built(request(top_p=0.5), target(model))
    assert body["top_p"] == 0.5 and dropped == []


def test_parameters_anthropic_cannot_honour_are_reported_not_sent() -> None:
    req = request(
        n=2,
        presence_penalty=0.5,
        frequency_penalty=0.1,
        logprobs=True,
        top_logprobs=3,
        logit_bias={"50256": -100},
        seed=42,
        service_tier="flex",
    )
    body, dropped = built(req)
    expected = [
        "n",
        "frequency_penalty",
        "logit_bias",
        "logprobs",
        "presence_penalty",
        "seed",
        "service_tier",
        "top_logprobs",
    ]
    assert dropped == expected
    assert not set(expected) & set(body)


@pytest.mark.parametrize(
    ("fields", "model", "expected", "dropped"),
    [
        ({"reasoning_effort": "low", "max_tokens": 8000}, MODEL, {"type": "enabled", "budget_tokens": 2048}, []),
        # The answer keeps 4096 tokens beside the thinking, or half of a smaller cap (Codex on a budgeted key: 4096).
        ({"reasoning_effort": "medium", "max_tokens": 4096}, MODEL, {"type": "enabled", "budget_tokens": 2048}, []),
        ({"reasoning_effort": "high", "max_tokens": 4000}, MODEL, {"type": "enabled", "budget_tokens": 2000}, []),
        ({"reasoning_effort": "high", "max_tokens": 20000}, MODEL, {"type": "enabled", "budget_tokens": 15904}, []),
        ({"reasoning_effort": "high"}, MODEL, {"type": "enabled", "budget_tokens": 12288}, []),  # default: 16384
        ({"reasoning_effort": "low", "max_tokens": 2000}, MODEL, None, ["reasoning_effort"]),
        ({"reasoning_effort": "high", "max_tokens": 1000}, MODEL, None, ["reasoning_effort"]),
        ({"reasoning_effort": "low"}, "claude-3-5-haiku-latest", None, ["reasoning_effort"]),
        ({"thinking": {"type": "adaptive"}}, "claude-opus-4-6", {"type": "adaptive"}, []),
        ({"thinking": {"type": "adaptive"}}, MODEL, {"type": "enabled", "budget_tokens": 8192}, []),
        (
            {"thinking": {"type": "enabled", "budget_tokens": 5000}},
            MODEL,
            {"type": "enabled", "budget_tokens": 5000},
            [],
        ),
        # A budget the client named that Anthropic takes is its own split; one that does not fit is lowered.
        (
            {"thinking": {"type": "enabled", "budget_tokens": 5000}, "max_tokens": 6000},
            MODEL,
            {"type": "enabled", "budget_tokens": 5000},
            [],
        ),
        (
            {"thinking": {"type": "enabled", "budget_tokens": 10000}, "max_tokens": 4096},
            MODEL,
            {"type": "enabled", "budget_tokens": 2048},
            [],
        ),
        ({"reasoning_effort": "none"}, MODEL, None, []),
    ],
)
def test_reasoning_effort_and_thinking_become_a_thinking_budget(
    fields: dict[str, Any], model: str, expected: dict[str, Any] | None, dropped: list[str]
) -> None:
    body, not_honoured = built(request(**fields), target(model))
    assert body.get("thinking") == expected and not_honoured == dropped


@pytest.mark.parametrize(
    ("fields", "model", "effort"),
    [
        ({"reasoning_effort": "high"}, "claude-opus-4-7", "high"),
        ({"reasoning_effort": "minimal"}, "claude-opus-4-7", "low"),
        ({"reasoning_effort": "xhigh"}, "claude-opus-4-7", "xhigh"),
        ({"reasoning_effort": "xhigh"}, "claude-opus-4-6", "max"),  # no xhigh before 4.7: the level above high
        ({"thinking": {"type": "enabled", "budget_tokens": 5000}}, "claude-opus-4-7", "medium"),
        ({"thinking": {"type": "adaptive", "effort": "low"}}, "claude-sonnet-4-6", "low"),
        ({"thinking": {"type": "adaptive"}}, "claude-opus-4-7", None),
    ],
)
def test_adaptive_models_get_adaptive_thinking_with_the_effort_never_a_budget(
    fields: dict[str, Any], model: str, effort: str | None
) -> None:
    """Opus 4.7 refuses `budget_tokens` (a 400) and the 4.6 models deprecate it: whatever the wish, they get
    adaptive thinking, its depth as `output_config.effort`."""
    body, dropped = built(request(max_tokens=20000, **fields), target(model))
    assert body["thinking"] == {"type": "adaptive"} and dropped == []
    assert body.get("output_config") == ({"effort": effort} if effort else None)


def test_a_json_schema_answer_cut_by_the_token_limit_is_length_not_stop() -> None:
    fmt = {"type": "json_schema", "json_schema": {"name": "a", "schema": {"type": "object"}}}
    content = [{"type": "tool_use", "id": "t", "name": "json_response", "input": {"a": "the quick br"}}]
    answer = {
        "id": "msg_1",
        "type": "message",
        "role": "assistant",
        "model": MODEL,
        "content": content,
        "stop_reason": "max_tokens",
        "usage": {"input_tokens": 1, "output_tokens": 1},
    }
    completion = adapter().chat_response(orjson.dumps(answer), request(response_format=fmt), target())
    assert completion.choices[0].finish_reason == "length"


def test_thinking_drops_a_changed_temperature_and_keeps_signed_blocks() -> None:
    thinking = {"type": "thinking", "thinking": "Let me see.", "signature": "sig-1"}
    messages = [
        {"role": "user", "content": "hi"},
        {"role": "assistant", "content": "Hello.", "thinking_blocks": [thinking], "reasoning_content": "Let me see."},
        {"role": "user", "content": "again"},
    ]
    body, dropped = built(request(messages=messages, reasoning_effort="low", temperature=0.2, max_tokens=9000))
    assert body["thinking"] == {"type": "enabled", "budget_tokens": 2048}
    assert "temperature" not in body and dropped == ["temperature"]
    assert body["messages"][1]["content"] == [thinking, {"type": "text", "text": "Hello."}]


CALL = {"id": "toolu_1", "type": "function", "function": {"name": "get_weather", "arguments": '{"city": "Paris"}'}}
SIGNED = {"type": "thinking", "thinking": "Ask the tool.", "signature": "sig-1"}
REDACTED = {"type": "redacted_thinking", "data": "EmwKAhgBEgy3va3pzix/LafPsn4a"}


def tool_loop(**assistant: Any) -> list[dict[str, Any]]:
    """A question, the assistant's tool call (with `assistant`'s fields), and the tool's result."""
    return [
        {"role": "user", "content": "Weather in Paris?"},
        {"role": "assistant", "content": None, "tool_calls": [CALL], **assistant},
        {"role": "tool", "tool_call_id": "toolu_1", "content": "18 C"},
    ]


@pytest.mark.parametrize(
    ("fields", "model", "named"),
    [
        ({"reasoning_effort": "low"}, MODEL, "reasoning_effort"),
        ({"thinking": {"type": "enabled", "budget_tokens": 2048}}, MODEL, "thinking"),
        ({"reasoning_effort": "high"}, "claude-opus-4-6", "reasoning_effort"),  # adaptive, with an effort
        ({"reasoning_effort": "low", "tool_choice": "required"}, MODEL, "reasoning_effort"),  # forced tool use
    ],
)
def test_no_thinking_on_a_tool_loop_whose_last_turn_does_not_open_with_thinking(
    fields: dict[str, Any], model: str, named: str
) -> None:
    """Anthropic refuses thinking when the final assistant turn called a tool without opening with a thinking
    block ("To avoid this requirement, disable `thinking`"), and on a turn whose tool use is forced: the request
    goes without `thinking` and without the `output_config.effort` that goes with it, the wish is named, and
    the temperature thinking would have dropped is kept."""
    req = request(messages=tool_loop(), tools=[WEATHER], temperature=0.5, max_tokens=8000, **fields)
    body, dropped = built(req, target(model))
    assert "thinking" not in body and "output_config" not in body
    assert dropped == [named] and body["temperature"] == 0.5


@pytest.mark.parametrize(
    "messages",
    [
        tool_loop(thinking_blocks=[SIGNED]),
        tool_loop(thinking_blocks=[REDACTED]),
        # The loop closed with an answer: a new question needs no thinking handed back from it.
        [*tool_loop(), {"role": "assistant", "content": "18 C."}, {"role": "user", "content": "And Rome?"}],
        [{"role": "user", "content": "Hi"}],
    ],
    ids=["signed", "redacted", "closed-loop", "no-tool-use"],
)
def test_thinking_is_sent_where_the_last_tool_turn_opens_with_it_or_there_is_none(
    messages: list[dict[str, Any]],
) -> None:
    body, dropped = built(request(messages=messages, tools=[WEATHER], reasoning_effort="low", max_tokens=8000))
    assert body["thinking"] == {"type": "enabled", "budget_tokens": 2048} and dropped == []


def test_cache_markers_on_parts_reach_anthropic_and_keep_system_blocks() -> None:
    marker = {"type": "ephemeral"}
    messages = [
        {"role": "system", "content": [{"type": "text", "text": "Long rules.", "cache_control": marker}]},
        {"role": "user", "content": [{"type": "text", "text": "Question", "cache_control": marker}]},
    ]
    tool = {**WEATHER, "cache_control": marker}
    body, dropped = built(request(messages=messages, tools=[tool]))
    assert body["system"] == [{"type": "text", "text": "Long rules.", "cache_control": marker}]
    assert body["messages"][0]["content"] == [{"type": "text", "text": "Question", "cache_control": marker}]
    assert body["tools"][0]["cache_control"] == marker and dropped == []


def test_harmless_values_are_not_reported() -> None:
    body, dropped = built(request(n=1, seed=None, top_k=5, response_format={"type": "text"}))
    assert dropped == [] and body["top_k"] == 5 and "n" not in body and "seed" not in body


@pytest.mark.parametrize(
    ("choice", "expected"),
    [
        ("auto", {"type": "auto"}),
        ("none", {"type": "none"}),
        ("required", {"type": "any"}),
        ({"type": "function", "function": {"name": "get_weather"}}, {"type": "tool", "name": "get_weather"}),
    ],
)
def test_tool_choice_maps_to_anthropic_form(choice: object, expected: dict[str, Any]) -> None:
    body, dropped = built(request(tools=[WEATHER], tool_choice=choice))
    assert body["tool_choice"] == expected and dropped == []
    assert body["tools"] == [{"name": "get_weather", "input_schema": WEATHER["function"]["parameters"]}]  # type: ignore[index]


def test_disabling_parallel_tool_calls_defaults_to_auto() -> None:
    body, _ = built(request(tools=[WEATHER], parallel_tool_calls=False))
    assert body["tool_choice"] == {"type": "auto", "disable_parallel_tool_use": True}


def test_tool_without_parameters_gets_an_object_schema() -> None:
    body, _ = built(request(tools=[{"type": "function", "function": {"name": "now"}}]))
    assert body["tools"] == [{"name": "now", "input_schema": {"type": "object"}}]


def test_tool_choice_without_tools_is_reported() -> None:
    body, dropped = built(request(tool_choice="required"))
    assert "tool_choice" not in body and dropped == ["tool_choice"]


def test_tool_turns_sent_without_tools_declare_the_tools_they_call_and_let_none_be_called() -> None:
    """Anthropic refuses `tool_use` and `tool_result` blocks in a request that defines no tools (400 "Requests which
    include `tool_use` or `tool_result` blocks must define tools"), which Chat Completions takes (a summary asked after
    a tool loop): the tools the turns call go declared, bare, and `tool_choice: none` keeps Claude from calling them.
    A result that answers no call (a legacy `function` message: its `function_call` is not carried) goes as text."""
    calls = [
        {"id": f"toolu_{i}", "type": "function", "function": {"name": name, "arguments": "{}"}}
        for i, name in ((1, "get_weather"), (2, "get.time"), (3, "get_weather"))
    ]
    messages: list[dict[str, Any]] = [
        {"role": "user", "content": "Paris?"},
        {"role": "assistant", "content": None, "tool_calls": calls},
        *[{"role": "tool", "tool_call_id": f"toolu_{i}", "content": "ok"} for i in (1, 2, 3)],
        {"role": "user", "content": "Summarise."},
    ]
    for choice in ({}, {"tool_choice": "none"}, {"tool_choice": "required"}):
        body, dropped = built(ChatRequest.model_validate({"model": "m", "messages": messages, **choice}))
        declared = [tool["name"] for tool in body["tools"]]
        assert declared == ["get_weather", body["messages"][1]["content"][1]["name"]]  # (`get.time` as Claude takes it)
        assert {tool["input_schema"]["type"] for tool in body["tools"]} == {"object"}
        assert body["tool_choice"] == {"type": "none"}
        assert dropped == (["tool_choice"] if choice.get("tool_choice") == "required" else [])
    legacy = [
        {"role": "user", "content": "Paris?"},
        {"role": "assistant", "content": "Looking."},
        {"role": "function", "name": "get_weather", "content": "18C"},
    ]
    body, dropped = built(ChatRequest.model_validate({"model": "m", "messages": legacy}))
    assert "tools" not in body and "tool_choice" not in body and dropped == []
    assert body["messages"][2] == {
        "role": "user",
        "content": [{"type": "text", "text": "[result of get_weather]"}, {"type": "text", "text": "18C"}],
    }


def test_a_result_turned_into_text_goes_after_the_real_tool_results_of_its_turn() -> None:
    """A legacy `function` result beside a `tool` result in one user turn, sent without tools: the first was turned into
    text after the turn's tool results had been put first, and its text went before the real `tool_result`, which
    Anthropic refuses ("tool_result blocks must come first"; found by review of the merge)."""
    messages: list[dict[str, Any]] = [
        {"role": "user", "content": "Paris?"},
        {
            "role": "assistant",
            "content": None,
            "tool_calls": [
                {"id": "toolu_1", "type": "function", "function": {"name": "get_weather", "arguments": "{}"}}
            ],
        },
        {"role": "function", "name": "get_time", "content": "12:00"},
        {"role": "tool", "tool_call_id": "toolu_1", "content": "18C"},
    ]
    body, _ = built(ChatRequest.model_validate({"model": "m", "messages": messages}))
    assert [block["type"] for block in body["messages"][2]["content"]] == ["tool_result", "text", "text"]
    assert body["messages"][2]["content"][1] == {"type": "text", "text": "[result of get_time]"}


def test_parallel_tool_results_merge_into_one_user_turn_before_its_text() -> None:
    calls = [
        {"id": f"toolu_{i}", "type": "function", "function": {"name": "get_weather", "arguments": ""}} for i in (1, 2)
    ]
    messages = [
        {"role": "user", "content": "Paris and Rome?"},
        {"role": "assistant", "content": "Checking both.", "tool_calls": calls},
        {"role": "tool", "tool_call_id": "toolu_1", "content": "sunny"},
        {"role": "tool", "tool_call_id": "toolu_2", "content": [{"type": "text", "text": "rain"}]},
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": "Summarise."},
    ]
    body, _ = built(ChatRequest.model_validate({"model": "m", "messages": messages}))
    assert [m["role"] for m in body["messages"]] == ["user", "assistant", "user"]
    assert body["messages"][1]["content"] == [
        {"type": "text", "text": "Checking both."},
        {"type": "tool_use", "id": "toolu_1", "name": "get_weather", "input": {}},
        {"type": "tool_use", "id": "toolu_2", "name": "get_weather", "input": {}},
    ]
    last = body["messages"][2]["content"]
    assert [b["type"] for b in last] == ["tool_result", "tool_result", "text"]
    assert last[0]["tool_use_id"] == "toolu_1" and last[1]["content"] == [{"type": "text", "text": "rain"}]
    assert body["system"] == "Be brief."


def test_empty_assistant_turns_and_empty_text_are_not_sent() -> None:
    messages = [
        {"role": "user", "content": [{"type": "text", "text": ""}, {"type": "text", "text": "hi"}]},
        {"role": "assistant", "content": ""},
        {"role": "user", "content": "again"},
    ]
    body, _ = built(ChatRequest.model_validate({"model": "m", "messages": messages}))
    assert body["messages"] == [
        {"role": "user", "content": [{"type": "text", "text": "hi"}, {"type": "text", "text": "again"}]}
    ]
    assert "system" not in body and "metadata" not in body


def test_pdf_file_becomes_a_document_block() -> None:
    part = {"type": "file", "file": {"filename": "a.pdf", "file_data": "data:application/pdf;base64,JVBERi0x"}}
    body, _ = built(request(messages=[{"role": "user", "content": [part]}]))
    source = {"type": "base64", "media_type": "application/pdf", "data": "JVBERi0x"}
    assert body["messages"][0]["content"] == [{"type": "document", "source": source}]


@pytest.mark.parametrize(
    "part",
    [
        {"type": "input_audio", "input_audio": {"data": "AAAA", "format": "wav"}},
        {"type": "image_url", "image_url": {"url": "ftp://example.com/a.png"}},
        {"type": "image_url", "image_url": {"url": "data:image/png,notbase64"}},
        {"type": "file", "file": {"file_id": "file-abc"}},
    ],
)
def test_content_anthropic_cannot_take_is_refused(part: dict[str, Any]) -> None:
    with pytest.raises(InvalidRequestError) as refused:
        built(request(messages=[{"role": "user", "content": [part]}]))
    assert refused.value.param == "messages"


def test_tool_call_arguments_that_are_not_json_are_refused() -> None:
    call = {"id": "t", "type": "function", "function": {"name": "f", "arguments": "{oops"}}
    messages = [{"role": "user", "content": "x"}, {"role": "assistant", "tool_calls": [call]}]
    with pytest.raises(InvalidRequestError):
        built(request(messages=messages))


def test_json_object_mode_adds_an_instruction_to_the_system_prompt() -> None:
    messages = [{"role": "system", "content": "You grade essays."}, {"role": "user", "content": "Grade this."}]
    body, dropped = built(request(messages=messages, response_format={"type": "json_object"}))
    assert body["system"] == f"You grade essays.\n\n{JSON_OBJECT_INSTRUCTION}"
    assert "tools" not in body and dropped == []


def test_json_schema_mode_forces_a_tool_with_the_schema() -> None:
    fmt = {"type": "json_schema", "json_schema": {"name": "grade", "schema": SCHEMA, "strict": True}}
    body, dropped = built(request(response_format=fmt))
    assert body["tools"] == [
        {
            "name": JSON_TOOL,
            "description": "Give the answer as this tool's input.",
            "input_schema": SCHEMA,
            "strict": True,
        }
    ]
    assert body["tool_choice"] == {"type": "tool", "name": JSON_TOOL} and dropped == []


def test_json_schema_with_client_tools_requires_some_tool() -> None:
    fmt = {"type": "json_schema", "json_schema": {"name": "grade", "schema": SCHEMA}}
    body, _ = built(request(response_format=fmt, tools=[WEATHER], tool_choice="auto"))
    assert [t["name"] for t in body["tools"]] == ["get_weather", JSON_TOOL] and body["tool_choice"] == {"type": "any"}


def test_json_schema_keeps_tool_choice_none_and_one_call_at_a_time() -> None:
    """`tool_choice: none` became `any` beside the client's tools, so Claude was made to call one; and
    `parallel_tool_calls: false` was lost (found by review)."""
    fmt = {"type": "json_schema", "json_schema": {"name": "grade", "schema": SCHEMA}}
    body, dropped = built(request(response_format=fmt, tools=[WEATHER], tool_choice="none"))
    assert [t["name"] for t in body["tools"]] == [JSON_TOOL] and body["tool_choice"] == {
        "type": "tool",
        "name": JSON_TOOL,
    }
    body, _ = built(request(response_format=fmt, tools=[WEATHER], parallel_tool_calls=False))
    assert body["tool_choice"] == {"type": "any", "disable_parallel_tool_use": True}


def test_the_end_user_is_the_user_else_the_safety_identifier() -> None:
    """OpenAI replaces `user` with `safety_identifier`: a client sending only that lost its end user at Anthropic."""
    body, dropped = built(request(safety_identifier="end-user-42"))
    assert body["metadata"] == {"user_id": "end-user-42"} and dropped == []
    body, dropped = built(request(user="u-1", safety_identifier="end-user-42"))
    assert body["metadata"] == {"user_id": "u-1"} and dropped == ["safety_identifier"]


# --- answer --------------------------------------------------------------------------------------


def test_text_answer_with_cache_usage() -> None:
    completion = adapter().chat_response(fixture("message-response.json"), request(), target())
    choice = completion.choices[0]
    assert choice.message.content == "Hi! My name is Claude." and choice.message.tool_calls is None
    assert choice.finish_reason == "stop" and completion.id == "msg_013Zva2CMHLNnXjNJJKqJ2EF"
    assert completion.model == MODEL
    usage = completion.usage
    assert usage is not None
    assert usage.prompt_tokens == 2095 + 1024 + 100 and usage.completion_tokens == 503
    assert usage.total_tokens == 2095 + 1024 + 100 + 503
    assert usage.cached_tokens == 1024 and usage.cache_write_tokens == 100


def test_tool_use_answer_becomes_tool_calls() -> None:
    completion = adapter().chat_response(fixture("message-tool-use-response.json"), request(), target())
    choice = completion.choices[0]
    assert choice.finish_reason == "tool_calls"
    assert choice.message.content == "I'll check the current weather in San Francisco for you."
    [call] = choice.message.tool_calls or []
    assert call.id == "toolu_01A09q90qw90lq917835lq9" and call.function.name == "get_weather"
    assert orjson.loads(call.function.arguments) == {"location": "San Francisco, CA", "unit": "celsius"}


def test_json_schema_answer_comes_back_as_message_text() -> None:
    answer = orjson.loads(fixture("message-tool-use-response.json"))
    answer["content"][1].update(name=JSON_TOOL, input={"answer": 42})
    fmt = {"type": "json_schema", "json_schema": {"name": "grade", "schema": SCHEMA}}
    completion = adapter().chat_response(orjson.dumps(answer), request(response_format=fmt), target())
    choice = completion.choices[0]
    assert orjson.loads(choice.message.content or "") == {"answer": 42}
    assert choice.message.tool_calls is None and choice.finish_reason == "stop"


@pytest.mark.parametrize(
    ("stop_reason", "finish"),
    [
        ("end_turn", "stop"),
        ("stop_sequence", "stop"),
        ("pause_turn", "stop"),
        ("max_tokens", "length"),
        ("model_context_window_exceeded", "length"),
        ("refusal", "content_filter"),
        (None, "stop"),
    ],
)
def test_stop_reasons_map_to_finish_reasons(stop_reason: str | None, finish: str) -> None:
    answer = orjson.loads(fixture("message-response.json")) | {"stop_reason": stop_reason}
    assert adapter().chat_response(orjson.dumps(answer), request(), target()).choices[0].finish_reason == finish


def test_thinking_blocks_become_reasoning_content() -> None:
    answer = orjson.loads(fixture("message-response.json"))
    answer["content"].insert(0, {"type": "thinking", "thinking": "Let me think.", "signature": "sig"})
    completion = adapter().chat_response(orjson.dumps(answer), request(), target())
    assert completion.choices[0].message.reasoning_content == "Let me think."
    assert completion.choices[0].message.content == "Hi! My name is Claude."


@pytest.mark.parametrize(
    ("body", "outcome"),
    [
        (b"<html>502 Bad Gateway</html>", "invalid_json"),
        (b'{"type": "message", "content": []}', "invalid_response"),
        (b'{"choices": []}', "invalid_response"),
    ],
)
def test_unusable_200_answers_are_retryable_upstream_errors(body: bytes, outcome: str) -> None:
    with pytest.raises(UpstreamError) as bad:
        adapter().chat_response(body, request(), target())
    assert bad.value.retryable and bad.value.upstream_status == 200 and bad.value.outcome == outcome


# --- stream --------------------------------------------------------------------------------------


def test_stream_with_text_and_tool_use() -> None:
    chunks, usage = parse_stream("messages-stream.sse")
    assert chunks[0]["choices"][0]["delta"] == {"role": "assistant", "content": ""}
    assert all(c["id"] == "msg_014p7gG3wDgGV9EUtLvnow3U" and c["model"] == MODEL for c in chunks)
    assert deltas(chunks, "content") == "Okay, let's check the weather for San Francisco, CA:"
    starts = [tc for c in chunks for ch in c["choices"] for tc in ch["delta"].get("tool_calls", []) if "id" in tc]
    assert starts == [
        {
            "index": 0,
            "id": "toolu_01T1x1fJ34qAmk2tNTrN7Up6",
            "type": "function",
            "function": {"name": "get_weather", "arguments": ""},
        }
    ]
    assert orjson.loads(arguments(chunks)) == {"location": "San Francisco, CA", "unit": "fahrenheit"}
    finishes = [ch["finish_reason"] for c in chunks for ch in c["choices"] if ch.get("finish_reason")]
    assert finishes == ["tool_calls"]
    assert chunks[-1]["choices"] == [] and chunks[-1]["usage"]["completion_tokens"] == 89
    assert usage is not None and usage.prompt_tokens == 472 + 256 and usage.cached_tokens == 256
    assert usage.completion_tokens == 89


def test_stream_thinking_becomes_reasoning_and_signatures_are_ignored() -> None:
    chunks, usage = parse_stream("messages-thinking-stream.sse")
    assert deltas(chunks, "reasoning_content") == "27 * 453 = 12231"
    assert deltas(chunks, "content") == "27 * 453 = 12,231"
    assert [ch["finish_reason"] for c in chunks for ch in c["choices"] if ch.get("finish_reason")] == ["length"]
    assert usage is not None and usage.prompt_tokens == 30 and usage.completion_tokens == 40


def test_second_tool_block_gets_the_next_tool_call_index() -> None:
    parser = adapter().stream_parser(request(), target())
    feed(parser, "message_start", {"type": "message_start", "message": orjson.loads(fixture("message-response.json"))})
    for index, tool_id in ((0, "toolu_a"), (1, "toolu_b")):
        block = {"type": "tool_use", "id": tool_id, "name": "get_weather", "input": {}}
        feed(parser, "content_block_start", {"type": "content_block_start", "index": index, "content_block": block})
    delta = {"type": "input_json_delta", "partial_json": '{"city": "Rome"}'}
    chunks = feed(parser, "content_block_delta", {"type": "content_block_delta", "index": 1, "delta": delta})
    assert chunks[0]["choices"][0]["delta"]["tool_calls"] == [
        {"index": 1, "function": {"arguments": '{"city": "Rome"}'}}
    ]


@pytest.mark.parametrize(
    ("base_url", "options", "searched"),
    [
        ("https://api.anthropic.com", {}, True),
        ("https://api.anthropic.com/v1", {"web_search": False}, False),
        ("https://compatible.example/anthropic", {}, False),
        ("https://compatible.example/anthropic", {"web_search": True}, True),
    ],
)
def test_a_translated_search_goes_to_anthropic_itself_or_where_configured(
    base_url: str, options: dict[str, Any], searched: bool
) -> None:
    """A server that speaks the Messages API at another address (`base_url`) may run none of Anthropic's server
    tools: a translated request's search goes as Anthropic's web search tool to Anthropic's own API, or where the
    provider's `web_search` says so; elsewhere it is left out and named, and so not reserved for (`hosts_search`).
    It went to every such server, which may refuse it (a 400 where the search had been named dropped)."""
    req = request(web_search_options={})
    claude = adapter(**options)
    result = claude.chat_request(req, target(base_url=base_url), stream=False)
    tools = orjson.loads(result.request.body).get("tools") or []
    assert [tool["name"] for tool in tools] == (["web_search"] if searched else [])
    assert result.dropped == ([] if searched else ["web_search_options"])
    assert claude.hosts_search(target(base_url=base_url), req) is searched


def searches(req: ChatRequest) -> tuple[bool, list[str]]:
    """Whether Claude may run the search tool in `req`'s body (sent, under a `tool_choice` that is not `none`, which
    Anthropic reads as no tool at all, its server tools too), what the body names dropped, and that the search is
    reserved for (`hosts_search`) exactly where it may run."""
    body, dropped = built(req)
    sent = any(tool.get("name") == "web_search" for tool in body.get("tools") or ())
    runs = sent and (body.get("tool_choice") or {}).get("type") != "none"
    assert adapter().hosts_search(target(), req) is runs
    return runs, dropped


@pytest.mark.parametrize("tools", [[WEATHER], None])
def test_a_chat_search_beside_tool_choice_none_goes_alone_and_runs(tools: list[dict[str, Any]] | None) -> None:
    """`tool_choice: none` forbids the client's functions; Chat Completions' `web_search_options` is none of them. The
    search went beside the functions with Anthropic's `none`, which forbids server tools too: it could never run, yet
    was reserved ten searches and named nowhere. It goes alone now, Claude's to run (`auto`), the functions, which
    may not be called, left out."""
    req = request(web_search_options={}, tool_choice="none", **({"tools": tools} if tools else {}))
    body, _ = built(req)
    assert [tool["name"] for tool in body["tools"]] == ["web_search"]
    assert body["tool_choice"] == {"type": "auto"}
    assert searches(req) == (True, [])


CALLED = [
    {"role": "user", "content": "weather in Rome?"},
    {
        "role": "assistant",
        "content": None,
        "tool_calls": [
            {"id": "toolu_1", "type": "function", "function": {"name": "get_weather", "arguments": '{"city": "Rome"}'}}
        ],
    },
    {"role": "tool", "tool_call_id": "toolu_1", "content": "sunny"},
]


@pytest.mark.parametrize(
    "fields",
    [
        {"response_format": {"type": "json_schema", "json_schema": {"name": "a", "schema": SCHEMA}}},
        {"messages": CALLED},
    ],
    ids=["json_answer", "called_before"],
)
def test_a_chat_search_that_cannot_go_alone_beside_tool_choice_none_is_named_dropped(fields: dict[str, Any]) -> None:
    """Beside `none` and a JSON answer (the JSON tool forced alone: the search tool was removed, unnamed) or a
    conversation whose calls declare their tools (which `auto` would let Claude call), the search cannot run: it is
    named dropped, and reserved no search."""
    req = request(web_search_options={}, tools=[WEATHER], tool_choice="none", **fields)
    assert searches(req) == (False, ["web_search_options"])


def test_a_responses_search_tool_beside_tool_choice_none_is_named_dropped() -> None:
    """The Responses API's `web_search` is one of the client's tools, which its `tool_choice: none` forbids, as
    OpenAI's does: named dropped, with the limit the client set of it, and reserved no search."""
    from handler.api.responses_api import ResponsesChatRequest
    from handler.schemas import WebSearch

    body = {"model": "public", "messages": [{"role": "user", "content": "hi"}], "tools": [WEATHER]}
    req = ResponsesChatRequest.asking(None, {**body, "tool_choice": "none"})
    req.web_search = WebSearch.asked({}, 3, "tools[web_search]")._replace(limit="max_tool_calls")
    assert searches(req) == (False, ["tools[web_search]", "max_tool_calls"])


@pytest.mark.parametrize("value", ["yes", 1, None])
def test_the_web_search_option_is_true_or_false(value: Any) -> None:
    assert AnthropicAdapter.option_problem("web_search", value) is not None
    assert AnthropicAdapter.option_problem("web_search", True) is None


@pytest.mark.parametrize("citations", [5, True, "cited", {"url": "https://example.com/"}])
def test_a_text_block_whose_citations_are_no_list_streams_as_the_whole_answer_reads(citations: Any) -> None:
    """A text block whose `citations` is not a list: the whole answer's reader ignores them (`citations_of`); the
    stream made a list of them, a TypeError on a number that failed every stream with such a block, searched or not,
    as a malformed event (cut after its first byte, or failed over before it)."""
    parser = adapter().stream_parser(request(), target())
    feed(parser, "message_start", {"type": "message_start", "message": orjson.loads(fixture("message-response.json"))})
    block = {"type": "text", "text": "", "citations": citations}
    feed(parser, "content_block_start", {"type": "content_block_start", "index": 0, "content_block": block})
    delta = {"type": "text_delta", "text": "Hello"}
    chunks = feed(parser, "content_block_delta", {"type": "content_block_delta", "index": 0, "delta": delta})
    chunks += feed(parser, "content_block_stop", {"type": "content_block_stop", "index": 0})
    chunks += feed(parser, "message_delta", {"type": "message_delta", "delta": {"stop_reason": "end_turn"}})
    assert deltas(chunks, "content") == "Hello"
    assert not any(ch["delta"].get("annotations") for c in chunks for ch in c["choices"])


def test_a_streamed_call_without_arguments_ends_with_an_empty_object() -> None:
    """A call without arguments streams an empty `partial_json`, or no delta at all: each ends as `{}` (the whole
    answer's empty `input`), at its block's stop or, failing that, before the finish; a call with JSON gets no more."""
    parser = adapter().stream_parser(request(), target())
    feed(parser, "message_start", {"type": "message_start", "message": orjson.loads(fixture("message-response.json"))})
    for index in range(3):
        block = {"type": "tool_use", "id": f"toolu_{index}", "name": "get_time", "input": {}}
        feed(parser, "content_block_start", {"type": "content_block_start", "index": index, "content_block": block})
    empty = {"type": "input_json_delta", "partial_json": ""}
    assert feed(parser, "content_block_delta", {"type": "content_block_delta", "index": 0, "delta": empty}) == []
    given = {"type": "input_json_delta", "partial_json": '{"tz": "CET"}'}
    feed(parser, "content_block_delta", {"type": "content_block_delta", "index": 1, "delta": given})
    stops = [feed(parser, "content_block_stop", {"type": "content_block_stop", "index": i}) for i in (0, 1)]
    assert [arguments(chunks) for chunks in stops] == ["{}", ""]
    ending = feed(parser, "message_delta", {"type": "message_delta", "delta": {"stop_reason": "tool_use"}})
    assert ending[0]["choices"][0]["delta"]["tool_calls"] == [{"index": 2, "function": {"arguments": "{}"}}]
    assert ending[-1]["choices"][0]["finish_reason"] == "tool_calls"


def test_stream_json_schema_tool_input_streams_as_content() -> None:
    fmt = {"type": "json_schema", "json_schema": {"name": "weather", "schema": SCHEMA}}
    transcript = fixture("messages-stream.sse").replace(b'"name":"get_weather"', f'"name":"{JSON_TOOL}"'.encode())
    decoder, parser = SSEDecoder(), adapter().stream_parser(request(response_format=fmt), target())
    chunks = [c.model_dump(exclude_none=True) for e in decoder.feed(transcript) for c in parser.feed(e)]
    chunks += [c.model_dump(exclude_none=True) for c in parser.finish()]
    assert arguments(chunks) == ""
    assert deltas(chunks, "content").endswith('{"location": "San Francisco, CA", "unit": "fahrenheit"}')
    assert [ch["finish_reason"] for c in chunks for ch in c["choices"] if ch.get("finish_reason")] == ["stop"]


def test_usage_chunk_is_sent_once_and_only_after_message_delta() -> None:
    parser = adapter().stream_parser(request(), target())
    start = {"type": "message_start", "message": orjson.loads(fixture("message-response.json")) | {"content": []}}
    feed(parser, "message_start", start)
    assert parser.usage is None and parser.finish() == []  # cut short: the pipeline estimates instead
    usage = {"output_tokens": 10, "input_tokens": 2095, "cache_read_input_tokens": 1024}
    chunks = feed(
        parser, "message_delta", {"type": "message_delta", "delta": {"stop_reason": "end_turn"}, "usage": usage}
    )
    assert chunks[-1]["choices"][0]["finish_reason"] == "stop"
    assert parser.usage is not None and parser.usage.prompt_tokens == 2095 + 1024 + 100
    assert len(feed(parser, "message_stop", {"type": "message_stop"})) == 1 and parser.finish() == []


@pytest.mark.parametrize("usage", [None, {}, {"output_tokens": None}], ids=["no_usage", "empty", "output_null"])
def test_a_message_delta_without_its_output_count_gives_no_final_usage(usage: dict[str, Any] | None) -> None:
    """`message_delta`'s usage is the final one where it counts the output. Without it (no usage, `{}`,
    `"output_tokens": null`) the stream has none, and is estimated on `message_start`'s input counts
    (`UpstreamStream.metered`): `message_start`'s own counts (1 token out) were billed as the final ones, and under
    `"output_tokens": null` 0 tokens out (found by review)."""
    parser = adapter().stream_parser(request(), target())
    start = {"type": "message_start", "message": orjson.loads(fixture("message-response.json")) | {"content": []}}
    feed(parser, "message_start", start)
    delta = {"type": "message_delta", "delta": {"stop_reason": "end_turn"}}
    chunks = feed(parser, "message_delta", delta if usage is None else {**delta, "usage": usage})
    assert chunks[-1]["choices"][0]["finish_reason"] == "stop"
    assert parser.usage is None and parser.opening_usage is not None
    assert feed(parser, "message_stop", {"type": "message_stop"}) == []  # (no usage chunk)


@pytest.mark.parametrize("event", ["ping", "content_block_stop", "some_future_event"])
def test_events_without_content_yield_nothing(event: str) -> None:
    parser = adapter().stream_parser(request(), target())
    assert feed(parser, event, {"type": event, "index": 0}) == []
    assert parser.feed(StreamEvent(None, b"")) == []


def test_in_stream_overloaded_error_is_retryable() -> None:
    parser = adapter().stream_parser(request(), target())
    events = SSEDecoder().feed(fixture("messages-error-stream.sse"))
    for event in events[:-1]:
        parser.feed(event)
    with pytest.raises(UpstreamError) as overloaded:
        parser.feed(events[-1])
    error = overloaded.value
    assert error.retryable and error.upstream_status == 529 and error.upstream_type == "overloaded_error"
    assert "Overloaded" in error.message


def test_in_stream_invalid_request_error_is_not_retryable() -> None:
    parser = adapter().stream_parser(request(), target())
    with pytest.raises(UpstreamError) as invalid:
        feed(parser, "error", {"type": "error", "error": {"type": "invalid_request_error", "message": "bad"}})
    assert not invalid.value.retryable and invalid.value.upstream_status == 400


@pytest.mark.parametrize("data", [b"{not json", b"[1, 2]", b'{"type": "message_start", "message": {"id": 1}}'])
def test_malformed_stream_events_are_retryable_upstream_errors(data: bytes) -> None:
    with pytest.raises(UpstreamError) as bad:
        adapter().stream_parser(request(), target()).feed(StreamEvent("message_start", data))
    assert bad.value.retryable and bad.value.upstream_status == 200


# --- errors --------------------------------------------------------------------------------------


def test_overloaded_529_is_retryable_with_the_providers_message() -> None:
    error = adapter().error(529, fixture("error-529.json"), {})
    assert error.retryable and error.upstream_status == 529 and error.upstream_type == "overloaded_error"
    assert error.message == "upstream returned 529: Overloaded" and error.retry_after is None


def test_rate_limit_429_carries_retry_after() -> None:
    error = adapter().error(429, fixture("error-429.json"), {"retry-after": "7"})
    assert error.retryable and error.retry_after == 7.0 and error.upstream_type == "rate_limit_error"
    assert "exceed the rate limit" in error.message


@pytest.mark.parametrize(
    ("status", "kind", "retryable"),
    [
        (400, "invalid_request_error", False),
        # The gateway's key refused: the deployment's, tried on the next one.
        (401, "authentication_error", True),
        (403, "permission_error", True),
        (404, "not_found_error", False),  # (not a model: something the request names)
        (413, "request_too_large", False),
        (500, "api_error", True),
    ],
)
def test_error_statuses(status: int, kind: str, retryable: bool) -> None:
    body = orjson.dumps({"type": "error", "error": {"type": kind, "message": "nope"}})
    error = adapter().error(status, body, {})
    assert error.retryable is retryable and error.upstream_type == kind and error.upstream_status == status
    assert "sk-ant-test" not in error.message


def test_error_without_an_anthropic_body_keeps_a_readable_message() -> None:
    error = adapter().error(502, b"<html>Bad Gateway</html>", {})
    assert error.retryable and "Bad Gateway" in error.message and error.upstream_type is None
    assert "no error body" in adapter().error(500, b"", {}).message


# Anthropic's rejections that name their cause in `error.details`, by which its SDK picks their class, and on the
# first three of which its thread helpers send the whole conversation again (`ReplayErrorCode`).
CODED = [
    (404, "not_found_error", {"error_code": "thread_not_found"}, ThreadNotFoundError),
    (400, "invalid_request_error", {"error_code": "thread_already_continued"}, ThreadAlreadyContinuedError),
    (400, "invalid_request_error", {"error_code": "thread_continue_in_flight"}, ThreadContinueInFlightError),
    (
        400,
        "invalid_request_error",
        {"error_code": "thread_unsupported_request", "unsupported": ["container"]},
        ThreadUnsupportedRequestError,
    ),
]


@pytest.mark.parametrize(("status", "kind", "details", "raised"), CODED)
def test_a_rejection_anthropic_names_by_its_code_reaches_its_apis_clients_as_anthropic_gave_it(
    status: int, kind: str, details: dict[str, object], raised: type[Exception]
) -> None:
    """Anthropic's status, type and `details` reach a client of its API (the SDK raises the class they name), where
    every rejection was a 400 `invalid_request_error` without details (a `thread_not_found` was a `BadRequestError`,
    which no thread helper recovers from). On OpenAI's API it stays the 400 of a rejected request, with the code."""
    said = {"type": "error", "error": {"type": kind, "message": "No thread for you.", "details": details}}
    rejected = ProviderRejectedError(adapter().error(status, orjson.dumps(said), {}))
    assert (rejected.status_for(anthropic=True), rejected.anthropic_body()) == (status, said)
    response = httpx2.Response(status, json=said, request=httpx2.Request("POST", "http://gw/v1/messages"))
    assert type(make_status_error("refused", body=rejected.anthropic_body(), response=response)) is raised
    assert rejected.status_for(anthropic=False) == 400
    assert rejected.openai_body()["error"] == {
        "message": "No thread for you.",
        "type": "invalid_request_error",
        "param": None,
        "code": details["error_code"],
        "upstream_status": status,
        "upstream_type": kind,
    }


def test_anthropics_error_details_are_redacted_and_bounded() -> None:
    """What Anthropic says beside its code is relayed as an error's words are, a key quoted back redacted; details
    past `DETAILS_BYTES` are cut to the code; a code that is not a string (or none) keeps no details, and the
    rejection is rendered as any other."""
    quoted = {"error_code": "tool_name_conflict", "paths": ["tools[0]", "x-api-key: sk-ant-api03-abcdefghijklmnop"]}
    assert said_details(quoted) == {"error_code": "tool_name_conflict", "paths": ["tools[0]", "x-api-key: [REDACTED]"]}
    assert said_details({"error_code": "too_much", "paths": ["p" * DETAILS_BYTES]}) == {"error_code": "too_much"}
    for details in ({"error_code": 404}, {"paths": []}, "thread_not_found", None):
        said = {"type": "error", "error": {"type": "not_found_error", "message": "gone", "details": details}}
        rejected = ProviderRejectedError(adapter().error(404, orjson.dumps(said), {}))
        assert rejected.status_for(anthropic=True) == 400 and "details" not in rejected.anthropic_body()["error"]  # type: ignore[operator]


def test_parallel_tool_calls_without_tools_is_harmless() -> None:
    body, dropped = built(request(parallel_tool_calls=False))
    assert "tool_choice" not in body and "tools" not in body and dropped == []


def test_a_strict_tool_stays_strict_and_a_message_name_is_reported() -> None:
    tool = {"type": "function", "function": {**WEATHER["function"], "strict": True}}
    body, dropped = built(request(messages=[{"role": "user", "content": "hi", "name": "alice"}], tools=[tool]))
    assert body["tools"][0]["strict"] is True and dropped == ["messages.name"]


def test_a_native_request_keeps_the_body_and_the_clients_anthropic_headers() -> None:
    body = {"model": "public", "max_tokens": 9000, "messages": [{"role": "system", "content": "x"}], "betaish": 1}
    headers = {"anthropic-beta": "a-1,b-2", "anthropic-version": "2099-01-01"}
    call = NativeCall(MESSAGES_API, body, headers)
    built = adapter().native_request(call, target(), stream=True, output_limit=4000)
    assert orjson.loads(built.request.body) == {**body, "model": MODEL, "max_tokens": 4000}
    assert built.request.headers["anthropic-beta"] == "a-1,b-2"
    assert built.request.headers["anthropic-version"] == "2099-01-01" and built.dropped == []
    uncapped = adapter().native_request(call, target(), stream=True, output_limit=None)
    assert orjson.loads(uncapped.request.body)["max_tokens"] == 9000


@pytest.mark.parametrize(
    ("client", "configured", "sent"),
    [
        ("a-1,b-2", "context-1m-2025-08-07", "a-1,b-2,context-1m-2025-08-07"),
        ("a-1, context-1m-2025-08-07", "context-1m-2025-08-07,c-3", "a-1, context-1m-2025-08-07,c-3"),
        (None, "context-1m-2025-08-07", "context-1m-2025-08-07"),
        ("a-1", None, "a-1"),
        # A YAML list of betas went out as its Python repr, `['context-1m-2025-08-07', 'c-3']` (review).
        ("a-1", ["context-1m-2025-08-07", "c-3"], "a-1,context-1m-2025-08-07,c-3"),
        (None, ["context-1m-2025-08-07", "c-3"], "context-1m-2025-08-07,c-3"),
    ],
)
def test_a_native_request_sends_the_clients_betas_and_then_the_configured_ones(
    client: str | None, configured: str | list[str] | None, sent: str
) -> None:
    """docs/configuration.md: the provider's `anthropic_beta` goes "with every request of the provider"; a client
    that sent betas of its own (Claude Code always does) replaced it, on messages and on count_tokens."""
    headers = {"anthropic-beta": client} if client else {}
    call = NativeCall(MESSAGES_API, {"model": "public", "max_tokens": 10, "messages": []}, headers)
    configured_adapter = adapter(anthropic_beta=configured) if configured else adapter()
    built = configured_adapter.native_request(call, target(), stream=False, output_limit=None)
    counted = configured_adapter.count_tokens_request(call, request(), target())
    assert built.request.headers["anthropic-beta"] == counted.request.headers["anthropic-beta"] == sent


def test_the_native_meter_reads_cache_usage_and_the_text_a_cut_stream_is_estimated_from() -> None:
    """`message_start`'s counts are the provider's, kept as they are until `message_delta`; the text relayed is
    counted apart (`output_chars`), for the stream's estimate of its output (`UpstreamStream.metered`)."""
    meter = MessagesMeter()
    start = {
        "type": "message_start",
        "message": {
            "id": "m",
            "type": "message",
            "role": "assistant",
            "model": MODEL,
            "content": [],
            "usage": {
                "input_tokens": 10,
                "cache_creation_input_tokens": 20,
                "cache_read_input_tokens": 30,
                "output_tokens": 1,
            },
        },
    }
    meter.feed(StreamEvent("message_start", orjson.dumps(start)))
    delta = {"type": "content_block_delta", "index": 0, "delta": {"type": "text_delta", "text": "x" * 400}}
    meter.feed(StreamEvent("content_block_delta", orjson.dumps(delta)))
    assert meter.usage is not None and meter.usage.completion_tokens == 1 and meter.output_chars == 400
    assert (meter.usage.prompt_tokens, meter.usage.cached_tokens, meter.usage.cache_write_tokens) == (60, 30, 20)
    end = {"type": "message_delta", "delta": {"stop_reason": "end_turn"}, "usage": {"output_tokens": 7}}
    meter.feed(StreamEvent("message_delta", orjson.dumps(end)))
    assert meter.usage.completion_tokens == 7 and meter.usage.prompt_tokens == 60
    error = {"type": "error", "error": {"type": "overloaded_error", "message": "Overloaded"}}
    with pytest.raises(UpstreamError) as raised:
        meter.feed(StreamEvent("error", orjson.dumps(error)))
    assert raised.value.upstream_status == 529 and raised.value.retryable


def test_the_native_meter_reads_a_failure_in_openais_shape_as_the_streams_error() -> None:
    """A compatible server's or proxy's failure part way, `data: {"error": ...}` with no event name and no `type`,
    was relayed as it came (`native_events` writes every event but `message_delta` unread). An unnamed event of any
    other shape still goes on. It is read at the status its type names (`said_status`): it was a 500 whatever it
    said."""
    meter = MessagesMeter()
    failure = {"error": {"message": "Incorrect API key provided: sk-te*****0000", "type": "invalid_request_error"}}
    with pytest.raises(UpstreamError) as raised:
        meter.feed(StreamEvent(None, orjson.dumps(failure)))
    assert raised.value.upstream_status == 400 and "sk-te*****" not in raised.value.message
    for other in (b'{"type": "error_report", "error": "none"}', b'"error" is not JSON', b"[1]"):
        meter.feed(StreamEvent(None, other))


# Anthropic's compaction docs' answer: the top level counts the sampling after the compaction, the compaction's own
# (a sampling that read the whole conversation and wrote its summary) is in `iterations` alone.
COMPACTED_USAGE = {
    "input_tokens": 23000,
    "output_tokens": 1000,
    "iterations": [
        {
            "type": "compaction",
            "input_tokens": 180000,
            "output_tokens": 3500,
            "cache_read_input_tokens": 4000,
            "cache_creation_input_tokens": 2000,
            "cache_creation": {"ephemeral_5m_input_tokens": 0, "ephemeral_1h_input_tokens": 2000},
        },
        {
            "type": "message",
            "input_tokens": 23000,
            "output_tokens": 1000,
            "cache_read_input_tokens": 0,
            "cache_creation_input_tokens": 0,
        },
    ],
}


def test_a_compactions_tokens_are_billed_beside_the_top_level_counts() -> None:
    """The top level leaves a compaction's tokens out (the SDK's `BetaUsage.iterations`): they are added, its cache
    reads and writes (an hour's among them) too; a `message` entry is in the top level already. They were metered
    23,000 in and 1,000 out."""
    message = {"id": "m", "type": "message", "role": "assistant", "model": MODEL, "content": []}
    answer = {**message, "usage": COMPACTED_USAGE}
    usage = adapter().native_usage(NativeCall(MESSAGES_API, {}), answer)
    assert (usage.prompt_tokens, usage.completion_tokens) == (23000 + 180000 + 4000 + 2000, 1000 + 3500)
    assert (usage.cached_tokens, usage.cache_write_tokens, usage.cache_write_1h_tokens) == (4000, 2000, 2000)
    malformed = {**answer, "usage": {**COMPACTED_USAGE, "iterations": {"type": "compaction"}}}
    with pytest.raises(ValueError):  # (the pipeline's malformed answer: `wire.SHAPE_ERRORS`)
        adapter().native_usage(NativeCall(MESSAGES_API, {}), malformed)


PASSED_THROUGH = {
    "id": "m",
    "type": "message",
    "role": "assistant",
    "model": MODEL,
    "content": [],
    "usage": {"input_tokens": 10, "output_tokens": 5},
}


@pytest.mark.parametrize(
    "changed",
    [
        {"type": "completion"},
        {"role": "user"},
        {"id": 7},
        {"model": None},
        {"content": "Hello"},
        {"content": ["Hello"]},
        {"content": [{"text": "Hello"}]},
        {"usage": None},
        {"usage": {"output_tokens": "nine"}},
        {"usage": {"output_tokens": "9"}},
        {"usage": {"input_tokens": True}},
        {"usage": {"cache_read_input_tokens": 10.7}},
        {"stop_reason": 7},
        {"stop_sequence": ["END"]},
    ],
    ids=[
        *("type", "role", "id", "model", "content", "block", "block-type", "usage", "count"),
        *("numeral-count", "bool-count", "fraction-count", "stop", "sequence"),
    ],
)
def test_a_message_passed_through_is_read_as_anthropics_shape_or_is_malformed(changed: dict[str, Any]) -> None:
    """Its usage is validated alone and the rest checked as `WireMessage` has it: a message that is not one is the
    provider's malformed answer (a 502), not relayed as a message. So is a count that is not a plain integer, which
    pydantic took (`"9"` as 9, `true` as 1) as the provider's count."""
    call = NativeCall(MESSAGES_API, {})
    assert adapter().native_usage(call, PASSED_THROUGH) == Usage.of(10, 5)
    with pytest.raises(UpstreamError):
        adapter().native_usage(call, {**PASSED_THROUGH, **changed})


def test_a_null_count_in_a_messages_usage_is_none_and_a_null_main_count_no_usage() -> None:
    """A compatible server's null count is none (`wire.usage_count`): a null cache count is 0, and the message read
    on its counts. A null (or absent) input or output count is no usage at all (`WireUsage.counted`): read as 0, a
    written answer was billed 0 tokens out as the provider's count (found by review); the answer is estimated, as
    one without usage is (not the provider's malformed answer, as `output_tokens: null` once was)."""
    call = NativeCall(MESSAGES_API, {})
    usage = {"input_tokens": 10, "output_tokens": 5, "cache_read_input_tokens": None, "cache_creation": None}
    assert adapter().native_usage(call, {**PASSED_THROUGH, "usage": usage}) == Usage.of(10, 5)
    for uncounted in ({**usage, "output_tokens": None}, {"input_tokens": 10}, {"output_tokens": 5}, {}):
        assert adapter().native_usage(call, {**PASSED_THROUGH, "usage": uncounted}) is None, uncounted


def test_a_streams_compaction_is_billed_from_the_final_message_delta() -> None:
    meter = MessagesMeter()
    message = {"id": "m", "type": "message", "role": "assistant", "model": MODEL, "content": []}
    start = {"type": "message_start", "message": {**message, "usage": {"input_tokens": 23000, "output_tokens": 1}}}
    meter.feed(StreamEvent("message_start", orjson.dumps(start)))
    end = {"type": "message_delta", "delta": {"stop_reason": "end_turn"}, "usage": COMPACTED_USAGE}
    meter.feed(StreamEvent("message_delta", orjson.dumps(end)))
    assert meter.usage is not None
    assert (meter.usage.prompt_tokens, meter.usage.completion_tokens) == (209000, 4500)


@pytest.mark.parametrize(
    "usage",
    [
        {"output_tokens": 9, "iterations": [{"type": "compaction", "input_tokens": 150000.0}]},
        {"output_tokens": 9, "iterations": {"type": "compaction"}},
        {"output_tokens": 9, "cache_creation": {"ephemeral_1h_input_tokens": "many"}},
    ],
    ids=["float-count", "not-a-list", "cache-creation"],
)
def test_a_usage_the_meter_cannot_read_is_a_malformed_event_and_the_counts_before_it_stay(usage: Any) -> None:
    """Such a count was kept, and raised only when the stream was costed: after the flag that settles a stream
    once was set, so the stream had no ledger line, no charge, and its reservation held (found by review)."""
    from handler.errors import UpstreamError

    meter = MessagesMeter()
    message = {"id": "m", "type": "message", "role": "assistant", "model": MODEL, "content": []}
    start = {"type": "message_start", "message": {**message, "usage": {"input_tokens": 23000, "output_tokens": 1}}}
    meter.feed(StreamEvent("message_start", orjson.dumps(start)))
    end = {"type": "message_delta", "delta": {"stop_reason": "end_turn"}, "usage": usage}
    with pytest.raises(UpstreamError):
        meter.feed(StreamEvent("message_delta", orjson.dumps(end)))
    assert meter.usage is not None and meter.usage.prompt_tokens == 23000 and not meter.final


# An answer whose executor consulted the advisor once: the advisor's sampling, on its own model, is in `iterations`
# alone (an `advisor_message` entry); the top level is the executor's `message` entries. Fast mode asked for and
# served at standard speed says so in `speed`.
ADVISED_USAGE = {
    "input_tokens": 500,
    "output_tokens": 80,
    "speed": "standard",
    "iterations": [
        {"type": "message", "input_tokens": 500, "output_tokens": 80},
        {
            "type": "advisor_message",
            "model": "claude-opus-4-6",
            "input_tokens": 9000,
            "output_tokens": 1600,
            "cache_read_input_tokens": 3000,
            "cache_creation_input_tokens": 1000,
            "cache_creation": {"ephemeral_5m_input_tokens": 0, "ephemeral_1h_input_tokens": 1000},
        },
    ],
}


def test_an_answer_says_the_speed_it_was_served_at_and_its_advisors_tokens_by_model() -> None:
    """What the pipeline prices beside the top-level counts, which leave the advisor's tokens out: they were neither
    counted nor priced, and fast mode was billed at the speed asked for."""
    message = {"id": "m", "type": "message", "role": "assistant", "model": MODEL, "content": [], "usage": ADVISED_USAGE}
    call = NativeCall(MESSAGES_API, {})
    usage = adapter().native_usage(call, message)
    assert (usage.prompt_tokens, usage.completion_tokens) == (500, 80)
    served = adapter().native_served(call, message)
    assert served.options == {"speed": "standard"}
    [(model, advice)] = served.others
    assert model == "claude-opus-4-6" and (advice.prompt_tokens, advice.completion_tokens) == (13000, 1600)
    assert (advice.cached_tokens, advice.cache_write_tokens, advice.cache_write_1h_tokens) == (3000, 1000, 1000)
    nameless = {**ADVISED_USAGE, "iterations": [{"type": "advisor_message", "input_tokens": 1, "output_tokens": 1}]}
    with pytest.raises(UpstreamError):
        adapter().native_served(call, {**message, "usage": nameless})


def test_a_streams_speed_comes_with_message_start_and_its_advisors_tokens_with_the_final_delta() -> None:
    meter = MessagesMeter()
    assert meter.served is None
    message = {"id": "m", "type": "message", "role": "assistant", "model": MODEL, "content": []}
    begun = {"input_tokens": 500, "output_tokens": 1, "speed": "standard"}
    meter.feed(
        StreamEvent("message_start", orjson.dumps({"type": "message_start", "message": {**message, "usage": begun}}))
    )
    assert meter.served is not None and meter.served.options == {"speed": "standard"} and not meter.served.others
    end = {"type": "message_delta", "delta": {"stop_reason": "end_turn"}, "usage": {**ADVISED_USAGE, "speed": None}}
    meter.feed(StreamEvent("message_delta", orjson.dumps(end)))
    assert meter.served.options == {"speed": "standard"}
    assert [(model, advice.completion_tokens) for model, advice in meter.served.others] == [("claude-opus-4-6", 1600)]
    nameless = {"output_tokens": 9, "iterations": [{"type": "advisor_message", "input_tokens": 1, "output_tokens": 1}]}
    with pytest.raises(UpstreamError):  # (read now: not when the stream is costed, once settling began)
        meter.feed(StreamEvent("message_delta", orjson.dumps({**end, "usage": nameless})))


def test_a_translated_answer_says_how_it_was_served_as_one_passed_through_does() -> None:
    """A Chat Completions or Responses request translated for Anthropic: its answer's usage is read for the speed and
    geo it ran at and its advisor's tokens in the one parse of the answer (`chat_answer`), as a Messages answer
    passed through is; the translation read none of it (a `us` workspace's answers were charged the global
    prices). An answer that says nothing of it (the common one) has nothing to read."""
    message = {"id": "m", "type": "message", "role": "assistant", "model": MODEL, "content": []}
    usage = {**ADVISED_USAGE, "inference_geo": "us"}
    completion, served = adapter().chat_answer(orjson.dumps({**message, "usage": usage}), request(), target())
    counted = completion.usage
    assert counted is not None and (counted.prompt_tokens, counted.completion_tokens) == (500, 80)
    assert served is not None and served.options == {"speed": "standard", "inference_geo": "us"}
    assert [(model, advice.completion_tokens) for model, advice in served.others] == [("claude-opus-4-6", 1600)]
    plain = {"input_tokens": 5, "output_tokens": 2, "service_tier": "standard", "cache_creation": {}}
    assert adapter().chat_answer(orjson.dumps({**message, "usage": plain}), request(), target())[1] is None
    nameless = {**ADVISED_USAGE, "iterations": [{"type": "advisor_message", "input_tokens": 1, "output_tokens": 1}]}
    with pytest.raises(ValueError):  # (the pipeline's malformed answer, as a usage `to_usage` cannot read)
        adapter().chat_answer(orjson.dumps({**message, "usage": nameless}), request(), target())


def test_a_translated_streams_geo_comes_with_message_start_and_its_advisors_tokens_with_the_final_delta() -> None:
    """The chunk parser of a translated stream reads what its usage says of how it was served, as `MessagesMeter`
    does for one passed through: the geo and speed from `message_start` (so a stream cut before its end is charged
    as served), the advisor's tokens from the final `message_delta`, a malformed entry as it arrives."""
    parser = adapter().stream_parser(request(), target())
    assert parser.served is None
    message = {"id": "m", "type": "message", "role": "assistant", "model": MODEL, "content": []}
    begun = {"input_tokens": 500, "output_tokens": 1, "inference_geo": "us"}
    feed(parser, "message_start", {"type": "message_start", "message": {**message, "usage": begun}})
    assert parser.served is not None and parser.served.options == {"inference_geo": "us"} and not parser.served.others
    end = {"type": "message_delta", "delta": {"stop_reason": "end_turn"}, "usage": {**ADVISED_USAGE, "speed": None}}
    feed(parser, "message_delta", end)
    assert parser.served.options == {"inference_geo": "us"}
    assert [(model, advice.completion_tokens) for model, advice in parser.served.others] == [("claude-opus-4-6", 1600)]
    nameless = {"output_tokens": 9, "iterations": [{"type": "advisor_message", "input_tokens": 1, "output_tokens": 1}]}
    with pytest.raises(ValueError):  # (read now: not when the stream is costed, once settling began)
        feed(parser, "message_delta", {**end, "usage": nameless})
    plain = adapter().stream_parser(request(), target())
    feed(plain, "message_start", {"type": "message_start", "message": {**message, "usage": {"input_tokens": 5}}})
    assert plain.served is None


def test_a_budget_cap_below_the_thinking_budget_lowers_it_or_turns_thinking_off() -> None:
    """The lowered budget leaves the answer room, half of this small cap (at `max_tokens - 1` it had one token);
    where no budget of Anthropic's minimum fits beside it, thinking is not sent, and that is named."""
    body = {"model": "m", "max_tokens": 20000, "thinking": {"type": "enabled", "budget_tokens": 10000}, "messages": []}
    lowered = adapter().native_request(NativeCall(MESSAGES_API, body), target(), stream=False, output_limit=4000)
    assert orjson.loads(lowered.request.body)["thinking"] == {"type": "enabled", "budget_tokens": 2000}
    assert lowered.dropped == []
    off = adapter().native_request(NativeCall(MESSAGES_API, body), target(), stream=False, output_limit=2000)
    assert "thinking" not in orjson.loads(off.request.body) and off.dropped == ["thinking"]
    # Off for want of room, thinking takes with it the edits that need it on, as off for a tool turn does.
    managed = {**body, "context_management": {"edits": [{"type": "clear_thinking_20251015"}]}}
    off = adapter().native_request(NativeCall(MESSAGES_API, managed), target(), stream=False, output_limit=1500)
    assert "context_management" not in orjson.loads(off.request.body)
    assert off.dropped == ["thinking", "context_management.edits[clear_thinking_20251015]"]


TOOL_USE: Any = {"type": "tool_use", "id": "call_1", "name": "Bash", "input": {"command": "ls"}}
TOOL_RESULT: Any = {"role": "user", "content": [{"type": "tool_result", "tool_use_id": "call_1", "content": "ok"}]}


@pytest.mark.parametrize(
    ("assistant", "kept"),
    [
        ([TOOL_USE], False),  # another provider served the turn: no thinking of Claude's to hand back
        ([{"type": "text", "text": "Let me look."}, TOOL_USE], False),
        ([SIGNED, TOOL_USE], True),
        ([{"type": "redacted_thinking", "data": "x"}, TOOL_USE], True),
        ("Done.", True),  # the loop ended in text: the next question is thought through again
    ],
)
def test_a_native_request_continuing_a_tool_turn_without_thinking_is_sent_none(assistant: Any, kept: bool) -> None:
    """With thinking on, Anthropic refuses a final assistant turn that called a tool without opening with thinking
    ("a final `assistant` message must start with a thinking block"); the translated path already left thinking
    out for it, the pass-through did not."""
    messages: Any = [{"role": "user", "content": "hi"}, {"role": "assistant", "content": assistant}, TOOL_RESULT]
    thinking = {"type": "adaptive"}
    body = {"model": "m", "max_tokens": 9000, "thinking": thinking, "output_config": {"effort": "high"}}
    built = adapter().native_request(
        NativeCall(MESSAGES_API, {**body, "messages": messages}), target(), stream=False, output_limit=None
    )
    sent = orjson.loads(built.request.body)
    assert sent["output_config"] == {"effort": "high"} and sent["messages"] == messages
    assert sent.get("thinking") == (thinking if kept else None) and built.dropped == ([] if kept else ["thinking"])


def test_a_native_request_sent_without_thinking_loses_the_edits_that_clear_thinking() -> None:
    """Anthropic: "`clear_thinking_20251015` strategy requires `thinking` to be enabled"."""
    clear = {"type": "clear_thinking_20251015", "keep": "all"}
    uses = {"type": "clear_tool_uses_20250919"}
    messages: Any = [{"role": "user", "content": "hi"}, {"role": "assistant", "content": [TOOL_USE]}, TOOL_RESULT]
    body: Any = {"model": "m", "max_tokens": 9000, "messages": messages, "thinking": {"type": "enabled"}}
    cleared = "context_management.edits[clear_thinking_20251015]"
    for edits, left, named in (
        ([clear, uses], {"edits": [uses]}, ["thinking", cleared]),
        ([clear], None, ["thinking", cleared]),
        ([uses], {"edits": [uses]}, ["thinking"]),
    ):
        call = NativeCall(MESSAGES_API, {**body, "context_management": {"edits": edits}})
        built = adapter().native_request(call, target(), stream=False, output_limit=None)
        assert orjson.loads(built.request.body).get("context_management") == left and built.dropped == named


def test_a_parameter_sent_at_openais_default_is_not_named_as_dropped() -> None:
    """A penalty of 0 (OpenAI's default) asks for nothing: it was named dropped, and a 400 under strict mode (found
    by review)."""
    _, dropped = built(request(presence_penalty=0, frequency_penalty=0, logprobs=False))
    assert dropped == []
    assert built(request(frequency_penalty=0.2))[1] == ["frequency_penalty"]


# Prompt caching a client asks for without marking anything (Codex's `prompt_cache_key`): the gateway's breakpoints.
AUTO = {"type": "ephemeral"}
RULES = "Follow the house style in every answer you give. " * 100  # some 1,250 tokens: past Sonnet 4.5's 1,024
SHELL = {"type": "function", "function": {"name": "shell", "description": RULES, "parameters": {"type": "object"}}}
SESSION: list[dict[str, Any]] = [
    {"role": "system", "content": RULES},
    {"role": "user", "content": "Run the tests."},
    {
        "role": "assistant",
        "tool_calls": [{"id": "call_1", "type": "function", "function": {"name": "shell", "arguments": "{}"}}],
    },
    {"role": "tool", "tool_call_id": "call_1", "content": "12 passed"},
]


def markers(body: dict[str, Any]) -> list[Any]:
    """Every cache marker of a Messages body, tools, system, then messages (tool results' content too)."""
    blocks = [*body.get("tools", ()), *(body["system"] if isinstance(body.get("system"), list) else ())]
    for message in body["messages"]:
        for block in message["content"]:
            blocks += [block, *(block.get("content") or ())] if block["type"] == "tool_result" else [block]
    return [block["cache_control"] for block in blocks if isinstance(block, dict) and "cache_control" in block]


def test_a_request_asking_for_caching_gets_breakpoints_on_the_tools_the_system_and_its_last_message() -> None:
    """Codex asks for caching with `prompt_cache_key` and marks nothing: translated without a breakpoint, every turn
    of a Codex session on Claude paid its whole prefix at the full input price, (input, cached, cache write)
    (5123, 0, 0) then (5219, 0, 0), and the key was named as dropped (found by review)."""
    body, dropped = built(request(messages=SESSION, tools=[SHELL], prompt_cache_key="session-1"))
    assert body["tools"][-1]["cache_control"] == AUTO
    assert body["system"] == [{"type": "text", "text": RULES, "cache_control": AUTO}]
    last = body["messages"][-1]["content"][-1]
    assert last["type"] == "tool_result" and last["cache_control"] == AUTO  # the next turn reads all before its own
    assert len(markers(body)) == 3 and "prompt_cache_key" not in body and dropped == []


def test_a_request_that_does_not_ask_for_caching_gets_no_breakpoint() -> None:
    body, dropped = built(request(messages=SESSION, tools=[SHELL]))
    assert markers(body) == [] and body["system"] == RULES and dropped == []


@pytest.mark.parametrize("marked", [1, 2, 3, 4])
def test_the_breakpoints_added_stay_within_four_with_the_clients_own(marked: int) -> None:
    """Anthropic refuses a fifth breakpoint (400): the client's count, and the last message's goes first (it reads
    the whole prefix), then the system prompt's, then the tools'."""
    tool = {**SHELL, "cache_control": AUTO}
    system = [{"type": "text", "text": f"Rule {n}. " + RULES, "cache_control": AUTO} for n in range(marked - 1)]
    messages = [{"role": "system", "content": [*system, {"type": "text", "text": "Be brief."}]}, *SESSION[1:]]
    body, _ = built(request(messages=messages, tools=[tool], prompt_cache_key="session-1"))
    assert len(markers(body)) == min(4, marked + 3 - 1)  # (the tools' breakpoint is the client's)
    assert ("cache_control" in body["messages"][-1]["content"][-1]) == (marked < 4)
    assert ("cache_control" in body["system"][-1]) == (marked < 3)


def test_no_breakpoint_goes_where_the_prefix_is_too_short_for_the_model_to_cache() -> None:
    """Claude caches a prefix of at least 1,024 tokens (Sonnet 4.5), 4,096 for Haiku 4.5: a breakpoint short of that
    caches nothing and takes one of the four."""
    short, dropped = built(request(prompt_cache_key="session-1"))
    assert markers(short) == [] and dropped == []  # (asked, and honoured as far as the model caches)
    req = request(messages=SESSION, tools=[SHELL], prompt_cache_key="session-1")
    assert len(markers(built(req)[0])) == 3  # (tools, system, messages: some 2,500 tokens)
    assert markers(built(req, target("claude-haiku-4-5"))[0]) == []
    longer = request(messages=[*SESSION, {"role": "user", "content": RULES * 2}], tools=[SHELL], prompt_cache_key="k")
    body = built(longer, target("claude-haiku-4-5"))[0]
    assert markers(body) == [AUTO] and body["messages"][-1]["content"][-1]["cache_control"] == AUTO


def test_a_final_assistant_turn_is_not_cached_but_the_turn_before_it() -> None:
    """A prefill is continued by the answer: the next turn has it whole, and a write of it would only cost."""
    messages = [*SESSION[:2], {"role": "assistant", "content": "The tests"}]
    body, _ = built(request(messages=messages, tools=[SHELL], prompt_cache_key="session-1"))
    assert body["messages"][-2]["content"][-1]["cache_control"] == AUTO
    assert "cache_control" not in body["messages"][-1]["content"][-1]


def test_the_prompt_caching_option_says_when() -> None:
    """`never`: the key is named as dropped, as before; `always`: breakpoints without a key; a deployment's wins."""
    asked = request(messages=SESSION, tools=[SHELL], prompt_cache_key="session-1")
    body, dropped = built(asked, target(prompt_caching="never"))
    assert markers(body) == [] and dropped == ["prompt_cache_key"]
    unasked = request(messages=SESSION, tools=[SHELL])
    assert len(markers(built(unasked, target(prompt_caching="always"))[0])) == 3
    result = adapter(prompt_caching="never").chat_request(unasked, target(prompt_caching="always"), stream=False)
    assert len(markers(orjson.loads(result.request.body))) == 3
    assert AnthropicAdapter.option_problem("prompt_caching", False) == "one of auto, always, never, not False"
    assert AnthropicAdapter.option_problem("prompt_caching", "always") is None
