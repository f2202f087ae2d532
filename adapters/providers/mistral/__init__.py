"""The `mistral` provider type: Mistral AI's La Plateforme API."""

from adapters.providers.mistral.adapter import MistralAdapter

__all__ = ["MistralAdapter"]
