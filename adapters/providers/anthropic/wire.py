"""The parts of Anthropic's answer the gateway reads, as pydantic models.

No `from __future__ import annotations` here: pydantic would evaluate every field's annotation from its string
when the class is made, in the cold start (see handler/schemas.py)."""

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict

from handler.schemas import Usage


class _Wire(BaseModel):
    model_config = ConfigDict(extra="allow", defer_build=True)


class CacheCreation(_Wire):
    ephemeral_5m_input_tokens: int = 0
    ephemeral_1h_input_tokens: int = 0


class ServerToolUse(_Wire):
    web_search_requests: int = 0
    web_fetch_requests: int = 0


# The usage fields a `message_delta` may bring besides the output count.
FOLDED = ("input_tokens", "cache_creation_input_tokens", "cache_read_input_tokens", "cache_creation", "server_tool_use")


class WireUsage(_Wire):
    """Anthropic's usage: `input_tokens` excludes cache reads and writes, which OpenAI counts in."""

    input_tokens: int | None = None
    output_tokens: int = 0
    cache_creation_input_tokens: int | None = None
    cache_read_input_tokens: int | None = None
    cache_creation: CacheCreation | None = None  # the writes by how long they are kept
    server_tool_use: ServerToolUse | None = None  # what Anthropic's own tools did (billed per use)

    def to_usage(self) -> Usage:
        read, write = self.cache_read_input_tokens or 0, self.cache_creation_input_tokens or 0
        hour = min(write, self.cache_creation.ephemeral_1h_input_tokens) if self.cache_creation else 0
        usage = Usage.of(
            (self.input_tokens or 0) + read + write,
            self.output_tokens,
            cached=read,
            cache_write=write,
            cache_write_1h=hour,
        )
        if self.server_tool_use is not None and self.server_tool_use.web_search_requests:
            usage.web_searches = self.server_tool_use.web_search_requests
        return usage

    def update(self, later: "WireUsage") -> None:
        """Fold in a `message_delta` usage: cumulative counts, input fields only when present."""
        self.output_tokens = later.output_tokens
        for name in FOLDED:
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
    stop_sequence: str | None = None
    usage: WireUsage
