"""The advisor tool's cost on a Messages stream cut by the client leaving or by its deadline (not only by the
upstream), and on a thread's `continue` (found by review). A scripted Anthropic upstream streams an advisor call (its
`server_tool_use` block and its result), then writes slowly, without its final usage."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import anthropic
import httpx
import orjson
import pytest
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import StreamingResponse
from starlette.routing import Route

from adapters.providers.registry import REGISTRY
from handler.config import parse_config
from handler.pipeline.charges import DEFAULT_ADVICE_TOKENS
from tests.functional.conftest import Running, anthropic_client, serve_gateway
from tests.functional.test_search_and_cache_prices import (  # noqa: F401
    ADVISOR_BETA,
    THREADS_BETA,
    advised_settings,
    continue_of,
    priced,
    worst_case,
)
from tests.functional.test_stream_endings import left_line
from tests.support.servers import ServerThread

ADVISOR_MODEL = "claude-opus-4-6"  # the built-in table's $5 / $25 a million
ONE_CALL_USD = DEFAULT_ADVICE_TOKENS * 25.0 / 1e6  # one advisor call's most output, at Opus's price
HI: Any = [{"role": "user", "content": "What is new today?"}]


def sse(event: str, data: dict[str, Any]) -> bytes:
    return b"event: " + event.encode() + b"\ndata: " + orjson.dumps(data) + b"\n\n"


async def advised_message(request: Request) -> StreamingResponse:
    """A Messages stream whose advisor runs once (as Anthropic streams it), then writes a word every 50 ms."""
    asked = orjson.loads(await request.body())
    user = str((asked.get("metadata") or {}).get("user_id"))
    refused_again = "twice" in user
    unadvised = "plain" in user  # (no advisor call: the same stream without it)

    async def events() -> AsyncIterator[bytes]:
        usage = {"input_tokens": 100, "output_tokens": 1}
        start = {"id": "msg_advised", "type": "message", "role": "assistant", "model": "claude-x", "content": []}
        start |= {"stop_reason": None, "stop_sequence": None, "usage": usage}
        yield sse("message_start", {"type": "message_start", "message": start})
        index = 0
        if not unadvised:
            use = {"type": "server_tool_use", "id": "srvtoolu_1", "name": "advisor", "input": {}}
            yield sse("content_block_start", {"type": "content_block_start", "index": 0, "content_block": use})
            yield sse("content_block_stop", {"type": "content_block_stop", "index": 0})
            advice = {"type": "advisor_result", "text": "Plan first.", "stop_reason": "end_turn"}
            result = {"type": "advisor_tool_result", "tool_use_id": "srvtoolu_1", "content": advice}
            yield sse("content_block_start", {"type": "content_block_start", "index": 1, "content_block": result})
            yield sse("content_block_stop", {"type": "content_block_stop", "index": 1})
            index = 2
        if refused_again:  # a second call, past the tool's `max_uses`: refused, as a search past it is (not run)
            use = {"type": "server_tool_use", "id": "srvtoolu_2", "name": "advisor", "input": {}}
            yield sse("content_block_start", {"type": "content_block_start", "index": 2, "content_block": use})
            yield sse("content_block_stop", {"type": "content_block_stop", "index": 2})
            error = {"type": "advisor_tool_result_error", "error_code": "max_uses_exceeded"}
            result = {"type": "advisor_tool_result", "tool_use_id": "srvtoolu_2", "content": error}
            yield sse("content_block_start", {"type": "content_block_start", "index": 3, "content_block": result})
            yield sse("content_block_stop", {"type": "content_block_stop", "index": 3})
            index = 4
        text = {"type": "text", "text": ""}
        yield sse("content_block_start", {"type": "content_block_start", "index": index, "content_block": text})
        for _ in range(200):
            delta = {"type": "text_delta", "text": "word "}
            yield sse("content_block_delta", {"type": "content_block_delta", "index": index, "delta": delta})
            await asyncio.sleep(0.05)

    return StreamingResponse(events(), media_type="text/event-stream")


@pytest.fixture(scope="module")
def advising(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Running]:
    server = ServerThread(Starlette(routes=[Route("/v1/messages", advised_message, methods=["POST"])])).start()
    data = {
        "providers": {"advising": {"type": "anthropic", "api_key": "env:ANTHROPIC_API_KEY", "base_url": server.url}},
        "models": {
            "claude": {
                "deployments": [{"provider": "advising", "model": "claude-x"}],
                "price": {"input": 3.0, "output": 15.0},
            }
        },
    }
    store = f"sqlite:///{Path(tmp_path_factory.mktemp('rev23c')) / 'gateway.db'}"
    running, gateway_server = serve_gateway(parse_config(data, set(REGISTRY)), store, server, {})
    yield running
    gateway_server.stop()
    server.stop()


def body() -> dict[str, Any]:
    tool = {"type": "advisor_20260301", "name": "advisor", "model": ADVISOR_MODEL}
    return {"model": "claude", "max_tokens": 300, "messages": HI, "tools": [tool], "stream": True}


def headers(key: str, **more: str) -> dict[str, str]:
    return {"authorization": f"Bearer {key}", "anthropic-version": "2023-06-01", "anthropic-beta": ADVISOR_BETA, **more}


def left_after_the_advice(http: httpx.Client, url: str, asked: dict[str, Any], sent: dict[str, str]) -> str:
    """Stream `asked` and hang up once the answer's text begins (the advisor ran before it); its request id."""
    with http.stream("POST", f"{url}/v1/messages", json=asked, headers=sent) as answer:
        assert answer.status_code == 200, answer.read()
        seen = b""
        for chunk in answer.iter_bytes():
            seen += chunk
            if b"text_delta" in seen:
                break
        return answer.headers["x-request-id"]


def test_an_advised_stream_the_client_leaves_is_charged_the_advisor_call_it_saw(advising: Running) -> None:
    """A client that hangs up after the advisor ran, before the final usage (which alone counts the advisor's
    tokens): the provider bills the advice all the same, so the stream's line (499, an estimate) is charged that
    call's reserved bound at the advisor model's price, as a stream the upstream cut is."""
    key = advising.mint(name="left-advised", budget_usd=5.0)
    with httpx.Client(timeout=10) as http:
        left_after_the_advice(http, advising.url, body(), headers(key))
    line = left_line(advising, key)
    assert (line.status, line.cost_source) == (499, "estimate")
    assert line.cost_usd is not None and line.cost_usd > ONE_CALL_USD, line.cost_usd


def test_an_advised_stream_cut_is_charged_no_more_advisor_calls_than_the_tool_allows(advising: Running) -> None:
    """A tool of `max_uses: 1` whose model tried a second call (refused, `max_uses_exceeded`: not run, not billed),
    and whose client then left before the final usage: charged one call's bound, within its reserved worst case.
    The meter counts every advisor `server_tool_use` block and `_advisors_usd` charges calls past all the tools'
    `max_uses` at the last one's bound, so it is charged two, past what was reserved (and what Anthropic bills)."""
    key = advising.mint(name="left-advised-twice", budget_usd=5.0)
    asked = body()
    asked["tools"][0]["max_uses"] = 1
    asked["metadata"] = {"user_id": "twice"}
    with httpx.Client(timeout=10) as http:
        probe = http.post(
            f"{advising.url}/v1/messages",
            json={**asked, "stream": False},
            headers=headers(key, **{"x-gateway-max-cost-usd": "0.000000001"}),
        )
        assert probe.status_code == 402
        reserved = float(probe.text.split("worst-case cost $")[1].split(" ")[0])
        left_after_the_advice(http, advising.url, asked, headers(key))
    line = left_line(advising, key)
    assert (line.status, line.cost_source) == (499, "estimate")
    assert line.cost_usd is not None and ONE_CALL_USD < line.cost_usd <= reserved, (line.cost_usd, reserved)


def test_an_advised_stream_its_deadline_cuts_is_charged_the_advisor_call_it_saw(advising: Running) -> None:
    """A stream its deadline (`x-gateway-deadline-ms`) cuts after the advisor ran, before the final usage: its line
    (504) is charged the advisor call's reserved bound too, and the in-stream error's cost says so."""
    key = advising.mint(name="deadline-advised", budget_usd=5.0)
    more = headers(key, **{"x-gateway-deadline-ms": "1500"})
    with httpx.Client(timeout=10) as http:
        answer = http.post(f"{advising.url}/v1/messages", json=body(), headers=more)
    assert answer.status_code == 200 and b"event: error" in answer.content
    line = left_line(advising, key)
    assert (line.status, line.cost_source) == (504, "estimate")
    assert line.cost_usd is not None and line.cost_usd > ONE_CALL_USD, line.cost_usd


def test_a_continue_of_an_advised_thread_a_small_budget_cannot_hold_is_anthropics_thread_refusal(
    priced: Running,  # noqa: F811
) -> None:
    """A `continue` whose worst case (its thread's advisor's calls among it) the key's budget cannot hold is refused
    as Anthropic refuses a request it cannot thread (400 `thread_unsupported_request`, docs/costs.md), not a 402."""
    betas = [ADVISOR_BETA, THREADS_BETA]
    settings = {**advised_settings(), "betas": betas, "metadata": {"user_id": "x"}}
    probe = anthropic_client(priced, priced.mint(name="rev23c-probe")).beta.messages
    first_worst = worst_case(probe, settings)
    # Enough for the `create` (billed about $0.04), not for a `continue` as dear once that is spent.
    key = priced.mint(name="rev23c-small-thread", budget_usd=round(first_worst + 0.01, 6))
    sdk = anthropic_client(priced, key).beta.messages
    first = sdk.create(**settings, thread={"type": "create"})
    following = continue_of(first.id, betas)
    with pytest.raises(anthropic.APIStatusError) as refused:
        sdk.create(**following)
    assert refused.value.status_code == 400, refused.value.body
    assert "thread_unsupported_request" in str(refused.value.body)


def test_a_continue_of_a_thread_answer_cut_here_is_reserved_for_its_advisor(priced: Running) -> None:  # noqa: F811
    """A thread `create` this process relayed with an Opus advisor, whose stream was cut before its final usage:
    Anthropic holds the thread (and its tools) under the id `message_start` gave, which a `continue` names. Its
    advisor was forgotten (`thread_answered` needed the provider's final usage), so the `continue` was reserved for
    the default advisor at the executor's price with the advisor beta, and for none without it: a budget could be
    passed by all of the advisor's calls. Now it is kept in the answer's record, written before the stream's first
    byte (its size, unknown, is not)."""
    key = priced.mint(name="rev23c-cut-thread", budget_usd=5.0)
    sdk = anthropic_client(priced, key).beta.messages
    betas = [ADVISOR_BETA, THREADS_BETA]
    settings = {**advised_settings(), "betas": betas, "metadata": {"user_id": "long-advice stream-cut"}}
    answer_id = None
    with pytest.raises(anthropic.APIStatusError), sdk.stream(**settings, thread={"type": "create"}) as events:
        for event in events:
            if event.type == "message_start":
                answer_id = event.message.id
    assert answer_id is not None

    def reserved(previous: str, named: list[str]) -> float:
        with pytest.raises(anthropic.APIStatusError) as refused:
            sdk.create(**continue_of(previous, named), extra_headers={"x-gateway-max-cost-usd": "0.000000001"})
        return float(str(refused.value.body).split("worst-case cost $")[1].split(" ")[0])

    # The key's, relayed by another instance (as long as the answer's id: the body's estimate is the same).
    plain_id, opus_id = (name.ljust(len(answer_id), "0") for name in ("msg_01plain", "msg_01opus"))
    priced.answered_elsewhere(key, plain_id)  # (no advisor: the conversation's whole window alone)
    priced.answered_elsewhere(key, opus_id, ((ADVISOR_MODEL, 3, DEFAULT_ADVICE_TOKENS),))
    plain = reserved(plain_id, betas)
    cut = reserved(answer_id, betas)
    # The thread's own advisor (Opus, its own rates, as its `create` sent it), whether or not the `continue` names
    # the beta: the answer's record keeps it, its size unknown (the whole window, as another instance's answer).
    assert cut > plain + 3 * ONE_CALL_USD, (plain, cut)
    assert cut == reserved(opus_id, betas) == reserved(answer_id, [THREADS_BETA])


def test_a_reasoning_stream_cut_after_an_advisor_call_no_tool_named_is_charged_it(advising: Running) -> None:
    """A `continue` of a thread whose record holds no advisor (none reserved), though the upstream runs one, that
    thinks, and whose client leaves after the thread's advisor ran: charged its reserved worst case (its reasoning
    cannot be seen), which held no advisor, and the call it showed was left out: the reasoning path returned before
    the calls were counted (found by review). Charged one call's bound at least more than the same stream without
    the call."""
    key = advising.mint(name="reasoning-continue")
    advising.answered_elsewhere(key, "msg_unknown")

    def cut(user: str) -> str:
        request = {
            "model": "claude",
            "max_tokens": 2000,
            "thinking": {"type": "enabled", "budget_tokens": 1024},
            "messages": HI,
            "stream": True,
            "thread": {"type": "continue", "previous_message_id": "msg_unknown"},
            "metadata": {"user_id": user},
        }
        sent = {"authorization": f"Bearer {key}", "anthropic-version": "2023-06-01"}
        with httpx.Client(timeout=10) as http:
            return left_after_the_advice(http, advising.url, request, sent)

    advised, plain = cut("advised"), cut("plain")
    deadline = time.monotonic() + 5
    lines = {line.request_id: line for line in advising.ledger(key)}
    while len(lines) < 2 and time.monotonic() < deadline:
        lines = {line.request_id: line for line in advising.ledger(key)}
    assert {line.cost_source for line in lines.values()} == {"reserved"}
    one_call = DEFAULT_ADVICE_TOKENS * 15.0 / 1e6  # the default advisor's output, at the executor's price
    assert (lines[advised].cost_usd or 0) - (lines[plain].cost_usd or 0) >= one_call, lines
