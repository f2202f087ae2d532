"""Mistral AI's chat API: OpenAI's shape with its own parameter names and tool-call ids.

Parameters are renamed by the `mistral` profile's table (`seed` -> `random_seed`, `required` tool
choice -> `any`, `max_completion_tokens` -> `max_tokens`); Mistral's own fields (`safe_prompt`,
`prompt_mode`, ...) pass through. Mistral accepts only tool-call ids of nine letters and digits, so ids
from another provider (`call_...`, `toolu_...`) are mapped to nine-character ids derived from them:
the same id always maps the same way, so an assistant's call and the tool result answering it still
match, and the ids Mistral itself issues are left as they are.
"""

from __future__ import annotations

import hashlib
import re
import string
from typing import Any

from adapters.providers.openai.adapter import OpenAIAdapter
from adapters.providers.openai.profiles import PROFILES, Profile
from handler.errors import InvalidRequestError
from handler.ports import Target
from handler.schemas import ChatRequest

ID_LENGTH = 9
ALPHABET = string.ascii_letters + string.digits
_VALID_ID = re.compile(rf"^[A-Za-z0-9]{{{ID_LENGTH}}}$")


def mistral_tool_id(original: str) -> str:
    """`original` if Mistral accepts it, else a stable nine-character id derived from it."""
    if _VALID_ID.match(original):
        return original
    number = int.from_bytes(hashlib.sha256(original.encode()).digest()[:8], "big")
    chars = []
    for _ in range(ID_LENGTH):
        number, digit = divmod(number, len(ALPHABET))
        chars.append(ALPHABET[digit])
    return "".join(chars)


def map_tool_ids(messages: list[dict[str, Any]]) -> None:
    """Rewrite every tool-call id and tool-result reference in an OpenAI-form message list in place."""
    for message in messages:
        for call in message.get("tool_calls") or ():
            if isinstance(call.get("id"), str):
                call["id"] = mistral_tool_id(call["id"])
        if isinstance(message.get("tool_call_id"), str):
            message["tool_call_id"] = mistral_tool_id(message["tool_call_id"])


# The members of Mistral's chat request (`mistralai`'s `ChatCompletionRequest`); Mistral refuses any other.
MISTRAL_FIELDS = frozenset(
    {
        "model", "messages", "temperature", "top_p", "max_tokens", "stream", "stop", "random_seed", "metadata",
        "response_format", "tools", "tool_choice", "presence_penalty", "frequency_penalty", "n", "prediction",
        "parallel_tool_calls", "reasoning_effort", "prompt_mode", "guardrails", "prompt_cache_key", "service_tier",
        "safe_prompt", "min_tokens", "repetition_penalty", "top_k", "logprobs", "top_logprobs",
    }
)  # fmt: skip
NO_PARAMETERS = {"type": "object", "properties": {}}


def _mistral_part(part: dict[str, Any]) -> dict[str, Any]:
    """A content part in Mistral's shape: audio is the bare base64 string, a file a document URL or id."""
    if part.get("type") == "input_audio":
        return {"type": "input_audio", "input_audio": part["input_audio"]["data"]}
    if part.get("type") == "file":
        file = part["file"]
        if isinstance(file.get("file_data"), str):
            document = {"type": "document_url", "document_url": file["file_data"]}
            return document | ({"document_name": file["filename"]} if file.get("filename") else {})
        if isinstance(file.get("file_id"), str):
            return {"type": "file", "file_id": file["file_id"]}
        raise InvalidRequestError("a file part needs file_data or file_id", param="messages")
    return part


def conform_to_mistral(body: dict[str, Any], dropped: list[str]) -> None:
    """What Mistral refuses in an OpenAI body, rewritten or reported (in place): a `name` outside tool
    results, OpenAI's audio and file part shapes, a tool without `parameters`, unknown top-level fields."""
    for message in body["messages"]:
        if message["role"] != "tool" and message.pop("name", None) is not None and "messages.name" not in dropped:
            dropped.append("messages.name")
        if isinstance(message.get("content"), list):
            message["content"] = [_mistral_part(part) for part in message["content"]]
    for tool in body.get("tools") or ():
        tool["function"].setdefault("parameters", NO_PARAMETERS)
    for name in [name for name in body if name not in MISTRAL_FIELDS]:
        if body.pop(name) is not None:
            dropped.append(name)


class MistralAdapter(OpenAIAdapter):
    """The `mistral` provider type (La Plateforme, or a self-hosted Mistral API at `base_url`)."""

    type_name = "mistral"
    semconv_provider = "mistral_ai"
    default_base_url = "https://api.mistral.ai/v1"
    key_env_var = "MISTRAL_API_KEY"

    def profile(self, target: Target) -> Profile:
        return PROFILES[self.options.get("profile") or "mistral"]

    def chat_body(self, req: ChatRequest, target: Target, *, stream: bool) -> tuple[dict[str, Any], list[str]]:
        body, dropped = super().chat_body(req, target, stream=stream)
        map_tool_ids(body["messages"])
        conform_to_mistral(body, dropped)
        return body, dropped
