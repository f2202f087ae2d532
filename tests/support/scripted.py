"""A gateway on a socket in front of a scripted upstream (an OpenAI-compatible Chat Completions server, Anthropic's
Messages API, Gemini's generateContent), its answers set per model by the test (`SCRIPTS`): for the shapes real
servers send that the fakes, which answer as each provider documents, do not."""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import orjson
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response, StreamingResponse
from starlette.routing import Route

from adapters.providers.registry import REGISTRY
from handler.config import parse_config
from tests.functional.conftest import FAKE_KEYS, Running, serve_gateway
from tests.support.servers import ServerThread

# model -> {"stream": [chunk or bytes or BREAK, ...], "whole": dict, "status": int}
SCRIPTS: dict[str, dict[str, Any]] = {}
BREAK = object()  # in a stream: the provider's connection drops there (the chunked body cut short)
REQUESTS: list[dict[str, Any]] = []
USAGE = {"prompt_tokens": 10, "completion_tokens": 5, "total_tokens": 15}


def chunk(delta: dict[str, Any], finish_reason: str | None = None) -> dict[str, Any]:
    choice = {"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish_reason}
    return {"id": "chatcmpl-1", "object": "chat.completion.chunk", "created": 1, "model": "gpt-x", "choices": [choice]}


def usage_chunk(usage: dict[str, Any] = USAGE) -> dict[str, Any]:
    return {**chunk({}), "choices": [], "usage": usage}


def whole(message: dict[str, Any], finish_reason: str = "stop", usage: dict[str, Any] = USAGE) -> dict[str, Any]:
    choice = {"index": 0, "message": message, "logprobs": None, "finish_reason": finish_reason}
    return {
        "id": "chatcmpl-1",
        "object": "chat.completion",
        "created": 1,
        "model": "gpt-x",
        "choices": [choice],
        "usage": usage,
    }


def sse(event: str, data: dict[str, Any]) -> bytes:
    return b"event: " + event.encode() + b"\ndata: " + orjson.dumps(data) + b"\n\n"


async def answer(request: Request) -> Response:
    asked = orjson.loads(await request.body())
    REQUESTS.append({"path": request.url.path, "json": asked})
    model = asked.get("model") or request.url.path.split("/models/")[-1].split(":")[0]
    script = SCRIPTS[model]
    status = script.get("status", 200)
    streamed = asked.get("stream") or "streamGenerateContent" in request.url.path
    if not streamed:
        return Response(orjson.dumps(script["whole"]), status, media_type="application/json")
    parts = [
        c if isinstance(c, bytes) or c is BREAK else b"data: " + orjson.dumps(c) + b"\n\n" for c in script["stream"]
    ]
    if script.get("done", True) and BREAK not in parts and "/chat/completions" in request.url.path:
        parts.append(b"data: [DONE]\n\n")

    async def events() -> AsyncIterator[bytes]:
        for part in parts:
            if part is BREAK:
                raise RuntimeError("the provider's connection dropped")  # (uvicorn cuts the chunked body)
            yield part

    return StreamingResponse(events(), status, media_type="text/event-stream")


ROUTES = [
    Route("/openai/v1/chat/completions", answer, methods=["POST"]),
    Route("/anthropic/v1/messages", answer, methods=["POST"]),
    Route("/gemini/v1beta/models/{rest:path}", answer, methods=["POST"]),
]


def scripted_gateway(tmp: Path, models: dict[str, str]) -> Iterator[Running]:
    """`models`: model name -> provider (`compatible`, `google`, `anthropic`, `gemini`)."""
    server = ServerThread(Starlette(routes=ROUTES)).start()
    providers = {
        "compatible": {"type": "openai", "api_key": "env:OPENAI_API_KEY", "base_url": f"{server.url}/openai/v1"},
        "anthropic": {"type": "anthropic", "api_key": "env:ANTHROPIC_API_KEY", "base_url": f"{server.url}/anthropic"},
        "gemini": {"type": "gemini", "api_key": "env:GEMINI_API_KEY", "base_url": f"{server.url}/gemini"},
        # Gemini's OpenAI-compatible endpoint, with the profile its host (generativelanguage.googleapis.com) picks.
        "google": {
            "type": "openai",
            "api_key": "env:GEMINI_API_KEY",
            "base_url": f"{server.url}/openai/v1",
            "profile": "google",
        },
    }
    price = {"input": 1, "output": 2}
    config = {
        "providers": providers,
        "models": {m: {"deployments": [{"provider": p, "model": m}], "price": price} for m, p in models.items()},
    }
    running, gateway_server = serve_gateway(
        parse_config(config, set(REGISTRY)), f"sqlite:///{tmp / 'gw.db'}", server, {}, FAKE_KEYS
    )
    yield running
    gateway_server.stop()
    server.stop()


PROFILED_PRICE = {"input": 1.0, "cached_input": 0.1, "output": 2.0}  # USD per 1M tokens


def profiled_gateway(tmp: Path, models: dict[str, dict[str, Any]]) -> Iterator[Running]:
    """A gateway in front of the scripted upstream with a provider of its own for each of `models` (model name ->
    provider body, its `base_url` filled in with the scripted server's): for a profile's shapes (xAI, Groq, Azure)."""
    server = ServerThread(Starlette(routes=ROUTES)).start()
    providers = {}
    for name, provider in models.items():
        # (Azure's versionless API is `{endpoint}/openai/v1/...`: the scripted server's root is the endpoint)
        base = server.url if provider.get("type") == "azure" else f"{server.url}/openai/v1"
        providers[f"p-{name}"] = {"api_key": "env:OPENAI_API_KEY", "base_url": base, **provider}
    config = {
        "providers": providers,
        "models": {m: {"deployments": [{"provider": f"p-{m}", "model": m}], "price": PROFILED_PRICE} for m in models},
    }
    running, gateway_server = serve_gateway(
        parse_config(config, set(REGISTRY)), f"sqlite:///{tmp / 'gw.db'}", server, {}, FAKE_KEYS
    )
    yield running
    gateway_server.stop()
    server.stop()
