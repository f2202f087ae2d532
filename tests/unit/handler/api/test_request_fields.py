"""The fields `x-gateway-strict` knows for each API, held to the official SDKs' own definitions of their requests."""

from __future__ import annotations

import pytest
from anthropic.types import message_count_tokens_params, message_create_params
from anthropic.types.beta import message_create_params as beta_message_create_params
from openai.types import embedding_create_params
from openai.types.chat import completion_create_params
from openai.types.responses import response_create_params

from adapters.providers.registry import REGISTRY
from handler.api.request_fields import (
    CHAT_COMPLETIONS,
    EMBEDDINGS,
    MESSAGES,
    RESPONSES,
    chat_completions_fields,
    refuse_unknown,
)
from handler.errors import InvalidRequestError


def fields(*typed_dicts: type) -> set[str]:
    """Every top-level field of the SDK's request types (a TypedDict's annotations hold its bases' too)."""
    return {name for typed in typed_dicts for name in typed.__annotations__}


@pytest.mark.parametrize(
    ("known", "sdk"),
    [
        (
            CHAT_COMPLETIONS,
            fields(
                completion_create_params.CompletionCreateParamsStreaming,
                completion_create_params.CompletionCreateParamsNonStreaming,
            ),
        ),
        (
            MESSAGES,
            fields(
                message_create_params.MessageCreateParamsStreaming,
                message_create_params.MessageCreateParamsNonStreaming,
                beta_message_create_params.MessageCreateParamsStreaming,
                beta_message_create_params.MessageCreateParamsNonStreaming,
                message_count_tokens_params.MessageCountTokensParams,
            )
            - {"betas"},  # (the beta SDK sends it as the anthropic-beta header)
        ),
        (
            RESPONSES,
            fields(
                response_create_params.ResponseCreateParamsStreaming,
                response_create_params.ResponseCreateParamsNonStreaming,
            ),
        ),
        (EMBEDDINGS, fields(embedding_create_params.EmbeddingCreateParams)),
    ],
    ids=["chat", "messages", "responses", "embeddings"],
)
def test_every_field_the_official_sdk_sends_is_known(known: frozenset[str], sdk: set[str]) -> None:
    """A body the SDK builds with every documented parameter passes under strict: none is refused as unknown."""
    assert sdk - known == set()
    refuse_unknown(dict.fromkeys(sorted(sdk)), known)


def test_what_claude_code_and_codex_send_beside_the_sdk_is_known() -> None:
    for name in ("context_management", "output_config", "thinking", "metadata", "service_tier", "speed", "top_k"):
        assert name in MESSAGES
    for name in ("prompt_cache_key", "include", "store", "reasoning", "text", "parallel_tool_calls", "client_metadata"):
        assert name in RESPONSES


def test_unknown_fields_are_named_in_the_order_sent_the_first_as_param() -> None:
    with pytest.raises(InvalidRequestError) as refused:
        refuse_unknown({"bogus_field": 1, "seed": 3, "temprature": 0.2}, CHAT_COMPLETIONS)
    assert refused.value.status == 400 and refused.value.code == "invalid_request"
    assert refused.value.param == "bogus_field"
    assert "unknown fields: bogus_field, temprature" in refused.value.message
    refuse_unknown(None, CHAT_COMPLETIONS)
    refuse_unknown({"prediction": {}, "web_search_options": {}}, CHAT_COMPLETIONS)


def test_a_providers_own_chat_fields_are_known_where_it_is_configured() -> None:
    """Claude's `top_k` and Mistral's `safe_prompt` are read by their adapters from a Chat Completions request: known
    to a gateway with the provider configured, unknown to one without."""
    dialects = [REGISTRY["anthropic"].chat_fields, REGISTRY["mistral"].chat_fields]
    known = chat_completions_fields(dialects)
    refuse_unknown({"top_k": 5, "safe_prompt": True, "prompt_mode": "reasoning"}, known)
    with pytest.raises(InvalidRequestError):
        refuse_unknown({"safe_prompt": True}, chat_completions_fields([REGISTRY["openai"].chat_fields]))
