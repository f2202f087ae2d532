"""A provider's whole answer replayed as the stream of its own API that was asked for.

A server that ignores `stream` (an OpenAI- or Anthropic-compatible one) answers a stream's request with the whole
answer. Passed through (`NativeStream`), that body is replayed here as the events the provider's stream would have
brought, in the order its API writes them: a Responses API's `response.created` to its terminal event (which carries
the whole response, its usage among it), a Messages API's `message_start` to `message_stop` (its `message_delta`
carrying the usage). They go through the stream's meter, redactor and relay as a real stream's do, so the client gets
the stream it asked for and the line is billed on the usage the provider reported, as `ChunkStream` does for a Chat
Completions deployment (docs/costs.md). (Each piece of text comes as one delta: the provider wrote it at once.)

Imported with the first whole answer to a stream's request: few servers write one.
"""

from __future__ import annotations

from typing import Any

import orjson

from handler.ports import RESPONSES_API
from handler.wire import StreamEvent

# A finished response's terminal event, by its status. A response neither finished nor failed (`queued`,
# `in_progress`: a background one; `cancelled`) has no stream's end to replay.
TERMINAL_EVENT = {"completed": "response.completed", "incomplete": "response.incomplete", "failed": "response.failed"}
# A response as its stream begins it: in progress, none of what its end brings yet (its output, usage, error).
BEGUN: dict[str, Any] = dict(status="in_progress", output=[], usage=None, error=None, incomplete_details=None)
# A Messages block whose one member the stream writes in deltas: that member, empty in its `content_block_start`, and
# the delta that brings it. (A thinking block's signature comes in a delta of its own, after its text.)
BLOCK_DELTAS = {
    "text": ("text", "", "text_delta", "text"),
    "thinking": ("thinking", "", "thinking_delta", "thinking"),
    "tool_use": ("input", {}, "input_json_delta", "partial_json"),
    "server_tool_use": ("input", {}, "input_json_delta", "partial_json"),
    "mcp_tool_use": ("input", {}, "input_json_delta", "partial_json"),
}


def replayed(api: str, body: dict[str, Any]) -> list[StreamEvent]:
    """The events of `api`'s stream that bring `body`, a whole answer of that API; a `ValueError` where `body` is
    none a stream could bring (one of `handler.wire.SHAPE_ERRORS`: the provider's malformed answer)."""
    return responses_events(body) if api == RESPONSES_API else messages_events(body)


class _Events:
    """A Responses stream's events as they are written: each named by its type, numbered in sequence."""

    def __init__(self) -> None:
        self.events: list[StreamEvent] = []

    def add(self, kind: str, **payload: Any) -> None:
        numbered = {"type": kind, "sequence_number": len(self.events), **payload}
        self.events.append(StreamEvent(kind, orjson.dumps(numbered)))


def responses_events(response: dict[str, Any]) -> list[StreamEvent]:
    """A whole response as the Responses API streams it: `response.created` and `response.in_progress` (the response
    begun, no output yet), each output item added, its parts' text in deltas, done; the terminal event its status
    names, with the response whole."""
    status, output = response.get("status"), response.get("output")
    terminal = TERMINAL_EVENT.get(status) if isinstance(status, str) else None
    if response.get("object") != "response" or terminal is None or not isinstance(output, list):
        raise ValueError("a whole body that is no finished response")
    if not all(isinstance(item, dict) for item in output):
        raise ValueError("a response's output item is not an object")
    out = _Events()
    begun = {name: value for name, value in response.items() if name != "completed_at"} | BEGUN
    out.add("response.created", response=begun)
    out.add("response.in_progress", response=begun)
    for index, item in enumerate(output):
        _item(out, index, item)
    out.add(terminal, response=response)
    return out.events


def _item(out: _Events, index: int, item: dict[str, Any]) -> None:
    """One output item: added as it begins (its text still to come), its text in deltas, then done whole."""
    kind, at = item.get("type"), {"item_id": item.get("id"), "output_index": index}
    content = item.get("content") if isinstance(item.get("content"), list) else None
    summary = item.get("summary") if isinstance(item.get("summary"), list) else None
    begun = {**item, "status": "in_progress"} if "status" in item else dict(item)
    if kind == "message" and content is not None:
        begun["content"] = []
    if kind == "reasoning" and summary is not None:
        begun["summary"] = []
    arguments = item.get("arguments")
    if kind == "function_call" and isinstance(arguments, str):
        begun["arguments"] = ""
    out.add("response.output_item.added", item=begun, **at)
    if kind == "message" and content is not None:
        for part_index, part in enumerate(content):
            _part(out, at | {"content_index": part_index}, part)
    if kind == "reasoning" and summary is not None:
        for part_index, part in enumerate(summary):
            place = at | {"summary_index": part_index}
            text = part.get("text") if isinstance(part, dict) else None
            if not isinstance(text, str):
                raise ValueError("a reasoning summary part without its text")
            out.add("response.reasoning_summary_part.added", part={**part, "text": ""}, **place)
            out.add("response.reasoning_summary_text.delta", delta=text, **place)
            out.add("response.reasoning_summary_text.done", text=text, **place)
            out.add("response.reasoning_summary_part.done", part=part, **place)
    if kind == "function_call" and isinstance(arguments, str):
        out.add("response.function_call_arguments.delta", delta=arguments, **at)
        named = {"name": item["name"]} if isinstance(item.get("name"), str) else {}
        out.add("response.function_call_arguments.done", arguments=arguments, **at, **named)
    out.add("response.output_item.done", item=item, **at)


def _part(out: _Events, at: dict[str, Any], part: Any) -> None:
    """One content part of a message: added empty, its text (or refusal) in a delta, done; its annotations added
    between them."""
    if not isinstance(part, dict):
        raise ValueError("a message's content part is not an object")
    kind = part.get("type")
    member = "text" if kind == "output_text" else "refusal" if kind == "refusal" else None
    text = part.get(member) if member else None
    if member is None or not isinstance(text, str):
        out.add("response.content_part.added", part=part, **at)
        out.add("response.content_part.done", part=part, **at)
        return
    annotations = part.get("annotations") if isinstance(part.get("annotations"), list) else None
    empty = {**part, member: ""} | ({"annotations": []} if annotations is not None else {})
    out.add("response.content_part.added", part=empty, **at)
    if member == "refusal":
        out.add("response.refusal.delta", delta=text, **at)
        out.add("response.refusal.done", refusal=text, **at)
    else:
        logprobs = part.get("logprobs") if isinstance(part.get("logprobs"), list) else []
        out.add("response.output_text.delta", delta=text, logprobs=logprobs, **at)
        for number, annotation in enumerate(annotations or ()):
            out.add("response.output_text.annotation.added", annotation_index=number, annotation=annotation, **at)
        out.add("response.output_text.done", text=text, logprobs=logprobs, **at)
    out.add("response.content_part.done", part=part, **at)


def messages_events(message: dict[str, Any]) -> list[StreamEvent]:
    """A whole message (checked as Anthropic's already: `native_usage`) as the Messages API streams it:
    `message_start` (the message begun: no content, no stop reason, its input counts), each block started, its text
    (or a tool's input) in a delta, stopped; `message_delta` with the stop reason and the whole usage;
    `message_stop`."""
    events: list[StreamEvent] = []

    def add(kind: str, **payload: Any) -> None:
        events.append(StreamEvent(kind, orjson.dumps({"type": kind, **payload})))

    usage = message["usage"]
    begun = {**message, "content": [], "stop_reason": None, "stop_sequence": None, "usage": {**usage}}
    begun["usage"]["output_tokens"] = 0  # (its output is counted in `message_delta`, as Anthropic's stream counts it)
    add("message_start", message=begun)
    for index, block in enumerate(message["content"]):
        written = BLOCK_DELTAS.get(block["type"])
        value = block.get(written[0]) if written else None
        if written is None or value is None:
            add("content_block_start", index=index, content_block=block)
            add("content_block_stop", index=index)
            continue
        member, empty, delta, carried = written
        citations = block.get("citations") if block["type"] == "text" else None
        started = {**block, member: empty} | ({"citations": []} if isinstance(citations, list) else {})
        if block["type"] == "thinking" and "signature" in block:
            started["signature"] = ""
        add("content_block_start", index=index, content_block=started)
        if value != empty:  # (a tool's input of no member, a text of none: no delta)
            text = value if isinstance(value, str) else orjson.dumps(value).decode()
            add("content_block_delta", index=index, delta={"type": delta, carried: text})
        for citation in citations if isinstance(citations, list) else ():
            add("content_block_delta", index=index, delta={"type": "citations_delta", "citation": citation})
        if block["type"] == "thinking" and isinstance(block.get("signature"), str):
            add("content_block_delta", index=index, delta={"type": "signature_delta", "signature": block["signature"]})
        add("content_block_stop", index=index)
    said = {"stop_reason": message.get("stop_reason"), "stop_sequence": message.get("stop_sequence")}
    if "container" in message:
        said["container"] = message["container"]
    add("message_delta", delta=said, usage=usage)
    add("message_stop")
    return events
