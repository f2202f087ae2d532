"""Schema enforcement keeps the validators it built within a bound of bytes, not only of number."""

from __future__ import annotations

import orjson
import pytest

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
