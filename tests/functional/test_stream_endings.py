"""How a stream that does not end well is settled: a client that leaves after the provider ran a search (the
search is billed, the stream cut or not), or after the provider counted the input (those counts are charged, only
the output estimated, and the estimate no more than the output cap), and a Responses stream the provider ends with
`response.failed` (its status, not a 200, in the ledger and the metrics); and what a stream that breaks off (its
deadline passed, the provider's connection reset, the server's own failure part way) tells its client it was
charged. The upstreams here are scripted streams in the providers' documented event formats, paced where the test
needs a stream still running."""

from __future__ import annotations

import asyncio
import hashlib
import json
import math
import socket
import struct
import time
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path
from typing import Any

import anthropic
import httpx
import openai
import orjson
import pytest
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response, StreamingResponse
from starlette.routing import Route

from adapters.providers.registry import REGISTRY
from handler.config import parse_config
from handler.ports import LedgerItem
from tests.functional.conftest import Running, anthropic_client, openai_client, serve_gateway
from tests.support.inprocess import PROVIDER_KEYS, serve
from tests.support.servers import ServerThread, SocketServer

SEARCH_USD = 0.01
# A late stream's first chunk: never, where its client leaves first (an upstream whose connection the gateway closes is
# cut at once: Starlette cancels a streaming answer whose client left). It came 0.6 s in, and a client starved of CPU
# that acted on its 0.2 s read timeout past that was written the whole stream: a 200 where the test asked for a 499.
LATE_S = 10.0
HI: Any = [{"role": "user", "content": "What is new today?"}]


def sse(event: str, data: dict[str, Any]) -> bytes:
    return b"event: " + event.encode() + b"\ndata: " + orjson.dumps(data) + b"\n\n"


async def searching_message(request: Request) -> StreamingResponse:
    """A Messages stream that searches, then writes slowly: the search is billed before `message_delta`."""
    await request.body()
    usage = {"input_tokens": 100, "output_tokens": 1, "server_tool_use": {"web_search_requests": 0}}

    async def events() -> AsyncIterator[bytes]:
        start = {"id": "msg_1", "type": "message", "role": "assistant", "model": "claude-x", "content": []}
        start |= {"stop_reason": None, "stop_sequence": None, "usage": usage}
        yield sse("message_start", {"type": "message_start", "message": start})
        use = {"type": "server_tool_use", "id": "srvtoolu_1", "name": "web_search", "input": {"query": "q"}}
        yield sse("content_block_start", {"type": "content_block_start", "index": 0, "content_block": use})
        yield sse("content_block_stop", {"type": "content_block_stop", "index": 0})
        result = {"type": "web_search_tool_result", "tool_use_id": "srvtoolu_1", "content": []}
        yield sse("content_block_start", {"type": "content_block_start", "index": 1, "content_block": result})
        yield sse("content_block_stop", {"type": "content_block_stop", "index": 1})
        text = {"type": "text", "text": ""}
        yield sse("content_block_start", {"type": "content_block_start", "index": 2, "content_block": text})
        for _ in range(100):
            delta = {"type": "text_delta", "text": "word "}
            yield sse("content_block_delta", {"type": "content_block_delta", "index": 2, "delta": delta})
            await asyncio.sleep(0.05)

    return StreamingResponse(events(), media_type="text/event-stream")


async def searching_response(request: Request) -> StreamingResponse:
    """A Responses stream that searches (a `web_search_call` item), then writes slowly."""
    await request.body()
    response = {"id": "resp_1", "object": "response", "created_at": 1, "model": "gpt-x", "output": [], "usage": None}

    async def events() -> AsyncIterator[bytes]:
        created = {"type": "response.created", "sequence_number": 0, "response": {**response, "status": "in_progress"}}
        yield sse("response.created", created)
        call = {"id": "ws_1", "type": "web_search_call", "status": "in_progress"}
        yield sse("response.output_item.added", {"type": "response.output_item.added", "output_index": 0, "item": call})
        for i in range(100):
            delta = {"type": "response.output_text.delta", "item_id": "msg_1", "output_index": 1, "delta": "word "}
            yield sse("response.output_text.delta", {**delta, "sequence_number": i + 2, "content_index": 0})
            await asyncio.sleep(0.05)

    return StreamingResponse(events(), media_type="text/event-stream")


async def failing_response(request: Request) -> StreamingResponse:
    """A Responses stream the provider ends with `response.failed` (its id named by the request's input)."""
    body = await request.body()
    made = "resp_" + hashlib.sha256(body).hexdigest()[:24]
    response = {"id": made, "object": "response", "created_at": 1, "model": "gpt-x", "output": [], "usage": None}
    code = "rate_limit_exceeded" if b"limited" in body else "server_error"

    async def events() -> AsyncIterator[bytes]:
        created = {"type": "response.created", "sequence_number": 0, "response": {**response, "status": "in_progress"}}
        yield sse("response.created", created)
        failed = {**response, "status": "failed", "error": {"code": code, "message": "The model failed."}}
        yield sse("response.failed", {"type": "response.failed", "sequence_number": 1, "response": failed})

    return StreamingResponse(events(), media_type="text/event-stream")


# A Claude Code turn: its 200 KB system prompt read from Anthropic's cache (`CACHED` tokens), `WRITTEN` more written
# to it, `UNCACHED` tokens besides; Claude's price for the cache's reads and writes.
CACHED, WRITTEN, UNCACHED = 51_244, 2_048, 20
CACHED_PRICE = {"input": 3.0, "output": 15.0, "cached_input": 0.3, "cache_write": 3.75}
CLAUDE_CODE_SYSTEM = "The quick brown fox jumps over the lazy dog while the engineer reviews the pull request. " * 2_300
WORD = " implementation"  # one token of fifteen characters: a third of a token a character over-counts it fivefold
WORD_S = 0.02
LAST_WORD_S = 2.0  # before the last word: a client that leaves one word before the end is gone before it comes
# A Claude Code-like turn's stream pauses after `HELD_WORDS` words until the gateway hangs up (`HOLD_S` at most): a
# client that leaves within them has had at most those relayed, however late it acts on its decision. Paced a word
# every `WORD_S` to the end, a client starved of CPU for 0.4 s was relayed 20 words more, and their estimate reached the
# output cap its test meant the stream to stay under.
HELD_WORDS = 10
HOLD_S = 10.0
WORDY_PRICE = {"input": 1.0, "output": 2.0}


def claude_code_usd(output_tokens: int) -> float:
    """What Anthropic bills a `claude-cached` turn that wrote `output_tokens`."""
    return (UNCACHED * 3.0 + CACHED * 0.3 + WRITTEN * 3.75 + output_tokens * 15.0) / 1_000_000


async def wordy_message(request: Request) -> StreamingResponse:
    """A Messages stream of one word a token up to the request's `max_tokens`, the last word late (`LAST_WORD_S`).
    `message_start` counts the input as Anthropic does, exact before any output: a `claude-cached` turn's as a
    Claude Code turn's (`CACHED`, `WRITTEN`, `UNCACHED`), its stream held after `HELD_WORDS` words (`HOLD_S`); any
    other's as 12 tokens."""
    body = orjson.loads(await request.body())
    cap = int(body["max_tokens"])
    if body["model"] == "claude-cached":
        counts = {"input_tokens": UNCACHED, "cache_read_input_tokens": CACHED, "cache_creation_input_tokens": WRITTEN}
        pause_at, pause_s = min(HELD_WORDS, cap - 1), HOLD_S
    else:
        counts = {"input_tokens": 12, "cache_read_input_tokens": 0, "cache_creation_input_tokens": 0}
        pause_at, pause_s = cap - 1, LAST_WORD_S

    async def events() -> AsyncIterator[bytes]:
        start = {"id": "msg_wordy", "type": "message", "role": "assistant", "model": body["model"], "content": []}
        start |= {"stop_reason": None, "stop_sequence": None, "usage": {**counts, "output_tokens": 1}}
        yield sse("message_start", {"type": "message_start", "message": start})
        text = {"type": "text", "text": ""}
        yield sse("content_block_start", {"type": "content_block_start", "index": 0, "content_block": text})
        for i in range(cap):
            await asyncio.sleep(pause_s if i == pause_at else WORD_S)
            delta = {"type": "text_delta", "text": WORD}
            yield sse("content_block_delta", {"type": "content_block_delta", "index": 0, "delta": delta})
        yield sse("content_block_stop", {"type": "content_block_stop", "index": 0})
        ended = {"type": "message_delta", "delta": {"stop_reason": "max_tokens", "stop_sequence": None}}
        yield sse("message_delta", {**ended, "usage": {"output_tokens": cap}})
        yield sse("message_stop", {"type": "message_stop"})

    return StreamingResponse(events(), media_type="text/event-stream")


async def wordy_completion(request: Request) -> StreamingResponse:
    """A chat stream of one word a token up to the request's cap, the last word late (`LAST_WORD_S`); its usage
    (12 tokens in) at the end, as OpenAI sends it."""
    body = orjson.loads(await request.body())
    cap = int(body.get("max_completion_tokens") or body["max_tokens"])
    chunk = {"id": "chatcmpl-wordy", "object": "chat.completion.chunk", "created": 1, "model": body["model"]}

    def event(delta: dict[str, Any], finish: str | None = None) -> bytes:
        said = {**chunk, "choices": [{"index": 0, "delta": delta, "finish_reason": finish}]}
        return b"data: " + orjson.dumps(said) + b"\n\n"

    async def events() -> AsyncIterator[bytes]:
        yield event({"role": "assistant", "content": ""})
        for i in range(cap):
            await asyncio.sleep(LAST_WORD_S if i == cap - 1 else WORD_S)
            yield event({"content": WORD})
        yield event({}, "length")
        if (body.get("stream_options") or {}).get("include_usage"):
            usage = {"prompt_tokens": 12, "completion_tokens": cap, "total_tokens": 12 + cap}
            yield b"data: " + orjson.dumps({**chunk, "choices": [], "usage": usage}) + b"\n\n"
        yield b"data: [DONE]\n\n"

    return StreamingResponse(events(), media_type="text/event-stream")


async def cached_gemini(request: Request) -> StreamingResponse:
    """A Gemini stream (`streamGenerateContent?alt=sse`) of a word an event, every event's `usageMetadata` counting
    the prompt as a Claude Code-like turn's (`CACHED` of it from the implicit cache), as Gemini repeats it; held
    after `HELD_WORDS` words (`HOLD_S`), as a Claude Code-like turn's Messages stream is."""
    body = orjson.loads(await request.body())
    cap = int(body["generationConfig"]["maxOutputTokens"])
    prompt = UNCACHED + CACHED + WRITTEN

    async def events() -> AsyncIterator[bytes]:
        for i in range(cap):
            await asyncio.sleep(HOLD_S if i == min(HELD_WORDS, cap - 1) else WORD_S)
            last = i == cap - 1
            candidate = {"content": {"role": "model", "parts": [{"text": WORD}]}, "index": 0}
            usage = {"promptTokenCount": prompt, "cachedContentTokenCount": CACHED, "candidatesTokenCount": i + 1}
            answer = {
                "candidates": [{**candidate, "finishReason": "MAX_TOKENS"} if last else candidate],
                "usageMetadata": {**usage, "totalTokenCount": prompt + i + 1},
                "modelVersion": "gemini-x",
                "responseId": "wordy",
            }
            yield b"data: " + orjson.dumps(answer) + b"\r\n\r\n"

    return StreamingResponse(events(), media_type="text/event-stream")


# A server that ignores `stream` and answers with the whole completion (pretty-printed, as some write it).
WHOLE_COMPLETION = {
    "id": "chatcmpl-whole",
    "object": "chat.completion",
    "created": 1764000000,
    "model": "gpt-x",
    "system_fingerprint": "fp_whole",
    "choices": [
        {
            "index": 0,
            "message": {
                "role": "assistant",
                "content": "Let me look.",
                "tool_calls": [
                    {"id": "call_1", "type": "function", "function": {"name": "lookup", "arguments": '{"q":"news"}'}}
                ],
            },
            "logprobs": None,
            "finish_reason": "tool_calls",
        }
    ],
    "usage": {"prompt_tokens": 12, "completion_tokens": 7, "total_tokens": 19},
}
WHOLE_MESSAGE = {
    "id": "msg_whole",
    "type": "message",
    "role": "assistant",
    "model": "claude-x",
    "content": [{"type": "text", "text": "Hello there."}],
    "stop_reason": "end_turn",
    "stop_sequence": None,
    "usage": {"input_tokens": 12, "output_tokens": 7},
}

WHOLE_RESPONSE = {
    "id": "resp_whole",
    "object": "response",
    "created_at": 1764000000,
    "status": "completed",
    "model": "gpt-x",
    "error": None,
    "incomplete_details": None,
    "tools": [],
    "tool_choice": "auto",
    "parallel_tool_calls": True,
    "output": [
        {
            "id": "msg_whole",
            "type": "message",
            "role": "assistant",
            "status": "completed",
            "content": [{"type": "output_text", "text": "Let me look.", "annotations": []}],
        },
        {
            "id": "fc_whole",
            "type": "function_call",
            "status": "completed",
            "call_id": "call_1",
            "name": "lookup",
            "arguments": '{"q":"news"}',
        },
    ],
    "usage": {
        "input_tokens": 12,
        "input_tokens_details": {"cached_tokens": 0},
        "output_tokens": 7,
        "output_tokens_details": {"reasoning_tokens": 0},
        "total_tokens": 19,
    },
}


async def ignoring_stream(request: Request) -> Response:
    """Whatever was asked, the whole answer in one JSON body: a chat completion, a Message at `/whole-anthropic`
    (run US-only for a model named `...-us`, as in a workspace whose default inference geo is `us`), or a response
    at a Responses API's `/responses`; or in a 200 an error body (a model named `...-error`)."""
    asked = orjson.loads(await request.body())
    assert asked.get("stream") is True  # a stream was asked for
    if asked["model"].endswith("-error"):
        return Response(b'{"error": {"message": "overloaded, try later"}}', media_type="application/json")
    answer = WHOLE_MESSAGE if "anthropic" in request.url.path else WHOLE_COMPLETION
    if request.url.path.endswith("/responses"):
        answer = WHOLE_RESPONSE
    if asked["model"].endswith("-us"):
        answer = {**answer, "usage": {**answer["usage"], "inference_geo": "us"}}
    return Response(b"\n" + json.dumps(answer, indent=2).encode(), media_type="application/json")


async def down(request: Request) -> Response:
    """A provider's 500: answered at once, nothing billed."""
    await request.body()
    return Response(b'{"error": {"message": "The server had an error.", "type": "server_error"}}', status_code=500)


async def late_stream(request: Request) -> StreamingResponse:
    """A chat stream whose first chunk comes after `LATE_S` (a model still thinking; cut short if the gateway hangs
    up), then whole at once."""
    await request.body()
    chunk = {"id": "chatcmpl-late", "object": "chat.completion.chunk", "created": 1, "model": "gpt-x"}
    said = {**chunk, "choices": [{"index": 0, "delta": {"role": "assistant", "content": "Hi"}, "finish_reason": None}]}
    usage = {"prompt_tokens": 12, "completion_tokens": 1, "total_tokens": 13}
    ended = {**chunk, "choices": [{"index": 0, "delta": {}, "finish_reason": "stop"}], "usage": usage}

    async def events() -> AsyncIterator[bytes]:
        await asyncio.sleep(LATE_S)
        yield b"data: " + orjson.dumps(said) + b"\n\ndata: " + orjson.dumps(ended) + b"\n\ndata: [DONE]\n\n"

    return StreamingResponse(events(), media_type="text/event-stream")


# A stream that breaks off after `BROKEN_WORDS` words: held silent until the gateway's deadline for it passes
# (`x-gateway-deadline-ms: BROKEN_DEADLINE_MS`), or its connection reset.
BROKEN_WORDS = ["Once ", "upon ", "a "]
BROKEN_DEADLINE_MS = 800
BROKEN_PRICE = {"input": 1.0, "output": 2.0}


def broken_events(path: bytes, model: str) -> list[bytes]:
    """The events a provider sends before its stream breaks off, in the API of `path`: a Chat Completions stream,
    a Messages stream (its `message_start` counting 12 input tokens), or a Responses stream (a message item open)."""
    if path.endswith(b"/messages"):
        start = {"id": "msg_broken", "type": "message", "role": "assistant", "model": model, "content": []}
        start |= {"stop_reason": None, "stop_sequence": None, "usage": {"input_tokens": 12, "output_tokens": 1}}
        text = {"type": "text", "text": ""}
        return [
            sse("message_start", {"type": "message_start", "message": start}),
            sse("content_block_start", {"type": "content_block_start", "index": 0, "content_block": text}),
            *(
                sse("content_block_delta", {"type": "content_block_delta", "index": 0, "delta": delta})
                for delta in ({"type": "text_delta", "text": word} for word in BROKEN_WORDS)
            ),
        ]
    if path.endswith(b"/responses"):
        response = {"id": f"resp_{model}", "object": "response", "created_at": 1, "model": model, "output": []}
        response |= {"status": "in_progress", "usage": None}
        item = {"id": "msg_broken", "type": "message", "status": "in_progress", "role": "assistant", "content": []}
        where = {"item_id": "msg_broken", "output_index": 0, "content_index": 0}
        part = {"type": "output_text", "text": "", "annotations": []}
        said = [
            ("response.created", {"response": response}),
            ("response.in_progress", {"response": response}),
            ("response.output_item.added", {"output_index": 0, "item": item}),
            ("response.content_part.added", {**where, "part": part}),
            *(("response.output_text.delta", {**where, "delta": word}) for word in BROKEN_WORDS),
        ]
        return [sse(kind, {"type": kind, "sequence_number": n, **data}) for n, (kind, data) in enumerate(said)]
    chunk = {"id": "chatcmpl-broken", "object": "chat.completion.chunk", "created": 1, "model": model}
    deltas = [{"role": "assistant", "content": ""}, *({"content": word} for word in BROKEN_WORDS)]
    return [
        b"data: " + orjson.dumps({**chunk, "choices": [{"index": 0, "delta": d, "finish_reason": None}]}) + b"\n\n"
        for d in deltas
    ]


# The failure an OpenAI-compatible server (or a proxy) writes part way, in any API's stream: Chat Completions' in-stream
# error, `{"error": ...}` with no `type` and no event name.
UNTYPED_FAILURE = b'data: {"error": {"message": "The server had an error.", "type": "server_error"}}\n\n'


def breaking(conn: socket.socket) -> None:
    """An upstream whose stream breaks off after a few words, as its model's name says: `stall-...` holds the
    connection silent (until the gateway closes it, 5 s at most), `reset-...` resets it, `error-...` ends it with
    `UNTYPED_FAILURE`."""
    with conn:
        conn.settimeout(5)
        data = b""
        while b"\r\n\r\n" not in data:
            data += conn.recv(65536)
        head, _, body = data.partition(b"\r\n\r\n")
        lines = head.split(b"\r\n")
        length = next(int(line.split(b":")[1]) for line in lines if line.lower().startswith(b"content-length"))
        while len(body) < length:
            body += conn.recv(65536)
        model = str(orjson.loads(body)["model"])
        closing = b"connection: close\r\n" if model.startswith("error") else b""
        conn.sendall(
            b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\ntransfer-encoding: chunked\r\n" + closing + b"\r\n"
        )
        for event in broken_events(lines[0].split(b" ")[1], model):
            conn.sendall(b"%x\r\n" % len(event) + event + b"\r\n")
        if model.startswith("reset"):
            conn.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            return
        if closing:  # (the stream's end, and the connection's)
            conn.sendall(b"%x\r\n" % len(UNTYPED_FAILURE) + UNTYPED_FAILURE + b"\r\n0\r\n\r\n")
            return
        try:
            conn.recv(1)  # (the gateway closing it, or the timeout)
        except OSError:
            pass


# The APIs a stream can break off on, each with the provider it is served by: Chat Completions (with and without
# `stream_options.include_usage`), Messages passed through to Anthropic and translated to Chat Completions, the
# Responses API passed through to a Responses deployment and translated.
BREAKING_CASES = {
    "chat": "breaking",
    "chat-usage": "breaking",
    "messages-native": "breaking-anthropic",
    "messages-translated": "breaking",
    "responses-native": "breaking-native",
    "responses-translated": "breaking",
}


@pytest.fixture(scope="module")
def scripted(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Running]:
    routes = [
        Route("/anthropic/v1/messages", searching_message, methods=["POST"]),
        Route("/searching/v1/responses", searching_response, methods=["POST"]),
        Route("/failing/v1/responses", failing_response, methods=["POST"]),
        Route("/ignoring/v1/chat/completions", ignoring_stream, methods=["POST"]),
        Route("/whole-anthropic/v1/messages", ignoring_stream, methods=["POST"]),
        Route("/whole-native/v1/responses", ignoring_stream, methods=["POST"]),
        Route("/late/v1/chat/completions", late_stream, methods=["POST"]),
        Route("/down/v1/chat/completions", down, methods=["POST"]),
        Route("/wordy-anthropic/v1/messages", wordy_message, methods=["POST"]),
        Route("/wordy/v1/chat/completions", wordy_completion, methods=["POST"]),
        Route("/wordy-gemini/v1beta/models/{method}", cached_gemini, methods=["POST"]),
    ]
    server = ServerThread(Starlette(routes=routes)).start()
    breaker = SocketServer(breaking)
    price = {"input": 3.0, "output": 15.0}

    def native(name: str) -> dict[str, Any]:
        base = f"{server.url}/{name}/v1"
        return {"type": "openai", "api_key": "env:OPENAI_API_KEY", "base_url": base, "responses_api": "native"}

    data = {
        "gateway": {"priced_options": {"web_search_usd": SEARCH_USD}},
        "providers": {
            "anthropic": {
                "type": "anthropic",
                "api_key": "env:ANTHROPIC_API_KEY",
                "base_url": f"{server.url}/anthropic",
            },
            "searching": native("searching"),
            "failing": native("failing"),
            "whole-native": native("whole-native"),
            "ignoring": {"type": "openai", "api_key": "env:OPENAI_API_KEY", "base_url": f"{server.url}/ignoring/v1"},
            "late": {"type": "openai", "api_key": "env:OPENAI_API_KEY", "base_url": f"{server.url}/late/v1"},
            "down": {"type": "openai", "api_key": "env:OPENAI_API_KEY", "base_url": f"{server.url}/down/v1"},
            "wordy": {"type": "openai", "api_key": "env:OPENAI_API_KEY", "base_url": f"{server.url}/wordy/v1"},
            # Gemini's OpenAI-compatible endpoint (its usage at the end, as OpenAI's).
            "wordy-google": {
                "type": "openai",
                "api_key": "env:GEMINI_API_KEY",
                "base_url": f"{server.url}/wordy/v1",
                "profile": "google",
            },
            "wordy-gemini": {
                "type": "gemini",
                "api_key": "env:GEMINI_API_KEY",
                "base_url": f"{server.url}/wordy-gemini",
            },
            "wordy-anthropic": {
                "type": "anthropic",
                "api_key": "env:ANTHROPIC_API_KEY",
                "base_url": f"{server.url}/wordy-anthropic",
            },
            "whole-anthropic": {
                "type": "anthropic",
                "api_key": "env:ANTHROPIC_API_KEY",
                "base_url": f"{server.url}/whole-anthropic",
            },
        },
        "models": {
            "claude": {"deployments": [{"provider": "anthropic", "model": "claude-x"}], "price": price},
            "gpt-searching": {"deployments": [{"provider": "searching", "model": "gpt-x"}], "price": price},
            "gpt-failing": {"deployments": [{"provider": "failing", "model": "gpt-x"}], "price": price},
            "gpt-whole": {"deployments": [{"provider": "ignoring", "model": "gpt-x"}], "price": price},
            "gpt-whole-error": {"deployments": [{"provider": "ignoring", "model": "gpt-x-error"}], "price": price},
            "claude-whole": {"deployments": [{"provider": "whole-anthropic", "model": "claude-x"}], "price": price},
            "gpt-whole-native": {"deployments": [{"provider": "whole-native", "model": "gpt-x"}], "price": price},
            "claude-whole-us": {
                "deployments": [{"provider": "whole-anthropic", "model": "claude-x-us"}],
                "price": {**price, "options": {"inference_geo": {"us": 1.1}}},
            },
            "gpt-late": {"deployments": [{"provider": "late", "model": "gpt-x"}], "price": price},
            "claude-cached": {
                "deployments": [{"provider": "wordy-anthropic", "model": "claude-cached"}],
                "price": CACHED_PRICE,
            },
            "gemini-cached": {
                "deployments": [{"provider": "wordy-gemini", "model": "gemini-x"}],
                "price": CACHED_PRICE,
            },
            "claude-wordy": {
                "deployments": [{"provider": "wordy-anthropic", "model": "claude-x"}],
                "price": WORDY_PRICE,
            },
            "gpt-wordy": {"deployments": [{"provider": "wordy", "model": "gpt-x"}], "price": WORDY_PRICE},
            # Reasoning models, which reason at their default effort unasked: by name, and by the deployment's word.
            "o4-wordy": {"deployments": [{"provider": "wordy", "model": "o4-x"}], "price": WORDY_PRICE},
            "thinker-wordy": {
                "deployments": [{"provider": "wordy", "model": "prod-thinker", "reasoning": True}],
                "price": WORDY_PRICE,
            },
            # Gemini's, which think by default (2.5 Flash-Lite only when asked), through its OpenAI-compatible API.
            **{
                f"{model}-wordy": {"deployments": [{"provider": "wordy-google", "model": model}], "price": WORDY_PRICE}
                for model in ("gemini-2.5-flash", "gemini-2.5-pro", "gemini-3-flash-preview", "gemini-2.5-flash-lite")
            },
            # A cheap model that writes up to 16,384 tokens, down, then a dear one that writes at most 1,000.
            "gpt-down-wide": {
                "deployments": [{"provider": "down", "model": "gpt-x"}],
                "price": {"input": 0.01, "output": 0.01},
                "max_output_tokens": 16384,
                "fallbacks": ["claude-wordy-narrow"],
            },
            "claude-wordy-narrow": {
                "deployments": [{"provider": "wordy-anthropic", "model": "claude-x"}],
                "price": {"input": 10.0, "output": 10.0},
                "max_output_tokens": 1000,
            },
        },
    }
    # A model for each way a stream breaks off (`breaking`), on each API and its provider (a deployment each: failures
    # in a row on one would open its breaker).
    data["providers"] |= {
        "breaking": {"type": "openai", "api_key": "env:OPENAI_API_KEY", "base_url": f"{breaker.url}/v1"},
        "breaking-native": {**native("x"), "base_url": f"{breaker.url}/v1"},
        "breaking-anthropic": {"type": "anthropic", "api_key": "env:ANTHROPIC_API_KEY", "base_url": breaker.url},
    }
    for fault in BROKEN:
        for case, provider in BREAKING_CASES.items():
            deployment = {"provider": provider, "model": f"{fault}-{case}"}
            data["models"][f"broken-{fault}-{case}"] = {"deployments": [deployment], "price": BROKEN_PRICE}
    store = f"sqlite:///{Path(tmp_path_factory.mktemp('endings')) / 'gateway.db'}"
    running, gateway_server = serve_gateway(parse_config(data, set(REGISTRY)), store, server, {})
    yield running
    gateway_server.stop()
    server.stop()
    breaker.close()


def leave_after(running: Running, path: str, body: dict[str, Any], key: str, marker: bytes) -> None:
    """Stream `body` and hang up once `marker` has come."""
    headers = {"authorization": f"Bearer {key}", "anthropic-version": "2023-06-01"}
    with httpx.Client(timeout=10) as http, http.stream("POST", f"{running.url}{path}", json=body, headers=headers) as a:
        seen = b""
        for chunk in a.iter_bytes():
            seen += chunk
            if marker in seen:
                return


@pytest.mark.parametrize(
    ("path", "body", "marker"),
    [
        ("/v1/messages", {"model": "claude", "max_tokens": 100, "messages": HI, "stream": True}, b"text_delta"),
        ("/v1/responses", {"model": "gpt-searching", "input": "Hi", "stream": True}, b"output_text.delta"),
    ],
    ids=["messages", "responses"],
)
def test_a_search_is_billed_though_the_client_leaves_before_the_final_usage(
    scripted: Running, path: str, body: dict[str, Any], marker: bytes
) -> None:
    """The search count comes with the final usage (`message_delta`, the terminal response): a client that left
    before it got its search results free (the line was the text's estimate alone)."""
    key = scripted.mint(name=f"left-{path}")
    tools: Any = (
        [{"type": "web_search_20250305", "name": "web_search"}] if "messages" in path else [{"type": "web_search"}]
    )
    leave_after(scripted, path, {**body, "tools": tools}, key, marker)
    deadline = time.monotonic() + 5
    lines = scripted.ledger(key)
    while not lines and time.monotonic() < deadline:
        lines = scripted.ledger(key)
    [line] = lines
    assert line.status == 499 and line.cost_source == "estimate"
    assert line.cost_usd is not None and line.cost_usd > SEARCH_USD  # the search and the tokens


def left_line(running: Running, key: str) -> LedgerItem:
    """The one ledger line of a stream `key`'s client left, once it was written (within 5 s)."""
    deadline = time.monotonic() + 5
    lines = running.ledger(key)
    while not lines and time.monotonic() < deadline:
        lines = running.ledger(key)
    [line] = lines
    return line


def leave_claude_code_turn(running: Running, key: str, api: str, max_tokens: int = 100, **asked: Any) -> None:
    """A Claude Code-like turn (its large system prompt marked for the cache) to `claude-cached` through the
    official SDK of `api`, whose user interrupts it after five events."""
    cached = {"type": "text", "text": CLAUDE_CODE_SYSTEM, "cache_control": {"type": "ephemeral"}}
    task = "Refactor the module."
    if api == "messages":
        client = anthropic_client(running, key)
        messages: Any = [{"role": "user", "content": task}]
        with client.messages.stream(
            model="claude-cached", max_tokens=max_tokens, system=[cached], messages=messages, **asked
        ) as stream:
            for n, _ in enumerate(stream):
                if n == 4:
                    break
        return
    openai = openai_client(running, key)
    events: Any
    if api == "chat":
        turns: Any = [{"role": "system", "content": [cached]}, {"role": "user", "content": task}]
        events = openai.chat.completions.create(
            model="claude-cached", max_tokens=max_tokens, messages=turns, stream=True
        )
    else:
        events = openai.responses.create(
            model="claude-cached",
            max_output_tokens=max_tokens,
            instructions=CLAUDE_CODE_SYSTEM,
            input=task,
            stream=True,
        )
    for n, _ in enumerate(events):
        if n == 4:
            break
    events.close()


@pytest.mark.parametrize("api", ["messages", "chat", "responses"])
def test_a_claude_stream_the_client_leaves_is_charged_anthropics_input_counts(scripted: Running, api: str) -> None:
    """Anthropic's `message_start` (which the client saw too) counts the input exactly, cache reads and writes
    among them; only the output of a stream left before `message_delta` is the gateway's to estimate. The larger of
    those counts and the prompt's upper bound (half its bytes) was charged: 51,242 tokens of a Claude Code turn
    charged again as uncached input, 10.9 times Anthropic's bill; and translated (Chat, Responses), the upper bound
    alone, the cache's reads lost, about 20 times (found by review)."""
    key = scripted.mint(name=f"left-cached-{api}")
    leave_claude_code_turn(scripted, key, api)
    line = left_line(scripted, key)
    assert (line.status, line.cost_source) == (499, "estimate")
    assert (line.input_tokens, line.cached_tokens, line.cache_write_tokens) == (
        UNCACHED + CACHED + WRITTEN,
        CACHED,
        WRITTEN,
    )
    assert 0 < line.output_tokens < 100
    assert line.cost_usd == pytest.approx(claude_code_usd(line.output_tokens))


def test_a_gemini_stream_the_client_leaves_is_charged_the_input_gemini_counted(scripted: Running) -> None:
    """Gemini counts the prompt on every event of its stream (`usageMetadata`): a stream left before its end is
    charged that count, its implicit cache's reads among it, not the larger prompt's upper bound."""
    key = scripted.mint(name="left-gemini")
    turns: Any = [{"role": "system", "content": CLAUDE_CODE_SYSTEM}, {"role": "user", "content": "Refactor it."}]
    events = openai_client(scripted, key).chat.completions.create(
        model="gemini-cached", max_tokens=100, messages=turns, stream=True
    )
    for n, _ in enumerate(events):
        if n == 4:
            break
    events.close()
    line = left_line(scripted, key)
    assert (line.status, line.cost_source) == (499, "estimate")
    assert (line.input_tokens, line.cached_tokens) == (UNCACHED + CACHED + WRITTEN, CACHED)
    assert 0 < line.output_tokens < 100
    uncached = UNCACHED + WRITTEN  # (no cache write at Gemini: input)
    assert line.cost_usd == pytest.approx((uncached * 3.0 + CACHED * 0.3 + line.output_tokens * 15.0) / 1_000_000)


def test_a_reasoning_claude_stream_the_client_leaves_is_charged_its_worst_output_on_anthropics_input_counts(
    scripted: Running,
) -> None:
    """A reasoning stream cut short is charged the output reserved for (its reasoning may be billed unseen), but
    its input as `message_start` counted it: it was the prompt's upper bound, the cache's reads charged as input."""
    key = scripted.mint(name="left-cached-thinking")
    thinking = {"type": "enabled", "budget_tokens": 1024}
    leave_claude_code_turn(scripted, key, "messages", max_tokens=2048, thinking=thinking)
    line = left_line(scripted, key)
    assert (line.status, line.cost_source, line.output_tokens) == (499, "reserved", 2048)
    assert (line.input_tokens, line.cached_tokens, line.cache_write_tokens) == (
        UNCACHED + CACHED + WRITTEN,
        CACHED,
        WRITTEN,
    )
    assert line.cost_usd == pytest.approx(claude_code_usd(2048))


def test_a_reasoning_stream_left_after_a_failover_is_charged_the_output_its_attempt_was_sent(
    scripted: Running,
) -> None:
    """A reasoning stream cut short is charged its worst output: that of the attempt that streamed, not the plan's
    largest. `claude-wordy-narrow`, sent `max_tokens: 1000` after `gpt-down-wide` (16,384) failed, was charged
    16,384 at its own $10/M: $0.16 on a $0.05 budget (review)."""
    key = scripted.mint(name="left-narrow-thinking", budget_usd=0.05)
    thinking = {"type": "enabled", "budget_tokens": 512}
    body = {"model": "gpt-down-wide", "max_tokens": 16384, "thinking": thinking, "messages": HI, "stream": True}
    leave_after(scripted, "/v1/messages", body, key, b"text_delta")
    line = left_line(scripted, key)
    assert (line.model, line.status, line.cost_source, line.output_tokens) == (
        "claude-wordy-narrow",
        499,
        "reserved",
        1000,
    )
    assert line.cost_usd == pytest.approx((12 + 1000) * 10.0 / 1_000_000)  # on `message_start`'s 12 tokens in
    spent = httpx.get(f"{scripted.url}/v1/key", headers={"authorization": f"Bearer {key}"}).json()["spent_usd"]
    assert spent == pytest.approx((line.cost_usd or 0) + line.fee_usd) and spent <= 0.05


@pytest.mark.parametrize(
    ("model", "source"),
    [
        ("o4-wordy", "reserved"),
        ("thinker-wordy", "reserved"),
        ("gpt-wordy", "estimate"),
        ("gemini-2.5-flash-wordy", "reserved"),
        ("gemini-2.5-pro-wordy", "reserved"),
        ("gemini-3-flash-preview-wordy", "reserved"),
        ("gemini-2.5-flash-lite-wordy", "estimate"),
    ],
    ids=[
        "reasoner-by-name",
        "reasoner-by-config",
        "not-reasoning",
        "gemini-2.5-flash",
        "gemini-2.5-pro",
        "gemini-3",
        "gemini-2.5-flash-lite",
    ],
)
def test_a_stream_left_early_is_charged_its_reserved_output_where_its_model_reasons_unasked(
    scripted: Running, model: str, source: str
) -> None:
    """OpenAI's reasoning models (o-series, gpt-5; an Azure deployment marked `reasoning:`) reason at their default
    effort where the request names none, and OpenAI bills that reasoning: cut short, such a stream is charged the
    output reserved for it, as one that names an effort is. It was charged the text it relayed alone, where the
    client left after the first words (review). A model that does not reason (gpt-x, as gpt-4o-mini) is still
    charged what it relayed. So are Gemini's through its OpenAI-compatible endpoint (the `google` profile): 2.5 and
    later think by default, their thoughts neither shown nor counted before the final usage, and were charged the
    first word's estimate (5 tokens of the 40 reserved) below what Google bills (review); 2.5 Flash-Lite thinks only
    when asked."""
    key = scripted.mint(name=f"left-unasked-{model}")
    body = {"model": model, "max_tokens": 40, "messages": HI, "stream": True}
    leave_after(scripted, "/v1/chat/completions", body, key, WORD.encode())
    line = left_line(scripted, key)
    assert (line.status, line.cost_source) == (499, source)
    if source == "reserved":
        assert line.output_tokens == 40
        assert line.cost_usd == pytest.approx((line.input_tokens * 1.0 + 40 * 2.0) / 1_000_000)
    else:
        assert 0 < line.output_tokens < 40


@pytest.mark.parametrize(
    ("model", "source"),
    [
        ("gemini-2.5-flash-wordy", "estimate"),
        ("gemini-2.5-flash-lite-wordy", "estimate"),
        ("o4-wordy", "estimate"),
        ("gpt-wordy", "estimate"),
        ("gemini-2.5-pro-wordy", "reserved"),
        ("gemini-3-flash-preview-wordy", "reserved"),
    ],
    ids=["gemini-2.5-flash", "gemini-2.5-flash-lite", "reasoner", "not-reasoning", "gemini-2.5-pro", "gemini-3"],
)
def test_a_stream_left_early_that_turned_reasoning_off_is_charged_what_it_relayed(
    scripted: Running, model: str, source: str
) -> None:
    """`reasoning_effort: "none"` counted as an effort named, and a model that thinks by default as thinking anyway:
    a Gemini 2.5 Flash stream sent thinking budget 0, cut short, was charged its whole reserved output, where Google
    ran and billed no thinking (found by review). Turned off, a stream is charged what it relayed, but where the
    model cannot turn its thinking off (2.5 Pro; Gemini 3, whose least level still thinks)."""
    key = scripted.mint(name=f"left-off-{model}")
    body = {"model": model, "max_tokens": 40, "messages": HI, "stream": True, "reasoning_effort": "none"}
    leave_after(scripted, "/v1/chat/completions", body, key, WORD.encode())
    line = left_line(scripted, key)
    assert (line.status, line.cost_source) == (499, source)
    assert line.output_tokens == 40 if source == "reserved" else 0 < line.output_tokens < 40


@pytest.mark.parametrize(
    ("path", "model"),
    [("/v1/chat/completions", "gpt-wordy"), ("/v1/messages", "claude-wordy")],
    ids=["chat", "messages"],
)
def test_a_stream_left_before_its_end_is_charged_no_more_output_than_its_cap(
    scripted: Running, path: str, model: str
) -> None:
    """The estimate of a stream's output (a third of a token a relayed character) had no bound: a stream capped at
    40 tokens, left one word before its end, was charged 88, past its max_tokens and past the worst case its
    budget and `x-gateway-max-cost-usd` had admitted it for (found by review: 1.86 times the budget spent). The
    estimate is now at most the cap the provider was sent."""
    limit = 0.0002  # the worst case, 40 tokens out, is within it; 195 tokens, 39 words' estimate, were not
    key = scripted.mint(name=f"left-capped-{path}", budget_usd=limit)
    headers = {
        "authorization": f"Bearer {key}",
        "anthropic-version": "2023-06-01",
        "x-gateway-max-cost-usd": str(limit),
    }
    body = {"model": model, "max_tokens": 40, "messages": HI, "stream": True}
    words = 0
    with (
        httpx.Client(timeout=10) as http,
        http.stream("POST", f"{scripted.url}{path}", json=body, headers=headers) as a,
    ):
        assert a.status_code == 200, a.read()
        for data in a.iter_lines():
            words += data.count(WORD)
            if words == 39:
                break
    line = left_line(scripted, key)
    assert (line.status, line.cost_source, line.output_tokens) == (499, "estimate", 40)
    assert line.cost_usd is not None and line.cost_usd + line.fee_usd <= limit
    state = httpx.get(f"{scripted.url}/v1/key", headers=headers).json()
    assert state["reserved_usd"] == 0 and state["spent_usd"] <= state["budget_usd"], state


@pytest.mark.parametrize(("model_hint", "status"), [("", 502), ("limited", 429)], ids=["server-error", "rate-limit"])
def test_a_responses_stream_the_provider_failed_is_settled_with_the_failures_status(
    scripted: Running, model_hint: str, status: int
) -> None:
    """Settled with the failure's status; and kept (`store` defaults to true) as the client was told it, with its cost:
    the event said `store: true`, but the response was not kept (a 404 to read)."""
    key = scripted.mint(name=f"failed-{status}")
    client = openai_client(scripted, key)
    events = list(client.responses.create(model="gpt-failing", input=f"Hi {model_hint}", stream=True))
    assert events[-1].type == "response.failed"
    [line] = scripted.ledger(key)
    assert line.status == status  # it was a 200, in the ledger and in /metrics
    failed = events[-1].response
    charged_as((failed.model_extra or {})["cost"], line)
    assert client.responses.retrieve(failed.id).model_dump() == failed.model_dump()


WHOLE_USD = (12 * 3.0 + 7 * 15.0) / 1_000_000


def test_a_stream_answered_with_the_whole_completion_is_streamed_from_it(scripted: Running) -> None:
    """A server that ignores `stream` answers with the whole completion: the client gets it as the stream it asked
    for (its text, its tool call, its finish reason, the usage), and it is billed as the provider counted it (it
    was a 502 at no cost, though the provider had answered and billed)."""
    key = scripted.mint(name="whole-chat")
    stream = openai_client(scripted, key).chat.completions.create(
        model="gpt-whole", messages=HI, stream=True, stream_options={"include_usage": True}
    )
    chunks = list(stream)
    choices = [chunk.choices[0] for chunk in chunks if chunk.choices]
    assert "".join(choice.delta.content or "" for choice in choices) == "Let me look."
    [call] = [call for choice in choices for call in choice.delta.tool_calls or ()]
    assert (call.index, call.id, call.function.name, call.function.arguments) == (0, "call_1", "lookup", '{"q":"news"}')  # type: ignore[union-attr]
    assert [choice.finish_reason for choice in choices if choice.finish_reason] == ["tool_calls"]
    assert {chunk.id for chunk in chunks} == {"chatcmpl-whole"} and chunks[0].system_fingerprint == "fp_whole"
    usage = chunks[-1].usage
    assert usage is not None and (usage.prompt_tokens, usage.completion_tokens) == (12, 7)
    [line] = scripted.ledger(key)
    assert (line.status, line.cost_source, line.input_tokens, line.output_tokens) == (200, "provider", 12, 7)
    assert line.cost_usd == pytest.approx(WHOLE_USD)


def test_a_translated_stream_answered_whole_is_streamed_in_the_clients_api(scripted: Running) -> None:
    """The same through a translation: Chat Completions to an Anthropic deployment that answered with a whole
    Message, and the Responses API to the OpenAI-compatible server that answered with a whole completion."""
    key = scripted.mint(name="whole-translated")
    client = openai_client(scripted, key)
    chunks = list(client.chat.completions.create(model="claude-whole", messages=HI, stream=True))
    assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices) == "Hello there."
    assert [c.choices[0].finish_reason for c in chunks if c.choices and c.choices[0].finish_reason] == ["stop"]
    events = list(client.responses.create(model="gpt-whole", input="Hi", stream=True))
    assert events[-1].type == "response.completed"
    output = events[-1].response.output  # type: ignore[union-attr]
    assert [item.type for item in output] == ["message", "function_call"]
    assert output[0].content[0].text == "Let me look."  # type: ignore[union-attr]
    assert (output[1].name, output[1].arguments) == ("lookup", '{"q":"news"}')  # type: ignore[union-attr]
    lines = scripted.ledger(key)
    assert sorted((line.model, line.status, line.cost_source) for line in lines) == [
        ("claude-whole", 200, "provider"),
        ("gpt-whole", 200, "provider"),
    ]
    assert [line.cost_usd for line in lines] == pytest.approx([WHOLE_USD, WHOLE_USD])


def test_a_passed_through_stream_answered_whole_is_the_stream_of_its_api(scripted: Running) -> None:
    """The same where the stream goes to the provider's own API (the Responses API natively, Messages to an
    Anthropic-compatible server): the whole answer replayed as that API's events, which the SDKs' stream helpers
    read into the answer that came whole, billed on its usage. It was a 502 charged its reserved worst case."""
    key = scripted.mint(name="whole-native")
    with anthropic_client(scripted, key).messages.stream(model="claude-whole", max_tokens=1000, messages=HI) as said:
        message = said.get_final_message()
    assert [block.type for block in message.content] == ["text"] and message.content[0].text == "Hello there."  # type: ignore[union-attr]
    assert (message.id, message.stop_reason, message.usage.output_tokens) == ("msg_whole", "end_turn", 7)
    with openai_client(scripted, key).responses.stream(model="gpt-whole-native", input="Hi") as streamed:
        texts = [event.delta for event in streamed if event.type == "response.output_text.delta"]
        response = streamed.get_final_response()
    assert texts == ["Let me look."] and response.output_text == "Let me look."
    assert (response.output[1].name, response.output[1].arguments) == ("lookup", '{"q":"news"}')  # type: ignore[union-attr]
    lines = scripted.ledger(key)
    assert sorted(
        (line.model, line.status, line.cost_source, line.input_tokens, line.output_tokens) for line in lines
    ) == [
        ("claude-whole", 200, "provider", 12, 7),
        ("gpt-whole-native", 200, "provider", 12, 7),
    ]
    assert [line.cost_usd for line in lines] == pytest.approx([WHOLE_USD, WHOLE_USD])


def test_a_translated_stream_answered_whole_is_charged_as_its_answer_says_it_was_served(scripted: Running) -> None:
    """The whole Message a stream was answered with says it ran US-only (`usage.inference_geo: us`, a workspace's
    default): charged 1.1 times, as Anthropic bills it and as the same answer streamed is (it was charged the
    plain prices)."""
    key = scripted.mint(name="whole-us")
    chunks = list(
        openai_client(scripted, key).chat.completions.create(
            model="claude-whole-us", messages=HI, stream=True, stream_options={"include_usage": True}
        )
    )
    assert (chunks[-1].model_extra or {})["cost"]["provider_usd"] == pytest.approx(WHOLE_USD * 1.1)
    [line] = scripted.ledger(key)
    assert (line.status, line.cost_source) == (200, "provider") and line.cost_usd == pytest.approx(WHOLE_USD * 1.1)


def test_a_stream_answered_with_a_whole_error_body_is_the_providers_error(scripted: Running) -> None:
    """A 200 whose body is an error object alone, where a stream was asked for, is no completion to stream: it is the
    provider's error, as the same body answering a whole request is (tests/functional/test_costs_edges.py), its words
    relayed, at no cost. It was the provider's malformed answer ("the provider's stream ended before its first
    event"), its line the reserved worst case and its client told not to retry."""
    key = scripted.mint(name="whole-error")
    answer = httpx.post(
        f"{scripted.url}/v1/chat/completions",
        json={"model": "gpt-whole-error", "messages": HI, "stream": True},
        headers={"authorization": f"Bearer {key}"},
    )
    assert answer.status_code == 502, answer.text
    assert answer.json()["error"]["message"] == "upstream returned 500: overloaded, try later"
    assert answer.headers["x-should-retry"] == "true"  # (the one attempt, a passing failure, as any 500's)
    [line] = scripted.ledger(key)
    assert (line.status, line.cost_usd, line.route) == (502, 0.0, "ignoring/gpt-x-error@global=500")


@pytest.mark.parametrize(
    ("path", "body", "marker"),
    [
        ("/v1/chat/completions", {"model": "drip", "messages": HI, "stream": True}, b"data: {"),
        ("/v1/messages", {"model": "drip", "max_tokens": 100, "messages": HI, "stream": True}, b"message_start"),
        ("/v1/responses", {"model": "drip", "input": "Hi", "stream": True}, b"response.created"),
    ],
    ids=["chat", "messages", "responses"],
)
@pytest.mark.parametrize("stopping", [False, True], ids=["serving", "stopping"])
def test_a_client_that_leaves_mid_stream_is_logged_with_its_code(
    running: Running,
    path: str,
    body: dict[str, Any],
    marker: bytes,
    stopping: bool,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A 499 mid-stream was logged with no `error_code` (and counted in no `gateway_errors_total`), where a client
    that left a whole answer is `client_closed_request`. So is one that leaves while the server is stopping, within
    its grace: its cancellation is the client's, not the server's (`server_shutting_down`)."""
    monkeypatch.setattr(running.gateway, "stopping", stopping)
    key = running.mint(name=f"leaves-{path}-{stopping}")
    capsys.readouterr()
    leave_after(running, path, body, key, marker)
    [line] = request_lines(capsys, key)
    assert (line["status"], line["stream"], line.get("error_code")) == (499, True, "client_closed_request")


def request_lines(capsys: pytest.CaptureFixture[str], key: str) -> list[dict[str, Any]]:
    """The request log lines of `key`, once one was written (within 5 s)."""
    deadline = time.monotonic() + 5
    lines: list[dict[str, Any]] = []
    while not lines and time.monotonic() < deadline:
        time.sleep(0.05)
        out = capsys.readouterr().out.splitlines()
        lines += [orjson.loads(line) for line in out if '"message":"request"' in line and key.split("_")[1] in line]
    return lines


@pytest.mark.parametrize(
    ("path", "body"),
    [
        ("/v1/chat/completions", {"model": "gpt-late", "messages": HI, "stream": True}),
        ("/v1/messages", {"model": "gpt-late", "max_tokens": 100, "messages": HI, "stream": True}),
        ("/v1/responses", {"model": "gpt-late", "input": "Hi", "stream": True}),
    ],
    ids=["chat", "messages", "responses"],
)
def test_a_client_that_leaves_before_the_first_byte_is_logged_as_gone(
    scripted: Running, path: str, body: dict[str, Any], capsys: pytest.CaptureFixture[str]
) -> None:
    """Nothing watched a stream's client until its first write: one that left while the provider was still to
    answer was logged (and counted in the metrics) as a 200, its stream written to nobody. It is the 499 a client
    leaving mid-stream is, sent and never answered (the reserved worst case, nothing left held)."""
    key = scripted.mint(name=f"gone-early-{path}", budget_usd=1.0)
    capsys.readouterr()
    headers = {"authorization": f"Bearer {key}", "anthropic-version": "2023-06-01"}
    with pytest.raises(httpx.ReadTimeout):  # gone before the provider's first chunk
        httpx.post(f"{scripted.url}{path}", json=body, headers=headers, timeout=httpx.Timeout(10, read=0.2))
    [line] = request_lines(capsys, key)
    assert (line["status"], line["stream"], line.get("error_code")) == (499, True, "client_closed_request")
    [item] = scripted.ledger(key)
    assert (item.status, item.cost_source) == (499, "reserved")
    state = httpx.get(f"{scripted.url}/v1/key", headers=headers).json()
    assert state["reserved_usd"] == 0 and state["spent_usd"] == pytest.approx(item.cost_usd + item.fee_usd), state


@pytest.mark.parametrize(
    ("path", "body"),
    [
        ("/v1/chat/completions", {"model": "drip", "messages": HI, "stream": True}),
        ("/v1/messages", {"model": "drip", "max_tokens": 100, "messages": HI, "stream": True}),
        ("/v1/responses", {"model": "drip", "input": "Hi", "stream": True}),
    ],
    ids=["chat", "messages", "responses"],
)
def test_a_streams_generation_time_is_the_providers_not_the_gateways(
    running: Running,
    path: str,
    body: dict[str, Any],
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Upstream time stopped at a stream's first chunks: everything the provider took after them was logged, put
    on the ledger line, the metrics and EMF as the gateway's own (an 8 s stream: `gateway_ms` 7,998)."""
    from tests.fakes import openai as openai_fake

    monkeypatch.setattr(openai_fake, "SLOW_SECONDS", 0.25)  # between the fake's chunks
    key = running.mint(name=f"timed-{path}")
    capsys.readouterr()
    headers = {"authorization": f"Bearer {key}", "anthropic-version": "2023-06-01"}
    started = time.perf_counter()
    with httpx.stream("POST", f"{running.url}{path}", json=body, headers=headers, timeout=30) as answer:
        assert answer.status_code == 200
        answer.read()
    took_ms = (time.perf_counter() - started) * 1000
    assert took_ms > 750  # (the fake's chunks, each 0.25 s after the last)
    [line] = request_lines(capsys, key)
    [item] = running.ledger(key)
    for upstream_ms, gateway_ms in ((line["upstream_ms"], line["gateway_ms"]), (item.upstream_ms, item.gateway_ms)):
        assert upstream_ms > took_ms * 0.75 and gateway_ms < took_ms / 4, (took_ms, line, item)


def charged_as(cost: dict[str, Any], line: LedgerItem) -> None:
    """A stream's `cost` object says what its ledger line charged."""
    assert (cost["provider_usd"], cost["fee_usd"]) == (line.cost_usd, line.fee_usd)
    assert cost["total_usd"] == pytest.approx(line.cost_usd + line.fee_usd)
    assert (cost["input_tokens"], cost["output_tokens"]) == (line.input_tokens, line.output_tokens)
    assert line.cost_usd > 0


# How each way of breaking off ends the stream: its status (the ledger line's) and error code. The server's own
# failure part way ends every API's stream alike, in the gateway's words (the server's quoted in them): passed
# through, a Messages or Responses stream relayed it as it came, the key it may quote back with it, and ended as one
# cut short.
BROKEN = {"stall": (504, "upstream_timeout"), "reset": (502, "upstream_error"), "error": (502, "upstream_error")}
BROKEN_HEADERS = {"x-gateway-deadline-ms": str(BROKEN_DEADLINE_MS)}


@pytest.mark.parametrize("fault", list(BROKEN))
@pytest.mark.parametrize("api", ["chat", "chat-usage"])
def test_a_chat_stream_that_breaks_off_says_what_it_was_charged(scripted: Running, api: str, fault: str) -> None:
    """A stream that ended on an error event (its deadline passed while the provider stalled, the provider's
    connection reset) was charged on its ledger line, but its last event, the error, said nothing of it: `[DONE]`
    came next, and the client could not reconcile what it was charged (found by review). The error event carries
    the `cost` beside the error, the ledger line's, and the usage where `include_usage` asks for it. (OpenAI's SDK
    raises such an error with the error object alone: read here as sent.)"""
    key = scripted.mint(name=f"broken-{fault}-{api}")
    body: dict[str, Any] = {"model": f"broken-{fault}-{api}", "messages": HI, "stream": True}
    if api == "chat-usage":
        body["stream_options"] = {"include_usage": True}
    headers = {"authorization": f"Bearer {key}", **BROKEN_HEADERS}
    answer = httpx.post(f"{scripted.url}/v1/chat/completions", json=body, headers=headers, timeout=10)
    assert answer.text.endswith("data: [DONE]\n\n")
    *chunks, last = [orjson.loads(line[6:]) for line in answer.text.splitlines() if line.startswith("data: {")]
    assert "".join(chunk["choices"][0]["delta"].get("content") or "" for chunk in chunks) == "".join(BROKEN_WORDS)
    status, code = BROKEN[fault]
    assert last["error"]["code"] == code
    assert ("The server had an error." in last["error"]["message"]) == (fault == "error")
    [line] = scripted.ledger(key)
    assert (line.status, line.cost_source) == (status, "estimate")
    charged_as(last["cost"], line)
    if api == "chat-usage":
        usage = last["usage"]
        assert (usage["prompt_tokens"], usage["completion_tokens"]) == (line.input_tokens, line.output_tokens)
    else:
        assert "usage" not in last


@pytest.mark.parametrize("fault", list(BROKEN))
@pytest.mark.parametrize("api", ["messages-native", "messages-translated"])
def test_a_messages_stream_that_breaks_off_says_what_it_was_charged(scripted: Running, api: str, fault: str) -> None:
    """The same on `/v1/messages`, passed through to Anthropic or translated: its `error` event carries the cost and
    the usage (in Anthropic's counts) charged, and Anthropic's SDK raises the error as before, the event its body."""
    key = scripted.mint(name=f"broken-{fault}-{api}")
    client = anthropic_client(scripted, key)
    texts: list[str] = []
    with (
        pytest.raises(anthropic.APIStatusError) as raised,
        client.messages.stream(
            model=f"broken-{fault}-{api}", max_tokens=100, messages=HI, extra_headers=BROKEN_HEADERS
        ) as stream,
    ):
        texts.extend(stream.text_stream)
    assert "".join(texts) == "".join(BROKEN_WORDS)
    event = raised.value.body
    assert isinstance(event, dict) and event["type"] == "error"
    assert event["error"]["type"] == ("timeout_error" if fault == "stall" else "api_error")
    assert ("The server had an error." in event["error"]["message"]) == (fault == "error")
    status, _ = BROKEN[fault]
    [line] = scripted.ledger(key)
    assert (line.status, line.cost_source) == (status, "estimate")
    charged_as(event["cost"], line)
    usage = event["usage"]
    assert (usage["input_tokens"], usage["output_tokens"]) == (line.input_tokens, line.output_tokens)


@pytest.mark.parametrize("fault", list(BROKEN))
@pytest.mark.parametrize("api", ["responses-native", "responses-translated"])
def test_a_responses_stream_that_breaks_off_fails_with_what_was_streamed_and_charged(
    scripted: Running, api: str, fault: str
) -> None:
    """Its `response.failed` said `"output": []` though the words had been streamed (the deadline cut a long one
    after some 30 deltas), and carried no cost and no usage (found by review). It carries the message as far as it
    was streamed (`status: incomplete`, as OpenAI marks an item its answer was cut in), the usage and cost charged
    (the ledger line's); and the stored response (`store` defaults to true) is that failed response: it was never
    kept, though the event said `store: true` (a 404 to read)."""
    key = scripted.mint(name=f"broken-{fault}-{api}")
    client = openai_client(scripted, key)
    events = list(
        client.responses.create(
            model=f"broken-{fault}-{api}", input="Tell me a story.", stream=True, extra_headers=BROKEN_HEADERS
        )
    )
    deltas = [event.delta for event in events if event.type == "response.output_text.delta"]
    assert "".join(deltas) == "".join(BROKEN_WORDS)
    status, code = BROKEN[fault]
    error, failed = events[-2:]
    assert (error.type, error.code, failed.type) == ("error", code, "response.failed")  # type: ignore[union-attr]
    assert ("The server had an error." in error.message) == (fault == "error")  # type: ignore[union-attr]
    response = failed.response  # type: ignore[union-attr]
    assert response.status == "failed" and response.error is not None and response.error.code == code
    [message] = response.output
    assert (message.type, message.status, message.id) == ("message", "incomplete", events[2].item.id)  # type: ignore[union-attr]
    assert [part.text for part in message.content] == ["".join(BROKEN_WORDS)]  # type: ignore[union-attr]
    [line] = scripted.ledger(key)
    assert (line.status, line.cost_source) == (status, "estimate")
    charged_as((response.model_extra or {})["cost"], line)
    assert response.usage is not None
    assert (response.usage.input_tokens, response.usage.output_tokens) == (line.input_tokens, line.output_tokens)
    stored = client.responses.retrieve(response.id)
    assert stored.model_dump() == response.model_dump()


# --- a server's failure in the same read as its last words ------------------------------------------------------
# In-process (`tests.support.inprocess`), the upstream's reads scripted: the first opens the answer ("Hello"), the
# second is a long delta and the server's failure together, as a server writes its last words and its failure in one
# write. The delta ends with the beginning of the provider's key, which waits for the text to go on (it does not).

LAST_WORDS = "x" * 3000 + PROVIDER_KEYS["OPENAI_API_KEY"][:6]
ANTHROPIC_FAILURE = sse("error", {"type": "error", "error": {"type": "overloaded_error", "message": "Overloaded"}})
SAME_READ_MODELS = {"m": {"deployments": [{"provider": "openai", "model": "m-x"}], "price": {"input": 1, "output": 2}}}
# Each API's path and the provider that serves it: Messages passed through from Anthropic, Responses from a deployment
# that serves the Responses API.
SAME_READ_APIS: dict[str, tuple[str, dict[str, Any] | None]] = {
    "chat": ("/v1/chat/completions", None),
    "messages": ("/v1/messages", {"type": "anthropic", "api_key": "env:OPENAI_API_KEY", "base_url": "http://up"}),
    "responses": (
        "/v1/responses",
        {"type": "openai", "api_key": "env:OPENAI_API_KEY", "base_url": "http://up/v1", "responses_api": "native"},
    ),
}


def opening_and_delta(api: str) -> tuple[bytes, Callable[[str], bytes]]:
    """A stream's opening as far as its first words ("Hello"), in `api`'s events, and its next delta of text."""
    if api == "chat":
        chunk = {"id": "chatcmpl-1", "object": "chat.completion.chunk", "created": 1, "model": "m-x"}

        def chat_delta(text: str, **more: Any) -> bytes:
            choice = {"index": 0, "delta": {"content": text, **more}, "finish_reason": None}
            return b"data: " + orjson.dumps({**chunk, "choices": [choice]}) + b"\n\n"

        return chat_delta("Hello", role="assistant"), chat_delta
    if api == "messages":
        message = {"id": "msg_1", "type": "message", "role": "assistant", "model": "m-x", "content": []}
        message |= {"stop_reason": None, "stop_sequence": None, "usage": {"input_tokens": 5, "output_tokens": 1}}
        block = {"type": "content_block_start", "index": 0, "content_block": {"type": "text", "text": ""}}

        def text_delta(text: str) -> bytes:
            delta = {"type": "text_delta", "text": text}
            return sse("content_block_delta", {"type": "content_block_delta", "index": 0, "delta": delta})

        opening = sse("message_start", {"type": "message_start", "message": message})
        return opening + sse("content_block_start", block) + text_delta("Hello"), text_delta
    where = {"item_id": "msg_1", "output_index": 0, "content_index": 0}
    item = {"id": "msg_1", "type": "message", "role": "assistant", "status": "in_progress", "content": []}
    response = {"id": "resp_1", "object": "response", "created_at": 1, "model": "m-x", "status": "in_progress"}
    said = [
        ("response.created", {"response": {**response, "output": [], "usage": None}}),
        ("response.output_item.added", {"output_index": 0, "item": item}),
        ("response.content_part.added", {**where, "part": {"type": "output_text", "text": "", "annotations": []}}),
    ]
    numbered = iter(range(100))

    def event(kind: str, data: dict[str, Any]) -> bytes:
        return sse(kind, {"type": kind, "sequence_number": next(numbered), **data})

    def output_delta(text: str) -> bytes:
        return event("response.output_text.delta", {**where, "delta": text})

    return b"".join(event(kind, data) for kind, data in said) + output_delta("Hello"), output_delta


def reads(*chunks: bytes) -> httpx.Response:
    """A 200 stream whose body comes in these reads."""

    async def body() -> AsyncIterator[bytes]:
        for chunk in chunks:
            yield chunk

    return httpx.Response(200, content=body(), headers={"content-type": "text/event-stream"})


@pytest.mark.parametrize(
    ("api", "failure"),
    [
        ("chat", UNTYPED_FAILURE),
        ("messages", UNTYPED_FAILURE),
        ("messages", ANTHROPIC_FAILURE),
        ("responses", UNTYPED_FAILURE),
    ],
    ids=["chat", "messages-untyped", "messages-anthropics-error", "responses-untyped"],
)
async def test_a_failure_in_the_same_read_as_the_last_words_ends_the_stream_after_them(
    api: str, failure: bytes
) -> None:
    """A passed-through stream's meter read every event of a read before any went on, and raised the failure among
    them (`MessagesMeter.feed`, `ResponsesMeter.feed`): the words that came with it reached neither the client nor
    the closing `response.failed`, and were charged (5 characters sent, 1,004 output tokens on the line). A stream in
    chunks lost them too (charged only for what it sent). The events before the failure go on, with what the
    redactor held of them (their text ends there), then the failure ends the stream as it did; the charge is what was
    sent."""
    path, provider = SAME_READ_APIS[api]
    opening, delta = opening_and_delta(api)
    served = await serve(
        lambda request: reads(opening, delta(LAST_WORDS) + failure), SAME_READ_MODELS, provider=provider
    )
    asked: dict[str, Any] = {"model": "m", "stream": True, "max_tokens": 2000, "messages": HI}
    answer = await served.post(path, {"model": "m", "stream": True, "input": "hi"} if api == "responses" else asked)
    [line] = await served.ledger()
    await served.gateway.aclose()
    events = [orjson.loads(data[6:]) for data in answer.text.splitlines() if data.startswith("data: {")]
    if api == "chat":
        sent = "".join(event["choices"][0]["delta"].get("content") or "" for event in events if event.get("choices"))
        assert events[-1]["error"]["code"] == "upstream_error"
    elif api == "messages":
        sent = "".join(event["delta"]["text"] for event in events if event["type"] == "content_block_delta")
        assert events[-1]["type"] == "error"
    else:
        sent = "".join(event["delta"] for event in events if event["type"] == "response.output_text.delta")
        assert [event["type"] for event in events[-2:]] == ["error", "response.failed"]
        assert events[-1]["response"]["output"][0]["content"][0]["text"] == sent
    assert sent == "Hello" + LAST_WORDS, (len(sent), line.output_tokens)
    assert (line.status, line.cost_source) == (502, "estimate")
    assert line.output_tokens == math.ceil(len(sent) / 3)


@pytest.mark.parametrize("api", ["messages", "responses"])
async def test_a_passed_through_stream_cut_part_way_through_an_event_relays_none_of_it(api: str) -> None:
    """A stream passed through whose connection ended part-way through an event (a web search's query still
    streaming, its JSON cut): what the cut left of it was relayed as an event, the provider's raw bytes, on which the
    official Anthropic SDK raised JSONDecodeError, never reading the error event after it nor what the stream was
    charged. Every event relayed is JSON now, the stream ends with its API's error as one cut short, and it is
    charged for what was relayed. (A Responses stream's relay reads each event, and was not affected: it is the same
    pass-through, `NativeStream`.)"""
    path, provider = SAME_READ_APIS[api]
    opening, delta = opening_and_delta(api)
    cut = delta(' there, looking up "weather in Paris today"')[:-40]
    served = await serve(lambda request: reads(opening, cut), SAME_READ_MODELS, provider=provider)
    asked: dict[str, Any] = {"model": "m", "stream": True, "max_tokens": 2000, "messages": HI}
    answer = await served.post(path, {"model": "m", "stream": True, "input": "hi"} if api == "responses" else asked)
    [line] = await served.ledger()
    await served.gateway.aclose()
    data = [said[6:] for said in answer.text.splitlines() if said.startswith("data: ")]
    events = [orjson.loads(said) for said in data]  # (each one JSON: what the cut left of an event is none)
    if api == "messages":
        sent = "".join(event["delta"]["text"] for event in events if event["type"] == "content_block_delta")
        assert events[-1]["type"] == "error" and "cost" in events[-1]
    else:
        sent = "".join(event["delta"] for event in events if event["type"] == "response.output_text.delta")
        assert [event["type"] for event in events[-2:]] == ["error", "response.failed"]
    assert sent == "Hello"
    assert (line.status, line.cost_source, line.output_tokens) == (502, "estimate", math.ceil(len(sent) / 3))


# --- a server's failure written as its error object alone ----------------------------------------------------------
# Mistral's error body is the error object itself, `{"object": "error", "message", "type", "param", "code"}`, with no
# `error` member around it (`error_from_body` reads it so, whole); written part way through a stream, in the same shape.

MISTRAL = {"type": "mistral", "api_key": "env:OPENAI_API_KEY", "base_url": "https://api.mistral.ai/v1"}
MISTRAL_MODELS = {
    "m": {"deployments": [{"provider": "openai", "model": "mistral-large-latest"}], "price": {"input": 1, "output": 2}}
}
MISTRAL_FAILURE = {
    "object": "error",
    "message": "Service tier capacity exceeded for this model.",
    "type": "service_tier_capacity_exceeded",
    "param": None,
    "code": "3505",
}
CAPPED_BODIES: dict[str, tuple[str, dict[str, Any]]] = {
    "chat": ("/v1/chat/completions", {"model": "m", "messages": HI, "stream": True, "max_tokens": 1000}),
    "messages": ("/v1/messages", {"model": "m", "messages": HI, "stream": True, "max_tokens": 1000}),
    "responses": ("/v1/responses", {"model": "m", "input": "hi", "stream": True, "max_output_tokens": 1000}),
}


@pytest.mark.parametrize("words_first", [False, True], ids=["at-once", "after-words"])
@pytest.mark.parametrize("api", list(CAPPED_BODIES))
async def test_a_mistral_error_object_in_a_stream_is_its_failure_not_a_malformed_chunk(
    api: str, words_first: bool
) -> None:
    """Mistral's error object written as a stream event was validated as a chunk, failed, and was the provider's
    malformed answer: the client read "the provider sent a malformed stream event (ValidationError)" in place of
    Mistral's words, and a stream failing at once was charged its worst case (1,000 output tokens, $0.00201 on the
    line, `reserved`), where the same failure in OpenAI's shape (`{"error": {...}}`) costs nothing. It is the
    provider's failure now, as that one is, on every API: at once, a 502 in Mistral's words at $0; after some words,
    the stream ends in the gateway's in-stream error with them, charged as a stream cut short (found by review)."""
    opening = b"data: " + orjson.dumps(
        {
            "id": "x1",
            "object": "chat.completion.chunk",
            "created": 1,
            "model": "mistral-large-latest",
            "choices": [{"index": 0, "delta": {"role": "assistant", "content": "Hel"}, "finish_reason": None}],
        }
    )
    failure = b"data: " + orjson.dumps(MISTRAL_FAILURE) + b"\n\n"
    said = (opening + b"\n\n", failure) if words_first else (failure,)
    served = await serve(lambda request: reads(*said), MISTRAL_MODELS, provider=MISTRAL)
    path, body = CAPPED_BODIES[api]
    answer = await served.post(path, body)
    [line] = await served.ledger()
    await served.gateway.aclose()
    assert "Service tier capacity exceeded for this model." in answer.text, answer.text
    assert "malformed" not in answer.text
    if words_first:
        assert answer.status_code == 200 and "Hel" in answer.text
        assert (line.status, line.cost_source, line.output_tokens) == (502, "estimate", 1)
    else:
        assert answer.status_code == 502 and "upstream returned 500" in answer.text
        assert (line.status, line.cost_usd, line.output_tokens) == (502, 0.0, 0), line


# --- a server's failure beside a choice it finished ----------------------------------------------------------------
# OpenRouter's error once the model started ("Errors and Debugging": "emitted ... as an SSE data event"): a chunk with
# `error` beside a choice finished `error`. Here in OpenAI's words as OpenRouter relays them for a deployment on the
# operator's own OpenAI key (BYOK), which name the operator's organisation and quote its key back masked.

OPERATORS_ORGANIZATION = "org-Xq7cL3dP9vT2mB8kR4wZ1sNy"
MASKED_KEYS_TAIL = "wjh3"
OPENROUTER_FAILURE = {
    "code": 502,
    "message": (
        f"Rate limit reached for gpt-4o in organization {OPERATORS_ORGANIZATION} on tokens per min (TPM): Limit 30000,"
        f" Used 29500. Incorrect API key provided: sk-proj-VKMIs*****...{MASKED_KEYS_TAIL}."
    ),
}
OPENROUTER_MODELS = {
    "m": {"deployments": [{"provider": "openai", "model": "openai/gpt-4o"}], "price": {"input": 1, "output": 2}}
}


def openrouter_chunk(finish: str | None, content: str, **more: Any) -> bytes:
    head = {
        "id": "gen-1",
        "object": "chat.completion.chunk",
        "created": 1,
        "model": "openai/gpt-4o",
        "provider": "OpenAI",
    }
    choice = {"index": 0, "delta": {"role": "assistant", "content": content}, "finish_reason": finish}
    return b"data: " + orjson.dumps({**head, **more, "choices": [choice]}) + b"\n\n"


def failing_beside_a_choice(request: httpx.Request) -> httpx.Response:
    """The answer's first words, then (in a read of its own) OpenRouter's failure beside the choice it finished."""
    failure = openrouter_chunk("error", "", error=OPENROUTER_FAILURE)
    return reads(openrouter_chunk(None, "Hello"), failure + b"data: [DONE]\n\n")


@pytest.mark.parametrize("api", list(CAPPED_BODIES))
async def test_a_failure_beside_a_choice_it_finished_ends_the_stream_as_the_providers_error(api: str) -> None:
    """The chunk was read as any other, its `error` an extra member, and relayed as the provider wrote it: the
    operator's OpenAI organisation and its key's last characters reached the client (the OpenAI SDK raises them as
    its `APIError`'s message), where every other error the provider tells is redacted; its finish reason `error` went
    as `length` (a Messages client's `max_tokens`, a Responses one's `incomplete`), and the line was a 200 charged
    as a finished answer. It is the stream's error, as OpenRouter's failure written alone is: the words before it go
    on, then the gateway's in-stream error of the client's API, the provider's words redacted; the line a 502,
    charged as a stream cut short is, for what was sent (found by review)."""
    served = await serve(failing_beside_a_choice, OPENROUTER_MODELS)
    path, body = CAPPED_BODIES[api]
    answer = await served.post(path, body)
    raised = ""
    if api == "chat":  # (the OpenAI SDK raises an event with an `error` as the stream's end, in the error's words)
        sdk = openai.AsyncOpenAI(base_url="http://gw/v1", api_key=served.key.key, http_client=served.http)
        stream = await sdk.chat.completions.create(model="m", messages=HI, stream=True)
        with pytest.raises(openai.APIError) as raising:
            async for _ in stream:
                pass
        raised = raising.value.message
        assert "Rate limit reached for gpt-4o" in raised, raised
    lines = await served.ledger()
    await served.gateway.aclose()
    assert answer.status_code == 200, answer.text
    for seen in (answer.text, raised):
        assert OPERATORS_ORGANIZATION not in seen and MASKED_KEYS_TAIL not in seen, seen
    events = [orjson.loads(data[6:]) for data in answer.text.splitlines() if data.startswith("data: {")]
    if api == "chat":
        sent = "".join(event["choices"][0]["delta"].get("content") or "" for event in events if event.get("choices"))
        assert not [event for event in events if event.get("choices") and event["choices"][0]["finish_reason"]]
        error = events[-1]["error"]
        assert error["code"] == "upstream_error" and "cost" in events[-1]
    elif api == "messages":
        sent = "".join(event["delta"]["text"] for event in events if event["type"] == "content_block_delta")
        assert "message_delta" not in [event["type"] for event in events]  # (no `stop_reason: max_tokens`)
        error = events[-1]["error"]
        assert (events[-1]["type"], error["type"]) == ("error", "api_error")
    else:
        sent = "".join(event["delta"] for event in events if event["type"] == "response.output_text.delta")
        assert [event["type"] for event in events[-2:]] == ["error", "response.failed"]
        assert events[-1]["response"]["status"] == "failed"
        error = events[-2]
    assert sent == "Hello"
    assert "Rate limit reached for gpt-4o" in error["message"], error
    assert {(line.status, line.cost_source, line.output_tokens) for line in lines} == {(502, "estimate", 2)}


# --- a stream of no usable first event, its usage in it ------------------------------------------------------------
# A provider that answers with no choice but its usage (10 in, 5 out): an OpenAI-compatible server's chunk of
# `"choices": []` then `[DONE]`, a first chunk that fails its shape then the usage chunk, Gemini's `candidates: []`
# beside its `usageMetadata`; whole, and streamed in one read.

NO_ANSWER_USAGE = {"prompt_tokens": 10, "completion_tokens": 5, "total_tokens": 15}
NO_ANSWER_PRICE = {"input": 1.0, "output": 2.0}
NO_ANSWER_BILLED = round(10 * 1e-6 + 5 * 2e-6, 8)  # (the worst case, 50 out: $0.00011)
GEMINI = {"type": "gemini", "api_key": "env:OPENAI_API_KEY", "base_url": "http://up"}


def compatible_answer(choices: list[dict[str, Any]]) -> Callable[[httpx.Request], httpx.Response]:
    """An OpenAI-compatible server's answer of `choices` (whole: as the message's; streamed: as one chunk's delta)
    and the usage, whole or streamed as asked."""

    def answer(request: httpx.Request) -> httpx.Response:
        head = {"id": "c1", "created": 1, "model": "x"}
        if not orjson.loads(request.content).get("stream"):
            said = {**head, "object": "chat.completion", "choices": choices, "usage": NO_ANSWER_USAGE}
            return httpx.Response(200, json=said)
        chunk = {**head, "object": "chat.completion.chunk"}
        chunks = [{**chunk, "choices": choices}] if choices else []
        chunks.append({**chunk, "choices": [], "usage": NO_ANSWER_USAGE})
        body = b"".join(b"data: " + orjson.dumps(said) + b"\n\n" for said in chunks) + b"data: [DONE]\n\n"
        return httpx.Response(200, content=body, headers={"content-type": "text/event-stream"})

    return answer


def gemini_without_candidates(request: httpx.Request) -> httpx.Response:
    said = {"candidates": [], "usageMetadata": {"promptTokenCount": 10, "candidatesTokenCount": 5}}
    if "streamGenerateContent" not in str(request.url):
        return httpx.Response(200, json=said)
    return httpx.Response(
        200, content=b"data: " + orjson.dumps(said) + b"\n\n", headers={"content-type": "text/event-stream"}
    )


NO_ANSWERS: dict[str, tuple[Callable[[httpx.Request], httpx.Response], dict[str, Any] | None, int]] = {
    "no-choice": (compatible_answer([]), None, 200),
    "misshapen-choice": (compatible_answer([{"index": 0, "finish_reason": "stop"}]), None, 502),
    "gemini-no-candidates": (gemini_without_candidates, GEMINI, 502),
}


@pytest.mark.parametrize("api", list(CAPPED_BODIES))
@pytest.mark.parametrize("case", list(NO_ANSWERS))
async def test_a_stream_of_no_usable_first_event_is_billed_the_usage_its_provider_reported(case: str, api: str) -> None:
    """A stream of no usable first event was the provider's malformed answer charged the request's worst case
    ($0.00011 on a cap of 50 tokens out, 5.5 times the $0.00002 the provider reported), and told "the provider's
    stream ended before its first event" though it had events, its usage among them, and ended with `[DONE]`; the
    same answer whole was billed the usage (Gemini's without candidates, its worst case too) (found by review). Each
    is billed the usage now, whole and streamed alike. An answer of no choice and its `[DONE]` is the answer the same
    request gets whole, a 200 of no choice, streamed as one (chat `choices: []`, a Responses `response.completed`
    of no output, a Messages `end_turn` of no content); a misshapen one is the malformed answer it is whole, its
    message saying what came."""
    upstream, provider, status = NO_ANSWERS[case]
    served = await serve(
        upstream,
        {"m": {"deployments": [{"provider": "openai", "model": "x"}], "price": NO_ANSWER_PRICE}},
        provider=provider,
    )
    path, body = CAPPED_BODIES[api]
    body = {**body, "max_output_tokens" if api == "responses" else "max_tokens": 50}
    whole = await served.post(path, {**body, "stream": False})
    streamed = await served.post(path, body)
    lines = await served.ledger()
    await served.gateway.aclose()
    assert whole.status_code == streamed.status_code == status, (whole.text, streamed.text)
    assert "before its first event" not in streamed.text
    assert [(line.status, round(line.cost_usd, 8), line.cost_source) for line in lines] == [
        (status, NO_ANSWER_BILLED, "provider")
    ] * 2, streamed.text
    if status != 200:
        return
    events = [orjson.loads(data[6:]) for data in streamed.text.splitlines() if data.startswith("data: {")]
    if api == "chat":
        assert whole.json()["choices"] == [] and [event["choices"] for event in events] == [[]]
        assert events[-1]["cost"]["provider_usd"] == NO_ANSWER_BILLED
    elif api == "messages":
        assert whole.json()["content"] == [] and whole.json()["stop_reason"] == "end_turn"
        events = [event for event in events if event["type"] != "ping"]
        assert [event["type"] for event in events] == ["message_start", "message_delta", "message_stop"]
        assert events[1]["delta"]["stop_reason"] == "end_turn"
    else:
        assert whole.json()["output"] == [] and whole.json()["status"] == "completed"
        assert (events[-1]["type"], events[-1]["response"]["output"]) == ("response.completed", [])


# --- a stream that breaks after its final usage --------------------------------------------------------------------
# Each API's stream as far as the event that carries the provider's final usage (Chat Completions' finish and usage
# chunks, Messages' `message_delta`, a Responses stream's `response.completed`), without the event that ends it
# (`[DONE]`, `message_stop`): then its connection resets, or closes in order.


def finished_but_unended(api: str) -> list[bytes]:
    """`api`'s stream of "Hello", finished and its usage (5 in, 2 out) given, each event a read of its own."""
    opening, _ = opening_and_delta(api)
    if api == "chat":
        head = {"id": "chatcmpl-1", "object": "chat.completion.chunk", "created": 1, "model": "m-x"}
        finish = {**head, "choices": [{"index": 0, "delta": {}, "finish_reason": "stop"}]}
        usage = {**head, "choices": [], "usage": {"prompt_tokens": 5, "completion_tokens": 2, "total_tokens": 7}}
        return [opening, b"data: " + orjson.dumps(finish) + b"\n\n", b"data: " + orjson.dumps(usage) + b"\n\n"]
    if api == "messages":
        delta = {"type": "message_delta", "delta": {"stop_reason": "end_turn", "stop_sequence": None}}
        delta["usage"] = {"output_tokens": 2}
        stop = sse("content_block_stop", {"type": "content_block_stop", "index": 0})
        return [opening, stop, sse("message_delta", delta)]
    message = {"id": "msg_1", "type": "message", "role": "assistant", "status": "completed"}
    message["content"] = [{"type": "output_text", "text": "Hello", "annotations": []}]
    response = {"id": "resp_1", "object": "response", "created_at": 1, "model": "m-x", "status": "completed"}
    response |= {"output": [message], "usage": {"input_tokens": 5, "output_tokens": 2, "total_tokens": 7}}
    completed = {"type": "response.completed", "sequence_number": 9, "response": response}
    return [opening, sse("response.completed", completed)]


def then(parts: list[bytes], reset: bool) -> httpx.Response:
    """A 200 stream of `parts`, a read each, then its connection reset (`reset`) or closed in order."""

    async def body() -> AsyncIterator[bytes]:
        for part in parts:
            yield part
            await asyncio.sleep(0)  # (a read of its own each)
        if reset:
            raise httpx.RemoteProtocolError("peer closed connection without sending complete message body")

    return httpx.Response(200, content=body(), headers={"content-type": "text/event-stream"})


@pytest.mark.parametrize("reset", [True, False], ids=["reset", "closed"])
@pytest.mark.parametrize("api", list(SAME_READ_APIS))
async def test_a_stream_broken_after_its_final_usage_tells_one_story_on_every_api(api: str, reset: bool) -> None:
    """A Messages stream passed through whose connection reset after its `message_delta` (before `message_stop`)
    sent its client Anthropic's `error` event, which the anthropic SDK raises, but was a 200 on its ledger line, log
    and metrics (settled at its `message_delta`), while its breaker counted a failure (found by review). Chat
    Completions and Responses held the event that carries the cost until their upstream ended, and a break before
    their end marker was their in-stream error and a 502. Every API does so now: the client's stream ends on its
    API's error (in place of the held event), the line is a 502 charged the usage the provider gave, and five such
    streams open the deployment's breaker. The same stream closed in order after its final usage is a finished
    one: a 200, no error."""
    path, provider = SAME_READ_APIS[api]
    parts = finished_but_unended(api)
    served = await serve(lambda request: then(parts, reset), SAME_READ_MODELS, provider=provider)
    asked: dict[str, Any] = {"model": "m", "stream": True, "max_tokens": 2000, "messages": HI}
    answers = [
        await served.post(path, {"model": "m", "stream": True, "input": "hi"} if api == "responses" else asked)
        for _ in range(5)
    ]
    lines = await served.ledger()
    state = served.gateway.router.breakers.state("openai/m-x@global")
    await served.gateway.aclose()
    events = [orjson.loads(data[6:]) for data in answers[-1].text.splitlines() if data.startswith("data: {")]
    if api == "chat":
        last, told_failed = events[-1], "error" in events[-1]
        sent = "".join(event["choices"][0]["delta"].get("content") or "" for event in events if event.get("choices"))
    elif api == "messages":
        last, told_failed = events[-1], events[-1]["type"] == "error"
        sent = "".join(event["delta"]["text"] for event in events if event["type"] == "content_block_delta")
    else:
        last, told_failed = events[-1]["response"], events[-1]["type"] == "response.failed"
        assert events[-1]["type"] == ("response.failed" if reset else "response.completed")
        sent = "".join(event["delta"] for event in events if event["type"] == "response.output_text.delta")
    assert sent == "Hello"
    assert told_failed == reset, answers[-1].text
    assert {line.status for line in lines} == {502 if reset else 200}, answers[-1].text
    assert state == ("open" if reset else "closed")
    line = lines[-1]
    assert (line.input_tokens, line.output_tokens) == (5, 2)
    assert last["cost"]["provider_usd"] == line.cost_usd
    if api == "messages":  # (the `message_delta` held: the `error` comes in its place)
        assert [event["type"] for event in events].count("message_delta") == (0 if reset else 1)
