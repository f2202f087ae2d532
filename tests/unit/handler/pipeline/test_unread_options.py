"""A provider's or a deployment's option that its adapter does not read is a config error, not ignored."""

from __future__ import annotations

import datetime
from pathlib import Path
from typing import Any

import pytest

from adapters.providers.registry import REGISTRY
from handler.config import ConfigError, parse_config
from handler.pipeline.gateway import build_adapters, build_gateway, unread_options


def config(provider: dict[str, Any], deployment: dict[str, Any] | None = None) -> Any:
    return parse_config(
        {
            "providers": {"up": provider},
            "models": {
                "m": {"deployments": [{"provider": "up", "model": "m", **(deployment or {})}], "price": "unknown"}
            },
        },
        set(REGISTRY),
    )


def test_a_misspelt_option_stops_the_gateway_with_its_path() -> None:
    """`base_ulr` and `regoin` were taken and ignored (found by review): requests went to OpenAI's own endpoint."""
    typo = config({"type": "openai", "api_kye": "env:K", "base_ulr": "http://up/v1"}, {"regoin": "eu-west-1"})
    problems = unread_options(typo, REGISTRY)
    assert [p.split(":")[0] for p in problems] == [
        "providers.up.api_kye",
        "providers.up.base_ulr",
        "models.m.deployments[0].regoin",
    ]
    assert "base_url" in problems[1] and "region" in problems[2]  # what it could have meant
    with pytest.raises(ConfigError) as caught:
        build_adapters(typo, REGISTRY, {})
    assert caught.value.problems == problems


@pytest.mark.parametrize(
    ("provider", "deployment"),
    [
        ({"type": "openai", "auth": "none", "profile": "groq", "headers": {"x-a": "b"}, "responses_api": "native"}, {}),
        (
            {"type": "azure", "base_url": "https://r.openai.azure.com", "api_version": "2024-10-21"},
            {"api_version": "2025-04-01-preview"},
        ),
        ({"type": "anthropic", "anthropic_beta": "x", "max_output_tokens": 8192}, {"max_output_tokens": 4096}),
        ({"type": "bedrock", "region": "us-east-1", "max_output_tokens": 8192}, {"max_output_tokens": 4096}),
        ({"type": "mistral", "profile": "mistral"}, {}),
        ({"type": "gemini"}, {"region": "global", "base_url": "http://g"}),
    ],
)
def test_the_options_each_adapter_reads_are_taken(provider: dict[str, Any], deployment: dict[str, Any]) -> None:
    assert unread_options(config(provider, deployment), REGISTRY) == []


def test_an_option_of_another_provider_type_is_refused() -> None:
    """Azure's `api_version` on an OpenAI provider, or `headers` on Gemini (which sends none), would be ignored."""
    assert unread_options(config({"type": "openai", "api_version": "2024-10-21"}), REGISTRY)
    assert unread_options(config({"type": "gemini", "headers": {"x-a": "b"}}), REGISTRY)
    assert unread_options(config({"type": "openai"}, {"max_output_tokens": 5}), REGISTRY)


def test_config_check_names_it(tmp_path: Any, capsys: pytest.CaptureFixture[str]) -> None:
    from handler.entry.cli import main

    path = tmp_path / "config.yaml"
    path.write_text(
        "providers:\n  up: {type: openai, auth: none, base_ulr: 'http://up/v1'}\n"
        "models:\n  m: {deployments: [{provider: up, model: m}], price: unknown}\n"
    )
    assert main(["config", "check", "--config", str(path)]) == 1
    assert "providers.up.base_ulr: not an option of provider type openai" in capsys.readouterr().err


def test_a_key_is_refused_where_the_provider_reads_none() -> None:
    """A `bedrock` provider signs with the AWS credentials and never reads `api_key`: `api_key: env:NOT_SET` passed
    `config check` without a word, and a refusal of another field named `api_key` among what the type reads (review).
    """
    problems = unread_options(config({"type": "bedrock", "api_key": "env:K", "regoin": "x"}), REGISTRY)
    assert [p.split(":")[0] for p in problems] == ["providers.up.api_key", "providers.up.regoin"]
    assert "provider type bedrock reads no key" in problems[0]
    assert all("api_key" not in p.split("(", 1)[1] for p in problems)


@pytest.mark.parametrize("kind", ["mistral", "deepseek"])
@pytest.mark.parametrize("option", [{"responses_api": "native"}, {"responses_store": True}])
def test_the_responses_api_options_are_refused_where_the_api_has_none(kind: str, option: dict[str, Any]) -> None:
    """`responses_api: native` on a `mistral` provider sent `/v1/responses` to `{base_url}/responses`, which Mistral
    does not have, and `responses_store` on `deepseek` passed `config check` (review): the options are OpenAI's and
    Azure's (docs/configuration.md)."""
    [problem] = unread_options(config({"type": kind, **option}), REGISTRY)
    assert problem.startswith(f"providers.up.{next(iter(option))}: not an option of provider type {kind}")


@pytest.mark.parametrize("written", ["false", "no", "off", [True], 0])
@pytest.mark.parametrize("kind", ["openai", "azure"])
def test_a_responses_store_that_is_no_boolean_is_refused(kind: str, written: Any) -> None:
    """`responses_store: "false"` (quoted, or written by a template) passed `config check` and was read as
    `bool("false")`, true: the provider was told to keep every response it served natively (`store: true`), the
    opposite of what was written. `stream_usage`, the option beside it, took only a boolean.
    Found by review (oprev36)."""
    provider = {"type": kind, "base_url": "https://r.openai.azure.com", "responses_store": written}
    assert unread_options(config(provider), REGISTRY) == [
        f"providers.up.responses_store: true or false (unquoted), not {written!r}"
    ]
    assert unread_options(config({**provider, "responses_store": False}), REGISTRY) == []


def test_every_bad_option_value_of_a_provider_is_named_at_once() -> None:
    """`responses_api: bogus` beside `stream_usage: maybe` named the first alone (the adapter's constructor stopped
    there), and the second a round later (on Lambda, a deploy later), where one run names every error of the file.
    Found by review (oprev36)."""
    provider = {"type": "openai", "responses_api": "bogus", "stream_usage": "maybe", "responses_store": "no"}
    assert unread_options(config(provider), REGISTRY) == [
        "providers.up.responses_api: 'native' or 'translate', not 'bogus'",
        "providers.up.stream_usage: true or false (unquoted), not 'maybe'",
        "providers.up.responses_store: true or false (unquoted), not 'no'",
    ]


@pytest.mark.parametrize("written", [[1], "2024-10-21 ", "v2", 20241021])
def test_an_azure_api_version_is_a_version_or_a_name_of_the_versionless_api(written: Any) -> None:
    """`api_version: [1]` was sent as `api-version=[1]`, `"2024-10-21 "` with its trailing space, and `v2` called the
    versionless API without a word: each passed `config check`, and failed every request to the resource (or
    called another API than meant). Found by review (oprev36)."""
    provider = {"type": "azure", "base_url": "https://r.openai.azure.com", "api_version": written}
    said = f"an api-version, dated (2024-10-21, 2025-04-01-preview) or v1, latest or preview; not {written!r}"
    assert unread_options(config(provider), REGISTRY) == [f"providers.up.api_version: {said}"]
    deployed = config({**provider, "api_version": "v1"}, {"api_version": written})
    assert unread_options(deployed, REGISTRY) == [f"models.m.deployments[0].api_version: {said}"]
    # (`api_version: 2024-10-21` unquoted, as the docs write it, is a date to YAML.)
    assert unread_options(config({**provider, "api_version": datetime.date(2024, 10, 21)}), REGISTRY) == []


def test_start_up_names_every_error_of_the_file_and_each_option_its_adapter_does_not_read(tmp_path: Path) -> None:
    """The Lambda function's start-up failed on a file's first stage of errors alone: its misspelt setting, then the
    provider a deployment misnames, then the option no adapter reads, a deploy each. Found by review."""
    path = tmp_path / "gateway.yaml"
    path.write_text(
        "gateway: {fee_percent: 10}\n"
        "providers:\n  openai: {type: openai, api_key: env:K, timeout: 30}\n"
        "models:\n  m: {deployments: [{provider: openai, model: a}, {provider: opnai, model: a}], price: unknown}\n"
    )
    with pytest.raises(ConfigError) as caught:
        build_gateway(config_path=str(path), store_url="sqlite:///:memory:", environ={"K": "sk-test"})
    assert [p.split(":")[0] for p in caught.value.problems] == [
        "gateway.fee_percent",
        "models.m.deployments[1].provider",
        "providers.openai.timeout",
    ]


def test_an_embedding_model_on_a_provider_that_serves_no_embeddings_is_refused(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """`kind: embedding` on a Bedrock (Titan), Anthropic or DeepSeek deployment passed `config check` ("ok", exit 0),
    was listed by `GET /v1/models`, and every request to it was the client's 400 "provider type 'bedrock' does not
    serve embeddings" (DeepSeek's went upstream, to a 404: its adapter claimed OpenAI's embeddings): the adapters'
    `supports_embeddings` was read by nothing (review). Refused at config check and at start-up; a deployment that
    embeds, beside them, is taken."""
    from handler.entry.cli import main

    path = tmp_path / "config.yaml"
    path.write_text(
        "providers:\n"
        "  bedrock: {type: bedrock, region: us-east-1}\n"
        "  anthropic: {type: anthropic, api_key: env:ANTHROPIC_API_KEY}\n"
        "  deepseek: {type: deepseek, api_key: env:DEEPSEEK_API_KEY}\n"
        "  openai: {type: openai, api_key: env:OPENAI_API_KEY}\n"
        "models:\n"
        "  titan-embed:\n"
        "    kind: embedding\n"
        "    price: {input: 0.02}\n"
        "    deployments: [{provider: bedrock, model: 'amazon.titan-embed-text-v2:0'}]\n"
        "  claude-embed:\n"
        "    kind: embedding\n"
        "    price: {input: 0.02}\n"
        "    deployments: [{provider: openai, model: text-embedding-3-small}, {provider: anthropic, model: claude}]\n"
        "  deepseek-embed:\n"
        "    kind: embedding\n"
        "    price: {input: 0.02}\n"
        "    deployments: [{provider: deepseek, model: deepseek-chat}]\n"
        "  text-embedding-3-small:\n"
        "    kind: embedding\n"
        "    deployments: [{provider: openai, model: text-embedding-3-small}]\n"
    )
    assert main(["config", "check", "--config", str(path)]) == 1
    assert capsys.readouterr().err.splitlines() == [
        "models.titan-embed.deployments[0]: provider bedrock is of type bedrock, which serves no embeddings: an "
        "embedding model's deployments need a provider that does",
        "models.claude-embed.deployments[1]: provider anthropic is of type anthropic, which serves no embeddings: an "
        "embedding model's deployments need a provider that does",
        "models.deepseek-embed.deployments[0]: provider deepseek is of type deepseek, which serves no embeddings: an "
        "embedding model's deployments need a provider that does",
    ]
    environ = {"ANTHROPIC_API_KEY": "sk-ant-test", "DEEPSEEK_API_KEY": "sk-ds-test", "OPENAI_API_KEY": "sk-test"}
    with pytest.raises(ConfigError) as caught:
        build_gateway(config_path=str(path), store_url="sqlite:///:memory:", environ=environ)
    assert [p.split(":")[0] for p in caught.value.problems] == [
        "models.titan-embed.deployments[0]",
        "models.claude-embed.deployments[1]",
        "models.deepseek-embed.deployments[0]",
    ]
