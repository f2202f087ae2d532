"""A provider's whole answer replayed as its API's stream (`handler.pipeline.replay`): read by the SDKs' own stream
accumulators, the events build the answer they came from, and the adapters' meters read its usage from them."""

from __future__ import annotations

from typing import Any

import orjson
import pytest
from anthropic.lib.streaming._messages import accumulate_event
from anthropic.types import Message
from openai import omit
from openai._models import construct_type
from openai.lib.streaming.responses._responses import ResponseStreamState
from openai.types.responses import Response, ResponseStreamEvent

from adapters.providers.anthropic.stream import MessagesMeter
from adapters.providers.openai.responses import ResponsesMeter, answer_usage
from handler.pipeline.replay import messages_events, replayed, responses_events
from handler.ports import MESSAGES_API, RESPONSES_API

CITATION = {
    "type": "web_search_result_location",
    "cited_text": "Paris is the capital",
    "url": "https://example.com/paris",
    "title": "Paris",
    "encrypted_index": "Eo8BCioIAhgB",
}
MESSAGE: dict[str, Any] = {
    "id": "msg_1",
    "type": "message",
    "role": "assistant",
    "model": "claude-sonnet-4-5",
    "content": [
        {"type": "thinking", "thinking": "The user asks about Paris.", "signature": "EqQBCkYIBxgC"},
        {"type": "redacted_thinking", "data": "EmwKAhgBEgy3va3pzix"},
        {"type": "server_tool_use", "id": "srvtoolu_1", "name": "web_search", "input": {"query": "capital of France"}},
        {
            "type": "web_search_tool_result",
            "tool_use_id": "srvtoolu_1",
            "content": [
                {
                    "type": "web_search_result",
                    "url": "https://example.com/paris",
                    "title": "Paris",
                    "encrypted_content": "EqgfCioIARgB",
                    "page_age": None,
                }
            ],
        },
        {"type": "text", "text": "Paris is the capital of France.", "citations": [CITATION]},
        {"type": "text", "text": "{}", "citations": None},
        {"type": "tool_use", "id": "toolu_1", "name": "lookup", "input": {"city": "Paris", "fields": ["population"]}},
        {"type": "tool_use", "id": "toolu_2", "name": "now", "input": {}},
    ],
    "stop_reason": "tool_use",
    "stop_sequence": None,
    "usage": {
        "input_tokens": 410,
        "cache_read_input_tokens": 1024,
        "cache_creation_input_tokens": 0,
        "output_tokens": 96,
        "server_tool_use": {"web_search_requests": 1, "web_fetch_requests": 0},
        "service_tier": "standard",
    },
}
RESPONSE: dict[str, Any] = {
    "id": "resp_1",
    "object": "response",
    "created_at": 1764000000,
    "completed_at": 1764000003,
    "status": "completed",
    "model": "gpt-5-2025-08-07",
    "error": None,
    "incomplete_details": None,
    "instructions": None,
    "parallel_tool_calls": True,
    "tool_choice": "auto",
    "tools": [],
    "service_tier": "default",
    "output": [
        {
            "id": "rs_1",
            "type": "reasoning",
            "summary": [{"type": "summary_text", "text": "Looking it up."}],
            "encrypted_content": "gAAAAABo",
        },
        {"id": "ws_1", "type": "web_search_call", "status": "completed", "action": {"type": "search", "query": "x"}},
        {
            "id": "msg_1",
            "type": "message",
            "role": "assistant",
            "status": "completed",
            "content": [
                {
                    "type": "output_text",
                    "text": "Paris is the capital of France.",
                    "annotations": [
                        {"type": "url_citation", "start_index": 0, "end_index": 5, "url": "https://e.com", "title": "P"}
                    ],
                    "logprobs": [],
                },
                {"type": "refusal", "refusal": "I will not say more."},
            ],
        },
        {
            "id": "fc_1",
            "type": "function_call",
            "status": "completed",
            "call_id": "call_1",
            "name": "lookup",
            "arguments": '{"city":"Paris"}',
        },
    ],
    "usage": {
        "input_tokens": 320,
        "input_tokens_details": {"cached_tokens": 256, "cache_write_tokens": 0},
        "output_tokens": 90,
        "output_tokens_details": {"reasoning_tokens": 64},
        "total_tokens": 410,
    },
}


def payloads(events: list[Any]) -> list[dict[str, Any]]:
    return [orjson.loads(event.data) for event in events]


def test_a_whole_message_replayed_is_the_message_anthropics_sdk_accumulates() -> None:
    """Each block started empty, its text, thinking, signature, citations and tool input in deltas, stopped; the
    stop reason and the usage in `message_delta`: the SDK's stream helper builds the message that came whole."""
    events = messages_events(MESSAGE)
    kinds = [event.event for event in events]
    assert (kinds[0], kinds[-2:]) == ("message_start", ["message_delta", "message_stop"])
    assert all(payload["type"] == event.event for payload, event in zip(payloads(events), events, strict=True))
    snapshot = None
    buffers: dict[int, bytes] = {}
    for payload in payloads(events):
        snapshot = accumulate_event(event=payload, current_snapshot=snapshot, json_bufs=buffers)  # type: ignore[arg-type]
    assert snapshot is not None
    built = snapshot.model_dump(exclude_none=True)
    assert built == Message.model_validate(MESSAGE).model_dump(exclude_none=True)


def test_a_whole_message_replayed_is_metered_as_its_answer_whole_is() -> None:
    meter = MessagesMeter()
    for event in replayed(MESSAGES_API, MESSAGE):
        meter.feed(event)
    usage = meter.usage
    assert meter.final and meter.answer_id == "msg_1" and meter.searches == 1
    assert usage is not None and (usage.prompt_tokens, usage.cached_tokens, usage.completion_tokens) == (1434, 1024, 96)


def stream_state_events(events: list[Any]) -> list[Any]:
    """The events as the openai SDK's Responses stream helper gives them, each read as the SDK reads it."""
    state = ResponseStreamState(input_tools=omit, text_format=omit)
    given = []
    for payload in payloads(events):
        given += state.handle_event(construct_type(type_=ResponseStreamEvent, value=payload))  # type: ignore[arg-type]
    return given


@pytest.mark.parametrize(
    ("status", "terminal"),
    [("completed", "response.completed"), ("incomplete", "response.incomplete"), ("failed", "response.failed")],
)
def test_a_whole_response_replayed_is_the_response_openais_sdk_accumulates(status: str, terminal: str) -> None:
    """`response.created` and `response.in_progress` (no output yet), each item added, its parts' text (and
    annotations, refusal, reasoning summary, a call's arguments) in events, done; the terminal event the status
    names, with the response whole. Numbered in sequence, each named by its type."""
    response = {**RESPONSE, "status": status}
    events = responses_events(response)
    said = payloads(events)
    assert [payload["sequence_number"] for payload in said] == list(range(len(said)))
    assert [event.event for event in events] == [payload["type"] for payload in said]
    assert [payload["type"] for payload in said[:2]] == ["response.created", "response.in_progress"]
    assert said[0]["response"]["output"] == [] and said[0]["response"]["status"] == "in_progress"
    given = stream_state_events(events)
    deltas = [event for event in given if event.type == "response.output_text.delta"]
    assert [(event.delta, event.snapshot) for event in deltas] == [("Paris is the capital of France.",) * 2]
    [arguments] = [event for event in given if event.type == "response.function_call_arguments.delta"]
    assert arguments.snapshot == '{"city":"Paris"}'
    assert given[-1].type == terminal
    assert given[-1].response.model_dump(exclude_none=True) == Response.model_validate(response).model_dump(
        exclude_none=True
    )


def test_a_whole_response_replayed_is_metered_as_its_answer_whole_is() -> None:
    meter = ResponsesMeter()
    for event in replayed(RESPONSES_API, RESPONSE):
        meter.feed(event)
    assert meter.final and meter.searches == 1
    usage = meter.usage
    assert usage == answer_usage(RESPONSE) and usage is not None
    assert (usage.prompt_tokens, usage.cached_tokens, usage.completion_tokens, usage.reasoning_tokens) == (
        320,
        256,
        90,
        64,
    )
    assert meter.output_chars == len("Looking it up.Paris is the capital of France.I will not say more.") + 16


@pytest.mark.parametrize(
    "changed",
    [{"status": "in_progress"}, {"status": "queued"}, {"object": "chat.completion"}, {"output": None}, {"output": [7]}],
)
def test_a_body_no_stream_could_bring_is_refused(changed: dict[str, Any]) -> None:
    """A response not finished (a background one) has no stream's end to replay; nor has a body of no response."""
    with pytest.raises(ValueError):
        responses_events({**RESPONSE, **changed})
