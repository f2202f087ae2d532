"""The floor under the gateway's own work: the least a metered proxy does per request, written flat.

    python -m tests.bench.floor [--rounds 3] [--seconds 4] [--connections 8]

Issue 22 asks the gateway for 0.8 times the bare proxy's requests per second (tests/bench/bare_proxy.py: Starlette
forwarding to aiohttp, nothing else). This module asks what that leaves room for. `app` does, in one function and
with no model, record or layer of the gateway's, what every metered request must: it reads the key and hashes it
(sha256, one dictionary lookup), parses the body (orjson, no validation), checks the model and an rpm counter,
holds a worst case on the key's budget, sends the body on with the provider's key over the gateway's own HTTP
client (faster than aiohttp), parses the answer for its usage, prices it, releases the hold, writes a ledger line
(serialized, batched for 10 ms into one SQLite transaction: the line in a `WITHOUT ROWID` table with a time
index, the key's meter updated, as the embedded store does) and a log line, and answers with the gateway's
headers (request id, provider, model, route, cost, fee, budget left, rate limits, server timing).

The main program serves nginx (the benchmark's canned completion), the bare proxy, this floor and `gateway serve`
(one uvicorn worker each, uvloop and httptools) and gives each wrk in turn, round after round, reading each
server's CPU time per request from `/proc/<pid>/stat`. What it prints: requests per second and CPU per request of
each, and each one's requests per second against the bare proxy's.
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import os
import sqlite3
import statistics
import sys
import tempfile
import time
from contextlib import ExitStack, closing
from pathlib import Path
from typing import Any

import orjson
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

UPSTREAM = os.environ.get("UPSTREAM", "http://127.0.0.1:9/v1/chat/completions")
FLOOR_KEY = "gwk_floor_0123456789abcdef"
PRICE_IN, PRICE_OUT = 0.15e-6, 0.60e-6  # USD per token
LINGER_S = 0.01

KEYS: dict[str, dict[str, Any]] = {
    hashlib.sha256(FLOOR_KEY.encode()).hexdigest(): {
        "id": "floor",
        "models": frozenset({"bench"}),
        "budget": 1e9,
        "spent": 0.0,
        "held": 0.0,
        "rpm": 10_000_000,
        "minute": 0,
        "count": 0,
    }
}


class Ledger:
    """Ledger lines batched for `LINGER_S`, written in one transaction with the meters they move."""

    def __init__(self, path: str) -> None:
        self.db = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
        self.db.execute("PRAGMA journal_mode=WAL")
        self.db.execute("PRAGMA synchronous=NORMAL")
        self.db.execute(
            "CREATE TABLE IF NOT EXISTS ledger (key_id TEXT NOT NULL, ts REAL NOT NULL, request_id TEXT NOT NULL,"
            " data TEXT NOT NULL, PRIMARY KEY (key_id, ts, request_id)) WITHOUT ROWID"
        )
        self.db.execute("CREATE INDEX IF NOT EXISTS ledger_ts ON ledger (ts)")
        self.db.execute(
            "CREATE TABLE IF NOT EXISTS meters (key_id TEXT NOT NULL, period TEXT NOT NULL, spent REAL NOT NULL,"
            " PRIMARY KEY (key_id, period)) WITHOUT ROWID"
        )
        self.lines: list[tuple[str, float, str, str]] = []
        self.spent: dict[str, float] = {}
        self.flushing = False

    def add(self, key_id: str, ts: float, request_id: str, line: str, cost: float) -> None:
        self.lines.append((key_id, ts, request_id, line))
        self.spent[key_id] = self.spent.get(key_id, 0.0) + cost
        if not self.flushing:
            self.flushing = True
            asyncio.get_running_loop().call_later(LINGER_S, self.flush)

    def flush(self) -> None:
        lines, spent = self.lines, self.spent
        self.lines, self.spent, self.flushing = [], {}, False
        db = self.db
        db.execute("BEGIN")
        db.executemany("INSERT OR IGNORE INTO ledger VALUES (?, ?, ?, ?)", lines)
        for key_id, amount in spent.items():
            db.execute(
                "INSERT INTO meters VALUES (?, 'total', ?) ON CONFLICT DO UPDATE SET spent = spent + excluded.spent",
                (key_id, amount),
            )
        db.execute("COMMIT")


def forwarder() -> Any:
    from handler.config import TimeoutConfig
    from handler.pipeline.upstream import UpstreamClient
    from handler.ports import UpstreamRequest

    upstream = UpstreamClient(TimeoutConfig())
    headers = {"content-type": "application/json", "authorization": "Bearer provider-key"}

    async def forward(body: bytes) -> tuple[int, bytes]:
        response = await upstream.send(UpstreamRequest("POST", UPSTREAM, headers, body))
        return response.status, await response.read()

    return forward


forward = forwarder()
ledger = Ledger(os.environ.get("FLOOR_LEDGER", ":memory:"))
log = open(os.environ.get("FLOOR_LOG", os.devnull), "w")  # noqa: SIM115 - the process's log, open while it runs


def refused(status: int, message: str) -> Response:
    return Response(orjson.dumps({"error": {"message": message}}), status, media_type="application/json")


async def chat(request: Request) -> Response:
    started = time.perf_counter()
    request_id = "req_" + os.urandom(12).hex()
    authorization = request.headers.get("authorization", "")
    key = KEYS.get(hashlib.sha256(authorization[7:].encode()).hexdigest())
    if key is None:
        return refused(401, "invalid key")
    data = orjson.loads(await request.body())
    model = data.get("model")
    if model not in key["models"]:
        return refused(403, "model not allowed")
    minute = int(time.time() // 60)
    if key["minute"] != minute:
        key["minute"], key["count"] = minute, 0
    if key["count"] >= key["rpm"]:
        return refused(429, "rate limited")
    key["count"] += 1
    prompt = sum(len(str(message.get("content", ""))) for message in data.get("messages", ())) // 4 + 8
    worst = prompt * PRICE_IN + data.get("max_tokens", 4096) * PRICE_OUT
    if key["spent"] + key["held"] + worst > key["budget"]:
        return refused(402, "budget exhausted")
    key["held"] += worst
    sent = time.perf_counter()
    status, answer = await forward(orjson.dumps(data))
    upstream_ms = (time.perf_counter() - sent) * 1000
    usage = orjson.loads(answer).get("usage") or {}
    input_tokens, output_tokens = usage.get("prompt_tokens", prompt), usage.get("completion_tokens", 0)
    cost = input_tokens * PRICE_IN + output_tokens * PRICE_OUT
    key["held"] -= worst
    key["spent"] += cost
    now = time.time()
    gateway_ms = (time.perf_counter() - started) * 1000 - upstream_ms
    route = f"openai/{model}@global={status}"
    line = {
        "request_id": request_id, "ts": now, "key_id": key["id"], "ancestors": [], "model": model,
        "provider": "openai", "region": "global", "upstream_model": model, "input_tokens": input_tokens,
        "cached_tokens": 0, "cache_write_tokens": 0, "output_tokens": output_tokens, "reasoning_tokens": 0,
        "cost_usd": cost, "cache_savings_usd": 0.0, "fee_usd": 0.0, "status": status, "gateway_ms": gateway_ms,
        "store_ms": 0.0, "upstream_ms": upstream_ms, "route": route, "cost_source": "provider", "tags": [],
        "user": None, "session": None,
    }  # fmt: skip
    ledger.add(key["id"], now, request_id, orjson.dumps(line).decode(), cost)
    log.write(
        orjson.dumps(
            {"level": "INFO", "message": "request", "timestamp": now, "request_id": request_id, "key_id": key["id"],
             "model": model, "provider": "openai", "status": status, "cost_usd": cost, "latency_ms": gateway_ms}
        ).decode() + "\n"
    )  # fmt: skip
    left = key["budget"] - key["spent"] - key["held"]
    headers = {
        "x-request-id": request_id,
        "x-gateway-provider": "openai",
        "x-gateway-model": model,
        "x-gateway-region": "global",
        "x-gateway-route": route,
        "x-gateway-cost-usd": f"{cost:.9f}",
        "x-gateway-fee-usd": "0.000000000",
        "x-gateway-budget-remaining-usd": f"{left:.9f}",
        "x-ratelimit-limit-requests": str(key["rpm"]),
        "x-ratelimit-remaining-requests": str(key["rpm"] - key["count"]),
        "server-timing": f"gateway;dur={gateway_ms:.3f}, upstream;dur={upstream_ms:.3f}",
    }
    return Response(answer, status, headers=headers, media_type="application/json")


app = Starlette(routes=[Route("/v1/chat/completions", chat, methods=["POST"])])


def cpu_seconds(pid: int) -> float:
    """User and system CPU seconds of process `pid` so far."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def serve_gateway(stack: ExitStack, env: dict[str, str], workdir: Path) -> tuple[str, str, int]:
    from tests.bench.run import gateway_pid, gateway_serve, mint_key, wait_ready

    key = mint_key(env)
    proc, url = stack.enter_context(gateway_serve(env, workdir / "gateway.log"))
    wait_ready(f"{url}/health")
    return f"{url}/v1/chat/completions", key, gateway_pid(proc)


def ledger_lines(path: Path) -> int:
    """The floor's ledger lines in the file at `path`, once its last batch is written."""
    time.sleep(LINGER_S * 5)
    with closing(sqlite3.connect(path)) as db:
        (lines,) = db.execute("SELECT COUNT(*) FROM ledger").fetchone()
    return int(lines)


def main() -> int:
    from tests.bench.run import BODY, nginx_upstream, uvicorn_app, wrk

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--seconds", type=float, default=4.0)
    parser.add_argument("--connections", type=int, default=8)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="gateway-floor-") as tmp, ExitStack() as stack:
        workdir = Path(tmp)
        direct, env = stack.enter_context(nginx_upstream(workdir))
        bare_url, bare_pid = stack.enter_context(
            uvicorn_app("tests.bench.bare_proxy:app", {"UPSTREAM": direct, "CLIENT": "aiohttp"})
        )
        floor_environ = {"UPSTREAM": direct, "FLOOR_LEDGER": str(workdir / "floor.db"),
                         "FLOOR_LOG": str(workdir / "floor.log")}  # fmt: skip
        floor_url, floor_pid = stack.enter_context(uvicorn_app("tests.bench.floor:app", floor_environ))
        gateway_url, gateway_key, gateway_pid = serve_gateway(stack, env, workdir)
        targets = {
            "bare": (bare_url, "", bare_pid),
            "floor": (floor_url, FLOOR_KEY, floor_pid),
            "gateway": (gateway_url, gateway_key, gateway_pid),
        }
        for url, key, _ in targets.values():
            wrk(url, key, BODY, args.connections, 2, workdir)  # warm up
        rps: dict[str, list[float]] = {name: [] for name in targets}
        cpu_us: dict[str, list[float]] = {name: [] for name in targets}
        answered = 0  # the floor's answers wrk saw, each of which must have its ledger line
        before_rounds = ledger_lines(workdir / "floor.db")
        for round_ in range(args.rounds):
            for name, (url, key, pid) in targets.items():
                before = cpu_seconds(pid)
                result = wrk(url, key, BODY, args.connections, args.seconds, workdir)
                if result["errors"]:
                    raise SystemExit(f"{name}: {result['errors']} errors")
                rps[name].append(result["rps"])
                answered += result["requests"] if name == "floor" else 0
                cpu_us[name].append((cpu_seconds(pid) - before) / result["requests"] * 1e6)
            print(
                f"round {round_}: "
                + "; ".join(f"{n} {rps[n][-1]:,.0f} req/s, {cpu_us[n][-1]:.0f} µs CPU" for n in targets),
                flush=True,
            )
        lines = ledger_lines(workdir / "floor.db") - before_rounds
        print(f"the floor's ledger: {lines:,} lines for the {answered:,} answers wrk saw in the rounds (a few more:")
        print("the requests in flight when a run ended, answered but not counted by wrk)")
        bare = statistics.median(rps["bare"])
        print(f"medians of {args.rounds} rounds at {args.connections} connections:")
        print("| server | req/s | × the bare proxy | CPU µs per request |\n|---|---|---|---|")
        for name in targets:
            median = statistics.median(rps[name])
            print(f"| {name} | {median:,.0f} | {median / bare:.2f} | {statistics.median(cpu_us[name]):.0f} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
