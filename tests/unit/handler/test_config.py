"""Config validation: every error names the offending path."""

from __future__ import annotations

from pathlib import Path

import pytest

from adapters.providers.registry import REGISTRY
from handler.config import ConfigError, load_config, parse_config, resolve_secret

TYPES = set(REGISTRY)


def problems(data: object) -> list[str]:
    with pytest.raises(ConfigError) as info:
        parse_config(data, TYPES)
    return info.value.problems


def test_unknown_provider_is_named_with_its_path() -> None:
    data = {
        "providers": {"openai": {"type": "openai"}},
        "models": {"gpt-4o": {"deployments": [{"provider": "opnai", "model": "gpt-4o"}]}},
    }
    assert problems(data) == ["models.gpt-4o.deployments[0].provider: unknown provider 'opnai'"]


def test_type_errors_and_unknown_fields_name_their_paths() -> None:
    data = {
        "providers": {"x": {"type": "nonsense"}},
        "models": {"m": {"deployments": [], "pricee": 1}},
    }
    found = problems(data)
    assert any(p.startswith("models.m.deployments:") for p in found)
    assert any(p.startswith("models.m.pricee:") for p in found)


def test_unknown_provider_type_and_fallback() -> None:
    data = {
        "providers": {"x": {"type": "nonsense"}},
        "models": {"m": {"deployments": [{"provider": "x", "model": "a"}], "fallbacks": ["ghost"]}},
    }
    found = problems(data)
    assert found[0].startswith("providers.x.type: unknown provider type 'nonsense'")
    assert "models.m.fallbacks[0]: unknown model 'ghost'" in found


def test_not_a_mapping_and_bad_yaml(tmp_path: Path) -> None:
    assert problems(["a"]) == ["(root): the config must be a mapping with providers and models"]
    bad = tmp_path / "bad.yaml"
    bad.write_text("providers: [unclosed")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_config(bad, TYPES)
    with pytest.raises(ConfigError, match="cannot read"):
        load_config(tmp_path / "missing.yaml", TYPES)


def test_shipped_default_config_is_valid() -> None:
    config = load_config(None, TYPES)
    assert {"gpt-4o-mini", "claude-sonnet-4-5", "gemini-2.5-flash", "deepseek-chat", "mistral-large-latest"} <= set(
        config.models
    )


def test_secret_references() -> None:
    env = {"K": "v1"}
    fetched: list[tuple[str, str]] = []

    def fetch(kind: str, name: str) -> str:
        fetched.append((kind, name))
        return f"{kind}-secret"

    assert resolve_secret("env:K", env, fetch) == "v1"
    assert resolve_secret("env:MISSING", env, fetch) is None
    assert resolve_secret("ssm:/gw/openai", env, fetch) == "ssm-secret"
    assert resolve_secret("secretsmanager:gw/anthropic", env, fetch) == "secretsmanager-secret"
    assert fetched == [("ssm", "/gw/openai"), ("secretsmanager", "gw/anthropic")]
    assert resolve_secret(None, env, fetch) is None
