"""Tool call ids as OpenAI's APIs, Bedrock's Converse and Anthropic take them: at most 64 characters (Converse's of
`[a-zA-Z0-9_-]` alone, and at least one: `converse_call_id`); one or more of `[a-zA-Z0-9_-]`, of any length, for
Anthropic (`claude_call_id`).

OpenAI (and Azure OpenAI) refuse a longer one with a 400 (`string_above_max_length`, on Chat Completions'
`messages[i].tool_calls[j].id` and `tool_call_id`, on the Responses API's `input[i].call_id`), and Bedrock
refuses a `toolUseId` past 64 characters (a `ValidationException`), yet longer ones
reach the gateway legitimately: the Gemini adapter carries a call's thought signature in its id (hundreds of
characters), and MCP tools and other clients make long ids of their own. A session whose earlier turns another
provider served would then fail on every later turn. The provider only pairs a call with its result within one
request, so a long id goes as a stand-in derived from it alone: the same id gets the same stand-in in the call
and in its result (and in every later request), and no answer refers back to it. Every stand-in is made alike
(`_stand_in`) and is an id each of these takes as it is, so a history that crossed several providers keeps each call
paired with its result whichever stand-ins it went through.
"""

from __future__ import annotations

import base64
import hashlib
import re
from typing import Any

__all__ = [
    "MAX_CALL_ID",
    "claude_call_id",
    "claude_takes",
    "converse_call_id",
    "short_call_id",
    "shorten_input_call_ids",
    "shorten_message_call_ids",
]

MAX_CALL_ID = 64
_DIGEST_BYTES = 16  # 128 bits of SHA-256: 22 characters of URL-safe base64
_DIGEST_CHARS = 22
_UNSAFE = r"[^A-Za-z0-9_-]"  # (compiled on first use, by `re`'s cache: a cold start pays for no pattern)


def short_call_id(call_id: str) -> str:
    """`call_id` itself when OpenAI takes it, else a stand-in of exactly `MAX_CALL_ID` characters of
    `[A-Za-z0-9_-]`: the id's start (kept readable in the provider's logs) and a digest of the whole id."""
    if len(call_id) <= MAX_CALL_ID:
        return call_id
    return _stand_in(call_id)


def converse_call_id(call_id: str) -> str:
    """`call_id` itself when Bedrock's Converse takes it as a `toolUseId` (1 to 64 characters of `[a-zA-Z0-9_-]`,
    AWS's ToolUseBlock and ToolResultBlock), else a stand-in of those characters, as `short_call_id` makes one: an
    id another provider wrote with other characters (Kimi K2's `functions.get_weather:0`), or none, Bedrock refuses."""
    if len(call_id) <= MAX_CALL_ID and claude_takes(call_id):  # (Anthropic's characters, at most 64 of them)
        return call_id
    return _stand_in(call_id)


def claude_takes(call_id: str) -> bool:
    """Whether Anthropic takes `call_id` as a `tool_use.id` and a `tool_result.tool_use_id`: one or more of
    `[a-zA-Z0-9_-]` (its 400 "String should match pattern '^[a-zA-Z0-9_-]+$'"). (String methods rather than a pattern:
    every Messages request passed through asks it of each tool use, and this costs half a cached `re.fullmatch`.)"""
    return call_id.isascii() and call_id.replace("_", "a").replace("-", "a").isalnum()


def claude_call_id(call_id: str) -> str:
    """`call_id` itself when Anthropic takes it (`claude_takes`), else the stand-in Converse gets for it
    (`converse_call_id`), which Anthropic takes too: an id another provider wrote with other characters (Kimi K2's
    `functions.get_weather:0`), or none."""
    if claude_takes(call_id):
        return call_id
    return _stand_in(call_id)


def _stand_in(call_id: str) -> str:
    """The id's start, its characters outside `[A-Za-z0-9_-]` as `_`, and a digest of the whole id: at most
    `MAX_CALL_ID` characters, the same for the same id."""
    digest = base64.urlsafe_b64encode(hashlib.sha256(call_id.encode()).digest()[:_DIGEST_BYTES]).decode()
    head = re.sub(_UNSAFE, "_", call_id[: MAX_CALL_ID - _DIGEST_CHARS - 1])
    return f"{head}_{digest[:_DIGEST_CHARS]}"


def shorten_message_call_ids(messages: list[dict[str, Any]]) -> None:
    """Chat Completions messages (in place): each assistant tool call's `id` and each tool result's
    `tool_call_id`."""
    for message in messages:
        if isinstance(message.get("tool_call_id"), str):
            message["tool_call_id"] = short_call_id(message["tool_call_id"])
        for call in message.get("tool_calls") or ():
            if isinstance(call, dict) and isinstance(call.get("id"), str):
                call["id"] = short_call_id(call["id"])


def shorten_input_call_ids(items: list[Any]) -> list[Any]:
    """Responses API input items with each `call_id` OpenAI takes, whatever the item's type (function, custom
    tool, shell, computer calls and their outputs); the client's items are left as they are."""
    return [
        {**item, "call_id": short_call_id(item["call_id"])}
        if isinstance(item, dict) and isinstance(item.get("call_id"), str) and len(item["call_id"]) > MAX_CALL_ID
        else item
        for item in items
    ]
