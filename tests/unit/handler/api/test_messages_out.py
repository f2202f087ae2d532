"""The Messages front-end's stream writer: the internal chunks as Anthropic's events."""

from __future__ import annotations

from typing import Any

import orjson

from handler.api.messages_out import EventWriter
from handler.schemas import ChatCompletionChunk, ChunkChoice, ChunkDelta


def chunk(**delta: Any) -> ChatCompletionChunk:
    return ChatCompletionChunk(id="c", created=0, model="m", choices=[ChunkChoice(delta=ChunkDelta(**delta))])


def events(raw: bytes) -> list[dict[str, Any]]:
    return [orjson.loads(line[6:]) for line in raw.split(b"\n") if line.startswith(b"data: ")]


def test_a_signed_thinking_block_ends_with_its_signature_and_a_redacted_one_stands_alone() -> None:
    """Claude's thinking from a translated deployment (Bedrock) reaches a Messages client as Claude wrote it:
    the block completed by `thinking_blocks` on a delta gets its `signature_delta`, and closes."""
    writer = EventWriter("m", "msg_1")
    signed = {"type": "thinking", "thinking": "Plan.", "signature": "sig-1"}
    redacted = {"type": "redacted_thinking", "data": "opaque"}
    out = writer.chunk(chunk(reasoning_content="Plan."))
    out += writer.chunk(chunk(thinking_blocks=[signed]))
    out += writer.chunk(chunk(thinking_blocks=[redacted]))
    out += writer.chunk(chunk(content="Hi"))
    sent = events(out)
    assert [e["type"] for e in sent] == [
        "content_block_start",
        "content_block_delta",
        "content_block_delta",
        "content_block_stop",
        "content_block_start",
        "content_block_stop",
        "content_block_start",
        "content_block_delta",
    ]
    assert sent[2]["delta"] == {"type": "signature_delta", "signature": "sig-1"} and sent[2]["index"] == 0
    assert sent[4]["content_block"] == redacted and sent[4]["index"] == 1
    assert sent[6]["content_block"] == {"type": "text", "text": ""} and sent[6]["index"] == 2
