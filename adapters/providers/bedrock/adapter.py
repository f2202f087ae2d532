"""AWS Bedrock's Converse and ConverseStream APIs, behind the OpenAI Chat Completions form.

Requests are signed with SigV4 (service `bedrock`, the deployment's region; adapters/sigv4.py) by the
function's own AWS credentials, and go to the region's endpoint, both from the process's AWS layer
(adapters/aws.py: the environment's keys, else botocore's chain refreshed off the hot path; endpoints
honouring `AWS_ENDPOINT_URL_BEDROCK_RUNTIME`/`AWS_ENDPOINT_URL` and the region's partition). They go over
the gateway's shared HTTP client like every other provider's. Messages become Converse turns by way
of the Anthropic adapter's conversion (the two APIs share the turn model: system apart, alternating
roles, tool results in the user turn), re-shaped into Converse content blocks. A stream is AWS
event-stream framing (see `eventstream`) carrying one JSON event per frame (parsed in `stream`); a streamed
request with tools to a model whose ConverseStream refuses them (`model_rules`: Llama, Mistral, Palmyra) goes to
Converse instead.
"""

from __future__ import annotations

import time
import urllib.parse
from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Any

import orjson

from adapters import aws
from adapters.http import ACCEPT_ENCODING, IDENTITY, parsed_url
from adapters.providers import reasoning
from adapters.providers.anthropic.adapter import (
    JSON_OBJECT_INSTRUCTION,
    JSON_TOOL,
    answer_finish,
    convert_messages,
    default_max_tokens,
    json_tool,
    thinking_param,
)
from adapters.providers.bedrock.eventstream import EventStreamDecoder
from adapters.providers.model_rules import keep_one_sampling_knob, rules_for
from adapters.providers.params import (
    CACHING,
    STRICT_SCHEMA,
    THINKING_BLOCKS,
    Rule,
    ToolNames,
    apply_rules,
    asks,
    cache_control,
    caching_problem,
    caching_wanted,
    chosen_tools,
    json_schema_instruction,
    named_messages,
    redacted_thinking,
    require_turns,
    signed_thinking,
    strict_schema,
    token_count_problem,
    unsent_part_fields,
    unsent_reasoning,
)
from adapters.sigv4 import Credentials as SigCredentials
from adapters.sigv4 import Signer
from handler.call_ids import MAX_CALL_ID, claude_takes, converse_call_id
from handler.errors import InvalidRequestError, ServiceUnavailableError, UpstreamError
from handler.ports import BuiltRequest, Geography, NativeCall, ProviderAdapter, Target, UpstreamRequest
from handler.schemas import (
    TOOL_ERROR_MARK,
    AssistantMessage,
    BlockOrder,
    ChatCompletion,
    ChatRequest,
    Choice,
    FinishReason,
    FunctionCall,
    NamedToolChoice,
    Tool,
    ToolCall,
    Usage,
    completion_id,
    reported,
    thinks_between,
)
from handler.wire import counted_tokens, error_excerpt, json_body, malformed, upstream_error, usage_count

if TYPE_CHECKING:
    from adapters.providers.bedrock.stream import BedrockStreamParser

SERVICE = "bedrock"
GLOBAL = "global"
DEFAULT_REGION = "us-east-1"

# Bedrock's cross-region inference profiles of a geography (a model id's first word: `eu.anthropic.claude-...`), each
# called only from a source region of its geography: from any other AWS refuses it, so a deployment of one that named
# no region, sent to the gateway's (`eu.` from us-east-1), failed every request until its breaker opened. By prefix:
# the source regions AWS names for the geography (the CDK's `CrossRegionInferenceProfileRegion`; which of them serve a
# model depends on the model; `us.` profiles are called from ca-central-1 too), the areas of its regions
# (`handler.ports.region_area`, for a region opened since), and the sources every account has (not opt-in), which serve
# one that names no region where the gateway's own is not of the geography. (`ca.`: Canada's regions.) A `global.`
# profile is called from any commercial region.
COMMERCIAL_AREAS = frozenset({"us", "eu", "ap", "sa", "ca", "me", "af", "il", "mx"})  # (partition `aws`'s regions)
INFERENCE_GEOGRAPHIES: dict[str, Geography] = {
    "us": Geography(
        "us",
        ("us-east-1", "us-east-2", "us-west-1", "us-west-2", "ca-central-1"),
        frozenset({"us"}),
        ("us-east-1", "us-east-2", "us-west-2"),
    ),
    "eu": Geography(
        "eu",
        (
            "eu-central-1",
            "eu-central-2",
            "eu-north-1",
            "eu-south-1",
            "eu-south-2",
            "eu-west-1",
            "eu-west-2",
            "eu-west-3",
        ),
        frozenset({"eu"}),
        ("eu-central-1", "eu-west-1", "eu-west-3"),
    ),
    "apac": Geography(
        "apac",
        (
            "ap-east-2",
            "ap-northeast-1",
            "ap-northeast-2",
            "ap-northeast-3",
            "ap-south-1",
            "ap-south-2",
            "ap-southeast-1",
            "ap-southeast-2",
            "ap-southeast-3",
            "ap-southeast-4",
            "ap-southeast-5",
            "ap-southeast-7",
            "me-central-1",
        ),
        frozenset({"ap"}),
        ("ap-northeast-1", "ap-northeast-2", "ap-south-1", "ap-southeast-1", "ap-southeast-2"),
    ),
    "jp": Geography("jp", ("ap-northeast-1", "ap-northeast-3"), frozenset(), ("ap-northeast-1", "ap-northeast-3")),
    "au": Geography("au", ("ap-southeast-2", "ap-southeast-4"), frozenset(), ("ap-southeast-2",)),
    "ca": Geography("ca", ("ca-central-1", "ca-west-1"), frozenset({"ca"}), ("ca-central-1",)),
    "us-gov": Geography(
        "us-gov", ("us-gov-east-1", "us-gov-west-1"), frozenset({"us-gov"}), ("us-gov-west-1", "us-gov-east-1")
    ),
    "global": Geography(
        "global",
        (),
        COMMERCIAL_AREAS,
        ("us-east-1", "us-east-2", "us-west-2", "eu-central-1", "eu-west-1", "eu-west-3", "ap-northeast-1")
        + ("ap-south-1", "ap-southeast-1", "ap-southeast-2"),
    ),
}

# Client parameters that land in `inferenceConfig`; `max_completion_tokens` after `max_tokens` so it wins.
INFERENCE_RULES: dict[str, Rule] = {
    "max_tokens": Rule(rename="maxTokens"),
    "max_completion_tokens": Rule(rename="maxTokens"),
    "temperature": Rule(clamp=(0.0, 1.0)),
    "top_p": Rule(rename="topP"),
}
# Accepted when harmless: one choice; parallel tool calls, which Converse cannot forbid.
HARMLESS_RULES: dict[str, Rule] = {"n": Rule(only=(1,)), "parallel_tool_calls": Rule(only=(True,))}
TRANSLATED = frozenset(
    {
        "model",
        "messages",
        "stream",
        "stream_options",
        "stop",
        "tools",
        "tool_choice",
        "response_format",
        "reasoning_effort",
        "thinking",
    }
)
# The members of the Converse request that CountTokens takes (botocore's `ConverseTokensRequest`).
COUNTED_FIELDS = ("messages", "system", "toolConfig", "additionalModelRequestFields")

STOP_REASONS: dict[str, FinishReason] = {
    "end_turn": "stop",
    "stop_sequence": "stop",
    "max_tokens": "length",
    "model_context_window_exceeded": "length",
    "tool_use": "tool_calls",
    "guardrail_intervened": "content_filter",
    "content_filtered": "content_filter",
}
# The rest of botocore's `StopReason`: the model wrote a tool use Bedrock could not parse, or output it could not
# read. Neither is an answer (read as `stop`, a client would be told a broken call ended normally), and no finish
# reason of OpenAI's or stop reason of Anthropic's says so: the provider's malformed answer, failed over, its usage
# charged, as OpenAI answers a model's invalid output (a 500, "The model produced invalid content") and as Gemini's
# `MALFORMED_FUNCTION_CALL` is here. In a stream begun, the client's API's in-stream error names it.
UNUSABLE_STOPS: dict[str, str] = {
    "malformed_tool_use": "the model wrote a tool use Bedrock could not parse",
    "malformed_model_output": "the model's output was malformed",
}

# Bedrock's error names (HTTP `x-amzn-errortype`, or an in-stream `:exception-type` in camel case) and
# the status each is read as, whatever HTTP status came with it: botocore's bedrock-runtime model gives each its
# status, but for `ServiceQuotaExceededException`, which it gives 400 (a sender's fault): a quota of the gateway's
# AWS account ("You can resubmit your request later"), never the client's request, worth another deployment or
# a fallback as throttling is (by its HTTP 400 it would be the client's 400, the fallback never tried, while the same
# exception in a stream is failed over). Throttling and a model that is not ready yet are worth another attempt.
ERROR_STATUS: dict[str, int] = {
    "validationexception": 400,
    "conflictexception": 400,
    "accessdeniedexception": 403,
    "unrecognizedclientexception": 403,
    "resourcenotfoundexception": 404,
    "modeltimeoutexception": 408,
    "modelerrorexception": 424,
    "modelstreamerrorexception": 424,
    "throttlingexception": 429,
    "modelnotreadyexception": 429,
    "servicequotaexceededexception": 429,
    "internalserverexception": 500,
    "serviceunavailableexception": 503,
}
# A model that failed mid-answer may well answer on the next attempt or deployment.
RETRYABLE_TYPES = frozenset({"modelstreamerrorexception"})

IMAGE_FORMATS = {
    "image/png": "png",
    "image/jpeg": "jpeg",
    "image/jpg": "jpeg",
    "image/gif": "gif",
    "image/webp": "webp",
}


# --- errors --------------------------------------------------------------------------------------


def _error_type(raw: str) -> str:
    """`ValidationException:http://internal.amazon.com/...` or `com.amazon...#ValidationException` -> name."""
    return raw.split(":", 1)[0].rsplit("#", 1)[-1].strip()


def bedrock_error(status: int | None, kind: str, body: bytes, headers: Mapping[str, str]) -> UpstreamError:
    """An `UpstreamError` from Bedrock's error name and `{"message": ...}` body: a name `ERROR_STATUS` knows decides
    the status (and so whether another attempt may do better), over HTTP as in a stream; a name it does not know
    keeps the HTTP `status` (None, in a stream: 500)."""
    message = ""
    try:
        data = orjson.loads(body) if body else None
    except orjson.JSONDecodeError:
        data = None
    if isinstance(data, dict):
        message = str(data.get("message") or data.get("Message") or "")
        kind = kind or _error_type(str(data.get("__type") or ""))
    if not message:
        message = error_excerpt(body)
    name = _error_type(kind)
    code = ERROR_STATUS.get(name.lower(), status if status is not None else 500)
    err = upstream_error(code, message, headers, upstream_type=name or None)
    if name.lower() in RETRYABLE_TYPES:
        err.retryable = True
    return err


def stream_exception(message_type: str, name: str, payload: bytes) -> UpstreamError:
    """An event-stream `exception` (typed) or `error` (coded) message as an `UpstreamError`."""
    if message_type == "error":
        payload = orjson.dumps({"message": payload.decode("utf-8", "replace")})
    return bedrock_error(None, name, payload, {})


# --- credentials and signing ---------------------------------------------------------------------

_signers: dict[tuple[SigCredentials, str], Signer] = {}
clock = time.time  # when a request is signed (tests fix it)


def process_credentials() -> SigCredentials:
    """The function's AWS credentials as of now (the AWS layer's snapshot: no I/O once resolved)."""
    try:
        return aws.process_credentials().current()
    except aws.NoCredentialsError as exc:
        raise ServiceUnavailableError(
            "no AWS credentials found for Bedrock (environment, profile or role)", code="provider_not_configured"
        ) from exc


def reset_credentials() -> None:
    """Forget the process's credentials (tests, or after the environment changed)."""
    aws.reset_process_credentials()
    _signers.clear()


def sign(request: UpstreamRequest, region: str, credentials: SigCredentials) -> None:
    """Add SigV4 headers (`host`, `x-amz-date`, `authorization`, a session token) for exactly these bytes."""
    signer = _signers.get((credentials, region))
    if signer is None:
        if len(_signers) >= 64:
            _signers.clear()
        signer = _signers[(credentials, region)] = Signer(credentials, region, SERVICE)
    url = parsed_url(request.url)  # parsed as the upstream client will send it: the signature covers the path
    host, path = url.netloc.decode("ascii"), url.raw_path.decode("ascii")
    request.headers[ACCEPT_ENCODING] = IDENTITY  # (signed as sent: the client adds it to a request without it)
    request.headers.update(signer.headers(host, path, request.headers, request.body or b"", now=clock()))


def aws_region(region: str) -> str:
    """A deployment's AWS region; one configured without a region runs where the function runs."""
    if region and region != GLOBAL:
        return region
    return aws.region_of() or DEFAULT_REGION


# --- request -------------------------------------------------------------------------------------


def _data_bytes(source: Mapping[str, Any]) -> str:
    return str(source.get("data", ""))


def _image(block: Mapping[str, Any]) -> dict[str, Any]:
    source = block["source"]
    if source.get("type") != "base64":
        raise InvalidRequestError("Bedrock takes images as base64 data URLs only, not http(s) URLs", param="messages")
    media_type = str(source.get("media_type", ""))
    image_format = IMAGE_FORMATS.get(media_type)
    if image_format is None:
        raise InvalidRequestError(f"Bedrock does not take images of type '{media_type}'", param="messages")
    return {"image": {"format": image_format, "source": {"bytes": _data_bytes(source)}}}


# What Converse's DocumentBlock `name` may hold besides letters and digits (botocore's bedrock-runtime model:
# alphanumeric characters, single whitespace characters, hyphens, parentheses and square brackets; 1 to 200).
NAME_PUNCTUATION = frozenset("-()[]")
# What Converse carries of a Messages document's fields (`params.unsent_part_fields` names the rest): its title as
# the document's `name`, and its `context`. Not `citations`, whose answer (`citationsContent` blocks) the OpenAI
# form cannot carry back: asked for, the answer's cited text would reach the client without them.
CARRIED = frozenset({"document.title", "document.context"})


def document_name(title: object, position: int) -> str:
    """A Converse document's name: the Messages document's title in the characters Converse takes (`doc.pdf` is
    `doc pdf`), else `document-<position>` (a title with none of them too)."""
    if not isinstance(title, str):
        return f"document-{position}"
    kept = "".join(c if c.isascii() and (c.isalnum() or c in NAME_PUNCTUATION) else " " for c in title)
    name = " ".join(kept.split())[:200].strip()
    return name or f"document-{position}"


def _document(block: Mapping[str, Any], position: int) -> dict[str, Any]:
    """A Converse DocumentBlock of an Anthropic-form document block: a PDF's bytes, or a text document's text."""
    source = block["source"]
    if source.get("type") == "text":
        document: dict[str, Any] = {"format": "txt", "source": {"text": str(source.get("data", ""))}}
    else:
        document = {"format": "pdf", "source": {"bytes": _data_bytes(source)}}
    document["name"] = document_name(block.get("title"), position)
    if block.get("context"):
        document["context"] = block["context"]
    return document


def cache_point(marker: Mapping[str, Any]) -> dict[str, Any]:
    """The Converse cache point where a prompt-cache marker (`cache_control`) stood: Converse caches the prefix up
    to it, for as long as the marker's `ttl` says (`5m` or `1h`, botocore's `CacheTTL`; Bedrock's default without)."""
    point: dict[str, Any] = {"type": "default"}
    if isinstance(marker.get("ttl"), str):
        point["ttl"] = marker["ttl"]  # (a value Bedrock does not take is its 400 to name, as Anthropic's would be)
    return {"cachePoint": point}


def block_marker(block: Mapping[str, Any]) -> dict[str, Any] | None:
    """A content block's prompt-cache marker: its own, or a tool result's from its content (the Messages
    translation moves a marked result's marker onto its content, and a Chat Completions client marks the parts of
    a tool message). Converse takes cache points between a turn's blocks, not inside a `toolResult`: the point
    goes after the result, and caches it whole."""
    marker = block.get("cache_control")
    if marker is None and block["type"] == "tool_result":
        marker = next(
            (inner["cache_control"] for inner in reversed(block.get("content") or ()) if "cache_control" in inner), None
        )
    return marker


def converse_block(block: Mapping[str, Any], position: int, statuses: bool = False) -> dict[str, Any]:
    """One Anthropic-form content block (as `convert_messages` builds them) as a Converse block; a failed tool's
    result with `status: error` where the model takes it (`statuses`), else saying so in its text."""
    kind = block["type"]
    if kind == "text":
        return {"text": block["text"]}
    if kind == "image":
        return _image(block)
    if kind == "document":
        return {"document": _document(block, position)}
    if kind == "tool_use":
        return {"toolUse": {"toolUseId": converse_call_id(block["id"]), "name": block["name"], "input": block["input"]}}
    if kind == "thinking":
        text = {"text": block.get("thinking", ""), "signature": block.get("signature", "")}
        return {"reasoningContent": {"reasoningText": text}}
    if kind == "redacted_thinking":
        return {"reasoningContent": {"redactedContent": block.get("data", "")}}
    if kind == "tool_result":
        content = [converse_block(inner, position) for inner in block.get("content") or ()]
        failed = bool(block.get("is_error"))
        if failed and not statuses:
            content = marked(content)
        # Converse requires a result's content (with `status: error` too); a tool that printed nothing still answered.
        result: dict[str, Any] = {"toolUseId": converse_call_id(block["tool_use_id"])}
        result["content"] = content or [NO_OUTPUT]
        if failed and statuses:
            result["status"] = "error"
        return {"toolResult": result}
    raise InvalidRequestError(f"content of type '{kind}' cannot be sent to Bedrock", param="messages")


NO_OUTPUT = {"text": "(no output)"}


def marked(content: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """A failed tool's Converse result content with `TOOL_ERROR_MARK` opening its text, for a model without
    `status`."""
    if content and isinstance(content[0].get("text"), str):
        return [{"text": TOOL_ERROR_MARK + content[0]["text"]}, *content[1:]]
    return [{"text": TOOL_ERROR_MARK.rstrip()}, *content]


def converse_messages(
    req: ChatRequest, names: ToolNames, statuses: bool = False
) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """Converse system blocks and turns of the client's messages, a cache point after each marked block, each call's
    tool by the name Converse takes (`names`); a failed tool's result with `status: error` where the model takes it
    (`statuses`)."""
    system_blocks, turns = convert_messages(req.messages)
    system: list[dict[str, Any]] = []
    for block in system_blocks:
        system.append({"text": block["text"]})
        if "cache_control" in block:
            system.append(cache_point(block["cache_control"]))
    position = 0
    messages = []
    for turn in turns:
        content = []
        for block in turn["content"]:
            position += 1
            converted = converse_block(block, position, statuses)
            if block["type"] == "tool_use":
                converted["toolUse"]["name"] = names.wire(block["name"])
            content.append(converted)
            marker = block_marker(block)
            if marker is not None:
                content.append(cache_point(marker))
        messages.append({"role": turn["role"], "content": content})
    return system, messages


# How `x-gateway-dropped-params` names a client's cache markers left out, by the member of the Converse request they
# stood in: a system prompt's and a message's as the parts of messages they are in the gateway's form (as
# `messages.name` or `messages.thinking` are named), a tool's as the tools' field.
UNCACHED_NAMES = {
    "system": "messages.cache_control",
    "messages": "messages.cache_control",
    "tools": "tools.cache_control",
}


def unsent_cache_points(body: dict[str, Any], model: str) -> list[str]:
    """Take the cache points of the client's markers out of the members of the Converse `body` where Bedrock takes none
    from `model` (`prompt_cache.bedrock_cache_fields`: Llama, Mistral, DeepSeek, Claude 3 take none, and Nova none
    among its tools; a point there is Bedrock's refusal of the whole request), in place; and name each kind of marker
    so left out (`UNCACHED_NAMES`). The model caches nothing there: the marker asked for what no request to it can
    have, so it is named, where a provider that caches prefixes by itself (OpenAI, Gemini, Mistral, DeepSeek) leaves
    it out without a word."""
    members: list[tuple[str, list[dict[str, Any]]]] = [("system", body.get("system") or [])]
    members.append(("tools", (body.get("toolConfig") or {}).get("tools") or []))
    members += [("messages", message["content"]) for message in body["messages"]]
    marked = [(member, blocks) for member, blocks in members if any("cachePoint" in block for block in blocks)]
    if not marked:
        return []  # (the usual request: `prompt_cache` is not imported for it)
    from adapters.providers.prompt_cache import bedrock_cache_fields

    taken = bedrock_cache_fields(model)
    dropped: list[str] = []
    for member, blocks in marked:
        if member not in taken:
            blocks[:] = [block for block in blocks if "cachePoint" not in block]
            dropped.append(UNCACHED_NAMES[member])
    return list(dict.fromkeys(dropped))


def tool_turn_without_reasoning(messages: list[dict[str, Any]]) -> bool:
    """Whether the last assistant Converse turn called a tool without opening with Claude's signed reasoning (its
    text with a signature, or redacted): Bedrock refuses thinking then, as Anthropic does (see
    `tool_turn_without_thinking`)."""
    last = next((message for message in reversed(messages) if message["role"] == "assistant"), None)
    if last is None or not any("toolUse" in block for block in last["content"]):
        return False
    reasoning = last["content"][0].get("reasoningContent") or {}
    return "redactedContent" not in reasoning and not (reasoning.get("reasoningText") or {}).get("signature")


def reasoning_fields(req: ChatRequest, model: str, max_tokens: int) -> tuple[dict[str, Any] | None, list[str]]:
    """`additionalModelRequestFields` for the request's reasoning wish (`reasoning.LEVELS`): Claude's
    `thinking` (with `output_config.effort` on the adaptive models), Nova's `reasoningConfig`; and what could not
    be honoured."""
    wish = reasoning.requested(req)
    if wish is None or wish.off:
        return None, []
    asked = reasoning.asked_with(req)
    if reasoning.reasons(model, reasoning.CLAUDE_THINKING_FRAGMENTS):
        return thinking_param(req, model, max_tokens)  # as Anthropic's API takes it (adaptive with an effort)
    if reasoning.reasons(model, reasoning.NOVA_REASONING_FRAGMENTS):
        level = wish.level or reasoning.BY_EFFORT["medium"]
        return {"reasoningConfig": {"type": "enabled", "maxReasoningEffort": level.nova}}, []
    return None, asked


def _thinks(body: Mapping[str, Any]) -> bool:
    return "thinking" in body.get("additionalModelRequestFields", {})


# The `anthropic-beta` values Bedrock takes for Claude (its Claude request page lists them; any other is its 400
# "invalid beta flag"), each sent in `additionalModelRequestFields.anthropic_beta` when the Converse request uses
# what it turns on: a model may refuse a beta it does not serve (Opus 4.7 refuses most), so one that asks for
# nothing here is not worth the risk. Bedrock's others serve what the translation leaves out, named (computer use
# and the tool search tool, server tools; tool use examples; context management; effort, which Bedrock takes as a
# beta on Opus 4.5 alone, where the gateway sends a thinking budget).
CLAUDE_BETAS: dict[str, Callable[[Mapping[str, Any]], bool]] = {
    "context-1m-2025-08-07": lambda body: True,  # a prompt past 200K tokens
    "output-128k-2025-02-19": lambda body: True,  # an answer past 64K tokens (Claude 3.7 Sonnet)
    "interleaved-thinking-2025-05-14": _thinks,
    "dev-full-thinking-2025-05-14": _thinks,
    "token-efficient-tools-2025-02-19": lambda body: "toolConfig" in body,
}


def claude_betas(call: NativeCall | None, model: str, body: Mapping[str, Any]) -> tuple[list[str], list[str]]:
    """The betas of the client's own request (a Messages client's `anthropic-beta`: Claude Code's
    `context-1m-2025-08-07` for a model it was given as `name[1m]`, its `interleaved-thinking-2025-05-14`) that the
    Converse `body` for a Claude `model` takes (`CLAUDE_BETAS`), and the others as `x-gateway-dropped-params` names
    them (`anthropic-beta[NAME]`): Claude is sent the request without them. Another model loses what a translation
    to any other provider loses (`NativeCall.lost_headers`), no more: the betas are Claude's."""
    header = call.headers.get("anthropic-beta", "") if call is not None else ""
    if not header or call is None:
        return [], []
    if not reasoning.reasons(model, ("anthropic.claude",)):
        return [], list(call.lost_headers)
    betas = list(dict.fromkeys(beta.strip() for beta in header.split(",") if beta.strip()))
    kept = [beta for beta in betas if beta in CLAUDE_BETAS and CLAUDE_BETAS[beta](body)]
    return kept, [f"anthropic-beta[{beta}]" for beta in betas if beta not in kept]


def converse_takes(name: str) -> bool:
    """Whether Converse takes `name` for a tool (AWS's ToolSpecification and ToolUseBlock): 1 to 64 of `[a-zA-Z0-9_-]`,
    as it takes a `toolUseId`. Claude Code's MCP tools run past 64 (`mcp__<server>__<tool>`): see `ToolNames`."""
    return len(name) <= MAX_CALL_ID and claude_takes(name)


def _tool_specs(tools: list[Tool], names: ToolNames) -> list[dict[str, Any]]:
    specs = []
    for tool in tools:
        function = tool.function
        specs.append(_tool_spec(names.wire(function.name), function.description, function.parameters, function.strict))
        marker = cache_control(tool)
        if marker is not None:
            specs.append(cache_point(marker))
    return specs


def _tool_spec(
    name: str, description: str | None, schema: dict[str, Any] | None, strict: bool | None = None
) -> dict[str, Any]:
    spec: dict[str, Any] = {"name": name, "inputSchema": {"json": {"type": "object", **(schema or {})}}}
    if description:
        spec["description"] = description
    if strict is not None:
        spec["strict"] = strict
    return {"toolSpec": spec}


OPENING_TURN = {"role": "user", "content": [{"text": "(conversation start)"}]}


def user_first(messages: list[dict[str, Any]]) -> None:
    """Converse refuses a conversation that opens with the assistant (a client's greeting, or a first user
    turn with nothing sendable): a short user turn goes first, keeping the assistant's words in place."""
    if messages and messages[0]["role"] != "user":
        messages.insert(0, OPENING_TURN)


def _uses_tools(messages: list[dict[str, Any]]) -> bool:
    return any("toolUse" in block or "toolResult" in block for m in messages for block in m["content"])


def tool_turns_as_text(messages: list[dict[str, Any]], req: ChatRequest) -> None:
    """Earlier tool calls and results written as text, in place: Converse refuses `toolUse` and `toolResult`
    blocks in a request without a `toolConfig`, and a request that offers no tools (or `tool_choice: none`)
    must not be given any to call. Each call by its tool's name as the client wrote it, not the alias Converse
    would have taken (`ToolNames`): the model may write it back to the client."""
    from adapters.providers.tool_names import aliases  # (a rare request: tool turns and no tools to send)

    clients = {wire: given for given, wire in aliases(req, converse_takes).items()}
    for message in messages:
        content: list[dict[str, Any]] = []
        for block in message["content"]:
            if "toolUse" in block:
                call = block["toolUse"]
                arguments = orjson.dumps(call["input"]).decode()
                name = clients.get(call["name"], call["name"])
                content.append({"text": f"[called tool {name} ({call['toolUseId']}) with {arguments}]"})
            elif "toolResult" in block:
                result = block["toolResult"]
                failed = " (the tool failed)" if result.get("status") == "error" else ""
                content.append({"text": f"[result of {result['toolUseId']}{failed}]"})
                content.extend(result["content"])  # text and images, as a user turn may carry them
            else:
                content.append(block)
        message["content"] = content


def tool_config(
    req: ChatRequest, messages: list[dict[str, Any]], dropped: list[str], forced: bool, names: ToolNames
) -> dict[str, Any] | None:
    """`toolConfig`: the client's tools and choice (each tool by the name Converse takes: `names`), plus the forced
    tool of a `json_schema` answer where the model takes a forced choice (`forced`). Converse has no list of the
    tools a model may call (`allowed_tools`): those it allows are offered alone. Without tools to send (none
    offered, or `tool_choice: none`), earlier tool turns go as text."""
    offered, choice = chosen_tools(req)
    tools = _tool_specs(offered, names)
    if choice == "none":
        tools = []  # "none" honoured exactly: no tool offered
    chosen: dict[str, Any] | None = None
    if choice == "auto":
        chosen = {"auto": {}}
    elif choice is not None and choice != "none" and not forced:
        # The model takes only `auto` (Bedrock's default): a forced choice would be its 400, so it is named.
        dropped.append("tool_choice")
    elif choice == "required":
        chosen = {"any": {}}
    elif isinstance(choice, NamedToolChoice):
        chosen = {"tool": {"name": names.wire(choice.function.name)}}
    json_answer = json_tool(req) if forced else None  # otherwise the schema goes in the system prompt
    if json_answer is not None:
        if chosen is None or "tool" not in chosen:
            chosen = {"tool": {"name": JSON_TOOL}} if not tools else {"any": {}}
        name, description, schema = json_answer["name"], json_answer["description"], json_answer["input_schema"]
        tools.append(_tool_spec(name, description, schema, json_answer.get("strict")))
    if not tools:
        if choice not in (None, "none"):
            dropped.append("tool_choice")
        if _uses_tools(messages):
            tool_turns_as_text(messages, req)
        return None
    config: dict[str, Any] = {"tools": tools}
    if chosen is not None:
        config["toolChoice"] = chosen
    return config


# --- answer --------------------------------------------------------------------------------------


def usage_of(raw: Any) -> Usage | None:
    """Converse usage: `inputTokens` leaves out cache reads and writes, which OpenAI counts in. The writes kept an
    hour (`cacheDetails`, the writes by TTL) are counted apart: they are priced at their own rate. A count that is
    not a plain integer makes the answer malformed (`usage_count`), not billed as 0 (nor `true` as 1) as the
    provider's count. One without a main count, the input's or the output's (null or left out), is none
    (`reported`): read as 0, it would bill the prompt free."""
    if not reported(raw, "inputTokens", "outputTokens"):
        return None
    listed = raw.get("cacheDetails")
    details = [d for d in listed if isinstance(d, dict)] if isinstance(listed, list) else []
    by_ttl = [(d.get("ttl"), usage_count(d, "inputTokens")) for d in details]
    read = usage_count(raw, "cacheReadInputTokens")
    if raw.get("cacheWriteInputTokens") is None:  # (the writes by TTL alone: their sum)
        write = sum(tokens for _, tokens in by_ttl)
    else:
        write = usage_count(raw, "cacheWriteInputTokens")
    hour = sum(tokens for ttl, tokens in by_ttl if ttl == "1h")
    prompt = usage_count(raw, "inputTokens") + read + write
    return Usage.of(
        prompt, usage_count(raw, "outputTokens"), cached=read, cache_write=write, cache_write_1h=min(write, hour)
    )


def finish_reason(stop_reason: Any, json_answer: bool, tool_calls: bool) -> FinishReason:
    return answer_finish(STOP_REASONS.get(str(stop_reason), "stop"), json_answer, tool_calls)


def unusable(stop_reason: Any, usage: Usage | None) -> UpstreamError | None:
    """The error of an answer its stop reason says is no answer (`UNUSABLE_STOPS`), carrying what Bedrock billed for
    it; None for any other."""
    what = UNUSABLE_STOPS.get(stop_reason) if isinstance(stop_reason, str) else None
    if what is None:
        return None
    err = malformed(f"{what} (Bedrock's stopReason {stop_reason})")
    err.billed = usage
    return err


# Amazon Nova 2's reasoning comes back as this text ("reasoning content is redacted in the output and displays as
# [REDACTED], though you are still charged for these tokens": AWS's Nova 2 user guide, "Reasoning capabilities"),
# unsigned. It is no reasoning of the model's, so it is not shown as any: its tokens stay in the usage's output.
NOVA_REDACTED = "[REDACTED]"
NOVA_FRAGMENTS = ("amazon.nova",)


def redacts_reasoning(model: str) -> bool:
    """Whether the model's reasoning may come back as `NOVA_REDACTED`: Amazon Nova's."""
    return reasoning.reasons(model, NOVA_FRAGMENTS)


def fired(answer: dict[str, Any], stops: list[str]) -> str | None:
    """Which of the request's stop sequences ended the answer (`stopReason: stop_sequence`): the one Claude's
    models name when asked (`additionalModelResponseFieldPaths`), else the only one the request gave."""
    if answer.get("stopReason") != "stop_sequence":
        return None
    named = (answer.get("additionalModelResponseFields") or {}).get("stop_sequence")
    if isinstance(named, str):
        return named
    return stops[0] if len(stops) == 1 else None


# --- adapter -------------------------------------------------------------------------------------


class BedrockAdapter(ProviderAdapter):
    """The `bedrock` provider type: the Converse API of Amazon Bedrock Runtime.

    Needs no key: the function's AWS credentials sign each request. A deployment's `model` is a model
    id, an inference profile id (`us.`, `eu.`, `apac.`, `global.` prefixes) or an ARN; its `region` picks
    the endpoint (the function's own region when none is given). Option `max_output_tokens` (provider-wide
    or per deployment) sets `maxTokens` when the client gives none; `prompt_caching` says when a request gets cache
    points of the gateway's (`prompt_cache`).
    """

    type_name = "bedrock"
    semconv_provider = "aws.bedrock"
    requires_key = False
    process_credentials = True
    regional = True
    provider_options = frozenset({"max_output_tokens", CACHING})
    deployment_options = frozenset({"max_output_tokens", CACHING})

    @classmethod
    def option_problem(cls, option: str, value: Any) -> str | None:
        if option == CACHING:
            return caching_problem(value)
        return token_count_problem(value) if option == "max_output_tokens" else None

    def missing_credentials(self) -> str | None:
        if aws.process_credentials().ready():
            return None
        return (
            "no AWS credentials found for Bedrock: set AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY, a profile "
            f"(AWS_PROFILE) or a role; the gateway looks again within {aws.MISSING_RETRY_S:g} s"
        )

    @classmethod
    def geography(cls, model: str) -> Geography | None:
        prefix, dot, _ = model.partition(".")
        return INFERENCE_GEOGRAPHIES.get(prefix) if dot else None

    def base_url(self, region: str, override: str | None) -> str:
        configured = override or self.options.get("base_url")
        return aws.endpoint("bedrock-runtime", aws_region(region), str(configured) if configured else None)

    def url(self, target: Target, operation: str) -> str:
        """The operation's URL, in the form every HTTP client sends unchanged.

        The signature covers the path as sent. Some HTTP clients decode `%3A` back to `:` (aiohttp does)
        while httpx and the gateway's own client keep it, so the `:` of a model id is left as is (Bedrock
        reads it either way) and only what must be encoded (`/` of an ARN, spaces) is.
        """
        return f"{target.base_url}/model/{urllib.parse.quote(target.model, safe=':')}/{operation}"

    def chat_body(self, req: ChatRequest, model: str = "") -> tuple[dict[str, Any], list[str]]:
        """The Converse request body (the model id goes in the URL) and what it could not carry."""
        params = req.model_dump(exclude_unset=True, by_alias=True)
        inference = {name: params.pop(name) for name in INFERENCE_RULES if name in params}
        dropped = apply_rules(inference, INFERENCE_RULES) + keep_one_sampling_knob(inference, model, "topP")
        dropped += named_messages(req.messages) + unsent_reasoning(req.messages)
        harmless = {name: params.pop(name) for name in HARMLESS_RULES if name in params}
        dropped += apply_rules(harmless, HARMLESS_RULES)
        dropped += sorted(name for name, value in params.items() if name not in TRANSLATED and asks(name, value))

        names = ToolNames(req, converse_takes)
        system, messages = converse_messages(req, names, rules_for(model).tool_result_status)
        require_turns(messages, "Bedrock")
        dropped += unsent_part_fields(req.messages, CARRIED)
        user_first(messages)
        body: dict[str, Any] = {"messages": messages}
        forced = rules_for(model).forced_tool_choice
        config = tool_config(req, messages, dropped, forced, names)
        if config is not None:
            body["toolConfig"] = config
        fmt = req.response_format
        if fmt is not None and fmt.type == "json_object":
            system.append({"text": JSON_OBJECT_INSTRUCTION})
        elif fmt is not None and fmt.type == "json_schema" and not forced:
            system.append({"text": json_schema_instruction(fmt.json_schema.schema_ if fmt.json_schema else None)})
            if strict_schema(fmt):
                dropped.append(STRICT_SCHEMA)  # an instruction asks; nothing holds the answer to the schema
        if system:
            body["system"] = system
        inference = {name: value for name, value in inference.items() if value is not None}
        if req.stop_list():
            inference["stopSequences"] = req.stop_list()
        if inference:
            body["inferenceConfig"] = inference
        dropped += unsent_cache_points(body, model)
        return body, list(dict.fromkeys(dropped))

    def converse_body(
        self, req: ChatRequest, target: Target, call: NativeCall | None = None
    ) -> tuple[dict[str, Any], list[str]]:
        """The whole Converse request body for this deployment (its output cap, reasoning fields, the betas of the
        client's request `call` that Bedrock takes) and what it could not carry."""
        body, dropped = self.chat_body(req, target.model)
        if caching_wanted(req, target.options, self.options):
            from adapters.providers.prompt_cache import mark_converse, minimum_tokens  # (a cold start needs none)

            minimum = minimum_tokens(target.model, bedrock=True)
            if minimum is not None:
                mark_converse(body, minimum)
                dropped = [name for name in dropped if name != "prompt_cache_key"]  # (asked for caching: the points)
        if "maxTokens" not in body.get("inferenceConfig", {}):
            configured = target.options.get("max_output_tokens") or self.options.get("max_output_tokens")
            if configured:
                body.setdefault("inferenceConfig", {})["maxTokens"] = int(configured)
        max_tokens = body.get("inferenceConfig", {}).get("maxTokens") or default_max_tokens(target.model)
        fields, not_reasoning = reasoning_fields(req, target.model, max_tokens)
        dropped += not_reasoning
        choice = body.get("toolConfig", {}).get("toolChoice", {})
        if (
            fields is not None
            and "thinking" in fields
            and ("any" in choice or "tool" in choice or tool_turn_without_reasoning(body["messages"]))
        ):
            # Claude cannot think on a turn whose tool use is forced (a 400: the forced tool wins), nor continue a
            # tool-use turn that did not open with its reasoning (a 400, relayed from Anthropic), as on Anthropic.
            unthinking = {name: value for name, value in fields.items() if name not in ("thinking", "output_config")}
            fields = unthinking or None
            dropped += reasoning.asked_with(req)
        if req.reasoning_summary is not None:
            claude = reasoning.reasons(target.model, ("anthropic.claude",))
            shown = claude and reasoning.shows_claude_reasoning(target.model)
            dropped += reasoning.summary_unshown(
                req, shown or reasoning.reasons(target.model, reasoning.BEDROCK_SHOWN_FRAGMENTS)
            )
        if req.stop_list() and reasoning.reasons(target.model, ("anthropic.claude",)):
            body["additionalModelResponseFieldPaths"] = ["/stop_sequence"]  # which one fired, as Anthropic says
        if fields is not None:
            body["additionalModelRequestFields"] = fields
            if "thinking" in fields:
                # Claude thinks only at its default sampling, and needs room beyond the budget.
                inference = body.setdefault("inferenceConfig", {})
                inference["maxTokens"] = max_tokens
                dropped += [
                    name
                    for name, wire in (("temperature", "temperature"), ("top_p", "topP"))
                    if inference.pop(wire, None) is not None
                ]
        betas, not_betas = claude_betas(call, target.model, body)
        dropped += not_betas
        if betas:
            body.setdefault("additionalModelRequestFields", {})["anthropic_beta"] = betas
        return body, dropped

    def chat_request(self, req: ChatRequest, target: Target, *, stream: bool) -> BuiltRequest:
        return self.converse_request(req, target, stream=stream)

    def translated_request(self, call: NativeCall, req: ChatRequest, target: Target, *, stream: bool) -> BuiltRequest:
        return self.converse_request(req, target, stream=stream, call=call)

    def converse_request(
        self, req: ChatRequest, target: Target, *, stream: bool, call: NativeCall | None = None
    ) -> BuiltRequest:
        """The signed Converse (or ConverseStream) request, with the betas of the client's own request (`call`)."""
        body, dropped = self.converse_body(req, target, call)
        if stream and "toolConfig" in body and rules_for(target.model).no_streaming_tools:
            # ConverseStream refuses this model's tools (a 400): Converse answers whole, and a whole answer to a
            # streamed request is handed out as the chunks of a stream (`handler.wire.WholeBodySniffer`).
            stream = False
        headers = {"content-type": "application/json"}
        if stream:
            headers["accept"] = "application/vnd.amazon.eventstream"
        request = UpstreamRequest(
            "POST", self.url(target, "converse-stream" if stream else "converse"), headers, orjson.dumps(body)
        )
        sign(request, aws_region(target.region), process_credentials())
        return BuiltRequest(request, dropped)

    def chat_response(self, body: bytes, req: ChatRequest, target: Target) -> ChatCompletion:
        data = json_body(body)
        failure = unusable(data.get("stopReason"), usage_of(data.get("usage"))) if isinstance(data, dict) else None
        if failure is not None:
            raise failure
        output = data.get("output") if isinstance(data, dict) else None
        message = output.get("message") if isinstance(output, dict) else None
        if not isinstance(message, dict) or not isinstance(message.get("content"), list):
            raise malformed("upstream answer is not a Converse response")
        json_mode = json_tool(req) is not None
        nova = redacts_reasoning(target.model)
        texts: list[str] = []
        reasoning_texts: list[str] = []
        signed: list[dict[str, Any]] = []
        calls: list[ToolCall] = []
        json_answer: str | None = None
        order: BlockOrder = []  # (the parts as Claude wrote them: see `BlockOrder`)
        for block in message["content"]:
            if not isinstance(block, dict):
                continue
            tool = block.get("toolUse")
            reasoning = block.get("reasoningContent")
            if isinstance(block.get("text"), str):
                texts.append(block["text"])
                if block["text"]:
                    order.append(("text", len(block["text"])))
            elif isinstance(tool, dict) and json_mode and tool.get("name") == JSON_TOOL:
                json_answer = orjson.dumps(tool.get("input") or {}).decode()
            elif isinstance(tool, dict):
                arguments = orjson.dumps(tool.get("input") or {}).decode()
                function = FunctionCall(name=str(tool.get("name", "")), arguments=arguments)
                calls.append(ToolCall(id=str(tool.get("toolUseId", "")), function=function))
                order.append(("call", len(calls) - 1))
            elif isinstance(reasoning, dict) and isinstance(reasoning.get("reasoningText"), dict):
                text = str(reasoning["reasoningText"].get("text", ""))
                signature = reasoning["reasoningText"].get("signature")
                if text == NOVA_REDACTED and signature is None and nova:
                    continue  # Nova 2's reasoning is redacted: no reasoning to show (its tokens are in the usage)
                reasoning_texts.append(text)
                if isinstance(signature, str):
                    signed.append(signed_thinking(text, signature, len(signed)))
                order.append(("thinking", len(signed) - 1 if isinstance(signature, str) else -1))
            elif isinstance(reasoning, dict) and isinstance(reasoning.get("redactedContent"), str):
                signed.append(redacted_thinking(reasoning["redactedContent"], len(signed)))
                order.append(("thinking", len(signed) - 1))
        if calls:
            names = ToolNames(req, converse_takes)
            for call in calls:
                call.function.name = names.client(call.function.name)  # (an alias of a name Converse refuses)
        content = json_answer if json_answer is not None else ("".join(texts) if texts else None)
        reply = AssistantMessage(
            content=content,
            tool_calls=calls or None,
            reasoning_content="".join(reasoning_texts) if reasoning_texts else None,
            # Claude's thinking as Anthropic's blocks, signatures kept: it goes back on the next turn.
            **({THINKING_BLOCKS: signed} if signed else {}),
        )
        if signed and json_answer is None and thinks_between(order):  # interleaved thinking: Responses shows it
            reply.block_order = order  # (one unsigned, at -1, leaves it unused: `ordered_parts`)
        finish = finish_reason(data.get("stopReason"), json_answer is not None, bool(calls))
        choice = Choice(message=reply, finish_reason=finish, stop_sequence=fired(data, req.stop_list()))
        return ChatCompletion(
            id=completion_id(),
            created=int(time.time()),
            model=target.model,
            choices=[choice],
            usage=usage_of(data.get("usage")),
        )

    def counts_tokens(self, target: Target) -> bool:
        # Bedrock's CountTokens serves Anthropic's models only.
        return reasoning.reasons(target.model, ("anthropic.claude",))

    def count_tokens_request(self, call: NativeCall, req: ChatRequest, target: Target) -> BuiltRequest:
        """Bedrock's CountTokens for the Converse request this prompt would be: what of it CountTokens takes
        (`ConverseTokensRequest`). The tools count, and a tool-use history is refused without them."""
        body, _ = self.converse_body(req, target, call)
        converse = {name: body[name] for name in COUNTED_FIELDS if name in body}
        payload = orjson.dumps({"input": {"converse": converse}})
        request = UpstreamRequest(
            "POST", self.url(target, "count-tokens"), {"content-type": "application/json"}, payload
        )
        sign(request, aws_region(target.region), process_credentials())
        return BuiltRequest(request)

    def count_tokens_response(self, body: bytes) -> int:
        return counted_tokens(json_body(body), "inputTokens", "CountTokens")

    def frame_decoder(self) -> EventStreamDecoder:
        return EventStreamDecoder(stream_exception)

    def stream_parser(self, req: ChatRequest, target: Target) -> BedrockStreamParser:
        from adapters.providers.bedrock.stream import BedrockStreamParser  # (a cold start needs none)

        names = ToolNames(req, converse_takes)
        return BedrockStreamParser(target.model, json_tool(req) is not None, req.stop_list(), names)

    def error(self, status: int, body: bytes, headers: Mapping[str, str]) -> UpstreamError:
        return bedrock_error(status, headers.get("x-amzn-errortype", ""), body, headers)
