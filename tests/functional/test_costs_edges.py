"""What a request costs and where its line is reported, at the edges: an error answer, an attempt that timed out
before the one that answered, a request that ends in the next budget period, a price found by alias, embeddings'
`user`. In-process (`tests.support.inprocess`)."""

from __future__ import annotations

import asyncio
import datetime
import functools
import gzip
import json
import time
from collections.abc import Callable
from typing import Any

import httpx
import openai
import orjson
import pytest

from adapters.sigv4 import Credentials
from adapters.store.dynamo_client import DynamoDBClient
from adapters.store.dynamodb import DynamoDBStore
from handler.pipeline import budgets, routing
from handler.pipeline.budgets import period_of
from handler.pipeline.key_admin import KeyAdmin
from handler.pipeline.keys import KeyService
from handler.ports import KeyRecord, UsageQuery
from tests.functional.conftest import param_store_url
from tests.support.dynamo import DynamoServer, SlowAnswers, clear_of_minute_end
from tests.support.inprocess import PROVIDER_KEYS, Served, serve

HI = [{"role": "user", "content": "hi"}]


def completion(model: str = "gpt-4o-mini") -> dict[str, Any]:
    return {
        "id": "c1",
        "object": "chat.completion",
        "created": 1,
        "model": model,
        "choices": [{"index": 0, "message": {"role": "assistant", "content": "hi"}, "finish_reason": "stop"}],
        "usage": {"prompt_tokens": 10, "completion_tokens": 5, "total_tokens": 15},
    }


MODEL = {"deployments": [{"provider": "openai", "model": "gpt-4o-mini"}], "price": {"input": 1.0, "output": 2.0}}
COUNT = "/v1/messages/count_tokens"
# The providers a request is passed through to as written: the Responses API served natively, an Anthropic-compatible
# server's Messages API (and its key, beside the OpenAI one).
NATIVE_RESPONSES = {
    "type": "openai",
    "api_key": "env:OPENAI_API_KEY",
    "base_url": "http://up/v1",
    "responses_api": "native",
}
ANTHROPIC = {"type": "anthropic", "api_key": "env:ANTHROPIC_API_KEY", "base_url": "http://up"}
ANTHROPIC_KEYS = {**PROVIDER_KEYS, "ANTHROPIC_API_KEY": "sk-ant-test-000000000000"}


@pytest.fixture(params=["sqlite", "dynamodb"])
def store_url(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> str:
    """A store of the test's own, on each store in turn."""
    return param_store_url(request, tmp_path_factory, "edges")


async def test_an_error_answer_costs_nothing_not_even_the_prices_per_request() -> None:
    """The provider answered 500: the line is written at no cost, so neither a per-request price (web search)
    nor the gateway's fee is charged (they were: $0.034 for an answer that never came)."""

    def failing(request: httpx.Request) -> httpx.Response:
        return httpx.Response(500, json={"error": {"message": "boom", "type": "server_error"}})

    served = await serve(
        failing, {"m": MODEL}, fee={"percent": 10, "per_request_usd": 0.001}, priced_options={"web_search_usd": 0.03}
    )
    answer = await served.post("/v1/chat/completions", {"model": "m", "messages": HI, "web_search_options": {}})
    assert answer.status_code == 502
    assert (answer.headers["x-gateway-cost-usd"], answer.headers["x-gateway-fee-usd"]) == ("0", "0")
    [line] = await served.ledger()
    assert (line.status, line.cost_usd, line.fee_usd) == (502, 0.0, 0.0)  # the client's status
    await served.gateway.aclose()


async def test_the_request_line_and_its_metrics_name_the_providers_cost_and_the_spend_apart(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """The request's log line said `cost_usd` for the providers' cost (as the ledger and `x-gateway-cost-usd` do),
    and the EMF line beside it, in the same log stream, `cost_usd` for that cost plus the fee, which the spend alarm
    summed as "USD of provider cost": with a 10% fee, a $50 alarm fired at $45.45 of it. Found by review."""
    from handler.telemetry import observability

    monkeypatch.setattr(observability, "METRICS_ON", True)
    served = await serve(lambda request: httpx.Response(200, json=completion()), {"m": MODEL}, fee={"percent": 10})
    capsys.readouterr()
    answer = await served.post("/v1/chat/completions", {"model": "m", "messages": HI})
    assert answer.status_code == 200
    written = [orjson.loads(line) for line in capsys.readouterr().out.splitlines() if line.startswith("{")]
    [logged] = [line for line in written if line.get("message") == "request"]
    [emf] = [line for line in written if "_aws" in line]
    cost, fee = float(answer.headers["x-gateway-cost-usd"]), float(answer.headers["x-gateway-fee-usd"])
    assert (logged["cost_usd"], logged["fee_usd"]) == pytest.approx((cost, fee)) and fee == pytest.approx(cost / 10)
    names = {metric["Name"] for metric in emf["_aws"]["CloudWatchMetrics"][0]["Metrics"]}
    assert "spend_usd" in names and "cost_usd" not in names and "cost_usd" not in emf
    assert emf["spend_usd"] == pytest.approx([cost + fee])
    await served.gateway.aclose()


async def test_an_answer_the_gateway_cannot_read_is_charged_its_worst_case() -> None:
    """A 200 whose body is no completion, and a stream asked for and answered with a JSON body in a 200 that is
    neither a completion nor an error object (no event, no completion to stream from): the provider answered, so the
    request has its line, its status the client's 502, the route naming what came back. The provider ran the request
    and may bill it for what the gateway cannot see, so the line is its reserved worst case and the client is not told
    to retry at once: it was $0 labelled `provider`, with `x-should-retry: true` (found by review). (A whole
    completion where a stream was asked for is streamed from: tests/functional/test_stream_endings.py.)"""

    def unreadable(request: httpx.Request) -> httpx.Response:
        if b'"stream":true' in request.content.replace(b" ", b""):
            return httpx.Response(200, json={"message": "overloaded"})  # (an error object alone: the next test)
        return httpx.Response(200, text="<html>maintenance</html>", headers={"content-type": "text/html"})

    served = await serve(unreadable, {"m": MODEL})
    plain = await served.post("/v1/chat/completions", {"model": "m", "messages": HI})
    streamed = await served.post("/v1/chat/completions", {"model": "m", "messages": HI, "stream": True})
    assert (plain.status_code, streamed.status_code) == (502, 502)
    assert (plain.headers["x-should-retry"], streamed.headers["x-should-retry"]) == ("false", "false")
    lines = await served.ledger()
    assert sorted((line.status, line.cost_source, line.route) for line in lines) == [
        (502, "reserved", "openai/gpt-4o-mini@global=invalid_json"),  # the page
        (502, "reserved", "openai/gpt-4o-mini@global=invalid_response"),  # the body where a stream was asked
    ], lines
    assert all((line.cost_usd or 0) > 0 and line.output_tokens > 0 for line in lines)
    await served.gateway.aclose()


# OpenRouter's answer to an error once the model started ("Errors and Debugging": the status is 200, and the error
# is in the body), with the status it would have answered in `error.code`; an OpenAI key in it, quoted back.
ROUTER_ERROR = {
    "error": {
        "code": 502,
        "message": f"Provider returned error (key {PROVIDER_KEYS['OPENAI_API_KEY']})",
        "metadata": {"provider_name": "X"},
    }
}


async def test_a_whole_answer_that_is_an_error_object_alone_is_the_providers_error_charged_nothing() -> None:
    """A 200 whose body is an error object and nothing else, as OpenRouter answers an error once the model started,
    on Chat Completions, embeddings and the Responses API passed through: it was the provider's malformed success,
    "upstream answered without choices", its words lost and its line the reserved worst case ($0.00201 for a cap of
    1,000 tokens, for an answer nobody billed; found by review). It is the provider's error at the status its `code`
    names, its words relayed (redacted), at no cost, the next deployment tried as after any 502. Streamed, the same
    object already ended the stream in the provider's words at no cost."""

    def failing(request: httpx.Request) -> httpx.Response:
        if b"healthy" in request.content:
            return httpx.Response(200, json=completion("healthy"))
        return httpx.Response(200, json=ROUTER_ERROR)

    router = {"type": "openai", "api_key": "env:OPENAI_API_KEY", "base_url": "http://up/v1", "responses_api": "native"}
    embedding = {"deployments": [{"provider": "openai", "model": "e"}], "price": {"input": 1.0}, "kind": "embedding"}
    healthy = {"provider": "openai", "model": "healthy"}
    models = {"m": MODEL, "e": embedding, "then": {**MODEL, "deployments": [*MODEL["deployments"], healthy]}}
    served = await serve(failing, models, provider=router)
    asked = {
        "/v1/chat/completions": {"model": "m", "messages": HI, "max_tokens": 1000},
        "/v1/embeddings": {"model": "e", "input": "hi"},
        "/v1/responses": {"model": "m", "input": "hi", "max_output_tokens": 1000},
    }
    for path, body in asked.items():
        answer = await served.post(path, body)
        error = answer.json()["error"]
        assert (answer.status_code, error["upstream_status"]) == (502, 502), (path, answer.text)
        assert error["message"] == "upstream returned 502: Provider returned error (key [REDACTED])", path
        assert answer.headers["x-should-retry"] == "true"  # (the one attempt, a passing failure, as any 502's)
    lines = await served.ledger()
    assert [(line.status, line.cost_usd, line.output_tokens, line.route) for line in lines] == [
        (502, 0.0, 0, "openai/gpt-4o-mini@global=502"),
        (502, 0.0, 0, "openai/e@global=502"),
        (502, 0.0, 0, "openai/gpt-4o-mini@global=502"),
    ]
    fell_over = await served.post("/v1/chat/completions", {"model": "then", "messages": HI})
    assert fell_over.status_code == 200, fell_over.text
    assert fell_over.headers["x-gateway-route"] == "openai/gpt-4o-mini@global=502, openai/healthy@global=200"
    await served.gateway.aclose()


# Each API's request of `model`, whole or streamed: Chat Completions, and the Messages and Responses APIs translated
# to a compatible server's Chat Completions (`responses_api` is `translate` off api.openai.com).
def asked_of(api: str, model: str, stream: bool) -> tuple[str, dict[str, Any]]:
    if api == "chat":
        return "/v1/chat/completions", {"model": model, "messages": HI, "stream": stream}
    if api == "messages":
        return "/v1/messages", {"model": model, "messages": HI, "max_tokens": 1000, "stream": stream}
    return "/v1/responses", {"model": model, "input": "hi", "stream": stream}


@pytest.mark.parametrize("api", ["chat", "messages", "responses"])
async def test_a_200_error_object_costs_a_streamed_request_nothing_as_it_costs_a_whole_one(api: str) -> None:
    """The same error object answering a request that streams (a server that answers it whole, as
    `WholeBodySniffer` reads it) was taken for the provider's malformed 200 ("the provider's stream ended before its
    first event"), charged as an answer the provider may have billed: the request its next deployment served was
    charged the failed attempt's worst case on top of its own, $0.008222 `reserved` on Chat Completions where the same
    request not streamed cost $0.00002 (on the Messages API, with its cap of 1,000, $0.002042), its route
    `=invalid_response` (the provider's 502 lost); alone, a 502 charged $0.008202, `x-should-retry: false`. It is the
    provider's error, as the whole answer's is: free, its status in the route, failed over (found by review)."""

    def failing_first(request: httpx.Request) -> httpx.Response:
        if orjson.loads(request.content)["model"] == "errs":
            return httpx.Response(200, json=ROUTER_ERROR)
        return httpx.Response(200, json=completion("good"))

    deployments = [{"provider": "openai", "model": "errs"}, {"provider": "openai", "model": "good"}]
    models = {"m": {**MODEL, "deployments": deployments}, "alone": {**MODEL, "deployments": deployments[:1]}}
    served = await serve(failing_first, models)
    answers = [await served.post(*asked_of(api, "m", stream)) for stream in (False, True)]
    alone = await served.post(*asked_of(api, "alone", True))
    lines = {line.request_id: line for line in await served.ledger()}
    await served.gateway.aclose()
    assert [answer.status_code for answer in answers] == [200, 200], answers[1].text
    route = "openai/errs@global=502, openai/good@global=200"
    assert [answer.headers["x-gateway-route"] for answer in answers] == [route, route]
    whole, streamed = (lines[answer.headers["x-request-id"]] for answer in answers)
    assert (streamed.cost_usd, streamed.cost_source) == (whole.cost_usd, whole.cost_source) == (2e-05, "provider")
    assert (alone.status_code, alone.headers["x-should-retry"]) == (502, "true"), alone.text
    assert "Provider returned error (key [REDACTED])" in alone.text
    line = lines[alone.headers["x-request-id"]]
    assert (line.status, line.cost_usd, line.route) == (502, 0.0, "openai/errs@global=502")


# A whole answer of the API passed through (a compatible server that ignores `stream`), 10 tokens in and 5 out.
WHOLE_NATIVE = {
    "responses": {
        "id": "resp_1",
        "object": "response",
        "created_at": 1,
        "status": "completed",
        "model": "gpt-4o-mini",
        "output": [
            {
                "id": "msg_1",
                "type": "message",
                "role": "assistant",
                "status": "completed",
                "content": [{"type": "output_text", "text": "hello", "annotations": []}],
            }
        ],
        "usage": {"input_tokens": 10, "output_tokens": 5, "total_tokens": 15},
    },
    "messages": {
        "id": "msg_1",
        "type": "message",
        "role": "assistant",
        "model": "claude-x",
        "content": [{"type": "text", "text": "hello"}],
        "stop_reason": "end_turn",
        "stop_sequence": None,
        "usage": {"input_tokens": 10, "output_tokens": 5},
    },
}


@pytest.mark.parametrize("api", ["responses", "messages"])
async def test_a_whole_answer_to_a_passed_through_stream_is_streamed_and_billed_on_its_usage(api: str) -> None:
    """A server that ignores `stream` and answers a stream passed through to its API (the Responses API natively,
    Messages to an Anthropic-compatible server) with the whole answer: the client gets the stream of its API, the
    answer's text in it, and the line is the provider's 10 in and 5 out ($0.00002). It was taken for the provider's
    malformed answer, a 502 charged its reserved worst case (32 in and 4,000 out on the Responses API, 44 and 4,000
    on Messages), as a Chat Completions deployment's whole answer never was (found by review)."""
    provider = ANTHROPIC if api == "messages" else NATIVE_RESPONSES
    whole = WHOLE_NATIVE[api]
    served = await serve(
        lambda request: httpx.Response(200, json=whole), {"m": MODEL}, provider=provider, environ=ANTHROPIC_KEYS
    )
    if api == "messages":
        answer = await served.post("/v1/messages", {"model": "m", "messages": HI, "max_tokens": 4000, "stream": True})
    else:
        body = {"model": "m", "input": "hi", "stream": True, "max_output_tokens": 4000}
        answer = await served.post("/v1/responses", body)
    [line] = await served.ledger()
    await served.gateway.aclose()
    assert (line.status, line.cost_source, line.input_tokens, line.output_tokens) == (200, "provider", 10, 5), (
        answer.text
    )
    assert line.cost_usd == pytest.approx(2e-05)
    said = [orjson.loads(row[6:]) for row in answer.text.splitlines() if row.startswith("data: ")]
    if api == "messages":
        assert [event["type"] for event in said][-2:] == ["message_delta", "message_stop"]
        assert [event["delta"]["text"] for event in said if event["type"] == "content_block_delta"] == ["hello"]
        assert said[-2]["cost"]["total_usd"] == pytest.approx(2e-05)
    else:
        assert [event["type"] for event in said][-1] == "response.completed"
        assert [event["delta"] for event in said if event["type"] == "response.output_text.delta"] == ["hello"]
        assert said[-1]["response"]["cost"]["total_usd"] == pytest.approx(2e-05)


UNREADABLE_USAGE = [10.7, 1e300, int("9" * 400), "12", True]


@pytest.mark.parametrize("tokens", UNREADABLE_USAGE, ids=["float", "huge", "bigint", "numeral", "bool"])
async def test_a_success_whose_usage_cannot_be_read_is_never_free(tokens: float) -> None:
    """A completion whose usage the gateway cannot read (a fraction, 1e300, a 400-digit count), and a gzip body it
    never asked for: the provider ran it and bills it, but the line was 0/0 tokens at $0, labelled `provider`, and
    the client was told to retry (found by review). It is charged the reserved worst case, the next deployment
    answering beside it as for any attempt the provider may bill, and a retry is not invited."""
    answer = completion()
    answer["usage"] = {"prompt_tokens": tokens, "completion_tokens": tokens, "total_tokens": tokens}
    raw = json.dumps(answer).encode()  # (orjson writes no integer past 64 bits)

    def unusable(request: httpx.Request) -> httpx.Response:
        if b"gpt-4o-mini" not in request.content:
            return httpx.Response(200, json=completion("fallback"))
        return httpx.Response(200, content=raw, headers={"content-type": "application/json"})

    fallback = {"provider": "openai", "model": "fallback"}
    models = {"m": MODEL, "then": {**MODEL, "deployments": [*MODEL["deployments"], fallback]}}
    served = await serve(unusable, models)
    alone = await served.post("/v1/chat/completions", {"model": "m", "messages": HI})
    assert alone.status_code == 502 and alone.headers["x-should-retry"] == "false"
    [line] = await served.ledger()
    assert (line.status, line.cost_source) == (502, "reserved") and (line.cost_usd or 0) > 0
    worst = line.cost_usd or 0
    fell_over = await served.post("/v1/chat/completions", {"model": "then", "messages": HI})
    assert fell_over.status_code == 200 and fell_over.headers["x-gateway-route"].endswith("fallback@global=200")
    [*_, line] = await served.ledger()
    assert (line.status, line.cost_source) == (200, "reserved") and (line.cost_usd or 0) > worst
    await served.gateway.aclose()


GEMINI = {"type": "gemini", "api_key": "env:GEMINI_API_KEY", "base_url": "http://up"}


def responses_answer(count: Any) -> dict[str, Any]:
    said = {"type": "message", "id": "msg_1", "role": "assistant", "status": "completed", "content": []}
    usage = {"input_tokens": count, "output_tokens": 9, "total_tokens": 21}
    return {"id": "resp_1", "object": "response", "created_at": 1, "status": "completed", "model": "gpt-4o-mini"} | {
        "output": [said],
        "usage": usage,
    }


def unreadable_answer(reader: str, count: Any) -> httpx.Response:
    """An answer of `reader`'s API whose input count is `count`."""
    if reader.startswith("gemini"):
        candidate = {"content": {"role": "model", "parts": [{"text": "hi"}]}, "finishReason": "STOP", "index": 0}
        meta = {"promptTokenCount": count, "candidatesTokenCount": 9, "totalTokenCount": 21}
        if reader == "gemini":
            return httpx.Response(200, json={"candidates": [candidate], "usageMetadata": meta})
        said = {"candidates": [{**candidate, "finishReason": None}], "usageMetadata": {"promptTokenCount": 12}}
        last = {"candidates": [candidate], "usageMetadata": meta}
        body = b"".join(b"data: " + orjson.dumps(event) + b"\r\n\r\n" for event in (said, last))
        return httpx.Response(200, content=body, headers={"content-type": "text/event-stream"})
    answer = responses_answer(count)
    if reader == "responses-whole":
        return httpx.Response(200, json=answer)
    frames = [
        {"type": "response.created", "sequence_number": 0, "response": {**answer, "status": "in_progress"}},
        {"type": "response.output_text.delta", "sequence_number": 1, "item_id": "msg_1", "delta": "hi"},
        {"type": "response.completed", "sequence_number": 2, "response": answer},
    ]
    body = b"".join(b"event: " + f["type"].encode() + b"\ndata: " + orjson.dumps(f) + b"\n\n" for f in frames)
    return httpx.Response(200, content=body, headers={"content-type": "text/event-stream"})


@pytest.mark.parametrize("count", [10.7, "12", True], ids=["fraction", "numeral", "bool"])
@pytest.mark.parametrize("reader", ["responses-whole", "responses-streamed", "gemini", "gemini-streamed"])
async def test_a_count_that_is_no_plain_integer_is_unreadable_in_every_reader(reader: str, count: Any) -> None:
    """The rule Chat Completions follows, for the Responses API passed through and Gemini, whole and streamed: a
    usage count that is not a plain integer is no usage, the answer charged its reserved worst case
    (`=invalid_response`). The Responses reader truncated `10.7` to 10 and took `"12"` and `true` as 12 and 1,
    Gemini's read each as 0 (the prompt free), all charged as the provider's count (found by review)."""
    gemini = reader.startswith("gemini")
    provider = GEMINI if gemini else NATIVE_RESPONSES
    environ = {**PROVIDER_KEYS, "GEMINI_API_KEY": "gm-test-000000000000"}
    model = {**MODEL, "deployments": [{"provider": "openai", "model": "gemini-2.5-flash"}]} if gemini else MODEL
    served = await serve(
        lambda request: unreadable_answer(reader, count), {"m": model}, provider=provider, environ=environ
    )
    stream = reader.endswith("-streamed")
    if gemini:
        body = {"model": "m", "messages": HI, "max_tokens": 100, "stream": stream}
        answer = await served.post("/v1/chat/completions", body)
    else:
        body = {"model": "m", "input": "hi", "stream": stream, "max_output_tokens": 100}
        answer = await served.post("/v1/responses", body)
    [line] = await served.ledger()
    assert (line.cost_source, line.route.endswith("=invalid_response")) == ("reserved", True), (line, answer.text)
    assert line.cost_usd == pytest.approx((line.input_tokens * 1.0 + 100 * 2.0) / 1e6)  # the worst case reserved
    if not stream:  # (a stream's head went before its usage: its error is in the stream)
        assert (answer.status_code, answer.headers["x-should-retry"]) == (502, "false")
    await served.gateway.aclose()


# The usage an OpenAI-compatible server built on LiteLLM writes (LiteLLM's `PromptTokensDetailsWrapper`; avalai.ir's
# documented answers): the details' counts it has none of are null.
LITELLM_USAGE = {
    "completion_tokens": 5,
    "prompt_tokens": 28,
    "total_tokens": 33,
    "completion_tokens_details": None,
    "prompt_tokens_details": {"audio_tokens": None, "cached_tokens": None, "text_tokens": 28, "image_tokens": None},
}


async def chat_answered(content: str, usage: dict[str, Any], stream: bool) -> tuple[httpx.Response, Any]:
    """A Chat Completions request for model `m` answered `content` with `usage` (its last chunk's when `stream`), and
    its ledger line."""
    head = {"id": "c", "created": 1, "model": "x"}
    message = {"role": "assistant", "content": content}
    whole = {
        **head,
        "object": "chat.completion",
        "choices": [{"index": 0, "message": message, "finish_reason": "stop"}],
        "usage": usage,
    }
    chunks = [
        {**head, "object": "chat.completion.chunk", "choices": [{"index": 0, "delta": message}]},
        {**head, "object": "chat.completion.chunk", "choices": [{"index": 0, "delta": {}, "finish_reason": "stop"}]},
        {**head, "object": "chat.completion.chunk", "choices": [], "usage": usage},
    ]
    events = b"".join(b"data: " + orjson.dumps(chunk) + b"\n\n" for chunk in chunks) + b"data: [DONE]\n\n"

    def upstream(request: httpx.Request) -> httpx.Response:
        if stream:
            return httpx.Response(200, content=events, headers={"content-type": "text/event-stream"})
        return httpx.Response(200, json=whole)

    served = await serve(upstream, {"m": MODEL})
    body = {"model": "m", "messages": HI, "max_tokens": 4000, "stream": stream}
    answer = await served.post("/v1/chat/completions", body)
    [line] = await served.ledger()
    await served.gateway.aclose()
    return answer, line


@pytest.mark.parametrize("stream", [False, True], ids=["whole", "streamed"])
async def test_a_null_count_in_a_chat_usage_is_0_and_the_answer_billed_on_its_usage(stream: bool) -> None:
    """A null count is 0, as `wire.usage_count` reads it for every other reader (the Responses API's
    `"cached_tokens": null`). The strict Chat Completions counts refused it: an answer of 28 in and 5 out was the
    provider's malformed answer, a 502 charged its reserved worst case (10 in, 4,000 out: $0.00801 for $0.000038;
    found by review)."""
    answer, line = await chat_answered("hello", LITELLM_USAGE, stream)
    assert (answer.status_code, b'"error"' in answer.content) == (200, False), answer.text
    assert (line.cost_source, line.input_tokens, line.output_tokens) == ("provider", 28, 5)
    assert line.cost_usd == pytest.approx(3.8e-05)  # (28 in at $1, 5 out at $2 a million)


TEXT = "word " * 600  # 3,000 characters written: 1,000 tokens out, estimated


@pytest.mark.parametrize("stream", [False, True], ids=["whole", "streamed"])
@pytest.mark.parametrize(
    "usage",
    [
        {"prompt_tokens": 10, "completion_tokens": None, "total_tokens": None},
        {"prompt_tokens": None, "completion_tokens": None, "total_tokens": None},
        {"completion_tokens": 1000},
        {},
        {"prompt_tokens": 10, "completion_tokens": 0, "total_tokens": 10},
    ],
    ids=["output_null", "all_null", "input_missing", "empty", "output_0"],
)
async def test_a_chat_usage_without_a_main_count_is_none_and_the_answer_estimated(
    usage: dict[str, Any], stream: bool
) -> None:
    """A usage whose input or output count is null or left out gives no count of what the answer cost: it is no
    usage, as `usage: null` is, and the answer of 3,000 characters is estimated (1,000 tokens out), whole or
    streamed. Read as 0 (a null count is 0 for the details alone: `LITELLM_USAGE`), it was billed as the provider's
    count: 10 in and 0 out with `completion_tokens: null` ($0.00001), $0 with every count null or `usage: {}`; and so
    was an explicit 0 tokens out for what was written (found by review)."""
    answer, line = await chat_answered(TEXT, usage, stream)
    assert (answer.status_code, b'"error"' in answer.content) == (200, False), answer.text
    assert (line.status, line.cost_source, line.output_tokens) == (200, "estimate", 1000), (line.input_tokens, usage)
    assert (line.cost_usd or 0) > 0.002  # (1,000 out at $2 a million, and the prompt)
    if not stream:  # (a whole answer says the usage it was charged: the estimate's, not the provider's 0 out)
        said = answer.json()["usage"]
        assert (said["prompt_tokens"], said["completion_tokens"]) == (line.input_tokens, line.output_tokens)


# An advisor's sampling in Anthropic's `usage.iterations`, without its counts.
ADVISED = {"type": "advisor_message", "model": "claude-opus-4-6"}
# An Anthropic stream's text block of `TEXT`, as its events (name, data), and a stream of events as its bytes.
TEXT_BLOCK = [
    ("content_block_start", {"type": "content_block_start", "index": 0, "content_block": {"type": "text", "text": ""}}),
    ("content_block_delta", {"type": "content_block_delta", "index": 0, "delta": {"type": "text_delta", "text": TEXT}}),
    ("content_block_stop", {"type": "content_block_stop", "index": 0}),
]


def anthropic_stream(events: list[tuple[str, dict[str, Any]]]) -> bytes:
    return b"".join(b"event: " + name.encode() + b"\ndata: " + orjson.dumps(data) + b"\n\n" for name, data in events)


async def served_claude(
    message: dict[str, Any] | None, events: list[tuple[str, dict[str, Any]]], stream: bool
) -> Served:
    """The gateway in front of one Claude deployment that answers `message` whole, or `events` streamed."""
    body = anthropic_stream(events)

    def upstream(request: httpx.Request) -> httpx.Response:
        if stream:
            return httpx.Response(200, content=body, headers={"content-type": "text/event-stream"})
        return httpx.Response(200, json=message)

    model = {**MODEL, "deployments": [{"provider": "openai", "model": "claude-x"}]}
    return await serve(upstream, {"m": model}, provider=ANTHROPIC, environ=ANTHROPIC_KEYS)


@pytest.mark.parametrize("api", ["messages", "chat"], ids=["passed_through", "translated"])
@pytest.mark.parametrize("stream", [False, True], ids=["whole", "streamed"])
@pytest.mark.parametrize(
    "output",
    [
        {"output_tokens": None},
        {},
        {"output_tokens": -5},
        {"output_tokens": 1000, "iterations": [{"type": "compaction", "output_tokens": 3500}]},
        {"output_tokens": 1000, "iterations": [{"type": "compaction", "input_tokens": -180000, "output_tokens": 3500}]},
        {"output_tokens": 1000, "iterations": [{**ADVISED, "output_tokens": 1500}]},
        {"output_tokens": 1000, "iterations": [{**ADVISED, "input_tokens": -9000, "output_tokens": 1500}]},
    ],
    ids=[
        "output_null",
        "output_missing",
        "output_negative",
        "compaction_uncounted",
        "compaction_negative",
        "advisor_uncounted",
        "advisor_negative",
    ],
)
async def test_an_anthropic_usage_without_a_main_count_is_none_and_the_answer_estimated(
    output: dict[str, Any], stream: bool, api: str
) -> None:
    """An Anthropic answer of 3,000 characters whose usage says `output_tokens: null` (or leaves it out, or says
    `-5`), in the whole message or a stream's `message_delta`: no final usage, so the answer is estimated (1,000
    tokens out, the stream's input as its `message_start` gave it) on a Messages request passed through and on a Chat
    Completions request translated. Read as 0, the stream passed through was billed 0 tokens out as the provider's
    count (found by review), and so was every other of them; read as given, `-5` was refused as impossible on its
    own, and `input_tokens: -100` beside cache reads was not (`test_usage_counts`). So too a compaction (in
    `iterations`, its counts beside the top level's) without its input count, or with a negative one: read as 0, the
    conversation it read was billed as no tokens in, the provider's count (found by review); and an advisor's sampling
    (`advisor_message`) without its input count, or with a negative one: it was charged at the advisor's price as
    counted, 0 tokens in, and the answer billed as the provider's count."""
    message = {
        "id": "msg_1",
        "type": "message",
        "role": "assistant",
        "model": "claude-x",
        "content": [{"type": "text", "text": TEXT}],
        "stop_reason": "end_turn",
        "stop_sequence": None,
        "usage": {"input_tokens": 10, **output},
    }
    opening = {**message, "content": [], "stop_reason": None, "usage": {"input_tokens": 10, "output_tokens": 1}}
    events = [
        ("message_start", {"type": "message_start", "message": opening}),
        *TEXT_BLOCK,
        ("message_delta", {"type": "message_delta", "delta": {"stop_reason": "end_turn"}, "usage": output}),
        ("message_stop", {"type": "message_stop"}),
    ]
    served = await served_claude(message, events, stream)
    asked = {"model": "m", "messages": HI, "max_tokens": 4000, "stream": stream}
    answer = await served.post("/v1/messages" if api == "messages" else "/v1/chat/completions", asked)
    [line] = await served.ledger()
    await served.gateway.aclose()
    assert (answer.status_code, b'"error"' in answer.content) == (200, False), answer.text
    assert (line.status, line.cost_source) == (200, "estimate"), (line.input_tokens, line.output_tokens)
    assert line.output_tokens >= 1000 and (line.cost_usd or 0) > 0.002
    if stream:
        assert line.input_tokens == 10  # (`message_start`'s count, exact)


ADVICE_TOKENS = 2000  # the advisor tool's bound on what one call writes
ONE_CALL_USD = ADVICE_TOKENS * 25.0 / 1e6  # at Opus's output price (the built-in table's $25 a million)


@pytest.mark.parametrize("stream", [False, True], ids=["whole", "streamed"])
@pytest.mark.parametrize(
    "advice", [{"output_tokens": 1500}, {"input_tokens": 900}], ids=["input_missing", "output_missing"]
)
async def test_an_advisor_call_whose_sampling_is_uncounted_is_charged_its_bound(
    advice: dict[str, Any], stream: bool
) -> None:
    """A Messages answer passed through that called its advisor once, whose `advisor_message` sampling lacks a count:
    the answer is estimated, as for a compaction without its counts, and the call it shows is charged its reserved
    bound, as a stream's cut before its usage is. It was the provider's count, the advisor's sampling charged at its
    price as counted: 1,500 tokens out and none in ($0.0375 under one call's bound of $0.05), or 900 in and none
    out."""
    usage = {"input_tokens": 10, "output_tokens": 1000, "iterations": [{**ADVISED, **advice}]}
    use = {"type": "server_tool_use", "id": "srvtoolu_1", "name": "advisor", "input": {}}
    advised = {"type": "advisor_result", "text": "Plan first.", "stop_reason": "end_turn"}
    result = {"type": "advisor_tool_result", "tool_use_id": "srvtoolu_1", "content": advised}
    message = {"id": "msg_1", "type": "message", "role": "assistant", "model": "claude-x"}
    message |= {"content": [use, result, {"type": "text", "text": TEXT}], "stop_reason": "end_turn"}
    message |= {"stop_sequence": None, "usage": usage}
    opening = {**message, "content": [], "stop_reason": None, "usage": {"input_tokens": 10, "output_tokens": 1}}
    events = [
        ("message_start", {"type": "message_start", "message": opening}),
        *(
            (name, {"type": name, "index": index, **more})
            for index, block in enumerate((use, result))
            for name, more in (("content_block_start", {"content_block": block}), ("content_block_stop", {}))
        ),
        *((name, {**data, "index": 2}) for name, data in TEXT_BLOCK),
        ("message_delta", {"type": "message_delta", "delta": {"stop_reason": "end_turn"}, "usage": usage}),
        ("message_stop", {"type": "message_stop"}),
    ]
    served = await served_claude(message, events, stream)
    tool = {"type": "advisor_20260301", "name": "advisor", "model": "claude-opus-4-6", "max_uses": 1}
    asked = {
        "model": "m",
        "messages": HI,
        "max_tokens": 4000,
        "stream": stream,
        "tools": [{**tool, "max_tokens": ADVICE_TOKENS}],
    }
    sent = {"authorization": f"Bearer {served.key.key}", "anthropic-beta": "advisor-tool-2026-03-01"}
    answer = await served.http.post("/v1/messages", json=asked, headers=sent)
    [line] = await served.ledger()
    await served.gateway.aclose()
    assert (answer.status_code, b'"error"' in answer.content) == (200, False), answer.text
    assert (line.status, line.cost_source) == (200, "estimate"), (line.input_tokens, line.output_tokens)
    assert line.output_tokens >= 1000
    # (The call's bound, what it reads at its dearest input price and the answer's 1,000 tokens out: not the
    # sampling's counts besides, $0.0375 more.)
    assert ONE_CALL_USD + 0.002 < (line.cost_usd or 0) < ONE_CALL_USD + 0.02, line.cost_usd


@pytest.mark.parametrize("api", ["messages", "chat"], ids=["passed_through", "translated"])
async def test_an_anthropic_streams_counted_usage_is_kept_past_a_later_message_delta_without_one(api: str) -> None:
    """An Anthropic stream whose `message_delta` counts 600 tokens out, then a second `message_delta` with no usage:
    the 600 are the provider's count, billed as such, on a Messages request passed through and on a Chat Completions
    request translated (read by the openai SDK). Translated, the later event dropped the count, and the answer was
    billed as estimated (1,000 tokens out from its 3,000 characters; found by review)."""
    opening = {"id": "msg_1", "type": "message", "role": "assistant", "model": "claude-x", "content": []}
    opening |= {"stop_reason": None, "stop_sequence": None, "usage": {"input_tokens": 10, "output_tokens": 1}}
    ended = {"stop_reason": "end_turn", "stop_sequence": None}
    events = [
        ("message_start", {"type": "message_start", "message": opening}),
        *TEXT_BLOCK,
        ("message_delta", {"type": "message_delta", "delta": ended, "usage": {"output_tokens": 600}}),
        ("message_delta", {"type": "message_delta", "delta": ended}),
        ("message_stop", {"type": "message_stop"}),
    ]
    served = await served_claude(None, events, stream=True)
    if api == "messages":
        answer = await served.post("/v1/messages", {"model": "m", "messages": HI, "max_tokens": 4000, "stream": True})
        assert (answer.status_code, b'"error"' in answer.content) == (200, False), answer.text
    else:
        sdk = openai.AsyncOpenAI(base_url="http://gw/v1", api_key=served.key.key, http_client=served.http)
        asked: Any = {"model": "m", "messages": HI, "max_tokens": 4000, "stream_options": {"include_usage": True}}
        chunks = [chunk async for chunk in await sdk.chat.completions.create(stream=True, **asked)]
        assert "".join(chunk.choices[0].delta.content or "" for chunk in chunks if chunk.choices) == TEXT
        usage = chunks[-1].usage
        assert usage is not None and (usage.prompt_tokens, usage.completion_tokens) == (10, 600)
    [line] = await served.ledger()
    await served.gateway.aclose()
    assert (line.status, line.cost_source, line.input_tokens, line.output_tokens) == (200, "provider", 10, 600)
    assert line.cost_usd == pytest.approx((10 * 1.0 + 600 * 2.0) / 1e6)


@pytest.mark.parametrize(
    "usage", [{"prompt_tokens": None, "total_tokens": None}, {}, None], ids=["count_null", "empty", "usage_null"]
)
async def test_an_embeddings_usage_without_its_count_is_none_and_the_input_estimated(
    usage: dict[str, Any] | None,
) -> None:
    """Embeddings of 10,000 characters whose usage says `prompt_tokens: null` (or `usage: {}`): the input estimated
    (5,001 tokens, about two bytes a token, as a chat prompt's text), as for an answer without `usage`. Read as 0, it
    was billed $0 as the provider's count (found by review); `usage: null` was the provider's malformed answer, a 502
    charged its worst case."""

    def upstream(request: httpx.Request) -> httpx.Response:
        data = [{"object": "embedding", "index": 0, "embedding": [0.1, 0.2]}]
        return httpx.Response(200, json={"object": "list", "model": "e", "data": data, "usage": usage})

    embedding = {"deployments": [{"provider": "openai", "model": "e"}], "price": {"input": 1.0}, "kind": "embedding"}
    served = await serve(upstream, {"e": embedding})
    answer = await served.post("/v1/embeddings", {"model": "e", "input": "word " * 2000})
    [line] = await served.ledger()
    await served.gateway.aclose()
    assert answer.status_code == 200, answer.text
    assert (line.status, line.cost_source, line.input_tokens) == (200, "estimate", 5_001)
    assert line.cost_usd == pytest.approx(0.005001)


BEDROCK = {"type": "bedrock", "base_url": "http://up", "region": "us-east-1"}
AWS_KEYS = {**PROVIDER_KEYS, "AWS_ACCESS_KEY_ID": "AKIDEXAMPLE", "AWS_SECRET_ACCESS_KEY": "secret-000000000000"}


def answered_uncounted(reader: str, count: dict[str, Any]) -> httpx.Response:
    """`TEXT` answered in `reader`'s API (its name, `-streamed` for its stream), its usage giving the output count and
    `count` for the input's (`{}`: left out)."""
    if reader.startswith("gemini"):
        candidate = {"content": {"role": "model", "parts": [{"text": TEXT}]}, "finishReason": "STOP", "index": 0}
        meta = {"candidatesTokenCount": 1000, "totalTokenCount": 1000, **rename(count, "promptTokenCount")}
        if reader == "gemini":
            return httpx.Response(200, json={"candidates": [candidate], "usageMetadata": meta})
        said = {
            "candidates": [{**candidate, "finishReason": None}],
            "usageMetadata": {**meta, "candidatesTokenCount": 1},
        }
        ended = {"content": {"role": "model", "parts": [{"text": ""}]}, "finishReason": "STOP", "index": 0}
        events = (said, {"candidates": [ended], "usageMetadata": meta})
        body = b"".join(b"data: " + orjson.dumps(event) + b"\r\n\r\n" for event in events)
        return httpx.Response(200, content=body, headers={"content-type": "text/event-stream"})
    if reader.startswith("bedrock"):
        from tests.fakes.bedrock import stream_frames

        usage = {"outputTokens": 1000, "totalTokens": 1000, **rename(count, "inputTokens")}
        message = {"role": "assistant", "content": [{"text": TEXT}]}
        answer = {"output": {"message": message}, "stopReason": "end_turn", "usage": usage, "metrics": {"latencyMs": 1}}
        if reader == "bedrock":
            return httpx.Response(200, json=answer)
        frames = b"".join(stream_frames(answer))
        return httpx.Response(200, content=frames, headers={"content-type": "application/vnd.amazon.eventstream"})
    answer = responses_answer(0)
    answer["output"][0]["content"] = [{"type": "output_text", "text": TEXT, "annotations": []}]
    answer["usage"] = {"output_tokens": 1000, "total_tokens": 1000, **rename(count, "input_tokens")}
    if reader == "responses":
        return httpx.Response(200, json=answer)
    frames = [
        {"type": "response.created", "sequence_number": 0, "response": {**answer, "status": "in_progress"}},
        {"type": "response.output_text.delta", "sequence_number": 1, "item_id": "msg_1", "delta": TEXT},
        {"type": "response.completed", "sequence_number": 2, "response": answer},
    ]
    body = b"".join(b"event: " + f["type"].encode() + b"\ndata: " + orjson.dumps(f) + b"\n\n" for f in frames)
    return httpx.Response(200, content=body, headers={"content-type": "text/event-stream"})


def rename(count: dict[str, Any], name: str) -> dict[str, Any]:
    """`count` (`{"input": None}`, or `{}` for none) as the input count `name` of a provider's usage."""
    return {name: count["input"]} if "input" in count else {}


@pytest.mark.parametrize("count", [{"input": None}, {}], ids=["input_null", "input_missing"])
@pytest.mark.parametrize(
    "reader", ["responses", "responses-streamed", "gemini", "gemini-streamed", "bedrock", "bedrock-streamed"]
)
async def test_a_usage_without_its_input_count_is_none_in_every_reader(reader: str, count: dict[str, Any]) -> None:
    """The rule Chat Completions and Anthropic follow, for the Responses API passed through, Gemini and Bedrock,
    whole and streamed: a usage whose input count is null or left out gives no count of what the request cost, and
    the answer is estimated (its prompt, and 1,000 tokens out for its 3,000 characters). Read as 0, each was billed
    0 tokens in as the provider's count, the prompt free (found by review)."""
    provider, environ, model = NATIVE_RESPONSES, PROVIDER_KEYS, "gpt-4o-mini"
    if reader.startswith("gemini"):
        provider, environ, model = (
            GEMINI,
            {**PROVIDER_KEYS, "GEMINI_API_KEY": "gm-test-000000000000"},
            "gemini-2.5-flash",
        )
    elif reader.startswith("bedrock"):
        provider, environ, model = BEDROCK, AWS_KEYS, "meta.llama3-3-70b-instruct-v1:0"
    priced = {**MODEL, "deployments": [{"provider": "openai", "model": model}]}
    served = await serve(
        lambda request: answered_uncounted(reader, count), {"m": priced}, provider=provider, environ=environ
    )
    stream = reader.endswith("-streamed")
    prompt = "word " * 200  # (1,000 characters: an estimate of some 250 tokens)
    if reader.startswith("responses"):
        answer = await served.post(
            "/v1/responses", {"model": "m", "input": prompt, "stream": stream, "max_output_tokens": 4000}
        )
    else:
        asked = {"model": "m", "messages": [{"role": "user", "content": prompt}], "max_tokens": 4000, "stream": stream}
        answer = await served.post("/v1/chat/completions", asked)
    [line] = await served.ledger()
    await served.gateway.aclose()
    assert (answer.status_code, b'"error"' in answer.content) == (200, False), answer.text
    assert (line.status, line.cost_source) == (200, "estimate"), (line.input_tokens, line.output_tokens)
    assert line.input_tokens > 200 and line.output_tokens >= 1000
    assert line.cost_usd == pytest.approx((line.input_tokens * 1.0 + line.output_tokens * 2.0) / 1e6)


async def test_a_gzip_body_never_asked_for_is_charged_and_not_relayed() -> None:
    """A 2xx body in gzip (the gateway asks for none): charged as unreadable, and none of its bytes relayed."""
    packed = gzip.compress(orjson.dumps(completion()))

    def zipped(request: httpx.Request) -> httpx.Response:
        if b'"stream":true' in request.content.replace(b" ", b""):
            return httpx.Response(200, content=packed, headers={"content-type": "text/event-stream"})
        return httpx.Response(200, content=packed, headers={"content-type": "application/json"})

    served = await serve(zipped, {"m": MODEL})
    plain = await served.post("/v1/chat/completions", {"model": "m", "messages": HI})
    streamed = await served.post("/v1/chat/completions", {"model": "m", "messages": HI, "stream": True})
    for answer in (plain, streamed):
        assert answer.status_code == 502 and answer.headers["x-should-retry"] == "false"
        assert answer.json()["error"]["message"].isprintable(), answer.text
    lines = await served.ledger()
    assert [(line.status, line.cost_source) for line in lines] == [(502, "reserved")] * 2
    await served.gateway.aclose()


async def test_a_stream_that_says_it_ended_is_whole_without_a_finish_reason() -> None:
    """An OpenAI-compatible server that ends its stream with `[DONE]` but names no finish reason: the answer is
    whole (no in-stream error, a 200 line), through Chat Completions and the Responses API alike; only a stream
    that stops without either is cut."""
    chunk = {"id": "c1", "object": "chat.completion.chunk", "created": 1, "model": "gpt-4o-mini"}
    events = [
        {**chunk, "choices": [{"index": 0, "delta": {"role": "assistant", "content": "hi"}}]},
        {**chunk, "choices": [], "usage": {"prompt_tokens": 10, "completion_tokens": 5, "total_tokens": 15}},
    ]
    sse = b"".join(b"data: " + orjson.dumps(event) + b"\n\n" for event in events) + b"data: [DONE]\n\n"

    def streaming(request: httpx.Request) -> httpx.Response:
        return httpx.Response(200, content=sse, headers={"content-type": "text/event-stream"})

    served = await serve(streaming, {"m": MODEL})
    answer = await served.post("/v1/chat/completions", {"model": "m", "messages": HI, "stream": True})
    assert answer.status_code == 200 and b'"error"' not in answer.content and answer.content.endswith(b"[DONE]\n\n")
    responses = await served.post("/v1/responses", {"model": "m", "input": "hi", "stream": True})
    assert b"response.completed" in responses.content and b"stream_interrupted" not in responses.content
    lines = await served.ledger()
    assert [(line.status, line.cost_source, line.output_tokens) for line in lines] == [(200, "provider", 5)] * 2


async def test_a_timed_out_attempts_cost_is_the_providers_and_the_fee_is_on_the_whole() -> None:
    """An attempt that timed out may be billed: its provider cost joins the answer's, and the fee is taken once,
    on the sum (the timed-out attempt's fee was counted as provider cost)."""

    async def slow_first(request: httpx.Request) -> httpx.Response:
        if b'"slow"' in request.content:
            await asyncio.sleep(0.4)
        return httpx.Response(200, json=completion())

    models = {
        "s": {
            "deployments": [{"provider": "openai", "model": "slow"}, {"provider": "openai", "model": "gpt-4o-mini"}],
            "price": {"input": 1.0, "output": 2.0},
        }
    }
    served = await serve(slow_first, models, fee={"percent": 10}, timeouts={"first_byte": 0.2})
    answer = await served.post("/v1/chat/completions", {"model": "s", "messages": HI, "max_tokens": 100})
    assert answer.headers["x-gateway-route"].startswith("openai/slow@global=upstream_timeout")
    provider, fee = float(answer.headers["x-gateway-cost-usd"]), float(answer.headers["x-gateway-fee-usd"])
    assert fee == pytest.approx(provider * 0.10)
    await served.gateway.aclose()


async def test_a_request_is_reported_in_the_budget_period_it_was_charged_to(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Admitted at 23:59:59 on the month's last day, answered after midnight: its line is November's, as its
    budget charge is (it was December's in reports, November's in the budget)."""
    start = datetime.datetime(2026, 11, 30, 23, 59, 59, tzinfo=datetime.UTC).timestamp()
    now = [start]
    monkeypatch.setattr(time, "time", lambda: now[0])

    def two_seconds(request: httpx.Request) -> httpx.Response:
        now[0] += 2.0
        return httpx.Response(200, json=completion())

    served = await serve(two_seconds, {"m": MODEL})
    assert budgets.period_of("month", start) == "month:2026-11"
    assert (await served.post("/v1/chat/completions", {"model": "m", "messages": HI})).status_code == 200
    [line] = await served.ledger()
    assert budgets.period_of("month", line.ts) == "month:2026-11"
    await served.gateway.aclose()


async def test_once_a_request_spent_the_budget_the_next_ones_are_refused_even_sent_at_once() -> None:
    """The provider billed $0.04 for a request reserved at $0.00003 (what it read, the gateway could not see), on a
    budget of $0.01: the next requests, sent one after another with no pause, were all answered on the embedded
    store (six requests, $0.24 spent; with a pause between them, the second was refused). The grant that admitted
    the second request shared a transaction with the first one's settlement and read the budget as unspent."""

    def billed_more(request: httpx.Request) -> httpx.Response:
        usage = {"prompt_tokens": 40_000, "completion_tokens": 5, "total_tokens": 40_005}
        return httpx.Response(200, json={**completion(), "usage": usage})

    served = await serve(billed_more, {"m": MODEL}, budget_usd=0.01)
    statuses = []
    for _ in range(6):
        answer = await served.post("/v1/chat/completions", {"model": "m", "messages": HI, "max_tokens": 10})
        statuses.append(answer.status_code)
    assert statuses == [200] + [402] * 5
    assert sum(line.cost_usd or 0.0 for line in await served.ledger()) == pytest.approx(0.04001)
    await served.gateway.aclose()


async def test_the_upstream_models_price_wins_over_a_public_name_that_is_in_the_table() -> None:
    """A public `gpt-4o` served by `gpt-4o-mini-2024-07-18`, priced from the table: the mini's price (found by
    its alias), not the public name's exact entry."""
    models = {"gpt-4o": {"deployments": [{"provider": "openai", "model": "gpt-4o-mini-2024-07-18"}]}}
    served = await serve(lambda request: httpx.Response(200, json=completion()), models)
    answer = await served.post("/v1/chat/completions", {"model": "gpt-4o", "messages": HI})
    # 10 input and 5 output tokens at the mini's $0.15 / $0.60 a million (gpt-4o's $2.50 / $10 would be 7.5e-5)
    assert float(answer.headers["x-gateway-cost-usd"]) == pytest.approx(10 * 0.15e-6 + 5 * 0.60e-6)
    await served.gateway.aclose()


async def test_embeddings_carry_their_user() -> None:
    def embeddings(request: httpx.Request) -> httpx.Response:
        data = [{"object": "embedding", "index": 0, "embedding": [0.1, 0.2]}]
        usage = {"prompt_tokens": 3, "total_tokens": 3}
        return httpx.Response(200, json={"object": "list", "data": data, "model": "e", "usage": usage})

    models = {
        "e": {"deployments": [{"provider": "openai", "model": "e"}], "price": {"input": 1.0}, "kind": "embedding"}
    }
    served = await serve(embeddings, models)
    answer = await served.post("/v1/embeddings", {"model": "e", "input": "hello", "user": "ann"})
    assert answer.status_code == 200, answer.text
    [line] = await served.ledger()
    assert line.user == "ann"
    await served.gateway.aclose()


async def test_embeddings_of_token_ids_are_reserved_an_id_a_token_and_an_answer_without_usage_is_estimated() -> None:
    """Token ids were reserved by their digits: 5,000 ids of five digits as 25,000 tokens ($0.025 at $1 a million),
    refused 402 on a $0.01 budget they fit ($0.005). And an answer without `usage` (an OpenAI-like server's) was
    charged nothing, its line 0 tokens from the `provider`. Now ids are an id a token, reserved and estimated, and
    text reserved a token a byte (its bound) and estimated at about two bytes a token, as a chat prompt's."""

    def no_usage(request: httpx.Request) -> httpx.Response:
        inputs = orjson.loads(request.content)["input"]
        count = 1 if isinstance(inputs, str) or isinstance(inputs[0], int) else len(inputs)
        data = [{"object": "embedding", "index": i, "embedding": [0.1, 0.2]} for i in range(count)]
        return httpx.Response(200, json={"object": "list", "data": data, "model": "e"})

    models = {
        "e": {"deployments": [{"provider": "openai", "model": "e"}], "price": {"input": 1.0}, "kind": "embedding"}
    }
    served = await serve(no_usage, models, budget_usd=0.01)
    for inputs in ([15339] * 5_000, [[15339] * 1_000] * 3, "hello world"):
        answer = await served.post("/v1/embeddings", {"model": "e", "input": inputs})
        assert answer.status_code == 200, answer.text
    lines = await served.ledger()
    assert [(line.input_tokens, line.cost_source) for line in lines] == [
        (5_000, "estimate"),
        (3_000, "estimate"),
        (6, "estimate"),
    ]
    assert sum(line.cost_usd or 0.0 for line in lines) == pytest.approx(8_006 / 1e6)
    await served.gateway.aclose()


async def sent_twice_at_once(
    served: Served, path: str, body: dict[str, Any], refused: asyncio.Event
) -> list[httpx.Response]:
    """`body` sent to `path` twice at once, `refused` set once either is answered 402. An upstream that holds its
    answer until then (`held_until`) keeps the first request's reservation standing while the second is admitted."""

    async def sent() -> httpx.Response:
        answer = await served.post(path, body)
        if answer.status_code == 402:
            refused.set()
        return answer

    return list(await asyncio.gather(sent(), sent()))


async def held_until(refused: asyncio.Event) -> None:
    """An upstream's answer held until the other request of the pair is refused (were both admitted, neither would
    be: each held past the gateway's timeout, the pair is two 504s)."""
    await asyncio.wait_for(refused.wait(), 10)


async def test_an_embeddings_budget_holds_for_text_of_a_token_a_byte() -> None:
    """Embeddings text was reserved at about two bytes a token, which is no bound: digits and letters mixed (`1a1a`,
    ids, hashes, codes) are a cl100k token a byte. Two concurrent requests of 8,000 such bytes on a key of $8.10 (at
    $1,000 a million) each reserved $4.001, both fit, and each was billed $8: the key spent $16 (review). Now each
    reserves its bound, one is refused, saying what lowers it (an embeddings request has no max_tokens)."""

    refused_one = asyncio.Event()

    async def billed_a_token_a_byte(request: httpx.Request) -> httpx.Response:
        text = orjson.loads(request.content)["input"]
        await held_until(refused_one)
        usage = {"prompt_tokens": len(text.encode()), "total_tokens": len(text.encode())}
        data = [{"object": "embedding", "index": 0, "embedding": [0.1, 0.2]}]
        return httpx.Response(200, json={"object": "list", "data": data, "model": "e", "usage": usage})

    models = {
        "e": {"deployments": [{"provider": "openai", "model": "e"}], "price": {"input": 1000}, "kind": "embedding"}
    }
    served = await serve(billed_a_token_a_byte, models, budget_usd=8.1)
    answers = await sent_twice_at_once(served, "/v1/embeddings", {"model": "e", "input": "1a" * 4_000}, refused_one)
    assert sorted(answer.status_code for answer in answers) == [200, 402]
    spent = sum((line.cost_usd or 0.0) + (line.fee_usd or 0.0) for line in await served.ledger())
    assert spent == pytest.approx(8.0)
    [refused] = [answer.json()["error"]["message"] for answer in answers if answer.status_code == 402]
    assert refused.endswith("; sending fewer or shorter inputs lowers it") and "max_tokens" not in refused
    await served.gateway.aclose()


# A chat request's text of a token a byte (`TOKEN_A_BYTE`, 8,000 bytes), as each API asks it: Chat Completions, the
# Messages API to Anthropic (passed through as written) and to an OpenAI-compatible server (translated), the Responses
# API to OpenAI (as written) and to a compatible server (translated).
TOKEN_A_BYTE = "1a" * 4_000
ASKED_A_TOKEN_A_BYTE: dict[str, tuple[str, dict[str, Any] | None, dict[str, Any]]] = {
    "chat": ("/v1/chat/completions", None, {"messages": [{"role": "user", "content": TOKEN_A_BYTE}], "max_tokens": 16}),
    "messages": (
        "/v1/messages",
        ANTHROPIC,
        {"messages": [{"role": "user", "content": TOKEN_A_BYTE}], "max_tokens": 16},
    ),
    "messages-translated": (
        "/v1/messages",
        None,
        {"messages": [{"role": "user", "content": [{"type": "text", "text": TOKEN_A_BYTE}]}], "max_tokens": 16},
    ),
    "responses": ("/v1/responses", NATIVE_RESPONSES, {"input": TOKEN_A_BYTE, "max_output_tokens": 16}),
    "responses-translated": ("/v1/responses", None, {"input": TOKEN_A_BYTE, "max_output_tokens": 16}),
}


@pytest.mark.parametrize("api", list(ASKED_A_TOKEN_A_BYTE))
async def test_a_chat_budget_holds_for_text_of_a_token_a_byte(api: str) -> None:
    """A chat request's prompt was reserved at about two bytes a token (half the UTF-8 bytes of its text, of a body
    passed through as written), said to over-count every tokenizer priced, which it does not: digits and letters mixed
    (`1a1a`, ids, hashes, code) are a cl100k or o200k token a byte. Two concurrent requests of 8,000 such bytes and
    `max_tokens: 16` on a key of $9 (at $1,000 a million) each reserved about $4.05, both fit, and each was billed
    $8.02: the key spent $16.05, on every API (review). Now each reserves its text at a token a byte, the bound of
    every tokenizer priced: one is refused, saying what lowers it."""
    path, provider, asked = ASKED_A_TOKEN_A_BYTE[api]
    refused_one = asyncio.Event()

    async def billed_a_token_a_byte(request: httpx.Request) -> httpx.Response:
        assert TOKEN_A_BYTE.encode() in request.content
        await held_until(refused_one)
        prompt = len(TOKEN_A_BYTE) + 7  # (the turn's role and the chat template's tokens around it)
        if request.url.path.endswith("/messages"):
            usage: dict[str, Any] = {"input_tokens": prompt, "output_tokens": 16}
            return httpx.Response(200, json={**WHOLE_NATIVE["messages"], "usage": usage})
        if request.url.path.endswith("/responses"):
            usage = {"input_tokens": prompt, "output_tokens": 16, "total_tokens": prompt + 16}
            return httpx.Response(200, json={**WHOLE_NATIVE["responses"], "usage": usage})
        usage = {"prompt_tokens": prompt, "completion_tokens": 16, "total_tokens": prompt + 16}
        return httpx.Response(200, json={**completion(), "usage": usage})

    models = {"m": {**MODEL, "price": {"input": 1000, "output": 1000}}}
    served = await serve(billed_a_token_a_byte, models, budget_usd=9.0, provider=provider, environ=ANTHROPIC_KEYS)
    answers = await sent_twice_at_once(served, path, {"model": "m", **asked}, refused_one)
    assert sorted(answer.status_code for answer in answers) == [200, 402], [answer.text for answer in answers]
    spent = sum((line.cost_usd or 0.0) + (line.fee_usd or 0.0) for line in await served.ledger())
    assert spent == pytest.approx((len(TOKEN_A_BYTE) + 7 + 16) / 1000)
    [refused] = [answer for answer in answers if answer.status_code == 402]
    cap = "max_output_tokens" if path == "/v1/responses" else "max_tokens"  # (each API's own)
    assert f"a smaller {cap} lowers it" in refused.text
    await served.gateway.aclose()


async def test_tpm_counts_a_prompts_estimate_not_the_bound_its_budget_reserves() -> None:
    """A key's `tpm` counts what the request shows at its estimate (about two bytes a token), corrected to the
    provider's count at settlement, not the token a byte its budget reserves: counted at that bound, 20 KB of English,
    some 4,000 tokens, would take 20,000 of a `tpm` of 12,000 and be refused, though it fits."""

    def billed_a_token_five_bytes(request: httpx.Request) -> httpx.Response:
        return httpx.Response(200, json={**completion(), "usage": {"prompt_tokens": 4_000, "completion_tokens": 5}})

    served = await serve(billed_a_token_five_bytes, {"m": MODEL})
    record = KeyRecord(id="", name="t", secret_hash="", created_at=0, tpm=12_000, budget_usd=10.0)
    key = await KeyAdmin(KeyService(served.gateway.store, 0)).mint(record)
    body = {"model": "m", "messages": [{"role": "user", "content": "word " * 4_000}], "max_tokens": 16}
    answer = await served.http.post("/v1/chat/completions", json=body, headers={"authorization": f"Bearer {key.key}"})
    assert answer.status_code == 200, answer.text
    counted = 12_000 - int(answer.headers["x-ratelimit-remaining-tokens"])  # (at admission: its estimate, its cap)
    assert counted < 20_000 // 2 + 100, counted
    await served.gateway.aclose()


async def test_an_option_the_deployment_was_not_sent_is_not_billed() -> None:
    """Azure's Chat Completions has no `web_search_options` or `service_tier`: they are dropped and named, and were
    billed all the same (the $0.03 search fee for a search that never ran, a priority tier's double price). Found
    by review."""
    sent: list[dict[str, Any]] = []

    def azure(request: httpx.Request) -> httpx.Response:
        sent.append(orjson.loads(request.content))
        return httpx.Response(200, json=completion())

    azure_provider = {
        "type": "azure",
        "api_key": "env:AZURE_OPENAI_API_KEY",
        "base_url": "https://res.openai.azure.com",
    }
    served = await serve(
        azure,
        {"m": MODEL},
        provider=azure_provider,
        priced_options={"web_search_usd": 0.03, "service_tier": {"priority": 2.0}},
    )
    plain = 10 * 1.0e-6 + 5 * 2.0e-6
    for extra in ({"web_search_options": {}}, {"service_tier": "priority"}, {}):
        answer = await served.post("/v1/chat/completions", {"model": "m", "messages": HI, **extra})
        assert answer.status_code == 200, answer.text
        assert not set(extra) & set(sent[-1])
        assert answer.headers.get("x-gateway-dropped-params", "") == ",".join(extra)
        assert float(answer.headers["x-gateway-cost-usd"]) == pytest.approx(plain), extra
    assert [line.cost_usd for line in await served.ledger()] == pytest.approx([plain] * 3)
    await served.gateway.aclose()


async def test_a_service_tier_is_priced_by_the_model_served_the_gateways_multiplier_only_where_it_has_none() -> None:
    """OpenAI's tier prices differ by model (priority: 2x gpt-5's, 1.7x gpt-4o's; flex half gpt-5's), and one
    gateway-wide multiplier priced them all: `priority: 1.8` charged a gpt-4o request 6 % more than OpenAI bills and a
    gpt-5 one 10 % less. The bundled table and a model's own price carry each model's tiers; the gateway's
    multiplier prices a tier only where the model has none, and a tier that no model of the plan prices is still
    refused before anything is sent. The worst case reserved is at the same multiplier (never below the plain
    price: a deployment that drops the tier bills that)."""
    sent: list[dict[str, Any]] = []

    def openai(request: httpx.Request) -> httpx.Response:
        body = orjson.loads(request.content)
        sent.append(body)
        return httpx.Response(200, json={**completion(body["model"]), "service_tier": body.get("service_tier")})

    models = {
        "4o": {"deployments": [{"provider": "openai", "model": "gpt-4o"}]},  # the bundled prices
        "5": {"deployments": [{"provider": "openai", "model": "gpt-5"}]},
        "own": {**MODEL, "price": {**MODEL["price"], "options": {"service_tier": {"priority": 1.5, "scale": 1.25}}}},
        "plain": MODEL,  # no tier of its own
        "plain-then-own": {**MODEL, "fallbacks": ["own"]},
    }
    served = await serve(openai, models, priced_options={"service_tier": {"priority": 1.8, "flex": 1.0}})

    async def cost(model: str, tier: str | None) -> float:
        extra = {"service_tier": tier} if tier else {}
        answer = await served.post("/v1/chat/completions", {"model": model, "messages": HI, **extra})
        assert answer.status_code == 200, answer.text
        return float(answer.headers["x-gateway-cost-usd"])

    async def worst(model: str, tier: str | None) -> float:
        extra = {"service_tier": tier} if tier else {}
        refused = await served.http.post(
            "/v1/chat/completions",
            json={"model": model, "messages": HI, **extra},
            headers={"authorization": f"Bearer {served.key.key}", "x-gateway-max-cost-usd": "0.000000001"},
        )
        assert refused.status_code == 402, refused.text
        return float(refused.json()["error"]["message"].split("$")[1].split(" ")[0])

    # 10 input and 5 output tokens: gpt-4o's $0.000075 at priority is OpenAI's $4.25 and $17 a million, $0.0001275.
    assert await cost("4o", "priority") == pytest.approx(0.0001275)
    for model, tier, rate in (
        ("4o", "priority", 1.7),
        ("5", "priority", 2.0),
        ("5", "flex", 0.5),
        ("own", "priority", 1.5),  # its own, over the gateway's
        ("own", "scale", 1.25),  # its own, where the gateway has none
        ("own", "flex", 1.0),  # the gateway's, where it has none
        ("plain", "priority", 1.8),
    ):
        assert await cost(model, tier) == pytest.approx(rate * await cost(model, None)), (model, tier)
        plain_worst = await worst(model, None)
        # (A few prompt tokens more: the tier's own bytes are counted, a token a byte.)
        assert await worst(model, tier) == pytest.approx(max(rate, 1.0) * plain_worst, rel=4e-3), (model, tier)
    # A tier the plan's models do not price: the client's 400 before anything is sent or reserved.
    before = len(sent)
    refused = await served.post("/v1/chat/completions", {"model": "plain", "messages": HI, "service_tier": "scale"})
    assert refused.status_code == 400 and refused.json()["error"]["param"] == "service_tier", refused.text
    assert "'plain'" in refused.json()["error"]["message"] and len(sent) == before
    # A deployment whose model does not price it is passed over for one whose model does.
    answer = await served.post(
        "/v1/chat/completions", {"model": "plain-then-own", "messages": HI, "service_tier": "scale"}
    )
    assert answer.status_code == 200, answer.text
    assert answer.headers["x-gateway-route"].split(", ")[0].endswith("=unsupported")
    assert float(answer.headers["x-gateway-cost-usd"]) == pytest.approx(1.25 * await cost("own", None))
    assert len(sent) == before + 2 and sent[before]["service_tier"] == "scale"
    await served.gateway.aclose()


async def test_a_tier_the_built_in_table_prices_is_taken_only_where_the_gateway_takes_it() -> None:
    """The built-in table prices OpenAI's tiers per model; once it did, gpt-4o's `priority` was served at 1.7 times
    the price on a gateway whose operator had never taken it (`priced_options.service_tier` was `{flex: 1.0}`).
    The gateway's tiers say which a key may ask for; the table only prices those, and a price the operator wrote
    takes the tiers it names. An answer that says it ran at a tier (a project whose default tier is priority runs
    every request so) is billed at the model's rate for it, taken or not: gpt-4o's was billed at its plain price."""
    sent: list[dict[str, Any]] = []
    project_tier: list[str] = []  # the tier the fake project runs a request that names none at

    def openai(request: httpx.Request) -> httpx.Response:
        body = orjson.loads(request.content)
        sent.append(body)
        tier = body.get("service_tier") or (project_tier[0] if project_tier else None)
        return httpx.Response(200, json={**completion(body["model"]), "service_tier": tier})

    models = {
        "4o": {"deployments": [{"provider": "openai", "model": "gpt-4o"}]},  # the built-in table's prices
        "5": {"deployments": [{"provider": "openai", "model": "gpt-5"}]},
        "own": {**MODEL, "price": {**MODEL["price"], "options": {"service_tier": {"priority": 1.5}}}},
    }
    served = await serve(openai, models)  # the default: `service_tier: {flex: 1.0}`
    refused = await served.post("/v1/chat/completions", {"model": "4o", "messages": HI, "service_tier": "priority"})
    assert refused.status_code == 400 and refused.json()["error"]["param"] == "service_tier", refused.text
    assert sent == []
    flex = await served.post("/v1/chat/completions", {"model": "5", "messages": HI, "service_tier": "flex"})
    plain = await served.post("/v1/chat/completions", {"model": "5", "messages": HI})
    assert flex.status_code == plain.status_code == 200, flex.text
    # (taken by the gateway, priced by the table: half gpt-5's prices)
    assert float(flex.headers["x-gateway-cost-usd"]) == pytest.approx(0.5 * float(plain.headers["x-gateway-cost-usd"]))
    own = await served.post("/v1/chat/completions", {"model": "own", "messages": HI, "service_tier": "priority"})
    assert own.status_code == 200, own.text
    plain_4o = await served.post("/v1/chat/completions", {"model": "4o", "messages": HI})
    project_tier.append("priority")
    ran_at_priority = await served.post("/v1/chat/completions", {"model": "4o", "messages": HI})
    assert ran_at_priority.status_code == 200, ran_at_priority.text
    assert float(ran_at_priority.headers["x-gateway-cost-usd"]) == pytest.approx(
        1.7 * float(plain_4o.headers["x-gateway-cost-usd"])
    )
    await served.gateway.aclose()


async def test_a_document_by_id_is_reserved_but_an_answer_without_usage_is_billed_on_what_was_seen() -> None:
    """A file part by `file_id` is reserved as 100 pages; an answer without usage was billed those 460,000 tokens
    too ($0.46 for a $0.00005 answer), and a key's tpm counted them (found by review). The estimate bills what the
    request shows; the rate limit counts it too."""

    def no_usage(request: httpx.Request) -> httpx.Response:
        answer = completion()
        del answer["usage"]
        return httpx.Response(200, json=answer)

    served = await serve(no_usage, {"m": MODEL})
    part = {"type": "file", "file": {"file_id": "file-abc"}}
    answer = await served.post(
        "/v1/chat/completions", {"model": "m", "messages": [{"role": "user", "content": [part]}]}
    )
    assert answer.status_code == 200, answer.text
    [line] = await served.ledger()
    assert line.cost_source == "estimate" and line.input_tokens < 100
    limited = KeyRecord(id="", name="t", secret_hash="", created_at=0, tpm=50_000)
    key = await KeyAdmin(KeyService(served.gateway.store, 0)).mint(limited)
    body = {"model": "m", "max_tokens": 16, "messages": [{"role": "user", "content": [part]}]}
    answer = await served.http.post("/v1/chat/completions", json=body, headers={"authorization": f"Bearer {key.key}"})
    assert answer.status_code == 200, answer.text  # not "too large for the tpm limit"
    await served.gateway.aclose()


async def test_a_server_told_to_send_no_stream_options_streams_and_its_line_is_an_estimate() -> None:
    """A compatible server that refuses `stream_options` answered every stream 400, through every API. With
    `stream_usage: false` it is not sent; a stream without usage is then billed on what the gateway saw (`estimate`),
    as any stream without usage is."""
    sent: list[dict[str, Any]] = []
    chunk = {"id": "c1", "object": "chat.completion.chunk", "created": 1, "model": "llama"}
    events = [
        {**chunk, "choices": [{"index": 0, "delta": {"role": "assistant", "content": "Hello"}}]},
        {**chunk, "choices": [{"index": 0, "delta": {"content": " world"}, "finish_reason": "stop"}]},
    ]
    sse = b"".join(b"data: " + orjson.dumps(event) + b"\n\n" for event in events) + b"data: [DONE]\n\n"

    def strict(request: httpx.Request) -> httpx.Response:
        body = orjson.loads(request.content)
        sent.append(body)
        if "stream_options" in body:
            detail = "[{'type': 'extra_forbidden', 'loc': ('body', 'stream_options'), 'msg': 'Extra inputs are "
            detail += "not permitted'}]"
            return httpx.Response(
                400, json={"object": "error", "message": detail, "type": "BadRequestError", "code": 400}
            )
        return httpx.Response(200, content=sse, headers={"content-type": "text/event-stream"})

    provider = {"type": "openai", "api_key": "env:OPENAI_API_KEY", "base_url": "http://up/v1", "stream_usage": False}
    served = await serve(strict, {"m": MODEL}, provider=provider)
    chat = await served.post("/v1/chat/completions", {"model": "m", "messages": HI, "stream": True})
    assert chat.status_code == 200 and b"Hello" in chat.content and b'"error"' not in chat.content
    messages = await served.post("/v1/messages", {"model": "m", "max_tokens": 50, "messages": HI, "stream": True})
    assert messages.status_code == 200 and b"message_stop" in messages.content
    responses = await served.post("/v1/responses", {"model": "m", "input": "hi", "stream": True})
    assert responses.status_code == 200 and b"response.completed" in responses.content
    assert [body["stream"] for body in sent] == [True] * 3 and not any("stream_options" in body for body in sent)
    lines = await served.ledger()
    assert [(line.status, line.cost_source) for line in lines] == [(200, "estimate")] * 3
    assert all(line.output_tokens > 0 and line.cost_usd > 0 for line in lines)
    await served.gateway.aclose()


async def test_a_malformed_answer_is_charged_the_usage_it_carries() -> None:
    """An answer the gateway cannot read (a compatible server's off-schema message) is the provider's malformed
    answer, a 502, but the provider billed it: its line was $0 though the body carried the usage. It is charged
    that usage, as Bedrock's malformed answers are."""
    broken = completion()
    broken["choices"][0]["message"]["role"] = "tool"
    chunk = {"id": "c1", "object": "chat.completion.chunk", "created": 1, "model": "llama", "usage": broken["usage"]}
    sse = b"data: " + orjson.dumps({**chunk, "choices": [{"index": 0, "delta": {"role": "tool"}}]}) + b"\n\n"

    def malformed(request: httpx.Request) -> httpx.Response:
        if b'"stream":true' in request.content.replace(b" ", b""):
            return httpx.Response(200, content=sse, headers={"content-type": "text/event-stream"})
        return httpx.Response(200, json=broken)

    served = await serve(malformed, {"m": MODEL})
    plain = await served.post("/v1/chat/completions", {"model": "m", "messages": HI})
    streamed = await served.post("/v1/chat/completions", {"model": "m", "messages": HI, "stream": True})
    assert (plain.status_code, streamed.status_code) == (502, 502)
    assert plain.json()["error"]["message"] == "the provider sent a malformed answer (ValidationError)"
    lines = await served.ledger()
    billed = (10 * 1.0 + 5 * 2.0) / 1e6  # the answer's usage at the model's price
    assert [(line.status, line.route) for line in lines] == [(502, "openai/gpt-4o-mini@global=invalid_response")] * 2
    assert [line.cost_usd for line in lines] == pytest.approx([billed] * 2)
    await served.gateway.aclose()


@pytest.mark.parametrize("stream", [False, True], ids=["whole", "streamed"])
@pytest.mark.parametrize(
    "usage", [{"completion_tokens": 5}, {"prompt_tokens": None, "completion_tokens": 5}], ids=["missing", "null"]
)
async def test_a_malformed_answer_whose_usage_lacks_its_input_count_is_charged_its_worst_case(
    usage: dict[str, Any], stream: bool
) -> None:
    """A malformed answer (as above) whose usage has no input count carries no count of what the provider billed
    (`schemas.reported`): it is charged as a malformed answer without usage is, its reserved worst case. Read as 0,
    it was charged 0 tokens in and 5 out as the provider's count, $0.00001 (found by review)."""
    broken = {**completion(), "usage": usage}
    broken["choices"][0]["message"]["role"] = "tool"
    chunk = {"id": "c1", "object": "chat.completion.chunk", "created": 1, "model": "llama", "usage": usage}
    sse = b"data: " + orjson.dumps({**chunk, "choices": [{"index": 0, "delta": {"role": "tool"}}]}) + b"\n\n"

    def malformed(request: httpx.Request) -> httpx.Response:
        if stream:
            return httpx.Response(200, content=sse, headers={"content-type": "text/event-stream"})
        return httpx.Response(200, json=broken)

    served = await serve(malformed, {"m": MODEL})
    answer = await served.post("/v1/chat/completions", {"model": "m", "messages": HI, "stream": stream})
    [line] = await served.ledger()
    await served.gateway.aclose()
    assert (answer.status_code, line.status, line.route) == (502, 502, "openai/gpt-4o-mini@global=invalid_response")
    assert line.cost_source == "reserved", (line.input_tokens, line.output_tokens, line.cost_usd)
    assert line.input_tokens > 0 and line.cost_usd == pytest.approx((line.input_tokens * 1.0 + 4096 * 2.0) / 1e6)


async def cancelled_twice_while_written(
    served: Any, held: Callable[[Any], bool], path: str = "/v1/chat/completions"
) -> None:
    """A request to `m` (a chat request, or a count's on `path`) cancelled once the store has written an admission
    `held` picks, and again before the store answers it (a deadline's cancellation, then a server's stopping past
    its grace)."""
    store = served.gateway.store
    written = store.admit
    admission_written, answer_due = asyncio.Event(), asyncio.Event()

    async def late_answer(admission: Any) -> Any:
        snapshot = await written(admission)
        if held(admission):
            admission_written.set()
            await answer_due.wait()  # its answer on its way
        return snapshot

    store.admit = late_answer
    request = asyncio.ensure_future(served.post(path, {"model": "m", "messages": HI}))
    await admission_written.wait()
    request.cancel()  # the first cancellation
    for _ in range(5):
        await asyncio.sleep(0)
    request.cancel()  # the second, while the store has still to answer
    for _ in range(5):
        await asyncio.sleep(0)
    answer_due.set()
    with pytest.raises(asyncio.CancelledError):
        await request
    store.admit = written


async def test_an_extra_reservation_written_while_the_request_is_cancelled_twice_is_released(store_url: str) -> None:
    """The first deployment's answer could not be read (the provider may bill it), so a worst case more is written
    before the failover. The request was cancelled while the store wrote it (its deadline), and again before the
    store answered (the server stopping past its grace): the second cancellation cut the wait for the write's
    answer, so the reservation the store had written was neither settled nor released, and held the key's budget
    until it expired (960 s). Every reservation written is now settled or released, once."""

    def unreadable_first(request: httpx.Request) -> httpx.Response:
        if b'"broken"' in request.content:
            return httpx.Response(200, text="<html>maintenance</html>", headers={"content-type": "text/html"})
        return httpx.Response(200, json=completion())

    chain = {
        "deployments": [{"provider": "openai", "model": "broken"}, {"provider": "openai", "model": "gpt-4o-mini"}],
        "price": {"input": 1.0, "output": 2.0},
    }
    served = await serve(unreadable_first, {"m": chain}, store_url=store_url)
    # (the extra worst case, `Meter.reserve_again`, is the reservation whose id has a `#`)
    await cancelled_twice_while_written(served, lambda admission: "#" in admission.reservation_id)
    [line] = await served.ledger()  # the unreadable answer's worst case, charged
    assert (line.status, line.cost_source) == (499, "reserved"), line
    state = (await served.get("/v1/key")).json()
    assert state["reserved_usd"] == 0 and state["spent_usd"] == pytest.approx(line.cost_usd + line.fee_usd), state


class ProjectAtPriority:
    """An OpenAI project whose default tier is priority: a request that names no tier runs, and is billed, at
    priority, as the answer's `service_tier` says. Every answer bills all the output the request allowed (its worst
    case), and comes once the requests sent with it have been admitted."""

    def __init__(self) -> None:
        self.answered = 0
        self.tier = "priority"  # the tier the project runs a request that names none at

    async def __call__(self, request: httpx.Request) -> httpx.Response:
        body = orjson.loads(request.content)
        await asyncio.sleep(0.05)
        self.answered += 1
        output = body.get("max_completion_tokens") or body["max_tokens"]
        usage = {"prompt_tokens": 10, "completion_tokens": output, "total_tokens": 10 + output}
        tier = body.get("service_tier") or self.tier
        return httpx.Response(200, json={**completion(body["model"]), "usage": usage, "service_tier": tier})


WAVE = 4
TIER_LESS = {"model": "m", "messages": HI, "max_tokens": 1000}


async def worst_case(served: Any, body: dict[str, Any] = TIER_LESS) -> float:
    """The worst case a request (tier-less unless `body` says) is reserved at, as a `x-gateway-max-cost-usd` too low
    for it tells."""
    refused = await served.http.post(
        "/v1/chat/completions",
        json=body,
        headers={"authorization": f"Bearer {served.key.key}", "x-gateway-max-cost-usd": "0.000000001"},
    )
    assert refused.status_code == 402, refused.text
    return float(refused.json()["error"]["message"].split("$")[1].split(" ")[0])


async def wave(served: Any, budget_usd: float) -> tuple[list[int], float]:
    """`WAVE` tier-less requests at once on a key of their own with `budget_usd`: their statuses, and what it spent."""
    record = KeyRecord(id="", name="w", secret_hash="", created_at=0, budget_usd=budget_usd, budget_period="month")
    key = await KeyAdmin(KeyService(served.gateway.store, 0)).mint(record)
    auth = {"authorization": f"Bearer {key.key}"}
    answers = await asyncio.gather(
        *(served.http.post("/v1/chat/completions", json=TIER_LESS, headers=auth) for _ in range(WAVE))
    )
    await served.gateway.drain()
    state = (await served.http.get("/v1/key", headers=auth)).json()
    return sorted(answer.status_code for answer in answers), float(state["spent_usd"])


async def test_a_request_naming_no_tier_is_reserved_at_the_tier_its_deployment_runs_it_at() -> None:
    """A project whose default tier is priority bills a request that names no tier at priority (twice the price
    here), as the answer says and the settlement reads; but its worst case was reserved at the plain price: four
    requests at once on a budget that held four plain worst cases and two priority ones were all admitted, and the
    key spent 1.6 times its budget (review). Once the deployment has answered one tier-less request at priority, its
    tier-less requests are reserved at priority: two of four are admitted, the others refused (402), the budget
    held. With `default_service_tier: priority` on the deployment, so from the first request. A request cut in flight
    is charged its worst case at priority too."""
    project = ProjectAtPriority()
    priced = {"service_tier": {"priority": 2.0}}
    served = await serve(project, {"m": MODEL}, priced_options=priced)
    plain_worst = await worst_case(served)
    budget = WAVE * plain_worst * 1.25  # four plain worst cases, two at priority
    taught = await served.post("/v1/chat/completions", TIER_LESS)  # (the answer that teaches it: as it ran)
    assert taught.status_code == 200, taught.text
    assert float(taught.headers["x-gateway-cost-usd"]) > plain_worst  # billed at priority, beyond its reservation
    assert await worst_case(served) == pytest.approx(2 * plain_worst)
    statuses, spent = await wave(served, budget)
    assert statuses == [200, 200, 402, 402] and spent <= budget, (statuses, spent, budget)
    # One cut in flight is charged its worst case at the tier it would have run at, as it was reserved (it was
    # charged at the plain price, half what the provider may bill).
    cut = await served.http.post(
        "/v1/chat/completions",
        json=TIER_LESS,
        headers={"authorization": f"Bearer {served.key.key}", "x-gateway-deadline-ms": "30"},
    )
    assert cut.status_code == 504, cut.text
    *_, line = await served.ledger()
    assert line.cost_source == "reserved" and line.cost_usd == pytest.approx(2 * plain_worst, rel=1e-3)
    await served.gateway.aclose()

    told = {**MODEL, "deployments": [{**MODEL["deployments"][0], "default_service_tier": "priority"}]}
    served = await serve(ProjectAtPriority(), {"m": told}, priced_options=priced)
    assert await worst_case(served) == pytest.approx(2 * plain_worst)
    statuses, spent = await wave(served, budget)
    assert statuses == [200, 200, 402, 402] and spent <= budget, (statuses, spent, budget)
    await served.gateway.aclose()


async def test_a_tier_learned_from_answers_is_forgotten_once_the_deployment_answers_at_the_default(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Once one answer to a tier-less request said priority, every later tier-less request on that deployment was
    reserved at priority for the process's life, though the project had gone back to the default tier: twice the
    worst case held, and requests refused with budget left (review). An answer at the default tier within
    `TIER_REMEMBERED_S` of the last at priority does not make it forgotten (OpenAI serves some of a priority
    project's requests at the default tier past its ramp limits); one after it does, back to the plain price, or to
    the deployment's `default_service_tier`, which no answer lowers."""
    project = ProjectAtPriority()
    served = await serve(project, {"m": MODEL}, priced_options={"service_tier": {"priority": 2.0}})
    plain_worst = await worst_case(served)
    assert (await served.post("/v1/chat/completions", TIER_LESS)).status_code == 200
    assert await worst_case(served) == pytest.approx(2 * plain_worst)
    project.tier = "default"  # past its ramp limits, or back to the default tier
    assert (await served.post("/v1/chat/completions", TIER_LESS)).status_code == 200
    assert await worst_case(served) == pytest.approx(2 * plain_worst)  # (within the time it is remembered)
    monkeypatch.setattr(routing, "TIER_REMEMBERED_S", 0.0)
    assert (await served.post("/v1/chat/completions", TIER_LESS)).status_code == 200
    assert await worst_case(served) == pytest.approx(plain_worst)
    project.tier = "priority"  # learned again from the next answer
    assert (await served.post("/v1/chat/completions", TIER_LESS)).status_code == 200
    assert await worst_case(served) == pytest.approx(2 * plain_worst)
    await served.gateway.aclose()

    told = {**MODEL, "deployments": [{**MODEL["deployments"][0], "default_service_tier": "priority"}]}
    project = ProjectAtPriority()
    project.tier = "default"
    served = await serve(project, {"m": told}, priced_options={"service_tier": {"priority": 2.0}})
    assert (await served.post("/v1/chat/completions", TIER_LESS)).status_code == 200
    assert await worst_case(served) == pytest.approx(2 * plain_worst)  # the config's, not forgotten
    await served.gateway.aclose()


async def test_a_request_naming_the_default_tier_is_reserved_and_charged_at_the_default_tier() -> None:
    """A request that asks `service_tier: "default"` is run and billed by OpenAI at the default tier, whatever the
    project's default; on a deployment with `default_service_tier: priority` it was taken for a tier-less request,
    reserved at priority and, cut in flight, charged its worst case at priority: twice what OpenAI can bill it
    (review). It is reserved and charged at the default tier now; `auto` (the project's default) still at priority."""
    priced = {"service_tier": {"priority": 2.0}}
    asks_default = {**TIER_LESS, "service_tier": "default"}
    plain = await serve(ProjectAtPriority(), {"m": MODEL}, priced_options=priced)
    plain_worst = await worst_case(plain, asks_default)
    await plain.gateway.aclose()

    told = {**MODEL, "deployments": [{**MODEL["deployments"][0], "default_service_tier": "priority"}]}
    served = await serve(ProjectAtPriority(), {"m": told}, priced_options=priced)
    # (the input's estimate counts the body's bytes: a few more with a `service_tier`)
    assert await worst_case(served) == pytest.approx(2 * plain_worst, rel=0.02)
    assert await worst_case(served, {**TIER_LESS, "service_tier": "auto"}) == pytest.approx(2 * plain_worst, rel=0.02)
    assert await worst_case(served, asks_default) == pytest.approx(plain_worst)
    cut = await served.http.post(
        "/v1/chat/completions",
        json=asks_default,
        headers={"authorization": f"Bearer {served.key.key}", "x-gateway-deadline-ms": "30"},
    )
    assert cut.status_code == 504, cut.text
    *_, line = await served.ledger()
    assert line.cost_source == "reserved" and line.cost_usd == pytest.approx(plain_worst, rel=1e-3)
    await served.gateway.aclose()


async def test_a_line_after_an_answer_thrown_away_counts_every_answer_billed() -> None:
    """An answer thrown away (it broke the enforced schema) and the fallback's that served: the line's cost had
    both, as the provider billed both, but its tokens were the served answer's alone (20 in, 7 out beside the cost of
    30 in, 12 out), so tokens times prices did not give the cost (review). The line counts every answer billed; the
    client's body still has its own answer's usage."""

    def openai(request: httpx.Request) -> httpx.Response:
        answer = completion(orjson.loads(request.content)["model"])
        if answer["model"] == "gpt-4o-mini":  # not the JSON the schema asks for
            return httpx.Response(200, json=answer)
        answer["choices"][0]["message"]["content"] = '{"city": "Oslo"}'
        answer["usage"] = {"prompt_tokens": 20, "completion_tokens": 7, "total_tokens": 27}
        return httpx.Response(200, json=answer)

    fallback = {"provider": "openai", "model": "fallback"}
    models = {"m": {**MODEL, "deployments": [*MODEL["deployments"], fallback], "enforce_schema": True}}
    served = await serve(openai, models)
    schema = {"type": "json_schema", "json_schema": {"name": "city", "schema": {"type": "object"}}}
    answer = await served.post("/v1/chat/completions", {"model": "m", "messages": HI, "response_format": schema})
    assert answer.status_code == 200, answer.text
    assert answer.headers["x-gateway-route"] == "openai/gpt-4o-mini@global=schema_violation, openai/fallback@global=200"
    assert answer.json()["usage"]["prompt_tokens"] == 20 and answer.json()["usage"]["completion_tokens"] == 7
    [line] = await served.ledger()
    assert (line.input_tokens, line.output_tokens) == (30, 12), line
    assert line.cost_usd == pytest.approx(line.input_tokens * 1.0e-6 + line.output_tokens * 2.0e-6)
    await served.gateway.aclose()


async def test_a_reservation_written_while_the_request_is_cancelled_twice_is_released(store_url: str) -> None:
    """The request was cancelled while the store wrote its admission's worst case, and again before the store
    answered (a server stopping past its grace): the wait for the write's answer was cut (by the first cancellation
    already: nothing shielded it), so the reservation the store had written was neither settled nor released, and
    held the key's budget until it expired (960 s), as a failover's extra worst case did. Nothing was sent: it is
    released, and nothing is charged."""
    served = await serve(lambda request: httpx.Response(200, json=completion()), {"m": MODEL}, store_url=store_url)
    await cancelled_twice_while_written(served, lambda admission: True)
    assert await served.ledger() == []  # nothing was sent
    state = (await served.get("/v1/key")).json()
    assert state["reserved_usd"] == 0 and state["spent_usd"] == 0, state
    await served.gateway.aclose()


def slowed_boto3(dynamo: DynamoServer) -> tuple[Any, Callable[[], None]]:
    """A boto3 client of moto whose next admission (`UpdateItem`) lands at once and returns a second later (its thread
    sleeps on), and what arms it."""
    client = dynamo.client()
    armed: list[bool] = []

    def late(**_: Any) -> None:
        if armed:
            armed.clear()
            time.sleep(1.0)

    client.meta.events.register("after-call.dynamodb.UpdateItem", late)
    return client, lambda: armed.append(True)


async def limited_on(store: DynamoDBStore) -> tuple[Any, Any, dict[str, str], dict[str, Any]]:
    """A gateway on `store` answering completions, a key of $1 a month with rpm and tpm limits (cached: its next
    request's only store call is its admission), its auth headers, and a request reserved $0.02001."""
    served = await serve(lambda request: httpx.Response(200, json=completion()), {"m": MODEL}, store=store)
    limited = KeyRecord(
        id="", name="l", secret_hash="", created_at=0, budget_usd=1.0, budget_period="month", rpm=10, tpm=100_000
    )
    key = await KeyAdmin(KeyService(store, 0)).mint(limited)
    auth = {"authorization": f"Bearer {key.key}"}
    assert (await served.http.get("/v1/key", headers=auth)).status_code == 200  # (its key cached)
    return served, key, auth, {"model": "m", "messages": HI, "max_tokens": 10_000}


@pytest.mark.usefixtures("no_gc_pauses")  # (its answer is timed against the deadline)
@pytest.mark.parametrize("client", ["gateway", "boto3"])
async def test_an_admission_the_store_answers_past_the_deadline_is_released_once_its_answer_comes(
    dynamo: DynamoServer, client: str
) -> None:
    """DynamoDB applied the admission and answered after the request's deadline (`x-gateway-deadline-ms`): the
    client was answered 503 `store_unavailable` by its deadline, the call cut there (or, on boto3's client, its
    thread left to run on, its answer dropped), and the reservation it had written held $0.02001 of the key's
    $1 budget, and its minute's request and tokens, until it expired (960 s). Now the admission's call runs on past
    the deadline, and once it has answered the reservation is released and its counts given back, once: nothing
    reserved, nothing spent, no line."""
    table = dynamo.create_table()
    if client == "gateway":
        transport = SlowAnswers()
        dynamodb: Any = DynamoDBClient("us-east-1", Credentials("testing", "testing"), dynamo.url, transport=transport)
        arm: Callable[[], None] = functools.partial(setattr, transport, "slowed", 1)
    else:
        dynamodb, arm = slowed_boto3(dynamo)
    store = DynamoDBStore(dynamodb, table, owned=[dynamodb] if client == "gateway" else [])
    served, key, auth, body = await limited_on(store)
    await clear_of_minute_end(10)  # (the counts are read in the request's own minute)
    arm()
    started = time.perf_counter()
    cut = await served.http.post("/v1/chat/completions", json=body, headers={**auth, "x-gateway-deadline-ms": "300"})
    assert cut.status_code == 503 and cut.json()["error"]["code"] == "store_unavailable", cut.text
    assert time.perf_counter() - started < 0.9  # by its deadline, not once the store answered
    period = period_of("month", time.time())
    for _ in range(60):  # (released once the store's answer comes: nothing waits for it)
        await asyncio.sleep(0.1)
        await served.gateway.drain()
        meter = await store.meter(key.record.id, period)
        if not meter.committed_usd[period]:
            break
    assert meter.committed_usd[period] == pytest.approx(0, abs=1e-9), meter.committed_usd
    assert meter.spent_usd[period] == 0 and meter.rates == {"rpm": 0, "tpm": 0}, meter
    state = (await served.http.get("/v1/key", headers=auth)).json()
    assert (state["reserved_usd"], state["spent_usd"]) == (0, 0), state
    assert await store.usage(UsageQuery([key.record.id], 0, time.time() + 3600)) == []
    await served.gateway.aclose()


async def test_a_fallbacks_count_written_while_the_request_is_cancelled_twice_is_given_back(store_url: str) -> None:
    """The model asked for failed (500), so the request moved to its fallback, counted first on the fallback's own
    limit (`rpm: 1` on `fb`). The request was cancelled while the store wrote that count (its deadline), and again
    before the store answered (a server stopping past its grace): the wait for the count was not shielded, so the
    request never learnt of it, and its settlement did not give it back. Nothing went to `fb`, yet the minute's one
    request to it was spent (`rpm:fb` 1, the next request to `fb` refused 429). Now the count is waited for and given
    back: `rpm:fb` 0, and `fb` serves the next request."""

    def failing_first(request: httpx.Request) -> httpx.Response:
        if b'"broken"' in request.content:
            return httpx.Response(500, json={"error": {"message": "boom", "type": "server_error"}})
        return httpx.Response(200, json=completion())

    models = {
        "m": {"deployments": [{"provider": "openai", "model": "broken"}], "price": MODEL["price"], "fallbacks": ["fb"]},
        "fb": MODEL,
    }
    served = await serve(failing_first, models, store_url=store_url)
    limited = KeyRecord(
        id="", name="l", secret_hash="", created_at=0, budget_usd=1.0, budget_period="month",
        model_limits={"fb": {"rpm": 1}},
    )  # fmt: skip
    served.key = await KeyAdmin(KeyService(served.gateway.store, 0)).mint(limited)
    await cancelled_twice_while_written(served, lambda admission: admission.reservation_id.endswith("@fb"))
    assert await served.ledger() != []  # (the 500's line: the request was settled)
    meter = await served.gateway.store.meter(served.key.record.id, period_of("month", time.time()))
    assert meter.rates.get("rpm:fb", 0) == 0, meter
    assert (await served.post("/v1/chat/completions", {"model": "fb", "messages": HI})).status_code == 200
    await served.gateway.aclose()


async def nothing_held_and_closed(served: Any, store: DynamoDBStore, key_id: str) -> None:
    """The key of `limited_on` holds nothing of the request's this month (committed, requests, tokens); `served` is
    closed either way."""
    period = period_of("month", time.time())
    meter = await store.meter(key_id, period)
    try:
        assert meter.committed_usd[period] == pytest.approx(0, abs=1e-9), meter.committed_usd
        # (a counter of a minute that has ended reads as none: the count is checked, not the window's presence)
        assert {name: count for name, count in meter.rates.items() if count} == {}, meter
    finally:
        await served.gateway.aclose()


async def test_a_late_admissions_release_is_not_lost_when_a_drain_is_cut_short(dynamo: DynamoServer) -> None:
    """The admission lands at once and DynamoDB answers 1.5 s later, past `x-gateway-deadline-ms: 300` (503); the
    settlements' bounded drain (`Gateway.settle_within`: the streaming function's last byte, `gateway serve`'s
    shutdown) is cut before that answer comes: the reservation is still released once it comes. A task waiting for
    it was cancelled by the drain and dropped the release: $0.02001 of the key's budget and its minute's counts held
    until the reservation expired (960 s; found by review)."""
    table = dynamo.create_table()
    transport = SlowAnswers()
    transport.delay = 1.5
    dynamodb = DynamoDBClient("us-east-1", Credentials("testing", "testing"), dynamo.url, transport=transport)
    store = DynamoDBStore(dynamodb, table, owned=[dynamodb])
    served, key, auth, body = await limited_on(store)
    transport.slowed = 1
    cut = await served.http.post("/v1/chat/completions", json=body, headers={**auth, "x-gateway-deadline-ms": "300"})
    assert cut.status_code == 503, cut.text
    await served.gateway.settle_within(0.2, "cut short for the review")  # the last byte's / shutdown's bound
    await asyncio.sleep(2.0)  # the admission's answer comes meanwhile
    await served.gateway.drain()
    await nothing_held_and_closed(served, store, key.record.id)


async def test_a_shutdown_drain_waits_for_a_late_admissions_answer_within_its_bound(dynamo: DynamoServer) -> None:
    """`gateway serve`'s shutdown (`Gateway.settle_before_exit`, bounded) right after a 503 whose DynamoDB admission
    landed and answers 1 s late: the answer comes within the bound, so the shutdown waits for it and releases the
    reservation before the store closes. Nothing waited for it (found by review): the shutdown returned at once, the
    store closed, and $0.02001 of the key's budget, one request and its tokens stayed held until expiry (960 s)."""
    transport = SlowAnswers()
    transport.delay = 1.0
    dynamodb = DynamoDBClient("us-east-1", Credentials("testing", "testing"), dynamo.url, transport=transport)
    store = DynamoDBStore(dynamodb, dynamo.create_table(), owned=[dynamodb])
    served, key, auth, body = await limited_on(store)
    transport.slowed = 1
    cut = await served.http.post("/v1/chat/completions", json=body, headers={**auth, "x-gateway-deadline-ms": "300"})
    assert cut.status_code == 503, cut.text
    await served.gateway.settle_before_exit(5.0)  # the shutdown's bound: the answer comes within it
    await nothing_held_and_closed(served, store, key.record.id)


@pytest.mark.parametrize("minted_in", ["home", "elsewhere"])
async def test_a_mint_counted_past_the_deadline_is_given_back_once_its_answer_comes(
    dynamo: DynamoServer, minted_in: str
) -> None:
    """A child's mint (`POST /v1/keys`) is counted on its family's root key, in the root's home region
    (`Meter.count_request`, `Store.admit_at`). DynamoDB wrote that count and answered 1 s past
    `x-gateway-deadline-ms: 300`: the client was answered 503 and no key was minted, yet the count was left to its
    minute (only an admission counted with no region named was given back): one of the family's mints a minute spent
    on a key never made, minted in the root's home region (every key on DynamoDB has one) as in another. Now it is
    given back once its answer comes, in the region where it was counted."""
    home_region, other_region = "us-east-1", "eu-west-1"
    credentials = Credentials("testing", "testing")
    table = dynamo.create_table()
    transport = SlowAnswers()
    at_home = DynamoDBClient(home_region, credentials, dynamo.url, transport=transport)
    home = DynamoDBStore(at_home, table, region=home_region, owned=[at_home])
    root = await KeyAdmin(KeyService(home, 0)).mint(KeyRecord(id="", name="root", secret_hash="", created_at=0))
    store = home
    if minted_in == "elsewhere":
        dynamo.create_table(table, other_region)
        there = DynamoDBClient(other_region, credentials, dynamo.url)
        store = DynamoDBStore(there, table, region=other_region, client_for=lambda region: at_home, owned=[there])
        await store.create_key(root.record)  # (as the global table's replication brings it there)
    served = await serve(lambda request: httpx.Response(200, json=completion()), {"m": MODEL}, store=store)
    auth = {"authorization": f"Bearer {root.key}"}
    assert (await served.http.get("/v1/key", headers=auth)).status_code == 200  # (its key cached)
    transport.slowed = 1
    cut = await served.http.post("/v1/keys", json={"name": "c"}, headers={**auth, "x-gateway-deadline-ms": "300"})
    assert cut.status_code == 503 and cut.json()["error"]["code"] == "store_unavailable", cut.text
    await asyncio.sleep(1.2)  # the count's answer comes
    await served.gateway.drain()
    try:
        meter = await home.meter(root.record.id, period_of("month", time.time()))
        assert {name: count for name, count in meter.rates.items() if count} == {}, meter.rates
    finally:
        await served.gateway.aclose()
        if store is not home:
            await home.close()


async def test_a_token_counts_count_written_while_it_is_cancelled_twice_is_given_back(store_url: str) -> None:
    """A token count is counted on the key's requests a minute (`rpm: 1`) before it is sent. Cancelled while the
    store wrote that count, and again before the store answered (a server stopping past its grace), the wait for the
    count was not shielded: the request never learnt of it, and the minute's one request was spent on a count never
    sent (the next request a 429). Now the count is waited for and given back: nothing counted, nothing sent, no line,
    and the next request is served."""
    anthropic = {"type": "anthropic", "api_key": "env:ANTHROPIC_API_KEY", "base_url": "http://up"}
    models = {"m": {"deployments": [{"provider": "openai", "model": "claude-x"}], "price": {"input": 1, "output": 2}}}
    served = await serve(
        lambda request: httpx.Response(200, json={"input_tokens": 7}),
        models,
        provider=anthropic,
        environ={"ANTHROPIC_API_KEY": "sk-ant-test-0000000000"},
        store_url=store_url,
    )
    limited = KeyRecord(id="", name="l", secret_hash="", created_at=0, budget_usd=1.0, budget_period="month", rpm=1)
    served.key = await KeyAdmin(KeyService(served.gateway.store, 0)).mint(limited)
    await cancelled_twice_while_written(served, lambda admission: admission.reservation_id.endswith("#count"), COUNT)
    assert await served.ledger() == []  # (nothing was sent)
    meter = await served.gateway.store.meter(served.key.record.id, period_of("month", time.time()))
    assert {name: count for name, count in meter.rates.items() if count} == {}, meter.rates
    counted = await served.post(COUNT, {"model": "m", "messages": HI})
    assert (counted.status_code, counted.json()) == (200, {"input_tokens": 7}), counted.text


async def test_a_token_count_a_stopping_server_cuts_in_flight_leaves_its_line() -> None:
    """A count sent to the provider, its request cancelled meanwhile (a stopping server past its grace cancels the
    requests still running), left no ledger line: `count_tokens` settled on a gateway's error alone."""
    sent = asyncio.Event()

    async def hangs(request: httpx.Request) -> httpx.Response:
        sent.set()
        await asyncio.Event().wait()  # (the provider never answers)
        raise AssertionError("unreachable")

    anthropic = {"type": "anthropic", "api_key": "env:ANTHROPIC_API_KEY", "base_url": "http://up"}
    models = {"c": {"deployments": [{"provider": "openai", "model": "claude-x"}], "price": {"input": 1, "output": 2}}}
    environ = {"ANTHROPIC_API_KEY": "sk-ant-test-0000000000"}
    served = await serve(hangs, models, provider=anthropic, environ=environ)
    headers = {"x-api-key": served.key.key, "anthropic-version": "2023-06-01"}
    body = {"model": "c", "messages": HI}
    counting = asyncio.ensure_future(served.http.post("/v1/messages/count_tokens", json=body, headers=headers))
    await asyncio.wait_for(sent.wait(), 5)
    counting.cancel()
    with pytest.raises(asyncio.CancelledError):
        await counting
    [line] = await served.ledger()
    await served.gateway.aclose()
    assert (line.status, line.upstream_model, line.cost_usd) == (499, "claude-x", 0.0), line


@pytest.mark.parametrize(
    ("price", "fee"),
    [({"input": 1.0, "output": 2.0}, {"per_request_usd": 1e300}), ({"input": 1.0, "output": 1e305}, {})],
)
@pytest.mark.parametrize("budgeted", [True, False])
async def test_a_worst_case_past_what_a_float_holds_is_refused_not_a_500(
    price: dict[str, float], fee: dict[str, float], budgeted: bool
) -> None:
    """A fee of 1e300 USD, or a price whose worst case is past 1e308, is finite and taken at load, but its worst
    case in nano-dollars is infinite: `worst_case_usd` raised OverflowError (`math.ceil(inf)`), and every request
    was a 500. It is a 402 saying why, on a key without a budget too, and nothing is sent.
    Found by review (oprev36)."""
    sent: list[httpx.Request] = []

    def upstream(request: httpx.Request) -> httpx.Response:
        sent.append(request)
        return httpx.Response(200, json=completion())

    model = {"deployments": [{"provider": "openai", "model": "gpt-4o-mini"}], "price": price}
    served = await serve(upstream, {"m": model}, fee=fee)
    key = served.key
    if not budgeted:
        record = KeyRecord(id="", name="free", secret_hash="", created_at=0)
        key = await KeyAdmin(KeyService(served.gateway.store, 0)).mint(record)
    reply = await served.http.post(
        "/v1/chat/completions",
        json={"model": "m", "messages": HI},
        headers={"authorization": f"Bearer {key.key}"},
    )
    await served.gateway.aclose()
    assert reply.status_code == 402, reply.text
    error = reply.json()["error"]
    assert error["code"] == "budget_exceeded"
    assert "more than the gateway can count" in error["message"]
    assert reply.headers["x-should-retry"] == "false"
    assert sent == []
