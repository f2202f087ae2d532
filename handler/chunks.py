"""A stream's chunks in the internal form (`chat.completion.chunk`), apart from handler/schemas.py: a request that
does not stream never makes their classes (`handler.schemas` imports this module on the first use of one of its
names, see `handler.schemas.LATER`)."""

# No `from __future__ import annotations`, as in handler/schemas.py.
from typing import Any, Literal

from pydantic import Field

from handler.schemas import FinishReason, Omitted, Usage, _Open


class FunctionCallDelta(_Open):
    name: str | None = Omitted()
    arguments: str | None = Omitted()


class ToolCallDelta(_Open):
    index: int
    id: str | None = Omitted()
    type: Literal["function"] | None = Omitted()
    function: FunctionCallDelta | None = Omitted()
    extra_content: dict[str, Any] | None = Omitted()


class ChunkDelta(_Open):
    role: Literal["assistant"] | None = Omitted()
    content: str | None = Omitted()
    tool_calls: list[ToolCallDelta] | None = Omitted()
    refusal: str | None = Omitted()
    reasoning_content: str | None = Omitted()


class ChunkChoice(_Open):
    index: int = 0
    delta: ChunkDelta
    finish_reason: FinishReason | None = None
    logprobs: Any = None
    stop_sequence: str | None = Omitted()


class ChatCompletionChunk(_Open):
    id: str
    object: Literal["chat.completion.chunk"] = "chat.completion.chunk"
    created: int
    model: str
    choices: list[ChunkChoice] = Field(default_factory=list)
    usage: Usage | None = Omitted()
    system_fingerprint: str | None = Omitted()
