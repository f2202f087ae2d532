"""The provider registry: the one place that maps a config `type:` to adapter code.

An adapter's package is imported the first time its type is looked up, so a process imports only the adapters its
config names (a Lambda's cold start pays for no other). It lives apart from the package's `__init__`, which
imports nothing, so an adapter importing a shared module of the package (`adapters.providers.reasoning`) never
imports every other adapter first."""

from __future__ import annotations

import importlib
from collections.abc import Iterator, Mapping

from handler.ports import ProviderAdapter


class Registry(Mapping[str, type[ProviderAdapter]]):
    """Config type → adapter class; the names are known up front, each class is imported when first asked for."""

    def __init__(self, classes: Mapping[str, str]) -> None:
        self._classes = dict(classes)  # type → "package:ClassName"
        self._loaded: dict[str, type[ProviderAdapter]] = {}

    def __getitem__(self, name: str) -> type[ProviderAdapter]:
        loaded = self._loaded.get(name)
        if loaded is None:
            package, _, class_name = self._classes[name].partition(":")
            loaded = getattr(importlib.import_module(package), class_name)
            assert isinstance(loaded, type) and issubclass(loaded, ProviderAdapter)
            self._loaded[name] = loaded
        return loaded

    def __iter__(self) -> Iterator[str]:
        return iter(self._classes)

    def __len__(self) -> int:
        return len(self._classes)


REGISTRY = Registry(
    {
        "anthropic": "adapters.providers.anthropic:AnthropicAdapter",
        "openai": "adapters.providers.openai:OpenAIAdapter",
        "gemini": "adapters.providers.gemini:GeminiAdapter",
        "bedrock": "adapters.providers.bedrock:BedrockAdapter",
        "azure": "adapters.providers.azure:AzureOpenAIAdapter",
        "mistral": "adapters.providers.mistral:MistralAdapter",
        "deepseek": "adapters.providers.deepseek:DeepSeekAdapter",
    }
)

__all__ = ["REGISTRY", "Registry"]
