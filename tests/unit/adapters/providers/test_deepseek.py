"""The DeepSeek adapter: reasoning passed both ways and cache-hit usage."""

from __future__ import annotations

from pathlib import Path

import orjson
import pytest

from adapters.providers.deepseek import DeepSeekAdapter
from adapters.providers.registry import REGISTRY
from handler.api.messages_api import MessagesRequest, to_chat_request
from handler.errors import InvalidRequestError, UpstreamError
from handler.ports import MESSAGES_API, RESPONSES_API, Target, as_client_named
from handler.schemas import ChatRequest

FIXTURES = Path(__file__).resolve().parents[3] / "fixtures"


def adapter(**options: object) -> DeepSeekAdapter:
    return DeepSeekAdapter("deepseek", "ds-key", options)


def target(model: str = "deepseek-reasoner") -> Target:
    return Target("deepseek", "deepseek", model, "global", adapter().base_url("global", None))


def request(**fields: object) -> ChatRequest:
    return ChatRequest.model_validate({"model": "public", "messages": [{"role": "user", "content": "hi"}], **fields})


def test_registry_defaults_base_url_and_key_variable() -> None:
    assert REGISTRY["deepseek"] is DeepSeekAdapter and DeepSeekAdapter.key_env_var == "DEEPSEEK_API_KEY"
    assert (
        adapter().chat_request(request(), target(), stream=False).request.url
        == "https://api.deepseek.com/chat/completions"
    )


def test_earlier_reasoning_goes_back_with_its_tool_calls() -> None:
    messages = [
        {"role": "user", "content": "weather?"},
        {
            "role": "assistant",
            "content": "",
            "reasoning_content": "I should call the tool.",
            "tool_calls": [{"id": "call_0", "function": {"name": "get_weather", "arguments": "{}"}}],
        },
        {"role": "tool", "tool_call_id": "call_0", "content": "sunny"},
    ]
    req = request(messages=messages, reasoning_effort="high", thinking={"type": "enabled"})
    built = adapter().chat_request(req, target(), stream=False)
    body = orjson.loads(built.request.body)
    assert body["messages"][1]["reasoning_content"] == "I should call the tool."
    assert body["reasoning_effort"] == "high" and body["thinking"] == {"type": "enabled"}
    assert built.dropped == []


def test_parameters_deepseek_lacks_are_reported() -> None:
    built = adapter().chat_request(request(n=2, seed=1, max_completion_tokens=10), target(), stream=True)
    body = orjson.loads(built.request.body)
    assert body["max_tokens"] == 10 and body["stream_options"] == {"include_usage": True}
    assert set(built.dropped) == {"n", "seed"}


def test_stream_options_deepseek_does_not_define_are_named() -> None:
    """DeepSeek's `stream_options` has `include_usage` alone: OpenAI's `include_obfuscation` is left out and named."""
    req = request(stream=True, stream_options={"include_obfuscation": False})
    built = adapter().chat_request(req, target(), stream=True)
    assert orjson.loads(built.request.body)["stream_options"] == {"include_usage": True}
    assert built.dropped == ["stream_options.include_obfuscation"]


def test_answer_keeps_reasoning_and_counts_cache_hits() -> None:
    body = (FIXTURES / "deepseek" / "chat-reasoner-response.json").read_bytes()
    completion = adapter().chat_response(body, request(), target())
    message = completion.choices[0].message
    assert message.reasoning_content == "Compare the tenths: 1 < 8."
    assert completion.usage is not None and completion.usage.cached_tokens == 64
    assert completion.usage.prompt_tokens == 128


def test_stream_passes_reasoning_deltas_and_usage() -> None:
    a = adapter()
    decoder, parser = a.frame_decoder(), a.stream_parser(request(), target())
    raw = (FIXTURES / "openai" / "deepseek-reasoner-stream.sse").read_bytes()
    chunks = [c for e in decoder.feed(raw) + decoder.finish() for c in parser.feed(e)] + parser.finish()
    assert "".join(c.choices[0].delta.reasoning_content or "" for c in chunks if c.choices)
    assert parser.usage is not None and parser.usage.prompt_tokens == 13


def test_what_deepseek_cannot_read_is_a_clear_400() -> None:
    image = {"type": "image_url", "image_url": {"url": "https://example.com/a.png"}}
    for messages in ([{"role": "user", "content": [image]}], [{"role": "function", "name": "f", "content": "1"}]):
        with pytest.raises(InvalidRequestError):
            adapter().chat_request(request(messages=messages), target(), stream=False)


def test_developer_messages_reach_deepseek_as_system() -> None:
    messages = [{"role": "developer", "content": "Be brief."}, {"role": "user", "content": "hi"}]
    body = orjson.loads(adapter().chat_request(request(messages=messages), target(), stream=False).request.body)
    assert [m["role"] for m in body["messages"]] == ["system", "user"]


def test_a_messages_clients_thinking_goes_back_as_reasoning_content_and_the_switch() -> None:
    thinking = [{"type": "thinking", "thinking": "Call the tool.", "signature": "s"}]
    messages = [
        {"role": "user", "content": "weather?"},
        {"role": "assistant", "content": None, "thinking_blocks": thinking, "reasoning_content": "Call the tool."},
        {"role": "user", "content": "and now?"},
    ]
    req = request(messages=messages, thinking={"type": "adaptive", "effort": "high"})
    built = adapter().chat_request(req, target(), stream=False)
    body = orjson.loads(built.request.body)
    assert body["messages"][1] == {"role": "assistant", "content": "", "reasoning_content": "Call the tool."}
    assert body["thinking"] == {"type": "enabled"} and built.dropped == []


def test_a_json_schema_format_becomes_json_mode_with_the_schema_in_an_instruction() -> None:
    """DeepSeek takes `json_object` only (a `json_schema` format is a 400 there): JSON mode, and the schema in a
    system instruction that also says "json", as its JSON mode asks."""
    schema = {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}
    fmt = {"type": "json_schema", "json_schema": {"name": "place", "schema": schema}}
    body = orjson.loads(adapter().chat_request(request(response_format=fmt), target(), stream=False).request.body)
    assert body["response_format"] == {"type": "json_object"}
    first = body["messages"][0]
    assert first["role"] == "system" and "JSON" in first["content"]
    assert orjson.dumps(schema).decode() in first["content"]


def test_an_answer_cut_for_want_of_capacity_is_served_as_cut_short() -> None:
    """DeepSeek's `insufficient_system_resource` finish reason was refused as malformed (a 502 after the billed
    answer, and a fallback billed again); it is `length` in OpenAI's words. A bad reason of another type still
    makes the answer malformed. Found by review."""
    answer = orjson.loads((FIXTURES / "deepseek" / "chat-reasoner-response.json").read_bytes())
    answer["choices"][0]["finish_reason"] = "insufficient_system_resource"
    completion = adapter().chat_response(orjson.dumps(answer), request(), target())
    assert completion.choices[0].finish_reason == "length" and completion.usage is not None
    answer["choices"][0]["finish_reason"] = 42
    with pytest.raises(UpstreamError, match="malformed answer") as malformed:
        adapter().chat_response(orjson.dumps(answer), request(), target())
    assert malformed.value.retryable and malformed.value.billed is not None  # (what DeepSeek billed for it)


def test_the_reasoners_sampling_which_it_ignores_is_left_out_and_named() -> None:
    # DeepSeek's API reference: deepseek-reasoner takes temperature and top_p "but they will not take effect".
    built = adapter().chat_request(request(temperature=0.2, top_p=0.9), target(), stream=False)
    body = orjson.loads(built.request.body)
    assert "temperature" not in body and "top_p" not in body
    assert built.dropped == ["temperature", "top_p"]
    built = adapter().chat_request(request(temperature=0.2, top_p=0.9), target("deepseek-chat"), stream=False)
    assert orjson.loads(built.request.body)["temperature"] == 0.2 and built.dropped == []


# What DeepSeek's thinking mode does not take, as a client may send it: what it takes without effect (the sampling,
# the penalties), and the log probabilities it refuses.
UNTAKEN = {"temperature": 0.2, "top_p": 0.9, "presence_penalty": 0.5, "frequency_penalty": 0.5}
REFUSED = {"logprobs": True, "top_logprobs": 3}


@pytest.mark.parametrize(
    ("model", "thinking"),
    [("deepseek-reasoner", None), ("deepseek-chat", {"type": "enabled"}), ("deepseek-chat", {"type": "adaptive"})],
    ids=["reasoner", "chat-thinking", "chat-adaptive"],
)
def test_what_thinking_mode_refuses_or_ignores_is_left_out_and_named(model: str, thinking: object) -> None:
    """DeepSeek's thinking mode (its reasoner; deepseek-chat asked to think) refuses `logprobs` and `top_logprobs`
    ("Setting logprobs, top_logprobs will trigger an error", its guides), and they went on: the request failed with
    DeepSeek's 400 where the client would have had its answer with them named (found by review). They are left out
    and named, as the sampling and penalties it takes without effect are (the reasoner's `temperature` and `top_p`
    were; deepseek-chat's in thinking mode, and the penalties, went on to be ignored, unnamed)."""
    asked = request(**UNTAKEN, **REFUSED, **({"thinking": thinking} if thinking else {}))
    built = adapter().chat_request(asked, target(model), stream=True)
    body = orjson.loads(built.request.body)
    assert body.keys().isdisjoint({**UNTAKEN, **REFUSED}), body
    assert built.dropped == [*UNTAKEN, *REFUSED]
    assert body.get("thinking") == ({"type": "enabled"} if thinking else None)
    # What asks for nothing (a default) is left out without a word.
    defaults = {"temperature": 1, "logprobs": False, "presence_penalty": 0}
    quiet = request(**defaults, **({"thinking": thinking} if thinking else {}))
    built = adapter().chat_request(quiet, target(model), stream=False)
    assert built.dropped == [] and orjson.loads(built.request.body).keys().isdisjoint(defaults)


@pytest.mark.parametrize("thinking", [None, {"type": "disabled"}], ids=["unasked", "turned-off"])
def test_deepseek_chat_outside_thinking_mode_is_sent_them(thinking: object) -> None:
    """Outside thinking mode deepseek-chat takes them all, logprobs among them: nothing is left out."""
    asked = request(**UNTAKEN, **REFUSED, **({"thinking": thinking} if thinking else {}))
    built = adapter().chat_request(asked, target("deepseek-chat"), stream=False)
    body = orjson.loads(built.request.body)
    assert {name: body[name] for name in {**UNTAKEN, **REFUSED}} == {**UNTAKEN, **REFUSED}
    assert built.dropped == []


CURRENT = ["deepseek-v4-pro", "deepseek-v4-flash", "deepseek-flash"]


@pytest.mark.parametrize("model", CURRENT)
def test_deepseeks_current_models_think_by_default_so_what_thinking_mode_ignores_is_named(model: str) -> None:
    """DeepSeek's thinking-mode guide: "Thinking mode is enabled by default" (`deepseek-v4-flash`, `deepseek-v4-pro`;
    deepseek-chat and deepseek-reasoner, the names of its non-thinking and thinking modes, are retired). Only the
    reasoner was taken to think: to these a request's `temperature` and penalties went on unnamed, to be ignored,
    and its `logprobs`, which thinking mode refuses, were sent (found by review). Now as to the reasoner: all six
    left out and named; nothing asked, nothing named."""
    built = adapter().chat_request(request(**UNTAKEN, **REFUSED), target(model), stream=False)
    body = orjson.loads(built.request.body)
    assert body.keys().isdisjoint({**UNTAKEN, **REFUSED}), body
    assert built.dropped == [*UNTAKEN, *REFUSED] and "thinking" not in body
    quiet = adapter().chat_request(request(temperature=1, logprobs=False), target(model), stream=False)
    assert quiet.dropped == [] and orjson.loads(quiet.request.body).keys().isdisjoint(REFUSED)


@pytest.mark.parametrize("model", CURRENT)
@pytest.mark.parametrize(
    "off",
    [{"thinking": {"type": "disabled"}}, {"reasoning_effort": "none"}],
    ids=["thinking-disabled", "effort-none"],
)
def test_a_request_that_turns_thinking_off_is_sent_them_with_the_switch(model: str, off: dict[str, object]) -> None:
    """Turned off (`thinking: {"type": "disabled"}`, DeepSeek's switch; `reasoning_effort: none`, a Responses client's
    `reasoning.effort: none`, which DeepSeek documents as thinking off), the model is outside thinking mode and takes
    them all: sent, nothing named, the switch sent off (DeepSeek's Chat Completions defines no `none` effort)."""
    built = adapter().chat_request(request(**UNTAKEN, **REFUSED, **off), target(model), stream=False)
    body = orjson.loads(built.request.body)
    assert {name: body[name] for name in {**UNTAKEN, **REFUSED}} == {**UNTAKEN, **REFUSED}
    assert body["thinking"] == {"type": "disabled"} and "reasoning_effort" not in body
    assert built.dropped == []


def prefilled() -> ChatRequest:
    """A Messages request's translation whose final assistant turn prefills the answer."""
    messages = [{"role": "user", "content": "Quick sort?"}, {"role": "assistant", "content": "```python\n"}]
    return to_chat_request(MessagesRequest.model_validate({"model": "m", "max_tokens": 9, "messages": messages}))[0]


def test_a_prefill_is_chat_prefix_completion_on_the_beta_url_and_named_elsewhere() -> None:
    """DeepSeek continues a final assistant message marked `prefix: true` on its beta URL alone (Chat Prefix
    Completion, a beta): a deployment there gets the mark; one on the usual URL got the prefill as an earlier turn,
    answered 200 and named nothing (found by review): it is named now."""
    beta = Target("deepseek", "deepseek", "deepseek-chat", "global", "https://api.deepseek.com/beta")
    built = adapter().chat_request(prefilled(), beta, stream=False)
    assert built.request.url == "https://api.deepseek.com/beta/chat/completions" and built.dropped == []
    assert orjson.loads(built.request.body)["messages"][-1] == {
        "role": "assistant",
        "content": "```python\n",
        "prefix": True,
    }
    usual = adapter().chat_request(prefilled(), target("deepseek-chat"), stream=False)
    assert usual.dropped == ["messages.prefill"]
    assert orjson.loads(usual.request.body)["messages"][-1] == {"role": "assistant", "content": "```python\n"}


def test_a_schema_deepseek_cannot_hold_to_is_named_in_each_front_ends_words() -> None:
    """DeepSeek takes a JSON object, not a schema it holds to: a strict `json_schema` answer is named
    `response_format.json_schema.strict`, which a Responses client calls `text.format.strict` and a Messages client,
    whose `output_config.format` always asks for a strict one, `output_config.format`. Renamed by exact name alone,
    a member of `response_format` reached them in Chat Completions' words."""
    schema = {"type": "object", "properties": {"a": {"type": "string"}}}
    messages = [{"role": "user", "content": "hi"}]
    asked = {
        "model": "m",
        "max_tokens": 9,
        "messages": messages,
        "output_config": {"format": {"type": "json_schema", "schema": schema}},
    }
    req, untranslated = to_chat_request(MessagesRequest.model_validate(asked))
    dropped = adapter().chat_request(req, target("deepseek-chat"), stream=False).dropped
    assert dropped == ["response_format.json_schema.strict"]
    assert as_client_named(MESSAGES_API, dropped) == ["output_config.format"]
    assert as_client_named(RESPONSES_API, dropped) == ["text.format.strict"]
    members = ["response_format.json_schema.schema[pattern]", "response_format", "messages.image_url.detail"]
    assert as_client_named(RESPONSES_API, members) == [
        "text.format.schema[pattern]",
        "text.format",
        "input_image.detail",
    ]
    assert as_client_named(MESSAGES_API, members[:2]) == [
        "output_config.format.schema[pattern]",
        "output_config.format",
    ]


@pytest.mark.parametrize("count", [10.7, "12", True], ids=["fraction", "numeral", "bool"])
@pytest.mark.parametrize("field", ["prompt_tokens", "prompt_cache_hit_tokens"])
def test_a_usage_count_that_is_no_plain_integer_is_a_malformed_answer(field: str, count: object) -> None:
    """`prompt_cache_hit_tokens` of 10.7 was read as no cache hit, and a `prompt_tokens` of `"12"` as 12; either
    answer is now malformed, charged as one is (`handler.wire.usage_count`)."""
    answer = orjson.loads((FIXTURES / "deepseek" / "chat-reasoner-response.json").read_bytes())
    answer["usage"][field] = count
    with pytest.raises((UpstreamError, ValueError)):
        adapter().chat_response(orjson.dumps(answer), request(), target())


def test_deepseek_serves_no_embeddings_and_builds_no_embeddings_request() -> None:
    """DeepSeek has no embeddings API, yet the adapter inherited OpenAI's `supports_embeddings` and its embeddings
    request (`POST {base_url}/embeddings`): an embedding model deployed on DeepSeek passed `config check` and every
    request to it went upstream to a 404. It says it serves none now, as Anthropic's and Bedrock's do, and refuses
    an embeddings request with the interface's 400 before anything is built."""
    from handler.embeddings import EmbeddingsRequest

    assert not DeepSeekAdapter.supports_embeddings
    embed = EmbeddingsRequest.model_validate({"model": "public", "input": "hi"})
    with pytest.raises(InvalidRequestError) as caught:
        adapter().embeddings_request(embed, target("deepseek-chat"))
    assert caught.value.message == "provider type 'deepseek' does not serve embeddings"
    assert caught.value.param == "model"
