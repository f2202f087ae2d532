"""Function tools as the chat tests offer them, in OpenAI's Chat Completions shape."""

from __future__ import annotations

from typing import Any

WEATHER_TOOL: Any = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "Weather in a city",
        "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]},
    },
}
# A function without arguments, and a user message that scripts a call to it (`tests.fakes.script`).
CLOCK_TOOL: Any = {
    "type": "function",
    "function": {"name": "get_time", "description": "The time now", "parameters": {"type": "object", "properties": {}}},
}
ASK_THE_TIME: Any = [{"role": "user", "content": "What time is it? CALL get_time {}"}]


def streamed_arguments(chunks: Any) -> list[str]:
    """Each tool call's arguments, joined from the deltas of a Chat Completions stream."""
    calls: dict[int, str] = {}
    for chunk in chunks:
        for delta in (chunk.choices[0].delta.tool_calls or []) if chunk.choices else []:
            calls[delta.index] = calls.get(delta.index, "") + (delta.function.arguments or "" if delta.function else "")
    return list(calls.values())


# An MCP tool's name as Claude Code writes it (`mcp__<server>__<tool>`): 83 characters, which Anthropic takes (up to
# 128) and Bedrock's Converse and Gemini (at most 64) refuse.
MCP_TOOL_NAME = "mcp__plugin_atlassian_atlassian__searchConfluencePagesUsingCqlAcrossAllSpacesByDate"


def named_tool(name: str) -> Any:
    """`WEATHER_TOOL` under another name."""
    return {**WEATHER_TOOL, "function": {**WEATHER_TOOL["function"], "name": name}}


def named_call(name: str, call_id: str = "call_1") -> Any:
    """An assistant turn's call of tool `name`, for Paris, in the Chat Completions shape."""
    return {"id": call_id, "type": "function", "function": {"name": name, "arguments": '{"city":"Paris"}'}}
