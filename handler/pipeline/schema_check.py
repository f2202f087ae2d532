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
    from referencing import Registry

    from handler.pipeline.schema_patterns import PatternRefused


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
    from jsonschema.exceptions import SchemaError
    from jsonschema_specifications import REGISTRY

    from handler.pipeline.schema_patterns import PatternRefused, Validator

    schema = orjson.loads(schema_json)
    try:
        Validator.check_schema(schema, format_checker=Validator.FORMAT_CHECKER)
    except SchemaError as exc:
        if isinstance(exc.cause, PatternRefused):
            raise _unmatchable(exc.cause) from None
        raise _refused(f"is not a valid JSON Schema: {exc.message}") from None
    # The metaschemas and nothing else: a remote reference is refused here (`_unresolved`), not fetched from
    # wherever the client's schema points.
    unresolved = _unresolved(schema, REGISTRY)
    if unresolved is not None:
        raise _refused(f"has a reference that does not resolve within it: {unresolved!r}")
    return Validator(schema, registry=REGISTRY)  # type: ignore[no-any-return]


def _unresolved(schema: object, registry: Registry[Any]) -> str | None:
    """The first `$ref` or `$dynamicRef` in `schema` that does not lead to a schema, or None. `check_schema` does
    not look: jsonschema finds one only as it validates an answer, after the provider was paid for it."""
    from referencing.exceptions import Unresolvable
    from referencing.jsonschema import DRAFT202012

    pending = [(schema, registry.resolver_with_root(DRAFT202012.create_resource(schema)))]
    while pending:  # (not recursive: a schema nested deeper than the stack is checked as any other)
        subschema, resolver = pending.pop()
        if not isinstance(subschema, dict):
            continue
        resolver = resolver.in_subresource(DRAFT202012.create_resource(subschema))
        for keyword in ("$ref", "$dynamicRef"):
            ref = subschema.get(keyword)
            if ref is None:
                continue
            try:
                target = resolver.lookup(ref).contents
            except (Unresolvable, ValueError, TypeError):  # (a pointer's step into a string or by a name into a list)
                return str(ref)
            if not isinstance(target, dict | bool):
                return str(ref)
        pending.extend((each, resolver) for each in DRAFT202012.subresources_of(subschema))
    return None


def _refused(problem: str) -> InvalidRequestError:
    """The client's 400 for its schema's `problem`."""
    return InvalidRequestError(f"response_format.json_schema.schema {problem}")


def _unmatchable(refused: PatternRefused) -> InvalidRequestError:
    return _refused(f"has a pattern the gateway's linear-time engine does not take: {refused}")


def check(req: ChatRequest) -> None:
    """Refuse (400) an enforced schema that could not check an answer, before the request is admitted or sent; its
    validator is kept for the answer (`_validator`)."""
    schema = schema_of(req)
    if schema is not None:
        _validator(orjson.dumps(schema, option=orjson.OPT_SORT_KEYS))


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
    from referencing.exceptions import Unresolvable

    from handler.pipeline.schema_patterns import PatternRefused

    validator = _validator(orjson.dumps(schema, option=orjson.OPT_SORT_KEYS))
    try:
        error = next(iter(validator.iter_errors(document)), None)
    except Unresolvable as exc:  # (jsonschema's error wraps one too): one `_unresolved` let through is the client's
        raise _refused(f"has a reference that does not resolve within it: {exc}") from None
    except PatternRefused as exc:  # (in a subschema only a `$ref` reaches, which the metaschema does not check)
        raise _unmatchable(exc) from None
    except RecursionError:  # (`{"properties": {"a": {"$ref": "#/properties/a"}}}`: a reference to itself, a 500)
        raise _refused("refers to itself without end") from None
    if error is None:
        return None
    where = "/".join(str(p) for p in error.absolute_path) or "(root)"
    return f"{where}: {error.message}"


def enforce(schema: dict[str, Any], text: str | None) -> None:
    """Raise a retryable `SchemaViolationError` when the answer breaks the schema."""
    problem = violation(schema, text)
    if problem is not None:
        raise violated(problem)


def violated(problem: str) -> SchemaViolationError:
    """The error of an answer that breaks the schema (`problem`, from `violation`): retryable, where another
    attempt can still answer."""
    return SchemaViolationError(f"the answer does not match the response schema: {problem}", retryable=True)
