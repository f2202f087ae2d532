"""How a passed-through stream that does not end well is settled: a client that leaves after the provider ran a
search (the search is billed, the stream cut or not), and a Responses stream the provider ends with
`response.failed` (its status, not a 200, in the ledger and the metrics). The upstreams here are scripted
streams in the providers' documented event formats, paced where the test needs a stream still running."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import httpx
import orjson
import pytest
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import StreamingResponse
from starlette.routing import Route

from adapters.providers.registry import REGISTRY
from handler.config import parse_config
from tests.functional.conftest import Running, openai_client, serve_gateway
from tests.support.servers import ServerThread

SEARCH_USD = 0.01
HI: Any = [{"role": "user", "content": "What is new today?"}]


def sse(event: str, data: dict[str, Any]) -> bytes:
    return b"event: " + event.encode() + b"\ndata: " + orjson.dumps(data) + b"\n\n"


async def searching_message(request: Request) -> StreamingResponse:
    """A Messages stream that searches, then writes slowly: the search is billed before `message_delta`."""
    await request.body()
    usage = {"input_tokens": 100, "output_tokens": 1, "server_tool_use": {"web_search_requests": 0}}

    async def events() -> AsyncIterator[bytes]:
        start = {"id": "msg_1", "type": "message", "role": "assistant", "model": "claude-x", "content": []}
        start |= {"stop_reason": None, "stop_sequence": None, "usage": usage}
        yield sse("message_start", {"type": "message_start", "message": start})
        use = {"type": "server_tool_use", "id": "srvtoolu_1", "name": "web_search", "input": {"query": "q"}}
        yield sse("content_block_start", {"type": "content_block_start", "index": 0, "content_block": use})
        yield sse("content_block_stop", {"type": "content_block_stop", "index": 0})
        result = {"type": "web_search_tool_result", "tool_use_id": "srvtoolu_1", "content": []}
        yield sse("content_block_start", {"type": "content_block_start", "index": 1, "content_block": result})
        yield sse("content_block_stop", {"type": "content_block_stop", "index": 1})
        text = {"type": "text", "text": ""}
        yield sse("content_block_start", {"type": "content_block_start", "index": 2, "content_block": text})
        for _ in range(100):
            delta = {"type": "text_delta", "text": "word "}
            yield sse("content_block_delta", {"type": "content_block_delta", "index": 2, "delta": delta})
            await asyncio.sleep(0.05)

    return StreamingResponse(events(), media_type="text/event-stream")


async def searching_response(request: Request) -> StreamingResponse:
    """A Responses stream that searches (a `web_search_call` item), then writes slowly."""
    await request.body()
    response = {"id": "resp_1", "object": "response", "created_at": 1, "model": "gpt-x", "output": [], "usage": None}

    async def events() -> AsyncIterator[bytes]:
        created = {"type": "response.created", "sequence_number": 0, "response": {**response, "status": "in_progress"}}
        yield sse("response.created", created)
        call = {"id": "ws_1", "type": "web_search_call", "status": "in_progress"}
        yield sse("response.output_item.added", {"type": "response.output_item.added", "output_index": 0, "item": call})
        for i in range(100):
            delta = {"type": "response.output_text.delta", "item_id": "msg_1", "output_index": 1, "delta": "word "}
            yield sse("response.output_text.delta", {**delta, "sequence_number": i + 2, "content_index": 0})
            await asyncio.sleep(0.05)

    return StreamingResponse(events(), media_type="text/event-stream")


async def failing_response(request: Request) -> StreamingResponse:
    """A Responses stream the provider ends with `response.failed`."""
    await request.body()
    response = {"id": "resp_1", "object": "response", "created_at": 1, "model": "gpt-x", "output": [], "usage": None}
    code = "rate_limit_exceeded" if b"limited" in await request.body() else "server_error"

    async def events() -> AsyncIterator[bytes]:
        created = {"type": "response.created", "sequence_number": 0, "response": {**response, "status": "in_progress"}}
        yield sse("response.created", created)
        failed = {**response, "status": "failed", "error": {"code": code, "message": "The model failed."}}
        yield sse("response.failed", {"type": "response.failed", "sequence_number": 1, "response": failed})

    return StreamingResponse(events(), media_type="text/event-stream")


@pytest.fixture(scope="module")
def scripted(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Running]:
    routes = [
        Route("/anthropic/v1/messages", searching_message, methods=["POST"]),
        Route("/searching/v1/responses", searching_response, methods=["POST"]),
        Route("/failing/v1/responses", failing_response, methods=["POST"]),
    ]
    server = ServerThread(Starlette(routes=routes)).start()
    price = {"input": 3.0, "output": 15.0}

    def native(name: str) -> dict[str, Any]:
        base = f"{server.url}/{name}/v1"
        return {"type": "openai", "api_key": "env:OPENAI_API_KEY", "base_url": base, "responses_api": "native"}

    data = {
        "gateway": {"priced_options": {"web_search_usd": SEARCH_USD}},
        "providers": {
            "anthropic": {
                "type": "anthropic",
                "api_key": "env:ANTHROPIC_API_KEY",
                "base_url": f"{server.url}/anthropic",
            },
            "searching": native("searching"),
            "failing": native("failing"),
        },
        "models": {
            "claude": {"deployments": [{"provider": "anthropic", "model": "claude-x"}], "price": price},
            "gpt-searching": {"deployments": [{"provider": "searching", "model": "gpt-x"}], "price": price},
            "gpt-failing": {"deployments": [{"provider": "failing", "model": "gpt-x"}], "price": price},
        },
    }
    store = f"sqlite:///{Path(tmp_path_factory.mktemp('endings')) / 'gateway.db'}"
    running, gateway_server = serve_gateway(parse_config(data, set(REGISTRY)), store, server, {})
    yield running
    gateway_server.stop()
    server.stop()


def leave_after(running: Running, path: str, body: dict[str, Any], key: str, marker: bytes) -> None:
    """Stream `body` and hang up once `marker` has come."""
    headers = {"authorization": f"Bearer {key}", "anthropic-version": "2023-06-01"}
    with httpx.Client(timeout=10) as http, http.stream("POST", f"{running.url}{path}", json=body, headers=headers) as a:
        seen = b""
        for chunk in a.iter_bytes():
            seen += chunk
            if marker in seen:
                return


@pytest.mark.parametrize(
    ("path", "body", "marker"),
    [
        ("/v1/messages", {"model": "claude", "max_tokens": 100, "messages": HI, "stream": True}, b"text_delta"),
        ("/v1/responses", {"model": "gpt-searching", "input": "Hi", "stream": True}, b"output_text.delta"),
    ],
    ids=["messages", "responses"],
)
def test_a_search_is_billed_though_the_client_leaves_before_the_final_usage(
    scripted: Running, path: str, body: dict[str, Any], marker: bytes
) -> None:
    """The search count comes with the final usage (`message_delta`, the terminal response): a client that left
    before it got its search results free (the line was the text's estimate alone)."""
    key = scripted.mint(name=f"left-{path}")
    tools: Any = (
        [{"type": "web_search_20250305", "name": "web_search"}] if "messages" in path else [{"type": "web_search"}]
    )
    leave_after(scripted, path, {**body, "tools": tools}, key, marker)
    deadline = time.monotonic() + 5
    lines = scripted.ledger(key)
    while not lines and time.monotonic() < deadline:
        lines = scripted.ledger(key)
    [line] = lines
    assert line.status == 499 and line.cost_source == "estimate"
    assert line.cost_usd is not None and line.cost_usd > SEARCH_USD  # the search and the tokens


@pytest.mark.parametrize(("model_hint", "status"), [("", 502), ("limited", 429)], ids=["server-error", "rate-limit"])
def test_a_responses_stream_the_provider_failed_is_settled_with_the_failures_status(
    scripted: Running, model_hint: str, status: int
) -> None:
    key = scripted.mint(name=f"failed-{status}")
    events = list(
        openai_client(scripted, key).responses.create(model="gpt-failing", input=f"Hi {model_hint}", stream=True)
    )
    assert events[-1].type == "response.failed"
    [line] = scripted.ledger(key)
    assert line.status == status  # it was a 200, in the ledger and in /metrics
