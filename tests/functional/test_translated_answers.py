"""What a Messages or Responses client gets from an OpenAI-compatible server's Chat Completions answer in shapes
OpenAI's own examples rarely show: parallel tool calls whose argument deltas interleave (keyed by `index`, as
the stream format allows), and a refusal (`message.refusal`, `delta.refusal`). The upstream is a scripted
server speaking Chat Completions; the clients are the official SDKs."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import anthropic
import orjson
import pytest
from pydantic import BaseModel
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response, StreamingResponse
from starlette.routing import Route

from adapters.providers.registry import REGISTRY
from handler.config import parse_config
from tests.functional.conftest import Running, anthropic_client, openai_client, serve_gateway
from tests.support.servers import ServerThread

HI: Any = [{"role": "user", "content": "Weather and time in Paris?"}]
WEATHER = {"type": "object", "properties": {"city": {"type": "string"}}}
TIME = {"type": "object", "properties": {"tz": {"type": "string"}}}
MESSAGES_TOOLS: Any = [{"name": "get_weather", "input_schema": WEATHER}, {"name": "get_time", "input_schema": TIME}]
RESPONSES_TOOLS: Any = [
    {"type": "function", "name": "get_weather", "parameters": WEATHER},
    {"type": "function", "name": "get_time", "parameters": TIME},
]


def chunk(delta: dict[str, Any], finish_reason: str | None = None) -> dict[str, Any]:
    choice = {"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish_reason}
    return {"id": "chatcmpl-1", "object": "chat.completion.chunk", "created": 1, "model": "gpt-x", "choices": [choice]}


def call(index: int, arguments: str, name: str | None = None) -> dict[str, Any]:
    """A tool-call delta: a call's start carries its id and name."""
    function: dict[str, Any] = {"arguments": arguments}
    if name is None:
        return {"tool_calls": [{"index": index, "function": function}]}
    opened = {"index": index, "id": f"call_{name}", "type": "function", "function": {"name": name, **function}}
    return {"tool_calls": [opened]}


# Both calls start, then their arguments come in turns (the second call's end before the first's): what some
# OpenAI-compatible servers send.
INTERLEAVED = [
    call(0, "", "get_weather"),
    call(1, "", "get_time"),
    call(0, '{"city":'),
    call(1, '{"tz":'),
    call(1, '"CET"}'),
    call(0, '"Paris"}'),
]
# One call after the other, as OpenAI sends them.
SEQUENTIAL = [
    call(0, "", "get_weather"),
    call(0, '{"city":'),
    call(0, '"Paris"}'),
    call(1, "", "get_time"),
    call(1, '{"tz":'),
    call(1, '"CET"}'),
]
STREAMS = {
    "gpt-interleaved": [*map(chunk, INTERLEAVED), chunk({}, "tool_calls")],
    "gpt-sequential": [*map(chunk, SEQUENTIAL), chunk({}, "tool_calls")],
    "gpt-refusing": [
        chunk({"refusal": "I'm sorry, "}),
        chunk({"refusal": "I can't help with that."}),
        chunk({}, "stop"),
    ],
    # vLLM 0.17+ (and Ollama, Groq, OpenRouter) name the reasoning `reasoning`, not `reasoning_content`.
    "qwen3-reasoning": [
        chunk({"reasoning": "2+2"}),
        chunk({"reasoning": "=4"}),
        chunk({"content": "4"}),
        chunk({}, "stop"),
    ],
    # A server whose chunks have no id, nor model, nor time (every chunk's left out: `HEADLESS`).
    "llama-headless": [chunk({"content": "Hel"}), chunk({"content": "lo"}, "stop")],
}
HEADLESS = ("llama-headless",)
REFUSAL = "I'm sorry, I can't help with that."
REFUSED = {
    "id": "chatcmpl-1",
    "object": "chat.completion",
    "created": 1,
    "model": "gpt-x",
    "choices": [
        {
            "index": 0,
            "message": {"role": "assistant", "content": None, "refusal": REFUSAL},
            "logprobs": None,
            "finish_reason": "stop",
        }
    ],
    "usage": {"prompt_tokens": 12, "completion_tokens": 9, "total_tokens": 21},
}


def whole(message: dict[str, Any], **head: Any) -> dict[str, Any]:
    """An answer of `message`, its head's members replaced by `head`'s (`None` leaves one out)."""
    answer = {**REFUSED, "choices": [{**REFUSED["choices"][0], "message": message}], **head}  # type: ignore[index]
    return {name: value for name, value in answer.items() if value is not None}


WHOLE = {
    "qwen3-reasoning": whole({"role": "assistant", "content": "4", "reasoning": "2+2=4"}),
    "llama-headless": whole({"role": "assistant", "content": "Hello"}, id=None, created=None, model=None),
}


async def chat_completions(request: Request) -> Response:
    """The scripted stream for the model asked (with its usage chunk and `[DONE]`), or its whole answer (a refusal
    unless `WHOLE` has one)."""
    asked = orjson.loads(await request.body())
    if not asked.get("stream"):
        return Response(orjson.dumps(WHOLE.get(asked["model"], REFUSED)), media_type="application/json")
    first = chunk({"role": "assistant", "content": None})
    usage = {**chunk({}), "choices": [], "usage": {"prompt_tokens": 12, "completion_tokens": 9, "total_tokens": 21}}
    chunks = [first, *STREAMS[asked["model"]], usage]
    if asked["model"] in HEADLESS:
        chunks = [{k: v for k, v in c.items() if k not in ("id", "created", "model")} for c in chunks]
    lines = [b"data: " + orjson.dumps(c) + b"\n\n" for c in chunks]
    return StreamingResponse(iter([*lines, b"data: [DONE]\n\n"]), media_type="text/event-stream")


@pytest.fixture(scope="module")
def gateway(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Running]:
    server = ServerThread(Starlette(routes=[Route("/v1/chat/completions", chat_completions, methods=["POST"])])).start()
    provider = {"type": "openai", "api_key": "env:OPENAI_API_KEY", "base_url": f"{server.url}/v1"}
    models = {name: {"deployments": [{"provider": "compatible", "model": name}]} for name in STREAMS}
    config = parse_config({"providers": {"compatible": provider}, "models": models}, set(REGISTRY))
    store = f"sqlite:///{Path(tmp_path_factory.mktemp('translated')) / 'gateway.db'}"
    running, gateway_server = serve_gateway(config, store, server, {})
    yield running
    gateway_server.stop()
    server.stop()


@pytest.fixture(scope="module")
def key(gateway: Running) -> str:
    return gateway.mint(name="translated")


def messages_stream(gateway: Running, key: str, model: str) -> tuple[list[Any], anthropic.types.Message]:
    with anthropic_client(gateway, key).messages.stream(
        model=model, max_tokens=100, messages=HI, tools=MESSAGES_TOOLS
    ) as stream:
        events = list(stream)
        return events, stream.get_final_message()


@pytest.mark.parametrize("model", ["gpt-interleaved", "gpt-sequential"])
def test_parallel_tool_calls_reach_a_messages_stream_whole_and_in_order(gateway: Running, key: str, model: str) -> None:
    """Interleaved argument deltas made four blocks: the two calls closed with no input, then two more with no id
    or name (the SDK could not parse their JSON)."""
    events, message = messages_stream(gateway, key, model)
    calls = [(block.type, block.id, block.name, block.input) for block in message.content]  # type: ignore[union-attr]
    assert calls == [
        ("tool_use", "call_get_weather", "get_weather", {"city": "Paris"}),
        ("tool_use", "call_get_time", "get_time", {"tz": "CET"}),
    ]
    assert message.stop_reason == "tool_use"
    blocks = [(e.type, e.index) for e in events if e.type in ("content_block_start", "content_block_stop")]
    assert blocks == [("content_block_start", 0), ("content_block_stop", 0)] + [
        ("content_block_start", 1),
        ("content_block_stop", 1),
    ]
    pieces = [e.delta.partial_json for e in events if e.type == "content_block_delta" and e.index == 1]
    # Sequential calls stream as they come; the second of two interleaved calls is held and written whole.
    assert pieces == (['{"tz":', '"CET"}'] if model == "gpt-sequential" else ['{"tz":"CET"}'])


@pytest.mark.parametrize("model", ["gpt-interleaved", "gpt-sequential"])
def test_parallel_tool_calls_reach_a_responses_stream_whole_and_in_order(
    gateway: Running, key: str, model: str
) -> None:
    """Interleaved argument deltas made four `function_call` items: two named with no arguments, two with the
    arguments and no call id or name."""
    with openai_client(gateway, key).responses.stream(model=model, input="Hi", tools=RESPONSES_TOOLS) as stream:
        events = list(stream)
        response = stream.get_final_response()
    calls = [(item.type, item.call_id, item.name, item.arguments) for item in response.output]  # type: ignore[union-attr]
    assert calls == [
        ("function_call", "call_get_weather", "get_weather", '{"city":"Paris"}'),
        ("function_call", "call_get_time", "get_time", '{"tz":"CET"}'),
    ]
    added = [(e.output_index, e.item.name) for e in events if e.type == "response.output_item.added"]  # type: ignore[union-attr]
    assert added == [(0, "get_weather"), (1, "get_time")]
    done = [(e.output_index, e.arguments) for e in events if e.type == "response.function_call_arguments.done"]
    assert done == [(0, '{"city":"Paris"}'), (1, '{"tz":"CET"}')]


class City(BaseModel):
    name: str


def test_a_refusal_reaches_a_responses_client_as_a_refusal_part(gateway: Running, key: str) -> None:
    """OpenAI's `message.refusal` was the message's `output_text`: `responses.parse` tried to read the refusal as
    the requested JSON (a ValidationError). Chat Completions' `parse` keeps it apart, as it did."""
    client = openai_client(gateway, key)
    response = client.responses.parse(model="gpt-refusing", input="Hi", text_format=City)
    [message] = response.output
    assert [part.model_dump() for part in message.content] == [{"type": "refusal", "refusal": REFUSAL}]  # type: ignore[union-attr]
    assert response.output_parsed is None

    with client.responses.stream(model="gpt-refusing", input="Hi", text_format=City) as stream:
        events = list(stream)
        final = stream.get_final_response()
    assert [part.model_dump() for part in final.output[0].content] == [{"type": "refusal", "refusal": REFUSAL}]  # type: ignore[union-attr]
    kinds = [e.type for e in events if e.type.startswith(("response.refusal", "response.output_text"))]
    assert kinds == ["response.refusal.delta", "response.refusal.delta", "response.refusal.done"]
    [done] = [e for e in events if e.type == "response.refusal.done"]
    assert (done.refusal, done.output_index, done.content_index) == (REFUSAL, 0, 0)  # type: ignore[union-attr]

    completion = client.chat.completions.parse(model="gpt-refusing", messages=HI, response_format=City)
    assert completion.choices[0].message.refusal == REFUSAL and completion.choices[0].message.parsed is None


def test_a_refusal_reaches_a_messages_client_with_the_refusal_stop_reason(gateway: Running, key: str) -> None:
    """A refusal answered as an ordinary turn (`end_turn`); Anthropic's API says `refusal`."""
    client = anthropic_client(gateway, key)
    message = client.messages.create(model="gpt-refusing", max_tokens=100, messages=HI)
    assert message.stop_reason == "refusal"
    assert [(block.type, block.text) for block in message.content] == [("text", REFUSAL)]  # type: ignore[union-attr]

    with client.messages.stream(model="gpt-refusing", max_tokens=100, messages=HI) as stream:
        final = stream.get_final_message()
    assert final.stop_reason == "refusal"
    assert [(block.type, block.text) for block in final.content] == [("text", REFUSAL)]  # type: ignore[union-attr]


def test_reasoning_under_its_new_name_reaches_every_client(gateway: Running, key: str) -> None:
    """vLLM 0.17+ returns the reasoning as `reasoning` (it was `reasoning_content`): only `reasoning_content` was read,
    so a Messages client got no thinking block and a Responses client an empty reasoning summary, whole and streamed,
    though the reasoning's tokens were billed. Every API carries it now (Chat Completions as `reasoning_content`, the
    name it has for every provider's reasoning)."""
    thinking: Any = {"type": "enabled", "budget_tokens": 1024}
    claude = anthropic_client(gateway, key)
    message = claude.messages.create(model="qwen3-reasoning", max_tokens=2000, thinking=thinking, messages=HI)
    assert [(b.type, getattr(b, "thinking", None) or getattr(b, "text", None)) for b in message.content] == [
        ("thinking", "2+2=4"),
        ("text", "4"),
    ]
    with claude.messages.stream(model="qwen3-reasoning", max_tokens=2000, thinking=thinking, messages=HI) as stream:
        final = stream.get_final_message()
    assert [b.type for b in final.content] == ["thinking", "text"] and final.content[0].thinking == "2+2=4"  # type: ignore[union-attr]
    client = openai_client(gateway, key)
    asked: Any = {"effort": "low", "summary": "auto"}
    response = client.responses.create(model="qwen3-reasoning", input="2+2", reasoning=asked)
    assert [s.text for s in response.output[0].summary] == ["2+2=4"] and response.output_text == "4"  # type: ignore[union-attr]
    with client.responses.stream(model="qwen3-reasoning", input="2+2", reasoning=asked) as events:
        streamed = events.get_final_response()
    assert [s.text for s in streamed.output[0].summary] == ["2+2=4"] and streamed.output_text == "4"  # type: ignore[union-attr]
    chat = client.chat.completions.create(model="qwen3-reasoning", messages=HI).choices[0].message
    assert (chat.model_extra or {}) == {"reasoning_content": "2+2=4"} and chat.content == "4"


def test_an_answer_without_its_head_reaches_every_client(gateway: Running, key: str) -> None:
    """A compatible server's answer or chunks without `id`, `created` or `model` were a 502 (the provider's "malformed
    answer"), billed nothing though the server counted the usage: they read, with an id, the time and the model
    filled in, and their line is the provider's usage."""
    client = openai_client(gateway, key)
    completion = client.chat.completions.create(model="llama-headless", messages=HI)
    assert completion.choices[0].message.content == "Hello" and completion.model == "llama-headless"
    assert completion.id.startswith("chatcmpl-") and completion.created > 1_700_000_000
    chunks = list(client.chat.completions.create(model="llama-headless", messages=HI, stream=True))
    assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices) == "Hello"
    assert len({c.id for c in chunks}) == 1 and chunks[0].model == "llama-headless"
    with anthropic_client(gateway, key).messages.stream(model="llama-headless", max_tokens=50, messages=HI) as stream:
        assert stream.get_final_message().content[0].text == "Hello"  # type: ignore[union-attr]
    assert client.responses.create(model="llama-headless", input="Hi").output_text == "Hello"
    lines = [line for line in gateway.ledger(key) if line.model == "llama-headless"]
    assert [(line.status, line.cost_source, line.output_tokens) for line in lines] == [(200, "provider", 9)] * 4
