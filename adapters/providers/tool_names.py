"""Tool names as a provider takes them: a name it refuses goes as an alias, and comes back as the client's.

Clients name their own tools, and not all of them as every provider takes a name: Claude Code's MCP tools
(`mcp__<server>__<tool>`) run past 64 characters, which Anthropic takes (up to 128) but Bedrock's Converse and OpenAI
(1 to 64 of `[a-zA-Z0-9_-]`) and Gemini (a letter or `_` first, then `[a-zA-Z0-9_.:-]`, at most 64) refuse, with a 400
for the whole request that the client cannot mend. Such a name goes to the provider as an alias (`alias`): a readable
start of the name and a digest of the whole name, fitting every one of these rules, never another name of the same
request. A request gives each of its names the same alias wherever it appears (the tool's declaration, `tool_choice`,
the history's calls and results), and the answer's calls name the client's tool again: no client sees an alias.

A request's names are read by its `params.ToolNames` (OpenAI's adapter: `aliased_functions`), each checked against the
provider's rule; this module is imported only by a request with a name the provider refuses, which makes the aliases
of all of the request's names at once, so that the request and its answer (read by a `ToolNames` of its own) agree on
each; the answer finds them made (`_made`).
"""

from __future__ import annotations

import functools
import hashlib
from collections.abc import Callable, Mapping
from types import MappingProxyType

from handler.schemas import ChatRequest, allowed_names

MAX_NAME = 64  # Converse's, OpenAI's and Gemini's longest name
DIGEST_CHARS = 8  # hex digits of the whole name's SHA-256 closing an alias
WORD_CHARACTERS = "_-"  # besides letters and digits, what each of them takes anywhere in a name
RECENT_REQUESTS = 256  # the aliases kept (`_made`): of more requests than one process has in flight


def alias(name: str, attempt: int = 0) -> str:
    """A name Converse, OpenAI and Gemini all take for `name`: its start, each character outside `[a-zA-Z0-9_-]` as
    `_` and a `_` first unless it opens with a letter or `_`, then `_` and a digest of the whole name (of the name and
    `attempt`, for a later attempt after one that another of the request's names already held)."""
    head = "".join(c if c.isascii() and (c.isalnum() or c in WORD_CHARACTERS) else "_" for c in name)
    if not (head[:1].isalpha() or head[:1] == "_"):
        head = "_" + head
    salted = f"{name}\n{attempt}" if attempt else name
    digest = hashlib.sha256(salted.encode()).hexdigest()[:DIGEST_CHARS]
    return f"{head[: MAX_NAME - DIGEST_CHARS - 1]}_{digest}"


def request_names(req: ChatRequest) -> list[str]:
    """Every tool name the request holds: its tools', its `tool_choice`'s (the one it names, or those it allows), its
    history's calls' and results'."""
    names = [tool.function.name for tool in req.tools or ()]
    choice = req.tool_choice
    if isinstance(choice, dict):
        names += allowed_names(choice) or ()
    elif choice is not None and not isinstance(choice, str):
        names.append(choice.function.name)
    for message in req.messages:
        names += [call.function.name for call in message.tool_calls or ()]
        if message.role == "tool" and message.name:
            names.append(message.name)
    return names


def aliases(req: ChatRequest, takes: Callable[[str], bool]) -> Mapping[str, str]:
    """The alias of each of the request's names the provider refuses (`takes`), by name: none the same as another
    alias or as a name of the request."""
    return aliases_of(request_names(req), takes)


def aliases_of(names: list[str], takes: Callable[[str], bool]) -> Mapping[str, str]:
    """The alias of each of a request's `names` the provider refuses (`takes`), by name: none the same as another
    alias or as one of `names` (a request in another API's shape: `openai.responses.function_names`). Made once for
    a request and its answer, which reads the names again to name its calls back (`_made`)."""
    return _made(tuple(names), takes)


@functools.lru_cache(maxsize=RECENT_REQUESTS)
def _made(names: tuple[str, ...], takes: Callable[[str], bool]) -> Mapping[str, str]:
    """`aliases_of`, kept for the requests in flight: a request's names (and the provider's rule) are its key, so
    its answer, read by a `ToolNames` of its own or by `native_names`, finds the aliases its request was sent with
    and digests no name again. Read-only: every caller shares it."""
    taken = set(names)
    made: dict[str, str] = {}
    for name in names:
        if name in made or takes(name):
            continue
        attempt = 0
        while (wire := alias(name, attempt)) in taken:
            attempt += 1
        made[name] = wire
        taken.add(wire)
    return MappingProxyType(made)
