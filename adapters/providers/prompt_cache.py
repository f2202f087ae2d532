"""Prompt-cache breakpoints the gateway places itself, for a translated request to Claude that asks for caching.

OpenAI and Gemini cache a repeated prompt prefix by themselves; Claude (on Anthropic or Bedrock) caches only up to a
breakpoint the request places (`cache_control` on a block, Converse's `cachePoint`). A Chat Completions or Responses
client asks for caching with `prompt_cache_key` and marks nothing (Codex: its instructions and tools, 5,000 to 20,000
tokens, open every turn of a session): translated as written, every turn paid its whole prefix at the full input
price. Such a request gets breakpoints where the next turn repeats the prompt: after the last message (the next turn
reads everything before its own new blocks), the system prompt and the last tool (read when a turn added more blocks
than the provider looks back over, about 20), within the four a request may hold, the client's own counted, and only
where the prefix is long enough for the model to cache (a breakpoint short of it caches nothing, and on Bedrock a
checkpoint nearer the one before it than that is ignored). A request that does not ask is sent as before.

The deployment option `prompt_caching` says when (`adapters.providers.params.caching_wanted`): `auto`, on
`prompt_cache_key`; `always`, on every translated request; `never`. The adapters import this module with the first
request that asks for caching.
"""

from __future__ import annotations

import functools
import re
from typing import Any

import orjson

MAX_BREAKPOINTS = 4  # Anthropic's and Bedrock's limit per request (a fifth is their 400)
AUTO_MARKER = {"type": "ephemeral"}  # (five minutes, the cheaper write: the next turn of a session comes sooner)
UNMARKABLE = frozenset({"thinking", "redacted_thinking"})  # (Anthropic's 400: thinking takes no `cache_control`)

# The fewest tokens a prefix must hold for Claude to cache it, first match (Anthropic's prompt-caching page, "Cache
# limitations": 4,096 for Opus 4.5 and later and Haiku 4.5, 2,048 for Sonnet 4.6 and the Haiku 3 models, 1,024 for the
# rest; Bedrock's "Supported models, Regions, and limits" gives its Claude models the same).
MINIMUM_TOKENS: tuple[tuple[str, int], ...] = (
    ("claude-opus-4-5", 4096),
    ("claude-opus-4-6", 4096),
    ("claude-opus-4-7", 4096),
    ("claude-haiku-4-5", 4096),
    ("claude-sonnet-4-6", 2048),
    ("claude-sonnet-4-7", 2048),
    ("claude-3-5-haiku", 2048),
    ("claude-3-haiku", 2048),
)
DEFAULT_MINIMUM = 1024
# The Claude models Bedrock caches nothing for (its prompt caching is Claude 3.7 Sonnet, 3.5 Haiku and the Claude 4
# models; 3.5 Sonnet v2 only for the accounts of its preview): no checkpoint goes to them, nor to Bedrock's other
# models (Nova caches no tools: not placed for it). A pattern, compiled where it is first searched (`re`'s cache):
# compiled here it would be a Lambda cold start's work, for deployments that may never see Bedrock.
BEDROCK_UNCACHED = r"claude-(3-(sonnet|opus|haiku)|3-5-sonnet|v2|instant)"
# Where a Converse request may hold a cache point, by model (AWS's "Prompt caching" page, its supported-models table:
# "Fields that accept prompt cache checkpoints"): the Claude models Bedrock caches for, in `system`, `messages` and
# `toolConfig.tools`; Amazon Nova in `system` and `messages` (a point there caches the tools before it too). Any other
# model (Llama, Mistral, DeepSeek, the Claude models above) takes none: a cache point anywhere is Bedrock's refusal
# of the whole request ("You invoked an unsupported model or your request did not allow prompt caching").
CONVERSE_FIELDS = ("system", "messages", "tools")
NOVA_FIELDS = ("system", "messages")


@functools.lru_cache(maxsize=256)
def minimum_tokens(model: str, bedrock: bool = False) -> int | None:
    """The fewest tokens a prefix must hold for `model` to cache it; None where it caches nothing (on Bedrock, a
    model other than the Claude models it caches for)."""
    if bedrock and ("anthropic.claude" not in model or re.search(BEDROCK_UNCACHED, model)):
        return None
    return next((tokens for fragment, tokens in MINIMUM_TOKENS if fragment in model), DEFAULT_MINIMUM)


def bedrock_cache_fields(model: str) -> tuple[str, ...]:
    """The members of a Converse request where Bedrock takes a cache point from `model` (`CONVERSE_FIELDS`, Nova's
    `NOVA_FIELDS`); none for a model it caches nothing for. An ARN (an application inference profile's, AWS's way to
    tag a model's costs, or provisioned throughput's) names no model: a client's cache points go to it as they came,
    as they did before any were left out (left out, Claude behind the profile would bill every turn uncached)."""
    if model.startswith("arn:"):
        return CONVERSE_FIELDS
    if "amazon.nova" in model:
        return NOVA_FIELDS
    return CONVERSE_FIELDS if minimum_tokens(model, bedrock=True) is not None else ()


def _tokens(value: Any) -> int:
    """A prompt part's tokens, estimated from its JSON (four bytes a token, near Claude's count for prose and code;
    over it for JSON's quoting, which errs toward placing a breakpoint that caches nothing, at no cost)."""
    return len(orjson.dumps(value)) // 4


def _marks(block: dict[str, Any]) -> int:
    """The cache markers an Anthropic content block holds: its own and, in a tool result, its content's."""
    inner = block.get("content") if block["type"] == "tool_result" else None
    nested = sum("cache_control" in part for part in inner if isinstance(part, dict)) if isinstance(inner, list) else 0
    return ("cache_control" in block) + nested


def _chosen(candidates: list[int | None], taken: list[int], minimum: int, apart: bool) -> list[int]:
    """Which candidates (each its prefix's tokens, None for none there; best first) get a breakpoint, beside the
    client's (`taken`, their prefixes' tokens): within `MAX_BREAKPOINTS`, each prefix at least `minimum` (and, where
    the provider counts from the checkpoint before, `apart`, that far from every other)."""
    placed: list[int] = []
    points = list(taken)
    for position, tokens in enumerate(candidates):
        if len(points) >= MAX_BREAKPOINTS:
            break
        if tokens is None or tokens < minimum or tokens in points:
            continue
        if apart and any(abs(tokens - other) < minimum for other in points):
            continue
        placed.append(position)
        points.append(tokens)
    return placed


def _cached_turn(messages: list[dict[str, Any]]) -> int:
    """The index of the message whose end the next turn repeats: the last, or the one before a final assistant turn
    (a prefill, which the answer continues: the next turn has it whole, and a write of it would only cost)."""
    last = len(messages) - 1
    return last - 1 if last > 0 and messages[last]["role"] == "assistant" else last


def mark_claude(
    tools: list[dict[str, Any]], system: list[dict[str, Any]], messages: list[dict[str, Any]], minimum: int
) -> None:
    """Anthropic's `cache_control` on the last markable block of the turn the next one repeats, the last system
    block and the last tool, as `_chosen` picks them; the lists are changed in place (before `system_param`, which
    keeps a marked system prompt as blocks)."""
    taken: list[int] = []
    prefix = 0
    tools_end: int | None = None
    for part in (*tools, *system):
        prefix += _tokens(part)
        if "cache_control" in part:
            taken.append(prefix)
        if tools and part is tools[-1]:
            tools_end = prefix if "cache_control" not in part else None
    system_end = prefix if system and "cache_control" not in system[-1] else None
    turn = _cached_turn(messages)
    block: dict[str, Any] | None = None
    turn_end = None
    for index, message in enumerate(messages):
        for part in message["content"]:
            prefix += _tokens(part)
            taken += [prefix] * _marks(part)
            if index == turn and part["type"] not in UNMARKABLE:
                block, turn_end = part, (prefix if "cache_control" not in part else None)
    for position in _chosen([turn_end, system_end, tools_end], taken, minimum, apart=False):
        marked = (block, system[-1] if system else None, tools[-1] if tools else None)[position]
        if marked is not None:
            marked["cache_control"] = dict(AUTO_MARKER)


def mark_converse(body: dict[str, Any], minimum: int) -> None:
    """Converse's `cachePoint` after the last block (reasoning aside) of the turn the next one repeats, after the
    system prompt and after the tools, as `_chosen` picks them (each at least `minimum` tokens past any other: Bedrock
    creates a checkpoint only that far after the one before); `body` is changed in place."""
    tools: list[dict[str, Any]] = (body.get("toolConfig") or {}).get("tools") or []
    system: list[dict[str, Any]] = body.get("system") or []
    messages: list[dict[str, Any]] = body["messages"]
    taken: list[int] = []
    prefix = 0
    for block in tools:
        prefix += _tokens(block)
        if "cachePoint" in block:
            taken.append(prefix)
    tools_end = prefix if tools and "cachePoint" not in tools[-1] else None
    for block in system:
        prefix += _tokens(block)
        if "cachePoint" in block:
            taken.append(prefix)
    system_end = prefix if system and "cachePoint" not in system[-1] else None
    turn = _cached_turn(messages)
    where: int | None = None
    turn_end = None
    for index, message in enumerate(messages):
        content = message["content"]
        for position, block in enumerate(content):
            prefix += _tokens(block)
            if "cachePoint" in block:
                taken.append(prefix)
            elif index == turn and "reasoningContent" not in block:
                following = content[position + 1] if position + 1 < len(content) else {}
                where, turn_end = (position + 1, prefix) if "cachePoint" not in following else (None, None)
    for position in _chosen([turn_end, system_end, tools_end], taken, minimum, apart=True):
        if position == 0 and where is not None:
            messages[turn]["content"].insert(where, {"cachePoint": {"type": "default"}})
        elif position == 1:
            system.append({"cachePoint": {"type": "default"}})
        elif position == 2:
            tools.append({"cachePoint": {"type": "default"}})
