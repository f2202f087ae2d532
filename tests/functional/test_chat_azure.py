"""The official openai SDK against the gateway, with a fake Azure OpenAI resource behind it."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import anthropic
import openai
import pytest

from adapters.providers.registry import REGISTRY
from handler.config import parse_config
from tests.fakes import azure as fake
from tests.fakes.openai import TEXT
from tests.functional.conftest import Running, serve_gateway
from tests.support.servers import ServerThread

pytestmark = pytest.mark.skipif("azure" not in REGISTRY, reason="no azure adapter registered")

PRICE = {"input": 1, "output": 2}
ROTATED_KEY = "azure-key-rotated-away-7d41c0"  # what the `rotated` resource still sends: refused, as Azure does
HI: Any = [{"role": "user", "content": "Hi"}]
WEATHER_TOOL: Any = {
    "type": "function",
    "function": {"name": "get_weather", "parameters": {"type": "object", "properties": {"city": {"type": "string"}}}},
}


@pytest.fixture(scope="module")
def azure(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Running]:
    """A gateway whose only provider is Azure OpenAI, in front of the fake Azure resource."""
    app = fake.create_app()
    upstream = ServerThread(app).start()
    provider = {"provider": "azure"}
    data = {
        "gateway": {"timeouts": {"connect": 2, "first_byte": 1.5, "between_chunks": 1.5}},
        "providers": {
            "azure": {"type": "azure", "base_url": upstream.url, "region": "eastus"},
            "azure-translated": {
                "type": "azure",
                "base_url": upstream.url,
                "region": "eastus",
                "responses_api": "translate",
            },
            # A resource using Microsoft Entra ID: its token in `headers`, no key (AZURE_OPENAI_API_KEY is still set).
            "entra": {
                "type": "azure",
                "base_url": upstream.url,
                "region": "eastus",
                "auth": "none",
                "headers": {"authorization": f"Bearer {fake.ENTRA_TOKEN}"},
            },
            # A resource in another region whose key was rotated without the gateway's being updated: East US 2, tried
            # before `eastus` by a gateway in us-east-1 (263 km, against 271).
            "rotated": {
                "type": "azure",
                "base_url": upstream.url,
                "region": "eastus2",
                "api_key": "env:AZURE_ROTATED_KEY",
            },
        },
        "models": {
            "gpt-4o": {"deployments": [{**provider, "model": "gpt-4o-prod"}], "price": PRICE},
            "gpt-4o-preview": {
                "deployments": [{**provider, "model": "gpt-4o-prod", "api_version": "2025-01-01-preview"}],
                "price": PRICE,
            },
            "gpt-4o-ga": {
                "deployments": [{**provider, "model": "gpt-4o-prod", "api_version": "2024-06-01"}],
                "price": PRICE,
            },
            **{
                f"versionless-{version}": {
                    "deployments": [{**provider, "model": "gpt-4o-prod", "api_version": version}],
                    "price": PRICE,
                }
                for version in ("v1", "preview", "latest")
            },
            "embed-v1": {
                "kind": "embedding",
                "deployments": [{**provider, "model": "embed-small", "api_version": "v1"}],
                "price": {"input": 1},
            },
            "limited": {
                "deployments": [{**provider, "model": "fail-429"}],
                "price": PRICE,
                "fallbacks": ["gpt-4o"],
            },
            "limited-alone": {"deployments": [{**provider, "model": "fail-429"}], "price": PRICE},
            "filtered": {"deployments": [{**provider, "model": "content-filter"}], "price": PRICE},
            **{
                f"{name}{suffix}": {"deployments": [{"provider": serving, "model": name}], "price": PRICE}
                for name in ("async-filter", "async-filter-blocked", "async-filter-late")
                for suffix, serving in (("", "azure"), ("-translated", "azure-translated"))
            },
            "entra": {"deployments": [{"provider": "entra", "model": "gpt-4o-prod"}], "price": PRICE},
            "retired": {"deployments": [{**provider, "model": "gpt-35-turbo-retired"}], "price": PRICE},
            "rotated-then-eastus": {
                "deployments": [{"provider": "rotated", "model": "gpt-4o-prod"}, {**provider, "model": "gpt-4o-prod"}],
                "price": PRICE,
            },
            "deleted-then-live": {
                "deployments": [{**provider, "model": "deleted-gpt-4o"}, {**provider, "model": "gpt-4o-prod"}],
                "price": PRICE,
            },
            "deleted": {"deployments": [{**provider, "model": "deleted-lone"}], "price": PRICE},
            "reasoner": {
                "deployments": [
                    {**provider, "model": "prod-reasoner", "reasoning": True, "api_version": "2025-01-01-preview"}
                ],
                "price": PRICE,
            },
            "reasoner-by-name": {"deployments": [{**provider, "model": "prod-reasoner"}], "price": PRICE},
            "embed": {
                "kind": "embedding",
                "deployments": [{**provider, "model": "embed-small"}],
                "price": {"input": 1},
            },
        },
    }
    store_url = f"sqlite:///{Path(tmp_path_factory.mktemp('azure-store')) / 'gateway.db'}"
    environ = {"AZURE_OPENAI_API_KEY": fake.API_KEY, "AZURE_ROTATED_KEY": ROTATED_KEY}
    running, server = serve_gateway(parse_config(data, set(REGISTRY)), store_url, upstream, {"azure": app}, environ)
    yield running
    server.stop()
    upstream.stop()


@pytest.fixture
def client(azure: Running) -> Iterator[openai.OpenAI]:
    """The SDK with its own connection pool, closed after the test so no socket outlives the servers."""
    with openai.OpenAI(base_url=f"{azure.url}/v1", api_key=azure.mint(name="azure"), max_retries=0) as sdk:
        yield sdk


def sent(running: Running) -> dict[str, Any]:
    requests: list[dict[str, Any]] = running.fakes["azure"].state.requests
    return requests[-1]


def test_completion_reaches_the_deployment_with_the_azure_key(azure: Running, client: openai.OpenAI) -> None:
    raw = client.chat.completions.with_raw_response.create(model="gpt-4o", messages=HI)
    assert raw.parse().choices[0].message.content == TEXT
    assert raw.parse().model == "gpt-4o-2024-11-20"  # Azure names the model's version, not the deployment
    assert raw.headers["x-gateway-route"] == "azure/gpt-4o-prod@eastus=200"
    upstream = sent(azure)
    assert upstream["path"] == "/openai/deployments/gpt-4o-prod/chat/completions"
    assert upstream["query"] == {"api-version": "2024-10-21"}
    assert upstream["headers"]["api-key"] == fake.API_KEY and "authorization" not in upstream["headers"]


def test_deployment_option_sets_the_api_version(azure: Running, client: openai.OpenAI) -> None:
    client.chat.completions.create(model="gpt-4o-preview", messages=HI)
    assert sent(azure)["query"] == {"api-version": "2025-01-01-preview"}


def test_stream_skips_the_prompt_filter_chunk_and_ends_with_usage(client: openai.OpenAI) -> None:
    chunks = list(
        client.chat.completions.create(model="gpt-4o", messages=HI, stream=True, stream_options={"include_usage": True})
    )
    assert chunks[0].choices[0].delta.role == "assistant" and {c.model for c in chunks} == {"gpt-4o-2024-11-20"}
    assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices) == TEXT
    assert chunks[-1].usage is not None and chunks[-1].usage.completion_tokens == 7


def test_tools_stream_and_not(client: openai.OpenAI) -> None:
    completion = client.chat.completions.create(
        model="gpt-4o", messages=HI, tools=[WEATHER_TOOL], tool_choice="required"
    )
    calls = completion.choices[0].message.tool_calls
    assert calls is not None and calls[0].function.name == "get_weather"  # type: ignore[union-attr]
    stream = client.chat.completions.create(
        model="gpt-4o", messages=HI, tools=[WEATHER_TOOL], tool_choice="required", stream=True
    )
    arguments = ""
    for chunk in stream:
        for delta in (chunk.choices[0].delta.tool_calls or []) if chunk.choices else []:
            arguments += delta.function.arguments or "" if delta.function else ""
    assert arguments == '{"city":"Paris"}'


def test_rate_limit_falls_back(client: openai.OpenAI) -> None:
    raw = client.chat.completions.with_raw_response.create(model="limited", messages=HI)
    assert raw.parse().choices[0].message.content == TEXT
    assert raw.headers["x-gateway-route"].startswith("azure/fail-429@eastus=429, ")


def test_azures_rate_limit_tells_the_client_its_wait(client: openai.OpenAI) -> None:
    """Azure's 429 names its wait in `retry-after-ms`, `retry-after` and its message: past what the gateway waits
    itself, it is the client's to wait."""
    with pytest.raises(openai.RateLimitError) as caught:
        client.chat.completions.create(model="limited-alone", messages=HI)
    assert caught.value.response.headers["retry-after"] == "60"
    assert "retry after 60 seconds" in caught.value.message


@pytest.mark.parametrize("stream", [False, True])
@pytest.mark.parametrize(
    ("model", "route"),
    [
        ("rotated-then-eastus", "rotated/gpt-4o-prod@eastus2=401, azure/gpt-4o-prod@eastus=200"),
        ("deleted-then-live", "azure/deleted-gpt-4o@eastus=404, azure/gpt-4o-prod@eastus=200"),
    ],
)
def test_a_rotated_key_or_a_deleted_deployment_fails_over_to_the_next_deployment(
    azure: Running, model: str, route: str, stream: bool
) -> None:
    """A resource whose key was rotated (Azure's 401) or a deployment deleted, or not yet propagated to its region
    (Azure's 404 `DeploymentNotFound`), is the operator's deployment failing, not the client's request: the next
    deployment answers. The 401 was a 502 and the 404 a 400 `invalid_request_error` (blaming the client, whom the
    SDKs do not retry), every request, the healthy deployment never tried. Only the answer is charged."""
    key = azure.mint(name="failover", budget_usd=5.0)
    with openai.OpenAI(base_url=f"{azure.url}/v1", api_key=key, max_retries=0) as sdk:
        raw = sdk.chat.completions.with_raw_response.create(
            model=model, messages=HI, stream=stream, stream_options={"include_usage": True} if stream else None
        )
        if stream:
            text = "".join(c.choices[0].delta.content or "" for c in raw.parse() if c.choices)
        else:
            text = raw.parse().choices[0].message.content or ""
    assert (raw.status_code, raw.headers["x-gateway-route"], text) == (200, route, TEXT)
    (line,) = azure.ledger(key)
    assert (line.status, line.route, line.region) == (200, route, "eastus") and line.cost_usd
    answered = PRICE["input"] * line.input_tokens / 1e6 + PRICE["output"] * line.output_tokens / 1e6
    assert line.cost_usd == pytest.approx(answered)  # the answer's tokens alone


def test_a_lone_deleted_deployment_is_the_operators_502_not_the_clients_400(azure: Running) -> None:
    """With no other deployment, Azure's `DeploymentNotFound` is a 502 `upstream_error` naming Azure's 404 and its
    words (the operator's to fix), which the SDK is told not to retry; it was a 400 blaming the client."""
    key = azure.mint(name="deleted")
    with openai.OpenAI(base_url=f"{azure.url}/v1", api_key=key, max_retries=0) as sdk:
        with pytest.raises(openai.InternalServerError) as failed:
            sdk.chat.completions.create(model="deleted", messages=HI)
    answer = failed.value.response
    error = answer.json()["error"]
    assert (answer.status_code, error["type"], error["upstream_status"]) == (502, "upstream_error", 404)
    assert (
        error["upstream_type"] == "DeploymentNotFound"
        and "deployment for this resource does not exist" in error["message"]
    )
    assert answer.headers["x-should-retry"] == "false"
    assert answer.headers["x-gateway-route"] == "azure/deleted-lone@eastus=404"
    assert [(line.status, line.cost_usd) for line in azure.ledger(key)] == [(502, 0.0)]


def test_content_filter_refusal_is_a_client_error_naming_the_category(client: openai.OpenAI) -> None:
    with pytest.raises(openai.BadRequestError) as caught:
        client.chat.completions.create(model="filtered", messages=HI)
    assert "content filter: violence" in caught.value.message


def test_embeddings(azure: Running, client: openai.OpenAI) -> None:
    result = client.embeddings.create(model="embed", input=["a", "b"])
    assert len(result.data) == 2
    assert sent(azure)["path"] == "/openai/deployments/embed-small/embeddings"


@pytest.mark.parametrize("version", ["v1", "preview", "latest"])
def test_a_versionless_api_version_is_served_by_the_v1_api_with_openais_members(
    azure: Running, client: openai.OpenAI, version: str
) -> None:
    """`api_version: v1`, `preview`, `latest` (the versionless API) go to the v1 API, the deployment in the body's
    `model`, with OpenAI's members no dated version defines: they went to the deployment's path with
    `?api-version=v1`, which Azure answers 404, and lost `verbosity` and `prompt_cache_key` (found by review)."""
    raw = client.chat.completions.with_raw_response.create(
        model=f"versionless-{version}", messages=HI, verbosity="low", prompt_cache_key="k"
    )
    assert raw.parse().choices[0].message.content == TEXT and "x-gateway-dropped-params" not in raw.headers
    assert raw.headers["x-gateway-route"] == "azure/gpt-4o-prod@eastus=200"
    upstream = sent(azure)
    assert (upstream["path"], upstream["query"]) == (
        "/openai/v1/chat/completions",
        {"api-version": "preview"} if version == "preview" else {},
    )
    assert (upstream["json"]["model"], upstream["json"]["verbosity"], upstream["json"]["prompt_cache_key"]) == (
        "gpt-4o-prod",
        "low",
        "k",
    )
    chunks = list(
        client.chat.completions.create(
            model=f"versionless-{version}", messages=HI, stream=True, stream_options={"include_usage": True}
        )
    )
    assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices) == TEXT
    assert chunks[-1].usage is not None and sent(azure)["path"] == "/openai/v1/chat/completions"


@pytest.mark.parametrize("model", ["versionless-v1", "versionless-preview", "versionless-latest", "gpt-4o"])
def test_responses_go_to_the_v1_api_with_the_preview_api_version_as_chat_does(
    azure: Running, client: openai.OpenAI, model: str
) -> None:
    """`/v1/responses` goes to the v1 API's Responses, `?api-version=preview` at `api_version: preview` as Chat
    Completions and embeddings go, none else (a dated version names none of the v1 API's): it went without it at
    `preview`, so the preview features the operator asked for were not had (found by review)."""
    answer = client.responses.create(model=model, input="Hi")
    assert answer.output_text == TEXT
    upstream = sent(azure)
    assert (upstream["path"], upstream["query"], upstream["json"]["model"]) == (
        "/openai/v1/responses",
        {"api-version": "preview"} if model == "versionless-preview" else {},
        "gpt-4o-prod",
    )


def test_embeddings_of_a_versionless_deployment_go_to_the_v1_api_naming_it_in_the_body(
    azure: Running, client: openai.OpenAI
) -> None:
    assert len(client.embeddings.create(model="embed-v1", input=["a", "b"]).data) == 2
    upstream = sent(azure)
    assert (upstream["path"], upstream["query"], upstream["json"]["model"]) == (
        "/openai/v1/embeddings",
        {},
        "embed-small",
    )


def test_a_reasoning_deployment_named_by_the_operator_gets_what_reasoning_models_take(
    azure: Running, client: openai.OpenAI
) -> None:
    """An Azure deployment's name is the operator's (`prod-reasoner`, running o3): declared `reasoning: true`, a
    client's `max_tokens` goes as `max_completion_tokens` (o-series models refuse `max_tokens`) and its
    `reasoning_effort` is passed on. Undeclared, the name tells nothing, and Azure's 400 comes back as it is."""
    raw = client.chat.completions.with_raw_response.create(
        model="reasoner", messages=HI, max_tokens=50, reasoning_effort="low"
    )
    assert raw.parse().choices[0].message.content == TEXT and "x-gateway-dropped-params" not in raw.headers
    body = sent(azure)["json"]
    assert body["max_completion_tokens"] == 50 and "max_tokens" not in body and body["reasoning_effort"] == "low"
    with pytest.raises(openai.BadRequestError) as refused:
        client.chat.completions.create(model="reasoner-by-name", messages=HI, max_tokens=50)
    assert "max_completion_tokens" in refused.value.message


@pytest.mark.parametrize("model", ["gpt-4o", "gpt-4o-preview"])
def test_an_allowed_tools_choice_reaches_a_dated_api_version_as_the_allowed_tools_alone(
    azure: Running, client: openai.OpenAI, model: str
) -> None:
    """OpenAI's `allowed_tools` choice, which no dated api-version defines, went to Azure as written: its 400,
    failing over to nothing (review; the fake took it then). Now the tools it allows go alone with its mode, and the
    model calls the one allowed; nothing is named, the choice being honoured."""
    clock: Any = {"type": "function", "function": {"name": "get_time", "parameters": {"type": "object"}}}
    allowed: Any = {
        "type": "allowed_tools",
        "allowed_tools": {"mode": "required", "tools": [{"type": "function", "function": {"name": "get_weather"}}]},
    }
    raw = client.chat.completions.with_raw_response.create(
        model=model, messages=HI, tools=[clock, WEATHER_TOOL], tool_choice=allowed
    )
    [call] = raw.parse().choices[0].message.tool_calls or []
    assert call.function.name == "get_weather" and "x-gateway-dropped-params" not in raw.headers
    body = sent(azure)["json"]
    assert body["tool_choice"] == "required" and [t["function"]["name"] for t in body["tools"]] == ["get_weather"]


def test_an_older_api_version_gets_only_the_arguments_it_defines(azure: Running) -> None:
    """Azure's GA 2024-06-01 refuses `max_completion_tokens`, `stream_options` and `parallel_tool_calls` as
    unrecognized arguments. A budgeted key's cap (which the gateway adds), or the client's, goes as `max_tokens`;
    `parallel_tool_calls` is dropped and named; a stream goes without `stream_options` and its cost is estimated,
    the client still getting the usage chunk it asked for."""
    key = azure.mint(name="azure-ga", budget_usd=5.0)
    with openai.OpenAI(base_url=f"{azure.url}/v1", api_key=key, max_retries=0) as sdk:
        raw = sdk.chat.completions.with_raw_response.create(model="gpt-4o-ga", messages=HI)
        assert raw.parse().choices[0].message.content == TEXT
        body = sent(azure)["json"]
        assert isinstance(body["max_tokens"], int) and "max_completion_tokens" not in body

        raw = sdk.chat.completions.with_raw_response.create(
            model="gpt-4o-ga",
            messages=HI,
            max_completion_tokens=40,
            tools=[WEATHER_TOOL],
            tool_choice="required",
            parallel_tool_calls=False,
        )
        assert raw.parse().choices[0].message.tool_calls is not None
        assert raw.headers["x-gateway-dropped-params"] == "parallel_tool_calls"
        body = sent(azure)["json"]
        assert body["max_tokens"] == 40 and "max_completion_tokens" not in body and "parallel_tool_calls" not in body

        chunks = list(
            sdk.chat.completions.create(
                model="gpt-4o-ga", messages=HI, stream=True, stream_options={"include_usage": True}
            )
        )
        assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices) == TEXT
        assert chunks[-1].usage is not None and chunks[-1].usage.completion_tokens > 0
        assert "stream_options" not in sent(azure)["json"]

        with pytest.raises(openai.BadRequestError) as refused:
            sdk.chat.completions.create(
                model="gpt-4o-ga",
                messages=HI,
                response_format={"type": "json_schema", "json_schema": {"name": "x", "schema": {"type": "object"}}},
            )
        assert "2024-08-01-preview" in refused.value.message and refused.value.code == "invalid_request"
    sources = [line.cost_source for line in azure.ledger(key)]
    assert sources == ["provider", "provider", "estimate"]


def stream_finishes(client: openai.OpenAI, model: str) -> tuple[str, list[str]]:
    text, finishes = "", []
    for chunk in client.chat.completions.create(model=model, messages=HI, stream=True):
        for choice in chunk.choices:
            text += choice.delta.content or ""
            finishes += [choice.finish_reason] if choice.finish_reason else []
    return text, finishes


@pytest.mark.parametrize(
    ("model", "finish", "stop_reason", "status", "source"),
    [
        ("async-filter", "stop", "end_turn", "completed", "provider"),
        ("async-filter-blocked", "content_filter", "refusal", "incomplete", "estimate"),
        ("async-filter-late", "content_filter", "refusal", "incomplete", "provider"),
    ],
)
def test_the_asynchronous_filters_verdict_reaches_every_api(
    azure: Running, model: str, finish: str, stop_reason: str, status: str, source: str
) -> None:
    """A deployment whose content filter is Azure's Asynchronous Filter streams the text before its verdict: a block
    comes after the text it blocks, mid-stream (an annotation with `finish_reason: content_filter`, then `[DONE]`) or
    after the `stop` chunk (a verdict `filtered: true`, no finish reason). The block was dropped as a filter-only
    chunk: Chat Completions ended with no finish reason, Messages said `end_turn`, Responses `completed` (found by
    review). Each is told the answer was filtered, and billed as any answer is: by Azure's usage when it comes, else
    estimated."""
    key = azure.mint(name=f"async-{model}")
    with openai.OpenAI(base_url=f"{azure.url}/v1", api_key=key, max_retries=0) as client:
        text, finishes = stream_finishes(client, model)
        assert text == TEXT and finishes == [finish]
        with client.responses.create(model=f"{model}-translated", input="Hi", stream=True) as events:
            last = [event for event in events][-1]
        assert last.type == f"response.{status}" and last.response.status == status  # type: ignore[union-attr]
        if status == "incomplete":
            assert last.response.incomplete_details.reason == "content_filter"  # type: ignore[union-attr]
    with anthropic.Anthropic(base_url=azure.url, api_key=key, max_retries=0) as claude:
        with claude.messages.stream(model=model, max_tokens=100, messages=HI) as stream:
            message = stream.get_final_message()
    assert message.stop_reason == stop_reason and message.content[0].text == TEXT  # type: ignore[union-attr]
    lines = azure.ledger(key)
    assert len(lines) == 3 and all(line.status == 200 and line.cost_usd > 0 for line in lines)
    assert {line.cost_source for line in lines} == {source}


def test_an_entra_id_token_in_headers_reaches_the_resource_and_no_log(
    azure: Running, client: openai.OpenAI, capsys: pytest.CaptureFixture[str]
) -> None:
    """A resource with key authentication disabled takes a Microsoft Entra ID token: `auth: none` and `headers:
    {authorization: Bearer ...}`, as the configuration docs allow. The header was removed before the request went,
    so the resource got no credential (found by review). It goes as written, with no `api-key` beside it (the
    environment's key is not this provider's), and appears in no log line."""
    raw = client.chat.completions.with_raw_response.create(model="entra", messages=HI)
    assert raw.parse().choices[0].message.content == TEXT
    upstream = sent(azure)["headers"]
    assert upstream["authorization"] == f"Bearer {fake.ENTRA_TOKEN}" and "api-key" not in upstream
    assert fake.ENTRA_TOKEN not in capsys.readouterr().out


def test_a_deployment_the_resource_lacks_is_azures_404(client: openai.OpenAI) -> None:
    with pytest.raises(openai.APIStatusError) as caught:
        client.chat.completions.create(model="retired", messages=HI)
    assert "deployment for this resource does not exist" in caught.value.message
