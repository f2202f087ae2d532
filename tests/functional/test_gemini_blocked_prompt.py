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
