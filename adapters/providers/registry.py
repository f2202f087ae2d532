"""The provider registry: the one place that maps a config `type:` to adapter code.

It lives apart from the package's `__init__`, which imports nothing, so an adapter importing a shared module of
the package (`adapters.providers.reasoning`) never imports every other adapter first."""

from __future__ import annotations

from adapters.providers.anthropic import AnthropicAdapter
from adapters.providers.azure import AzureOpenAIAdapter
from adapters.providers.bedrock import BedrockAdapter
from adapters.providers.deepseek import DeepSeekAdapter
from adapters.providers.gemini import GeminiAdapter
from adapters.providers.mistral import MistralAdapter
from adapters.providers.openai import OpenAIAdapter
from handler.ports import ProviderAdapter

REGISTRY: dict[str, type[ProviderAdapter]] = {
    AnthropicAdapter.type_name: AnthropicAdapter,
    OpenAIAdapter.type_name: OpenAIAdapter,
    GeminiAdapter.type_name: GeminiAdapter,
    BedrockAdapter.type_name: BedrockAdapter,
    AzureOpenAIAdapter.type_name: AzureOpenAIAdapter,
    MistralAdapter.type_name: MistralAdapter,
    DeepSeekAdapter.type_name: DeepSeekAdapter,
}

__all__ = ["REGISTRY"]
