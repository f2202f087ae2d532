"""`JsonPrefix`: a streamed tool call's arguments checked fragment by fragment as the start of one JSON object, and
what makes the part it took a whole one (handler/api/json_prefix.py)."""

from __future__ import annotations

import json
import random
import time
from typing import Any

import orjson
import pytest
from pydantic_core import from_json

from handler.api.json_prefix import MAX_DEPTH, JsonPrefix

# (A seeded generator, not hypothesis: thousands of documents a run, the same ones each time.)
KEYS = ["a", "b", "c d", "é", ""]
SCALARS: list[Any] = [0, -1, 1.5, -0.25, 1e300, 1e-7, True, False, None, "x", 'a"b\\c\n\u00e9\u2028\U0001f600', ""]


def document(rng: random.Random, depth: int = 0) -> Any:
    roll = rng.random()
    if depth > 3 or roll < 0.3:
        return rng.choice(SCALARS)
    if roll < 0.65:
        return {rng.choice(KEYS) + str(i): document(rng, depth + 1) for i in range(rng.randint(0, 3))}
    return [document(rng, depth + 1) for _ in range(rng.randint(0, 3))]


def cut(rng: random.Random, text: str, most: int) -> list[str]:
    """`text` in up to `most` + 1 fragments, cut anywhere (inside a string, an escape, a number, a literal)."""
    points = sorted(rng.sample(range(len(text) + 1), min(len(text) + 1, rng.randint(1, most))))
    return [text[a:b] for a, b in zip([0, *points], [*points, len(text)], strict=True)]


def test_every_fragment_of_a_json_object_is_taken_however_it_is_cut() -> None:
    rng = random.Random(1)
    for _ in range(3000):
        text = json.dumps({"k": document(rng)}, ensure_ascii=rng.random() < 0.5, indent=rng.choice([None, 1]))
        arguments = JsonPrefix()
        assert all(arguments.feed(piece) for piece in cut(rng, text, 6)), text
        assert not arguments.broken


@pytest.mark.parametrize(
    "text",
    ["[1]", '"x"', "{01}", '{"a":01}', '{"a":1.}', '{"a":.5}', '{"a":+1}', '{"a":tru}', '{"a" 1}', "{,}",
     '{"a":1,}', '{"a":[1,]}', "{'a': 1}", '{"a":1}}', '{"a":"\x01"}', '{"a":"\\x"}', '{"a":"\\u12g4"}'],
)  # fmt: skip
def test_what_cannot_begin_a_json_object_is_not_taken(text: str) -> None:
    arguments = JsonPrefix()
    assert not all(arguments.feed(c) for c in text)
    assert arguments.broken and not arguments.feed("{}")  # (once broken, nothing more is taken)


def test_what_is_taken_begins_an_object_and_its_closing_makes_it_one_with_the_arguments_as_they_came() -> None:
    """Arguments a model spoilt (a quote, a bracket, a control character put anywhere), cut anywhere: what is taken
    is what the Anthropic SDK's partial parse reads as the start of an object, and with its closing it is a whole
    object, which carries the arguments as they came (`_raw`) wherever its outermost object can take a member."""
    rng = random.Random(2)
    broken = 0
    for _ in range(3000):
        text = list(json.dumps({"k": document(rng)}, ensure_ascii=rng.random() < 0.5))
        for _ in range(rng.randint(1, 3)):
            text.insert(rng.randrange(len(text) + 1), rng.choice("{}[]:,\"'\\ -.e0aZ\n\x01tfn"))
        raw = "".join(text)
        arguments = JsonPrefix()
        taken = "".join(piece for piece in cut(rng, raw, 8) if arguments.feed(piece))
        if not arguments.waits:  # (a partial parse refuses it there: `waits`)
            assert isinstance(from_json(taken, allow_partial=True) if taken.strip() else {}, dict), taken
        if arguments.broken:
            broken += 1
            whole = from_json(taken + arguments.closing(raw))  # (jiter, the Anthropic SDK's parser)
            assert isinstance(whole, dict), whole
            if arguments.stack == ["{"] or not taken.strip():
                assert whole["_raw"] == raw
    assert broken > 2000


def test_a_text_cut_inside_a_characters_escape_says_so() -> None:
    arguments = JsonPrefix()
    for piece, inside in [('{"a": "x\\', True), ("u00", True), ("e9", False), ("\\ud83d", True), ("\\ude00", False)]:
        assert arguments.feed(piece) and arguments.waits == inside, piece
    assert arguments.feed('"}') and not arguments.broken


def test_arguments_not_json_from_their_first_character_close_as_the_whole_answers_raw() -> None:
    arguments = JsonPrefix()
    assert not arguments.feed("{'city': 'Paris'}")
    assert orjson.loads(arguments.closing("{'city': 'Paris'}")) == {"_raw": "{'city': 'Paris'}"}
    arguments = JsonPrefix()
    assert arguments.feed("{") and not arguments.feed("'city': 'Paris'}")
    assert orjson.loads("{" + arguments.closing("{'city': 'Paris'}")) == {"_raw": "{'city': 'Paris'}"}


def fed_in(text: str, step: int) -> float:
    arguments = JsonPrefix()
    started = time.perf_counter()
    for start in range(0, len(text), step):
        assert arguments.feed(text[start : start + step])
    return time.perf_counter() - started


def test_a_long_number_is_read_in_time_linear_in_it() -> None:
    """Each digit matched the whole number read so far against a pattern: 80,000 digits (a small model looping on
    `0.3333...`) held the event loop 2.2 s (review mergerev34)."""
    string_s = min(fed_in('{"a": "' + "3" * 100_000, 100) for _ in range(3))
    number_s = min(fed_in('{"a": 0.' + "3" * 100_000, 100) for _ in range(3))
    assert number_s < max(0.05, 20 * string_s), (number_s, string_s)


def test_nesting_deeper_than_the_sdks_parser_reads_is_not_taken() -> None:
    """jiter's partial mode, which the Anthropic SDK reads the fragments with, stops at a depth of about 200: deeper
    arguments failed the whole stream (review mergerev34)."""
    arguments = JsonPrefix()
    taken = "".join(c for c in '{"a":' + "[" * 250 + "]" * 250 + "}" if arguments.feed(c))
    assert arguments.broken and len(taken) == 5 + MAX_DEPTH - 1
    from_json(taken, allow_partial=True)
    assert from_json(taken + arguments.closing("x"))["_raw"] == "x"


def test_what_follows_the_object_leaves_it_as_it_went() -> None:
    """Two objects run together (`{"city":"Paris"}{"city":"Rome"}`): the first went whole, and stands (the whole
    answer has them as `_raw`, which nothing can add once the object has ended)."""
    arguments = JsonPrefix()
    assert arguments.feed('{"city":"Paris"}') and arguments.feed("  ") and not arguments.waits
    assert not arguments.feed('{"city":"Rome"}') and arguments.closing("x") == ""


@pytest.mark.parametrize(
    ("pieces", "relayed"),
    [
        (['{"a": "x', "\\ud83d", "\\u00e9", '"}'], '{"a": "x'),  # (a high surrogate, then no low one)
        (['{"a": "x', "\\udc", "00", '"}'], '{"a": "x'),  # (a low surrogate alone, cut)
        (['{"a": "x', "\\", "q"], '{"a": "x'),  # (an escape that is none)
    ],
)
def test_a_character_refused_inside_its_escape_is_cut_before_the_closing(pieces: list[str], relayed: str) -> None:
    """A fragment that ends inside a character's escape waits (`waits`); where the one after it is refused, the text
    waiting is cut back to before that character: written back as it was, a lone surrogate's escape failed the SDK's
    stream (review mergerev34b)."""
    arguments, went, held = JsonPrefix(), "", ""
    for piece in pieces:
        if not arguments.feed(piece):
            break
        held += piece
        if not arguments.waits:
            went, held = went + held, ""
    assert went == relayed
    whole = from_json(went + arguments.cut_partial(held) + arguments.closing("".join(pieces)))
    assert whole == {"a": "x", "_raw": "".join(pieces)}


def test_whitespace_before_the_object_waits_for_it() -> None:
    arguments = JsonPrefix()
    assert arguments.feed("\n ") and arguments.waits
    assert arguments.feed("{") and not arguments.waits
