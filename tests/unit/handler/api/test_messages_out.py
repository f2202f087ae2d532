"""The Messages front-end's stream writer: the internal chunks as Anthropic's events."""

from __future__ import annotations

import re
from typing import Any

import orjson
import pytest

from handler.api.messages_out import EventWriter, to_message
from handler.api.reasoning_seal import ReasoningSeal
from handler.call_ids import claude_call_id
from handler.schemas import (
    TOOL_CONTEXT,
    AssistantMessage,
    ChatCompletion,
    ChatCompletionChunk,
    Choice,
    ChunkChoice,
    ChunkDelta,
    FunctionCall,
    FunctionCallDelta,
    ToolCall,
    ToolCallDelta,
    Usage,
)


def chunk(**delta: Any) -> ChatCompletionChunk:
    return ChatCompletionChunk(id="c", created=0, model="m", choices=[ChunkChoice(delta=ChunkDelta(**delta))])


def events(raw: bytes) -> list[dict[str, Any]]:
    return [orjson.loads(line[6:]) for line in raw.split(b"\n") if line.startswith(b"data: ")]


def test_a_signed_thinking_block_ends_with_its_signature_and_a_redacted_one_stands_alone() -> None:
    """Claude's thinking from a translated deployment (Bedrock) reaches a Messages client as Claude wrote it:
    the block completed by `thinking_blocks` on a delta gets its `signature_delta`, and closes; a redacted block
    is Claude's, without the `index` that numbers a `thinking_blocks` entry for Chat Completions clients."""
    writer = EventWriter("m", "msg_1")
    signed = {"type": "thinking", "thinking": "Plan.", "signature": "sig-1", "index": 0}
    redacted = {"type": "redacted_thinking", "data": "opaque"}
    out = writer.chunk(chunk(reasoning_content="Plan."))
    out += writer.chunk(chunk(thinking_blocks=[signed]))
    out += writer.chunk(chunk(thinking_blocks=[{**redacted, "index": 1}]))
    out += writer.chunk(chunk(content="Hi"))
    sent = events(out)
    assert [e["type"] for e in sent] == [
        "content_block_start",
        "content_block_delta",
        "content_block_delta",
        "content_block_stop",
        "content_block_start",
        "content_block_stop",
        "content_block_start",
        "content_block_delta",
    ]
    assert sent[2]["delta"] == {"type": "signature_delta", "signature": "sig-1"} and sent[2]["index"] == 0
    assert sent[4]["content_block"] == redacted and sent[4]["index"] == 1
    assert sent[6]["content_block"] == {"type": "text", "text": ""} and sent[6]["index"] == 2


def calls(*deltas: tuple[int, str, str | None]) -> list[ChatCompletionChunk]:
    """A chunk per tool-call delta: (index, arguments, name), a call's start naming it."""
    out = []
    for index, arguments, name in deltas:
        call: dict[str, Any] = {"index": index, "function": {"arguments": arguments}}
        if name is not None:
            call |= {"id": f"call_{index}", "function": {"name": name, "arguments": arguments}}
        out.append(chunk(tool_calls=[call]))
    return out


def tool_blocks(sent: list[dict[str, Any]]) -> list[tuple[int, str, str, str]]:
    """Each block's index, id, name and arguments, checking that no block is reopened."""
    blocks: dict[int, list[str]] = {}
    starts: dict[int, dict[str, Any]] = {}
    stopped: set[int] = set()
    for event in sent:
        index = event.get("index", -1)
        assert index not in stopped, event
        if event["type"] == "content_block_start":
            starts[index], blocks[index] = event["content_block"], []
        elif event["type"] == "content_block_delta":
            blocks[index].append(event["delta"]["partial_json"])
        elif event["type"] == "content_block_stop":
            stopped.add(index)
    return [(i, starts[i]["id"], starts[i]["name"], "".join(blocks[i])) for i in sorted(starts)]


def test_interleaved_calls_whose_arguments_never_close_are_written_when_the_choice_finishes() -> None:
    """Calls that start together and then take turns: each block whole, in order, once. A call whose arguments
    are not (yet) a whole object keeps the others held until the choice's finish reason."""
    writer = EventWriter("m", "msg_1")
    out = b"".join(writer.chunk(c) for c in calls((0, "", "a"), (1, "", "b"), (0, '{"x":1}', None), (1, "{}", None)))
    assert tool_blocks(events(out)) == [(0, "call_0", "a", '{"x":1}'), (1, "call_1", "b", "{}")]

    writer = EventWriter("m", "msg_1")
    out = b"".join(writer.chunk(c) for c in calls((0, '{"x":', "a"), (1, "{}", "b"), (0, "1", None)))
    assert tool_blocks(events(out)) == [(0, "call_0", "a", '{"x":1')]  # the second call waits
    finished = ChatCompletionChunk(
        id="c", created=0, model="m", choices=[ChunkChoice(delta=ChunkDelta(), finish_reason="tool_calls")]
    )
    out += writer.chunk(finished) + writer.finish(Usage.of(1, 1), None)
    assert tool_blocks(events(out)) == [(0, "call_0", "a", '{"x":1'), (1, "call_1", "b", "{}")]


def test_a_call_numbered_with_an_index_an_earlier_call_had_is_a_call_of_its_own() -> None:
    """Some servers number every call 0 (Ollama), or start again at 0: a delta with an id of its own is a new
    call. It was dropped (its index had been written), or its arguments joined the earlier call's."""

    def call(index: int, call_id: str, name: str, arguments: str) -> dict[str, Any]:
        return {"index": index, "id": call_id, "type": "function", "function": {"name": name, "arguments": arguments}}

    for turns in (
        [[call(0, "A", "f", '{"a":1}'), call(1, "B", "g", '{"b":2}')], [call(0, "C", "h", '{"c":3}')]],
        [[call(0, "A", "f", '{"a":1}')], [call(0, "B", "g", '{"b":2}')], [call(0, "C", "h", '{"c":3}')]],
    ):
        writer = EventWriter("m", "msg_1")
        raw = writer.start(1)
        for tool_calls in turns:
            raw += writer.chunk(chunk(tool_calls=tool_calls))
        raw += writer.chunk(
            ChatCompletionChunk(
                id="c", created=0, model="m", choices=[ChunkChoice(delta=ChunkDelta(), finish_reason="tool_calls")]
            )
        )
        sent = events(raw + writer.finish(Usage.of(1, 1), None))
        starts = [e["content_block"] for e in sent if e["type"] == "content_block_start"]
        assert [(b["id"], b["name"]) for b in starts] == [("A", "f"), ("B", "g"), ("C", "h")]
        assert [e["delta"]["partial_json"] for e in sent if e["type"] == "content_block_delta"] == [
            '{"a":1}',
            '{"b":2}',
            '{"c":3}',
        ]


@pytest.mark.parametrize(
    ("arguments", "finish", "expected"),
    [
        ('{"city":"Paris","units":"cel', "length", {"city": "Paris"}),
        ('{"city":"Pa', "length", {}),
        ("not json", "length", {"_raw": "not json"}),
        ('{"city":"Pa', "tool_calls", {"_raw": '{"city":"Pa'}),
    ],
    ids=["cut-after-a-value", "cut-in-the-first", "cut-not-json", "malformed-whole"],
)
def test_a_calls_input_when_its_arguments_are_not_whole_json(arguments: str, finish: str, expected: Any) -> None:
    """Cut at the token limit, a call's input is what is whole of its JSON (as the Anthropic SDK accumulates a
    stream cut there); arguments no cut explains, or that are no JSON at all, stay readable under `_raw`."""
    call = ToolCall(id="call_1", function=FunctionCall(name="get_weather", arguments=arguments))
    choice = Choice(message=AssistantMessage(content=None, tool_calls=[call]), finish_reason=finish)
    message = to_message(ChatCompletion(id="c", created=0, model="m", choices=[choice]), "m", None)
    assert message["content"] == [{"type": "tool_use", "id": "call_1", "name": "get_weather", "input": expected}]


@pytest.mark.parametrize("call_id", ["functions.get_weather:0", "call 1", ""], ids=["kimi", "spaced", "empty"])
def test_a_call_id_the_messages_api_refuses_is_given_as_its_stand_in_whole_and_streamed(call_id: str) -> None:
    """Another provider's call id of other characters than `[a-zA-Z0-9_-]` (Kimi K2's `functions.get_weather:0`)
    reached the Messages client as written: a history Anthropic refuses ("String should match pattern
    '^[a-zA-Z0-9_-]+$'") whenever the client takes it to Claude. It is given as its stand-in (`claude_call_id`), the
    same in the whole answer and the stream, and the same the Anthropic adapter sends for it; a call without an id
    gets one of its own in each answer."""
    call = ToolCall(id=call_id, function=FunctionCall(name="get_weather", arguments='{"city":"Paris"}'))
    choice = Choice(message=AssistantMessage(content=None, tool_calls=[call]), finish_reason="tool_calls")
    message = to_message(ChatCompletion(id="c", created=0, model="m", choices=[choice]), "m", None)
    given = message["content"][0]["id"]
    assert re.fullmatch(r"[a-zA-Z0-9_-]+", given) and given == (claude_call_id(call_id) if call_id else given)

    writer = EventWriter("m", "msg_1")
    delta = {"index": 0, "id": call_id, "type": "function", "function": {"name": "get_weather", "arguments": "{"}}
    out = writer.chunk(chunk(tool_calls=[delta])) + writer.chunk(chunk(tool_calls=[{"index": 0, "function": {}}]))
    out += writer.finish(Usage.of(1, 1), None)
    (streamed,) = [block_id for _, block_id, _, _ in tool_blocks(events(out))]
    if call_id:
        assert streamed == given
    else:  # (no id to keep: each answer's call gets one of its own, never one repeated across answers)
        assert re.fullmatch(r"[a-zA-Z0-9_-]+", streamed) and streamed != given


def test_a_whole_answer_keeps_claudes_thinking_between_its_calls_where_it_was() -> None:
    """Claude on Bedrock thinks between its tool calls (reasoning, toolUse, reasoning, text, toolUse): a Messages
    stream relays its blocks in that order, but a whole answer put every thinking block first, then the text, then
    the calls (found by review): handed back so, Claude's thinking sequence was rearranged, which Anthropic refuses.
    The answer's `block_order` now orders it; without one (thinking first) the usual order serves."""
    blocks = [
        {"type": "thinking", "thinking": "First.", "signature": "s1", "index": 0},
        {"type": "thinking", "thinking": "Then.", "signature": "s2", "index": 1},
    ]
    calls = [
        ToolCall(id=f"toolu_{n}", type="function", function=FunctionCall(name="f", arguments=f'{{"n": {n}}}'))
        for n in (1, 2)
    ]
    order = [("thinking", 0), ("call", 0), ("thinking", 1), ("text", 5), ("call", 1)]
    message = AssistantMessage(content="Next.", tool_calls=calls, block_order=order, thinking_blocks=blocks)
    choice = Choice(index=0, message=message, finish_reason="tool_calls")
    content = to_message(ChatCompletion(id="c", created=0, model="m", choices=[choice]), "m", None)["content"]
    assert [block["type"] for block in content] == ["thinking", "tool_use", "thinking", "text", "tool_use"]
    assert [block.get("signature") for block in content] == ["s1", None, "s2", None, None]
    assert content[3]["text"] == "Next." and content[4]["input"] == {"n": 2} and "index" not in content[0]
    usual = AssistantMessage(content="Next.", tool_calls=calls, thinking_blocks=blocks)
    kinds = to_message(
        ChatCompletion(id="c", created=0, model="m", choices=[choice.model_copy(update={"message": usual})]), "m", None
    )
    assert [block["type"] for block in kinds["content"]] == ["thinking", "thinking", "text", "tool_use", "tool_use"]


SEAL = ReasoningSeal(b"unit")
SEARCH_PARTS: Any = [{"toolCall": {"id": "s1"}, "thoughtSignature": "c2ln"}, {"toolResponse": {"id": "s1"}}]
PAGES = [{"type": "url", "url": "https://a.example/", "title": "A"}, {"type": "url", "url": "https://b.example/"}]


def searched(query: str, sources: list[Any] | None = None) -> dict[str, Any]:
    action = {"type": "search", "query": query, **({"sources": sources} if sources is not None else {})}
    return {"type": "web_search_call", "status": "completed", "action": action}


def opened(result: dict[str, Any]) -> Any:
    payload = SEAL.open(result["encrypted_content"])
    return payload and payload["fields"][TOOL_CONTEXT]


@pytest.mark.parametrize(
    ("searches", "pages"),
    [
        ([searched("q", PAGES), searched("r")], ["https://a.example/", "https://b.example/"]),
        ([searched("q")], [""]),
        ([], [""]),
    ],
    ids=["pages", "no_page", "no_search"],
)
def test_gemini_3s_search_parts_ride_sealed_in_the_first_search_result(searches: list[Any], pages: list[str]) -> None:
    """A whole answer's search parts (`TOOL_CONTEXT`) ride sealed in its first page's `encrypted_content`, the other
    pages' empty; where no page holds them, in a result of no page (`url`, `title` empty) in the first search's
    results, or in a search of their own (query unknown) ahead of the text. Without a seal, none: as before."""
    message = AssistantMessage(content="Found.", web_searches=searches or None)
    setattr(message, TOOL_CONTEXT, SEARCH_PARTS)  # noqa: B010 - (as the Gemini adapter sets it)
    completion = ChatCompletion(id="1", created=0, model="m", choices=[Choice(message=message, finish_reason="stop")])
    content = to_message(completion, "m", None, SEAL)["content"]
    assert [block["type"] for block in content] == [
        *["server_tool_use", "web_search_tool_result"] * max(1, len(searches)),
        "text",
    ]
    assert content[0]["input"] == {"query": searches[0]["action"]["query"] if searches else ""}
    results = content[1]["content"]
    assert [result["url"] for result in results] == pages and opened(results[0]) == SEARCH_PARTS
    assert [result["encrypted_content"] for result in results[1:]] == [""] * (len(pages) - 1)
    unsealed = to_message(completion, "m", None)["content"]
    assert all(result["encrypted_content"] == "" for block in unsealed[1::2] for result in block["content"])


def test_a_streams_search_parts_ride_in_its_grounding_or_at_its_end() -> None:
    """Streamed, the parts come ahead of the text and the grounding with its end: they ride in its first page. Parts
    no grounding came with (an answer that called a function) ride in a search of their own at the stream's end,
    after the call, before its `message_delta`."""
    writer = EventWriter("m", "msg_1", SEAL)
    raw = writer.chunk(chunk(**{TOOL_CONTEXT: SEARCH_PARTS}))
    raw += writer.chunk(chunk(content="Found."))
    raw += writer.chunk(chunk(web_searches=[searched("q", PAGES)]))
    raw += writer.finish(Usage(), None)
    started = [e["content_block"] for e in events(raw) if e["type"] == "content_block_start"]
    assert [block["type"] for block in started] == ["text", "server_tool_use", "web_search_tool_result"]
    assert opened(started[2]["content"][0]) == SEARCH_PARTS and started[2]["content"][1]["encrypted_content"] == ""
    writer = EventWriter("m", "msg_2", SEAL)
    call = ToolCallDelta(index=0, id="c1", type="function", function=FunctionCallDelta(name="f", arguments="{}"))
    raw = writer.chunk(chunk(**{TOOL_CONTEXT: SEARCH_PARTS[:1]})) + writer.chunk(
        chunk(**{TOOL_CONTEXT: SEARCH_PARTS[1:]})
    )
    raw += writer.chunk(chunk(tool_calls=[call])) + writer.finish(Usage(), None)
    sent = events(raw)
    started = [e["content_block"] for e in sent if e["type"] == "content_block_start"]
    assert [block["type"] for block in started] == ["tool_use", "server_tool_use", "web_search_tool_result"]
    [carrier] = started[2]["content"]
    assert (carrier["url"], carrier["title"], opened(carrier)) == ("", "", SEARCH_PARTS)
    assert [e["index"] for e in sent if e["type"] == "content_block_start"] == [0, 1, 2]
    assert [e["type"] for e in sent[-2:]] == ["message_delta", "message_stop"]
