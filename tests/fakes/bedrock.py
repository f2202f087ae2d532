"""A fake Amazon Bedrock Runtime (Converse and ConverseStream), speaking AWS's documented wire format.

It serves `POST /model/{modelId}/converse`, `/converse-stream` and `/count-tokens` (CountTokens), the stream as
`application/vnd.amazon.eventstream` frames (built by `encode_frame`, with real CRCs), and checks that
each request carries a SigV4 `Authorization` for service `bedrock` in `REGION` whose signature verifies
against the test credentials over the exact bytes received (`verify_sigv4`, written from the SigV4
specification, independent of botocore). It refuses what Bedrock refuses (unknown fields, roles that
do not alternate, a conversation not opening with the user, a forced `toolChoice` (`any` or `tool`) for a
model other than Claude and Nova, the only ones AWS's ToolChoice reference names, a `toolConfig` sent to
ConverseStream for a model without streaming tool use in AWS's "Supported models and model features" table:
Llama, Mistral, Command R; a `toolUseId` or tool name outside Converse's 1 to 64 characters of `[a-zA-Z0-9_-]`; a tool
result's `status` from a model other than Claude and Nova, the only ones AWS's ToolResultBlock reference names, or an
`error` one without content) with a `ValidationException`.
A request with cache points writes the prompt up to the last one (its usage says for how long, in `cacheDetails`)
but for the longest prefix written before that ends at one of its points or at one of the 20 blocks before it, which
it reads (the points themselves no part of a prefix), as Bedrock does for Claude. Only the models Bedrock caches for
take cache points (`CACHING`, less `UNCACHED`; AWS's "Prompt caching" supported-models table), Amazon Nova in `system`
and `messages` only, not in `toolConfig.tools`: a point anywhere else is a `ValidationException` (`_uncacheable`), and
a model that caches nothing reports no cache reads or writes. With tools and a `toolChoice` of
`any` or `tool` it answers with a `toolUse`; a system prompt that gives a JSON Schema gets an answer following it. A
request asking for Claude's `thinking` (in `additionalModelRequestFields`) whose final assistant turn called a tool
without opening with its signed reasoning is refused, as Anthropic refuses it, and so is Claude's reasoning without
its signature in any turn, and a beta (`anthropic_beta`) Bedrock does not take for Claude (`CLAUDE_BETAS`: "invalid
beta flag").

Amazon Nova 2 asked to reason (`additionalModelRequestFields.reasoningConfig`) answers as AWS documents it: its
reasoning block's text is `NOVA_REDACTED` (no signature), and its reasoning tokens are billed in `outputTokens`.

Behaviour by model id: `thinker` and `redacts` (see `THINKING`, `REDACTED`), `fail-throttle` (HTTP 429
ThrottlingException, which names no wait), `throttle-once` (that 429 for the first request to the model, served after
it), `fail-validation` (400: a request Bedrock cannot read), `unknown-id` (400: Bedrock's words for a model id it does
not know), `on-demand` (400: its words for a model id it serves only through an inference profile, `ON_DEMAND`),
`fail-quota` (HTTP 400 ServiceQuotaExceededException, the status botocore's model gives it, naming no wait),
`fail-500` (InternalServerException), `echoes-signature-400` and `echoes-signature-403` (a
ValidationException, an AccessDeniedException, whose message quotes the request's `Authorization` header, as AWS's
signature errors quote what was signed), `denied` (a 403 AccessDeniedException in IAM's words, `DENIED`, naming the
caller's role and the resource by their ARNs, the operator's account id in each), `stream-exception` (a stream
whose first frame is a throttlingException), `malformed-tool-use` and `malformed-output` (the words the model wrote
before a tool use Bedrock could not parse, or output it could not read: `stopReason` `malformed_tool_use` or
`malformed_model_output`, its usage billed; a stream pauses `MALFORMED_PAUSE_S` before its `messageStop`, as a model
writing for a while does).
Every request is recorded on `app.state.requests`.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import re
import secrets
import struct
import urllib.parse
import zlib
from collections.abc import AsyncIterator, Callable, Mapping
from typing import Any

import orjson
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response, StreamingResponse
from starlette.routing import Route

from tests.fakes.script import ScriptedCall, input_for, pieces, prompt_cache_use, scripted_turn, text_for, texts

ACCESS_KEY = "testing"
SECRET_KEY = "testing"
REGION = "us-east-1"
SERVICE = "bedrock"
TEXT = "Hello from fake Bedrock."
CALL_INPUT = {"city": "Paris"}
# A tool use's id, new for each call as Converse's are (`tooluse_` and 22 characters): a fixed one, repeated across
# turns, made Claude Code discard a later call as one it had answered and ask again, without end (found by review).
TOOL_USE_ID = re.compile(r"^tooluse_[A-Za-z0-9_-]{22}$")


def tool_use_id() -> str:
    return f"tooluse_{secrets.token_urlsafe(16)}"


# A model id with `thinker` has reasoning on: its answers open with signed reasoning, which must come back.
THINKING = "The user wants the weather; a tool knows it."
SIGNATURE = "ErcBCkgIBxgCfakeBedrockSignature"
# A model id with `redacts` opens its reasoning with a block Claude's safety systems encrypted (a Blob: base64).
REDACTED = "RXJjQkNrZ0lCeGdDZmFrZVJlZGFjdGVkVGhpbmtpbmc="
# Nova 2's reasoning, "redacted in the output and displays as [REDACTED], though you are still charged for these
# tokens" (AWS's Nova 2 user guide, "Reasoning capabilities"): the text of its reasoning block, and the tokens that
# reasoning adds to `outputTokens`.
NOVA_REDACTED = "[REDACTED]"
NOVA_REASONING_TOKENS = 40
USAGE = {"inputTokens": 11, "outputTokens": 6, "totalTokens": 20, "cacheReadInputTokens": 3}
# A model id part -> the stop reason of an answer Bedrock could not use, and the words written before it.
MALFORMED = {"malformed-tool-use": "malformed_tool_use", "malformed-output": "malformed_model_output"}
MALFORMED_TEXT = "Let me look that up."
MALFORMED_PAUSE_S = 0.3
# Bedrock's refusal of a caller whose IAM role may not invoke the model (an explicit deny, or none that allows it), as
# AWS words it: the role's assumed-role ARN and the resource's, in the account AWS's documentation uses for examples.
ACCOUNT = "123456789012"
ROLE = f"arn:aws:sts::{ACCOUNT}:assumed-role/llm-gateway-GatewayFunctionRole-1A2B3C4D5E6F/llm-gateway-fn"
DENIED = (
    f"User: {ROLE} is not authorized to perform: bedrock:InvokeModel on resource: "
    f"arn:aws:bedrock:{REGION}:{ACCOUNT}:application-inference-profile/abc123 because no identity-based policy "
    "allows the bedrock:InvokeModel action"
)

REQUEST_FIELDS = {
    "messages",
    "system",
    "inferenceConfig",
    "toolConfig",
    "guardrailConfig",
    "additionalModelRequestFields",
    "additionalModelResponseFieldPaths",
    "requestMetadata",
    "performanceConfig",
}
COUNTED_FIELDS = {"messages", "system", "toolConfig", "additionalModelRequestFields"}  # ConverseTokensRequest
INFERENCE_FIELDS = {"maxTokens", "temperature", "topP", "stopSequences"}
OUTPUT_LIMITS = {"meta.llama3-3-70b-instruct": 8192}  # model id part -> the most `maxTokens` it takes
# Model id parts of models with tool use but no streaming tool use (AWS's "Supported models and model features").
NO_STREAMING_TOOLS = ("meta.llama", "mistral.", "writer.palmyra")
CACHE_TTLS = ("5m", "1h")  # botocore's CacheTTL
# The models Bedrock caches prompts for (model id parts), but for the Claude models it does not cache for (a pattern):
# Claude 3.7 Sonnet, 3.5 Haiku and the Claude 4 models; Amazon Nova, whose cache points go in `system` and `messages`.
CACHING = ("anthropic.claude", "amazon.nova")
UNCACHED = re.compile(r"claude-(3-(sonnet|opus|haiku)|3-5-sonnet|v2|instant)")
NOVA = "amazon.nova"
# Bedrock's words for a cache point to a model without prompt caching (strands-agents/harness-sdk#1807,
# BerriAI/litellm#39210); the fake's own for one among Nova's tools, which AWS documents but whose words it does not.
NO_CACHING = "You invoked an unsupported model or your request did not allow prompt caching. See the documentation."
NO_TOOL_POINT = "This model doesn't support cachePoint in toolConfig.tools. Remove it and try again."
BLOCK_FIELDS = {"text", "image", "document", "toolUse", "toolResult", "reasoningContent", "cachePoint"}
# The betas Claude takes on Bedrock (`additionalModelRequestFields.anthropic_beta`, Bedrock's Claude request page);
# any other is a ValidationException, "invalid beta flag".
CLAUDE_BETAS = {
    "computer-use-2024-10-22",
    "computer-use-2025-01-24",
    "token-efficient-tools-2025-02-19",
    "interleaved-thinking-2025-05-14",
    "output-128k-2025-02-19",
    "dev-full-thinking-2025-05-14",
    "context-1m-2025-08-07",
    "context-management-2025-06-27",
    "effort-2025-11-24",
    "tool-search-tool-2025-10-19",
    "tool-examples-2025-10-29",
}


# --- event-stream encoding ------------------------------------------------------------------------


def encode_frame(headers: Mapping[str, str], payload: bytes) -> bytes:
    """One event-stream message: prelude (lengths + CRC), string headers, payload, message CRC."""
    encoded = b""
    for name, value in headers.items():
        raw_name, raw_value = name.encode(), value.encode()
        encoded += struct.pack(">B", len(raw_name)) + raw_name + b"\x07" + struct.pack(">H", len(raw_value)) + raw_value
    total = 12 + len(encoded) + len(payload) + 4
    prelude = struct.pack(">II", total, len(encoded))
    prelude += struct.pack(">I", zlib.crc32(prelude))
    message = prelude + encoded + payload
    return message + struct.pack(">I", zlib.crc32(message))


def event_frame(event_type: str, body: Mapping[str, Any]) -> bytes:
    """A Converse stream event as Bedrock frames it (with the `p` padding field it adds)."""
    headers = {":event-type": event_type, ":content-type": "application/json", ":message-type": "event"}
    return encode_frame(headers, orjson.dumps({**body, "p": "abcdefghijklmnopqrstuvwxyzABCD"}))


def exception_frame(exception_type: str, message: str) -> bytes:
    headers = {":exception-type": exception_type, ":content-type": "application/json", ":message-type": "exception"}
    return encode_frame(headers, orjson.dumps({"message": message}))


def stream_frames(answer: Mapping[str, Any]) -> list[bytes]:
    """The ConverseStream transcript of a Converse answer: text in word pieces, tool input in two (an empty
    input as one empty piece, as Claude streams a call without arguments)."""
    frames = [event_frame("messageStart", {"role": "assistant"})]
    for index, block in enumerate(answer["output"]["message"]["content"]):
        if "redactedContent" in block.get("reasoningContent", {}):
            delta = {"reasoningContent": {"redactedContent": block["reasoningContent"]["redactedContent"]}}
            frames.append(event_frame("contentBlockDelta", {"contentBlockIndex": index, "delta": delta}))
        elif "reasoningContent" in block:
            reasoning = block["reasoningContent"]["reasoningText"]
            signed = ({"signature": reasoning["signature"]},) if "signature" in reasoning else ()
            for delta in ({"text": reasoning["text"]}, *signed):
                frames.append(
                    event_frame("contentBlockDelta", {"contentBlockIndex": index, "delta": {"reasoningContent": delta}})
                )
        elif "text" in block:
            for piece in pieces(block["text"]):
                frames.append(event_frame("contentBlockDelta", {"contentBlockIndex": index, "delta": {"text": piece}}))
        else:
            use = block["toolUse"]
            start = {"toolUse": {"toolUseId": use["toolUseId"], "name": use["name"]}}
            frames.append(event_frame("contentBlockStart", {"contentBlockIndex": index, "start": start}))
            raw = orjson.dumps(use["input"]).decode() if use["input"] else ""  # as Claude streams no arguments
            for piece in (raw[: len(raw) // 2], raw[len(raw) // 2 :]) if raw else ("",):
                delta = {"toolUse": {"input": piece}}
                frames.append(event_frame("contentBlockDelta", {"contentBlockIndex": index, "delta": delta}))
        frames.append(event_frame("contentBlockStop", {"contentBlockIndex": index}))
    stop = {"stopReason": answer["stopReason"]}
    if answer.get("additionalModelResponseFields"):
        stop["additionalModelResponseFields"] = answer["additionalModelResponseFields"]
    frames.append(event_frame("messageStop", stop))
    frames.append(event_frame("metadata", {"usage": answer["usage"], "metrics": {"latencyMs": 120}}))
    return frames


# --- SigV4 verification ---------------------------------------------------------------------------


def _hmac(key: bytes, text: str) -> bytes:
    return hmac.new(key, text.encode(), hashlib.sha256).digest()


def verify_sigv4(
    method: str, raw_path: str, query: str, headers: Mapping[str, str], body: bytes, *, region: str = REGION
) -> str | None:
    """None when `Authorization` is a valid SigV4 signature for `bedrock` in `region`, else what is wrong."""
    auth = headers.get("authorization", "")
    if not auth.startswith("AWS4-HMAC-SHA256 "):
        return "missing SigV4 Authorization header"
    fields = dict(part.strip().split("=", 1) for part in auth.removeprefix("AWS4-HMAC-SHA256 ").split(","))
    access_key, date, scope_region, service, terminator = fields["Credential"].split("/")
    if (access_key, scope_region, service, terminator) != (ACCESS_KEY, region, SERVICE, "aws4_request"):
        return f"wrong credential scope {fields['Credential']}"
    signed = fields["SignedHeaders"].split(";")
    if "host" not in signed or "x-amz-date" not in signed:
        return "host and x-amz-date must be signed"
    canonical = "\n".join(
        [
            method,
            urllib.parse.quote(raw_path, safe="/~"),  # AWS signs the already-encoded path, encoded again
            "&".join(sorted(query.split("&"))) if query else "",
            "".join(f"{name}:{' '.join(headers[name].split())}\n" for name in signed),
            fields["SignedHeaders"],
            hashlib.sha256(body).hexdigest(),
        ]
    )
    timestamp = headers["x-amz-date"]
    to_sign = "\n".join(
        [
            "AWS4-HMAC-SHA256",
            timestamp,
            f"{date}/{region}/{SERVICE}/aws4_request",
            hashlib.sha256(canonical.encode()).hexdigest(),
        ]
    )
    key = _hmac(_hmac(_hmac(_hmac(f"AWS4{SECRET_KEY}".encode(), date), region), SERVICE), "aws4_request")
    expected = hmac.new(key, to_sign.encode(), hashlib.sha256).hexdigest()
    return None if hmac.compare_digest(expected, fields["Signature"]) else "signature does not match"


# --- the fake service -----------------------------------------------------------------------------


# Bedrock's refusal of a model id it serves only through an inference profile (newer Claude models, in most regions),
# with its curly apostrophe.
ON_DEMAND = (
    "Invocation of model ID {model} with on-demand throughput isn\u2019t supported. "
    "Retry your request with the ID or ARN of an inference profile that contains this model."
)


def _error(status: int, kind: str, message: str) -> Response:
    headers = {"x-amzn-errortype": f"{kind}:http://internal.amazon.com/coral/com.amazon.bedrock/"}
    return Response(orjson.dumps({"message": message}), status, headers=headers, media_type="application/json")


DOCUMENT_FIELDS = {"format", "name", "source", "context", "citations"}  # botocore's DocumentBlock
DOCUMENT_FORMATS = {"pdf", "csv", "doc", "docx", "xls", "xlsx", "html", "txt", "md"}
DOCUMENT_SOURCES = {"bytes", "s3Location", "text", "content"}


def _document_refused(document: dict[str, Any]) -> str | None:
    """What Converse refuses in a DocumentBlock: unknown fields, a format or source it does not know, a name of
    other characters than letters, digits, single spaces, hyphens, parentheses and square brackets."""
    for name in document:
        if name not in DOCUMENT_FIELDS:
            return f"Malformed input request: extraneous key [{name}] is not permitted"
    if document.get("format") not in DOCUMENT_FORMATS:
        return f"Malformed input request: {document.get('format')} is not a valid enum value"
    source = document.get("source")
    if not isinstance(source, dict) or len(source) != 1 or next(iter(source)) not in DOCUMENT_SOURCES:
        return "Malformed input request: the document source must be one of bytes, s3Location, text or content"
    name = document.get("name")
    allowed = isinstance(name, str) and 0 < len(name) <= 200 and "  " not in name
    if not allowed or not all(c.isascii() and (c.isalnum() or c in " -()[]") for c in name):
        return (
            "The document file name can only contain alphanumeric characters, whitespace characters, hyphens, "
            "parentheses, and square brackets. The name can't contain more than one consecutive whitespace character."
        )
    return None


NAME_PATTERN = re.compile(r"[a-zA-Z0-9_-]+")  # Converse's ToolUseBlock, ToolResultBlock and ToolSpecification


def _unnamed(value: object, field: str) -> str | None:
    """A `toolUseId` or a tool's `name` outside Converse's constraint (1 to 64 of `[a-zA-Z0-9_-]`), in its words."""
    if not isinstance(value, str) or not 1 <= len(value) <= 64:
        bound = "less than or equal to 64" if isinstance(value, str) and value else "greater than or equal to 1"
        return (
            f"1 validation error detected: Value '{value}' at '{field}' failed to satisfy constraint: "
            f"Member must have length {bound}"
        )
    if NAME_PATTERN.fullmatch(value) is None:
        return (
            f"1 validation error detected: Value '{value}' at '{field}' failed to satisfy constraint: "
            "Member must satisfy regular expression pattern: [a-zA-Z0-9_-]+"
        )
    return None


def _bad_status(result: dict[str, Any], where: str) -> str | None:
    """A ToolResultBlock's `status` outside its enum, or `error` with no content (Converse: "cannot be empty when status
    value is error")."""
    status = result.get("status")
    if status is not None and status not in ("success", "error"):
        return (
            f"1 validation error detected: Value '{status}' at '{where}.status' failed to satisfy constraint: "
            "Member must satisfy enum value set: [success, error]"
        )
    if status == "error" and not result.get("content"):
        return f"The content field at {where} cannot be empty when status value is error."
    return None


def _unstatused(body: dict[str, Any], model: str) -> str | None:
    """A tool result's `status`, which only Amazon Nova and Anthropic Claude 3 and 4 take (AWS's ToolResultBlock
    reference); Llama, Mistral, Cohere, Palmyra and the rest refuse the whole request, in Bedrock's words."""
    if "anthropic.claude" in model or "amazon.nova" in model:
        return None
    for message in body.get("messages") or ():
        for block in message.get("content") or ():
            if "status" in (block.get("toolResult") or {}):
                return "This model doesn't support the status field. Remove status and try again."
    return None


def _invalid(body: dict[str, Any]) -> str | None:
    for name in body:
        if name not in REQUEST_FIELDS:
            return f"Malformed input request: extraneous key [{name}] is not permitted"
    for name in body.get("inferenceConfig") or {}:
        if name not in INFERENCE_FIELDS:
            return f"Malformed input request: extraneous key [{name}] in inferenceConfig is not permitted"
    messages = body.get("messages") or []
    if not messages or messages[0].get("role") != "user":
        return "A conversation must start with a user message."
    for previous, message in zip(messages, messages[1:], strict=False):
        if previous["role"] == message["role"]:
            return "A conversation must alternate between user and assistant roles."
    for message in messages:
        for block in message.get("content") or ():
            if len(block) != 1 or next(iter(block)) not in BLOCK_FIELDS:
                return f"Malformed content block {sorted(block)}"
            if "text" in block and not block["text"].strip():
                return "The text field in the ContentBlock object is blank."
            if "document" in block:
                refused = _document_refused(block["document"])
                if refused is not None:
                    return refused
    for i, message in enumerate(messages):
        for j, block in enumerate(message.get("content") or ()):
            kind = next(iter(block))
            if kind not in ("toolUse", "toolResult"):
                continue
            where = f"messages.{i + 1}.member.content.{j + 1}.member.{kind}"
            refused = _unnamed(block[kind].get("toolUseId"), f"{where}.toolUseId")
            if kind == "toolUse":
                refused = refused or _unnamed(block[kind].get("name"), f"{where}.name")
            else:
                refused = refused or _bad_status(block[kind], where)
            if refused is not None:
                return refused
    for k, tool in enumerate((body.get("toolConfig") or {}).get("tools") or ()):
        if "toolSpec" in tool:
            refused = _unnamed(tool["toolSpec"].get("name"), f"toolConfig.tools.{k + 1}.member.toolSpec.name")
            if refused is not None:
                return refused
    blocks = [*(body.get("system") or ()), *((body.get("toolConfig") or {}).get("tools") or ())]
    for block in [*blocks, *(b for m in messages for b in m.get("content") or ())]:
        ttl = (block.get("cachePoint") or {}).get("ttl", "5m")
        if ttl not in CACHE_TTLS:
            return (
                f"1 validation error detected: Value '{ttl}' at 'cachePoint.ttl' failed to satisfy constraint: "
                "Member must satisfy enum value set: [5m, 1h]"
            )
    betas = (body.get("additionalModelRequestFields") or {}).get("anthropic_beta") or []
    if any(beta not in CLAUDE_BETAS for beta in betas):
        return "invalid beta flag"
    uses_tools = any("toolUse" in b or "toolResult" in b for m in messages for b in m["content"])
    if uses_tools and "toolConfig" not in body:
        return "The toolConfig field must be defined when using toolUse and toolResult content blocks."
    return None


def caches(model: str) -> bool:
    """Whether Bedrock caches prompts for `model` (`CACHING`, less `UNCACHED`)."""
    # (An ARN, an application inference profile's, is taken for Claude's: the fake has no profile to look it up in.)
    return model.startswith("arn:") or (any(part in model for part in CACHING) and UNCACHED.search(model) is None)


def _uncacheable(body: dict[str, Any], model: str) -> str | None:
    """A cache point Bedrock refuses: any, from a model it caches nothing for; one in `toolConfig.tools`, from Nova."""
    tools = (body.get("toolConfig") or {}).get("tools") or ()
    if NOVA in model and any("cachePoint" in tool for tool in tools):
        return NO_TOOL_POINT
    if caches(model):
        return None
    blocks = [*(body.get("system") or ()), *tools]
    blocks += [block for message in body.get("messages") or () for block in message.get("content") or ()]
    return NO_CACHING if any("cachePoint" in block for block in blocks) else None


def _over_limit(body: dict[str, Any], model: str) -> str | None:
    """A `maxTokens` past the model's output limit, refused in Bedrock's words."""
    cap = (body.get("inferenceConfig") or {}).get("maxTokens")
    most = next((limit for part, limit in OUTPUT_LIMITS.items() if part in model), None)
    if not isinstance(cap, int) or most is None or cap <= most:
        return None
    return (
        f"The maximum tokens you requested exceeds the model limit of {most}. Try again with a maximum tokens value "
        f"that is lower than {most}."
    )


def _unforceable(body: dict[str, Any], model: str) -> str | None:
    """Bedrock takes a forced `toolChoice` from Claude and Nova only; other models (Llama, Mistral, DeepSeek)
    refuse the field by name."""
    choice = (body.get("toolConfig") or {}).get("toolChoice") or {}
    if "anthropic.claude" in model or "amazon.nova" in model:
        return None
    for field in ("any", "tool"):
        if field in choice:
            return (
                f"This model doesn't support the toolConfig.toolChoice.{field} field. "
                f"Remove toolConfig.toolChoice.{field} and try again."
            )
    return None


def _no_streaming_tools(body: dict[str, Any], model: str) -> str | None:
    """ConverseStream refuses any `toolConfig` from a model without streaming tool use, in AWS's words."""
    if "toolConfig" in body and any(part in model for part in NO_STREAMING_TOOLS):
        return "This model doesn't support tool use in streaming mode."
    return None


def _invalid_count(body: dict[str, Any]) -> str | None:
    """A CountTokens body: `{"input": {"converse": {...}}}` with the members of botocore's `ConverseTokensRequest`,
    checked as Converse checks them (so a tool-use history without its `toolConfig` is refused)."""
    converse = (body.get("input") or {}).get("converse")
    if set(body) != {"input"} or not isinstance(converse, dict):
        return "Malformed input request: input must be one of converse, invokeModel"
    for name in converse:
        if name not in COUNTED_FIELDS:
            return f"Malformed input request: extraneous key [{name}] is not permitted"
    return _invalid(converse)


def _results(message: dict[str, Any]) -> list[dict[str, Any]]:
    return [block["toolResult"] for block in message.get("content") or [] if "toolResult" in block]


def _signed(block: dict[str, Any]) -> bool:
    """Whether a content block is Claude's reasoning as it signed it: redacted, or its text with a signature."""
    reasoning = block.get("reasoningContent") or {}
    return "redactedContent" in reasoning or bool((reasoning.get("reasoningText") or {}).get("signature"))


def _unsigned_turn(body: dict[str, Any], model: str) -> str | None:
    """Claude on Bedrock refuses reasoning without its signature in any turn, thinking on or off (Anthropic checks
    every thinking block's signature, and Bedrock relays its 400: an empty one is what a gateway writes for another
    provider's reasoning). With reasoning on, it refuses an assistant tool-use turn that lost its signed reasoning:
    every such turn of a `thinker` (the fake's own reasoning, unchanged), and the final assistant turn (the one a
    tool-use loop continues) of a request asking for `thinking`, Anthropic's documented rule, which Bedrock relays
    (there any signed reasoning will do: a client may hand back what Bedrock itself signed). A `redacts` thinker's
    turn opens with its redacted block, then the signed one: Claude's reasoning goes back unmodified, in the order it
    came."""
    messages = body.get("messages") or ()
    if "anthropic.claude" in model:
        for i, message in enumerate(messages):
            for j, block in enumerate(message.get("content") or ()):
                if "reasoningContent" in block and not _signed(block):
                    return (
                        f"The model returned the following errors: messages.{i}.content.{j}: Invalid `signature` in "
                        "`thinking` block"
                    )
    final_only = "thinker" not in model
    own = [{"reasoningContent": {"redactedContent": REDACTED}}] if "redacts" in model else []
    own.append({"reasoningContent": {"reasoningText": {"text": THINKING, "signature": SIGNATURE}}})
    if final_only and "thinking" not in (body.get("additionalModelRequestFields") or {}):
        return None
    assistants = [message for message in messages if message.get("role") == "assistant"]
    for message in assistants[-1:] if final_only else assistants:
        content = message.get("content") or []
        if not any("toolUse" in block for block in content):
            continue
        if not (content[: len(own)] == own or (final_only and _signed(content[0]))):
            return (
                "The model returned the following errors: messages.1.content.0.type: Expected `thinking` or "
                "`redacted_thinking`, but found `tool_use`. When `thinking` is enabled, a final `assistant` "
                "message must start with a thinking block"
            )
    return None


def _text(body: dict[str, Any]) -> str:
    """The fixed text, or JSON following a schema the system prompt gives (a model follows its instructions)."""
    for block in body.get("system") or ():
        text = block.get("text")
        if isinstance(text, str) and "JSON Schema: " in text:
            return text_for(orjson.loads(text.rsplit("JSON Schema: ", 1)[1]), TEXT)
    return TEXT


def cache_use(body: dict[str, Any], cached: set[bytes]) -> tuple[int, int, str] | None:
    """The tokens a request reads from the cache (`cached`: the prefixes written so far) and writes to it, and how
    long its last point keeps them (its `ttl`; Bedrock's default, five minutes, without); None without cache points.
    The prompt (tools, system, then messages) up to its last cache point is written, but for the longest prefix
    read (`prompt_cache_use`)."""
    blocks: list[Any] = list((body.get("toolConfig") or {}).get("tools") or [])
    blocks += body.get("system") or []
    for message in body.get("messages") or []:
        blocks += message.get("content") or []
    points = [i for i, block in enumerate(blocks) if isinstance(block, dict) and "cachePoint" in block]
    if not points:
        return None

    def known(end: int) -> bytes:
        return orjson.dumps([block for block in blocks[:end] if "cachePoint" not in block])

    read, written = prompt_cache_use(blocks, points, known, cached)
    ttl = blocks[points[-1]]["cachePoint"].get("ttl") or "5m"
    return read, written, ttl


def usage_for(body: dict[str, Any], cached: set[bytes], model: str) -> dict[str, Any]:
    """`USAGE`, or for a request with cache points its cached prefix written (the first time: `cacheDetails` says
    for how long, as Bedrock reports writes by TTL) or read (`cache_use`); for a model Bedrock caches nothing for,
    no cache reads or writes at all."""
    if not caches(model):
        uncached = {name: value for name, value in USAGE.items() if name != "cacheReadInputTokens"}
        return {**uncached, "totalTokens": USAGE["inputTokens"] + USAGE["outputTokens"]}
    use = cache_use(body, cached)
    if use is None:
        return USAGE
    read, written, ttl = use
    tokens = read + written
    usage = {**USAGE, "cacheReadInputTokens": read, "cacheWriteInputTokens": written}
    usage["totalTokens"] = usage["inputTokens"] + usage["outputTokens"] + tokens
    if written:
        usage["cacheDetails"] = [{"ttl": ttl, "inputTokens": written}]
    return usage


def answer_for(body: dict[str, Any], thinks: bool = False, redacts: bool = False) -> dict[str, Any]:
    """A Converse answer: a `toolUse` when a tool is forced, the scripted turn of `tests.fakes.script`, else
    the fixed text; opened by signed reasoning when thinking is asked for (or `thinks`), and before it by redacted
    reasoning when `redacts`."""
    config = body.get("toolConfig") or {}
    choice = config.get("toolChoice") or {}
    last = body["messages"][-1]["content"]
    answered = any("toolResult" in block for block in last)
    users = [texts(m["content"]) for m in body["messages"] if m.get("role") == "user" and not _results(m)]
    results = _results(body["messages"][-1])
    names = [str(t["toolSpec"]["name"]) for t in config.get("tools") or [] if "toolSpec" in t]
    script = scripted_turn(users, names, texts(results[-1].get("content")) if results else None)
    content: list[dict[str, Any]]
    if isinstance(script, ScriptedCall):
        content = [{"toolUse": {"toolUseId": tool_use_id(), "name": script.name, "input": script.arguments}}]
        stop = "tool_use"
    elif isinstance(script, str):
        content, stop = [{"text": script}], "end_turn"
    elif config.get("tools") and not answered and ("any" in choice or "tool" in choice):
        name = choice["tool"]["name"] if "tool" in choice else config["tools"][0]["toolSpec"]["name"]
        schemas = {t["toolSpec"]["name"]: t["toolSpec"].get("inputSchema", {}).get("json") for t in config["tools"]}
        tool_input = input_for(schemas.get(name), CALL_INPUT)
        content = [{"toolUse": {"toolUseId": tool_use_id(), "name": name, "input": tool_input}}]
        stop = "tool_use"
    else:
        content, stop = [{"text": _text(body)}], "end_turn"
    fields: dict[str, Any] = {}
    for sequence in (body.get("inferenceConfig") or {}).get("stopSequences") or ():
        text = content[-1].get("text")
        if isinstance(text, str) and sequence in text:  # the text ends before it, as Converse answers
            content[-1] = {"text": text[: text.index(sequence)]}
            stop = "stop_sequence"
            if "/stop_sequence" in (body.get("additionalModelResponseFieldPaths") or ()):
                fields["stop_sequence"] = sequence  # (Claude's models on Bedrock say which, when asked)
            break
    if thinks or "thinking" in (body.get("additionalModelRequestFields") or {}):
        content.insert(0, {"reasoningContent": {"reasoningText": {"text": THINKING, "signature": SIGNATURE}}})
        if redacts:
            content.insert(0, {"reasoningContent": {"redactedContent": REDACTED}})
    answer = {
        "output": {"message": {"role": "assistant", "content": content}},
        "stopReason": stop,
        "usage": USAGE,
        "metrics": {"latencyMs": 120},
    }
    return {**answer, "additionalModelResponseFields": fields} if fields else answer


def nova_reasoning(answer: dict[str, Any], body: dict[str, Any], model: str) -> dict[str, Any]:
    """`answer` as Nova 2 gives it when asked to reason: opened by its redacted reasoning (`NOVA_REDACTED`, unsigned),
    whose tokens its usage counts as output."""
    config = (body.get("additionalModelRequestFields") or {}).get("reasoningConfig") or {}
    if "amazon.nova-2" not in model or config.get("type") != "enabled":
        return answer
    opening = {"reasoningContent": {"reasoningText": {"text": NOVA_REDACTED}}}
    message = {**answer["output"]["message"], "content": [opening, *answer["output"]["message"]["content"]]}
    usage = dict(answer["usage"])
    usage["outputTokens"] += NOVA_REASONING_TOKENS
    usage["totalTokens"] += NOVA_REASONING_TOKENS
    return {**answer, "output": {"message": message}, "usage": usage}


def malformed_answer(answer: dict[str, Any], model: str) -> dict[str, Any]:
    """`answer` as the model id's malformed stop (`MALFORMED`) ends it, if it names one."""
    stop = next((reason for part, reason in MALFORMED.items() if part in model), None)
    if stop is None:
        return answer
    return {
        **answer,
        "output": {"message": {"role": "assistant", "content": [{"text": MALFORMED_TEXT}]}},
        "stopReason": stop,
    }


def create_app() -> Starlette:
    requests: list[dict[str, Any]] = []
    cached: set[bytes] = set()
    throttled: set[str] = set()  # the `throttle-once` models already throttled

    async def guard(
        request: Request, validate: Callable[[dict[str, Any]], str | None] = _invalid
    ) -> tuple[str, dict[str, Any] | None, Response | None]:
        raw = await request.body()
        raw_path = request.scope["raw_path"].decode()
        headers = dict(request.headers)
        body = orjson.loads(raw) if raw else {}
        model = urllib.parse.unquote(raw_path.split("/")[2])
        requests.append({"path": raw_path, "model": model, "headers": headers, "json": body})
        problem = verify_sigv4("POST", raw_path, request.url.query, headers, raw)
        if problem is not None:
            return model, None, _error(403, "InvalidSignatureException", problem)
        if "fail-throttle" in model or ("throttle-once" in model and model not in throttled):
            throttled.add(model)
            return (
                model,
                None,
                _error(429, "ThrottlingException", "Too many requests, please wait before trying again."),
            )
        if "fail-quota" in model:
            quota = "Too many tokens per day, please wait before trying again."
            return model, None, _error(400, "ServiceQuotaExceededException", quota)
        if "unknown-id" in model:
            return model, None, _error(400, "ValidationException", "The provided model identifier is invalid.")
        if "on-demand" in model:
            return model, None, _error(400, "ValidationException", ON_DEMAND.format(model=model))
        if "fail-validation" in model:
            malformed = "Malformed input request: #: extraneous key [foo] is not permitted, please reformat your input"
            return model, None, _error(400, "ValidationException", malformed + " and try again.")
        if "echoes-signature" in model:
            echoed = f"Request could not be authorized. Authorization: {headers['authorization']}"
            if model.endswith("403"):
                return model, None, _error(403, "AccessDeniedException", echoed)
            return model, None, _error(400, "ValidationException", echoed)
        if "fail-500" in model:
            return model, None, _error(500, "InternalServerException", "The server encountered an internal error.")
        if "denied" in model:
            return model, None, _error(403, "AccessDeniedException", DENIED)
        invalid = validate(body) or _unforceable(body, model) or _over_limit(body, model) or _unsigned_turn(body, model)
        invalid = invalid or _unstatused(body, model) or _uncacheable(body, model)
        if invalid is not None:
            return model, None, _error(400, "ValidationException", invalid)
        return model, body, None

    async def converse(request: Request) -> Response:
        model, body, failure = await guard(request)
        if failure is not None or body is None:
            return failure or _error(400, "ValidationException", "no body")
        answer = {**answer_for(body, "thinker" in model, "redacts" in model), "usage": usage_for(body, cached, model)}
        answer = nova_reasoning(answer, body, model)
        return Response(orjson.dumps(malformed_answer(answer, model)), media_type="application/json")

    async def converse_stream(request: Request) -> Response:
        model, body, failure = await guard(request)
        if failure is not None or body is None:
            return failure or _error(400, "ValidationException", "no body")
        refused = _no_streaming_tools(body, model)
        if refused is not None:
            return _error(400, "ValidationException", refused)

        async def frames() -> AsyncIterator[bytes]:
            if "stream-exception" in model:
                yield exception_frame("throttlingException", "Too many tokens, please wait before trying again.")
                return
            answer = {
                **answer_for(body, "thinker" in model, "redacts" in model),
                "usage": usage_for(body, cached, model),
            }
            answer = malformed_answer(nova_reasoning(answer, body, model), model)
            for frame in stream_frames(answer):
                if answer["stopReason"] in MALFORMED.values() and b"messageStop" in frame:
                    await asyncio.sleep(MALFORMED_PAUSE_S)
                yield frame[:7]  # frames split across network writes, as a real stream may be
                yield frame[7:]

        return StreamingResponse(frames(), media_type="application/vnd.amazon.eventstream")

    async def count_tokens(request: Request) -> Response:
        model, body, failure = await guard(request, _invalid_count)
        if failure is not None or body is None:
            return failure or _error(400, "ValidationException", "no body")
        if "anthropic.claude" not in model:
            return _error(400, "ValidationException", "The provided model doesn't support counting tokens.")
        tokens = len(orjson.dumps(body["input"]["converse"])) // 4
        return Response(orjson.dumps({"inputTokens": tokens}), media_type="application/json")

    app = Starlette(
        routes=[
            Route("/model/{model_id:str}/count-tokens", count_tokens, methods=["POST"]),
            Route("/model/{model_id:str}/converse", converse, methods=["POST"]),
            Route("/model/{model_id:str}/converse-stream", converse_stream, methods=["POST"]),
        ]
    )
    app.state.requests = requests
    return app
