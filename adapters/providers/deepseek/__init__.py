"""The `deepseek` provider type: DeepSeek's API."""

from adapters.providers.deepseek.adapter import DeepSeekAdapter

__all__ = ["DeepSeekAdapter"]
