"""A stream whose provider gave its final usage and then ended without its last event (its connection broken, or
its client gone before `[DONE]`, `message_stop`, Gemini's close) is charged what the provider billed: its final
usage, on the line as `provider`. Every stream the gateway reads in its chunk form (Chat Completions from any
provider; Messages and Responses translated) charged the larger of that usage and an estimate of the text relayed
instead, as `estimate`: 100 output tokens, the request's worst case, for an answer the provider billed 20 (its 300
characters at 3 a token). Found by review (streamrev36)."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

import httpx
import orjson
import pytest

from tests.support.inprocess import serve

TEXT = "abcdefghij" * 30  # 300 characters: an estimate of 100 output tokens, where the provider bills 20
MODELS = {"m": {"deployments": [{"provider": "openai", "model": "m"}], "price": {"input": 1, "output": 2}}}
HI = [{"role": "user", "content": "hi"}]
BODIES: dict[str, tuple[str, dict[str, Any]]] = {
    "chat": ("/v1/chat/completions", {"model": "m", "stream": True, "max_tokens": 100, "messages": HI}),
    "messages": ("/v1/messages", {"model": "m", "stream": True, "max_tokens": 100, "messages": HI}),
    "responses": ("/v1/responses", {"model": "m", "stream": True, "max_output_tokens": 100, "input": "hi"}),
}
PROVIDERS: dict[str, dict[str, Any] | None] = {
    "openai": None,
    "anthropic": {"type": "anthropic", "api_key": "env:OPENAI_API_KEY", "base_url": "http://up"},
    "gemini": {"type": "gemini", "api_key": "env:OPENAI_API_KEY", "base_url": "http://up"},
}


def data(payload: dict[str, Any], event: str | None = None) -> bytes:
    named = f"event: {event}\n".encode() if event else b""
    return named + b"data: " + orjson.dumps(payload) + b"\n\n"


def openai_parts() -> list[bytes]:
    """A Chat Completions stream up to its final usage (20 tokens out), without `[DONE]`."""

    def chunk(delta: dict[str, Any], finish: str | None = None) -> dict[str, Any]:
        choice = {"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish}
        return {"id": "c1", "object": "chat.completion.chunk", "created": 1, "model": "m", "choices": [choice]}

    usage = {"prompt_tokens": 10, "completion_tokens": 20, "total_tokens": 30}
    final = {"id": "c1", "object": "chat.completion.chunk", "created": 1, "model": "m", "choices": [], "usage": usage}
    return [data(chunk({"role": "assistant", "content": ""})), data(chunk({"content": TEXT})), data(chunk({}, "stop")),
            data(final)]  # fmt: skip


def anthropic_parts() -> list[bytes]:
    """An Anthropic stream up to its `message_delta` (20 tokens out), without `message_stop`."""
    start = {"id": "msg_1", "type": "message", "role": "assistant", "model": "m", "content": [], "stop_reason": None,
             "stop_sequence": None, "usage": {"input_tokens": 10, "output_tokens": 1}}  # fmt: skip
    block = {"type": "content_block_start", "index": 0, "content_block": {"type": "text", "text": ""}}
    delta = {"type": "content_block_delta", "index": 0, "delta": {"type": "text_delta", "text": TEXT}}
    ended = {"type": "message_delta", "delta": {"stop_reason": "end_turn", "stop_sequence": None},
             "usage": {"output_tokens": 20}}  # fmt: skip
    stop = {"type": "content_block_stop", "index": 0}
    events = [("message_start", {"type": "message_start", "message": start}), ("content_block_start", block),
              ("content_block_delta", delta), ("content_block_stop", stop), ("message_delta", ended)]  # fmt: skip
    return [data(payload, name) for name, payload in events]


def gemini_parts() -> list[bytes]:
    """A Gemini stream whose last chunk (its finish reason, 20 tokens out) came, its connection not yet ended."""
    text = {"candidates": [{"content": {"role": "model", "parts": [{"text": TEXT}]}, "index": 0}],
            "usageMetadata": {"promptTokenCount": 10, "totalTokenCount": 10}, "modelVersion": "m"}  # fmt: skip
    last = {"candidates": [{"content": {"role": "model", "parts": [{"text": ""}]}, "finishReason": "STOP", "index": 0}],
            "usageMetadata": {"promptTokenCount": 10, "candidatesTokenCount": 20, "totalTokenCount": 30},
            "modelVersion": "m"}  # fmt: skip
    return [data(text), data(last)]


PARTS = {"openai": openai_parts, "anthropic": anthropic_parts, "gemini": gemini_parts}


def answered(parts: list[bytes], reset: bool) -> httpx.Response:
    """`parts`, a read each, then the connection breaks (`reset`) or the stream pauses 5 s before its end."""

    async def body() -> AsyncIterator[bytes]:
        for part in parts:
            yield part
            await asyncio.sleep(0)
        if reset:
            raise httpx.RemoteProtocolError("peer closed connection without sending complete message body")
        await asyncio.sleep(5)

    return httpx.Response(200, content=body(), headers={"content-type": "text/event-stream"})


CASES = [("openai", "chat"), ("openai", "messages"), ("openai", "responses"), ("anthropic", "chat"),
         ("anthropic", "responses"), ("anthropic", "messages"), ("gemini", "chat"), ("gemini", "messages")]  # fmt: skip


@pytest.mark.parametrize("end", ["reset", "client_left"])
@pytest.mark.parametrize(("provider", "api"), CASES)
async def test_a_stream_ended_after_its_final_usage_is_charged_the_providers_usage(
    provider: str, api: str, end: str
) -> None:
    parts = PARTS[provider]()
    served = await serve(lambda request: answered(parts, end == "reset"), MODELS, provider=PROVIDERS[provider])
    path, body = BODIES[api]
    if end == "reset":
        assert (await served.post(path, body)).status_code == 200
    else:
        await served.left(path, body, after_s=0.3)  # (its upstream pauses 5 s before its last event)
    lines = await served.ledger()
    await served.gateway.aclose()
    assert [(line.input_tokens, line.output_tokens, line.cost_source) for line in lines] == [(10, 20, "provider")]


async def test_a_stream_cut_before_its_final_usage_is_still_estimated() -> None:
    """The finish chunk came, its usage did not: what was relayed is estimated, as before (100 tokens, its cap)."""
    parts = openai_parts()[:-1]
    served = await serve(lambda request: answered(parts, True), MODELS)
    path, body = BODIES["chat"]
    await served.post(path, body)
    lines = await served.ledger()
    await served.gateway.aclose()
    assert [(line.output_tokens, line.cost_source) for line in lines] == [(100, "estimate")]
