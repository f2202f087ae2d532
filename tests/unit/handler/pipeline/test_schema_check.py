"""Schema enforcement keeps the validators it built within a bound of bytes, not only of number."""

from __future__ import annotations

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
