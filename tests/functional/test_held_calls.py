"""A call held for its late thought signature (`OpenAIStreamParser._signed_late`) where the stream's read breaks
(a dropped connection, a stall, the client's deadline; before the first item), through the official SDKs against a
scripted upstream: the call goes to the client before the error, billed once (review mergerev34c)."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path
from typing import Any

import openai
import orjson
import pytest
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response, StreamingResponse
from starlette.routing import Route

from adapters.providers.registry import REGISTRY
from handler.config import parse_config
from tests.functional.conftest import FAKE_KEYS, Running, openai_client, serve_gateway
from tests.support.scripted import chunk, usage_chunk
from tests.support.servers import ServerThread

SCRIPTS: dict[str, list[Any]] = {}  # deployment model -> its stream's events; BREAK drops it, a float sleeps
ASKED: list[str] = []
BREAK = object()
ALIASES = ["dropped", "stall", "deadline", "secret", "ledger-dropped", "ledger-stall"]
CHAT_TOOLS: Any = [{"type": "function", "function": {"name": "get_weather", "parameters": {"type": "object"}}}]
HI: Any = [{"role": "user", "content": "Weather in Paris?"}]
UNSIGNED = {"id": "function-call-1", "type": "function", "function": {"name": "get_weather", "arguments": '{"a":1}'}}


async def answer(request: Request) -> Response:
    asked = orjson.loads(await request.body())
    ASKED.append(asked["model"])
    script = SCRIPTS[asked["model"]]

    async def events() -> AsyncIterator[bytes]:
        for event in script:
            if event is BREAK:
                raise RuntimeError("the provider's connection dropped")
            if isinstance(event, float):
                await asyncio.sleep(event)
                continue
            yield b"data: " + orjson.dumps(event) + b"\n\n"
        yield b"data: [DONE]\n\n"

    return StreamingResponse(events(), media_type="text/event-stream")


def held_gateway(tmp: Path, configured: Callable[[dict[str, Any]], dict[str, Any]]) -> Iterator[Running]:
    """A gateway in front of the scripted upstream (`answer`), its config `configured(google)` (`google`: a provider
    of Gemini's OpenAI-compatible endpoint there, its profile to be named)."""
    server = ServerThread(Starlette(routes=[Route("/openai/v1/chat/completions", answer, methods=["POST"])])).start()
    google = {"type": "openai", "api_key": "env:GEMINI_API_KEY", "base_url": f"{server.url}/openai/v1"}
    running, gateway_server = serve_gateway(
        parse_config(configured(google), set(REGISTRY)), f"sqlite:///{tmp / 'gw.db'}", server, {}, FAKE_KEYS
    )
    yield running
    gateway_server.stop()
    server.stop()


def many_deployments(google: dict[str, Any]) -> dict[str, Any]:
    providers = {"google": {**google, "profile": "google"}, "google2": {**google, "profile": "google"}}
    price = {"input": 1, "output": 2}
    deployments = [{"provider": "google", "model": "gemini-3-flash"}, {"provider": "google2", "model": "gemini-3-pro"}]
    models: dict[str, Any] = {"gemini-3-flash": {"deployments": deployments, "price": price}}
    for alias in ALIASES:  # (a provider of its own each: a breaker opened by one test's failures skips none of another)
        providers[alias] = {**google, "profile": "google"}
        models[alias] = {"deployments": [{"provider": alias, "model": "gemini-3-flash"}], "price": price}
    return {"gateway": {"timeouts": {"between_chunks": 2}}, "providers": providers, "models": models}


@pytest.fixture(scope="module")
def gateway(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Running]:
    yield from held_gateway(tmp_path_factory.mktemp("held-calls"), many_deployments)


@pytest.fixture(scope="module")
def key(gateway: Running) -> str:
    return gateway.mint(name="held-calls")


def chat_calls(
    gateway: Running, key: str, headers: dict[str, str] | None = None, model: str = "gemini-3-flash"
) -> tuple[list[Any], Exception | None]:
    stream = openai_client(gateway, key).chat.completions.create(
        model=model, messages=HI, tools=CHAT_TOOLS, stream=True, extra_headers=headers or {}
    )
    calls: list[Any] = []
    error = None
    try:
        for c in stream:
            calls += [d for choice in c.choices for d in choice.delta.tool_calls or ()]
    except openai.APIError as exc:
        error = exc
    return calls, error


def text_then(ending: list[Any]) -> list[Any]:
    return [
        chunk({"role": "assistant", "content": "Let me look."}),
        chunk({"tool_calls": [{**UNSIGNED, "index": 0}]}),
        *ending,
    ]


def test_a_held_call_reaches_the_client_before_a_dropped_connection(gateway: Running, key: str) -> None:
    """The baseline: a read that breaks (`_pull`'s GatewayError) hands the held call out first."""
    SCRIPTS["gemini-3-flash"] = text_then([BREAK])
    calls, error = chat_calls(gateway, key, model="dropped")
    assert error is not None
    assert [c.id for c in calls] == ["function-call-1"]


def test_a_held_call_reaches_the_client_before_a_stall(gateway: Running, key: str) -> None:
    SCRIPTS["gemini-3-flash"] = text_then([6.0])
    calls, error = chat_calls(gateway, key, model="stall")
    assert error is not None
    assert [c.id for c in calls] == ["function-call-1"]


def test_a_held_call_reaches_the_client_before_its_deadline(gateway: Running, key: str) -> None:
    """With `x-gateway-deadline-ms` (`batches`' `timed`), the read is cancelled by `asyncio.timeout` at the deadline:
    a CancelledError, no GatewayError, so `_pull` hands nothing out and `deadline_passed` is raised without the call
    the provider began (and billed): the same loss D4 of review mergerev34b named for a dropped connection."""
    SCRIPTS["gemini-3-flash"] = text_then([0.2, 6.0])
    calls, error = chat_calls(gateway, key, {"x-gateway-deadline-ms": "1200"}, "deadline")
    assert error is not None
    assert [c.id for c in calls] == ["function-call-1"]


def test_a_held_first_call_before_a_dropped_connection_fails_over_once(gateway: Running, key: str) -> None:
    """Before the first item, the stream fails over: the fallback's answer alone, nothing of the first sent."""
    SCRIPTS["gemini-3-flash"] = [chunk({"role": "assistant", "tool_calls": [{**UNSIGNED, "index": 0}]}), BREAK]
    good = {**UNSIGNED, "id": "function-call-9", "extra_content": {"google": {"thought_signature": "c2ln"}}}
    SCRIPTS["gemini-3-pro"] = [
        chunk({"role": "assistant", "tool_calls": [{**good, "index": 0}]}),
        chunk({}, "tool_calls"),
        usage_chunk(),
    ]
    ASKED.clear()
    before = len(gateway.ledger(key))
    calls, error = chat_calls(gateway, key)
    assert error is None
    assert ASKED == ["gemini-3-flash", "gemini-3-pro"]
    assert [c.id.split("__")[0] for c in calls if c.id] == ["function-call-9"]
    assert len(gateway.ledger(key)) == before + 1


def test_a_secret_across_a_held_chunk_is_redacted_before_a_dropped_connection(gateway: Running, key: str) -> None:
    """The held chunk goes through `_kept(..., final=True)`: the redactor joins it to the tail it held."""
    secret = FAKE_KEYS["GEMINI_API_KEY"]
    signed = {"google": {"thought_signature": "c2ln"}}
    first = {
        "index": 0,
        "id": "function-call-1",
        "type": "function",
        "extra_content": signed,
        "function": {"name": "get_weather", "arguments": '{"token":"' + secret[:12]},
    }
    second = {
        "index": 1,
        "id": "function-call-2",
        "type": "function",
        "function": {"name": "get_weather", "arguments": "{}"},
    }
    SCRIPTS["gemini-3-flash"] = [
        chunk({"role": "assistant", "tool_calls": [first]}),
        chunk({"tool_calls": [{"index": 0, "function": {"arguments": secret[12:] + '"}'}}, second]}),
        BREAK,
    ]
    calls, error = chat_calls(gateway, key, model="secret")
    assert error is not None
    joined = "".join(c.function.arguments or "" for c in calls if c.index == 0 and c.function)
    assert secret not in joined and "[REDACTED]" in joined
    assert [c.id.split("__")[0] for c in calls if c.id] == ["function-call-1", "function-call-2"]


@pytest.mark.parametrize("ending", [[BREAK], [6.0]], ids=["dropped", "stall"])
def test_a_stream_broken_after_a_held_call_has_one_ledger_line(
    gateway: Running, key: str, ending: list[Any], request: pytest.FixtureRequest
) -> None:
    SCRIPTS["gemini-3-flash"] = text_then(ending)
    before = gateway.ledger(key)
    ASKED.clear()
    calls, error = chat_calls(gateway, key, model="ledger-" + request.node.callspec.id)
    assert error is not None and calls, (error, calls, ASKED)
    after = gateway.ledger(key)
    assert len(after) == len(before) + 1
    line = next(item for item in after if item not in before)
    assert line.status != 200 and line.cost_usd > 0, line
