"""The Bedrock adapter: Converse bodies, SigV4 signing, AWS event-stream framing, stream events, errors."""

from __future__ import annotations

import base64
import datetime
import struct
import sys
import uuid
import zlib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import botocore.auth
import botocore.session
import orjson
import pytest
from botocore.credentials import Credentials
from botocore.eventstream import EventStreamBuffer

from adapters.providers.bedrock import BedrockAdapter
from adapters.providers.bedrock import adapter as bedrock
from adapters.providers.bedrock.eventstream import EventStreamDecoder, parse_headers
from adapters.providers.params import THINKING_BLOCKS as THINKING
from adapters.providers.registry import REGISTRY
from handler.api.messages_api import MessagesRequest, lost_betas, to_chat_request
from handler.errors import InvalidRequestError, ServiceUnavailableError, UpstreamError
from handler.ports import MESSAGES_API, NativeCall, Target
from handler.schemas import ChatRequest
from handler.wire import StreamEvent
from tests.conformance import references
from tests.fakes import bedrock as fake
from tests.fakes.bedrock import encode_frame, event_frame, exception_frame, stream_frames, verify_sigv4

FIXTURES = Path(__file__).resolve().parents[3] / "fixtures" / "bedrock"
MODEL = "us.anthropic.claude-3-5-haiku-20241022-v1:0"
SONNET = "us.anthropic.claude-sonnet-4-5-20250929-v1:0"
FIXED_CLOCK = datetime.datetime(2024, 5, 1, 12, 30, 45)


def fixture(name: str) -> bytes:
    return (FIXTURES / name).read_bytes()


def target(model: str = MODEL, region: str = "eu-central-1", **options: Any) -> Target:
    a = adapter()
    return Target("bedrock", "bedrock", model, region, a.base_url(region, None), options)


def adapter(**options: object) -> BedrockAdapter:
    return BedrockAdapter("bedrock", None, options)


def request(**fields: object) -> ChatRequest:
    return ChatRequest.model_validate({"model": "public", "messages": [{"role": "user", "content": "hi"}], **fields})


def built(req: ChatRequest, t: Target | None = None, *, stream: bool = False) -> tuple[dict[str, Any], list[str]]:
    result = adapter().chat_request(req, t or target(), stream=stream)
    return orjson.loads(result.request.body), result.dropped


@pytest.fixture(autouse=True)
def fresh_credentials() -> Iterator[None]:
    """Each test resolves the (fake, environment) credentials anew."""
    bedrock.reset_credentials()
    yield
    bedrock.reset_credentials()


@pytest.fixture
def fixed_clock(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(bedrock, "clock", lambda: FIXED_CLOCK.replace(tzinfo=datetime.UTC).timestamp())


def decode(raw: bytes, sizes: int | None = None) -> list[StreamEvent]:
    decoder = EventStreamDecoder(bedrock.stream_exception)
    events: list[StreamEvent] = []
    step = sizes or len(raw) or 1
    for i in range(0, len(raw), step):
        events += decoder.feed(raw[i : i + step])
    return events + decoder.finish()


def parse(raw: bytes, req: ChatRequest | None = None, model: str = MODEL) -> tuple[list[dict[str, Any]], Any]:
    a = adapter()
    parser = a.stream_parser(req or request(), target(model))
    chunks = [c for event in decode(raw, 29) for c in parser.feed(event)] + parser.finish()
    return [c.model_dump(exclude_none=True) for c in chunks], parser.usage


def deltas(chunks: list[dict[str, Any]], field: str) -> str:
    return "".join(c["choices"][0]["delta"].get(field) or "" for c in chunks if c.get("choices"))


# --- request ---------------------------------------------------------------------------------------


def test_registry_maps_the_bedrock_type_and_needs_no_key() -> None:
    assert REGISTRY["bedrock"] is BedrockAdapter
    assert BedrockAdapter.requires_key is False


def test_representative_request_becomes_the_recorded_converse_body() -> None:
    req = ChatRequest.model_validate(orjson.loads(fixture("openai-request.json")))
    body, dropped = built(req)
    assert body == orjson.loads(fixture("converse-request.json"))
    assert dropped == []


def test_url_quotes_an_inference_profile_id_and_picks_the_regional_endpoint() -> None:
    result = adapter().chat_request(request(), target(), stream=False)
    assert result.request.url == (
        "https://bedrock-runtime.eu-central-1.amazonaws.com/model/us.anthropic.claude-3-5-haiku-20241022-v1:0/converse"
    )
    streamed = adapter().chat_request(request(), target("global.amazon.nova-pro-v1:0"), stream=True)
    assert streamed.request.url.endswith("/model/global.amazon.nova-pro-v1:0/converse-stream")
    arn = "arn:aws:bedrock:us-east-1:123456789012:application-inference-profile/abc123"
    by_arn = adapter().chat_request(request(), target(arn), stream=False)
    assert (
        "/model/arn:aws:bedrock:us-east-1:123456789012:application-inference-profile%2Fabc123/converse"
        in by_arn.request.url
    )
    assert streamed.request.headers["accept"] == "application/vnd.amazon.eventstream"


def test_deployment_without_region_uses_the_functions_region(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("AWS_REGION", "ap-southeast-2")
    assert adapter().base_url("global", None) == "https://bedrock-runtime.ap-southeast-2.amazonaws.com"
    assert adapter(base_url="http://127.0.0.1:9/").base_url("us-east-1", None) == "http://127.0.0.1:9"


def test_signature_is_sigv4_over_the_exact_bytes_sent(fixed_clock: None) -> None:
    """Over the headers sent, `accept-encoding: identity` among them (the HTTP client adds it to a request without it:
    signed here, it is given, and sent as signed)."""
    result = adapter().chat_request(request(temperature=0.2), target(), stream=False).request
    headers = result.headers
    assert headers["x-amz-date"] == "20240501T123045Z"
    assert headers["accept-encoding"] == "identity"
    assert headers["authorization"].startswith(
        "AWS4-HMAC-SHA256 Credential=testing/20240501/eu-central-1/bedrock/aws4_request, "
        "SignedHeaders=accept-encoding;content-type;host;x-amz-date, Signature="
    )
    path = result.url.split(".amazonaws.com", 1)[1]
    received = headers | {"host": "bedrock-runtime.eu-central-1.amazonaws.com"}
    assert verify_sigv4("POST", path, "", received, result.body, region="eu-central-1") is None
    assert verify_sigv4("POST", path, "", received, result.body + b" ", region="eu-central-1") is not None
    assert verify_sigv4("POST", path, "", received, result.body, region="us-east-1") is not None


def test_session_token_is_sent_and_signed(monkeypatch: pytest.MonkeyPatch, fixed_clock: None) -> None:
    monkeypatch.setattr(bedrock, "process_credentials", lambda: Credentials("AKID", "SECRET", "SESSION-TOKEN"))
    headers = adapter().chat_request(request(), target(), stream=False).request.headers
    assert headers["x-amz-security-token"] == "SESSION-TOKEN"
    assert "x-amz-security-token" in headers["authorization"].split("SignedHeaders=")[1].split(",")[0]
    assert "Credential=AKID/" in headers["authorization"]


def test_credentials_from_the_environment_need_no_botocore(monkeypatch: pytest.MonkeyPatch) -> None:
    def no_botocore() -> Any:
        raise AssertionError("botocore's chain consulted although the environment has credentials")

    monkeypatch.setattr(botocore.session, "get_session", no_botocore)
    monkeypatch.setenv("AWS_SESSION_TOKEN", "LAMBDA-TOKEN")
    headers = adapter().chat_request(request(), target(), stream=False).request.headers
    assert "Credential=testing/" in headers["authorization"] and headers["x-amz-security-token"] == "LAMBDA-TOKEN"


def test_credentials_are_resolved_once_per_process(monkeypatch: pytest.MonkeyPatch) -> None:
    calls = []

    class Session:
        def get_credentials(self) -> Credentials:
            calls.append(1)
            return Credentials("PROFILE", "SECRET")

    monkeypatch.delenv("AWS_ACCESS_KEY_ID")  # no credentials in the environment: botocore's chain, once
    monkeypatch.setattr(botocore.session, "get_session", Session)
    first = adapter().chat_request(request(), target(), stream=False).request.headers["authorization"]
    adapter().chat_request(request(), target(), stream=True)
    assert len(calls) == 1 and "Credential=PROFILE/" in first


def test_missing_credentials_answer_provider_not_configured(monkeypatch: pytest.MonkeyPatch) -> None:
    class NoCredentials:
        def get_credentials(self) -> None:
            return None

    monkeypatch.delenv("AWS_ACCESS_KEY_ID")
    monkeypatch.setattr(botocore.session, "get_session", lambda: NoCredentials())
    with pytest.raises(ServiceUnavailableError) as caught:
        adapter().chat_request(request(), target(), stream=False)
    assert caught.value.code == "provider_not_configured"


def test_parameters_bedrock_cannot_honour_are_reported_not_sent() -> None:
    req = request(
        temperature=1.5,
        seed=7,
        presence_penalty=0.5,
        logprobs=True,
        n=2,
        parallel_tool_calls=False,
        user="u-1",
        top_k=5,
    )
    body, dropped = built(req)
    assert body["inferenceConfig"] == {"temperature": 1.0}
    assert set(dropped) == {
        "temperature",
        "seed",
        "presence_penalty",
        "logprobs",
        "n",
        "parallel_tool_calls",
        "user",
        "top_k",
    }
    assert set(body) == {"messages", "inferenceConfig"}


def test_harmless_values_are_not_reported() -> None:
    _, dropped = built(request(n=1, parallel_tool_calls=True, temperature=0.5, max_completion_tokens=20))
    assert dropped == []


def test_max_completion_tokens_wins_and_config_supplies_a_default() -> None:
    body, _ = built(request(max_tokens=10, max_completion_tokens=20))
    assert body["inferenceConfig"]["maxTokens"] == 20
    body, _ = built(request(), target(max_output_tokens=512))
    assert body["inferenceConfig"] == {"maxTokens": 512}


WEATHER = {"type": "function", "function": {"name": "get_weather", "parameters": {"type": "object"}}}


@pytest.mark.parametrize(
    ("choice", "expected"),
    [
        ("auto", {"auto": {}}),
        ("required", {"any": {}}),
        ({"type": "function", "function": {"name": "get_weather"}}, {"tool": {"name": "get_weather"}}),
    ],
)
def test_tool_choice_maps_to_converse(choice: object, expected: dict[str, Any]) -> None:
    body, dropped = built(request(tools=[WEATHER], tool_choice=choice))
    assert body["toolConfig"]["toolChoice"] == expected
    assert body["toolConfig"]["tools"] == [
        {"toolSpec": {"name": "get_weather", "inputSchema": {"json": {"type": "object"}}}}
    ]
    assert dropped == []


LLAMA = "us.meta.llama3-3-70b-instruct-v1:0"


STREAMING_TOOLLESS = [LLAMA, "meta.llama4-maverick-17b-instruct-v1:0", "mistral.mistral-large-2407-v1:0"]
# Tool use in ConverseStream, in AWS's table of Converse's model features.
STREAMING_TOOLS = ["cohere.command-r-plus-v1:0", "ai21.jamba-1-5-large-v1:0", "us.amazon.nova-pro-v1:0"]


@pytest.mark.parametrize("model", [*STREAMING_TOOLLESS, "writer.palmyra-x5-v1:0"])
def test_a_streamed_request_with_tools_goes_to_converse_for_a_model_without_streaming_tool_use(model: str) -> None:
    """ConverseStream answers Llama, Mistral and Palmyra with tools "This model doesn't support tool use in
    streaming mode." (a 400): such a request goes to Converse, whose whole answer the gateway streams. Without
    tools, or for a model with streaming tool use, the stream is ConverseStream's."""
    tooled = adapter().chat_request(request(tools=[WEATHER]), target(model), stream=True).request
    assert tooled.url.endswith("/converse") and "accept" not in tooled.headers
    assert "toolConfig" in orjson.loads(tooled.body)
    plain = adapter().chat_request(request(), target(model), stream=True).request
    assert plain.url.endswith("/converse-stream")
    claude = adapter().chat_request(request(tools=[WEATHER]), target(), stream=True).request
    assert claude.url.endswith("/converse-stream")


@pytest.mark.parametrize("model", STREAMING_TOOLS)
def test_a_model_with_streaming_tool_use_streams_its_tools(model: str) -> None:
    """Command R/R+ (once listed without streaming tool use, so its streamed tool calls came whole), Jamba 1.5 and
    Nova take tools in ConverseStream: the stream stays incremental."""
    tooled = adapter().chat_request(request(tools=[WEATHER]), target(model), stream=True).request
    assert tooled.url.endswith("/converse-stream")
    assert "toolConfig" in orjson.loads(tooled.body)


@pytest.mark.parametrize("model", [LLAMA, "mistral.mistral-large-2407-v1:0", "us.deepseek.r1-v1:0"])
@pytest.mark.parametrize(
    "choice", ["required", {"type": "function", "function": {"name": "get_weather"}}], ids=["required", "named"]
)
def test_a_forced_tool_choice_is_dropped_for_a_model_that_refuses_it(model: str, choice: object) -> None:
    """Bedrock takes `toolChoice.any`/`.tool` from Claude and Nova only (a 400 ValidationException from Llama,
    Mistral, DeepSeek): the tools go with Bedrock's default choice, `auto`, and the choice is named."""
    body, dropped = built(request(tools=[WEATHER], tool_choice=choice), target(model))
    assert body["toolConfig"] == {
        "tools": [{"toolSpec": {"name": "get_weather", "inputSchema": {"json": {"type": "object"}}}}]
    }
    assert dropped == ["tool_choice"]
    body, dropped = built(request(tools=[WEATHER], tool_choice=choice), target("us.amazon.nova-pro-v1:0"))
    assert set(body["toolConfig"]["toolChoice"]) <= {"any", "tool"} and dropped == []


@pytest.mark.parametrize("tools", [{}, {"tools": [WEATHER]}], ids=["alone", "with-tools"])
def test_json_schema_for_a_model_without_forced_tool_choice_goes_in_the_system_prompt(tools: dict[str, Any]) -> None:
    """No forced tool to carry the schema: the instruction and schema go in the system prompt (as DeepSeek's
    JSON mode gets them), the client's tools are offered with the default choice, and nothing is dropped."""
    schema = {"type": "object", "properties": {"city": {"type": "string"}}}
    fmt = {"type": "json_schema", "json_schema": {"name": "city", "schema": schema}}
    messages = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "hi"}]
    body, dropped = built(request(messages=messages, response_format=fmt, **tools), target(LLAMA))
    assert body["system"][0] == {"text": "Be brief."}
    assert body["system"][1]["text"].endswith('JSON Schema: {"type":"object","properties":{"city":{"type":"string"}}}')
    assert "toolChoice" not in body.get("toolConfig", {}) and dropped == []
    assert [t["toolSpec"]["name"] for t in body.get("toolConfig", {}).get("tools", [])] == (
        ["get_weather"] if tools else []
    )
    answer = {"output": {"message": {"role": "assistant", "content": [{"text": '{"city":"Paris"}'}]}}}
    completion = adapter().chat_response(
        orjson.dumps({**answer, "stopReason": "end_turn"}), request(response_format=fmt), target(LLAMA)
    )
    assert completion.choices[0].message.content == '{"city":"Paris"}'
    assert completion.choices[0].finish_reason == "stop"


def test_tool_choice_none_offers_no_tools() -> None:
    body, dropped = built(request(tools=[WEATHER], tool_choice="none"))
    assert "toolConfig" not in body and dropped == []


TOOL_HISTORY: Any = [
    {"role": "user", "content": "weather?"},
    {"role": "assistant", "tool_calls": [{"id": "t1", "function": {"name": "get_weather", "arguments": '{"a": 1}'}}]},
    {"role": "tool", "tool_call_id": "t1", "content": "sunny"},
]


@pytest.mark.parametrize("offered", [{"tools": [WEATHER], "tool_choice": "none"}, {}], ids=["choice-none", "no-tools"])
def test_a_tool_history_without_tools_to_offer_goes_as_text(offered: dict[str, Any]) -> None:
    """Converse refuses toolUse/toolResult blocks without a toolConfig (a summary or title request after tool
    turns sends none); `tool_choice: none` is honoured exactly, with no tool to call (it kept the tools and
    was named dropped)."""
    body, dropped = built(request(messages=TOOL_HISTORY, **offered))
    assert "toolConfig" not in body and dropped == []
    assert body["messages"][1]["content"] == [{"text": '[called tool get_weather (t1) with {"a":1}]'}]
    assert body["messages"][2]["content"] == [{"text": "[result of t1]"}, {"text": "sunny"}]


def test_tool_choice_without_tools_is_reported() -> None:
    body, dropped = built(request(tool_choice="required"))
    assert "toolConfig" not in body and dropped == ["tool_choice"]


def test_json_schema_is_served_by_a_forced_tool_and_json_object_by_an_instruction() -> None:
    schema = {"type": "object", "properties": {"answer": {"type": "string"}}}
    fmt = {"type": "json_schema", "json_schema": {"name": "answer", "schema": schema}}
    body, dropped = built(request(response_format=fmt))
    assert body["toolConfig"]["toolChoice"] == {"tool": {"name": "json_response"}}
    assert body["toolConfig"]["tools"][0]["toolSpec"]["inputSchema"] == {"json": schema}
    assert dropped == []
    body, _ = built(request(response_format={"type": "json_object"}))
    assert "JSON" in body["system"][0]["text"]


def test_json_schema_with_client_tools_requires_some_tool() -> None:
    fmt = {"type": "json_schema", "json_schema": {"name": "a", "schema": {"type": "object"}}}
    body, _ = built(request(tools=[WEATHER], response_format=fmt))
    assert body["toolConfig"]["toolChoice"] == {"any": {}}
    assert [t["toolSpec"]["name"] for t in body["toolConfig"]["tools"]] == ["get_weather", "json_response"]


@pytest.mark.parametrize(
    ("url", "message"),
    [
        ("https://example.com/cat.png", "base64 data URLs only"),
        ("data:image/tiff;base64,AAAA", "image/tiff"),
    ],
)
def test_images_bedrock_cannot_take_are_refused_with_a_clear_400(url: str, message: str) -> None:
    part = {"type": "image_url", "image_url": {"url": url}}
    with pytest.raises(InvalidRequestError, match=message) as caught:
        built(request(messages=[{"role": "user", "content": [part]}]))
    assert caught.value.status == 400


def test_pdf_file_becomes_a_document_block() -> None:
    part = {"type": "file", "file": {"file_data": "data:application/pdf;base64,JVBERi0=", "filename": "a.pdf"}}
    body, _ = built(request(messages=[{"role": "user", "content": [part]}]))
    assert body["messages"][0]["content"] == [
        {"document": {"format": "pdf", "name": "document-1", "source": {"bytes": "JVBERi0="}}}
    ]


# --- answer ----------------------------------------------------------------------------------------


def test_text_answer_with_cache_usage() -> None:
    completion = adapter().chat_response(fixture("converse-response.json"), request(), target())
    assert completion.choices[0].message.content == "It is 18 °C and clear in Paris; a light jacket will do."
    assert completion.choices[0].finish_reason == "stop"
    assert completion.model == MODEL and completion.id.startswith("chatcmpl-")
    usage = completion.usage
    assert usage is not None
    assert (usage.prompt_tokens, usage.completion_tokens, usage.total_tokens) == (2860, 19, 2879)
    assert (usage.cached_tokens, usage.cache_write_tokens) == (2048, 0)


def test_cache_writes_kept_an_hour_are_counted_apart() -> None:
    """`cacheDetails` (botocore's TokenUsage: the writes by TTL, 1h first) says which writes cost the hour's rate."""
    details = [{"ttl": "1h", "inputTokens": 1500}, {"ttl": "5m", "inputTokens": 500}]
    raw = {"inputTokens": 10, "outputTokens": 5, "cacheWriteInputTokens": 2000, "cacheDetails": details}
    usage = bedrock.usage_of(raw)
    assert usage is not None
    assert (usage.prompt_tokens, usage.cache_write_tokens, usage.cache_write_1h_tokens) == (2010, 2000, 1500)
    others = [bedrock.usage_of({**raw, "cacheDetails": listed}) for listed in ([details[1]], "1h", None)]
    assert [other.cache_write_1h_tokens if other else None for other in others] == [0, 0, 0]


@pytest.mark.parametrize("count", [10.7, "12", True], ids=["fraction", "numeral", "bool"])
@pytest.mark.parametrize(
    "changed",
    [
        lambda count: {"inputTokens": count},
        lambda count: {"outputTokens": count},
        lambda count: {"cacheReadInputTokens": count},
        lambda count: {"cacheDetails": [{"ttl": "1h", "inputTokens": count}]},
    ],
    ids=["input", "output", "cache-read", "cache-details"],
)
def test_a_usage_count_that_is_no_plain_integer_is_unreadable_not_left_out(changed: Any, count: object) -> None:
    """Converse's counts that were not integers were left out (read as 0) and `true` counted as 1, billed as the
    provider's count (found by review). Such a count makes the answer malformed."""
    raw = {"inputTokens": 10, "outputTokens": 5, "totalTokens": 15}
    assert bedrock.usage_of(raw) is not None
    with pytest.raises(ValueError):  # (the pipeline's malformed answer: `wire.SHAPE_ERRORS`)
        bedrock.usage_of({**raw, **changed(count)})


def test_tool_use_answer_becomes_tool_calls() -> None:
    completion = adapter().chat_response(fixture("converse-tool-use-response.json"), request(), target())
    choice = completion.choices[0]
    assert choice.finish_reason == "tool_calls"
    assert choice.message.content == "Let me check the weather."
    assert choice.message.tool_calls is not None
    call = choice.message.tool_calls[0]
    assert call.id == "tooluse_kZJMlvQmRJ6eAyJE5GIl7Q" and call.function.name == "get_weather"
    assert orjson.loads(call.function.arguments) == {"city": "Paris", "unit": "celsius"}


def test_json_schema_answer_comes_back_as_message_text() -> None:
    fmt = {"type": "json_schema", "json_schema": {"name": "a", "schema": {"type": "object"}}}
    answer = {
        "output": {
            "message": {
                "role": "assistant",
                "content": [{"toolUse": {"toolUseId": "t", "name": "json_response", "input": {"a": 1}}}],
            }
        },
        "stopReason": "tool_use",
        "usage": {"inputTokens": 1, "outputTokens": 1},
    }
    completion = adapter().chat_response(orjson.dumps(answer), request(response_format=fmt), target())
    assert completion.choices[0].message.content == '{"a":1}'
    assert completion.choices[0].message.tool_calls is None
    assert completion.choices[0].finish_reason == "stop"


def test_a_json_schema_answer_cut_by_the_token_limit_is_length_not_stop() -> None:
    """Its JSON is incomplete: `length`, as OpenAI says, never `stop` (the client would take it as whole)."""
    fmt = {"type": "json_schema", "json_schema": {"name": "a", "schema": {"type": "object"}}}
    content = [{"toolUse": {"toolUseId": "t", "name": "json_response", "input": {"a": "the quick br"}}}]
    answer = {"output": {"message": {"role": "assistant", "content": content}}, "stopReason": "max_tokens"}
    completion = adapter().chat_response(orjson.dumps(answer), request(response_format=fmt), target())
    assert completion.choices[0].finish_reason == "length"


@pytest.mark.parametrize(
    "fields",
    [
        {"tool_choice": "required", "tools": [WEATHER]},
        {"tool_choice": {"type": "function", "function": {"name": "get_weather"}}, "tools": [WEATHER]},
        {"response_format": {"type": "json_schema", "json_schema": {"name": "a", "schema": {"type": "object"}}}},
    ],
    ids=["required", "named", "json_schema"],
)
def test_no_thinking_on_a_turn_whose_tool_use_is_forced(fields: dict[str, Any]) -> None:
    """Claude refuses thinking with a forced tool choice ("Thinking may not be enabled when tool_choice forces
    tool use"): the forced tool wins and the wish is named, as the Anthropic adapter does."""
    body, dropped = built(request(reasoning_effort="low", max_tokens=8000, **fields), target(SONNET))
    assert "any" in body["toolConfig"]["toolChoice"] or "tool" in body["toolConfig"]["toolChoice"]
    assert "thinking" not in body.get("additionalModelRequestFields", {}) and "reasoning_effort" in dropped


CALL = {"id": "t1", "type": "function", "function": {"name": "get_weather", "arguments": '{"city": "Paris"}'}}


def tool_loop(**assistant: Any) -> list[dict[str, Any]]:
    """A question, the assistant's tool call (with `assistant`'s fields), and the tool's result."""
    return [
        {"role": "user", "content": "Weather in Paris?"},
        {"role": "assistant", "content": None, "tool_calls": [CALL], **assistant},
        {"role": "tool", "tool_call_id": "t1", "content": "18 C"},
    ]


@pytest.mark.parametrize(
    ("model", "fields"),
    [
        (SONNET, {"reasoning_effort": "low"}),
        ("us.anthropic.claude-opus-4-7", {"reasoning_effort": "high"}),  # adaptive, with an effort
    ],
)
def test_no_thinking_on_a_tool_loop_whose_last_turn_does_not_open_with_reasoning(
    model: str, fields: dict[str, Any]
) -> None:
    """Bedrock relays Anthropic's refusal of thinking when the final assistant turn called a tool without opening
    with Claude's reasoning: no `thinking` is sent, nor the effort that goes with it, and the wish is named."""
    body, dropped = built(request(messages=tool_loop(), tools=[WEATHER], max_tokens=8000, **fields), target(model))
    assert "additionalModelRequestFields" not in body and dropped == ["reasoning_effort"]
    signed = [{"type": "thinking", "thinking": "Ask the tool.", "signature": "sig-1"}]
    messages = tool_loop(thinking_blocks=signed)
    body, dropped = built(request(messages=messages, tools=[WEATHER], max_tokens=8000, **fields), target(model))
    assert body["additionalModelRequestFields"]["thinking"]["type"] in ("enabled", "adaptive") and dropped == []


def test_reasoning_blocks_become_reasoning_content() -> None:
    content = [{"reasoningContent": {"reasoningText": {"text": "Hmm.", "signature": "sig"}}}, {"text": "Yes."}]
    answer = {"output": {"message": {"role": "assistant", "content": content}}, "stopReason": "end_turn", "usage": {}}
    message = adapter().chat_response(orjson.dumps(answer), request(), target()).choices[0].message
    assert (message.reasoning_content, message.content) == ("Hmm.", "Yes.")


@pytest.mark.parametrize(
    ("stop_reason", "finish"),
    [
        ("end_turn", "stop"),
        ("stop_sequence", "stop"),
        ("max_tokens", "length"),
        ("tool_use", "tool_calls"),
        ("guardrail_intervened", "content_filter"),
        ("content_filtered", "content_filter"),
        ("some_new_reason", "stop"),
    ],
)
def test_stop_reasons_map_to_finish_reasons(stop_reason: str, finish: str) -> None:
    answer = {"output": {"message": {"role": "assistant", "content": [{"text": "x"}]}}, "stopReason": stop_reason}
    assert adapter().chat_response(orjson.dumps(answer), request(), target()).choices[0].finish_reason == finish


def test_every_stop_reason_botocore_documents_is_known() -> None:
    """botocore's `StopReason` enum, each value mapped to a finish reason or known to be no answer: two were mapped
    to `stop` (found by review), and a value AWS adds is caught here when botocore is updated."""
    model = botocore.session.get_session().get_service_model("bedrock-runtime")
    documented = set(model.shape_for("StopReason").enum)
    assert documented == set(bedrock.STOP_REASONS) | set(bedrock.UNUSABLE_STOPS)


@pytest.mark.parametrize("stop_reason", ["malformed_tool_use", "malformed_model_output"])
def test_a_malformed_tool_use_or_output_is_no_answer_with_what_it_billed(stop_reason: str) -> None:
    """Bedrock's `malformed_tool_use` (and `malformed_model_output`) were `stop`: a client was told a broken tool
    call ended normally. Now the provider's malformed answer (retryable: another deployment is tried), naming the
    stop reason, with the usage Bedrock billed; in a stream, once its usage is in."""
    usage = {"inputTokens": 40, "outputTokens": 9, "totalTokens": 49}
    content = [{"text": "Let me look that up."}]
    answer = {"output": {"message": {"role": "assistant", "content": content}}, "stopReason": stop_reason}
    with pytest.raises(UpstreamError) as whole:
        adapter().chat_response(orjson.dumps({**answer, "usage": usage}), request(), target())
    assert whole.value.retryable and whole.value.outcome == "invalid_response" and stop_reason in whole.value.message
    assert whole.value.billed is not None and (
        whole.value.billed.prompt_tokens,
        whole.value.billed.completion_tokens,
    ) == (
        40,
        9,
    )

    parser = adapter().stream_parser(request(), target())
    frames = stream_frames({**answer, "usage": usage})
    chunks = [c for event in decode(b"".join(frames)) for c in parser.feed(event)]
    assert not [c for c in chunks if c.choices and c.choices[0].finish_reason]  # no `stop` before the error
    with pytest.raises(UpstreamError) as streamed:
        parser.finish()
    assert parser.usage is not None and parser.usage.completion_tokens == 9
    assert stop_reason in streamed.value.message and streamed.value.billed == parser.usage


@pytest.mark.parametrize(("body", "outcome"), [(b"{nope", "invalid_json"), (b'{"output": {}}', "invalid_response")])
def test_unusable_200_answers_are_retryable_upstream_errors(body: bytes, outcome: str) -> None:
    with pytest.raises(UpstreamError) as caught:
        adapter().chat_response(body, request(), target())
    assert caught.value.retryable and caught.value.outcome == outcome


# --- event-stream framing ----------------------------------------------------------------------------


def test_fixture_frames_are_valid_for_botocores_own_decoder() -> None:
    buffer = EventStreamBuffer()
    buffer.add_data(fixture("converse-stream.bin"))
    messages: list[Any] = list(buffer)  # the stubs type the iteration loosely
    theirs = [(m.headers[":event-type"], m.payload) for m in messages]
    ours = [(e.event, e.data) for e in decode(fixture("converse-stream.bin"))]
    assert ours == theirs and len(ours) == 13


def test_frames_split_at_every_byte_boundary_decode_the_same() -> None:
    raw = fixture("converse-stream.bin")
    whole = decode(raw)
    for split in range(1, len(raw)):
        decoder = EventStreamDecoder(bedrock.stream_exception)
        assert decoder.feed(raw[:split]) + decoder.feed(raw[split:]) + decoder.finish() == whole
    assert decode(raw, 1) == whole


@pytest.mark.parametrize("position", [2, 9, 40, -2])
def test_a_corrupted_byte_fails_the_crc(position: int) -> None:
    raw = bytearray(event_frame("messageStart", {"role": "assistant"}))
    raw[position] ^= 0x01
    with pytest.raises(UpstreamError) as caught:
        decode(bytes(raw))
    assert caught.value.retryable and caught.value.outcome == "invalid_frame"


def test_a_stream_ending_inside_a_frame_is_an_error() -> None:
    decoder = EventStreamDecoder(bedrock.stream_exception)
    assert decoder.feed(event_frame("messageStart", {"role": "assistant"})[:-3]) == []
    with pytest.raises(UpstreamError, match="ended inside a message"):
        decoder.finish()


def test_an_impossible_length_is_an_error() -> None:
    prelude = struct.pack(">II", 8, 0)
    with pytest.raises(UpstreamError, match="impossible"):
        decode(prelude + struct.pack(">I", zlib.crc32(prelude)))


def test_headers_of_every_type_parse() -> None:
    value = uuid.UUID(int=7)
    raw = (
        b"\x01a\x00"
        + b"\x01b\x01"
        + b"\x01c\x02\x05"
        + b"\x01d\x03\x01\x00"
        + b"\x01e\x04\x00\x00\x01\x00"
        + b"\x01f\x05"
        + struct.pack(">q", -2)
        + b"\x01g\x06\x00\x02\xff\xfe"
        + b"\x01h\x07\x00\x02hi"
        + b"\x01i\x08"
        + struct.pack(">q", 1_700_000_000_000)
        + b"\x01j\x09"
        + value.bytes
    )
    assert parse_headers(raw) == {
        "a": True,
        "b": False,
        "c": 5,
        "d": 256,
        "e": 256,
        "f": -2,
        "g": b"\xff\xfe",
        "h": "hi",
        "i": 1_700_000_000_000,
        "j": value,
    }
    with pytest.raises(UpstreamError):
        parse_headers(b"\x01a\x0c")


def test_non_event_messages_are_skipped() -> None:
    raw = encode_frame({":message-type": "initial-response"}, b"{}") + event_frame("messageStop", {"stopReason": "x"})
    assert [e.event for e in decode(raw)] == ["messageStop"]


# --- stream events -----------------------------------------------------------------------------------


def test_stream_with_text_and_tool_use() -> None:
    chunks, usage = parse(fixture("converse-stream.bin"))
    assert chunks[0]["choices"][0]["delta"] == {"role": "assistant", "content": ""}
    assert deltas(chunks, "content") == "Let me check the weather."
    calls = [
        c["choices"][0]["delta"]["tool_calls"][0]
        for c in chunks
        if c.get("choices") and c["choices"][0]["delta"].get("tool_calls")
    ]
    assert calls[0] == {
        "index": 0,
        "id": "tooluse_kZJMlvQmRJ6eAyJE5GIl7Q",
        "type": "function",
        "function": {"name": "get_weather", "arguments": ""},
    }
    arguments = "".join(call["function"].get("arguments", "") for call in calls)
    assert orjson.loads(arguments) == {"city": "Paris", "unit": "celsius"}
    finishes = [
        c["choices"][0]["finish_reason"] for c in chunks if c.get("choices") and c["choices"][0].get("finish_reason")
    ]
    assert finishes == ["tool_calls"]
    assert chunks[-1]["choices"] == [] and chunks[-1]["usage"]["prompt_tokens"] == 420
    assert usage is not None and (usage.prompt_tokens, usage.completion_tokens) == (420, 58)
    assert len({c["id"] for c in chunks}) == 1


def test_stream_reasoning_and_json_schema_tool_input() -> None:
    fmt = {"type": "json_schema", "json_schema": {"name": "a", "schema": {"type": "object"}}}
    frames = [
        event_frame("messageStart", {"role": "assistant"}),
        event_frame("contentBlockDelta", {"contentBlockIndex": 0, "delta": {"reasoningContent": {"text": "Think."}}}),
        event_frame("contentBlockDelta", {"contentBlockIndex": 0, "delta": {"reasoningContent": {"signature": "s"}}}),
        event_frame(
            "contentBlockStart",
            {"contentBlockIndex": 1, "start": {"toolUse": {"toolUseId": "t", "name": "json_response"}}},
        ),
        event_frame("contentBlockDelta", {"contentBlockIndex": 1, "delta": {"toolUse": {"input": '{"a":'}}}),
        event_frame("contentBlockDelta", {"contentBlockIndex": 1, "delta": {"toolUse": {"input": "1}"}}}),
        event_frame("messageStop", {"stopReason": "tool_use"}),
    ]
    chunks, usage = parse(b"".join(frames), request(response_format=fmt))
    assert deltas(chunks, "reasoning_content") == "Think."
    assert deltas(chunks, "content") == '{"a":1}'
    assert chunks[-1]["choices"][0]["finish_reason"] == "stop"
    assert usage is None


def test_a_stream_keeps_redacted_reasoning_as_the_whole_answer_does() -> None:
    """`redactedContent` deltas become the `redacted_thinking` block the whole answer has (it went as nothing), in
    its place among the thinking blocks: Claude needs it back on the next turn."""
    answer = fake.answer_for({"messages": [{"role": "user", "content": [{"text": "Hi"}]}]}, thinks=True, redacts=True)
    whole = adapter().chat_response(orjson.dumps(answer), request(), target())
    chunks, _ = parse(b"".join(stream_frames(answer)))
    streamed = [block for c in chunks if c.get("choices") for block in c["choices"][0]["delta"].get(THINKING, [])]
    assert streamed == getattr(whole.choices[0].message, THINKING)
    assert streamed[0] == {"type": "redacted_thinking", "data": fake.REDACTED, "index": 0}


def test_redacted_reasoning_in_several_deltas_is_one_block_of_their_bytes() -> None:
    frames = [event_frame("messageStart", {"role": "assistant"})]
    for piece in (b"first ", b"second"):
        delta = {"reasoningContent": {"redactedContent": base64.b64encode(piece).decode()}}
        frames.append(event_frame("contentBlockDelta", {"contentBlockIndex": 0, "delta": delta}))
    frames += [event_frame("contentBlockStop", {"contentBlockIndex": 0}), event_frame("messageStop", {})]
    chunks, _ = parse(b"".join(frames))
    [block] = [block for c in chunks if c.get("choices") for block in c["choices"][0]["delta"].get(THINKING, [])]
    assert block == {"type": "redacted_thinking", "data": base64.b64encode(b"first second").decode(), "index": 0}


def nova_reasoning_frames(*pieces: str) -> list[bytes]:
    frames = [event_frame("messageStart", {"role": "assistant"})]
    for piece in pieces:
        delta = {"reasoningContent": {"text": piece}}
        frames.append(event_frame("contentBlockDelta", {"contentBlockIndex": 0, "delta": delta}))
    frames.append(event_frame("contentBlockStop", {"contentBlockIndex": 0}))
    frames.append(event_frame("contentBlockDelta", {"contentBlockIndex": 1, "delta": {"text": "Hi."}}))
    return [*frames, event_frame("contentBlockStop", {"contentBlockIndex": 1}), event_frame("messageStop", {})]


def test_nova_2s_redacted_reasoning_is_no_reasoning_in_any_pieces_and_a_real_one_still_streams() -> None:
    """Nova 2's reasoning is the text "[REDACTED]" (AWS's Nova 2 guide): it was relayed as the model's reasoning. It
    is left out however Bedrock cuts it into deltas; reasoning that only starts like it streams whole, and another
    model's "[REDACTED]" is its own text."""
    nova = "us.amazon.nova-2-lite-v1:0"
    for pieces in (["[REDACTED]"], ["[RED", "ACT", "ED]"]):
        chunks, _ = parse(b"".join(nova_reasoning_frames(*pieces)), model=nova)
        assert deltas(chunks, "reasoning_content") == "" and deltas(chunks, "content") == "Hi."
    for pieces in (["[RED", "ACTED] by", " design"], ["[RED"], ["[REDACTED]", " and more"]):
        chunks, _ = parse(b"".join(nova_reasoning_frames(*pieces)), model=nova)
        assert deltas(chunks, "reasoning_content") == "".join(pieces)
    chunks, _ = parse(b"".join(nova_reasoning_frames("[REDACTED]")), model="us.deepseek.r1-v1:0")
    assert deltas(chunks, "reasoning_content") == "[REDACTED]"


def test_a_streamed_call_without_arguments_ends_with_an_empty_object() -> None:
    """A call without arguments (Claude's streams an empty input) ends as `{}`, as Converse's whole answer gives it,
    and an empty JSON-schema answer as `{}` too."""
    fmt = {"type": "json_schema", "json_schema": {"name": "a", "schema": {"type": "object"}}}
    for req, field in ((request(), "tool_calls"), (request(response_format=fmt), "content")):
        name = "json_response" if field == "content" else "get_time"
        frames = [
            event_frame("messageStart", {"role": "assistant"}),
            event_frame(
                "contentBlockStart", {"contentBlockIndex": 0, "start": {"toolUse": {"toolUseId": "t", "name": name}}}
            ),
            event_frame("contentBlockDelta", {"contentBlockIndex": 0, "delta": {"toolUse": {"input": ""}}}),
            event_frame("contentBlockStop", {"contentBlockIndex": 0}),
            event_frame("messageStop", {"stopReason": "tool_use"}),
        ]
        chunks, _ = parse(b"".join(frames), req)
        delta = [c["choices"][0]["delta"] for c in chunks if c["choices"][0]["delta"].get(field)][-1]
        assert delta == (
            {"content": "{}"} if field == "content" else {"tool_calls": [{"index": 0, "function": {"arguments": "{}"}}]}
        )


def test_usage_is_sent_once() -> None:
    parser = adapter().stream_parser(request(), target())
    metadata = StreamEvent("metadata", orjson.dumps({"usage": {"inputTokens": 5, "outputTokens": 2}}))
    assert len(parser.feed(metadata)) == 1
    assert parser.finish() == []


@pytest.mark.parametrize(
    ("exception", "status", "retryable"),
    [
        ("throttlingException", 429, True),
        ("modelStreamErrorException", 424, True),
        ("serviceUnavailableException", 503, True),
        ("internalServerException", 500, True),
        ("validationException", 400, False),
    ],
)
def test_exception_frames_raise_the_matching_upstream_error(exception: str, status: int, retryable: bool) -> None:
    raw = event_frame("messageStart", {"role": "assistant"}) + exception_frame(exception, "it broke")
    decoder = adapter().frame_decoder()
    with pytest.raises(UpstreamError) as caught:
        decoder.feed(raw)
    assert caught.value.upstream_status == status and caught.value.retryable is retryable
    assert "it broke" in caught.value.message and caught.value.upstream_type == exception


def test_error_frames_carry_their_code_and_message() -> None:
    raw = encode_frame({":message-type": "error", ":error-code": "InternalFailure", ":error-message": "boom"}, b"")
    with pytest.raises(UpstreamError, match="boom") as caught:
        decode(raw)
    assert caught.value.upstream_status == 500 and caught.value.upstream_type == "InternalFailure"


def test_recorded_exception_stream() -> None:
    with pytest.raises(UpstreamError) as caught:
        parse(fixture("stream-exception.bin"))
    assert caught.value.upstream_status == 429 and caught.value.retryable


# --- errors ------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("status", "kind", "retryable"),
    [
        (400, "ValidationException", False),
        # The model not open to the account, or not in the region: the deployment's, tried on the next one.
        (403, "AccessDeniedException", True),
        (404, "ResourceNotFoundException", True),
        (408, "ModelTimeoutException", True),
        (429, "ThrottlingException", True),
        (500, "InternalServerException", True),
        (503, "ServiceUnavailableException", True),
    ],
)
def test_http_errors_keep_status_type_and_message(status: int, kind: str, retryable: bool) -> None:
    headers = {"x-amzn-errortype": f"{kind}:http://internal.amazon.com/coral/com.amazon.bedrock/"}
    err = adapter().error(status, fixture("error-throttling.json"), headers)
    assert err.upstream_status == status and err.retryable is retryable and err.upstream_type == kind
    assert "Too many requests" in err.message


def botocore_errors() -> dict[str, int]:
    """Each error of botocore's bedrock-runtime model, any operation's, and the HTTP status it gives it."""
    model = botocore.session.get_session().get_service_model("bedrock-runtime")
    shapes = {shape for operation in model.operation_names for shape in model.operation_model(operation).error_shapes}
    return {shape.name: shape.metadata["error"]["httpStatusCode"] for shape in shapes}


def test_each_error_name_is_read_at_botocores_status_but_the_accounts_quota() -> None:
    """`ERROR_STATUS` names errors botocore's model has (every one as of botocore 1.44), each at its status;
    `ServiceQuotaExceededException`, which botocore gives 400, is a quota of the gateway's AWS account, read as a
    429. (An error a later botocore adds keeps the HTTP status it came with until the table names it.)"""
    documented = {name.lower(): status for name, status in botocore_errors().items()}
    assert documented["servicequotaexceededexception"] == 400
    ours = {name: status for name, status in bedrock.ERROR_STATUS.items() if name != "unrecognizedclientexception"}
    assert {name: documented.get(name) for name in ours} == {**ours, "servicequotaexceededexception": 400}
    assert len(ours) >= 12


@pytest.mark.parametrize(
    ("kind", "status", "retryable"),
    [
        ("ValidationException", 400, False),
        ("ConflictException", 400, False),
        # The model not open to the account, or not in the region: the deployment's, tried on the next one.
        ("AccessDeniedException", 403, True),
        ("ResourceNotFoundException", 404, True),
        ("ModelTimeoutException", 408, True),
        ("ModelErrorException", 424, False),
        ("ModelStreamErrorException", 424, True),
        ("ThrottlingException", 429, True),
        ("ModelNotReadyException", 429, True),
        # botocore's 400: over HTTP it was the client's 400, never retried nor failed over, while the same
        # exception in a stream was a 429, failed over (review).
        ("ServiceQuotaExceededException", 429, True),
        ("InternalServerException", 500, True),
        ("ServiceUnavailableException", 503, True),
    ],
)
def test_an_error_is_read_by_its_name_alike_over_http_and_in_a_stream(kind: str, status: int, retryable: bool) -> None:
    """Each of botocore's errors, over HTTP with the status botocore gives it and in a stream (`:exception-type`
    in camel case), has one status and one verdict on another attempt: its name's (`ERROR_STATUS`)."""
    body = orjson.dumps({"message": "Too many tokens per day, please wait before trying again."})
    headers = {"x-amzn-errortype": f"{kind}:http://internal.amazon.com/coral/com.amazon.bedrock/"}
    over_http = adapter().error(botocore_errors()[kind], body, headers)
    streamed = bedrock.stream_exception("exception", kind[0].lower() + kind[1:], body)
    for err in (over_http, streamed):
        assert (err.upstream_status, err.retryable) == (status, retryable)
        assert (err.upstream_type or "").lower() == kind.lower() and "Too many tokens per day" in err.message


@pytest.mark.parametrize(("status", "retryable"), [(400, False), (403, True), (503, True)])
def test_an_error_name_the_adapter_does_not_know_keeps_its_http_status(status: int, retryable: bool) -> None:
    headers = {"x-amzn-errortype": "InvalidSignatureException:http://internal.amazon.com/coral/com.amazon.bedrock/"}
    err = adapter().error(status, fixture("error-throttling.json"), headers)
    assert (err.upstream_status, err.retryable, err.upstream_type) == (status, retryable, "InvalidSignatureException")


def test_error_without_a_json_body_keeps_a_readable_message() -> None:
    err = adapter().error(502, b"<html>Bad Gateway</html>", {})
    assert "Bad Gateway" in err.message and err.retryable and err.upstream_type is None


def write_fixtures() -> None:
    """Regenerate the binary stream fixtures from the JSON answer (run this module as a script)."""
    answer = orjson.loads(fixture("converse-tool-use-response.json"))
    (FIXTURES / "converse-stream.bin").write_bytes(b"".join(stream_frames(answer)))
    frames = [
        event_frame("messageStart", {"role": "assistant"}),
        exception_frame("throttlingException", "Too many tokens, please wait before trying again."),
    ]
    (FIXTURES / "stream-exception.bin").write_bytes(b"".join(frames))


if __name__ == "__main__" and "--write" in sys.argv:
    write_fixtures()


@pytest.mark.parametrize(
    "messages",
    [
        [{"role": "assistant", "content": "Hello! How can I help?"}, {"role": "user", "content": "Weather?"}],
        [
            {"role": "user", "content": ""},
            {"role": "assistant", "content": "Hi!"},
            {"role": "user", "content": "Weather?"},
        ],
    ],
    ids=["greeting", "empty-first-user-turn"],
)
def test_a_conversation_always_opens_with_a_user_turn(messages: list[dict[str, Any]]) -> None:
    body, _ = built(ChatRequest.model_validate({"model": "public", "messages": messages}))
    assert [m["role"] for m in body["messages"]] == ["user", "assistant", "user"]
    assert body["messages"][1]["content"][0]["text"] in ("Hello! How can I help?", "Hi!")


def test_strict_tools_names_and_claude_4_5_sampling() -> None:
    tool = {"type": "function", "function": {"name": "f", "parameters": {"type": "object"}, "strict": True}}
    messages = [{"role": "user", "content": "hi", "name": "alice"}]
    req = request(messages=messages, tools=[tool], temperature=0.2, top_p=0.5)
    body, dropped = built(req, target("us.anthropic.claude-sonnet-4-5-20250929-v1:0"))
    assert body["toolConfig"]["tools"][0]["toolSpec"]["strict"] is True
    assert body["inferenceConfig"] == {"temperature": 0.2}
    assert sorted(dropped) == ["messages.name", "top_p"]


@pytest.mark.parametrize(
    ("model", "fields", "expected", "dropped"),
    [
        (
            "us.anthropic.claude-sonnet-4-5-20250929-v1:0",
            {"reasoning_effort": "low", "temperature": 0.3},
            {"thinking": {"type": "enabled", "budget_tokens": 2048}},
            ["temperature"],
        ),
        (
            "global.anthropic.claude-opus-4-6-v1",
            {"thinking": {"type": "adaptive"}},
            {"thinking": {"type": "adaptive"}},
            [],
        ),
        (
            "us.anthropic.claude-opus-4-7",
            {"reasoning_effort": "high"},
            {"thinking": {"type": "adaptive"}, "output_config": {"effort": "high"}},
            [],
        ),
        (
            "us.amazon.nova-2-lite-v1:0",
            {"reasoning_effort": "high"},
            {"reasoningConfig": {"type": "enabled", "maxReasoningEffort": "high"}},
            [],
        ),
        (MODEL, {"reasoning_effort": "high"}, None, ["reasoning_effort"]),
    ],
)
def test_reasoning_goes_into_additional_model_request_fields(
    model: str, fields: dict[str, Any], expected: dict[str, Any] | None, dropped: list[str]
) -> None:
    body, not_honoured = built(request(**fields), target(model))
    assert body.get("additionalModelRequestFields") == expected and not_honoured == dropped
    if expected and "thinking" in expected:
        assert "temperature" not in body.get("inferenceConfig", {})


def test_cache_markers_become_cache_points_after_their_blocks_and_tools() -> None:
    marker = {"type": "ephemeral"}
    hour = {"type": "ephemeral", "ttl": "1h"}
    messages = [
        {"role": "system", "content": [{"type": "text", "text": "Rules.", "cache_control": hour}]},
        {
            "role": "user",
            "content": [{"type": "text", "text": "Q", "cache_control": marker}, {"type": "text", "text": "R"}],
        },
    ]
    tool = {"type": "function", "function": {"name": "f", "parameters": {"type": "object"}}, "cache_control": marker}
    body, dropped = built(request(messages=messages, tools=[tool]))
    point = {"cachePoint": {"type": "default"}}
    assert body["system"] == [{"text": "Rules."}, {"cachePoint": {"type": "default", "ttl": "1h"}}]  # kept an hour
    assert body["messages"][0]["content"] == [{"text": "Q"}, point, {"text": "R"}]
    assert body["toolConfig"]["tools"][1] == point and dropped == []


def test_a_marked_tool_result_is_followed_by_a_cache_point() -> None:
    """Claude Code marks the last block of each turn, on a tool turn its `tool_result`, which the Messages
    translation marks on the result's content, as a Chat Completions client marks a tool message's parts. Converse
    takes no cache point inside a `toolResult`: one follows it (it was dropped, and the conversation billed at the
    full input price every turn). One point a marked block, however many of its parts are marked: a request within
    Anthropic's four markers stays within Bedrock's four cache points."""
    marker = {"type": "ephemeral"}
    tool = {"type": "function", "function": {"name": "f", "parameters": {"type": "object"}}}
    call = {"id": "toolu_1", "type": "function", "function": {"name": "f", "arguments": "{}"}}
    hour = {"type": "ephemeral", "ttl": "1h"}
    parts = [
        {"type": "text", "text": "out", "cache_control": marker},
        {"type": "text", "text": "put", "cache_control": hour},
    ]
    messages = [
        {"role": "system", "content": [{"type": "text", "text": "Rules.", "cache_control": marker}]},
        {"role": "user", "content": "Go"},
        {"role": "assistant", "content": None, "tool_calls": [call]},
        {"role": "tool", "tool_call_id": "toolu_1", "content": parts},
    ]
    body, dropped = built(request(messages=messages, tools=[tool]))
    result = {"toolResult": {"toolUseId": "toolu_1", "content": [{"text": "out"}, {"text": "put"}]}}
    assert body["messages"][-1]["content"] == [result, {"cachePoint": {"type": "default", "ttl": "1h"}}]
    points = [b for b in [*body["system"], *(b for m in body["messages"] for b in m["content"])] if "cachePoint" in b]
    assert len(points) == 2 and dropped == []
    assert references.bedrock_request(body) == []  # Converse's shape: a cache point is a turn's content block


@pytest.mark.parametrize(
    ("model", "kept", "dropped"),
    [
        (MODEL, ["system", "messages", "tools"], []),
        ("us.amazon.nova-pro-v1:0", ["system", "messages"], ["tools.cache_control"]),
        ("us.amazon.nova-2-lite-v1:0", ["system", "messages"], ["tools.cache_control"]),
        ("us.meta.llama3-3-70b-instruct-v1:0", [], ["messages.cache_control", "tools.cache_control"]),
        ("mistral.mistral-large-2407-v1:0", [], ["messages.cache_control", "tools.cache_control"]),
        ("us.deepseek.r1-v1:0", [], ["messages.cache_control", "tools.cache_control"]),
        ("anthropic.claude-3-sonnet-20240229-v1:0", [], ["messages.cache_control", "tools.cache_control"]),
        # An application inference profile's ARN names no model (Claude behind it, say): the points go as they came
        # (left out, they billed Claude Code's every turn uncached: merge review).
        (
            "arn:aws:bedrock:eu-central-1:123456789012:application-inference-profile/a1b2c3d4e5f6",
            ["system", "messages", "tools"],
            [],
        ),
    ],
)
def test_a_clients_cache_markers_become_points_only_where_the_model_takes_them(
    model: str, kept: list[str], dropped: list[str]
) -> None:
    """A client's markers became cache points for every model, and Bedrock refuses the whole request for a point to
    a model without prompt caching, or among Nova's tools (AWS's supported-models table): Claude Code's requests to
    Llama failed (review provrev). The points go where the model takes them; the others are left out and named."""
    marker = {"type": "ephemeral"}
    messages = [
        {"role": "system", "content": [{"type": "text", "text": "Rules.", "cache_control": marker}]},
        {"role": "user", "content": [{"type": "text", "text": "Q", "cache_control": marker}]},
    ]
    tool = {"type": "function", "function": {"name": "f", "parameters": {"type": "object"}}, "cache_control": marker}
    body, not_honoured = built(request(messages=messages, tools=[tool]), target(model))
    found = ["system" for block in body["system"] if "cachePoint" in block]
    found += ["messages" for block in body["messages"][0]["content"] if "cachePoint" in block]
    found += ["tools" for block in body["toolConfig"]["tools"] if "cachePoint" in block]
    assert found == kept and not_honoured == dropped
    assert body["system"][0] == {"text": "Rules."} and body["messages"][0]["content"][0] == {"text": "Q"}


# Claude Code's betas for a model given as `name[1m]` (recorded from `claude -p`, 2.1.x).
CLAUDE_CODE_BETAS = (
    "claude-code-20250219,context-1m-2025-08-07,interleaved-thinking-2025-05-14,context-management-2025-06-27,"
    "advanced-tool-use-2025-11-20,effort-2025-11-24"
)


def translated(req: ChatRequest, model: str, betas: str = CLAUDE_CODE_BETAS) -> tuple[dict[str, Any], list[str]]:
    call = NativeCall(MESSAGES_API, {}, {"anthropic-beta": betas}, lost_headers=lost_betas(betas, {}, []))
    result = adapter().translated_request(call, req, target(model), stream=False)
    return orjson.loads(result.request.body), result.dropped


def test_a_messages_clients_betas_bedrock_takes_reach_claude_and_the_others_are_named() -> None:
    """Bedrock takes Claude's betas in `additionalModelRequestFields.anthropic_beta` (they were all lost: no 1M
    context for Claude Code's `name[1m]`); one it does not take is its 400 ("invalid beta flag"), and one whose
    feature the request leaves out (context management, effort on a model given a thinking budget) asks for
    nothing a model may refuse: both are named, as the client wrote them."""
    thinking = request(thinking={"type": "enabled", "budget_tokens": 2000}, max_tokens=4000)
    body, dropped = translated(thinking, SONNET)
    fields = body["additionalModelRequestFields"]
    assert fields["anthropic_beta"] == ["context-1m-2025-08-07", "interleaved-thinking-2025-05-14"]
    assert fields["thinking"] == {"type": "enabled", "budget_tokens": 2000}
    named = [
        "claude-code-20250219",
        "context-management-2025-06-27",
        "advanced-tool-use-2025-11-20",
        "effort-2025-11-24",
    ]
    assert dropped == [f"anthropic-beta[{beta}]" for beta in named]
    assert references.bedrock_request(body) == []
    # Interleaved thinking only where Claude thinks; nothing for a model that is not Claude.
    body, dropped = translated(request(), SONNET)
    assert body["additionalModelRequestFields"] == {"anthropic_beta": ["context-1m-2025-08-07"]}
    assert "anthropic-beta[interleaved-thinking-2025-05-14]" in dropped
    body, dropped = translated(request(), "us.amazon.nova-pro-v1:0", "context-1m-2025-08-07")
    assert "additionalModelRequestFields" not in body and dropped == ["anthropic-beta[context-1m-2025-08-07]"]
    # Another model loses what any translation loses (`lost_betas`): Claude Code's own beta, say, is not named.
    body, dropped = translated(request(), "us.amazon.nova-pro-v1:0")
    assert "additionalModelRequestFields" not in body and dropped == ["anthropic-beta[context-1m-2025-08-07]"]
    # A request without betas (every Chat Completions one) gets none, and names none.
    body, dropped = built(thinking, target(SONNET))
    assert "anthropic_beta" not in body["additionalModelRequestFields"] and dropped == []
    # CountTokens counts the prompt as the 1M context would take it.
    call = NativeCall(MESSAGES_API, {}, {"anthropic-beta": CLAUDE_CODE_BETAS})
    counted = orjson.loads(adapter().count_tokens_request(call, thinking, target(SONNET)).request.body)
    assert counted["input"]["converse"]["additionalModelRequestFields"]["anthropic_beta"][0] == "context-1m-2025-08-07"


def test_count_tokens_sends_what_converse_tokens_request_takes_of_the_converse_body() -> None:
    """`toolConfig` and `additionalModelRequestFields` as Converse would get them (a tool-use history without its
    `toolConfig` is a 400), nothing CountTokens does not take (`inferenceConfig`)."""
    tool = {"type": "function", "function": {"name": "f", "parameters": {"type": "object"}}}
    call = {"id": "toolu_1", "type": "function", "function": {"name": "f", "arguments": "{}"}}
    messages = [
        {"role": "system", "content": "Rules."},
        {"role": "user", "content": "Go"},
        {"role": "assistant", "content": None, "tool_calls": [call]},
        {"role": "tool", "tool_call_id": "toolu_1", "content": "done"},
        {"role": "assistant", "content": "Done."},
        {"role": "user", "content": "Thanks"},
    ]
    req = request(messages=messages, tools=[tool], max_tokens=4000, reasoning_effort="low")
    counted = adapter().count_tokens_request(NativeCall(MESSAGES_API, {}), req, target(SONNET))
    converse_body, _ = built(req, target(SONNET))
    assert references.bedrock_request(orjson.loads(counted.request.body), "CountTokens") == []
    sent = orjson.loads(counted.request.body)["input"]["converse"]
    members = ("messages", "system", "toolConfig", "additionalModelRequestFields")  # ConverseTokensRequest's
    assert sent == {name: converse_body[name] for name in members}
    assert "toolUse" in sent["messages"][1]["content"][0] and "thinking" in sent["additionalModelRequestFields"]


def test_a_parameter_sent_at_its_default_is_not_named_as_dropped() -> None:
    _, dropped = built(request(logprobs=False, store=False))
    assert "logprobs" not in dropped and "store" not in dropped
    assert "logprobs" in built(request(logprobs=True))[1]
    # A penalty of 0 and no biases are OpenAI's defaults too (they were named, and refused under strict mode).
    _, dropped = built(request(presence_penalty=0, frequency_penalty=0.0, logit_bias={}))
    assert dropped == []
    assert built(request(presence_penalty=0.5))[1] == ["presence_penalty"]


@pytest.mark.parametrize(
    ("title", "name"),
    [
        ("report.pdf", "report pdf"),
        ("Q3 (draft) [v2] - final", "Q3 (draft) [v2] - final"),
        ("  two\t\tspaces  ", "two spaces"),
        ("données_2024", "donn es 2024"),
        ("...", "document-3"),
        (None, "document-3"),
        ("x" * 300, "x" * 200),
    ],
)
def test_a_documents_title_becomes_a_name_converse_takes(title: str | None, name: str) -> None:
    # Converse's DocumentBlock name: letters, digits, single whitespace, hyphens, parentheses, square brackets.
    assert bedrock.document_name(title, 3) == name
    assert fake._document_refused({"format": "pdf", "name": name, "source": {"bytes": "JVBE"}}) is None


def test_a_messages_prefill_reaches_claude_as_the_final_assistant_turn() -> None:
    """Converse continues a final assistant turn for Claude ("the response content will continue immediately from
    the content in that message"): a Messages client's prefill goes as it is, and nothing is named."""
    messages = [{"role": "user", "content": "JSON please"}, {"role": "assistant", "content": "{"}]
    req = to_chat_request(MessagesRequest.model_validate({"model": "m", "max_tokens": 9, "messages": messages}))[0]
    body, dropped = built(req)
    assert body["messages"][-1] == {"role": "assistant", "content": [{"text": "{"}]} and dropped == []


# Prompt caching a client asks for without marking anything (Codex's `prompt_cache_key`): the gateway's cache points.
POINT = {"cachePoint": {"type": "default"}}
RULES = "Follow the house style in every answer you give. " * 200  # some 2,500 tokens: past 3.5 Haiku's 2,048


def cached_session(system: Any = RULES, result: str = RULES, **fields: Any) -> ChatRequest:
    tool = {"type": "function", "function": {"name": "shell", "description": RULES, "parameters": {"type": "object"}}}
    call = {"id": "call_1", "type": "function", "function": {"name": "shell", "arguments": "{}"}}
    messages = [
        {"role": "system", "content": system},
        {"role": "user", "content": "Run the tests."},
        {"role": "assistant", "tool_calls": [call]},
        {"role": "tool", "tool_call_id": "call_1", "content": result},
    ]
    return request(messages=messages, tools=[tool], **fields)


def points(body: dict[str, Any]) -> list[str]:
    """Where a Converse body's cache points are: after the tools, the system prompt, or a turn's n-th block."""
    found = ["tools" for block in body["toolConfig"]["tools"] if "cachePoint" in block]
    found += ["system" for block in body.get("system", ()) if "cachePoint" in block]
    for i, message in enumerate(body["messages"]):
        found += [f"messages.{i}.{j}" for j, block in enumerate(message["content"]) if "cachePoint" in block]
    return found


def test_a_request_asking_for_caching_gets_cache_points_after_the_tools_the_system_and_its_last_message() -> None:
    """Codex asks for caching with `prompt_cache_key` and marks nothing: translated for Converse with no cache point,
    every turn on Claude paid its whole prefix at the full input price, and the key was named as dropped (found by
    review). Each point is at least the model's minimum (2,048 tokens for 3.5 Haiku) past any other: Bedrock creates
    no checkpoint nearer than that to the one before."""
    body, dropped = built(cached_session(prompt_cache_key="session-1"))
    assert points(body) == ["tools", "system", "messages.2.1"] and dropped == []
    assert body["toolConfig"]["tools"][-1] == POINT and body["system"][-1] == POINT
    assert body["messages"][2]["content"][0]["toolResult"]["toolUseId"] == "call_1"


def test_a_point_too_near_another_or_for_a_model_bedrock_does_not_cache_for_is_left_out() -> None:
    short_result = cached_session(result="12 passed", prompt_cache_key="session-1")  # a few tokens past the system
    assert points(built(short_result)[0]) == ["tools", "messages.2.1"]
    for model in ("us.anthropic.claude-3-haiku-20240307-v1:0", "meta.llama3-70b-instruct-v1:0"):
        body, dropped = built(cached_session(prompt_cache_key="session-1"), target(model))
        assert points(body) == [] and "prompt_cache_key" in dropped


def test_cache_points_go_only_where_asked_and_the_clients_own_count_toward_four() -> None:
    """A request that does not ask for caching gets no point; the client's own three leave room for the last
    message's alone (Bedrock takes four); `prompt_caching: never` adds none though asked, `always` adds them
    unasked."""
    assert points(built(cached_session())[0]) == []
    system = [{"type": "text", "text": f"Rule {n}. {RULES}", "cache_control": {"type": "ephemeral"}} for n in range(3)]
    body, _ = built(cached_session(system, prompt_cache_key="session-1"))
    assert points(body) == ["system", "system", "system", "messages.2.1"]  # four: Bedrock's most
    assert points(built(cached_session(prompt_cache_key="k"), target(prompt_caching="never"))[0]) == []
    assert points(built(cached_session(), target(prompt_caching="always"))[0]) == ["tools", "system", "messages.2.1"]
