"""Schema enforcement keeps the validators it built within a bound of bytes, not only of number."""

from __future__ import annotations

import re
import time

import orjson
import pytest

from handler.errors import InvalidRequestError
from handler.pipeline import schema_check
from handler.pipeline.schema_check import violation


def schema(n: int, padding: int) -> dict[str, object]:
    return {"type": "object", "required": [f"f{n}"], "description": "x" * padding}


def test_the_validators_kept_stay_within_their_bytes_whatever_the_schemas_clients_send(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """256 validators were kept whatever their schemas' size: a client's 1 MB schemas, one a request, held 558 MB
    resident (review). Now a schema past `MAX_SCHEMA_BYTES` is refused, and the recent ones are kept within
    `KEPT_BYTES`."""
    monkeypatch.setattr(schema_check, "_built", type(schema_check._built)())
    with pytest.raises(InvalidRequestError, match="more than the 65536 the gateway checks answers against"):
        violation(schema(0, 1_000_000), "{}")
    assert not schema_check._built
    for n in range(300):
        assert violation(schema(n, 30_000), orjson.dumps({f"f{n}": 1}).decode()) is None
    kept = sum(map(len, schema_check._built))
    assert kept <= schema_check.KEPT_BYTES and len(schema_check._built) <= schema_check.KEPT_SCHEMAS
    # The recent ones are kept: the same schema again is not built again.
    last = orjson.dumps(schema(299, 30_000), option=orjson.OPT_SORT_KEYS)
    assert last in schema_check._built
    built = schema_check._built[last]
    violation(schema(299, 30_000), "{}")
    assert schema_check._built[last] is built


@pytest.mark.parametrize(
    "schema",
    [
        {"type": "object", "properties": {"a": {"$ref": "#/$defs/nope"}}},
        {"properties": {"a": {"$ref": "#nowhere"}}},
        {"properties": {"a": {"$dynamicRef": "#meta"}}},
        {"$id": "https://example.com/root.json", "properties": {"a": {"$ref": "z"}}},
        {"properties": {"a": {"$ref": "https://example.com/s.json"}}},
        {"type": "object", "properties": {"a": {"$ref": "#/type"}}},
        {"type": "object", "properties": {"a": {"$ref": "#/type/x"}}},
        {"allOf": [{}], "properties": {"a": {"$ref": "#/allOf/x"}}},
        {"$defs": {"deep": {"items": {"items": {"$ref": "#/$defs/gone"}}}}},
        {"$ref": "#/x", "x": {"properties": {"a": {"$ref": "#/gone"}}}},  # (in a subschema only a `$ref` reaches)
    ],
)
def test_a_schema_whose_reference_does_not_resolve_is_the_clients_400(schema: dict[str, object]) -> None:
    """jsonschema's `check_schema` does not follow references: one that led nowhere (or to a remote schema, which
    is never fetched) failed only as the answer was validated, a 500 after the provider was paid (review)."""
    with pytest.raises(InvalidRequestError, match="does not resolve"):
        schema_check._build(orjson.dumps(schema))


NODE = {"type": "object", "properties": {"next": {"$ref": "#/$defs/node"}}}


@pytest.mark.parametrize(
    ("schema", "fits", "misses"),
    [
        ({"$defs": {"node": NODE}, "$ref": "#/$defs/node"}, {"next": {"next": {}}}, {"next": {"next": 1}}),
        (
            {
                "$id": "https://example.com/root.json",
                "$defs": {"z": {"$id": "z.json", "type": "string"}},
                "properties": {"a": {"$ref": "z.json"}},
            },
            {"a": "x"},
            {"a": 1},
        ),
        (
            {"$defs": {"n": {"$anchor": "name", "type": "string"}}, "properties": {"a": {"$ref": "#name"}}},
            {"a": "x"},
            {"a": 1},
        ),
        (
            {"properties": {"a": {"$ref": "https://json-schema.org/draft/2020-12/schema"}}},
            {"a": {}},
            {"a": {"type": 1}},
        ),
    ],
)
def test_a_schema_whose_references_resolve_within_it_checks_answers(
    schema: dict[str, object], fits: object, misses: object
) -> None:
    """Recursion, anchors and the metaschemas (which jsonschema holds) resolve without anything fetched."""
    assert violation(schema, orjson.dumps(fits).decode()) is None
    assert violation(schema, orjson.dumps(misses).decode()) is not None


CYCLE = {"$defs": {"a": {"$ref": "#/$defs/b"}, "b": {"$ref": "#/$defs/a"}}, "$ref": "#/$defs/a"}


@pytest.mark.parametrize(
    "schema",
    [
        {"properties": {"a": {"$ref": "#/properties/a"}}},
        {"$ref": "#"},
        CYCLE,
        {"anyOf": [{"type": "string"}, {"$ref": "#"}]},
        {"not": {"$ref": "#"}},
        {"if": {"$ref": "#"}},
        {"type": "object", "dependentSchemas": {"a": {"oneOf": [{"$ref": "#"}]}}},
        {"$defs": {"a": {"allOf": [{"$ref": "#/$defs/b"}]}, "b": {"else": {"$ref": "#/$defs/a"}}}}
        | {"properties": {"x": {"items": {"$ref": "#/$defs/a"}}}},
    ],
)
def test_a_schema_that_refers_to_itself_without_end_is_the_clients_400_before_anything_is_sent(
    schema: dict[str, object],
) -> None:
    """A `$ref` (or `allOf`, `anyOf`, `oneOf`, `not`, `if`) that leads back to itself with no step into the answer
    recurses until Python's limit with any answer that reaches it: it passed admission, and was found only as the
    answer was checked, a 400 once the provider had been paid (review: `$defs` a and b referring to each other)."""
    with pytest.raises(InvalidRequestError, match="refers to itself without end"):
        schema_check._build(orjson.dumps(schema))


def test_a_schema_that_recurses_through_the_answer_is_taken() -> None:
    """Recursion that steps into the answer on the way round ends with the answer; a loop in a definition nothing
    refers to is never applied."""
    node = {"anyOf": [{"type": "null"}, {"type": "array", "items": {"$ref": "#/$defs/node"}}]}
    tree = {"$defs": {"node": node}, "$ref": "#/$defs/node"}
    assert violation(tree, "[[null, []], null]") is None
    assert violation(tree, "[[1]]") is not None
    assert violation({"$defs": {"loop": {"$ref": "#/$defs/loop"}}, "type": "object"}, "{}") is None


def chained(links: int, then: dict[str, object] | None = None) -> dict[str, object]:
    """`$defs` each applying the next to the same value (`allOf` of a `$ref`: two subschemas a link), the last
    `then`."""
    defs: dict[str, object] = {f"d{i}": {"allOf": [{"$ref": f"#/$defs/d{i + 1}"}]} for i in range(links)}
    defs[f"d{links}"] = then or {"type": "array"}
    return {"$defs": defs, "$ref": "#/$defs/d0"}


def test_a_schema_that_applies_too_many_subschemas_through_one_another_is_the_clients_400() -> None:
    """Definitions that each apply the next to the same value, 600 of them (26 KB, within every other bound): the
    check of any answer recursed past Python's limit, found once the provider had been paid. The chain is bounded
    (`MAX_IN_PLACE`), and one within it checks answers."""
    with pytest.raises(InvalidRequestError, match="applies more than 64 subschemas one through another"):
        schema_check._build(orjson.dumps(chained(600)))
    assert violation(chained(31), "[]") is None
    assert violation(chained(31), "{}") == "(root): {} is not of type 'array'"


@pytest.mark.parametrize("keyword", ["items", "not", "additionalProperties"])
def test_a_schema_nested_deeper_than_its_bound_is_the_clients_400_not_a_500(keyword: str) -> None:
    """120 nested `items` (1.3 KB, within the request body's 128 levels) recursed past Python's limit in the
    metaschema's check, a 500 at admission (review). A schema's nesting is bounded (`MAX_SCHEMA_DEPTH`) before it
    is checked."""
    deepest: dict[str, object] = {"type": "integer"}
    for _ in range(120):
        deepest = {keyword: deepest}
    with pytest.raises(InvalidRequestError, match="nests deeper than 64 levels"):
        schema_check._build(orjson.dumps(deepest))
    within: dict[str, object] = {"type": "integer"}
    for _ in range(63):  # (64 levels, the innermost object among them)
        within = {keyword: within}
    schema_check._build(orjson.dumps(within))


TREE = {
    "$defs": {"node": {"type": "object", "properties": {"c": {"type": "array", "items": {"$ref": "#/$defs/node"}}}}},
    "$ref": "#/$defs/node",
}


def tree(levels: int) -> str:
    """An answer `levels` nodes deep (two JSON levels a node: an object, its array), valid for `TREE`."""
    return '{"c": [' * levels + "{}" + "]}" * levels


def test_an_answer_too_deep_to_check_is_a_violation_another_answer_can_avoid() -> None:
    """A valid answer 200 nodes deep to a recursive schema took jsonschema past Python's limit: a 400 saying the
    schema "refers to itself without end", no failover (review). An answer nested past `MAX_ANSWER_DEPTH` is a
    violation, retryable; so is one whose check went past the limit sooner, its levels each applying a chain of
    subschemas."""
    assert violation(TREE, tree(31)) is None  # (63 levels)
    assert violation(TREE, tree(32)) == "the answer nests deeper than 64 levels, more than the gateway checks"
    assert violation(TREE, tree(200)) == "the answer nests deeper than 64 levels, more than the gateway checks"
    looping = chained(30, {"items": {"$ref": "#/$defs/d0"}})
    assert violation(looping, "[[[]]]") is None
    assert violation(looping, "[" * 20 + "]" * 20) == "the answer nests too deep to be checked against the schema"


@pytest.mark.parametrize(
    ("step", "answer", "fits"),
    [
        (0.01, "19.99", True),
        (0.01, "0.07", True),
        (0.01, "1e300", True),
        (0.1, "0.3", True),
        (0.01, "19.995", False),
        (3, "9.0", True),
        (3, "10", False),
        (0.5, "2", True),
        (1e-300, "1e300", True),
    ],
)
def test_multiple_of_is_checked_on_the_numbers_as_written(step: float, answer: str, fits: bool) -> None:
    """`multipleOf: 0.01` (a price in cents) refused 19.99: jsonschema divided the floats, 1998.9999999999998. Each
    number is taken as its decimal says, exactly."""
    problem = violation({"type": "number", "multipleOf": step}, answer)
    assert (problem is None) is fits, problem


CATASTROPHIC = "^(a+)+$"  # (Python's `re` backtracks through 2**n ways of splitting n `a`s before it fails)
STRAY = "a" * 30 + "!"


@pytest.mark.parametrize(
    ("schema", "answer"),
    [
        ({"properties": {"a": {"type": "string", "pattern": CATASTROPHIC}}}, {"a": STRAY}),
        ({"patternProperties": {CATASTROPHIC: {"type": "integer"}}}, {STRAY: "x", "aaaa": "x"}),
        ({"patternProperties": {CATASTROPHIC: {}}, "additionalProperties": False}, {STRAY: 1}),
        ({"patternProperties": {CATASTROPHIC: {}}, "unevaluatedProperties": False}, {STRAY: 1}),
        ({"propertyNames": {"pattern": CATASTROPHIC}}, {STRAY: 1}),
        (
            {"$defs": {"d": {"$schema": "https://json-schema.org/draft/2020-12/schema", "pattern": CATASTROPHIC}}}
            | {"properties": {"a": {"$ref": "#/$defs/d"}}},
            {"a": STRAY},
        ),
        (
            {"$id": "https://example.com/s", "$dynamicAnchor": "meta", "pattern": CATASTROPHIC}
            | {"properties": {"a": {"$ref": "https://json-schema.org/draft/2020-12/schema"}}},
            {"a": {"not": STRAY}},  # (the metaschema's `$dynamicRef: "#meta"` comes back to this root)
        ),
    ],
)
def test_a_clients_pattern_is_matched_in_linear_time_never_by_pythons_re(
    monkeypatch: pytest.MonkeyPatch, schema: dict[str, object], answer: object
) -> None:
    """`"pattern": "^(a+)+$"` against 26 `a`s and a `!` took 8 s of the event loop's CPU in Python's `re`, and
    every other request of the process waited (review). A client's patterns, wherever jsonschema matches one, are
    now matched by Rust's `regex` crate, whose time is linear in the text: `re` is not called for them."""
    import jsonschema._keywords
    import jsonschema._utils

    for module in (jsonschema._keywords, jsonschema._utils):
        monkeypatch.setattr(module, "re", PythonsReForTheMetaschemaOnly())
    assert violation(schema, orjson.dumps(answer).decode()) is not None
    assert violation(schema, '"aaaa"' if "pattern" in schema else '{"aaaa": 1}') is None


class PythonsReForTheMetaschemaOnly:
    """Python's `re` as jsonschema's keywords call it, for the metaschema's own patterns (`$anchor`'s, ...) as a
    schema is checked; asked to search with the client's pattern, it fails the test rather than take minutes."""

    def search(self, pattern: str, text: str) -> object:
        assert CATASTROPHIC not in pattern, f"Python's re searched {text!r} for {pattern!r}"
        import re

        return re.search(pattern, text)


def test_the_catastrophic_pattern_is_checked_at_once() -> None:
    schema = {"type": "object", "properties": {"a": {"type": "string", "pattern": CATASTROPHIC}}}
    started = time.monotonic()
    assert violation(schema, orjson.dumps({"a": "a" * 40 + "!"}).decode()) == (
        f"a: {'a' * 40 + '!'!r} does not match {CATASTROPHIC!r}"
    )
    assert violation(schema, orjson.dumps({"a": "a" * 40}).decode()) is None
    assert time.monotonic() - started < 1  # (`re` took 8 s for 26 `a`s, twice as long for each `a` more)


def test_a_unicode_property_class_is_a_pattern() -> None:
    """`\\p{L}` (a letter, in ECMA-262's `u` mode, which JSON Schema's patterns follow) was refused as "not a
    'regex'": Python's `re` has no property classes (review)."""
    schema = {"type": "object", "properties": {"name": {"type": "string", "pattern": "^\\p{L}+$"}}}
    schema_check._build(orjson.dumps(schema))
    assert violation(schema, '{"name": "Zoë"}') is None
    assert violation(schema, '{"name": "a1"}') == "name: 'a1' does not match '^\\\\p{L}+$'"


@pytest.mark.parametrize(
    ("pattern", "text", "fits"),
    [
        (r"^\d{5}$", "12345", True),
        (r"^\d{5}$", "\u0661\u0662\u0663\u0664\u0665", False),  # Arabic-Indic digits: Rust's \d took them
        (r"^\w{1,64}$", "user_name_09", True),
        (r"^\w+$", "Zoë", False),
        (r"^[\w-]+$", "a-b_c", True),
        (r"^[\W]+$", "é!", True),
        (r"^[\D]+$", "ab", True),
        (r"\bcat\b", "a cat sat", True),
        (r"\bcat\b", "concatenate", False),
        (r"[\b]", "a\bb", True),  # (a backspace, in a class)
        (r"^\\w$", "\\w", True),  # (an escaped backslash, then a `w`)
        (r"^\p{L}+$", "Zoë", True),
        ("^[a&&b]$", "a", True),  # (Rust's intersection of `a` and `b`, empty; ECMA-262's `a`, `&`, `b`)
        ("^[a&&b]$", "&", True),
        ("^[a-z--x]$", "x", True),  # (Rust's a-z less `x`; ECMA-262's a-z and the range from `-` to `x`)
        ("^[a-z--x]$", "Q", True),
        ("^[a~~b]+$", "~a", True),
        ("^[[]$", "[", True),  # (Rust's nested class, unclosed; ECMA-262's `[`)
        ("^[]$", "a", False),  # (ECMA-262's class of nothing)
        ("^[^]$", "\n", True),  # (and of anything)
        ("^[a-\\d]+$", "a-1", True),  # (a range to a class: its ends and a `-`)
        ("^\\s$", "\ufeff", True),  # (ECMA-262's white space has U+FEFF, Rust's U+0085)
        ("^\\s$", "\x85", False),
        ("^[^\\S]$", "\u3000", True),
        ("^.$", "\u2028", False),  # (ECMA-262's `.` stops at every line terminator, Rust's only at `\n`)
        ("^.$", "\r", False),
        ("^(?s:.)$", "\u2028", True),
        ("^\\cJ\\0$", "\n\x00", True),
    ],
)
def test_a_pattern_reads_as_ecma_262_reads_it(pattern: str, text: str, fits: bool) -> None:
    """JSON Schema's patterns are ECMA-262's, whose `\\w`, `\\d` and `\\b` are ASCII; Rust's engine read them as
    Unicode: `^\\d{5}$` took five Arabic-Indic digits, and `\\w{33}` was refused as too costly to compile (a Unicode
    `\\w` is a 64 KB automaton a copy), so `^\\w{1,64}$`, a user name's usual pattern, was the client's 400. Rust's
    set operations in a class (`&&`, `--`, `~~`), its nested classes, `\\s` and `.` were Rust's too (review)."""
    schema = {"type": "object", "properties": {"v": {"type": "string", "pattern": pattern}}}
    schema_check._build(orjson.dumps(schema))
    assert (violation(schema, orjson.dumps({"v": text}).decode()) is None) is fits


@pytest.mark.parametrize(
    ("pattern", "problem"),
    [
        ("^(?=a)", "look-around, including look-ahead and look-behind, is not supported"),
        ("(?<!x)a", "look-around, including look-ahead and look-behind, is not supported"),
        ("(a)\\1", "backreferences are not supported"),
        ("(?x)\\p{L} {160}", "the flag x (spaces and comments ignored) is not ECMA-262's"),
    ],
)
@pytest.mark.parametrize("where", ["pattern", "patternProperties"])
def test_a_pattern_the_linear_engine_does_not_take_is_the_clients_400(pattern: str, problem: str, where: str) -> None:
    """Look-around and back-references (ECMA-262 has them) would need a backtracking engine: a schema with one is
    refused before anything is sent, saying why, rather than matched by `re` on the event loop."""
    schema = {"pattern": pattern} if where == "pattern" else {"patternProperties": {pattern: {}}}
    with pytest.raises(InvalidRequestError, match="linear-time engine does not take") as refused:
        schema_check._build(orjson.dumps(schema))
    assert f"{pattern!r}: {problem}" in str(refused.value)


DRAFT_07 = "http://json-schema.org/draft-07/schema#"


@pytest.mark.parametrize(
    ("subschema", "problem"),
    [
        ({"type": "string", "pattern": "^(?=a)"}, "linear-time engine does not take: '^(?=a)': look-around"),
        ({"patternProperties": {"(?<!x)a": {}}}, "linear-time engine does not take: '(?<!x)a': look-around"),
        ({"type": "string", "pattern": ["a"]}, "is not a valid JSON Schema: ['a'] is not of type 'string'"),
        ({"type": "string", "pattern": {"a": 1}}, "is not a valid JSON Schema: {'a': 1} is not of type 'string'"),
        ({"patternProperties": ["a"], "additionalProperties": False}, "['a'] is not of type 'object'"),
        ({"$schema": DRAFT_07, "items": [{"type": "integer"}]}, "[{'type': 'integer'}] is not of type 'object'"),
        ({"properties": {"b": {"$ref": "#/y"}}}, "look-around"),
    ],
)
def test_a_subschema_only_a_reference_reaches_is_checked_before_anything_is_sent(
    subschema: dict[str, object], problem: str
) -> None:
    """A subschema under a keyword JSON Schema does not know, reached by a `$ref`, is not checked by the
    metaschema: a look-around in it was refused only as the answer was checked, after the provider billed it, and a
    `pattern: ["a"]`, a list of `patternProperties` or a draft-07 `items: [...]` in it were a 500 then (review).
    Each is now the client's 400 at admission."""
    schema = {"$ref": "#/x", "x": subschema, "y": {"pattern": "(?=a)"}}
    with pytest.raises(InvalidRequestError, match=re.escape(problem)):
        schema_check._build(orjson.dumps(schema))


def test_a_schema_jsonschema_cannot_apply_to_the_answer_is_the_clients_400_not_a_500() -> None:
    """Whatever admission lets through that jsonschema then fails on (here, a validator built without it) is the
    client's schema's problem, a 400 naming it, never a 500."""
    from handler.pipeline.schema_patterns import Validator

    schema = {"$ref": "#/x", "x": {"items": [{"type": "integer"}]}}
    schema_check._built[orjson.dumps(schema, option=orjson.OPT_SORT_KEYS)] = Validator(schema)
    with pytest.raises(InvalidRequestError, match="cannot check an answer: AttributeError"):
        violation(schema, '["x"]')


def fan_out(levels: int) -> dict[str, object]:
    """Each `$def` refers twice to the next: 2^levels subschemas to check an answer against, in 100 bytes a level."""
    defs: dict[str, object] = {
        f"a{i}": {"allOf": [{"$ref": f"#/$defs/a{i + 1}"}, {"$ref": f"#/$defs/a{i + 1}"}]} for i in range(levels)
    }
    defs[f"a{levels}"] = {"type": "object"}
    return {"$defs": defs, "$ref": "#/$defs/a0"}


@pytest.mark.parametrize("levels", [16, 60])
def test_a_schema_whose_references_fan_out_is_the_clients_400_before_anything_is_sent(levels: int) -> None:
    """A 1 KB schema of 16 such levels took 1.7 s of the event loop to check the answer `{}` against (every other
    request of the process waiting), 4x more for each 2 levels more: some 1.5 KB would have been hours (review). Its
    size with its references expanded is counted, in time linear in the schema, and refused past `MAX_EXPANDED`."""
    started = time.perf_counter()
    with pytest.raises(InvalidRequestError, match="expands through its references to more than 20000 subschemas"):
        schema_check._build(orjson.dumps(fan_out(levels)))
    assert time.perf_counter() - started < 0.5  # (counted, not walked: 60 levels is 2^60 subschemas)


def test_a_schema_that_uses_its_definitions_many_times_is_taken() -> None:
    """References are counted where they lead: a definition used by many properties, and recursion (which the
    answer's depth bounds), are taken."""
    address = {"type": "object", "properties": {k: {"type": "string"} for k in ("street", "city", "zip")}}
    schema = {
        "$defs": {"address": address, "node": NODE},
        "properties": {f"a{i}": {"$ref": "#/$defs/address"} for i in range(200)} | {"list": {"$ref": "#/$defs/node"}},
    }
    assert violation(fan_out(8), "{}") is None
    assert violation(schema, '{"a1": {"city": "x"}, "list": {"next": {"next": {}}}}') is None
    assert violation(schema, '{"a1": {"city": 1}}') == "a1/city: 1 is not of type 'string'"


def patterned(count: int, pattern: str = r"\p{L}{160}") -> dict[str, object]:
    return {
        "type": "object",
        "properties": {f"p{i}": {"type": "string", "pattern": f"{pattern}{i}"} for i in range(count)},
    }


@pytest.mark.parametrize(
    ("schema", "problem"),
    [
        (patterned(40), "patterns too costly to compile together"),
        (patterned(4), "patterns too costly to compile together"),
        ({"$defs": {"x": {"patternProperties": {r"\p{L}{100}" + str(i): {} for i in range(6)}}}}, "too costly"),
        (patterned(65, "a"), "has 65 distinct patterns, more than the 64"),
        (patterned(1, r"\p{L}{33}"), r"has a pattern too large once compiled: '\\\\p\{L\}\{33\}0'"),
        ({"$ref": "#/x", "x": {"pattern": r"\p{L}{300}"}}, "has a pattern too large once compiled"),
        (patterned(4, r"\p{L}{ 160 }"), "patterns too costly to compile together"),
        (patterned(1, r"\p{L}{1, 33}"), "has a pattern too large once compiled"),
        (patterned(1, r"[[]\p{L}{300}"), "has a pattern too large once compiled"),  # (a class of `[`, then `\p{L}`s)
    ],
)
def test_a_schema_whose_patterns_cost_too_much_to_compile_is_refused_before_any_is_compiled(
    schema: dict[str, object], problem: str
) -> None:
    """Rust's engine takes 20-40 ms to compile `\\p{L}{160}` (10 bytes: a 9 MB automaton), and only 16 compiled
    patterns are kept: a 2 KB schema of 40 distinct ones held the event loop 1.6-5 s, and the check runs before the
    budget's (review). The patterns' number and their compiling's estimated cost are bounded, before any is
    compiled."""
    from handler.pipeline.schema_patterns import _compiled

    compiled = _compiled.cache_info().misses
    with pytest.raises(InvalidRequestError, match=problem):
        schema_check._build(orjson.dumps(schema))
    assert _compiled.cache_info().misses == compiled


def test_patterns_within_the_bound_are_compiled() -> None:
    schema = patterned(2, r"\p{L}{31}") | {"patternProperties": {f"^x{i}_[a-z0-9]{{1,64}}$": {} for i in range(60)}}
    assert violation(schema, orjson.dumps({"p0": "a" * 31 + "0", "x1_abc": 1}).decode()) is None
    assert violation(schema, '{"p1": "short1"}') is not None


@pytest.mark.parametrize(
    ("pattern", "units"),
    [
        (r"\p{L}{160}", 64 * 160),
        (r"(\p{L}{10}){16}", 64 * 160),
        (r"\w{160}", 160),
        (r"[\p{L}\p{N}]{100}", 128 * 100),
        (r"^\d{4}-\d{2}-\d{2}$", 8 + 4),
        (r"^[a-z0-9._%+-]+@[a-z0-9.-]+\.[a-z]{2,}$", 9),
        (r"[[:alpha:]\]]{10}x{1,1000}", 10 + 1000),
        (r"\pL{2}\x{263a}{3}", 128 + 3),
        (r"\p{L}{ 160 }", 64 * 160),  # (Rust's parser takes spaces in a counted repetition)
        (r"\p{L}{160 }", 64 * 160),
        (r"\p{L}{1, 160}", 64 * 160),
        (r"\p{L}{ 10 }{ 16 }", 64 * 160),
        (r"[:a]\p{L}{100}", 1 + 64 * 100),  # (`[:a]` is `:` and `a`, not a class named `a`)
        (r".{100}[^a]{100}", 2 * 100 + 2 * 100),
    ],
)
def test_a_patterns_compiling_is_estimated_from_its_classes_and_counted_repetitions(pattern: str, units: int) -> None:
    from handler.pipeline.schema_patterns import compile_units

    assert compile_units(pattern) == units
