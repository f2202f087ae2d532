"""The fake OpenAI API's `POST /v1/responses`, in OpenAI's documented Responses format (answer and events).

It answers as the fake's chat endpoint does: the fixed text, a function call when a tool is required (or
scripted, tests/fakes/script.py), a JSON schema's sample; a `reasoner` model adds a reasoning item (with
OpenAI-style `encrypted_content` when `include` asks); with the hosted `web_search` tool it searches once
first (a `web_search_call` item, which OpenAI bills per call). Like OpenAI, it refuses a reasoning item whose
`encrypted_content` it did not issue, a `call_id` longer than `MAX_ID` (`too_long`), and a `function_call_output`
whose `call_id` no `function_call` of the input has, or a `function_call` no output answers (`orphan_output`).
Its call ids are new for each answer.

Encrypted reasoning is sealed per organisation, the one the request's `OpenAI-Organization` header names (none: the
key's default organisation, whose blob is `ENCRYPTED`; `sealed_for`): a blob another organisation sealed is refused
as OpenAI refuses it (`foreign_reasoning`: 400 `invalid_encrypted_content`, "Encrypted content organization_id did
not match the target organization", openai/codex#13724).
"""

from __future__ import annotations

import secrets
import string
import time
import uuid
from collections.abc import AsyncIterator
from typing import Any

import orjson

from tests.fakes.script import ScriptedCall, pieces, scripted_turn, text_for, texts

TEXT = "Hello from fake OpenAI."
REASONING = "The user greets me; I greet back."
ENCRYPTED = "gAAAAABfakeOpenAIEncryptedReasoning=="
ORGANIZATION_HEADER = "openai-organization"  # (OpenAI's `OpenAI-Organization`, as a server reads it)
INVALID_ENCRYPTED_CONTENT = "invalid_encrypted_content"
MAX_ID = 64  # the longest tool call id OpenAI's APIs take
ID_TOO_LONG = "string_above_max_length"


def unique(length: int) -> str:
    """`length` random letters and digits: the unique part of an id of OpenAI's form."""
    return "".join(secrets.choice(ALPHANUMERIC) for _ in range(length))


ALPHANUMERIC = string.ascii_letters + string.digits


def string_too_long(param: str, length: int) -> str:
    """OpenAI's message for a string past its maximum length (its `code` is `ID_TOO_LONG`)."""
    return (
        f"Invalid '{param}': string too long. Expected a string with maximum length {MAX_ID}, but got a string "
        f"with length {length} instead."
    )


def too_long(body: dict[str, Any]) -> tuple[str, int] | None:
    """The `param` and length of the first input item's `call_id` OpenAI would refuse as too long, whatever the
    item's type."""
    items = body.get("input")
    for i, item in enumerate(items if isinstance(items, list) else ()):
        call_id = item.get("call_id") if isinstance(item, dict) else None
        if isinstance(call_id, str) and len(call_id) > MAX_ID:
            return f"input[{i}].call_id", len(call_id)
    return None


def unpersisted(body: dict[str, Any]) -> str | None:
    """OpenAI's 404 for an input item it would look up by its `id` in a request it does not store (as reported
    for reasoning and function call items: `rs_...`, `fc_...`)."""
    if body.get("store") is not False:
        return None
    items = body.get("input")
    for item in items if isinstance(items, list) else ():
        if isinstance(item, dict) and item.get("id") and item.get("type") in ("reasoning", "function_call"):
            return (
                f"Item with id '{item['id']}' not found. Items are not persisted when `store` is set to false. "
                "Try again with `store` set to true, or remove this item from your input."
            )
    return None


def orphan_output(body: dict[str, Any]) -> str | None:
    """OpenAI's 400 for a `function_call_output` whose `call_id` no `function_call` of the input has ("No tool call
    found for function call output with call_id ...", continuedev/continue#10092), or a `function_call` no output
    answers ("No tool output found for function call ...", tjardoo/openai-client#124); its `param` is `input`. OpenAI
    would look among a `previous_response_id`'s stored items too: this fake stores none, and refuses any
    `previous_response_id` (`problem`)."""
    items = body.get("input")
    items = [item for item in items if isinstance(item, dict)] if isinstance(items, list) else []
    called = [item.get("call_id") for item in items if item.get("type") == "function_call"]
    answered = {item.get("call_id") for item in items if item.get("type") == "function_call_output"}
    for item in items:
        if item.get("type") == "function_call_output" and item.get("call_id") not in called:
            return f"No tool call found for function call output with call_id {item.get('call_id')}."
    unanswered = [call for call in called if call not in answered]
    return f"No tool output found for function call {unanswered[0]}." if unanswered else None


def sealed_for(organization: str | None) -> str:
    """The encrypted reasoning an organisation's answers carry (`ENCRYPTED`: the key's default organisation's)."""
    return f"gAAAAABfake{organization}EncryptedReasoning==" if organization else ENCRYPTED


def foreign_reasoning(body: dict[str, Any], organization: str | None) -> str | None:
    """OpenAI's message refusing a reasoning item whose `encrypted_content` another organisation sealed (one of
    OpenAI's blobs, `gAAAAA...`, not `organization`'s), with the blob shown as OpenAI shows it."""
    own = sealed_for(organization)
    items = body.get("input")
    for item in items if isinstance(items, list) else ():
        sealed = item.get("encrypted_content") if isinstance(item, dict) else None
        theirs = isinstance(sealed, str) and sealed.startswith("gAAAAA") and sealed != own
        if item.get("type") == "reasoning" and isinstance(sealed, str) and theirs:
            return (
                f"The encrypted content {sealed[:4]}...{sealed[-4:]} could not be verified. Reason: Encrypted content "
                "organization_id did not match the target organization."
            )
    return None


def problem(body: dict[str, Any]) -> str | None:
    """What OpenAI would refuse in a body, for the rules a gateway may break."""
    items = body.get("input")
    for item in items if isinstance(items, list) else ():
        sealed = item.get("encrypted_content") if isinstance(item, dict) else None
        if item.get("type") == "reasoning" and sealed is not None and not str(sealed).startswith("gAAAAA"):
            return f"The encrypted content for item {item.get('id', 'rs_?')} could not be verified."
    if body.get("previous_response_id"):
        return f"Previous response with id '{body['previous_response_id']}' not found."
    return None


def _conversation(body: dict[str, Any]) -> tuple[list[str], str | None]:
    items = body.get("input")
    if isinstance(items, str):
        return [items], None
    users = [texts(i.get("content")) for i in items or [] if i.get("role") == "user"]
    last = (items or [{}])[-1]
    result = str(last.get("output")) if last.get("type") == "function_call_output" else None
    return users, result


def output_of(body: dict[str, Any], organization: str | None = None) -> list[dict[str, Any]]:
    """The answer's output items (its encrypted reasoning sealed for `organization`), with ids of their own, as
    OpenAI's are: a conversation's items are told apart by them (the gateway keeps what it asked for by item id)."""
    made = uuid.uuid4().hex[:16]
    tools = [t for t in body.get("tools") or [] if t.get("type") == "function"]
    users, result = _conversation(body)
    script = scripted_turn(users, [str(t["name"]) for t in tools], result)
    choice = body.get("tool_choice")
    output: list[dict[str, Any]] = []
    if "reasoner" in str(body.get("model")):
        reasoning: dict[str, Any] = {"id": f"rs_fake{made}", "type": "reasoning", "summary": []}
        reasoning["summary"] = [{"type": "summary_text", "text": REASONING}]
        if "reasoning.encrypted_content" in (body.get("include") or ()):
            reasoning["encrypted_content"] = sealed_for(organization)
        output.append(reasoning)
    searches = any(str(t.get("type", "")).startswith("web_search") for t in body.get("tools") or [])
    if isinstance(choice, dict) and choice.get("type") == "allowed_tools":  # (as OpenAI: the tools it lists alone run)
        listed = choice.get("tools") or []
        searches = any(str(t.get("type", "")).startswith("web_search") for t in listed if isinstance(t, dict))
    if searches and choice != "none":  # (as OpenAI: no tool runs under `none`, hosted ones included)
        action = {"type": "search", "query": "fake search"}
        output.append({"id": f"ws_fake{made}", "type": "web_search_call", "status": "completed", "action": action})
    call: tuple[str, str] | None = None
    if isinstance(script, ScriptedCall):
        call = (script.name, script.arguments_json)
    elif tools and result is None and isinstance(choice, dict) and choice.get("type") == "allowed_tools":
        if choice.get("mode") == "required":
            call = (str(choice["tools"][0]["name"]), '{"city":"Paris"}')
    elif tools and result is None and (choice == "required" or isinstance(choice, dict)):
        name = choice["name"] if isinstance(choice, dict) else tools[0]["name"]
        call = (str(name), '{"city":"Paris"}')
    if call is not None:
        item = {"id": f"fc_fake{made}", "type": "function_call", "status": "completed", "call_id": f"call_{unique(24)}"}
        output.append({**item, "name": call[0], "arguments": call[1]})
        return output
    fmt = (body.get("text") or {}).get("format") or {}
    text = script if isinstance(script, str) else TEXT
    if fmt.get("type") == "json_schema":
        text = text_for(fmt.get("schema"), text)
    part = {"type": "output_text", "text": text, "annotations": [], "logprobs": []}
    message = {"id": f"msg_fake{made}", "type": "message", "role": "assistant", "status": "completed"}
    output.append({**message, "content": [part]})
    return output


def served_tier(body: dict[str, Any]) -> str:
    """The `service_tier` an answer says it ran at, as OpenAI answers it: `default` where `auto` or none was asked,
    else the tier asked; but a `ramp-limited` model serves `priority` at `default` (OpenAI does past a project's
    priority ramp limits, and bills it at default)."""
    asked = body.get("service_tier")
    if asked in (None, "auto") or (asked == "priority" and "ramp-limited" in str(body.get("model"))):
        return "default"
    return str(asked)


def response_id() -> str:
    """A new response's id: OpenAI's are unique (the gateway keeps a natively served response under it)."""
    return f"resp_fake{uuid.uuid4().hex}"


def response_of(
    body: dict[str, Any], output: list[dict[str, Any]], status: str, input_tokens: int, made: str | None = None
) -> dict[str, Any]:
    """The response object; `made`: its id, where the same response is shown again (a stream's events). A completed
    one says when it completed (`completed_at`): a second after it was created, here, so that a relay that keeps the
    provider's own value can be told from one that writes its own."""
    created_at = int(time.time())
    return {
        "id": made or response_id(),
        "object": "response",
        "created_at": created_at,
        "status": status,
        "completed_at": created_at + 1 if status == "completed" else None,
        "error": None,
        "incomplete_details": None,
        "instructions": body.get("instructions"),
        "max_output_tokens": body.get("max_output_tokens"),
        "model": body.get("model"),
        "output": output,
        "parallel_tool_calls": body.get("parallel_tool_calls", True),
        "previous_response_id": None,
        "service_tier": served_tier(body),
        "reasoning": body.get("reasoning") or {"effort": None, "summary": None},
        "store": body.get("store", True),
        "temperature": body.get("temperature", 1.0),
        "text": body.get("text") or {"format": {"type": "text"}},
        "tool_choice": body.get("tool_choice", "auto"),
        "tools": body.get("tools") or [],
        "top_p": body.get("top_p", 1.0),
        "truncation": "disabled",
        "metadata": body.get("metadata") or {},
        "usage": None
        if status == "in_progress"
        else {
            "input_tokens": input_tokens,
            # A `cache-write` model writes half its prompt to the cache, as OpenAI's extended caching reports it.
            "input_tokens_details": {
                "cached_tokens": 0,
                "cache_write_tokens": input_tokens // 2 if "cache-write" in str(body.get("model")) else 0,
            },
            "output_tokens": 7,
            "output_tokens_details": {"reasoning_tokens": 3 if "reasoner" in str(body.get("model")) else 0},
            "total_tokens": input_tokens + 7,
        },
    }


async def events(
    body: dict[str, Any], input_tokens: int, cut: bool, organization: str | None = None
) -> AsyncIterator[bytes]:
    """The event stream of the same answer; `cut` stops it half-way."""
    output = output_of(body, organization)
    sequence = 0

    def event(kind: str, **payload: Any) -> bytes:
        nonlocal sequence
        data = {"type": kind, "sequence_number": sequence, **payload}
        sequence += 1
        return b"event: " + kind.encode() + b"\ndata: " + orjson.dumps(data) + b"\n\n"

    made = response_id()
    yield event("response.created", response=response_of(body, [], "in_progress", input_tokens, made))
    yield event("response.in_progress", response=response_of(body, [], "in_progress", input_tokens, made))
    for index, item in enumerate(output):
        where = {"output_index": index, "item_id": item["id"]}
        if item["type"] == "message":
            yield event("response.output_item.added", output_index=index, item={**item, "content": []})
            text = item["content"][0]["text"]
            part = {"type": "output_text", "text": "", "annotations": [], "logprobs": []}
            yield event("response.content_part.added", content_index=0, part=part, **where)
            for i, piece in enumerate(pieces(text)):
                if cut and i == 2:
                    return
                yield event("response.output_text.delta", content_index=0, delta=piece, **where)
            yield event("response.output_text.done", content_index=0, text=text, **where)
            yield event("response.content_part.done", content_index=0, part=item["content"][0], **where)
        elif item["type"] == "function_call":
            yield event("response.output_item.added", output_index=index, item={**item, "arguments": ""})
            arguments = item["arguments"]
            for piece in (arguments[: len(arguments) // 2], arguments[len(arguments) // 2 :]):
                yield event("response.function_call_arguments.delta", delta=piece, **where)
            # (its `name` too, as OpenAI's event carries it now)
            yield event("response.function_call_arguments.done", name=item["name"], arguments=arguments, **where)
        elif item["type"] == "web_search_call":
            yield event("response.output_item.added", output_index=index, item={**item, "status": "in_progress"})
            for stage in ("in_progress", "searching", "completed"):
                yield event(f"response.web_search_call.{stage}", **where)
        else:
            yield event("response.output_item.added", output_index=index, item={**item, "summary": []})
            summary = item["summary"][0]
            yield event("response.reasoning_summary_part.added", summary_index=0, part={**summary, "text": ""}, **where)
            yield event("response.reasoning_summary_text.delta", summary_index=0, delta=summary["text"], **where)
            yield event("response.reasoning_summary_text.done", summary_index=0, text=summary["text"], **where)
            yield event("response.reasoning_summary_part.done", summary_index=0, part=summary, **where)
        yield event("response.output_item.done", output_index=index, item=item)
    yield event("response.completed", response=response_of(body, output, "completed", input_tokens, made))
