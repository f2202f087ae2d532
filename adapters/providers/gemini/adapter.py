"""Google's Gemini API (Generative Language API v1beta) behind the OpenAI Chat Completions form.

Requests go to `models/{model}:generateContent` (or `:streamGenerateContent?alt=sse`), with the key in
the `x-goog-api-key` header so it never appears in a URL that a log or a proxy could keep. Messages become
`contents` (roles `user` and `model`, consecutive turns of one role merged, as Gemini requires
alternation), system and developer messages become `systemInstruction`, sampling parameters go into
`generationConfig` by a `Rule` table, and whatever Gemini cannot honour is reported as dropped.
"""

from __future__ import annotations

import base64
import functools
import logging
import math
import mimetypes
import re
import secrets
import struct
import time
import urllib.parse
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

import orjson

from adapters.providers import reasoning
from adapters.providers.model_rules import rules_for
from adapters.providers.params import (
    SKIP_SIGNATURE,
    Rule,
    ToolNames,
    apply_rules,
    asks,
    at_most,
    call_signature,
    chosen_tools,
    named_messages,
    require_turns,
    returned_media_label,
    signed_call_id,
    strict_schema,
    thinking_blocks,
    unsent_part_fields,
    unsent_reasoning,
    wire_call_id,
)
from handler.errors import InvalidRequestError, UpstreamError
from handler.ports import BuiltRequest, NativeCall, ProviderAdapter, Target, UpstreamRequest
from handler.redaction import said_clipped
from handler.schemas import (
    TOOL_CONTEXT,
    AssistantMessage,
    AudioPart,
    ChatCompletion,
    ChatRequest,
    Choice,
    CompletionTokensDetails,
    ContentPart,
    Embedding,
    EmbeddingsRequest,
    EmbeddingsResponse,
    EmbeddingsUsage,
    FilePart,
    FinishReason,
    FunctionCall,
    ImagePart,
    Message,
    TextPart,
    ToolCall,
    Usage,
    allowed_names,
    completion_id,
    reported,
)
from handler.wire import counted_tokens, error_excerpt, json_body, malformed, named_wait, upstream_error, usage_count

if TYPE_CHECKING:
    from adapters.providers.gemini.stream import GeminiStreamParser

log = logging.getLogger("gateway")

API_VERSION = "v1beta"
# A path's last segment that names a version of the API (`v1`, Google's stable one; `v1beta`; `v1alpha`): a
# `base_url` ending in one is that version's root, taken as it is.
VERSION_SEGMENT = re.compile(r"v\d+(?:(?:alpha|beta)\d*)?")
MAX_STOP_SEQUENCES = 5  # Gemini rejects more than five stop sequences
# `batchEmbedContents` takes at most 100 requests ("at most 100 requests can be in one batch").
MAX_EMBED_BATCH = 100


def embedded_tokens(text: str) -> int:
    """An input's tokens, estimated: `batchEmbedContents` reports none (the line says `estimate`). About four
    characters a token (Google's own rule of thumb, for English), and about one for a character past ASCII (a CJK
    character, three bytes in UTF-8: at four characters a token, 1,000 Chinese characters would be 251 tokens)."""
    chars = len(text)
    beyond = len(text.encode()) - chars  # the bytes past the first of each character outside ASCII
    return chars // 4 + beyond // 2 + 1


DROP = Rule(drop=True)

# OpenAI top-level parameters that land in `generationConfig`. `max_completion_tokens` comes after
# `max_tokens` so it wins when a client sends both, as OpenAI itself reads them.
GENERATION_RULES: dict[str, Rule] = {
    "max_tokens": Rule(rename="maxOutputTokens"),
    "max_completion_tokens": Rule(rename="maxOutputTokens"),
    "temperature": Rule(),
    "top_p": Rule(rename="topP"),
    "n": Rule(rename="candidateCount", clamp=(1, 8)),
    "presence_penalty": Rule(rename="presencePenalty"),
    "frequency_penalty": Rule(rename="frequencyPenalty"),
    "seed": Rule(),
    # Gemini may call several functions in one turn and has no switch to forbid it.
    "parallel_tool_calls": Rule(only=(True,)),
    # Gemini's logprobs come back in another shape on few models; never promise them.
    "logprobs": DROP,
    "top_logprobs": DROP,
    "logit_bias": DROP,
    "user": DROP,
}

# Handled by code below rather than by the table.
STRUCTURAL = frozenset(
    {
        "model",
        "messages",
        "stream",
        "stream_options",
        "tools",
        "tool_choice",
        "response_format",
        "stop",
        "reasoning_effort",
        "thinking",
        "web_search_options",  # (`ChatRequest.web_search`: Grounding with Google Search)
    }
)
# Gemini 2.5's `thinkingBudget` for "think as much as the prompt needs".
DYNAMIC_BUDGET = -1
# Gemini 3 Pro takes only `low` and `high` (Flash all four levels); the nearest of them.
PRO_LEVELS = {"minimal": "low", "medium": "high"}

# Google's `FinishReason` (the google-genai SDK's enum) as OpenAI's finish reasons. `OTHER` and
# `FINISH_REASON_UNSPECIFIED` say nothing, and are read as a reason the gateway does not know (`finish_reason`).
FINISH_REASONS: dict[str, FinishReason] = {
    "STOP": "stop",
    "MAX_TOKENS": "length",
    # The answer reached the per-request token limit unfinished (Gemini would go on from its `continuation_token`,
    # which no client API the gateway serves carries): cut short, as by the output cap.
    "CONTINUATION": "length",
    "SAFETY": "content_filter",
    "RECITATION": "content_filter",
    "BLOCKLIST": "content_filter",
    "PROHIBITED_CONTENT": "content_filter",
    "SPII": "content_filter",
    "ESCALATION": "content_filter",  # filtered by an escalation rule
    "MODEL_ARMOR": "content_filter",  # (Vertex AI's alone: blocked by Model Armor)
    "IMAGE_SAFETY": "content_filter",
    "IMAGE_PROHIBITED_CONTENT": "content_filter",
    "IMAGE_RECITATION": "content_filter",
    # An image withheld for a reason Google does not name, or asked for and not made: no image, as the reasons
    # beside it say, never a finished answer.
    "IMAGE_OTHER": "content_filter",
    "NO_IMAGE": "content_filter",
    "LANGUAGE": "content_filter",  # an answer in a language Gemini does not support, withheld
}
# Reasons Gemini ends a candidate with no usable answer for, whatever text came before (a call among its parts is
# still the client's to run): the provider's malformed answer, billed, which another deployment may do better.
UNANSWERED: dict[str, str] = {
    # The model wrote a function call Gemini could not parse, or one to a tool it was not offered.
    "MALFORMED_FUNCTION_CALL": "the model wrote an invalid function call",
    "UNEXPECTED_TOOL_CALL": "the model wrote an invalid function call",
    # Gemini's own tool loop (its built-in tools) stopped the model calling tools before it answered.
    "TOO_MANY_TOOL_CALLS": "the model called tools too many times in a row and was stopped before it answered",
    # A thought signature the model's earlier call needed did not reach it (a client that dropped it).
    "MISSING_THOUGHT_SIGNATURE": "Gemini found a thought signature missing from the conversation",
    "MALFORMED_RESPONSE": "Gemini's answer was malformed",
    # The deployment's account, not the request: another deployment's may answer.
    "PUP_LIMITED_DISABLED": "the Gemini account is limited or disabled under Google's Prohibited Use Policy",
}
# The most of a finishReason the gateway does not know that a log line or an error repeats.
REASON_CHARS = 100

TOOL_CHOICE_MODES = {"auto": "AUTO", "none": "NONE", "required": "ANY"}

_DATA_URL = re.compile(r"^data:(?P<mime>[^;,]*)(?P<params>(;[^,]*)?),(?P<data>.*)$", re.DOTALL)


# --- errors -------------------------------------------------------------------------------------


def _duration_seconds(value: Any) -> float | None:
    """A protobuf Duration in JSON (`"27s"`, `"1.5s"`) as seconds, as a `retry-after` is read (`"infs"` is none)."""
    if isinstance(value, str) and value.endswith("s"):
        try:
            return named_wait(float(value[:-1]))
        except ValueError:
            return None
    return None


def error_from_body(status: int, body: bytes, headers: Mapping[str, str]) -> UpstreamError:
    """Google's `{"error": {"code", "message", "status", "details"}}`, also wrapped in a list."""
    try:
        data = orjson.loads(body) if body else None
    except orjson.JSONDecodeError:
        data = None
    return _error_from_data(status, data, body, headers)


def _error_from_data(status: int, data: Any, body: bytes, headers: Mapping[str, str]) -> UpstreamError:
    if isinstance(data, list) and data:
        data = data[0]
    error = data.get("error") if isinstance(data, dict) else None
    message, kind, retry_delay = "", None, None
    if isinstance(error, dict):
        message = str(error.get("message") or "")
        kind = str(error["status"]) if error.get("status") else None
        for detail in error.get("details") or ():
            if not isinstance(detail, dict):
                continue
            retry_delay = _duration_seconds(detail.get("retryDelay")) if retry_delay is None else retry_delay
            if detail.get("reason") == "API_KEY_INVALID":
                # Google answers a bad key with 400; it is the gateway's configuration, not the client's request.
                status = 401
    if not message:
        message = error_excerpt(body)
    err = upstream_error(status, message, headers, upstream_type=kind)
    if err.retry_after is None:
        err.retry_after = retry_delay
    return err


# --- request ------------------------------------------------------------------------------------


def _data_url(url: str) -> tuple[str, str] | None:
    """`data:<mime>[;base64],<payload>` as (mime type, base64 data)."""
    match = _DATA_URL.match(url)
    if match is None:
        return None
    payload = match["data"]
    if ";base64" not in match["params"]:
        payload = base64.b64encode(urllib.parse.unquote_to_bytes(payload)).decode()
    return match["mime"] or "application/octet-stream", payload


def _media_part(url: str, dropped: list[str], what: str) -> dict[str, Any] | None:
    inline = _data_url(url)
    if inline is not None:
        return {"inlineData": {"mimeType": inline[0], "data": inline[1]}}
    if url.startswith(("http://", "https://", "gs://")):
        file_data = {"fileUri": url}
        mime, _ = mimetypes.guess_type(urllib.parse.urlsplit(url).path)
        if mime:
            file_data = {"mimeType": mime, **file_data}
        return {"fileData": file_data}
    dropped.append(what)
    return None


# The image types Gemini takes (its image-understanding page: PNG, JPEG, WEBP, HEIC and HEIF; not GIF, which
# Gemini 2.0 and later refuse as an invalid argument); `image/jpg`, which clients write, is JPEG.
IMAGE_TYPES = frozenset({"image/png", "image/jpeg", "image/webp", "image/heic", "image/heif"})
MEDIA_TYPE_ALIASES = {"image/jpg": "image/jpeg"}
# A Gemini part carries none of the gateway's part fields (`params.unsent_part_fields`): no image `detail` (its
# `mediaResolution` is another scale), no document title, context or citations.
CARRIED: frozenset[str] = frozenset()


def _image_part(url: str, dropped: list[str]) -> dict[str, Any] | None:
    """An image as Gemini's part: a data URL's bytes inline, an image type as Gemini takes it (an image of a type
    it does not take, or of no type, is the client's 400, not Gemini's vaguer one; another media type, a PDF or a
    text a client sent as an `image_url`, goes as it came, Gemini reads those too); any other URL as
    `_media_part` sends it."""
    inline = _data_url(url)
    if inline is None:
        return _media_part(url, dropped, "messages.image_url")
    mime = inline[0].lower()
    mime = MEDIA_TYPE_ALIASES.get(mime, mime)
    untyped = url[5:6] in (";", ",")
    if untyped or (mime.startswith("image/") and mime not in IMAGE_TYPES):
        named = "without a media type (data:image/png;base64,...)" if untyped else f"of type '{mime}'"
        raise InvalidRequestError(
            f"an image {named} cannot be sent to Gemini: it takes image/png, image/jpeg, image/webp, image/heic and "
            "image/heif",
            param="messages",
        )
    return {"inlineData": {"mimeType": mime, "data": inline[1]}}


def _content_parts(content: str | list[ContentPart] | None, dropped: list[str]) -> list[dict[str, Any]]:
    if content is None:
        return []
    if isinstance(content, str):
        return [{"text": content}] if content else []
    parts: list[dict[str, Any]] = []
    for part in content:
        converted: dict[str, Any] | None = None
        if isinstance(part, TextPart):
            converted = {"text": part.text} if part.text else None  # Gemini refuses an empty text part
        elif isinstance(part, ImagePart):
            converted = _image_part(part.image_url["url"], dropped)
        elif isinstance(part, AudioPart):
            mime = f"audio/{part.input_audio['format']}"
            converted = {"inlineData": {"mimeType": mime, "data": part.input_audio["data"]}}
        elif isinstance(part, FilePart):
            file_data = part.file.get("file_data")
            if isinstance(file_data, str):
                converted = _media_part(file_data, dropped, "messages.file")
            else:
                dropped.append("messages.file")  # a `file_id` names an OpenAI upload Gemini cannot see
        if converted is not None:
            parts.append(converted)
    return parts


def _json_object(raw: str, key: str) -> dict[str, Any]:
    """Gemini wants a JSON object (a protobuf Struct): wrap anything else under `key`."""
    try:
        value = orjson.loads(raw) if raw.strip() else {}
    except orjson.JSONDecodeError:
        value = raw
    return value if isinstance(value, dict) else {key: value}


def given_signature(call: ToolCall) -> str | None:
    """The thought signature a client sent back with a call: in its `extra_content.google.thought_signature`
    (as Google's OpenAI-compatible API hands it out), else in its id (as the gateway hands it out)."""
    google = (call.extra_content or {}).get("google")
    given = google.get("thought_signature") if isinstance(google, dict) else None
    return given if isinstance(given, str) and given else call_signature(call.id)


def _contents(
    req: ChatRequest, dropped: list[str], names: ToolNames, model: str = ""
) -> tuple[list[dict[str, Any]], dict[str, Any] | None]:
    """`contents` and `systemInstruction` from the OpenAI messages, each function by the name Gemini takes
    (`names`)."""
    system: list[dict[str, Any]] = []
    contents: list[dict[str, Any]] = []
    call_names: dict[str, str] = {}
    # Gemini pairs the function responses of a turn with the calls of the model turn before it by position (and
    # a response's id must then be its call's); OpenAI's APIs pair them by id, and a client may answer in any order.
    turn_calls: dict[str, int] = {}  # the position of each call of the latest model turn, by its id
    answers: list[Message] = []  # the tool messages since, until the next turn

    def add(role: str, parts: list[dict[str, Any]]) -> None:
        if not parts:
            return
        if contents and contents[-1]["role"] == role:
            contents[-1]["parts"].extend(parts)
        else:
            contents.append({"role": role, "parts": parts})

    def answer_calls() -> None:
        answers.sort(key=lambda m: turn_calls.get(m.tool_call_id or "", len(turn_calls)))
        beside: list[dict[str, Any]] = []  # what the functions returned besides JSON, where it goes after them
        responses = [_function_response(m, call_names, dropped, names, model, beside) for m in answers]
        add("user", responses + beside)
        answers.clear()

    messages = req.messages
    if req.prefill is not None:
        # A Messages client's prefill: Gemini documents no continuing of a model turn, and refuses a conversation
        # ending with one ("Requests ending with a model turn are not supported"). Left out, and named.
        messages = messages[:-1]
        from adapters.providers.prefill import PREFILL  # (on first use)

        dropped.append(PREFILL)
    for message in messages:
        if message.role in ("tool", "function"):
            answers.append(message)
            continue
        if message.role in ("system", "developer"):
            system.extend(_content_parts(message.content, dropped))
            continue
        answer_calls()
        if message.role == "user":
            add("user", _content_parts(message.content, dropped))
        else:
            if thinking_blocks(message) and "messages.thinking" not in dropped:
                dropped.append("messages.thinking")  # Claude's signed thinking means nothing to Gemini
            parts = _content_parts(message.content, dropped)
            if message.reasoning_tool_context and rules_for(model).search_beside_functions:
                parts[:0] = tool_context(message.reasoning_tool_context)  # (ahead of the text and calls they led to)
            if message.tool_calls:
                turn_calls.clear()
            for position, call in enumerate(message.tool_calls or ()):
                call_names[call.id] = call.function.name
                turn_calls.setdefault(call.id, len(turn_calls))
                args = _json_object(call.function.arguments, "arguments")
                function_call: dict[str, Any] = {"name": names.wire(call.function.name), "args": args}
                if wire_call_id(call.id):  # Gemini 3's own, or another's: its response carries it too
                    function_call["id"] = wire_call_id(call.id)
                part: dict[str, Any] = {"functionCall": function_call}
                signature = given_signature(call)
                if signature is None and position == 0 and rules_for(model).signed_function_calls:
                    signature = SKIP_SIGNATURE
                if signature is not None:
                    part["thoughtSignature"] = signature
                parts.append(part)
            add("model", parts)
    answer_calls()
    return contents, ({"parts": system} if system else None)


def searches_beside(req: ChatRequest, model: str) -> bool:
    """Whether Gemini (`model`) takes `req`'s web search (as Google Search) beside what else it asks. Before Gemini 3,
    search beside function calling is refused: the functions go, the search is named dropped, and no search is
    reserved or charged (`ProviderAdapter.hosts_search`). Gemini 3 takes them together in its tool context
    (`search_beside_functions`: `chat_body` asks for it). Before Gemini 3 a JSON answer goes with no tool
    (`apply_model_rules`, `tools_with_json_mode`): beside one the search goes, named, and the format the client
    relies on stays (not the search sent and the format dropped: free text for a schema)."""
    if req.web_search is None:
        return False
    rules = rules_for(model)
    if req.tools and not rules.search_beside_functions:
        return False
    fmt = req.response_format
    return fmt is None or fmt.type == "text" or rules.tools_with_json_mode


def apply_model_rules(body: dict[str, Any], model: str, dropped: list[str]) -> None:
    """What the target model needs beyond the API (see `model_rules`), applied to a built request."""
    rules = rules_for(model)
    config = body.get("generationConfig") or {}
    calling = body.get("tools") and body.get("toolConfig", {}).get("functionCallingConfig", {}).get("mode") != "NONE"
    if calling and not rules.tools_with_json_mode and "responseMimeType" in config:
        # Gemini before 3 refuses function calling with a JSON mime type (with function calling off, mode `NONE`,
        # it takes it): the tools win, the format is reported. A model not known to take both is taken to refuse.
        config.pop("responseMimeType")
        config.pop("responseJsonSchema", None)
        dropped.append("response_format")
    if rules.no_penalties:
        # Gemini 2.5 and 3 refuse the whole request for a penalty ("Penalty is not enabled for models/..."); 0,
        # the default, is accepted and asks for nothing.
        for name, wire in (("presence_penalty", "presencePenalty"), ("frequency_penalty", "frequencyPenalty")):
            if config.get(wire):
                del config[wire]
                dropped.append(name)
    if "generationConfig" in body and not config:
        body.pop("generationConfig")
    if rules.signed_function_calls:
        for content in body["contents"]:
            calls = [part for part in content["parts"] if "functionCall" in part]
            if calls:
                calls[0].setdefault("thoughtSignature", SKIP_SIGNATURE)


def _function_response(
    message: Message,
    call_names: Mapping[str, str],
    dropped: list[str],
    names: ToolNames,
    model: str,
    beside: list[dict[str, Any]],
) -> dict[str, Any]:
    """A tool message as a `functionResponse` named as its call went (`names`): its text, as JSON; an image or file
    it holds rides in the response's own `parts` where the model takes them (Gemini 3), else goes in `beside`, the
    parts that follow the turn's function responses, headed by a text naming the call (Gemini before 3 takes no
    media in a `functionResponse`, and an `inlineData` part in the same user turn: left out, the image a tool read
    would leave the model a `response: {}`). Any other part is left out, named, and so is an image of a type Gemini
    does not take (`_image_part` refuses it as a user's image: a GIF Claude Code's Read returned would make the whole
    turn the client's 400). A tool's result never fails the turn that carries it."""
    media: list[dict[str, Any]] = []
    if isinstance(message.content, list):
        for part in message.content:
            if isinstance(part, TextPart):
                continue
            what = f"messages.tool.{part.type}"
            # (Images and documents; a URL Gemini cannot fetch is named as the tool message's part.)
            try:
                converted = _content_parts([part], []) if isinstance(part, ImagePart | FilePart) else []
            except InvalidRequestError:
                converted = []
            if converted:
                media += converted
            elif what not in dropped:
                dropped.append(what)
    name = call_names.get(message.tool_call_id or "") or message.name
    if not name:
        raise InvalidRequestError(
            f"tool message '{message.tool_call_id}' answers no earlier tool call; Gemini needs the function name",
            param="messages",
        )
    response: dict[str, Any] = {"name": names.wire(name), "response": _json_object(message.text(), "result")}
    answered = wire_call_id(message.tool_call_id or "")
    if answered and message.tool_call_id in call_names:
        response["id"] = answered  # the id of the call it answers, as the call carried it
    if media and rules_for(model).media_in_function_responses:
        response["parts"] = media
    elif media:
        beside += [{"text": returned_media_label(response["name"], response.get("id"))}, *media]
    return {"functionResponse": response}


# Gemini's rule for a function's name (its FunctionDeclaration: "Must start with a letter or an underscore. Must be
# a-z, A-Z, 0-9, or contain underscores, colons, dots, and dashes, with a maximum length of 64"): past the first
# character, its punctuation read as a letter.
MAX_FUNCTION_NAME = 64
NAME_PUNCTUATION = str.maketrans("_.:-", "aaaa")


def gemini_takes(name: str) -> bool:
    """Whether Gemini takes `name` for a function. Claude Code's MCP tools run past 64 characters, and OpenAI and
    Anthropic take a name opening with a digit: see `ToolNames`."""
    if not 0 < len(name) <= MAX_FUNCTION_NAME or not (name[0].isalpha() or name[0] == "_"):
        return False
    return name.isascii() and name.translate(NAME_PUNCTUATION).isalnum()


def _tools(
    req: ChatRequest, dropped: list[str], names: ToolNames
) -> tuple[list[dict[str, Any]] | None, dict[str, Any] | None]:
    """`tools` and `toolConfig`, each function by the name Gemini takes (`names`). A choice of `allowed_tools`
    that requires a call is Gemini's `ANY` with `allowedFunctionNames`; one left to the model declares the tools it
    allows alone (Gemini takes `allowedFunctionNames` in mode `ANY` only, and `VALIDATED`, which not every model
    has)."""
    choice = req.tool_choice
    offered = req.tools
    if isinstance(choice, dict):  # (`allowed_tools`)
        allowed, mode = chosen_tools(req)
        if mode == "auto":
            offered, choice = allowed, mode
    tools = None
    if offered:
        declarations = []
        for tool in offered:
            declaration: dict[str, Any] = {"name": names.wire(tool.function.name)}
            if tool.function.description:
                declaration["description"] = tool.function.description
            if tool.function.parameters is not None:
                # `parametersJsonSchema` takes standard JSON Schema; `parameters` takes Google's OpenAPI
                # subset and rejects keys OpenAI clients routinely send (`additionalProperties`, `$defs`).
                declaration["parametersJsonSchema"] = tool.function.parameters
            if tool.function.strict and "tools.strict" not in dropped:
                dropped.append("tools.strict")
            declarations.append(declaration)
        tools = [{"functionDeclarations": declarations}]
    if choice is None:
        return tools, None
    if isinstance(choice, str):
        config: dict[str, Any] = {"mode": TOOL_CHOICE_MODES[choice]}
    elif isinstance(choice, dict):  # (`allowed_tools`)
        config = {"mode": "ANY", "allowedFunctionNames": [names.wire(name) for name in allowed_names(choice) or ()]}
    else:
        config = {"mode": "ANY", "allowedFunctionNames": [names.wire(choice.function.name)]}
    return tools, {"functionCallingConfig": config}


# The JSON Schema keywords `responseJsonSchema` constrains an answer by (Gemini's API reference lists them), and the
# annotations, which ask nothing of an answer. Gemini ignores any other keyword: its constraint does not hold.
SCHEMA_KEYWORDS = frozenset(
    {
        "$id", "$defs", "$ref", "$anchor", "type", "format", "title", "description", "enum", "items", "prefixItems",
        "minItems", "maxItems", "minimum", "maximum", "anyOf", "oneOf", "properties", "additionalProperties",
        "required",
    }
)  # fmt: skip
ANNOTATIONS = frozenset({"$schema", "$comment", "default", "examples", "deprecated", "readOnly", "writeOnly"})
SCHEMA_NAME = "response_format.json_schema.schema"


def unsupported_keywords(schema: dict[str, Any]) -> list[str]:
    """The keywords of a JSON Schema, and of the schemas inside it, that `responseJsonSchema` does not constrain an
    answer by (`pattern`, `minLength`, `multipleOf`, `allOf`, ...), each once, sorted. The keywords that take
    schemas are walked (a property's name, an enum's values are no keywords); an unsupported one is not."""
    found: set[str] = set()
    pending: list[Any] = [schema]
    while pending:
        node = pending.pop()
        if not isinstance(node, dict):
            continue
        for keyword, value in node.items():
            if keyword in ("properties", "$defs") and isinstance(value, dict):
                pending.extend(value.values())
            elif keyword in ("items", "additionalProperties"):
                pending.extend(value if isinstance(value, list) else (value,))
            elif keyword in ("prefixItems", "anyOf", "oneOf") and isinstance(value, list):
                pending.extend(value)
            elif keyword not in SCHEMA_KEYWORDS and keyword not in ANNOTATIONS:
                found.add(keyword)
    return sorted(found)


def _response_format(req: ChatRequest, dropped: list[str]) -> dict[str, Any]:
    fmt = req.response_format
    if fmt is None or fmt.type == "text":
        return {}
    config: dict[str, Any] = {"responseMimeType": "application/json"}
    if fmt.type == "json_schema" and fmt.json_schema is not None and fmt.json_schema.schema_ is not None:
        # `responseJsonSchema` accepts standard JSON Schema as OpenAI clients write it (`$ref`,
        # `additionalProperties`, `anyOf`, ...); `responseSchema` is Google's OpenAPI subset and would
        # need a lossy rewrite of every schema.
        schema = fmt.json_schema.schema_
        config["responseJsonSchema"] = schema
        if strict_schema(fmt):
            # Sent as written (Gemini ignores what it does not take, and an answer still fits the rest), but a
            # strict format promises an answer that fits all of it: what Gemini leaves unenforced is named.
            dropped += [f"{SCHEMA_NAME}[{keyword}]" for keyword in unsupported_keywords(schema)]
    return config


def budget_range(model: str) -> tuple[int, int]:
    """The `thinkingBudget` a Gemini 2.5 model takes (Google's thinking guide: Pro 128-32768, Flash 1-24576,
    Flash-Lite 512-24576); beyond it the API answers 400."""
    name = model.rsplit("/", 1)[-1].lower()
    if "pro" in name:
        return 128, 32768
    if "flash-lite" in name:
        return 512, 24576
    return 1, 24576


def budget_within(budget: int, model: str) -> int:
    """A Gemini 2.5 `thinkingBudget` within what the model takes (`budget_range`)."""
    low, high = budget_range(model)
    return min(max(budget, low), high)


def thinking_room(cap: int) -> int:
    """What of an output cap thinking may take: Gemini counts its thoughts against `maxOutputTokens`, and thoughts
    that reach it leave no answer (`MAX_TOKENS`, nothing written). The answer keeps what a Claude answer keeps
    beside its thinking budget (`reasoning.thinking_budget`): `ANSWER_ROOM` tokens, or half of a smaller cap."""
    return cap - min(reasoning.ANSWER_ROOM, cap // 2)


def level_within(level: reasoning.Level, cap: int | None) -> reasoning.Level:
    """The deepest level at or below `level` whose thinking (its budget in `reasoning.LEVELS`, the gateway's one
    measure of a level's depth) fits beside the answer under `cap`; the shallowest when none does."""
    if cap is None or level.budget <= thinking_room(cap):
        return level
    fitting = [shallower for shallower in reasoning.LEVELS[1:] if shallower.budget <= thinking_room(cap)]
    return fitting[-1] if fitting else reasoning.BY_EFFORT["minimal"]


def thinking_config(req: ChatRequest, model: str, dropped: list[str], cap: int | None = None) -> dict[str, Any] | None:
    """`generationConfig.thinkingConfig` for the request's reasoning wish (`reasoning.LEVELS`): a
    `thinkingLevel` for Gemini 3, a `thinkingBudget` for 2.5; thoughts come back (`includeThoughts`, Gemini's
    thought summaries) when a Messages client asked to see them (its own `thinking`, not `display: omitted`; an
    `output_config.effort` alone asks the depth, and Anthropic answers it with no thinking blocks:
    `ThinkingConfig.sent`) or a Responses client for a summary.

    Under an output cap (`maxOutputTokens`, which Gemini's thoughts count against) thinking leaves the answer its
    room (`thinking_room`), as Claude's does: a budget the client named is kept if it is below the cap, else
    lowered and named; a level's budget is lowered, and Gemini 3's level to the deepest that fits; thinking a 2.5
    model can leave off is left off, and named, when it has less room than the model's least budget."""
    wish = reasoning.requested(req)
    thinking = req.thinking
    if thinking is not None and thinking.sent:
        shown = thinking.type != "disabled" and (thinking.model_extra or {}).get("display") != "omitted"
    else:
        shown = req.reasoning_summary is not None and not (wish is not None and wish.off)
    if wish is None and not shown:
        return None
    levels = rules_for(model).thinking_levels  # (Gemini 3 and later, and the `-latest` aliases)
    if not (levels or reasoning.reasons(model, reasoning.GEMINI_THINKING_FRAGMENTS)):
        if wish is not None and not wish.off:
            dropped += reasoning.asked_with(req)
        if req.reasoning_summary is not None:
            dropped.append(reasoning.SUMMARY)
        return None
    config: dict[str, Any] = {}
    pro = "pro" in model
    if wish is None:
        pass  # a summary alone: the model thinks as it would unasked
    elif levels:
        level = reasoning.BY_EFFORT["none"] if wish.off else wish.level
        if level is not None:
            level = level if wish.off else level_within(level, cap)
            config["thinkingLevel"] = (
                PRO_LEVELS.get(level.gemini_level, level.gemini_level) if pro else level.gemini_level
            )
    elif wish.off and pro:
        dropped += reasoning.asked_with(req)  # 2.5 Pro always thinks
        return None
    elif wish.off:
        config["thinkingBudget"] = 0
    else:
        low, high = budget_range(model)
        room = thinking_room(cap) if cap is not None else None
        named = wish.budget is not None and (cap is None or wish.budget < cap)  # the client's split, kept
        if wish.budget is not None:
            budget = wish.budget if named or room is None else room
        elif wish.level is not None:
            budget = wish.level.budget if room is None else min(wish.level.budget, room)  # a level: its budget there
        else:
            budget = DYNAMIC_BUDGET if room is None or high <= room else room
        if room is not None and not named and budget != DYNAMIC_BUDGET and budget < low and not pro:
            config["thinkingBudget"] = 0  # no room for the least the model thinks: no thinking, rather than no answer
            dropped += reasoning.asked_with(req)
        else:
            config["thinkingBudget"] = budget if budget == DYNAMIC_BUDGET else budget_within(budget, model)
            if wish.budget is not None and config["thinkingBudget"] != wish.budget:
                dropped.append("thinking")  # the client's own number (`thinking.budget_tokens`) could not be kept
    if shown:
        config["includeThoughts"] = True
    return config or None


# --- response -----------------------------------------------------------------------------------


def modality_tokens(details: Any, modality: str) -> int:
    """The tokens of one modality in a `ModalityTokenCount` list (`promptTokensDetails`, ...); a count that is not
    a plain integer is a malformed answer (`usage_count`)."""
    if not isinstance(details, list):
        return 0
    return sum(usage_count(d, "tokenCount") for d in details if isinstance(d, dict) and d.get("modality") == modality)


def usage_of(meta: Any) -> Usage | None:
    """`usageMetadata` as the gateway's usage: thinking tokens are billed as output, tool-use prompt
    tokens as input; `promptTokenCount` already includes the cached tokens. A count that is not a plain integer
    makes the answer malformed (`usage_count`): read as 0, `promptTokenCount: 1200.5` would bill no input at all as
    the provider's count. One without its input count, null or left out, is none (`reported`: read as 0, it would
    bill the prompt free); its output count is left out where it is 0 (Gemini's JSON drops a count of 0: a blocked
    prompt's usage, a stream's events before its first text), so 0 it is (an answer that wrote something is not
    billed as 0 tokens out: `Pipeline._checked`)."""
    if not reported(meta, "promptTokenCount"):
        return None
    thoughts = usage_count(meta, "thoughtsTokenCount")
    usage = Usage.of(
        usage_count(meta, "promptTokenCount") + usage_count(meta, "toolUsePromptTokenCount"),
        usage_count(meta, "candidatesTokenCount") + thoughts,
        usage_count(meta, "cachedContentTokenCount"),
    )
    # Audio is dearer than text on some models: its uncached prompt tokens, by modality.
    audio = modality_tokens(meta.get("promptTokensDetails"), "AUDIO")
    audio -= modality_tokens(meta.get("cacheTokensDetails"), "AUDIO")
    if audio > 0 and usage.prompt_tokens_details is not None:
        usage.prompt_tokens_details.set_count("audio_tokens", audio)
    spoken = modality_tokens(meta.get("candidatesTokensDetails"), "AUDIO")  # audio output, dearer still
    if thoughts or spoken > 0:
        usage.completion_tokens_details = CompletionTokensDetails(reasoning_tokens=thoughts)
        if spoken > 0:
            usage.completion_tokens_details.set_count("audio_tokens", spoken)
    return usage


def finish_reason(raw: Any, has_calls: bool, said: bool) -> FinishReason:
    """The OpenAI finish reason of Gemini's for a candidate that wrote text (`said`) or calls (`has_calls`).

    A reason of `UNANSWERED` is no answer at all: the provider's malformed answer (another deployment may do
    better), not an empty `stop`. So is a reason the gateway does not know (`OTHER`, one Google added since) that
    ends a candidate with nothing in it: told `stop`, a client took an empty reply (Anthropic's `end_turn`, a
    completed response) for the model's finished answer. One that ends text or calls keeps them, as `stop` (or
    `tool_calls`): nothing says they are not the answer. Either is logged, so that an operator learns of it."""
    if isinstance(raw, str) and raw in UNANSWERED:
        if has_calls:
            return "tool_calls"
        raise malformed(f"{UNANSWERED[raw]} (Gemini's finishReason {raw})")
    mapped = FINISH_REASONS.get(raw) if isinstance(raw, str) else None
    if mapped is None:
        # (The provider's words: a key in them redacted.)
        named = "none given" if raw is None else said_clipped(str(raw), REASON_CHARS, marked=False)
        answered = has_calls or said
        log.warning(
            "Gemini ended an answer with a finishReason the gateway does not know",
            extra={"finish_reason": named, "answered": answered},
        )
        if not answered:
            raise malformed(f"Gemini ended the answer with nothing in it (finishReason {named})")
        mapped = "stop"
    return "tool_calls" if mapped == "stop" and has_calls else mapped


def call_id(index: int) -> str:
    """Gemini's generateContent gives function calls no id; OpenAI clients need one to answer."""
    return f"call_{index}_{secrets.token_hex(8)}"


# A part of Gemini 3's tool context that is its built-in tool's own (Google Search's call and its results).
SERVER_TOOL_PARTS = ("toolCall", "toolResponse")
# What such a part carries: its call or response, and the signature Gemini 3 wants back with it.
TOOL_PART_MEMBERS = (*SERVER_TOOL_PARTS, "thoughtSignature")


def tool_context(parts: Any) -> list[dict[str, Any]]:
    """The parts of an answer (`parts`) that are its built-in tools' own calls and responses (`toolCall`,
    `toolResponse`, each whole, its `thoughtSignature` with it), which Google's SDK says a client passes back in the
    turn that follows, the call with its response: those members of each, no other. Another part is none of them,
    and another member of one is left out (a Chat client's message may hold anything in `reasoning_tool_context`:
    a `text` beside a `toolCall` would have Gemini refuse the turn, a part having one kind of content)."""
    if not isinstance(parts, list):
        return []
    return [
        {k: p[k] for k in TOOL_PART_MEMBERS if k in p}
        for p in parts
        if isinstance(p, dict) and any(isinstance(p.get(k), dict) for k in SERVER_TOOL_PARTS)
    ]


def candidate_parts(candidate: Mapping[str, Any]) -> list[dict[str, Any]]:
    content = candidate.get("content")
    parts = content.get("parts") if isinstance(content, dict) else None
    return [p for p in parts if isinstance(p, dict)] if isinstance(parts, list) else []


def tool_call_of(part: Mapping[str, Any], index: int) -> ToolCall | None:
    call = part.get("functionCall")
    if not isinstance(call, dict):
        return None
    args = orjson.dumps(call.get("args") or {}).decode()
    signature = part.get("thoughtSignature")
    identifier = signed_call_id(
        str(call.get("id") or call_id(index)), signature if isinstance(signature, str) else None
    )
    return ToolCall(id=identifier, function=FunctionCall(name=str(call["name"]), arguments=args))


def block_message(data: Mapping[str, Any]) -> str | None:
    feedback = data.get("promptFeedback")
    reason = feedback.get("blockReason") if isinstance(feedback, dict) else None
    return f"Gemini blocked the prompt ({reason})" if reason else None


def checked_payload(data: Any) -> dict[str, Any]:
    if isinstance(data, list) and len(data) == 1:
        data = data[0]
    if not isinstance(data, dict):
        raise malformed("upstream answered with something other than a GenerateContentResponse")
    if "error" in data and "candidates" not in data:
        code = data["error"].get("code") if isinstance(data["error"], dict) else None
        raise _error_from_data(code if isinstance(code, int) else 500, data, b"", {})
    return data


@functools.cache  # (a few base URLs per process, each a dictionary look-up per request after its first)
def version_root(base_url: str) -> str:
    """The root of the API's version under `base_url`: the API's host (`https://generativelanguage.googleapis.com`)
    with `API_VERSION` added, or a URL that names a version already, as Google's documents write it, taken as it is:
    `.../v1beta`, and `.../v1`, the stable version, which has `generateContent`, `streamGenerateContent`,
    `countTokens` and the embedding methods too (each not doubled: every request would be a 404 at
    `.../v1beta/v1beta/...` or `.../v1/v1beta/...`)."""
    root = base_url.rstrip("/")
    versioned = VERSION_SEGMENT.fullmatch(urllib.parse.urlsplit(root).path.rpartition("/")[2])
    return root if versioned else f"{root}/{API_VERSION}"


# --- the adapter --------------------------------------------------------------------------------


class GeminiAdapter(ProviderAdapter):
    """The `gemini` provider type: Google AI Studio's Gemini API with an API key."""

    type_name = "gemini"
    semconv_provider = "gcp.gemini"
    default_base_url = "https://generativelanguage.googleapis.com"
    key_env_var = "GEMINI_API_KEY"
    supports_embeddings = True
    embedding_batch = MAX_EMBED_BATCH
    counts_embedding_tokens = False

    def headers(self) -> dict[str, str]:
        headers = {"content-type": "application/json"}
        if self.secret:
            headers["x-goog-api-key"] = self.secret
        return headers

    def url(self, target: Target, method: str) -> str:
        """The method's URL under `version_root(base_url)`."""
        model = target.model.removeprefix("models/")
        return f"{version_root(target.base_url)}/models/{urllib.parse.quote(model, safe='-._~')}:{method}"

    def chat_body(self, req: ChatRequest, target: Target) -> tuple[dict[str, Any], list[str]]:
        """The `GenerateContentRequest` and the client parameters it could not carry."""
        dropped: list[str] = []
        names = ToolNames(req, gemini_takes)
        contents, system = _contents(req, dropped, names, target.model)
        require_turns(contents, "Gemini")
        dropped += unsent_part_fields(req.messages, CARRIED)
        body: dict[str, Any] = {"contents": contents}
        if system is not None:
            body["systemInstruction"] = system
        tools, tool_config = _tools(req, dropped, names)
        search, unsent = self.sent_search(target, req)
        dropped += unsent
        if search is not None:
            from adapters.providers.gemini.search import search_tool  # (a request that searches: a cold start none)

            # (Beside functions, Gemini 3 alone, `searches_beside`: in its tool context, the search's own `toolCall`
            # and `toolResponse` parts in the answer, which the translation reads no more of than its grounding.)
            if tools:
                tool_config = {**(tool_config or {}), "includeServerSideToolInvocations": True}
            tools = [*(tools or ()), search_tool(search)]
            dropped += search.unhonoured(location=False, domains=False, blocked=True)
        if tools is not None:
            body["tools"] = tools
        if tool_config is not None:
            body["toolConfig"] = tool_config

        params = req.model_dump(exclude_unset=True, by_alias=True)
        config = {name: params.pop(name) for name in GENERATION_RULES if name in params}
        dropped += apply_rules(config, GENERATION_RULES)
        config.pop("parallel_tool_calls", None)
        config = {name: value for name, value in config.items() if value is not None}
        stops = req.stop_list()
        if stops:
            at_most("stop", stops, MAX_STOP_SEQUENCES)
            config["stopSequences"] = stops
        config.update(_response_format(req, dropped))
        cap = config.get("maxOutputTokens")
        thinking = thinking_config(req, target.model, dropped, cap if isinstance(cap, int) else None)
        if thinking is not None:
            config["thinkingConfig"] = thinking
        if config:
            body["generationConfig"] = config
        dropped += [name for name, value in params.items() if name not in STRUCTURAL and asks(name, value)]
        dropped += named_messages(req.messages) + unsent_reasoning(req.messages)
        return body, list(dict.fromkeys(dropped))

    def chat_request(self, req: ChatRequest, target: Target, *, stream: bool) -> BuiltRequest:
        body, dropped = self.chat_body(req, target)
        apply_model_rules(body, target.model, dropped)
        url = self.url(target, "streamGenerateContent?alt=sse" if stream else "generateContent")
        return BuiltRequest(UpstreamRequest("POST", url, self.headers(), orjson.dumps(body)), dropped)

    def chat_response(self, body: bytes, req: ChatRequest, target: Target) -> ChatCompletion:
        data = checked_payload(json_body(body))
        candidates = [c for c in data.get("candidates") or () if isinstance(c, dict)]
        blocked = block_message(data)
        if not candidates and not blocked:
            # Billed its usage where it gave one, as an answer it wrote and the gateway cannot use is: charged the
            # request's worst case, 10 in and 5 out were billed 50 out.
            unusable = malformed("upstream answered without candidates")
            unusable.billed = usage_of(data.get("usageMetadata"))
            raise unusable
        choices: list[Choice] = []
        names: ToolNames | None = None  # (made at the answer's first call)
        queries = 0  # the searches its candidates ran (Grounding with Google Search)
        unanswered: UpstreamError | None = None  # (a candidate that is no answer: the whole one's unless another is)
        answered = False  # (a candidate that ended with text or calls, as its finish reason reads them)
        for position, candidate in enumerate(candidates):
            texts: list[str] = []
            thoughts: list[str] = []
            calls: list[ToolCall] = []
            for part in candidate_parts(candidate):
                call = tool_call_of(part, len(calls))
                if call is not None:
                    names = names or ToolNames(req, gemini_takes)
                    call.function.name = names.client(call.function.name)  # (an alias of a name Gemini refuses)
                    calls.append(call)
                elif isinstance(part.get("text"), str):
                    (thoughts if part.get("thought") else texts).append(part["text"])
            message = AssistantMessage(
                content="".join(texts) if texts or not calls else None,
                tool_calls=calls or None,
                reasoning_content="".join(thoughts) or None,
            )
            searched_parts = tool_context(candidate_parts(candidate)) if req.web_search is not None else None
            if searched_parts:
                setattr(message, TOOL_CONTEXT, searched_parts)  # (sent back with the next turn: `_contents`)
            if req.web_search is not None and candidate.get("groundingMetadata"):
                from adapters.providers.gemini.search import grounding  # (an answer that searched: see `chat_body`)

                searched, annotations = grounding(candidate["groundingMetadata"], "".join(texts))
                message.web_searches = searched or None
                queries += len(searched)
                if annotations:
                    setattr(message, "annotations", annotations)  # noqa: B010 - (Chat Completions' member, an extra)
            try:
                reason = finish_reason(candidate.get("finishReason"), bool(calls), any(texts))
                answered = answered or bool(message.content or calls)
            except UpstreamError as unusable:
                # With `n` > 1, one candidate that is no answer would fail the whole answer, the others' thrown away
                # (a 502, or a failover billed on top): it is the whole answer's failure only if another did not
                # answer, as a stream's is (`GeminiStreamParser.feed`). Its own text before the reason is no answer: a
                # lone candidate's preamble ("Let me check the weather.") ending `MALFORMED_FUNCTION_CALL` is the
                # provider's malformed answer, as streamed, not a finished one billed as a success and never failed
                # over. Beside another's answer it ends `stop`, as streamed.
                unanswered, reason = unanswered or unusable, "stop"
            choices.append(Choice(index=candidate.get("index", position), message=message, finish_reason=reason))
        if unanswered is not None and not answered:
            unanswered.billed = usage_of(data.get("usageMetadata"))
            raise unanswered
        if not choices:
            message = AssistantMessage(content=None, refusal=blocked)
            choices.append(Choice(index=0, message=message, finish_reason="content_filter"))
        response_id = data.get("responseId")
        usage = usage_of(data.get("usageMetadata"))
        if usage is not None and queries:
            from adapters.providers.gemini.search import billed_searches

            # (By the model that ran, as a stream reads it: a deployment may name Google's moving alias, which names
            # no generation, and Gemini 3 bills each query where 2.5 bills the prompt.)
            ran = data.get("modelVersion")
            usage.set_count(
                "web_searches", billed_searches(ran if isinstance(ran, str) and ran else target.model, queries)
            )
        return ChatCompletion(
            id=f"chatcmpl-{response_id}" if isinstance(response_id, str) else completion_id(),
            created=int(time.time()),
            model=str(data.get("modelVersion") or target.model),
            choices=choices,
            usage=usage,
        )

    def stream_parser(self, req: ChatRequest, target: Target) -> GeminiStreamParser:
        from adapters.providers.gemini.stream import GeminiStreamParser  # (a cold start needs none)

        return GeminiStreamParser(target.model, ToolNames(req, gemini_takes), searched=req.web_search is not None)

    def hosts_search(self, target: Target, req: ChatRequest) -> bool:
        return searches_beside(req, target.model)  # (Grounding with Google Search: gemini/search.py)

    def billed_searches_at_most(self, target: Target, searches: int) -> int:
        # Gemini 2.5 bills one grounded prompt however many queries it ran (reserved ten, a request was held $0.35
        # for its $0.035: found by review, mergerev36); a moving alias names no generation, so it may bill each.
        from adapters.providers.gemini.search import bills_per_prompt

        return min(searches, 1) if bills_per_prompt(target.model) else searches

    def counts_tokens(self, target: Target) -> bool:
        return True

    def count_tokens_request(self, call: NativeCall, req: ChatRequest, target: Target) -> BuiltRequest:
        """Gemini's `countTokens` for the whole request (contents, system instruction, tools)."""
        body, _ = self.chat_body(req, target)
        body.pop("generationConfig", None)
        body["model"] = f"models/{target.model.removeprefix('models/')}"
        payload = orjson.dumps({"generateContentRequest": body})
        return BuiltRequest(UpstreamRequest("POST", self.url(target, "countTokens"), self.headers(), payload))

    def count_tokens_response(self, body: bytes) -> int:
        return counted_tokens(checked_payload(json_body(body)), "totalTokens", "countTokens")

    def error(self, status: int, body: bytes, headers: Mapping[str, str]) -> UpstreamError:
        return error_from_body(status, body, headers)

    def embeddings_request(self, req: EmbeddingsRequest, target: Target) -> BuiltRequest:
        texts = [req.input] if isinstance(req.input, str) else req.input
        if not all(isinstance(text, str) for text in texts):
            raise InvalidRequestError("Gemini embeddings take text input, not token ids", param="input")
        model = f"models/{target.model.removeprefix('models/')}"
        requests = []
        for text in texts:
            item: dict[str, Any] = {"model": model, "content": {"parts": [{"text": text}]}}
            if req.dimensions is not None:
                item["outputDimensionality"] = req.dimensions
            requests.append(item)
        # Named as dropped: `user`, and every other field Gemini has no place for (Mistral's `output_dtype`,
        # `metadata`, a `task_type`), as Mistral's embeddings name theirs, so that a client knows they did nothing.
        extra = [name for name, value in (req.model_extra or {}).items() if value is not None]
        dropped = [*(["user"] if req.user is not None else []), *extra]
        request = UpstreamRequest(
            "POST", self.url(target, "batchEmbedContents"), self.headers(), orjson.dumps({"requests": requests})
        )
        return BuiltRequest(request, dropped)

    def embeddings_response(self, body: bytes, req: EmbeddingsRequest, target: Target) -> EmbeddingsResponse:
        data = checked_payload(json_body(body))
        embeddings = data.get("embeddings")
        if not isinstance(embeddings, list):
            raise malformed("upstream answered embeddings without embeddings")
        items: list[Embedding] = []
        for index, item in enumerate(embeddings):
            values = item.get("values") if isinstance(item, dict) else None
            # Numbers, each finite (a bool, `"1e400"` or a null is no value: `true` was read as 1.0, `"1e400"` as an
            # infinity written as null; found by review, embrev37), and within float32 for base64 (`struct` refuses
            # one past it: the pipeline's malformed answer).
            if not isinstance(values, list) or not all(type(v) in (int, float) and math.isfinite(v) for v in values):
                raise malformed("upstream embedding has no values, or values that are not finite numbers")
            vector: list[float] | str = [float(v) for v in values]
            if req.encoding_format == "base64":
                vector = base64.b64encode(struct.pack(f"<{len(values)}f", *values)).decode()
            items.append(Embedding(index=index, embedding=vector))
        texts = [req.input] if isinstance(req.input, str) else req.input
        tokens = sum(embedded_tokens(str(text)) for text in texts)
        return EmbeddingsResponse(
            data=items, model=target.model, usage=EmbeddingsUsage(prompt_tokens=tokens, total_tokens=tokens)
        )
