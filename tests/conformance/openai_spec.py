"""OpenAI's and Azure OpenAI's published Chat Completions definitions, written down as JSON Schema.

Read from OpenAI's OpenAPI document (openai/openai-openapi, `openapi.yaml`, spec version 2.3.0:
`CreateChatCompletionRequest`, `CreateChatCompletionResponse`, `CreateChatCompletionStreamResponse`)
and Azure's data-plane inference spec `2024-10-21` (Azure/azure-rest-api-specs,
`specification/cognitiveservices/data-plane/AzureOpenAI/inference/stable/2024-10-21/inference.json`:
`createChatCompletionRequest`). Only what a provider checks is written down: required members, types,
enums, bounds, and the members a message, content part or tool may carry. Top-level members stay open,
since the gateway deliberately passes a client's unknown top-level fields to OpenAI-compatible APIs.
"""

from __future__ import annotations

from typing import Any

OPENAI_SPEC_VERSION = "openai-openapi 2.3.0"
AZURE_SPEC_VERSION = "2024-10-21"

_STRING = {"type": "string"}
_NULLABLE_STRING = {"type": ["string", "null"]}


def _obj(properties: dict[str, Any], required: list[str] | None = None) -> dict[str, Any]:
    return {"type": "object", "properties": properties, "required": required or [], "additionalProperties": False}


_TEXT_PART = _obj({"type": {"const": "text"}, "text": _STRING}, ["type", "text"])
_IMAGE_PART = _obj(
    {
        "type": {"const": "image_url"},
        "image_url": _obj({"url": _STRING, "detail": {"enum": ["auto", "low", "high"]}}, ["url"]),
    },
    ["type", "image_url"],
)
_AUDIO_PART = _obj(
    {
        "type": {"const": "input_audio"},
        "input_audio": _obj({"data": _STRING, "format": {"enum": ["wav", "mp3"]}}, ["data", "format"]),
    },
    ["type", "input_audio"],
)
_FILE_PART = _obj(
    {"type": {"const": "file"}, "file": _obj({"file_data": _STRING, "file_id": _STRING, "filename": _STRING})},
    ["type", "file"],
)
_REFUSAL_PART = _obj({"type": {"const": "refusal"}, "refusal": _STRING}, ["type", "refusal"])
_TOOL_CALL = _obj(
    {
        "id": _STRING,
        "type": {"const": "function"},
        "function": _obj({"name": _STRING, "arguments": _STRING}, ["name", "arguments"]),
    },
    ["id", "type", "function"],
)
_FUNCTION = _obj(
    {
        "name": {"type": "string", "pattern": "^[a-zA-Z0-9_-]{1,64}$"},
        "description": _STRING,
        "parameters": {"type": "object"},
        "strict": {"type": ["boolean", "null"]},
    },
    ["name"],
)
_TOOL = _obj({"type": {"const": "function"}, "function": _FUNCTION}, ["type", "function"])
_TOOL_CHOICE = {
    "oneOf": [
        {"enum": ["none", "auto", "required"]},
        _obj(
            {"type": {"const": "function"}, "function": _obj({"name": _STRING}, ["name"])},
            ["type", "function"],
        ),
    ]
}
_RESPONSE_FORMAT = {
    "oneOf": [
        _obj({"type": {"const": "text"}}, ["type"]),
        _obj({"type": {"const": "json_object"}}, ["type"]),
        _obj(
            {
                "type": {"const": "json_schema"},
                "json_schema": _obj(
                    {
                        "name": {"type": "string", "pattern": "^[a-zA-Z0-9_-]{1,64}$"},
                        "description": _STRING,
                        "schema": {"type": "object"},
                        "strict": {"type": ["boolean", "null"]},
                    },
                    ["name"],
                ),
            },
            ["type", "json_schema"],
        ),
    ]
}


def _messages(roles: list[str], user_parts: list[dict[str, Any]], reasoning: bool) -> dict[str, Any]:
    text_or = lambda parts: {"oneOf": [_STRING, {"type": "array", "items": {"oneOf": parts}, "minItems": 1}]}  # noqa: E731
    variants = {
        "system": _obj(
            {"role": {"const": "system"}, "content": text_or([_TEXT_PART]), "name": _STRING}, ["role", "content"]
        ),
        "developer": _obj(
            {"role": {"const": "developer"}, "content": text_or([_TEXT_PART]), "name": _STRING}, ["role", "content"]
        ),
        "user": _obj({"role": {"const": "user"}, "content": text_or(user_parts), "name": _STRING}, ["role", "content"]),
        "assistant": _obj(
            {
                "role": {"const": "assistant"},
                "content": {"oneOf": [{"type": "null"}, text_or([_TEXT_PART, _REFUSAL_PART])]},
                "refusal": _NULLABLE_STRING,
                "name": _STRING,
                "tool_calls": {"type": "array", "items": _TOOL_CALL},
                "function_call": {"type": ["object", "null"]},
                "audio": {"type": ["object", "null"]},
                **({"reasoning_content": _NULLABLE_STRING} if reasoning else {}),
            },
            ["role"],
        ),
        "tool": _obj(
            {"role": {"const": "tool"}, "content": text_or([_TEXT_PART]), "tool_call_id": _STRING},
            ["role", "content", "tool_call_id"],
        ),
        "function": _obj(
            {"role": {"const": "function"}, "content": _NULLABLE_STRING, "name": _STRING}, ["role", "content", "name"]
        ),
    }
    return {"type": "array", "minItems": 1, "items": {"oneOf": [variants[role] for role in roles]}}


def _request(
    roles: list[str],
    user_parts: list[dict[str, Any]],
    *,
    model_required: bool = True,
    max_stops: int = 4,
    reasoning: bool = False,
) -> dict[str, Any]:
    return {
        "type": "object",
        "required": ["model", "messages"] if model_required else ["messages"],
        "properties": {
            "model": _STRING,
            "messages": _messages(roles, user_parts, reasoning),
            "temperature": {"type": ["number", "null"], "minimum": 0, "maximum": 2},
            "top_p": {"type": ["number", "null"], "minimum": 0, "maximum": 1},
            "n": {"type": ["integer", "null"], "minimum": 1, "maximum": 128},
            "stream": {"type": ["boolean", "null"]},
            "stream_options": {"oneOf": [{"type": "null"}, _obj({"include_usage": {"type": "boolean"}})]},
            "stop": {"oneOf": [{"type": "null"}, _STRING, {"type": "array", "items": _STRING, "maxItems": max_stops}]},
            "max_tokens": {"type": ["integer", "null"]},
            "max_completion_tokens": {"type": ["integer", "null"]},
            "presence_penalty": {"type": ["number", "null"], "minimum": -2, "maximum": 2},
            "frequency_penalty": {"type": ["number", "null"], "minimum": -2, "maximum": 2},
            "logit_bias": {"type": ["object", "null"]},
            "logprobs": {"type": ["boolean", "null"]},
            "top_logprobs": {"type": ["integer", "null"], "minimum": 0, "maximum": 20},
            "seed": {"type": ["integer", "null"]},
            "user": _STRING,
            "tools": {"type": "array", "items": _TOOL},
            "tool_choice": _TOOL_CHOICE,
            "parallel_tool_calls": {"type": "boolean"},
            "response_format": _RESPONSE_FORMAT,
            "reasoning_effort": {"enum": ["minimal", "low", "medium", "high", None]},
            "metadata": {"type": ["object", "null"], "additionalProperties": _STRING},
            "store": {"type": ["boolean", "null"]},
            "service_tier": {"enum": ["auto", "default", "flex", "scale", "priority", None]},
            "modalities": {"type": ["array", "null"], "items": {"enum": ["text", "audio"]}},
        },
    }


OPENAI_REQUEST = _request(
    ["developer", "system", "user", "assistant", "tool", "function"],
    [_TEXT_PART, _IMAGE_PART, _AUDIO_PART, _FILE_PART],
)
# DeepSeek's chat API (api-docs.deepseek.com) is OpenAI's with up to 16 stop sequences and an assistant
# turn's `reasoning_content`, which its thinking mode needs back on tool-calling turns.
DEEPSEEK_REQUEST = _request(["system", "user", "assistant", "tool"], [_TEXT_PART], max_stops=16, reasoning=True)
# Azure 2024-10-21: no `developer` role, no audio or file parts, and the deployment (in the URL) is the model.
AZURE_REQUEST = _request(
    ["system", "user", "assistant", "tool", "function"], [_TEXT_PART, _IMAGE_PART], model_required=False
)
# Members of OpenAI's request that Azure's 2024-10-21 version does not define (added in later versions).
AZURE_NEWER_MEMBERS = frozenset({"reasoning_effort", "store", "metadata", "modalities", "audio", "prediction"})

# --- answers ----------------------------------------------------------------------------------------

_FINISH = ["stop", "length", "tool_calls", "content_filter", "function_call"]
_USAGE = {
    "type": "object",
    "required": ["prompt_tokens", "completion_tokens", "total_tokens"],
    "properties": {
        "prompt_tokens": {"type": "integer"},
        "completion_tokens": {"type": "integer"},
        "total_tokens": {"type": "integer"},
        "prompt_tokens_details": {"type": "object"},
        "completion_tokens_details": {"type": "object"},
    },
}


def _answer(kind: str, usage: dict[str, Any], choice: dict[str, Any]) -> dict[str, Any]:
    """The envelope both answer kinds share."""
    return {
        "type": "object",
        "required": ["id", "object", "created", "model", "choices"],
        "properties": {
            "id": _STRING,
            "object": {"const": kind},
            "created": {"type": "integer"},
            "model": _STRING,
            "system_fingerprint": _STRING,
            "service_tier": {"type": ["string", "null"]},
            "usage": usage,
            "choices": {"type": "array", "items": choice},
        },
    }


CHAT_COMPLETION = _answer(
    "chat.completion",
    _USAGE,
    {
        "type": "object",
        "required": ["index", "message", "finish_reason", "logprobs"],
        "properties": {
            "index": {"type": "integer"},
            "finish_reason": {"enum": _FINISH},
            "logprobs": {"type": ["object", "null"]},
            "message": {
                "type": "object",
                "required": ["role", "content", "refusal"],
                "properties": {
                    "role": {"const": "assistant"},
                    "content": _NULLABLE_STRING,
                    "refusal": _NULLABLE_STRING,
                    "tool_calls": {"type": "array", "items": _TOOL_CALL | {"additionalProperties": True}},
                    "annotations": {"type": "array"},
                    "audio": {"type": ["object", "null"]},
                },
            },
        },
    },
)
CHAT_COMPLETION_CHUNK = _answer(
    "chat.completion.chunk",
    {"oneOf": [{"type": "null"}, _USAGE]},
    {
        "type": "object",
        "required": ["index", "delta", "finish_reason"],
        "properties": {
            "index": {"type": "integer"},
            "finish_reason": {"enum": [*_FINISH, None]},
            "logprobs": {"type": ["object", "null"]},
            "delta": {
                "type": "object",
                "properties": {
                    "role": {"enum": ["developer", "system", "user", "assistant", "tool"]},
                    "content": _NULLABLE_STRING,
                    "refusal": _NULLABLE_STRING,
                    "tool_calls": {
                        "type": "array",
                        "items": {
                            "type": "object",
                            "required": ["index"],
                            "properties": {
                                "index": {"type": "integer"},
                                "id": _STRING,
                                "type": {"const": "function"},
                                "function": {
                                    "type": "object",
                                    "properties": {"name": _STRING, "arguments": _STRING},
                                },
                            },
                        },
                    },
                },
            },
        },
    },
)
