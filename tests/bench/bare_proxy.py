"""The bare proxy that the gateway is measured against: Starlette forwarding each request to one upstream.

    UPSTREAM=http://127.0.0.1:PORT/v1/chat/completions CLIENT=aiohttp uvicorn tests.bench.bare_proxy:app

CLIENT picks the upstream client: `aiohttp` (the issue's reference: "a bare Starlette + aiohttp proxy"),
`httpx` (httpx's own pool), `httpx-aiohttp` (httpx over the httpx-aiohttp package's transport) or
`gateway` (handler/pipeline/upstream.py, the gateway's own client). No auth, no metering, no translation.
"""

from __future__ import annotations

import os
from collections.abc import Awaitable, Callable

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

UPSTREAM = os.environ.get("UPSTREAM", "http://127.0.0.1:9/v1/chat/completions")
CLIENT = os.environ.get("CLIENT", "aiohttp")
JSON = {"content-type": "application/json"}


def forwarder() -> Callable[[bytes], Awaitable[tuple[int, bytes]]]:
    if CLIENT == "aiohttp":
        import aiohttp

        sessions: list[aiohttp.ClientSession] = []

        async def via_aiohttp(body: bytes) -> tuple[int, bytes]:
            if not sessions:
                sessions.append(aiohttp.ClientSession())
            async with sessions[0].post(UPSTREAM, data=body, headers=JSON) as response:
                return response.status, await response.read()

        return via_aiohttp
    if CLIENT == "gateway":
        from handler.config import TimeoutConfig
        from handler.pipeline.upstream import UpstreamClient
        from handler.ports import UpstreamRequest

        upstream = UpstreamClient(TimeoutConfig())

        async def via_gateway_client(body: bytes) -> tuple[int, bytes]:
            response = await upstream.send(UpstreamRequest("POST", UPSTREAM, JSON, body))
            return response.status, await response.read()

        return via_gateway_client
    import httpx

    if CLIENT == "httpx-aiohttp":
        from httpx_aiohttp import AiohttpTransport

        client = httpx.AsyncClient(transport=AiohttpTransport())
    else:
        client = httpx.AsyncClient(limits=httpx.Limits(max_keepalive_connections=100))

    async def via_httpx(body: bytes) -> tuple[int, bytes]:
        response = await client.post(UPSTREAM, content=body, headers=JSON)
        return response.status_code, response.content

    return via_httpx


forward = forwarder()


async def chat(request: Request) -> Response:
    status, content = await forward(await request.body())
    return Response(content, status, media_type="application/json")


app = Starlette(routes=[Route("/v1/chat/completions", chat, methods=["POST"])])
