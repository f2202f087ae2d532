"""Which upstream client a thin proxy should use: the same minimal Starlette proxy over four clients.

    python -m tests.bench.transports [--duration 5]

nginx answers a fixed completion; the proxy (tests/bench/bare_proxy.py, one uvicorn worker) forwards each
request with httpx's own connection pool, with httpx over the `httpx-aiohttp` package's transport, with the
gateway's own client (handler/pipeline/upstream.py: httpx's request and transport interface over
adapters/http/http1.py),
or with aiohttp directly; wrk measures each at 8 connections.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

from tests.bench.run import BODY, bare_proxy, nginx_conf, nginx_on, wrk
from tests.support.servers import listening_socket


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--duration", type=float, default=5.0)
    parser.add_argument("--connections", type=int, default=8)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="gateway-transports-") as tmp, listening_socket() as listener:
        workdir = Path(tmp)
        upstream_port = listener.getsockname()[1]
        (workdir / "nginx.conf").write_text(nginx_conf(upstream_port, workdir))
        print(f"| client | req/s at {args.connections} connections | p50 ms | p99 ms |\n|---|---|---|---|")
        with nginx_on(listener, workdir):
            time.sleep(0.5)
            for client in ("httpx", "httpx-aiohttp", "gateway", "aiohttp"):
                with bare_proxy(client, f"http://127.0.0.1:{upstream_port}/v1/chat/completions") as url:
                    wrk(url, "-", BODY, args.connections, 1, workdir)
                    result = wrk(url, "-", BODY, args.connections, args.duration, workdir)
                print(f"| {client} | {result['rps']:,.0f} | {result['p50_ms']:.3f} | {result['p99_ms']:.3f} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
