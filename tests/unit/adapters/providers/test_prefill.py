"""A prefill an answer repeats (Mistral's): the continuation alone, from a whole answer and from a stream."""

from __future__ import annotations

import pytest

from adapters.providers.prefill import RepeatedPrefix, unrepeated
from handler.chunks import ChatCompletionChunk, ChunkChoice, ChunkDelta


def chunk(content: str | None = None, finish: str | None = None, **delta: object) -> ChatCompletionChunk:
    sent = {"content": content} if content is not None else {}
    choice = ChunkChoice(delta=ChunkDelta.model_validate({**sent, **delta}), finish_reason=finish)  # type: ignore[arg-type]
    return ChatCompletionChunk(id="c", created=1, model="m", choices=[choice])


@pytest.mark.parametrize(
    ("text", "rest"),
    [("Arr, matey", ", matey"), ("Arr", ""), ("Ar", ""), ("Ahoy", "Ahoy"), ("", "")],
    ids=["repeated", "the prefix alone", "cut within it", "not repeated", "empty"],
)
def test_a_whole_answer_loses_the_prefix_it_repeats(text: str, rest: str) -> None:
    assert unrepeated(text, "Arr") == rest


@pytest.mark.parametrize(
    ("pieces", "rest"),
    [
        (["A", "rr", ", mat", "ey"], ["", "", ", mat", "ey"]),
        (["Arr, ", "matey"], [", ", "matey"]),
        (["Ar", "ghh"], ["", "Arghh"]),
        (["Yo", " ho"], ["Yo", " ho"]),
    ],
    ids=["across deltas", "in one delta", "turned out otherwise", "not repeated"],
)
def test_a_stream_loses_the_prefix_it_repeats_and_nothing_else(pieces: list[str], rest: list[str]) -> None:
    stripper = RepeatedPrefix("Arr")
    chunks = [chunk(piece) for piece in pieces]
    for each in chunks:
        stripper.strip(each)
    assert [each.choices[0].delta.content for each in chunks] == rest


def test_a_stream_that_ends_within_the_prefix_has_no_text_and_keeps_its_reasoning() -> None:
    stripper = RepeatedPrefix("Arr")
    thought, cut = chunk(reasoning_content="pirates say arr"), chunk("Ar", finish="length")
    for each in (thought, cut):
        stripper.strip(each)
    assert thought.choices[0].delta.reasoning_content == "pirates say arr" and thought.choices[0].delta.content is None
    assert cut.choices[0].delta.content == ""
