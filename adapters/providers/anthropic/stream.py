"""Anthropic's streams: its Messages events read into the gateway's chunks (`AnthropicStreamParser`, which Bedrock's
parser extends), and a passed-through stream metered as it goes (`MessagesMeter`). Imported with the first stream,
not at a cold start (Lambda's buffered function answers whole)."""

from __future__ import annotations

import time
from typing import TYPE_CHECKING, Any

import orjson
from pydantic import ValidationError

from adapters.providers.anthropic.adapter import JSON_TOOL, _finish, error_from_body
from adapters.providers.anthropic.search import SEARCH_NAME, Searches, citations_of
from adapters.providers.params import (
    THINKING_BLOCKS,
    ToolNames,
    redacted_thinking,
    signed_thinking,
)
from handler import schemas
from handler.ports import Served
from handler.redaction import redact_upstream
from handler.schemas import (
    FinishReason,
    Usage,
)
from handler.wire import (
    MESSAGES_DELTA_TEXT,
    StreamEvent,
    event_payload,
    malformed,
    said_status,
)

# Anthropic's answer models (adapters/providers/anthropic/wire.py) are imported where they are used, on first use: a
# Lambda whose first request goes to another provider does not make their four pydantic classes (about 4.5 million
# instructions of its cold start, callgrind). A server's start-up and a SnapStart snapshot make and build them
# (`schemas.LATER_MODULES`); a stream's frequent events (text deltas) do not reach an import.
if TYPE_CHECKING:
    from adapters.providers.anthropic.wire import WireBlock
    from handler.schemas import ChatCompletionChunk, ChunkDelta


class AnthropicStreamParser:
    """Anthropic's named SSE events into OpenAI chunks.

    `message_start` gives the input counts (`opening_usage`), and the role's chunk is held until the first chunk
    after it tells what the answer opens with (`handler.chunks.opening_delta`); each `tool_use` block gives a tool-call
    delta (index, id, name) followed by its `input_json_delta` fragments, `message_delta` the finish reason and
    final usage.
    With a `json_schema` request, the forced tool's input streams as content text instead.
    """

    def __init__(self, model: str, json_mode: bool, names: ToolNames | None = None) -> None:
        from adapters.providers.anthropic.wire import WireUsage  # (see the note on the imports)

        self.usage: Usage | None = None
        # `message_start`'s usage: the input counts, exact, that a stream cut before `message_delta` is charged.
        self.opening_usage: Usage | None = None
        # What the usage says of how the answer was served: its speed and geo from `message_start`, its advisor's
        # tokens from the final `message_delta` (`WireUsage.served`).
        self.served: Served | None = None
        self._json_mode = json_mode
        self._names = names  # the request's tool names: a call by an alias streams by the client's (`ToolNames.client`)
        self._id = "msg_unknown"
        self._model = model
        self._created = int(time.time())
        self._wire_usage = WireUsage()
        self._blocks: dict[int, tuple[str, int]] = {}
        self._thinking: dict[int, list[str]] = {}  # a thinking block's text so far, until its signature
        self._thought = 0  # the thinking blocks completed (each entry's `index` in `thinking_blocks`)
        # Tool blocks that have streamed no JSON yet: a call without arguments sends `partial_json: ""` or nothing.
        self._no_input: set[int] = set()
        self._tools = 0
        self._json_answer = False
        self._usage_sent = False
        self._opened = False  # the role's chunk went
        self._searches: Searches | None = None  # (made at the answer's first search)
        self.searches = 0  # the searches that started (each billed, the stream cut or not: `MessagesMeter.searches`)
        self._written = 0  # the text's characters so far (where a citation's text starts and ends)
        self._cited: dict[int, tuple[int, list[Any]]] = {}  # a text block's start and its citations, until it ends
        self._search_ids: dict[int, str] = {}  # a search block's id, by its index (its query streams as JSON)

    def _chunk(
        self, delta: ChunkDelta | None = None, finish: FinishReason | None = None, stop_sequence: str | None = None
    ) -> ChatCompletionChunk:
        choice = schemas.ChunkChoice(
            delta=delta or schemas.ChunkDelta(), finish_reason=finish, stop_sequence=stop_sequence
        )
        return schemas.ChatCompletionChunk(id=self._id, created=self._created, model=self._model, choices=[choice])

    def feed(self, event: StreamEvent) -> list[ChatCompletionChunk]:
        if not event.data:
            return []
        payload = event_payload(event)
        kind = payload.get("type") or event.event
        if kind is None and "error" in payload:
            # A compatible server's or proxy's failure as OpenAI-compatible servers write it, `data: {"error": {...}}`
            # with no `type` and no name (`MessagesMeter.feed` reads it so passed through): the stream's error. Read as
            # no event, it would be dropped, and the stream end as one cut short (a 502 `stream_interrupted`, or
            # before its first event the malformed answer charged its worst case), whatever the server said.
            kind = "error"
        try:
            return self._opening(self._event(str(kind), payload))
        except ValidationError as exc:
            raise malformed(f"upstream sent a malformed '{kind}' event") from exc

    def _opening(self, chunks: list[ChatCompletionChunk]) -> list[ChatCompletionChunk]:
        """`chunks`, behind the role's chunk when they open the choice (a usage chunk alone does not)."""
        if self._opened or not chunks or not chunks[0].choices:
            return chunks
        self._opened = True
        from handler.chunks import opening_delta  # (a stream passed through, metered alone, needs none of it)

        return [self._chunk(opening_delta(chunks[0])), *chunks]

    def _event(self, kind: str, payload: dict[str, Any]) -> list[ChatCompletionChunk]:
        if kind == "message_start":
            from adapters.providers.anthropic.wire import WireMessage  # (see the note on the imports)

            message = WireMessage.model_validate(payload.get("message"))
            self._id, self._model = message.id, message.model
            self._wire_usage = message.usage
            self.opening_usage = message.usage.to_usage()
            self.served = message.usage.served()
            return []  # (the role's chunk waits for what the answer opens with: `_opening`)
        if kind == "content_block_start":
            from adapters.providers.anthropic.wire import WireBlock  # (see the note on the imports)

            return self._block_start(int(payload.get("index", 0)), WireBlock.model_validate(payload["content_block"]))
        if kind == "content_block_delta":
            return self._block_delta(int(payload.get("index", 0)), payload.get("delta") or {})
        if kind == "message_delta":
            delta = payload.get("delta") or {}
            given = payload.get("usage") is not None
            if given:
                from adapters.providers.anthropic.wire import WireUsage  # (see the note on the imports)

                self._wire_usage.update(WireUsage.model_validate(payload["usage"]))
            # The final usage, where the event gives one with both main counts (`WireUsage.counted`); none else, and
            # the stream is metered as one without it (taken for the final counts, `message_start`'s would bill its 1
            # token out where the event has no usage, and `"output_tokens": null` would bill 0 tokens out). A later
            # `message_delta` without usage keeps the counts an earlier one gave, as `MessagesMeter` does (set back
            # to none, the answer would be billed as estimated).
            if given and self._wire_usage.counted():
                self.usage = self._wire_usage.to_usage()
            self.served = self._wire_usage.served()  # (read now: not when the stream is costed, once settling began)
            finish = _finish(delta.get("stop_reason"), self._json_answer, self._tools > 0)
            stop_sequence = delta.get("stop_sequence")
            ending = self._chunk(finish=finish, stop_sequence=stop_sequence if isinstance(stop_sequence, str) else None)
            left = self._searches.left() if self._searches is not None else []  # (a paused turn's, as its whole answer)
            paused = [self._chunk(schemas.ChunkDelta(web_searches=[dict(call) for call in left]))] if left else []
            return [*self._empty_inputs(), *paused, ending]
        if kind == "content_block_stop":
            index = int(payload.get("index", 0))
            return [*self._empty_inputs(index), *self._citations(index)]
        if kind == "message_stop":
            return self._usage_chunk()
        if kind == "error":
            raise error_from_body(said_status(payload), orjson.dumps(payload), {})
        return []  # ping, and event types added after this was written

    def _block_start(self, index: int, block: WireBlock) -> list[ChatCompletionChunk]:
        if block.type == "text":
            self._blocks[index] = ("text", 0)
            # (Its citations only as a list, as the whole answer's reader takes them, `citations_of`: any other, a
            # number, broke every stream with such a block, searched or not, as a malformed event.)
            cited = block.model_extra.get("citations") if block.model_extra else None
            self._cited[index] = (self._written, list(cited) if isinstance(cited, list) else [])
            self._written += len(block.text or "")
            return [self._chunk(schemas.ChunkDelta(content=block.text))] if block.text else []
        if block.type == "server_tool_use" and block.name == SEARCH_NAME:
            self._searches = self._searches or Searches()
            self._searches.started(block.id, block.input)
            self.searches += 1
            self._blocks[index] = ("search", 0)
            self._search_ids[index] = block.id or ""
            return []
        if block.type == "web_search_tool_result" and self._searches is not None:
            done = self._searches.found(block.model_dump())
            return [self._chunk(schemas.ChunkDelta(web_searches=[dict(done)]))] if done is not None else []
        if block.type == "thinking":
            self._blocks[index] = ("thinking", 0)
            self._thinking[index] = [block.thinking or ""]
            return [self._chunk(schemas.ChunkDelta(reasoning_content=block.thinking))] if block.thinking else []
        if block.type == "redacted_thinking" and block.data:
            return [self._thinking_block(redacted_thinking(block.data, self._thought))]
        if block.type == "tool_use" and self._json_mode and block.name == JSON_TOOL:
            self._blocks[index] = ("json", 0)
            self._json_answer = True
            self._no_input.add(index)
            return []
        if block.type == "tool_use":
            position = self._tools
            self._tools += 1
            self._blocks[index] = ("tool", position)
            self._no_input.add(index)
            call = schemas.ToolCallDelta(
                index=position,
                id=block.id,
                type="function",
                function=schemas.FunctionCallDelta(name=self._client_name(block.name), arguments=""),
            )
            return [self._chunk(schemas.ChunkDelta(tool_calls=[call]))]
        return []

    def _citations(self, index: int) -> list[ChatCompletionChunk]:
        """The annotations of a text block (`index`) that cited search results, once it ended (its text whole)."""
        start, citations = self._cited.pop(index, (0, []))
        annotations = citations_of(citations, start, self._written) if citations else []
        return [self._chunk(schemas.ChunkDelta(annotations=annotations))] if annotations else []

    def _client_name(self, name: str | None) -> str | None:
        """The client's name for a tool the model called by `name`."""
        return self._names.client(name) if self._names is not None and name else name

    def _block_delta(self, index: int, delta: dict[str, Any]) -> list[ChatCompletionChunk]:
        kind, position = self._blocks.get(index, ("", 0))
        delta_type = delta.get("type")
        if delta_type == "text_delta" and delta.get("text"):
            self._written += len(str(delta["text"]))
            return [self._chunk(schemas.ChunkDelta(content=str(delta["text"])))]
        if delta_type == "citations_delta" and index in self._cited:
            self._cited[index][1].append(delta.get("citation"))
            return []
        if delta_type == "input_json_delta" and kind == "search" and self._searches is not None:
            self._searches.streamed_input(self._search_ids.get(index, ""), str(delta.get("partial_json") or ""))
            return []
        if delta_type == "thinking_delta" and delta.get("thinking"):
            self._thinking.setdefault(index, []).append(str(delta["thinking"]))
            return [self._chunk(schemas.ChunkDelta(reasoning_content=str(delta["thinking"])))]
        if delta_type == "signature_delta" and isinstance(delta.get("signature"), str):
            # The block is whole once signed: it travels on (in the internal form) for the next turn.
            block = signed_thinking("".join(self._thinking.pop(index, [])), delta["signature"], self._thought)
            return [self._thinking_block(block)]
        if delta_type == "input_json_delta" and delta.get("partial_json"):
            self._no_input.discard(index)
            return self._input(kind, position, str(delta["partial_json"]))
        return []

    def _thinking_block(self, block: dict[str, Any]) -> ChatCompletionChunk:
        """A completed thinking block, as the next entry of the message's `thinking_blocks` (its `index` given)."""
        self._thought += 1
        return self._chunk(schemas.ChunkDelta(**{THINKING_BLOCKS: [block]}))

    def _input(self, kind: str, position: int, fragment: str) -> list[ChatCompletionChunk]:
        if kind == "json":
            return [self._chunk(schemas.ChunkDelta(content=fragment))]
        if kind == "tool":
            call = schemas.ToolCallDelta(index=position, function=schemas.FunctionCallDelta(arguments=fragment))
            return [self._chunk(schemas.ChunkDelta(tool_calls=[call]))]
        return []

    def _empty_inputs(self, index: int | None = None) -> list[ChatCompletionChunk]:
        """`{}` for a tool block (`index`, or every one still open) that ended without JSON: a call without
        arguments, as the whole answer gives its empty `input`, not `""` (which no client can parse)."""
        ended = sorted(self._no_input) if index is None else [index] if index in self._no_input else []
        chunks: list[ChatCompletionChunk] = []
        for block in ended:
            self._no_input.discard(block)
            chunks += self._input(*self._blocks[block], "{}")
        return chunks

    def _usage_chunk(self) -> list[ChatCompletionChunk]:
        if self.usage is None or self._usage_sent:
            return []
        self._usage_sent = True
        return [schemas.ChatCompletionChunk(id=self._id, created=self._created, model=self._model, usage=self.usage)]

    def finish(self) -> list[ChatCompletionChunk]:
        return self._usage_chunk()


# --- native pass-through ------------------------------------------------------------------------


class MessagesMeter:
    """Reads the usage of a Messages stream passed through unchanged.

    `message_start` brings the input counts (cache reads and writes among them, exact and final) and
    `message_delta` the final cumulative ones. Until then the stream's output is estimated from the text the
    deltas relayed (`output_chars`: text, thinking, and tool input JSON, not the events around them), so a stream
    cut short is still charged for what it produced (`UpstreamStream.metered`, which holds the estimate to the
    output cap); `searches` counts the `web_search` server tool calls that started (the stream's estimate carries
    them), and `advised` the advisor tool's (a stream cut before its final usage is charged each one's reserved
    bound: `Charges._advisors_usd`).
    """

    def __init__(self) -> None:
        from adapters.providers.anthropic.wire import WireUsage  # (see the note on the imports)

        self._wire = WireUsage()
        self._started = False  # `message_start` (or `message_delta`) brought counts
        self.output_chars = 0
        self.final = False  # `message_delta` brought the final counts (`message_stop` is still to come)
        self.searches = 0
        self.advised = 0
        self.answer_id: str | None = None  # the message's id, from `message_start`

    @property
    def served(self) -> Served | None:
        """What the usage so far says of how the answer was served (its speed from `message_start`, its advisor's
        tokens from the final `message_delta`)."""
        return self._wire.served() if self._started else None

    @property
    def usage(self) -> Usage | None:
        """The provider's counts so far: from `message_start`, its input's, until the final ones; where they lack a
        main count (`"output_tokens": null`, or none, or a compaction's: `WireUsage.counted`), the input's alone, 0
        tokens out, which the stream is not billed as for what it relayed (`UpstreamStream.metered` estimates the
        output), or none (`WireUsage.input_alone`). (Read when the stream is costed, not on every delta.)"""
        if not self._started:
            return None
        return self._wire.to_usage() if self._wire.counted() else self._wire.input_alone()

    def feed(self, event: StreamEvent) -> None:
        if not event.data:
            return
        kind = event.event
        if kind == "content_block_delta":
            self.output_chars += relayed_chars(event.data)
            return
        if kind == "content_block_start" and b'"server_tool_use"' in event.data:
            block = event_payload(event).get("content_block")
            if isinstance(block, dict) and block.get("type") == "server_tool_use":
                if block.get("name") == "web_search":
                    self.searches += 1
                elif block.get("name") == "advisor":
                    self.advised += 1
            return
        if kind is None and b'"error"' in event.data:
            # Anthropic names every event; a compatible server or proxy may write its failure part way as
            # OpenAI-compatible servers do, `data: {"error": {...}}` with no name and no `type`: the stream's error
            # all the same, in the gateway's words (relayed as it came, it carried the key quoted back in it).
            try:
                said = orjson.loads(event.data)
            except orjson.JSONDecodeError:
                said = None  # (not JSON: relayed as it came, as before)
            if isinstance(said, dict) and "error" in said and said.get("type") is None:
                raise error_from_body(said_status(said), event.data, {})  # (its code's status: a 429's is one)
        if kind not in ("message_start", "message_delta", "error"):
            return
        payload = event_payload(event)
        from adapters.providers.anthropic.wire import WireMessage, WireUsage  # (see the note on the imports)

        try:
            if kind == "message_start":
                message = WireMessage.model_validate(payload.get("message"))
                wire = message.usage
                wire.to_usage()  # (its extras' shapes, checked now: a count it cannot read is not kept)
                wire.served()
                self._wire, self.answer_id = wire, message.id
                self._started = True
            elif kind == "message_delta" and payload.get("usage") is not None:
                wire = self._wire.model_copy(deep=True)
                wire.update(WireUsage.model_validate(payload["usage"]))
                wire.to_usage()
                wire.served()
                self._wire = wire
                self._started = self.final = True
            elif kind == "error":
                failure = error_from_body(said_status(payload), event.data, {})
                failure.native_event = redact_upstream(event.data.decode("utf-8", "replace")).encode()
                raise failure
        except (ValidationError, ValueError) as exc:
            raise malformed(f"upstream sent a malformed '{kind}' event") from exc


def relayed_chars(data: bytes) -> int:
    """The characters of generated output a `content_block_delta` event carries (one JSON parse, about a
    microsecond; all of it when it is not JSON, as nothing in it can be told apart)."""
    try:
        delta = orjson.loads(data).get("delta")
        text = delta.get(MESSAGES_DELTA_TEXT.get(delta.get("type"), ""))
    except (orjson.JSONDecodeError, AttributeError):
        return len(data)
    return len(text) if isinstance(text, str) else 0


# --- adapter -------------------------------------------------------------------------------------
