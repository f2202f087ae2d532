"""A provider's error written inside a 200 stream is the error its `code` or `type` names, as the same error
answered with its HTTP status is: a rate limit a 429, an account out of quota the deployment's refusal, a request the
provider refused a 400, an overload a 529, OpenRouter's status in `code` that status. Before the stream's first event
it is failed over (or not) and answered as that status is; after it, the in-stream error names the provider's status.
Each was a 500 whatever it said: failed over where the client's own error was not, its rate limit a 502 the SDKs
retried at once, and its refused quota retried by the SDKs. In-process (`tests.support.inprocess`)."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import httpx
import orjson
import pytest

from tests.support.inprocess import serve

PRICE = {"input": 1.0, "output": 2.0}
COMPATIBLE = {"type": "openai", "api_key": "env:OPENAI_API_KEY", "base_url": "http://up/v1"}
NATIVE = {**COMPATIBLE, "responses_api": "native"}
ANTHROPIC = {"type": "anthropic", "api_key": "env:ANTHROPIC_API_KEY", "base_url": "http://up"}
KEYS = {"OPENAI_API_KEY": "sk-test-000000000000", "ANTHROPIC_API_KEY": "sk-ant-test-000000000000"}

# Each error as providers and proxies write it in a stream, with the status it stands for, whether the next deployment
# is tried after it, and the client's status and `x-should-retry` where it was the only deployment (on OpenAI's APIs).
KINDS: dict[str, tuple[dict[str, Any], int, bool, int, str]] = {
    "rate-limit": (
        {"message": "Rate limit reached for requests", "type": "requests", "code": "rate_limit_exceeded"},
        429,
        True,
        429,  # (the one attempt, no wait named: the client's to wait out, as an unstreamed 429 is)
        "true",
    ),
    "anthropic-rate-limit": (
        {"message": "Number of requests exceeded", "type": "rate_limit_error"},
        429,
        True,
        429,
        "true",
    ),
    "quota": (
        {"message": "You exceeded your current quota", "type": "insufficient_quota", "code": "insufficient_quota"},
        429,
        True,
        502,  # (the deployment's account refused: the operator's to fix, never the client's to retry)
        "false",
    ),
    "refused": (
        {"message": "Invalid 'input': too long", "type": "invalid_request_error", "code": None, "param": "input"},
        400,
        False,
        400,
        "false",
    ),
    "overloaded": ({"message": "Overloaded", "type": "overloaded_error"}, 529, True, 502, "true"),
    "router-status": ({"message": "Provider returned error", "code": 503}, 503, True, 502, "true"),
    # A code of three digits Python's `int` cannot read (`"¹²³".isdigit()` is true): a code it does not know, a 500.
    # It raised ValueError: the provider's error taken for its malformed stream, charged its reserved worst case.
    "odd-code": ({"message": "busy", "code": "\u00b9\u00b2\u00b3"}, 500, True, 502, "true"),
}


def sse(data: dict[str, Any], event: str | None = None) -> bytes:
    return (b"event: " + event.encode() + b"\n" if event else b"") + b"data: " + orjson.dumps(data) + b"\n\n"


def chunk(content: str) -> bytes:
    choice = {"index": 0, "delta": {"role": "assistant", "content": content}, "finish_reason": None}
    return sse({"id": "c1", "object": "chat.completion.chunk", "created": 1, "model": "x", "choices": [choice]})


# Each way a stream carries the error, as (the provider, the client's request, the stream's failing first event):
# OpenAI-compatible servers' `data: {"error": ...}` in Chat Completions, in a Responses stream passed through and in
# a Messages stream passed through to an Anthropic-compatible server; the Responses API's own `error` event; the
# Chat Completions error under a Messages client's translation; and Anthropic's own `error` event, passed through
# and translated.
PATHS: dict[str, tuple[dict[str, Any], str, Any]] = {
    "chat": (COMPATIBLE, "/v1/chat/completions", lambda said: sse({"error": said})),
    "responses-untyped": (NATIVE, "/v1/responses", lambda said: sse({"error": said})),
    "responses-error-event": (
        NATIVE,
        "/v1/responses",
        lambda said: sse({"type": "error", "sequence_number": 0, "error": said}, "error"),
    ),
    "messages-untyped": (ANTHROPIC, "/v1/messages", lambda said: sse({"error": said})),
    "messages-translated": (COMPATIBLE, "/v1/messages", lambda said: sse({"error": said})),
    "messages-error-event": (ANTHROPIC, "/v1/messages", lambda said: sse({"type": "error", "error": said}, "error")),
    "chat-from-messages-error-event": (
        ANTHROPIC,
        "/v1/chat/completions",
        lambda said: sse({"type": "error", "error": said}, "error"),
    ),
}


def asked(path: str, model: str) -> dict[str, Any]:
    if path == "/v1/responses":
        return {"model": model, "input": "hi", "stream": True}
    return {"model": model, "messages": [{"role": "user", "content": "hi"}], "max_tokens": 100, "stream": True}


@pytest.mark.parametrize("kind", list(KINDS))
@pytest.mark.parametrize("way", list(PATHS))
async def test_an_error_opening_a_stream_is_failed_over_and_answered_as_its_status_is(way: str, kind: str) -> None:
    said, status, fails_over, alone_status, should_retry = KINDS[kind]
    provider, path, failing = PATHS[way]

    def upstream(request: httpx.Request) -> httpx.Response:
        return httpx.Response(200, content=failing(said), headers={"content-type": "text/event-stream"})

    deployments = [{"provider": "openai", "model": model} for model in ("first", "second")]
    models = {
        "pair": {"deployments": deployments, "price": PRICE},
        "alone": {"deployments": deployments[:1], "price": PRICE},
    }
    served = await serve(upstream, models, provider=provider, environ=KEYS)
    pair = await served.post(path, asked(path, "pair"))
    alone = await served.post(path, asked(path, "alone"))
    lines = await served.ledger()
    await served.gateway.aclose()
    tried = ["first", "second"] if fails_over else ["first"]
    assert pair.headers["x-gateway-route"] == ", ".join(f"openai/{model}@global={status}" for model in tried)
    assert alone.headers["x-gateway-route"] == f"openai/first@global={status}", alone.text
    if path == "/v1/messages" and kind == "overloaded":
        alone_status = 529  # (Anthropic's own answer to an overload, on its API: Claude Code falls back on it)
    assert (alone.status_code, alone.headers["x-should-retry"]) == (alone_status, should_retry), alone.text
    assert "[DONE]" not in alone.text and "event:" not in alone.text  # (an error answer, not a stream)
    assert [(line.cost_usd, line.output_tokens) for line in lines] == [(0.0, 0), (0.0, 0)]  # (an error costs nothing)


@pytest.mark.parametrize("kind", list(KINDS))
async def test_an_error_part_way_names_the_status_it_stands_for(kind: str) -> None:
    """After the stream's first event the error ends it, in the gateway's in-stream error, which names the provider's
    status (`upstream_status`) as an error answer does: it said 500."""
    said, status, *_ = KINDS[kind]

    async def reads() -> AsyncIterator[bytes]:
        yield chunk("Hel")  # (a read of its own: the client has it before the error comes)
        yield sse({"error": said})

    def upstream(request: httpx.Request) -> httpx.Response:
        return httpx.Response(200, content=reads(), headers={"content-type": "text/event-stream"})

    served = await serve(upstream, {"m": {"deployments": [{"provider": "openai", "model": "x"}], "price": PRICE}})
    answer = await served.post("/v1/chat/completions", asked("/v1/chat/completions", "m"))
    await served.gateway.aclose()
    error = next(orjson.loads(line[6:]) for line in answer.text.splitlines() if line.startswith('data: {"error"'))
    assert error["error"]["upstream_status"] == status, answer.text
    assert error["error"]["message"].startswith(f"upstream returned {status}: "), answer.text
