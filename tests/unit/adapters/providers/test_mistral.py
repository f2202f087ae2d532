"""The Mistral adapter: Mistral's parameter names, its nine-character tool-call ids and its reasoning answers."""

from __future__ import annotations

import re
from pathlib import Path

import orjson
import pytest

from adapters.providers.mistral import MistralAdapter
from adapters.providers.mistral.adapter import mistral_tool_id
from adapters.providers.registry import REGISTRY
from handler.errors import UpstreamError
from handler.ports import Target
from handler.schemas import ChatRequest
from handler.wire import SSEDecoder
from tests.fakes.mistral import _out_of_order

FIXTURES = Path(__file__).resolve().parents[3] / "fixtures" / "mistral"
NINE = re.compile(r"^[A-Za-z0-9]{9}$")


def adapter(**options: object) -> MistralAdapter:
    return MistralAdapter("mistral", "m-key", options)


def target(model: str = "mistral-large-latest") -> Target:
    return Target("mistral", "mistral", model, "global", adapter().base_url("global", None))


def request(**fields: object) -> ChatRequest:
    return ChatRequest.model_validate({"model": "public", "messages": [{"role": "user", "content": "hi"}], **fields})


def test_registry_defaults_base_url_and_key_variable() -> None:
    assert REGISTRY["mistral"] is MistralAdapter and MistralAdapter.key_env_var == "MISTRAL_API_KEY"
    built = adapter().chat_request(request(), target(), stream=False)
    assert built.request.url == "https://api.mistral.ai/v1/chat/completions"
    assert built.request.headers["authorization"] == "Bearer m-key"


def test_parameters_are_renamed_and_mistral_fields_pass_through() -> None:
    req = request(seed=42, tool_choice="required", max_completion_tokens=64, n=2, safe_prompt=True, user="u1")
    built = adapter().chat_request(req, target(), stream=True)
    body = orjson.loads(built.request.body)
    assert body["random_seed"] == 42 and "seed" not in body
    assert body["tool_choice"] == "any" and body["max_tokens"] == 64
    assert body["n"] == 2 and body["safe_prompt"] is True
    assert "stream_options" not in body and body["stream"] is True
    assert built.dropped == ["user"]
    # (Mistral refuses `stream_options`, and sends the usage unasked: a client's member of it other than the usage,
    # which the gateway gives it, is named.)
    asked = request(stream=True, stream_options={"include_usage": True, "include_obfuscation": False})
    streamed = adapter().chat_request(asked, target(), stream=True)
    assert "stream_options" not in orjson.loads(streamed.request.body)
    assert streamed.dropped == ["stream_options.include_obfuscation"]


def test_foreign_tool_call_ids_map_to_nine_characters_consistently() -> None:
    messages = [
        {"role": "user", "content": "weather in Paris and Rome?"},
        {
            "role": "assistant",
            "tool_calls": [
                {"id": "call_abc123XYZ", "function": {"name": "get_weather", "arguments": '{"city":"Paris"}'}},
                {"id": "D681PevKs", "function": {"name": "get_weather", "arguments": '{"city":"Rome"}'}},
            ],
        },
        {"role": "tool", "tool_call_id": "call_abc123XYZ", "content": "18 C"},
        {"role": "tool", "tool_call_id": "D681PevKs", "content": "24 C"},
    ]
    body = orjson.loads(adapter().chat_request(request(messages=messages), target(), stream=False).request.body)
    first, second = (call["id"] for call in body["messages"][1]["tool_calls"])
    assert NINE.match(first) and first != "call_abc123XYZ"
    assert second == "D681PevKs"  # an id Mistral issued is sent back as it was
    assert [m["tool_call_id"] for m in body["messages"][2:]] == [first, second]


def test_mapped_ids_are_stable_and_distinct() -> None:
    ids = {mistral_tool_id(f"call_{i}") for i in range(2000)}
    assert len(ids) == 2000 and all(NINE.match(i) for i in ids)
    assert mistral_tool_id("toolu_01A") == mistral_tool_id("toolu_01A")


def test_tool_call_answer_keeps_mistral_ids() -> None:
    body = (FIXTURES / "chat-tool-call-response.json").read_bytes()
    completion = adapter().chat_response(body, request(), target())
    calls = completion.choices[0].message.tool_calls
    assert calls is not None and calls[0].id == "D681PevKs" and completion.choices[0].finish_reason == "tool_calls"


def test_what_mistral_refuses_is_rewritten_or_reported() -> None:
    messages = [
        {"role": "developer", "content": "Be brief."},
        {
            "role": "user",
            "name": "alice",
            "content": [{"type": "input_audio", "input_audio": {"data": "UklGRg==", "format": "wav"}}],
        },
        {
            "role": "user",
            "content": [
                {"type": "file", "file": {"file_data": "data:application/pdf;base64,JVBERi0=", "filename": "a.pdf"}}
            ],
        },
        {"role": "function", "name": "lookup", "content": "42"},
    ]
    tools = [{"type": "function", "function": {"name": "ping"}}]
    req = ChatRequest.model_validate({"model": "public", "messages": messages, "tools": tools, "frobnicate": 1})
    built = adapter().chat_request(req, target(), stream=False)
    body = orjson.loads(built.request.body)
    assert [m["role"] for m in body["messages"]] == ["system", "user", "user", "tool"]
    assert "name" not in body["messages"][1] and body["messages"][3]["name"] == "lookup"
    assert body["messages"][1]["content"] == [{"type": "input_audio", "input_audio": "UklGRg=="}]
    assert body["messages"][2]["content"] == [
        {"type": "document_url", "document_url": "data:application/pdf;base64,JVBERi0=", "document_name": "a.pdf"}
    ]
    assert body["tools"][0]["function"]["parameters"] == {"type": "object", "properties": {}}
    assert "frobnicate" not in body and sorted(built.dropped) == ["frobnicate", "messages.name"]


def test_a_reasoning_answer_gives_its_text_and_its_reasoning() -> None:
    """Magistral's `content` is a list of chunks (thinking, then text): every answer was a 502 (`content` must be
    a string); the text is the answer, the thinking its `reasoning_content`."""
    body = (FIXTURES / "magistral-response.json").read_bytes()
    completion = adapter().chat_response(body, request(), target("magistral-medium-latest"))
    message = completion.choices[0].message
    assert message.content == "6 \u00d7 7 = 42."
    assert message.reasoning_content == "The user asks for 6 times 7. That is 42."
    assert completion.usage is not None and completion.usage.completion_tokens == 28


def test_reasoning_beside_a_tool_call_leaves_no_content() -> None:
    answer = orjson.loads((FIXTURES / "chat-tool-call-response.json").read_bytes())
    answer["choices"][0]["message"]["content"] = [{"type": "thinking", "thinking": [{"type": "text", "text": "Hm."}]}]
    message = adapter().chat_response(orjson.dumps(answer), request(), target()).choices[0].message
    assert message.content is None and message.reasoning_content == "Hm."
    assert message.tool_calls is not None and message.tool_calls[0].id == "D681PevKs"


def test_a_reasoning_stream_gives_text_and_reasoning_deltas() -> None:
    parser = adapter().stream_parser(request(), target("magistral-medium-latest"))
    decoder = SSEDecoder()
    events = decoder.feed((FIXTURES / "magistral-stream.sse").read_bytes()) + decoder.finish()
    chunks = [chunk for event in events for chunk in parser.feed(event)]
    deltas = [chunk.choices[0].delta for chunk in chunks if chunk.choices]
    assert "".join(d.reasoning_content or "" for d in deltas) == "The user asks for 6 times 7. That is 42."
    assert "".join(d.content or "" for d in deltas) == "6 \u00d7 7 = 42."
    assert not any(d.content and d.reasoning_content for d in deltas)
    assert parser.usage is not None and parser.usage.completion_tokens == 28 and parser.ended


def test_reasoning_effort_goes_to_the_models_that_take_it_as_a_switch() -> None:
    """Mistral Small 4 and Medium 3.5 take `reasoning_effort`, `high` or `none`; every other Mistral model refuses
    it (Magistral reasons always), so there it is dropped and named."""
    for model in ("mistral-small-latest", "mistral-small-2603", "mistral-medium-3-5"):
        for asked, sent in (("low", "high"), ("high", "high"), ("none", "none")):
            built = adapter().chat_request(request(reasoning_effort=asked), target(model), stream=False)
            assert orjson.loads(built.request.body)["reasoning_effort"] == sent and built.dropped == []
        thinking = request(thinking={"type": "enabled", "budget_tokens": 2048}, max_tokens=4096)
        built = adapter().chat_request(thinking, target(model), stream=False)
        body = orjson.loads(built.request.body)
        assert body["reasoning_effort"] == "high" and "thinking" not in body and built.dropped == []
    for model in ("mistral-large-latest", "magistral-medium-latest", "mistral-small-2506"):
        built = adapter().chat_request(request(reasoning_effort="high"), target(model), stream=False)
        assert "reasoning_effort" not in orjson.loads(built.request.body) and built.dropped == ["reasoning_effort"]


def test_mistrals_own_finish_reasons_are_put_in_openais_words() -> None:
    """Mistral documents `model_length` and `error` beside OpenAI's reasons: an answer ending so was refused as
    malformed (a 502, after Mistral had billed it, and a fallback billed again). Found by review."""
    a = adapter()
    for reason, openai in (("model_length", "length"), ("error", "length"), ("end_of_everything", "stop")):
        answer = {
            "id": "x",
            "object": "chat.completion",
            "created": 1,
            "model": "mistral-large-latest",
            "choices": [{"index": 0, "message": {"role": "assistant", "content": "part"}, "finish_reason": reason}],
            "usage": {"prompt_tokens": 10, "completion_tokens": 900, "total_tokens": 910},
        }
        completion = a.chat_response(orjson.dumps(answer), request(), target())
        assert completion.choices[0].finish_reason == openai
        assert completion.usage is not None and completion.usage.completion_tokens == 900
        chunk = {**answer, "object": "chat.completion.chunk"}
        chunk["choices"] = [{"index": 0, "delta": {"content": ""}, "finish_reason": reason}]
        decoder, parser = a.frame_decoder(), a.stream_parser(request(), target())
        raw = b"data: " + orjson.dumps(chunk) + b"\n\ndata: [DONE]\n\n"
        [last] = [c for e in decoder.feed(raw) + decoder.finish() for c in parser.feed(e)]
        assert last.choices[0].finish_reason == openai
        assert parser.usage is not None and parser.usage.completion_tokens == 900


def test_an_earlier_turns_reasoning_goes_back_to_a_model_that_reasons_as_a_thinking_chunk() -> None:
    """An assistant turn's reasoning (`reasoning_content`, as every front-end carries it inward) was stripped before
    Magistral saw the conversation again. Mistral takes it back as a `thinking` chunk opening the turn's content
    (before its text, or alone beside its calls); a model that does not reason gets none, as before."""
    call = {"id": "D681PevKs", "type": "function", "function": {"name": "get_weather", "arguments": "{}"}}
    history = [
        {"role": "user", "content": "Weather?"},
        {"role": "assistant", "content": None, "tool_calls": [call], "reasoning_content": "A tool knows."},
        {"role": "tool", "tool_call_id": "D681PevKs", "content": "18 C"},
        {"role": "assistant", "content": "It is 18 C.", "reasoning_content": "Report it."},
        {"role": "user", "content": "And tomorrow?"},
    ]
    thinking = {"type": "thinking", "thinking": [{"type": "text", "text": "A tool knows."}]}
    for model in ("magistral-medium-latest", "mistral-small-latest", "mistral-medium-3-5"):
        built = adapter().chat_request(request(messages=history), target(model), stream=False)
        messages = orjson.loads(built.request.body)["messages"]
        assert messages[1]["content"] == [thinking] and messages[1]["tool_calls"][0]["id"] == "D681PevKs"
        assert messages[3]["content"] == [
            {"type": "thinking", "thinking": [{"type": "text", "text": "Report it."}]},
            {"type": "text", "text": "It is 18 C."},
        ]
        assert not any("reasoning_content" in message for message in messages) and built.dropped == []
    plain = orjson.loads(adapter().chat_request(request(messages=history), target(), stream=False).request.body)
    assert plain["messages"][3] == {"role": "assistant", "content": "It is 18 C."}


def test_claudes_redacted_thinking_is_named_where_its_text_goes_back() -> None:
    """A Messages client's thinking blocks go as their text; a redacted one (encrypted, no text) cannot, and is
    named."""
    signed = {"type": "thinking", "thinking": "Hmm.", "signature": "sig"}
    redacted = {"type": "redacted_thinking", "data": "RXJj"}
    for blocks, dropped in (([signed], []), ([redacted, signed], ["messages.thinking"])):
        turn = {"role": "assistant", "content": "Hi.", "reasoning_content": "Hmm.", "thinking_blocks": blocks}
        messages = [{"role": "user", "content": "hi"}, turn, {"role": "user", "content": "again"}]
        built = adapter().chat_request(request(messages=messages), target("magistral-small-latest"), stream=False)
        sent = orjson.loads(built.request.body)["messages"][1]
        assert sent["content"][0]["thinking"] == [{"type": "text", "text": "Hmm."}] and "thinking_blocks" not in sent
        assert built.dropped == dropped


def test_a_validation_error_reads_as_words_not_a_python_repr() -> None:
    """Mistral's 422 carries an object as its `message` (`{"detail": [{"loc", "msg", ...}]}`): clients got its
    Python repr, `{'detail': [{'type': 'extra_forbidden', ...`. Each problem now reads as where and what."""
    detail = [
        {"type": "extra_forbidden", "loc": ["body", "foo"], "msg": "Extra inputs are not permitted", "input": 1},
        {"type": "string_type", "loc": ["body", "messages", 0, "content"], "msg": "Input should be a valid string"},
    ]
    body = {"object": "error", "message": {"detail": detail}, "type": "invalid_request_message_error", "param": None}
    error = adapter().error(422, orjson.dumps(body), {})
    assert error.said == (
        "body.foo: Extra inputs are not permitted; body.messages.0.content: Input should be a valid string"
    )
    assert error.message == f"upstream returned 422: {error.said}" and "{'" not in error.message
    assert error.upstream_type == "invalid_request_message_error" and not error.retryable
    # Any other object is its JSON, never a repr; a plain message is as it came.
    odd = adapter().error(400, orjson.dumps({"message": {"code": 3051, "why": None}}), {})
    assert odd.said == '{"code":3051,"why":null}'
    plain = adapter().error(429, orjson.dumps({"message": "Requests rate limit exceeded"}), {})
    assert plain.said == "Requests rate limit exceeded"


def test_an_earlier_turns_reasoning_details_are_left_out_and_named() -> None:
    """OpenRouter's `reasoning_details` on an assistant turn went to a Magistral model as it came (its profile kept
    every message field for the turn's reasoning): Mistral refuses a field it does not define (422, `extra_forbidden`).
    The turn's reasoning text goes back, as Mistral takes it; `reasoning_details` is left out and named."""
    details = [{"type": "reasoning.text", "text": "Hm."}]
    turn = {"role": "assistant", "content": "42", "reasoning_content": "Hm.", "reasoning_details": details}
    req = request(messages=[{"role": "user", "content": "6x7?"}, turn, {"role": "user", "content": "and 6x8?"}])
    for model in ("magistral-medium-latest", "mistral-large-latest"):
        built = adapter().chat_request(req, target(model), stream=False)
        assert "reasoning_details" not in orjson.loads(built.request.body)["messages"][1]
        assert "messages.reasoning_details" in built.dropped


@pytest.mark.parametrize("count", [10.7, "12", True], ids=["fraction", "numeral", "bool"])
def test_a_usage_count_that_is_no_plain_integer_is_a_malformed_answer(count: object) -> None:
    """Mistral's answers are read as OpenAI's: a count pydantic would take (`"12"` as 12, `true` as 1) is refused
    (`handler.schemas.Usage`), and the answer is malformed."""
    answer = orjson.loads((FIXTURES / "chat-tool-call-response.json").read_bytes())
    answer["usage"]["completion_tokens"] = count
    with pytest.raises(UpstreamError) as raised:
        adapter().chat_response(orjson.dumps(answer), request(), target())
    assert raised.value.outcome == "invalid_response" and raised.value.billed is None


@pytest.mark.parametrize("model", ["mistral-large-latest", "magistral-medium-latest"])
def test_a_user_message_after_tool_messages_follows_an_assistant_one(model: str) -> None:
    """Mistral takes only an assistant or another tool message right after a tool message (its validator: "Unexpected
    role 'user' after role 'tool'", `invalid_request_message_order`): a Chat client's `[..., tool, user]` and a
    Messages client's tool results with text beside them went as sent, and every later request of the conversation
    failed (review provrev). An assistant message goes between, whatever the model; nothing is named."""
    call = {"id": "abcDEF123", "type": "function", "function": {"name": "get_weather", "arguments": "{}"}}
    messages = [
        {"role": "user", "content": "Weather in Oslo and Bergen?"},
        {"role": "assistant", "content": None, "tool_calls": [call, {**call, "id": "abcDEF124"}]},
        {"role": "tool", "tool_call_id": "abcDEF123", "content": "sunny"},
        {"role": "tool", "tool_call_id": "abcDEF124", "content": "rain"},
        {"role": "user", "content": "And tomorrow?"},
        {"role": "assistant", "content": "Let me see.", "tool_calls": [{**call, "id": "abcDEF125"}]},
        {"role": "tool", "tool_call_id": "abcDEF125", "content": "snow"},
    ]
    built = adapter().chat_request(request(messages=messages), target(model), stream=False)
    sent = orjson.loads(built.request.body)["messages"]
    assert [m["role"] for m in sent] == ["user", "assistant", "tool", "tool", "assistant", "user", "assistant", "tool"]
    assert sent[4] == {"role": "assistant", "content": "(tool results received)"} and built.dropped == []


@pytest.mark.parametrize("role", ["system", "developer"])
def test_a_system_message_after_the_model_spoke_goes_as_a_user_message(role: str) -> None:
    """Mistral takes a system message only after a system or a user one ("Unexpected role 'system' after role 'tool'",
    its validator): a Chat client's mid-conversation system message, or a Responses client's `developer` one (the
    profile's `system`), after a tool or an assistant message went as sent, and Mistral refused the request (the fake
    does, `_out_of_order`: merge review). It goes as a user message in its place, bridged after a tool message; the
    first system message stays; nothing is named."""
    call = {"id": "abcDEF123", "type": "function", "function": {"name": "get_weather", "arguments": "{}"}}
    messages = [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": "Weather in Oslo?"},
        {"role": "assistant", "content": None, "tool_calls": [call]},
        {"role": "tool", "tool_call_id": "abcDEF123", "content": "sunny"},
        {"role": role, "content": "Answer in French from now on."},
        {"role": "user", "content": "And tomorrow?"},
        {"role": "assistant", "content": "Demain, il pleut."},
        {"role": role, "content": "Now in German."},
        {"role": "user", "content": "And Bergen?"},
    ]
    built = adapter().chat_request(request(messages=messages), target(), stream=False)
    sent = orjson.loads(built.request.body)["messages"]
    roles = ["system", "user", "assistant", "tool", "assistant", "user", "user", "assistant", "user", "user"]
    assert [m["role"] for m in sent] == roles and built.dropped == []
    assert sent[5] == {"role": "user", "content": "Answer in French from now on."}
    assert sent[8] == {"role": "user", "content": "Now in German."}
    assert _out_of_order(sent) is None


def test_a_mistral_cache_hit_is_billed_at_a_tenth_of_the_input_price() -> None:
    """Mistral bills cached prompt tokens at 10% of the input price (docs.mistral.ai, "Prompt caching"), counted in
    `prompt_tokens_details.cached_tokens`: the built-in prices had no `cached_input`, so a cache hit was billed at the
    full input price, about 7.7 times Mistral's bill on its own example. Found by review (gemrev36)."""
    from handler.config import FeeConfig
    from handler.pipeline.pricing import builtin_prices, cost_of

    adapter = MistralAdapter("mistral", "m-key", {})
    target = Target("mistral", "mistral", "mistral-large-latest", "global", adapter.base_url("global", None))
    req = ChatRequest.model_validate({"model": "m", "messages": [{"role": "user", "content": "hi"}]})
    # Mistral's own documented example: 1013 prompt tokens, 1008 of them read from the cache.
    answer = {
        "id": "cmpl-1",
        "object": "chat.completion",
        "created": 1,
        "model": "mistral-large-latest",
        "choices": [{"index": 0, "message": {"role": "assistant", "content": "ok"}, "finish_reason": "stop"}],
        "usage": {
            "prompt_tokens": 1013,
            "completion_tokens": 10,
            "total_tokens": 1023,
            "prompt_tokens_details": {"cached_tokens": 1008},
        },
    }
    completion = adapter.chat_response(orjson.dumps(answer), req, target)
    assert completion.usage is not None and completion.usage.cached_tokens == 1008  # (read)
    price = builtin_prices().find("mistral-large-latest")
    cost = cost_of(completion.usage, price, FeeConfig())
    # Mistral bills 5 x $0.50 + 1008 x $0.05 + 10 x $1.50 per million = $0.0000679
    expected = (5 * 0.50 + 1008 * 0.05 + 10 * 1.50) / 1_000_000
    assert cost.provider_usd is not None
    assert abs(cost.provider_usd - expected) < 1e-12, (cost.provider_usd, expected)
