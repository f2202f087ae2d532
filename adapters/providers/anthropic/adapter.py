"""Anthropic's Messages API (`POST /v1/messages`), translated to and from the gateway's OpenAI form.

System and developer messages become the top-level `system`; consecutive turns of one role merge
(tool results join the user turn); `max_tokens` is always sent, since Anthropic requires it. A
`json_schema` response format is served by a forced tool whose input comes back as the message text.
Parameters with no Anthropic equivalent are reported in `BuiltRequest.dropped`, never silently lost.
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from typing import Any, Literal

import orjson
from pydantic import BaseModel, ConfigDict, ValidationError

from adapters.providers import thinking
from adapters.providers.params import Rule, apply_rules, require_turns
from handler.errors import InvalidRequestError, UpstreamError
from handler.ports import (
    BuiltRequest,
    ProviderAdapter,
    StreamEvent,
    Target,
    UpstreamRequest,
    json_body,
    malformed,
    upstream_error,
)
from handler.schemas import (
    AssistantMessage,
    ChatCompletion,
    ChatCompletionChunk,
    ChatRequest,
    Choice,
    ChunkChoice,
    ChunkDelta,
    FilePart,
    FinishReason,
    FunctionCall,
    FunctionCallDelta,
    ImagePart,
    Message,
    TextPart,
    ToolCall,
    ToolCallDelta,
    Usage,
)

API_VERSION = "2023-06-01"
JSON_TOOL = "json_response"
JSON_OBJECT_INSTRUCTION = "Respond only with a single valid JSON object, with no text before or after it."

# Top-level parameters that map one to one; whatever else the client sent (and is not translated
# below) is reported as dropped.
RULES: dict[str, Rule] = {
    "temperature": Rule(clamp=(0.0, 1.0)),
    "top_p": Rule(),
    "top_k": Rule(),
    "n": Rule(only=(1,)),
}
TRANSLATED = frozenset(
    {
        "model",
        "messages",
        "stream",
        "stream_options",
        "max_tokens",
        "max_completion_tokens",
        "stop",
        "tools",
        "tool_choice",
        "parallel_tool_calls",
        "response_format",
        "user",
    }
)

# When neither the client nor the config caps the output: (model name fragment, max_tokens), first match.
DEFAULT_MAX_TOKENS: tuple[tuple[str, int], ...] = (
    ("claude-opus-4", 16384),
    ("claude-sonnet-4", 16384),
    ("claude-haiku-4", 8192),
    ("claude-3-7-sonnet", 16384),
    ("claude-3-5", 8192),
    ("claude-3", 4096),
)
FALLBACK_MAX_TOKENS = 4096

STOP_REASONS: dict[str, FinishReason] = {
    "end_turn": "stop",
    "stop_sequence": "stop",
    "pause_turn": "stop",
    "max_tokens": "length",
    "model_context_window_exceeded": "length",
    "tool_use": "tool_calls",
    "refusal": "content_filter",
}

# The HTTP status Anthropic uses for each error type, for errors that arrive inside a stream.
ERROR_STATUS: dict[str, int] = {
    "invalid_request_error": 400,
    "authentication_error": 401,
    "billing_error": 402,
    "permission_error": 403,
    "not_found_error": 404,
    "request_too_large": 413,
    "rate_limit_error": 429,
    "api_error": 500,
    "timeout_error": 504,
    "overloaded_error": 529,
}


def default_max_tokens(model: str) -> int:
    """A sensible output cap for a Claude model when nobody gave one."""
    for fragment, limit in DEFAULT_MAX_TOKENS:
        if fragment in model:
            return limit
    return FALLBACK_MAX_TOKENS


def error_from_body(status: int, body: bytes, headers: Mapping[str, str]) -> UpstreamError:
    """Anthropic's error body `{"type": "error", "error": {"type", "message"}}`, tolerating others."""
    message, kind = "", None
    try:
        data = orjson.loads(body) if body else None
    except orjson.JSONDecodeError:
        data = None
    if isinstance(data, dict):
        error = data.get("error")
        if isinstance(error, dict):
            message = str(error.get("message") or "")
            kind = str(error["type"]) if error.get("type") else None
        elif isinstance(error, str):
            message = error
    if not message:
        message = body[:200].decode("utf-8", "replace") if body else "no error body"
    return upstream_error(status, message, headers, upstream_type=kind)


# --- wire models (the parts of Anthropic's answer the gateway reads) -----------------------------


class _Wire(BaseModel):
    model_config = ConfigDict(extra="allow")


class WireUsage(_Wire):
    """Anthropic's usage: `input_tokens` excludes cache reads and writes, which OpenAI counts in."""

    input_tokens: int | None = None
    output_tokens: int = 0
    cache_creation_input_tokens: int | None = None
    cache_read_input_tokens: int | None = None

    def to_usage(self) -> Usage:
        read, write = self.cache_read_input_tokens or 0, self.cache_creation_input_tokens or 0
        return Usage.of((self.input_tokens or 0) + read + write, self.output_tokens, cached=read, cache_write=write)

    def update(self, later: WireUsage) -> None:
        """Fold in a `message_delta` usage: cumulative counts, input fields only when present."""
        self.output_tokens = later.output_tokens
        for name in ("input_tokens", "cache_creation_input_tokens", "cache_read_input_tokens"):
            if getattr(later, name) is not None:
                setattr(self, name, getattr(later, name))


class WireBlock(_Wire):
    type: str
    text: str | None = None
    thinking: str | None = None
    signature: str | None = None
    data: str | None = None
    id: str | None = None
    name: str | None = None
    input: Any = None


class WireMessage(_Wire):
    id: str
    type: Literal["message"]
    role: Literal["assistant"]
    model: str
    content: list[WireBlock]
    stop_reason: str | None = None
    usage: WireUsage


def _finish(stop_reason: str | None, json_answer: bool, tool_calls: bool) -> FinishReason:
    if json_answer and not tool_calls:
        return "stop"
    return STOP_REASONS.get(stop_reason or "end_turn", "stop")


# --- request -------------------------------------------------------------------------------------


def _media(url: str, param: str) -> tuple[str, str]:
    """`(media_type, base64 data)` of a `data:` URL."""
    header, sep, data = url.partition(",")
    if not sep or not header.endswith(";base64"):
        raise InvalidRequestError("only base64 data URLs are supported", param=param)
    return header[len("data:") : -len(";base64")], data


def _image_block(part: ImagePart) -> dict[str, Any]:
    url = part.image_url.url
    if url.startswith("data:"):
        media_type, data = _media(url, "messages")
        return {"type": "image", "source": {"type": "base64", "media_type": media_type, "data": data}}
    if url.startswith(("http://", "https://")):
        return {"type": "image", "source": {"type": "url", "url": url}}
    raise InvalidRequestError("an image_url must be an http(s) or data URL", param="messages")


def _file_block(part: FilePart) -> dict[str, Any]:
    data_url = part.file.get("file_data")
    if isinstance(data_url, str) and data_url.startswith("data:application/pdf"):
        media_type, data = _media(data_url, "messages")
        return {"type": "document", "source": {"type": "base64", "media_type": media_type, "data": data}}
    raise InvalidRequestError("only PDF files given as file_data can be sent to this provider", param="messages")


def _content_blocks(message: Message) -> list[dict[str, Any]]:
    if message.content is None:
        return []
    if isinstance(message.content, str):
        return [{"type": "text", "text": message.content}] if message.content else []
    blocks: list[dict[str, Any]] = []
    for part in message.content:
        if isinstance(part, TextPart):
            if part.text:
                blocks.append({"type": "text", "text": part.text})
        elif isinstance(part, ImagePart):
            blocks.append(_image_block(part))
        elif isinstance(part, FilePart):
            blocks.append(_file_block(part))
        else:
            raise InvalidRequestError(f"content part '{part.type}' is not supported by this provider", param="messages")
    return blocks


def _tool_input(arguments: str) -> Any:
    try:
        value = orjson.loads(arguments) if arguments.strip() else {}
    except orjson.JSONDecodeError:
        raise InvalidRequestError("a tool call's arguments are not valid JSON", param="messages") from None
    return value if isinstance(value, dict) else {"value": value}


def _turn(message: Message) -> tuple[str, list[dict[str, Any]]]:
    """The Anthropic role and content blocks of one non-system message."""
    if message.role in ("tool", "function"):
        result: dict[str, Any] = {"type": "tool_result", "tool_use_id": message.tool_call_id or message.name or ""}
        blocks = _content_blocks(message)
        if blocks:
            result["content"] = blocks
        return "user", [result]
    blocks = _content_blocks(message)
    if message.role == "assistant":
        blocks[:0] = thinking.thinking_blocks(message)  # a turn's signed thinking comes first, as it was
        for call in message.tool_calls or ():
            blocks.append(
                {
                    "type": "tool_use",
                    "id": call.id,
                    "name": call.function.name,
                    "input": _tool_input(call.function.arguments),
                }
            )
    return ("assistant" if message.role == "assistant" else "user"), blocks


def convert_messages(messages: list[Message]) -> tuple[list[str], list[dict[str, Any]]]:
    """System texts, and the conversation as alternating turns (same-role neighbours merged)."""
    system: list[str] = []
    turns: list[dict[str, Any]] = []
    for message in messages:
        if message.role in ("system", "developer"):
            if message.text():
                system.append(message.text())
            continue
        role, blocks = _turn(message)
        if not blocks:
            continue
        if turns and turns[-1]["role"] == role:
            turns[-1]["content"].extend(blocks)
        else:
            turns.append({"role": role, "content": blocks})
    for turn in turns:
        # Anthropic wants a user turn's tool results before any text that follows them.
        turn["content"].sort(key=lambda block: block["type"] != "tool_result")
    return system, turns


def _tool_choice(req: ChatRequest) -> dict[str, Any] | None:
    choice = req.tool_choice
    if choice is None:
        result: dict[str, Any] | None = None
    elif choice == "none":
        return {"type": "none"}
    elif choice == "auto":
        result = {"type": "auto"}
    elif choice == "required":
        result = {"type": "any"}
    else:
        result = {"type": "tool", "name": choice.function.name}
    if req.parallel_tool_calls is False:
        result = (result or {"type": "auto"}) | {"disable_parallel_tool_use": True}
    return result


def _tools(req: ChatRequest) -> list[dict[str, Any]]:
    tools = []
    for tool in req.tools or ():
        schema = dict(tool.function.parameters or {})
        schema.setdefault("type", "object")
        entry: dict[str, Any] = {"name": tool.function.name, "input_schema": schema}
        if tool.function.description:
            entry["description"] = tool.function.description
        tools.append(entry)
    return tools


def json_tool(req: ChatRequest) -> dict[str, Any] | None:
    """The forced tool serving a `json_schema` response format, or None for other requests."""
    fmt = req.response_format
    if fmt is None or fmt.type != "json_schema":
        return None
    spec = fmt.json_schema
    schema = dict((spec.schema_ if spec else None) or {"type": "object"})
    description = (spec.description if spec else None) or "Give the answer as this tool's input."
    return {"name": JSON_TOOL, "description": description, "input_schema": schema}


# --- stream --------------------------------------------------------------------------------------


class AnthropicStreamParser:
    """Anthropic's named SSE events into OpenAI chunks.

    `message_start` gives the role chunk, each `tool_use` block a tool-call delta (index, id, name)
    followed by its `input_json_delta` fragments, `message_delta` the finish reason and final usage.
    With a `json_schema` request, the forced tool's input streams as content text instead.
    """

    def __init__(self, model: str, json_mode: bool) -> None:
        self.usage: Usage | None = None
        self._json_mode = json_mode
        self._id = "msg_unknown"
        self._model = model
        self._created = int(time.time())
        self._wire_usage = WireUsage()
        self._blocks: dict[int, tuple[str, int]] = {}
        self._thinking: dict[int, list[str]] = {}  # a thinking block's text so far, until its signature
        self._tools = 0
        self._json_answer = False
        self._usage_sent = False

    def _chunk(self, delta: ChunkDelta | None = None, finish: FinishReason | None = None) -> ChatCompletionChunk:
        choice = ChunkChoice(delta=delta or ChunkDelta(), finish_reason=finish)
        return ChatCompletionChunk(id=self._id, created=self._created, model=self._model, choices=[choice])

    def feed(self, event: StreamEvent) -> list[ChatCompletionChunk]:
        if not event.data:
            return []
        try:
            payload = orjson.loads(event.data)
        except orjson.JSONDecodeError as exc:
            raise malformed("upstream sent a stream event that is not JSON", "invalid_json") from exc
        if not isinstance(payload, dict):
            raise malformed("upstream sent a stream event that is not an object")
        kind = payload.get("type") or event.event
        try:
            return self._event(str(kind), payload)
        except ValidationError as exc:
            raise malformed(f"upstream sent a malformed '{kind}' event") from exc

    def _event(self, kind: str, payload: dict[str, Any]) -> list[ChatCompletionChunk]:
        if kind == "message_start":
            message = WireMessage.model_validate(payload.get("message"))
            self._id, self._model = message.id, message.model
            self._wire_usage = message.usage
            return [self._chunk(ChunkDelta(role="assistant", content=""))]
        if kind == "content_block_start":
            return self._block_start(int(payload.get("index", 0)), WireBlock.model_validate(payload["content_block"]))
        if kind == "content_block_delta":
            return self._block_delta(int(payload.get("index", 0)), payload.get("delta") or {})
        if kind == "message_delta":
            delta = payload.get("delta") or {}
            if payload.get("usage") is not None:
                self._wire_usage.update(WireUsage.model_validate(payload["usage"]))
            self.usage = self._wire_usage.to_usage()
            finish = _finish(delta.get("stop_reason"), self._json_answer, self._tools > 0)
            return [self._chunk(finish=finish)]
        if kind == "message_stop":
            return self._usage_chunk()
        if kind == "error":
            error = payload.get("error") or {}
            status = ERROR_STATUS.get(str(error.get("type")), 500)
            raise error_from_body(status, orjson.dumps(payload), {})
        return []  # ping, content_block_stop, and event types added after this was written

    def _block_start(self, index: int, block: WireBlock) -> list[ChatCompletionChunk]:
        if block.type == "text":
            self._blocks[index] = ("text", 0)
            return [self._chunk(ChunkDelta(content=block.text))] if block.text else []
        if block.type == "thinking":
            self._blocks[index] = ("thinking", 0)
            self._thinking[index] = [block.thinking or ""]
            return [self._chunk(ChunkDelta(reasoning_content=block.thinking))] if block.thinking else []
        if block.type == "redacted_thinking" and block.data:
            return [self._chunk(ChunkDelta(**{thinking.FIELD: [thinking.redacted(block.data)]}))]
        if block.type == "tool_use" and self._json_mode and block.name == JSON_TOOL:
            self._blocks[index] = ("json", 0)
            self._json_answer = True
            return []
        if block.type == "tool_use":
            position = self._tools
            self._tools += 1
            self._blocks[index] = ("tool", position)
            call = ToolCallDelta(
                index=position, id=block.id, type="function", function=FunctionCallDelta(name=block.name, arguments="")
            )
            return [self._chunk(ChunkDelta(tool_calls=[call]))]
        return []

    def _block_delta(self, index: int, delta: dict[str, Any]) -> list[ChatCompletionChunk]:
        kind, position = self._blocks.get(index, ("", 0))
        delta_type = delta.get("type")
        if delta_type == "text_delta" and delta.get("text"):
            return [self._chunk(ChunkDelta(content=str(delta["text"])))]
        if delta_type == "thinking_delta" and delta.get("thinking"):
            self._thinking.setdefault(index, []).append(str(delta["thinking"]))
            return [self._chunk(ChunkDelta(reasoning_content=str(delta["thinking"])))]
        if delta_type == "signature_delta" and isinstance(delta.get("signature"), str):
            # The block is whole once signed: it travels on (in the internal form) for the next turn.
            block = thinking.signed("".join(self._thinking.pop(index, [])), delta["signature"])
            return [self._chunk(ChunkDelta(**{thinking.FIELD: [block]}))]
        if delta_type == "input_json_delta" and delta.get("partial_json"):
            fragment = str(delta["partial_json"])
            if kind == "json":
                return [self._chunk(ChunkDelta(content=fragment))]
            if kind == "tool":
                call = ToolCallDelta(index=position, function=FunctionCallDelta(arguments=fragment))
                return [self._chunk(ChunkDelta(tool_calls=[call]))]
        return []  # citations_delta: nothing the OpenAI form carries

    def _usage_chunk(self) -> list[ChatCompletionChunk]:
        if self.usage is None or self._usage_sent:
            return []
        self._usage_sent = True
        return [ChatCompletionChunk(id=self._id, created=self._created, model=self._model, usage=self.usage)]

    def finish(self) -> list[ChatCompletionChunk]:
        return self._usage_chunk()


# --- adapter -------------------------------------------------------------------------------------


class AnthropicAdapter(ProviderAdapter):
    """The `anthropic` provider type: Anthropic's Messages API.

    Options: `max_output_tokens` (provider-wide or per deployment) sets the `max_tokens` sent when the
    client gives none; `anthropic_beta` sets the `anthropic-beta` header; `headers` adds headers.
    """

    type_name = "anthropic"
    default_base_url = "https://api.anthropic.com"
    key_env_var = "ANTHROPIC_API_KEY"

    def headers(self) -> dict[str, str]:
        headers = {"content-type": "application/json", "anthropic-version": API_VERSION}
        if self.secret:
            headers["x-api-key"] = self.secret
        if self.options.get("anthropic_beta"):
            headers["anthropic-beta"] = str(self.options["anthropic_beta"])
        extra = self.options.get("headers")
        if isinstance(extra, dict):
            headers.update({str(k): str(v) for k, v in extra.items()})
        return headers

    def max_tokens(self, req: ChatRequest, target: Target) -> int:
        configured = target.options.get("max_output_tokens") or self.options.get("max_output_tokens")
        return req.output_limit() or (int(configured) if configured else default_max_tokens(target.model))

    def chat_body(self, req: ChatRequest, target: Target, *, stream: bool) -> tuple[dict[str, Any], list[str]]:
        """The Messages API body and the client parameters it cannot honour."""
        sent = req.model_dump(exclude_unset=True, by_alias=True)
        params = {name: value for name, value in sent.items() if name not in TRANSLATED}
        dropped = apply_rules(params, RULES)
        params.pop("n", None)
        unknown = sorted(name for name in params if name not in RULES)
        dropped += [name for name in unknown if params.pop(name) is not None]

        system, messages = convert_messages(req.messages)
        require_turns(messages, "Anthropic")
        body: dict[str, Any] = {"model": target.model, "max_tokens": self.max_tokens(req, target), "messages": messages}
        body.update(params)
        if req.stop_list():
            body["stop_sequences"] = req.stop_list()
        if req.user:
            body["metadata"] = {"user_id": req.user}

        tools, tool_choice = _tools(req), _tool_choice(req)
        forced = json_tool(req)
        if forced is not None:
            named = tool_choice is not None and tool_choice["type"] == "tool"
            if not named:
                tool_choice = {"type": "tool", "name": JSON_TOOL} if not tools else {"type": "any"}
            tools.append(forced)
        elif req.response_format is not None and req.response_format.type == "json_object":
            system.append(JSON_OBJECT_INSTRUCTION)
        if tools:
            body["tools"] = tools
            if tool_choice is not None:
                body["tool_choice"] = tool_choice
        elif req.tool_choice not in (None, "none"):
            dropped.append("tool_choice")
        if system:
            body["system"] = "\n\n".join(system)
        if stream:
            body["stream"] = True
        return body, dropped

    def messages_url(self, target: Target) -> str:
        base = target.base_url
        return f"{base}/messages" if base.endswith("/v1") else f"{base}/v1/messages"

    def chat_request(self, req: ChatRequest, target: Target, *, stream: bool) -> BuiltRequest:
        body, dropped = self.chat_body(req, target, stream=stream)
        request = UpstreamRequest("POST", self.messages_url(target), self.headers(), orjson.dumps(body))
        return BuiltRequest(request, dropped)

    def chat_response(self, body: bytes, req: ChatRequest, target: Target) -> ChatCompletion:
        data = json_body(body)
        try:
            message = WireMessage.model_validate(data)
        except ValidationError as exc:
            raise malformed("upstream answer is not an Anthropic message") from exc
        json_mode = json_tool(req) is not None
        texts: list[str] = []
        reasoning: list[str] = []
        signed: list[dict[str, Any]] = []
        calls: list[ToolCall] = []
        json_answer: str | None = None
        for block in message.content:
            if block.type == "thinking" and block.signature is not None:
                signed.append(thinking.signed(block.thinking or "", block.signature))
            elif block.type == "redacted_thinking" and block.data:
                signed.append(thinking.redacted(block.data))
            if block.type == "text" and block.text:
                texts.append(block.text)
            elif block.type == "thinking" and block.thinking:
                reasoning.append(block.thinking)
            elif block.type == "tool_use" and json_mode and block.name == JSON_TOOL:
                json_answer = orjson.dumps(block.input if block.input is not None else {}).decode()
            elif block.type == "tool_use":
                arguments = orjson.dumps(block.input if block.input is not None else {}).decode()
                calls.append(
                    ToolCall(id=block.id or "", function=FunctionCall(name=block.name or "", arguments=arguments))
                )
        content = json_answer if json_answer is not None else ("".join(texts) if texts else None)
        reply = AssistantMessage(
            content=content, tool_calls=calls or None, reasoning_content="".join(reasoning) if reasoning else None
        )
        if signed:
            setattr(reply, thinking.FIELD, signed)
        finish = _finish(message.stop_reason, json_answer is not None, bool(calls))
        return ChatCompletion(
            id=message.id,
            created=int(time.time()),
            model=message.model,
            choices=[Choice(message=reply, finish_reason=finish)],
            usage=message.usage.to_usage(),
        )

    def stream_parser(self, req: ChatRequest, target: Target) -> AnthropicStreamParser:
        return AnthropicStreamParser(target.model, json_tool(req) is not None)

    def error(self, status: int, body: bytes, headers: Mapping[str, str]) -> UpstreamError:
        return error_from_body(status, body, headers)
