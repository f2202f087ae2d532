"""Function tools as the chat tests offer them, in OpenAI's Chat Completions shape."""

from __future__ import annotations

from typing import Any

import httpx

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


def allowed_tools(mode: str, *names: str) -> Any:
    """A Chat Completions `tool_choice` that lets the model call the tools `names` alone, as `mode` says (`auto`,
    `required`), the request's other tools still offered."""
    tools = [{"type": "function", "function": {"name": name}} for name in names]
    return {"type": "allowed_tools", "allowed_tools": {"mode": mode, "tools": tools}}


def called_names(client: Any, settings: Any, stream: bool) -> list[str]:
    """The names of the functions a Chat Completions answer calls (`client`, an OpenAI SDK client, asked
    `settings`), whole or streamed; a stream's deltas that carry no name left out."""
    if not stream:
        calls = client.chat.completions.create(**settings).choices[0].message.tool_calls or []
        return [call.function.name for call in calls]
    chunks = client.chat.completions.create(**settings, stream=True)
    deltas = [d for c in chunks if c.choices for d in c.choices[0].delta.tool_calls or [] if d.function]
    return [d.function.name for d in deltas if d.function.name]


def mcp_tool_use(claude: Any, model: str, stream: bool) -> Any:
    """What `model` answers Claude Code's forced call of its MCP tool (`MCP_TOOL_NAME`) with, asked by `claude` (an
    Anthropic SDK client), whole or streamed: the message's last block."""
    tool = {"name": MCP_TOOL_NAME, "input_schema": WEATHER_TOOL["function"]["parameters"]}
    settings: Any = {"model": model, "max_tokens": 100, "messages": [{"role": "user", "content": "Hi"}]}
    settings |= {"tools": [tool], "tool_choice": {"type": "any"}}
    if not stream:
        return claude.messages.create(**settings).content[-1]
    with claude.messages.stream(**settings) as events:
        return events.get_final_message().content[-1]


def responses_function_calls(url: str, key: str, model: str) -> list[str]:
    """The names of the functions a Responses answer calls when `model` is made to call one named `MCP_TOOL_NAME`
    (`url`: the gateway's)."""
    tool = {"type": "function", **named_tool(MCP_TOOL_NAME)["function"]}
    body = {"model": model, "input": "Hi", "tools": [tool], "tool_choice": "required"}
    answer = httpx.post(f"{url}/v1/responses", json=body, headers={"authorization": f"Bearer {key}"})
    assert answer.status_code == 200, answer.text
    return [item["name"] for item in answer.json()["output"] if item["type"] == "function_call"]
