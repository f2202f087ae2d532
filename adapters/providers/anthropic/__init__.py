"""The `anthropic` provider type: Anthropic's Messages API."""

from adapters.providers.anthropic.adapter import AnthropicAdapter

__all__ = ["AnthropicAdapter"]
