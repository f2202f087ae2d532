"""Priming for SnapStart: requests run through the whole request path before the snapshot is taken.

A restored environment runs code the snapshot holds. Code that has run before answers faster: CPython
specializes a function's bytecode once it has run a few times, caches fill (pydantic's, httpx's URL
parsing, the key hash), and the first call of each path allocates what later calls reuse. Without
priming, a restored environment's first few invocations pay for all that (about three times a warm
invocation's own work on the benchmark machine, falling to a warm one's over some five invocations).

`prime` runs Chat Completions, Anthropic Messages and Responses requests, each a number of times,
through Mangum and the gateway's own app and pipeline, on a gateway of its own: a synthetic model on an
OpenAI-compatible provider whose answers are canned (no network), an in-memory store with a key of its
own, no tracing. It leaves nothing behind: no request log line or metric (stdout is held while it
runs, the Prometheus registry is a throwaway one), no ledger line or key in the real store, no
upstream call. The real gateway's code is the same code, so what the priming specialized serves its
requests; only the real store's calls (DynamoDB's) stay unprimed. What the throwaway gateway cannot fill for the
real one is the cache of parsed upstream URLs (a first parse costs tens of µs): `warm_urls` parses the chat
endpoint of each model's nearest deployment, as the real adapters build it, without sending anything.
"""

from __future__ import annotations

import asyncio
import contextlib
import io
import time
from collections.abc import AsyncIterator
from typing import Any

import orjson

from adapters.http import parsed_url
from adapters.http.http1 import Http1Stream, Http1Transport
from adapters.store import open_store
from handler.api.app import Settling, create_app
from handler.config import Config, parse_config
from handler.entry.adapter import lambda_adapter
from handler.pipeline.gateway import Gateway, build_gateway
from handler.pipeline.key_admin import KeyAdmin
from handler.ports import KeyRecord
from handler.schemas import ChatRequest
from handler.telemetry import prometheus

ROUNDS = 24  # per route: CPython specializes after a few runs; the last rounds run what the first built
MODEL = "priming"
ORIGIN = "http://priming.invalid/v1"  # never reached: the transport answers

COMPLETION = {
    "id": "chatcmpl-priming",
    "object": "chat.completion",
    "created": 0,
    "model": MODEL,
    "choices": [
        {"index": 0, "message": {"role": "assistant", "content": "Hello."}, "finish_reason": "stop", "logprobs": None}
    ],
    "usage": {"prompt_tokens": 11, "completion_tokens": 2, "total_tokens": 13},
}
HI = [{"role": "user", "content": "Say hello."}]
# (path, body, headers): what the official clients send on each route.
REQUESTS: list[tuple[str, dict[str, Any], dict[str, str]]] = [
    ("/v1/chat/completions", {"model": MODEL, "messages": HI, "max_tokens": 16}, {}),
    ("/v1/messages", {"model": MODEL, "messages": HI, "max_tokens": 16}, {"anthropic-version": "2023-06-01"}),
    ("/v1/responses", {"model": MODEL, "input": "Say hello.", "max_output_tokens": 16}, {}),
]


class CannedStream(Http1Stream):
    """A whole answer body, already here."""

    def __init__(self, answer: bytes) -> None:
        self.answer = answer

    async def __aiter__(self) -> AsyncIterator[bytes]:
        yield self.answer

    async def read(self) -> bytes:
        return self.answer

    async def aclose(self) -> None:
        pass


class CannedTransport(Http1Transport):
    """The gateway's own HTTP/1.1 client with the network taken out: every request is framed as it would be
    sent (`request_head` runs) and answered at once with the same JSON body, as a connection's parser would
    hand it over. `calls` counts the exchanges."""

    def __init__(self, answer: bytes) -> None:
        super().__init__()
        self.answer = answer
        self.headers = [(b"content-type", b"application/json"), (b"content-length", str(len(answer)).encode())]
        self.calls = 0

    async def exchange(self, *request: Any, **bounds: Any) -> tuple[int, list[tuple[bytes, bytes]], Http1Stream]:
        """Whatever was asked (method, URL, framed head, body, timeouts): the canned answer."""
        self.calls += 1
        return 200, self.headers, CannedStream(self.answer)


def priming_config() -> Config:
    """One model on an OpenAI-compatible provider that needs no key, priced, so admission, pricing and
    settlement all run."""
    from adapters.providers.registry import REGISTRY

    return parse_config(
        {
            "providers": {"priming": {"type": "openai", "base_url": ORIGIN, "auth": "none"}},
            "models": {
                MODEL: {
                    "deployments": [{"provider": "priming", "model": MODEL}],
                    "price": {"input": 1.0, "output": 1.0},
                }
            },
        },
        set(REGISTRY),
    )


def event(path: str, body: dict[str, Any], headers: dict[str, str], token: str) -> dict[str, Any]:
    """An API Gateway HTTP API (v2) event, as the buffered function receives one."""
    return {
        "version": "2.0",
        "routeKey": "$default",
        "rawPath": path,
        "rawQueryString": "",
        "headers": {
            "content-type": "application/json",
            "host": "priming.invalid",
            "authorization": f"Bearer {token}",
            **headers,
        },
        "requestContext": {
            "http": {"method": "POST", "path": path, "protocol": "HTTP/1.1", "sourceIp": "192.0.2.1"},
            "requestId": "priming",
            "routeKey": "$default",
            "stage": "$default",
            "timeEpoch": int(time.time() * 1000),
        },
        "body": orjson.dumps(body).decode(),
        "isBase64Encoded": False,
    }


class Context:
    """The Lambda context Mangum reads."""

    function_name = "priming"
    memory_limit_in_mb = 128
    invoked_function_arn = "arn:aws:lambda:us-east-1:000000000000:function:priming"
    aws_request_id = "priming"


def prime(loop: asyncio.AbstractEventLoop, rounds: int = ROUNDS) -> dict[str, int]:
    """Run every route of `REQUESTS` `rounds` times on `loop` (the one Mangum runs invocations on), on a
    gateway of its own; nothing of it outlives the call. Returns each path's answers by status; raises
    RuntimeError if any was not a 200 (the path it was to prime failed)."""
    transport = CannedTransport(orjson.dumps(COMPLETION))
    registry = prometheus.REGISTRY
    prometheus.REGISTRY = prometheus.Registry()  # the priming's counts and label names go nowhere
    answered: dict[str, int] = {}
    gateway: Gateway | None = None
    try:
        with contextlib.redirect_stdout(io.StringIO()):  # its request lines and metrics
            gateway = build_gateway(
                config=priming_config(), store=open_store("sqlite://"), environ={}, transport=transport
            )
            handler = lambda_adapter(Settling(create_app(gateway), gateway))
            minted = loop.run_until_complete(
                KeyAdmin(gateway.keys).mint(
                    KeyRecord(
                        id="",
                        name="priming",
                        secret_hash="",
                        created_at=0,
                        budget_usd=1_000_000.0,
                        rpm=1_000_000,
                        tpm=1_000_000_000,
                    )
                )
            )
            events = [event(path, body, headers, minted.key) for path, body, headers in REQUESTS]
            for _ in range(rounds):
                for invocation in events:
                    status = handler(invocation, Context())["statusCode"]  # type: ignore[arg-type]
                    outcome = f"{invocation['rawPath']} {status}"
                    answered[outcome] = answered.get(outcome, 0) + 1
    finally:
        prometheus.REGISTRY = registry
        if gateway is not None:
            loop.run_until_complete(gateway.aclose())
    failed = sorted(outcome for outcome in answered if not outcome.endswith(" 200"))
    if failed:
        raise RuntimeError(f"priming answered {', '.join(failed)}")
    return answered


def warm_urls(gateway: Gateway) -> None:
    """Parse the chat endpoint URL of each chat model's nearest deployment of `gateway` (`Gateway.nearest`), as
    its adapter builds it (nothing is sent), so that the first request after a restore finds it parsed. A request
    that cannot be built here is left to its first request, which will say why."""
    probe = ChatRequest.model_validate({"model": "priming", "messages": HI, "max_tokens": 1})
    for model, attempt in gateway.nearest().items():
        if gateway.config.models[model].kind != "chat":
            continue
        try:
            url = attempt.adapter.chat_request(probe, attempt.target, stream=False).request.url
        except Exception:  # noqa: BLE001, S112 - only a cache left cold
            continue
        parsed_url(url)
