"""The `gemini` provider type: Google's Generative Language API (v1beta)."""

from adapters.providers.gemini.adapter import GeminiAdapter

__all__ = ["GeminiAdapter"]
