"""The `openai` provider type: any OpenAI-compatible API."""

from adapters.providers.openai.adapter import OpenAIAdapter

__all__ = ["OpenAIAdapter"]
