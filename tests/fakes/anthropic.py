"""A fake Anthropic Messages API (`POST /v1/messages`), speaking Anthropic's documented wire format.

Behaviour is chosen by the requested model name, or by `metadata.user_id` (the OpenAI `user`) so a
gateway test can pick a fault on a configured model: `fail-429` (rate_limit_error with retry-after: 0),
`fail-500` (api_error), `fail-529` (overloaded_error), `fail-400` (invalid_request_error), `slow`
(waits `SLOW_SECONDS` before answering), `stream-cut` (a stream that stops mid-way, without
`message_delta` or `message_stop`), `bad-json` (a 200 whose body is not JSON), `thinker` (thinking on:
the answer opens with a signed thinking block, and an assistant turn that called a tool must come back
opening with it, signature intact, as the real API requires). A request with tools and a
`tool_choice` of `any` or `tool` is answered with a `tool_use` block. Every request is recorded on
`app.state.requests`.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

import orjson
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response, StreamingResponse
from starlette.routing import Route

from tests.fakes.script import ScriptedCall, input_for, scripted_turn, texts

API_KEY = "test-anthropic-key"
TEXT = "Hello from fake Anthropic."
TOOL_INPUT = {"city": "Paris"}
OUTPUT_TOKENS = 7
SLOW_SECONDS = 2.0
MESSAGE_ID = "msg_01FakeAnthropic"
TOOL_USE_ID = "toolu_01FakeAnthropic"
THINKING = "The user wants the weather; I should call the tool."
SIGNATURE = "EqQBCkYIBxgCKkBfakeSignature"


def _error(status: int, kind: str, message: str, headers: dict[str, str] | None = None) -> Response:
    body = {"type": "error", "error": {"type": kind, "message": message}, "request_id": "req_fake"}
    return Response(orjson.dumps(body), status, headers=headers, media_type="application/json")


def input_tokens(body: dict[str, Any]) -> int:
    return max(1, len(orjson.dumps([body.get("system"), body.get("messages")])) // 4)


def _problem(body: dict[str, Any]) -> str | None:
    """What the real API would reject in a body, for the few rules an adapter may get wrong."""
    if not isinstance(body.get("max_tokens"), int):
        return "max_tokens: Field required"
    messages = body.get("messages")
    if not isinstance(messages, list) or not messages:
        return "messages: at least one message is required"
    for i, message in enumerate(messages):
        if message.get("role") not in ("user", "assistant"):
            return f"messages.{i}.role: Input should be 'user' or 'assistant'"
    if body.get("tool_choice") and not body.get("tools"):
        return "tool_choice may only be specified while providing tools."
    if "thinker" in str(body.get("model")):
        for i, message in enumerate(messages):
            content = message.get("content")
            if message.get("role") != "assistant" or not isinstance(content, list):
                continue
            if not any(block.get("type") == "tool_use" for block in content):
                continue
            first = content[0]
            if first.get("type") not in ("thinking", "redacted_thinking"):
                return (
                    f"messages.{i}.content.0.type: Expected `thinking` or `redacted_thinking`, but found "
                    f"`{first.get('type')}`. When `thinking` is enabled, a final `assistant` message must start "
                    "with a thinking block (preceeding the lastmost set of `tool_use` and `tool_result` blocks)."
                )
            if first.get("type") == "thinking" and (first.get("signature"), first.get("thinking")) != (
                SIGNATURE,
                THINKING,
            ):
                return f"messages.{i}.content.0: Invalid `signature` in `thinking` block"
    return None


def _script(body: dict[str, Any]) -> ScriptedCall | str | None:
    messages = body.get("messages") or []
    users = [texts(m.get("content")) for m in messages if m.get("role") == "user"]
    last = messages[-1].get("content") if messages else None
    results = [b for b in last if b.get("type") == "tool_result"] if isinstance(last, list) else []
    result = texts(results[-1].get("content")) if results else None
    return scripted_turn(users, [str(t.get("name")) for t in body.get("tools") or []], result)


def _tool_name(body: dict[str, Any]) -> str | None:
    tools = body.get("tools") or []
    choice = body.get("tool_choice") or {}
    script = _script(body)
    if isinstance(script, ScriptedCall):
        return script.name
    if not tools or choice.get("type") not in ("any", "tool"):
        return None
    return str(choice.get("name") or tools[0]["name"])


def _sse(event: str, data: dict[str, Any]) -> bytes:
    return b"event: " + event.encode() + b"\ndata: " + orjson.dumps(data) + b"\n\n"


def create_app() -> Starlette:
    requests: list[dict[str, Any]] = []

    async def messages(request: Request) -> Response:
        raw = await request.body()
        body = orjson.loads(raw) if raw else {}
        requests.append({"path": request.url.path, "headers": dict(request.headers), "json": body})
        if request.headers.get("x-api-key") != API_KEY:
            return _error(401, "authentication_error", "invalid x-api-key")
        if not request.headers.get("anthropic-version"):
            return _error(400, "invalid_request_error", "anthropic-version: header is required")
        model = str(body.get("model", ""))
        faults = f"{model} {(body.get('metadata') or {}).get('user_id', '')}"
        if "fail-429" in faults:
            return _error(
                429, "rate_limit_error", "Number of request tokens has exceeded your rate limit.", {"retry-after": "0"}
            )
        if "fail-500" in faults:
            return _error(500, "api_error", "Internal server error")
        if "fail-529" in faults:
            return _error(529, "overloaded_error", "Overloaded")
        if "fail-400" in faults:
            return _error(400, "invalid_request_error", "messages: text content blocks must be non-empty")
        problem = _problem(body)
        if problem:
            return _error(400, "invalid_request_error", problem)
        if "slow" in faults:
            await asyncio.sleep(SLOW_SECONDS)
        if "bad-json" in faults:
            return Response(b"{not json", 200, media_type="application/json")
        tool = _tool_name(body)
        script = _script(body)
        schemas = {t.get("name"): t.get("input_schema") for t in body.get("tools") or []}
        tool_input = script.arguments if isinstance(script, ScriptedCall) else input_for(schemas.get(tool), TOOL_INPUT)
        text = script if isinstance(script, str) else TEXT
        if body.get("stream"):
            events = _stream(body, model, tool, "stream-cut" in faults, tool_input, text)
            return StreamingResponse(events, media_type="text/event-stream")
        content: list[dict[str, Any]]
        if tool:
            content = [{"type": "tool_use", "id": TOOL_USE_ID, "name": tool, "input": tool_input}]
        else:
            content = [{"type": "text", "text": text}]
        if "thinker" in model:
            content.insert(0, {"type": "thinking", "thinking": THINKING, "signature": SIGNATURE})
        answer = {
            "id": MESSAGE_ID,
            "type": "message",
            "role": "assistant",
            "model": model,
            "content": content,
            "stop_reason": "tool_use" if tool else "end_turn",
            "stop_sequence": None,
            "usage": {
                "input_tokens": input_tokens(body),
                "cache_creation_input_tokens": 0,
                "cache_read_input_tokens": 0,
                "output_tokens": OUTPUT_TOKENS,
                "service_tier": "standard",
            },
        }
        return Response(orjson.dumps(answer), media_type="application/json")

    async def _stream(
        body: dict[str, Any], model: str, tool: str | None, cut: bool, tool_input: dict[str, Any], text: str
    ) -> AsyncIterator[bytes]:
        start: dict[str, Any] = {
            "id": MESSAGE_ID,
            "type": "message",
            "role": "assistant",
            "model": model,
            "content": [],
            "stop_reason": None,
            "stop_sequence": None,
            "usage": {
                "input_tokens": input_tokens(body),
                "cache_creation_input_tokens": 0,
                "cache_read_input_tokens": 0,
                "output_tokens": 1,
            },
        }
        yield _sse("message_start", {"type": "message_start", "message": start})
        index = 0
        if "thinker" in model:
            block = {"type": "thinking", "thinking": "", "signature": ""}
            yield _sse("content_block_start", {"type": "content_block_start", "index": 0, "content_block": block})
            for delta in (
                {"type": "thinking_delta", "thinking": THINKING[:12]},
                {"type": "thinking_delta", "thinking": THINKING[12:]},
                {"type": "signature_delta", "signature": SIGNATURE},
            ):
                yield _sse("content_block_delta", {"type": "content_block_delta", "index": 0, "delta": delta})
            yield _sse("content_block_stop", {"type": "content_block_stop", "index": 0})
            index = 1
        if tool:
            block: dict[str, Any] = {"type": "tool_use", "id": TOOL_USE_ID, "name": tool, "input": {}}
            arguments = orjson.dumps(tool_input).decode()
            pieces = ("", arguments[: len(arguments) // 2], arguments[len(arguments) // 2 :])
            deltas = [{"type": "input_json_delta", "partial_json": p} for p in pieces]
        else:
            block = {"type": "text", "text": ""}
            words = text.split(" ")
            deltas = [{"type": "text_delta", "text": (" " if i else "") + w} for i, w in enumerate(words)]
        yield _sse("content_block_start", {"type": "content_block_start", "index": index, "content_block": block})
        yield _sse("ping", {"type": "ping"})
        for i, delta in enumerate(deltas):
            if cut and i == 2:
                return
            yield _sse("content_block_delta", {"type": "content_block_delta", "index": index, "delta": delta})
        yield _sse("content_block_stop", {"type": "content_block_stop", "index": index})
        yield _sse(
            "message_delta",
            {
                "type": "message_delta",
                "delta": {"stop_reason": "tool_use" if tool else "end_turn", "stop_sequence": None},
                "usage": {"output_tokens": OUTPUT_TOKENS},
            },
        )
        yield _sse("message_stop", {"type": "message_stop"})

    app = Starlette(routes=[Route("/v1/messages", messages, methods=["POST"])])
    app.state.requests = requests
    return app
