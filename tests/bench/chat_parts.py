"""What each part of a chat completion costs the gateway: the route with parts taken out, timed in turns.

    python -m tests.bench.chat_parts [--rounds 12] [--block 10] [VARIANT ...]
    python -m tests.bench.chat_parts --served [--rounds 6] [--seconds 4] [VARIANT ...]

Issue 22's bound (0.8 times the bare proxy's requests per second at 8 connections) was thought to need a flat path
for the common case, one that skips the gateway's structure (the request and answer models, the translation, the
failover's scaffolding) but calls its own money path. This measures what such a path could save before anyone
writes it. The gateway's app is served in-process (the benchmark's config and key: a budget, rpm and tpm, on the
embedded store), its upstream the gateway's own client with the network taken out (answered at once with the
benchmark's completion), and its chat route is swapped, block by block, for:

- `gateway`: the route as it is;
- `flat`: what a flat path sharing the money path must still do: the key, the body (orjson, then `ChatRequest`, for
  the same 400s), the exchange, the plan, the admission, the upstream call with the client's body as sent, the
  answer's usage, the settlement with its ledger line, the log line and metrics, the headers; the answer relayed
  as it came (which the gateway's is not: it is validated and written again). The floor of any such path;
- `unmetered`: `flat` without the admission and the settlement (nothing reserved, no ledger line): what those two
  cost;
- `forward`: the key and the upstream call alone.

Each block is 8 concurrent requests at a time, `--block` each, the variants in turns, round after round, so that the
machine's drift and the other processes on its cores fall on all alike. Printed per variant, in µs of wall time per
request: the least of its blocks (the figure others' load moves least), the tenth percentile and the median.

`--served`: each variant served by `gateway serve` (its route swapped in before the app is built) in front of nginx,
beside the bare proxy, and given wrk at 8 connections in turns (tests/bench/ab.py): requests per second, their ratio
to the bare proxy's in the same round, and CPU µs per request of each server.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import orjson
from starlette.requests import Request
from starlette.responses import Response

from tests.bench.run import BODY, COMPLETION, bench_config

PATH = "/v1/chat/completions"
ROOT = Path(__file__).resolve().parents[2]
Route = Callable[[Any, Request], Awaitable[Response]]


async def flat(api: Any, request: Request) -> Response:
    """The money path alone around one upstream call (see the module docstring)."""
    from handler.api.app import json_response
    from handler.pipeline.pricing import tier_served
    from handler.schemas import ChatRequest, Usage

    key = await api.authenticate(request)
    data = await api.parse_json(request)
    req = api.validate(ChatRequest, data)
    ex = api.exchange(request, key, req.model, extra=req.model_extra, known=api.chat_fields)
    pipeline = api.pipeline
    plan = await pipeline._plan(ex, req.model)
    await pipeline._admit(ex, plan, req)
    raw = await send(api, ex, plan[0], data)
    answer = orjson.loads(raw)
    counts = answer["usage"]
    usage, source = pipeline._checked(Usage.of(counts["prompt_tokens"], counts["completion_tokens"]), ex, lambda: 0)
    served = tier_served(answer, ex.service_tier)
    await pipeline._settle(ex, usage, 200, background=True, source=source, served=served)
    response: Response = api.answered(ex, json_response(raw, headers=ex.headers()))
    return response


async def unmetered(api: Any, request: Request) -> Response:
    """`flat` without the admission and the settlement."""
    from handler.api.app import json_response
    from handler.schemas import ChatRequest

    key = await api.authenticate(request)
    data = await api.parse_json(request)
    req = api.validate(ChatRequest, data)
    ex = api.exchange(request, key, req.model, extra=req.model_extra, known=api.chat_fields)
    plan = await api.pipeline._plan(ex, req.model)
    raw = await send(api, ex, plan[0], data)
    orjson.loads(raw)
    response: Response = api.answered(ex, json_response(raw, headers=ex.headers()))
    return response


async def forward(api: Any, request: Request) -> Response:
    """The key and the upstream call alone."""
    key = await api.authenticate(request)
    data = await api.parse_json(request)
    ex = api.exchange(request, key, data["model"])
    plan = await api.pipeline._plan(ex, data["model"])
    return Response(await send(api, ex, plan[0], data), media_type="application/json")


async def send(api: Any, ex: Any, attempt: Any, data: dict[str, Any]) -> bytes:
    """The client's body, its model the deployment's, sent as it came; the answer's body, the attempt recorded on the
    exchange as the gateway's failover records it."""
    from handler.ports import UpstreamRequest

    body = {**data, "model": attempt.target.model}
    target = attempt.target
    sent = UpstreamRequest("POST", f"{target.base_url}/chat/completions", attempt.adapter.headers(), orjson.dumps(body))
    started = time.perf_counter()
    ex.inflight_at, ex.inflight = started, attempt
    response = await api.gateway.upstream.send(sent, within=None if ex.ends_at is None else ex.ends_at - started)
    raw: bytes = await response.read()
    ex.inflight = None
    ex.upstream_ms += (time.perf_counter() - started) * 1000
    ex.route.append(f"{target.label}=200")
    api.gateway.router.breakers.success(target.label)
    ex.attempt = attempt
    return raw


VARIANTS: dict[str, Route | None] = {"gateway": None, "flat": flat, "unmetered": unmetered, "forward": forward}


async def measure(rounds: int, block: int, names: list[str]) -> dict[str, list[float]]:
    """µs of wall time per request of each variant's blocks."""
    from adapters.providers.registry import REGISTRY
    from handler.api.app import create_app
    from handler.config import parse_config
    from handler.entry.priming import CannedTransport
    from handler.pipeline.gateway import build_gateway
    from handler.pipeline.key_admin import KeyAdmin
    from handler.pipeline.upstream import UpstreamClient
    from handler.ports import KeyRecord

    with tempfile.TemporaryDirectory(prefix="gateway-parts-") as tmp:
        config = parse_config(bench_config("http://127.0.0.1:9"), set(REGISTRY))
        environ = {"BENCH_UPSTREAM_KEY": "bench-upstream-key", "GATEWAY_REGION": "us-east-1"}
        gateway = build_gateway(config=config, store_url=f"sqlite:///{tmp}/bench.db", environ=environ)
        settings = gateway.config.gateway
        gateway.upstream = UpstreamClient(settings.timeouts, CannedTransport(orjson.dumps(COMPLETION)), settings.limits)
        app = create_app(gateway)
        route = app.direct[PATH]
        api = route.__self__  # type: ignore[attr-defined]  # (the bound `Api.chat_completions`)
        record = KeyRecord(id="", name="bench", secret_hash="", created_at=0, budget_usd=1e6, rpm=10**7, tpm=10**9)
        key = (await KeyAdmin(gateway.keys).mint(record)).key
        body = orjson.dumps(BODY)
        headers = [
            (b"host", b"gateway"),
            (b"authorization", f"Bearer {key}".encode()),
            (b"content-type", b"application/json"),
            (b"content-length", str(len(body)).encode()),
        ]

        async def one() -> None:
            scope = {"type": "http", "method": "POST", "path": PATH, "root_path": "", "headers": list(headers),
                     "query_string": b"", "client": ("127.0.0.1", 40000), "server": ("127.0.0.1", 8080),
                     "scheme": "http", "http_version": "1.1"}  # fmt: skip
            messages = [{"type": "http.request", "body": body, "more_body": False}]
            status: list[int] = []

            async def receive() -> dict[str, Any]:
                if messages:
                    return messages.pop()
                await asyncio.Event().wait()  # (the client stays until the answer)
                return {}

            async def reply(message: dict[str, Any]) -> None:
                if message["type"] == "http.response.start":
                    status.append(message["status"])

            await app(scope, receive, reply)
            if status != [200]:
                raise SystemExit(f"answered {status}")

        async def connection() -> None:
            for _ in range(block):
                await one()

        taken: dict[str, list[float]] = {name: [] for name in names}
        for round_ in range(rounds + 1):  # the first round warms caches and is not counted
            for name in names:
                variant = VARIANTS[name]
                app.direct[PATH] = route if variant is None else (lambda request, v=variant: v(api, request))
                for _ in range(10):
                    started = time.perf_counter()
                    await asyncio.gather(*(connection() for _ in range(8)))
                    if round_:
                        taken[name].append((time.perf_counter() - started) / (8 * block) * 1e6)
                await gateway.drain()
        await gateway.aclose()
    return taken


def serve(variant: str, host: str, port: int) -> int:
    """`gateway serve` with `variant` as its chat route."""
    from handler.api.app import Api
    from handler.entry.cli import main as cli

    route = VARIANTS[variant]
    if route is not None:
        Api.chat_completions = route  # type: ignore[method-assign]  # (before the app's route table is built)
    return cli(["serve", "--host", host, "--port", str(port)])


def served(rounds: int, seconds: float, names: list[str]) -> int:
    """Each variant served, beside the bare proxy, wrk at 8 connections in turns (tests/bench/ab.py)."""
    from tests.bench import ab

    commands = {name: ["-m", "tests.bench.chat_parts", "--serve", name] for name in names if VARIANTS[name]}
    ab.summary(ab.run({name: ROOT for name in names}, rounds, seconds, 8, commands=commands))
    return 0


def main() -> int:
    import uvloop

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=None, help="12 in-process, 6 served")
    parser.add_argument("--block", type=int, default=10, help="requests per connection in a block")
    parser.add_argument("--served", action="store_true", help="each variant behind `gateway serve`, wrk at 8")
    parser.add_argument("--seconds", type=float, default=4.0, help="seconds of wrk per server and round (--served)")
    parser.add_argument("--serve", choices=list(VARIANTS), help=argparse.SUPPRESS)  # (one served variant's process)
    parser.add_argument("--host", default="127.0.0.1", help=argparse.SUPPRESS)
    parser.add_argument("--port", type=int, default=0, help=argparse.SUPPRESS)
    parser.add_argument("variants", nargs="*", help=f"any of {', '.join(VARIANTS)}; all by default")
    args = parser.parse_args()
    variants = args.variants or list(VARIANTS)
    if not set(variants) <= set(VARIANTS):
        parser.error(f"variants are {', '.join(VARIANTS)}")
    if args.serve:
        return serve(args.serve, args.host, args.port)
    if args.served:
        return served(args.rounds or 6, args.seconds, variants)
    log, sys.stdout = sys.stdout, sys.stderr  # (the request lines go to stderr, the figures alone to stdout)
    taken = uvloop.run(measure(args.rounds or 12, args.block, variants))
    log.write(f"µs of wall time per request, {len(next(iter(taken.values())))} blocks of {8 * args.block} each:\n")
    log.write("| variant | least | p10 | median |\n|---|---|---|---|\n")
    for name, samples in taken.items():
        ordered = sorted(samples)
        p10 = ordered[len(ordered) // 10]
        log.write(f"| {name} | {ordered[0]:.1f} | {p10:.1f} | {statistics.median(ordered):.1f} |\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
