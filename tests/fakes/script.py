"""What the fake providers' "model" decides beyond a fixed answer, shared by every fake.

- A scripted agent turn, so a real coding agent's loop runs end to end: when a user message holds
  `CALL <tool> <json arguments>` and that tool is offered (`tool_choice: auto` is enough), the model calls
  it; once the conversation's last message is that tool's result, it answers `DONE: <the result's last
  non-empty line>`, so a test sees that the tool ran and its output came back.
- A said answer: when the last user message holding `SAY ` has no `CALL`, the model answers what follows `SAY `
  (`Said`), streamed `SAID_PIECE` characters at a time, as a model's tokens cut a word (a key) anywhere.
- An answer that follows a requested JSON schema (`sample_of`), as a structured-output model's would.
- JSON written as some providers' encoders write it, every `/` escaped (`escaped`), for a `slashes-escaped` model.
- A prompt cache as Claude's (`prompt_cache_use`): a marker reads the longest prefix written before that ends at it
  or a few blocks before it, for the fake Anthropic API and the fake Bedrock alike.
- An error answer with the headers the model names (`headed_fault`), `fail-<status>;<header>=<value>;...`: a
  provider's `retry-after` as it may really come (twice, as an ISO date, `inf`), answered in each fake's own shape.

Each fake reduces its own wire format to the plain values these functions take.
"""

from __future__ import annotations

import re
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from typing import Any

import orjson

MARKER = re.compile(r"CALL ([A-Za-z0-9_.-]+) (\{.*?\})(?:\s|$)", re.S)
SAY = "SAY "
SAID_PIECE = 4
HEADED_FAULT = re.compile(r"fail-(\d{3});(.*)")


CACHE_LOOKBACK = 20  # the blocks before a cache marker where Claude's cache looks for a prefix written before too


def prompt_cache_use(
    blocks: list[Any], ends: list[int], known: Callable[[int], bytes], cached: set[bytes]
) -> tuple[int, int]:
    """The tokens a prompt reads from Claude's prompt cache and writes to it, as Anthropic (and Bedrock, for Claude)
    cache: `blocks` the prompt's (tools, system, then messages), `ends` where each of its markers closes a prefix (its
    length in blocks), `known(n)` what the first n blocks are known by in `cached` (the prefixes written so far, their
    markers left out). Each marker reads the longest prefix written before that ends at it or at one of the
    `CACHE_LOOKBACK` blocks before it (the next turn of a session, its marker moved to its new last block, reads what
    the turn before wrote); the prompt up to its last marker is written, but for what was read. A prefix counts its
    bytes / 4."""
    read = 0
    for end in ends:
        for length in range(end, max(0, end - CACHE_LOOKBACK - 1), -1):
            if known(length) in cached:
                read = max(read, len(orjson.dumps(blocks[:length])) // 4)
                break
    cached.update(known(end) for end in ends)
    return read, len(orjson.dumps(blocks[: ends[-1]])) // 4 - read


def headed_fault(model: str) -> tuple[int, list[tuple[bytes, bytes]]] | None:
    """The status and headers of the error answer a model `fail-<status>;<header>=<value>;...` asks for
    (`fail-503;retry-after=3`; a header named twice is sent twice), or None."""
    match = HEADED_FAULT.search(model)
    if match is None:
        return None
    named = (part.partition("=") for part in match[2].split(";") if part)
    return int(match[1]), [(name.encode(), value.encode()) for name, _, value in named]


class Said(str):
    """What the model was told to say (`SAY <text>`): streamed in pieces of `SAID_PIECE` characters (`pieces`)."""


def pieces(text: str) -> list[str]:
    """How a fake streams an answer's text: word by word (each but the first with its leading space); a said
    answer (`Said`) `SAID_PIECE` characters at a time."""
    if isinstance(text, Said):
        return [text[i : i + SAID_PIECE] for i in range(0, len(text), SAID_PIECE)] or [""]
    return [(" " if i else "") + word for i, word in enumerate(text.split(" "))]


@dataclass(frozen=True)
class ScriptedCall:
    name: str
    arguments: dict[str, Any]

    @property
    def arguments_json(self) -> str:
        return orjson.dumps(self.arguments).decode()


def scripted_turn(user_texts: list[str], tools: list[str], tool_result: str | None) -> ScriptedCall | str | None:
    """The scripted call, the final answer after its result, or None when no script applies."""
    found = None
    for text in user_texts:
        for match in MARKER.finditer(text):
            found = match
    if found is None:
        said = [text for text in user_texts if SAY in text]
        return Said(said[-1].split(SAY, 1)[1]) if said else None
    if tool_result is not None:
        lines = [line.strip() for line in tool_result.splitlines() if line.strip()]
        return f"DONE: {lines[-1] if lines else ''}"
    name = found.group(1)
    if name not in tools:
        return None
    try:
        arguments = orjson.loads(found.group(2))
    except orjson.JSONDecodeError:
        return None
    return ScriptedCall(name, arguments) if isinstance(arguments, dict) else None


def texts(content: Any) -> str:
    """The text in a message's content, whichever of the usual shapes it has."""
    if isinstance(content, str):
        return content
    if isinstance(content, dict):
        if isinstance(content.get("text"), str):
            return str(content["text"])
        return " ".join(texts(v) for k, v in content.items() if k not in ("type", "id", "name"))
    if isinstance(content, list):
        return "\n".join(texts(part) for part in content)
    return ""


def sample_of(schema: dict[str, Any]) -> Any:
    """A value that satisfies a (simple) JSON schema."""
    kind = schema.get("type")
    if "enum" in schema:
        return schema["enum"][0]
    if kind == "object" or "properties" in schema:
        return {name: sample_of(sub) for name, sub in (schema.get("properties") or {}).items()}
    if kind == "array":
        return [sample_of(schema.get("items") or {})]
    if kind == "integer":
        return 21
    if kind == "number":
        return 21.5
    if kind == "boolean":
        return True
    return "Paris"


def input_for(schema: Any, default: dict[str, Any]) -> dict[str, Any]:
    """A forced tool's input: what its schema asks for (a structured-output tool gets a whole answer), or the
    fake's usual input for a tool that describes no properties."""
    if isinstance(schema, dict) and schema.get("properties"):
        value = sample_of(schema)
        if isinstance(value, dict):
            return value
    return default


def text_for(schema: Any, default: str) -> str:
    """A structured-output answer: JSON following the schema when it describes properties, else the fake's
    usual text (which such a schema then rejects, as a model's off-schema answer would be)."""
    value = input_for(schema, {})
    return orjson.dumps(value).decode() if value else default


def escaped(data: bytes, behaviour: str) -> bytes:
    """JSON as an encoder that escapes `/` writes it (PHP's, Java's), for a `slashes-escaped` model: every `/` is
    in a string, and `\\/` is its escape."""
    return data.replace(b"/", b"\\/") if "slashes-escaped" in behaviour else data


async def escaping(stream: AsyncIterator[bytes], behaviour: str) -> AsyncIterator[bytes]:
    """A stream's events written as `escaped` writes JSON."""
    async for data in stream:
        yield escaped(data, behaviour)
