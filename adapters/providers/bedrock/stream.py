"""Bedrock's ConverseStream events as OpenAI chunks (`BedrockStreamParser`), imported with the first stream: a
Lambda's buffered function answers whole, and its cold start imports neither this nor the Anthropic stream parser it
builds on."""

from __future__ import annotations

import base64
from typing import Any

from pydantic import ValidationError

from adapters.providers.anthropic.stream import AnthropicStreamParser
from adapters.providers.anthropic.wire import WireBlock
from adapters.providers.bedrock.adapter import (
    NOVA_REDACTED,
    UNUSABLE_STOPS,
    finish_reason,
    fired,
    redacts_reasoning,
    unusable,
    usage_of,
)
from adapters.providers.params import ToolNames
from handler.schemas import ChatCompletionChunk, completion_id
from handler.wire import StreamEvent, json_body, malformed


class BedrockStreamParser(AnthropicStreamParser):
    """ConverseStream events into OpenAI chunks.

    ConverseStream is Anthropic's stream under other names: `messageStart` gives the role chunk, a
    `contentBlockStart` with `toolUse` a tool-call delta (index, id, name) whose `contentBlockDelta` input
    fragments follow, a block of redacted reasoning (`redactedContent` deltas) a `redacted_thinking` block once
    it stops, `messageStop` the finish reason (or, for a stop reason that makes it no answer, `UNUSABLE_STOPS`, the
    error `finish` raises once the usage is in) and `metadata` (which comes last) the usage. So each
    event is renamed into its Anthropic counterpart and the Anthropic parser's block bookkeeping (tool-call
    positions, a `json_schema` tool streaming as content) does the rest.
    """

    def __init__(
        self, model: str, json_mode: bool, stops: list[str] | None = None, names: ToolNames | None = None
    ) -> None:
        super().__init__(model, json_mode)
        self._names = names  # the request's tool names, to give each call its client's name
        self._id = completion_id()
        self._stops = stops or []
        self._redacted: dict[int, list[str]] = {}  # a redacted reasoning block's data so far, until its stop
        self._nova = redacts_reasoning(model)
        self._held: dict[int, str | None] = {}  # Nova's reasoning while it may be `NOVA_REDACTED` whole, None after
        self._unusable: str | None = None  # a stop reason that makes the answer no answer (`UNUSABLE_STOPS`)

    def feed(self, event: StreamEvent) -> list[ChatCompletionChunk]:
        if not event.data:
            return []
        payload = json_body(event.data)
        if not isinstance(payload, dict):
            raise malformed("upstream sent a stream event that is not an object")
        try:
            return self._opening(self._converse_event(event.event or "", payload))
        except (ValidationError, AttributeError, TypeError, ValueError) as exc:
            raise malformed(f"upstream sent a malformed '{event.event}' event") from exc

    def _converse_event(self, kind: str, payload: dict[str, Any]) -> list[ChatCompletionChunk]:
        index = int(payload.get("contentBlockIndex", 0))
        if kind == "messageStart":
            return []  # (the role's chunk waits for what the answer opens with: `_opening`)
        if kind == "contentBlockStart":
            tool = (payload.get("start") or {}).get("toolUse")
            if not isinstance(tool, dict):
                return []
            name = tool.get("name")
            if self._names is not None and isinstance(name, str):
                name = self._names.client(name)
            block = WireBlock(type="tool_use", id=tool.get("toolUseId"), name=name)
            return self._block_start(index, block)
        if kind == "contentBlockDelta":
            redacted = redacted_content(payload.get("delta"))
            if redacted is not None:
                self._redacted.setdefault(index, []).append(redacted)
                return []
            delta = anthropic_delta(payload.get("delta"))
            if self._nova and delta.get("type") == "thinking_delta":
                return self._nova_reasoning(index, str(delta["thinking"]))
            return self._block_delta(index, delta)
        if kind == "contentBlockStop":
            return [*self._held_reasoning(index), *self._redacted_blocks(index), *self._empty_inputs(index)]
        if kind == "messageStop":
            if payload.get("stopReason") in UNUSABLE_STOPS:
                self._unusable = payload["stopReason"]  # failed at the end, with the usage `metadata` brings
                return []
            finish = finish_reason(payload.get("stopReason"), self._json_answer, self._tools > 0)
            ending = self._chunk(finish=finish, stop_sequence=fired(payload, self._stops))
            return [*self._held_reasoning(), *self._redacted_blocks(), *self._empty_inputs(), ending]
        if kind == "metadata":
            self.usage = usage_of(payload.get("usage"))
            return self._usage_chunk()
        return []  # event types added after this was written

    def finish(self) -> list[ChatCompletionChunk]:
        failure = unusable(self._unusable, self.usage)
        if failure is not None:
            raise failure
        return super().finish()

    def _nova_reasoning(self, index: int, text: str) -> list[ChatCompletionChunk]:
        """Nova's reasoning text, held while all of the block's so far could be `NOVA_REDACTED` (Nova 2 redacts its
        reasoning: that is no reasoning to show), and relayed as it comes once it cannot."""
        held = self._held.get(index, "")
        if held is None:
            return self._block_delta(index, {"type": "thinking_delta", "thinking": text})
        held += text
        if NOVA_REDACTED.startswith(held):
            self._held[index] = held
            return []
        self._held[index] = None
        return self._block_delta(index, {"type": "thinking_delta", "thinking": held})

    def _held_reasoning(self, index: int | None = None) -> list[ChatCompletionChunk]:
        """The reasoning text still held for block `index` (or every block) as it stops: none when it was
        `NOVA_REDACTED`, whole, else the start of a reasoning that ended there."""
        if not self._held:
            return []  # (every parser but Nova's)
        chunks: list[ChatCompletionChunk] = []
        for block in sorted(self._held) if index is None else [index] if index in self._held else []:
            held = self._held.pop(block)
            if held and held != NOVA_REDACTED:
                chunks += self._block_delta(block, {"type": "thinking_delta", "thinking": held})
        return chunks

    def _redacted_blocks(self, index: int | None = None) -> list[ChatCompletionChunk]:
        """Claude's redacted reasoning (block `index`, or every one still open) as the `redacted_thinking` block an
        Anthropic stream starts with its data whole: it must go back on the next turn as the whole answer's does."""
        chunks: list[ChatCompletionChunk] = []
        for block in sorted(self._redacted) if index is None else [index] if index in self._redacted else []:
            data = joined_blob(self._redacted.pop(block))
            chunks += self._block_start(block, WireBlock(type="redacted_thinking", data=data))
        return chunks


def redacted_content(delta: Any) -> str | None:
    """A delta's redacted reasoning (`reasoningContent.redactedContent`, a Blob: base64 text), else None."""
    reasoning = delta.get("reasoningContent") if isinstance(delta, dict) else None
    data = reasoning.get("redactedContent") if isinstance(reasoning, dict) else None
    return data if isinstance(data, str) else None


def joined_blob(pieces: list[str]) -> str:
    """One Blob of the base64 pieces of a block streamed in several deltas: the bytes they carry, joined."""
    if len(pieces) == 1:
        return pieces[0]
    return base64.b64encode(b"".join(base64.b64decode(piece, validate=True) for piece in pieces)).decode()


def anthropic_delta(delta: Any) -> dict[str, Any]:
    """A Converse content delta in Anthropic's form (`text_delta`, `thinking_delta`, `input_json_delta`)."""
    if not isinstance(delta, dict):
        return {}
    if isinstance(delta.get("text"), str):
        return {"type": "text_delta", "text": delta["text"]}
    reasoning = delta.get("reasoningContent")
    if isinstance(reasoning, dict) and isinstance(reasoning.get("text"), str):
        return {"type": "thinking_delta", "thinking": reasoning["text"]}
    if isinstance(reasoning, dict) and isinstance(reasoning.get("signature"), str):
        return {"type": "signature_delta", "signature": reasoning["signature"]}
    tool = delta.get("toolUse")
    if isinstance(tool, dict) and isinstance(tool.get("input"), str):
        return {"type": "input_json_delta", "partial_json": tool["input"]}
    return {}  # citations: nothing the OpenAI form carries (redacted reasoning: `redacted_content`)
