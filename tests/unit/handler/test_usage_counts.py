"""A provider's token counts as every reader of a usage reads them (`handler.wire.usage_count`, `no_count`,
`handler.schemas.reported`): a negative count is none, read as a missing one is; and the sums of usages
(`Usage.plus`, `Usage.less`) keep every count."""

from __future__ import annotations

from typing import Any

import pytest

from adapters.providers.anthropic.wire import WireUsage
from adapters.providers.bedrock.adapter import usage_of as bedrock_usage
from adapters.providers.gemini.adapter import usage_of as gemini_usage
from adapters.providers.openai.responses import usage_of as responses_usage
from handler.errors import UpstreamError
from handler.schemas import ChatCompletion, Usage
from handler.wire import counted_tokens, usage_count


def anthropic_usage(raw: dict[str, Any]) -> Usage | None:
    wire = WireUsage.model_validate(raw)
    usage = wire.to_usage()
    return usage if wire.counted() else None


def chat_usage(raw: dict[str, Any]) -> Usage | None:
    return ChatCompletion.model_validate({"id": "c", "created": 1, "model": "m", "choices": [], "usage": raw}).usage


# Each reader, a usage whose input count is negative beside a cache count (read as given, the reader added the
# two: 500 cache reads less 100 billed 400 tokens in as the provider's count), and one whose output count is.
NEGATIVE_MAIN = {
    "anthropic": (anthropic_usage, {"input_tokens": -100, "cache_read_input_tokens": 500, "output_tokens": 5}),
    "anthropic-out": (anthropic_usage, {"input_tokens": 100, "output_tokens": -5}),
    "bedrock": (bedrock_usage, {"inputTokens": -100, "cacheReadInputTokens": 500, "outputTokens": 5}),
    "bedrock-out": (bedrock_usage, {"inputTokens": 100, "outputTokens": -5}),
    "gemini": (gemini_usage, {"promptTokenCount": -100, "toolUsePromptTokenCount": 500, "candidatesTokenCount": 5}),
    "responses": (responses_usage, {"input_tokens": -100, "output_tokens": 5}),
    "responses-out": (responses_usage, {"input_tokens": 100, "output_tokens": -5}),
    "chat": (chat_usage, {"prompt_tokens": -100, "completion_tokens": 5}),
    "chat-out": (chat_usage, {"prompt_tokens": 100, "completion_tokens": -5}),
}


@pytest.mark.parametrize("case", sorted(NEGATIVE_MAIN))
def test_a_negative_main_count_is_no_usage_as_a_missing_one_is(case: str) -> None:
    """No usage: the answer is estimated (`Pipeline._checked`), never charged a count below 0 or a sum it took
    from."""
    read, raw = NEGATIVE_MAIN[case]
    assert read(raw) is None, read(raw)


def test_a_negative_detail_count_is_0_as_a_missing_one_is() -> None:
    """Summed with the main count, Gemini's `candidatesTokenCount: -100` took 100 from the 200 reasoning tokens out;
    Anthropic's `cache_creation_input_tokens: -400` took 400 from the prompt."""
    gemini = gemini_usage({"promptTokenCount": 50, "candidatesTokenCount": -100, "thoughtsTokenCount": 200})
    assert gemini is not None and (gemini.prompt_tokens, gemini.completion_tokens) == (50, 200)
    anthropic = anthropic_usage({"input_tokens": 1000, "output_tokens": 5, "cache_creation_input_tokens": -400})
    assert anthropic == Usage.of(1000, 5)
    chat = chat_usage({"prompt_tokens": 10, "completion_tokens": 5, "prompt_tokens_details": {"cached_tokens": -4}})
    assert chat is not None and chat.cached_tokens == 0
    assert usage_count({"cached_tokens": -4}, "cached_tokens") == 0
    with pytest.raises(ValueError):  # (a count that is not a plain integer is still malformed: negative or not)
        usage_count({"cached_tokens": -4.5}, "cached_tokens")


@pytest.mark.parametrize("count", [-5, -1, None, True, 12.0, "12"])
def test_a_token_counting_answer_without_a_count_of_0_or_more_is_malformed(count: Any) -> None:
    """A counting answer of `-5` was the client's count of its prompt."""
    assert counted_tokens({"input_tokens": 0}, "input_tokens", "count_tokens") == 0
    with pytest.raises(UpstreamError):
        counted_tokens({"input_tokens": count}, "input_tokens", "count_tokens")
    with pytest.raises(UpstreamError):
        counted_tokens([count], "input_tokens", "count_tokens")


# The counts of an answer that wrote audio.
SPOKEN = Usage.model_validate(
    {
        "prompt_tokens": 100,
        "completion_tokens": 60,
        "prompt_tokens_details": {"cached_tokens": 20, "audio_tokens": 30},
        "completion_tokens_details": {"reasoning_tokens": 10, "audio_tokens": 40},
    }
)


def test_a_sum_of_usages_and_a_usage_less_a_part_keep_every_count() -> None:
    """`plus` (an answer thrown away and the one relayed, on the request's line) and `less` (a usage without a
    sampling priced apart) left the audio output out: 80 audio tokens out summed to none."""
    both = SPOKEN.plus(SPOKEN)
    counts = ("prompt_tokens", "completion_tokens", "cached_tokens", "audio_prompt_tokens", "reasoning_tokens")
    assert [getattr(both, name) for name in (*counts, "audio_completion_tokens")] == [200, 120, 40, 60, 20, 80]
    assert both.less(SPOKEN).audio_completion_tokens == 40
    assert SPOKEN.less(SPOKEN).audio_completion_tokens == 0
    text = Usage.of(10, 5)
    assert text.plus(text).completion_tokens_details is None  # (none made where it counts nothing)


def test_an_embeddings_usage_with_a_negative_count_is_none() -> None:
    """Read as given, a batch's `-100` took 100 from the next batch's 500 in the request's sum (`joined`), billed as
    the provider's count."""
    from handler.schemas import EmbeddingsResponse

    def answer(count: int) -> EmbeddingsResponse:
        data = [{"object": "embedding", "index": 0, "embedding": [0.1]}]
        usage = {"prompt_tokens": count, "total_tokens": count}
        return EmbeddingsResponse.model_validate({"object": "list", "model": "e", "data": data, "usage": usage})

    assert "usage" not in answer(-100).model_fields_set
    assert "usage" not in EmbeddingsResponse.joined([answer(-100), answer(500)]).model_fields_set
    assert EmbeddingsResponse.joined([answer(100), answer(500)]).usage.prompt_tokens == 600
