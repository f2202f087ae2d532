"""The registry is the one place that maps a config `type:` to code: every adapter folder is in it."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

import adapters.providers
from adapters.providers.bedrock import adapter as bedrock
from adapters.providers.registry import REGISTRY
from handler.ports import MESSAGES_API, NativeCall, ProviderAdapter, Target
from handler.schemas import ChatRequest

FOLDER = Path(adapters.providers.__file__).parent
ROOT = FOLDER.parents[1]


def test_every_provider_folder_is_registered() -> None:
    folders = {p.name for p in FOLDER.iterdir() if p.is_dir() and (p / "__init__.py").exists()}
    registered = {cls.__module__.split(".")[2] for cls in REGISTRY.values()}
    assert folders == registered


def test_registry_names_match_the_adapters() -> None:
    for name, cls in REGISTRY.items():
        assert issubclass(cls, ProviderAdapter) and cls.type_name == name
        assert cls.default_base_url.startswith("https://") or cls.default_base_url == ""


def test_a_gateway_imports_only_the_adapters_its_config_names(tmp_path: Path) -> None:
    """A Lambda's cold start pays for the providers it serves, no other."""
    config = tmp_path / "config.yaml"
    config.write_text(
        "providers:\n  openai: {type: openai, api_key: env:OPENAI_API_KEY}\n"
        "models:\n  gpt-4o-mini: {deployments: [{provider: openai, model: gpt-4o-mini}]}\n"
    )
    store = f"sqlite:///{tmp_path / 'gateway.db'}"
    code = (
        "import sys; from handler.pipeline.gateway import build_gateway; "
        f"build_gateway(config_path={str(config)!r}, store_url={store!r}); "
        f"print(sorted(name for name in {sorted(REGISTRY)!r} if 'adapters.providers.' + name in sys.modules))"
    )
    env = {**os.environ, "OPENAI_API_KEY": "sk-test"}
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, env=env, capture_output=True, text=True, check=True)
    assert out.stdout.strip().splitlines()[-1] == "['openai']"


@pytest.mark.parametrize("name", sorted(REGISTRY))
def test_every_translation_names_the_client_headers_it_loses(name: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """A Messages client's betas whose feature the request uses (`NativeCall.lost_headers`) went unnamed by every
    provider type but Bedrock: each that gets the translated request names them (Bedrock too, for a model other than
    Claude); Anthropic's API takes the request itself, betas and all."""
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "AKIDEXAMPLE")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "secret")
    adapter = REGISTRY[name](name, "key", {})
    model = "us.amazon.nova-pro-v1:0" if name == "bedrock" else "some-model"
    base_url = adapter.base_url("us-east-1", "https://resource.openai.azure.com" if name == "azure" else None)
    target = Target(name, name, model, "us-east-1", base_url, {})
    lost = ("anthropic-beta[context-1m-2025-08-07]",)
    call = NativeCall(MESSAGES_API, {}, {"anthropic-beta": "context-1m-2025-08-07"}, lost_headers=lost)
    if adapter.speaks(MESSAGES_API, target):
        assert name == "anthropic"
        return
    req = ChatRequest.model_validate({"model": "m", "messages": [{"role": "user", "content": "Hi"}]})
    try:
        assert adapter.translated_request(call, req, target, stream=False).dropped == list(lost)
    finally:
        bedrock.reset_credentials()  # (the ones above, resolved for Bedrock's signature, go with the test)
