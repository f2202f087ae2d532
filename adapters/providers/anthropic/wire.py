"""The parts of Anthropic's answer the gateway reads, as pydantic models.

No `from __future__ import annotations` here: pydantic would evaluate every field's annotation from its string
when the class is made, in the cold start (see handler/schemas.py)."""

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict

from handler.schemas import Usage


class _Wire(BaseModel):
    model_config = ConfigDict(extra="allow", defer_build=True)


def _count(counts: Any, name: str) -> int:
    """A count in one of the usage's objects (0 when absent or null); another shape is a malformed answer."""
    if counts is None:
        return 0
    if not isinstance(counts, dict):
        raise ValueError(f"usage object for {name} is not an object")
    value = counts.get(name)
    if value is None:
        return 0
    if isinstance(value, bool) or not isinstance(value, int):
        raise ValueError(f"usage count {name} is not an integer")
    return value


# The usage fields a `message_delta` may bring besides the output count.
FOLDED = ("input_tokens", "cache_creation_input_tokens", "cache_read_input_tokens")
# Also read, from the extras (each field declared costs a Lambda cold start about 0.3 million instructions): the
# writes by how long they are kept (`cache_creation.ephemeral_1h_input_tokens`), and what Anthropic's own tools
# did (`server_tool_use.web_search_requests`, billed per search).
FOLDED_EXTRA = ("cache_creation", "server_tool_use")


class WireUsage(_Wire):
    """Anthropic's usage: `input_tokens` excludes cache reads and writes, which OpenAI counts in."""

    input_tokens: int | None = None
    output_tokens: int = 0
    cache_creation_input_tokens: int | None = None
    cache_read_input_tokens: int | None = None

    def to_usage(self) -> Usage:
        read, write = self.cache_read_input_tokens or 0, self.cache_creation_input_tokens or 0
        extra = self.__pydantic_extra__ or {}
        hour = min(write, _count(extra.get("cache_creation"), "ephemeral_1h_input_tokens")) if extra else 0
        usage = Usage.of(
            (self.input_tokens or 0) + read + write,
            self.output_tokens,
            cached=read,
            cache_write=write,
            cache_write_1h=hour,
        )
        searches = _count(extra.get("server_tool_use"), "web_search_requests") if extra else 0
        if searches:
            usage.set_count("web_searches", searches)
        return usage

    def update(self, later: "WireUsage") -> None:
        """Fold in a `message_delta` usage: cumulative counts, input fields only when present."""
        self.output_tokens = later.output_tokens
        for name in FOLDED:
            if getattr(later, name) is not None:
                setattr(self, name, getattr(later, name))
        mine, theirs = self.model_extra, later.model_extra or {}
        for name in FOLDED_EXTRA:
            if theirs.get(name) is not None and mine is not None:
                mine[name] = theirs[name]


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
