"""A stream's deltas scrubbed as its client joins them: the internal chunks (`ChunkRedactor`) and a provider's own
events passed through (`EventRedactor`), whatever channel a secret is cut across."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import orjson
import pytest

from handler.pipeline.redacting import (
    ChunkRedactor,
    EventRedactor,
    messages_delta,
    messages_within,
    responses_delta,
    responses_within,
)
from handler.redaction import REDACTED
from handler.schemas import ChatCompletionChunk
from handler.wire import StreamEvent

SECRET = "sk-live-Qv83HxT1nZ6cW0bJ"


@pytest.fixture(autouse=True)
def known(only_secrets: Callable[..., None]) -> None:
    only_secrets(SECRET)


def chunk(delta: dict[str, Any], index: int = 0, finish: str | None = None) -> ChatCompletionChunk:
    choice = {"index": index, "delta": delta, "finish_reason": finish}
    return ChatCompletionChunk.model_validate({"id": "c1", "created": 1, "model": "m", "choices": [choice]})


def relayed(chunks: list[ChatCompletionChunk], ended: bool = True) -> list[ChatCompletionChunk]:
    out = list(chunks)
    ChunkRedactor().redact(out, ended, chunks[0])
    return out


def field(chunks: list[ChatCompletionChunk], name: str, index: int = 0) -> str:
    return "".join(getattr(c.delta, name) or "" for ch in chunks for c in ch.choices if c.index == index)


def arguments(chunks: list[ChatCompletionChunk]) -> str:
    calls = [call for ch in chunks for c in ch.choices for call in c.delta.tool_calls or ()]
    return "".join(call.function.arguments or "" for call in calls if call.function)


def test_text_reasoning_and_a_refusal_cut_across_chunks_are_redacted() -> None:
    for name in ("content", "reasoning_content", "refusal"):
        pieces = ["my key ", SECRET[:5], SECRET[5:13], SECRET[13:] + " ok"]
        out = relayed([chunk({name: p}) for p in pieces] + [chunk({}, finish="stop")])
        assert field(out, name) == f"my key {REDACTED} ok"
        assert all(SECRET[:5] not in (getattr(c.choices[0].delta, name) or "") for c in out)


def test_reasoning_held_back_goes_before_the_answer_that_follows_it() -> None:
    """In a chunk of its own, before the answer's: a writer of blocks (Messages, Responses) puts it in the thinking
    block, still open, rather than in a new one after the text."""
    out = relayed([chunk({"reasoning_content": "think s"}), chunk({"content": "Hi"}), chunk({}, finish="stop")])
    deltas = [(c.choices[0].delta.reasoning_content, c.choices[0].delta.content) for c in out]
    assert deltas == [("think ", None), ("s", None), (None, "Hi"), (None, None)]


def test_tool_call_arguments_cut_across_chunks_are_redacted() -> None:
    call = {"index": 0, "id": "call_1", "type": "function", "function": {"name": "f", "arguments": ""}}
    args = orjson.dumps({"token": SECRET}).decode()
    pieces = [args[:14], args[14:20], args[20:]]
    deltas = [{"tool_calls": [call]}] + [{"tool_calls": [{"index": 0, "function": {"arguments": p}}]} for p in pieces]
    out = relayed([chunk(d) for d in deltas] + [chunk({}, finish="tool_calls")])
    assert orjson.loads(arguments(out)) == {"token": REDACTED}


def test_a_calls_held_arguments_go_before_the_next_call_of_its_choice_alone() -> None:
    def call(index: int, arguments: str) -> dict[str, Any]:
        return {"index": index, "function": {"arguments": arguments}}

    out = relayed(
        [
            chunk({"tool_calls": [call(0, '{"a":"sk-li')]}, 0),
            chunk({"tool_calls": [call(0, '{"b":"x"}')]}, 1),  # another choice's first call: not joined to it
            chunk({"tool_calls": [call(1, '{"c":1}')]}, 0),  # the next call: the first one is over
            chunk({}, 0, "tool_calls"),
            chunk({}, 1, "tool_calls"),
        ]
    )
    sent = [
        [(c.index, c.function.arguments if c.function else None) for c in ch.choices[0].delta.tool_calls or ()]
        for ch in out
    ]
    assert sent == [[(0, '{"a":"')], [(0, '{"b":"x"}')], [(0, "sk-li")], [(1, '{"c":1}')], [], []]


def test_what_a_finished_choice_held_goes_in_its_finishing_chunk() -> None:
    out = relayed([chunk({"content": "a sk-li"}), chunk({}, finish="stop")])
    assert [c.choices[0].delta.content for c in out] == ["a ", "sk-li"]
    assert out[1].choices[0].finish_reason == "stop"


def test_a_stream_that_ends_without_finishing_still_gets_what_was_held() -> None:
    out = relayed([chunk({"content": "a sk-li"})])
    assert len(out) == 2 and field(out, "content") == "a sk-li"


def test_a_key_cut_by_the_streams_end_goes_redacted_where_it_is_as_long_as_a_secret() -> None:
    """A provider's output cap (or a failure) ending the stream inside a key: all but its last characters went out;
    the beginning of a key as long as the shortest secret known is redacted, a few characters still go."""
    for finished in (True, False):
        ending = [chunk({}, finish="length")] if finished else []
        out = relayed([chunk({"content": "my key " + SECRET[:6]}), chunk({"content": SECRET[6:16]}), *ending])
        assert field(out, "content") == f"my key {REDACTED}" and SECRET[:8] not in field(out, "content")
        assert out[-1].choices[0].finish_reason == ("length" if finished else None)
    assert field(relayed([chunk({"content": "a " + SECRET[:7]})]), "content") == "a " + SECRET[:7]


def test_choices_hold_apart() -> None:
    out = relayed(
        [
            chunk({"content": "x " + SECRET[:6]}, 0),
            chunk({"content": SECRET[6:]}, 1),  # another choice: its text is not joined with choice 0's
            chunk({"content": SECRET[6:]}, 0),
            chunk({}, 0, "stop"),
            chunk({}, 1, "stop"),
        ]
    )
    assert field(out, "content", 0) == f"x {REDACTED}" and field(out, "content", 1) == SECRET[6:]


def logprobs(*tokens: str) -> dict[str, Any]:
    """A choice's log probabilities of its text's `tokens`."""
    return {"content": [{"token": t, "logprob": -0.1, "bytes": list(t.encode()), "top_logprobs": []} for t in tokens]}


def spoken(chunks: list[ChatCompletionChunk]) -> list[str]:
    """Each chunk's tokens, joined."""
    given = [c.choices[0].logprobs["content"] if c.choices and c.choices[0].logprobs else [] for c in chunks]
    return ["".join(t["token"] for t in tokens) for tokens in given]


def with_tokens(text: str, *tokens: str) -> ChatCompletionChunk:
    """A chunk of `text`, with its log probabilities of `tokens`."""
    said = chunk({"content": text})
    said.choices[0].logprobs = logprobs(*tokens)
    return said


def test_a_texts_tokens_wait_while_it_waits_and_go_redacted_with_it() -> None:
    """The log probabilities of a choice's text give it again, a token at a time: the tokens of the end of a delta
    held back wait with it, and go with the text that follows, those of a key as the text has it; each chunk's
    tokens make its text."""
    out = relayed(
        [
            with_tokens("key " + SECRET[:5], "key", " ", SECRET[:5]),
            with_tokens(SECRET[5:13], SECRET[5:13]),
            with_tokens(SECRET[13:] + " ok", SECRET[13:], " ok"),
            with_tokens("is", "i", "s"),  # (`s`: held back, the last token of its delta too)
            with_tokens(" fine", " fine"),
            chunk({}, finish="stop"),
        ]
    )
    assert [c.choices[0].delta.content for c in out] == ["key ", "", f"{REDACTED} ok", "i", "s fine", None]
    assert spoken(out) == ["key ", "", f"{REDACTED} ok", "i", "s fine", ""]
    assert [len(c.choices[0].logprobs["content"]) for c in out[:5]] == [2, 0, 4, 1, 2]  # (as many as were said)


def test_the_tokens_of_a_key_cut_by_the_texts_end_go_redacted_with_it() -> None:
    """In the chunk that finishes the choice (without tokens of its own), or one of its own at the stream's end, or
    before the chunk that moves the choice on to a tool call."""
    call = {"index": 0, "id": "call_1", "type": "function", "function": {"name": "f", "arguments": "{}"}}
    for ending in ([chunk({}, finish="length")], [], [chunk({"tool_calls": [call]})]):
        out = relayed(
            [
                with_tokens("my key " + SECRET[:6], "my key ", SECRET[:6]),
                with_tokens(SECRET[6:16], SECRET[6:16]),
                *ending,
            ]
        )
        assert field(out, "content") == "".join(spoken(out)) == f"my key {REDACTED}"


def test_a_transcript_and_openrouters_reasoning_parts_cut_across_chunks_are_redacted() -> None:
    """Texts a client joins beside a delta's fields: a spoken answer's transcript, OpenRouter's reasoning parts (by
    their `index`), which it streams at once with `reasoning`: neither ends the other, each ends with its choice."""
    pieces = ["my key ", SECRET[:5], SECRET[5:13], SECRET[13:] + " ok"]
    audio = relayed([chunk({"audio": {"id": "audio_1", "transcript": p}}) for p in pieces] + [chunk({}, finish="stop")])
    transcripts = [(c.choices[0].delta.model_extra or {}).get("audio", {}).get("transcript") for c in audio]
    assert "".join(t or "" for t in transcripts) == f"my key {REDACTED} ok"
    assert all(SECRET[:5] not in (t or "") for t in transcripts)

    def reasoned(piece: str) -> ChatCompletionChunk:
        parts = [
            {"type": "reasoning.text", "text": piece, "index": 0},
            {"type": "reasoning.summary", "summary": piece, "index": 1},
        ]
        return chunk({"reasoning_content": piece, "reasoning_details": parts})

    out = relayed([reasoned(p) for p in [*pieces, "x " + SECRET[:9]]] + [chunk({}, finish="stop")])
    parts = [p for c in out for p in (c.choices[0].delta.model_extra or {}).get("reasoning_details", ())]
    shown = f"my key {REDACTED} okx {REDACTED}"  # (the key cut by the choice's end, as long as a secret: redacted)
    assert field(out, "reasoning_content") == shown
    assert "".join(p.get("text", "") for p in parts if p["index"] == 0) == shown
    assert "".join(p.get("summary", "") for p in parts if p["index"] == 1) == shown
    assert {p["type"] for p in parts if p["index"] == 1} == {"reasoning.summary"}


def cited(text: str, word: str) -> dict[str, Any]:
    """Chat Completions' `url_citation` of `word`, its span in `text` (the provider's)."""
    at = text.index(word)
    span = {"url": f"https://example.com/{word}", "title": word, "start_index": at, "end_index": at + len(word)}
    return {"type": "url_citation", "url_citation": span}


def test_a_choices_annotations_are_moved_past_the_secrets_redacted_from_its_text() -> None:
    """Each choice's own: past what the client was handed of its text (`shown`, which the relay counts as it hands
    the chunks out), whichever delta the secret was redacted from, held first or joined in the same batch."""
    said = {0: f"intro one {SECRET} two {SECRET} three", 1: f"xy {SECRET} four"}
    batches = [
        [chunk({"content": "intro "}, 0), chunk({"content": "xy "}, 1)],
        [chunk({"content": "one " + SECRET[:5]}, 0)],  # (held: the beginning of the key)
        [chunk({"content": SECRET[5:] + " two "}, 0), chunk({"content": f"{SECRET} four"}, 1)],
        [chunk({"content": f"{SECRET} three"}, 0)],
        [
            chunk({"annotations": [cited(said[0], w) for w in ("one", "two", "three")]}, 0),
            chunk({"annotations": [cited(said[1], "four")]}, 1),
        ],
    ]
    shown: dict[int, int] = {}
    redactor = ChunkRedactor(shown)
    out = []
    for batch in batches:
        redactor.redact(batch, False, None)
        for c in batch:  # (handed out)
            for choice in c.choices:
                shown[choice.index] = shown.get(choice.index, 0) + len(choice.delta.content or "")
        out += batch
    for index, words in ((0, ["one", "two", "three"]), (1, ["four"])):
        text = field(out, "content", index)
        assert text == said[index].replace(SECRET, REDACTED)
        extras = [ch.delta.model_extra or {} for c in out for ch in c.choices if ch.index == index]
        spans = [a["url_citation"] for extra in extras for a in extra.get("annotations", ())]
        assert [text[span["start_index"] : span["end_index"]] for span in spans] == words


# --- a provider's own events ----------------------------------------------------------------------


def block_delta(text: str, index: int = 0) -> StreamEvent:
    payload = {"type": "content_block_delta", "index": index, "delta": {"type": "text_delta", "text": text}}
    return StreamEvent("content_block_delta", orjson.dumps(payload))


def texts(events: list[StreamEvent]) -> str:
    found = [messages_delta(e) for e in events]
    return "".join(f[0][1][f[0][2]] for f in found if f is not None)


def test_events_without_a_secret_go_on_as_the_provider_wrote_them() -> None:
    redactor = EventRedactor(messages_delta, messages_within)
    first, held, third = block_delta("Hello "), block_delta("this"), block_delta(" went")
    assert redactor.relay([first]) == [first]
    assert redactor.relay([held]) == []  # `s`, the beginning of the key, waits for what follows
    assert redactor.relay([third]) == [held, third]  # as sent: the same events
    stop = StreamEvent("content_block_stop", b'{"type":"content_block_stop","index":0}')
    last = block_delta("end sk-")
    assert redactor.relay([last, stop]) == [last, stop]  # the block ended: its beginning of a key goes


def test_a_secret_cut_across_events_goes_in_the_first_of_them_redacted() -> None:
    redactor = EventRedactor(messages_delta, messages_within)
    pieces = ["key ", SECRET[:4], SECRET[4:9], SECRET[9:], " ok"]
    out = [e for p in pieces for e in redactor.relay([block_delta(p)])] + redactor.release()
    assert texts(out) == f"key {REDACTED} ok" and SECRET.encode() not in b"".join(e.data for e in out)
    assert len(out) == 3  # the events the key was cut across, joined into one


def test_a_key_cut_by_its_blocks_end_goes_redacted_in_the_first_event_it_was_cut_across() -> None:
    redactor = EventRedactor(messages_delta, messages_within)
    stop = StreamEvent("content_block_stop", b'{"type":"content_block_stop","index":0}')
    out = redactor.relay([block_delta("key " + SECRET[:6]), block_delta(SECRET[6:16]), stop])
    assert texts(out) == f"key {REDACTED}" and SECRET[:8].encode() not in b"".join(e.data for e in out)
    assert len(out) == 2 and out[-1] is stop
    short = block_delta("end " + SECRET[:7])
    assert redactor.relay([short, stop]) == [short, stop]  # (fewer characters than any secret: they go)


def test_a_ping_between_two_deltas_does_not_release_what_was_held() -> None:
    redactor = EventRedactor(messages_delta, messages_within)
    ping = StreamEvent("ping", b'{"type":"ping"}')
    out = redactor.relay([block_delta("key " + SECRET[:6]), ping, block_delta(SECRET[6:] + ".")])
    assert out[0] is ping and texts(out) == f"key {REDACTED}."


def test_a_choices_delta_without_text_lets_nothing_go() -> None:
    """A search model's `annotations` in a delta of their own go on; the text held waits for the next."""
    out = relayed([chunk({"content": "key " + SECRET[:6]}), chunk({"annotations": []}), chunk({"content": SECRET[6:]})])
    assert field(out, "content") == f"key {REDACTED}"
    assert [c.choices[0].delta.content for c in out] == ["key ", None, REDACTED]


def block_event(index: int, delta: dict[str, Any]) -> StreamEvent:
    payload = {"type": "content_block_delta", "index": index, "delta": delta}
    return StreamEvent("content_block_delta", orjson.dumps(payload))


def test_a_citation_between_two_deltas_of_its_block_waits_with_them() -> None:
    """A `citations_delta` leaves its text block open: it let the held text go, and the client joined the key."""
    redactor = EventRedactor(messages_delta, messages_within)
    citation = block_event(0, {"type": "citations_delta", "citation": {"type": "char_location", "cited_text": "k"}})
    assert redactor.relay([block_delta("key " + SECRET[:6]), citation]) == []
    out = redactor.relay([block_delta(SECRET[6:] + ".")])
    assert texts(out) == f"key {REDACTED}." and out[1] is citation and len(out) == 2
    # Without a secret, in the order they came.
    first, then = block_delta("a s"), block_delta("ome")
    assert redactor.relay([first, citation, then]) == [first, citation, then]


def test_a_signature_waits_with_its_thinking_and_goes_in_its_place() -> None:
    redactor = EventRedactor(messages_delta, messages_within)
    thought = block_event(1, {"type": "thinking_delta", "thinking": "I will say sk"})
    signed = block_event(1, {"type": "signature_delta", "signature": "EqQBCkYIBxgCKkA"})
    stop = StreamEvent("content_block_stop", b'{"type":"content_block_stop","index":1}')
    assert redactor.relay([thought, signed]) == []
    assert redactor.relay([stop]) == [thought, signed, stop]


def test_another_blocks_event_releases_what_was_held() -> None:
    redactor = EventRedactor(messages_delta, messages_within)
    assert redactor.relay([block_delta("a sk", 0)]) == []
    out = redactor.relay([block_delta("-live", 1)])
    assert texts(out) == "a sk-live"  # two blocks: a client does not join them


def test_a_responses_stream_keeps_its_sequence_in_order() -> None:
    def delta(text: str, sequence: int) -> StreamEvent:
        payload = {
            "type": "response.output_text.delta",
            "sequence_number": sequence,
            "item_id": "msg_1",
            "output_index": 0,
            "content_index": 0,
            "delta": text,
        }
        return StreamEvent("response.output_text.delta", orjson.dumps(payload))

    redactor = EventRedactor(responses_delta, responses_within)
    pieces = ["the ", SECRET[:7], SECRET[7:], " is"]
    out = [e for i, p in enumerate(pieces) for e in redactor.relay([delta(p, i + 3)])] + redactor.release()
    payloads = [orjson.loads(e.data) for e in out]
    assert "".join(p["delta"] for p in payloads) == f"the {REDACTED} is"
    sequence = [p["sequence_number"] for p in payloads]
    assert sequence == sorted(set(sequence))


def responses_event(kind: str, sequence: int, content_index: int = 0, **fields: Any) -> StreamEvent:
    where = {"item_id": "msg_1", "output_index": 0, "content_index": content_index}
    return StreamEvent(kind, orjson.dumps({"type": kind, "sequence_number": sequence, **where, **fields}))


def test_an_annotation_between_two_deltas_of_its_text_waits_with_them() -> None:
    """Joined into the first delta, the text goes before the annotation; the sequence stays in order."""
    annotation = {"type": "url_citation", "url": "https://example.com/", "start_index": 0, "end_index": 3}
    added = responses_event("response.output_text.annotation.added", 4, annotation=annotation, annotation_index=0)
    redactor = EventRedactor(responses_delta, responses_within)
    first = responses_event("response.output_text.delta", 3, delta="the " + SECRET[:7])
    assert redactor.relay([first, added]) == []
    out = redactor.relay([responses_event("response.output_text.delta", 5, delta=SECRET[7:] + " ok")])
    payloads = [orjson.loads(e.data) for e in out]
    assert [p["sequence_number"] for p in payloads] == [3, 4] and out[1] is added
    assert payloads[0]["delta"] == f"the {REDACTED} ok"


def test_an_annotation_of_another_part_releases_what_was_held() -> None:
    redactor = EventRedactor(responses_delta, responses_within)
    held = responses_event("response.output_text.delta", 3, delta="a sk")
    other = responses_event("response.output_text.annotation.added", 4, content_index=1, annotation={})
    assert redactor.relay([held]) == []
    assert redactor.relay([other]) == [held, other]


def test_where_a_secret_was_in_the_text_written_again_is_kept_for_the_relay() -> None:
    """The positions an annotation gives are in the text as the provider wrote it: the relay moves them past what
    was redacted (`placed`), by the event the secret's text was joined into."""
    redactor = EventRedactor(responses_delta, responses_within, placed=True)
    pieces = ["the ", SECRET[:7], SECRET[7:] + " is " + SECRET[:3], SECRET[3:] + " ok"]
    out = [
        e
        for i, p in enumerate(pieces)
        for e in redactor.relay([responses_event("response.output_text.delta", i, delta=p)])
    ]
    [first, written] = out
    assert [orjson.loads(e.data)["delta"] for e in out] == ["the ", f"{REDACTED} is {REDACTED} ok"]
    assert redactor.placed == {written: [(0, len(SECRET)), (len(SECRET) + 4, len(SECRET))]}  # (in what it said)
    assert EventRedactor(messages_delta, messages_within).placed is None  # (kept for a relay that reads it alone)


def test_the_tokens_of_the_deltas_joined_into_the_first_go_with_it_redacted() -> None:
    """A Responses output text's deltas carry their tokens (`logprobs`): joined into the first, the deltas a key was
    cut across give it theirs too (they were lost, and the first's gave the key's first characters), redacted."""

    def delta(text: str, sequence: int) -> StreamEvent:
        tokens = [{"token": text, "logprob": -0.1, "bytes": list(text.encode()), "top_logprobs": []}]
        return responses_event("response.output_text.delta", sequence, delta=text, logprobs=tokens)

    redactor = EventRedactor(responses_delta, responses_within)
    pieces = ["the ", SECRET[:7], SECRET[7:], " is ", SECRET[:9]]
    out = [e for i, p in enumerate(pieces) for e in redactor.relay([delta(p, i)])] + redactor.release()
    payloads = [orjson.loads(e.data) for e in out]
    assert [p["delta"] for p in payloads] == ["the ", REDACTED, " is ", REDACTED]
    assert [[t["token"] for t in p["logprobs"]] for p in payloads] == [["the "], [REDACTED, ""], [" is "], [REDACTED]]


def test_audio_between_two_deltas_of_its_transcript_waits_with_them() -> None:
    def said(kind: str, sequence: int, delta: str) -> StreamEvent:
        return StreamEvent(kind, orjson.dumps({"type": kind, "sequence_number": sequence, "delta": delta}))

    redactor = EventRedactor(responses_delta, responses_within)
    audio = said("response.audio.delta", 2, "UklGRiQAAABXQVZF")
    out = redactor.relay([said("response.audio.transcript.delta", 1, "key " + SECRET[:5]), audio])
    out += redactor.relay([said("response.audio.transcript.delta", 3, SECRET[5:] + ".")])
    assert [orjson.loads(e.data)["delta"] for e in out] == [f"key {REDACTED}.", "UklGRiQAAABXQVZF"] and out[1] is audio
