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
    # A compatible server's untyped error in Anthropic's stream, to a Chat Completions client (it was dropped: the
    # stream ended as one with no event, the provider's malformed answer); and Anthropic's error object alone,
    # answering a Messages stream passed through (a server that ignores `stream`: it was a malformed 200, charged).
    "chat-from-messages-untyped": (ANTHROPIC, "/v1/chat/completions", lambda said: sse({"error": said})),
    "messages-whole-error-object": (
        ANTHROPIC,
        "/v1/messages",
        lambda said: orjson.dumps({"type": "error", "error": said}),
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
    if path == "/v1/messages" and kind in ("overloaded", "router-status"):
        alone_status = 529  # (Anthropic's answer to an overload, a 503 or a 529, on its API: Claude Code falls back)
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


def anthropic_begun(text: str) -> bytes:
    """An Anthropic stream's opening events, up to a first delta of `text`."""
    message = {
        "id": "msg_1",
        "type": "message",
        "role": "assistant",
        "model": "x",
        "content": [],
        "stop_reason": None,
        "stop_sequence": None,
        "usage": {"input_tokens": 3, "output_tokens": 1},
    }
    block = {"type": "content_block_start", "index": 0, "content_block": {"type": "text", "text": ""}}
    delta = {"type": "content_block_delta", "index": 0, "delta": {"type": "text_delta", "text": text}}
    return (
        sse({"type": "message_start", "message": message}, "message_start")
        + sse(block, "content_block_start")
        + sse(delta, "content_block_delta")
    )


def responses_begun(text: str) -> bytes:
    """A Responses stream's opening events, as far as a message's first words (`text`)."""
    response = {"id": "resp_1", "object": "response", "created_at": 1, "status": "in_progress", "model": "x"}
    item = {"id": "msg_1", "type": "message", "role": "assistant", "status": "in_progress", "content": []}
    where = {"item_id": "msg_1", "output_index": 0, "content_index": 0}
    return (
        sse(
            {"type": "response.created", "sequence_number": 0, "response": {**response, "output": []}},
            "response.created",
        )
        + sse({"type": "response.output_item.added", "sequence_number": 1, "output_index": 0, "item": item})
        + sse({"type": "response.output_text.delta", "sequence_number": 2, **where, "delta": text})
    )


def responses_failed(said: dict[str, Any]) -> bytes:
    """The Responses API's own end of a stream that failed: `response.failed`, its error the provider's words."""
    response = {"id": "resp_1", "object": "response", "created_at": 1, "status": "failed", "model": "x"}
    failed = {**response, "output": [], "error": said, "usage": None}
    return sse({"type": "response.failed", "sequence_number": 3, "response": failed}, "response.failed")


# Each way a provider fails part way, after the client's first byte, as (the provider, the client's request, the
# stream's start, its failing event): an OpenAI-compatible server's `data: {"error": ...}` to a Chat Completions and
# a Messages client, Anthropic's own `error` event passed through and translated, a compatible server's untyped
# error in Anthropic's stream to a Chat Completions client, and the Responses API's own `response.failed` passed
# through.
BROKEN: dict[str, tuple[dict[str, Any], str, bytes, Any]] = {
    "chat": (COMPATIBLE, "/v1/chat/completions", chunk("Hel"), lambda said: sse({"error": said})),
    "messages-translated": (COMPATIBLE, "/v1/messages", chunk("Hel"), lambda said: sse({"error": said})),
    "messages-error-event": (
        ANTHROPIC,
        "/v1/messages",
        anthropic_begun("Hel"),
        lambda said: sse({"type": "error", "error": said}, "error"),
    ),
    "chat-from-messages-error-event": (
        ANTHROPIC,
        "/v1/chat/completions",
        anthropic_begun("Hel"),
        lambda said: sse({"type": "error", "error": said}, "error"),
    ),
    "chat-from-messages-untyped": (
        ANTHROPIC,
        "/v1/chat/completions",
        anthropic_begun("Hel"),
        lambda said: sse({"error": said}),
    ),
    "responses-failed": (NATIVE, "/v1/responses", responses_begun("Hel"), responses_failed),
}


async def broken_streams(way: str, said: dict[str, Any], requests: int) -> tuple[list[httpx.Response], Any, Any]:
    """`requests` streams of the model `m` (one deployment), each failing part way as `way` does with `said`: the
    answers, the ledger's lines and the gateway (to be closed)."""
    provider, path, opened, failing = BROKEN[way]

    async def reads() -> AsyncIterator[bytes]:
        yield opened  # (a read of its own: the client has it before the error comes)
        yield failing(said)

    def upstream(request: httpx.Request) -> httpx.Response:
        return httpx.Response(200, content=reads(), headers={"content-type": "text/event-stream"})

    models = {"m": {"deployments": [{"provider": "openai", "model": "x"}], "price": PRICE}}
    served = await serve(upstream, models, provider=provider, environ=KEYS)
    answers = [await served.post(path, asked(path, "m")) for _ in range(requests)]
    return answers, await served.ledger(), served.gateway


@pytest.mark.parametrize("way", [way for way in BROKEN if BROKEN[way][1] == "/v1/chat/completions"])
@pytest.mark.parametrize("kind", list(KINDS))
async def test_an_error_part_way_in_any_providers_stream_names_its_status(kind: str, way: str) -> None:
    """Anthropic's stream to a Chat Completions client, its `error` event or a compatible server's untyped
    `data: {"error": ...}`, which was dropped (an event with no `type` and no name is no event Anthropic's parser
    knew): the stream ended as cut short, a 502 `stream_interrupted` whatever the provider said."""
    said, status, *_ = KINDS[kind]
    [answer], [line], gateway = await broken_streams(way, said, 1)
    await gateway.aclose()
    error = next(orjson.loads(line[6:]) for line in answer.text.splitlines() if line.startswith('data: {"error"'))
    assert error["error"]["upstream_status"] == status, answer.text
    assert error["error"]["message"].startswith(f"upstream returned {status}: "), answer.text
    assert (line.status, line.cost_source) == (
        502,
        "estimate",
    )  # (no usage reported: what it streamed, never its worst)


# The Anthropic error type a Messages client is told for each error part way, as its unstreamed answer has it: a rate
# limit's, an overload's (a 529: Claude Code falls back on it), a request refused, any other failure an `api_error`.
ANTHROPIC_TYPES = {
    "rate-limit": "rate_limit_error",
    "anthropic-rate-limit": "rate_limit_error",
    "quota": "api_error",  # (the deployment's account refused: the operator's, never a rate limit to wait out)
    "refused": "invalid_request_error",
    "overloaded": "overloaded_error",
    "router-status": "overloaded_error",  # (a 503 is the provider's overload, as unstreamed: it was an `api_error`)
    "odd-code": "api_error",
}


@pytest.mark.parametrize("kind", list(KINDS))
async def test_a_translated_messages_stream_failing_part_way_names_the_anthropic_type_of_its_status(kind: str) -> None:
    """A deployment of another provider answering a Messages client, failing after the first byte: its `error` event
    was an `api_error` whatever the provider said, so Claude Code took an overload for a broken server (no switch to
    its fallback model) and a rate limit for one too."""
    said = KINDS[kind][0]
    [answer], [line], gateway = await broken_streams("messages-translated", said, 1)
    await gateway.aclose()
    events = [orjson.loads(row[6:]) for row in answer.text.splitlines() if row.startswith("data: ")]
    assert events[-1]["type"] == "error", answer.text
    assert events[-1]["error"]["type"] == ANTHROPIC_TYPES[kind], answer.text
    assert (line.cost_source, line.cost_usd > 0) == ("estimate", True)  # (what it streamed: "Hel")


@pytest.mark.parametrize("way", list(BROKEN))
@pytest.mark.parametrize(("kind", "counted"), [("overloaded", True), ("router-status", True), ("refused", False)])
async def test_a_deployment_failing_its_streams_part_way_is_taken_out_of_rotation(
    way: str, kind: str, counted: bool
) -> None:
    """A provider's failure after the client's first byte counts on its deployment's breaker as the same failure
    before it does (the next deployment's, a passing failure; not a request it refused): a deployment failing every
    stream part way went on being sent every request, its breaker closed by each stream's first event. A Responses
    stream the provider ends in its own `response.failed` counted neither way (nothing raised: five overloaded, and
    the sixth was sent again). Each failing stream is charged what it streamed (an estimate of it: no usage
    reported), on one line of its own."""
    said = KINDS[kind][0]
    gateway = None
    try:
        answers, lines, gateway = await broken_streams(way, said, 6)
        state = gateway.router.breakers.state("openai/x@global")
    finally:
        if gateway is not None:
            await gateway.aclose()
    assert len(lines) == (5 if counted else 6)  # (one each, and none for a request refused before it was sent)
    assert all(answer.headers["x-gateway-route"] == "openai/x@global=200" for answer in answers[:5])
    if counted:
        assert state == "open"
        assert answers[5].headers["x-gateway-route"] == "openai/x@global=breaker-open", answers[5].text
        assert answers[5].status_code == 503, answers[5].text
    else:
        assert state == "closed"
        assert answers[5].headers["x-gateway-route"] == "openai/x@global=200"
    assert [line.cost_source for line in lines[:5]] == ["estimate"] * 5
    assert all(line.cost_usd > 0 for line in lines[:5])


# Each way a provider's stream ends before its last event, with no word of why (its connection closed cleanly part
# way, as a proxy's idle timeout or a server restarting closes it), as (the provider, the client's request, the
# stream's start): Chat Completions with no finish reason, a translated Messages stream, Anthropic's own stream with
# no `message_delta`, a Responses stream with no terminal event.
CUT: dict[str, tuple[dict[str, Any], str, bytes]] = {
    "chat": (COMPATIBLE, "/v1/chat/completions", chunk("Hel")),
    "messages-translated": (COMPATIBLE, "/v1/messages", chunk("Hel")),
    "messages": (ANTHROPIC, "/v1/messages", anthropic_begun("Hel")),
    "responses": (NATIVE, "/v1/responses", responses_begun("Hel")),
}


@pytest.mark.parametrize("way", list(CUT))
async def test_a_deployment_whose_streams_end_before_their_last_event_is_taken_out_of_rotation(way: str) -> None:
    """A stream its provider ended before its answer was finished (`stream_interrupted`, a 502 on its line) is a
    deployment's failure, as a stream whose connection broke is: it counted neither way, so a deployment cutting every
    stream short was sent every request (six cut, six sent). Each is charged what it streamed, on one line."""
    provider, path, opened = CUT[way]

    def upstream(request: httpx.Request) -> httpx.Response:
        return httpx.Response(200, content=opened, headers={"content-type": "text/event-stream"})

    models = {"m": {"deployments": [{"provider": "openai", "model": "x"}], "price": PRICE}}
    served = await serve(upstream, models, provider=provider, environ=KEYS)
    try:
        answers = [await served.post(path, asked(path, "m")) for _ in range(6)]
        lines = await served.ledger()
        state = served.gateway.router.breakers.state("openai/x@global")
    finally:
        await served.gateway.aclose()
    assert all("the provider's stream ended before the" in answer.text for answer in answers[:5]), answers[0].text
    assert state == "open"
    assert answers[5].headers["x-gateway-route"] == "openai/x@global=breaker-open", answers[5].text
    assert [(line.status, line.cost_source) for line in lines] == [(502, "estimate")] * 5
    assert all(line.cost_usd > 0 for line in lines)


@pytest.mark.parametrize("way", ["chat", "responses-failed"])
async def test_a_finished_stream_clears_the_failures_before_it(way: str) -> None:
    """A stream that finishes is its deployment's success, as a whole answer is, and clears the failures before it:
    no finished stream was judged at all (`guarded` judged a stream only where it failed), so four streams failing
    part way, one finished and one more failing opened the breaker of a deployment that answered."""
    provider, path, opened, failing = BROKEN[way]
    said = KINDS["overloaded"][0]
    sent: list[int] = []
    finished = (
        chunk("Hello")
        + sse(
            {
                "id": "c1",
                "object": "chat.completion.chunk",
                "created": 1,
                "model": "x",
                "choices": [{"index": 0, "delta": {}, "finish_reason": "stop"}],
            }
        )
        + b"data: [DONE]\n\n"
    )
    if path == "/v1/responses":
        done = {
            "id": "resp_1",
            "object": "response",
            "created_at": 1,
            "status": "completed",
            "model": "x",
            "output": [],
            "usage": {"input_tokens": 3, "output_tokens": 1, "total_tokens": 4},
        }
        finished = responses_begun("Hello") + sse(
            {"type": "response.completed", "sequence_number": 3, "response": done}, "response.completed"
        )

    def upstream(request: httpx.Request) -> httpx.Response:
        sent.append(1)
        body = finished if len(sent) == 5 else opened + failing(said)
        return httpx.Response(200, content=body, headers={"content-type": "text/event-stream"})

    models = {"m": {"deployments": [{"provider": "openai", "model": "x"}], "price": PRICE}}
    served = await serve(upstream, models, provider=provider, environ=KEYS)
    try:
        answers = [await served.post(path, asked(path, "m")) for _ in range(9)]
        state = served.gateway.router.breakers.state("openai/x@global")
    finally:
        await served.gateway.aclose()
    assert len(sent) == 9 and state == "closed", [answer.headers["x-gateway-route"] for answer in answers]
    assert answers[4].status_code == 200 and "error" not in answers[4].text.replace('"error": null', ""), answers[
        4
    ].text


# `error.code` of a failed response (OpenAI's Responses API) that says the client's image is at fault, none of them
# `invalid_*`.
CLIENT_IMAGE_FAULTS = [
    "failed_to_download_image",
    "image_too_large",
    "image_content_policy_violation",
    "unsupported_image_media_type",
]


@pytest.mark.parametrize("code", CLIENT_IMAGE_FAULTS)
async def test_a_clients_bad_image_in_responses_streams_does_not_open_the_deployments_breaker(code: str) -> None:
    """Streamed Responses requests whose image the provider cannot use (`response.failed` with `code`) are the
    client's faults: the deployment answered each. Read as a 500, five of them opened its breaker, and every key's
    next request was refused 503 for its cooldown."""
    said = {"code": code, "message": "The image could not be used."}

    async def reads() -> AsyncIterator[bytes]:
        yield responses_begun("Hel")
        yield responses_failed(said)

    def upstream(request: httpx.Request) -> httpx.Response:
        return httpx.Response(200, content=reads(), headers={"content-type": "text/event-stream"})

    models = {"m": {"deployments": [{"provider": "openai", "model": "x"}], "price": PRICE}}
    served = await serve(upstream, models, provider=NATIVE, environ=KEYS)
    try:
        answers = [await served.post("/v1/responses", asked("/v1/responses", "m")) for _ in range(6)]
        state = served.gateway.router.breakers.state("openai/x@global")
    finally:
        await served.gateway.aclose()
    routes = [answer.headers.get("x-gateway-route") for answer in answers]
    assert state == "closed" and routes[5] == "openai/x@global=200", routes


async def test_a_stream_failing_after_the_provider_counted_its_input_is_one_line_at_those_counts() -> None:
    """A stream its provider fails part way after counting its input (Anthropic's `message_start`) settles on one
    ledger line, a 502, charged the input the provider counted (exact, as far as its usage came) and its output
    estimated from what was streamed, passed through and translated alike."""
    said = KINDS["overloaded"][0]
    lines = []
    for way in ("messages-error-event", "chat-from-messages-error-event"):
        answers, [line], gateway = await broken_streams(way, said, 1)
        await gateway.aclose()
        lines.append(line)
    assert [(line.status, line.input_tokens) for line in lines] == [(502, 3), (502, 3)]
    assert all(line.output_tokens >= 1 and line.cost_usd > 0 for line in lines)
