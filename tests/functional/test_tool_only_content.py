"""A tool-only answer from Mistral (or a compatible server that writes `content: ""` beside its calls, as Ollama's)
reached an OpenAI SDK client with `content == ""`, whole and streamed, where OpenAI's has `content: null` (and,
streamed, opens a call with `null`): the SDK's `chat.completions.stream(...)` fired `content.delta` and finished with
`content == ""`. Found by review."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import httpx
import openai
import orjson
import pytest
from pydantic import BaseModel

from adapters.providers.openai.adapter import OpenAIStreamParser
from adapters.providers.registry import REGISTRY
from handler.config import parse_config
from handler.wire import StreamEvent
from tests.fakes import mistral as fake
from tests.functional.conftest import Running, serve_gateway
from tests.support.inprocess import serve
from tests.support.scripted import SCRIPTS, chunk, scripted_gateway, usage_chunk, whole
from tests.support.servers import ServerThread


class GetWeather(BaseModel):
    city: str


CALL = [{"role": "user", "content": 'CALL GetWeather {"city":"Oslo"}'}]


@pytest.fixture(scope="module")
def mistral(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Running]:
    app = fake.create_app()
    upstream = ServerThread(app).start()
    data = {
        "providers": {
            "mistral": {"type": "mistral", "api_key": "env:MISTRAL_API_KEY", "base_url": f"{upstream.url}/v1"}
        },
        "models": {
            "small": {
                "deployments": [{"provider": "mistral", "model": "mistral-small-latest"}],
                "price": {"input": 1, "output": 2},
            }
        },
    }
    store_url = f"sqlite:///{Path(tmp_path_factory.mktemp('mistral-tools')) / 'gateway.db'}"
    running, server = serve_gateway(
        parse_config(data, set(REGISTRY)), store_url, upstream, {"mistral": app}, {"MISTRAL_API_KEY": fake.API_KEY}
    )
    yield running
    server.stop()
    upstream.stop()


@pytest.fixture
def client(mistral: Running) -> Iterator[openai.OpenAI]:
    with openai.OpenAI(base_url=f"{mistral.url}/v1", api_key=mistral.mint(name="m"), max_retries=0) as sdk:
        yield sdk


def test_a_whole_tool_only_answer_has_null_content(client: openai.OpenAI) -> None:
    answer = client.chat.completions.create(
        model="small",
        messages=CALL,
        tools=[openai.pydantic_function_tool(GetWeather)],  # type: ignore[arg-type]
    )
    message = answer.choices[0].message
    assert message.tool_calls and answer.choices[0].finish_reason == "tool_calls"
    assert message.content is None, f"a tool-only answer's content is {message.content!r}, not null"


def test_the_stream_helper_finishes_a_tool_only_answer_with_null_content(client: openai.OpenAI) -> None:
    with client.chat.completions.stream(
        model="small",
        messages=CALL,
        tools=[openai.pydantic_function_tool(GetWeather)],  # type: ignore[arg-type]
    ) as stream:
        kinds = [event.type for event in stream]
        final = stream.get_final_completion()
    message = final.choices[0].message
    assert message.tool_calls and message.tool_calls[0].function.parsed_arguments == GetWeather(city="Oslo")
    assert "content.delta" not in kinds, kinds
    assert message.content is None, f"streamed, a tool-only answer's content is {message.content!r}, not null"


# An OpenAI-compatible server that writes a tool-only answer as Ollama's does (the scripted upstream of
# tests/support/scripted.py): opened `content: ""`, the call, closed with another `content: ""`.
CALL_DELTA = {
    "index": 0,
    "id": "call_1",
    "type": "function",
    "function": {"name": "GetWeather", "arguments": '{"city":"Oslo"}'},
}
COMPATIBLE = {"compatible-call": "compatible", "compatible-text": "compatible", "compatible-empty": "compatible"}


@pytest.fixture(scope="module")
def compatible(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Running]:
    yield from scripted_gateway(tmp_path_factory.mktemp("tool-only"), COMPATIBLE)


@pytest.fixture
def scripts() -> Iterator[None]:
    opening = chunk({"role": "assistant", "content": ""})
    SCRIPTS["compatible-call"] = {
        "stream": [opening, chunk({"tool_calls": [CALL_DELTA]}), chunk({"content": ""}, "tool_calls"), usage_chunk()],
        "whole": whole(
            {"role": "assistant", "content": "", "tool_calls": [{k: v for k, v in CALL_DELTA.items() if k != "index"}]},
            "tool_calls",
        ),
    }
    SCRIPTS["compatible-text"] = {
        "stream": [opening, chunk({"content": "Hel"}), chunk({"content": "lo"}, "stop"), usage_chunk()],
        "whole": whole({"role": "assistant", "content": "Hello"}),
    }
    SCRIPTS["compatible-empty"] = {"stream": [opening, chunk({}, "stop"), usage_chunk()], "whole": whole({})}
    yield
    for model in COMPATIBLE:
        SCRIPTS.pop(model, None)


@pytest.mark.usefixtures("scripts")
def test_a_compatible_servers_tool_only_answer_has_null_content_and_its_text_answers_are_kept(
    compatible: Running,
) -> None:
    with openai.OpenAI(base_url=f"{compatible.url}/v1", api_key=compatible.mint(name="c"), max_retries=0) as sdk:
        tools = [openai.pydantic_function_tool(GetWeather)]
        whole_call = sdk.chat.completions.create(model="compatible-call", messages=CALL, tools=tools)  # type: ignore[arg-type]
        assert whole_call.choices[0].message.content is None and whole_call.choices[0].message.tool_calls
        raw = sdk.chat.completions.create(model="compatible-call", messages=CALL, tools=tools, stream=True)  # type: ignore[arg-type]
        deltas = [c.choices[0].delta for c in raw if c.choices]
        assert deltas[0].role == "assistant" and deltas[0].content is None and not deltas[0].tool_calls
        assert all(delta.content is None for delta in deltas)
        with sdk.chat.completions.stream(model="compatible-call", messages=CALL, tools=tools) as stream:  # type: ignore[arg-type]
            kinds = [event.type for event in stream]
            final = stream.get_final_completion()
        assert "content.delta" not in kinds and final.choices[0].message.content is None
        assert final.choices[0].message.tool_calls[0].function.parsed_arguments == GetWeather(city="Oslo")  # type: ignore[index, union-attr]
        # A text answer's content is its text (opened `null`, as nothing was known of it yet), an empty one `""`, as
        # whole (and OpenAI's).
        for model, text in (("compatible-text", "Hello"), ("compatible-empty", "")):
            with sdk.chat.completions.stream(model=model, messages=CALL) as stream:
                first = next(iter(stream))
                final = stream.get_final_completion()
            assert final.choices[0].message.content == text, model
            assert first.type == "chunk" and first.chunk.choices[0].delta.role == "assistant"


def event(index: int, delta: dict[str, Any], finish: str | None = None) -> StreamEvent:
    choice = {"index": index, "delta": delta, "finish_reason": finish}
    body = {"id": "c", "object": "chat.completion.chunk", "created": 1, "model": "m", "choices": [choice]}
    return StreamEvent(None, orjson.dumps(body))


def test_each_choice_of_a_tool_only_answer_has_null_content() -> None:
    """With `n` > 1, a server that opens each choice in a chunk of its own (vLLM's): each choice is read apart (a hold
    of one opening at a time let the second choice's `""` through). Found by review (mergerev35)."""
    parser = OpenAIStreamParser("m")
    parser.opens_empty = True

    def call(name: str) -> dict[str, Any]:
        return {"tool_calls": [{"index": 0, "id": f"call_{name}", "type": "function", "function": {"name": name}}]}

    events = [
        event(0, {"role": "assistant", "content": ""}),
        event(1, {"role": "assistant", "content": ""}),
        event(0, {"content": "", **call("a")}),
        event(1, {"content": "", **call("b")}),
        event(0, {}, "tool_calls"),
        event(1, {}, "tool_calls"),
        StreamEvent(None, b"[DONE]"),
    ]
    chunks = [c for e in events for c in parser.feed(e)] + parser.finish()
    assert len(chunks) == 6  # (each as it came: none held)
    said = [orjson.loads(c.model_dump_json())["choices"][0]["delta"].get("content", "left out") for c in chunks]
    assert said == [None, None, None, None, "left out", "left out"]  # (written `null`)


class Thinking(httpx.AsyncByteStream):
    """A server that opens at once, then thinks (its reasoning not streamed) past the request's deadline."""

    async def __aiter__(self) -> AsyncIterator[bytes]:
        yield b"data: " + orjson.dumps(chunk({"role": "assistant", "content": ""})) + b"\n\n"
        await asyncio.sleep(3)
        yield b"data: " + orjson.dumps(chunk({"content": "Hi"}, "stop")) + b"\n\n"
        yield b"data: [DONE]\n\n"


async def test_a_stream_that_opened_and_stalls_past_its_deadline_is_a_begun_stream() -> None:
    """The opening, held until the next chunk said what came first, was no item of the stream: one that opened and
    then stalled in thought past its deadline was taken for an attempt never answered, a bare 504 charged its reserved
    worst case ($0.040009 for 4,000 tokens), where it is a 200 cut with its in-stream 504, charged its prompt; and the
    client's first byte waited the whole thinking time. Found by review (mergerev35)."""
    models = {"m": {"deployments": [{"provider": "openai", "model": "m-1"}], "price": {"input": 1, "output": 10}}}
    served = await serve(lambda request: httpx.Response(200, stream=Thinking()), models)
    try:
        answer = await served.http.post(
            "/v1/chat/completions",
            json={"model": "m", "stream": True, "max_tokens": 4000, "messages": [{"role": "user", "content": "x"}]},
            headers={"authorization": f"Bearer {served.key.key}", "x-gateway-deadline-ms": "600"},
        )
        [line] = await served.ledger()
    finally:
        await served.gateway.aclose()
    assert answer.status_code == 200 and "upstream_timeout" in answer.text, (answer.status_code, answer.text[:300])
    assert (line.output_tokens, line.cost_source) == (0, "estimate"), (line.output_tokens, line.cost_usd)


EMPTY_HEAD = {"id": "c", "created": 1, "model": "m-1"}
EMPTY_USAGE = {"prompt_tokens": 3, "completion_tokens": 0, "total_tokens": 3}


def empty_sse(delta: dict[str, Any], finish: str | None = None) -> bytes:
    body = {
        **EMPTY_HEAD,
        "object": "chat.completion.chunk",
        "choices": [{"index": 0, "delta": delta, "finish_reason": finish}],
    }
    return b"data: " + orjson.dumps(body) + b"\n\n"


def empty_upstream(request: httpx.Request) -> httpx.Response:
    if orjson.loads(request.content).get("stream"):
        events = empty_sse({"role": "assistant", "content": ""}) + empty_sse({"content": ""}, "stop")
        usage = {**EMPTY_HEAD, "object": "chat.completion.chunk", "choices": [], "usage": EMPTY_USAGE}
        events += b"data: " + orjson.dumps(usage) + b"\n\ndata: [DONE]\n\n"
        return httpx.Response(200, content=events, headers={"content-type": "text/event-stream"})
    message = {"role": "assistant", "content": ""}
    choice = {"index": 0, "message": message, "finish_reason": "stop", "logprobs": None}
    return httpx.Response(
        200, json={**EMPTY_HEAD, "object": "chat.completion", "choices": [choice], "usage": EMPTY_USAGE}
    )


async def test_an_answer_of_nothing_has_the_same_content_whole_and_streamed() -> None:
    """A compatible server's answer of nothing (a reasoning model out of tokens): `""` whole, and streamed, where its
    opening is written null (it ended None streamed). Found by review (mergerev35b)."""
    models = {"m": {"deployments": [{"provider": "openai", "model": "m-1"}], "price": {"input": 1, "output": 10}}}
    provider = {"type": "openai", "api_key": "env:OPENAI_API_KEY", "base_url": "http://compatible.example/v1"}
    served = await serve(empty_upstream, models, provider=provider)
    try:
        sdk = openai.AsyncOpenAI(base_url="http://gw/v1", api_key=served.key.key, http_client=served.http)
        messages: Any = [{"role": "user", "content": "x"}]
        whole = await sdk.chat.completions.create(model="m", messages=messages)
        async with sdk.chat.completions.stream(model="m", messages=messages) as stream:
            streamed = await stream.get_final_completion()
    finally:
        await served.gateway.aclose()
    assert whole.choices[0].message.content == ""
    assert streamed.choices[0].message.content == whole.choices[0].message.content, streamed.choices[0].message.content


async def test_a_compatible_servers_stream_opens_with_content_null_as_the_docs_say() -> None:
    """Written `null`, as OpenAI's opening of a call is, not left out (`{"role": "assistant"}`). (mergerev35b)"""
    models = {"m": {"deployments": [{"provider": "openai", "model": "m-1"}], "price": {"input": 1, "output": 10}}}
    provider = {"type": "openai", "api_key": "env:OPENAI_API_KEY", "base_url": "http://compatible.example/v1"}
    served = await serve(empty_upstream, models, provider=provider)
    try:
        answer = await served.http.post(
            "/v1/chat/completions",
            json={"model": "m", "stream": True, "messages": [{"role": "user", "content": "x"}]},
            headers={"authorization": f"Bearer {served.key.key}"},
        )
    finally:
        await served.gateway.aclose()
    first = orjson.loads(answer.text.split("\n\n")[0].removeprefix("data: "))
    assert first["choices"][0]["delta"] == {"role": "assistant", "content": None}, first["choices"][0]["delta"]


def test_an_audio_answer_streamed_ends_without_text_content() -> None:
    """An audio answer (its words in `delta.audio`) has no text: taken for an answer of nothing, it ended `""`
    streamed, where it has `content: null` whole. (mergerev35c)"""
    parser = OpenAIStreamParser("gpt-4o-audio-preview")
    parser.opens_empty = True  # (any profile but OpenAI's own)
    events = [
        event(0, {"role": "assistant", "content": None, "refusal": None, "audio": {"id": "audio_1", "transcript": ""}}),
        event(0, {"audio": {"transcript": "Hello", "data": "UklGRg=="}}),
        event(0, {"audio": {"expires_at": 1, "transcript": " there"}}),
        event(0, {}, "stop"),
        StreamEvent(None, b"[DONE]"),
    ]
    chunks = [c for e in events for c in parser.feed(e)] + parser.finish()
    written = [
        orjson.loads(c.model_dump_json())["choices"][0]["delta"].get("content", "left out") for c in chunks if c.choices
    ]
    assert "" not in written, written  # (OpenAI's own: content null throughout; whole: `content: null`)
