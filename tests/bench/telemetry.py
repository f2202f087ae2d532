"""What attribution and tracing cost per request, on and off, in-process (issue 20, item 5).

    python -m tests.bench.telemetry N    (environment: GATEWAY_CONFIG, GATEWAY_STORE, BENCH_GATEWAY_KEY)

Two gateways in one fresh interpreter, on the same config and store: one without OTLP export, one exporting to
a local sink (a collector stand-in in a process of its own that reads each export and answers 200). Each is
driven straight through its ASGI app with the upstream canned as in tests/bench/lambda_warm.py, with and
without attribution (an `x-gateway-tags` header, a session header and a `user`), in interleaved rounds. A
request is timed from the ASGI call to its settlement landing in the store (as a Lambda invocation ends),
less the time in the store's calls (I/O, the same in every variant; see lambda_warm.py): the gateway's own
work. Reported per variant, in µs: the request's median, and for tracing the export's own work per request (the
spans built, encoded and sent by `flush` at the end of each round, in CPU time, divided by the round's
requests: work done off the request's path, on the exporter's thread, which a one-vCPU Lambda still pays for).
"""

from __future__ import annotations

import asyncio
import json
import os
import socket
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from tests.support.asgi import post_scope
from tests.support.servers import free_port

ROOT = Path(__file__).resolve().parents[2]
ROUNDS = 5
VARIANTS = ("neither", "attribution", "tracing", "both")
ATTRIBUTION_HEADERS = [
    (b"x-gateway-tags", b"team=search,feature=autocomplete,env=prod"),
    (b"x-claude-code-session-id", b"c0ffee00-1234-4bcd-9def-0123456789ab"),
]


def measure(env: dict[str, str], smoke: bool) -> dict[str, dict[str, float]]:
    """tests/bench/run.py's entry: the figures, from a fresh interpreter."""
    from tests.bench.run import child_result  # (run.py imports this module)

    figures: dict[str, dict[str, float]] = json.loads(
        child_result("tests.bench.telemetry", str(40 if smoke else 400), env=env)
    )
    return figures


def rows(figures: dict[str, dict[str, float]]) -> list[str]:
    """The benchmark report's lines for these figures."""
    base = figures["neither"]["request_us"]
    lines = ["", "attribution and tracing: the gateway's own work per request, in-process (ASGI, upstream canned):"]
    lines += [
        "| attribution | OTLP tracing | own work µs (median) | added µs | export CPU µs per request (off the path) |"
    ]
    lines += ["|---|---|---|---|---|"]
    for name in VARIANTS:
        f = figures[name]
        attribution = "on" if name in ("attribution", "both") else "off"
        tracing = "on" if name in ("tracing", "both") else "off"
        lines.append(
            f"| {attribution} | {tracing} | {f['request_us']:.1f} | {f['request_us'] - base:+.1f} "
            f"| {f['export_us']:.1f} |"
        )
    return lines


class Sink:
    """A collector stand-in: reads HTTP/1.1 requests (keep-alive) and answers each with an empty 200."""

    @staticmethod
    async def serve(port: int) -> None:
        async def connection(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            try:
                while True:
                    head = await reader.readuntil(b"\r\n\r\n")
                    length = 0
                    for line in head.split(b"\r\n"):
                        name, _, value = line.partition(b":")
                        if name.strip().lower() == b"content-length":
                            length = int(value)
                    await reader.readexactly(length)
                    writer.write(
                        b"HTTP/1.1 200 OK\r\ncontent-type: application/x-protobuf\r\ncontent-length: 0\r\n\r\n"
                    )
                    await writer.drain()
            except (asyncio.IncompleteReadError, ConnectionError):
                writer.close()

        server = await asyncio.start_server(connection, "127.0.0.1", port)
        async with server:
            await server.serve_forever()


async def call(app: Any, headers: list[tuple[bytes, bytes]], body: bytes) -> int:
    """One POST /v1/chat/completions through the ASGI app; its status."""
    scope = post_scope("/v1/chat/completions", headers, ("127.0.0.1", 50000))
    delivered = False
    status = 0

    async def receive() -> dict[str, Any]:
        nonlocal delivered
        if not delivered:
            delivered = True
            return {"type": "http.request", "body": body, "more_body": False}
        await asyncio.Event().wait()  # the client stays
        return {"type": "http.disconnect"}

    async def send(message: dict[str, Any]) -> None:
        nonlocal status
        if message["type"] == "http.response.start":
            status = message["status"]

    await app(scope, receive, send)
    return status


async def run(requests: int, sink_url: str) -> dict[str, dict[str, float]]:
    # (here, not at the top: tests/bench/run.py imports this module for `measure` and `rows`)
    from handler.api.app import create_app
    from handler.entry.priming import CannedTransport as Canned
    from handler.pipeline.gateway import build_gateway
    from handler.pipeline.upstream import UpstreamClient
    from tests.bench.lambda_warm import StoreClock
    from tests.bench.run import BODY, COMPLETION

    key = os.environ["BENCH_GATEWAY_KEY"]
    canned = json.dumps(COMPLETION).encode()
    environ = {**os.environ, "OTEL_EXPORTER_OTLP_ENDPOINT": sink_url}
    plain, traced = build_gateway(), build_gateway(environ=environ)
    assert plain.tracer is None and traced.tracer is not None
    # Every export happens in the timed flush below, none on the thread while requests are timed.
    exporter = traced.tracer.exporter
    exporter.schedule_delay_s = exporter.batch_size = exporter.queue_size = 10**7
    exporter._wake.set()  # the thread's first wait ends, the next one lasts the schedule set here
    apps, clocks = {}, {}
    for gateway in (plain, traced):
        gateway.upstream = UpstreamClient(gateway.config.gateway.timeouts, Canned(canned))
        apps[id(gateway)] = create_app(gateway)
        clocks[id(gateway)] = StoreClock(gateway.store)
    auth = [(b"authorization", f"Bearer {key}".encode()), (b"content-type", b"application/json")]
    bodies = {False: json.dumps(BODY).encode(), True: json.dumps({**BODY, "user": "alice@example.com"}).encode()}
    timings: dict[str, list[float]] = {name: [] for name in VARIANTS}
    exports: list[float] = []
    tracing_variants = [name for name in VARIANTS if name in ("tracing", "both")]
    for round_number in range(ROUNDS + 1):  # the first round warms caches and connections, and is not counted
        for _ in range(requests):
            # One request of each variant in turn: the machine's load drifts alike over all four.
            for name in VARIANTS:
                attributed = name in ("attribution", "both")
                gateway = traced if name in tracing_variants else plain
                clock = clocks[id(gateway)]
                store = clock.spent
                started = time.perf_counter()
                status = await call(
                    apps[id(gateway)], auth + (ATTRIBUTION_HEADERS if attributed else []), bodies[attributed]
                )
                await gateway.drain()
                elapsed = time.perf_counter() - started - (clock.spent - store)
                if status != 200:
                    raise SystemExit(f"{name}: the gateway answered {status}")
                if round_number:
                    timings[name].append(elapsed * 1e6)
        cpu = time.thread_time()  # (CPU, not wall time: the sink's answer is not the gateway's work)
        traced.tracer.flush(30)
        if round_number:
            exports.append((time.thread_time() - cpu) * 1e6 / (requests * len(tracing_variants)))
    dropped = traced.tracer.exporter.dropped
    for gateway in (plain, traced):
        await gateway.aclose()
    if dropped:
        raise SystemExit(f"the sink refused {dropped} spans")
    export_us = statistics.median(exports)
    return {
        name: {
            "request_us": statistics.median(timings[name]),
            "export_us": export_us if name in tracing_variants else 0.0,
        }
        for name in VARIANTS
    }


def main(requests: int) -> None:
    results = sys.stdout
    sys.stdout = sys.stderr  # the request log lines
    port = free_port()
    sink = subprocess.Popen([sys.executable, "-m", "tests.bench.telemetry", "--sink", str(port)], cwd=ROOT)
    try:
        deadline = time.monotonic() + 10
        while True:
            try:
                with socket.create_connection(("127.0.0.1", port), timeout=1):
                    break
            except OSError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.05)
        figures = asyncio.run(run(requests, f"http://127.0.0.1:{port}"))
    finally:
        sink.terminate()
        sink.wait(10)
    results.write(json.dumps(figures) + "\n")


if __name__ == "__main__":
    if sys.argv[1] == "--sink":
        asyncio.run(Sink.serve(int(sys.argv[2])))
    else:
        main(int(sys.argv[1]))
