"""A proxy in front of the gateway that notes each answer's headers: what a client CLI (Codex) was told of its
requests (`x-gateway-dropped-params`), which the ledger and the upstream fakes do not see."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import httpx
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import StreamingResponse
from starlette.routing import Route

from tests.support.servers import ServerThread

# Hop-by-hop and framing headers: the proxy's server frames its own answer (the body goes as it came, encoded or not).
UNRELAYED = frozenset({"host", "content-length", "transfer-encoding", "connection"})


def recorder(target: str) -> tuple[ServerThread, list[tuple[str, httpx.Headers]]]:
    """A running proxy to `target`, and the (path, answer headers) of each request it relayed, in order."""
    seen: list[tuple[str, httpx.Headers]] = []
    client = httpx.AsyncClient(timeout=60)

    async def relay(request: Request) -> StreamingResponse:
        headers = {name: value for name, value in request.headers.items() if name.lower() not in UNRELAYED}
        url = target + request.url.path + (f"?{request.url.query}" if request.url.query else "")
        sent = client.build_request(request.method, url, headers=headers, content=await request.body())
        answer = await client.send(sent, stream=True)
        seen.append((request.url.path, answer.headers))

        async def body() -> AsyncIterator[bytes]:
            try:
                async for chunk in answer.aiter_raw():
                    yield chunk
            finally:
                await answer.aclose()

        kept = {name: value for name, value in answer.headers.items() if name.lower() not in UNRELAYED}
        return StreamingResponse(body(), status_code=answer.status_code, headers=kept)

    routes: Any = [Route("/{path:path}", relay, methods=["GET", "POST", "DELETE"])]
    return ServerThread(Starlette(routes=routes), cleanup=client.aclose).start(), seen
