"""`POST /v1/messages`: the Anthropic Messages API in front of any model.

The Anthropic request becomes the internal (OpenAI-form) request, any provider serves it, and the
answer or stream goes back out as an Anthropic message or event sequence. Fields with no internal
equivalent are reported in `x-gateway-dropped-params` like any other parameter not honoured.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any, Literal

import orjson
from pydantic import BaseModel, ConfigDict, Field

from handler.errors import GatewayError, InvalidRequestError
from handler.observability import observe
from handler.pricing import Cost
from handler.proxy import ChunkStream
from handler.schemas import ChatCompletion, ChatCompletionChunk, ChatRequest, Usage
from handler.streaming import sse_event

STOP_REASONS = {
    "stop": "end_turn",
    "length": "max_tokens",
    "tool_calls": "tool_use",
    "function_call": "tool_use",
    "content_filter": "refusal",
}
# Anthropic request fields the internal form carries as such; the rest are reported as dropped.
MAPPED = {
    "model",
    "messages",
    "system",
    "max_tokens",
    "stop_sequences",
    "temperature",
    "top_p",
    "stream",
    "tools",
    "tool_choice",
    "metadata",
}


class _Open(BaseModel):
    model_config = ConfigDict(extra="allow")


class AnthropicMessage(_Open):
    role: Literal["user", "assistant"]
    content: str | list[dict[str, Any]]


class AnthropicTool(_Open):
    name: str = Field(min_length=1)
    description: str | None = None
    input_schema: dict[str, Any] = Field(default_factory=lambda: {"type": "object"})


class AnthropicToolChoice(_Open):
    type: Literal["auto", "any", "tool", "none"]
    name: str | None = None
    disable_parallel_tool_use: bool | None = None


class MessagesRequest(_Open):
    """An Anthropic Messages API request body."""

    model: str = Field(min_length=1)
    max_tokens: int = Field(ge=1)
    messages: list[AnthropicMessage] = Field(min_length=1)
    system: str | list[dict[str, Any]] | None = None
    stop_sequences: list[str] | None = None
    temperature: float | None = Field(default=None, ge=0, le=1)
    top_p: float | None = Field(default=None, ge=0, le=1)
    stream: bool | None = None
    tools: list[AnthropicTool] | None = None
    tool_choice: AnthropicToolChoice | None = None
    metadata: dict[str, Any] | None = None


def _text_of(blocks: str | list[dict[str, Any]] | None) -> str:
    if blocks is None:
        return ""
    if isinstance(blocks, str):
        return blocks
    return "".join(str(b.get("text", "")) for b in blocks if b.get("type") == "text")


def _image_part(block: dict[str, Any]) -> dict[str, Any]:
    source = block.get("source") or {}
    if source.get("type") == "base64":
        url = f"data:{source.get('media_type', 'image/png')};base64,{source.get('data', '')}"
    elif source.get("type") == "url":
        url = str(source.get("url", ""))
    else:
        raise InvalidRequestError(f"image source type '{source.get('type')}' is not supported", param="messages")
    return {"type": "image_url", "image_url": {"url": url}}


def to_chat_request(req: MessagesRequest) -> tuple[ChatRequest, list[str]]:
    """The internal request for an Anthropic one, and the Anthropic fields it cannot carry."""
    dropped = sorted(set(req.model_fields_set | set(req.model_extra or {})) - MAPPED)
    messages: list[dict[str, Any]] = []
    system = _text_of(req.system)
    if system:
        messages.append({"role": "system", "content": system})
    for i, message in enumerate(req.messages):
        blocks = [{"type": "text", "text": message.content}] if isinstance(message.content, str) else message.content
        if message.role == "assistant":
            messages.append(_assistant(blocks, i))
            continue
        parts: list[dict[str, Any]] = []
        for block in blocks:
            kind = block.get("type")
            if kind == "tool_result":
                content = block.get("content")
                text = content if isinstance(content, str) else _text_of(content)
                if block.get("is_error"):
                    text = f"[tool error] {text}"
                messages.append({"role": "tool", "tool_call_id": str(block.get("tool_use_id", "")), "content": text})
            elif kind == "text":
                parts.append({"type": "text", "text": str(block.get("text", ""))})
            elif kind == "image":
                parts.append(_image_part(block))
            else:
                raise InvalidRequestError(f"messages[{i}]: content block type '{kind}' is not supported")
        if parts:
            messages.append({"role": "user", "content": parts})
    body: dict[str, Any] = {"model": req.model, "messages": messages, "max_tokens": req.max_tokens}
    if req.stop_sequences:
        body["stop"] = req.stop_sequences
    for name in ("temperature", "top_p"):
        if getattr(req, name) is not None:
            body[name] = getattr(req, name)
    if req.stream:
        body["stream"] = True
    if req.metadata and req.metadata.get("user_id"):
        body["user"] = str(req.metadata["user_id"])
    if req.tools:
        body["tools"] = [
            {
                "type": "function",
                # A tool without a description sends none, never `"description": null`.
                "function": {"name": t.name, "parameters": t.input_schema}
                | ({"description": t.description} if t.description is not None else {}),
            }
            for t in req.tools
        ]
    if req.tool_choice is not None:
        choice = req.tool_choice
        if choice.type == "tool":
            if not choice.name:
                raise InvalidRequestError("tool_choice.name is required when type is 'tool'", param="tool_choice")
            body["tool_choice"] = {"type": "function", "function": {"name": choice.name}}
        else:
            body["tool_choice"] = {"auto": "auto", "any": "required", "none": "none"}[choice.type]
        if choice.disable_parallel_tool_use:
            body["parallel_tool_calls"] = False
    try:
        return ChatRequest.model_validate(body), dropped
    except ValueError as exc:
        raise InvalidRequestError(f"the request cannot be translated: {exc}") from None


def _assistant(blocks: list[dict[str, Any]], index: int) -> dict[str, Any]:
    text, calls, reasoning = [], [], []
    for block in blocks:
        kind = block.get("type")
        if kind == "text":
            text.append(str(block.get("text", "")))
        elif kind == "tool_use":
            arguments = orjson.dumps(block.get("input") or {}).decode()
            calls.append(
                {
                    "id": str(block.get("id", "")),
                    "type": "function",
                    "function": {"name": block.get("name"), "arguments": arguments},
                }
            )
        elif kind in ("thinking", "redacted_thinking"):
            reasoning.append(str(block.get("thinking", "")))
        else:
            raise InvalidRequestError(f"messages[{index}]: assistant content block type '{kind}' is not supported")
    message: dict[str, Any] = {"role": "assistant", "content": "".join(text) or None}
    if calls:
        message["tool_calls"] = calls
    return message


def anthropic_usage(usage: Usage) -> dict[str, int]:
    """Anthropic counts `input_tokens` without the cached and cache-write tokens."""
    cached, written = usage.cached_tokens, usage.cache_write_tokens
    return {
        "input_tokens": max(0, usage.prompt_tokens - cached - written),
        "output_tokens": usage.completion_tokens,
        "cache_read_input_tokens": cached,
        "cache_creation_input_tokens": written,
    }


def _arguments(raw: str) -> Any:
    try:
        return orjson.loads(raw) if raw else {}
    except orjson.JSONDecodeError:
        return {"_raw": raw}


def stop_reason(finish_reason: str | None, stop_sequence: str | None) -> str:
    """Anthropic's stop reason: `stop_sequence` when the provider said which one fired."""
    return "stop_sequence" if stop_sequence else STOP_REASONS.get(finish_reason or "stop", "end_turn")


def to_message(completion: ChatCompletion, model: str, cost: Cost | None) -> dict[str, Any]:
    """An Anthropic `message` for the first choice of a completion."""
    choice = completion.choices[0] if completion.choices else None
    content: list[dict[str, Any]] = []
    if choice is not None:
        if choice.message.reasoning_content:
            content.append({"type": "thinking", "thinking": choice.message.reasoning_content, "signature": ""})
        if choice.message.content or choice.message.refusal:  # a refusal (a blocked prompt) is the answer's text
            content.append({"type": "text", "text": choice.message.content or choice.message.refusal})
        for call in choice.message.tool_calls or ():
            content.append(
                {
                    "type": "tool_use",
                    "id": call.id,
                    "name": call.function.name,
                    "input": _arguments(call.function.arguments),
                }
            )
    reason = choice.finish_reason if choice else None
    message: dict[str, Any] = {
        "id": f"msg_{completion.id}",
        "type": "message",
        "role": "assistant",
        "model": model,
        "content": content,
        "stop_reason": stop_reason(reason, choice.stop_sequence if choice else None),
        "stop_sequence": choice.stop_sequence if choice else None,
        "usage": anthropic_usage(completion.usage or Usage()),
    }
    if cost is not None:
        message["cost"] = cost.as_event()
    return message


class EventWriter:
    """Turns the internal chunk stream into Anthropic's event sequence, block by block."""

    def __init__(self, model: str, message_id: str) -> None:
        self.model = model
        self.message_id = message_id
        self.index = -1
        self.open: tuple[str, int] | None = None
        self.finish_reason: str | None = None
        self.stop_sequence: str | None = None

    def start(self, input_tokens: int) -> bytes:
        message: dict[str, Any] = {
            "id": self.message_id,
            "type": "message",
            "role": "assistant",
            "model": self.model,
            "content": [],
            "stop_reason": None,
            "stop_sequence": None,
            "usage": {"input_tokens": input_tokens, "output_tokens": 0},
        }
        return sse_event("message_start", {"type": "message_start", "message": message}) + sse_event(
            "ping", {"type": "ping"}
        )

    def _switch(self, kind: str, key: int, block: dict[str, Any]) -> bytes:
        if self.open == (kind, key):
            return b""
        out = self._close()
        self.index += 1
        self.open = (kind, key)
        return out + sse_event(
            "content_block_start", {"type": "content_block_start", "index": self.index, "content_block": block}
        )

    def _close(self) -> bytes:
        if self.open is None:
            return b""
        self.open = None
        return sse_event("content_block_stop", {"type": "content_block_stop", "index": self.index})

    def _delta(self, delta: dict[str, Any]) -> bytes:
        return sse_event("content_block_delta", {"type": "content_block_delta", "index": self.index, "delta": delta})

    def chunk(self, chunk: ChatCompletionChunk) -> bytes:
        out = b""
        for choice in chunk.choices:
            if choice.index != 0:
                continue
            delta = choice.delta
            if delta.reasoning_content:
                out += self._switch("thinking", 0, {"type": "thinking", "thinking": "", "signature": ""})
                out += self._delta({"type": "thinking_delta", "thinking": delta.reasoning_content})
            if delta.content or delta.refusal:
                out += self._switch("text", 0, {"type": "text", "text": ""})
                out += self._delta({"type": "text_delta", "text": delta.content or delta.refusal})
            for call in delta.tool_calls or ():
                function = call.function
                block = {
                    "type": "tool_use",
                    "id": call.id or "",
                    "name": (function.name if function else "") or "",
                    "input": {},
                }
                out += self._switch("tool", call.index, block)
                if function and function.arguments:
                    out += self._delta({"type": "input_json_delta", "partial_json": function.arguments})
            if choice.finish_reason:
                self.finish_reason = choice.finish_reason
                self.stop_sequence = choice.stop_sequence
        return out

    def finish(self, usage: Usage, cost: Cost | None) -> bytes:
        delta = {
            "stop_reason": stop_reason(self.finish_reason, self.stop_sequence),
            "stop_sequence": self.stop_sequence,
        }
        payload: dict[str, Any] = {"type": "message_delta", "delta": delta, "usage": anthropic_usage(usage)}
        if cost is not None:
            payload["cost"] = cost.as_event()
        return self._close() + sse_event("message_delta", payload) + sse_event("message_stop", {"type": "message_stop"})


async def anthropic_events(stream: ChunkStream, model: str, input_tokens: int) -> AsyncIterator[bytes]:
    """The client's Anthropic event stream for an internal chunk stream."""
    writer = EventWriter(model, f"msg_{stream.ex.request_id}")
    yield writer.start(input_tokens)
    failure: GatewayError | None = None
    try:
        async for chunk in stream:
            data = writer.chunk(chunk)
            if data:
                yield data
        await stream.complete()
        yield writer.finish(stream.usage(), stream.ex.cost)
    except GatewayError as exc:
        failure = exc
        yield sse_event("error", exc.anthropic_body())
    finally:
        await stream.close()
        observe(stream.ex, 200, stream=True, code=failure.code if failure else None)
