"""Schema enforcement keeps the validators it built within a bound of bytes, not only of number."""

from __future__ import annotations

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
    resident (review). Now a large schema's validator is built for its request and not kept, and the recent ones
    are kept within `KEPT_BYTES`."""
    monkeypatch.setattr(schema_check, "_built", type(schema_check._built)())
    for n in range(40):
        assert violation(schema(n, 1_000_000), "{}") is not None  # (each schema's own required field missing)
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


def test_a_schema_that_refers_to_itself_without_end_is_the_clients_400_not_a_500() -> None:
    """`{"properties": {"a": {"$ref": "#/properties/a"}}}` resolves, and validating `{"a": 1}` against it recursed
    until Python's limit: a 500 (found with the review's fix)."""
    schema = {"properties": {"a": {"$ref": "#/properties/a"}}}
    assert violation(schema, '{"b": 1}') is None  # (an answer that never reaches the loop passes)
    with pytest.raises(InvalidRequestError, match="refers to itself without end"):
        violation(schema, '{"a": 1}')


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
    ("pattern", "problem"),
    [
        ("^(?=a)", "look-around, including look-ahead and look-behind, is not supported"),
        ("(?<!x)a", "look-around, including look-ahead and look-behind, is not supported"),
        ("(a)\\1", "backreferences are not supported"),
        ("\\w{1000}", "Compiled regex exceeds size limit"),
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


def test_a_pattern_admission_did_not_see_is_the_clients_400_not_a_500() -> None:
    """A schema reached only by a `$ref` into a keyword JSON Schema does not know is not checked by the
    metaschema: its pattern meets the engine as the answer is checked."""
    schema = {"x-mine": {"pattern": "(?=a)"}, "properties": {"a": {"$ref": "#/x-mine"}}}
    with pytest.raises(InvalidRequestError, match="look-around"):
        violation(schema, '{"a": "b"}')
