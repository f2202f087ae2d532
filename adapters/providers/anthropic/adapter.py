"""Anthropic's Messages API (`POST /v1/messages`), translated to and from the gateway's OpenAI form.

System and developer messages become the top-level `system`; consecutive turns of one role merge
(tool results join the user turn); `max_tokens` is always sent, since Anthropic requires it. A
`json_schema` response format is served by a forced tool whose input comes back as the message text.
Parameters with no Anthropic equivalent are reported in `BuiltRequest.dropped`, never silently lost.
"""

from __future__ import annotations

import functools
import time
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

import orjson
from pydantic import ValidationError

from adapters.providers import reasoning
from adapters.providers.model_rules import keep_one_sampling_knob
from adapters.providers.params import (
    CACHING,
    THINKING_BLOCKS,
    Rule,
    ToolNames,
    apply_rules,
    asks,
    cache_control,
    caching_problem,
    caching_wanted,
    chosen_tools,
    claude_signed,
    document_fields,
    named_messages,
    redacted_thinking,
    require_turns,
    signed_thinking,
    strict_schema,
    thinking_blocks,
    token_count_problem,
    unsent_part_fields,
    unsent_reasoning,
)
from handler import schemas
from handler.call_ids import claude_call_id, claude_takes
from handler.errors import InvalidRequestError, UpstreamError
from handler.ports import MESSAGES_API, BuiltRequest, NativeCall, ProviderAdapter, Served, Target, UpstreamRequest
from handler.redaction import redact_upstream
from handler.schemas import (
    DOCUMENT,
    TOOL_ERROR_MARK,
    AssistantMessage,
    BlockOrder,
    ChatCompletion,
    ChatRequest,
    Choice,
    FilePart,
    FinishReason,
    FunctionCall,
    ImagePart,
    Message,
    NamedToolChoice,
    TextPart,
    Tool,
    ToolCall,
    ToolChoice,
    Usage,
    ordered_parts,
    thinks_between,
)
from handler.wire import counted_tokens, error_excerpt, json_body, malformed, provider_said, said_status, upstream_error

# Anthropic's answer models (adapters/providers/anthropic/wire.py) are imported where they are used, on first use: a
# Lambda whose first request goes to another provider does not make their four pydantic classes (about 4.5 million
# instructions of its cold start, callgrind). A server's start-up and a SnapStart snapshot make and build them
# (`schemas.LATER_MODULES`); a stream's frequent events (text deltas) do not reach an import.
schemas.LATER_MODULES.add("adapters.providers.anthropic.wire")
schemas.LATER_MODULES.add("adapters.providers.anthropic.stream")  # (its parser too: imported with the first stream)
schemas.LATER_MODULES.add("adapters.providers.anthropic.history")  # (a Messages history passed through: with the first)
if TYPE_CHECKING:
    from adapters.providers.anthropic.search import Searches
    from adapters.providers.anthropic.stream import AnthropicStreamParser, MessagesMeter

API_VERSION = "2023-06-01"
# The blocks of an answer that ran the web search tool (`adapters/providers/anthropic/search.py`).
SEARCH_BLOCKS = ("server_tool_use", "web_search_tool_result")
JSON_OBJECT_INSTRUCTION = "Respond only with a single valid JSON object, with no text before or after it."

# Top-level parameters that map one to one; whatever else the client sent (and is not translated
# below) is reported as dropped.
RULES: dict[str, Rule] = {
    "temperature": Rule(clamp=(0.0, 1.0)),
    "top_p": Rule(),
    "top_k": Rule(),
    "n": Rule(only=(1,)),
}
TRANSLATED = frozenset(
    {
        "model",
        "messages",
        "stream",
        "stream_options",
        "max_tokens",
        "max_completion_tokens",
        "stop",
        "tools",
        "tool_choice",
        "parallel_tool_calls",
        "response_format",
        "user",
        "safety_identifier",
        "reasoning_effort",
        "thinking",
        "web_search_options",  # (`ChatRequest.web_search`: Anthropic's own search tool)
    }
)
# Claude models that take `thinking: {"type": "adaptive"}` with `output_config.effort` for its depth: they get it for
# every wish (from Opus 4.7 on it is the only thinking they take, a `budget_tokens` is a 400; on the 4.6 models a
# budget is deprecated). Older thinking models get a budget instead. From 4.7 on the efforts include `xhigh`.
ADAPTIVE_FRAGMENTS = ("claude-opus-4-6", "claude-sonnet-4-6", "claude-opus-4-7", "claude-sonnet-4-7")
XHIGH_FRAGMENTS = ("claude-opus-4-7", "claude-sonnet-4-7")

# When neither the client nor the config caps the output: (model name fragment, max_tokens), first match.
DEFAULT_MAX_TOKENS: tuple[tuple[str, int], ...] = (
    ("claude-opus-4", 16384),
    ("claude-sonnet-4", 16384),
    ("claude-haiku-4", 8192),
    ("claude-3-7-sonnet", 16384),
    ("claude-3-5", 8192),
    ("claude-3", 4096),
)
FALLBACK_MAX_TOKENS = 4096


JSON_TOOL = "json_response"  # the forced tool that serves a `json_schema` answer (its input is the text)
MAX_TOOL_NAME = 128  # Anthropic's longest tool name
STOP_REASONS: dict[str, FinishReason] = {
    "end_turn": "stop",
    "stop_sequence": "stop",
    "pause_turn": "stop",
    "max_tokens": "length",
    "model_context_window_exceeded": "length",
    "tool_use": "tool_calls",
    "refusal": "content_filter",
}


def error_from_body(status: int, body: bytes, headers: Mapping[str, str]) -> UpstreamError:
    """Anthropic's error body `{"type": "error", "error": {"type", "message", "details"}}`, tolerating others; its
    `details` kept (`said_details`), their `error_code` as the provider's code."""
    message, kind, details = "", None, None
    try:
        data = orjson.loads(body) if body else None
    except orjson.JSONDecodeError:
        data = None
    if isinstance(data, dict):
        error = data.get("error")
        if isinstance(error, dict):
            message = str(error.get("message") or "")
            kind = str(error["type"]) if error.get("type") else None
            details = said_details(error.get("details"))
        elif isinstance(error, str):
            message = error
    if not message:
        message = error_excerpt(body)
    code = details["error_code"] if details else None
    failure = upstream_error(status, message, headers, upstream_type=kind, code=code)
    failure.details = details
    return failure


def answered_error(data: Any) -> UpstreamError | None:
    """A 200 answer that is an error object alone, Anthropic's `{"type": "error", "error": {...}}` (or a compatible
    server's `{"error": ...}` with no `type`), read as the provider's error answer at the status its type names
    (`said_status`: an `overloaded_error` a 529, a `rate_limit_error` a 429), as the same error in a stream is; None
    for anything else. A server that ignores `stream` answers a stream's request so: read as a message, it would be
    the provider's malformed answer, charged its reserved worst case ($0.000292 for 100 tokens out where nothing is
    billed, its route `=invalid_response`), and the next deployment tried whatever it said."""
    if not isinstance(data, dict) or data.get("type") not in ("error", None) or "error" not in data:
        return None
    return error_from_body(said_status(data), orjson.dumps(data), {})


# The most of Anthropic's `error.details` relayed whole, as JSON (its `error_code` and the few names it gives beside
# it); past it, the code alone.
DETAILS_BYTES = 4096


def said_details(details: Any) -> dict[str, Any] | None:
    """Anthropic's `error.details` as a client of its API is given them (None where they name no `error_code`): the
    code, on which Anthropic's SDK picks its error class (`ThreadNotFoundError` for a 404 `thread_not_found`) and its
    thread helpers act (the whole conversation sent again as a new thread), and what it says beside it (the features
    a thread cannot take, `thread_unsupported_request`'s `unsupported`), redacted as an error's words are
    (`redact_upstream`)."""
    if not isinstance(details, dict) or not isinstance(details.get("error_code"), str):
        return None
    code = provider_said("code", details["error_code"])
    written = orjson.dumps(details)
    if len(written) <= DETAILS_BYTES:
        try:
            said = orjson.loads(redact_upstream(written.decode()))
        except orjson.JSONDecodeError:  # (a redaction that took a quote with it: the code alone)
            said = None
        if isinstance(said, dict):
            return {**said, "error_code": code}
    return {"error_code": code}


def answer_finish(mapped: FinishReason, json_answer: bool, tool_calls: bool) -> FinishReason:
    """OpenAI's finish reason of a Claude answer (Anthropic's or Bedrock's, its stop reason `mapped`): a
    `json_schema` answer (the forced tool's call, shown as content) stopped, unless a limit cut it (`length`:
    its JSON is incomplete)."""
    if json_answer and not tool_calls and mapped != "length":
        return "stop"
    return mapped


def _finish(stop_reason: str | None, json_answer: bool, tool_calls: bool) -> FinishReason:
    return answer_finish(STOP_REASONS.get(stop_reason or "end_turn", "stop"), json_answer, tool_calls)


def default_max_tokens(model: str) -> int:
    """A sensible output cap for a Claude model when nobody gave one."""
    for fragment, limit in DEFAULT_MAX_TOKENS:
        if fragment in model:
            return limit
    return FALLBACK_MAX_TOKENS


# --- request -------------------------------------------------------------------------------------


# The image types Anthropic takes (its vision guide: JPEG, PNG, GIF, WebP), as Bedrock's Converse does for Claude;
# `image/jpg`, which clients write, is JPEG.
IMAGE_TYPES = frozenset({"image/jpeg", "image/png", "image/gif", "image/webp"})
MEDIA_TYPE_ALIASES = {"image/jpg": "image/jpeg"}
# What the gateway sends of a Messages document's fields (`params.unsent_part_fields` names the rest): its title and
# context; not `citations`, whose answer (text blocks that cite) the OpenAI form cannot carry back.
CARRIED = frozenset({"document.title", "document.context"})


def _media(url: str, param: str) -> tuple[str, str]:
    """`(media_type, base64 data)` of a `data:` URL, the type without its parameters (`;name=a.png`)."""
    header, sep, data = url.partition(",")
    if not sep or not header.endswith(";base64"):
        raise InvalidRequestError("only base64 data URLs are supported", param=param)
    media_type = header[len("data:") :].split(";", 1)[0].strip().lower()
    return MEDIA_TYPE_ALIASES.get(media_type, media_type), data


def _image_block(part: ImagePart) -> dict[str, Any]:
    url = part.image_url["url"]
    if url.startswith("data:"):
        media_type, data = _media(url, "messages")
        if media_type not in IMAGE_TYPES:
            named = f"of type '{media_type}'" if media_type else "without a media type (data:image/png;base64,...)"
            raise InvalidRequestError(
                f"an image {named} cannot be sent to this model: it takes image/jpeg, image/png, image/gif and "
                "image/webp",
                param="messages",
            )
        return {"type": "image", "source": {"type": "base64", "media_type": media_type, "data": data}}
    if url.startswith(("http://", "https://")):
        return {"type": "image", "source": {"type": "url", "url": url}}
    raise InvalidRequestError("an image_url must be an http(s) or data URL", param="messages")


def _with_document_fields(block: dict[str, Any], part: TextPart | FilePart) -> dict[str, Any]:
    """A document block with the Messages document's `title` and `context` (`CARRIED`) its part kept."""
    fields = document_fields(part)
    block.update((name, fields[name]) for name in ("title", "context") if name in fields)
    return block


def _file_block(part: FilePart) -> dict[str, Any]:
    data_url = part.file.get("file_data")
    if isinstance(data_url, str) and data_url.startswith("data:application/pdf"):
        media_type, data = _media(data_url, "messages")
        block = {"type": "document", "source": {"type": "base64", "media_type": media_type, "data": data}}
        return _with_document_fields(block, part) if part.model_extra else block
    raise InvalidRequestError("only PDF files given as file_data can be sent to this provider", param="messages")


def _content_blocks(message: Message) -> list[dict[str, Any]]:
    if message.content is None:
        return []
    if isinstance(message.content, str):
        return [{"type": "text", "text": message.content}] if message.content else []
    blocks: list[dict[str, Any]] = []
    for part in message.content:
        if isinstance(part, TextPart):
            if not part.text:
                continue
            if part.model_extra and DOCUMENT in part.model_extra:
                # A Messages text document with a title, context or citations: a document again.
                source = {"type": "text", "media_type": "text/plain", "data": part.text}
                block: dict[str, Any] = _with_document_fields({"type": "document", "source": source}, part)
            else:
                block = {"type": "text", "text": part.text}
        elif isinstance(part, ImagePart):
            block = _image_block(part)
        elif isinstance(part, FilePart):
            block = _file_block(part)
        else:
            raise InvalidRequestError(f"content part '{part.type}' is not supported by this provider", param="messages")
        marker = cache_control(part)
        if marker is not None:
            block["cache_control"] = marker
        blocks.append(block)
    return blocks


def unmarked(blocks: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """A failed tool's result without the `TOOL_ERROR_MARK` its text opens with, for a form that says it failed as
    Anthropic's does (`is_error`)."""
    first = blocks[0] if blocks else {}
    if first.get("type") != "text" or not first["text"].startswith(TOOL_ERROR_MARK):
        return blocks
    text = first["text"].removeprefix(TOOL_ERROR_MARK)
    return [{**first, "text": text}, *blocks[1:]] if text else blocks[1:]


def _tool_input(arguments: str) -> Any:
    try:
        value = orjson.loads(arguments) if arguments.strip() else {}
    except orjson.JSONDecodeError:
        raise InvalidRequestError("a tool call's arguments are not valid JSON", param="messages") from None
    return value if isinstance(value, dict) else {"value": value}


def _turn(message: Message, names: ToolNames | None) -> tuple[str, list[dict[str, Any]]]:
    """The Anthropic role and content blocks of one non-system message, its calls' tools by `names`' wire names."""
    if message.role in ("tool", "function"):
        answered = claude_call_id(message.tool_call_id or message.name or "")
        result: dict[str, Any] = {"type": "tool_result", "tool_use_id": answered}
        blocks = _content_blocks(message)
        if message.is_error:
            result["is_error"] = True  # (said so, not in its text: `TOOL_ERROR_MARK`)
            blocks = unmarked(blocks)
        if blocks:
            result["content"] = blocks
        return "user", [result]
    if message.role == "assistant" and message.block_order and isinstance(message.content, str | None):
        parts = ordered_parts(
            message.block_order, thinking_blocks(message), message.content or "", message.tool_calls or []
        )
        if parts is not None:  # Claude thought between its calls: its blocks go back in the order it wrote them
            return "assistant", [_assistant_block(kind, part, names) for kind, part in parts]
    blocks = _content_blocks(message)
    if message.role == "assistant":
        # Signed thinking goes back first, as Claude wrote it; reasoning without a signature cannot.
        blocks = [*thinking_blocks(message), *blocks]
        blocks.extend(_tool_use(call, names) for call in message.tool_calls or ())
    return ("assistant" if message.role == "assistant" else "user"), blocks


def _tool_use(call: ToolCall, names: ToolNames | None) -> dict[str, Any]:
    """A call as Claude's `tool_use` block, its id one Anthropic takes (`claude_call_id`: another provider's, Kimi
    K2's `functions.get_weather:0`, goes as a stand-in, the same as its result's), its tool by the name it is
    declared by (`names`; Bedrock renames it for Converse)."""
    return {
        "type": "tool_use",
        "id": claude_call_id(call.id),
        "name": names.wire(call.function.name) if names is not None else call.function.name,
        "input": _tool_input(call.function.arguments),
    }


def _assistant_block(kind: str, part: Any, names: ToolNames | None) -> dict[str, Any]:
    """An assistant turn's part (see `ordered_parts`) as its content block."""
    if kind == "call":
        return _tool_use(part, names)
    if kind == "text":
        return {"type": "text", "text": part}
    return dict(part)  # a thinking block, as Claude signed it


def convert_messages(
    messages: list[Message], names: ToolNames | None = None
) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """System text blocks (with their cache markers), and the conversation as alternating turns (same-role
    neighbours merged), each call's tool by `names`' wire name (Anthropic's: `anthropic_takes`), else as written."""
    system: list[dict[str, Any]] = []
    turns: list[dict[str, Any]] = []
    for message in messages:
        if message.role in ("system", "developer"):
            system.extend(block for block in _content_blocks(message) if block["type"] == "text")
            continue
        role, blocks = _turn(message, names)
        if not blocks:
            continue
        if turns and turns[-1]["role"] == role:
            turns[-1]["content"].extend(blocks)
        else:
            turns.append({"role": role, "content": blocks})
    for turn in turns:
        # Anthropic wants a user turn's tool results before any text that follows them.
        turn["content"].sort(key=lambda block: block["type"] != "tool_result")
    return system, turns


def called_tools(turns: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The tools the conversation's `tool_use` blocks call (by their wire names), declared bare, for a request that
    offers none (sent with `tool_choice: none`, so that none is called). Anthropic refuses `tool_use` and
    `tool_result` blocks in a request that defines no tools (400 "Requests which include `tool_use` or `tool_result`
    blocks must define tools"), which OpenAI's APIs take: a continuation that asks for a summary, an agent handed a
    conversation without tools of its own. Declared, the earlier turns go as Claude wrote them, their thinking in
    its place; Bedrock's Converse, which has no `none` choice, gets them as text instead (`tool_turns_as_text`). A
    result that answers no call of the conversation (a legacy `function` message: its call, `function_call`, is not
    carried) has no tool to declare, and goes as text, in place."""
    names: dict[str, None] = {}
    ids: set[str] = set()
    results = False
    for turn in turns:
        for block in turn["content"]:
            kind = block["type"]
            if kind == "tool_use":
                names[block["name"]] = None
                ids.add(block["id"])
            elif kind == "tool_result":
                results = True
    if results:
        for turn in turns:
            if turn["role"] == "user":
                turn["content"] = [
                    part
                    for block in turn["content"]
                    for part in (
                        _result_as_text(block)
                        if block["type"] == "tool_result" and block["tool_use_id"] not in ids
                        else (block,)
                    )
                ]
                # (the turn's remaining tool results first again, as `convert_messages` left them: a result turned
                # into text before a real one is Anthropic's 400)
                turn["content"].sort(key=lambda block: block["type"] != "tool_result")
    return [{"name": name, "input_schema": {"type": "object"}} for name in names] if names else []


def _result_as_text(result: dict[str, Any]) -> list[dict[str, Any]]:
    """A tool result as the user turn's own blocks: what it answered, then its content (text and images)."""
    failed = " (the tool failed)" if result.get("is_error") else ""
    return [{"type": "text", "text": f"[result of {result['tool_use_id']}{failed}]"}, *result.get("content", ())]


def _tool_choice(req: ChatRequest, choice: ToolChoice | None, names: ToolNames) -> dict[str, Any] | None:
    if choice is None:
        result: dict[str, Any] | None = None
    elif choice == "none":
        return {"type": "none"}
    elif choice == "auto":
        result = {"type": "auto"}
    elif choice == "required":
        result = {"type": "any"}
    elif isinstance(choice, NamedToolChoice):
        result = {"type": "tool", "name": names.wire(choice.function.name)}
    if req.parallel_tool_calls is False:
        result = (result or {"type": "auto"}) | {"disable_parallel_tool_use": True}
    return result


def anthropic_takes(name: str) -> bool:
    """Whether Anthropic takes `name` for a tool: 1 to 128 of `[a-zA-Z0-9_-]` (its 400 "tools.0.custom.name: String
    should match pattern"). An MCP server's dotted names (`weather.get`) do not: see `ToolNames`."""
    return len(name) <= MAX_TOOL_NAME and claude_takes(name)


def _tools(offered: list[Tool], names: ToolNames) -> list[dict[str, Any]]:
    tools = []
    for tool in offered:
        schema = dict(tool.function.parameters or {})
        schema.setdefault("type", "object")
        entry: dict[str, Any] = {"name": names.wire(tool.function.name), "input_schema": schema}
        if tool.function.description:
            entry["description"] = tool.function.description
        if tool.function.strict is not None:
            entry["strict"] = tool.function.strict
        marker = cache_control(tool)
        if marker is not None:
            entry["cache_control"] = marker
        tools.append(entry)
    return tools


def system_param(blocks: list[dict[str, Any]]) -> str | list[dict[str, Any]]:
    """`system` as one string, or as blocks when one of them carries a cache marker (a string has none)."""
    if any("cache_control" in block for block in blocks):
        return blocks
    return "\n\n".join(block["text"] for block in blocks)


def thinking_param(req: ChatRequest, model: str, max_tokens: int) -> tuple[dict[str, Any] | None, list[str]]:
    """Claude's body fields for the request's reasoning wish (see `reasoning.LEVELS`): `thinking` (adaptive, with
    `output_config.effort` when a level was asked, on the models that take it, and shown summarized when a summary
    was asked; else a budget, whose thinking Claude 4 returns summarized), and what was dropped."""
    wish = reasoning.requested(req)
    if wish is None or wish.off:
        return None, []
    asked = reasoning.asked_with(req)
    if not reasoning.reasons(model, reasoning.CLAUDE_THINKING_FRAGMENTS):
        return None, asked
    if reasoning.reasons(model, ADAPTIVE_FRAGMENTS):
        fields: dict[str, Any] = {"thinking": {"type": "adaptive"}}
        if req.reasoning_summary is not None:
            # A Responses client asked to see the reasoning: the adaptive models' default display may omit it
            # (Opus 4.7's does: the thinking block comes back empty, its signature alone).
            fields["thinking"]["display"] = "summarized"
        if wish.level is not None:
            fields["output_config"] = {"effort": claude_effort(wish.level, model)}
        return fields, []
    budget = reasoning.thinking_budget(wish, max_tokens)
    if budget is None:
        return None, asked
    return {"thinking": {"type": "enabled", "budget_tokens": budget}}, []


def tool_turn_without_thinking(turns: list[Any]) -> bool:
    """Whether the conversation's last assistant turn called a tool without opening with Claude's thinking.

    With thinking on, Anthropic refuses such a turn (a 400: "a final `assistant` message must start with a
    thinking block ... To avoid this requirement, disable `thinking`"): a tool-use loop is one assistant turn,
    thought through or not as a whole. The client often has no thinking to send back: Chat Completions clients
    never return `thinking_blocks`, a Responses or Messages history served by another provider carries its
    reasoning, not Claude's (a failover, or a Claude Code user switching models mid-loop: the Messages front-end
    answered that reasoning as a thinking block with an empty signature, which is not Claude's, `claude_signed`). A
    turn that ended in text closed its loop, and earlier turns need no thinking back. `turns` are Messages turns,
    translated or as a client sent them (a turn's content may be a string).
    """
    last = next((t for t in reversed(turns) if isinstance(t, dict) and t.get("role") == "assistant"), None)
    content = last.get("content") if last is not None else None
    blocks = [block for block in content if isinstance(block, dict)] if isinstance(content, list) else []
    if not any(block.get("type") == "tool_use" for block in blocks):
        return False
    return not claude_signed(blocks[0])


def claude_effort(level: reasoning.Level, model: str) -> str:
    """`output_config.effort` for a level: low, medium, high, max, and xhigh on the models that have it (the
    others get max for it, the level above high they have)."""
    if level.effort in ("minimal", "low"):
        return "low"
    if level.effort == "xhigh":
        return "xhigh" if reasoning.reasons(model, XHIGH_FRAGMENTS) else "max"
    return level.effort


def merged_betas(client: str | None, configured: str | None) -> str | None:
    """One `anthropic-beta` value (a comma-separated list) from the client's and the provider's: the client's as
    it sent it, then each configured beta it did not name, in the configured order."""
    betas = [client] if client else []
    named = {beta.strip() for beta in (client or "").split(",")}
    for beta in (beta.strip() for beta in (configured or "").split(",")):
        if beta and beta not in named:
            betas.append(beta)
            named.add(beta)
    return ",".join(betas) or None


@functools.cache  # (once per deployment's address: asked at every attempt's reservation and cost)
def anthropic_itself(base_url: str) -> bool:
    """Whether `base_url` is Anthropic's own API (`api.anthropic.com`, at any port or path)."""
    return base_url.split("://", 1)[-1].split("/", 1)[0].split(":", 1)[0] == "api.anthropic.com"


def searchable(req: ChatRequest) -> bool:
    """Whether Claude can run `req`'s web search beside what else it asks. Anthropic's `tool_choice: none` forbids
    every tool, its server tools too (the search beside a client's `none` could never run, and would be reserved
    ten searches). A Chat Completions client's `none` forbids its functions alone (`web_search_options` is none of
    them): the search goes alone, with `auto` (`chat_body`), unless a JSON answer is asked (its tool forced alone) or
    the conversation holds calls (their tools declared, which `auto` would let Claude call). The Responses API's
    `web_search` is one of the client's tools, which its `none` forbids, as OpenAI's does. Where it cannot run, the
    search is named dropped, and reserved for nowhere (`hosts_search`)."""
    search = req.web_search
    if search is None:
        return False
    if req.tool_choice != "none":
        return True
    return (
        search.param == "web_search_options"
        and json_tool(req) is None
        and not any(message.tool_calls for message in req.messages)
    )


def json_tool(req: ChatRequest) -> dict[str, Any] | None:
    """The forced tool serving a `json_schema` response format, or None for other requests. A strict format's tool
    is strict, as a client's own strict tool goes: Claude's strict tool use constrains the tool's input, the answer,
    to the schema."""
    fmt = req.response_format
    if fmt is None or fmt.type != "json_schema":
        return None
    spec = fmt.json_schema
    schema = dict((spec.schema_ if spec else None) or {"type": "object"})
    description = (spec.description if spec else None) or "Give the answer as this tool's input."
    tool: dict[str, Any] = {"name": JSON_TOOL, "description": description, "input_schema": schema}
    if strict_schema(fmt):
        tool["strict"] = True
    return tool


# --- stream --------------------------------------------------------------------------------------


def betas_written(value: Any) -> str | None:
    """The `anthropic_beta` option as the header writes it (`a,b`): from one beta, a comma-separated list or a YAML
    list of betas; "" when left out; None for a value that is none of these."""
    if value is None or value == "":
        return ""
    if isinstance(value, str):
        return value.strip()
    if isinstance(value, list) and value and all(isinstance(beta, str) and beta.strip() for beta in value):
        return ",".join(beta.strip() for beta in value)
    return None


class AnthropicAdapter(ProviderAdapter):
    """The `anthropic` provider type: Anthropic's Messages API.

    Options: `max_output_tokens` (provider-wide or per deployment) sets the `max_tokens` sent when the
    client gives none; `anthropic_beta` is sent as `anthropic-beta`, after a Messages client's own betas;
    `headers` adds headers; `prompt_caching` (provider-wide or per deployment) says when a translated request gets
    cache breakpoints of the gateway's (`prompt_cache`); `web_search` (true or false) says whether a translated
    request's web search goes to it as Anthropic's web search tool (`hosts_search`).
    """

    type_name = "anthropic"
    chat_fields = frozenset(RULES)  # (`top_k`)
    default_base_url = "https://api.anthropic.com"
    key_env_var = "ANTHROPIC_API_KEY"
    provider_options = frozenset({"anthropic_beta", "headers", "max_output_tokens", CACHING, "web_search"})
    deployment_options = frozenset({"max_output_tokens", CACHING})

    @classmethod
    def option_problem(cls, option: str, value: Any) -> str | None:
        if option == CACHING:
            return caching_problem(value)
        if option == "web_search" and not isinstance(value, bool):
            return f"true or false, not {str(value)[:60]}"
        if option == "anthropic_beta" and betas_written(value) is None:
            # (A YAML list would go out as its Python repr, `['a', 'b']`, a number as a number: Anthropic refuses both.)
            return f"one beta, a comma-separated list or a YAML list of betas, not {str(value)[:60]}"
        return token_count_problem(value) if option == "max_output_tokens" else None

    def headers(self) -> dict[str, str]:
        headers = {"content-type": "application/json", "anthropic-version": API_VERSION}
        if self.secret:
            headers["x-api-key"] = self.secret
        betas = betas_written(self.options.get("anthropic_beta"))
        if betas:
            headers["anthropic-beta"] = betas
        extra = self.options.get("headers")
        if isinstance(extra, dict):
            headers.update({str(k): str(v) for k, v in extra.items()})
        return headers

    def max_tokens(self, req: ChatRequest, target: Target) -> int:
        configured = target.options.get("max_output_tokens") or self.options.get("max_output_tokens")
        return req.output_limit() or (int(configured) if configured else default_max_tokens(target.model))

    def chat_body(self, req: ChatRequest, target: Target, *, stream: bool) -> tuple[dict[str, Any], list[str]]:
        """The Messages API body and the client parameters it cannot honour."""
        sent = req.model_dump(exclude_unset=True, by_alias=True)
        params = {name: value for name, value in sent.items() if name not in TRANSLATED}
        dropped = apply_rules(params, RULES)
        params.pop("n", None)
        caching = caching_wanted(req, target.options, self.options)
        if caching:
            params.pop("prompt_cache_key", None)  # (asks for caching: the breakpoints below; Anthropic has no key)
        unknown = sorted(name for name in params if name not in RULES)
        dropped += [name for name in unknown if asks(name, params.pop(name))]
        dropped += (
            keep_one_sampling_knob(params, target.model) + named_messages(req.messages) + unsent_reasoning(req.messages)
        )

        names = ToolNames(req, anthropic_takes)
        system, messages = convert_messages(req.messages, names)
        require_turns(messages, "Anthropic")
        dropped += unsent_part_fields(req.messages, CARRIED)
        max_tokens = self.max_tokens(req, target)
        body: dict[str, Any] = {"model": target.model, "max_tokens": max_tokens, "messages": messages}
        body.update(params)
        thinking, not_thinking = thinking_param(req, target.model, max_tokens)
        dropped += not_thinking
        stops = req.stop_list()
        kept = [sequence for sequence in stops if sequence.strip()]
        if kept:
            body["stop_sequences"] = kept
        if len(kept) < len(stops):
            # Anthropic refuses the whole request for a whitespace-only sequence ("each stop sequence must
            # contain non-whitespace"); a newline stop is common from OpenAI clients.
            dropped.append("stop")
        # The end user, as Anthropic's abuse detection takes it: OpenAI's `user`, or the `safety_identifier` that
        # replaces it (a Responses client following OpenAI's advice sends only that).
        safety = (req.model_extra or {}).get("safety_identifier")
        who = req.user or (safety if isinstance(safety, str) else None)
        if who:
            body["metadata"] = {"user_id": who}
        if safety is not None and safety != who:
            dropped.append("safety_identifier")

        offered, choice = chosen_tools(req)  # (Anthropic has no `allowed_tools`: the tools it allows, alone)
        tools, tool_choice = _tools(offered, names), _tool_choice(req, choice, names)
        search, unsent = self.sent_search(target, req)
        dropped += unsent
        if search is not None:
            from adapters.providers.anthropic.search import search_tool  # (a request that searches: a cold start none)

            if choice == "none":  # (no function may be called, and Anthropic's `none` forbids the search too)
                tools, tool_choice = [], {"type": "auto"}  # (the search alone: `searchable`)
            tools.append(search_tool(search))  # (Claude searches as it sees fit: a choice of a function stands)
            dropped += search.unhonoured(location=True, domains=True, blocked=True)
        forced = json_tool(req)
        if forced is not None:
            named = tool_choice is not None and tool_choice["type"] == "tool"
            if tool_choice is not None and tool_choice["type"] == "none":
                tools = []  # no function may be called: the answer is the JSON tool's alone (as on Bedrock)
            if not named:
                one = req.parallel_tool_calls is False and bool(tools)  # (the JSON tool alone is one call anyway)
                tool_choice = {"type": "tool", "name": JSON_TOOL} if not tools else {"type": "any"}
                if one:
                    tool_choice["disable_parallel_tool_use"] = True
            tools.append(forced)
        elif req.response_format is not None and req.response_format.type == "json_object":
            system.append({"type": "text", "text": JSON_OBJECT_INSTRUCTION})
        if not tools:
            if req.tool_choice not in (None, "none"):
                dropped.append("tool_choice")
            tools = called_tools(messages)
            tool_choice = {"type": "none"} if tools else None
        if tools:
            body["tools"] = tools
            if tool_choice is not None:
                body["tool_choice"] = tool_choice
        if thinking is not None and (
            body.get("tool_choice", {}).get("type") in ("any", "tool") or tool_turn_without_thinking(messages)
        ):
            # Claude cannot think on a turn whose tool use is forced (the forced tool wins), nor continue a tool-use
            # turn that did not open with its signed thinking: Anthropic's own advice is to send no thinking then.
            thinking = None
            dropped += reasoning.asked_with(req)
        if req.reasoning_summary is not None:
            dropped += reasoning.summary_unshown(req, reasoning.shows_claude_reasoning(target.model))
        if caching:
            from adapters.providers.prompt_cache import mark_claude, minimum_tokens  # (a cold start needs none)

            mark_claude(tools, system, messages, minimum_tokens(target.model) or 0)
        if thinking is not None:
            body.update(thinking)
            # Claude refuses sampling changes while thinking.
            dropped += [name for name in ("temperature", "top_k") if body.pop(name, None) is not None]
        if system:
            body["system"] = system_param(system)
        if stream:
            body["stream"] = True
        return body, dropped

    def messages_url(self, target: Target) -> str:
        base = target.base_url
        return f"{base}/messages" if base.endswith("/v1") else f"{base}/v1/messages"

    def chat_request(self, req: ChatRequest, target: Target, *, stream: bool) -> BuiltRequest:
        body, dropped = self.chat_body(req, target, stream=stream)
        request = UpstreamRequest("POST", self.messages_url(target), self.headers(), orjson.dumps(body))
        return BuiltRequest(request, dropped)

    def chat_response(self, body: bytes, req: ChatRequest, target: Target) -> ChatCompletion:
        return self.chat_answer(body, req, target)[0]

    def chat_answer(self, body: bytes, req: ChatRequest, target: Target) -> tuple[ChatCompletion, Served | None]:
        """The completion, and what its usage says of how it was served, as a Messages answer passed through is
        billed (`native_served`): the speed and geo it ran at, its advisor's tokens."""
        from adapters.providers.anthropic.wire import WireMessage  # (see the note on the imports)

        data = json_body(body)
        try:
            message = WireMessage.model_validate(data)
        except ValidationError as exc:
            raise answered_error(data) or malformed("upstream answer is not an Anthropic message") from exc
        json_mode = json_tool(req) is not None
        texts: list[str] = []
        reasoning: list[str] = []
        signed: list[dict[str, Any]] = []
        calls: list[ToolCall] = []
        json_answer: str | None = None
        names: ToolNames | None = None  # (made at the answer's first call)
        order: BlockOrder = []  # (the parts as Claude wrote them: see `BlockOrder`)
        searches: Searches | None = None  # (made at the answer's first search)
        annotations: list[dict[str, Any]] = []  # the text's citations of the searches' results
        written = 0  # the text's characters so far
        for block in message.content:
            if block.type == "thinking" and block.signature is not None:
                signed.append(signed_thinking(block.thinking or "", block.signature, len(signed)))
                order.append(("thinking", len(signed) - 1))
            elif block.type == "redacted_thinking" and block.data:
                signed.append(redacted_thinking(block.data, len(signed)))
                order.append(("thinking", len(signed) - 1))
            if block.type == "text" and block.text:
                texts.append(block.text)
                order.append(("text", len(block.text)))
                if block.model_extra and block.model_extra.get("citations"):
                    from adapters.providers.anthropic.search import citations_of  # (an answer that cites)

                    annotations += citations_of(block.model_extra["citations"], written, written + len(block.text))
                written += len(block.text)
            elif block.type in SEARCH_BLOCKS:
                from adapters.providers.anthropic.search import Searches  # (an answer that searched)

                searches = searches or Searches()
                searches.read(block)
            elif block.type == "thinking" and block.thinking:
                reasoning.append(block.thinking)
            elif block.type == "tool_use" and json_mode and block.name == JSON_TOOL:
                json_answer = orjson.dumps(block.input if block.input is not None else {}).decode()
            elif block.type == "tool_use":
                arguments = orjson.dumps(block.input if block.input is not None else {}).decode()
                names = names or ToolNames(req, anthropic_takes)
                function = FunctionCall(name=names.client(block.name or ""), arguments=arguments)
                calls.append(ToolCall(id=block.id or "", function=function))
                order.append(("call", len(calls) - 1))
        content = json_answer if json_answer is not None else ("".join(texts) if texts else None)
        reply = AssistantMessage(
            content=content, tool_calls=calls or None, reasoning_content="".join(reasoning) if reasoning else None
        )
        if searches is not None:
            reply.web_searches = searches.done()
        if annotations and json_answer is None:
            setattr(reply, "annotations", annotations)  # noqa: B010 - (Chat Completions' member, an extra)
        if signed:
            setattr(reply, THINKING_BLOCKS, signed)
            if json_answer is None and thinks_between(order):  # interleaved thinking: a Responses client sees it
                reply.block_order = order
        finish = _finish(message.stop_reason, json_answer is not None, bool(calls))
        completion = ChatCompletion(
            id=message.id,
            created=int(time.time()),
            model=message.model,
            choices=[Choice(message=reply, finish_reason=finish, stop_sequence=message.stop_sequence)],
            usage=message.usage.to_usage() if message.usage.counted() else None,  # (none: estimated)
        )
        return completion, message.usage.served()  # (a usage it cannot read is a ValueError, as `to_usage`'s)

    def stream_parser(self, req: ChatRequest, target: Target) -> AnthropicStreamParser:
        from adapters.providers.anthropic.stream import AnthropicStreamParser  # (a cold start needs none)

        return AnthropicStreamParser(target.model, json_tool(req) is not None, ToolNames(req, anthropic_takes))

    def error(self, status: int, body: bytes, headers: Mapping[str, str]) -> UpstreamError:
        return error_from_body(status, body, headers)

    # --- the Messages API passed through --------------------------------------------------------

    native_apis = frozenset({MESSAGES_API})

    def hosts_search(self, target: Target, req: ChatRequest) -> bool:
        """Anthropic's web search tool (`adapters/providers/anthropic/search.py`), at Anthropic's own API, or where the
        provider's `web_search` says its server runs it: a server that speaks the Messages API at another address
        (`base_url`) may run none of Anthropic's server tools, and refuse or ignore it; there the search was sent,
        and reserved for, where it had been named dropped. Nor beside what forbids Claude to run it (`searchable`)."""
        setting = self.options.get("web_search")
        hosted = anthropic_itself(target.base_url) if setting is None else setting is True
        return hosted and searchable(req)

    def counts_tokens(self, target: Target) -> bool:
        return True

    def native_headers(self, call: NativeCall) -> dict[str, str]:
        """The adapter's headers with the client's `anthropic-version`, and its `anthropic-beta` as it sent it
        followed by the provider's configured betas it did not name (`merged_betas`): the configured one goes
        with every request of the provider, whatever betas the client has."""
        headers = self.headers()
        if call.headers.get("anthropic-version"):
            headers["anthropic-version"] = call.headers["anthropic-version"]
        betas = merged_betas(call.headers.get("anthropic-beta"), headers.get("anthropic-beta"))
        if betas:
            headers["anthropic-beta"] = betas
        return headers

    def native_url(self, call: NativeCall, url: str) -> str:
        """`url` with the client's query string (Claude Code's `?beta=true`, which Anthropic's API takes) when
        the call is in Messages form; a query the client sent another API means nothing here."""
        return f"{url}?{call.query}" if call.query and call.api == MESSAGES_API else url

    def native_request(
        self, call: NativeCall, target: Target, *, stream: bool, output_limit: int | None
    ) -> BuiltRequest:
        body = dict(call.body)
        body["model"] = target.model
        from adapters.providers.anthropic.history import history_for_claude, thinking_refused, without_thinking

        dropped = history_for_claude(body) + thinking_refused(body)
        if output_limit is not None and (
            not isinstance(body.get("max_tokens"), int) or body["max_tokens"] > output_limit
        ):
            body["max_tokens"] = output_limit
            thinking = body.get("thinking")
            if isinstance(thinking, dict) and isinstance(thinking.get("budget_tokens"), int):
                # Anthropic wants the thinking budget below `max_tokens`: the budget's cap lowers both, the
                # thinking budget so that the answer keeps its room beside it.
                if thinking["budget_tokens"] >= output_limit:
                    wish = reasoning.Reasoning(budget=thinking["budget_tokens"])
                    budget = reasoning.thinking_budget(wish, output_limit)
                    if budget is not None:
                        body["thinking"] = {**thinking, "budget_tokens": budget}
                    else:
                        dropped += without_thinking(body)
        url = self.native_url(call, self.messages_url(target))
        request = UpstreamRequest("POST", url, self.native_headers(call), orjson.dumps(body))
        return BuiltRequest(request, dropped)

    def native_usage(self, call: NativeCall, body: dict[str, Any]) -> Usage | None:
        """The usage of a message passed through, which is relayed as it came: its top level is checked as
        `WireMessage` has it, each block only as an object with a type (what the gateway reads of it; the rest of a
        block goes to the client as the provider wrote it), and its usage validated alone (the whole message as a
        model cost a warm invocation about 1.6 µs more); None where it lacks a main count (`WireUsage.counted`: the
        answer is estimated)."""
        from adapters.providers.anthropic.wire import WireUsage  # (see the note on the imports)

        content = body.get("content")
        if not (
            body.get("type") == "message"
            and body.get("role") == "assistant"
            and isinstance(body.get("id"), str)
            and isinstance(body.get("model"), str)
            and isinstance(content, list)
            and all(isinstance(block, dict) and isinstance(block.get("type"), str) for block in content)
            and isinstance(body.get("usage"), dict)
            and isinstance(body.get("stop_reason"), str | None)
            and isinstance(body.get("stop_sequence"), str | None)
        ):
            raise answered_error(body) or malformed("upstream answer is not an Anthropic message")
        try:
            wire = WireUsage.model_validate(body["usage"])
            usage = wire.to_usage()  # (its extras' shapes checked, however its counts are)
        except ValidationError as exc:
            raise malformed("upstream answer's usage is not Anthropic's") from exc
        return usage if wire.counted() else None

    def native_served(self, call: NativeCall, body: Mapping[str, Any]) -> Served | None:
        from adapters.providers.anthropic.wire import SERVED_OPTIONS, WireUsage  # (see the note on the imports)

        usage = body.get("usage")
        if isinstance(usage, dict) and "iterations" not in usage:
            # The common answer: its usage was validated with the message (`native_usage`); only its speed is read.
            options = {name: usage[name] for name in SERVED_OPTIONS if isinstance(usage.get(name), str)}
            return Served(options) if options else None
        try:
            return WireUsage.model_validate(usage).served()
        except ValueError as exc:  # (pydantic's ValidationError among them)
            raise malformed("upstream answer's usage is not Anthropic's") from exc

    def native_meter(self, call: NativeCall) -> MessagesMeter:
        from adapters.providers.anthropic.stream import MessagesMeter  # (with the first stream)

        return MessagesMeter()

    def count_tokens_request(self, call: NativeCall, req: ChatRequest, target: Target) -> BuiltRequest:
        """Anthropic's own `/v1/messages/count_tokens`, with the client's body if it spoke Messages."""
        if call.api == MESSAGES_API:
            body = {name: value for name, value in call.body.items() if name not in ("max_tokens", "stream")}
            from adapters.providers.anthropic.history import history_for_claude

            history_for_claude(body)  # (refused there too)
        else:
            body, _ = self.chat_body(req, target, stream=False)
            body.pop("max_tokens", None)
        body["model"] = target.model
        url = self.native_url(call, f"{self.messages_url(target)}/count_tokens")
        return BuiltRequest(UpstreamRequest("POST", url, self.native_headers(call), orjson.dumps(body)))

    def count_tokens_response(self, body: bytes) -> int:
        return counted_tokens(json_body(body), "input_tokens", "count_tokens")
