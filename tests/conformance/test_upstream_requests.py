"""Every corpus request through every adapter, each upstream body checked against the provider's own
definition (see `references`), against the cross-field rules the providers document, and for loss: a
field the client sent reaches the upstream body or `x-gateway-dropped-params`, never neither."""

from __future__ import annotations

import re
import urllib.parse
from typing import Any

import jsonschema
import orjson
import pytest

from adapters.providers.registry import REGISTRY
from handler.api.messages_api import MessagesRequest, to_chat_request
from handler.errors import InvalidRequestError
from handler.ports import BuiltRequest, Target
from handler.schemas import ChatRequest, EmbeddingsRequest, Message
from tests.conformance import references
from tests.conformance.corpus import CASES, MODELS, Case
from tests.conformance.openai_spec import (
    AZURE_NEWER_MEMBERS,
    AZURE_REQUEST,
    AZURE_SPEC_VERSION,
    DEEPSEEK_REQUEST,
    OPENAI_REQUEST,
)
from tests.fakes import bedrock as fake_bedrock

OPTIONS: dict[str, dict[str, Any]] = {"azure": {"base_url": "https://contoso.openai.azure.com"}}
OPENAI_LIKE = ("openai", "azure", "deepseek", "mistral")

# Where each client field lands in a translating provider's body (any of these paths present = carried).
LANDS: dict[str, dict[str, tuple[str, ...]]] = {
    "anthropic": {
        "max_tokens": ("max_tokens",),
        "max_completion_tokens": ("max_tokens",),
        "temperature": ("temperature",),
        "top_p": ("top_p",),
        "stop": ("stop_sequences",),
        "tools": ("tools",),
        "tool_choice": ("tool_choice",),
        "parallel_tool_calls": ("tool_choice.disable_parallel_tool_use",),
        "response_format": ("tools", "system"),
        "user": ("metadata.user_id",),
        "reasoning_effort": ("thinking",),
        "thinking": ("thinking",),
    },
    "bedrock": {
        "max_tokens": ("inferenceConfig.maxTokens",),
        "max_completion_tokens": ("inferenceConfig.maxTokens",),
        "temperature": ("inferenceConfig.temperature",),
        "top_p": ("inferenceConfig.topP",),
        "stop": ("inferenceConfig.stopSequences",),
        "tools": ("toolConfig.tools",),
        "tool_choice": ("toolConfig.toolChoice",),
        "response_format": ("toolConfig", "system"),
        "reasoning_effort": ("additionalModelRequestFields.thinking",),
        "thinking": ("additionalModelRequestFields.thinking",),
    },
    "gemini": {
        "max_tokens": ("generationConfig.maxOutputTokens",),
        "max_completion_tokens": ("generationConfig.maxOutputTokens",),
        "temperature": ("generationConfig.temperature",),
        "top_p": ("generationConfig.topP",),
        "n": ("generationConfig.candidateCount",),
        "presence_penalty": ("generationConfig.presencePenalty",),
        "frequency_penalty": ("generationConfig.frequencyPenalty",),
        "seed": ("generationConfig.seed",),
        "stop": ("generationConfig.stopSequences",),
        "tools": ("tools",),
        "tool_choice": ("toolConfig",),
        "response_format": ("generationConfig.responseMimeType",),
        "reasoning_effort": ("generationConfig.thinkingConfig",),
        "thinking": ("generationConfig.thinkingConfig",),
    },
}
STRUCTURAL = {"model", "messages", "stream", "stream_options"}
OUTPUT_CAPS = {"max_tokens": ("max_completion_tokens",)}  # the same cap, under the field a model reads
# A Messages client's `thinking`, under the OpenAI-like API's own switch (Mistral Small 4's `reasoning_effort`).
THINKING_AS = {"thinking": ("reasoning_effort",)}

# Model-dependent rules, as the providers document them.
CLAUDE_NO_TEMPERATURE_WITH_TOP_P = re.compile(r"claude-(sonnet-4-5|haiku-4-5|opus-4)")
GEMINI_NO_TOOLS_WITH_JSON = re.compile(r"gemini-(?!3)")  # (Gemini before 3, with function calling on)
GEMINI_SIGNED_CALLS = re.compile(r"gemini-3")
GEMINI_NO_PENALTIES = re.compile(r"gemini-(2\.5|3)")
OPENAI_REASONING = re.compile(r"^(o\d|gpt-5)")
ANTHROPIC_IMAGE_TYPES = {"image/jpeg", "image/png", "image/gif", "image/webp"}
GEMINI_IMAGE_TYPES = {"image/png", "image/jpeg", "image/webp", "image/heic", "image/heif"}


def at(body: Any, path: str) -> Any:
    for key in path.split("."):
        if not isinstance(body, dict) or key not in body:
            return None
        body = body[key]
    return body


def default_valued(name: str, value: Any) -> bool:
    """A value that asks for what the provider does anyway: carrying it needs nothing in the body."""
    return (
        (name == "n" and value == 1)
        or (name == "parallel_tool_calls" and value is True)
        or (name == "response_format" and value == {"type": "text"})
        or (name == "tool_choice" and value in ("auto", "none"))
    )


def internal_request(case: Case) -> tuple[ChatRequest, list[str]]:
    if case.messages_api:
        return to_chat_request(MessagesRequest.model_validate(case.body))
    return ChatRequest.model_validate(case.body), []


def build(provider: str, case: Case) -> tuple[ChatRequest, Target, BuiltRequest, list[str]]:
    req, dropped = internal_request(case)
    adapter = REGISTRY[provider](provider, "test-secret", OPTIONS.get(provider, {}))
    model = case.models.get(provider, MODELS[provider])
    target = Target(provider, provider, model, "us-east-1", adapter.base_url("us-east-1", None))
    built = adapter.chat_request(req, target, stream=case.stream)
    return req, target, built, dropped + built.dropped


def definition_problems(provider: str, body: dict[str, Any], url: str) -> list[str]:
    if provider in ("openai", "deepseek"):
        validator = jsonschema.Draft202012Validator(OPENAI_REQUEST if provider == "openai" else DEEPSEEK_REQUEST)
        return [f"{'.'.join(map(str, e.absolute_path))}: {e.message}" for e in validator.iter_errors(body)]
    if provider == "azure":
        validator = jsonschema.Draft202012Validator(AZURE_REQUEST)
        found = [f"{'.'.join(map(str, e.absolute_path))}: {e.message}" for e in validator.iter_errors(body)]
        version = urllib.parse.parse_qs(urllib.parse.urlsplit(url).query)["api-version"][0]
        if version <= AZURE_SPEC_VERSION:
            found += [f"{name}: not in api-version {version}" for name in sorted(AZURE_NEWER_MEMBERS & set(body))]
        return found
    if provider == "mistral":
        return references.mistral_request(body)
    if provider == "anthropic":
        return references.anthropic_request(body)
    if provider == "gemini":
        return references.gemini_request(body)
    return references.bedrock_request(body, "ConverseStream" if url.endswith("converse-stream") else "Converse")


def rule_problems(provider: str, model: str, body: dict[str, Any]) -> list[str]:
    """The cross-field rules the providers' docs state, which no type can."""
    found: list[str] = []
    if provider in ("anthropic", "bedrock") and CLAUDE_NO_TEMPERATURE_WITH_TOP_P.search(model):
        sampling = body if provider == "anthropic" else body.get("inferenceConfig") or {}
        if "temperature" in sampling and ("top_p" in sampling or "topP" in sampling):
            found.append(f"{model} refuses temperature and top_p together")
    if provider == "bedrock" and body["messages"][0]["role"] != "user":
        found.append("a Converse conversation must start with a user message")
    if provider == "bedrock" and "toolConfig" not in body:
        blocks = [block for message in body["messages"] for block in message["content"]]
        if any("toolUse" in block or "toolResult" in block for block in blocks):
            found.append("Converse refuses toolUse and toolResult blocks without a toolConfig")
    if provider == "anthropic" and not body.get("tools"):
        blocks = [block for message in body["messages"] for block in message["content"] if isinstance(block, dict)]
        if any(block.get("type") in ("tool_use", "tool_result") for block in blocks):
            found.append("Anthropic refuses tool_use and tool_result blocks without tools")
    if provider == "gemini":
        config = body.get("generationConfig") or {}
        calling = (body.get("toolConfig") or {}).get("functionCallingConfig", {}).get("mode") != "NONE"
        if GEMINI_NO_TOOLS_WITH_JSON.search(model) and body.get("tools") and calling and config.get("responseMimeType"):
            found.append(f"{model} refuses function calling with a JSON response mime type")
        if GEMINI_NO_PENALTIES.search(model) and (config.get("presencePenalty") or config.get("frequencyPenalty")):
            found.append(f"{model} refuses a non-zero penalty")
        for content in [*body["contents"], body.get("systemInstruction") or {"parts": []}]:
            if any(part.get("text") == "" for part in content["parts"]):
                found.append("Gemini refuses an empty text part")
            calls = [part for part in content["parts"] if "functionCall" in part]
            if GEMINI_SIGNED_CALLS.search(model) and calls and "thoughtSignature" not in calls[0]:
                found.append(f"{model} refuses a function call without its thought signature")
    if provider == "mistral":
        for message in body["messages"]:
            if message["role"] == "developer":
                found.append("Mistral has no developer role")
            if message["role"] == "user" and "name" in message:
                found.append("Mistral refuses a name on a user message")
        for tool in body.get("tools") or ():
            if "parameters" not in tool["function"]:
                found.append("Mistral needs a tool's parameters")
    if provider == "openai" and OPENAI_REASONING.search(model) and "max_tokens" in body:
        found.append(f"{model} refuses max_tokens (it takes max_completion_tokens)")
    if provider == "openai" and OPENAI_REASONING.search(model) and body.get("reasoning_effort") != "none":
        found += [f"{model} refuses {name}" for name in ("temperature", "top_p") if name in body]
    if provider in OPENAI_LIKE:
        for message in body["messages"]:
            for part in message["content"] if isinstance(message["content"], list) else ():
                file = part.get("file") if part.get("type") == "file" else None
                if isinstance(file, dict) and "file_data" in file and "filename" not in file:
                    found.append("OpenAI refuses file_data without a filename")
    if provider == "anthropic":
        sources = [b.get("source") for m in body["messages"] for b in m["content"] if isinstance(b, dict)]
        for source in sources:
            if isinstance(source, dict) and source.get("type") == "base64" and "media_type" in source:
                if source["media_type"] not in ANTHROPIC_IMAGE_TYPES | {"application/pdf"}:
                    found.append(f"Anthropic refuses media type {source['media_type']!r}")
    if provider == "gemini":
        for content in body["contents"]:
            for part in content["parts"]:
                mime = (part.get("inlineData") or {}).get("mimeType", "")
                if mime.startswith("image/") and mime not in GEMINI_IMAGE_TYPES:
                    found.append(f"Gemini refuses an inline image of type {mime!r}")
    if provider == "bedrock":
        for message in body["messages"]:
            for block in message["content"]:
                name = (block.get("document") or {}).get("name")
                if name is not None and fake_bedrock._document_refused(block["document"]) is not None:
                    found.append(f"Converse refuses the document name {name!r}")
    return found


def part_field_problems(req: ChatRequest, body: dict[str, Any], dropped: list[str]) -> list[str]:
    """An image's `detail` and a Messages document's title, context and citations: in the body, or named."""
    found = []
    text = orjson.dumps(body).decode()
    parts = [p for m in req.messages if isinstance(m.content, list) for p in m.content]
    for part in parts:
        if part.type == "image_url" and part.image_url.get("detail") in ("low", "high"):
            if '"detail"' not in text and "messages.image_url.detail" not in dropped:
                found.append("messages.image_url.detail: lost without a word")
        for name, value in ((part.model_extra or {}).get("document") or {}).items():
            if name == "citations":
                carried = '"citations"' in text
            else:
                carried = str(value) in text or (name == "title" and str(value).split(".")[0] in text)
            if not carried and f"messages.document.{name}" not in dropped:
                found.append(f"messages.document.{name}: lost without a word")
    return found


def loss_problems(provider: str, req: ChatRequest, body: dict[str, Any], dropped: list[str]) -> list[str]:
    """Client fields that reach neither the body nor the dropped list."""
    found = []
    sent = req.model_dump(exclude_unset=True, by_alias=True)
    for name, value in sent.items():
        if name in STRUCTURAL or value is None or name in dropped or default_valued(name, value):
            continue
        if name == "tools" and sent.get("tool_choice") == "none":
            continue  # no tool may be called: leaving them out honours the request exactly
        if provider in OPENAI_LIKE:
            aliases = (*renamed(provider, name), *OUTPUT_CAPS.get(name, ()), *THINKING_AS.get(name, ()))
            carried = name in body or any(at(body, key) is not None for key in aliases)
        else:
            carried = any(at(body, path) is not None for path in LANDS[provider].get(name, ()))
        if not carried:
            found.append(f"{name}: lost without a word")
    names = any(m.name for m in req.messages if m.role not in ("tool", "function"))
    if names and "messages.name" not in dropped:
        upstream = body.get("messages") if provider in OPENAI_LIKE else None
        if not upstream or not any("name" in m for m in upstream):
            found.append("messages.name: lost without a word")
    if any(t.function.strict for t in req.tools or ()) and "tools.strict" not in dropped:
        if "strict" not in orjson.dumps(body).decode():
            found.append("tools.strict: lost without a word")
    return found


def renamed(provider: str, name: str) -> tuple[str, ...]:
    from adapters.providers.openai.profiles import PROFILES

    profile = PROFILES.get(provider)
    rule = profile.rules.get(name) if profile else None
    return (rule.rename,) if rule and rule.rename else ()


def problems(provider: str, case: Case) -> list[str]:
    """Everything wrong with what `provider` would be sent for `case` (a clear 400 is not wrong)."""
    try:
        req, target, built, dropped = build(provider, case)
    except InvalidRequestError:
        return []
    body = orjson.loads(built.request.body)
    found = definition_problems(provider, body, built.request.url)
    found += rule_problems(provider, target.model, body)
    found += loss_problems(provider, req, body, dropped)
    found += part_field_problems(req, body, dropped)
    return found


@pytest.mark.parametrize("case", CASES, ids=[case.name for case in CASES])
@pytest.mark.parametrize("provider", sorted(REGISTRY))
def test_upstream_body_conforms(provider: str, case: Case) -> None:
    assert problems(provider, case) == []


def test_every_registered_provider_has_a_reference() -> None:
    assert set(REGISTRY) == set(MODELS)


def test_the_corpus_covers_every_field_the_gateway_accepts() -> None:
    chat_fields = {key for case in CASES if not case.messages_api for key in case.body}
    messages_fields = {key for case in CASES if case.messages_api for key in case.body}
    assert set(ChatRequest.model_fields) <= chat_fields
    assert set(MessagesRequest.model_fields) <= messages_fields
    message_fields = {key for case in CASES if not case.messages_api for m in case.body["messages"] for key in m}
    # (Set by the gateway's own translations: of Messages and Responses turns, of a Messages `tool_result`'s error.)
    internal = {"block_order", "is_error"}
    assert set(Message.model_fields) - internal <= message_fields


EMBEDDINGS: list[dict[str, Any]] = [
    {"input": "one text"},
    {"input": ["a", "b"], "dimensions": 256, "encoding_format": "base64", "user": "u1"},
    {"input": ["a"], "encoding_format": "float", "output_dtype": "int8", "metadata": {"job": "j1"}},
]


@pytest.mark.parametrize("fields", EMBEDDINGS, ids=["text", "openai-options", "mistral-options"])
def test_mistral_embeddings_conform(fields: dict[str, Any]) -> None:
    """OpenAI's embeddings request went to Mistral as written: `dimensions` and `user` are no members of Mistral's
    `EmbeddingRequest` (it refused them, 422). Each field the client sent is in the body or named as dropped."""
    adapter = REGISTRY["mistral"]("mistral", "test-secret", {})
    target = Target("mistral", "mistral", "mistral-embed", "us-east-1", adapter.base_url("us-east-1", None))
    built = adapter.embeddings_request(EmbeddingsRequest.model_validate({"model": "e", **fields}), target)
    body = orjson.loads(built.request.body)
    assert references.mistral_embedding_request(body) == []
    landed = {"dimensions": "output_dimension"}
    assert [name for name in fields if landed.get(name, name) not in body and name not in built.dropped] == []
