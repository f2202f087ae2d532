"""`EventWriter._calls` holding text before the object (`JsonPrefix.waits`): in time linear in it (review
mergerev34c)."""

from __future__ import annotations

import time

from handler.api.messages_out import EventWriter
from handler.schemas import ChatCompletionChunk, ChunkChoice, ChunkDelta, FunctionCallDelta, ToolCallDelta


def call_chunk(arguments: str, opening: bool = False) -> ChatCompletionChunk:
    call = ToolCallDelta(index=0, function=FunctionCallDelta(arguments=arguments))
    if opening:
        call = ToolCallDelta(index=0, id="call_1", function=FunctionCallDelta(name="f", arguments=arguments))
    return ChatCompletionChunk(id="c", created=0, model="m", choices=[ChunkChoice(delta=ChunkDelta(tool_calls=[call]))])


def written_in(opening: str, run: int) -> float:
    chunks = [call_chunk("", opening=True)] + ([call_chunk(opening)] if opening else [])
    chunks += [call_chunk("\n" * 16) for _ in range(run // 16)]
    writer = EventWriter("m", "msg_1")
    started = time.perf_counter()
    for chunk in chunks:
        writer.chunk(chunk)
    writer.closed()
    return time.perf_counter() - started


def test_whitespace_before_the_object_is_held_in_linear_time() -> None:
    """Whitespace before the object now waits for it (`waits`): `self.held += function.arguments` copies all that is
    held at each fragment (CPython's in-place concatenation does not apply to an attribute), so a model that writes
    whitespace before its arguments (OpenAI warns JSON mode may write "an unending stream of whitespace" until
    max_tokens) costs time quadratic in it, on the event loop: measured 2.7 s against 0.5 s at 2 MB, 9.7 s against
    1.0 s at 4 MB, for the same run inside the object. D7 of review mergerev34b, moved before the object. The same
    run inside the object (relayed as it comes) is the yardstick. (And then, no object having come, the held
    whitespace is relayed alone and fails the SDK's stream: test_streamed_arguments.py.)"""
    run = 3_000_000
    inside = written_in('{"city": "Paris"', run)
    before = written_in("", run)
    assert before < 3 * inside, f"before the object: {before:.2f} s; inside it: {inside:.2f} s"


def test_a_call_with_no_arguments_streams_none() -> None:
    """A call whose arguments never come (a function of no parameters) is `input: {}`, as its whole answer is: its
    block's end makes whole only arguments that came (`{"_raw": ""}` is no input of the model's)."""
    writer = EventWriter("m", "msg_1")
    events = writer.chunk(call_chunk("", opening=True)) + writer.closed()
    assert b"input_json_delta" not in events and b"_raw" not in events
