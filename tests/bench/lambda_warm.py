"""Warm Lambda invocations in-process: µs of the gateway's own work per invocation, beside the bare proxy's.

    python -m tests.bench.lambda_warm N [chat|messages|responses]    (environment: GATEWAY_CONFIG,
                                                                      GATEWAY_STORE, a key in the store)
    python -m tests.bench.lambda_warm N bare

The upstream is the gateway's own HTTP/1.1 client with the network taken out (requests framed, answered
at once), so what is timed is Mangum, the app, auth, admission and settlement on the embedded store,
translation and serialization. The store's calls are
timed on their own too (on Lambda they are DynamoDB round trips, I/O rather than the gateway's work).
Prints four medians, in µs: the whole invocation, the store calls within it, the difference (the gateway's own
work), and the bare proxy's invocation (tests/bench/bare_proxy.py under Mangum, on the same client and canned
answer): the floor the gateway's own work is compared with. The two take turns in the same process, a hundred
invocations each, so that the machine's drift (a fifth within a minute, at times, on the development VM) falls on
both alike. The route: Chat Completions (the default), the Messages API passed through to an Anthropic deployment,
or the Responses API translated for an OpenAI one, each answered with its upstream's canned answer (as the
benchmark's nginx does). `bare`: the bare proxy alone (its median printed in each of the four places).
"""

from __future__ import annotations

import asyncio
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
    """Wraps the store's per-request calls to add up the time spent in them: the awaited ones (`admit`, `settle`,
    `get_key`) and the settlement the store writes later, in a loop callback of its own (`settle_soon` queues it,
    `_flush` commits it; on Lambda that write is a DynamoDB round trip too). A call within another's window (an
    admission's commit while `admit` waits for it) is counted once."""

    ASYNC = ("admit", "settle", "get_key")
    SYNC = ("settle_soon", "_flush")

    def __init__(self, store: Any) -> None:
        self.spent = 0.0
        self.depth = 0
        self.started = 0.0
        for name in self.ASYNC:
            setattr(store, name, self._timed(getattr(store, name)))
        for name in self.SYNC:
            if hasattr(store, name):
                setattr(store, name, self._timed_sync(getattr(store, name)))

    def _enter(self) -> None:
        if not self.depth:
            self.started = time.perf_counter()
        self.depth += 1

    def _leave(self) -> None:
        self.depth -= 1
        if not self.depth:
            self.spent += time.perf_counter() - self.started

    def _timed(self, call: Callable[..., Awaitable[Any]]) -> Callable[..., Awaitable[Any]]:
        async def timed(*args: Any) -> Any:
            self._enter()
            try:
                return await call(*args)
            finally:
                self._leave()

        return timed

    def _timed_sync(self, call: Callable[..., Any]) -> Callable[..., Any]:
        def timed(*args: Any) -> Any:
            self._enter()
            try:
                return call(*args)
            finally:
                self._leave()

        return timed


def gateway_invoker(route: str = "chat") -> Callable[[], tuple[float, float]]:
    """One invocation of handler.entry.lambda_handler per call, on the `Canned` upstream: seconds in all and in its
    store calls."""
    from handler.entry import lambda_handler
    from handler.pipeline.upstream import UpstreamClient

    path, body, answer = ROUTES[route]
    gateway = lambda_handler.gateway
    settings = gateway.config.gateway
    gateway.upstream = UpstreamClient(settings.timeouts, Canned(json.dumps(answer).encode()), settings.limits)
    clock = StoreClock(gateway.store)
    invoke = event("POST", path, body, key=os.environ["BENCH_GATEWAY_KEY"])

    def once() -> tuple[float, float]:
        before = clock.spent
        started = time.perf_counter()
        response = lambda_handler.handler(invoke, Context())
        elapsed = time.perf_counter() - started
        if response["statusCode"] != 200:
            raise SystemExit(f"{route} answered {response['statusCode']}: {response.get('body')}")
        return elapsed, clock.spent - before

    return once


def bare_invoker() -> Callable[[], tuple[float, float]]:
    """One invocation of the bare proxy under Mangum per call, on the same client and canned answer, on the loop
    that is current (the gateway's, when both run): seconds in all, and 0.0 (it has no store)."""
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
    handler = Mangum(bare_proxy.app, lifespan="off")
    invoke = event("POST", "/v1/chat/completions", BODY, key=None)

    def once() -> tuple[float, float]:
        started = time.perf_counter()
        response = handler(invoke, Context())  # type: ignore[arg-type]
        elapsed = time.perf_counter() - started
        if response["statusCode"] != 200:
            raise SystemExit(f"the bare proxy answered {response['statusCode']}")
        return elapsed, 0.0

    return once


def one_invocation(what: str) -> tuple[float, float]:
    """One invocation of handler.entry.lambda_handler on the `Canned` upstream: seconds in all and in its store
    calls."""
    try:
        return gateway_invoker()()
    except SystemExit as refused:
        raise SystemExit(f"{what}: {refused}") from None


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


BLOCK = 100  # invocations in a row before the other takes its turn


def main(invocations: int, route: str = "chat") -> None:
    results = sys.stdout
    sys.stdout = sys.stderr  # request lines (the log) go to stderr, the figures alone to stdout
    if route == "bare":
        asyncio.set_event_loop(asyncio.new_event_loop())
        turns = {"bare": bare_invoker()}
    else:
        turns = {"gateway": gateway_invoker(route)}  # its import makes its loop the current one
        turns["bare"] = bare_invoker()
    taken: dict[str, list[tuple[float, float]]] = {name: [] for name in turns}
    for _ in range(max(1, invocations // BLOCK)):
        for name, once in turns.items():
            taken[name] += [once() for _ in range(BLOCK)]
    kept = {name: samples[len(samples) // 10 :] for name, samples in taken.items()}  # the first tenth warms caches
    bare = statistics.median(t for t, _ in kept["bare"]) * 1e6
    mine = kept.get("gateway", kept["bare"])
    total, store = statistics.median(t for t, _ in mine) * 1e6, statistics.median(s for _, s in mine) * 1e6
    own = statistics.median(t - s for t, s in mine) * 1e6
    results.write(f"{total:.1f} {store:.1f} {own:.1f} {bare:.1f}\n")


if __name__ == "__main__":
    main(int(sys.argv[1]), *sys.argv[2:3])
