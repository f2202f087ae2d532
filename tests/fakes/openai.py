"""A fake OpenAI Chat Completions and Embeddings API, speaking OpenAI's documented wire format.

Behaviour is chosen by the requested model name, so tests need no side channel:
`fail-429` (rate limit with retry-after: 0), `fail-429-wait` (retry-after-ms: 300), `fail-500`, `fail-400`,
`fail-401`, `fail-context` (`context_length_exceeded`, param `messages`), `fail-huge-<status>` (that status with a
message, `type`, `code` and `param` of `HUGE_ERROR_CHARS` each, as a broken or hostile server may send),
`fail-<status>;<header>=<value>;...` (that status with those headers, `tests/fakes/script.py`), `retired` (OpenAI's 404
`model_not_found` for a model the account cannot use), `no-balance` (DeepSeek's 402 `Insufficient Balance`, DeepSeek's
API being this one), `no-quota` (OpenAI's 429 `insufficient_quota`: the account out of credit, `NO_QUOTA`),
`slow` (waits `SLOW_SECONDS` before answering), `stream-cut` (a stream that stops mid-way without [DONE]),
`drip` (a stream whose chunks come `SLOW_SECONDS` apart), `error-drip` (a 500 whose head comes at once and its body
`SLOW_SECONDS` later), `bad-json` (a 200 whose body is not JSON),
`slashes-escaped` (JSON written with every `/` escaped, `\\/`, as PHP's or Java's encoders write it), `no-usage`
(an answer without `usage`), `negative-usage` (usage with negative counts), `echo-auth` (a 400
whose message quotes the request's authorization and `x-` headers back, as some upstream errors do),
`echo-key-<form>` (a 400 quoting the request's key in part or encoded, `ECHOED_FORMS`), `reasoner`
(DeepSeek's reasoning models: `reasoning_content` before the answer, `REASONING`; so does any DeepSeek model in its
thinking mode, `deepseek_thinks`, and there it refuses an earlier tool-calling assistant turn sent back without its
`reasoning_content`, in DeepSeek's words, `LOST_REASONING`), `ramp-limited` (`priority` asked
for and served at `default`, as the answer's `service_tier` says: OpenAI does past a project's priority ramp limits),
`cut-call` (an answer that reached its output cap inside its tool call's arguments: `CUT_ARGUMENTS`, whole or
streamed, and `finish_reason: length`), `vllm-*` (a model on vLLM's server: a `tool_choice` of type `allowed_tools`
refused, `VLLM_TOOL_CHOICE`).
It refuses, as OpenAI does, message and content-part fields Chat Completions does not define (`unknown_parameter`),
a tool message that answers no call of the assistant turn before it, an assistant turn's tool call no tool message
answers (`_unpaired`; in Responses, a `function_call_output` without its `function_call` and the reverse), an image in
a message other than a user's, a file's `file_data` without its `filename`, a tool `description` of null,
`max_tokens` on a reasoning model (o-series, gpt-5), and `temperature` or `top_p` other than 1 there (gpt-5.1 and
later take them with `reasoning_effort: none`), `reasoning_effort` on any other but gpt-oss (served, as a compatible
server serves it, like any model but for its `reasoning_effort`) and DeepSeek's, a `reasoning_effort` (or a Responses
`reasoning.effort`) the model does not take (`EFFORTS`), `metadata` without `store: true`, an output cap past the
model's (`OUTPUT_LIMITS`), more than 4 stop sequences (DeepSeek's: 16), `logprobs` or `top_logprobs` in DeepSeek's
thinking mode (`deepseek-reasoner`; deepseek-chat, the name of its non-thinking mode, with `thinking: {"type":
"enabled"}`; any other `deepseek-` model unless `thinking: {"type": "disabled"}`, "Thinking mode is enabled by
default": "Setting logprobs, top_logprobs will trigger an error", its guides; in the words it refused the reasoner's
`presence_penalty` with, lollipopkit/flutter_gpt_box#213),
a tool call id (or a Responses `call_id`) longer than 64 characters, and a function's name (a tool's, a named
`tool_choice`'s, one an `allowed_tools` choice allows) outside OpenAI's documented rule (`FUNCTION_NAME`: "a-z,
A-Z, 0-9, or contain underscores and dashes, with a maximum length of 64"). A user message may script a tool call
(`tests/fakes/script.py`); a `json_schema` response format is followed. Its answers' ids and tool call ids are new
for each answer, as OpenAI's are.
Embeddings are `[0.1, 0.2, 0.3]` unless the request names `dimensions`: then that many float32 values, written as
OpenAI writes them (`-0.006929283495992422`), or with `encoding_format: base64` the float32s' bytes in base64.
`POST /v1/responses` is OpenAI's Responses API (tests/fakes/openai_responses.py), its encrypted reasoning sealed for
the organisation the `OpenAI-Organization` header names and refused from any other. Every request is recorded on
`app.state.requests`.
"""

from __future__ import annotations

import asyncio
import base64
import random
import re
import struct
import time
from collections.abc import AsyncIterator, Callable
from typing import Any

import orjson
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response, StreamingResponse
from starlette.routing import Route

from tests.fakes import openai_responses
from tests.fakes.script import (
    ScriptedCall,
    escaped,
    escaping,
    headed_fault,
    pieces,
    scripted_turn,
    text_for,
    texts,
)

API_KEY = "test-openai-key"
TEXT, REASONING = openai_responses.TEXT, openai_responses.REASONING
SLOW_SECONDS = 2.0
HUGE_ERROR_CHARS = 2_000_000
# OpenAI's 429 for an account out of credit (its error codes guide), as it words it.
NO_QUOTA = (
    "You exceeded your current quota, please check your plan and billing details. For more information on this error, "
    "read the docs: https://platform.openai.com/docs/guides/error-codes/api-errors."
)
# An answer asked for audio (`modalities: ["text", "audio"]`) speaks its text: so many tokens of audio, counted as
# OpenAI counts them, within `completion_tokens` and apart in `completion_tokens_details.audio_tokens`.
AUDIO_OUTPUT_TOKENS = 90
REASONING_PREFIXES = ("o1", "o3", "o4", "gpt-5")
# The models that take `reasoning_effort`: OpenAI's reasoning models, and gpt-oss, which OpenAI's API does not serve
# ("These models are not served through the OpenAI API", OpenAI's help centre) but the OpenAI-compatible servers that
# host it (vLLM, Groq, Together) do, with `reasoning_effort`, `max_tokens` and `temperature` as any model's; and
# DeepSeek's, whose thinking mode takes it ("Thinking Effort Control: {"reasoning_effort": "low/high/max"}", its
# thinking-mode guide, which maps minimal to low, medium and xhigh to high, ultra to max).
EFFORT_TAKERS = (*REASONING_PREFIXES, "gpt-oss", "deepseek")
# The most output tokens a model may be asked for (its model page), refused above it as each API words it.
OUTPUT_LIMITS = {"gpt-4o-mini": 16_384, "gpt-4o": 16_384, "deepseek-chat": 8_192}
# The reasoning efforts each model takes, by name prefix (first match), as OpenAI's API reference and its 400s list
# them.
EFFORTS: tuple[tuple[str | tuple[str, ...], tuple[str, ...]], ...] = (
    ("gpt-5-pro", ("high",)),
    ("gpt-5.1-codex-max", ("low", "medium", "high", "xhigh")),
    ("gpt-5-codex", ("low", "medium", "high")),
    ("gpt-5.1-codex", ("low", "medium", "high")),
    ("gpt-5.1", ("none", "low", "medium", "high")),
    ("gpt-5.", ("none", "low", "medium", "high", "xhigh")),
    ("gpt-5", ("minimal", "low", "medium", "high")),
    (("o1", "o3", "o4"), ("low", "medium", "high")),
    ("gpt-oss", ("low", "medium", "high")),  # (its model card)
    ("deepseek", ("minimal", "low", "medium", "high", "xhigh", "max", "ultra")),  # (its thinking-mode guide)
)
# vLLM's 400 for a `tool_choice` its request model does not take (none, auto, required or a named function: no
# `allowed_tools`), as its pydantic validation words it; a `vllm-*` model is served as vLLM serves it.
VLLM_TOOL_CHOICE = (
    "1 validation error for ChatCompletionRequest\ntool_choice.ChatCompletionNamedToolChoiceParam.type\n  Input "
    "should be 'function' [type=literal_error, input_value='allowed_tools', input_type=str]"
)
MESSAGE_FIELDS = {"role", "content", "name", "tool_calls", "tool_call_id", "refusal", "audio", "function_call"}
PART_FIELDS = {"type", "text", "image_url", "input_audio", "file", "refusal"}
CALL_FIELDS = {"id", "type", "function"}


INVALID_KEY = ("invalid_request_error", "invalid_api_key")


def incorrect_key(authorization: str) -> str:
    """OpenAI's words for a key it does not know, the key masked as OpenAI masks it: its first 8 characters and
    its last 4 (`sk-VKMIs****...wjh3`)."""
    key = authorization.removeprefix("Bearer ")
    shown = f"{key[:8]}{'*' * 39}{key[-4:]}" if len(key) > 12 else key
    return f"Incorrect API key provided: {shown}. You can find your API key at https://platform.openai.com/account/api-keys."


def _error(
    status: int,
    message: str,
    kind: str,
    code: str | None,
    headers: dict[str, str] | None = None,
    param: str | None = None,
) -> Response:
    body = {"error": {"message": message, "type": kind, "param": param, "code": code}}
    return Response(orjson.dumps(body), status, headers=headers, media_type="application/json")


def _error_dripped(status: int, message: str) -> Response:
    """An error whose status and headers come at once and whose body `SLOW_SECONDS` later (`error-drip`)."""

    async def later() -> AsyncIterator[bytes]:
        await asyncio.sleep(SLOW_SECONDS)
        yield orjson.dumps({"error": {"message": message, "type": "server_error", "param": None, "code": None}})

    return StreamingResponse(later(), status, media_type="application/json")


# How an upstream's error may quote the key it was sent other than whole (`echo-key-<form>`): a message and a param.
ECHOED_FORMS: dict[str, Callable[[str], tuple[str, str | None]]] = {
    "noprefix": lambda key: (key.split("-", 2)[-1], None),
    "split": lambda key: (key[:12], key[12:]),
    "half": lambda key: (key[len(key) // 2 :], None),
    "b64": lambda key: (base64.b64encode(key.encode()).decode(), None),
    "b64auth": lambda key: (base64.b64encode(f"Bearer {key}".encode()).decode(), None),
    "basic": lambda key: (base64.b64encode(f"user:{key}".encode()).decode(), None),
    "hex": lambda key: (key.encode().hex(), None),
    "urlfull": lambda key: ("".join(f"%{byte:02X}" for byte in key.encode()), None),
    "reversed": lambda key: (key[::-1], None),
    "spaced": lambda key: (" ".join(key), None),
}

# OpenAI's answer to a prompt past the model's context window (as its API words it).
CONTEXT_EXCEEDED = (
    "This model's maximum context length is 128000 tokens. However, your messages resulted in 130000 tokens. "
    "Please reduce the length of the messages."
)


def prompt_tokens(body: dict[str, Any]) -> int:
    return max(1, len(orjson.dumps(body.get("messages", body.get("input", "")))) // 4)


# DeepSeek's refusal of a thinking-mode request whose earlier tool-calling assistant turn came back without its
# `reasoning_content` (its thinking-mode guide: "For turns that do perform tool calls, the reasoning_content must be
# fully passed back to the API in all subsequent requests").
LOST_REASONING = "The reasoning_content in the thinking mode must be passed back to the API."


def deepseek_thinks(body: dict[str, Any]) -> bool:
    """Whether a request to a DeepSeek model runs in its thinking mode: `deepseek-reasoner`; deepseek-chat, the name
    of its non-thinking mode, with `thinking: {"type": "enabled"}`; any other `deepseek-` model (`deepseek-v4-pro`)
    unless `thinking: {"type": "disabled"}` ("Thinking mode is enabled by default")."""
    model = str(body.get("model", ""))
    if not model.startswith("deepseek"):
        return False
    switch = (body.get("thinking") or {}).get("type")
    if model.startswith("deepseek-reasoner") or switch == "enabled":
        return True
    return not model.startswith("deepseek-chat") and switch != "disabled"


def reasons(body: dict[str, Any]) -> bool:
    """Whether the answer opens with `reasoning_content` (`REASONING`): a `reasoner` model's, and DeepSeek's in its
    thinking mode (`deepseek_thinks`)."""
    return "reasoner" in str(body.get("model", "")) or deepseek_thinks(body)


def _problem(body: dict[str, Any]) -> str | None:
    """What the real API would refuse in a chat request, for the rules a translation may get wrong."""
    model = str(body.get("model", ""))
    reasoning = model.startswith(REASONING_PREFIXES)
    if reasoning and "max_tokens" in body:
        return (
            "Unsupported parameter: 'max_tokens' is not supported with this model. Use 'max_completion_tokens' instead."
        )
    cap_field = "max_completion_tokens" if "max_completion_tokens" in body else "max_tokens"
    cap, most = body.get(cap_field), OUTPUT_LIMITS.get(model)
    if isinstance(cap, int) and most is not None and cap > most:
        if model.startswith("deepseek"):
            return f"Invalid max_tokens value, the valid range of max_tokens is [1, {most}]"
        return (
            f"{cap_field} is too large: {cap}. This model supports at most {most} completion tokens, whereas you "
            f"provided {cap}."
        )
    stops, most_stops = body.get("stop"), 16 if model.startswith("deepseek") else 4
    if isinstance(stops, list) and len(stops) > most_stops:
        return (
            f"Invalid 'stop': array too long. Expected an array with maximum length {most_stops}, but got an array "
            f"with length {len(stops)} instead."
        )
    if body.get("metadata") is not None and body.get("store") is not True and not model.startswith("deepseek"):
        return "The 'metadata' parameter is only allowed when 'store' is enabled."
    if model.startswith("deepseek") and (body.get("response_format") or {}).get("type") == "json_schema":
        return "This response_format type is unavailable now"  # DeepSeek takes json_object only
    thinks = deepseek_thinks(body)
    for name in ("logprobs", "top_logprobs") if thinks else ():
        if name in body:
            return f"{model} does not support the parameter `{name}`"
    for message in body.get("messages") or () if thinks else ():
        if message.get("role") == "assistant" and message.get("tool_calls") and "reasoning_content" not in message:
            return LOST_REASONING
    if not model.startswith(EFFORT_TAKERS) and "reasoning_effort" in body:
        return "Unsupported parameter: 'reasoning_effort' is not supported with this model."
    sampling = _sampling_refused(body, model) if reasoning else None
    if sampling is not None:
        return sampling
    choice = body.get("tool_choice")
    if model.startswith("vllm") and isinstance(choice, dict) and choice.get("type") != "function":
        return VLLM_TOOL_CHOICE
    for i, message in enumerate(body.get("messages") or []):
        calls = message.get("tool_calls") or message.get("function_call")
        if message.get("role") == "assistant" and message.get("content") is None and not calls:
            # "content: required unless tool_calls or function_call is specified" (the API reference)
            return f"Invalid value for 'messages[{i}].content': expected a string, got null."
        for j, part in enumerate(message.get("content") if isinstance(message.get("content"), list) else []):
            file = part.get("file") if part.get("type") == "file" else None
            if isinstance(file, dict) and "file_data" in file and "filename" not in file:
                # OpenAI's words (it names the other way of giving a file).
                return f"Missing required parameter: 'messages[{i}].content[{j}].file.file_id'."
            if part.get("type") == "image_url" and message.get("role") != "user":
                return (
                    f"Invalid 'messages[{i}]'. Image URLs are only allowed for messages with role 'user', but this "
                    f"message with role '{message.get('role')}' contains an image URL."
                )
    for i, tool in enumerate(body.get("tools") or []):
        if "description" in tool.get("function", {}) and tool["function"]["description"] is None:
            return f"Invalid type for 'tools[{i}].function.description': expected a string, but got null instead."
    return None


def _unknown_parameter(body: dict[str, Any]) -> Response | None:
    """OpenAI's 400 for a message, content-part or tool-call field Chat Completions does not define (`MESSAGE_FIELDS`,
    `PART_FIELDS`, `CALL_FIELDS`: OpenRouter's `reasoning_details`, Claude's `cache_control`, a stream delta's `index`),
    in its words: "Unknown parameter: 'messages[1].content[1].file.data'.", code `unknown_parameter`
    (pydantic/pydantic-ai; "Unknown parameter: 'messages[2].tool_calls[0].index'", labring/FastGPT#1253). DeepSeek
    (served by this fake too) takes an assistant turn's `reasoning_content` back."""
    deepseek = str(body.get("model", "")).startswith("deepseek")
    fields = MESSAGE_FIELDS | {"reasoning_content"} if deepseek else MESSAGE_FIELDS
    for i, message in enumerate(body.get("messages") or []):
        unknown = [f"messages[{i}].{name}" for name in message if name not in fields]
        for j, part in enumerate(message.get("content") if isinstance(message.get("content"), list) else []):
            unknown += [f"messages[{i}].content[{j}].{name}" for name in part if name not in PART_FIELDS]
        for j, call in enumerate(message.get("tool_calls") or []):
            unknown += [f"messages[{i}].tool_calls[{j}].{name}" for name in call if name not in CALL_FIELDS]
        if unknown:
            return _error(
                400, f"Unknown parameter: '{unknown[0]}'.", "invalid_request_error", UNKNOWN, param=unknown[0]
            )
    return None


UNKNOWN = "unknown_parameter"
# OpenAI's words for a tool message that answers no call of the assistant turn before it, and for an assistant turn
# whose calls are not all answered by the tool messages after it (its `param`: the message's role); DeepSeek's, with
# its `code` (OpenManus#23, deepseek-chat; zed-industries/zed#51944).
ORPHAN_TOOL = (
    "Invalid parameter: messages with role 'tool' must be a response to a preceeding message with 'tool_calls'."
)
UNANSWERED = (
    "An assistant message with 'tool_calls' must be followed by tool messages responding to each 'tool_call_id'. "
    "The following tool_call_ids did not have response messages: {ids}"
)
DEEPSEEK_ORPHAN_TOOL = "Messages with role 'tool' must be a response to a preceding message with 'tool_calls'"
DEEPSEEK_UNANSWERED = (
    "An assistant message with 'tool_calls' must be followed by tool messages responding to each 'tool_call_id'. "
    "(insufficient tool messages following tool_calls message)"
)


def _unpaired(body: dict[str, Any]) -> Response | None:
    """The 400 for a conversation whose tool calls and tool messages do not pair, as OpenAI (or DeepSeek) words it:
    each tool message answers a call of the assistant turn just before it (or before the tool messages that follow
    that turn), and each such call is answered before the next message of another role."""
    deepseek = str(body.get("model", "")).startswith("deepseek")
    asked: set[str] = set()  # the calls of the assistant turn the tool messages now follow
    waiting: list[str] = []  # those not answered yet
    opened = 0
    messages = body.get("messages") or []
    for i, message in enumerate(messages):
        if message.get("role") == "tool":
            call_id = message.get("tool_call_id")
            if call_id not in asked:
                if deepseek:
                    return _error(400, DEEPSEEK_ORPHAN_TOOL, "invalid_request_error", "invalid_request_error")
                return _error(400, ORPHAN_TOOL, "invalid_request_error", None, param=f"messages.[{i}].role")
            if call_id in waiting:
                waiting.remove(call_id)
            continue
        if waiting:
            break
        calls = message.get("tool_calls") if message.get("role") == "assistant" else None
        waiting, opened = [str(call.get("id")) for call in calls or ()], i
        asked = set(waiting)
    if not waiting:
        return None
    if deepseek:
        return _error(400, DEEPSEEK_UNANSWERED, "invalid_request_error", "invalid_request_error")
    unanswered = UNANSWERED.format(ids=", ".join(waiting))
    return _error(400, unanswered, "invalid_request_error", None, param=f"messages.[{opened}].role")


def _sampling_refused(body: dict[str, Any], model: str) -> str | None:
    """A reasoning model's refusal of `temperature` or `top_p`, in OpenAI's words: the o-series takes neither, gpt-5
    only their default (1); gpt-5.1 and later take them with `reasoning_effort: none`."""
    if model.startswith("gpt-5.") and body.get("reasoning_effort") == "none":
        return None
    for name in ("temperature", "top_p"):
        if name not in body:
            continue
        if not model.startswith("gpt-5"):
            return f"Unsupported parameter: '{name}' is not supported with this model."
        if body[name] != 1:
            return (
                f"Unsupported value: '{name}' does not support {body[name]} with this model. Only the default (1) "
                "value is supported."
            )
    return None


def _unsupported_effort(body: dict[str, Any], param: str) -> Response | None:
    """OpenAI's 400 for a reasoning effort the model does not take (`param`: `reasoning_effort` on Chat
    Completions, `reasoning.effort` on Responses), in its words."""
    model = str(body.get("model", ""))
    wish = body.get("reasoning")
    effort = body.get("reasoning_effort") if param == "reasoning_effort" else (wish or {}).get("effort")
    takes = next((values for prefix, values in EFFORTS if model.startswith(prefix)), None)
    if effort is None or takes is None or effort in takes:
        return None
    quoted = [f"'{value}'" for value in takes]
    supported = f"{', '.join(quoted[:-1])}, and {quoted[-1]}" if len(quoted) > 2 else " and ".join(quoted)
    message = (
        f"Unsupported value: '{effort}' is not supported with the '{model}' model. Supported values are: {supported}."
    )
    return _error(400, message, "invalid_request_error", "unsupported_value", param=param)


def _too_long(body: dict[str, Any]) -> tuple[str, int] | None:
    """The `param` and length of the first tool call id OpenAI would refuse as too long (`MAX_ID`)."""
    for i, message in enumerate(body.get("messages") or []):
        for j, call in enumerate(message.get("tool_calls") or []):
            if len(str(call.get("id", ""))) > openai_responses.MAX_ID:
                return f"messages[{i}].tool_calls[{j}].id", len(call["id"])
        if len(str(message.get("tool_call_id", ""))) > openai_responses.MAX_ID:
            return f"messages[{i}].tool_call_id", len(message["tool_call_id"])
    return None


FUNCTION_NAME = re.compile(r"[a-zA-Z0-9_-]+")


def _misnamed(body: dict[str, Any]) -> Response | None:
    """OpenAI's 400 for the first function named outside its rule (`FUNCTION_NAME`, at most 64), in its words: a
    Chat Completions body's tools and choice, or a Responses body's (the name beside the `type`) and its input's
    calls."""
    functions = [
        (f"tools[{i}].function", tool["function"]) if "function" in tool else (f"tools[{i}]", tool)
        for i, tool in enumerate(body.get("tools") or [])
        if "function" in tool or tool.get("type") == "function"
    ]
    choice = body.get("tool_choice")
    if isinstance(choice, dict) and "function" in choice:
        functions.append(("tool_choice.function", choice.get("function") or {}))
    elif isinstance(choice, dict) and choice.get("type") == "function":
        functions.append(("tool_choice", choice))
    functions += allowed_functions(choice)
    items = body.get("input")
    functions += [
        (f"input[{i}]", item)
        for i, item in enumerate(items if isinstance(items, list) else ())
        if isinstance(item, dict) and item.get("type") == "function_call"
    ]
    for where, function in functions:
        name, param = str(function.get("name", "")), f"{where}.name"
        if len(name) > openai_responses.MAX_ID:
            message = openai_responses.string_too_long(param, len(name))
            return _error(400, message, "invalid_request_error", openai_responses.ID_TOO_LONG, param=param)
        if FUNCTION_NAME.fullmatch(name) is None:
            message = (
                f"Invalid '{param}': string does not match pattern. Expected a string that matches the pattern "
                "'^[a-zA-Z0-9_-]+$'."
            )
            return _error(400, message, "invalid_request_error", "invalid_value", param=param)
    return None


def allowed_functions(choice: Any) -> list[tuple[str, dict[str, Any]]]:
    """The functions a `tool_choice` of type `allowed_tools` allows, each with where it is: Chat Completions'
    (`allowed_tools.tools[].function`) or the Responses API's (`tools[]`, the name beside the `type`)."""
    if not isinstance(choice, dict) or choice.get("type") != "allowed_tools":
        return []
    chat = isinstance(choice.get("allowed_tools"), dict)
    allowed = (choice["allowed_tools"] if chat else choice).get("tools") or []
    if chat:
        return [(f"tool_choice.allowed_tools.tools[{i}].function", tool["function"]) for i, tool in enumerate(allowed)]
    return [(f"tool_choice.tools[{i}]", tool) for i, tool in enumerate(allowed)]


def allowed_call(choice: Any) -> str | None:
    """The function a `tool_choice` of `allowed_tools` in mode `required` makes the model call: the first allowed."""
    functions = allowed_functions(choice)
    if not functions:
        return None
    mode = choice["allowed_tools"]["mode"] if isinstance(choice.get("allowed_tools"), dict) else choice.get("mode")
    return str(functions[0][1]["name"]) if mode == "required" else None


def _refused_as_too_long(found: tuple[str, int] | None) -> Response | None:
    if found is None:
        return None
    param, length = found
    message = openai_responses.string_too_long(param, length)
    return _error(400, message, "invalid_request_error", openai_responses.ID_TOO_LONG, param=param)


def _script(body: dict[str, Any]) -> ScriptedCall | str | None:
    """The scripted turn, answering the last tool message when no assistant turn came since: a user message may follow
    the tool messages in the same turn (the images the tools returned, which a tool message does not take)."""
    messages = body.get("messages") or []
    users = [texts(m.get("content")) for m in messages if m.get("role") == "user"]
    since = next((m for m in reversed(messages) if m.get("role") != "user"), {})
    result = texts(since.get("content")) if since.get("role") == "tool" else None
    return scripted_turn(users, [t["function"]["name"] for t in body.get("tools") or []], result)


def _answer_text(body: dict[str, Any]) -> str:
    script = _script(body)
    if isinstance(script, str):
        return script
    fmt = body.get("response_format") or {}
    if fmt.get("type") == "json_object":  # JSON mode: a model follows a schema its instructions give
        for message in body.get("messages") or []:
            content = message.get("content")
            if message.get("role") == "system" and isinstance(content, str) and "JSON Schema: " in content:
                return text_for(orjson.loads(content.rsplit("JSON Schema: ", 1)[1]), TEXT)
    return text_for((fmt.get("json_schema") or {}).get("schema"), TEXT)


# A tool call's arguments cut by the output cap (a `cut-call` model), in the middle of their second value.
CUT_ARGUMENTS = '{"city":"Paris","units":"cel'


def call_id() -> str:
    """A new tool call's id, of OpenAI's form (`call_` and 24 letters and digits): unique per answer, as OpenAI's are
    (a client that tells its calls apart by id, as Claude Code does, saw one call made again and again)."""
    return f"call_{openai_responses.unique(24)}"


def completion_id() -> str:
    """A new answer's id, of OpenAI's form (`chatcmpl-` and 29 letters and digits): each of its chunks carries it."""
    return f"chatcmpl-{openai_responses.unique(29)}"


def _finish(model: str, call: dict[str, Any] | None) -> str:
    if "cut-call" in model:
        return "length"
    return "tool_calls" if call else "stop"


def _tool_call(body: dict[str, Any]) -> dict[str, Any] | None:
    if "cut-call" in str(body.get("model")):
        name = (body.get("tools") or [{"function": {"name": "get_weather"}}])[0]["function"]["name"]
        return {"id": call_id(), "type": "function", "function": {"name": name, "arguments": CUT_ARGUMENTS}}
    tools = body.get("tools") or []
    choice = body.get("tool_choice")
    script = _script(body)
    if isinstance(script, ScriptedCall):
        return {
            "id": call_id(),
            "type": "function",
            "function": {"name": script.name, "arguments": script.arguments_json},
        }
    if not tools or choice in (None, "auto", "none"):
        return None
    if isinstance(choice, dict) and choice.get("type") == "allowed_tools":
        allowed = allowed_call(choice)
        if allowed is None:
            return None
        return {"id": call_id(), "type": "function", "function": {"name": allowed, "arguments": '{"city":"Paris"}'}}
    name = choice["function"]["name"] if isinstance(choice, dict) else tools[0]["function"]["name"]
    return {"id": call_id(), "type": "function", "function": {"name": name, "arguments": '{"city":"Paris"}'}}


def create_app() -> Starlette:
    requests: list[dict[str, Any]] = []

    async def guard(request: Request) -> tuple[dict[str, Any] | None, Response | None]:
        raw = await request.body()
        body = orjson.loads(raw) if raw else {}
        requests.append(
            {
                "path": request.url.path,
                "query": request.url.query,
                "headers": dict(request.headers),
                "json": body,
                "peer": f"{request.client.host}:{request.client.port}" if request.client else "",
            }
        )
        echoed = str(body.get("model", "")).partition("echo-key-")[2]
        if echoed:  # (a key it does not know, refused as it quotes it)
            key = request.headers.get("authorization", "").removeprefix("Bearer ")
            message, param = ECHOED_FORMS[echoed](key)
            return None, _error(400, f"Incorrect credentials: {message}", "invalid_request_error", None, param=param)
        if request.headers.get("authorization") != f"Bearer {API_KEY}":
            return None, _error(401, incorrect_key(request.headers.get("authorization", "")), *INVALID_KEY)
        model = str(body.get("model", ""))
        if "retired" in model:
            missing = f"The model `{model}` does not exist or you do not have access to it."
            return None, _error(404, missing, "invalid_request_error", "model_not_found")
        if "no-balance" in model:
            return None, _error(402, "Insufficient Balance", "unknown_error", "invalid_request_error")
        if "no-quota" in model:
            return None, _error(429, NO_QUOTA, "insufficient_quota", "insufficient_quota")
        if "fail-huge-" in model:
            huge = "x" * HUGE_ERROR_CHARS
            return None, _error(int(model.rsplit("-", 1)[1]), huge, huge, huge, param=huge)
        headed = headed_fault(model)
        if headed is not None:
            status, headers = headed
            kind = "requests" if status == 429 else "server_error"
            failure = _error(status, f"Scripted failure {status}", kind, None)
            failure.raw_headers += headers
            return None, failure
        if "fail-429-wait" in model:  # a wait in milliseconds too, as OpenAI gives it
            return None, _error(
                429,
                "Rate limit reached for requests",
                "requests",
                "rate_limit_exceeded",
                {"retry-after": "1", "retry-after-ms": "300"},
            )
        if "fail-429" in model:
            return None, _error(
                429, "Rate limit reached for requests", "requests", "rate_limit_exceeded", {"retry-after": "0"}
            )
        if "error-drip" in model:
            return None, _error_dripped(500, "The server had an error while processing your request.")
        if "fail-500" in model:
            return None, _error(500, "The server had an error while processing your request.", "server_error", None)
        if "echo-auth" in model:
            custom = "".join(f", {k}={v}" for k, v in request.headers.items() if k.startswith("x-"))
            quoted = f"Invalid request; received headers: authorization={request.headers.get('authorization')}{custom}"
            return None, _error(400, quoted, "invalid_request_error", None)
        if "fail-400" in model:
            return None, _error(400, "Invalid value for 'messages'.", "invalid_request_error", "invalid_value")
        if "fail-context" in model:
            return None, _error(
                400, CONTEXT_EXCEEDED, "invalid_request_error", "context_length_exceeded", param="messages"
            )
        if "slow" in model:
            await asyncio.sleep(SLOW_SECONDS)
        return body, None

    async def chat(request: Request) -> Response:
        body, failure = await guard(request)
        if failure is not None or body is None:
            return failure or _error(400, "no body", "invalid_request_error", None)
        model = body["model"]
        if "bad-json" in model:
            return Response(b"{not json", 200, media_type="application/json")
        unknown = _unknown_parameter(body)
        if unknown is not None:
            return unknown
        problem = _problem(body)
        if problem:
            return _error(400, problem, "invalid_request_error", None)
        for refused in (
            _unsupported_effort(body, "reasoning_effort"),
            _refused_as_too_long(_too_long(body)),
            _misnamed(body),
            _unpaired(body),
        ):
            if refused is not None:
                return refused
        call = _tool_call(body)
        text = _answer_text(body)
        usage = {
            "prompt_tokens": prompt_tokens(body),
            "completion_tokens": 7,
            "total_tokens": prompt_tokens(body) + 7,
            # A `cache-hit` model answers half its prompt from the cache; a `reasoner` spent 4 of its output
            # tokens reasoning (both as OpenAI reports them).
            "prompt_tokens_details": {
                "cached_tokens": prompt_tokens(body) // 2 if "cache-hit" in model else 0,
                "audio_tokens": 0,
            },
            "completion_tokens_details": {"reasoning_tokens": 4 if reasons(body) else 0, "audio_tokens": 0},
        }
        spoken = "audio" in (body.get("modalities") or ())
        if spoken:
            usage["completion_tokens"] += AUDIO_OUTPUT_TOKENS
            usage["total_tokens"] += AUDIO_OUTPUT_TOKENS
            usage["completion_tokens_details"] = {
                "reasoning_tokens": 0,
                "audio_tokens": AUDIO_OUTPUT_TOKENS,
                "text_tokens": 7,
            }
        if "negative-usage" in model:
            usage = {"prompt_tokens": -1_000_000, "completion_tokens": -1_000_000, "total_tokens": -2_000_000}
        if body.get("stream"):
            stream = escaping(_stream(body, call, usage, text), model)
            return StreamingResponse(stream, media_type="text/event-stream")
        if "garbled" in model:  # an answer of another shape: `choices` is no list
            return Response(orjson.dumps({"id": completion_id(), "object": "chat.completion", "choices": "oops"}))
        message: dict[str, Any] = {"role": "assistant", "content": None if call else text, "refusal": None}
        if call:
            message["tool_calls"] = [call]
        if reasons(body):
            message["reasoning_content"] = REASONING
        if spoken:  # the text is the audio's transcript (the reference's `message.audio`), the content null
            message["content"] = None
            message["audio"] = {
                "id": f"audio_{openai_responses.unique(24)}",
                "data": "UklGRiQAAABXQVZF",
                "expires_at": int(time.time()) + 3600,
                "transcript": text,
            }
        answer = {
            "id": completion_id(),
            "object": "chat.completion",
            "created": int(time.time()),
            "model": model,
            "choices": [{"index": 0, "message": message, "logprobs": None, "finish_reason": _finish(model, call)}],
            "usage": usage,
            "service_tier": openai_responses.served_tier(body),
            "system_fingerprint": "fp_fake",
        }
        if "no-usage" in model:
            del answer["usage"]
        return Response(escaped(orjson.dumps(answer), model), media_type="application/json")

    async def _stream(
        body: dict[str, Any], call: dict[str, Any] | None, usage: dict[str, Any], text: str
    ) -> AsyncIterator[bytes]:
        model = body["model"]
        base = {
            "id": completion_id(),
            "object": "chat.completion.chunk",
            "created": int(time.time()),
            "model": model,
            "service_tier": openai_responses.served_tier(body),
        }

        def event(choices: list[dict[str, Any]], **extra: Any) -> bytes:
            return (
                b"data: "
                + orjson.dumps({**base, "system_fingerprint": "fp_fake", "choices": choices, **extra})
                + b"\n\n"
            )

        first = None
        if call:
            first = {
                "index": 0,
                "id": call["id"],
                "type": "function",
                "function": {"name": call["function"]["name"], "arguments": ""},
            }
        if first is not None and not reasons(body):
            # OpenAI's first delta of a call: no text (`content: null`), the call's id and name.
            head = {"role": "assistant", "content": None, "tool_calls": [first], "refusal": None}
            yield event([{"index": 0, "delta": head, "finish_reason": None}])
        else:
            yield event(
                [{"index": 0, "delta": {"role": "assistant", "content": "", "refusal": None}, "finish_reason": None}]
            )
            if reasons(body):
                for piece in (REASONING[:10], REASONING[10:]):
                    yield event([{"index": 0, "delta": {"reasoning_content": piece}, "finish_reason": None}])
            if first is not None:
                yield event([{"index": 0, "delta": {"tool_calls": [first]}, "finish_reason": None}])
        if call:
            arguments = call["function"]["arguments"]
            for piece in (arguments[: len(arguments) // 2], arguments[len(arguments) // 2 :]):
                delta = {"tool_calls": [{"index": 0, "function": {"arguments": piece}}]}
                yield event([{"index": 0, "delta": delta, "finish_reason": None}])
        else:
            for i, piece in enumerate(pieces(text)):
                if "stream-cut" in model and i == 2:
                    return
                if "garbled" in model and i == 2:  # a chunk of another shape: `choices` is no list
                    yield b"data: " + orjson.dumps({**base, "choices": "oops"}) + b"\n\n"
                if "drip" in model:
                    await asyncio.sleep(SLOW_SECONDS)
                yield event([{"index": 0, "delta": {"content": piece}, "finish_reason": None}])
        yield event([{"index": 0, "delta": {}, "finish_reason": _finish(model, call)}])
        if (body.get("stream_options") or {}).get("include_usage"):
            yield event([], usage=usage)
        yield b"data: [DONE]\n\n"

    async def responses(request: Request) -> Response:
        body, failure = await guard(request)
        if failure is not None or body is None:
            return failure or _error(400, "no body", "invalid_request_error", None)
        refused = openai_responses.problem(body)
        if refused is not None:
            return _error(400, refused, "invalid_request_error", None)
        organization = request.headers.get(openai_responses.ORGANIZATION_HEADER)
        foreign = openai_responses.foreign_reasoning(body, organization)
        if foreign is not None:
            return _error(400, foreign, "invalid_request_error", openai_responses.INVALID_ENCRYPTED_CONTENT)
        unsupported = _unsupported_effort(body, "reasoning.effort")
        if unsupported is not None:
            return unsupported
        too_long = _refused_as_too_long(openai_responses.too_long(body))
        if too_long is not None:
            return too_long
        misnamed = _misnamed(body)
        if misnamed is not None:
            return misnamed
        orphan = openai_responses.orphan_output(body)
        if orphan is not None:
            return _error(400, orphan, "invalid_request_error", None, param="input")
        missing = openai_responses.unpersisted(body)
        if missing is not None:
            return _error(404, missing, "invalid_request_error", None)
        if "slow" in str(body.get("model")):
            await asyncio.sleep(SLOW_SECONDS)
        tokens = prompt_tokens(body)
        model = str(body.get("model"))
        if body.get("stream"):
            stream = escaping(openai_responses.events(body, tokens, "stream-cut" in model, organization), model)
            return StreamingResponse(stream, media_type="text/event-stream")
        output = openai_responses.output_of(body, organization)
        answer = openai_responses.response_of(body, output, "completed", tokens)
        return Response(escaped(orjson.dumps(answer), model), media_type="application/json")

    async def embeddings(request: Request) -> Response:
        body, failure = await guard(request)
        if failure is not None or body is None:
            return failure or _error(400, "no body", "invalid_request_error", None)
        inputs = body["input"] if isinstance(body["input"], list) else [body["input"]]
        if inputs and isinstance(inputs[0], int):  # one input of token ids
            inputs = [inputs]
        dimensions = body.get("dimensions")
        data = [
            {"object": "embedding", "index": i, "embedding": vector(i, dimensions, body.get("encoding_format"))}
            for i in range(len(inputs))
        ]
        if inputs and all(isinstance(item, list) for item in inputs):  # token ids (LangChain sends them): an id a token
            tokens = sum(len(item) for item in inputs)
        else:
            tokens = prompt_tokens(body)
        answer = {
            "object": "list",
            "data": data,
            "model": body["model"],
            "usage": {"prompt_tokens": tokens, "total_tokens": tokens},
        }
        return Response(orjson.dumps(answer), media_type="application/json")

    def vector(index: int, dimensions: int | None, encoding: str | None) -> list[float] | str:
        if dimensions is None:
            return [0.1, 0.2, 0.3]
        draw = random.Random(index)
        packed = struct.pack(f"<{dimensions}f", *(draw.uniform(-0.1, 0.1) for _ in range(dimensions)))
        if encoding == "base64":
            return base64.b64encode(packed).decode()
        return list(struct.unpack(f"<{dimensions}f", packed))  # float32s, as doubles: OpenAI's way of writing them

    app = Starlette(
        routes=[
            Route("/v1/chat/completions", chat, methods=["POST"]),
            Route("/v1/embeddings", embeddings, methods=["POST"]),
            Route("/v1/responses", responses, methods=["POST"]),
        ]
    )
    app.state.requests = requests
    return app
