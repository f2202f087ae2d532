"""Which upstream client a thin proxy should use: the same minimal Starlette proxy over three clients.

    python -m tests.bench.transports [--duration 5]

nginx answers a fixed completion; the proxy (one uvicorn worker) forwards each request with httpx's own
connection pool, with httpx over the `httpx-aiohttp` package's transport, with the gateway's own client
(handler/upstream.py: httpx's request and transport interface over its own lean aiohttp transport), or
with aiohttp directly; wrk measures each at 8 connections.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

from tests.bench.run import BODY, ROOT, nginx_conf, process, wrk
from tests.support.servers import free_port

PROXY = """
import os
from starlette.applications import Starlette
from starlette.responses import Response
from starlette.routing import Route

UP = os.environ["UPSTREAM"]
CLIENT = os.environ["CLIENT"]
if CLIENT == "aiohttp":
    import aiohttp
    session = None

    async def forward(body):
        global session
        session = session or aiohttp.ClientSession()
        async with session.post(UP, data=body, headers={"content-type": "application/json"}) as r:
            return r.status, await r.read()
else:
    import httpx
    if CLIENT == "gateway":
        from handler.config import TimeoutConfig
        from handler.ports import UpstreamRequest
        from handler.upstream import UpstreamClient
        upstream = UpstreamClient(TimeoutConfig())

        async def forward(body):
            r = await upstream.send(UpstreamRequest("POST", UP, {"content-type": "application/json"}, body))
            return r.status, await r.read()
    else:
        if CLIENT == "httpx-aiohttp":
            from httpx_aiohttp import AiohttpTransport
            client = httpx.AsyncClient(transport=AiohttpTransport())
        else:
            client = httpx.AsyncClient(limits=httpx.Limits(max_keepalive_connections=100))

        async def forward(body):
            r = await client.post(UP, content=body, headers={"content-type": "application/json"})
            return r.status_code, r.content


async def chat(request):
    status, content = await forward(await request.body())
    return Response(content, status, media_type="application/json")

app = Starlette(routes=[Route("/v1/chat/completions", chat, methods=["POST"])])
"""


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--duration", type=float, default=5.0)
    parser.add_argument("--connections", type=int, default=8)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="gateway-transports-") as tmp:
        workdir = Path(tmp)
        (workdir / "bare_proxy.py").write_text(PROXY)
        upstream_port = free_port()
        (workdir / "nginx.conf").write_text(nginx_conf(upstream_port, workdir))
        nginx = ["nginx", "-c", str(workdir / "nginx.conf"), "-e", str(workdir / "nginx-error.log")]
        print(f"| client | req/s at {args.connections} connections | p50 ms | p99 ms |\n|---|---|---|---|")
        with process(nginx):
            time.sleep(0.5)
            for client in ("httpx", "httpx-aiohttp", "gateway", "aiohttp"):
                port = free_port()
                env = {
                    **os.environ,
                    "UPSTREAM": f"http://127.0.0.1:{upstream_port}/v1/chat/completions",
                    "CLIENT": client,
                    "PYTHONPATH": f"{workdir}{os.pathsep}{ROOT}",
                }
                serve = [sys.executable, "-m", "uvicorn", "bare_proxy:app", "--port", str(port), "--log-level",
                         "warning", "--no-access-log", "--loop", "uvloop", "--http", "httptools"]  # fmt: skip
                with process(serve, env):
                    time.sleep(1.5)
                    url = f"http://127.0.0.1:{port}/v1/chat/completions"
                    wrk(url, "-", BODY, args.connections, 1, workdir)
                    result = wrk(url, "-", BODY, args.connections, args.duration, workdir)
                print(f"| {client} | {result['rps']:,.0f} | {result['p50_ms']:.3f} | {result['p99_ms']:.3f} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
