"""A session whose earlier turns Gemini served (its thought signature in each call's id) or whose tools make long
ids, carried on at OpenAI or Azure: their APIs refuse a call id past 64 characters, so it goes as a stand-in,
still paired with its result. And a function's name past 64 characters (an MCP tool's), which they refuse too: it
goes as an alias, and comes back as the client's."""

from __future__ import annotations

import asyncio
import base64
from typing import Any

import httpx
import orjson
import pytest

from adapters.providers.params import signed_call_id
from tests.fakes import openai as openai_fake
from tests.fakes.openai_responses import MAX_ID
from tests.functional.conftest import Running, openai_client
from tests.support.tools import MCP_TOOL_NAME

# As the gateway's Gemini adapter hands a Gemini 3 call to clients: the call's thought signature rides in its id.
SIGNED = signed_call_id("call_0_5f0c1d2e3a4b6c7d", base64.b64encode(bytes(range(200))).decode())
TOOL_ID = "mcp__workspace__search_files_" + "7" * 60  # another client's long id of its own
WEATHER = {"type": "function", "name": "get_weather", "parameters": {"type": "object", "properties": {}}}
ASK = 'Weather? CALL get_weather {"city":"Paris"}'


def upstream(fleet: Running, fake: str) -> dict[str, Any]:
    body: dict[str, Any] = fleet.fakes[fake].state.requests[-1]["json"]
    return body


def test_the_fake_refuses_a_long_id_as_openai_does() -> None:
    """What OpenAI answers (Chat Completions, and the Responses API for `call_id`), so the tests below can fail."""
    call = {"id": SIGNED, "type": "function", "function": {"name": "get_weather", "arguments": "{}"}}
    chat = {
        "model": "gpt-4o-mini",
        "messages": [
            {"role": "user", "content": ASK},
            {"role": "assistant", "content": None, "tool_calls": [call]},
            {"role": "tool", "tool_call_id": SIGNED, "content": "18C"},
        ],
    }
    items = [
        {"role": "user", "content": ASK},
        {"type": "function_call", "call_id": SIGNED, "name": "get_weather", "arguments": "{}"},
    ]
    transport = httpx.ASGITransport(app=openai_fake.create_app())
    headers = {"authorization": f"Bearer {openai_fake.API_KEY}"}

    async def send() -> tuple[httpx.Response, httpx.Response]:
        async with httpx.AsyncClient(transport=transport, base_url="http://openai", headers=headers) as client:
            refused = await client.post("/v1/chat/completions", json=chat)
            return refused, await client.post("/v1/responses", json={"model": "gpt-4o-mini", "input": items})

    for answer, param in zip(asyncio.run(send()), ("messages[1].tool_calls[0].id", "input[1].call_id"), strict=True):
        assert answer.status_code == 400
        assert answer.json() == {
            "error": {
                "message": f"Invalid '{param}': string too long. Expected a string with maximum length 64, but got a "
                f"string with length {len(SIGNED)} instead.",
                "type": "invalid_request_error",
                "param": param,
                "code": "string_above_max_length",
            }
        }


@pytest.mark.parametrize(("model", "fake"), [("gpt", "openai"), ("azure-gpt", "azure")])
def test_a_chat_completions_history_with_a_gemini_signed_call_goes_to_openai(
    fleet: Running, fleet_key: str, model: str, fake: str
) -> None:
    tool = {"type": "function", "function": {"name": "get_weather", "parameters": {"type": "object"}}}
    calls = [
        {"id": SIGNED, "type": "function", "function": {"name": "get_weather", "arguments": '{"city":"Paris"}'}},
        {"id": TOOL_ID, "type": "function", "function": {"name": "get_weather", "arguments": '{"city":"Lyon"}'}},
    ]
    messages: Any = [
        {"role": "user", "content": ASK},
        {"role": "assistant", "content": None, "tool_calls": calls},
        {"role": "tool", "tool_call_id": TOOL_ID, "content": "15C"},
        {"role": "tool", "tool_call_id": SIGNED, "content": "18C and sunny"},
    ]
    completion = openai_client(fleet, fleet_key).chat.completions.create(model=model, messages=messages, tools=[tool])
    assert completion.choices[0].message.content == "DONE: 18C and sunny"  # the results reached the model
    sent = upstream(fleet, fake)["messages"]
    first, second = (call["id"] for call in sent[1]["tool_calls"])
    assert (sent[2]["tool_call_id"], sent[3]["tool_call_id"]) == (second, first)  # still paired
    assert first != second and max(len(first), len(second)) <= MAX_ID


@pytest.mark.parametrize(("model", "fake"), [("gpt", "openai"), ("azure-gpt", "azure"), ("gpt-chat", "openai")])
def test_a_codex_history_with_long_call_ids_goes_to_openai(
    fleet: Running, fleet_key: str, model: str, fake: str
) -> None:
    """As Codex sends it: its whole history each turn, `store: false`, streamed; natively to OpenAI's and Azure's
    Responses API, translated to Chat Completions for `gpt-chat`."""
    items: Any = [
        {"type": "message", "role": "user", "content": [{"type": "input_text", "text": ASK}]},
        {"type": "function_call", "call_id": SIGNED, "name": "get_weather", "arguments": '{"city":"Paris"}'},
        {"type": "function_call_output", "call_id": SIGNED, "output": "18C and sunny"},
    ]
    if model != "gpt-chat":  # the translation has no custom tools
        items[1:1] = [
            {"type": "custom_tool_call", "call_id": TOOL_ID, "name": "apply_patch", "input": "*** Begin Patch"},
            {"type": "custom_tool_call_output", "call_id": TOOL_ID, "output": "Done!"},
        ]
    stream = openai_client(fleet, fleet_key).responses.create(
        model=model, input=items, tools=[WEATHER], store=False, stream=True
    )
    done = [event for event in stream if event.type == "response.completed"]
    assert len(done) == 1 and done[0].response.output_text == "DONE: 18C and sunny"
    body = upstream(fleet, fake)
    if model == "gpt-chat":
        sent = body["messages"]
        assert sent[1]["tool_calls"][0]["id"] == sent[2]["tool_call_id"] and len(sent[2]["tool_call_id"]) <= MAX_ID
        return
    ids = [item.get("call_id") for item in body["input"]]
    assert ids[1] == ids[2] != ids[3] == ids[4]  # each call still paired with its output
    assert all(len(call_id) <= MAX_ID for call_id in ids[1:])
    assert orjson.dumps(body).count(SIGNED.encode()) == 0


@pytest.mark.parametrize("stream", [False, True], ids=["whole", "stream"])
@pytest.mark.parametrize(("model", "fake"), [("gpt", "openai"), ("azure-gpt", "azure")])
def test_a_long_function_name_goes_to_a_native_responses_api_as_an_alias(
    fleet: Running, fleet_key: str, model: str, fake: str, stream: bool
) -> None:
    """Claude Code's or Codex's MCP tool (83 characters) in a `/v1/responses` request passed through to OpenAI's or
    Azure's Responses API went as written: OpenAI's 400 for the whole request, where Chat Completions aliased it
    (review). The tool, the named choice and the history's call go by an alias; the answer's call (whole, each
    stream event, the stored response) names the client's tool."""
    tool = {**WEATHER, "name": MCP_TOOL_NAME}
    items: Any = [
        {"type": "message", "role": "user", "content": [{"type": "input_text", "text": "Weather?"}]},
        {"type": "function_call", "call_id": "call_1", "name": MCP_TOOL_NAME, "arguments": '{"city":"Lyon"}'},
        {"type": "function_call_output", "call_id": "call_1", "output": "15C"},
        {"type": "message", "role": "user", "content": [{"type": "input_text", "text": "And in Paris?"}]},
    ]
    choice = {"type": "function", "name": MCP_TOOL_NAME}
    body = {"model": model, "input": items, "tools": [tool], "tool_choice": choice, "stream": stream}
    auth = {"authorization": f"Bearer {fleet_key}"}
    answer = httpx.post(f"{fleet.url}/v1/responses", json=body, headers=auth, timeout=30)
    assert answer.status_code == 200, answer.text
    sent = upstream(fleet, fake)
    alias = sent["tools"][0]["name"]
    assert alias != MCP_TOOL_NAME and len(alias) <= MAX_ID
    assert sent["tool_choice"]["name"] == sent["input"][1]["name"] == alias
    assert alias not in answer.text  # (the answer's echo of the tools, too)
    if stream:
        events = [orjson.loads(line[6:]) for line in answer.text.splitlines() if line.startswith("data: {")]
        named = [event["item"]["name"] for event in events if event.get("item", {}).get("type") == "function_call"]
        named += [event["name"] for event in events if event["type"] == "response.function_call_arguments.done"]
        assert named == [MCP_TOOL_NAME] * 3, named
        response = events[-1]["response"]
    else:
        response = answer.json()
    assert [item["name"] for item in response["output"] if item["type"] == "function_call"] == [MCP_TOOL_NAME]
    stored = httpx.get(f"{fleet.url}/v1/responses/{response['id']}", headers=auth, timeout=30).json()
    assert [item["name"] for item in stored["output"] if item["type"] == "function_call"] == [MCP_TOOL_NAME]


@pytest.mark.parametrize(("model", "fake"), [("gpt", "openai"), ("azure-gpt", "azure")])
def test_an_allowed_tools_choice_names_a_long_function_by_its_alias_at_a_native_responses_api(
    fleet: Running, fleet_key: str, model: str, fake: str
) -> None:
    """A `tool_choice` of type `allowed_tools` passed through to OpenAI's or Azure's Responses API kept the client's
    83 characters in its list where the tools named the alias: OpenAI's 400. Its list names the alias, and the
    answer's call the client's tool."""
    tool = {**WEATHER, "name": MCP_TOOL_NAME}
    choice = {"type": "allowed_tools", "mode": "required", "tools": [{"type": "function", "name": MCP_TOOL_NAME}]}
    body = {"model": model, "input": "Weather?", "tools": [WEATHER, tool], "tool_choice": choice}
    answer = httpx.post(
        f"{fleet.url}/v1/responses", json=body, headers={"authorization": f"Bearer {fleet_key}"}, timeout=30
    )
    assert answer.status_code == 200, answer.text
    sent = upstream(fleet, fake)
    alias = sent["tools"][1]["name"]
    assert alias != MCP_TOOL_NAME and len(alias) <= MAX_ID
    assert sent["tool_choice"] == {**choice, "tools": [{"type": "function", "name": alias}]}
    assert [item["name"] for item in answer.json()["output"] if item["type"] == "function_call"] == [MCP_TOOL_NAME]
    assert alias not in answer.text  # (the answer's echo of the choice, too)
