"""A tool's name a provider refuses goes as an alias that fits, one per name, and comes back as the client's."""

from __future__ import annotations

import re
import uuid
from typing import Any

import orjson
import pytest

from adapters.providers import tool_names
from adapters.providers.bedrock.adapter import converse_takes
from adapters.providers.gemini import GeminiAdapter
from adapters.providers.gemini.adapter import gemini_takes
from adapters.providers.openai import OpenAIAdapter
from adapters.providers.openai.adapter import openai_takes
from adapters.providers.openai.responses import request_body
from adapters.providers.params import ToolNames
from adapters.providers.tool_names import alias, aliases
from handler.ports import RESPONSES_API, NativeCall, Target
from handler.schemas import ChatRequest
from handler.wire import StreamEvent
from tests.support.tools import MCP_TOOL_NAME, named_call, named_tool

CONVERSE = re.compile(r"[a-zA-Z0-9_-]{1,64}")
GEMINI = re.compile(r"[a-zA-Z_][a-zA-Z0-9_.:-]{0,63}")


def request(*names: str, history: tuple[str, ...] = (), choice: str | None = None) -> ChatRequest:
    messages: list[Any] = [{"role": "user", "content": "Hi"}]
    if history:
        calls = [named_call(name, f"call_{i}") for i, name in enumerate(history)]
        messages.append({"role": "assistant", "content": None, "tool_calls": calls})
    body: dict[str, Any] = {"model": "m", "messages": messages, "tools": [named_tool(name) for name in names]}
    if choice is not None:
        body["tool_choice"] = {"type": "function", "function": {"name": choice}}
    return ChatRequest.model_validate(body)


@pytest.mark.parametrize(
    "name", [MCP_TOOL_NAME, "3d_render", "weather.get", "mcp:server/tool", "-dash", "_" * 80, "", "é" * 70]
)
def test_an_alias_fits_converse_and_gemini_and_keeps_the_names_start(name: str) -> None:
    made = alias(name)
    assert CONVERSE.fullmatch(made) and GEMINI.fullmatch(made)
    assert converse_takes(made) and gemini_takes(made)
    assert made == alias(name), "the same name, the same alias"
    if name == MCP_TOOL_NAME:
        assert made.startswith(MCP_TOOL_NAME[:40]) and len(made) == 64


def test_the_checks_say_what_each_provider_takes() -> None:
    assert converse_takes("get_weather") and converse_takes("3d-render") and converse_takes("x" * 64)
    assert not converse_takes("") and not converse_takes("x" * 65) and not converse_takes("weather.get")
    assert gemini_takes("get_weather") and gemini_takes("_weather.get:v1") and gemini_takes("x" * 64)
    assert not gemini_takes("3d_render") and not gemini_takes("-x") and not gemini_takes("x" * 65)
    assert not gemini_takes("wéather") and not gemini_takes("a b") and not gemini_takes("")


def test_two_long_names_alike_for_64_characters_get_two_aliases() -> None:
    first, second = MCP_TOOL_NAME, MCP_TOOL_NAME + "AndAuthor"
    made = aliases(request(first, second), converse_takes)
    assert made[first] != made[second] and made[first][:55] == made[second][:55]


def test_an_alias_a_name_of_the_request_already_holds_is_made_again() -> None:
    """A client's tool may be named like another's alias: the alias is made again, and no two names meet."""
    made = aliases(request(MCP_TOOL_NAME, alias(MCP_TOOL_NAME)), converse_takes)
    assert set(made) == {MCP_TOOL_NAME} and made[MCP_TOOL_NAME] != alias(MCP_TOOL_NAME)
    assert converse_takes(made[MCP_TOOL_NAME])


def test_a_name_the_provider_takes_is_untouched_and_an_alias_comes_back_as_the_clients_name() -> None:
    req = request("get_weather", MCP_TOOL_NAME, history=(MCP_TOOL_NAME,), choice=MCP_TOOL_NAME)
    names = ToolNames(req, gemini_takes)
    wire = names.wire(MCP_TOOL_NAME)
    assert names.wire("get_weather") == "get_weather" and wire != MCP_TOOL_NAME
    answer = ToolNames(req, gemini_takes)  # (the answer reads its own, and agrees)
    assert answer.client(wire) == MCP_TOOL_NAME and answer.client("get_weather") == "get_weather"


def test_a_request_whose_names_fit_makes_no_alias() -> None:
    req = request("get_weather", "Bash", history=("Read",))
    names = ToolNames(req, converse_takes)
    assert [names.wire(name) for name in ("get_weather", "Bash", "Read")] == ["get_weather", "Bash", "Read"]
    assert names.client("get_weather") == "get_weather"


def digests(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """The names `tool_names.alias` digests from now on, each time it is asked (`alias` hashes the whole name)."""
    made: list[str] = []

    def counted(name: str, attempt: int = 0) -> str:
        made.append(name)
        return alias(name, attempt)

    monkeypatch.setattr(tool_names, "alias", counted)
    return made


@pytest.mark.parametrize("stream", [False, True], ids=["whole", "stream"])
def test_a_requests_aliases_are_made_once_for_the_request_and_its_answer(
    monkeypatch: pytest.MonkeyPatch, stream: bool
) -> None:
    """The request's `ToolNames` made the aliases to send, and the answer's made them all again to name its calls
    back (review: twice the digests of every name a provider refuses). Made once, for both."""
    name = f"mcp__{uuid.uuid4().hex}__{MCP_TOOL_NAME}"  # (a name no other test has aliased)
    req = request("get_weather", name, history=(name,), choice=name)
    made = digests(monkeypatch)
    adapter, target = (
        GeminiAdapter("gemini", "key", {}),
        Target("gemini", "gemini", "gemini-2.5-flash", "", "https://g"),
    )
    sent = orjson.loads(adapter.chat_request(req, target, stream=stream).request.body)
    wire = sent["tools"][0]["functionDeclarations"][1]["name"]
    part = {"functionCall": {"name": wire, "args": {}}}
    answer = {"candidates": [{"content": {"role": "model", "parts": [part]}, "finishReason": "STOP"}]}
    if stream:
        chunks = adapter.stream_parser(req, target).feed(StreamEvent(None, orjson.dumps(answer)))
        called = [c.function.name for k in chunks for d in k.choices for c in d.delta.tool_calls or () if c.function]
    else:
        calls = adapter.chat_response(orjson.dumps(answer), req, target).choices[0].message.tool_calls or []
        called = [call.function.name for call in calls]
    assert called == [name]
    assert made == [name]


def test_a_responses_requests_aliases_are_made_once_for_the_request_and_its_answer(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A Responses request passed through: its body's aliases (`request_body`) and the answer's names back
    (`native_names`) from one making."""
    name = f"mcp__{uuid.uuid4().hex}__{MCP_TOOL_NAME}"
    body = {"model": "gpt", "input": "Hi", "tools": [{"type": "function", "name": name}]}
    made = digests(monkeypatch)
    sent, _ = request_body(
        body, "gpt-4o", stream=False, output_limit=None, provider_keeps=False, reasons=False, takes=openai_takes
    )
    wire = sent["tools"][0]["name"]
    call = NativeCall(RESPONSES_API, body)
    assert OpenAIAdapter("openai", "key", {}).native_names(call) == {wire: name}
    assert made == [name]
