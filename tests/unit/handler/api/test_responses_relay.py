"""The body a Responses request passes through with (`Relay`), built only for a deployment that reads it; and the
output a Responses stream that broke off fails with."""

from __future__ import annotations

from typing import Any

import pytest

from handler.api.reasoning_seal import ReasoningSeal
from handler.api.responses_api import ResponseIds, ResponsesRequest
from handler.api.responses_native import Relay, StreamedOutput
from handler.api.responses_stream import ResponsesEventWriter
from handler.schemas import ChatCompletionChunk


def test_the_passed_through_body_is_built_on_its_first_read_only(monkeypatch: pytest.MonkeyPatch) -> None:
    own_seal = ReasoningSeal().seal({"text": "t"})
    body = ResponsesRequest.model_validate(
        {
            "model": "m",
            "input": [
                {"role": "user", "content": "go"},
                {"type": "reasoning", "summary": [], "encrypted_content": own_seal},
                {"type": "reasoning", "summary": [], "encrypted_content": "openai-opaque"},
            ],
            "store": False,
        }
    )
    dumps: list[dict[str, Any]] = []
    dump = ResponsesRequest.model_dump

    def counted(self: ResponsesRequest, **kwargs: Any) -> dict[str, Any]:
        dumps.append(kwargs)
        return dump(self, **kwargs)

    monkeypatch.setattr(ResponsesRequest, "model_dump", counted)
    call = Relay(body, [], None, ["truncation"]).call  # type: ignore[arg-type]
    # What a deployment of another API reads (the translated request goes there) costs no copy of the body...
    assert (call.untranslated, call.dropped) == (("truncation",), ("input[reasoning].encrypted_content",))
    assert dumps == []
    # ...and a Responses deployment's read builds it once: the client's body, the gateway's own seal left out.
    assert dict(call.body) == {
        "model": "m",
        "input": [
            {"role": "user", "content": "go"},
            {"type": "reasoning", "summary": [], "encrypted_content": "openai-opaque"},
        ],
        "store": False,
    }
    assert call.body["store"] is False and len(call.body) == 3
    assert len(dumps) == 1


def test_a_stored_turn_is_sent_expanded_and_without_the_gateways_id() -> None:
    body = ResponsesRequest.model_validate({"model": "m", "input": "and now?", "previous_response_id": "resp_1"})
    history = [{"role": "user", "content": "hi"}, {"type": "message", "role": "assistant", "content": "hello"}]
    sent = dict(Relay(body, history, None, []).call.body)  # type: ignore[arg-type]
    assert sent == {
        "model": "m",
        "input": [*history, {"type": "message", "role": "user", "content": "and now?"}],
    }


def test_a_passed_through_stream_cut_short_fails_with_its_items_as_far_as_they_were_streamed() -> None:
    """What a `response.failed` the gateway writes for a passed-through stream that broke off carries: the items
    done as they were, the one it broke off in (a call mid-arguments here) with what was streamed and `incomplete`."""
    summary = {"type": "summary_text", "text": "Look it up."}
    reasoning = {"id": "rs_1", "type": "reasoning", "summary": [summary]}
    call = {"id": "fc_1", "type": "function_call", "call_id": "call_1", "name": "lookup", "arguments": ""}
    events: list[tuple[str, dict[str, Any]]] = [
        ("response.output_item.added", {"output_index": 0, "item": {**reasoning, "summary": []}}),
        ("response.reasoning_summary_part.added", {"summary_index": 0, "part": {**summary, "text": ""}}),
        ("response.reasoning_summary_text.delta", {"summary_index": 0, "delta": "Look it up."}),
        ("response.reasoning_summary_part.done", {"summary_index": 0, "part": summary}),
        ("response.output_item.done", {"output_index": 0, "item": reasoning}),
        ("response.output_item.added", {"output_index": 1, "item": {**call, "status": "in_progress"}}),
        ("response.function_call_arguments.delta", {"output_index": 1, "delta": '{"q": '}),
        ("response.function_call_arguments.delta", {"output_index": 1, "delta": '"news'}),
    ]
    output = StreamedOutput()
    for kind, payload in events:
        output.feed(kind, {"output_index": 0, **payload})
    assert output.items_so_far() == [reasoning, {**call, "arguments": '{"q": "news', "status": "incomplete"}]


def test_a_translated_stream_cut_short_fails_with_its_items_as_far_as_they_were_streamed() -> None:
    """The same for a translated stream: the message done, and the call it broke off in."""
    req = ResponsesRequest.model_validate({"model": "m", "input": "go", "store": False})
    writer = ResponsesEventWriter(req, ResponseIds("req_" + "a" * 32), ReasoningSeal())

    def chunk(delta: dict[str, Any]) -> ChatCompletionChunk:
        choice = {"index": 0, "delta": delta, "finish_reason": None}
        return ChatCompletionChunk.model_validate({"id": "c", "created": 1, "model": "m", "choices": [choice]})

    writer.chunk(chunk({"content": "Let me look."}))
    call = {"index": 0, "id": "call_1", "type": "function", "function": {"name": "lookup", "arguments": '{"q": '}}
    writer.chunk(chunk({"tool_calls": [call]}))
    message, cut = writer.streamed()
    assert (message["type"], message["status"], message["content"][0]["text"]) == (
        "message",
        "completed",
        "Let me look.",
    )
    assert (cut["type"], cut["call_id"], cut["arguments"], cut["status"]) == (
        "function_call",
        "call_1",
        '{"q": ',
        "incomplete",
    )
