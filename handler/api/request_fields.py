"""The top-level request fields the gateway knows, API by API, for `x-gateway-strict: true`.

Without strict a field the gateway does not know goes on to a provider that speaks the client's API (an OpenAI model
gets a Chat Completions body's unknown fields as sent, Claude a Messages body's) and is named as dropped by the
others. Under strict it is the client's 400 before anything is sent or reserved (`unknown_fields`): a misspelt
`temprature` reached OpenAI, which ignored it, and the answer came at the default temperature.

Each set is what the API's official SDK sends today (its `*CreateParams` type definitions, beta ones included), what
agent CLIs send beside it (Codex's `client_metadata`), and the fields the gateway itself reads; adapters add the
fields of their providers' own Chat Completions dialects (`ProviderAdapter.chat_fields`). The unit tests hold each
set to the installed SDKs' definitions.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

from handler.errors import InvalidRequestError
from handler.redaction import clipped

# OpenAI's Chat Completions (`openai.types.chat.CompletionCreateParams`), with `thinking`, which the internal form
# carries (a Messages request's, and DeepSeek's own switch).
CHAT_COMPLETIONS = frozenset(
    {
        "messages", "model", "audio", "frequency_penalty", "function_call", "functions", "logit_bias", "logprobs",
        "max_completion_tokens", "max_tokens", "metadata", "modalities", "moderation", "n", "parallel_tool_calls",
        "prediction", "presence_penalty", "prompt_cache_key", "prompt_cache_options", "prompt_cache_retention",
        "reasoning_effort", "response_format", "safety_identifier", "seed", "service_tier", "stop", "store", "stream",
        "stream_options", "temperature", "tool_choice", "tools", "top_logprobs", "top_p", "user", "verbosity",
        "web_search_options", "thinking",
    }
)  # fmt: skip

# Anthropic's Messages API (`anthropic.types.MessageCreateParams` and the beta one; the beta SDK's `betas` is a
# header), with the sampling fields its older SDKs send and Claude still takes (`temperature`, `top_p`, `top_k`).
MESSAGES = frozenset(
    {
        "max_tokens", "messages", "model", "billing_policy", "cache_control", "compaction", "container",
        "context_management", "diagnostics", "fallback_credit_token", "fallbacks", "inference_geo", "mcp_servers",
        "metadata", "output_config", "service_tier", "speed", "stop_sequences", "stream", "system", "thinking",
        "thread", "tool_choice", "tools", "user_profile_id", "workspace_id", "temperature", "top_p", "top_k",
    }
)  # fmt: skip

# OpenAI's Responses API (`openai.types.responses.ResponseCreateParams`), with Codex's `client_metadata`.
RESPONSES = frozenset(
    {
        "access_programs", "background", "background_options", "context_management", "conversation", "image",
        "include", "input", "instructions", "max_output_tokens", "max_tool_calls", "metadata", "model", "moderation",
        "parallel_tool_calls", "previous_response_id", "prompt", "prompt_cache_key", "prompt_cache_options",
        "prompt_cache_retention", "reasoning", "safety_identifier", "service_tier", "store", "stream",
        "stream_options", "temperature", "text", "tool_choice", "tools", "top_logprobs", "top_p", "truncation", "user",
        "client_metadata",
    }
)  # fmt: skip

# OpenAI's embeddings (`openai.types.EmbeddingCreateParams`).
EMBEDDINGS = frozenset({"input", "model", "dimensions", "encoding_format", "user"})


def chat_completions_fields(dialects: Iterable[frozenset[str]]) -> frozenset[str]:
    """The Chat Completions fields known to a gateway whose adapters read `dialects` beyond OpenAI's."""
    return CHAT_COMPLETIONS.union(*dialects)


def refuse_unknown(extra: Mapping[str, Any] | None, known: frozenset[str]) -> None:
    """The client's 400 naming every top-level field of `extra` (a request's fields its model does not declare, in
    the order sent) that is not in `known`; nothing when there is none."""
    if not extra:
        return
    unknown = [clipped(name) for name in extra if name not in known]
    if unknown:
        plural = "s" if len(unknown) > 1 else ""
        raise InvalidRequestError(
            f"unknown field{plural}: {', '.join(unknown)} (x-gateway-strict is on: the gateway refuses fields it does "
            "not know for this API rather than send them on)",
            param=unknown[0],
        )
