"""A provider's failure told inside a 200 answer, relayed from a deployment that serves the Responses API itself
(`responses_api: native`): an `error` event or a `response.failed` event in a stream, a whole response with `"status":
"failed"`; or the failure OpenAI-compatible servers write part way in any stream, `{"error": ...}` with no `type`, which
ends the stream in the gateway's words. Its words go to the client, and into the gateway's store, as those of an error
answer do (`upstream_error`): without the provider's key, quoted back whole, masked, without its prefix or encoded.
In-process (`tests.support.inprocess`)."""

from __future__ import annotations

import base64
from collections.abc import AsyncIterator
from typing import Any

import httpx
import orjson
import pytest

from tests.support.inprocess import Served, serve

KEY = "sk-proj-Zq8xK2mNv4Rt7Yw1Bc3Df5Gh9Jk0Lp6Ss"
NATIVE = {"type": "openai", "api_key": "env:OPENAI_API_KEY", "base_url": "http://up/v1", "responses_api": "native"}
MODELS = {
    "m": {"deployments": [{"provider": "openai", "model": "gpt-4o-mini"}], "price": {"input": 1.0, "output": 2.0}}
}
BASE64 = base64.b64encode(f"Bearer {KEY}".encode()).decode()
# The key as OpenAI may quote it back: its own masked form, the key without its prefix, the authorization header in
# base64. Only the known secret whole is what `scrub` finds in an answer relayed as it came.
ECHOES = {
    "whole": f"Incorrect API key provided: {KEY}",
    "masked": f"Incorrect API key provided: {KEY[:11]}*****************{KEY[-4:]}",
    "headless": f"key {KEY[8:]} is not allowed here",
    "base64": f"authorization header {BASE64}",
}


def assert_no_part_of_the_key(text: str) -> None:
    for part in (KEY[8:20], KEY[-12:], f"*{KEY[-4:]}", BASE64[:16]):
        assert part not in text, text


def frame(kind: str, **payload: Any) -> bytes:
    return b"event: " + kind.encode() + b"\ndata: " + orjson.dumps({"type": kind, **payload}) + b"\n\n"


def response(status: str, error: dict[str, Any] | None = None) -> dict[str, Any]:
    usage = None if status == "in_progress" else {"input_tokens": 1, "output_tokens": 0, "total_tokens": 1}
    return {
        "id": "resp_1",
        "object": "response",
        "created_at": 1,
        "status": status,
        "model": "gpt-4o-mini",
        "output": [],
        "error": error,
        "usage": usage,
    }


async def relayed(answer: httpx.Response, stream: bool) -> tuple[httpx.Response, Served]:
    served = await serve(lambda request: answer, MODELS, provider=NATIVE, environ={"OPENAI_API_KEY": KEY})
    return await served.post("/v1/responses", {"model": "m", "input": "hi", "stream": stream}), served


def events(answer: httpx.Response) -> list[dict[str, Any]]:
    return [orjson.loads(line[6:]) for line in answer.text.splitlines() if line.startswith("data: ")]


def streamed(*frames: bytes) -> httpx.Response:
    return httpx.Response(200, content=b"".join(frames), headers={"content-type": "text/event-stream"})


@pytest.mark.parametrize("nested", [False, True], ids=["as-documented", "as-sent"])
@pytest.mark.parametrize("echo", list(ECHOES))
async def test_an_error_event_in_the_stream_is_relayed_without_the_key(echo: str, nested: bool) -> None:
    """OpenAI's reference puts the event's `code`, `message` and `param` at its top level; its stream puts them in
    an `error` member (openai/openai-dotnet#881)."""
    said = {"code": "server_error", "message": ECHOES[echo], "param": KEY[8:]}
    answer, _ = await relayed(
        streamed(
            frame("response.created", sequence_number=0, response=response("in_progress")),
            frame("error", sequence_number=1, **({"error": {"type": "server_error", **said}} if nested else said)),
        ),
        stream=True,
    )
    assert_no_part_of_the_key(answer.text)
    error = next(event for event in events(answer) if event["type"] == "error")
    assert error["sequence_number"] == 1
    relayed_words = error["error"] if nested else error
    assert relayed_words["code"] == "server_error"  # the rest as OpenAI sent it
    assert "[REDACTED]" in relayed_words["message"] and relayed_words["param"] == "[REDACTED]"


@pytest.mark.parametrize("echo", list(ECHOES))
async def test_a_response_failed_event_is_relayed_and_stored_without_the_key(echo: str) -> None:
    failed = response("failed", {"code": "server_error", "message": ECHOES[echo]})
    answer, served = await relayed(
        streamed(
            frame("response.created", sequence_number=0, response=response("in_progress")),
            frame("response.failed", sequence_number=1, response=failed),
        ),
        stream=True,
    )
    assert_no_part_of_the_key(answer.text)
    last = events(answer)[-1]
    assert last["type"] == "response.failed" and last["response"]["error"]["code"] == "server_error"
    assert "[REDACTED]" in last["response"]["error"]["message"]
    stored = await served.get(f"/v1/responses/{last['response']['id']}")
    assert stored.status_code == 200 and stored.json()["status"] == "failed"
    assert_no_part_of_the_key(stored.text)


@pytest.mark.parametrize("echo", list(ECHOES))
async def test_a_failed_response_answered_whole_is_relayed_and_stored_without_the_key(echo: str) -> None:
    failed = response("failed", {"code": "server_error", "message": ECHOES[echo]})
    answer, served = await relayed(httpx.Response(200, json=failed), stream=False)
    assert answer.status_code == 200 and answer.json()["status"] == "failed"
    assert "[REDACTED]" in answer.json()["error"]["message"]
    assert_no_part_of_the_key(answer.text)
    stored = await served.get(f"/v1/responses/{answer.json()['id']}")
    assert stored.status_code == 200
    assert_no_part_of_the_key(stored.text)


@pytest.mark.parametrize("stream", [False, True], ids=["whole", "streamed"])
@pytest.mark.parametrize("echo", list(ECHOES))
async def test_the_same_words_in_an_error_answer_are_relayed_without_the_key(echo: str, stream: bool) -> None:
    error = {"error": {"message": ECHOES[echo], "type": "server_error", "code": "server_error"}}
    answer, _ = await relayed(httpx.Response(500, json=error), stream=stream)
    assert answer.status_code == 502
    assert_no_part_of_the_key(answer.text)


# --- the same words from a provider that fails inside a stream, where the gateway writes the failure ---------------


def read_by_read(*frames: bytes) -> httpx.Response:
    """A 200 stream whose frames come one read at a time: the first begins the answer, a later one fails it."""

    async def reads() -> AsyncIterator[bytes]:
        for frame in frames:
            yield frame

    return httpx.Response(200, content=reads(), headers={"content-type": "text/event-stream"})


def chat_chunk(**delta: Any) -> bytes:
    choice = {"index": 0, "delta": delta, "finish_reason": None}
    chunk = {"id": "c1", "object": "chat.completion.chunk", "created": 1, "model": "gpt-4o-mini", "choices": [choice]}
    return b"data: " + orjson.dumps(chunk) + b"\n\n"


@pytest.mark.parametrize("echo", list(ECHOES))
async def test_a_translated_stream_that_fails_ends_without_the_key(echo: str) -> None:
    """A deployment of Chat Completions that fails part way (its `{"error": ...}` chunk): the translation's `error`
    and `response.failed`, and the response stored, are the gateway's, in words redacted as an error answer's."""
    translated = {**NATIVE, "responses_api": "translate"}
    error = {"error": {"message": ECHOES[echo], "type": "server_error", "param": KEY}}
    frames = (chat_chunk(role="assistant", content="Hel"), b"data: " + orjson.dumps(error) + b"\n\n")
    served = await serve(
        lambda request: read_by_read(*frames), MODELS, provider=translated, environ={"OPENAI_API_KEY": KEY}
    )
    answer = await served.post("/v1/responses", {"model": "m", "input": "hi", "stream": True})
    assert_no_part_of_the_key(answer.text)
    last = events(answer)[-1]
    assert last["type"] == "response.failed" and "[REDACTED]" in last["response"]["error"]["message"]
    stored = await served.get(f"/v1/responses/{last['response']['id']}")
    assert stored.status_code == 200
    assert_no_part_of_the_key(stored.text)


@pytest.mark.parametrize("echo", list(ECHOES))
async def test_a_gemini_stream_that_fails_ends_without_the_key(echo: str) -> None:
    """Gemini writes a failure part way as a chunk of its own, `{"error": {...}}`, in a 200 stream."""
    gemini = {"type": "gemini", "api_key": "env:GEMINI_API_KEY", "base_url": "http://up"}
    begun = {"candidates": [{"index": 0, "content": {"role": "model", "parts": [{"text": "Hel"}]}}]}
    error = {"error": {"code": 500, "message": ECHOES[echo], "status": "INTERNAL"}}
    frames = [b"data: " + orjson.dumps(chunk) + b"\r\n\r\n" for chunk in (begun, error)]
    served = await serve(
        lambda request: read_by_read(*frames), MODELS, provider=gemini, environ={"GEMINI_API_KEY": KEY}
    )
    for path, body in (
        ("/v1/chat/completions", {"messages": [{"role": "user", "content": "hi"}]}),
        ("/v1/responses", {"input": "hi"}),
    ):
        answer = await served.post(path, {"model": "m", "stream": True, **body})
        assert answer.status_code == 200 and "[REDACTED]" in answer.text
        assert_no_part_of_the_key(answer.text)


# --- a failure part way as OpenAI-compatible servers write it: `data: {"error": ...}`, no `type`, no event name -----

AZURE = {"type": "azure", "api_key": "env:AZURE_OPENAI_API_KEY", "base_url": "https://res.openai.azure.com"}


def untyped_failure(words: str) -> bytes:
    """Chat Completions' in-stream error, which OpenAI-compatible servers and proxies write in any stream."""
    said = {"message": words, "type": "invalid_request_error", "code": "invalid_api_key", "param": None}
    return b"data: " + orjson.dumps({"error": said}) + b"\n\n"


def begun(model: str = "gpt-4o-mini") -> tuple[bytes, ...]:
    """A Responses stream's opening, as far as a message's first words."""
    where = {"item_id": "msg_1", "output_index": 0, "content_index": 0}
    item = {"id": "msg_1", "type": "message", "role": "assistant", "status": "in_progress", "content": []}
    return (
        frame("response.created", sequence_number=0, response={**response("in_progress"), "model": model}),
        frame("response.output_item.added", sequence_number=1, output_index=0, item=item),
        frame("response.content_part.added", sequence_number=2, **where, part={"type": "output_text", "text": ""}),
        frame("response.output_text.delta", sequence_number=3, **where, delta="Hello"),
    )


@pytest.mark.parametrize("provider", [NATIVE, AZURE], ids=["openai-compatible", "azure"])
@pytest.mark.parametrize("echo", list(ECHOES))
async def test_an_untyped_error_part_way_ends_the_stream_in_the_gateways_words(
    echo: str, provider: dict[str, Any]
) -> None:
    """It was relayed as it came (`relayed_events` redacted only an event it read as `error`): `Incorrect API key
    provided: test-000000000000 (sk-test-0*****0000)`, the key without its prefix and its masked form, and through
    an Azure deployment 22 characters of its key; the openai SDK raised it as the stream's end, so the gateway's
    closing events were never read. It is the stream's error, as Chat Completions' parser reads it: the gateway's
    `error` and `response.failed`, in words redacted as an error answer's; charged, settled and kept as a stream that
    fails is."""
    environ = {"OPENAI_API_KEY": KEY, "AZURE_OPENAI_API_KEY": KEY}
    frames = (*begun(), untyped_failure(ECHOES[echo]))
    served = await serve(lambda request: read_by_read(*frames), MODELS, provider=provider, environ=environ)
    answer = await served.post("/v1/responses", {"model": "m", "input": "hi", "stream": True})
    assert answer.status_code == 200
    assert_no_part_of_the_key(answer.text)
    relayed_events = events(answer)
    assert [event.get("type") for event in relayed_events][-3:] == [
        "response.output_text.delta",
        "error",
        "response.failed",
    ]
    error, failed = relayed_events[-2:]
    # (at the status its code names, OpenAI's for a key it refuses: it was a 500 whatever it said)
    assert error["code"] == "upstream_error" and error["message"].startswith("upstream returned 401: ")
    assert "[REDACTED]" in error["message"] and failed["response"]["error"]["message"] == error["message"]
    assert failed["response"]["id"] == "resp_1" and failed["response"]["output"][0]["content"][0]["text"] == "Hello"
    [line] = await served.ledger()
    assert (line.status, line.cost_source) == (502, "estimate") and line.output_tokens > 0
    assert failed["response"]["cost"]["provider_usd"] == line.cost_usd
    stored = await served.get("/v1/responses/resp_1")
    assert stored.status_code == 200 and stored.json()["status"] == "failed"
    assert_no_part_of_the_key(stored.text)


async def test_an_untyped_error_before_the_streams_first_event_fails_over() -> None:
    """Before anything reached the client (here in the same read as the stream's opening), the next deployment is
    tried, as after any other failure there; the attempt that failed is free, as an error answer is. It began the
    client's stream with the server's words as they came."""
    two = {"m": {**MODELS["m"], "deployments": [{"provider": "openai", "model": m} for m in ("first", "second")]}}
    done = {**response("completed"), "model": "second"}

    def upstream(request: httpx.Request) -> httpx.Response:
        if orjson.loads(request.content)["model"] == "first":
            return streamed(*begun("first")[:1], untyped_failure(ECHOES["masked"]))
        return streamed(*begun("second"), frame("response.completed", sequence_number=4, response=done))

    served = await serve(upstream, two, provider=NATIVE, environ={"OPENAI_API_KEY": KEY})
    answer = await served.post("/v1/responses", {"model": "m", "input": "hi", "stream": True})
    assert answer.status_code == 200
    assert answer.headers["x-gateway-route"] == "openai/first@global=401, openai/second@global=200"  # (its code's)
    assert_no_part_of_the_key(answer.text)
    assert [event.get("type") for event in events(answer)][-1] == "response.completed"
    assert [line.status for line in await served.ledger()] == [200]


# --- a whole error object answering a stream's request (a server that ignores `stream`, OpenRouter's error) -------

ROUTER_ERROR = {"error": {"code": 502, "message": f"Provider returned error (key {KEY})", "metadata": {"p": "X"}}}


async def test_a_whole_error_object_answering_a_passed_through_stream_is_the_providers_error() -> None:
    """A 200 whose body is an error object alone, answering a stream asked of a deployment that serves the Responses
    API itself: it was the provider's malformed answer ("the provider's stream ended before its first event"), the
    request the next deployment served charged the failed attempt's worst case on top of its own ($0.008213 where its
    answer cost $0.000001, its route `=invalid_response`), and alone a 502 charged $0.008214 (4,096 output tokens)
    saying `x-should-retry: false`.
    It is the provider's error, as the same body answering the request whole is, and as a Chat Completions
    deployment's is answering a stream's request (tests/functional/test_costs_edges.py): free, its status (the one
    its `code` names) in the route, failed over, its words redacted."""
    two = {"m": {**MODELS["m"], "deployments": [{"provider": "openai", "model": m} for m in ("first", "second")]}}
    two["alone"] = {**MODELS["m"], "deployments": two["m"]["deployments"][:1]}
    # (The words it wrote counted: 0 tokens out for "Hello" is no count, `Pipeline._checked`.)
    usage = {"input_tokens": 1, "output_tokens": 2, "total_tokens": 3}
    done = {**response("completed"), "model": "second", "usage": usage}

    def upstream(request: httpx.Request) -> httpx.Response:
        if orjson.loads(request.content)["model"] == "first":
            return httpx.Response(200, json=ROUTER_ERROR)
        return streamed(*begun("second"), frame("response.completed", sequence_number=4, response=done))

    served = await serve(upstream, two, provider=NATIVE, environ={"OPENAI_API_KEY": KEY})
    answer = await served.post("/v1/responses", {"model": "m", "input": "hi", "stream": True})
    alone = await served.post("/v1/responses", {"model": "alone", "input": "hi", "stream": True})
    lines = {line.request_id: line for line in await served.ledger()}
    await served.gateway.aclose()
    assert answer.status_code == 200, answer.text
    assert answer.headers["x-gateway-route"] == "openai/first@global=502, openai/second@global=200"
    assert [event.get("type") for event in events(answer)][-1] == "response.completed"
    line = lines[answer.headers["x-request-id"]]
    assert (line.status, line.cost_source, line.cost_usd) == (
        200,
        "provider",
        5e-06,
    )  # (1 in at $1, 2 out at $2 a million)
    assert (alone.status_code, alone.headers["x-should-retry"]) == (502, "true"), alone.text
    error = alone.json()["error"]
    assert (error["code"], error["upstream_status"]) == ("upstream_error", 502)
    assert error["message"] == "upstream returned 502: Provider returned error (key [REDACTED])"
    assert_no_part_of_the_key(alone.text)
    line = lines[alone.headers["x-request-id"]]
    assert (line.status, line.cost_usd, line.route) == (502, 0.0, "openai/first@global=502")


@pytest.mark.parametrize(
    ("code", "status"),
    [
        ("rate_limit_exceeded", 429),
        (429, 429),  # (a status in `code`, as OpenRouter writes it)
        ("insufficient_quota", 502),  # (the deployment's account refused: not the client's rate limit)
        ("invalid_prompt", 400),
        ("context_length_exceeded", 400),
        ("server_error", 502),
        ("\u00b9\u00b2\u00b3", 502),  # (a code it does not know: `"¹²³".isdigit()`, which `int` refuses)
    ],
)
async def test_a_response_failed_is_settled_at_the_status_its_code_names(code: Any, status: int) -> None:
    """The line of a stream the provider ended with `response.failed` has the client's status for the error its code
    names, as the same error answered with its status has (`said_status`): a prompt past the context was a 502, the
    provider's failure, and a 429 in `code` a 502. A code of three digits `int` cannot read (`"¹²³"`) raised: the
    relay died as the gateway's bug (a traceback logged, the client's stream ended in the gateway's words, not the
    provider's `response.failed`), its line a 500 (found by review)."""
    failed = response("failed", {"code": code, "message": "it failed"})
    answer, served = await relayed(
        streamed(
            frame("response.created", sequence_number=0, response=response("in_progress")),
            frame("response.failed", sequence_number=1, response=failed),
        ),
        stream=True,
    )
    assert events(answer)[-1]["type"] == "response.failed"
    assert "the gateway failed while relaying" not in answer.text, answer.text
    [line] = await served.ledger()
    await served.gateway.aclose()
    assert line.status == status


@pytest.mark.parametrize(
    ("code", "status"),
    [
        ("rate_limit_exceeded", 429),
        (429, 429),  # (a status in `code`, as OpenRouter writes it)
        ("insufficient_quota", 502),  # (the deployment's account refused: not the client's rate limit)
        ("invalid_prompt", 400),
        ("server_error", 502),
    ],
)
@pytest.mark.parametrize("nested", [False, True], ids=["as-documented", "as-sent"])
async def test_an_error_event_with_no_closing_event_is_settled_at_the_status_its_code_names(
    code: Any, status: int, nested: bool
) -> None:
    """The provider's `error` event part way, with no `response.failed` after it: the stream's line was a 502
    `stream_interrupted` whatever the error said (a rate limit, a prompt refused), and the client got a second error
    event, the gateway's, after the provider's. It is settled at the status its code names, as a `response.failed` is,
    and the client's stream closes with the `response.failed` of the response begun, carrying the provider's error.
    Charged what it streamed (no usage reported: an estimate of it, never its worst case), on one line."""
    said = {"code": code, "message": "it failed", "param": None}
    answer, served = await relayed(
        streamed(
            frame("response.created", sequence_number=0, response=response("in_progress")),
            frame("response.output_text.delta", sequence_number=1, output_index=0, content_index=0, delta="Hel"),
            frame("error", sequence_number=2, **({"error": said} if nested else said)),
        ),
        stream=True,
    )
    [line] = await served.ledger()
    await served.gateway.aclose()
    kinds = [event["type"] for event in events(answer)]
    assert kinds == ["response.created", "response.output_text.delta", "error", "response.failed"], answer.text
    failed = events(answer)[-1]
    assert (failed["sequence_number"], failed["response"]["id"]) == (3, "resp_1")
    assert failed["response"]["error"]["code"] == code and failed["response"]["error"]["message"] == "it failed"
    assert (line.status, line.cost_source) == (status, "estimate"), line
    assert line.cost_usd > 0
