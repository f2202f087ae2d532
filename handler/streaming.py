"""Layer 3 of streaming: one serializer writing `data:` lines and the closing `[DONE]`.

Layers 1 (framing) and 2 (per-provider parsing) live with the adapters (`frame_decoder`,
`stream_parser`); everything the client receives on a stream is written here.
"""

from __future__ import annotations

from typing import Any

import orjson

from handler.errors import GatewayError
from handler.schemas import ChatCompletionChunk

DONE = b"data: [DONE]\n\n"


def sse_chunk(chunk: ChatCompletionChunk) -> bytes:
    return b"data: " + chunk.model_dump_json(exclude_none=True).encode() + b"\n\n"


def sse_json(payload: Any) -> bytes:
    return b"data: " + orjson.dumps(payload) + b"\n\n"


def sse_error(error: GatewayError) -> bytes:
    """An error after the first byte: OpenAI-shaped, in the stream, as OpenAI itself sends one."""
    return sse_json(error.openai_body())


def sse_event(event: str, payload: Any) -> bytes:
    """A named event, as the Anthropic Messages stream uses them."""
    return b"event: " + event.encode() + b"\ndata: " + orjson.dumps(payload) + b"\n\n"
