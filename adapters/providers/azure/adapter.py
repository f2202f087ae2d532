"""Azure OpenAI Service: OpenAI's bodies, Azure's URLs, key header and content filtering.

A request goes to `{base_url}/openai/deployments/{deployment}/{operation}?api-version=...`, where the
deployment is the config deployment's `model` and `base_url` is the resource's endpoint
(`https://NAME.openai.azure.com`), set on the provider or on each deployment (one resource per region); at a
name of the versionless v1 API (`api_version: v1`, `latest` or `preview`), to `{base_url}/openai/v1/{operation}`
with the deployment as the body's `model`, as OpenAI's API is called (Microsoft's "Azure OpenAI v1 API" page).
The key travels in `api-key`, or an operator's `authorization` header (a Microsoft Entra ID token) in its place.
Bodies, answers and streams are OpenAI's, handled by the OpenAI adapter;
what Azure adds is its content filter: a refused prompt comes back as a 400 whose `innererror` names
the filtered categories, a stream opens with a choice-less chunk of `prompt_filter_results`, and with the
Asynchronous Filter the verdict on text already streamed comes after it, in annotations, which may block the
answer (`AzureStreamParser`).
"""

from __future__ import annotations

import datetime
import functools
import urllib.parse
from collections.abc import Mapping
from typing import Any

import orjson

from adapters.providers.openai.adapter import (
    OpenAIAdapter,
    OpenAIStreamParser,
    error_from_body,
    tool_names,
    validated,
)
from adapters.providers.openai.profiles import PROFILES, Profile
from adapters.providers.params import ToolNames
from handler.config import ConfigError
from handler.errors import InvalidRequestError, UpstreamError
from handler.ports import BuiltRequest, Target
from handler.schemas import ChatCompletionChunk, ChatRequest, EmbeddingsRequest
from handler.wire import StreamEvent

DEFAULT_API_VERSION = "2024-10-21"  # the current GA data-plane version


# What Azure's data-plane API gained after a version: (first api-version that has it, what). Versions are
# dated strings, so an older one sorts before. A request to an older version gets the `developer` role as
# `system` (which older versions read the same way) and the newer parameters reported as dropped.
DEVELOPER_ROLE_SINCE = "2024-12-01-preview"
# `max_completion_tokens` and `stream_options` came with 2024-09-01-preview (the GA 2024-10-21 has them; the GA
# 2024-06-01 refuses either as an unrecognized argument). Before it, the cap is sent as `max_tokens` (the same cap
# for the models those versions serve), and a stream goes without its usage: the gateway then estimates the
# stream's cost (the ledger says `estimate`) and still gives a client that asked for usage the final usage chunk.
COMPLETION_CAP_SINCE = "2024-09-01-preview"
JSON_SCHEMA_SINCE = "2024-08-01-preview"
PARAMETERS_SINCE: dict[str, str] = {
    "parallel_tool_calls": COMPLETION_CAP_SINCE,
    "reasoning_effort": "2024-12-01-preview",
    "store": "2024-12-01-preview",
    "metadata": "2024-12-01-preview",
    "modalities": "2025-01-01-preview",
    "audio": "2025-01-01-preview",
    "prediction": "2025-01-01-preview",
}
PARTS_SINCE: dict[str, str] = {"input_audio": "2025-01-01-preview", "file": "2025-03-01-preview"}
# OpenAI's members that no dated api-version of Azure's Chat Completions defines: added by OpenAI after Azure's
# last dated version (2025-04-01-preview; newer features come with Azure's versionless v1 API), or never taken by
# Azure's Chat Completions. Azure refuses an unknown member ("Unrecognized request argument supplied"), a 400
# that does not fail over; sent on, a request OpenAI serves would fail on its Azure deployment.
OPENAI_ONLY = ("verbosity", "prompt_cache_key", "safety_identifier", "service_tier", "web_search_options")
# OpenAI's `allowed_tools` tool choice (August 2025) is another such: a dated version's `tool_choice` is none, auto,
# required or a named function, and refuses another with a 400 that does not fail over (OpenAI's profile says its API
# takes it). A dated version is sent it as the APIs without it are (Mistral's, DeepSeek's): the tools it allows
# offered alone, with its mode (`dated_profile`).
# The members of `stream_options` Azure's dated api-versions define: `include_usage` alone (OpenAI's
# `include_obfuscation` came after the last of them), so a client's others are left out and named, as its unknown
# top-level members are.
STREAM_MEMBERS = frozenset({"include_usage"})


@functools.cache  # (made on first use, not in the cold start of every config that names Azure)
def dated_profile(name: str) -> Profile:
    """The profile an Azure provider names (OpenAI's by default) as a dated api-version takes it: no
    `allowed_tools`."""
    return PROFILES[name]._replace(allowed_tools=False)


def dated(version: str) -> bool:
    """Whether an api-version is one of Azure's dated ones (`2024-10-21`, `2025-04-01-preview`), not a name of the
    versionless API's (`v1`, `preview`, `latest`), which follows OpenAI's."""
    return version[:4].isdigit()


# The names of the versionless v1 API's versions (docs/configuration.md); any other api-version is a dated one.
VERSIONLESS = ("v1", "latest", "preview")


def api_version_problem(value: Any) -> str | None:
    """What is wrong with an `api_version` option, else None: a dated version (`2024-10-21`, which YAML reads as a
    date unquoted; `2025-04-01-preview`), a name of the versionless API, or none (the default). Taken as written,
    `[1]` was sent as `api-version=[1]`, `"2024-10-21 "` with its space, and a word such as `v2` called the
    versionless API unsaid."""
    if value is None or type(value) is datetime.date:
        return None
    if isinstance(value, str) and (value in VERSIONLESS or _dated_version(value)):
        return None
    return f"an api-version, dated (2024-10-21, 2025-04-01-preview) or v1, latest or preview; not {value!r:.60}"


def _dated_version(text: str) -> bool:
    """Whether `text` is a date (`YYYY-MM-DD`), alone or with a suffix of letters (`-preview`)."""
    date, suffix = text[:10], text[11:]
    digits = date[:4] + date[5:7] + date[8:10]
    if not (len(date) == 10 and date[4] == date[7] == "-" and digits.isascii() and digits.isdigit()):
        return False
    return len(text) == 10 or (text[10] == "-" and suffix.isascii() and suffix.isalpha())


def conform_to_version(body: dict[str, Any], version: str, dropped: list[str]) -> None:
    """Fit an OpenAI body to what Azure's api-version `version` defines (in place). The versionless API takes
    OpenAI's body as it is: nothing is left out (it takes `verbosity` and `prompt_cache_key`, which no dated
    version does)."""
    if not dated(version):
        return
    for name, since in PARAMETERS_SINCE.items():
        if version < since and name in body and body.pop(name) is not None:
            dropped.append(name)
    for name in OPENAI_ONLY:
        if name in body and body.pop(name) is not None:
            dropped.append(name)
    stream_options = body.get("stream_options") or {}
    for name in [name for name in stream_options if name not in STREAM_MEMBERS]:
        if stream_options.pop(name) is not None:
            dropped.append(f"stream_options.{name}")
    if version < COMPLETION_CAP_SINCE:
        body.pop("stream_options", None)
        cap = body.pop("max_completion_tokens", None)
        if cap is not None:
            body["max_tokens"] = cap if body.get("max_tokens") is None else min(cap, body["max_tokens"])
    response_format = body.get("response_format")
    if (
        version < JSON_SCHEMA_SINCE
        and isinstance(response_format, dict)
        and response_format.get("type") == "json_schema"
    ):
        raise InvalidRequestError(
            f"response_format json_schema needs Azure api-version {JSON_SCHEMA_SINCE} or later; "
            f"this deployment uses {version}",
            param="response_format",
        )
    for message in body["messages"]:
        if message["role"] == "developer" and version < DEVELOPER_ROLE_SINCE:
            message["role"] = "system"
        for part in message.get("content") if isinstance(message.get("content"), list) else ():
            since = PARTS_SINCE.get(part.get("type", ""), "")
            if version < since:
                raise InvalidRequestError(
                    f"content part '{part['type']}' needs Azure api-version {since} or later; "
                    f"this deployment uses {version}",
                    param="messages",
                )


def blocked(verdict: Any) -> bool:
    """Whether one category's verdict blocks the text: `filtered`, or, for the custom blocklists, any of them (a
    list of verdicts in older api-versions, `{"filtered", "details": [...]}` in newer ones)."""
    if isinstance(verdict, list):
        return any(blocked(v) for v in verdict)
    return isinstance(verdict, dict) and verdict.get("filtered") is True


def filtered_categories(result: Any) -> list[str]:
    """The names of the categories Azure's content filter blocked, from a `content_filter_result(s)`."""
    if not isinstance(result, dict):
        return []
    return sorted(name for name, verdict in result.items() if blocked(verdict))


def azure_error(status: int, body: bytes, headers: Mapping[str, str]) -> UpstreamError:
    """OpenAI's error body plus Azure's `innererror`: a content-filter refusal names what was filtered."""
    err = error_from_body(status, body, headers)
    try:
        data = orjson.loads(body) if body else None
    except orjson.JSONDecodeError:
        return err
    error = data.get("error") if isinstance(data, dict) else None
    if not isinstance(error, dict):
        return err
    inner = error.get("innererror")
    if error.get("code") == "content_filter" or (isinstance(inner, dict) and "content_filter_result" in inner):
        err.upstream_type = "content_filter"
        categories = filtered_categories(inner.get("content_filter_result") if isinstance(inner, dict) else None)
        if categories:
            named = f" (content filter: {', '.join(categories)})"
            err.message += named
            err.said = (err.said or "") + named
    elif err.upstream_type is None and error.get("code"):
        err.upstream_type = str(error["code"])
    return err


# What only a chunk of content-filter results holds (`annotation_choices`): a chunk without any of them is OpenAI's,
# parsed at once. `prompt_annotations` is the prompt's results under their name before 2023-10-01-preview.
FILTER_MARKS = (b'"content_filter_offsets"', b'"prompt_filter_results"', b'"prompt_annotations"')


def annotation_choices(data: bytes) -> list[Any] | None:
    """The choices of an Azure chunk of content-filter results alone, None for any other chunk: the opening one
    (the prompt's results, no choices) and the Asynchronous Filter's annotations along the stream (choices with
    `content_filter_offsets` and no delta: the results for text already sent). Both have a blank `object` and
    `model`, and no usage."""
    if not any(mark in data for mark in FILTER_MARKS):
        return None
    try:
        payload = orjson.loads(data)
    except orjson.JSONDecodeError:
        return None
    if not isinstance(payload, dict) or payload.get("usage") is not None:
        return None
    choices = payload.get("choices")
    if not choices:
        return []
    if isinstance(choices, list) and all(isinstance(c, dict) and not c.get("delta") for c in choices):
        return choices
    return None


class AzureStreamParser(OpenAIStreamParser):
    """OpenAI's stream parser, reading Azure's chunks of content-filter results rather than relaying them (they are
    no OpenAI chunks).

    With the Asynchronous Filter, the filter's verdict on text already sent comes after it, in an annotation: one
    that blocks the answer (`finish_reason: content_filter`, then `[DONE]`) ends the choice as filtered, and one
    that blocks text the choice's `stop` chunk already followed (a verdict `filtered: true`, no finish reason) turns
    that finish reason into `content_filter`. So a chunk with a finish reason is held until the stream ends (only
    an annotation and the usage can follow it); a client then learns the answer was filtered (Chat Completions'
    `content_filter`, Messages' `refusal`, Responses' `incomplete`) rather than that it ended."""

    def __init__(self, model: str, names: ToolNames | None = None) -> None:
        super().__init__(model, names=names)
        self._last: ChatCompletionChunk | None = None  # the answer's latest chunk: its id, for a finish written here
        self._held: list[ChatCompletionChunk] = []
        self._finished: set[int] = set()

    def feed(self, event: StreamEvent) -> list[ChatCompletionChunk]:
        if event.data == b"[DONE]":
            super().feed(event)
            return self.finish()
        choices = annotation_choices(event.data)
        if choices is not None:
            return [chunk for choice in choices if (chunk := self._annotated(choice)) is not None]
        passed = []
        for chunk in super().feed(event):
            if not chunk.choices:
                passed.append(chunk)
                continue
            self._last = chunk
            ended = [choice.index for choice in chunk.choices if choice.finish_reason]
            if ended:
                self._finished.update(ended)
                self._held.append(chunk)
            else:
                passed.append(chunk)
        return passed

    def finish(self) -> list[ChatCompletionChunk]:
        held, self._held = self._held, []
        return held

    def _annotated(self, choice: dict[str, Any]) -> ChatCompletionChunk | None:
        """What an annotation changes: a choice's finish reason when it blocks the text, or brings one."""
        index = choice.get("index", 0)
        results = choice.get("content_filter_results")
        reason = "content_filter" if isinstance(results, dict) and any(map(blocked, results.values())) else None
        reason = reason or choice.get("finish_reason")
        if not isinstance(index, int) or reason is None:
            return None
        for chunk in self._held:
            for ended in chunk.choices:
                if ended.index == index and ended.finish_reason:
                    if reason == "content_filter":
                        ended.finish_reason = "content_filter"
                        if ended.model_extra is not None:  # the verdict, as Azure's own finish chunk carries it
                            ended.model_extra["content_filter_results"] = results
                    return None
        if index in self._finished:
            return None
        self._finished.add(index)
        last = self._last
        payload = {
            "id": last.id if last else "",
            "object": "chat.completion.chunk",
            "created": last.created if last else 0,
            "model": last.model if last else "",
            "choices": [
                {"index": index, "delta": {}, "finish_reason": reason, "content_filter_results": results or {}}
            ],
        }
        return validated(ChatCompletionChunk, payload, self.head, self.model)


class AzureOpenAIAdapter(OpenAIAdapter):
    """The `azure` provider type. Options: `api_version` (provider-wide or per deployment), `headers`."""

    type_name = "azure"
    semconv_provider = "azure.ai.openai"
    default_base_url = ""
    key_env_var = "AZURE_OPENAI_API_KEY"
    supports_embeddings = True
    provider_options = OpenAIAdapter.provider_options | {"api_version"}
    deployment_options = frozenset({"api_version"})

    def profile(self, target: Target) -> Profile:
        """OpenAI's own table (its bounds are Azure's too) whatever the resource's host, unless one is named; at a
        dated api-version, which defines no `allowed_tools` tool choice, without it (`dated_profile`)."""
        name = self.options.get("profile") or "openai"
        return dated_profile(name) if dated(self.api_version(target)) else PROFILES[name]

    def base_url(self, region: str, override: str | None) -> str:
        url = super().base_url(region, override)
        if not url:
            raise ConfigError(
                [
                    f"providers.{self.name}.base_url: the Azure OpenAI resource endpoint "
                    "(https://NAME.openai.azure.com) is required, on the provider or on each deployment"
                ]
            )
        return url.removesuffix("/openai")

    def __init__(self, name: str, secret: str | None, options: Mapping[str, Any]) -> None:
        super().__init__(name, secret, options)
        extra = self.options.get("headers")
        # An `authorization` header of the operator's is the resource's credential (a Microsoft Entra ID token, for
        # a resource whose keys are disabled): sent as written, with no `api-key` beside it (the provider's key or
        # AZURE_OPENAI_API_KEY) unless `headers` names one too; nor does `auth: none` send the key.
        if isinstance(extra, dict) and any(str(header).lower() == "authorization" for header in extra):
            self.requires_key = False

    @classmethod
    def option_problem(cls, option: str, value: Any) -> str | None:
        if option == "api_version":
            return api_version_problem(value)
        return super().option_problem(option, value)

    def headers(self) -> dict[str, str]:
        # (`secret` and the configured headers read here, not at construction: a key or a header's value in a secret
        # store is installed, and read again, later: handler/pipeline/provider_keys.py)
        headers = {"content-type": "application/json"}
        if self.secret and self.requires_key:
            headers["api-key"] = self.secret
        extra = self.options.get("headers")
        if isinstance(extra, dict):
            headers.update({str(k): str(v) for k, v in extra.items()})
        return headers

    def takes_search_options(self, target: Target) -> bool:
        return not dated(self.api_version(target))  # (`OPENAI_ONLY`: the versionless API follows OpenAI's)

    def takes_service_tier(self, target: Target) -> bool:
        return not dated(self.api_version(target)) and super().takes_service_tier(target)  # (`OPENAI_ONLY`, as above)

    def api_version(self, target: Target) -> str:
        return str(target.options.get("api_version") or self.options.get("api_version") or DEFAULT_API_VERSION)

    def endpoint(self, target: Target, operation: str) -> str:
        """Where `operation` (`chat/completions`, `embeddings`) goes: the deployment's path with the dated
        api-version; or, at a name of the versionless API, the v1 API's path, which takes the deployment as the
        body's `model` (OpenAI's body has it there) and no api-version but `preview`, for its preview features.
        (The deployment's path serves the dated api-versions alone: `?api-version=v1` is none of them.)"""
        version = self.api_version(target)
        if not dated(version):
            query = "?api-version=preview" if version == "preview" else ""
            return f"{target.base_url}/openai/v1/{operation}{query}"
        deployment = urllib.parse.quote(target.model, safe="")
        query = urllib.parse.urlencode({"api-version": version})
        return f"{target.base_url}/openai/deployments/{deployment}/{operation}?{query}"

    def chat_body(self, req: ChatRequest, target: Target, *, stream: bool) -> tuple[dict[str, Any], list[str]]:
        body, dropped = super().chat_body(req, target, stream=stream)
        conform_to_version(body, self.api_version(target), dropped)
        return body, dropped

    def refused_parts(self, target: Target) -> tuple[str, ...]:
        """The content parts the deployment's api-version does not define (`PARTS_SINCE`), which `conform_to_version`
        refuses in a user message: a tool's result holding one is sent without it, which is named."""
        version = self.api_version(target)
        return tuple(name for name, since in PARTS_SINCE.items() if dated(version) and version < since)

    def serves_responses(self, target: Target) -> bool:
        """Azure OpenAI serves the Responses API (its v1 API) for its deployments: native unless configured
        otherwise (`responses_api: translate`)."""
        return bool(self.options.get("responses_api", "native") == "native")

    def responses_url(self, target: Target) -> str:
        """The v1 API's Responses (Azure serves it there alone), which takes the deployment as the body's `model`
        and no api-version but `preview`, for its preview features, as `endpoint` asks it of chat and embeddings
        (a dated api-version names none of the v1 API's: the URL goes without one)."""
        query = "?api-version=preview" if self.api_version(target) == "preview" else ""
        return f"{target.base_url}/openai/v1/responses{query}"

    def chat_request(self, req: ChatRequest, target: Target, *, stream: bool) -> BuiltRequest:
        built = super().chat_request(req, target, stream=stream)
        built.request.url = self.endpoint(target, "chat/completions")
        return built

    def stream_parser(self, req: ChatRequest, target: Target) -> AzureStreamParser:
        return AzureStreamParser(target.model, tool_names(req))

    def error(self, status: int, body: bytes, headers: Mapping[str, str]) -> UpstreamError:
        return azure_error(status, body, headers)

    def embeddings_request(self, req: EmbeddingsRequest, target: Target) -> BuiltRequest:
        built = super().embeddings_request(req, target)
        built.request.url = self.endpoint(target, "embeddings")
        return built
