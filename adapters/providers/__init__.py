"""The provider registry: the one place that maps a config `type:` to adapter code."""

from __future__ import annotations

from adapters.providers.openai import OpenAIAdapter
from handler.ports import ProviderAdapter

REGISTRY: dict[str, type[ProviderAdapter]] = {
    OpenAIAdapter.type_name: OpenAIAdapter,
}

__all__ = ["REGISTRY"]
