"""Schema enforcement: a `json_schema` response format checked against the answer the model gave.

jsonschema is imported on first use: its import is a large part of a cold start, which should not pay for
a feature most requests do not use.
"""

from __future__ import annotations

from collections import OrderedDict
from typing import TYPE_CHECKING, Any

import orjson

from handler.errors import InvalidRequestError, SchemaViolationError
from handler.schemas import ChatRequest

if TYPE_CHECKING:
    from jsonschema import Draft202012Validator


# Validators built, by their schema's JSON, the most recent last: bounded by the schemas' bytes, not only their
# number (256 of a client's 1 MB schemas, each held with what jsonschema builds from it, kept 558 MB resident).
KEPT_BYTES = 4 * 1024 * 1024
KEPT_SCHEMAS = 256
_built: OrderedDict[bytes, Draft202012Validator] = OrderedDict()


def _validator(schema_json: bytes) -> Draft202012Validator:
    """The validator of `schema_json`, built once while it stays among the recent ones (`KEPT_BYTES`)."""
    found = _built.get(schema_json)
    if found is not None:
        _built.move_to_end(schema_json)
        return found
    validator = _build(schema_json)
    if len(schema_json) <= KEPT_BYTES // 16:  # (a larger one is built each time: only its sender pays for it)
        _built[schema_json] = validator
        kept = sum(map(len, _built))
        while kept > KEPT_BYTES or len(_built) > KEPT_SCHEMAS:
            oldest, _ = _built.popitem(last=False)
            kept -= len(oldest)
    return validator


def _build(schema_json: bytes) -> Draft202012Validator:
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
