"""Config validation: every error names the offending path."""

from __future__ import annotations

from importlib import resources
from pathlib import Path

import pytest
import yaml

from adapters.providers.registry import REGISTRY
from handler import config as config_module
from handler.config import ConfigError, load_config, parse_config, resolve_secret
from handler.telemetry.otlp_config import OtlpConfig

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


def test_a_fallback_of_another_kind_is_refused() -> None:
    """A chat model falling back to an embedding model was accepted (`gateway config check` passed it), and every
    request passed that fallback over unsaid."""
    data = {
        "providers": {"x": {"type": "openai", "api_key": "env:X"}},
        "models": {
            "m": {"deployments": [{"provider": "x", "model": "a"}], "fallbacks": ["emb"]},
            "emb": {"kind": "embedding", "deployments": [{"provider": "x", "model": "e"}], "fallbacks": ["m"]},
        },
    }
    assert problems(data) == [
        "models.m.fallbacks[0]: 'emb' is a model of kind 'embedding', and 'm' of kind 'chat': a request is never "
        "sent to a model of another kind",
        "models.emb.fallbacks[0]: 'm' is a model of kind 'chat', and 'emb' of kind 'embedding': a request is never "
        "sent to a model of another kind",
    ]


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


@pytest.mark.skipif(not yaml.__with_libyaml__, reason="PyYAML built without libyaml")
def test_the_shipped_yaml_is_read_by_libyaml_as_the_pure_python_loader_reads_it(tmp_path: Path) -> None:
    # libyaml's loader reads the config and the price table several times faster at a cold start.
    assert config_module.SAFE_LOADER is yaml.CSafeLoader
    for name in ("default_config.yaml", "pipeline/prices.yaml"):
        text = resources.files("handler").joinpath(name).read_text()
        assert config_module.load_yaml(text) == yaml.safe_load(text)
    with pytest.raises(ConfigError, match="(?s)not valid YAML.*line 2, column 5"):
        (tmp_path / "bad.yaml").write_text("models:\n  - [unclosed\n")
        load_config(tmp_path / "bad.yaml", set())


@pytest.mark.parametrize(
    ("otlp", "problems"),
    [
        ("collector:4318", ["observability.otlp: Input should be a valid dictionary or instance of OtlpConfig"]),
        (
            {"queue_size": 0, "extra": 1},
            [
                "observability.otlp.queue_size: Input should be greater than or equal to 1",
                "observability.otlp.extra: Extra inputs are not permitted",
            ],
        ),
    ],
)
def test_the_otlp_section_validated_apart_names_its_problems_as_the_rest(otlp: object, problems: list[str]) -> None:
    """`observability.otlp` is validated apart (only a config that has one pays for its validator at a cold
    start): its problems still name their paths, and a valid one is an `OtlpConfig`."""
    with pytest.raises(ConfigError) as caught:
        parse_config({"observability": {"otlp": otlp}}, set(REGISTRY))
    assert caught.value.problems == problems
    parsed = parse_config({"observability": {"otlp": {"endpoint": "http://c:4318"}}}, set(REGISTRY))
    assert isinstance(parsed.observability.otlp, OtlpConfig)
    assert parsed.observability.otlp.endpoint == "http://c:4318" and parsed.observability.otlp.batch_size == 512
    assert parse_config({}, set(REGISTRY)).observability.otlp is None
