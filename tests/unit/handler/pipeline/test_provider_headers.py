"""A provider's extra `headers`: references resolved as `api_key`'s are, credentials registered for redaction."""

from __future__ import annotations

from typing import Any

import pytest

from adapters.providers.registry import REGISTRY
from handler import redaction
from handler.config import ConfigError, parse_config
from handler.pipeline.gateway import build_adapters


def adapters_with(headers: Any, environ: dict[str, str]) -> Any:
    config = parse_config(
        {
            "providers": {"up": {"type": "openai", "auth": "none", "base_url": "http://up/v1", "headers": headers}},
            "models": {"m": {"deployments": [{"provider": "up", "model": "m"}], "price": "unknown"}},
        },
        set(REGISTRY),
    )
    return build_adapters(config, REGISTRY, environ)


def test_numbers_and_empty_values_go_as_written() -> None:
    """A YAML number (`x-retries: 3`) went out as its text before headers took references: it still does."""
    sent = adapters_with({"x-retries": 3, "x-empty": ""}, {})["up"].headers()
    assert (sent["x-retries"], sent["x-empty"]) == ("3", "")


def test_references_resolve_and_credentials_are_redacted_but_ordinary_values_are_not() -> None:
    headers = {
        "x-proxy-key": "env:PROXY",
        "authorization-extra": "literal-credential-123456",
        "x-title": "My App Title",
    }
    adapter = adapters_with(headers, {"PROXY": "from-the-environment-123456"})["up"]
    sent = adapter.headers()
    assert sent["x-proxy-key"] == "from-the-environment-123456" and sent["x-title"] == "My App Title"
    shown = redaction.scrub(b"from-the-environment-123456 literal-credential-123456 My App Title")
    assert shown == b"[REDACTED] [REDACTED] My App Title"


@pytest.mark.parametrize(
    ("headers", "problem"),
    [
        ({"x-proxy-key": "env:UNSET"}, "providers.up.headers.x-proxy-key: env:UNSET resolves to nothing"),
        ({"x-n": {"a": 1}}, "providers.up.headers: a mapping of header names to values"),
        (["x-a"], "providers.up.headers: a mapping of header names to values"),
    ],
)
def test_a_header_that_cannot_be_sent_is_a_config_error(headers: Any, problem: str) -> None:
    with pytest.raises(ConfigError) as caught:
        adapters_with(headers, {})
    assert caught.value.problems == [problem]


def test_config_check_resolves_the_headers_as_start_up_will(
    tmp_path: Any, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """A header referencing nothing stops the gateway at start-up: `gateway config check` says so first."""
    from handler.entry.cli import main

    path = tmp_path / "config.yaml"
    path.write_text(
        "providers:\n  up: {type: openai, auth: none, base_url: 'http://up/v1', headers: {x-proxy-key: 'env:NOPE'}}\n"
        "models:\n  m: {deployments: [{provider: up, model: m}], price: unknown}\n"
    )
    monkeypatch.delenv("NOPE", raising=False)
    assert main(["config", "check", "--config", str(path)]) == 1
    assert "providers.up.headers.x-proxy-key: env:NOPE resolves to nothing" in capsys.readouterr().err
    monkeypatch.setenv("NOPE", "now-it-is-set-1234567890")
    assert main(["config", "check", "--config", str(path)]) == 0


@pytest.mark.parametrize("kind", ["openai", "mistral", "deepseek", "azure"])
def test_a_provider_without_a_key_is_sent_none_of_the_environments(kind: str) -> None:
    """`auth: none` (a local server, a proxy that holds the credentials) still read its type's variable: with
    `OPENAI_API_KEY` set, the OpenAI key went to the local server as its `authorization`."""
    variable = REGISTRY[kind].key_env_var
    assert variable
    config = parse_config(
        {
            "providers": {"up": {"type": kind, "auth": "none", "base_url": "http://up/v1"}},
            "models": {"m": {"deployments": [{"provider": "up", "model": "m"}], "price": "unknown"}},
        },
        set(REGISTRY),
    )
    adapter = build_adapters(config, REGISTRY, {variable: "sk-the-operators-own-1234567890"})["up"]
    assert adapter.secret is None and not adapter.requires_key
    assert "sk-the-operators-own" not in str(adapter.headers())
