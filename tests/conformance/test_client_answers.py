"""What clients get back, from every adapter's recorded answers and streams: each chat answer and stream
chunk as the gateway writes it, checked against OpenAI's response schemas, and each `/v1/messages` answer
and event against `anthropic.types.Message` and `RawMessageStreamEvent`."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import jsonschema
import orjson
import pytest

from adapters.providers.params import call_signature
from adapters.providers.registry import REGISTRY
from handler.api.messages_out import EventWriter, to_message
from handler.api.streaming import answer_json, sse_chunk
from handler.ports import Target
from handler.schemas import ChatCompletion, ChatCompletionChunk, ChatRequest, PlainCompletion, Usage
from handler.wire import StreamEvent
from tests.conformance import references
from tests.conformance.corpus import MODELS
from tests.conformance.openai_spec import CHAT_COMPLETION, CHAT_COMPLETION_CHUNK

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures"
OPTIONS: dict[str, dict[str, Any]] = {"azure": {"base_url": "https://contoso.openai.azure.com"}}
ANSWERS = [
    ("openai", "openai/chat-response.json"),
    ("azure", "azure/chat-content-filter-response.json"),
    ("deepseek", "deepseek/chat-reasoner-response.json"),
    ("mistral", "mistral/chat-tool-call-response.json"),
    ("mistral", "mistral/magistral-response.json"),
    ("anthropic", "anthropic/message-response.json"),
    ("anthropic", "anthropic/message-tool-use-response.json"),
    ("gemini", "gemini/generate-content-response.json"),
    ("gemini", "gemini/function-call-response.json"),
    ("gemini", "gemini/prompt-blocked-response.json"),
    ("bedrock", "bedrock/converse-response.json"),
    ("bedrock", "bedrock/converse-tool-use-response.json"),
    ("deepseek", "openai/chat-response.json"),
]
STREAMS = [
    ("openai", "openai/chat-tool-calls-stream.sse"),
    ("deepseek", "openai/deepseek-reasoner-stream.sse"),
    ("azure", "azure/chat-stream.sse"),
    ("azure", "azure/chat-stream-async-filter-blocked.sse"),
    ("azure", "azure/chat-stream-async-filter-late.sse"),
    ("mistral", "mistral/magistral-stream.sse"),
    ("anthropic", "anthropic/messages-stream.sse"),
    ("anthropic", "anthropic/messages-thinking-stream.sse"),
    ("gemini", "gemini/stream.sse"),
    ("gemini", "gemini/function-call-stream.sse"),
    ("bedrock", "bedrock/converse-stream.bin"),
]
REQUEST = ChatRequest.model_validate({"model": "public", "messages": [{"role": "user", "content": "Hi"}]})


def adapter_and_target(provider: str) -> tuple[Any, Target]:
    adapter = REGISTRY[provider](provider, "test-secret", OPTIONS.get(provider, {}))
    return adapter, Target(provider, provider, MODELS[provider], "us-east-1", adapter.base_url("us-east-1", None))


def answer(provider: str, fixture: str) -> ChatCompletion:
    adapter, target = adapter_and_target(provider)
    completion: ChatCompletion = adapter.chat_response((FIXTURES / fixture).read_bytes(), REQUEST, target)
    return completion


def stream(provider: str, fixture: str) -> list[ChatCompletionChunk]:
    adapter, target = adapter_and_target(provider)
    decoder, parser = adapter.frame_decoder(), adapter.stream_parser(REQUEST, target)
    events = decoder.feed((FIXTURES / fixture).read_bytes()) + decoder.finish()
    chunks = [chunk for event in events for chunk in parser.feed(event)]
    return chunks + parser.finish()


def schema_problems(schema: dict[str, Any], payload: Any) -> list[str]:
    validator = jsonschema.Draft202012Validator(schema)
    return [f"{'.'.join(map(str, e.absolute_path))}: {e.message}" for e in validator.iter_errors(payload)]


def sse_payloads(raw: bytes) -> list[dict[str, Any]]:
    payloads = []
    for block in raw.split(b"\n\n"):
        for line in block.split(b"\n"):
            if line.startswith(b"data: ") and line != b"data: [DONE]":
                payloads.append(orjson.loads(line[len(b"data: ") :]))
    return payloads


@pytest.mark.parametrize(("provider", "fixture"), ANSWERS, ids=[f"{p}-{f.split('/')[1]}" for p, f in ANSWERS])
def test_chat_answer_conforms_to_openai_schema(provider: str, fixture: str) -> None:
    """As the model writes it (`answer_json`), and where the adapter reads the answer as a `PlainCompletion` (the chat
    route's, `ProviderAdapter.plain_answer`), as that writes it: the same."""
    written = orjson.loads(answer_json(answer(provider, fixture)))
    assert schema_problems(CHAT_COMPLETION, written) == []
    adapter, target = adapter_and_target(provider)
    routed, _ = adapter.plain_answer((FIXTURES / fixture).read_bytes(), REQUEST, target)
    if isinstance(routed, PlainCompletion):
        assert orjson.loads(routed.json()) == written


@pytest.mark.parametrize(("provider", "fixture"), STREAMS, ids=[f"{p}-{f.split('/')[1]}" for p, f in STREAMS])
def test_every_stream_chunk_conforms_to_openai_schema(provider: str, fixture: str) -> None:
    chunks = stream(provider, fixture)
    assert chunks
    problems = [
        p for chunk in chunks for p in schema_problems(CHAT_COMPLETION_CHUNK, sse_payloads(sse_chunk(chunk))[0])
    ]
    assert problems == []


@pytest.mark.parametrize(("provider", "fixture"), ANSWERS, ids=[f"{p}-{f.split('/')[1]}" for p, f in ANSWERS])
def test_messages_answer_conforms_to_anthropic_message(provider: str, fixture: str) -> None:
    message = to_message(answer(provider, fixture), "public", None)
    assert references.anthropic_message(message) == []


@pytest.mark.parametrize(("provider", "fixture"), STREAMS, ids=[f"{p}-{f.split('/')[1]}" for p, f in STREAMS])
def test_messages_stream_events_conform_to_anthropic_events(provider: str, fixture: str) -> None:
    writer = EventWriter("public", "msg_1")
    raw = writer.start(10) + b"".join(writer.chunk(chunk) for chunk in stream(provider, fixture))
    raw += writer.finish(Usage.of(10, 5), None)
    events = sse_payloads(raw)
    assert [e["type"] for e in events][:2] == ["message_start", "ping"] and events[-1]["type"] == "message_stop"
    assert [p for event in events for p in references.anthropic_event(event)] == []


# --- what the schemas cannot see: state and facts that must survive the round trip -------------------


def test_gemini_thought_signature_reaches_the_client_and_goes_back_upstream() -> None:
    """The signature rides in the tool call's id, which every client (Chat, Messages, Responses) sends back."""
    completion = answer("gemini", "gemini/function-call-response.json")
    calls = completion.choices[0].message.tool_calls or []
    written = orjson.loads(answer_json(completion))["choices"][0]["message"]["tool_calls"]
    assert call_signature(written[0]["id"]) == "CikB0e2Kb7Qw"
    assert call_signature(written[1]["id"]) is None  # Gemini signs the first call of a step only

    history = {
        "model": "public",
        "messages": [
            {"role": "user", "content": "Weather and time in Paris?"},
            {"role": "assistant", "content": None, "tool_calls": written},
            *({"role": "tool", "tool_call_id": call.id, "content": "ok"} for call in calls),
        ],
    }
    adapter, target = adapter_and_target("gemini")
    req = ChatRequest.model_validate(history)
    body = orjson.loads(adapter.chat_request(req, target, stream=False).request.body)
    assert body["contents"][1]["parts"][0]["thoughtSignature"] == "CikB0e2Kb7Qw"
    assert "thoughtSignature" not in body["contents"][1]["parts"][1]
    # An OpenAI-compatible upstream is not sent Gemini's state beyond the opaque id.
    for provider in ("openai", "mistral", "deepseek"):
        adapter, target = adapter_and_target(provider)
        assert b"thoughtSignature" not in adapter.chat_request(req, target, stream=False).request.body


def test_gemini_thought_signature_streams_to_the_client() -> None:
    event = {
        "candidates": [
            {
                "content": {
                    "role": "model",
                    "parts": [{"functionCall": {"name": "f", "args": {}}, "thoughtSignature": "c2ln"}],
                },
                "finishReason": "STOP",
            }
        ]
    }
    adapter, target = adapter_and_target("gemini")
    parser = adapter.stream_parser(REQUEST, target)
    chunks = parser.feed(StreamEvent(None, orjson.dumps(event)))
    calls = [call for chunk in chunks for choice in chunk.choices for call in choice.delta.tool_calls or ()]
    written = sse_payloads(sse_chunk(chunks[1]))[0]["choices"][0]["delta"]["tool_calls"][0]
    assert call_signature(calls[0].id or "") == "c2ln" and written["id"] == calls[0].id


def test_the_stop_sequence_that_fired_reaches_a_messages_client() -> None:
    wire = orjson.loads((FIXTURES / "anthropic/message-response.json").read_bytes())
    wire |= {"stop_reason": "stop_sequence", "stop_sequence": "END"}
    adapter, target = adapter_and_target("anthropic")
    message = to_message(adapter.chat_response(orjson.dumps(wire), REQUEST, target), "public", None)
    assert (message["stop_reason"], message["stop_sequence"]) == ("stop_sequence", "END")
    assert references.anthropic_message(message) == []

    parser = adapter.stream_parser(REQUEST, target)
    delta = {
        "type": "message_delta",
        "delta": {"stop_reason": "stop_sequence", "stop_sequence": "END"},
        "usage": {"output_tokens": 3},
    }
    writer = EventWriter("public", "msg_1")
    for chunk in parser.feed(StreamEvent("message_delta", orjson.dumps(delta))):
        writer.chunk(chunk)
    final = sse_payloads(writer.finish(Usage.of(1, 3), None))[0]
    assert final["delta"] == {"stop_reason": "stop_sequence", "stop_sequence": "END"}


def test_a_gemini_prompt_block_reaches_a_messages_client_as_its_text() -> None:
    message = to_message(answer("gemini", "gemini/prompt-blocked-response.json"), "public", None)
    assert message["stop_reason"] == "refusal"
    assert message["content"] == [{"type": "text", "text": "Gemini blocked the prompt (PROHIBITED_CONTENT)"}]

    adapter, target = adapter_and_target("gemini")
    parser = adapter.stream_parser(REQUEST, target)
    writer = EventWriter("public", "msg_1")
    raw = b"".join(
        writer.chunk(c)
        for c in parser.feed(StreamEvent(None, (FIXTURES / "gemini/prompt-blocked-response.json").read_bytes()))
    )
    texts = [e["delta"]["text"] for e in sse_payloads(raw) if e["type"] == "content_block_delta"]
    assert texts == ["Gemini blocked the prompt (PROHIBITED_CONTENT)"]


def test_messages_thinking_blocks_reach_deepseek_as_reasoning() -> None:
    from handler.api.messages_api import MessagesRequest, to_chat_request

    turns = [
        {"role": "user", "content": "Weather?"},
        {
            "role": "assistant",
            "content": [
                {"type": "thinking", "thinking": "Call the tool.", "signature": "s"},
                {"type": "tool_use", "id": "toolu_1", "name": "get_weather", "input": {}},
            ],
        },
        {"role": "user", "content": [{"type": "tool_result", "tool_use_id": "toolu_1", "content": "18"}]},
    ]
    req, _ = to_chat_request(MessagesRequest.model_validate({"model": "m", "max_tokens": 9, "messages": turns}))
    adapter, target = adapter_and_target("deepseek")
    body = orjson.loads(adapter.chat_request(req, target, stream=False).request.body)
    assert body["messages"][1]["reasoning_content"] == "Call the tool."
