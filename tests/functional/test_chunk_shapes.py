"""Chat Completions chunks as OpenAI documents them, read off the wire (an SDK cannot tell null from absent), and as
the SDK's stream helper reads them."""

from __future__ import annotations

from typing import Any

import httpx
import openai
import orjson
import pytest
from pydantic import BaseModel

from tests.functional.conftest import Running, openai_client

HI: Any = [{"role": "user", "content": "Hi"}]


def stream_events(running: Running, key: str, body: dict[str, Any]) -> list[dict[str, Any]]:
    ask = {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "Hi"}], "stream": True, **body}
    headers = {"authorization": f"Bearer {key}"}
    with httpx.stream("POST", f"{running.url}/v1/chat/completions", json=ask, headers=headers) as answer:
        lines = [line for line in answer.iter_lines() if line.startswith("data: ")]
    assert lines[-1] == "data: [DONE]"
    return [orjson.loads(line.removeprefix("data: ")) for line in lines[:-1]]


def test_with_include_usage_every_chunk_but_the_last_has_usage_null(running: Running, key: str) -> None:
    *chunks, last = stream_events(running, key, {"stream_options": {"include_usage": True}})
    assert len(chunks) > 1 and all("usage" in chunk and chunk["usage"] is None for chunk in chunks)
    assert last["choices"] == [] and last["usage"]["completion_tokens"] == 7


def test_without_include_usage_no_chunk_has_usage(running: Running, key: str) -> None:
    events = stream_events(running, key, {})
    assert len(events) > 1 and not any("usage" in event for event in events)


def test_without_include_usage_every_chunk_has_a_choice_and_the_last_carries_the_cost(
    running: Running, key: str
) -> None:
    """OpenAI sends a chunk of no choices only when `include_usage` asks for one, and its own streaming example reads
    `chunk.choices[0]` of every chunk: the gateway's extra chunk (for its cost) broke that loop at the end of every
    stream (found by review). The cost now rides on the chunk that ends the choice."""
    for model in ("gpt-4o-mini", "claude-haiku-4-5"):
        *chunks, last = stream_events(running, key, {"model": model})
        assert all(event["choices"] for event in [*chunks, last])
        assert not any("cost" in chunk for chunk in chunks)
        assert last["choices"][0]["finish_reason"] == "stop" and last["cost"]["total_usd"] > 0


def first_data_line(running: Running, key: str, model: str) -> bytes:
    """The first `data:` line of a stream, as the bytes the client received."""
    ask = {"model": model, "messages": [{"role": "user", "content": "Hi"}], "stream": True}
    headers = {"authorization": f"Bearer {key}"}
    with httpx.stream("POST", f"{running.url}/v1/chat/completions", json=ask, headers=headers) as answer:
        raw = answer.read()
    assert answer.status_code == 200
    return next(line for line in raw.split(b"\n") if line.startswith(b"data: "))


def test_a_relayed_first_delta_keeps_refusal_null(running: Running, key: str) -> None:
    """OpenAI's first delta is `{"role": "assistant", "content": "", "refusal": null}`: the relay left `refusal` out,
    as it leaves out any optional member that is None. A translated provider's first delta has none, as before."""
    line = first_data_line(running, key, "gpt-4o-mini")
    assert b'"delta":{"role":"assistant","content":"","refusal":null}' in line
    relayed = orjson.loads(line.removeprefix(b"data: "))
    assert relayed["choices"][0]["delta"] == {"role": "assistant", "content": "", "refusal": None}
    translated = orjson.loads(first_data_line(running, key, "claude-haiku-4-5").removeprefix(b"data: "))
    assert "refusal" not in translated["choices"][0]["delta"]


def test_a_relayed_tool_call_keeps_content_null_in_its_first_delta(running: Running, key: str) -> None:
    """OpenAI starts a streamed tool call with `{"role": "assistant", "content": null, "tool_calls": [...],
    "refusal": null}`: the relay dropped `content`, as it dropped `refusal`. Now both go as sent."""
    ask = {
        "model": "gpt-4o-mini",
        "messages": [{"role": "user", "content": 'CALL get_weather {"city": "Paris"}'}],
        "tools": [{"type": "function", "function": {"name": "get_weather", "parameters": {"type": "object"}}}],
        "stream": True,
    }
    headers = {"authorization": f"Bearer {key}"}
    with httpx.stream("POST", f"{running.url}/v1/chat/completions", json=ask, headers=headers) as answer:
        raw = answer.read()
    assert answer.status_code == 200
    first = orjson.loads(next(line for line in raw.split(b"\n") if line.startswith(b"data: ")).removeprefix(b"data: "))
    delta = first["choices"][0]["delta"]
    assert delta["content"] is None and delta["refusal"] is None and delta["tool_calls"][0]["function"]["name"]


class Where(BaseModel):
    city: str


@pytest.mark.parametrize("model", ["gpt-4o-mini", "claude-haiku-4-5", "gemini-2.5-flash"])
def test_a_streamed_tool_only_answer_has_null_content_as_the_whole_one(running: Running, key: str, model: str) -> None:
    """A translated stream opened with `{"role": "assistant", "content": ""}` whatever followed, where OpenAI opens a
    tool call's stream with `"content": null`: the SDK's stream helper then emitted an empty `content.delta` and its
    final completion had `content == ""`, where the same request unstreamed (and OpenAI's, streamed or not) has
    None. A translated stream now opens as OpenAI's, by what its first block is: text, `content: ""`; a tool call,
    `content: null`."""
    tools = [openai.pydantic_function_tool(Where)]
    sdk = openai_client(running, key)
    whole = sdk.chat.completions.parse(model=model, messages=HI, tools=tools, tool_choice="required")
    with sdk.chat.completions.stream(model=model, messages=HI, tools=tools, tool_choice="required") as stream:
        events = [event.type for event in stream]
        final = stream.get_final_completion()
    assert whole.choices[0].message.content is None
    assert (final.choices[0].message.tool_calls or [])[0].function.parsed_arguments == Where(city="Paris")
    assert final.choices[0].message.content is None
    assert "content.delta" not in events, events


@pytest.mark.parametrize("model", ["claude-haiku-4-5", "gemini-2.5-flash"])
def test_a_translated_stream_opens_as_openai_opens_its_own(running: Running, key: str, model: str) -> None:
    """The first delta of a text answer has `content: ""` (as OpenAI's, without its `refusal`); of a tool call,
    `content: null`, the call's head next."""
    text = stream_events(running, key, {"model": model})
    assert text[0]["choices"][0]["delta"] == {"role": "assistant", "content": ""}
    assert "".join(chunk["choices"][0]["delta"].get("content") or "" for chunk in text)
    tool = {"type": "function", "function": {"name": "get_weather", "parameters": {"type": "object"}}}
    called = stream_events(running, key, {"model": model, "tools": [tool], "tool_choice": "required"})
    assert called[0]["choices"][0]["delta"] == {"role": "assistant", "content": None}
    assert called[1]["choices"][0]["delta"]["tool_calls"][0]["function"]["name"] == "get_weather"
