"""A fake Anthropic Messages API (`POST /v1/messages`), speaking Anthropic's documented wire format.

Behaviour is chosen by the requested model name, or by `metadata.user_id` (the OpenAI `user`) so a gateway
test can pick a fault on a configured model: `fail-429` (rate_limit_error with retry-after: 0), `fail-429-long`
(the same with retry-after: 20), `fail-500` (api_error), `fail-529` (overloaded_error), `fail-400`
(invalid_request_error), `fail-context` (Anthropic's `prompt is too long: N tokens > M maximum`), `fail-403`
(permission_error: the key may not use the model), `retired` (not_found_error `model: <name>`, as Anthropic answers a
model it does not have), `no-credit` (Anthropic's 400 for an account out of credit),
`fail-<status>;<header>=<value>;...` (that status with those headers, `tests/fakes/script.py`), `slow` (waits
`SLOW_SECONDS` before answering), `stream-cut` (a stream that stops mid-way, without `message_delta` or
`message_stop`), `search-cut` (a stream that stops once its search's result came, the same way),
`stream-overloaded` (a stream that ends after its first delta with Anthropic's in-stream `error` event, an
`overloaded_error`; with `echo-auth` its message quotes the request's `x-api-key`, as an upstream that echoes
credentials would), `bad-json` (a 200 whose body is not JSON), `slashes-escaped` (its JSON written with every `/`
escaped, `\\/`, as PHP's or Java's encoders write it), `max-tokens` (an answer that reached its output cap: its
text cut in half, `stop_reason: max_tokens`). A whitespace-only stop sequence is refused, as
Anthropic refuses it, an image of a type other than JPEG, PNG, GIF and WebP (`IMAGES`), and a beta's field without its
beta in `anthropic-beta` (`BETA_FIELDS`). A request with
tools and a `tool_choice` of `any` or `tool` is answered with a `tool_use` block (its input following the tool's
schema); a user message may script a tool call (`tests.fakes.script`), and `tool_choice: none` lets no tool be
called. A request whose messages hold `tool_use` or `tool_result` blocks and that defines no `tools` is refused, in
Anthropic's words, as the real API refuses it. A streamed tool call without arguments has
one `input_json_delta` whose `partial_json` is empty, as Anthropic streams it. A request asking for `thinking`, or
for a `thinker` model, gets a signed thinking block first (its text empty under `display: omitted`, the default of a
model whose id has `OMITS_THINKING`, as Claude Opus 4.7's is; for a said answer, what it was told to say); for a
`thinker`, an assistant turn that called a tool must come back opening with it, signature intact, as the real API
requires, and so must the final assistant turn, if it called a tool, of any request asking for `thinking`. The fake
signs its thinking as Anthropic does, verifiably: a block's signature is a MAC of its text under the fake's own key
(`signature_of`), a redacted block's data a payload sealed with it (`sealed`); in any turn, thinking on or off, a
thinking block with a field Claude's blocks do not have, or whose signature the fake did not give that text (empty,
another provider's, forged, or its text altered), and a redacted block whose data it did not issue, are refused, as
Anthropic refuses them. So are a tool use or tool result id not of `[a-zA-Z0-9_-]`, a `tool_result` that answers no
`tool_use` of the message before it, and a `tool_use` that the message after it does not answer, each in Anthropic's
words. Every answer's ids are its own (`fresh_id`), as Anthropic's are: its message's, its tool uses' and its server
tool uses'. With
`think-between` and thinking, the answer thinks between its blocks, as with interleaved thinking: its signed thinking
block, a call of the request's first tool, a second signed block (`THINKING_AGAIN`, `SIGNATURE_AGAIN`), a redacted
one (`REDACTED`), then the rest of the answer. An
`interleaved` model, given tools, thinks between its calls (a signed thinking block, a call, a second signed block,
text, a call to the last tool) and wants that turn back as it wrote it, every block in its place; a
`clear_thinking_...` context-management edit needs `thinking` on. Prompt caching is modelled: the prefix up to the
last `cache_control` marker is written the first time it is seen (`cache_creation_input_tokens`, in
`cache_creation` by that marker's `ttl`: `1h` or the default 5 minutes) and read after (`cache_read_input_tokens`);
as Anthropic does, a marker reads the longest prefix written before that ends at it or at one of the 20 blocks before
it (the markers themselves no part of a prefix: the next turn of a session, its marker moved to its new last block,
reads what the turn before wrote), and only what follows that is written.
With a web search tool (`web_search_20250305`), the answer searches once before its text (a `server_tool_use`
block and its `web_search_tool_result`), counted in `usage.server_tool_use.web_search_requests`, and its text cites
the result (`citations`, streamed as a `citations_delta` ahead of the text). A request's
`speed` (fast mode) and `inference_geo` come back in its usage, where Anthropic reports the speed and the place the
answer ran at; with `standard-speed` fast mode asked for is served at standard speed, and its usage says so; with
`us-workspace` a request that sets no `inference_geo` runs US-only, as in a workspace whose default geo is `us`.
With the advisor tool (`advisor_20260301`), the answer consults the advisor once before its text (a `server_tool_use`
block named `advisor` and its `advisor_tool_result`), and `usage.iterations` has the advisor's sampling in an
`advisor_message` entry with the tool's `model` (`ADVICE_TOKENS` out, the prompt in), beside a `message` entry with
the top level's counts, which leave the advisor's out; with `long-advice`, the advice is `LONG_ADVICE`, about 7,600
tokens, all of them the advisor's output. A request asking for server-side compaction
(`context_management.edits` with `compact_20260112`) whose input reaches its trigger (150,000 tokens unless set) is
compacted as the compaction docs show it: a `compaction` block first, the top-level usage counting the sampling after
it, and `usage.iterations` both, the compaction's tokens in its own entry alone (the prompt's cache reads and writes
among them: the compaction is the sampling that reads the prompt).
Message threads (beta `message-threads-2026-08-12`) are kept as the docs describe them: a request with `thread:
{"type": "create"}` stores its conversation, `system` and `tools` with the answer under the answer's id; one with
`{"type": "continue", "previous_message_id": ...}` brings only the new messages, and no `system` or `tools` (refused,
as the API refuses them), and is answered, and billed, as the whole conversation rebuilt (its `tools` too: an advisor
the thread's `create` offered advises the `continue`); an id the fake does not hold is Anthropic's 404
`thread_not_found`. The threads it holds are on `app.state.threads`, by their last answer's id: a test empties it
where Anthropic drops a thread (its lifetime ended).
`POST /v1/messages/count_tokens` counts, refusing the blocks `POST /v1/messages` refuses. Every request (path,
query, headers, body) is recorded on `app.state.requests`.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import hmac
import re
import secrets
import string
from collections.abc import AsyncIterator
from typing import Any

import orjson
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response, StreamingResponse
from starlette.routing import Route

from tests.fakes.script import (
    Said,
    ScriptedCall,
    escaped,
    escaping,
    headed_fault,
    input_for,
    pieces,
    prompt_cache_use,
    scripted_turn,
    texts,
)

API_KEY = "test-anthropic-key"
TEXT = "Hello from fake Anthropic."
TOOL_INPUT = {"city": "Paris"}
OUTPUT_TOKENS = 7
SLOW_SECONDS = 2.0
THINKING = "The user wants a greeting."
THINKING_AGAIN = "Now the rest of the answer."
THINKING_FIELDS = {"thinking": {"type", "thinking", "signature"}, "redacted_thinking": {"type", "data"}}
# The fake's own secret, as Anthropic's: a thinking block's signature is a MAC of its text, a redacted block's data a
# sealed payload, so that any other (another provider's reasoning, a forged or altered block) is refused, as
# Anthropic refuses it.
SIGNING_KEY = b"fake-anthropic-thinking-key"
# Tool use ids as Anthropic writes them (`toolu_01` and 22 characters) and the only ones it takes (`CALL_ID`).
ID_CHARACTERS = string.ascii_letters + string.digits
CALL_ID = re.compile(r"^[a-zA-Z0-9_-]+$")


TOOL_NAME = re.compile(r"[a-zA-Z0-9_-]{1,128}")  # what Anthropic takes for a tool's name


def signature_of(thinking: str) -> str:
    """The signature the fake gives a thinking block of this text (and takes back with that text alone)."""
    mac = hmac.new(SIGNING_KEY, b"thinking\0" + thinking.encode(), hashlib.sha256).digest()
    return "Eq" + base64.b64encode(mac).decode()


def sealed(payload: bytes) -> str:
    """A redacted thinking block's `data`: the payload with its MAC, opaque to the client."""
    return base64.b64encode(payload + hmac.new(SIGNING_KEY, payload, hashlib.sha256).digest()).decode()


def unsealed(data: object) -> bool:
    """Whether a redacted thinking block's `data` is one the fake issued (`sealed`)."""
    try:
        raw = base64.b64decode(str(data), validate=True)
    except ValueError:
        return False
    payload, mac = raw[:-32], raw[-32:]
    return len(raw) > 32 and hmac.compare_digest(mac, hmac.new(SIGNING_KEY, payload, hashlib.sha256).digest())


def signed_by_fake(block: dict[str, Any]) -> bool:
    """Whether a thinking block is one the fake wrote, unchanged: its signature that of its text."""
    signature, thinking = block.get("signature"), block.get("thinking")
    return isinstance(signature, str) and isinstance(thinking, str) and signature == signature_of(thinking)


def fresh_id(prefix: str) -> str:
    """An id of Anthropic's shape, new for each answer (Claude Code takes a tool use id seen before for a repeat)."""
    return prefix + "".join(secrets.choice(ID_CHARACTERS) for _ in range(22))


SIGNATURE = signature_of(THINKING)
SIGNATURE_AGAIN = signature_of(THINKING_AGAIN)
REDACTED = sealed(b"fake redacted thinking")

# An `interleaved` model thinks between its calls (interleaved thinking): its second thought, signed, and its text.
SECOND_THINKING = "Now the second tool."
SECOND_SIGNATURE = signature_of(SECOND_THINKING)
INTERLEAVED_TEXT = "And the other one."
# A model id part whose thinking is omitted unless `display: summarized` asks (Anthropic: "the default depends on the
# model"; Claude Opus 4.7 omits it).
OMITS_THINKING = "claude-opus-4-7"
COMPACTION_SUMMARY = "Summary of the conversation: the user is building a website and asked for its layout."
COMPACTION_TRIGGER = 150_000  # input tokens, unless the edit sets its own
ADVICE = "Plan: read the layout first, then answer."
ADVICE_TOKENS = 1500  # an advisor's output, thinking included (Anthropic: typically 1,400 to 1,800)
LONG_ADVICE = " ".join(f"Step {n}: read the layout's part {n} first, then answer for it." for n in range(1, 481))
OUTPUT_LIMITS = {"claude-haiku-4-5": 64_000, "claude-3-5-haiku-latest": 8_192}  # refused past these, as Anthropic does
# Body fields Anthropic knows only under a beta: without it, the field is unknown to the API.
# A beta field and the betas that admit it (context editing's, or compaction's, whose edit rides in the same field).
BETA_FIELDS = {
    "context_management": ("context-management-2025-06-27", "compact-2026-01-12"),
    "thread": ("message-threads-2026-08-12",),
}
# What a thread's `create` sets for the whole thread: a `continue` may not send it again.
THREAD_FIELDS = ("system", "tools")


# Anthropic's words for an organisation out of credit (a 400 `invalid_request_error`, not its `billing_error`).
NO_CREDIT = (
    "Your credit balance is too low to access the Anthropic API. Please go to Plans & Billing to upgrade or purchase "
    "credits."
)


def _error(
    status: int, kind: str, message: str, headers: dict[str, str] | None = None, code: str | None = None
) -> Response:
    error: dict[str, Any] = {"type": kind, "message": message}
    if code is not None:
        error["details"] = {"error_code": code}
    body = {"type": "error", "error": error, "request_id": "req_fake"}
    return Response(orjson.dumps(body), status, headers=headers, media_type="application/json")


def input_tokens(body: dict[str, Any]) -> int:
    return max(1, len(orjson.dumps([body.get("system"), body.get("messages")])) // 4)


def unmarked(value: Any) -> Any:
    """A prompt part without its cache markers: what a cached prefix is known by."""
    if isinstance(value, dict):
        return {name: unmarked(inner) for name, inner in value.items() if name != "cache_control"}
    return [unmarked(inner) for inner in value] if isinstance(value, list) else value


def cache_use(body: dict[str, Any], cached: set[bytes]) -> tuple[int, int, str]:
    """The tokens a request reads from the cache (`cached`: the prefixes written so far) and writes to it, and how
    long its last marker keeps them (`5m` or `1h`): the prompt (tools, system, then messages) up to and including
    its last block with `cache_control` is written, but for the longest prefix read (`prompt_cache_use`)."""
    blocks: list[Any] = list(body.get("tools") or [])
    system = body.get("system")
    blocks += system if isinstance(system, list) else [system] if system else []
    for message in body.get("messages") or []:
        content = message.get("content")
        blocks += content if isinstance(content, list) else [content]
    marked = [i for i, block in enumerate(blocks) if isinstance(block, dict) and "cache_control" in block]
    if not marked:
        return 0, 0, "5m"
    ttl = blocks[marked[-1]]["cache_control"].get("ttl") or "5m"
    known = unmarked(blocks)
    ends = [i + 1 for i in marked]
    read, written = prompt_cache_use(blocks, ends, lambda length: orjson.dumps(known[:length]), cached)
    return read, written, ttl


def compaction_trigger(body: dict[str, Any]) -> int | None:
    """The input tokens at which the request asks to be compacted, None when it does not ask."""
    edits = (body.get("context_management") or {}).get("edits") or []
    for edit in edits:
        if isinstance(edit, dict) and edit.get("type") == "compact_20260112":
            return int((edit.get("trigger") or {}).get("value", COMPACTION_TRIGGER))
    return None


def compacted(body: dict[str, Any], counts: dict[str, Any]) -> dict[str, Any]:
    """The usage of an answer compacted first (`counts`: its usage uncompacted): the compaction read the whole
    prompt, with what the prompt read from the cache and wrote to it, and wrote the summary; the answer's own sampling,
    the only one the top level counts, read the summary."""
    summary = len(COMPACTION_SUMMARY) // 4
    none = {"cache_read_input_tokens": 0, "cache_creation_input_tokens": 0}
    cached = {name: counts[name] for name in (*none, "input_tokens", "cache_creation")}
    compaction = {"type": "compaction", **cached, "output_tokens": summary}
    message = {"type": "message", "input_tokens": summary, "output_tokens": OUTPUT_TOKENS, **none}
    cache = {"ephemeral_5m_input_tokens": 0, "ephemeral_1h_input_tokens": 0}
    return {**counts, "input_tokens": summary, **none, "cache_creation": cache, "iterations": [compaction, message]}


def faults(body: dict[str, Any]) -> str:
    """Where a request names the faults it asks for: its model, and its `metadata.user_id`."""
    return f"{body.get('model', '')} {(body.get('metadata') or {}).get('user_id', '')}"


def advisor(body: dict[str, Any]) -> dict[str, Any] | None:
    """The advisor tool the request offers, if any."""
    tools = body.get("tools") or []
    return next((t for t in tools if str(t.get("type", "")).startswith("advisor_")), None)


def advice(body: dict[str, Any]) -> str:
    """The advisor's advice to the request (`LONG_ADVICE` with `long-advice`)."""
    return LONG_ADVICE if "long-advice" in faults(body) else ADVICE


def advised(body: dict[str, Any], counts: dict[str, Any]) -> dict[str, Any]:
    """The usage of an answer that consulted the advisor once (`counts`: the executor's own, the top level)."""
    tool = advisor(body) or {}
    none = {"cache_read_input_tokens": 0, "cache_creation_input_tokens": 0}
    advisor_in = {"type": "advisor_message", "model": tool.get("model"), "input_tokens": input_tokens(body), **none}
    message = {"type": "message", **{name: counts[name] for name in ("input_tokens", *none)}}
    advisor_out = max(ADVICE_TOKENS, len(advice(body)) // 4)
    return {
        **counts,
        "iterations": [{**message, "output_tokens": OUTPUT_TOKENS}, {**advisor_in, "output_tokens": advisor_out}],
    }


def searches(body: dict[str, Any]) -> int:
    """The searches the answer runs: one when the request offers the web search tool and lets it be called (none
    under `tool_choice: none`, which forbids the server tools too)."""
    return 1 if any(str(t.get("type", "")).startswith("web_search_") for t in _callable(body)) else 0


SEARCH_URL, SEARCH_TITLE = "https://example.com/", "Example"
# A text's citation of the search's result, as Anthropic's web search docs show one.
SEARCH_CITATION = {
    "type": "web_search_result_location",
    "url": SEARCH_URL,
    "title": SEARCH_TITLE,
    "encrypted_index": "Eo8BCioIAhgBIiQyYjQ0OWJmZi1lNm..",
    "cited_text": "This domain is for use in illustrative examples in documents.",
}


def search_blocks() -> list[dict[str, Any]]:
    """A search's `server_tool_use` block and its result, paired by an id of their own."""
    search_id = fresh_id("srvtoolu_01")
    result = {
        "type": "web_search_result",
        "url": SEARCH_URL,
        "title": SEARCH_TITLE,
        "encrypted_content": "EqgfCioIARgBIiQ3fakeSearchResult==",
        "page_age": "April 30, 2025",
    }
    return [
        {"type": "server_tool_use", "id": search_id, "name": "web_search", "input": {"query": "fake search"}},
        {"type": "web_search_tool_result", "tool_use_id": search_id, "content": [result]},
    ]


def _script(body: dict[str, Any]) -> ScriptedCall | str | None:
    messages = body.get("messages") or []
    users = [texts(m.get("content")) for m in messages if m.get("role") == "user"]
    # The last turn: a `system` message after it (Claude Code's, once it switched to its fallback model) is none.
    turns = [m for m in messages if m.get("role") != "system"]
    last = turns[-1].get("content") if turns else None
    results = (
        [b for b in last if isinstance(b, dict) and b.get("type") == "tool_result"] if isinstance(last, list) else []
    )
    result = texts(results[-1].get("content")) if results else None
    return scripted_turn(users, [str(t.get("name")) for t in _callable(body)], result)


def _interleaved(body: dict[str, Any], ids: tuple[str, str] | None = None) -> list[dict[str, Any]]:
    """An `interleaved` model's turn: it thinks, calls the first tool, thinks again, says so and calls the last (its
    calls' `ids`, new ones unless given)."""
    tools = body.get("tools") or []
    first, last = tools[0], tools[-1]
    first_id, last_id = ids or (fresh_id("toolu_01"), fresh_id("toolu_01"))
    return [
        {"type": "thinking", "thinking": THINKING, "signature": SIGNATURE},
        {
            "type": "tool_use",
            "id": first_id,
            "name": first["name"],
            "input": input_for(first.get("input_schema"), TOOL_INPUT),
        },
        {"type": "thinking", "thinking": SECOND_THINKING, "signature": SECOND_SIGNATURE},
        {"type": "text", "text": INTERLEAVED_TEXT},
        {
            "type": "tool_use",
            "id": last_id,
            "name": last["name"],
            "input": input_for(last.get("input_schema"), TOOL_INPUT),
        },
    ]


def _modified_turn(body: dict[str, Any]) -> str | None:
    """An `interleaved` model's turn (the one holding its second thought) must come back as it wrote it, its thinking
    blocks unmodified and in their places, as the real API requires of thinking blocks."""
    for i, message in enumerate(body.get("messages") or []):
        content = message.get("content")
        if message.get("role") != "assistant" or not isinstance(content, list):
            continue
        if not any(block.get("thinking") == SECOND_THINKING for block in content):
            continue
        ids = [str(block.get("id")) for block in content if block.get("type") == "tool_use"]
        if len(ids) != 2 or content != _interleaved(body, (ids[0], ids[1])):
            return (
                f"messages.{i}.content: `thinking` or `redacted_thinking` blocks in the latest assistant message "
                "cannot be modified. These blocks must remain as they were in the original response."
            )
    return None


def _content(body: dict[str, Any], tool: str | None) -> list[dict[str, Any]]:
    """The answer's blocks: a thinking block if asked for, then a tool call, the scripted turn, or text."""
    content: list[dict[str, Any]] = []
    script = _script(body)
    last = (body.get("messages") or [{}])[-1].get("content")
    answered = isinstance(last, list) and any(block.get("type") == "tool_result" for block in last)
    if "interleaved" in str(body.get("model")) and _callable(body) and script is None and not answered:
        return _interleaved(body)
    thinking = body.get("thinking") or {}
    if thinking.get("type") in ("enabled", "adaptive") or "thinker" in str(body.get("model")):
        display = thinking.get("display") or ("omitted" if OMITS_THINKING in str(body.get("model")) else "summarized")
        text = "" if display == "omitted" else script if isinstance(script, Said) else THINKING
        content.append({"type": "thinking", "thinking": text, "signature": signature_of(text)})
        if "think-between" in faults(body):
            content += _thinks_between(body)
    if searches(body) and not tool:
        content.extend(search_blocks())
    if advisor(body) and not tool:
        advisor_id = fresh_id("srvtoolu_01")
        content.append({"type": "server_tool_use", "id": advisor_id, "name": "advisor", "input": {}})
        result = {"type": "advisor_result", "text": advice(body), "stop_reason": "end_turn"}
        content.append({"type": "advisor_tool_result", "tool_use_id": advisor_id, "content": result})
    schemas = {t.get("name"): t.get("input_schema") for t in body.get("tools") or []}
    if tool:
        content.append(
            {
                "type": "tool_use",
                "id": fresh_id("toolu_01"),
                "name": tool,
                "input": input_for(schemas.get(tool), TOOL_INPUT),
            }
        )
    elif isinstance(script, ScriptedCall):
        call = {"type": "tool_use", "id": fresh_id("toolu_01"), "name": script.name, "input": script.arguments}
        content.append(call)
    else:
        text: dict[str, Any] = {"type": "text", "text": script if isinstance(script, str) else TEXT}
        if searches(body):  # (the text cites what the search found)
            text["citations"] = [SEARCH_CITATION]
        content.append(text)
    return content


def _thinks_between(body: dict[str, Any]) -> list[dict[str, Any]]:
    """What `think-between` adds after the first thinking block: a call of the first tool, then more thinking."""
    again = [
        {"type": "thinking", "thinking": THINKING_AGAIN, "signature": SIGNATURE_AGAIN},
        {"type": "redacted_thinking", "data": REDACTED},
    ]
    tools = _callable(body)
    if not tools:
        return again
    tool_input = input_for(tools[0].get("input_schema"), TOOL_INPUT)
    return [{"type": "tool_use", "id": fresh_id("toolu_01"), "name": tools[0]["name"], "input": tool_input}, *again]


def _refused_block(messages: list[Any]) -> str | None:
    """A content block Anthropic refuses, as it names it: a tool use's id, or a tool result's, not of
    `[a-zA-Z0-9_-]` (another provider's, Kimi K2's `functions.get_weather:0`); a thinking block with a field Claude's
    blocks do not have, without its signature, or with a signature the fake did not give that text (Anthropic checks
    the signature of every thinking block of the history, thinking on or off: an empty one, what a gateway writes for
    another provider's reasoning, is "Invalid `signature`", as a forged or altered one is); a redacted thinking block
    whose data the fake did not issue."""
    for i, message in enumerate(messages):
        for j, block in enumerate(message.get("content") if isinstance(message.get("content"), list) else ()):
            kind = block.get("type")
            field = {"tool_use": "id", "tool_result": "tool_use_id"}.get(kind)
            call_id = block.get(field) if field else None
            if field is not None and not (isinstance(call_id, str) and CALL_ID.match(call_id)):
                return f"messages.{i}.content.{j}.{kind}.{field}: String should match pattern '^[a-zA-Z0-9_-]+$'"
            allowed = THINKING_FIELDS.get(kind, set(block))
            for name in sorted(set(block) - allowed):
                return f"messages.{i}.content.{j}.{kind}.{name}: Extra inputs are not permitted"
            if kind == "redacted_thinking" and not unsealed(block.get("data")):
                return f"messages.{i}.content.{j}: Invalid `data` in `redacted_thinking` block"
            if kind != "thinking":
                continue
            if "signature" not in block:
                return f"messages.{i}.content.{j}.thinking.signature: Field required"
            if not signed_by_fake(block):
                return f"messages.{i}.content.{j}: Invalid `signature` in `thinking` block"
    return None


def _unpaired(messages: list[Any]) -> str | None:
    """A tool result that answers no tool use of the message before it, or a tool use that the message after it does
    not answer, as Anthropic names them (a final assistant message's tool uses have no next message to be answered
    in)."""
    ids = [
        [(b.get("type"), b.get("tool_use_id") or b.get("id")) for b in m.get("content") if isinstance(b, dict)]
        if isinstance(m.get("content"), list)
        else []
        for m in messages
    ]
    for i, blocks in enumerate(ids):
        called = {call_id for kind, call_id in ids[i - 1] if kind == "tool_use"} if i else set()
        for j, (kind, call_id) in enumerate(blocks):
            if kind == "tool_result" and call_id not in called:
                return (
                    f"messages.{i}.content.{j}: unexpected `tool_use_id` found in `tool_result` blocks: {call_id}. "
                    "Each `tool_result` block must have a corresponding `tool_use` block in the previous message."
                )
        if i + 1 < len(ids):
            answered = {call_id for kind, call_id in ids[i + 1] if kind == "tool_result"}
            unanswered = [call_id for kind, call_id in blocks if kind == "tool_use" and call_id not in answered]
            if unanswered:
                return (
                    f"messages.{i}: `tool_use` ids were found without `tool_result` blocks immediately after: "
                    f"{', '.join(map(str, unanswered))}. Each `tool_use` block must have a corresponding `tool_result` "
                    "block in the next message."
                )
    return None


def _unsigned_turn(messages: list[Any], *, final_only: bool = False) -> str | None:
    """With thinking on, an assistant turn that called a tool must open with its signed thinking: every such turn
    for a `thinker`, and the final assistant turn (the one a tool-use loop
    continues) when the request asks for thinking, the rule Anthropic documents (there any signed thinking block will
    do; one the fake did not sign is refused by `_refused_block`)."""
    assistants = [i for i, message in enumerate(messages) if message.get("role") == "assistant"]
    for i, message in enumerate(messages):
        content = message.get("content")
        if message.get("role") != "assistant" or not isinstance(content, list):
            continue
        if final_only and i != assistants[-1]:
            continue
        if not any(block.get("type") == "tool_use" for block in content):
            continue
        first = content[0]
        if first.get("type") not in ("thinking", "redacted_thinking"):
            return (
                f"messages.{i}.content.0.type: Expected `thinking` or `redacted_thinking`, but found "
                f"`{first.get('type')}`. When `thinking` is enabled, a final `assistant` message must start "
                "with a thinking block (preceeding the lastmost set of `tool_use` and `tool_result` blocks)."
            )
    return None


IMAGES = ("image/jpeg", "image/png", "image/gif", "image/webp")  # the only image types Anthropic takes


# The web search tool's fields, and its `user_location`'s, as Anthropic's API reference lists them.
SEARCH_TOOL_FIELDS = {
    "type", "name", "max_uses", "allowed_domains", "blocked_domains", "user_location", "cache_control",
}  # fmt: skip
LOCATION_FIELDS = {"type", "city", "region", "country", "timezone"}


def _search_tool_refused(i: int, tool: dict[str, Any]) -> str | None:
    """A web search tool Anthropic refuses: a field it does not have, a name other than `web_search`, a `max_uses`
    that is not a positive integer, a location that is not `approximate`."""
    where = f"tools.{i}.{tool['type']}"
    extra = sorted(set(tool) - SEARCH_TOOL_FIELDS)
    if extra:
        return f"{where}.{extra[0]}: Extra inputs are not permitted"
    if tool.get("name") != "web_search":
        return f"{where}.name: Input should be 'web_search'"
    uses = tool.get("max_uses")
    if uses is not None and (not isinstance(uses, int) or isinstance(uses, bool) or uses < 1):
        return f"{where}.max_uses: Input should be greater than 0"
    location = tool.get("user_location")
    if location is not None and (location.get("type") != "approximate" or set(location) - LOCATION_FIELDS):
        return f"{where}.user_location: Input should be an approximate location"
    return None


def _problem(body: dict[str, Any]) -> str | None:
    """What the real API would reject in a body, for the few rules an adapter may get wrong."""
    if not isinstance(body.get("max_tokens"), int):
        return "max_tokens: Field required"
    if "interleaved" in str(body.get("model")):
        modified = _modified_turn(body)
        if modified:
            return modified
    most = OUTPUT_LIMITS.get(str(body.get("model")))
    if most is not None and body["max_tokens"] > most:
        return (
            f"max_tokens: {body['max_tokens']} > {most}, which is the maximum allowed number of output tokens for "
            f"{body['model']}"
        )
    messages = body.get("messages")
    if not isinstance(messages, list) or not messages:
        return "messages: at least one message is required"
    for i, message in enumerate(messages):
        # `system` messages inside `messages` are a beta of Anthropic's, sent by current Claude Code.
        if message.get("role") not in ("user", "assistant", "system"):
            return f"messages.{i}.role: Input should be 'user', 'assistant' or 'system'"
        for j, block in enumerate(message.get("content") if isinstance(message.get("content"), list) else ()):
            source = block.get("source") if block.get("type") == "image" else None
            if isinstance(source, dict) and source.get("type") == "base64" and source.get("media_type") not in IMAGES:
                return (
                    f"messages.{i}.content.{j}.image.source.base64.media_type: Input should be 'image/jpeg', "
                    "'image/png', 'image/gif' or 'image/webp'"
                )
    refused = _refused_block(messages) or _unpaired(messages)
    if refused:
        return refused
    if body.get("tool_choice") and not body.get("tools"):
        return "tool_choice may only be specified while providing tools."
    if not body.get("tools") and any(
        block.get("type") in ("tool_use", "tool_result")
        for message in messages
        for block in (message.get("content") if isinstance(message.get("content"), list) else ())
    ):
        return "Requests which include `tool_use` or `tool_result` blocks must define tools."
    for i, tool in enumerate(body.get("tools") or ()):
        if tool.get("type") in (None, "custom") and not TOOL_NAME.fullmatch(str(tool.get("name"))):
            return f"tools.{i}.custom.name: String should match pattern '^[a-zA-Z0-9_-]{{1,128}}$'"
        if str(tool.get("type")).startswith("web_search_"):
            refused = _search_tool_refused(i, tool)
            if refused:
                return refused
    if any(not str(sequence).strip() for sequence in body.get("stop_sequences") or ()):
        return "stop_sequences: each stop sequence must contain non-whitespace"
    thinking = (body.get("thinking") or {}).get("type") in ("enabled", "adaptive")
    for edit in (body.get("context_management") or {}).get("edits") or ():
        if str(edit.get("type")).startswith("clear_thinking") and not thinking:
            return f"`{edit['type']}` strategy requires `thinking` to be enabled"
    if "thinker" in str(body.get("model")):
        return _unsigned_turn(messages)
    if thinking:
        return _unsigned_turn(messages, final_only=True)
    return None


def _fault(faults: str) -> Response | None:
    """The error a fault name in the model (or `metadata.user_id`) asks for."""
    headed = headed_fault(faults)
    if headed is not None:
        status, headers = headed
        kind = {429: "rate_limit_error", 529: "overloaded_error"}.get(status, "api_error")
        failure = _error(status, kind, f"Scripted failure {status}")
        failure.raw_headers += headers
        return failure
    if "fail-403" in faults:
        return _error(403, "permission_error", "Your API key does not have permission to use the specified resource.")
    if "no-credit" in faults:
        return _error(400, "invalid_request_error", NO_CREDIT)
    if "retired" in faults:
        return _error(404, "not_found_error", f"model: {faults.split(' ')[0]}")
    if "fail-429-long" in faults:  # a wait as Anthropic names one for its per-minute token limits
        return _error(
            429,
            "rate_limit_error",
            "This request would exceed your organization's rate limit of 30,000 input tokens per minute.",
            {"retry-after": "20", "x-should-retry": "true"},
        )
    if "fail-429" in faults:
        return _error(
            429, "rate_limit_error", "Number of request tokens has exceeded your rate limit.", {"retry-after": "0"}
        )
    if "fail-500" in faults:
        return _error(500, "api_error", "Internal server error")
    if "fail-529" in faults:
        return _error(529, "overloaded_error", "Overloaded")
    if "fail-400" in faults:
        return _error(400, "invalid_request_error", "messages: text content blocks must be non-empty")
    if "fail-context" in faults:
        return _error(400, "invalid_request_error", "prompt is too long: 210000 tokens > 200000 maximum")
    return None


def _callable(body: dict[str, Any]) -> list[dict[str, Any]]:
    """The tools the model may call: none under `tool_choice: none`, which offers them without letting any be
    called."""
    return [] if (body.get("tool_choice") or {}).get("type") == "none" else body.get("tools") or []


def _tool_name(body: dict[str, Any]) -> str | None:
    tools = body.get("tools") or []
    choice = body.get("tool_choice") or {}
    if not tools or choice.get("type") not in ("any", "tool"):
        return None
    return str(choice.get("name") or tools[0]["name"])


def _pieces(block: dict[str, Any]) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """A whole content block as Anthropic streams it: its empty start, then its deltas."""
    if block["type"] == "thinking":
        thought = block["thinking"]
        said = pieces(thought) if isinstance(thought, Said) else [thought] if thought else []
        deltas = [{"type": "thinking_delta", "thinking": piece} for piece in said]
        return {"type": "thinking", "thinking": "", "signature": ""}, [
            *deltas,
            {"type": "signature_delta", "signature": block["signature"]},
        ]
    if block["type"] in ("web_search_tool_result", "advisor_tool_result", "redacted_thinking"):
        return block, []
    if block["type"] == "compaction":  # its summary in one delta
        return {"type": "compaction"}, [{"type": "compaction_delta", "content": block["content"]}]
    if block["type"] in ("tool_use", "server_tool_use"):
        text = orjson.dumps(block["input"]).decode() if block["input"] else ""  # no arguments: no JSON at all
        parts = ["", text[: len(text) // 2], text[len(text) // 2 :]] if text else [""]
        return {**block, "input": {}}, [{"type": "input_json_delta", "partial_json": p} for p in parts]
    # A text citing search results opens with them, each in a `citations_delta`, as Anthropic streams them.
    cited = [{"type": "citations_delta", "citation": citation} for citation in block.get("citations") or ()]
    texts = [{"type": "text_delta", "text": piece} for piece in pieces(block["text"])]
    return {"type": "text", "text": ""}, [*cited, *texts]


def _sse(event: str, data: dict[str, Any]) -> bytes:
    return b"event: " + event.encode() + b"\ndata: " + orjson.dumps(data) + b"\n\n"


def create_app() -> Starlette:
    requests: list[dict[str, Any]] = []
    cached: set[bytes] = set()
    # Each thread's conversation by the id of its last answer: the fields its `create` set, and its messages.
    threads: dict[str, tuple[dict[str, Any], list[Any]]] = {}

    def whole(body: dict[str, Any]) -> tuple[dict[str, Any], Response | None]:
        """The conversation a request asks about: a thread's `continue` rebuilt with what the thread holds, any other
        as sent (without its `thread`)."""
        thread = body.get("thread")
        if not isinstance(thread, dict):
            return body, None
        unthreaded = {name: value for name, value in body.items() if name != "thread"}
        if thread.get("type") != "continue":
            return unthreaded, None
        repeated = [name for name in THREAD_FIELDS if name in body]
        if repeated:
            return body, _error(400, "invalid_request_error", f"{repeated[0]}: a thread keeps its own; leave it out")
        held = threads.get(str(thread.get("previous_message_id")))
        if held is None:
            message = "No usable Thread state was found for previous_message_id."
            return body, _error(404, "not_found_error", message, code="thread_not_found")
        fields, messages = held
        return {**unthreaded, **fields, "messages": [*messages, *(body.get("messages") or [])]}, None

    def usage(body: dict[str, Any]) -> dict[str, Any]:
        read, written, ttl = cache_use(body, cached)
        counts: dict[str, Any] = {
            "input_tokens": max(1, input_tokens(body) - read - written),
            "cache_creation_input_tokens": written,
            "cache_read_input_tokens": read,
            "cache_creation": {
                "ephemeral_5m_input_tokens": 0 if ttl == "1h" else written,
                "ephemeral_1h_input_tokens": written if ttl == "1h" else 0,
            },
            "server_tool_use": {"web_search_requests": searches(body)},
        }
        for name in ("speed", "inference_geo"):
            if body.get(name) is not None:
                counts[name] = body[name]
        if "speed" in counts and "standard-speed" in faults(body):
            counts["speed"] = "standard"
        if "inference_geo" not in counts and "us-workspace" in faults(body):
            counts["inference_geo"] = "us"  # (a workspace whose default inference geo is `us`)
        trigger = compaction_trigger(body)
        if trigger is not None and input_tokens(body) >= trigger:
            return compacted(body, counts)
        return advised(body, counts) if advisor(body) else counts

    async def received(request: Request) -> tuple[dict[str, Any], Response | None]:
        raw = await request.body()
        body = orjson.loads(raw) if raw else {}
        requests.append(
            {"path": request.url.path, "query": request.url.query, "headers": dict(request.headers), "json": body}
        )
        if request.headers.get("x-api-key") != API_KEY:
            return body, _error(401, "authentication_error", "invalid x-api-key")
        if not request.headers.get("anthropic-version"):
            return body, _error(400, "invalid_request_error", "anthropic-version: header is required")
        betas = {beta.strip() for value in request.headers.getlist("anthropic-beta") for beta in value.split(",")}
        for field, admitting in BETA_FIELDS.items():
            if field in body and not any(beta in betas for beta in admitting):
                return body, _error(400, "invalid_request_error", f"{field}: Extra inputs are not permitted")
        return body, None

    async def count_tokens(request: Request) -> Response:
        body, failure = await received(request)
        if failure is not None:
            return failure
        if "max_tokens" in body:
            return _error(400, "invalid_request_error", "max_tokens: Extra inputs are not permitted")
        fault = _fault(str(body.get("model", "")))
        if fault is not None:
            return fault
        refused = _refused_block(body.get("messages") or [])  # (the blocks are read as `POST /v1/messages` reads them)
        if refused:
            return _error(400, "invalid_request_error", refused)
        return Response(orjson.dumps({"input_tokens": input_tokens(body)}), media_type="application/json")

    async def messages(request: Request) -> Response:
        sent, failure = await received(request)
        if failure is not None:
            return failure
        body, failure = whole(sent)
        if failure is not None:
            return failure
        model = str(body.get("model", ""))
        asked = faults(body)
        fault = _fault(asked)
        if fault is not None:
            return fault
        problem = _problem(body)
        if problem:
            return _error(400, "invalid_request_error", problem)
        if "slow" in asked:
            await asyncio.sleep(SLOW_SECONDS)
        if "bad-json" in asked:
            return Response(b"{not json", 200, media_type="application/json")
        tool = _tool_name(body)
        content = _content(body, tool)
        stop = "tool_use" if any(block["type"] == "tool_use" for block in content) else "end_turn"
        if "max-tokens" in asked and content[-1]["type"] == "text":
            words = content[-1]["text"].split(" ")
            content[-1] = {"type": "text", "text": " ".join(words[: len(words) // 2])}
            stop = "max_tokens"
        trigger = compaction_trigger(body)
        if trigger is not None and input_tokens(body) >= trigger:
            content.insert(0, {"type": "compaction", "content": COMPACTION_SUMMARY})
        message_id = fresh_id("msg_01")
        if "thread" in sent:
            fields = {name: body[name] for name in THREAD_FIELDS if name in body}
            threads[message_id] = fields, [*body["messages"], {"role": "assistant", "content": content}]
        if body.get("stream"):
            overloaded = None
            if "stream-overloaded" in asked:
                echoed = f" (x-api-key: {request.headers['x-api-key']})" if "echo-auth" in asked else ""
                overloaded = {"type": "error", "error": {"type": "overloaded_error", "message": "Overloaded" + echoed}}
            cut = "stream-cut" in asked
            stream = escaping(_stream(body, message_id, model, content, stop, cut, overloaded), asked)
            return StreamingResponse(stream, media_type="text/event-stream")
        answer = {
            "id": message_id,
            "type": "message",
            "role": "assistant",
            "model": model,
            "content": content,
            "stop_reason": stop,
            "stop_sequence": None,
            "usage": {**usage(body), "output_tokens": OUTPUT_TOKENS, "service_tier": "standard"},
        }
        return Response(escaped(orjson.dumps(answer), asked), media_type="application/json")

    async def _stream(
        body: dict[str, Any],
        message_id: str,
        model: str,
        content: list[dict[str, Any]],
        stop: str,
        cut: bool,
        error: dict[str, Any] | None = None,
    ) -> AsyncIterator[bytes]:
        final = usage(body)
        start: dict[str, Any] = {
            "id": message_id,
            "type": "message",
            "role": "assistant",
            "model": model,
            "content": [],
            "stop_reason": None,
            "stop_sequence": None,
            # No search nor compaction has run yet when the message starts: they come with `message_delta`.
            "usage": {
                **{name: count for name, count in final.items() if name != "iterations"},
                "output_tokens": 1,
                "server_tool_use": {"web_search_requests": 0},
            },
        }
        yield _sse("message_start", {"type": "message_start", "message": start})
        yield _sse("ping", {"type": "ping"})
        for index, whole in enumerate(content):
            block, deltas = _pieces(whole)
            yield _sse("content_block_start", {"type": "content_block_start", "index": index, "content_block": block})
            for i, delta in enumerate(deltas):
                if cut and i == 2:
                    return
                yield _sse("content_block_delta", {"type": "content_block_delta", "index": index, "delta": delta})
                if error is not None:
                    yield _sse("error", error)
                    return
            yield _sse("content_block_stop", {"type": "content_block_stop", "index": index})
            if whole["type"] == "web_search_tool_result" and "search-cut" in faults(body):
                return
        yield _sse(
            "message_delta",
            {
                "type": "message_delta",
                "delta": {"stop_reason": stop, "stop_sequence": None},
                # The cumulative usage; with a search (as Anthropic's web search example shows it), a compaction or
                # an advisor's sampling, in full.
                "usage": {**final, "output_tokens": OUTPUT_TOKENS}
                if searches(body) or "iterations" in final
                else {"output_tokens": OUTPUT_TOKENS},
            },
        )
        yield _sse("message_stop", {"type": "message_stop"})

    app = Starlette(
        routes=[
            Route("/v1/messages", messages, methods=["POST"]),
            Route("/v1/messages/count_tokens", count_tokens, methods=["POST"]),
        ]
    )
    app.state.requests = requests
    app.state.threads = threads
    return app
