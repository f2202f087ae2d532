"""The providers' own definitions of their wire formats, as checks nobody here wrote the types for.

- Anthropic: the `anthropic` SDK's request TypedDicts (`MessageCreateParams...`) and response models
  (`Message`, `RawMessageStreamEvent`).
- Gemini: `google-genai`'s pydantic types (`Content`, `Tool`, `ToolConfig`, `GenerationConfig`), read by
  their camelCase REST aliases.
- Mistral: `mistralai`'s request models (`ChatCompletionRequest`, `EmbeddingRequest`).
- Bedrock: botocore's `bedrock-runtime` service model (the `Converse` input shape).
- OpenAI and Azure: `openai_spec.py`, the required fields, types and enums of their published specs.

The SDK types are lenient where a client library can afford to be (extra keys ignored, iterables validated
lazily), so `typed_problems` walks a value against the type annotations itself: required members, types,
literal enums, and no member the definition does not name.
"""

from __future__ import annotations

import collections.abc
import enum
import functools
import types
import typing
from collections.abc import Iterable, Mapping
from typing import Any

import botocore.session
import typing_extensions
from pydantic import BaseModel, TypeAdapter, ValidationError
from typing_extensions import TypeAliasType, is_typeddict

Problems = list[str]
_WRAPPERS = (
    typing.Annotated,
    typing.Required,
    typing.NotRequired,
    typing_extensions.Required,
    typing_extensions.NotRequired,
    typing_extensions.ReadOnly,
)


# --- typed definitions (TypedDicts and pydantic models) ----------------------------------------------


def _unwrap(tp: Any) -> Any:
    while True:
        origin = typing.get_origin(tp)
        if origin in _WRAPPERS:
            tp = typing.get_args(tp)[0]
        elif isinstance(tp, TypeAliasType):
            tp = tp.__value__
        else:
            return tp


@functools.cache
def _hints(tp: Any) -> dict[str, Any]:
    return typing.get_type_hints(tp, include_extras=True)


def typed_problems(tp: Any, value: Any, path: str = "$") -> Problems:
    """What in `value` the type `tp` does not allow (empty: it conforms)."""
    tp = _unwrap(tp)
    origin = typing.get_origin(tp)
    if tp is Any or tp is object:
        return []
    if origin in (typing.Union, types.UnionType):
        best: Problems | None = None
        for member in typing.get_args(tp):
            found = typed_problems(member, value, path)
            if not found:
                return []
            if best is None or len(found) < len(best):
                best = found
        return best or [f"{path}: matches no member of {tp}"]
    if origin is typing.Literal:
        return [] if value in typing.get_args(tp) else [f"{path}: {value!r} is not one of {typing.get_args(tp)}"]
    if tp is type(None):
        return [] if value is None else [f"{path}: must be null"]
    if isinstance(tp, type) and issubclass(tp, enum.Enum):
        return [] if value in {m.value for m in tp} else [f"{path}: {value!r} is not one of the enum's values"]
    if is_typeddict(tp):
        return _object_problems(value, path, _hints(tp), tp.__required_keys__)
    if isinstance(tp, type) and issubclass(tp, BaseModel):
        members = {name: info.annotation for name, info in tp.model_fields.items()}
        members.update({info.alias: info.annotation for info in tp.model_fields.values() if info.alias})
        required = [info.alias or name for name, info in tp.model_fields.items() if info.is_required()]
        return _object_problems(value, path, members, required)
    if origin in (list, collections.abc.Iterable, collections.abc.Sequence, typing.List):  # noqa: UP006
        if not isinstance(value, list):
            return [f"{path}: must be an array"]
        (item_type,) = typing.get_args(tp) or (Any,)
        return [p for i, item in enumerate(value) for p in typed_problems(item_type, item, f"{path}[{i}]")]
    if origin in (dict, collections.abc.Mapping, typing.Dict):  # noqa: UP006
        if not isinstance(value, dict):
            return [f"{path}: must be an object"]
        args = typing.get_args(tp)
        value_type = args[1] if len(args) == 2 else Any
        return [p for key, item in value.items() for p in typed_problems(value_type, item, f"{path}.{key}")]
    if tp is bool:
        return [] if isinstance(value, bool) else [f"{path}: must be a boolean"]
    if tp is int:
        return [] if isinstance(value, int) and not isinstance(value, bool) else [f"{path}: must be an integer"]
    if tp is float:
        ok = isinstance(value, int | float) and not isinstance(value, bool)
        return [] if ok else [f"{path}: must be a number"]
    if tp in (str, bytes):  # bytes travel as base64 text in JSON
        return [] if isinstance(value, str) else [f"{path}: must be a string"]
    try:
        _adapter(tp).validate_python(value)
    except (ValidationError, TypeError) as exc:
        return [f"{path}: {exc}"]
    return []


def _object_problems(value: Any, path: str, members: Mapping[str, Any], required: Iterable[str]) -> Problems:
    """An object against its members' types: the required ones present, no other member."""
    if not isinstance(value, dict):
        return [f"{path}: must be an object"]
    found = [f"{path}.{key}: required" for key in required if key not in value]
    for key, item in value.items():
        if key not in members:
            found.append(f"{path}.{key}: not a member")
        else:
            found += typed_problems(members[key], item, f"{path}.{key}")
    return found


@functools.cache
def _adapter(tp: Any) -> TypeAdapter[Any]:
    return TypeAdapter(tp)


# --- Anthropic --------------------------------------------------------------------------------------


def anthropic_request(body: dict[str, Any]) -> Problems:
    """The body of `POST /v1/messages` against the SDK's `MessageCreateParams`."""
    from anthropic.types import message_create_params as params

    kind = params.MessageCreateParamsStreaming if body.get("stream") else params.MessageCreateParamsNonStreaming
    sampling = {name: body[name] for name in ANTHROPIC_SAMPLING if name in body}
    rest = {name: value for name, value in body.items() if name not in sampling}
    found = typed_problems(kind, rest)
    return found + [
        p for name, value in sampling.items() for p in typed_problems(ANTHROPIC_SAMPLING[name], value, f"$.{name}")
    ]


# The sampling parameters the Messages API documents (and the rules are about) but the SDK's 2.x
# request types no longer list.
ANTHROPIC_SAMPLING: dict[str, Any] = {"temperature": float, "top_p": float, "top_k": int}


GATEWAY_EXTENSIONS = frozenset({"cost"})  # documented additions to the answers the gateway writes


def _without_extensions(payload: dict[str, Any]) -> dict[str, Any]:
    return {key: value for key, value in payload.items() if key not in GATEWAY_EXTENSIONS}


def anthropic_message(payload: dict[str, Any]) -> Problems:
    """A `/v1/messages` answer against `anthropic.types.Message`."""
    from anthropic.types import Message

    return typed_problems(Message, _without_extensions(payload))


def anthropic_event(payload: dict[str, Any]) -> Problems:
    """One `/v1/messages` stream event against `RawMessageStreamEvent` (pings are outside that union)."""
    from anthropic.types import RawMessageStreamEvent

    if payload.get("type") == "ping":
        return [] if set(payload) == {"type"} else ["$: a ping carries only its type"]
    return typed_problems(RawMessageStreamEvent, _without_extensions(payload))


# --- Gemini -----------------------------------------------------------------------------------------


def gemini_request(body: dict[str, Any]) -> Problems:
    """A `GenerateContentRequest` (REST JSON, camelCase) against `google.genai.types`."""
    from google.genai import types as g

    members: dict[str, Any] = {
        "contents": list[g.Content],
        "systemInstruction": g.Content,
        "tools": list[g.Tool],
        "toolConfig": g.ToolConfig,
        "generationConfig": g.GenerationConfig,
        "safetySettings": list[g.SafetySetting],
        "cachedContent": str,
    }
    return _object_problems(body, "$", members, ["contents"])


# --- Mistral ----------------------------------------------------------------------------------------


def mistral_request(body: dict[str, Any]) -> Problems:
    """A chat completion body against `mistralai`'s `ChatCompletionRequest` (or its streaming twin)."""
    from mistralai.client.models import ChatCompletionRequest, ChatCompletionStreamRequest

    return typed_problems(ChatCompletionStreamRequest if body.get("stream") else ChatCompletionRequest, body)


def mistral_embedding_request(body: dict[str, Any]) -> Problems:
    """An embeddings body against `mistralai`'s `EmbeddingRequest`."""
    from mistralai.client.models import EmbeddingRequest

    return typed_problems(EmbeddingRequest, body)


# --- Bedrock ----------------------------------------------------------------------------------------


@functools.cache
def _bedrock_model() -> Any:
    return botocore.session.get_session().get_service_model("bedrock-runtime")


def _shape_problems(shape: Any, value: Any, path: str) -> Problems:
    kind = shape.type_name
    if kind == "structure":
        if shape.metadata.get("document"):
            return []  # a JSON document: anything
        if not isinstance(value, dict):
            return [f"{path}: must be an object"]
        members = {name: member for name, member in shape.members.items() if not member.serialization.get("location")}
        found = [f"{path}.{name}: not a member" for name in value if name not in members]
        if shape.metadata.get("union"):
            if len(value) != 1:
                found.append(f"{path}: a union takes exactly one member, got {sorted(value)}")
        else:
            found += [
                f"{path}.{name}: required" for name in shape.required_members if name in members and name not in value
            ]
        for name, item in value.items():
            if name in members:
                found += _shape_problems(members[name], item, f"{path}.{name}")
        return found
    if kind == "list":
        if not isinstance(value, list):
            return [f"{path}: must be an array"]
        found = []
        if "min" in shape.metadata and len(value) < shape.metadata["min"]:
            found.append(f"{path}: at least {shape.metadata['min']} items")
        return found + [p for i, item in enumerate(value) for p in _shape_problems(shape.member, item, f"{path}[{i}]")]
    if kind == "map":
        if not isinstance(value, dict):
            return [f"{path}: must be an object"]
        return [p for key, item in value.items() for p in _shape_problems(shape.value, item, f"{path}.{key}")]
    if kind == "string":
        if not isinstance(value, str):
            return [f"{path}: must be a string"]
        if shape.enum and value not in shape.enum:
            return [f"{path}: {value!r} is not one of {shape.enum}"]
        if "min" in shape.metadata and len(value) < shape.metadata["min"]:
            return [f"{path}: shorter than {shape.metadata['min']}"]
        return []
    if kind in ("integer", "long"):
        ok = isinstance(value, int) and not isinstance(value, bool)
        if ok and "min" in shape.metadata and value < shape.metadata["min"]:
            return [f"{path}: below {shape.metadata['min']}"]
        return [] if ok else [f"{path}: must be an integer"]
    if kind in ("float", "double"):
        ok = isinstance(value, int | float) and not isinstance(value, bool)
        if ok and "max" in shape.metadata and value > shape.metadata["max"]:
            return [f"{path}: above {shape.metadata['max']}"]
        return [] if ok else [f"{path}: must be a number"]
    if kind == "boolean":
        return [] if isinstance(value, bool) else [f"{path}: must be a boolean"]
    if kind == "blob":
        return [] if isinstance(value, str) else [f"{path}: must be base64 text"]
    return []


def bedrock_request(body: dict[str, Any], operation: str = "Converse") -> Problems:
    """A Converse (or ConverseStream) body against botocore's `bedrock-runtime` model."""
    shape = _bedrock_model().operation_model(operation).input_shape
    return _shape_problems(shape, body, "$")
