"""The references themselves: each accepts a body its provider accepts and names what its provider refuses,
so a check that passes means something."""

from __future__ import annotations

from typing import Any

import pytest

from tests.conformance import references
from tests.conformance.test_upstream_requests import definition_problems

AZURE_URL = "https://x.openai.azure.com/openai/deployments/d/chat/completions?api-version=2024-10-21"
GOOD: dict[str, dict[str, Any]] = {
    "openai": {"model": "gpt-4o", "messages": [{"role": "developer", "content": "Be brief."}]},
    "azure": {"messages": [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "hi"}]},
    "mistral": {"model": "m", "messages": [{"role": "user", "content": "hi"}], "random_seed": 1},
    "anthropic": {"model": "m", "max_tokens": 5, "messages": [{"role": "user", "content": "hi"}], "temperature": 0.5},
    "gemini": {"contents": [{"role": "user", "parts": [{"text": "hi"}]}], "generationConfig": {"topP": 0.5}},
    "bedrock": {"messages": [{"role": "user", "content": [{"text": "hi"}]}], "inferenceConfig": {"maxTokens": 5}},
}
BAD: dict[str, tuple[dict[str, Any], str]] = {
    "openai": (
        {
            "model": "m",
            "messages": [{"role": "user", "content": "hi"}],
            "tools": [{"type": "function", "function": {"name": "f", "description": None}}],
        },
        "description",
    ),
    "azure": (
        {"messages": [{"role": "developer", "content": "Be brief."}], "reasoning_effort": "low"},
        "reasoning_effort",
    ),
    "mistral": ({"model": "m", "messages": [{"role": "user", "content": "hi", "name": "alice"}]}, "messages"),
    "anthropic": (
        {"model": "m", "max_tokens": 5, "messages": [{"role": "user", "content": "hi", "name": "a"}]},
        "name",
    ),
    "gemini": ({"contents": [{"role": "user", "parts": [{"text": "hi", "bogus": 1}]}]}, "bogus"),
    "bedrock": ({"messages": [{"role": "user", "content": [{"text": "hi", "image": {}}]}], "foo": 1}, "foo"),
}


def check(provider: str, body: dict[str, Any]) -> list[str]:
    return definition_problems(provider, body, AZURE_URL)


@pytest.mark.parametrize("provider", sorted(GOOD))
def test_a_body_the_provider_accepts_passes(provider: str) -> None:
    assert check(provider, GOOD[provider]) == []


@pytest.mark.parametrize("provider", sorted(BAD))
def test_a_body_the_provider_refuses_is_named(provider: str) -> None:
    body, member = BAD[provider]
    problems = check(provider, body)
    assert problems and any(member in problem for problem in problems), problems


def test_a_bedrock_union_takes_exactly_one_member() -> None:
    body = {"messages": [{"role": "user", "content": [{"text": "hi", "cachePoint": {"type": "default"}}]}]}
    assert any("exactly one member" in p for p in references.bedrock_request(body))


def test_anthropic_answers_need_their_required_members() -> None:
    assert references.anthropic_message({"type": "message", "role": "assistant", "content": []})
