"""Signed thinking blocks, carried across turns in the gateway's internal form.

Claude (on Anthropic and on Bedrock) signs each block of its thinking; when thinking is on, the assistant
turn that called a tool must come back on the next request with its thinking blocks unchanged, or the API
refuses it. The internal form carries them as `thinking_blocks` on an assistant message (and on the stream
delta that completes a block), in Anthropic's shape, as other OpenAI-form gateways do:
`{"type": "thinking", "thinking": ..., "signature": ...}` or `{"type": "redacted_thinking", "data": ...}`.

Gemini signs its thinking differently: a `thoughtSignature` on the part it belongs to (a function call, or
the last text part), which must come back on that part. The internal form carries those as
`thinking_signatures`, a map from the tool call's id (or `""` for the text) to the signature.
"""

from __future__ import annotations

from typing import Any

from handler.schemas import Message

FIELD = "thinking_blocks"
SIGNATURES = "thinking_signatures"
TEXT = ""  # the key of a text part's signature in `thinking_signatures`


def signed(text: str, signature: str) -> dict[str, Any]:
    return {"type": "thinking", "thinking": text, "signature": signature}


def redacted(data: str) -> dict[str, Any]:
    return {"type": "redacted_thinking", "data": data}


def thinking_blocks(message: Message) -> list[dict[str, Any]]:
    """The well-formed signed blocks an assistant message carries (anything else is left out)."""
    raw = (message.model_extra or {}).get(FIELD)
    if message.role != "assistant" or not isinstance(raw, list):
        return []
    blocks: list[dict[str, Any]] = []
    for block in raw:
        if not isinstance(block, dict):
            continue
        if block.get("type") == "thinking" and isinstance(block.get("signature"), str):
            blocks.append(signed(str(block.get("thinking") or ""), block["signature"]))
        elif block.get("type") == "redacted_thinking" and isinstance(block.get("data"), str):
            blocks.append(redacted(block["data"]))
    return blocks


def signatures(message: Message) -> dict[str, str]:
    """The thought signatures an assistant message carries, by tool call id (`TEXT` for its text)."""
    raw = (message.model_extra or {}).get(SIGNATURES)
    if message.role != "assistant" or not isinstance(raw, dict):
        return {}
    return {str(k): v for k, v in raw.items() if isinstance(v, str)}
