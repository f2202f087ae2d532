"""Tool call ids past OpenAI's 64 characters go to OpenAI-API deployments as stand-ins, still paired."""

from __future__ import annotations

import base64
import re
from typing import Any

import orjson
import pytest

from adapters.providers.azure import AzureOpenAIAdapter
from adapters.providers.openai import OpenAIAdapter
from adapters.providers.params import call_signature, signed_call_id
from handler.call_ids import MAX_CALL_ID, claude_call_id, converse_call_id, short_call_id
from handler.ports import RESPONSES_API, NativeCall, Target
from handler.schemas import ChatRequest

# A call id as the Gemini adapter hands it to clients: Gemini's thought signature (hundreds of characters) in it.
SIGNED = signed_call_id("call_0_0123456789abcdef", base64.b64encode(bytes(range(256)) * 2).decode())
MCP = "mcp__filesystem__read_text_file:" + "x" * 60  # a long id with a character outside `[A-Za-z0-9_-]`
AZURE = "https://contoso-eastus.openai.azure.com"
SAFE = re.compile(r"^[A-Za-z0-9_-]+$")


def openai_target(model: str = "gpt-4o-mini", base_url: str = "https://api.openai.com/v1") -> Target:
    return Target("p", "openai", model, "global", base_url)


def chat_history(call_id: str) -> ChatRequest:
    call = {"id": call_id, "type": "function", "function": {"name": "get_weather", "arguments": '{"city":"Paris"}'}}
    messages = [
        {"role": "user", "content": "Weather in Paris?"},
        {"role": "assistant", "content": None, "tool_calls": [call]},
        {"role": "tool", "tool_call_id": call_id, "content": "18C and sunny"},
    ]
    return ChatRequest.model_validate({"model": "public", "messages": messages})


def sent_chat_ids(body: bytes) -> tuple[str, str]:
    messages = orjson.loads(body)["messages"]
    return messages[1]["tool_calls"][0]["id"], messages[2]["tool_call_id"]


@pytest.mark.parametrize("long_id", [SIGNED, MCP, "a" * (MAX_CALL_ID + 1)])
def test_a_long_id_gets_a_stable_short_stand_in(long_id: str) -> None:
    short = short_call_id(long_id)
    assert len(long_id) > MAX_CALL_ID and len(short) == MAX_CALL_ID and SAFE.match(short)
    assert short_call_id(long_id) == short  # the same in a call and its result, in this request and the next
    assert short_call_id(short) == short  # a stand-in is an id OpenAI takes as it is


def test_ids_within_the_limit_go_as_they_are() -> None:
    for call_id in ("call_abc123", "toolu_01A09q90qw90lq917835lq9", "x" * MAX_CALL_ID, "call|fc odd"):
        assert short_call_id(call_id) == call_id


@pytest.mark.parametrize("call_id", ["functions.get_weather:0", "call|fc odd", "", SIGNED, "call_1", "x" * MAX_CALL_ID])
def test_converse_takes_an_id_of_its_characters_as_it_is_and_a_stand_in_for_any_other(call_id: str) -> None:
    """Converse's `toolUseId`: 1 to 64 characters of `[a-zA-Z0-9_-]` (AWS's ToolUseBlock)."""
    stand_in = converse_call_id(call_id)
    assert re.fullmatch(r"[a-zA-Z0-9_-]{1,64}", stand_in) and converse_call_id(call_id) == stand_in
    assert (stand_in == call_id) == bool(re.fullmatch(r"[a-zA-Z0-9_-]{1,64}", call_id))
    assert converse_call_id("functions.get_weather:0") != converse_call_id("functions_get_weather_0")


@pytest.mark.parametrize(
    "call_id", ["functions.get_weather:0", "call|fc odd", "", "call é", SIGNED, "toolu_01A09q90qw90lq917835lq9", MCP]
)
def test_anthropic_takes_an_id_of_its_characters_as_it_is_and_the_converse_stand_in_for_any_other(call_id: str) -> None:
    """Anthropic's `tool_use.id` and `tool_result.tool_use_id`: one or more of `[a-zA-Z0-9_-]`, of any length (a 400
    "String should match pattern '^[a-zA-Z0-9_-]+$'" otherwise)."""
    stand_in = claude_call_id(call_id)
    assert re.fullmatch(r"[a-zA-Z0-9_-]+", stand_in) and claude_call_id(stand_in) == stand_in
    assert (stand_in == call_id) == bool(re.fullmatch(r"[a-zA-Z0-9_-]+", call_id))
    if stand_in != call_id:  # a history that went through Bedrock and Anthropic keeps one stand-in for a call
        assert stand_in == converse_call_id(call_id)


def test_ids_alike_but_for_their_ends_get_different_stand_ins() -> None:
    first, second = SIGNED, SIGNED[:-1] + ("A" if SIGNED[-1] != "A" else "B")
    assert short_call_id(first) != short_call_id(second)


@pytest.mark.parametrize(
    ("adapter", "target"),
    [
        (OpenAIAdapter("p", "sk-test", {}), openai_target()),
        (AzureOpenAIAdapter("az", "k", {}), Target("az", "azure", "gpt-4o-prod", "eastus", AZURE)),
    ],
    ids=["openai", "azure"],
)
def test_chat_completions_history_goes_with_short_paired_ids(adapter: OpenAIAdapter, target: Target) -> None:
    built = adapter.chat_request(chat_history(SIGNED), target, stream=False)
    call, result = sent_chat_ids(built.request.body)
    assert call == result == short_call_id(SIGNED) and len(call) <= MAX_CALL_ID


def test_gemini_openai_compatible_endpoint_gets_the_id_as_gemini_gave_it_and_the_signature_where_it_reads_one() -> None:
    """The signed id went whole, and the call with Gemini's stand-in for a signature: the endpoint reads one in the
    call's `extra_content` alone. The id goes as the Gemini adapter sends it, with no stand-in of 64 characters."""
    google = openai_target("gemini-3-pro", "https://generativelanguage.googleapis.com/v1beta/openai")
    built = OpenAIAdapter("g", "k", {}).chat_request(chat_history(SIGNED), google, stream=False)
    assert sent_chat_ids(built.request.body) == ("call_0_0123456789abcdef", "call_0_0123456789abcdef")
    call = orjson.loads(built.request.body)["messages"][1]["tool_calls"][0]
    assert call["extra_content"] == {"google": {"thought_signature": call_signature(SIGNED)}}


def test_responses_history_goes_with_short_paired_call_ids_of_every_kind() -> None:
    items: list[dict[str, Any]] = [
        {"role": "user", "content": "Weather in Paris, then patch the file."},
        {"type": "function_call", "call_id": SIGNED, "name": "get_weather", "arguments": "{}"},
        {"type": "function_call_output", "call_id": SIGNED, "output": "18C"},
        {"type": "custom_tool_call", "call_id": MCP, "name": "apply_patch", "input": "*** Begin Patch"},
        {"type": "custom_tool_call_output", "call_id": MCP, "output": "done"},
        {"type": "local_shell_call", "call_id": "s" * 80, "action": {"type": "exec", "command": ["ls"]}},
        {"type": "local_shell_call_output", "call_id": "s" * 80, "output": "a.txt"},
        {"type": "function_call", "call_id": "call_short", "name": "get_weather", "arguments": "{}"},
        {"type": "function_call_output", "call_id": "call_short", "output": "20C"},
    ]
    call = NativeCall(RESPONSES_API, {"model": "public", "input": items, "store": False})
    built = OpenAIAdapter("p", "sk-test", {}).native_request(call, openai_target(), stream=False, output_limit=None)
    sent = [item.get("call_id") for item in orjson.loads(built.request.body)["input"]]
    assert sent == [
        None,
        *[short_call_id(SIGNED)] * 2,
        *[short_call_id(MCP)] * 2,
        *[short_call_id("s" * 80)] * 2,
        "call_short",
        "call_short",
    ]
    assert all(len(call_id) <= MAX_CALL_ID for call_id in sent if call_id)
    assert items[1]["call_id"] == SIGNED  # the client's body (which the gateway may store) is left as it is
