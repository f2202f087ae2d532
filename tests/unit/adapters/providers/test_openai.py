"""The OpenAI-compatible adapter against recorded OpenAI and DeepSeek bodies and transcripts."""

from __future__ import annotations

import re
import time
from pathlib import Path
from typing import Any

import orjson
import pytest

from adapters.providers import reasoning
from adapters.providers.openai import OpenAIAdapter
from adapters.providers.params import SKIP_SIGNATURE, call_signature, signed_call_id
from handler.api.messages_api import MessagesRequest, to_chat_request
from handler.api.streaming import answer_json
from handler.embeddings import EmbeddingsRequest, EmbeddingsResponse
from handler.errors import InvalidRequestError, UpstreamError
from handler.ports import Target
from handler.schemas import ChatCompletion, ChatRequest, PlainCompletion
from handler.wire import SSEDecoder, StreamEvent
from tests.bench.run import COMPLETION

FIXTURES = Path(__file__).resolve().parents[3] / "fixtures" / "openai"


def target(base_url: str = "https://api.openai.com/v1", model: str = "gpt-4o-mini") -> Target:
    return Target("p", "openai", model, "global", base_url)


def adapter(**options: object) -> OpenAIAdapter:
    return OpenAIAdapter("p", "sk-test", options)


def request(**fields: object) -> ChatRequest:
    return ChatRequest.model_validate({"model": "public", "messages": [{"role": "user", "content": "hi"}], **fields})


def parse_stream(a: OpenAIAdapter, name: str) -> tuple[list[dict[str, object]], object]:
    decoder, parser = a.frame_decoder(), a.stream_parser(request(), target())
    raw = (FIXTURES / name).read_bytes()
    chunks = []
    for i in range(0, len(raw), 37):  # odd-sized reads: frames split anywhere
        for event in decoder.feed(raw[i : i + 37]):
            chunks.extend(parser.feed(event))
    for event in decoder.finish():
        chunks.extend(parser.feed(event))
    chunks.extend(parser.finish())
    return [c.model_dump(exclude_none=True) for c in chunks], parser.usage


def test_request_passes_unknown_fields_and_sets_upstream_model_and_auth() -> None:
    built = adapter().chat_request(request(seed=3, logprobs=True, reasoning_effort="low"), target(), stream=False)
    body = orjson.loads(built.request.body)
    assert body["model"] == "gpt-4o-mini" and body["seed"] == 3 and body["reasoning_effort"] == "low"
    assert "stream" not in body and built.dropped == []
    assert built.request.url == "https://api.openai.com/v1/chat/completions"
    assert built.request.headers["authorization"] == "Bearer sk-test"


def test_stream_request_always_asks_for_usage() -> None:
    body = orjson.loads(adapter().chat_request(request(stream=True), target(), stream=True).request.body)
    assert body["stream"] is True and body["stream_options"] == {"include_usage": True}


def test_deepseek_profile_from_host_renames_and_reports_dropped() -> None:
    req = request(max_completion_tokens=50, n=2, logit_bias={"1": 2}, seed=1, temperature=0.3)
    req.messages.append(req.messages[0].model_copy(update={"role": "assistant", "reasoning_content": "thoughts"}))
    built = adapter().chat_request(req, target("https://api.deepseek.com/v1", "deepseek-chat"), stream=False)
    body = orjson.loads(built.request.body)
    assert body["max_tokens"] == 50 and "max_completion_tokens" not in body and body["temperature"] == 0.3
    # (The `openai` type strips an earlier turn's reasoning, which the `deepseek` type sends back: named.)
    assert sorted(built.dropped) == ["logit_bias", "messages.reasoning_content", "n", "seed"]
    assert all("reasoning_content" not in m for m in body["messages"])


@pytest.mark.parametrize(
    "base_url",
    [
        "http://vllm.internal:8000/v1",
        "https://api.x.ai/v1",
        "https://api.groq.com/openai/v1",
        "https://api.together.xyz/v1",
    ],
)
def test_a_generic_profile_names_the_earlier_reasoning_it_leaves_out(base_url: str) -> None:
    """vLLM, xAI, Groq and Together get no earlier turn's reasoning (their profiles strip it): it went unnamed when it
    came as text alone (a Chat client's `reasoning_content`, a Responses client's reasoning item)."""
    req = request()
    req.messages.append(req.messages[0].model_copy(update={"role": "assistant", "reasoning_content": "thoughts"}))
    built = adapter().chat_request(req, target(base_url, "some-model"), stream=False)
    assert built.dropped == ["messages.reasoning_content"]
    assert all("reasoning_content" not in m for m in orjson.loads(built.request.body)["messages"])


REASONING_DETAILS = [{"type": "reasoning.encrypted", "data": "gAAAAABopaque==", "format": "openai-responses-v1"}]


@pytest.mark.parametrize(
    ("base_url", "kept"),
    [
        ("https://api.openai.com/v1", False),
        ("https://api.deepseek.com/v1", False),
        ("https://api.groq.com/openai/v1", False),
        ("https://openrouter.ai/api/v1", True),
        ("http://vllm.internal:8000/v1", True),
    ],
)
def test_an_earlier_turns_reasoning_details_go_back_only_where_the_profile_keeps_them(
    base_url: str, kept: bool
) -> None:
    """OpenRouter's `reasoning_details` on an assistant turn went to every OpenAI-compatible API as it came, unnamed:
    OpenAI refuses a message field it does not define (400 "Unknown parameter: 'messages[1].reasoning_details'."), as
    DeepSeek and Groq do. A compatible server (OpenRouter, which returns the field and wants it back) gets it; the
    others do not, and it is named (for a Responses client, as the reasoning item it came in)."""
    from handler.ports import RESPONSES_API, as_client_named

    req = request()
    req.messages.append(
        req.messages[0].model_copy(update={"role": "assistant", "reasoning_details": REASONING_DETAILS})
    )
    built = adapter().chat_request(req, target(base_url, "some-model"), stream=False)
    sent = orjson.loads(built.request.body)["messages"][1]
    assert sent.get("reasoning_details") == (REASONING_DETAILS if kept else None)
    assert built.dropped == ([] if kept else ["messages.reasoning_details"])
    assert as_client_named(RESPONSES_API, built.dropped) == ([] if kept else ["input[reasoning]"])


def test_mistral_profile_renames_seed_and_maps_required_tool_choice() -> None:
    req = request(seed=7, tool_choice="required", stream=True)
    built = adapter(profile="mistral").chat_request(req, target("http://localhost:9/v1"), stream=True)
    body = orjson.loads(built.request.body)
    assert body["random_seed"] == 7 and body["tool_choice"] == "any" and "stream_options" not in body


ALLOWED = {"type": "allowed_tools", "allowed_tools": {"mode": "required", "tools": [{"function": {"name": "b"}}]}}


@pytest.mark.parametrize(
    ("options", "base_url", "required"),
    [
        ({"profile": "mistral"}, "http://x/v1", "any"),
        ({"profile": "deepseek"}, "http://x/v1", "required"),
        ({}, "http://vllm:8000/v1", "required"),
        ({}, "https://api.groq.com/openai/v1", "required"),
        ({}, "http://localhost:11434/v1", "required"),
        ({"profile": "google"}, "http://x/v1", "required"),
    ],
    ids=["mistral", "deepseek", "compatible", "groq", "ollama", "google"],
)
def test_an_api_without_allowed_tools_is_offered_the_allowed_tools_alone(
    options: dict[str, str], base_url: str, required: str
) -> None:
    """Mistral and DeepSeek take no `tool_choice` of type `allowed_tools`, nor do vLLM, Groq and the other servers the
    gateway has no profile for, or a profile that does not say it takes one (the choice went to them as it came,
    and vLLM's 400 refused it): the tools it allows go alone, the model can call no other, and its mode is their
    choice."""
    tools = [{"type": "function", "function": {"name": name}} for name in ("a", "b")]
    req = request(tools=tools, tool_choice=ALLOWED)
    body = orjson.loads(adapter(**options).chat_request(req, target(base_url), stream=False).request.body)
    assert [tool["function"]["name"] for tool in body["tools"]] == ["b"] and body["tool_choice"] == required
    unknown = request(tools=tools[:1], tool_choice=ALLOWED)
    with pytest.raises(InvalidRequestError, match="no function named 'b'"):
        adapter(**options).chat_request(unknown, target(base_url), stream=False)


@pytest.mark.parametrize("options", [{}, {"profile": "openai"}], ids=["host", "profile"])
def test_openai_is_sent_an_allowed_tools_choice_as_it_came(options: dict[str, str]) -> None:
    tools = [{"type": "function", "function": {"name": name}} for name in ("a", "b")]
    base_url = "https://api.openai.com/v1" if not options else "http://proxy:8/v1"
    built = adapter(**options).chat_request(request(tools=tools, tool_choice=ALLOWED), target(base_url), stream=False)
    body = orjson.loads(built.request.body)
    assert body["tool_choice"] == ALLOWED and len(body["tools"]) == 2 and built.dropped == []


@pytest.mark.parametrize(
    ("options", "base_url"),
    [({}, "http://localhost:11434/v1"), ({}, "http://10.0.0.5:11434/v1"), ({"profile": "ollama"}, "http://gpu:8/v1")],
)
def test_ollama_is_sent_max_tokens_which_it_reads(options: dict[str, str], base_url: str) -> None:
    """Ollama ignores `max_completion_tokens` without a word: a budgeted request's cap (always sent in that
    field when the client sent none) did not hold, and the answer could run past what was reserved."""
    req = request(max_completion_tokens=512, n=2, store=True)
    built = adapter(**options).chat_request(req, target(base_url, "llama3.1:8b"), stream=False)
    body = orjson.loads(built.request.body)
    assert body["max_tokens"] == 512 and "max_completion_tokens" not in body
    assert sorted(built.dropped) == ["n", "store"]


def test_a_port_alone_does_not_pick_a_profile_for_a_known_host() -> None:
    body = orjson.loads(adapter().chat_request(request(max_completion_tokens=5), target(), stream=False).request.body)
    assert body["max_completion_tokens"] == 5
    hosted = target("https://api.deepseek.com:11434/v1", "deepseek-chat")
    assert (
        orjson.loads(adapter().chat_request(request(max_completion_tokens=5), hosted, stream=False).request.body)[
            "max_tokens"
        ]
        == 5
    )


def test_unknown_profile_is_refused_at_start_up() -> None:
    with pytest.raises(ValueError, match="unknown profile"):
        adapter(profile="nope")


def test_response_parses_usage_with_cached_tokens() -> None:
    completion = adapter().chat_response((FIXTURES / "chat-response.json").read_bytes(), request(), target())
    assert completion.choices[0].finish_reason == "stop"
    assert completion.usage is not None and completion.usage.cached_tokens == 1024


def test_tool_call_stream_keeps_argument_deltas_and_usage() -> None:
    chunks, usage = parse_stream(adapter(), "chat-tool-calls-stream.sse")
    args = "".join(
        tc["function"].get("arguments", "")
        for c in chunks
        for ch in c["choices"]
        for tc in ch["delta"].get("tool_calls", [])
    )
    assert args == '{"location":"Paris"}'
    assert usage is not None and usage.completion_tokens == 17  # type: ignore[attr-defined]


def test_deepseek_stream_passes_reasoning_and_maps_cache_hits() -> None:
    chunks, usage = parse_stream(adapter(), "deepseek-reasoner-stream.sse")
    reasoning = "".join(ch["delta"].get("reasoning_content", "") for c in chunks for ch in c["choices"])
    assert reasoning == "Think"
    assert usage.completion_tokens == 20  # type: ignore[attr-defined]


def test_error_body_maps_to_retryable_upstream_error_with_retry_after() -> None:
    error = adapter().error(429, (FIXTURES / "error-429.json").read_bytes(), {"retry-after": "2"})
    assert isinstance(error, UpstreamError) and error.retryable and error.retry_after == 2.0
    assert error.upstream_type == "requests" and "Rate limit reached" in error.message
    assert not adapter().error(400, b"<html>bad</html>", {}).retryable


def test_in_stream_error_event_raises() -> None:
    parser = adapter().stream_parser(request(), target())
    events = SSEDecoder().feed(b'data: {"error": {"message": "overloaded", "type": "server_error"}}\n\n')
    with pytest.raises(UpstreamError, match="overloaded"):
        parser.feed(events[0])


@pytest.mark.parametrize("profile", ["compatible", "mistral"])
def test_an_error_object_alone_in_a_stream_is_the_servers_failure(profile: str) -> None:
    """The error object itself as a stream event, `{"object": "error", ...}` (Mistral's errors' shape, no `error`
    member around it), was validated as a chunk: a malformed event (the provider's words lost, no usage, so the
    request was charged its worst case). It is the server's failure, in its words and type, as `{"error": ...}` is
    (found by review)."""
    parser = adapter(profile=profile).stream_parser(request(), target(VLLM, "mistral-large-latest"))
    said = {"object": "error", "message": "Service tier capacity exceeded.", "type": "capacity", "code": "3505"}
    with pytest.raises(UpstreamError) as failure:
        parser.feed(StreamEvent(None, orjson.dumps(said)))
    assert failure.value.upstream_status == 500 and failure.value.said == "Service tier capacity exceeded."
    assert failure.value.upstream_type == "capacity" and "malformed" not in failure.value.message


# A 200's error object alone: the status it is read at, whether another attempt may answer, and the words relayed.
WHOLE_ERRORS = [
    ({"error": {"code": 502, "message": "Provider returned error", "metadata": {}}}, 502, True),  # OpenRouter's
    ({"error": {"code": 429, "message": "Rate limit exceeded"}}, 429, True),
    ({"error": {"code": 400, "message": "Invalid prompt"}}, 400, False),  # (the client's: `ProviderRejectedError`)
    ({"error": {"code": 200, "message": "Not the status of an error"}}, 500, True),
    ({"error": {"code": True, "message": "Not a status"}}, 500, True),
    ({"error": {"code": "insufficient_quota", "message": "A word"}}, 429, True),  # (the status its code names)
    ({"error": {"code": "rate_limit_exceeded", "message": "A word"}}, 429, True),
    ({"error": {"code": "429", "message": "A proxy's status, as a string"}}, 429, True),
    ({"error": {"type": "invalid_request_error", "message": "A refusal"}}, 400, False),
    ({"error": "Overloaded"}, 500, True),
    ({"object": "error", "message": "Service tier capacity exceeded.", "type": "capacity", "code": "3505"}, 500, True),
]


@pytest.mark.parametrize(("said", "status", "retryable"), WHOLE_ERRORS)
def test_a_whole_answer_that_is_an_error_object_alone_is_the_providers_error(
    said: dict[str, object], status: int, retryable: bool
) -> None:
    """A 200 whose body is an error object and nothing else (OpenRouter's for an error once the model started, with
    the status in `error.code`; Mistral's error object) was read as an answer without choices: the provider's
    malformed success, its words lost and the request charged its worst case. It is the provider's error, at the
    status `code` names where it names an error's, else the status its code or type names (`said_status`: they were
    a 500), else a 500, in its words; from the embeddings API too."""
    with pytest.raises(UpstreamError) as failure:
        adapter().chat_response(orjson.dumps(said), request(), target())
    assert (failure.value.upstream_status, failure.value.retryable) == (status, retryable)
    words = failure.value.said
    assert failure.value.billed is None and words and f'"{words}"' in orjson.dumps(said).decode()
    embeddings = EmbeddingsRequest.model_validate({"model": "e", "input": "hi"})
    with pytest.raises(UpstreamError) as embedded:
        adapter().embeddings_response(orjson.dumps(said), embeddings, target())
    assert (embedded.value.upstream_status, embedded.value.said) == (status, failure.value.said)


@pytest.mark.parametrize("body", [{"id": "c1", "object": "chat.completion"}, {"error": None}, [1, 2]])
def test_an_answer_without_choices_that_is_no_error_is_still_malformed(body: object) -> None:
    with pytest.raises(UpstreamError) as failure:
        adapter().chat_response(orjson.dumps(body), request(), target())
    assert (failure.value.upstream_status, failure.value.message) == (200, "upstream answered without choices")


def test_a_reasoning_model_gets_the_cap_as_max_completion_tokens() -> None:
    body = orjson.loads(
        adapter().chat_request(request(max_tokens=100), target(model="o3-mini"), stream=False).request.body
    )
    assert body["max_completion_tokens"] == 100 and "max_tokens" not in body
    body = orjson.loads(adapter().chat_request(request(max_tokens=100), target(), stream=False).request.body)
    assert body["max_tokens"] == 100


@pytest.mark.parametrize(
    ("model", "thinks"),
    [
        ("gemini-2.5-flash", True),  # dynamic thinking unless told otherwise
        ("gemini-2.5-pro", True),  # always thinks
        ("gemini-3-flash-preview", True),  # at its default level
        ("gemini-flash-latest", True),  # (Gemini 3's alias)
        ("gemini-2.5-flash-lite", False),  # thinks only when asked
        ("gemini-2.0-flash", False),  # does not think
    ],
)
def test_a_gemini_model_that_thinks_by_default_reasons_unasked_through_googles_compatible_endpoint(
    model: str, thinks: bool
) -> None:
    """Gemini 2.5 and later think on a request that names no reasoning, and Google bills the thoughts, which its
    OpenAI-compatible endpoint neither shows nor counts before the final usage: a stream cut short is charged its
    reserved output, as an OpenAI reasoning model's is (`reasons_unasked`: it told OpenAI's names alone, and such a
    stream of Gemini 2.5 Flash or Pro was charged its first word's estimate: review). By Gemini's own rules
    (`reasoning.gemini_thinks_unasked`), on the `google` profile alone: a compatible server that calls a model of its
    own so is not Google's."""
    google = adapter(profile="google")
    assert google.reasons_unasked(target(GOOGLE, model)) is thinks
    assert adapter().reasons_unasked(target("http://vllm.internal:8000/v1", model)) is False
    assert google.reasons_unasked(target(GOOGLE, "o4-mini")) is True  # (OpenAI's names, as everywhere)


def test_more_stop_sequences_than_openai_takes_are_refused_as_openai_refuses_them() -> None:
    """Cut to four and named in a header, the request asked OpenAI for an answer that could run on past the fifth:
    a 400 naming `stop`, in OpenAI's words, as OpenAI answers it. Four go whole; other profiles have their own
    bounds (DeepSeek's 16) or none."""
    with pytest.raises(InvalidRequestError) as refused:
        adapter().chat_request(request(stop=["a", "b", "c", "d", "e"]), target(), stream=False)
    assert refused.value.param == "stop" and refused.value.status == 400
    assert refused.value.message == (
        "Invalid 'stop': array too long. Expected an array with maximum length 4, but got an array with length 5 "
        "instead."
    )
    built = adapter().chat_request(request(stop=["a", "b", "c", "d"]), target(), stream=False)
    assert orjson.loads(built.request.body)["stop"] == ["a", "b", "c", "d"] and built.dropped == []
    sixteen = [str(n) for n in range(16)]
    built = adapter().chat_request(request(stop=sixteen), target("https://api.deepseek.com/v1"), stream=False)
    assert orjson.loads(built.request.body)["stop"] == sixteen and built.dropped == []
    with pytest.raises(InvalidRequestError, match="maximum length 16"):
        adapter().chat_request(request(stop=[*sixteen, "x"]), target("https://api.deepseek.com/v1"), stream=False)
    # A server the gateway does not know (vLLM) is not bound by OpenAI's four; named `openai`, it is.
    built = adapter().chat_request(request(stop=sixteen), target("http://10.0.0.5:8000/v1"), stream=False)
    assert orjson.loads(built.request.body)["stop"] == sixteen and built.dropped == []
    with pytest.raises(InvalidRequestError, match="maximum length 4"):
        adapter(profile="openai").chat_request(request(stop=sixteen), target("http://10.0.0.5:8000/v1"), stream=False)


def test_another_providers_tool_call_state_is_not_sent() -> None:
    call = {
        "id": "c1",
        "type": "function",
        "function": {"name": "f", "arguments": "{}"},
        "extra_content": {"google": {"thought_signature": "c2ln"}},
    }
    messages = [{"role": "user", "content": "hi"}, {"role": "assistant", "content": None, "tool_calls": [call]}]
    body = orjson.loads(adapter().chat_request(request(messages=messages), target(), stream=False).request.body)
    assert body["messages"][1]["tool_calls"] == [
        {"id": "c1", "type": "function", "function": {"name": "f", "arguments": "{}"}}
    ]
    # Gemini's own OpenAI-compatible endpoint reads it back.
    google = target(base_url="https://generativelanguage.googleapis.com/v1beta/openai")
    body = orjson.loads(adapter().chat_request(request(messages=messages), google, stream=False).request.body)
    assert body["messages"][1]["tool_calls"][0]["extra_content"] == call["extra_content"]


@pytest.mark.parametrize("model", ["gemini-2.5-flash", "gemini-3-pro-preview", "gemini-flash-latest"])
def test_an_empty_thought_signature_is_not_sent_to_geminis_compatible_endpoint(model: str) -> None:
    """A client's `extra_content.google.thought_signature` of `""` went on as sent to Gemini's OpenAI-compatible
    endpoint, which refuses it ("Corrupted thought signature."). It is left out, as the Gemini adapter leaves it
    out; a Gemini 3 step's first call, which Gemini refuses unsigned, gets its documented stand-in instead."""

    def call(i: int, extra: object) -> dict[str, object]:
        return {"id": f"c{i}", "type": "function", "function": {"name": "f", "arguments": "{}"}, "extra_content": extra}

    empty = {"google": {"thought_signature": ""}}
    turns = [
        [call(1, empty), call(2, empty)],
        [call(3, {"google": {"thought_signature": "c2ln"}}), call(4, {"google": {"thought_signature": ""}, "x": 1})],
    ]
    messages: list[dict[str, object]] = [{"role": "user", "content": "hi"}]
    for calls in turns:
        messages.append({"role": "assistant", "content": None, "tool_calls": calls})
        messages += [{"role": "tool", "tool_call_id": c["id"], "content": "ok"} for c in calls]
    google = target("https://generativelanguage.googleapis.com/v1beta/openai", model)
    body = orjson.loads(adapter().chat_request(request(messages=messages), google, stream=False).request.body)
    sent = [call.get("extra_content") for m in body["messages"] for call in m.get("tool_calls") or ()]
    first = None if model == "gemini-2.5-flash" else {"google": {"thought_signature": SKIP_SIGNATURE}}
    assert sent == [first, None, {"google": {"thought_signature": "c2ln"}}, {"x": 1}]


GOOGLE = "https://generativelanguage.googleapis.com/v1beta/openai"


def test_a_signature_a_call_id_carries_reaches_geminis_compatible_endpoint_in_extra_content() -> None:
    """The gateway hands Gemini's signatures out in the call's id (`params.signed_call_id`), from Gemini's own API
    and from this endpoint; its `google` profile read none there, and sent the id whole beside Gemini's stand-in.
    The signature goes where the endpoint reads it, the id as Gemini gave it, in the call and its result alike; a
    signature the client sent in `extra_content` wins (an empty one is none); an id that is all signature goes whole
    (it has nothing else to go as), still paired with its result."""

    def call(call_id: str, extra: object = None) -> dict[str, object]:
        made: dict[str, object] = {"id": call_id, "type": "function", "function": {"name": "f", "arguments": "{}"}}
        return made if extra is None else {**made, "extra_content": extra}

    turns = [
        [call(signed_call_id("c1", "c2ln+/8=")), call(signed_call_id("c2", "b3RoZXI="))],
        [call(signed_call_id("c3", "aWQ="), {"google": {"thought_signature": "Z2l2ZW4="}})],
        [call(signed_call_id("c4", "aWQ="), {"google": {"thought_signature": ""}, "x": 1})],
        [call(signed_call_id("", "YWxs"), {"google": "not Gemini's"})],
        [call("c5")],
    ]
    messages: list[dict[str, object]] = [{"role": "user", "content": "hi"}]
    for calls in turns:
        messages.append({"role": "assistant", "content": None, "tool_calls": calls})
        messages += [{"role": "tool", "tool_call_id": c["id"], "content": "ok"} for c in calls]
    body = orjson.loads(
        adapter()
        .chat_request(request(messages=messages), target(GOOGLE, "gemini-3-pro-preview"), stream=False)
        .request.body
    )
    calls = [(c["id"], c.get("extra_content")) for m in body["messages"] for c in m.get("tool_calls") or ()]
    assert calls == [
        ("c1", {"google": {"thought_signature": "c2ln+/8="}}),
        ("c2", {"google": {"thought_signature": "b3RoZXI="}}),
        ("c3", {"google": {"thought_signature": "Z2l2ZW4="}}),
        ("c4", {"google": {"thought_signature": "aWQ="}, "x": 1}),
        (signed_call_id("", "YWxs"), {"google": "not Gemini's"}),
        ("c5", {"google": {"thought_signature": SKIP_SIGNATURE}}),
    ]
    answered = [m["tool_call_id"] for m in body["messages"] if m["role"] == "tool"]
    assert answered == [call_id for call_id, _ in calls]
    # Another profile is sent the ids as they came (shortened past 64 characters), and no signature.
    body = orjson.loads(adapter().chat_request(request(messages=messages), target(), stream=False).request.body)
    assert [c["id"] for c in body["messages"][1]["tool_calls"]] == [
        signed_call_id("c1", "c2ln+/8="),
        signed_call_id("c2", "b3RoZXI="),
    ]


@pytest.mark.parametrize("stream", [False, True], ids=["whole", "stream"])
def test_a_signature_geminis_compatible_endpoint_gives_rides_in_the_calls_id_too(stream: bool) -> None:
    """The endpoint's signature reached clients in `extra_content` alone, which a Messages or Responses client (and
    a Chat client that keeps the standard fields) does not send back: the next turn went with Gemini's stand-in. It
    rides in the call's id too, as the Gemini adapter hands it out, its `extra_content` kept; a signature that would
    not come back from the id as it was (not standard base64), or none, leaves the id as it came; another profile's
    answer is as it came."""
    signatures = ["CiQBcsjafake+thought/signature==", "not base64!", "", None]
    calls = [
        {
            "id": f"function-call-{i}",
            "type": "function",
            "function": {"name": "f", "arguments": "{}"},
            "extra_content": {"google": {"thought_signature": signature}},
        }
        for i, signature in enumerate(signatures)
    ]
    answer = {
        "id": "x", "object": "chat.completion", "created": 1, "model": "gemini-3-pro-preview",
        "choices": [{"index": 0, "message": {"role": "assistant", "content": None, "tool_calls": calls},
                     "finish_reason": "tool_calls"}],
    }  # fmt: skip
    expected = [
        signed_call_id("function-call-0", signatures[0]),
        "function-call-1",
        "function-call-2",
        "function-call-3",
    ]
    for base_url, ids in ((GOOGLE, expected), ("https://openrouter.ai/api/v1", [c["id"] for c in calls])):
        where = target(base_url, "gemini-3-pro-preview")
        if stream:
            parser = adapter().stream_parser(request(), where)
            deltas = [{**c, "index": i} for i, c in enumerate(calls)]
            choice = {"index": 0, "delta": {"tool_calls": deltas}, "finish_reason": "tool_calls"}
            chunk = {**answer, "object": "chat.completion.chunk", "choices": [choice]}
            # (a chunk with a call that has no signature waits for the next, which may bring it: here, the end)
            read = [*parser.feed(StreamEvent(None, orjson.dumps(chunk))), *parser.finish()]
            got = read[0].choices[0].delta.tool_calls or []
        else:
            got = adapter().chat_response(orjson.dumps(answer), request(), where).choices[0].message.tool_calls or []
        assert [c.id for c in got] == ids
        assert [c.extra_content for c in got] == [c["extra_content"] for c in calls]
        assert call_signature(ids[0]) == (signatures[0] if base_url == GOOGLE else None)


def sent(req: ChatRequest, model: str = "gpt-4o-mini") -> tuple[dict[str, object], list[str]]:
    built = adapter().chat_request(req, target(model=model), stream=False)
    return orjson.loads(built.request.body), built.dropped


@pytest.mark.parametrize("model", ["o3", "o4-mini", "gpt-5", "gpt-5.1-codex"])
def test_reasoning_models_get_max_completion_tokens_not_max_tokens(model: str) -> None:
    body, dropped = sent(request(max_tokens=500), model)
    assert body["max_completion_tokens"] == 500 and "max_tokens" not in body and dropped == []


def test_other_models_keep_max_tokens() -> None:
    body, _ = sent(request(max_tokens=500))
    assert body["max_tokens"] == 500 and "max_completion_tokens" not in body


def test_thinking_becomes_reasoning_effort_only_on_reasoning_models() -> None:
    thinking = {"type": "adaptive", "effort": "max"}
    body, dropped = sent(request(thinking=thinking), "gpt-5.2")
    assert body["reasoning_effort"] == "xhigh" and "thinking" not in body and dropped == []
    body, dropped = sent(request(thinking={"type": "enabled", "budget_tokens": 3000}), "o4-mini")
    assert body["reasoning_effort"] == "medium"
    body, dropped = sent(request(thinking=thinking))
    assert "reasoning_effort" not in body and "thinking" not in body and dropped == ["thinking", reasoning.EFFORT]


def test_a_clients_own_reasoning_effort_is_passed_on() -> None:
    body, dropped = sent(request(reasoning_effort="low"), "some-compatible-model")
    assert body["reasoning_effort"] == "low" and dropped == []


@pytest.mark.parametrize(
    ("asked", "model", "effort"),
    [
        ({"thinking": {"type": "enabled", "budget_tokens": 1024}}, "gpt-5.1", "low"),  # minimal: none or low
        ({"thinking": {"type": "enabled", "budget_tokens": 1024}}, "gpt-5-mini", "minimal"),
        ({"thinking": {"type": "enabled", "budget_tokens": 1024}}, "o3", "low"),
        ({"thinking": {"type": "enabled", "budget_tokens": 20000}}, "gpt-5", "high"),  # xhigh
        ({"thinking": {"type": "enabled", "budget_tokens": 20000}}, "gpt-5.1-2025-11-13", "high"),
        ({"thinking": {"type": "enabled", "budget_tokens": 20000}}, "gpt-5.1-codex-max", "xhigh"),
        ({"thinking": {"type": "enabled", "budget_tokens": 20000}}, "gpt-5.2", "xhigh"),
        ({"thinking": {"type": "enabled", "budget_tokens": 20000}}, "o4-mini", "high"),
        ({"thinking": {"type": "enabled", "budget_tokens": 4000}}, "gpt-5-pro", "high"),  # it takes high only
    ],
)
def test_a_budget_becomes_the_nearest_effort_the_model_takes(asked: dict[str, object], model: str, effort: str) -> None:
    """OpenAI answers 400 for an effort the model does not take ("Unsupported value: 'minimal' is not supported
    with the 'gpt-5.1' model"): a budget's level goes as the nearest one it does, unreported (a budget was only
    ever approximated by a level)."""
    body, dropped = sent(request(**asked), model)
    assert body["reasoning_effort"] == effort and dropped == []


@pytest.mark.parametrize(
    ("asked", "model", "effort", "named"),
    [
        ({"reasoning_effort": "minimal"}, "gpt-5.1", "low", "reasoning_effort"),
        ({"reasoning_effort": "none"}, "gpt-5", "minimal", "reasoning_effort"),
        ({"reasoning_effort": "none"}, "gpt-5.1-codex", "low", "reasoning_effort"),
        ({"reasoning_effort": "xhigh"}, "o3", "high", "reasoning_effort"),
        # A Messages client's `output_config.effort`, which the front-end names back as such.
        ({"thinking": {"type": "adaptive", "effort": "max"}}, "gpt-5", "high", reasoning.EFFORT),
        ({"thinking": {"type": "adaptive", "effort": "xhigh"}}, "gpt-5.1", "high", reasoning.EFFORT),
    ],
)
def test_an_effort_the_client_named_and_the_model_refuses_is_the_nearest_and_named(
    asked: dict[str, object], model: str, effort: str, named: str
) -> None:
    body, dropped = sent(request(**asked), model)
    assert body["reasoning_effort"] == effort and dropped == [named]


def test_an_effort_the_model_takes_goes_as_asked() -> None:
    for model, effort in (("gpt-5.1", "none"), ("gpt-5", "minimal"), ("gpt-5.2", "xhigh"), ("o3-mini", "low")):
        body, dropped = sent(request(reasoning_effort=effort), model)
        assert body["reasoning_effort"] == effort and dropped == []


def test_tools_without_a_description_and_cache_markers_are_left_out() -> None:
    tool = {"type": "function", "function": {"name": "Bash", "description": None, "parameters": {"type": "object"}}}
    messages = [{"role": "user", "content": [{"type": "text", "text": "hi", "cache_control": {"type": "ephemeral"}}]}]
    body, dropped = sent(request(messages=messages, tools=[{**tool, "cache_control": {"type": "ephemeral"}}]))
    assert body["tools"] == [{"type": "function", "function": {"name": "Bash", "parameters": {"type": "object"}}}]
    assert body["messages"] == [{"role": "user", "content": [{"type": "text", "text": "hi"}]}] and dropped == []


def test_signed_thinking_of_a_messages_client_is_named_as_dropped() -> None:
    """A turn with both Claude's signed blocks and their text (a Messages client's, or the Claude turn a Chat client
    sends back as it was given) has both named: a Chat client sent both fields (only `messages.thinking` was named),
    and a Messages client's API has one name for them (`handler.ports.CLIENT_NAMES`)."""
    from handler.ports import MESSAGES_API, RESPONSES_API, as_client_named

    thinking = [{"type": "thinking", "thinking": "hm", "signature": "s"}]
    messages = [
        {"role": "user", "content": "hi"},
        {"role": "assistant", "content": "yes", "thinking_blocks": thinking, "reasoning_content": "hm"},
        {"role": "user", "content": "go on"},
    ]
    body, dropped = sent(request(messages=messages))
    assert body["messages"][1] == {"role": "assistant", "content": "yes"}
    assert dropped == ["messages.thinking", "messages.reasoning_content"]
    assert as_client_named(MESSAGES_API, dropped) == ["messages.thinking"]
    assert as_client_named(RESPONSES_API, dropped) == ["input[reasoning]"]


@pytest.mark.parametrize(
    ("model", "fields", "kept"),
    [
        ("o3-mini", {}, False),
        ("gpt-5", {"reasoning_effort": "minimal"}, False),
        ("gpt-5.1", {}, False),  # (its default effort is not the gateway's to assume)
        ("gpt-5.1", {"reasoning_effort": "low"}, False),
        # OpenAI's guide: gpt-5.1 and later take temperature and top_p with reasoning effort `none`.
        ("gpt-5.2", {"reasoning_effort": "none"}, True),
        ("gpt-4o-mini", {}, True),
    ],
)
def test_a_reasoning_model_gets_no_sampling_but_without_reasoning(
    model: str, fields: dict[str, str], kept: bool
) -> None:
    built = adapter().chat_request(request(temperature=0.2, top_p=0.9, **fields), target(model=model), stream=False)
    body = orjson.loads(built.request.body)
    assert ("temperature" in body and "top_p" in body) is kept
    assert built.dropped == ([] if kept else ["temperature", "top_p"])


@pytest.mark.parametrize("model", ["gpt-oss-120b", "openai/gpt-oss-20b"])
@pytest.mark.parametrize("base_url", ["http://vllm.internal:8000/v1", "https://api.groq.com/openai/v1"])
def test_gpt_oss_takes_its_effort_and_sampling_as_the_servers_that_host_it_do(model: str, base_url: str) -> None:
    """gpt-oss, which OpenAI's API does not serve, runs on compatible servers (vLLM, Groq, Together) that take its
    `reasoning_effort` (low, medium, high: its model card) and `temperature` and `top_p` as any model's: the sampling
    was left out and named (`temperature`, `top_p`), as for OpenAI's own reasoning models, which refuse it."""
    req = request(temperature=0.7, top_p=0.9, reasoning_effort="high")
    built = adapter().chat_request(req, target(base_url, model), stream=False)
    body = orjson.loads(built.request.body)
    assert (body["temperature"], body["top_p"], body["reasoning_effort"]) == (0.7, 0.9, "high")
    assert built.dropped == []


def test_a_reasoning_models_default_temperature_is_left_out_without_a_word() -> None:
    built = adapter().chat_request(request(temperature=1), target(model="o4-mini"), stream=False)
    assert "temperature" not in orjson.loads(built.request.body) and built.dropped == []


@pytest.mark.parametrize(
    "base_url", ["https://api.openai.com/v1", "http://localhost:8000/v1"], ids=["openai", "compatible"]
)
def test_a_messages_prefill_is_named_where_chat_completions_cannot_continue_it(base_url: str) -> None:
    """Chat Completions has no continuing of an assistant message: a Messages client's prefill goes as an earlier
    turn, which the answer follows rather than continues, and is named (it was not: found by review)."""
    messages = [{"role": "user", "content": "JSON please"}, {"role": "assistant", "content": "{"}]
    req = to_chat_request(MessagesRequest.model_validate({"model": "m", "max_tokens": 9, "messages": messages}))[0]
    built = adapter().chat_request(req, target(base_url), stream=False)
    assert built.dropped == ["messages.prefill"]
    assert orjson.loads(built.request.body)["messages"][-1] == {"role": "assistant", "content": "{"}
    plain = adapter().chat_request(request(messages=messages), target(base_url), stream=False)
    assert plain.dropped == []  # (a Chat Completions client's own last assistant message asks nothing of the kind)


VLLM = "http://vllm.internal:8000/v1"


@pytest.mark.parametrize(
    ("options", "base_url", "asked"),
    [
        ({}, VLLM, True),
        ({"stream_usage": False}, VLLM, False),
        ({"stream_usage": False}, "https://api.openai.com/v1", False),
        ({"profile": "mistral"}, VLLM, False),  # (Mistral refuses it)
        ({"profile": "mistral", "stream_usage": True}, VLLM, True),
    ],
)
def test_stream_usage_false_sends_no_stream_options(options: dict[str, object], base_url: str, asked: bool) -> None:
    """A compatible server that refuses `stream_options` (vLLM with extra fields forbidden: 400 "Extra inputs are not
    permitted") could not stream at all, through any API: the gateway always asked for the usage. `stream_usage:
    false` on the provider leaves it out (the stream is then estimated, as one without usage is)."""
    body = orjson.loads(adapter(**options).chat_request(request(), target(base_url), stream=True).request.body)
    assert body["stream"] is True and ("stream_options" in body) is asked
    if asked:
        assert body["stream_options"] == {"include_usage": True}


STREAM_OPTIONS = {"include_usage": False, "include_obfuscation": False, "continuous_usage_stats": True}
NAMED = ["stream_options.include_obfuscation", "stream_options.continuous_usage_stats"]


@pytest.mark.parametrize(
    ("options", "base_url", "sent", "dropped"),
    [
        # OpenAI's own: its `include_obfuscation` goes, a member it does not define is named.
        ({}, "https://api.openai.com/v1", {"include_obfuscation": False}, ["stream_options.continuous_usage_stats"]),
        # A server the gateway knows no better (vLLM's `continuous_usage_stats`): every member, as sent.
        ({}, VLLM, {"include_obfuscation": False, "continuous_usage_stats": True}, []),
        # An API that documents `include_usage` alone (DeepSeek's, Gemini's endpoint): the others named.
        ({"profile": "deepseek"}, VLLM, {}, NAMED),
        ({"profile": "google"}, VLLM, {}, NAMED),
        # One that refuses `stream_options` (Mistral's, `stream_usage: false`): none of it goes, the client's named.
        ({"profile": "mistral"}, VLLM, None, NAMED),
        ({"stream_usage": False}, VLLM, None, NAMED),
    ],
)
def test_the_clients_stream_options_go_beside_the_usage_the_gateway_asks_for(
    options: dict[str, object], base_url: str, sent: dict[str, object] | None, dropped: list[str]
) -> None:
    """The gateway wrote its own `{"include_usage": true}` in place of the client's `stream_options`: OpenAI never
    got `include_obfuscation: false` (and padded every delta the client asked it not to), and nothing named it (found
    by review). The client's members go beside the usage where the API takes them, and are named where it does not;
    the usage is asked for whatever the client's `include_usage` (the stream is metered from it)."""
    req = request(stream=True, stream_options=STREAM_OPTIONS)
    built = adapter(**options).chat_request(req, target(base_url), stream=True)
    body = orjson.loads(built.request.body)
    assert body.get("stream_options") == (None if sent is None else {"include_usage": True, **sent})
    assert built.dropped == dropped


def test_a_stream_usage_that_is_not_a_boolean_is_refused_at_start_up() -> None:
    assert OpenAIAdapter.option_problem("stream_usage", "no") == "true or false (unquoted), not 'no'"
    assert OpenAIAdapter.option_problem("stream_usage", False) is None


def test_a_refused_stream_options_names_the_option_that_leaves_it_out() -> None:
    """vLLM's 400 named `stream_options`, which the client never sent: the error now says what to set."""
    detail = "[{'type': 'extra_forbidden', 'loc': ('body', 'stream_options'), 'msg': 'Extra inputs are not permitted'}]"
    body = orjson.dumps({"object": "error", "message": detail, "type": "BadRequestError", "param": None, "code": 400})
    error = adapter().error(400, body, {})
    assert error.said is not None and error.said.startswith(detail)
    assert "set `stream_usage: false` on provider 'p'" in error.said
    assert "stream_usage" not in (adapter().error(400, (FIXTURES / "error-429.json").read_bytes(), {}).said or "")


USAGE = {"prompt_tokens": 50, "completion_tokens": 10, "total_tokens": 60}


def answer(**head: object) -> dict[str, object]:
    """A compatible server's whole answer, its head as given (`...` leaves a member out)."""
    message = {"role": "assistant", "content": "Hello"}
    body = {"id": "c1", "object": "chat.completion", "created": 1, "model": "llama", "usage": USAGE}
    body |= {"choices": [{"index": 0, "message": message, "finish_reason": "stop"}]}
    body |= head
    return {name: value for name, value in body.items() if value is not ...}


def stream_of(*payloads: dict[str, object]) -> bytes:
    return b"".join(b"data: " + orjson.dumps(p) + b"\n\n" for p in payloads) + b"data: [DONE]\n\n"


def fed(a: OpenAIAdapter, raw: bytes, base_url: str = VLLM, model: str = "qwen3") -> tuple[list[object], object]:
    parser = a.stream_parser(request(), target(base_url, model))
    decoder = a.frame_decoder()
    chunks = [c for e in decoder.feed(raw) + decoder.finish() for c in parser.feed(e)]
    return chunks, parser


def test_a_compatible_servers_reasoning_under_its_new_name_is_read() -> None:
    """vLLM 0.17+ (and Ollama, Groq, OpenRouter) name the reasoning `reasoning`, not `reasoning_content`: it was
    left as an unknown member, so a Messages client got no thinking block and a Responses client an empty summary,
    though its tokens were billed. It is the answer's (and each delta's) `reasoning_content` now."""
    body = answer()
    body["choices"][0]["message"]["reasoning"] = "2+2=4"  # type: ignore[index]
    message = adapter().chat_response(orjson.dumps(body), request(), target(VLLM, "qwen3")).choices[0].message
    assert message.reasoning_content == "2+2=4" and "reasoning" not in (message.model_extra or {})
    chunk = {"id": "c1", "object": "chat.completion.chunk", "created": 1, "model": "qwen3"}
    raw = stream_of(
        {**chunk, "choices": [{"index": 0, "delta": {"role": "assistant", "content": ""}}]},
        {**chunk, "choices": [{"index": 0, "delta": {"reasoning": "2+2"}}]},
        {**chunk, "choices": [{"index": 0, "delta": {"reasoning": "=4"}}]},
        {**chunk, "choices": [{"index": 0, "delta": {"content": "4"}, "finish_reason": "stop"}]},
    )
    chunks, _ = fed(adapter(), raw)
    deltas = [c.choices[0].delta for c in chunks]  # type: ignore[attr-defined]
    assert "".join(d.reasoning_content or "" for d in deltas) == "2+2=4"
    assert not any("reasoning" in (d.model_extra or {}) for d in deltas)
    # A server that sends both keeps its own `reasoning_content` (and its `reasoning`); a null one is no reasoning.
    body["choices"][0]["message"] |= {"reasoning_content": "mine", "reasoning": "theirs"}  # type: ignore[index]
    message = adapter().chat_response(orjson.dumps(body), request(), target(VLLM)).choices[0].message
    assert message.reasoning_content == "mine" and (message.model_extra or {})["reasoning"] == "theirs"
    body["choices"][0]["message"] = {"role": "assistant", "content": "4", "reasoning": None}  # type: ignore[index]
    message = adapter().chat_response(orjson.dumps(body), request(), target(VLLM)).choices[0].message
    assert message.reasoning_content is None and not message.model_extra


@pytest.mark.parametrize(
    ("member", "sent", "read"),
    [
        ("id", ..., "made"),
        ("id", None, "made"),
        ("created", ..., "now"),
        ("created", 1733000000.5, 1733000000),
        ("model", ..., "llama-3.1-8b"),
    ],
    ids=["no-id", "null-id", "no-created", "float-created", "no-model"],
)
def test_an_answer_missing_its_head_gets_one_and_keeps_its_usage(member: str, sent: object, read: object) -> None:
    """A compatible server's answer without `id`, `created` or `model` (or `created` as a float) was a 502 "malformed
    answer (ValidationError)", its usage unbilled: it gets an id, the time, the deployment's model (`llama-3.1-8b`,
    where the server said `llama`), whole or streamed (one head for every chunk of a stream)."""
    before = int(time.time())
    body = answer(**{member: sent})
    completion = adapter().chat_response(orjson.dumps(body), request(), target(VLLM, "llama-3.1-8b"))
    assert completion.usage is not None and completion.usage.prompt_tokens == 50
    value = getattr(completion, member)
    if read == "made":
        assert re.fullmatch(r"chatcmpl-[0-9a-f]{24}", value)
    elif read == "now":
        assert before <= value <= time.time() + 1
    else:
        assert value == read
    chunk = {name: value for name, value in body.items() if name not in ("choices", "usage")}
    chunk["object"] = "chat.completion.chunk"
    raw = stream_of(
        {**chunk, "choices": [{"index": 0, "delta": {"role": "assistant", "content": "Hel"}}]},
        {**chunk, "choices": [{"index": 0, "delta": {"content": "lo"}, "finish_reason": "stop"}]},
        {**chunk, "choices": [], "usage": USAGE},
    )
    chunks, parser = fed(adapter(), raw, model="llama-3.1-8b")
    heads = {(c.id, c.created, c.model) for c in chunks}  # type: ignore[attr-defined]
    assert len(chunks) == 3 and len(heads) == 1 and parser.usage.prompt_tokens == 50  # type: ignore[attr-defined]
    assert read in ("made", "now") or getattr(chunks[0], member) == read


def test_a_malformed_answer_carries_the_usage_the_provider_billed() -> None:
    """An answer that does not read even with its head filled in is the provider's malformed answer (retryable), but
    it was billed: the error carries its usage, charged on the request's line as Bedrock's malformed answers are."""
    body = answer()
    body["choices"][0]["message"]["role"] = "user"  # type: ignore[index]
    with pytest.raises(UpstreamError) as whole:
        adapter().chat_response(orjson.dumps(body), request(), target(VLLM))
    assert whole.value.retryable and whole.value.message == "the provider sent a malformed answer (ValidationError)"
    assert whole.value.billed is not None and whole.value.billed.completion_tokens == 10
    chunk = {"id": "c1", "object": "chat.completion.chunk", "created": 1, "model": "llama"}
    broken = {**chunk, "choices": [{"index": 0, "delta": {"role": "user"}}], "usage": USAGE}
    with pytest.raises(UpstreamError) as streamed:
        fed(adapter(), stream_of(broken))
    assert streamed.value.billed is not None and streamed.value.billed.prompt_tokens == 50
    with pytest.raises(UpstreamError) as unbilled:  # (no usage: nothing to charge but what the gateway saw)
        adapter().chat_response(orjson.dumps({**body, "usage": None}), request(), target(VLLM))
    assert unbilled.value.billed is None


@pytest.mark.parametrize("store", [False, True])
def test_encrypted_reasoning_goes_back_to_the_deployment_that_issued_it_alone(store: bool) -> None:
    """A reasoning item's blob the gateway marked with the deployment that issued it goes to that deployment as the
    provider issued it; another deployment's (another organisation's: its own provider, or another base URL) is left
    out and named, as OpenAI would refuse the request for it; a blob marked by no one goes as the client sent it."""
    from handler.ports import RESPONSES_API, NativeCall
    from handler.wire import issued

    here = target()
    others = [Target("q", "openai", "gpt-4o-mini", "global", here.base_url), target("https://eu.api.openai.com/v1")]
    assert len({here.issuer, *(other.issuer for other in others)}) == 3
    mine = {"type": "reasoning", "summary": [], "encrypted_content": issued(here.issuer, "gAAAAABmine")}
    theirs = [{"type": "reasoning", "summary": [], "encrypted_content": issued(o.issuer, "gAAAAABo")} for o in others]
    unmarked = {"type": "reasoning", "summary": [], "encrypted_content": "gAAAAABclients"}
    items = [{"role": "user", "content": "hi"}, mine, *theirs, unmarked]
    call = NativeCall(RESPONSES_API, {"model": "m", "input": items, "store": store})
    built = adapter(responses_store=True).native_request(call, here, stream=False, output_limit=None)
    sent = orjson.loads(built.request.body)["input"]
    assert [item.get("encrypted_content") for item in sent] == [None, "gAAAAABmine", "gAAAAABclients"]
    assert built.dropped == ["input[reasoning].encrypted_content"]
    assert call.body["input"][1] == mine and mine["encrypted_content"] != "gAAAAABmine"  # the client's, as it was


@pytest.mark.parametrize("keeps", [False, True], ids=["stores-nothing", "keeps-answers"])
def test_a_provider_that_keeps_answers_is_sent_only_the_item_ids_the_key_may_see(keeps: bool) -> None:
    """A provider that stores the request reads an input item sent with its id from the account's store, where every
    key's answers are: another key's reasoning item sent back by its id (as the Agents SDK sends a stored turn) went
    as it came, and the turn ran on that key's hidden reasoning (found by review). Only the ids the key may see
    (`NativeCall.visible`) go; any other item goes as to a provider that stores nothing: without its id, a reasoning
    item without its `encrypted_content` left out and named. With `store: false` no id goes."""
    from handler.ports import RESPONSES_API, NativeCall

    items = [
        {"type": "reasoning", "id": "rs_mine", "summary": []},
        {"type": "message", "id": "msg_mine", "role": "assistant", "content": [{"type": "output_text", "text": "a"}]},
        {"type": "reasoning", "id": "rs_theirs", "summary": []},
        {"type": "function_call", "id": "fc_theirs", "call_id": "call_1", "name": "f", "arguments": "{}"},
        {"type": "web_search_call", "id": "ws_theirs", "status": "completed", "action": {"type": "search"}},
        {"type": "function_call_output", "call_id": "call_1", "output": "18C"},
        {"role": "user", "content": "hi", "id": ["not", "a", "string"]},
    ]
    visible = frozenset({"rs_mine", "msg_mine"})
    for store in (True, False):
        call = NativeCall(RESPONSES_API, {"model": "m", "input": items, "store": store}, visible=visible)
        built = adapter(responses_store=keeps).native_request(call, target(), stream=False, output_limit=None)
        sent = orjson.loads(built.request.body)["input"]
        mine = [("reasoning", "rs_mine"), ("message", "msg_mine")] if keeps and store else [("message", None)]
        others = ["function_call", "web_search_call", "function_call_output", "user"]
        assert [(item.get("type") or item["role"], item.get("id")) for item in sent] == [
            *mine,
            *((kind, None) for kind in others),
        ]
        assert built.dropped == ["input[reasoning]"]


# A plain request's body, written directly (`plain_body`), is the body the translation makes of it: each shape below
# goes to each OpenAI-compatible adapter and profile with the direct path on and off, and what goes upstream (URL,
# headers, body to the byte, what is named dropped) must not differ.
PLAIN_SHAPES: dict[str, dict[str, object]] = {
    "one turn": {},
    "a conversation": {
        "messages": [
            {"role": "system", "content": "Be brief."},
            {"role": "user", "content": "hi"},
            {"role": "assistant", "content": ""},
            {"role": "user", "content": "and now? \u00e9\u4e2d\U0001f600"},
        ]
    },
    "max_tokens": {"max_tokens": 16},
    "max_completion_tokens": {"max_completion_tokens": 16},
    "both caps": {"max_completion_tokens": 16, "max_tokens": 8},
    "a cap written null": {"max_tokens": None},
    "stream": {"stream": True},
    "stream false": {"stream": False, "max_tokens": 4},
}
TRANSLATED_SHAPES: dict[str, dict[str, object]] = {
    "temperature": {"temperature": 0.5},
    "a tool": {"tools": [{"type": "function", "function": {"name": "f"}}]},
    "a user": {"user": "u1"},
    "n": {"n": 2},
    "a name": {"messages": [{"role": "user", "content": "hi", "name": "bob"}]},
    "content parts": {"messages": [{"role": "user", "content": [{"type": "text", "text": "hi"}]}]},
    "null content": {"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": None}]},
    "a developer": {"messages": [{"role": "developer", "content": "Be brief."}, {"role": "user", "content": "hi"}]},
    "reasoning_effort": {"reasoning_effort": "low"},
    "an unknown field": {"foo": 1},
    "earlier reasoning": {"messages": [{"role": "assistant", "content": "a", "reasoning_content": "r"}]},
    "stream_options": {"stream": True, "stream_options": {"include_usage": True}},
}


def openai_family() -> list[tuple[str, OpenAIAdapter, Target]]:
    """Each OpenAI-compatible adapter, with each profile where it takes one, and a reasoning model of each."""
    from adapters.providers.azure import AzureOpenAIAdapter
    from adapters.providers.deepseek import DeepSeekAdapter
    from adapters.providers.mistral import MistralAdapter
    from adapters.providers.openai.profiles import PROFILES

    cases: list[tuple[str, OpenAIAdapter, Target]] = []
    for name in [None, *PROFILES]:
        options = {} if name is None else {"profile": name}
        for model in ("gpt-4o-mini", "o3-mini"):
            cases.append((f"openai {name} {model}", adapter(**options), target(model=model)))
        cases.append((f"compatible {name}", adapter(**options), target("http://vllm.internal:8000/v1", "llama")))
    cases.append(
        ("reasoning: true", adapter(), Target("p", "openai", "custom", "global", "http://x/v1", {"reasoning": True}))
    )
    azure = AzureOpenAIAdapter("azure", "secret", {"base_url": "https://r.openai.azure.com"})
    cases.append(("azure", azure, Target("azure", "azure", "prod", "eastus", azure.base_url("eastus", None))))
    for cls, model in ((DeepSeekAdapter, "deepseek-chat"), (MistralAdapter, "mistral-large-latest")):
        other = cls(cls.type_name, "key", {})
        cases.append(
            (
                cls.type_name,
                other,
                Target(cls.type_name, cls.type_name, model, "global", other.base_url("global", None)),
            )
        )
    return cases


@pytest.mark.parametrize("shape", [*PLAIN_SHAPES, *TRANSLATED_SHAPES])
def test_a_plain_body_is_the_translated_body(shape: str, monkeypatch: pytest.MonkeyPatch) -> None:
    from adapters.providers.openai import adapter as module

    fields = PLAIN_SHAPES.get(shape, TRANSLATED_SHAPES.get(shape))
    assert fields is not None
    taken = 0
    for case, a, t in openai_family():
        for capped in (False, True):
            sent: list[tuple[object, ...]] = []
            for direct in (True, False):
                req = request(**fields)
                if capped:  # (as the output cap of a budgeted request sets it: `OutputCap.apply`)
                    req.max_completion_tokens = 12
                if not direct:
                    monkeypatch.setattr(module, "plain_body", lambda *args: None)
                elif module.plain_body(req, t, a.profile(t)) is not None:
                    taken += 1
                stream = bool(req.stream)
                built = a.chat_request(req, t, stream=stream)
                sent.append((built.request.url, built.request.headers, built.request.body, built.dropped))
                monkeypatch.undo()
            assert sent[0] == sent[1], (case, capped)
    assert (taken > 0) == (shape in PLAIN_SHAPES)


def test_a_plain_body_is_written_only_where_the_profile_and_model_leave_it_as_it_is() -> None:
    from adapters.providers.openai.adapter import plain_body

    req = request(max_tokens=16)
    assert plain_body(req, target(), adapter().profile(target())) == {
        "model": "gpt-4o-mini",
        "messages": [{"role": "user", "content": "hi"}],
        "max_tokens": 16,
    }
    for refused in ("deepseek", "mistral", "together", "ollama"):  # (each renames the cap)
        assert plain_body(req, target(), adapter(profile=refused).profile(target())) is None
    assert plain_body(req, target(model="o3-mini"), adapter().profile(target())) is None  # (its cap is renamed)
    prefilled, _ = to_chat_request(
        MessagesRequest.model_validate(
            {
                "model": "m",
                "max_tokens": 8,
                "messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "{"}],
            }
        )
    )
    assert plain_body(prefilled, target(), adapter().profile(target())) is None


@pytest.mark.parametrize("count", [10.7, "12", True], ids=["fraction", "numeral", "bool"])
@pytest.mark.parametrize(
    "changed",
    [
        lambda count: {"input_tokens": count},
        lambda count: {"output_tokens": count},
        lambda count: {"input_tokens_details": {"cached_tokens": count}},
        lambda count: {"output_tokens_details": {"reasoning_tokens": count}},
    ],
    ids=["input", "output", "cached", "reasoning"],
)
def test_a_responses_usage_count_that_is_no_plain_integer_is_unreadable_not_truncated(
    changed: Any, count: object
) -> None:
    """docs/costs.md: a usage the gateway cannot read, such as `10.7`, is no usage (`=invalid_response`, the
    reserved worst case). The Responses reader applied `int()`: `input_tokens: 10.7` was charged as 10 tokens, `"12"`
    as 12 and `true` as 1, as the provider's counts (found by review). Whole and streamed."""
    from adapters.providers.openai.responses import ResponsesMeter, answer_usage

    usage = {"input_tokens": 12, "output_tokens": 9, "total_tokens": 21, **changed(count)}
    response = {"id": "resp_1", "object": "response", "status": "completed", "output": [], "usage": usage}
    with pytest.raises(ValueError):  # (the pipeline's malformed answer: `wire.SHAPE_ERRORS`)
        answer_usage(response)
    completed = {"type": "response.completed", "sequence_number": 1, "response": response}
    with pytest.raises(ValueError):
        ResponsesMeter().feed(StreamEvent("response.completed", orjson.dumps(completed)))


@pytest.mark.parametrize("count", [10.7, "12", True], ids=["fraction", "numeral", "bool"])
@pytest.mark.parametrize("details", ["prompt_tokens_details", "completion_tokens_details"])
def test_a_chat_usages_audio_count_that_is_no_plain_integer_is_a_malformed_answer(details: str, count: object) -> None:
    """Audio tokens, priced apart, were read as 0 where not an integer: the answer is malformed instead."""
    answer = orjson.loads((FIXTURES / "chat-response.json").read_bytes())
    answer["usage"][details] = {"audio_tokens": count}
    with pytest.raises(ValueError):  # (the pipeline's malformed answer: `wire.SHAPE_ERRORS`)
        adapter().chat_response(orjson.dumps(answer), request(), target())


@pytest.mark.parametrize(
    "where",
    [
        ("prompt_tokens_details", "cached_tokens"),
        ("prompt_tokens_details", "cache_write_tokens"),
        ("prompt_tokens_details", "audio_tokens"),
        ("completion_tokens_details", "reasoning_tokens"),
        ("completion_tokens_details", "audio_tokens"),
        (None, "total_tokens"),
    ],
    ids=lambda where: ".".join(name for name in where if name),
)
def test_a_chat_usage_count_that_is_null_is_0_and_one_no_plain_integer_is_still_refused(
    where: tuple[str | None, str],
) -> None:
    """A null count is 0, as `wire.usage_count` reads it: an OpenAI-compatible server built on LiteLLM writes
    `"cached_tokens": null` (and `reasoning_tokens`, `audio_tokens`: null) for a count it has none of, and the
    strict counts refused it, a real answer taken for a malformed one and charged its worst case (found by
    review). `10.7`, `"12"` and `true` are refused still."""
    details, name = where
    for count, readable in ((None, True), (10.7, False), ("12", False), (True, False)):
        answer = orjson.loads((FIXTURES / "chat-response.json").read_bytes())
        if details is None:
            answer["usage"][name] = count
        else:
            answer["usage"][details] = {name: count, "text_tokens": 28, "image_tokens": None}
        if not readable:
            with pytest.raises((UpstreamError, ValueError)):  # (a malformed answer, or one of `wire.SHAPE_ERRORS`)
                adapter().chat_response(orjson.dumps(answer), request(), target())
            continue
        usage = adapter().chat_response(orjson.dumps(answer), request(), target()).usage
        assert usage is not None
        if name == "audio_tokens":
            read = usage.audio_prompt_tokens if details == "prompt_tokens_details" else usage.audio_completion_tokens
        else:
            read = getattr(usage, name)
        assert (read, usage.prompt_tokens, usage.completion_tokens) == (0, 1117, 46)


@pytest.mark.parametrize("count", [10.7, "12", True], ids=["fraction", "numeral", "bool"])
def test_an_embeddings_usage_count_that_is_no_plain_integer_is_a_malformed_answer(count: object) -> None:
    """An embeddings answer's `prompt_tokens` of `"12"` was charged as 12, `true` as 1."""
    answer = {"object": "list", "data": [{"object": "embedding", "index": 0, "embedding": [0.1]}], "model": "e"}
    embeddings = EmbeddingsRequest.model_validate({"model": "e", "input": "hi"})
    said = {**answer, "usage": {"prompt_tokens": count, "total_tokens": 12}}
    with pytest.raises(UpstreamError) as failure:
        adapter().embeddings_response(orjson.dumps(said), embeddings, target())
    assert failure.value.outcome == "invalid_response"
    read = adapter().embeddings_response(orjson.dumps({**answer, "usage": {"prompt_tokens": 12}}), embeddings, target())
    assert read.usage.prompt_tokens == 12
    nulled = {**answer, "usage": {"prompt_tokens": 12, "total_tokens": None}}  # (a null count is 0, as every reader's)
    assert adapter().embeddings_response(orjson.dumps(nulled), embeddings, target()).usage.total_tokens == 0


def test_an_embeddings_batch_answered_without_its_count_leaves_the_whole_answer_without_usage() -> None:
    """`prompt_tokens: null` (or left out) is no usage, as no `usage` is: the input is estimated. A request sent in
    batches is answered without usage where one batch was (its usage summed with that batch's as 0, that batch's
    input was free)."""
    answer = {"object": "list", "data": [{"object": "embedding", "index": 0, "embedding": [0.1]}], "model": "e"}
    embeddings = EmbeddingsRequest.model_validate({"model": "e", "input": "hi"})
    counted = adapter().embeddings_response(
        orjson.dumps({**answer, "usage": {"prompt_tokens": 12}}), embeddings, target()
    )
    for usage in ({"prompt_tokens": None, "total_tokens": None}, {"total_tokens": 12}, {}):
        uncounted = adapter().embeddings_response(orjson.dumps({**answer, "usage": usage}), embeddings, target())
        assert "usage" not in uncounted.model_fields_set, usage
        assert "usage" not in EmbeddingsResponse.joined([counted, uncounted]).model_fields_set
    joined = EmbeddingsResponse.joined([counted, counted])
    assert "usage" in joined.model_fields_set and joined.usage.prompt_tokens == 24


DOT = (
    "data:image/png;base64,"
    "iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAYAAAAfFcSJAAAADUlEQVR42mP8z8BQDwAEhQGAhKmMIQAAAABJRU5ErkJggg=="
)
# Two calls answered in one turn, the first with an image a tool read (as Claude Code's Read returns it), then the
# user's next words.
IMAGE_CALLS = [
    {"id": "call_1", "type": "function", "function": {"name": "Read", "arguments": '{"file_path":"dot.png"}'}},
    {"id": "call_2", "type": "function", "function": {"name": "Bash", "arguments": '{"command":"date"}'}},
]
IMAGE_RESULTS: list[dict[str, Any]] = [
    {"role": "user", "content": "Look, and the time?"},
    {"role": "assistant", "content": None, "tool_calls": IMAGE_CALLS},
    {"role": "tool", "tool_call_id": "call_1", "content": [{"type": "image_url", "image_url": {"url": DOT}}]},
    {"role": "tool", "tool_call_id": "call_2", "content": "12:00"},
    {"role": "user", "content": "Well?"},
]


@pytest.mark.parametrize("profile", ["openai", "compatible", "google"])
def test_an_image_a_tool_returned_follows_the_tool_messages_in_a_user_message(profile: str) -> None:
    """A tool message takes text alone (OpenAI: "Image URLs are only allowed for messages with role 'user'"): the
    image was left out and named (`messages.tool.image_url`), the model sent `{"role": "tool", "content": ""}`. It
    now goes in a user message right after the turn's tool messages, headed by a text naming the call."""
    built = adapter(profile=profile).chat_request(request(messages=IMAGE_RESULTS), target(), stream=False)
    messages = orjson.loads(built.request.body)["messages"]
    assert built.dropped == []
    assert [m["role"] for m in messages] == ["user", "assistant", "tool", "tool", "user", "user"]
    assert messages[2] == {"role": "tool", "tool_call_id": "call_1", "content": ""}
    assert messages[4] == {
        "role": "user",
        "content": [
            {"type": "text", "text": "[What the tool call Read (call_1) returned besides its text:]"},
            {"type": "image_url", "image_url": {"url": DOT}},
        ],
    }
    assert messages[5] == {"role": "user", "content": "Well?"}


def test_an_image_a_tool_returned_is_named_where_no_user_message_can_carry_it() -> None:
    """DeepSeek's API takes no image at all: there the image is left out, named, as before."""
    built = adapter(profile="deepseek").chat_request(request(messages=IMAGE_RESULTS), target(), stream=False)
    messages = orjson.loads(built.request.body)["messages"]
    assert built.dropped == ["messages.tool.image_url"]
    assert [m["role"] for m in messages] == ["user", "assistant", "tool", "tool", "user"]
    assert messages[2]["content"] == ""


def test_an_api_that_takes_no_user_message_after_a_tool_message_gets_an_assistant_one_between() -> None:
    """Mistral refuses a user message right after a tool message ("Unexpected role 'user' after role 'tool'"): the
    image a tool returned was left out there, named, and a client's own user message after its tool results sent as
    it came, for Mistral to refuse the whole request (review provrev). A short assistant message goes between: the
    image and the client's message reach the model, nothing named."""
    built = adapter(profile="mistral").chat_request(request(messages=IMAGE_RESULTS), target(), stream=False)
    messages = orjson.loads(built.request.body)["messages"]
    assert built.dropped == []
    assert [m["role"] for m in messages] == ["user", "assistant", "tool", "tool", "assistant", "user", "user"]
    assert messages[4] == {"role": "assistant", "content": "(tool results received)"}
    assert messages[5]["content"][1] == {"type": "image_url", "image_url": {"url": DOT}}
    assert messages[6] == {"role": "user", "content": "Well?"}


RECORDED = orjson.loads((FIXTURES / "chat-response.json").read_bytes())
BENCH = COMPLETION  # (the benchmark's upstream answer)
# Plain answers: their members in another order, defaults left out, text JSON escapes, more choices, no choices.
PLAIN = {
    "recorded": RECORDED,
    "bench": BENCH,
    "defaults-left-out": {
        "id": "c",
        "created": 1,
        "model": "m",
        "choices": [{"message": {"content": "hi"}}],
        "usage": {"completion_tokens": 1, "prompt_tokens": 2},
    },
    "escapes-and-choices": {
        **BENCH,
        "choices": [
            {
                "finish_reason": "length",
                "message": {"content": 'a "quote"\n\t\\ \u0001 é 日本 😀', "role": "assistant"},
            },
            {"index": 1, "message": {"content": None, "refusal": "no"}, "finish_reason": None, "logprobs": None},
        ],
        "service_tier": None,
        "system_fingerprint": None,
    },
    "no-choices": {**BENCH, "choices": []},
    "details-null": {
        **BENCH,
        "usage": {**BENCH["usage"], "prompt_tokens_details": None, "completion_tokens_details": {"audio_tokens": 3}},
    },
}
# Answers the model reads: each reads as it always did.
NOT_PLAIN = {
    "logprobs": {**BENCH, "choices": [{**BENCH["choices"][0], "logprobs": {"content": []}}]},
    "tool-calls": {
        **BENCH,
        "choices": [
            {
                "index": 0,
                "message": {
                    "role": "assistant",
                    "content": None,
                    "tool_calls": [{"id": "call_1", "type": "function", "function": {"name": "f", "arguments": "{}"}}],
                },
                "finish_reason": "tool_calls",
            }
        ],
    },
    "citations": {
        **BENCH,
        "choices": [
            {
                **BENCH["choices"][0],
                "message": {
                    "role": "assistant",
                    "content": "See x.",
                    "annotations": [{"type": "url_citation", "url_citation": {"url": "https://x", "start_index": 0}}],
                },
            }
        ],
    },
    "reasoning": {**BENCH, "choices": [{**BENCH["choices"][0], "message": {"content": "a", "reasoning": "b"}}]},
    "their-finish": {**BENCH, "choices": [{**BENCH["choices"][0], "finish_reason": "model_length"}]},
    "no-usage": {key: value for key, value in BENCH.items() if key != "usage"},
    "usage-uncounted": {**BENCH, "usage": {"prompt_tokens": 11, "completion_tokens": None}},
    "deepseek-cache-hits": {**BENCH, "usage": {**BENCH["usage"], "prompt_cache_hit_tokens": 5}},
    "float-created": {**BENCH, "created": 1764000000.0},
    "extra-member": {**BENCH, "prompt_filter_results": []},
}


@pytest.mark.parametrize("answer", PLAIN.values(), ids=PLAIN.keys())
def test_a_plain_answer_is_written_back_as_its_model_writes_it_with_the_same_usage(answer: dict[str, Any]) -> None:
    """The chat route's answer kept as parsed (`PlainCompletion`) is the same JSON, byte for byte, as the validated
    model's (`answer_json`), with the same usage, the same text counted, and the same service tier read."""
    raw = orjson.dumps(answer)
    plain, served = adapter().plain_answer(raw, request(), target())
    model = adapter().chat_response(raw, request(), target())
    assert isinstance(plain, PlainCompletion) and served is None
    assert plain.json() == answer_json(model)
    assert plain.usage == model.usage
    assert plain.chars() == sum(len(c.message.content or "") + len(c.message.refusal or "") for c in model.choices)
    assert plain.body.get("service_tier") == (model.model_extra or {}).get("service_tier")


@pytest.mark.parametrize("answer", NOT_PLAIN.values(), ids=NOT_PLAIN.keys())
def test_an_answer_of_any_other_shape_is_read_as_the_model(answer: dict[str, Any]) -> None:
    """Log probabilities and citations (redacted with the text), tool calls, reasoning, another API's finish reason,
    usage missing or uncounted or DeepSeek's, a float `created`, an unknown member: the model's reading, or refusal."""
    raw = orjson.dumps(answer)
    try:
        model = adapter().chat_response(raw, request(), target())
    except UpstreamError as refused:
        with pytest.raises(UpstreamError) as again:
            adapter().plain_answer(raw, request(), target())
        assert str(again.value) == str(refused)
        return
    answered, _ = adapter().plain_answer(raw, request(), target())
    assert isinstance(answered, ChatCompletion) and answered == model


def test_an_answer_whose_calls_the_adapter_renames_is_read_as_the_model() -> None:
    tools = [{"type": "function", "function": {"name": "a.b", "parameters": {"type": "object"}}}]
    answered, _ = adapter().plain_answer(orjson.dumps(BENCH), request(tools=tools), target())
    assert isinstance(answered, ChatCompletion)
