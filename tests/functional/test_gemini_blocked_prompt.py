"""A prompt Gemini blocks (`promptFeedback.blockReason`, no candidate) comes with Gemini's usage: its prompt's tokens
and none out (`tests/fixtures/gemini/prompt-blocked-response.json`). The gateway tells the client in words of its own
("Gemini blocked the prompt (...)": Chat's `refusal`, a Messages `text` block, a Responses `output_text`), and counted
them as written output: 0 tokens out for an answer that wrote something is no count a provider bills
(`pricing.counts_output`), so Gemini's usage was thrown away and an estimate billed, on every API, whole and
streamed: 16 output tokens Gemini never generated, and the gateway's guess of the prompt for Gemini's count. Found by
review."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import httpx
import orjson
import pytest

from tests.support.inprocess import serve

BLOCKED = (Path(__file__).resolve().parents[1] / "fixtures" / "gemini" / "prompt-blocked-response.json").read_bytes()
GEMINI = {"type": "gemini", "api_key": "env:OPENAI_API_KEY", "base_url": "http://up"}
MODELS = {
    "g": {"deployments": [{"provider": "openai", "model": "gemini-2.5-flash"}], "price": {"input": 1, "output": 2}}
}
ANTHROPIC = {"anthropic-version": "2023-06-01"}


def blocked(request: httpx.Request) -> httpx.Response:
    if "streamGenerateContent" in request.url.path:
        return httpx.Response(
            200,
            content=b"data: " + BLOCKED.replace(b"\n", b"") + b"\r\n\r\n",
            headers={"content-type": "text/event-stream"},
        )
    return httpx.Response(200, content=BLOCKED, headers={"content-type": "application/json"})


BODIES: dict[str, tuple[str, dict[str, Any]]] = {
    "chat": ("/v1/chat/completions", {"messages": [{"role": "user", "content": "x"}]}),
    "responses": ("/v1/responses", {"input": "x"}),
    "messages": ("/v1/messages", {"max_tokens": 100, "messages": [{"role": "user", "content": "x"}]}),
}


@pytest.mark.parametrize("stream", [False, True], ids=["whole", "streamed"])
@pytest.mark.parametrize("api", list(BODIES))
async def test_a_blocked_prompt_is_billed_geminis_usage_not_an_estimate_of_the_gateways_text(
    api: str, stream: bool
) -> None:
    served = await serve(blocked, MODELS, provider=GEMINI)
    try:
        path, body = BODIES[api]
        answer = await served.http.post(
            path,
            json={"model": "g", "stream": stream, **body},
            headers={"authorization": f"Bearer {served.key.key}", **(ANTHROPIC if api == "messages" else {})},
        )
        assert answer.status_code == 200, answer.text
        assert "blocked the prompt" in answer.text  # (the client is told)
        [line] = await served.ledger()
        # Gemini's usage: 12 tokens in, none out (promptTokenCount 12, totalTokenCount 12).
        assert (line.cost_source, line.input_tokens, line.output_tokens) == ("provider", 12, 0)
    finally:
        await served.gateway.aclose()


FILTERED_MODELS = {"m": {"deployments": [{"provider": "openai", "model": "m-1"}], "price": {"input": 1, "output": 2}}}
REFUSAL = "Gemini blocked the prompt (PROHIBITED_CONTENT): nothing was generated for it."


def filtered_answer(plain: bool) -> dict[str, Any]:
    choice: dict[str, Any] = {
        "index": 0,
        "message": {"role": "assistant", "content": None, "refusal": REFUSAL},
        "finish_reason": "content_filter",
        "logprobs": None if plain else {"content": [], "refusal": []},
    }
    return {
        "id": "chatcmpl-1",
        "object": "chat.completion",
        "created": 1,
        "model": "m-1",
        "choices": [choice],
        "usage": {"prompt_tokens": 12, "completion_tokens": 0, "total_tokens": 12},
    }


async def filtered_billed(plain: bool) -> tuple[str, int, int]:
    served = await serve(lambda request: httpx.Response(200, json=filtered_answer(plain)), FILTERED_MODELS)
    try:
        got = await served.http.post(
            "/v1/chat/completions",
            json={"model": "m", "messages": [{"role": "user", "content": "x"}]},
            headers={"authorization": f"Bearer {served.key.key}"},
        )
        assert got.status_code == 200, got.text
        [line] = await served.ledger()
        return line.cost_source, line.input_tokens, line.output_tokens
    finally:
        await served.gateway.aclose()


async def test_a_filtered_refusal_is_billed_alike_on_the_plain_and_the_model_path() -> None:
    """A compatible server's answer of a refusal a filter ended, 0 tokens out (as another gateway answers a prompt
    Gemini blocked), was billed Gemini's usage on the model path and an estimate on the plain one (a plain answer's
    characters counted its refusal). Found by review (mergerev35)."""
    assert await filtered_billed(plain=True) == await filtered_billed(plain=False) == ("provider", 12, 0)


def filtered_stream(request: httpx.Request) -> httpx.Response:
    def event(delta: dict[str, Any], finish: str | None = None, usage: dict[str, int] | None = None) -> bytes:
        choices = [] if usage else [{"index": 0, "delta": delta, "finish_reason": finish}]
        body = {"id": "c", "object": "chat.completion.chunk", "created": 1, "model": "m-1", "choices": choices}
        return b"data: " + orjson.dumps({**body, **({"usage": usage} if usage else {})}) + b"\n\n"

    usage = {"prompt_tokens": 12, "completion_tokens": 0, "total_tokens": 12}
    events = [
        event({"role": "assistant", "content": None, "refusal": REFUSAL[:20]}),
        event({"refusal": REFUSAL[20:]}),  # (the refusal before the chunk its filter ends it in)
        event({}, "content_filter"),
        event({}, usage=usage),
    ]
    return httpx.Response(
        200, content=b"".join(events) + b"data: [DONE]\n\n", headers={"content-type": "text/event-stream"}
    )


async def test_a_filtered_refusal_streamed_before_its_finish_is_billed_as_whole() -> None:
    """Streamed, a filtered refusal counted as written output where its chunk came before the one its filter ended
    it in: billed an estimate, where the same answer whole is billed the provider's 0 tokens out. (mergerev35)"""
    served = await serve(filtered_stream, FILTERED_MODELS)
    try:
        got = await served.http.post(
            "/v1/chat/completions",
            json={"model": "m", "stream": True, "messages": [{"role": "user", "content": "x"}]},
            headers={"authorization": f"Bearer {served.key.key}"},
        )
        assert got.status_code == 200 and "content_filter" in got.text, got.text
        [line] = await served.ledger()
    finally:
        await served.gateway.aclose()
    assert (line.cost_source, line.input_tokens, line.output_tokens) == ("provider", 12, 0)
