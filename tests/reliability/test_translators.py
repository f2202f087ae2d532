"""Property tests of every provider translator: any valid OpenAI request becomes a valid provider
request, or a clear `InvalidRequestError` (a 400), never another exception (a 500)."""

from __future__ import annotations

import string
from collections.abc import Callable
from typing import Any

import orjson
import pytest
from hypothesis import HealthCheck, given, reject, settings
from hypothesis import strategies as st
from pydantic import ValidationError

from adapters.providers.registry import REGISTRY
from handler.api.messages_api import MessagesRequest, to_chat_request
from handler.errors import InvalidRequestError
from handler.ports import BuiltRequest, ProviderAdapter, Target
from handler.schemas import ChatRequest

SECRET = "test-provider-secret-value"
SYSTEM_ROLES = {"system", "developer"}
SYSTEM = {"role": "system", "content": "Be brief."}
OPTIONS: dict[str, dict[str, Any]] = {"azure": {"base_url": "https://contoso.openai.azure.com"}}
UPSTREAM_MODELS = {
    "anthropic": "claude-haiku-4-5",
    "bedrock": "us.anthropic.claude-3-5-haiku-20241022-v1:0",
    "gemini": "gemini-2.5-flash",
    "azure": "gpt-4o-prod",
    "mistral": "mistral-small-latest",
    "deepseek": "deepseek-chat",
    "openai": "gpt-4o-mini",
}

text = st.text(max_size=40)
name = st.text(alphabet=string.ascii_letters + string.digits + "_-", min_size=1, max_size=20)
json_value = st.recursive(
    st.none() | st.booleans() | st.integers(-(10**6), 10**6) | st.floats(allow_nan=False, allow_infinity=False) | text,
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(name, inner, max_size=3),
    max_leaves=8,
)
json_schema = st.one_of(
    st.just({"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}),
    st.just({"type": "object"}),
    st.dictionaries(name, json_value, max_size=3),
)
data_url = st.sampled_from(["data:image/png;base64,iVBORw0KGgo=", "data:image/jpeg;base64,/9j/4AAQ"])
image_url = data_url | st.sampled_from(["https://example.com/cat.png", "http://x/y.gif"])
text_part = st.builds(lambda t: {"type": "text", "text": t}, text)
image_part = st.builds(
    lambda url, detail: {"type": "image_url", "image_url": {"url": url, **({"detail": detail} if detail else {})}},
    image_url,
    st.sampled_from([None, "auto", "low", "high"]),
)
audio_part = st.builds(
    lambda fmt: {"type": "input_audio", "input_audio": {"data": "UklGRg==", "format": fmt}},
    st.sampled_from(["wav", "mp3"]),
)
file_part = st.builds(
    lambda data: {"type": "file", "file": data},
    st.sampled_from([{"file_data": "data:application/pdf;base64,JVBERi0=", "filename": "a.pdf"}, {"file_id": "f"}, {}]),
)
part = st.one_of(text_part, text_part, image_part, audio_part, file_part)
content = st.one_of(text, st.lists(part, max_size=4), st.none())
arguments = st.one_of(
    st.just('{"city":"Paris"}'), st.just("{}"), text, st.builds(lambda v: orjson.dumps(v).decode(), json_value)
)
tool_call = st.builds(
    lambda i, n, a: {"id": i, "type": "function", "function": {"name": n, "arguments": a}},
    st.text(alphabet=string.ascii_letters + string.digits + "_", min_size=1, max_size=12),
    name,
    arguments,
)


@st.composite
def message(draw: st.DrawFn) -> dict[str, Any]:
    role = draw(st.sampled_from(["system", "developer", "user", "user", "assistant", "tool", "function"]))
    out: dict[str, Any] = {"role": role, "content": draw(content)}
    if role == "assistant" and draw(st.booleans()):
        out["tool_calls"] = draw(st.lists(tool_call, min_size=1, max_size=3))
    if role == "assistant" and draw(st.booleans()):
        out["reasoning_content"] = draw(text)
    if role == "tool":
        out["tool_call_id"] = draw(st.one_of(name, st.none()))
    if role in ("function", "user") and draw(st.booleans()):
        out["name"] = draw(name)
    return out


tool = st.builds(
    lambda n, d, p, s: {
        "type": "function",
        "function": {"name": n, **({"description": d} if d else {}), **({"parameters": p} if p else {}), **s},
    },
    name,
    st.none() | text,
    st.none() | json_schema,
    st.sampled_from([{}, {"strict": True}, {"strict": False}]),
)
tool_choice = st.one_of(
    st.sampled_from(["none", "auto", "required"]),
    st.builds(lambda n: {"type": "function", "function": {"name": n}}, name),
)
response_format = st.one_of(
    st.just({"type": "text"}),
    st.just({"type": "json_object"}),
    st.builds(
        lambda n, s, strict: {"type": "json_schema", "json_schema": {"name": n, "schema": s, "strict": strict}},
        name,
        json_schema,
        st.none() | st.booleans(),
    ),
    st.just({"type": "json_schema"}),
)
OPTIONAL: dict[str, st.SearchStrategy[Any]] = {
    "stream_options": st.builds(lambda b: {"include_usage": b}, st.booleans()),
    "max_tokens": st.integers(1, 200_000),
    "max_completion_tokens": st.integers(1, 200_000),
    "temperature": st.floats(0, 2),
    "top_p": st.floats(0, 1),
    "n": st.integers(1, 4),
    "stop": st.one_of(text, st.lists(text, max_size=5)),
    "presence_penalty": st.floats(-2, 2),
    "frequency_penalty": st.floats(-2, 2),
    "seed": st.integers(-(2**63), 2**63 - 1),
    "tools": st.lists(tool, max_size=3),
    "tool_choice": tool_choice,
    "parallel_tool_calls": st.booleans(),
    "response_format": response_format,
    "user": text,
    "logprobs": st.booleans(),
    "top_logprobs": st.integers(0, 20),
    "metadata": st.dictionaries(name, text, max_size=2),
    "reasoning_effort": st.sampled_from(["low", "medium", "high"]),
    "modalities": st.just(["text"]),
    "base_url": st.just("http://attacker.example/v1"),
}


@st.composite
def chat_request(draw: st.DrawFn) -> dict[str, Any]:
    messages = draw(st.lists(message(), min_size=1, max_size=6))
    if not any(substantial(m) for m in messages):  # the known gap: see test_a_conversation_with_nothing_...
        messages.append({"role": "user", "content": draw(st.text(min_size=1, max_size=20).filter(str.strip))})
    body: dict[str, Any] = {"model": "public-model", "messages": messages}
    for field in draw(st.sets(st.sampled_from(sorted(OPTIONAL)), max_size=8)):
        body[field] = draw(st.none() | OPTIONAL[field]) if draw(st.integers(0, 9)) == 0 else draw(OPTIONAL[field])
    return body


def substantial(message: dict[str, Any]) -> bool:
    """A non-system message with something in it (the three translators drop empty ones)."""
    body = message.get("content")
    if message["role"] in SYSTEM_ROLES:
        return False
    if message.get("tool_calls"):
        return True
    if isinstance(body, str):
        return bool(body.strip())
    return bool(body) and any(p["type"] != "text" or p["text"].strip() for p in body)


def make(type_name: str) -> tuple[ProviderAdapter, Target]:
    adapter = REGISTRY[type_name](type_name, SECRET, OPTIONS.get(type_name, {}))
    region = "us-east-1"
    return adapter, Target(type_name, type_name, UPSTREAM_MODELS[type_name], region, adapter.base_url(region, None))


def check_provider_request(type_name: str, built: BuiltRequest, target: Target) -> None:
    request = built.request
    assert request.method == "POST"
    assert request.url.startswith(target.base_url + "/"), request.url  # the body never chooses the upstream
    assert all(isinstance(k, str) and isinstance(v, str) for k, v in request.headers.items())
    assert all("\n" not in v and "\r" not in v for v in request.headers.values())
    body = orjson.loads(request.body)
    assert isinstance(body, dict)
    assert all(isinstance(d, str) for d in built.dropped)
    if type_name == "anthropic":
        assert isinstance(body["max_tokens"], int) and body["max_tokens"] >= 1
        assert body["messages"] and body["model"] == target.model
        for first, second in zip(body["messages"], body["messages"][1:], strict=False):
            assert first["role"] != second["role"], "Anthropic needs alternating roles"
    elif type_name == "gemini":
        assert body["contents"] and all(c.get("parts") for c in body["contents"])
    elif type_name == "bedrock":
        assert body["messages"] and all(m.get("content") for m in body["messages"])
    else:
        assert body["messages"]
        if type_name != "azure":
            assert body["model"] == target.model


@pytest.mark.parametrize("type_name", sorted(REGISTRY))
@given(data=chat_request(), stream=st.booleans())
@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
def test_any_valid_request_translates_or_is_a_clear_400(type_name: str, data: dict[str, Any], stream: bool) -> None:
    try:
        req = ChatRequest.model_validate(data)
    except ValidationError:
        reject()
    translates_or_is_a_clear_400(type_name, data, lambda: req, stream)


def translates_or_is_a_clear_400(
    type_name: str, data: dict[str, Any], internal: Callable[[], ChatRequest], stream: bool
) -> None:
    """The internal request `internal` makes of `data`, built for `type_name`: a valid provider request, or an
    `InvalidRequestError` (a 400) along the way, never another exception (a 500)."""
    adapter, target = make(type_name)
    try:
        built = adapter.chat_request(internal(), target, stream=stream)
    except InvalidRequestError as exc:
        assert exc.status == 400 and exc.message and SECRET not in exc.message
        return
    except Exception as exc:
        raise AssertionError(f"{type(exc).__name__}: {exc} for {orjson.dumps(data).decode()}") from exc
    try:
        check_provider_request(type_name, built, target)
    except AssertionError as exc:
        raise AssertionError(f"{exc} for {orjson.dumps(data).decode()} -> {built.request.body.decode()}") from exc
    # The provider's secret goes in an auth header, never in the URL or the body.
    assert SECRET not in built.request.url + built.request.body.decode()


def test_every_registered_type_is_covered() -> None:
    assert set(REGISTRY) <= set(UPSTREAM_MODELS)


@pytest.mark.parametrize("type_name", sorted(REGISTRY))
@pytest.mark.parametrize("messages", [[SYSTEM], [SYSTEM, {"role": "user", "content": ""}]], ids=["system", "empty"])
def test_a_conversation_with_nothing_to_answer_is_a_clear_400_or_a_valid_request(
    type_name: str, messages: list[dict[str, Any]]
) -> None:
    req = ChatRequest.model_validate({"model": "m", "messages": messages})
    adapter, target = make(type_name)
    try:
        built = adapter.chat_request(req, target, stream=False)
    except InvalidRequestError:
        return
    check_provider_request(type_name, built, target)


# --- the Messages front-end: any Messages request, to any provider --------------------------------

cache_marker = st.sampled_from([{}, {"cache_control": {"type": "ephemeral"}}])
anthropic_text = st.builds(lambda t, c: {"type": "text", "text": t, **c}, text, cache_marker)
anthropic_image = st.builds(
    lambda source, c: {"type": "image", "source": source, **c},
    st.sampled_from(
        [
            {"type": "base64", "media_type": "image/png", "data": "iVBORw0KGgo="},
            {"type": "url", "url": "https://example.com/a.png"},
            {"type": "file", "file_id": "file_1"},
        ]
    ),
    cache_marker,
)
anthropic_document = st.builds(
    lambda source: {"type": "document", "source": source},
    st.sampled_from(
        [
            {"type": "base64", "media_type": "application/pdf", "data": "JVBERi0="},
            {"type": "text", "media_type": "text/plain", "data": "words"},
            {"type": "url", "url": "https://example.com/a.pdf"},
            {"type": "content", "content": [{"type": "text", "text": "inner"}]},
        ]
    ),
)
odd_block = st.builds(
    lambda kind: {"type": kind}, st.sampled_from(["search_result", "container_upload", "future_block"])
)
user_block = anthropic_text | anthropic_image | anthropic_document | odd_block
thinking_block = st.sampled_from(
    [
        {"type": "thinking", "thinking": "Plan.", "signature": "sig"},
        {"type": "redacted_thinking", "data": "opaque"},
    ]
)
tool_use = st.builds(
    lambda i, args: {"type": "tool_use", "id": f"toolu_{i}", "name": "get_weather", "input": args},
    st.integers(0, 3),
    st.dictionaries(name, json_value, max_size=2),
)
tool_result = st.builds(
    lambda i, content, error, c: {
        "type": "tool_result",
        "tool_use_id": f"toolu_{i}",
        "content": content,
        "is_error": error,
        **c,
    },
    st.integers(0, 3),
    text | st.lists(anthropic_text | anthropic_image, max_size=2),
    st.booleans(),
    cache_marker,
)
anthropic_message = st.one_of(
    st.builds(
        lambda c: {"role": "user", "content": c}, text | st.lists(user_block | tool_result, min_size=1, max_size=3)
    ),
    st.builds(
        lambda c: {"role": "assistant", "content": c},
        text | st.lists(anthropic_text | tool_use | thinking_block | odd_block, min_size=1, max_size=3),
    ),
    st.builds(lambda c: {"role": "system", "content": c}, text | st.lists(anthropic_text, min_size=1, max_size=2)),
)
MESSAGES_OPTIONAL: dict[str, st.SearchStrategy[Any]] = {
    "system": text | st.lists(anthropic_text, max_size=3),
    "thinking": st.sampled_from(
        [
            {"type": "adaptive"},
            {"type": "adaptive", "display": "omitted"},
            {"type": "enabled", "budget_tokens": 1024},
            {"type": "enabled", "budget_tokens": 50000},
            {"type": "disabled"},
        ]
    ),
    "output_config": st.sampled_from(
        [
            {"effort": "high"},
            {"effort": "max"},
            {"format": {"type": "json_schema", "schema": {"type": "object"}}},
            {"task_budget": 1},
        ]
    ),
    "context_management": st.just({"edits": [{"type": "clear_thinking_20251015", "keep": "all"}]}),
    "tools": st.lists(
        st.sampled_from(
            [
                {"name": "get_weather", "input_schema": {"type": "object"}},
                {
                    "name": "Bash",
                    "description": "Run",
                    "input_schema": {"type": "object"},
                    "cache_control": {"type": "ephemeral"},
                },
                {"type": "web_search_20250305", "name": "web_search"},
            ]
        ),
        max_size=3,
        unique_by=lambda t: t["name"],
    ),
    "tool_choice": st.sampled_from(
        [{"type": "auto"}, {"type": "any"}, {"type": "none"}, {"type": "tool", "name": "get_weather"}]
    ),
    "temperature": st.floats(0, 1),
    "top_k": st.integers(1, 50),
    "stop_sequences": st.lists(text, max_size=6),
    "metadata": st.just({"user_id": "u-1"}),
}


@st.composite
def messages_request(draw: st.DrawFn) -> dict[str, Any]:
    messages = draw(st.lists(anthropic_message, min_size=1, max_size=6))
    messages.append({"role": "user", "content": draw(st.text(min_size=1, max_size=20).filter(str.strip))})
    body: dict[str, Any] = {"model": "public-model", "max_tokens": draw(st.integers(1, 40000)), "messages": messages}
    for field in draw(st.sets(st.sampled_from(sorted(MESSAGES_OPTIONAL)), max_size=8)):
        body[field] = draw(MESSAGES_OPTIONAL[field])
    return body


@pytest.mark.parametrize("type_name", sorted(REGISTRY))
@given(data=messages_request(), stream=st.booleans())
@settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.too_slow])
def test_any_messages_request_translates_or_is_a_clear_400(type_name: str, data: dict[str, Any], stream: bool) -> None:
    try:
        body = MessagesRequest.model_validate(data)
    except ValidationError:
        reject()
    translates_or_is_a_clear_400(type_name, data, lambda: to_chat_request(body)[0], stream)
