"""The Anthropic Messages API front-end, outbound: answers and streams in Anthropic's shapes.

A native answer (from a deployment that speaks Messages) goes back as the provider sent it, with only the
gateway's `cost` added (to the message, or to a stream's `message_delta`). A translated one is rendered
from the internal completion or chunk stream, block by block, each tool call's id one the Messages API takes
(`claude_call_id`): another provider's written otherwise (Kimi K2's `functions.get_weather:0`) goes as its stand-in,
so the history the client keeps can go to Claude as it is, through the gateway or not. The client sends the call and
its result back with the same stand-in, so they still pair wherever the history goes next.
"""

from __future__ import annotations

import secrets
from collections.abc import AsyncGenerator, AsyncIterator
from typing import TYPE_CHECKING, Any

import orjson
from pydantic_core import from_json

from handler.api.call_order import CallOrder
from handler.api.streaming import sse_event
from handler.call_ids import claude_call_id
from handler.errors import GatewayError, UpstreamError
from handler.pipeline.chunk_stream import ChunkStream
from handler.pipeline.passthrough import NativeReply, NativeStream, guarded, sse_frame
from handler.pipeline.pipeline import answered_as
from handler.pipeline.pricing import Cost
from handler.schemas import (
    LATER_MODULES,
    TOOL_CONTEXT,
    AssistantMessage,
    ChatCompletion,
    ChatCompletionChunk,
    Choice,
    ToolCallDelta,
    Usage,
    ordered_parts,
)
from handler.wire import StreamEvent, interrupted

if TYPE_CHECKING:
    from handler.api.json_prefix import JsonPrefix
    from handler.api.reasoning_seal import ReasoningSeal

LATER_MODULES.add("handler.api.json_prefix")  # (a server's start-up and a snapshot import it: `EventWriter._calls`)
STOP_REASONS = {
    "stop": "end_turn",
    "length": "max_tokens",
    "tool_calls": "tool_use",
    "function_call": "tool_use",
    "content_filter": "refusal",
}


def native_message(reply: NativeReply, cost: Cost | None) -> dict[str, Any]:
    """The provider's message as it sent it, with the gateway's cost."""
    return {**reply.body, "cost": cost.as_event() if cost else None}


def native_events(stream: NativeStream) -> AsyncIterator[bytes]:
    """The provider's events as it sent them; its `message_delta` (which carries the final usage) also
    carries the gateway's cost, settled from that usage. The `message_delta` and what follows it are held until
    the provider's stream has ended, as the other APIs hold their last event (Chat Completions' cost, a Responses
    stream's terminal event): a stream that breaks after it ends on the `error` event in its place, and its line,
    log, metrics and breaker say it failed, as the client is told. (Settled at the `message_delta`, such a stream
    was a 200 on its line while its client was sent the `error`, and its breaker counted a failure.)"""

    async def relay() -> AsyncGenerator[bytes]:
        held: list[StreamEvent] = []  # the `message_delta` and the events after it
        async for batch in stream.batches():
            out = b""
            for event in batch:
                if held or event.event == "message_delta":
                    held.append(event)
                else:
                    out += sse_frame(event)
            yield out
        if not stream.meter.final:  # cut before its `message_delta`: the client is told, and the line says 502
            raise interrupted()
        await stream.complete()
        if stream.schema_violation is not None:  # (an error event in place of it and `message_stop`)
            from handler.pipeline.schema_check import violated

            raise violated(stream.schema_violation)
        out = b""
        for event in held:
            if event.event != "message_delta":
                out += sse_frame(event)
                continue
            payload = orjson.loads(event.data)
            cost = stream.ex.cost
            payload["cost"] = cost.as_event() if cost else None
            out += sse_event("message_delta", payload)
        yield out

    async def failed(exc: GatewayError) -> bytes:
        return native_error(exc, stream.ex.cost)

    return guarded(stream, relay(), failed)


def anthropic_error(exc: GatewayError, cost: Cost | None) -> bytes:
    """Anthropic's in-stream `error` event, with what the stream was charged (`charged`). A provider's failure is of
    the type its unstreamed answer has (`answered_as`): a rate limit's `rate_limit_error`, an overload's
    `overloaded_error` (on which Claude Code switches to its fallback model), a refused request's
    `invalid_request_error`; not an `api_error` whatever the provider said."""
    if isinstance(exc, UpstreamError):
        exc = answered_as(exc)
    return sse_event("error", charged(exc.anthropic_body(), cost))


def native_error(exc: GatewayError, cost: Cost | None) -> bytes:
    """The provider's own in-stream `error` event as it sent it (credentials redacted), else the gateway's; with what
    the stream was charged (`charged`)."""
    if isinstance(exc, UpstreamError) and exc.native_event is not None:
        try:
            payload = orjson.loads(exc.native_event)
        except orjson.JSONDecodeError:
            payload = None
        if not isinstance(payload, dict):
            return sse_frame(StreamEvent("error", exc.native_event))
        return sse_event("error", charged(payload, cost))
    return anthropic_error(exc, cost)


def charged(event: dict[str, Any], cost: Cost | None) -> dict[str, Any]:
    """A stream's last event, its `error`, with what the stream was charged beside the error (settled before the
    event is written, `guarded`): the usage in Anthropic's counts and the cost, as a finished stream's `message_delta`
    has them. (Anthropic's SDK raises the error as before, the whole event its `body`.)"""
    if cost is not None:
        event["usage"] = anthropic_usage(cost.usage)
    event["cost"] = cost.as_event() if cost else None
    return event


def anthropic_usage(usage: Usage) -> dict[str, Any]:
    """Anthropic counts `input_tokens` without the cached and cache-write tokens; the searches a provider's own search
    ran for a translated web search tool are its `server_tool_use.web_search_requests`, as Claude's are."""
    cached, written = usage.cached_tokens, usage.cache_write_tokens
    counted: dict[str, Any] = {
        "input_tokens": max(0, usage.prompt_tokens - cached - written),
        "output_tokens": usage.completion_tokens,
        "cache_read_input_tokens": cached,
        "cache_creation_input_tokens": written,
    }
    if usage.web_searches:
        counted["server_tool_use"] = {"web_search_requests": usage.web_searches}
    return counted


# Anthropic's name of its web search tool, which a `server_tool_use` block of a search names.
SEARCH_NAME = "web_search"


def search_blocks(searches: Any, carried: str = "") -> list[dict[str, Any]]:
    """The searches a provider's own search ran for a translated web search tool (`AssistantMessage.web_searches`:
    Gemini's grounding) as Claude's answer has its own: each a `server_tool_use` block (`name: "web_search"`, its
    `input.query`) and the `web_search_tool_result` block that answers it, the pages found as `web_search_result`s
    (`url`, `title`; the page's URL where Gemini gave no title). Their `encrypted_content`, which Anthropic fills with
    the page's text sealed for Claude's next turn, is empty: Gemini gives no such text. A search that failed is the
    result's error (`web_search_tool_result_error`, `unavailable`).

    `carried`: Gemini 3's own parts of the search, sealed (`sealed_context`), which ride in the first page's
    `encrypted_content` to the turn that sends the blocks back (`Translation.assistant`). Where no page holds them
    (a search that named none, or an answer whose search Gemini grounded nothing with: a function call), a result
    of no page carries them (`url` and `title` empty), in the first search's list of results, or in a search of
    its own whose query is unknown (`""`, as a grounding's that names none)."""
    blocks: list[dict[str, Any]] = []
    for search in searches if isinstance(searches, list) else ():
        action = search.get("action") if isinstance(search, dict) else None
        action = action if isinstance(action, dict) else {}
        query = action.get("query")
        pages = [
            page for page in action.get("sources") or () if isinstance(page, dict) and isinstance(page.get("url"), str)
        ]
        found: Any = [
            {
                "type": "web_search_result",
                "url": page["url"],
                "title": page["title"] if isinstance(page.get("title"), str) else page["url"],
                "encrypted_content": "",
                "page_age": None,
            }
            for page in pages
        ]
        if search.get("status") == "failed":
            found = {"type": "web_search_tool_result_error", "error_code": "unavailable"}
        blocks += _search(query or "", found)
    if carried:
        _carry(blocks, carried)
    return blocks


def _search(query: str, found: Any) -> list[dict[str, Any]]:
    """A search's `server_tool_use` block and the `web_search_tool_result` that answers it with `found`."""
    block_id = f"srvtoolu_{secrets.token_hex(12)}"
    use = {"type": "server_tool_use", "id": block_id, "name": SEARCH_NAME, "input": {"query": query}}
    return [use, {"type": "web_search_tool_result", "tool_use_id": block_id, "content": found}]


def _carry(blocks: list[dict[str, Any]], carried: str) -> None:
    """Put the sealed parts (`carried`) in the first page's `encrypted_content` of the searches' `blocks`, else in a
    result of no page (`search_blocks`)."""
    results = [block["content"] for block in blocks if isinstance(block.get("content"), list)]
    if results and results[0]:
        results[0][0]["encrypted_content"] = carried
        return
    carrier = {"type": "web_search_result", "url": "", "title": "", "encrypted_content": carried, "page_age": None}
    if results:
        results[0].append(carrier)
    else:
        blocks += _search("", [carrier])


def sealed_context(parts: Any, seal: ReasoningSeal | None) -> str:
    """Gemini 3's own parts of a search (`TOOL_CONTEXT`: its `toolCall` and `toolResponse`, each with its thought
    signature), sealed as a Responses reasoning item seals them (its `fields`), so that only this gateway opens them
    and no client can forge them; "" where there are none, or no seal (a request that offered no search)."""
    if not parts or not isinstance(parts, list) or seal is None:
        return ""
    return seal.seal({"fields": {TOOL_CONTEXT: parts}})


def _arguments(raw: str, cut: bool) -> Any:
    """A call's `input`: its arguments' JSON; for an answer cut at its token limit (`cut`), as much of it as is
    whole, as a Messages stream's client accumulates the fragments Claude streams up to the cut (the Anthropic SDK
    reads them with jiter's partial mode, `pydantic_core.from_json`'s engine: an unfinished string, number or
    literal left out), and so as the streamed answer has it; arguments that are not JSON at all, `_raw`."""
    try:
        return orjson.loads(raw) if raw else {}
    except orjson.JSONDecodeError:
        pass
    if cut:
        try:
            whole = from_json(raw, allow_partial=True)
        except ValueError:
            whole = None
        if isinstance(whole, dict):
            return whole
    return {"_raw": raw}


def tool_use_id(call_id: str | None) -> str:
    """A call's `tool_use.id`: one the Messages API takes (`claude_call_id`); for a call its provider gave no id, one
    of its own (a constant stand-in would repeat across answers, and Claude Code takes a repeated id for a repeated
    call)."""
    return claude_call_id(call_id) if call_id else f"toolu_{secrets.token_hex(12)}"


def claude_block(entry: dict[str, Any]) -> dict[str, Any]:
    """A `thinking_blocks` entry as Claude's content block: without the `index` that numbers it among the answer's
    thinking blocks for Chat Completions clients (no Messages client expects it, and Claude refuses it back)."""
    return {key: value for key, value in entry.items() if key != "index"}


def stop_reason(
    finish_reason: str | None, stop_sequence: str | None, refused: bool = False, called: bool = False
) -> str:
    """Anthropic's stop reason: `stop_sequence` when the provider said which one fired; `refusal` for an answer
    that refused (OpenAI's `refusal`, which ends as a plain `stop`); `tool_use` for an answer that called a tool
    (`called`) and ended as a plain `stop`, as OpenAI ends a call forced by a named `tool_choice` and Gemini's
    OpenAI-compatible endpoint a streamed one: Anthropic says `tool_use`, and the Anthropic SDK's tool runner takes
    `end_turn` for the last answer and runs none of its tools."""
    if stop_sequence:
        return "stop_sequence"
    reason = STOP_REASONS.get(finish_reason or "stop", "end_turn")
    if reason == "end_turn":
        return "refusal" if refused else "tool_use" if called else reason
    return reason


def to_message(
    completion: ChatCompletion, model: str, cost: Cost | None, seal: ReasoningSeal | None = None
) -> dict[str, Any]:
    """An Anthropic `message` for the first choice of a completion (`seal`: what Gemini 3's own parts of a search are
    sealed with, `sealed_context`)."""
    choice = completion.choices[0] if completion.choices else None
    content = _content(choice, seal) if choice is not None else []
    reason = choice.finish_reason if choice else None
    stop_sequence = choice.stop_sequence if choice else None
    refused = choice is not None and bool(choice.message.refusal)
    called = choice is not None and bool(choice.message.tool_calls)
    message: dict[str, Any] = {
        "id": f"msg_{completion.id}",
        "type": "message",
        "role": "assistant",
        "model": model,
        "content": content,
        "stop_reason": stop_reason(reason, stop_sequence, refused, called),
        "stop_sequence": stop_sequence,
        "usage": anthropic_usage(completion.usage or Usage()),
    }
    if cost is not None:
        message["cost"] = cost.as_event()
    return message


def _content(choice: Choice, seal: ReasoningSeal | None) -> list[dict[str, Any]]:
    """A choice's content blocks: in the order Claude wrote them where the answer says one (`ordered`), else its
    thinking, its text, its calls."""
    message, cut = choice.message, choice.finish_reason == "length"
    signed = (message.model_extra or {}).get("thinking_blocks")
    in_order = ordered(message, signed)
    if in_order is not None:
        return [_block(kind, part, cut) for kind, part in in_order]
    content: list[dict[str, Any]] = []
    if isinstance(signed, list):
        content.extend(claude_block(block) for block in signed if isinstance(block, dict))
    elif message.reasoning_content:
        # Reasoning of another provider: shown as thinking, with no signature (it cannot go back to Claude).
        content.append({"type": "thinking", "thinking": message.reasoning_content, "signature": ""})
    carried = sealed_context((message.model_extra or {}).get(TOOL_CONTEXT), seal)
    content += search_blocks(message.web_searches, carried)  # (ahead of the text they ground, as Claude's are)
    if message.content or message.refusal:  # a refusal (a blocked prompt) is the answer's text
        content.append({"type": "text", "text": message.content or message.refusal})
    content.extend(_block("call", call, cut) for call in message.tool_calls or ())
    return content


def ordered(message: AssistantMessage, signed: Any) -> list[tuple[str, Any]] | None:
    """The answer's parts in the order Claude wrote them, where it put thinking between them (`BlockOrder`: on
    Bedrock, interleaved thinking); None for the usual order. Put first, as a whole answer's order has every thinking
    block where its stream has them between the calls, they would come back with Claude's thinking sequence
    rearranged, which Anthropic refuses to take."""
    if message.block_order is None or message.refusal or not isinstance(signed, list):
        return None
    return ordered_parts(message.block_order, signed, message.content or "", message.tool_calls or [])


def _block(kind: str, part: Any, cut: bool) -> dict[str, Any]:
    """One of an answer's parts (`ordered`'s) as a Messages content block; `cut`: the answer stopped at its cap."""
    if kind == "thinking":
        return claude_block(part)
    if kind == "text":
        return {"type": "text", "text": part}
    return {
        "type": "tool_use",
        "id": tool_use_id(part.id),
        "name": part.function.name,
        "input": _arguments(part.function.arguments, cut),
    }


class EventWriter:
    """Turns the internal chunk stream into Anthropic's event sequence, block by block."""

    def __init__(self, model: str, message_id: str, seal: ReasoningSeal | None = None) -> None:
        self.model = model
        self.seal = seal  # (`sealed_context`'s)
        self.context: list[Any] = []  # Gemini 3's own parts of a search not yet carried (`_searched`, `finish`)
        self.message_id = message_id
        self.index = -1
        self.open: tuple[str, int] | None = None
        self.finish_reason: str | None = None
        self.stop_sequence: str | None = None
        self.refused = False
        self.called = False  # a `tool_use` block was written (`stop_reason`)
        self.calls = CallOrder()
        # The open tool block's arguments: checked as they come (`_calls`), and as they came.
        self.arguments: JsonPrefix | None = None
        self.raw: list[str] = []
        self.held = ""  # taken, not yet relayed: it ends inside a character's escape

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
        out = b""
        if self.arguments is not None:
            held = self.held
            arguments = self.arguments
            if arguments.broken or self.raw and not arguments.started:  # (made whole, `_raw` beside what went)
                held = arguments.cut_partial(held) + arguments.closing("".join(self.raw))
            elif arguments.waits:  # (ended inside a character's escape: cut before it, the SDK's parser refuses it)
                held = arguments.cut_partial(held)
            if held:
                out = self._delta({"type": "input_json_delta", "partial_json": held})
            self.arguments, self.raw, self.held = None, [], ""
        self.open = None
        return out + sse_event("content_block_stop", {"type": "content_block_stop", "index": self.index})

    def _delta(self, delta: dict[str, Any]) -> bytes:
        return sse_event("content_block_delta", {"type": "content_block_delta", "index": self.index, "delta": delta})

    def _signed(self, blocks: Any) -> bytes:
        """The blocks a delta completes (`thinking_blocks`): a thinking block's signature ends the block its
        text streamed into; a redacted block is a block of its own."""
        out = b""
        for block in blocks if isinstance(blocks, list) else ():
            if not isinstance(block, dict):
                continue
            if block.get("type") == "thinking" and isinstance(block.get("signature"), str):
                out += self._switch("thinking", 0, {"type": "thinking", "thinking": "", "signature": ""})
                out += self._delta({"type": "signature_delta", "signature": block["signature"]})
                out += self._close()
            elif block.get("type") == "redacted_thinking" and isinstance(block.get("data"), str):
                out += self._switch("redacted_thinking", self.index + 1, claude_block(block)) + self._close()
        return out

    def chunk(self, chunk: ChatCompletionChunk) -> bytes:
        out = b""
        for choice in chunk.choices:
            if choice.index != 0:
                continue
            delta = choice.delta
            parts = (delta.model_extra or {}).get(TOOL_CONTEXT)
            if isinstance(parts, list):
                self.context += parts
            if delta.web_searches:
                out += self._searched(delta.web_searches)
            if delta.reasoning_content:
                out += self._switch("thinking", 0, {"type": "thinking", "thinking": "", "signature": ""})
                out += self._delta({"type": "thinking_delta", "thinking": delta.reasoning_content})
            out += self._signed((delta.model_extra or {}).get("thinking_blocks"))
            if delta.content or delta.refusal:
                if delta.refusal:
                    self.refused = True
                out += self._switch("text", 0, {"type": "text", "text": ""})
                out += self._delta({"type": "text_delta", "text": delta.content or delta.refusal})
            if delta.tool_calls:
                out += self._calls(self.calls.feed(delta.tool_calls))
            if choice.finish_reason:
                out += self._calls(self.calls.flush())
                self.finish_reason = choice.finish_reason
                self.stop_sequence = choice.stop_sequence
        return out

    def _searched(self, searches: list[dict[str, Any]]) -> bytes:
        """The searches' blocks (`search_blocks`), as Anthropic streams its own: a `server_tool_use` block opened empty,
        its input as one `input_json_delta`, and its result block whole. They go where the provider gives them
        (Gemini: its grounding, with the text's end), after the text they ground: held back until then, the text
        would stream late and, the stream cut before the grounding, never. Gemini 3's own parts of the search, given
        ahead of the text, ride in them (`search_blocks`' `carried`)."""
        return self._search_events(search_blocks(searches, self._carried()))

    def _carried(self) -> str:
        """The parts of the search given so far and not yet carried, sealed (`sealed_context`)."""
        carried = sealed_context(self.context, self.seal)
        self.context = []
        return carried

    def _search_events(self, blocks: list[dict[str, Any]]) -> bytes:
        out = b""
        for block in blocks:
            if block["type"] == "server_tool_use":
                out += self._switch("search", self.index + 1, {**block, "input": {}})
                out += self._delta({"type": "input_json_delta", "partial_json": orjson.dumps(block["input"]).decode()})
            else:
                out += self._switch("search_result", self.index + 1, block)
            out += self._close()
        return out

    def _calls(self, calls: list[ToolCallDelta]) -> bytes:
        out = b""
        for call in calls:
            function = call.function
            if self.open != ("tool", call.index):
                block = {
                    "type": "tool_use",
                    "id": tool_use_id(call.id),
                    "name": (function.name if function else "") or "",
                    "input": {},
                }
                out += self._switch("tool", call.index, block)
                self.called = True
                from handler.api.json_prefix import JsonPrefix  # (with the first call streamed: `LATER_MODULES`)

                self.arguments = JsonPrefix()
            if function and function.arguments:
                # Only what keeps them the start of a JSON object: the Anthropic SDK parses the fragments as they come,
                # and fails the whole stream on one that cannot begin JSON (`{'city': 'Paris'}`, from a model on a
                # compatible server); the block's end then makes its input whole (`_close`).
                # A fragment that ends inside a character's escape waits for the one that completes it, and whitespace
                # before the object for the object (the SDK's parser refuses whitespace alone): `held`.
                self.raw.append(function.arguments)
                if self.arguments is None:
                    out += self._delta({"type": "input_json_delta", "partial_json": function.arguments})
                elif self.arguments.feed(function.arguments):
                    if self.arguments.waits:
                        if self.arguments.started:  # (whitespace before the object goes nowhere: `_close`)
                            self.held += function.arguments
                        continue
                    out += self._delta({"type": "input_json_delta", "partial_json": self.held + function.arguments})
                    self.held = ""
        return out

    def finish(self, usage: Usage, cost: Cost | None) -> bytes:
        out = self.closed()  # (first: a call it writes is the stop reason's)
        delta = {
            "stop_reason": stop_reason(self.finish_reason, self.stop_sequence, self.refused, self.called),
            "stop_sequence": self.stop_sequence,
        }
        payload: dict[str, Any] = {"type": "message_delta", "delta": delta, "usage": anthropic_usage(usage)}
        if cost is not None:
            payload["cost"] = cost.as_event()
        if self.context:  # (parts of a search no grounding came with, as an answer that called a function has)
            out += self._search_events(search_blocks([], self._carried()))
        return out + sse_event("message_delta", payload) + sse_event("message_stop", {"type": "message_stop"})

    def closed(self) -> bytes:
        """The events that end the block still open (and a tool call whose arguments were held back)."""
        return self._calls(self.calls.flush()) + self._close()


def anthropic_events(
    stream: ChunkStream, model: str, input_tokens: int, seal: ReasoningSeal | None = None
) -> AsyncIterator[bytes]:
    """The client's Anthropic event stream for an internal chunk stream (`seal`: `EventWriter`'s)."""
    writer = EventWriter(model, f"msg_{stream.ex.request_id}", seal)

    async def render() -> AsyncGenerator[bytes]:
        yield writer.start(input_tokens)
        async for chunk in stream:
            data = writer.chunk(chunk)
            if data:
                yield data
        cut = stream.cut
        if cut:
            stream.failed(UpstreamError.status)  # its ledger line, log line and metrics say so
        await stream.complete()
        if cut:  # (billed and settled above) an error event, not an `end_turn` the provider never sent
            raise interrupted()
        if stream.schema_violation is not None:  # (an error event in place of its `message_delta`, as a failure's)
            from handler.pipeline.schema_check import violated

            yield writer.closed()
            raise violated(stream.schema_violation)
        yield writer.finish(stream.usage(), stream.ex.cost)

    async def failed(exc: GatewayError) -> bytes:
        return anthropic_error(exc, stream.ex.cost)

    return guarded(stream, render(), failed)
