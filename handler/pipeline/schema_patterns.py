"""JSON Schema's patterns matched by Rust's `regex` crate (pydantic-core's), whose time is linear in the text.

jsonschema matches `pattern`, `patternProperties` (and through it `additionalProperties` and
`unevaluatedProperties`) with Python's `re`, which backtracks without a limit: a client's `^(a+)+$` against 26 `a`s
and a `!` held the event loop, and every other request of the process, for 8 s. `Validator` is jsonschema's Draft
2020-12 class with those keywords matched here. Rust's engine has no look-around or back-reference (ECMA-262 has
both): a pattern with one is refused with the schema (`regex_format`), never matched by `re` instead. Its
`multipleOf` is checked exactly (`_multiple_of`).

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
from fractions import Fraction
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
# automaton of every script's letters), and `[\b]` is a backspace. `\s` is ECMA-262's white space and line
# terminators, which have U+FEFF and not U+0085 (Rust's has U+0085 and not U+FEFF). Outside a bracketed class, and
# inside one.
ECMA_SPACE = (
    "\\t\\n\\x0B\\x0C\\r \\xA0\\x{1680}\\x{2000}-\\x{200A}\\x{2028}\\x{2029}\\x{202F}\\x{205F}\\x{3000}\\x{FEFF}"
)
ECMA_CLASSES = {
    "w": "[0-9A-Za-z_]", "W": "[^0-9A-Za-z_]", "d": "[0-9]", "D": "[^0-9]", "b": "(?-u:\\b)", "B": "(?-u:\\B)",
    "s": f"[{ECMA_SPACE}]", "S": f"[^{ECMA_SPACE}]",
}  # fmt: skip
ECMA_IN_CLASS = {
    "w": "0-9A-Za-z_", "W": "[:^word:]", "d": "0-9", "D": "[:^digit:]", "s": ECMA_SPACE, "S": f"[^{ECMA_SPACE}]",
}  # fmt: skip
# ECMA-262's `.`: any character but its line terminators (Rust's stops only at `\n`), where the `s` flag is not on.
ECMA_DOT = "[^\\n\\r\\x{2028}\\x{2029}]"
# What a literal character is written as in Rust's bracketed class: there `[` opens a class, `&&`, `--` and `~~` are
# set operations (`[a&&b]` is empty, `[a-z--x]` lacks `x`), where ECMA-262's are literals.
RUST_CLASS_ESCAPED = frozenset("\\[]-&~^")
# The flags of Rust's group `(?flags)` or `(?flags:...)`: `x` makes spaces and `#` comments nothing, which ECMA-262
# has no flag for, and `s` lets `.` match any character.
FLAGS = re.compile(r"\(\?([a-zA-Z]*)(?:-([a-zA-Z]*))?([:)])")


def ecma(pattern: str) -> str:
    """`pattern` (ECMA-262's) as Rust's engine reads the same: its ASCII classes and word boundaries spelt out
    (`ECMA_CLASSES`), its `.` (`ECMA_DOT`), its bracketed classes literal where Rust's are not
    (`RUST_CLASS_ESCAPED`), `\\cX` and `\\0` as the characters they are; everything else (a Unicode class such as
    `\\p{L}`, a group, a repetition) as written. A pattern with the `x` flag, which reads its spaces as nothing, is
    refused (`PatternRefused`)."""
    out: list[str] = []
    dotall = [False]  # (the `s` flag, in each group open)
    at = 0
    while at < len(pattern):
        char = pattern[at]
        if char == "\\" and at + 1 < len(pattern):
            spelt, at = _escape(pattern, at, ECMA_CLASSES)
            out.append(spelt)
        elif char == "[":
            spelt, at = _class(pattern, at)
            out.append(spelt)
        elif char == ".":
            out.append("." if dotall[-1] else ECMA_DOT)
            at += 1
        elif char == "(":
            flags = FLAGS.match(pattern, at)
            on, off, end = flags.groups() if flags else ("", "", ":")
            if "x" in on:
                raise PatternRefused(f"{pattern!r}: the flag x (spaces and comments ignored) is not ECMA-262's")
            if end == ":":
                dotall.append(dotall[-1])  # (a group: a flag set within it ends with it)
            dotall[-1] = ("s" in on or dotall[-1]) and "s" not in (off or "")
            out.append(pattern[at : flags.end()] if flags else char)
            at = flags.end() if flags else at + 1
        else:
            if char == ")" and len(dotall) > 1:
                dotall.pop()
            out.append(char)
            at += 1
    return "".join(out)


def _escape(pattern: str, at: int, classes: Mapping[str, str]) -> tuple[str, int]:
    """The escape at `at` as Rust reads ECMA-262's (`classes`: the spelling of `\\w`, `\\d`, ...), and where it ends."""
    name = pattern[at + 1]
    spelt = classes.get(name)
    if spelt is not None:
        return spelt, at + 2
    if name == "c" and pattern[at + 2 : at + 3].isascii() and pattern[at + 2 : at + 3].isalpha():
        return f"\\x{ord(pattern[at + 2]) % 32:02X}", at + 3  # (a control character: `\cJ` is a line feed)
    if name == "0" and not pattern[at + 2 : at + 3].isdigit():
        return "\\x00", at + 2
    if name in "pPxu" and pattern.startswith("{", at + 2):  # (`\p{Script=Greek}`, `\u{1F600}`: to its brace)
        end = pattern.find("}", at + 2) + 1 or len(pattern)
        return pattern[at:end], end
    return pattern[at : at + 2], at + 2


def _class(pattern: str, at: int) -> tuple[str, int]:
    """The bracketed class at `at` as ECMA-262 reads it (to its first `]` not escaped: no class nests in one, and
    `&&`, `--`, `~~` are literal characters), written for Rust's engine; and where it ends. `[]` matches nothing,
    `[^]` any character."""
    start = at
    at += 1
    negated = pattern.startswith("^", at)
    at += negated
    members: list[str] = []
    while at < len(pattern) and pattern[at] != "]":
        low, at, single = _class_atom(pattern, at)
        if single and pattern.startswith("-", at) and at + 1 < len(pattern) and pattern[at + 1] != "]":
            high, end, single = _class_atom(pattern, at + 1)
            if single:  # (a range; one whose end is a class, `[a-\d]`, is its characters and a `-`)
                members.append(f"{low}-{high}")
                at = end
                continue
        members.append(low)
    if at >= len(pattern):  # (not closed: as written, for the engine to refuse)
        return pattern[start:], len(pattern)
    if not members:
        return ("[\\x00-\\x{10FFFF}]" if negated else "[^\\x00-\\x{10FFFF}]"), at + 1
    return "[" + "^" * negated + "".join(members) + "]", at + 1


def _class_atom(pattern: str, at: int) -> tuple[str, int, bool]:
    """The class member at `at` written for Rust's class, where it ends, and whether it is one character (which may
    start or end a range)."""
    char = pattern[at]
    if char != "\\" or at + 1 == len(pattern):
        return ("\\" + char if char in RUST_CLASS_ESCAPED else char), at + 1, True
    name = pattern[at + 1]
    if name == "b":
        return "\\x08", at + 2, True  # (a backspace)
    spelt, end = _escape(pattern, at, ECMA_IN_CLASS)
    if name in ECMA_IN_CLASS or name in "pP":
        return spelt, end, False
    if spelt == pattern[at:end] and len(spelt) == 2 and not name.isalnum():
        return "\\" + name if name in RUST_CLASS_ESCAPED else name, end, True  # (`\]`, `\.`: the character)
    return spelt, end, True


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


def _multiple_of(validator: Any, step: float, instance: object, schema: Schema) -> Iterator[ValidationError]:
    """`multipleOf` on the numbers as the JSON writes them, exactly: jsonschema divides floats, and `19.99 / 0.01`
    is 1998.9999999999998, so a price in cents would break `multipleOf: 0.01` (every deployment tried, and paid)."""
    if isinstance(instance, bool) or not isinstance(instance, int | float):  # (a number is orjson's int or float)
        return
    if _exact(instance) % _exact(step):
        yield ValidationError(f"{instance!r} is not a multiple of {step}")


def _exact(number: float) -> Fraction:
    """A JSON number as its shortest decimal spelling says (`0.01` is 1/100, not the double nearest it)."""
    return Fraction(repr(number)) if isinstance(number, float) else Fraction(number)


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
        "multipleOf": _multiple_of,
    },
    format_checker=_formats(),
)
# jsonschema's `evolve` hands a subschema that names a dialect in `$schema` (or that a `$ref` finds in a
# metaschema, from which `$dynamicRef: "#meta"` can come back to the client's schema) to that dialect's own class,
# and so to `re`: here every subschema stays with this class, checked as Draft 2020-12.
Validator.evolve = attrs.evolve


# What a pattern costs Rust's engine to compile, in units of about 5 µs (measured: `\p{L}{160}` 10,240 units): an
# atom is compiled once for each copy its counted repetitions make, a Unicode class (`\p{L}`) as a UTF-8 automaton
# of some 60 units, `\S`, `.` and a negated class (most of Unicode) of 2, anything else (`\w` and `\d` among them:
# ASCII, `ecma`) of 1.
CLASS_UNITS = {"p": 64, "P": 64, "S": 2}
NEGATED_UNITS = 2
# A counted repetition as Rust's parser reads one: spaces (Unicode's White_Space) around each number, as in
# `{ 160 }` and `{1, 160}` (which compile to the automaton `{160}` does). Outside a bracketed class, a `{` that is
# not one is the engine's error, compiled to nothing.
SPACE = "[\t\n\x0b\x0c\r \x85\xa0\u1680\u2000-\u200a\u2028\u2029\u202f\u205f\u3000]*"
POSIX_CLASS = re.compile(r"\[:(\^?)[a-z]+:\]")
REPEAT = re.compile(rf"\{{{SPACE}([0-9]+){SPACE}(?:(,)(?:{SPACE}([0-9]+){SPACE})?)?\}}")


def compile_units(pattern: str) -> int:
    """An estimate of what compiling `pattern` (Rust's syntax: `ecma`'s, which has no `x` flag) costs
    (`CLASS_UNITS`), read without compiling it: each group's and atom's units times the copies a counted repetition
    after it makes (`{n,m}`: m), nested repetitions multiplied."""
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
        return at + 1, NEGATED_UNITS if pattern[at] == "." else 1
    depth, end, units, negated = 0, at, 0, False
    while end < len(pattern):  # (to its closing bracket: classes nest, and `]` first in one is a literal)
        char = pattern[end]
        if char == "\\":
            units += CLASS_UNITS.get(pattern[end + 1 : end + 2], 0)
            end += 2
            continue
        named = POSIX_CLASS.match(pattern, end) if depth else None  # (`[[:alpha:]]`; `[:a]` is `:` and `a`)
        if named is not None:
            negated = negated or named.group(1) == "^"
            end = named.end()
            continue
        if char == "[":
            depth += 1
            negated = negated or pattern[end + 1 : end + 2] == "^"
            end += 1 + (pattern[end + 1 : end + 2] == "^")
            end += pattern[end : end + 1] == "]"
            continue
        if char == "]":
            depth -= 1
            if depth == 0:
                break
        end += 1
    return end + 1, max(units, NEGATED_UNITS if negated else 1)
