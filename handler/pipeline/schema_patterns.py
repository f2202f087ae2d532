"""JSON Schema's patterns matched by Rust's `regex` crate (pydantic-core's), whose time is linear in the text.

jsonschema matches `pattern`, `patternProperties` (and through it `additionalProperties` and
`unevaluatedProperties`) with Python's `re`, which backtracks without a limit: a client's `^(a+)+$` against 26 `a`s
and a `!` held the event loop, and every other request of the process, for 8 s. `Validator` is jsonschema's Draft
2020-12 class with those keywords matched here. Rust's engine has no look-around or back-reference (ECMA-262 has
both): a pattern with one is refused with the schema (`regex_format`), never matched by `re` instead.

What a compiled pattern holds stays in the process for a while: pydantic-core keeps the 50 patterns it compiled
most recently (measured: the 50th most recent compiles again in 0.03 ms, the 51st in its first 5-50 ms), whoever
else lets go of them. Each takes about 1.25 KB for each unit of `compile_units` (`\\p{L}{150}`, 9,600 units: 10 MB),
so a pattern's units are bounded when the schema is admitted (`schema_check.MAX_UNITS_PER_PATTERN`): 100 distinct
patterns of that bound, one after another, left the process 135 MB larger, and more leave it no larger.

Imported with jsonschema, by the first request whose schema is enforced.
"""

from __future__ import annotations

import re
from collections.abc import Iterator, Mapping
from functools import lru_cache
from typing import Any

import attrs
from jsonschema import Draft202012Validator, FormatChecker, ValidationError
from jsonschema.validators import extend
from pydantic_core import SchemaError, SchemaValidator, core_schema

# A compiled pattern is kept here while it is among the most recent (pydantic-core shares it, keeping more).
KEPT_PATTERNS = 16

Schema = Mapping[str, Any]


class PatternRefused(ValueError):
    """A pattern the linear engine does not take (look-around, a back-reference, more than its size limit); the
    message says which pattern and why."""


# ECMA-262's classes that Rust's engine reads otherwise: `\w`, `\d` and `\b` are ASCII in JSON Schema's dialect (a
# `u`-flag ECMAScript regex's), Unicode in Rust's (`^\d{5}$` took Arabic-Indic digits; `\w{150}` compiled to a 10 MB
# automaton of every script's letters), and `[\b]` is a backspace. Outside a bracketed class, and inside one.
ECMA_CLASSES = {
    "w": "[0-9A-Za-z_]", "W": "[^0-9A-Za-z_]", "d": "[0-9]", "D": "[^0-9]", "b": "(?-u:\\b)", "B": "(?-u:\\B)",
}  # fmt: skip
ECMA_IN_CLASS = {"w": "0-9A-Za-z_", "W": "[:^word:]", "d": "0-9", "D": "[:^digit:]", "b": "\\x08"}


def ecma(pattern: str) -> str:
    """`pattern` (ECMA-262's) as Rust's engine reads the same: its ASCII classes and word boundaries spelt out
    (`ECMA_CLASSES`); everything else as written."""
    if "\\" not in pattern:
        return pattern
    out, depth, at = [], 0, 0
    while at < len(pattern):
        char = pattern[at]
        if char == "\\" and at + 1 < len(pattern):
            name = pattern[at + 1]
            spelt = (ECMA_IN_CLASS if depth else ECMA_CLASSES).get(name)
            out.append(spelt if spelt is not None else pattern[at : at + 2])
            at += 2
            continue
        if char == "[":
            depth += 1
        elif char == "]" and depth:
            depth -= 1
        out.append(char)
        at += 1
    return "".join(out)


@lru_cache(maxsize=KEPT_PATTERNS)
def _compiled(pattern: str) -> SchemaValidator:
    try:
        return SchemaValidator(core_schema.str_schema(pattern=ecma(pattern), regex_engine="rust-regex"))
    except SchemaError as exc:  # (its last line is the engine's: "error: look-around, ... is not supported")
        reason = str(exc).splitlines()[-1].strip()
        raise PatternRefused(f"{pattern!r}: {reason.partition(': ')[2] or reason}") from None


def matches(pattern: str, text: str) -> bool:
    """Whether `pattern` is found in `text` (anywhere, as ECMA-262's `test` finds it)."""
    return _compiled(pattern).isinstance_python(text)


def regex_format(instance: object) -> bool:
    """The metaschema's `format: regex` (a schema's `pattern` and `patternProperties`' names), as `matches` takes
    them."""
    if isinstance(instance, str):
        _compiled(instance)
    return True


def _pattern(validator: Any, pattern: str, instance: object, schema: Schema) -> Iterator[ValidationError]:
    if isinstance(instance, str) and not matches(pattern, instance):
        yield ValidationError(f"{instance!r} does not match {pattern!r}")


def _pattern_properties(
    validator: Any, patterns: Schema, instance: object, schema: Schema
) -> Iterator[ValidationError]:
    if not isinstance(instance, dict):
        return
    for pattern, subschema in patterns.items():
        for key, value in instance.items():
            if matches(pattern, key):
                yield from validator.descend(value, subschema, path=key, schema_path=pattern)


def _additional_properties(
    validator: Any, additional: Any, instance: object, schema: Schema
) -> Iterator[ValidationError]:
    if not isinstance(instance, dict):
        return
    properties, patterns = schema.get("properties", {}), schema.get("patternProperties", {})
    extras = [key for key in instance if key not in properties and not any(matches(p, key) for p in patterns)]
    if isinstance(additional, dict):
        for extra in extras:
            yield from validator.descend(instance[extra], additional, path=extra)
    elif not additional and extras:
        listed = ", ".join(repr(each) for each in sorted(extras))
        if patterns:
            verb = "does" if len(extras) == 1 else "do"
            regexes = ", ".join(repr(each) for each in sorted(patterns))
            yield ValidationError(f"{listed} {verb} not match any of the regexes: {regexes}")
        else:
            verb = "was" if len(extras) == 1 else "were"
            yield ValidationError(f"Additional properties are not allowed ({listed} {verb} unexpected)")


def _unevaluated_properties(
    validator: Any, unevaluated: Any, instance: object, schema: Schema
) -> Iterator[ValidationError]:
    if not isinstance(instance, dict):
        return
    evaluated = _evaluated_keys(validator, instance, schema)
    rest = [key for key in instance if key not in evaluated and not _fits(validator, instance[key], unevaluated)]
    if not rest:
        return
    verb = "was" if len(rest) == 1 else "were"
    if unevaluated is False:
        listed = ", ".join(repr(each) for each in sorted(rest))
        yield ValidationError(f"Unevaluated properties are not allowed ({listed} {verb} unexpected)")
    else:
        listed = ", ".join(repr(each) for each in rest)
        yield ValidationError(
            f"Unevaluated properties are not valid under the given schema ({listed} {verb} unevaluated and invalid)"
        )


def _evaluated_keys(validator: Any, instance: dict[str, Any], schema: object) -> set[str]:
    """The keys of `instance` that `schema` evaluates, as jsonschema's `find_evaluated_property_keys_by_schema`
    finds them (reading the validator's resolver as it does), with `patternProperties` matched by `matches`."""
    if not isinstance(schema, dict):
        return set()
    keys: set[str] = set()
    for keyword in ("$ref", "$dynamicRef"):
        if keyword in schema:
            found = validator._resolver.lookup(schema[keyword])
            referred = validator.evolve(schema=found.contents, _resolver=found.resolver)
            keys |= _evaluated_keys(referred, instance, found.contents)
    if isinstance(schema.get("properties"), dict):
        keys |= schema["properties"].keys() & instance.keys()
    for keyword in ("additionalProperties", "unevaluatedProperties"):
        if keyword in schema:
            keys |= {key for key, value in instance.items() if _fits(validator, value, schema[keyword])}
    for pattern in schema.get("patternProperties", {}):
        keys |= {key for key in instance if matches(pattern, key)}
    applied = [each for key, each in schema.get("dependentSchemas", {}).items() if key in instance]
    for keyword in ("allOf", "oneOf", "anyOf"):
        applied += [each for each in schema.get(keyword, []) if _fits(validator, instance, each)]
    if "if" in schema:
        if validator.evolve(schema=schema["if"]).is_valid(instance):
            applied += [schema["if"], *([schema["then"]] if "then" in schema else [])]
        elif "else" in schema:
            applied.append(schema["else"])
    for each in applied:
        keys |= _evaluated_keys(validator, instance, each)
    return keys


def _fits(validator: Any, instance: object, subschema: object) -> bool:
    return next(validator.descend(instance, subschema), None) is None


def _formats() -> FormatChecker:
    formats = FormatChecker(Draft202012Validator.FORMAT_CHECKER.checkers)
    formats.checks("regex", raises=PatternRefused)(regex_format)
    return formats


Validator: Any = extend(  # type: ignore[no-untyped-call]
    Draft202012Validator,
    {
        "pattern": _pattern,
        "patternProperties": _pattern_properties,
        "additionalProperties": _additional_properties,
        "unevaluatedProperties": _unevaluated_properties,
    },
    format_checker=_formats(),
)
# jsonschema's `evolve` hands a subschema that names a dialect in `$schema` (or that a `$ref` finds in a
# metaschema, from which `$dynamicRef: "#meta"` can come back to the client's schema) to that dialect's own class,
# and so to `re`: here every subschema stays with this class, checked as Draft 2020-12.
Validator.evolve = attrs.evolve


# What a pattern costs Rust's engine to compile, in units of about 5 µs (measured: `\p{L}{160}` 10,240 units): an
# atom is compiled once for each copy its counted repetitions make, a Unicode class (`\p{L}`) as a UTF-8 automaton
# of some 60 units, `\S` of 2, anything else (`\w` and `\d` among them: ASCII, `ecma`) of 1.
CLASS_UNITS = {"p": 64, "P": 64, "S": 2}
REPEAT = re.compile(r"\{(\d+)(,(\d*))?\}")


def compile_units(pattern: str) -> int:
    """An estimate of what compiling `pattern` costs (`CLASS_UNITS`), read without compiling it: each group's and
    atom's units times the copies a counted repetition after it makes (`{n,m}`: m), nested repetitions
    multiplied."""
    totals, last = [0], 0  # (the units of each open group; of the atom or group a repetition would copy)
    at = 0
    while at < len(pattern):
        char = pattern[at]
        counted = REPEAT.match(pattern, at) if char == "{" else None
        if counted is not None:
            low, comma, high = counted.groups()
            copies = int(high) if high else int(low) + (1 if comma else 0)
            totals[-1] += last * (copies - 1)
            last *= copies
            at = counted.end()
            continue
        if char == "(":
            totals.append(0)
        elif char == ")" and len(totals) > 1:
            last = totals.pop()
            totals[-1] += last
        elif char not in "*+?|":
            at, last = _atom(pattern, at)
            totals[-1] += last
            continue
        at += 1
    return sum(totals)


def _atom(pattern: str, at: int) -> tuple[int, int]:
    """Where the atom at `at` ends (an escape, a bracketed class, a character) and its units."""
    if pattern[at] == "\\":
        name = pattern[at + 1 : at + 2]
        end = at + 2
        if name and name in "pPxuU" and pattern.startswith("{", end):  # (`\p{Greek}`, `\x{263a}`)
            end = pattern.find("}", end) + 1 or len(pattern)
        elif name and name in "pP":  # (`\pL`)
            end += 1
        return end, CLASS_UNITS.get(name, 1)
    if pattern[at] != "[":
        return at + 1, 1
    depth, end, units = 0, at, 0
    while end < len(pattern):  # (to its closing bracket: classes nest, and `]` first in one is a literal)
        char = pattern[end]
        if char == "\\":
            units += CLASS_UNITS.get(pattern[end + 1 : end + 2], 0)
            end += 2
            continue
        if pattern.startswith("[:", end):  # (`[[:alpha:]]`)
            close = pattern.find(":]", end)
            end = len(pattern) if close < 0 else close + 2
            continue
        if char == "[":
            depth += 1
            end += 1 + (pattern[end + 1 : end + 2] == "^")
            end += pattern[end : end + 1] == "]"
            continue
        if char == "]":
            depth -= 1
            if depth == 0:
                break
        end += 1
    return end + 1, max(units, 1)
