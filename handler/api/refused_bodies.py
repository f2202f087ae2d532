"""What a request body the gateway refuses needs, imported when one is refused (or is large enough that it could
hold the event loop if it were): its depth checked, its validation stopping at each list's first bad item, and the
client's 400 naming the first problem. A body that validates needs none of it, and a Lambda cold start imports none.
"""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ValidationError

from handler.errors import InvalidRequestError


def nested_deeper_than(data: Any, limit: int) -> bool:
    """Whether JSON `data` nests deeper than `limit` levels. orjson parses 1024 levels but writes only 254,
    so a deeper body would parse, then fail (a 500) when the adapter serializes it for the upstream. Level by
    level, keeping only the containers: a coding agent's 105 KB body takes 1.0-1.2 ms with every value
    stacked, 0.4 ms so (its JSON parse: 0.6 ms)."""
    level = [data]
    for _ in range(limit):
        below = []
        for value in level:
            items = value.values() if type(value) is dict else value
            below += [item for item in items if type(item) is dict or type(item) is list]
        if not below:
            return False
        level = below
    return True


_fail_fast: dict[type[BaseModel], Any] = {}


def fail_fast_validator(model: type[BaseModel]) -> Any:
    """A validator of `model` with every list of its schema, however deep, `fail_fast`: for a valid body the same
    model as `model.model_validate` gives; for an invalid one, each list's first bad item alone."""
    validator = _fail_fast.get(model)
    if validator is None:
        from pydantic_core import SchemaValidator

        model.model_rebuild()  # (built on its first use: `defer_build`)
        classes: set[type[BaseModel]] = set()
        schema = _lists_fail_fast(model.__pydantic_core_schema__, classes)
        # pydantic-core builds a model's schema as that model's own validator, lists and all, once the model is
        # complete: each is marked incomplete while this one is built.
        complete = {cls: cls.__dict__.get("__pydantic_complete__", False) for cls in classes}
        try:
            for cls in classes:
                cls.__pydantic_complete__ = False
            validator = _fail_fast[model] = SchemaValidator(schema)
        finally:
            for cls, was in complete.items():
                cls.__pydantic_complete__ = was
    return validator


def _lists_fail_fast(schema: Any, classes: set[type[BaseModel]]) -> Any:
    """A copy of the core schema `schema` with `fail_fast` set on each list schema in it, the models it holds added
    to `classes`."""
    if isinstance(schema, list):
        return [_lists_fail_fast(item, classes) for item in schema]
    if not isinstance(schema, dict):
        return schema
    copy = {name: _lists_fail_fast(value, classes) for name, value in schema.items()}
    kind = copy.get("type")
    if kind == "list":
        copy["fail_fast"] = True
    elif kind == "model":
        classes.add(copy["cls"])
    return copy


# The most of a validation's errors read for its 400, which names one: pydantic builds its whole list of them, a
# dict each, and 500,000 of them (a body's dict of wrong values) held the event loop for seconds.
ERRORS_READ = 64


def invalid_from_validation(exc: ValidationError, data: Any = None) -> InvalidRequestError:
    """The client's 400 for the first field with a problem, at its deepest (of a union's members, the one that
    went furthest: a text part without its text is named there, not as content that is not a string)."""
    errors = first_errors(exc)
    field = errors[0]["loc"][:1]
    first = max((e for e in errors if e["loc"][:1] == field), key=lambda e: len(e["loc"]))
    loc = ".".join(str(p) for p in param_path(first["loc"], data) if not str(p).startswith("function-"))
    extra = f" (and {exc.error_count() - 1} more problems)" if exc.error_count() > 1 else ""
    return InvalidRequestError(f"{loc}: {first['msg']}{extra}" if loc else f"{first['msg']}{extra}", param=loc or None)


def first_errors(exc: ValidationError) -> list[dict[str, Any]]:
    """`exc`'s first `ERRORS_READ` errors (`type`, `loc`, `msg`). Past that many, read from pydantic-core's JSON of
    them, written in Rust a tenth as slowly as `errors()` builds its dicts, and only those decoded."""
    if exc.error_count() <= ERRORS_READ:
        return [dict(error) for error in exc.errors(include_url=False, include_context=False, include_input=False)]
    import json

    text = exc.json(include_url=False, include_context=False, include_input=False)
    decoder, at = json.JSONDecoder(), 1  # (past the list's `[`; each error ends before a `,`)
    errors: list[dict[str, Any]] = []
    while len(errors) < ERRORS_READ:
        error, at = decoder.raw_decode(text, at)
        errors.append(error)
        at += 1
    return errors


def param_path(loc: tuple[int | str, ...], data: Any) -> list[int | str]:
    """The path of a validation error within the client's body: pydantic's `loc` less the names it adds for
    the members of a union (`"stop": 5` would be `param: "stop.str"`), found by walking `data` along it. A name is
    the body's where the body has it there, or where it is the last (a missing field)."""
    if data is None:
        return list(loc)
    path: list[int | str] = []
    for position, part in enumerate(loc):
        if isinstance(part, int) and isinstance(data, list) and -len(data) <= part < len(data):
            data = data[part]
        elif isinstance(part, str) and isinstance(data, dict) and (part in data or position == len(loc) - 1):
            data = data.get(part)
        else:
            continue
        path.append(part)
    return path
