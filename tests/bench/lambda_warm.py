"""Warm Lambda invocations in-process: µs of the gateway's own work per invocation.

    python -m tests.bench.lambda_warm N [chat|messages|responses]    (environment: GATEWAY_CONFIG,
                                                                      GATEWAY_STORE, a key in the store)
    python -m tests.bench.lambda_warm N bare


The upstream is the gateway's own HTTP/1.1 client with the network taken out (requests framed, answered
at once), so what is timed is Mangum, the app, auth, admission and settlement on the embedded store,
translation and serialization. The store's calls are
timed on their own too (on Lambda they are DynamoDB round trips, I/O rather than the gateway's work).
Prints three medians, in µs: the whole invocation, the store calls within it, and the difference. The route:
Chat Completions (the default), the Messages API passed through to an Anthropic deployment, or the Responses API
translated for an OpenAI one, each answered with its upstream's canned answer (as the benchmark's nginx does).
`bare`: the same for the bare proxy (tests/bench/bare_proxy.py) under Mangum, on the same client and
canned answer: the floor a warm invocation's own work is compared with.
"""

from __future__ import annotations

import json
import os
import statistics
import sys
import time
from collections.abc import Awaitable, Callable
from typing import Any

from handler.entry.priming import CannedTransport as Canned  # network taken out: answered at once
from handler.entry.priming import Context
from tests.bench.run import BODY, COMPLETION, MESSAGE, MESSAGES_BODY, RESPONSES_BODY
from tests.support.events import event

# route -> (path, request body, the upstream's answer)
ROUTES: dict[str, tuple[str, dict[str, Any], dict[str, Any]]] = {
    "chat": ("/v1/chat/completions", BODY, COMPLETION),
    "messages": ("/v1/messages", MESSAGES_BODY, MESSAGE),
    "responses": ("/v1/responses", RESPONSES_BODY, COMPLETION),
}


class StoreClock:
    """Wraps the store's per-request calls to add up the time spent in them."""

    def __init__(self, store: Any) -> None:
        self.spent = 0.0
        for name in ("admit", "settle", "get_key"):
            setattr(store, name, self._timed(getattr(store, name)))

    def _timed(self, call: Callable[..., Awaitable[Any]]) -> Callable[..., Awaitable[Any]]:
        async def timed(*args: Any) -> Any:
            started = time.perf_counter()
            try:
                return await call(*args)
            finally:
                self.spent += time.perf_counter() - started

        return timed


def one_invocation(what: str) -> tuple[float, float]:
    """One invocation of handler.entry.lambda_handler on the `Canned` upstream, as in `main`: seconds in all and
    in its store calls."""
    from handler.entry import lambda_handler
    from handler.pipeline.upstream import UpstreamClient

    gateway = lambda_handler.gateway
    gateway.upstream = UpstreamClient(gateway.config.gateway.timeouts, Canned(json.dumps(COMPLETION).encode()))
    clock = StoreClock(gateway.store)
    invoke = event("POST", "/v1/chat/completions", BODY, key=os.environ["BENCH_GATEWAY_KEY"])
    started = time.perf_counter()
    response = lambda_handler.handler(invoke, Context())
    elapsed = time.perf_counter() - started
    if response["statusCode"] != 200:
        raise SystemExit(f"{what} answered {response['statusCode']}: {response.get('body')}")
    return elapsed, clock.spent


def first_invocation_ms() -> float:
    """ms of the first invocation after a cold import of handler.entry.lambda_handler, with what the import left
    to first use (the API models' validators) built in it."""
    return one_invocation("the first invocation")[0] * 1000


def restored_first_invocation_ms() -> float:
    """ms of the gateway's own work in the first invocation after a SnapStart restore (its store calls aside):
    the cold import done, Lambda's before-snapshot and after-restore hooks run (`snapshot_restore_py`'s
    registries, as the runtime runs them), then one invocation. (The restore empties the key cache and reopens
    the store, so this invocation's store calls read its key and start its slices.)"""
    import snapshot_restore_py

    from handler.entry import lambda_handler  # noqa: F401 - its import registers the hooks

    for registry in (snapshot_restore_py.get_before_snapshot(), snapshot_restore_py.get_after_restore()):
        for hook, args, kwargs in registry:
            hook(*args, **kwargs)
    elapsed, store = one_invocation("the first invocation after a restore")
    return (elapsed - store) * 1000


def bare(invocations: int) -> None:
    """The bare proxy under Mangum, each invocation on the loop Mangum keeps (as the gateway's)."""
    import asyncio

    from mangum import Mangum

    os.environ["CLIENT"] = "gateway"  # the bare proxy's own client is replaced below; aiohttp stays out

    from handler.config import TimeoutConfig
    from handler.pipeline.upstream import UpstreamClient
    from handler.ports import UpstreamRequest
    from tests.bench import bare_proxy

    upstream = UpstreamClient(TimeoutConfig(), Canned(json.dumps(COMPLETION).encode()))

    async def forward(body: bytes) -> tuple[int, bytes]:
        response = await upstream.send(UpstreamRequest("POST", bare_proxy.UPSTREAM, bare_proxy.JSON, body))
        return response.status, await response.read()

    bare_proxy.forward = forward
    asyncio.set_event_loop(asyncio.new_event_loop())
    handler = Mangum(bare_proxy.app, lifespan="off")
    invoke = event("POST", "/v1/chat/completions", BODY, key=None)
    totals = []
    for i in range(invocations):
        started = time.perf_counter()
        response = handler(invoke, Context())  # type: ignore[arg-type]
        elapsed = time.perf_counter() - started
        if response["statusCode"] != 200:
            raise SystemExit(f"invocation {i} answered {response['statusCode']}")
        if i >= invocations // 10:
            totals.append(elapsed * 1e6)
    total = statistics.median(totals)
    sys.stdout.write(f"{total:.1f} 0.0 {total:.1f}\n")


def main(invocations: int, route: str = "chat") -> None:
    results = sys.stdout
    sys.stdout = sys.stderr
    from handler.entry import lambda_handler
    from handler.pipeline.upstream import UpstreamClient

    path, body, answer = ROUTES[route]
    gateway = lambda_handler.gateway
    gateway.upstream = UpstreamClient(gateway.config.gateway.timeouts, Canned(json.dumps(answer).encode()))
    clock = StoreClock(gateway.store)
    invoke = event("POST", path, body, key=os.environ["BENCH_GATEWAY_KEY"])
    totals, stores = [], []
    for i in range(invocations):
        before = clock.spent
        started = time.perf_counter()
        response = lambda_handler.handler(invoke, Context())
        elapsed = time.perf_counter() - started
        if response["statusCode"] != 200:
            raise SystemExit(f"invocation {i} answered {response['statusCode']}: {response.get('body')}")
        if i >= invocations // 10:  # the first tenth warms caches
            totals.append(elapsed * 1e6)
            stores.append((clock.spent - before) * 1e6)
    total, store = statistics.median(totals), statistics.median(stores)
    own = statistics.median(t - s for t, s in zip(totals, stores, strict=True))
    results.write(f"{total:.1f} {store:.1f} {own:.1f}\n")


if __name__ == "__main__":
    if sys.argv[2:] == ["bare"]:
        bare(int(sys.argv[1]))
    else:
        main(int(sys.argv[1]), *sys.argv[2:3])
