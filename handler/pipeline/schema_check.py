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
    from collections.abc import Iterator, Sequence

    from jsonschema import Draft202012Validator
    from referencing import Registry

    from handler.pipeline.schema_patterns import PatternRefused


# Validators built, by their schema's JSON, the most recent last: bounded by the schemas' bytes, not only their
# number (256 of a client's 1 MB schemas, each held with what jsonschema builds from it, kept 558 MB resident).
KEPT_BYTES = 4 * 1024 * 1024
KEPT_SCHEMAS = 256
_built: OrderedDict[bytes, Draft202012Validator] = OrderedDict()

# What one schema may ask of the event loop, which every other request of the process waits on (checked before
# anything is reserved or sent, `check`). Its size with its references expanded: a 1 KB schema whose `$defs`
# each referred twice to the next (`allOf`) made 2^16 subschemas to check an answer against, 1.7 s of the loop, and
# some 1.5 KB would have been hours. Its patterns, each compiled by Rust's engine (`compile_units`): 40 distinct
# `\p{L}{160}`s (Unicode) (2 KB) would be 1.6-5 s. And its bytes, which the metaschema's check walks through.
MAX_SCHEMA_BYTES = 64 * 1024  # (the metaschema's check takes some 7 µs a byte: 0.45 s)
MAX_EXPANDED = 20_000
MAX_PATTERNS = 64
MAX_PATTERN_UNITS = 32_768  # (about 150 ms: three `\p{L}{160}`s)
# And what one pattern holds once compiled, some 1.25 KB a unit, which outlives the request: pydantic-core keeps the
# 50 it compiled last (schema_patterns), up to 130 MB of patterns this size.
MAX_UNITS_PER_PATTERN = 2048  # (`\p{L}{1,32}`, `\w{2048}`, `[a-z]{2048}`)
# How deep jsonschema recurses, which Python bounds (1,000 frames, the request's own among them): the metaschema's
# check takes some 8 frames for each level a schema's JSON nests (122 levels of `items`, within the body's bound of
# 128, would be a 500), and an answer's check some 4 for each level the answer nests, more where its subschemas apply
# others to the same value (`$ref`, `allOf`, ...), of which a chain is bounded too.
MAX_SCHEMA_DEPTH = 64
MAX_IN_PLACE = 64
MAX_ANSWER_DEPTH = 64


def _validator(schema_json: bytes) -> Draft202012Validator:
    """The validator of `schema_json`, built once while it stays among the recent ones (`KEPT_BYTES`)."""
    found = _built.get(schema_json)
    if found is not None:
        _built.move_to_end(schema_json)
        return found
    validator = _build(schema_json)
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

    if len(schema_json) > MAX_SCHEMA_BYTES:
        raise _refused(
            f"is {len(schema_json)} bytes, more than the {MAX_SCHEMA_BYTES} the gateway checks answers against"
        )
    schema = orjson.loads(schema_json)
    if _nests_deeper_than(schema, MAX_SCHEMA_DEPTH):
        raise _refused(f"nests deeper than {MAX_SCHEMA_DEPTH} levels, more than the gateway checks answers against")
    _refuse_costly_patterns(schema)
    # The metaschemas and nothing else: a remote reference is refused here (`_referred`), not fetched from
    # wherever the client's schema points.
    try:
        Validator.check_schema(schema, format_checker=Validator.FORMAT_CHECKER)
        for subschema in _referred(schema, REGISTRY):
            Validator.check_schema(subschema, format_checker=Validator.FORMAT_CHECKER)
    except SchemaError as exc:
        if isinstance(exc.cause, PatternRefused):
            raise _unmatchable(exc.cause) from None
        raise _refused(f"is not a valid JSON Schema: {exc.message}") from None
    if _expanded(schema, REGISTRY) > MAX_EXPANDED:
        raise _refused(
            f"expands through its references to more than {MAX_EXPANDED} subschemas for an answer to be checked against"
        )
    chain = _in_place_chain(schema, REGISTRY)
    if chain is None:
        raise _refused(
            "refers to itself without end (a `$ref`, `allOf`, `anyOf`, `oneOf`, `not` or `if` leads back to itself "
            "with no step into the answer between)"
        )
    if chain > MAX_IN_PLACE:
        raise _refused(
            f"applies more than {MAX_IN_PLACE} subschemas one through another to the same value (by `$ref`, `allOf`, "
            "`anyOf`, `oneOf`, `not` or `if`)"
        )
    return Validator(schema, registry=REGISTRY)  # type: ignore[no-any-return]


def _referred(schema: object, registry: Registry[Any]) -> Iterator[object]:
    """The subschemas a `$ref` or `$dynamicRef` leads to outside every place the metaschema checks (under a keyword
    JSON Schema does not know: `{"$ref": "#/x", "x": {...}}`), each with what is below it, for the caller to check
    as schemas of their own, each before the walk goes into it. The answer's check reaches them: unchecked, a pattern
    in one would be refused only after the provider is paid, and a `pattern: ["a"]` or a draft-07 `items: [...]` in
    one would be a crash. A reference that does not lead to a schema is refused: jsonschema finds one only as it
    validates an answer."""
    from referencing.exceptions import Unresolvable
    from referencing.jsonschema import DRAFT202012

    own = {id(each) for each in _objects(schema)}  # (a reference into a metaschema is the registry's, not checked)
    seen: set[int] = set()
    nested = [(schema, registry.resolver_with_root(DRAFT202012.create_resource(schema)))]
    referred: list[tuple[object, Any]] = []
    while nested or referred:  # (all the metaschema checks first, so that a reference into it adds nothing)
        by_reference = not nested
        subschema, resolver = nested.pop() if nested else referred.pop()
        if not isinstance(subschema, dict) or id(subschema) in seen:
            continue
        if by_reference:
            yield subschema
        seen.add(id(subschema))
        resolver = resolver.in_subresource(DRAFT202012.create_resource(subschema))
        nested.extend((each, resolver) for each in DRAFT202012.subresources_of(subschema))
        for keyword in ("$ref", "$dynamicRef"):
            ref = subschema.get(keyword)
            if ref is None:
                continue
            try:
                found = resolver.lookup(ref)
            except (Unresolvable, ValueError, TypeError):  # (a pointer's step into a string or by a name into a list)
                raise _refused(f"has a reference that does not resolve within it: {str(ref)!r}") from None
            if not isinstance(found.contents, dict | bool):
                raise _refused(f"has a reference that does not resolve within it: {str(ref)!r}")
            if id(found.contents) in own:
                referred.append((found.contents, found.resolver))


# The keywords whose subschemas apply to the value their own schema applies to (the others step into it: a
# property's value, an item), which jsonschema checks by calling itself again, as `_evaluated_keys` does.
IN_PLACE = ("allOf", "anyOf", "oneOf", "not", "if", "then", "else", "dependentSchemas")


def _in_place_chain(schema: object, registry: Registry[Any]) -> int | None:
    """The most subschemas `schema` applies one through another to the same value of an answer (by `$ref`,
    `$dynamicRef` and `IN_PLACE`), each a call of jsonschema's into itself; None where a chain goes round without
    end (`{"$ref": "#"}`, `$defs` a and b referring to each other, `{"anyOf": [{"$ref": "#"}]}`), which would
    recurse until Python's limit with any answer that reaches it: found only as the answer is checked, once the
    provider has been paid. Every subschema an answer's check can reach (a definition where it is referred to) is
    looked at once, and each chain from it followed depth first, without recursion."""
    from referencing.jsonschema import DRAFT202012

    chains: dict[int, int] = {}  # the longest chain from each subschema looked at (0: on the way, being followed)
    root = registry.resolver_with_root(DRAFT202012.create_resource(schema))
    reached: list[tuple[object, Any]] = [(schema, root)]
    seen: set[int] = set()
    while reached:  # (every subschema reached, by whatever keyword: each starts a chain)
        subschema, resolver = reached.pop()
        if not isinstance(subschema, dict) or id(subschema) in seen:
            continue
        seen.add(id(subschema))
        if _chain_from(subschema, resolver, chains) is None:
            return None
        inner = resolver.in_subresource(DRAFT202012.create_resource(subschema))
        defined = {id(each) for key in ("$defs", "definitions") for each in _values(subschema.get(key))}
        reached.extend((each, inner) for each in DRAFT202012.subresources_of(subschema) if id(each) not in defined)
        reached.extend(_referred_by(subschema, inner))
    return max(chains.values(), default=0)


def _chain_from(start: dict[str, Any], resolver: Any, chains: dict[int, int]) -> int | None:
    """The longest chain of subschemas applied to one value from `start` (kept in `chains`, for every subschema on
    it), or None where one leads back to a subschema on the way."""
    from referencing.jsonschema import DRAFT202012

    if id(start) in chains:
        return chains[id(start)]
    path: list[tuple[dict[str, Any], list[tuple[object, Any]], int]] = []
    pending: tuple[dict[str, Any], Any] | None = (start, resolver)
    while pending is not None or path:
        if pending is not None:
            subschema, where = pending
            pending = None
            inner = where.in_subresource(DRAFT202012.create_resource(subschema))
            leads = [(each, inner) for keyword in IN_PLACE for each in _applied(subschema.get(keyword), keyword)]
            path.append((subschema, leads + _referred_by(subschema, inner), 0))
            chains[id(subschema)] = 0
            continue
        subschema, leads, longest = path[-1]
        while leads:
            each, where = leads.pop()
            if not isinstance(each, dict):
                continue
            if chains.get(id(each)) == 0:  # (on the way: round without end)
                return None
            if id(each) in chains:
                longest = max(longest, chains[id(each)])
            else:
                pending = (each, where)
                break
        path[-1] = (subschema, leads, longest)
        if pending is None:  # (every lead followed: the chain from it is one longer than the longest from them)
            path.pop()
            chains[id(subschema)] = longest + 1
            if path:
                above, rest, most = path[-1]
                path[-1] = (above, rest, max(most, longest + 1))
    return chains[id(start)]


def _applied(value: object, keyword: str) -> list[object]:
    """The subschemas `keyword`'s `value` applies: a list's (`allOf`), an object's values (`dependentSchemas`), or
    itself (`not`)."""
    if keyword == "dependentSchemas":
        return _values(value)
    return value if isinstance(value, list) and keyword.endswith("Of") else [value]


def _referred_by(subschema: dict[str, Any], resolver: Any) -> list[tuple[object, Any]]:
    """What `subschema`'s `$ref` and `$dynamicRef` lead to, with their resolvers (one that does not resolve is
    `_referred`'s to refuse)."""
    from referencing.exceptions import Unresolvable

    found = []
    for keyword in ("$ref", "$dynamicRef"):
        ref = subschema.get(keyword)
        if ref is None:
            continue
        try:
            resolved = resolver.lookup(ref)
        except (Unresolvable, ValueError, TypeError):
            continue
        found.append((resolved.contents, resolved.resolver))
    return found


def _nests_deeper_than(document: object, limit: int) -> bool:
    """Whether JSON `document` nests deeper than `limit` levels of arrays and objects, looked at level by level."""
    level = [document] if isinstance(document, dict | list) else []
    for _ in range(limit):
        level = [
            each
            for value in level
            for each in (value.values() if isinstance(value, dict) else value)
            if isinstance(each, dict | list)
        ]
        if not level:
            return False
    return True


def _refuse_costly_patterns(schema: object) -> None:
    """Refuse a schema whose patterns (`pattern`'s, `patternProperties`' names, wherever they are: one reached only
    by a `$ref` is compiled too) are too many, or would cost too much to compile, before any is compiled: each as
    Rust's engine is given it (`ecma`), which a pattern read otherwise (its spaced `{ 160 }` as no repetition, a
    class to a later `]`) got past, and held the event loop for seconds."""
    from handler.pipeline.schema_patterns import PatternRefused, compile_units, ecma

    patterns: set[str] = set()
    for each in _objects(schema):
        if isinstance(each.get("pattern"), str):
            patterns.add(each["pattern"])
        if isinstance(each.get("patternProperties"), dict):
            patterns.update(each["patternProperties"])
    if len(patterns) > MAX_PATTERNS:
        raise _refused(f"has {len(patterns)} distinct patterns, more than the {MAX_PATTERNS} the gateway compiles")
    try:
        units = {pattern: compile_units(ecma(pattern)) for pattern in patterns}
    except PatternRefused as refused:
        raise _unmatchable(refused) from None
    if sum(units.values()) > MAX_PATTERN_UNITS:
        raise _refused(
            "has patterns too costly to compile together (counted repetitions of classes such as `\\p{L}{160}`: "
            "Rust's engine builds each copy)"
        )
    costly = next((pattern for pattern, cost in units.items() if cost > MAX_UNITS_PER_PATTERN), None)
    if costly is not None:
        raise _refused(
            f"has a pattern too large once compiled: {costly!r} (counted repetitions of classes such as "
            "`\\p{L}{33}`: Rust's engine builds each copy)"
        )


def _objects(document: object) -> Iterator[dict[str, Any]]:
    """Every object in `document`, wherever it is."""
    pending = [document]
    while pending:
        value = pending.pop()
        if isinstance(value, dict):
            yield value
            pending.extend(value.values())
        elif isinstance(value, list):
            pending.extend(value)


def _expanded(schema: object, registry: Registry[Any]) -> int:
    """How many subschemas `schema` is with its references expanded (each `$ref` counted as the subschema it leads
    to, with everything below that; a definition counted where it is referred to), counted up to just past
    `MAX_EXPANDED`: what checking an answer may walk. Each subschema is counted once (its total kept), so the count
    takes time linear in the schema; a reference back to a subschema being counted (recursion, which the answer's
    depth bounds) adds nothing."""
    from referencing.exceptions import Unresolvable
    from referencing.jsonschema import DRAFT202012

    totals: dict[int, int] = {}
    root = registry.resolver_with_root(DRAFT202012.create_resource(schema))
    stack: list[tuple[object, Any, list[object] | None]] = [(schema, root, None)]
    while stack:  # (depth first, not recursive: a chain of references longer than the stack is counted as any other)
        subschema, resolver, below = stack[-1]
        if below is not None:  # (what it leads to is counted: so is it)
            stack.pop()
            totals[id(subschema)] = min(1 + sum(totals.get(id(each), 1) for each in below), MAX_EXPANDED + 1)
            continue
        if not isinstance(subschema, dict) or id(subschema) in totals:
            stack.pop()
            continue
        resolver = resolver.in_subresource(DRAFT202012.create_resource(subschema))
        defined = {id(each) for key in ("$defs", "definitions") for each in _values(subschema.get(key))}
        leads = [(each, resolver) for each in DRAFT202012.subresources_of(subschema) if id(each) not in defined]
        for keyword in ("$ref", "$dynamicRef"):
            try:
                found = resolver.lookup(subschema[keyword])
            except (KeyError, Unresolvable, ValueError, TypeError):  # (one `_referred` does not reach: the
                continue  # answer's check refuses it)
            leads.append((found.contents, found.resolver))
        stack[-1] = (subschema, resolver, [each for each, _ in leads])
        totals[id(subschema)] = 0  # (being counted: a reference back to it adds nothing)
        stack.extend((each, where, None) for each, where in leads)
    return totals.get(id(schema), 1)


def _values(definitions: object) -> list[object]:
    """The subschemas of `$defs` (or `definitions`): checked by what refers to them, not where they are."""
    return list(definitions.values()) if isinstance(definitions, dict) else []


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
    # (nesting needs an opening bracket a level: an answer with few cannot be too deep, and is not walked)
    if text.count("[") + text.count("{") > MAX_ANSWER_DEPTH and _nests_deeper_than(document, MAX_ANSWER_DEPTH):
        return f"the answer nests deeper than {MAX_ANSWER_DEPTH} levels, more than the gateway checks"
    from referencing.exceptions import Unresolvable

    from handler.pipeline.schema_patterns import PatternRefused

    validator = _validator(orjson.dumps(schema, option=orjson.OPT_SORT_KEYS))
    try:
        error = next(iter(validator.iter_errors(document)), None)
    except Unresolvable as exc:  # (jsonschema's error wraps one too): one `_referred` let through is the client's
        raise _refused(f"has a reference that does not resolve within it: {exc}") from None
    except PatternRefused as exc:  # (in a subschema only a `$ref` reaches, which the metaschema does not check)
        raise _unmatchable(exc) from None
    except RecursionError:
        # A schema's own recursion is bounded where it is admitted (`_in_place_chain`, `MAX_SCHEMA_DEPTH`): the
        # answer's depth, times what its levels apply, took the check past Python's limit. Another answer may not.
        return "the answer nests too deep to be checked against the schema"
    except Exception as exc:  # (a schema admission let through that jsonschema cannot apply: the client's, not a 500)
        raise _refused(f"cannot check an answer: {type(exc).__name__}: {exc}") from None
    if error is None:
        return None
    where = "/".join(str(p) for p in error.absolute_path) or "(root)"
    return f"{where}: {error.message}"


def first_violation(schema: dict[str, Any], texts: Sequence[str | None]) -> str | None:
    """Why the first of an answer's choices (`texts`, in their order) that does not satisfy `schema` does not,
    naming it where there are several; None when every one does (with `n: 2`, checking only the first would relay a
    second that is not JSON at all)."""
    for index, text in enumerate(texts):
        problem = violation(schema, text)
        if problem is not None:
            return problem if len(texts) == 1 else f"choice {index}: {problem}"
    return None


def enforce(schema: dict[str, Any], texts: Sequence[str | None]) -> None:
    """Raise a retryable `SchemaViolationError` when one of the answer's choices (`texts`) breaks the schema."""
    problem = first_violation(schema, texts)
    if problem is not None:
        raise violated(problem)


def violated(problem: str) -> SchemaViolationError:
    """The error of an answer that breaks the schema (`problem`, from `violation`): retryable, where another
    attempt can still answer."""
    return SchemaViolationError(f"the answer does not match the response schema: {problem}", retryable=True)
