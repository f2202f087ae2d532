"""What a stream cut short is charged when its provider sent no usage: the relayed text's estimate, never past what
its attempt could write: the cap it was sent, else its model's ceiling (the config's `max_output_tokens`, else the one
the gateway ships for its upstream model, handler/default_config.yaml's), and as counted where no ceiling is known.
In-process, each upstream an `httpx.MockTransport` that writes in its API's events without end and never a usage: cut
by its client leaving or by its deadline, on Chat Completions, the Messages API (translated and passed through) and
the Responses API (translated and passed through), with a key with no budget and one with a budget."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Callable
from typing import Any

import httpx
import orjson
import pytest

from handler.api.app import create_app
from handler.pipeline.key_admin import KeyAdmin, MintedKey
from handler.pipeline.keys import KeyService
from handler.ports import KeyRecord, LedgerItem, UsageQuery
from tests.support.asgi import post_scope
from tests.support.inprocess import Served, serve

PRICE = {"input": 0.15, "output": 0.60}  # gpt-4o-mini's
TEXT = "word " * 2_000  # a delta of 10,000 characters: 3,334 tokens as the gateway estimates text (3 a token)
LEFT_AFTER_BYTES = 200_000  # about 20 deltas relayed: 66,000 tokens estimated, four times gpt-4o-mini's 16,384
HI: Any = [{"role": "user", "content": "Write without end."}]
ANTHROPIC = {"type": "anthropic", "api_key": "env:ANTHROPIC_API_KEY", "base_url": "http://up"}
NATIVE_OPENAI = {
    "type": "openai",
    "api_key": "env:OPENAI_API_KEY",
    "base_url": "http://up/v1",
    "responses_api": "native",  # (else translated: a compatible server's)
}
KEYS = {"OPENAI_API_KEY": "sk-test-000000000000", "ANTHROPIC_API_KEY": "sk-ant-test-0000000000"}


def data(payload: dict[str, Any]) -> bytes:
    return b"data: " + orjson.dumps(payload) + b"\n\n"


def event(name: str, payload: dict[str, Any]) -> bytes:
    return b"event: " + name.encode() + b"\n" + data({"type": name, **payload})


def chat_chunk(model: str, delta: dict[str, Any]) -> bytes:
    choice = {"index": 0, "delta": delta, "finish_reason": None}
    head = {"id": "chatcmpl-1", "object": "chat.completion.chunk", "created": 1, "model": model}
    return data({**head, "choices": [choice]})


async def endless(
    opening: list[bytes], delta: Callable[[int], bytes], deltas: int | None = None
) -> AsyncIterator[bytes]:
    """`opening`, then `delta(i)` for ever (or `deltas` of them, then nothing more, the connection held open), a
    millisecond apart: a provider that writes without end and sends no usage."""
    for piece in opening:
        yield piece
    i = 0
    while deltas is None or i < deltas:
        yield delta(i)
        i += 1
        await asyncio.sleep(0.001)
    await asyncio.sleep(3600)


def writing(deltas: int | None = None, seen: list[dict[str, Any]] | None = None) -> Callable[..., httpx.Response]:
    """The upstream: each API's stream, by its path, writing `TEXT` without end (or `deltas` times); each request's
    body put in `seen`."""

    def answer(request: httpx.Request) -> httpx.Response:
        asked = orjson.loads(request.content)
        if seen is not None:
            seen.append(asked)
        model = asked["model"]
        path = request.url.path
        if path.endswith("/chat/completions"):
            opening = [chat_chunk(model, {"role": "assistant", "content": ""})]
            events = endless(opening, lambda i: chat_chunk(model, {"content": TEXT}), deltas)
        elif path.endswith("/responses"):
            response = {"id": "resp_1", "object": "response", "created_at": 1, "model": model, "output": []}
            message = {"id": "msg_1", "type": "message", "role": "assistant", "status": "in_progress", "content": []}
            opening = [
                event("response.created", {"sequence_number": 0, "response": {**response, "status": "in_progress"}}),
                event("response.output_item.added", {"sequence_number": 1, "output_index": 0, "item": message}),
                event(
                    "response.content_part.added",
                    {
                        "sequence_number": 2,
                        "item_id": "msg_1",
                        "output_index": 0,
                        "content_index": 0,
                        "part": {"type": "output_text", "text": "", "annotations": []},
                    },
                ),
            ]
            where = {"item_id": "msg_1", "output_index": 0, "content_index": 0}
            events = endless(
                opening,
                lambda i: event("response.output_text.delta", {"sequence_number": i + 3, **where, "delta": TEXT}),
                deltas,
            )
        else:  # Anthropic's Messages API
            usage = {"input_tokens": 12, "output_tokens": 1}
            start = {"id": "msg_1", "type": "message", "role": "assistant", "model": model, "content": []}
            start |= {"stop_reason": None, "stop_sequence": None, "usage": usage}
            opening = [
                event("message_start", {"message": start}),
                event("content_block_start", {"index": 0, "content_block": {"type": "text", "text": ""}}),
            ]
            text = {"index": 0, "delta": {"type": "text_delta", "text": TEXT}}
            events = endless(opening, lambda i: event("content_block_delta", text), deltas)
        return httpx.Response(200, content=events, headers={"content-type": "text/event-stream"})

    return answer


async def gateway(model: dict[str, Any], provider: dict[str, Any] | None = None, **settings: Any) -> Served:
    """The gateway serving `model` as `m` (the operator's own name for it), its provider written by `writing()`."""
    return await serve(writing(), {"m": {"price": PRICE, **model}}, provider=provider, environ=KEYS, **settings)


async def unbudgeted(served: Served) -> MintedKey:
    """A key of `served`'s gateway with no budget: its requests are sent no cap unless they ask for one."""
    record = KeyRecord(id="", name="free", secret_hash="", created_at=0, budget_usd=None, budget_period="month")
    return await KeyAdmin(KeyService(served.gateway.store, 0)).mint(record)


def past_bytes(count: int) -> Callable[[bytes], bool]:
    return lambda body: len(body) >= count


async def left_after(
    served: Served, key: MintedKey, path: str, body: dict[str, Any], until: Callable[[bytes], bool]
) -> dict[str, str]:
    """Streams `body` to `path` with `key` and leaves once what came of the answer is `until`: its headers."""
    raw = orjson.dumps({**body, "stream": True})
    headers = [
        (b"authorization", f"Bearer {key.key}".encode()),
        (b"content-type", b"application/json"),
        (b"anthropic-version", b"2023-06-01"),
    ]
    asked, gone = False, asyncio.Event()
    came = bytearray()
    head: dict[str, str] = {}

    async def receive() -> dict[str, Any]:
        nonlocal asked
        if not asked:
            asked = True
            return {"type": "http.request", "body": raw, "more_body": False}
        await gone.wait()
        return {"type": "http.disconnect"}

    async def send(message: dict[str, Any]) -> None:
        if message["type"] == "http.response.start":
            assert message["status"] == 200
            head.update({name.decode(): value.decode() for name, value in message["headers"]})
        elif message["type"] == "http.response.body" and not gone.is_set():
            came.extend(message.get("body", b""))
            if until(bytes(came)):
                gone.set()

    app = create_app(served.gateway)
    await asyncio.wait_for(app(post_scope(path, headers, ("127.0.0.1", 5000)), receive, send), 30)
    assert gone.is_set(), bytes(came[-400:])  # (the client left: the stream did not end on its own)
    return head


async def only_line(served: Served, key: MintedKey) -> LedgerItem:
    await served.gateway.drain()
    lines = await served.gateway.store.usage(UsageQuery([key.record.id], 0, time.time() + 3600))
    assert len(lines) == 1, lines
    return lines[0]


CHAT: Any = {"model": "m", "messages": HI}
MESSAGES: Any = {"model": "m", "messages": HI}
RESPONSES: Any = {"model": "m", "input": "Write without end."}


@pytest.mark.parametrize("upstream_model", ["gpt-4o-mini", "gpt-4o-mini-2024-07-18"])
async def test_a_chat_stream_its_client_left_is_charged_no_more_than_the_shipped_ceiling(upstream_model: str) -> None:
    """gpt-4o-mini (by the operator's own name, `m`, with no `max_output_tokens`), sent no cap (a key without a
    budget), writing without end and no usage: its client left after 200 KB, about 66,000 tokens of text. It was
    charged every token relayed (66,000 or more: 1,120,000 tokens, $0.672, once a stream ran long) of a model that
    writes 16,384 at most, the ceiling the gateway ships for it (and for its dated release). Now 16,384."""
    served = await gateway({"deployments": [{"provider": "openai", "model": upstream_model}]})
    key = await unbudgeted(served)
    await left_after(served, key, "/v1/chat/completions", CHAT, past_bytes(LEFT_AFTER_BYTES))
    line = await only_line(served, key)
    await served.gateway.aclose()
    assert (line.status, line.cost_source, line.output_tokens) == (499, "estimate", 16_384), line
    assert line.cost_usd == pytest.approx(line.input_tokens * 0.15e-6 + 16_384 * 0.6e-6)


@pytest.mark.parametrize("provider", [None, NATIVE_OPENAI], ids=["translated", "passed-through"])
async def test_a_responses_stream_its_client_left_is_charged_no_more_than_the_shipped_ceiling(
    provider: dict[str, Any] | None,
) -> None:
    """The same through the Responses API, as Codex sends it (no `max_output_tokens`): translated to Chat
    Completions (an OpenAI-compatible server) and passed through to OpenAI's own Responses API."""
    served = await gateway({"deployments": [{"provider": "openai", "model": "gpt-4o-mini"}]}, provider)
    key = await unbudgeted(served)
    await left_after(served, key, "/v1/responses", RESPONSES, past_bytes(LEFT_AFTER_BYTES))
    line = await only_line(served, key)
    await served.gateway.aclose()
    assert (line.status, line.cost_source, line.output_tokens) == (499, "estimate", 16_384), line


@pytest.mark.parametrize(
    ("provider", "upstream_model"),
    [(None, "gpt-4o-mini"), (ANTHROPIC, "claude-haiku-4-5")],
    ids=["translated", "passed-through"],
)
async def test_a_messages_stream_its_client_left_is_charged_no_more_than_its_cap(
    provider: dict[str, Any] | None, upstream_model: str
) -> None:
    """A Messages request always names its cap (`max_tokens`), what its attempt could write whatever the model's
    ceiling: translated to Chat Completions and passed through to Anthropic, its estimate stops there (it did
    before: no Messages stream went unbounded)."""
    served = await gateway({"deployments": [{"provider": "openai", "model": upstream_model}]}, provider)
    key = await unbudgeted(served)
    await left_after(served, key, "/v1/messages", {**MESSAGES, "max_tokens": 20_000}, past_bytes(LEFT_AFTER_BYTES))
    line = await only_line(served, key)
    await served.gateway.aclose()
    assert (line.status, line.cost_source, line.output_tokens) == (499, "estimate", 20_000), line


@pytest.mark.parametrize(
    ("path", "body"),
    [("/v1/chat/completions", CHAT), ("/v1/responses", RESPONSES)],
    ids=["chat", "responses"],
)
async def test_a_stream_its_deadline_cut_is_charged_no_more_than_the_shipped_ceiling(
    path: str, body: dict[str, Any]
) -> None:
    """The same stream cut by its deadline (`x-gateway-deadline-ms`) rather than by its client."""
    served = await gateway({"deployments": [{"provider": "openai", "model": "gpt-4o-mini"}]})
    key = await unbudgeted(served)
    answer = await served.http.post(
        path,
        json={**body, "stream": True},
        headers={"authorization": f"Bearer {key.key}", "x-gateway-deadline-ms": "600"},
        timeout=30,
    )
    line = await only_line(served, key)
    await served.gateway.aclose()
    assert answer.status_code == 200 and "deadline" in answer.text, answer.text[-400:]
    assert (line.status, line.cost_source, line.output_tokens) == (504, "estimate", 16_384), line


@pytest.mark.parametrize("ceiling", [9_000, 30_000])
async def test_the_configs_ceiling_wins_over_the_shipped_one(ceiling: int) -> None:
    """The operator's `max_output_tokens` for the model is its ceiling, below the shipped one or above it."""
    deployed = [{"provider": "openai", "model": "gpt-4o-mini"}]
    served = await gateway({"deployments": deployed, "max_output_tokens": ceiling})
    key = await unbudgeted(served)
    await left_after(served, key, "/v1/chat/completions", CHAT, past_bytes(LEFT_AFTER_BYTES))
    line = await only_line(served, key)
    await served.gateway.aclose()
    assert (line.cost_source, line.output_tokens) == ("estimate", ceiling), line


async def test_a_stream_of_a_model_with_no_known_ceiling_is_charged_as_counted() -> None:
    """A model the gateway ships no ceiling for, configured with none, sent no cap: what the provider sent is the
    best word there is, and the estimate is the relayed text's, not the gateway's default cap (4,096)."""
    served = await gateway({"deployments": [{"provider": "openai", "model": "house-model-7b"}]})
    key = await unbudgeted(served)
    await left_after(served, key, "/v1/chat/completions", CHAT, past_bytes(LEFT_AFTER_BYTES))
    line = await only_line(served, key)
    await served.gateway.aclose()
    assert line.cost_source == "estimate" and line.output_tokens > 60_000, line  # (200 KB relayed, or more)


async def test_a_long_answer_cut_below_its_models_ceiling_is_charged_what_it_wrote() -> None:
    """gpt-4.1 writes up to 32,768 tokens (the ceiling the gateway ships for it): an answer of 20,000 tokens (six
    deltas), cut before its usage, is charged its 20,000, not the gateway's default cap of 4,096, which it was never
    sent (no budget): capped at that, a long answer of any model the config gives no `max_output_tokens` would be
    charged a fraction of what it wrote."""
    model = {"m": {"price": PRICE, "deployments": [{"provider": "openai", "model": "gpt-4.1"}]}}
    served = await serve(writing(deltas=6), model, environ=KEYS)
    key = await unbudgeted(served)
    written = 6 * TEXT.count("word ")
    await left_after(served, key, "/v1/chat/completions", CHAT, lambda body: body.count(b"word ") >= written)
    line = await only_line(served, key)
    await served.gateway.aclose()
    assert (line.cost_source, line.output_tokens) == ("estimate", 20_000), line


async def test_a_budgeted_stream_is_charged_within_what_it_reserved() -> None:
    """A key with a budget sends every request a cap, the one its worst case reserved (the gateway's default,
    4,096, for one that asks none of a model the config gives no ceiling): the stream, cut, is charged within it, and
    the budget's reservation is never below what the settlement charges."""
    sent: list[dict[str, Any]] = []
    model = {"m": {"price": PRICE, "deployments": [{"provider": "openai", "model": "gpt-4o-mini"}]}}
    served = await serve(writing(seen=sent), model, environ=KEYS)
    head = await left_after(served, served.key, "/v1/chat/completions", CHAT, past_bytes(LEFT_AFTER_BYTES))
    reserved = round(10.0 - float(head["x-gateway-budget-remaining-usd"]), 12)  # (as the budget's sums are kept)
    line = await only_line(served, served.key)
    await served.gateway.aclose()
    assert [body["max_tokens"] for body in sent] == [4_096]  # (a server with no profile: the cap as `max_tokens`)
    assert (line.status, line.cost_source, line.output_tokens) == (499, "estimate", 4_096), line
    assert line.cost_usd is not None and 0 < line.cost_usd <= reserved
