"""The Azure OpenAI adapter: Azure's URLs, key header, content-filter errors and stream chunks."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import orjson
import pytest

from adapters.providers.azure import AzureOpenAIAdapter
from adapters.providers.azure.adapter import blocked
from adapters.providers.registry import REGISTRY
from handler.api.messages_api import MessagesRequest, to_chat_request
from handler.config import ConfigError, parse_config
from handler.errors import InvalidRequestError
from handler.pipeline.gateway import build_adapters
from handler.ports import Target
from handler.schemas import ChatCompletionChunk, ChatRequest, EmbeddingsRequest

FIXTURES = Path(__file__).resolve().parents[3] / "fixtures" / "azure"
ENDPOINT = "https://contoso-eastus.openai.azure.com"


def adapter(**options: Any) -> AzureOpenAIAdapter:
    return AzureOpenAIAdapter("azure", "azure-secret", {"base_url": ENDPOINT, **options})


def target(deployment: str = "gpt-4o-prod", **options: Any) -> Target:
    return Target("azure", "azure", deployment, "eastus", adapter().base_url("eastus", None), options)


def request(**fields: object) -> ChatRequest:
    return ChatRequest.model_validate({"model": "public", "messages": [{"role": "user", "content": "hi"}], **fields})


def test_registry_maps_the_azure_type_and_reads_its_key_variable() -> None:
    config = parse_config({"providers": {"az": {"type": "azure", "base_url": ENDPOINT}}, "models": {}}, set(REGISTRY))
    adapters = build_adapters(config, REGISTRY, {"AZURE_OPENAI_API_KEY": "from-env"})
    assert isinstance(adapters["az"], AzureOpenAIAdapter) and adapters["az"].secret == "from-env"


def test_chat_goes_to_the_deployment_with_the_api_version_and_api_key_header() -> None:
    built = adapter().chat_request(request(temperature=0.3), target(), stream=False)
    assert built.request.url == f"{ENDPOINT}/openai/deployments/gpt-4o-prod/chat/completions?api-version=2024-10-21"
    assert built.request.headers["api-key"] == "azure-secret"
    assert "authorization" not in built.request.headers
    body = orjson.loads(built.request.body)
    assert body["temperature"] == 0.3 and body["messages"] == [{"role": "user", "content": "hi"}]
    assert built.dropped == []


def test_an_entra_id_authorization_header_is_sent_without_an_api_key() -> None:
    """A resource using Microsoft Entra ID takes `authorization: Bearer <token>`, which the operator configures in
    `headers` (with `auth: none`, or beside a key in the environment). It was removed after the headers were merged,
    so the resource got no credential at all (found by review); nor does any `api-key` go beside it unasked."""
    token = "Bearer eyJ0eXAiOiJKV1Qi.entra.sig"
    for auth in ({"auth": "none"}, {}):
        for secret in (None, "key-from-env"):
            entra = AzureOpenAIAdapter(
                "azure", secret, {"base_url": ENDPOINT, "headers": {"authorization": token}, **auth}
            )
            headers = entra.chat_request(request(), target(), stream=False).request.headers
            assert headers["authorization"] == token and "api-key" not in headers, (auth, secret)
            assert not entra.requires_key
    both = AzureOpenAIAdapter(
        "azure", None, {"base_url": ENDPOINT, "headers": {"Authorization": token, "api-key": "k2"}}
    )
    headers = both.chat_request(request(), target(), stream=False).request.headers
    assert headers["Authorization"] == token and headers["api-key"] == "k2"


def test_auth_none_sends_no_api_key() -> None:
    keyless = AzureOpenAIAdapter("azure", "key-from-env", {"base_url": ENDPOINT, "auth": "none"})
    assert "api-key" not in keyless.chat_request(request(), target(), stream=False).request.headers


def test_api_version_comes_from_the_deployment_then_the_provider() -> None:
    provider_wide = adapter(api_version="2024-06-01").chat_request(request(), target(), stream=False)
    assert provider_wide.request.url.endswith("?api-version=2024-06-01")
    per_deployment = adapter(api_version="2024-06-01").chat_request(
        request(), target(api_version="2025-01-01-preview"), stream=False
    )
    assert per_deployment.request.url.endswith("?api-version=2025-01-01-preview")


def test_stream_asks_for_usage_as_openai_does() -> None:
    body = orjson.loads(adapter().chat_request(request(), target(), stream=True).request.body)
    assert body["stream"] is True and body["stream_options"] == {"include_usage": True}


def test_base_url_is_required_with_the_offending_path() -> None:
    with pytest.raises(ConfigError, match=r"providers\.az\.base_url"):
        AzureOpenAIAdapter("az", "k", {}).base_url("eastus", None)
    assert AzureOpenAIAdapter("az", "k", {}).base_url("eastus", f"{ENDPOINT}/openai/") == ENDPOINT


def test_embeddings_go_to_the_deployment() -> None:
    built = adapter().embeddings_request(EmbeddingsRequest(model="e", input="hi"), target("embed-small"))
    assert built.request.url == f"{ENDPOINT}/openai/deployments/embed-small/embeddings?api-version=2024-10-21"
    assert built.request.headers["api-key"] == "azure-secret"


def test_stream_leaves_out_prompt_filter_chunks_and_keeps_usage() -> None:
    a = adapter()
    decoder, parser = a.frame_decoder(), a.stream_parser(request(), target())
    raw = (FIXTURES / "chat-stream.sse").read_bytes()
    chunks = [c for e in decoder.feed(raw) + decoder.finish() for c in parser.feed(e)] + parser.finish()
    assert all(c.model == "gpt-4o-2024-08-06" for c in chunks)
    assert chunks[0].choices[0].delta.role == "assistant"
    assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices) == "Hello from Azure."
    assert parser.usage is not None and parser.usage.total_tokens == 13


def test_stream_leaves_out_the_asynchronous_filters_annotation_chunks() -> None:
    """With the Asynchronous Filter, Azure sends annotations along the stream: choices with
    `content_filter_offsets` and no `delta`, blank `object` (Microsoft's content-streaming docs). They are no
    OpenAI chunks: left out, not a malformed stream cut after the first words."""
    annotation = {
        "choices": [
            {
                "content_filter_offsets": {"check_offset": 35, "start_offset": 35, "end_offset": 44},
                "content_filter_results": {"hate": {"filtered": False, "severity": "safe"}},
                "finish_reason": None,
                "index": 0,
            }
        ],
        "created": 0,
        "id": "",
        "model": "",
        "object": "",
    }
    a = adapter()
    decoder, parser = a.frame_decoder(), a.stream_parser(request(), target())
    raw = (FIXTURES / "chat-stream.sse").read_bytes()
    first, _, rest = raw.partition(b"\n\n")
    raw = first + b"\n\ndata: " + orjson.dumps(annotation) + b"\n\n" + rest
    chunks = [c for e in decoder.feed(raw) + decoder.finish() for c in parser.feed(e)] + parser.finish()
    assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices) == "Hello from Azure."


def parsed(fixture: str) -> list[ChatCompletionChunk]:
    a = adapter()
    decoder, parser = a.frame_decoder(), a.stream_parser(request(), target())
    events = decoder.feed((FIXTURES / fixture).read_bytes()) + decoder.finish()
    return [c for e in events for c in parser.feed(e)] + parser.finish()


def finishes(chunks: list[ChatCompletionChunk]) -> list[str]:
    return [c.finish_reason for chunk in chunks for c in chunk.choices if c.finish_reason]


def test_the_asynchronous_filters_block_mid_stream_ends_the_answer_as_filtered() -> None:
    """With the Asynchronous Filter, Azure blocks an answer already partly sent with an annotation (no delta,
    `finish_reason: content_filter`, blank id and model) and `[DONE]` (Microsoft's content-streaming document). It
    was left out as a filter-only chunk: the answer ended with no finish reason at all, which a Messages client read
    as `end_turn` and a Responses client as `completed` (found by review)."""
    chunks = parsed("chat-stream-async-filter-blocked.sse")
    assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices) == "Hey Jude,"
    assert finishes(chunks) == ["content_filter"]
    last = chunks[-1]
    assert last.id == "chatcmpl-8JCbt5d4luUIhYCI7YH4dQK7hnHx2" and last.model == "gpt-35-turbo"
    verdict = (last.choices[0].model_extra or {})["content_filter_results"]
    assert verdict == {"protected_material_text": {"detected": True, "filtered": True}}


def test_a_block_after_the_stop_chunk_makes_the_finish_reason_content_filter() -> None:
    """The filter may block text after its `stop` chunk came: an annotation whose verdict is `filtered: true`, with
    no finish reason. The finish reason is held to the stream's end, and then says the answer was filtered."""
    chunks = parsed("chat-stream-async-filter-late.sse")
    assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices) == "Color is"
    assert finishes(chunks) == ["content_filter"]
    assert (chunks[-1].choices[0].model_extra or {})["content_filter_results"]["violence"]["filtered"] is True


def test_annotations_that_block_nothing_leave_the_finish_reason_alone() -> None:
    raw = (FIXTURES / "chat-stream-async-filter-late.sse").read_bytes().replace(b'"filtered":true', b'"filtered":false')
    a = adapter()
    decoder, parser = a.frame_decoder(), a.stream_parser(request(), target())
    chunks = [c for e in decoder.feed(raw) + decoder.finish() for c in parser.feed(e)] + parser.finish()
    assert finishes(chunks) == ["stop"]


def test_a_blocklist_verdict_blocks_in_either_shape() -> None:
    """Custom blocklists report a list of verdicts (older api-versions) or `{filtered, details}` (newer)."""
    assert blocked([{"filtered": False, "id": "a"}, {"filtered": True, "id": "b"}])
    assert blocked({"filtered": True, "details": [{"filtered": True, "id": "b"}]})
    assert not blocked({"filtered": False, "detected": True}) and not blocked([])


def test_content_filtered_answer_keeps_its_finish_reason() -> None:
    completion = adapter().chat_response(
        (FIXTURES / "chat-content-filter-response.json").read_bytes(), request(), target()
    )
    assert completion.choices[0].finish_reason == "content_filter"
    assert completion.choices[0].message.content == "Once upon a time"


def test_content_filter_refusal_names_the_categories() -> None:
    err = adapter().error(400, (FIXTURES / "error-content-filter.json").read_bytes(), {})
    assert err.upstream_status == 400 and not err.retryable
    assert err.upstream_type == "content_filter"
    assert err.message.endswith("(content filter: jailbreak, violence)")
    assert "azure-secret" not in err.message


def test_rate_limit_is_retryable_with_retry_after() -> None:
    body = orjson.dumps(
        {
            "error": {
                "code": "429",
                "message": "Requests to the ChatCompletions_Create Operation have exceeded the rate limit.",
            }
        }
    )
    err = adapter().error(429, body, {"retry-after": "3"})
    assert err.retryable and err.retry_after == 3.0 and "rate limit" in err.message
    assert err.upstream_type == "429"


def test_gateway_auth_error_shape_keeps_its_message() -> None:
    err = adapter().error(401, (FIXTURES / "error-401.json").read_bytes(), {})
    assert err.upstream_status == 401 and err.message.startswith("upstream returned 401: Unauthorized.")


def test_the_default_api_version_gets_no_field_it_predates() -> None:
    req = ChatRequest.model_validate(
        {
            "model": "public",
            "messages": [{"role": "developer", "content": "Be brief."}, {"role": "user", "content": "hi"}],
            "reasoning_effort": "low",
        }
    )
    built = adapter().chat_request(req, target(), stream=False)
    body = orjson.loads(built.request.body)
    assert "api-version=2024-10-21" in built.request.url
    assert body["messages"][0]["role"] == "system" and "reasoning_effort" not in body
    assert built.dropped == ["reasoning_effort"]

    newer = adapter().chat_request(req, target(api_version="2025-04-01-preview"), stream=False)
    body = orjson.loads(newer.request.body)
    assert body["messages"][0]["role"] == "developer" and body["reasoning_effort"] == "low" and newer.dropped == []


def test_openais_members_no_azure_version_defines_are_dropped_and_named() -> None:
    """`verbosity`, `prompt_cache_key`, `safety_identifier`, `service_tier` and `web_search_options` went to Azure
    unnamed; Azure refuses a member it does not know with a 400 (found by review)."""
    extras = {
        "verbosity": "low",
        "prompt_cache_key": "k",
        "safety_identifier": "u",
        "service_tier": "auto",
        "web_search_options": {},
    }
    req = ChatRequest.model_validate({"model": "public", "messages": [{"role": "user", "content": "hi"}], **extras})
    for version in ("2024-10-21", "2025-04-01-preview"):
        built = adapter().chat_request(req, target(api_version=version), stream=False)
        body = orjson.loads(built.request.body)
        assert not set(extras) & set(body), version
        assert sorted(built.dropped) == sorted(extras), version


WEATHER: dict[str, Any] = {
    "type": "function",
    "function": {"name": "get_weather", "parameters": {"type": "object", "properties": {"city": {"type": "string"}}}},
}
CLOCK: dict[str, Any] = {"type": "function", "function": {"name": "get_time", "parameters": {"type": "object"}}}
ALLOWED_WEATHER = {
    "type": "allowed_tools",
    "allowed_tools": {"mode": "required", "tools": [{"type": "function", "function": {"name": "get_weather"}}]},
}


@pytest.mark.parametrize("version", ["2024-06-01", "2024-10-21", "2025-01-01-preview", "2025-04-01-preview"])
def test_a_dated_api_version_gets_the_allowed_tools_alone_with_the_mode(version: str) -> None:
    """OpenAI's `allowed_tools` tool choice (August 2025) came after Azure's last dated api-version, whose
    `tool_choice` is none, auto, required or a named function: it went to Azure as written (OpenAI's profile takes
    it), a 400 that does not fail over (found by review). Now as Mistral and DeepSeek get it: the tools it allows
    offered alone, with its mode, which the fake Azure, refusing what a dated version does not define, takes. The
    choice is honoured, so nothing is named; a tool it allows that `tools` does not offer is the client's 400."""
    from tests.fakes import azure as azure_fake

    req = request(tools=[WEATHER, CLOCK], tool_choice=ALLOWED_WEATHER)
    built = adapter().chat_request(req, target(api_version=version), stream=False)
    body = orjson.loads(built.request.body)
    assert body["tool_choice"] == "required" and built.dropped == []
    assert [tool["function"]["name"] for tool in body["tools"]] == ["get_weather"]
    assert azure_fake.unsupported(body, version) is None
    as_sent = orjson.loads(adapter().chat_request(req, target(api_version="v1"), stream=False).request.body)
    assert azure_fake.unsupported(as_sent, version) is not None  # (what the adapter sent every version before)
    unoffered = request(tools=[CLOCK], tool_choice=ALLOWED_WEATHER)
    with pytest.raises(InvalidRequestError, match="no function named 'get_weather'"):
        adapter().chat_request(unoffered, target(api_version=version), stream=False)


def test_the_versionless_api_is_sent_the_allowed_tools_choice_as_openai_is() -> None:
    """Not a dated api-version (`v1`, `preview`, `latest`: the versionless API, which follows OpenAI's): the choice
    goes as it came, every tool offered."""
    for version in ("v1", "preview", "latest"):
        req = request(tools=[WEATHER, CLOCK], tool_choice=ALLOWED_WEATHER)
        body = orjson.loads(adapter().chat_request(req, target(api_version=version), stream=False).request.body)
        assert body["tool_choice"] == ALLOWED_WEATHER and len(body["tools"]) == 2, version


@pytest.mark.parametrize("version", ["v1", "preview", "latest"])
def test_a_versionless_api_version_is_called_at_the_versionless_api(version: str) -> None:
    """`api_version: v1`, `preview`, `latest` name Azure's versionless v1 API, which takes what OpenAI's does: it is
    `{endpoint}/openai/v1/chat/completions` (and `/embeddings`), the deployment in the body's `model`, no api-version
    but `preview` (Microsoft's "Azure OpenAI v1 API" page; openai-node's azure.md). The adapter called the dated
    deployment URL with `?api-version=v1` and dropped OpenAI's members "no dated version defines" (`verbosity`,
    `prompt_cache_key`, `stream_options.include_obfuscation`) from a request to it (found by review)."""
    query = "?api-version=preview" if version == "preview" else ""
    req = request(
        verbosity="low",
        prompt_cache_key="k",
        service_tier="auto",
        stream=True,
        stream_options={"include_usage": True, "include_obfuscation": False},
    )
    built = adapter().chat_request(req, target("gpt-5-prod", api_version=version), stream=True)
    body = orjson.loads(built.request.body)
    assert (built.request.url, body["model"]) == (f"{ENDPOINT}/openai/v1/chat/completions{query}", "gpt-5-prod")
    assert (body["verbosity"], body["prompt_cache_key"], body["service_tier"]) == ("low", "k", "auto")
    assert body["stream_options"] == {"include_usage": True, "include_obfuscation": False}
    assert built.dropped == [] and built.request.headers["api-key"] == "azure-secret"
    embeddings = adapter(api_version=version).embeddings_request(
        EmbeddingsRequest(model="e", input="hi"), target("embed-small")
    )
    assert embeddings.request.url == f"{ENDPOINT}/openai/v1/embeddings{query}"
    assert orjson.loads(embeddings.request.body)["model"] == "embed-small"


def test_azure_keeps_openais_bounds_whatever_its_host() -> None:
    """A resource's host is no profile's: Azure takes OpenAI's table (its four stop sequences)."""
    req = ChatRequest.model_validate(
        {"model": "public", "messages": [{"role": "user", "content": "hi"}], "stop": ["a", "b", "c", "d", "e"]}
    )
    with pytest.raises(InvalidRequestError, match="maximum length 4"):
        adapter().chat_request(req, target(), stream=False)


def test_a_content_part_the_api_version_lacks_is_a_clear_400() -> None:
    audio = {"type": "input_audio", "input_audio": {"data": "UklGRg==", "format": "wav"}}
    req = ChatRequest.model_validate({"model": "public", "messages": [{"role": "user", "content": [audio]}]})
    with pytest.raises(InvalidRequestError, match="2025-01-01-preview"):
        adapter().chat_request(req, target(), stream=False)


PDF = "JVBERi0xLjQKJSVFT0Y="
DOT = "iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAYAAAAfFcSJAAAADUlEQVR42mP8z8BQDwAEhQGAhKmMIQAAAABJRU5ErkJggg=="
# Claude Code's turn after its Read tool read a PDF and a PNG (a `tool_result` holding each).
READ_RESULTS = [
    {"role": "user", "content": "read them"},
    {
        "role": "assistant",
        "content": [
            {"type": "tool_use", "id": "toolu_1", "name": "Read", "input": {"file_path": "a.pdf"}},
            {"type": "tool_use", "id": "toolu_2", "name": "Read", "input": {"file_path": "dot.png"}},
        ],
    },
    {
        "role": "user",
        "content": [
            {
                "type": "tool_result",
                "tool_use_id": "toolu_1",
                "content": [
                    {"type": "document", "source": {"type": "base64", "media_type": "application/pdf", "data": PDF}}
                ],
            },
            {
                "type": "tool_result",
                "tool_use_id": "toolu_2",
                "content": [{"type": "image", "source": {"type": "base64", "media_type": "image/png", "data": DOT}}],
            },
        ],
    },
]


@pytest.mark.parametrize("version", ["2024-10-21", "2025-03-01-preview", "v1"])
def test_what_a_tool_returned_that_the_api_version_lacks_is_named_not_a_400(version: str) -> None:
    """A PDF Claude Code's Read returned, on Azure's default api-version (2024-10-21, no `file` content part): moved
    into the user message after the tool messages, it met the check of user content parts, and the whole turn was the
    client's 400 ("content part 'file' needs Azure api-version 2025-03-01-preview or later"), the conversation unable to
    go on (found by review). A tool's result never fails the turn that carries it: what the version takes (the image)
    follows the tool messages, the rest is left out and named, as before."""
    body = {"model": "m", "max_tokens": 9, "messages": READ_RESULTS}
    req = to_chat_request(MessagesRequest.model_validate(body))[0]
    built = adapter(api_version=version).chat_request(req, target(), stream=False)
    messages = orjson.loads(built.request.body)["messages"]
    assert [m["role"] for m in messages] == ["user", "assistant", "tool", "tool", "user"]
    moved = [part["type"] for part in messages[4]["content"]]
    if version == "2024-10-21":
        assert built.dropped == ["messages.tool.file"]
        assert moved == ["text", "image_url"] and "Read (toolu_2)" in messages[4]["content"][0]["text"]
    else:
        assert built.dropped == [] and moved == ["text", "file", "text", "image_url"]
    audio = {"type": "input_audio", "input_audio": {"data": "UklGRg==", "format": "wav"}}
    calls = [{"id": "c1", "type": "function", "function": {"name": "listen", "arguments": "{}"}}]
    heard = [
        {"role": "user", "content": "listen"},
        {"role": "assistant", "content": None, "tool_calls": calls},
        {"role": "tool", "tool_call_id": "c1", "content": [{"type": "text", "text": "heard"}, audio]},
    ]
    built = adapter(api_version=version).chat_request(request(messages=heard), target(), stream=False)
    messages = orjson.loads(built.request.body)["messages"]
    if version == "2024-10-21":  # (`input_audio` since 2025-01-01-preview)
        assert built.dropped == ["messages.tool.input_audio"] and messages[-1]["role"] == "tool"
    else:
        assert built.dropped == [] and messages[-1]["content"][1:] == [audio]


@pytest.mark.parametrize(("declared", "asked"), [(True, True), (None, False), (False, False)])
def test_a_deployment_declared_reasoning_asks_for_its_encrypted_reasoning(declared: bool | None, asked: bool) -> None:
    """The Responses API with the provider storing nothing: reasoning goes back on a later turn only encrypted, and
    only a reasoning model may be asked for it. An operator-named deployment says so with `reasoning: true`."""
    from handler.ports import RESPONSES_API, NativeCall
    from handler.wire import ENCRYPTED_REASONING

    options = {} if declared is None else {"reasoning": declared}
    call = NativeCall(RESPONSES_API, {"model": "public", "input": "hi"})
    built = adapter().native_request(call, target("prod-reasoner", **options), stream=False, output_limit=None)
    body = orjson.loads(built.request.body)
    assert (ENCRYPTED_REASONING in body.get("include", [])) is asked and body["store"] is False


def test_a_deployments_reasoning_flag_must_be_a_boolean() -> None:
    data = {
        "providers": {"az": {"type": "azure", "base_url": ENDPOINT}},
        "models": {"m": {"deployments": [{"provider": "az", "model": "prod-reasoner", "reasoning": "sometimes"}]}},
    }
    with pytest.raises(ConfigError, match="reasoning"):
        parse_config(data, set(REGISTRY))


def test_a_reasoning_flag_is_refused_where_it_would_be_ignored() -> None:
    """Anthropic's, Gemini's and Bedrock's models tell their reasoning by their names, which the operator does not
    choose: a `reasoning:` flag there would be silently ignored, so the config names it instead."""
    data = {
        "providers": {"claude": {"type": "anthropic"}},
        "models": {"m": {"deployments": [{"provider": "claude", "model": "claude-sonnet-4-5", "reasoning": True}]}},
    }
    with pytest.raises(ConfigError, match=r"deployments\[0\]\.reasoning: only for a deployment of OpenAI's API"):
        parse_config(data, set(REGISTRY))


def test_before_completion_caps_the_smaller_cap_goes_as_max_tokens() -> None:
    """Azure added `max_completion_tokens` and `stream_options` in 2024-09-01-preview: an older version is sent the
    tighter of the two caps as `max_tokens`, and a stream without `stream_options`."""
    req = request(max_tokens=30, max_completion_tokens=20, stream=True)
    built = adapter(api_version="2024-06-01").chat_request(req, target(), stream=True)
    body = orjson.loads(built.request.body)
    assert body["max_tokens"] == 20 and "max_completion_tokens" not in body and "stream_options" not in body
    assert built.dropped == []
    current = orjson.loads(adapter().chat_request(req, target(), stream=True).request.body)
    assert current["max_completion_tokens"] == 20 and current["stream_options"] == {"include_usage": True}


@pytest.mark.parametrize("version", ["2024-06-01", "2024-10-21", "2025-01-01-preview"])
def test_stream_options_azure_does_not_define_are_named(version: str) -> None:
    """Azure's dated api-versions define `stream_options.include_usage` alone: a client's `include_obfuscation` (which
    OpenAI takes, and the `openai` profile Azure shares sends) is left out and named; before 2024-09-01-preview none of
    `stream_options` goes, and the client's member is named there too."""
    req = request(stream=True, stream_options={"include_usage": True, "include_obfuscation": False})
    built = adapter(api_version=version).chat_request(req, target(), stream=True)
    body = orjson.loads(built.request.body)
    assert body.get("stream_options") == (None if version == "2024-06-01" else {"include_usage": True})
    assert built.dropped == ["stream_options.include_obfuscation"]


def test_a_messages_prefill_is_named() -> None:
    """Azure's Chat Completions cannot continue an assistant message: a Messages client's prefill is named (it was
    sent as an earlier turn, 200, nothing named: found by review)."""
    messages = [{"role": "user", "content": "JSON please"}, {"role": "assistant", "content": "{"}]
    req = to_chat_request(MessagesRequest.model_validate({"model": "m", "max_tokens": 9, "messages": messages}))[0]
    assert adapter().chat_request(req, target(), stream=False).dropped == ["messages.prefill"]
