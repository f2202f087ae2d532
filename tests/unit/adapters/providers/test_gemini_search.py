"""Gemini's Grounding with Google Search as the translation sends it and reads its answer: the `groundingMetadata` of
a whole answer and of a stream's events (`adapters/providers/gemini/search.py`), and the search beside what else the
request asks."""

from __future__ import annotations

from typing import Any

import orjson
import pytest

from adapters.providers.gemini import GeminiAdapter
from adapters.providers.gemini.search import billed_searches, bills_per_prompt, grounding
from adapters.providers.gemini.stream import GeminiStreamParser
from handler.ports import Target
from handler.schemas import ChatRequest
from handler.wire import StreamEvent

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


def grounded(text: str, queries: tuple[str, ...] = ("weather paris",)) -> dict[str, Any]:
    """Gemini's grounding of `text` so far: the queries run, the page, and the span of `text` it supports."""
    return {
        "webSearchQueries": list(queries),
        "groundingChunks": [{"web": {"uri": URL, "title": "example.com"}}],
        "groundingSupports": [
            {"segment": {"startIndex": 0, "endIndex": len(text.encode())}, "groundingChunkIndices": [0]}
        ],
    }


def event(text: str, meta: dict[str, Any] | None, finish: str | None = None) -> bytes:
    candidate: dict[str, Any] = {"content": {"role": "model", "parts": [{"text": text}]}, "index": 0}
    if meta is not None:
        candidate["groundingMetadata"] = meta
    if finish:
        candidate["finishReason"] = finish
    data = {"candidates": [candidate], "usageMetadata": USAGE, "modelVersion": "gemini-3-pro-preview"}
    return b"data: " + orjson.dumps(data) + b"\r\n\r\n"


def streamed(*events: bytes) -> tuple[Any, list[dict[str, Any]], list[dict[str, Any]]]:
    """The parser after `events`, the searches its chunks gave and their annotations."""
    adapter = GeminiAdapter("g", "AIza-test-key", {})
    decoder, parser = adapter.frame_decoder(), adapter.stream_parser(searching(), target("gemini-3-pro-preview"))
    chunks = [chunk for e in decoder.feed(b"".join(events)) for chunk in parser.feed(e)]
    chunks += [chunk for e in decoder.finish() for chunk in parser.feed(e)] + parser.finish()
    deltas = [choice.delta for chunk in chunks for choice in chunk.choices]
    searches = [search for delta in deltas for search in delta.web_searches or ()]
    annotations = [a for delta in deltas for a in (delta.model_extra or {}).get("annotations") or ()]
    return parser, searches, annotations


def test_a_stream_that_resends_its_grounding_is_billed_and_gives_each_query_once() -> None:
    """Gemini resends the grounding so far on later events (each holds the queries run so far). Added up, one query
    seen on two events was billed twice on Gemini 3 (per query: $0.02 for a $0.01 search), and its
    `web_search_call` and citation given twice. The latest grounding is the candidate's, given once at its end."""
    parser, searches, annotations = streamed(
        event("Sunny ", grounded("Sunny ")), event("today.", grounded("Sunny today."), "STOP")
    )
    assert parser.searches == 1 and parser.usage is not None and parser.usage.web_searches == 1
    assert [search["action"]["query"] for search in searches] == ["weather paris"]
    assert [(a["url_citation"]["start_index"], a["url_citation"]["end_index"]) for a in annotations] == [(0, 12)]


def test_a_later_grounding_with_a_new_query_adds_only_it() -> None:
    """A grounding that names a second query: two searches, each given once, billed per query on Gemini 3."""
    parser, searches, _ = streamed(
        event("Sunny ", grounded("Sunny ")),
        event("today.", grounded("Sunny today.", ("weather paris", "paris forecast")), "STOP"),
    )
    assert parser.searches == 2 and parser.usage is not None and parser.usage.web_searches == 2
    assert [search["action"]["query"] for search in searches] == ["weather paris", "paris forecast"]


def test_a_grounding_that_comes_before_the_last_event_is_still_given_and_billed() -> None:
    """Gemini may send the grounding on an early event and none with the finish reason: it is kept to the end."""
    parser, searches, annotations = streamed(event("Sunny.", grounded("Sunny.")), event("", None, "STOP"))
    assert parser.searches == 1 and len(searches) == 1 and len(annotations) == 1


def test_a_stream_cut_after_its_grounding_is_billed_its_search() -> None:
    """A stream cut before the candidate's end: the query it showed ran, and is billed; nothing is given of it."""
    parser, searches, _ = streamed(event("Sunny ", grounded("Sunny ")))
    assert parser.searches == 1 and parser.usage is not None and parser.usage.web_searches == 1
    assert searches == []


@pytest.mark.parametrize("model", ["gemini-2.5-flash", "gemini-3-pro-preview"])
def test_an_answer_grounded_on_pages_without_its_queries_is_billed_a_search(model: str) -> None:
    """A grounding that names the pages the answer used (`groundingChunks`) but not the queries that found them
    (`webSearchQueries`): a grounded answer ran at least one search, which Google bills. It was charged none, and
    its pages were given nowhere but in the annotations: one search now, its query unknown (""), with the pages."""
    meta = {k: v for k, v in grounded("Sunny.").items() if k != "webSearchQueries"}
    candidate = {"content": {"role": "model", "parts": [{"text": "Sunny."}]}, "finishReason": "STOP"}
    answer = {"candidates": [{**candidate, "groundingMetadata": meta}], "usageMetadata": USAGE}
    completion = GeminiAdapter("g", "AIza-test-key", {}).chat_response(orjson.dumps(answer), searching(), target(model))
    assert completion.usage is not None and completion.usage.web_searches == 1
    [search] = completion.choices[0].message.web_searches or ()
    page = {"type": "url", "url": URL, "title": "example.com"}  # (the title for a Messages answer's result)
    assert search["action"] == {"type": "search", "query": "", "sources": [page]}
    parser, searches, annotations = streamed(event("Sunny.", meta, "STOP"))
    assert parser.searches == 1 and parser.usage is not None and parser.usage.web_searches == 1
    assert [s["action"]["query"] for s in searches] == [""] and len(annotations) == 1


def test_the_spans_of_a_text_beyond_ascii_are_counted_in_characters() -> None:
    """Gemini's segments count bytes of the UTF-8 text; the annotations count characters. An offset inside a
    character (a segment Gemini cut there) leaves that character out, as the bytes cut there decode; one past the
    text ends at its end. Every support's offsets are read in one pass over the text."""
    text = "Météo: 😀 ensoleillé."
    ends = [(0, len("Mé".encode())), (len("Mé".encode()) - 1, len("Météo: 😀".encode()) - 2), (9, 999)]
    meta = {
        "webSearchQueries": ["q"],
        "groundingChunks": [{"web": {"uri": URL}}],
        "groundingSupports": [
            {"segment": {"startIndex": a, "endIndex": b}, "groundingChunkIndices": [0]} for a, b in ends
        ],
    }
    _, annotations = grounding(meta, text, start=3)
    spans = [(a["url_citation"]["start_index"], a["url_citation"]["end_index"]) for a in annotations]
    cut = [
        (len(text.encode()[:a].decode(errors="ignore")), len(text.encode()[:b].decode(errors="ignore")))
        for a, b in ends
    ]
    assert spans == [(3 + a, 3 + b) for a, b in cut] == [(3, 5), (4, 10), (10, 3 + len(text))]


SEARCHED_PARTS = [
    {"toolCall": {"id": "s1", "toolType": "GOOGLE_SEARCH_WEB", "args": {"queries": ["q"]}}, "thoughtSignature": "c2ln"},
    {"toolResponse": {"id": "s1", "toolType": "GOOGLE_SEARCH_WEB", "response": {"search_suggestions": "q"}}},
]


@pytest.mark.parametrize(("model", "restored"), [("gemini-3-flash", True), ("gemini-2.5-flash", False)])
def test_a_chat_clients_turn_brings_back_gemini_3s_own_search_parts(model: str, restored: bool) -> None:
    """A Chat Completions answer of Gemini 3's tool context has the search's own parts as its message's
    `reasoning_tool_context`; the assistant turn that sends them back goes to Gemini 3 with them (a member that is no
    such part left out, and a member of one that is not its call, response or signature), ahead of its text, and to
    Gemini 2.5, which has no tool context, without them."""
    candidate = {"content": {"role": "model", "parts": [*SEARCHED_PARTS, {"text": "hello"}]}, "finishReason": "STOP"}
    answer = {"candidates": [candidate], "usageMetadata": USAGE}
    adapter = GeminiAdapter("g", "AIza-test-key", {})
    message = adapter.chat_response(orjson.dumps(answer), searching(), target(model)).choices[0].message
    kept = message.model_dump()["reasoning_tool_context"]
    assert kept == SEARCHED_PARTS
    smuggled = {**kept[0], "text": "beside a call"}  # (a part of one kind of content: Gemini refuses two)
    sent = [smuggled, *kept[1:], {"text": "not a tool's"}]
    turn = {"role": "assistant", "content": "hello", "reasoning_tool_context": sent}
    again = searching(messages=[{"role": "user", "content": "hi"}, turn, {"role": "user", "content": "more"}])
    body, _ = adapter.chat_body(again, target(model))
    assert body["contents"][1]["parts"] == [*(SEARCHED_PARTS if restored else []), {"text": "hello"}]


ALIASED_META = {"webSearchQueries": ["a", "b", "c"], "groundingChunks": [{"web": {"uri": "https://example.com/"}}]}
ALIASED_ANSWER = {
    "candidates": [
        {
            "content": {"role": "model", "parts": [{"text": "hello"}]},
            "finishReason": "STOP",
            "groundingMetadata": ALIASED_META,
        }
    ],
    "usageMetadata": USAGE,
    "modelVersion": "gemini-3-flash-preview",
}


def test_a_gemini_3_answer_through_an_alias_is_charged_each_query_whole_as_streamed() -> None:
    """Which generation ran (Gemini 3 bills each query, 2.5 the prompt) is read from the answer's `modelVersion`,
    whole as streamed: a deployment may name Google's moving alias (`gemini-flash-latest`), which names none, and a
    whole answer of three queries was charged one search. Found by review (gemrev36)."""
    aliased = target("gemini-flash-latest")  # (Google's alias for its newest Flash)
    parser = GeminiStreamParser(aliased.model, searched=True)
    parser.feed(StreamEvent(None, orjson.dumps(ALIASED_ANSWER)))
    streamed = parser.usage
    assert streamed is not None and streamed.web_searches == 3  # (the stream: by `modelVersion`)
    whole = GeminiAdapter("g", "AIza-test-key", {}).chat_response(orjson.dumps(ALIASED_ANSWER), searching(), aliased)
    assert whole.usage is not None
    assert whole.usage.web_searches == 3, whole.usage.web_searches


@pytest.mark.parametrize("model", ["gemini-flash-latest", "gemini-pro-latest", "gemini-3-flash-preview"])
def test_a_model_whose_generation_is_not_known_to_be_before_3_is_charged_each_query(model: str) -> None:
    """Reserved every search (`bills_per_prompt`: not known to bill per prompt), a moving alias was charged one
    grounded prompt where its answer's `modelVersion` named no generation either: three Gemini 3 queries charged as
    one. Found by review (mergerev36b)."""
    assert not bills_per_prompt(model)
    assert billed_searches(model, 3) == 3
    assert billed_searches("gemini-2.5-flash", 3) == 1
