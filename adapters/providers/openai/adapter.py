"""Any OpenAI-compatible Chat Completions API: OpenAI, DeepSeek, Mistral, Groq, Together, xAI, vLLM, ...

The request is the client's body with the upstream model substituted and the profile's parameter
table applied; unknown fields pass through, since an OpenAI-compatible API is the one place they mean
something.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import orjson

from adapters.providers import thinking
from adapters.providers.openai.profiles import PROFILES, Profile, profile_for
from adapters.providers.params import apply_rules
from handler.errors import UpstreamError
from handler.ports import (
    BuiltRequest,
    ProviderAdapter,
    StreamEvent,
    Target,
    UpstreamRequest,
    json_body,
    malformed,
    upstream_error,
)
from handler.schemas import (
    ChatCompletion,
    ChatCompletionChunk,
    ChatRequest,
    EmbeddingsRequest,
    EmbeddingsResponse,
    PromptTokensDetails,
    Usage,
)


def error_from_body(status: int, body: bytes, headers: Mapping[str, str]) -> UpstreamError:
    """OpenAI's error body `{"error": {"message", "type", "param", "code"}}`, tolerating variants."""
    message, kind = "", None
    try:
        data = orjson.loads(body) if body else None
    except orjson.JSONDecodeError:
        data = None
    if isinstance(data, list) and data:
        data = data[0]
    if isinstance(data, dict):
        error = data.get("error", data)
        if isinstance(error, dict):
            message = str(error.get("message") or error.get("detail") or "")
            raw_type = error.get("type") or error.get("code")
            kind = str(raw_type) if raw_type else None
        elif isinstance(error, str):
            message = error
    if not message:
        message = body[:200].decode("utf-8", "replace") if body else "no error body"
    return upstream_error(status, message, headers, upstream_type=kind)


def normalize_usage(usage: Usage | None) -> Usage | None:
    """Fold provider variants into the gateway's usage: DeepSeek reports cache hits as
    `prompt_cache_hit_tokens` rather than `prompt_tokens_details.cached_tokens`."""
    if usage is None or not usage.model_extra:
        return usage
    hits = usage.model_extra.get("prompt_cache_hit_tokens")
    if isinstance(hits, int) and hits and not usage.cached_tokens:
        details = usage.prompt_tokens_details or PromptTokensDetails()
        details.cached_tokens = hits
        usage.prompt_tokens_details = details
    return usage


class OpenAIStreamParser:
    """Chunks are already in the gateway's form; this validates them and keeps the usage."""

    def __init__(self) -> None:
        self.usage: Usage | None = None

    def feed(self, event: StreamEvent) -> list[ChatCompletionChunk]:
        data = event.data
        if not data or data == b"[DONE]":
            return []
        try:
            payload = orjson.loads(data)
        except orjson.JSONDecodeError as exc:
            raise malformed("upstream sent a stream event that is not JSON", "invalid_json") from exc
        if isinstance(payload, dict) and "error" in payload and "choices" not in payload:
            raise error_from_body(500, data, {})
        chunk = ChatCompletionChunk.model_validate(payload)
        if chunk.usage is not None:
            self.usage = normalize_usage(chunk.usage)
        return [chunk]

    def finish(self) -> list[ChatCompletionChunk]:
        return []


class OpenAIAdapter(ProviderAdapter):
    """The `openai` provider type."""

    type_name = "openai"
    default_base_url = "https://api.openai.com/v1"
    key_env_var = "OPENAI_API_KEY"
    supports_embeddings = True

    def __init__(self, name: str, secret: str | None, options: Mapping[str, Any]) -> None:
        super().__init__(name, secret, options)
        profile = self.options.get("profile")
        if profile is not None and profile not in PROFILES:
            raise ValueError(f"unknown profile '{profile}' (one of: {', '.join(sorted(PROFILES))})")
        self.requires_key = self.options.get("auth") != "none"
        responses_api = self.options.get("responses_api")
        if responses_api not in (None, "native", "translate"):
            raise ValueError(f"responses_api must be 'native' or 'translate', not '{responses_api}'")

    def profile(self, target: Target) -> Profile:
        return profile_for(self.options.get("profile"), target.base_url)

    def headers(self) -> dict[str, str]:
        headers = {"content-type": "application/json"}
        if self.secret:
            headers["authorization"] = f"Bearer {self.secret}"
        extra = self.options.get("headers")
        if isinstance(extra, dict):
            headers.update({str(k): str(v) for k, v in extra.items()})
        return headers

    def chat_body(self, req: ChatRequest, target: Target, *, stream: bool) -> tuple[dict[str, Any], list[str]]:
        """The upstream body and what the profile could not honour; reused by derived adapters."""
        profile = self.profile(target)
        body = req.model_dump(exclude_unset=True, by_alias=True)
        body["model"] = target.model
        body.pop("stream", None)
        body.pop("stream_options", None)
        # Other providers' signed reasoning (a conversation that moved here) means nothing to this API.
        strip = (*profile.strip_message_fields, thinking.FIELD, thinking.SIGNATURES)
        for message in body["messages"]:
            for name in strip:
                message.pop(name, None)
        dropped = apply_rules(body, profile.rules)
        if stream:
            body["stream"] = True
            if profile.stream_usage:
                body["stream_options"] = {"include_usage": True}
        return body, dropped

    def chat_request(self, req: ChatRequest, target: Target, *, stream: bool) -> BuiltRequest:
        body, dropped = self.chat_body(req, target, stream=stream)
        request = UpstreamRequest("POST", f"{target.base_url}/chat/completions", self.headers(), orjson.dumps(body))
        return BuiltRequest(request, dropped)

    def serves_responses(self, target: Target) -> bool:
        """Whether `/v1/responses` goes to the upstream's own `/responses`: OpenAI's API has it; an
        OpenAI-compatible server may not, so elsewhere only when the provider's `responses_api` says so."""
        setting = self.options.get("responses_api")
        if setting is not None:
            return bool(setting == "native")
        host = target.base_url.split("://", 1)[-1].split("/", 1)[0].split(":", 1)[0]
        return type(self) is OpenAIAdapter and host == "api.openai.com"

    def responses_url(self, target: Target) -> str:
        return f"{target.base_url}/responses"

    def responses_request(self, body: dict[str, Any], target: Target) -> UpstreamRequest:
        return UpstreamRequest("POST", self.responses_url(target), self.headers(), orjson.dumps(body))

    def responses_store(self) -> bool:
        return bool(self.options.get("responses_store", False))

    def chat_response(self, body: bytes, req: ChatRequest, target: Target) -> ChatCompletion:
        data = json_body(body)
        if not isinstance(data, dict) or "choices" not in data:
            raise malformed("upstream answered without choices")
        completion = ChatCompletion.model_validate(data)
        completion.usage = normalize_usage(completion.usage)
        return completion

    def stream_parser(self, req: ChatRequest, target: Target) -> OpenAIStreamParser:
        return OpenAIStreamParser()

    def error(self, status: int, body: bytes, headers: Mapping[str, str]) -> UpstreamError:
        return error_from_body(status, body, headers)

    def embeddings_request(self, req: EmbeddingsRequest, target: Target) -> BuiltRequest:
        body = req.model_dump(exclude_unset=True)
        body["model"] = target.model
        request = UpstreamRequest("POST", f"{target.base_url}/embeddings", self.headers(), orjson.dumps(body))
        return BuiltRequest(request, [])

    def embeddings_response(self, body: bytes, req: EmbeddingsRequest, target: Target) -> EmbeddingsResponse:
        data = json_body(body)
        if not isinstance(data, dict) or "data" not in data:
            raise malformed("upstream answered embeddings without data")
        try:
            return EmbeddingsResponse.model_validate(data)
        except ValueError as exc:
            raise malformed("upstream embeddings answer did not parse") from exc
