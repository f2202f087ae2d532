"""Gemini's Grounding with Google Search as the translation sends it and reads its answer: the `groundingMetadata` of
a whole answer and of a stream's events (`adapters/providers/gemini/search.py`), and the search beside what else the
request asks."""

from __future__ import annotations

from typing import Any

import orjson
import pytest

from adapters.providers.gemini import GeminiAdapter
from handler.ports import Target
from handler.schemas import ChatRequest

URL = "https://example.com/"
USAGE = {"promptTokenCount": 5, "candidatesTokenCount": 2, "totalTokenCount": 7}


def target(model: str) -> Target:
    return Target("g", "gemini", model, "global", "http://gemini.invalid")


def searching(**more: Any) -> ChatRequest:
    body = {"model": "public", "messages": [{"role": "user", "content": "hi"}], "web_search_options": {}, **more}
    return ChatRequest.model_validate(body)


@pytest.mark.parametrize(
    "meta",
    [
        {"webSearchQueries": ["q"], "groundingChunks": [{"web": {"uri": URL}}], "groundingSupports": 7},
        {"webSearchQueries": ["q"], "groundingChunks": 5},
        {"webSearchQueries": 3},
        {
            "webSearchQueries": ["q"],
            "groundingChunks": [{"web": {"uri": URL}}],
            "groundingSupports": [{"segment": {"startIndex": 0, "endIndex": 5}, "groundingChunkIndices": 1}],
        },
    ],
)
def test_a_grounding_of_odd_shape_keeps_the_answer(meta: dict[str, Any]) -> None:
    """The answer's text and usage are whole; only its `groundingMetadata` holds a number where a list goes. That was
    a TypeError, read as the provider's malformed answer (a 502, charged, the next deployment tried and billed
    again): the members of odd shape are read as none, as every other reader does."""
    candidate = {"content": {"role": "model", "parts": [{"text": "hello"}]}, "finishReason": "STOP"}
    answer = {"candidates": [{**candidate, "groundingMetadata": meta}], "usageMetadata": USAGE}
    completion = GeminiAdapter("g", "AIza-test-key", {}).chat_response(
        orjson.dumps(answer), searching(), target("gemini-2.5-flash")
    )
    message = completion.choices[0].message
    assert message.content == "hello"
    queries = [search["action"]["query"] for search in message.web_searches or ()]
    assert queries == ([] if meta["webSearchQueries"] == 3 else ["q"])
    assert not (message.model_extra or {}).get("annotations")


SCHEMA = {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}
JSON_ANSWERS = [
    {"type": "json_schema", "json_schema": {"name": "c", "schema": SCHEMA}},
    {"type": "json_object"},
]


@pytest.mark.parametrize("fmt", JSON_ANSWERS)
def test_a_json_answer_beside_a_search_keeps_its_format_before_gemini_3(fmt: dict[str, Any]) -> None:
    """Gemini before 3 takes no tool beside a JSON answer: the search goes, named, and the format stays. The search
    went, and `apply_model_rules` read it as function calling and dropped the format (`response_format`): free text
    for a client that asked for a schema. Nor is the search reserved or charged there (`hosts_search`)."""
    adapter = GeminiAdapter("g", "AIza-test-key", {})
    req = searching(response_format=fmt)
    built = adapter.chat_request(req, target("gemini-2.5-flash"), stream=False)
    body = orjson.loads(built.request.body)
    assert body["generationConfig"]["responseMimeType"] == "application/json"
    assert "tools" not in body
    assert built.dropped == ["web_search_options"]
    assert not adapter.hosts_search(target("gemini-2.5-flash"), req)


@pytest.mark.parametrize("fmt", JSON_ANSWERS)
def test_gemini_3_takes_the_search_beside_a_json_answer(fmt: dict[str, Any]) -> None:
    """Gemini 3 combines structured output with its built-in tools: both go, and the search is reserved for."""
    adapter = GeminiAdapter("g", "AIza-test-key", {})
    req = searching(response_format=fmt)
    built = adapter.chat_request(req, target("gemini-3-pro-preview"), stream=False)
    body = orjson.loads(built.request.body)
    assert body["generationConfig"]["responseMimeType"] == "application/json"
    assert body["tools"] == [{"google_search": {}}]
    assert built.dropped == []
    assert adapter.hosts_search(target("gemini-3-pro-preview"), req)
