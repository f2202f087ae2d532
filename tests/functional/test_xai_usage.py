"""xAI's Chat Completions counts a reasoning model's reasoning tokens beside `completion_tokens`, not inside it
(docs.x.ai "Consumption and Rate Limits": reasoning tokens are "charged at completion token price", and "reasoning
token consumption will be counted separately from completion_tokens, but will be counted in the total_tokens"; a real
grok-3-mini usage: completion_tokens=1, reasoning_tokens=386, total_tokens=399 with prompt 12; vercel/ai#12425,
langchain-ai/langchain#34603, Wei-Shaw/sub2api#5771 whose hand computation matches xAI's own `cost_in_usd_ticks` only
with the reasoning tokens added). The gateway billed `completion_tokens` alone at the output price, as for OpenAI
(where reasoning is inside it), so every Grok reasoning answer was billed without its reasoning (56 times short
here). Found by review."""

from __future__ import annotations

from collections.abc import Iterator

import httpx
import pytest

from tests.functional.conftest import Running
from tests.support.scripted import SCRIPTS, chunk, profiled_gateway, usage_chunk, whole

# grok-3-mini as xAI answers it: 12 + 1 + 386 = 399.
XAI_USAGE = {
    "prompt_tokens": 12,
    "completion_tokens": 1,
    "total_tokens": 399,
    "prompt_tokens_details": {"text_tokens": 12, "audio_tokens": 0, "image_tokens": 0, "cached_tokens": 0},
    "completion_tokens_details": {
        "reasoning_tokens": 386,
        "audio_tokens": 0,
        "accepted_prediction_tokens": 0,
        "rejected_prediction_tokens": 0,
    },
}
# $1/M input, $2/M output: 12 input + (1 + 386) output tokens.
XAI_BILL = (12 * 1.0 + 387 * 2.0) / 1e6


@pytest.fixture(scope="module")
def gateway(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Running]:
    yield from profiled_gateway(tmp_path_factory.mktemp("xai"), {"grok-3-mini": {"type": "openai", "profile": "xai"}})


@pytest.fixture(scope="module")
def key(gateway: Running) -> str:
    return gateway.mint(name="xai")


def ask(gateway: Running, key: str, stream: bool) -> httpx.Response:
    body = {"model": "grok-3-mini", "messages": [{"role": "user", "content": "2+2?"}], "stream": stream}
    return httpx.post(
        f"{gateway.url}/v1/chat/completions", json=body, headers={"authorization": f"Bearer {key}"}, timeout=30
    )


@pytest.mark.parametrize("stream", [False, True])
def test_a_grok_reasoning_answer_is_billed_its_reasoning_tokens(gateway: Running, key: str, stream: bool) -> None:
    SCRIPTS["grok-3-mini"] = {
        "whole": whole({"role": "assistant", "content": "4"}, usage=XAI_USAGE),
        "stream": [chunk({"role": "assistant", "content": "4"}), chunk({}, "stop"), usage_chunk(XAI_USAGE)],
    }
    answer = ask(gateway, key, stream)
    assert answer.status_code == 200, answer.text
    line = gateway.ledger(key)[-1]
    assert line.cost_source == "provider"
    # xAI bills 387 output tokens (1 written + 386 reasoning); the gateway bills 1.
    assert line.output_tokens == 387, line
    assert line.cost_usd == pytest.approx(XAI_BILL), line
