"""Schema enforcement: a `json_schema` response format checked against the answer the model gave.

jsonschema is imported on first use: its import is a large part of a cold start, which should not pay for
a feature most requests do not use.
"""

from __future__ import annotations

from functools import lru_cache
from typing import TYPE_CHECKING, Any

import orjson

from handler.errors import InvalidRequestError, SchemaViolationError
from handler.schemas import ChatRequest

if TYPE_CHECKING:
    from jsonschema import Draft202012Validator


@lru_cache(maxsize=256)
def _validator(schema_json: bytes) -> Draft202012Validator:
    from jsonschema import Draft202012Validator
    from jsonschema.exceptions import SchemaError

    schema = orjson.loads(schema_json)
    try:
        Draft202012Validator.check_schema(schema)
    except SchemaError as exc:
        raise InvalidRequestError(
            f"response_format.json_schema.schema is not a valid JSON Schema: {exc.message}"
        ) from None
    return Draft202012Validator(schema)


def schema_of(req: ChatRequest) -> dict[str, Any] | None:
    fmt = req.response_format
    if fmt is None or fmt.type != "json_schema" or fmt.json_schema is None:
        return None
    return fmt.json_schema.schema_


def violation(schema: dict[str, Any], text: str | None) -> str | None:
    """Why `text` does not satisfy `schema`, or None when it does."""
    if text is None:
        return "the answer has no content to validate"
    try:
        document = orjson.loads(text)
    except orjson.JSONDecodeError as exc:
        return f"the answer is not JSON: {exc}"
    validator = _validator(orjson.dumps(schema, option=orjson.OPT_SORT_KEYS))
    error = next(iter(validator.iter_errors(document)), None)
    if error is None:
        return None
    where = "/".join(str(p) for p in error.absolute_path) or "(root)"
    return f"{where}: {error.message}"


def enforce(schema: dict[str, Any], text: str | None) -> None:
    """Raise a retryable `SchemaViolationError` when the answer breaks the schema."""
    problem = violation(schema, text)
    if problem is not None:
        raise SchemaViolationError(f"the answer does not match the response schema: {problem}", retryable=True)
