"""What a Messages body passed through to Anthropic is mended of before it goes: what Anthropic refuses and only the
gateway made (another provider's reasoning answered as unsigned thinking, tool ids of other characters), and
`thinking` where Anthropic would refuse it. Imported with the first request passed through (`schemas.LATER_MODULES`):
a Lambda cold start whose first invocation is a Chat Completion never needs it."""

from __future__ import annotations

import operator
from typing import Any

from adapters.providers.anthropic.adapter import tool_turn_without_thinking
from adapters.providers.params import unsigned_thinking
from handler.call_ids import claude_call_id, claude_takes


def _to_mend(messages: list[Any]) -> bool:
    """Whether a Messages history holds what Anthropic refuses and only the gateway made (`history_for_claude`): a
    thinking block Claude did not sign (`unsigned_thinking`), or a tool use whose id Anthropic does not take
    (`claude_takes`). Every request passed through asks it: only assistant turns hold thinking and tool uses, and only
    a thinking block's signature and a tool use's id are read, in one loop, the ids checked at once (calling
    `unsigned_thinking` on each block of a 400-turn history cost twice its serializing; checking each id on its own,
    half as much again). A tool result's id is not read: one that Anthropic does not take and no tool use of the
    history has is the client's own mistake, which Anthropic names."""
    call_ids: list[str] = []
    for message in messages:
        if not isinstance(message, dict) or message.get("role") != "assistant":
            continue
        content = message.get("content")
        if not isinstance(content, list):
            continue
        for block in content:
            if not isinstance(block, dict):
                continue
            kind = block.get("type")
            if kind == "thinking":
                signature = block.get("signature")
                if not signature or not isinstance(signature, str):
                    return True
            elif kind == "tool_use":
                call_id = block.get("id")
                if isinstance(call_id, str):  # (another type is the client's own mistake too)
                    call_ids.append(call_id)
    # (All read as one: an id of other characters, or an empty one among them, fails the whole.)
    return bool(call_ids) and not (all(call_ids) and claude_takes("".join(call_ids)))


# The block types whose id pairs a call with its result, and that field.
CALL_ID_FIELDS = {"tool_use": "id", "tool_result": "tool_use_id"}


def _with_claude_id(block: object) -> object:
    """A `tool_use` or `tool_result` block with the id Anthropic takes for its own (`claude_call_id`), else `block`."""
    if not isinstance(block, dict):
        return block
    field = CALL_ID_FIELDS.get(str(block.get("type")))
    call_id = block.get(field) if field else None
    if not isinstance(call_id, str) or claude_takes(call_id):
        return block
    return {**block, field: claude_call_id(call_id)}


def history_for_claude(body: dict[str, Any]) -> list[str]:
    """A Messages body passed through, without what Anthropic refuses and a client talking to Anthropic alone never
    has, since the gateway made it when another provider served a turn (a Claude Code user switching models mid-loop
    hands it back, and so does a session resumed from a history saved before the gateway made it otherwise):

    - thinking blocks Claude did not sign (`claude_signed`): another provider's reasoning, which the gateway answers
      with an empty signature. Anthropic refuses one in any turn, thinking on or off ("Invalid `signature` in
      `thinking` block"). They are left out; a turn left with nothing (it held that reasoning alone) goes too:
      Anthropic joins the turns around it.
    - tool use ids of characters Anthropic does not take (Kimi K2's `functions.get_weather:0`; "String should match
      pattern '^[a-zA-Z0-9_-]+$'"), which the Messages front-end gave clients as the provider wrote them until it gave
      stand-ins (`messages_out`). Each goes as the stand-in the front-end gives now (`claude_call_id`), in the
      `tool_use` and in its `tool_result`: Anthropic pairs them within the request alone, so they stay paired.

    The client's messages are not changed (a fallback may send them elsewhere): `body` gets new ones. Returns
    `["messages.thinking"]` when thinking went, else nothing (an id that changed loses nothing)."""
    messages = body.get("messages")
    if not isinstance(messages, list) or not _to_mend(messages):
        return []
    thinking_left_out = False
    kept: list[Any] = []
    for message in messages:
        content = message.get("content") if isinstance(message, dict) else None
        if not isinstance(content, list):
            kept.append(message)
            continue
        blocks: list[Any] = []
        for block in content:
            if message.get("role") == "assistant" and unsigned_thinking(block):
                thinking_left_out = True
            else:
                blocks.append(_with_claude_id(block))
        if len(blocks) == len(content) and all(map(operator.is_, blocks, content)):
            kept.append(message)
        elif blocks:
            kept.append({**message, "content": blocks})
    body["messages"] = kept
    return ["messages.thinking"] if thinking_left_out else []


def thinking_refused(body: dict[str, Any]) -> list[str]:
    """Leave `thinking` out of a Messages body passed through, where Anthropic would refuse it: its last assistant
    turn called a tool without Claude's thinking (`tool_turn_without_thinking`), as the translation does. With it go
    the context-management edits that need thinking on (Anthropic's 400: "`clear_thinking_20251015` strategy
    requires `thinking` to be enabled"; Claude Code sends one). `output_config.effort` stays: Anthropic takes it
    without thinking, for the depth of the answer itself. Returns the names of what was left out."""
    thinking, messages = body.get("thinking"), body.get("messages")
    if not isinstance(thinking, dict) or thinking.get("type") not in ("enabled", "adaptive"):
        return []
    if not isinstance(messages, list) or not tool_turn_without_thinking(messages):
        return []
    return without_thinking(body)


def without_thinking(body: dict[str, Any]) -> list[str]:
    """Take `thinking` out of a Messages body passed through, and the context-management edits that need it on;
    returns the names of what was taken out."""
    del body["thinking"]
    dropped = ["thinking"]
    management = body.get("context_management")
    edits = management.get("edits") if isinstance(management, dict) else None
    if not isinstance(management, dict) or not isinstance(edits, list):
        return dropped
    cleared = [edit for edit in edits if isinstance(edit, dict) and str(edit.get("type")).startswith("clear_thinking")]
    if cleared:
        kept = [edit for edit in edits if edit not in cleared]
        if kept:
            body["context_management"] = {**management, "edits": kept}
        else:
            del body["context_management"]
    return dropped + [f"context_management.edits[{edit['type']}]" for edit in cleared]
