"""Mistral AI's chat API: OpenAI's shape with its own parameter names and tool-call ids.

Parameters are renamed by the `mistral` profile's table (`seed` -> `random_seed`, `required` tool
choice -> `any`, `max_completion_tokens` -> `max_tokens`); Mistral's own fields (`safe_prompt`,
`prompt_mode`, ...) pass through. Mistral accepts only tool-call ids of nine letters and digits, so ids
from another provider (`call_...`, `toolu_...`) are mapped to nine-character ids derived from them:
the same id always maps the same way, so an assistant's call and the tool result answering it still
match, and the ids Mistral itself issues are left as they are. Embeddings go to Mistral's `/v1/embeddings` in its
own names (`dimensions` as `output_dimension`), text only; `user`, which it has no field for, is dropped and named.

A reasoning answer (Magistral's always, Mistral Small 4's and Medium 3.5's when asked with `reasoning_effort`)
has a list of typed chunks for `content`, in the answer and in each stream delta: `thinking` chunks (each with its
own list of text chunks) and `text` chunks. They become `reasoning_content` and `content`, as every front-end
reads another provider's reasoning. Small 4 and Medium 3.5 take `reasoning_effort` as `high` or `none` only
(`model_rules`): any effort asked of them is `high`, `none` (or thinking disabled) `none`. To a model that reasons,
an earlier assistant turn's reasoning (as each front-end carries it: `reasoning_content`, thinking blocks, reasoning
items) goes back as Mistral documents it, a `thinking` chunk opening the turn's `content` ("always replay the
assistant turn with its ThinkChunks intact": the model does worse without); to any other, it is left out as
OpenAI's Chat Completions leaves it.
"""

from __future__ import annotations

import hashlib
import re
import string
from typing import TYPE_CHECKING, Any

import orjson

from adapters.providers import reasoning
from adapters.providers.model_rules import rules_for
from adapters.providers.openai.adapter import OpenAIAdapter, OpenAIStreamParser, tool_names
from adapters.providers.openai.profiles import PROFILES, Profile
from handler.errors import InvalidRequestError
from handler.ports import BuiltRequest, Target, UpstreamRequest
from handler.schemas import ChatRequest

if TYPE_CHECKING:
    from handler.schemas import EmbeddingsRequest

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
# The members of Mistral's embeddings request (`mistralai`'s `EmbeddingRequest`): it refuses any other (422,
# `extra_forbidden`). `encoding_format` is OpenAI's (`float` or `base64`); `output_dimension` is OpenAI's `dimensions`.
EMBEDDING_FIELDS = frozenset({"model", "input", "metadata", "output_dimension", "output_dtype", "encoding_format"})
NO_PARAMETERS = {"type": "object", "properties": {}}
# Mistral's models that reason: Magistral always, Small 4 and Medium 3.5 when asked (`ModelRules.reasoning_on_off`).
MAGISTRAL = ("magistral",)
# The `mistral` profile, keeping an assistant turn's reasoning for `reasoning_as_chunks` (a model that reasons).
REASONING_PROFILE = PROFILES["mistral"]._replace(strip_message_fields=("reasoning_details",))


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


def reasons(model: str) -> bool:
    """Whether a Mistral model reasons (always, or when asked): its earlier turns' reasoning goes back to it."""
    return reasoning.reasons(model, MAGISTRAL, prefix=True) or rules_for(model).reasoning_on_off


def thinking_chunk(text: str) -> dict[str, Any]:
    """Mistral's `thinking` chunk (its `ThinkChunk`) of a reasoning text."""
    return {"type": "thinking", "thinking": [{"type": "text", "text": text}]}


def reasoning_as_chunks(messages: list[dict[str, Any]]) -> None:
    """Each assistant turn's `reasoning_content` (in place) as the `thinking` chunk opening its `content`, as Mistral
    takes a turn's reasoning back: before its text (a string becomes a `text` chunk), or alone beside its calls."""
    for message in messages:
        thought = message.pop("reasoning_content", None)
        if message["role"] != "assistant" or not thought:
            continue
        content = message.get("content")
        text = [{"type": "text", "text": content}] if isinstance(content, str) and content else []
        message["content"] = [thinking_chunk(thought), *(content if isinstance(content, list) else text)]


def _chunk_texts(chunks: Any) -> list[str]:
    texts = (c.get("text") for c in chunks if isinstance(c, dict) and c.get("type") == "text")
    return [text for text in texts if isinstance(text, str)]


def split_content(content: list[Any]) -> tuple[str | None, str | None]:
    """The answer's text and its reasoning in a list of Mistral content chunks (None where there is none): `text`
    chunks and the text chunks inside `thinking` chunks; others (a `reference` chunk's source ids) carry neither."""
    texts = _chunk_texts(content)
    thoughts = [
        text
        for chunk in content
        if isinstance(chunk, dict) and chunk.get("type") == "thinking"
        for text in _chunk_texts(chunk.get("thinking") or ())
    ]
    return ("".join(texts) if texts else None), ("".join(thoughts) if thoughts else None)


def conform_content(message: dict[str, Any], *, delta: bool) -> None:
    """A message's (or a stream delta's) list `content` as OpenAI's text and `reasoning_content`, in place. A delta
    with no text chunk carries no `content`; an answer without text has none beside its tool calls, else ""."""
    content = message.get("content")
    if not isinstance(content, list):
        return
    text, thought = split_content(content)
    if thought is not None:
        message["reasoning_content"] = thought
    if text is not None:
        message["content"] = text
    elif delta:
        del message["content"]
    else:
        message["content"] = None if message.get("tool_calls") else ""


def _conform_choices(payload: Any, member: str) -> Any:
    if isinstance(payload, dict) and isinstance(payload.get("choices"), list):
        for choice in payload["choices"]:
            if isinstance(choice, dict) and isinstance(choice.get(member), dict):
                conform_content(choice[member], delta=member == "delta")
    return payload


class MistralStreamParser(OpenAIStreamParser):
    """Mistral's chunks: OpenAI's, but for a reasoning model's deltas, whose `content` is a list of chunks."""

    def conformed(self, payload: Any) -> Any:
        return _conform_choices(payload, "delta")


class MistralAdapter(OpenAIAdapter):
    """The `mistral` provider type (La Plateforme, or a self-hosted Mistral API at `base_url`)."""

    type_name = "mistral"
    semconv_provider = "mistral_ai"
    default_base_url = "https://api.mistral.ai/v1"
    key_env_var = "MISTRAL_API_KEY"
    chat_fields = MISTRAL_FIELDS
    embedding_fields = EMBEDDING_FIELDS
    provider_options = OpenAIAdapter.compatible_options  # (it has no Responses API: `/v1/responses` is translated)

    def takes_search_options(self, target: Target) -> bool:
        return False  # (a member Mistral has none of: `conform_to_mistral`)

    def profile(self, target: Target) -> Profile:
        named = self.options.get("profile")
        if named:
            return PROFILES[named]
        return REASONING_PROFILE if reasons(target.model) else PROFILES["mistral"]

    def chat_body(self, req: ChatRequest, target: Target, *, stream: bool) -> tuple[dict[str, Any], list[str]]:
        body, dropped = super().chat_body(req, target, stream=stream)
        reasoning_as_chunks(body["messages"])  # (kept by `REASONING_PROFILE` only: a model that reasons)
        map_tool_ids(body["messages"])
        conform_to_mistral(body, dropped)
        wish, asked = reasoning.requested(req), reasoning.asked_with(req)
        if wish is not None and all(name in dropped for name in asked) and rules_for(target.model).reasoning_on_off:
            # The profile drops `reasoning_effort` (most Mistral models refuse it); these take it, as a switch.
            for name in asked:
                dropped.remove(name)
            body["reasoning_effort"] = "none" if wish.off else "high"
        return body, dropped

    def shows_reasoning(self, body: dict[str, Any], target: Target) -> bool:
        # Thinking chunks from the models that reason (Small 4 and Medium 3.5 when asked); the others do not reason.
        return reasons(target.model)

    def conformed_answer(self, data: dict[str, Any]) -> dict[str, Any]:
        return dict(_conform_choices(data, "message"))

    def stream_parser(self, req: ChatRequest, target: Target) -> MistralStreamParser:
        parser = MistralStreamParser(target.model, self.repeated_prefix(req, target), tool_names(req))
        parser.opens_empty = True  # (a tool-only answer opens `content: ""`: `OpenAIStreamParser._opened`)
        return parser

    def embeddings_request(self, req: EmbeddingsRequest, target: Target) -> BuiltRequest:
        """OpenAI's embeddings request in Mistral's names; what Mistral has no field for (`user`) is dropped and
        named. Mistral embeds text only: token ids are the client's 400."""
        if not isinstance(req.input, str) and not all(isinstance(item, str) for item in req.input):
            raise InvalidRequestError("Mistral embeddings take text input, not token ids", param="input")
        body = req.model_dump(exclude_unset=True)
        body["model"] = target.model
        dimensions = body.pop("dimensions", None)
        if dimensions is not None:
            body["output_dimension"] = dimensions
        dropped = [name for name in [n for n in body if n not in EMBEDDING_FIELDS] if body.pop(name) is not None]
        request = UpstreamRequest("POST", f"{target.base_url}/embeddings", self.headers(), orjson.dumps(body))
        return BuiltRequest(request, dropped)
