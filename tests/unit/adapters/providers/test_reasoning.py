"""A Responses client's `reasoning.summary`, as each provider type takes it: shown where the deployment's answers carry
the model's reasoning, named as dropped where they cannot; and a Messages client's reasoning wish, named where a
provider cannot honour it by the fields the client sent it in."""

from __future__ import annotations

from typing import Any

import orjson
import pytest

from adapters.providers.registry import REGISTRY
from handler.api.messages_api import MessagesRequest, to_chat_request
from handler.api.responses_api import ResponsesChatRequest
from handler.ports import MESSAGES_API, RESPONSES_API, Target, as_client_named
from handler.schemas import ChatRequest

# (provider type, its options, the upstream model, the base URL) -> whether its answers show the reasoning.
DEPLOYMENTS = [
    ("openai", {}, "o4-mini", "https://api.openai.com/v1", False),  # OpenAI's Chat Completions returns none
    ("azure", {"base_url": "https://r.openai.azure.com"}, "o4-prod", "https://r.openai.azure.com", False),
    ("openai", {}, "qwen3-32b", "http://vllm.internal:8000/v1", True),  # a compatible server's reasoning_content
    ("deepseek", {}, "deepseek-reasoner", "https://api.deepseek.com", True),
    ("mistral", {}, "magistral-medium-latest", "https://api.mistral.ai/v1", True),
    ("mistral", {}, "mistral-small-latest", "https://api.mistral.ai/v1", True),
    ("mistral", {}, "mistral-large-latest", "https://api.mistral.ai/v1", False),  # does not reason
    ("anthropic", {}, "claude-sonnet-4-5", "https://api.anthropic.com", True),
    ("anthropic", {}, "claude-3-5-haiku-latest", "https://api.anthropic.com", False),  # cannot think
    ("bedrock", {}, "us.anthropic.claude-sonnet-4-20250514-v1:0", "", True),
    ("bedrock", {}, "us.anthropic.claude-3-5-haiku-20241022-v1:0", "", False),
    ("bedrock", {}, "us.amazon.nova-2-lite-v1:0", "", False),  # its reasoning comes back "[REDACTED]"
    ("bedrock", {}, "us.meta.llama3-3-70b-instruct-v1:0", "", False),
    ("bedrock", {}, "us.deepseek.r1-v1:0", "", True),
    ("gemini", {}, "gemini-2.5-flash", "https://generativelanguage.googleapis.com/v1beta", True),
    ("gemini", {}, "gemini-2.0-flash", "https://generativelanguage.googleapis.com/v1beta", False),
]


def summarised(**fields: Any) -> ResponsesChatRequest:
    """The internal request of a Responses request asking for a summary (as that front-end builds it)."""
    body = {"model": "public", "messages": [{"role": "user", "content": "hi"}], **fields}
    return ResponsesChatRequest.asking("auto", body)


@pytest.mark.parametrize(
    ("kind", "options", "model", "base_url", "shown"), DEPLOYMENTS, ids=[f"{d[0]}-{d[2]}" for d in DEPLOYMENTS]
)
def test_a_reasoning_summary_is_named_as_dropped_wherever_no_reasoning_can_come_back(
    kind: str, options: dict[str, Any], model: str, base_url: str, shown: bool
) -> None:
    """Only a Gemini deployment named `reasoning.summary` as dropped (and as `reasoning_summary`, not as the client
    wrote it): OpenAI's Chat Completions, a model that does not reason, Nova's redacted reasoning said nothing,
    and the client got no summary without a word (found by review)."""
    adapter = REGISTRY[kind](kind, "secret", options)
    url = base_url or adapter.base_url("us-east-1", None)
    target = Target(kind, kind, model, "us-east-1", url)
    built = adapter.chat_request(summarised(reasoning_effort="low"), target, stream=False)
    named = as_client_named(RESPONSES_API, built.dropped)  # (as the Responses front-end names what was dropped)
    assert ("reasoning.summary" in named) is not shown and "reasoning_summary" not in named


def test_a_claude_model_that_may_omit_its_thinking_is_asked_to_show_it_summarized() -> None:
    """Claude's adaptive models leave the thinking's display to the model's default, which for Opus 4.7 omits it
    (an empty thinking block): asked for a summary, the request says `display: summarized`; not asked, nothing."""
    adapter = REGISTRY["anthropic"]("claude", "secret", {})
    target = Target("claude", "anthropic", "claude-opus-4-7", "global", "https://api.anthropic.com")
    asked = orjson.loads(adapter.chat_request(summarised(reasoning_effort="high"), target, stream=False).request.body)
    assert asked["thinking"] == {"type": "adaptive", "display": "summarized"}
    unasked = ChatRequest.model_validate(summarised(reasoning_effort="high").model_dump(exclude_unset=True))
    assert orjson.loads(adapter.chat_request(unasked, target, stream=False).request.body)["thinking"] == {
        "type": "adaptive"
    }


def test_a_client_that_turned_reasoning_off_is_not_told_its_summary_was_dropped() -> None:
    adapter = REGISTRY["openai"]("openai", "secret", {})
    target = Target("openai", "openai", "o4-mini", "global", "https://api.openai.com/v1")
    assert (
        "reasoning_summary"
        not in adapter.chat_request(summarised(reasoning_effort="none"), target, stream=False).dropped
    )


def test_a_messages_clients_ask_to_see_summarized_thinking_is_the_same_ask() -> None:
    """A Messages client asks for the reasoning as text with `thinking.display: summarized`: honoured on Bedrock's
    adaptive Claude (which may omit it unasked), named as the client wrote it where no answer can show it."""
    thinking = {"type": "adaptive", "display": "summarized"}
    req = ChatRequest.model_validate(
        {"model": "m", "messages": [{"role": "user", "content": "hi"}], "thinking": thinking}
    )
    bedrock = REGISTRY["bedrock"]("bedrock", None, {})
    target = Target(
        "bedrock", "bedrock", "us.anthropic.claude-opus-4-7", "us-east-1", bedrock.base_url("us-east-1", None)
    )
    body = orjson.loads(bedrock.chat_request(req, target, stream=False).request.body)
    assert body["additionalModelRequestFields"]["thinking"] == thinking
    openai = REGISTRY["openai"]("openai", "secret", {})
    own = Target("openai", "openai", "o4-mini", "global", "https://api.openai.com/v1")
    assert "thinking.display" in as_client_named(MESSAGES_API, openai.chat_request(req, own, stream=False).dropped)


# (provider type, a model of it that does not reason)
UNREASONING = [
    ("openai", "gpt-4o-mini"),
    ("azure", "gpt-4o-mini"),
    ("mistral", "mistral-large-latest"),
    ("anthropic", "claude-3-5-haiku-latest"),
    ("bedrock", "us.meta.llama3-3-70b-instruct-v1:0"),
    ("gemini", "gemini-2.0-flash"),
]
# A Messages request's wish, and its fields as `x-gateway-dropped-params` names them where the wish is left out.
WISHES = [
    ({"output_config": {"effort": "low"}}, ["output_config.effort"]),  # Claude Code's effort setting, alone
    ({"thinking": {"type": "adaptive"}}, ["thinking"]),
    ({"thinking": {"type": "adaptive"}, "output_config": {"effort": "low"}}, ["thinking", "output_config.effort"]),
    ({"thinking": {"type": "enabled", "budget_tokens": 2048}}, ["thinking"]),
]


def messages_dropped(kind: str, model: str, fields: dict[str, Any]) -> list[str]:
    """What a Messages request with `fields` sent to `model` of provider type `kind` is told was dropped, as the
    Messages front-end names it."""
    body = {"model": "public", "max_tokens": 8000, "messages": [{"role": "user", "content": "hi"}], **fields}
    req, untranslated = to_chat_request(MessagesRequest.model_validate(body))
    options = {"base_url": "https://r.openai.azure.com"} if kind == "azure" else {}
    adapter = REGISTRY[kind](kind, "secret", options)
    target = Target(kind, kind, model, "us-east-1", adapter.base_url("us-east-1", None) or "https://upstream")
    return as_client_named(MESSAGES_API, untranslated + adapter.chat_request(req, target, stream=False).dropped)


@pytest.mark.parametrize(("kind", "model"), UNREASONING, ids=[kind for kind, _ in UNREASONING])
@pytest.mark.parametrize(("fields", "named"), WISHES, ids=["effort", "adaptive", "both", "budget"])
def test_a_messages_wish_a_model_cannot_honour_is_named_by_the_fields_the_client_sent(
    kind: str, model: str, fields: dict[str, Any], named: list[str]
) -> None:
    """Claude Code's effort, `output_config.effort` sent without `thinking`, was named `thinking` where the model does
    not reason, a field the client never sent (and so was the 400 under `x-gateway-strict`); sent with `thinking`,
    the effort left out went unnamed (found by review)."""
    assert messages_dropped(kind, model, fields) == named


@pytest.mark.parametrize(
    ("fields", "named"),
    [
        ({"output_config": {"effort": "max"}}, ["output_config.effort"]),
        ({"thinking": {"type": "adaptive"}, "output_config": {"effort": "max"}}, ["output_config.effort"]),
        ({"thinking": {"type": "enabled", "budget_tokens": 20000}}, []),  # a budget's level, approximated anyway
    ],
    ids=["effort", "both", "budget"],
)
def test_a_messages_effort_sent_as_the_nearest_the_model_takes_is_named_as_the_effort(
    fields: dict[str, Any], named: list[str]
) -> None:
    """`max` is `xhigh`, which o4-mini refuses: it gets `high`, and what the client is told was changed is its
    effort, `output_config.effort` (it was told `thinking`, whether or not it sent one; found by review)."""
    assert messages_dropped("openai", "o4-mini", fields) == named
